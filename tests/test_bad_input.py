"""Bad input everywhere a user can pass something, one table.

Library code (layer, callback) raises one `ValueError` whose message has
"Received"; the experiment CLIs exit with status 2 and print one line
`error: ...` (no traceback). In every case nothing in the working directory
is created, changed or deleted.
"""

import numpy as np
import pytest

from experiments import gains
from experiments import text
from experiments import timeseries


# ---------------------------------------------------------------------------
# The files a user might pass (made fresh in each case's tmp dir)
# ---------------------------------------------------------------------------


def _make_inputs(d):
    (d / "empty.txt").write_bytes(b"")
    (d / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (d / "latin1.txt").write_bytes("Le théâtre où l'été est là.\n".encode("latin-1") * 50)
    # One huge line, no newline, still shorter than the requested sequence.
    (d / "one_line.txt").write_text("to be or not to be " * 50_000, encoding="utf-8")
    (d / "good.txt").write_text("the cat sat on the mat.\n" * 100, encoding="utf-8")
    rows = "\n".join(f"{i},{np.sin(i / 3):.4f},NA" for i in range(120))
    (d / "series.csv").write_text("t,value,empty\n" + rows + "\n", encoding="utf-8")
    (d / "empty.csv").write_bytes(b"")
    (d / "binary.csv").write_bytes(b"t,value\n\x00\x01\x02\x03\n")
    (d / "latin1.csv").write_bytes("temps,température\n1,2.5\n2,3.5\n".encode("latin-1"))
    (d / "model.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "text.keras").write_text("this is not a model\n", encoding="utf-8")
    (d / "notes.txt").write_text("a note\n", encoding="utf-8")
    (d / "existing_file").write_text("keep me\n", encoding="utf-8")
    for experiment in ("text", "timeseries"):  # a finished run of each
        done = d / "runs" / experiment / "done"
        done.mkdir(parents=True)
        (done / "config.json").write_text("{}\n")
        (done / "results.json").write_text('{"status": "ok"}\n')


def _snapshot(d):
    """Every file's bytes and mtime, and the set of directories."""
    files, dirs = {}, set()
    for path in sorted(d.rglob("*")):
        rel = str(path.relative_to(d))
        if path.is_dir():
            dirs.add(rel)
        else:
            files[rel] = (path.read_bytes(), path.stat().st_mtime_ns)
    return files, dirs


# ---------------------------------------------------------------------------
# Library cases: a callable raising ValueError("... Received ...")
# ---------------------------------------------------------------------------


def _layer(**kwargs):
    import keras_vrnn

    return keras_vrnn.VanillaRNN(**{"units": 4, **kwargs})


def _call(layer_kwargs, x, **call_kwargs):
    def run(_):
        layer = _layer(**layer_kwargs)
        layer(np.zeros((2, 5, 3), "float32"))  # built for 3 features, batch 2
        layer(x, **call_kwargs)

    return run


def _stateful_without_batch_size(_):
    import keras

    _layer(stateful=True)(keras.Input((5, 3)))


def _callback(log_dir="LOGS", data="GOOD", **kwargs):
    def run(d):
        import keras_vrnn

        x = np.zeros((4, 5, 3), "float32")
        batch = (x, np.zeros((4, 1), "float32")) if data == "GOOD" else data
        where = d / "logs" if log_dir == "LOGS" else log_dir
        if where == "FILE":
            where = d / "existing_file"
        keras_vrnn.GradientNormCallback(where, batch, **kwargs)

    return run


X = np.zeros((2, 5, 3), "float32")
LIBRARY = {
    "units 0": (lambda _: _layer(units=0), "units=0"),
    "units negative": (lambda _: _layer(units=-3), "units=-3"),
    "units str": (lambda _: _layer(units="8"), "units='8'"),
    "units float": (lambda _: _layer(units=2.5), "units=2.5"),
    "dropout > 1": (lambda _: _layer(dropout=1.5), "dropout=1.5"),
    "recurrent_dropout < 0": (
        lambda _: _layer(recurrent_dropout=-0.1), "recurrent_dropout=-0.1"),
    "unknown activation": (lambda _: _layer(activation="swishy"), "activation='swishy'"),
    "unknown kernel initializer": (
        lambda _: _layer(kernel_initializer="nope"), "kernel_initializer='nope'"),
    "unknown recurrent initializer": (
        lambda _: _layer(recurrent_initializer="Orthogonl"),
        "recurrent_initializer='Orthogonl'"),
    "use_fused not a bool": (lambda _: _layer(use_fused="yes"), "use_fused='yes'"),
    "input rank 2": (_call({}, np.zeros((2, 3), "float32")), "rank 2"),
    "input rank 4": (_call({}, np.zeros((2, 5, 3, 1), "float32")), "rank 4"),
    "feature mismatch": (_call({}, np.zeros((2, 5, 4), "float32")), "4 features"),
    "initial_state units": (
        _call({}, X, initial_state=np.zeros((2, 5), "float32")), "initial_state"),
    "initial_state batch": (
        _call({}, X, initial_state=np.zeros((3, 4), "float32")), "initial_state"),
    "initial_state rank": (
        _call({}, X, initial_state=np.zeros((2, 4, 1), "float32")), "initial_state"),
    "stateful without batch size": (_stateful_without_batch_size, "batch size None"),
    "callback log_dir None": (_callback(log_dir=None), "log_dir=None"),
    "callback log_dir bytes": (_callback(log_dir=b"logs"), "log_dir=b'logs'"),
    "callback log_dir empty": (_callback(log_dir=""), "log_dir=''"),
    "callback log_dir is a file": (_callback(log_dir="FILE"), "not a directory"),
    "callback data not a tuple": (_callback(data="x"), "data of type str"),
    "callback data too short": (_callback(data=(X,)), "length 1"),
    "callback data batch mismatch": (
        _callback(data=(X, np.zeros((3, 1), "float32"))), "batch size 3"),
    "callback data empty batch": (
        _callback(data=(X[:0], np.zeros((0, 1), "float32"))), "batch size 0"),
    "callback every_n_batches 0": (
        _callback(every_n_batches=0), "every_n_batches=0"),
    "callback every_n_batches negative": (
        _callback(every_n_batches=-5), "every_n_batches=-5"),
    "callback every_n_batches bool": (
        _callback(every_n_batches=True), "every_n_batches=True"),
    "callback every_n_batches float": (
        _callback(every_n_batches=2.5), "every_n_batches=2.5"),
    "callback resume not a bool": (_callback(resume="yes"), "resume='yes'"),
}


# ---------------------------------------------------------------------------
# CLI cases: (experiment, arguments, fragment of the error line)
# ---------------------------------------------------------------------------

TEXT_TINY = ["--seq_len", "12", "--hidden", "4", "--epochs", "1",
             "--steps_per_epoch", "1", "--verbose", "0"]
CLI = {
    # non-positive sizes and bad fractions
    "text hidden 0": ("text", ["--hidden", "0"], "hidden=0. Expected a positive"),
    "text seq_len -1": ("text", ["--seq_len", "-1"], "seq_len=-1"),
    "text batch_size 0": ("text", ["--batch_size", "0"], "batch_size=0"),
    "text steps_per_epoch 0": ("text", ["--steps_per_epoch", "0"], "steps_per_epoch=0"),
    "text epochs 0": ("text", ["--epochs", "0"], "epochs=0"),
    "text validation_fraction 1.5": (
        "text", ["--validation_fraction", "1.5"], "validation_fraction=1.5"),
    "text validation_fraction 0": (
        "text", ["--validation_fraction", "0"], "validation_fraction=0.0"),
    "text recurrent_gain 0": ("text", ["--recurrent_gain", "0"], "recurrent_gain=0.0"),
    "timeseries window 0": ("timeseries", ["--window", "0"], "window=0"),
    "timeseries horizon -1": ("timeseries", ["--horizon", "-1"], "horizon=-1"),
    "timeseries hidden 0": ("timeseries", ["--hidden", "0"], "hidden=0"),
    "timeseries batch_size 0": ("timeseries", ["--batch_size", "0"], "batch_size=0"),
    "timeseries epochs -2": ("timeseries", ["--epochs", "-2"], "epochs=-2"),
    "timeseries train_fraction 1.2": (
        "timeseries", ["--train_fraction", "1.2"], "train_fraction=1.2"),
    "timeseries fractions sum >= 1": (
        "timeseries", ["--train_fraction", "0.9", "--validation_fraction", "0.2"],
        "sum below 1"),
    "timeseries batch larger than the data": (
        "timeseries", ["--batch_size", "5000"], "at least one whole batch"),
    # strategies
    "text unknown strategy": (
        "text", ["--strategy", "tpu"], "--strategy: invalid choice: 'tpu'"),
    "timeseries unknown strategy": (
        "timeseries", ["--strategy", "gpu"], "--strategy: invalid choice: 'gpu'"),
    "multi-worker without TF_CONFIG": (
        "timeseries", ["--strategy", "multi-worker", "--run_name", "mw"],
        "without a TF_CONFIG"),
    # text files
    "text missing file": ("text", ["--text_file", "{d}/nope.txt"], "no such file"),
    "text empty file": ("text", ["--text_file", "{d}/empty.txt"], "0 bytes"),
    "text binary file": ("text", ["--text_file", "{d}/blob.bin"], "binary"),
    "text latin-1 file": ("text", ["--text_file", "{d}/latin1.txt"], "not valid UTF-8"),
    "text one huge line shorter than a sequence": (
        "text", ["--text_file", "{d}/one_line.txt", "--seq_len", "2000000"],
        "text shorter than one sequence"),
    # CSV files
    "csv missing file": ("timeseries", ["--csv", "{d}/nope.csv"], "no such file"),
    "csv empty file": ("timeseries", ["--csv", "{d}/empty.csv"], "empty"),
    "csv binary file": ("timeseries", ["--csv", "{d}/binary.csv"], "binary"),
    "csv latin-1 file": ("timeseries", ["--csv", "{d}/latin1.csv"], "not valid UTF-8"),
    "csv NaN-only column": (
        "timeseries", ["--csv", "{d}/series.csv", "--column", "empty"],
        "all 120 values missing"),
    "csv unknown column": (
        "timeseries", ["--csv", "{d}/series.csv", "--column", "nope"],
        "column='nope'"),
    # checkpoints that are not Keras models
    "text init_from random bytes": (
        "text", ["--init_from", "{d}/model.keras"], "not a zip archive"),
    "text init_from a text file": (
        "text", ["--init_from", "{d}/text.keras"], "not a zip archive"),
    "timeseries init_from random bytes": (
        "timeseries", ["--init_from", "{d}/model.keras"], "not a zip archive"),
    "timeseries init_from a text file": (
        "timeseries", ["--init_from", "{d}/text.keras"], "not a zip archive"),
    "timeseries init_from not .keras": (
        "timeseries", ["--init_from", "{d}/notes.txt"], "does not end in .keras"),
    "timeseries init_from missing": (
        "timeseries", ["--init_from", "{d}/gone.keras"], "no such file"),
    "timeseries init_from empty": (
        "timeseries", ["--init_from", "{d}/empty.keras"], "0 bytes"),
    # the gain study: its own settings, then those of experiments.text
    "gains gain 0": ("gains", ["--gains", "0,1"], "gains='0,1'"),
    "gains gain not a number": ("gains", ["--gains", "0.5,big"], "gains='0.5,big'"),
    "gains recurrent_gain set": ("gains", ["--recurrent_gain", "2"], "recurrent_gain=2.0"),
    "gains strategy mirrored": ("gains", ["--strategy", "mirrored"], "strategy='mirrored'"),
    "gains hidden 0": ("gains", ["--hidden", "0"], "hidden=0"),
    "gains missing text file": ("gains", ["--text_file", "{d}/nope.txt"], "no such file"),
    "gains binary text file": ("gains", ["--text_file", "{d}/blob.bin"], "binary"),
    # finished runs are never overwritten
    "text finished run": ("text", ["--run_name", "done"], "is a finished run"),
    "timeseries finished run": (
        "timeseries", ["--run_name", "done"], "is a finished run"),
}
MODULES = {"text": text, "timeseries": timeseries, "gains": gains}


def _argv(experiment, args, d, root=None):
    base = ["--workdir_root", str(d / "runs" if root is None else root)]
    if experiment in ("text", "gains"):
        base += TEXT_TINY + ["--text_file", str(d / "good.txt")]
    return base + [a.replace("{d}", str(d)) for a in args]


@pytest.mark.parametrize(
    "kind, case", [("library", k) for k in LIBRARY] + [("cli", k) for k in CLI]
)
def test_bad_input(ref, kind, case, tmp_path, capsys, monkeypatch):
    _make_inputs(tmp_path)
    if case == "timeseries init_from empty":
        (tmp_path / "empty.keras").write_bytes(b"")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    before = _snapshot(tmp_path)
    if kind == "library":
        function, fragment = LIBRARY[case]
        with pytest.raises(ValueError) as excinfo:
            function(tmp_path)
        # Keras wraps errors raised in a layer's call with the call's
        # arguments; our own message is the one line that says "Received".
        lines = [x for x in str(excinfo.value).splitlines() if "Received" in x]
        assert len(lines) == 1 and fragment in lines[0], str(excinfo.value)
    else:
        experiment, args, fragment = CLI[case]
        with pytest.raises(SystemExit) as excinfo:
            MODULES[experiment].main(_argv(experiment, args, tmp_path))
        assert excinfo.value.code == 2
        line = ref.error_line(capsys.readouterr().err)
        assert fragment in line, line
    assert _snapshot(tmp_path) == before  # nothing created, changed or deleted


@pytest.mark.parametrize(
    "case", [k for k in CLI if not k.endswith("finished run")]
)
def test_bad_input_creates_no_runs_root(ref, case, tmp_path, capsys, monkeypatch):
    """With a --workdir_root that does not exist yet, a rejected input leaves
    none of it behind: no run dir, no `<root>/<experiment>/`, no root."""
    _make_inputs(tmp_path)
    if case == "timeseries init_from empty":
        (tmp_path / "empty.keras").write_bytes(b"")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    root = tmp_path / "new" / "runs"
    experiment, args, fragment = CLI[case]
    with pytest.raises(SystemExit) as excinfo:
        MODULES[experiment].main(_argv(experiment, args, tmp_path, root=root))
    assert excinfo.value.code == 2
    assert fragment in ref.error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_bad_input_in_real_processes(ref, tmp_path):
    """A few of the cases as real `python -m experiments.<name>` processes
    (concurrently; they exit before TensorFlow is imported)."""
    _make_inputs(tmp_path)
    before = _snapshot(tmp_path)
    cases = ("text unknown strategy", "text latin-1 file", "gains gain 0",
             "timeseries init_from random bytes", "csv NaN-only column")
    ref.assert_cli_errors({
        case: (
            [f"experiments.{CLI[case][0]}", *_argv(CLI[case][0], CLI[case][1], tmp_path)],
            CLI[case][2],
        )
        for case in cases
    })
    assert _snapshot(tmp_path) == before
