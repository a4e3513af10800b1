"""Tests for experiments/common.py: config flags, run dirs, errors, outputs."""

import dataclasses
import json
import math
import re
from typing import ClassVar, Optional

import numpy as np
import pytest

from experiments import common
from experiments.data import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class ToyConfig(common.BaseConfig):
    """A toy experiment."""

    experiment: ClassVar[str] = "toy"

    # Units of the toy layer.
    hidden: int = common.option(16, "Units of the toy layer.")
    rate: float = common.option(0.5, "A fraction.", below=1)
    name: str = common.option("abc", "A name.", choices=("abc", "xyz"))
    path: Optional[str] = common.option(None, "An optional path.")
    shuffle: bool = common.option(True, "Shuffle the toy data.")
    skip: int = common.option(0, "Items to skip.", at_least=0)
    clip: float = common.option(1.0, "A threshold.", at_least=0, note="0 turns it off")
    size: Optional[int] = common.option(None, "An optional size.")


# ---------------------------------------------------------------------------
# parse_config / validate
# ---------------------------------------------------------------------------


def test_parse_config_defaults_and_overrides():
    config = common.parse_config(ToyConfig, [])
    assert config == ToyConfig()
    assert config.run_name is None and config.workdir_root == "runs"
    config = common.parse_config(
        ToyConfig,
        ["--hidden", "7", "--rate", "0.25", "--name", "xyz", "--path", "a.txt",
         "--no-shuffle", "--seed", "3", "--run_name", "r1", "--workdir_root", "w"],
    )
    assert (config.hidden, config.rate, config.name, config.path) == (
        7, 0.25, "xyz", "a.txt")
    assert config.shuffle is False
    assert (config.seed, config.run_name, config.workdir_root) == (3, "r1", "w")
    assert common.parse_config(ToyConfig, ["--shuffle"]).shuffle is True


def test_help_lists_every_field_with_default_and_help(capsys):
    with pytest.raises(SystemExit) as excinfo:
        common.parse_config(ToyConfig, ["--help"], prog="toy")
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(ToyConfig):
        assert f"--{field.name}" in out, field.name
    assert "--no-shuffle" in out
    assert "Units of the toy layer. (default: 16)" in " ".join(out.split())
    assert "(default: 'runs')" in out
    assert "A toy experiment." in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--hidden", "abc"], "hidden='abc'. Expected an integer"),
        (["--rate", "x"], "rate='x'. Expected a number"),
        (["--name", "nope"], "invalid choice"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_bad_command_line_is_one_error_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as excinfo:
        common.parse_config(ToyConfig, argv, prog="toy")
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden": 0}, "Received: hidden=0. Expected a positive integer (e.g. --hidden 16)"),
        ({"hidden": 2.0}, "Received: hidden=2.0. Expected a positive integer"),
        ({"hidden": True}, "Received: hidden=True. Expected a positive integer"),
        ({"name": "nope"}, "Received: name='nope'. Expected one of ['abc', 'xyz']"),
        ({"skip": -1}, "Received: skip=-1. Expected an integer >= 0"),
        ({"clip": -0.5}, "clip=-0.5. Expected a finite number >= 0 (0 turns it off)"),
        ({"clip": math.inf}, "clip=inf. Expected a finite number >= 0"),
        ({"size": 0}, "Received: size=0. Expected a positive integer."),
        ({"hidden": -3}, "Received: hidden=-3. Expected a positive integer"),
        ({"rate": 1.0}, "Received: rate=1.0. Expected a number strictly between 0"),
        ({"rate": 0}, "rate=0. Expected a number strictly between 0 and 1"),
        ({"seed": -1}, "Received: seed=-1. Expected an integer >= 0"),
        ({"grad_every_n_batches": 0}, "grad_every_n_batches=0. Expected a positive"),
        ({"verbose": 5}, "verbose=5. Expected one of [0, 1, 2]"),
        ({"workdir_root": ""}, "workdir_root=''"),
        ({"run_name": "../escape"}, "run_name='../escape'. Expected a directory name"),
        ({"run_name": "a/b"}, "run_name='a/b'"),
    ],
)
def test_validate_messages(changes, message):
    config = dataclasses.replace(ToyConfig(), **changes)
    with pytest.raises(ValueError) as excinfo:
        config.validate()
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_check_helpers_accept_good_values_only():
    assert common.check_int("n", np.int64(3)) == 3
    assert common.check_int("n", 0, minimum=0) == 0
    assert common.check_int("n", -4, minimum=None) == -4
    assert common.check_number("lr", 1e-3) == 1e-3
    assert common.check_number("clip", 0, low_ok=True) == 0
    assert common.check_number("f", 0.1, high=1) == 0.1
    for bad in (True, 1.5, "3", None, 0):
        with pytest.raises(ValueError, match="Expected a positive integer"):
            common.check_int("n", bad)
    with pytest.raises(ValueError, match=r"n=1\. Expected an integer >= 2 \(e\.g\. --n 5\)"):
        common.check_int("n", 1, minimum=2, example=5)
    for bad in (0.0, -1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="Expected a finite number > 0"):
            common.check_number("lr", bad)
    with pytest.raises(ValueError, match=r"Expected a finite number >= 0 \(0: off\)"):
        common.check_number("clip", -1, low_ok=True, note="0: off")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        common.check_number("f", 1.0, high=1)


# ---------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------


def test_new_run_dir_default_name_and_suffixes(tmp_path, monkeypatch):
    first = common.new_run_dir("toy", root=tmp_path)
    assert first.parent == tmp_path / "toy" and first.is_dir()
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", first.name)
    monkeypatch.setattr(common, "timestamp", lambda: "20261128-061500")
    dirs = [common.new_run_dir("toy", root=tmp_path) for _ in range(3)]
    assert [d.name for d in dirs] == [
        "20261128-061500", "20261128-061500-2", "20261128-061500-3"]
    assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)


def test_new_run_dir_never_overwrites_an_explicit_name(tmp_path):
    path = common.new_run_dir("toy", "mine", root=tmp_path)
    (path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="run_name='mine', but .* already exists"):
        common.new_run_dir("toy", "mine", root=tmp_path)
    assert (path / "keep.txt").read_text() == "precious"


def test_new_run_dir_rejects_a_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="workdir_root="):
        common.new_run_dir("toy", root=tmp_path / "file")


# ---------------------------------------------------------------------------
# run_main
# ---------------------------------------------------------------------------


def _toy_train(config, workdir):
    common.save_results(workdir, {"hidden": config.hidden})
    return {"hidden": config.hidden}


def test_run_main_creates_run_dir_and_prints_tensorboard(tmp_path, capsys):
    argv = ["--workdir_root", str(tmp_path), "--hidden", "5", "--run_name", "a"]
    workdir, results = common.run_main(_toy_train, ToyConfig, argv)
    assert workdir == tmp_path / "toy" / "a"
    assert results == {"hidden": 5}
    config = common.load_config(ToyConfig, workdir / "config.json")
    assert config == ToyConfig(hidden=5, run_name="a", workdir_root=str(tmp_path))
    assert common.load_config(ToyConfig, workdir) == config  # a run dir works too
    assert json.loads((workdir / "results.json").read_text()) == {"hidden": 5}
    out = capsys.readouterr().out
    assert f"tensorboard --logdir {workdir / 'logs'}" in out
    assert str(workdir / "results.json") in out


def test_run_main_second_run_gets_its_own_dir(tmp_path):
    argv = ["--workdir_root", str(tmp_path), "--verbose", "0"]
    first, _ = common.run_main(_toy_train, ToyConfig, argv)
    second, _ = common.run_main(_toy_train, ToyConfig, argv)
    assert first != second and first.is_dir() and second.is_dir()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--hidden", "0"], "Received: hidden=0. Expected a positive integer"),
        (["--run_name", "taken"], "run_name='taken', but"),
    ],
)
def test_run_main_config_errors_exit_2(tmp_path, capsys, argv, fragment):
    (tmp_path / "toy" / "taken").mkdir(parents=True)
    with pytest.raises(SystemExit) as excinfo:
        common.run_main(_toy_train, ToyConfig, ["--workdir_root", str(tmp_path)] + argv)
    assert excinfo.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert fragment in captured.err
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["taken"]


@pytest.mark.parametrize("error", [DataError, FileNotFoundError])
def test_run_main_data_error_exits_2_and_removes_the_empty_run(
    tmp_path, capsys, error
):
    def failing(config, workdir):
        raise error("Received: bad data.\nExpected good data.")

    with pytest.raises(SystemExit) as excinfo:
        common.run_main(failing, ToyConfig, ["--workdir_root", str(tmp_path)])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: Received: bad data. Expected good data.\n"
    # Only config.json: the run dir is removed, and so is the `toy/` folder
    # the run created; the root, which existed, stays.
    assert not (tmp_path / "toy").exists() and tmp_path.is_dir()


def test_run_main_keeps_a_run_that_wrote_something(tmp_path):
    def failing(config, workdir):
        (workdir / "logs").mkdir()
        raise DataError("late")

    with pytest.raises(SystemExit):
        common.run_main(failing, ToyConfig, ["--workdir_root", str(tmp_path)])
    (run,) = (tmp_path / "toy").iterdir()
    assert (run / "config.json").exists()


def test_run_main_lets_other_errors_propagate(tmp_path):
    def buggy(config, workdir):
        raise ValueError("a bug, not bad input")

    with pytest.raises(ValueError, match="a bug"):
        common.run_main(buggy, ToyConfig, ["--workdir_root", str(tmp_path)])

    def crashing(config, workdir):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        common.run_main(crashing, ToyConfig, ["--workdir_root", str(tmp_path)])


# ---------------------------------------------------------------------------
# Results and plots
# ---------------------------------------------------------------------------


def test_save_results_converts_numpy_and_non_finite(tmp_path):
    path = common.save_results(
        tmp_path,
        {"a": np.float32(1.5), "b": np.int64(2), "c": np.arange(3),
         "d": float("nan"), "e": [np.inf, 1.0], "f": tmp_path, "g": np.bool_(True)},
    )
    assert path == tmp_path / "results.json"
    loaded = json.loads(path.read_text())  # strict JSON: no NaN literals
    assert loaded == {"a": 1.5, "b": 2, "c": [0, 1, 2], "d": None,
                      "e": [None, 1.0], "f": str(tmp_path), "g": True}
    assert "NaN" not in path.read_text()


def test_load_config_rejects_unknown_settings(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3, "nope": 1}))
    with pytest.raises(ValueError, match="unknown settings \\['nope'\\]"):
        common.load_config(ToyConfig, tmp_path)


def test_plot_loss_curves_writes_png(tmp_path):
    history = {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, float("nan")]}
    png = common.plot_loss_curves(
        history, tmp_path / "sub" / "loss.png", scale=0.5, ylabel="bits",
        baselines={"unigram": 1.0, "missing": None},
    )
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert common.best_epoch(history) == 2
    assert common.best_epoch({"loss": [1.0]}) is None


def test_format_table():
    lines = common.format_table([("model", "1.0"), ("baseline", "22.5")], ("", "MSE"))
    assert lines[0].split() == ["MSE"]
    assert lines[2].startswith("model") and lines[3].endswith("22.5")


@dataclasses.dataclass
class ToyTraining(common.TrainingConfig):
    """A toy training experiment."""

    experiment: ClassVar[str] = "toytrain"


def test_unfinished_run_resumes_unless_another_process_uses_it(tmp_path):
    config = ToyTraining(workdir_root=str(tmp_path), run_name="busy")
    workdir, resumed, lock = common.open_run_dir(config)  # a new dir, locked
    assert not resumed and (workdir / ".lock").exists()
    common.write_json(workdir / "config.json", dataclasses.asdict(config))
    (workdir / "backup").mkdir()
    (workdir / "backup" / "epoch-1.weights.h5").write_bytes(b"weights")
    common.write_json(workdir / "backup" / "training_metadata.json",
                      {"epoch": 1, "step": 3, "weights": "epoch-1.weights.h5"})
    with pytest.raises(ValueError, match="is in use by another running process"):
        common.open_run_dir(config)
    lock.release()
    with pytest.raises(ValueError, match="hidden: 192 there, 5 now"):
        common.open_run_dir(dataclasses.replace(config, hidden=5))
    path, resumed, lock = common.open_run_dir(dataclasses.replace(config, verbose=0))
    assert resumed and path == workdir  # verbose may differ
    lock.release()
