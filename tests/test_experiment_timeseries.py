"""End-to-end tests of experiments/timeseries.py (tiny sizes) and its CLI errors."""

import json
import math

import numpy as np
import pytest

from experiments import data
from experiments import common
from experiments import training
from experiments import timeseries

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY = [
    "--window", "6", "--hidden", "4", "--batch_size", "64", "--epochs", "2",
    "--grad_every_n_batches", "1000", "--verbose", "0",
]


def _csv(tmp_path, n=150):
    """A seasonal series with a trend (period 12) plus text and empty columns."""
    t = np.arange(n)
    rng = np.random.default_rng(0)
    value = 10 + 0.05 * t + np.sin(2 * np.pi * t / 12) + 0.1 * rng.standard_normal(n)
    lines = ["month,value,label,empty"]
    lines += [f"{i},{v:.4f},m{i},NA" for i, v in enumerate(value)]
    path = tmp_path / "series.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sunspots_runs(tmp_path_factory):
    """The same tiny sunspots run twice (same seed, default run names)."""
    root = tmp_path_factory.mktemp("runs")
    first = timeseries.main(TINY + ["--workdir_root", str(root)])
    second = timeseries.main(TINY + ["--workdir_root", str(root)])
    return root, first, second


def test_results_json(sunspots_runs):
    _, (workdir, results), _ = sunspots_runs
    saved = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
    assert saved["experiment"] == "timeseries"
    assert saved["data"]["name"] == "sunspots" and saved["data"]["period"] == 11
    assert saved["data"]["modelled"] == "first differences"
    for split in ("validation", "test"):
        for method in ("model", "persistence", "seasonal_naive"):
            metrics = saved[split][method]
            assert math.isfinite(metrics["mse"]) and math.isfinite(metrics["mae"])
            assert metrics["mse"] >= metrics["mae"] ** 2 * (1 - 1e-9)  # Jensen
    assert saved["test"] == results["test"]
    assert saved["epochs"] == 2


def test_baselines_match_data_module(sunspots_runs):
    _, (_, results), _ = sunspots_runs
    values, _ = data.load_series("sunspots")
    config = timeseries.Config(window=6)
    split = timeseries.prepare_data(config)["splits"]["test"]
    assert np.array_equal(split["truth"], values[split["index"]])
    last = values[split["index"][:, 0] - 1]
    assert results["test"]["persistence"]["mae"] == pytest.approx(
        data.mae(split["truth"][:, 0], last))
    seasonal = values[split["index"][:, 0] - 11]
    assert results["test"]["seasonal_naive"]["mse"] == pytest.approx(
        data.mse(split["truth"][:, 0], seasonal))


def test_seeded_runs_are_reproducible_and_never_overwrite(sunspots_runs):
    root, (first, r1), (second, r2) = sunspots_runs
    assert first != second and first.parent == second.parent == root / "timeseries"
    assert r1["test"] == r2["test"] and r1["history"] == r2["history"]
    assert json.loads((first / "results.json").read_text())["test"] == r1["test"]


def test_config_round_trip(sunspots_runs):
    root, (workdir, _), _ = sunspots_runs
    config = common.load_config(timeseries.Config, workdir / "config.json")
    assert config == timeseries.Config(
        window=6, hidden=4, batch_size=64, epochs=2, grad_every_n_batches=1000,
        verbose=0, workdir_root=str(root),
    )


def test_checkpoint_loads(sunspots_runs):
    _, (workdir, _), _ = sunspots_runs
    model = training.load_best_model(workdir)
    out = np.asarray(model.predict(np.zeros((3, 6, 1), "float32"), verbose=0))
    assert out.shape == (3, 1)
    scaler = data.Standardizer.from_json((workdir / "scaler.json").read_text())
    assert scaler.std > 0


def test_plots_and_logs(sunspots_runs):
    _, (workdir, _), _ = sunspots_runs
    for name in ("loss_curves", "forecast_vs_truth", "gradient_heatmap",
                 "gradient_norms_vs_steps_back"):
        png = workdir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
    for sub in ("train", "validation"):
        assert list((workdir / "logs" / sub).glob("events.out.tfevents.*")), sub
    assert (workdir / "logs" / "gradient_norms.npz").exists()


def test_existing_run_name_exits_2(sunspots_runs, capsys):
    root, (first, _), _ = sunspots_runs
    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(TINY + ["--workdir_root", str(root), "--run_name", first.name])
    assert excinfo.value.code == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Data preparation (no training)
# ---------------------------------------------------------------------------


def test_prepare_csv_levels_and_differences(tmp_path):
    path = _csv(tmp_path)
    for difference in (True, False):
        config = timeseries.Config(
            csv=str(path), column="value", period=12, window=12, horizon=3,
            difference=difference,
        )
        config.validate()
        prepared = timeseries.prepare_data(config)
        values, splits = prepared["values"], prepared["splits"]
        assert len(values) == 150 and prepared["meta"]["column"] == "value"
        train = splits["train"]
        # Scaling is fitted on the training part only (mean 0, std 1 there).
        n_train = data.split_by_time(len(values) - difference, config.fractions)[0]
        modelled = np.diff(values) if difference else values
        assert prepared["scaler"].mean == pytest.approx(modelled[n_train].mean())
        for name, split in splits.items():
            assert split["x"].shape[1:] == (12, 1) and split["y"].shape[1:] == (3,)
            assert np.array_equal(split["truth"], values[split["index"]])
            back = timeseries.to_levels(
                split["y"], split, prepared["scaler"], difference)
            np.testing.assert_allclose(back, split["truth"], rtol=1e-5, atol=1e-4)
        # Targets of later splits come after every training target.
        assert splits["validation"]["index"].min() > train["index"].max()
        assert splits["test"]["index"].min() > splits["validation"]["index"].max()
        forecasts, note = timeseries.baseline_forecasts(
            values, splits["test"], 3, period=12)
        assert note is None and forecasts["seasonal_naive"].shape == (
            len(splits["test"]["x"]), 3)
        forecasts, note = timeseries.baseline_forecasts(
            values, splits["test"], 3, period=None)
        assert forecasts["seasonal_naive"] is None and "--period" in note


# ---------------------------------------------------------------------------
# Command-line errors: exit 2, one line "error: ...", no traceback, fast.
# ---------------------------------------------------------------------------


def test_cli_errors(ref, tmp_path):
    """Each documented CLI error in its own `python -m experiments.timeseries`
    (run concurrently: they exit before TensorFlow is imported)."""
    csv = _csv(tmp_path)
    (tmp_path / "empty.csv").write_bytes(b"")
    root = tmp_path / "runs"
    (root / "timeseries" / "taken").mkdir(parents=True)
    cases = {
        "missing file": (["--csv", str(tmp_path / "nope.csv")], "no such file"),
        "empty file": (["--csv", str(tmp_path / "empty.csv")], "empty"),
        "unknown column": (["--csv", str(csv), "--column", "nope"], "column='nope'"),
        "non-numeric column": (["--csv", str(csv), "--column", "label"], "non-numeric"),
        "all-NaN column": (["--csv", str(csv), "--column", "empty"], "missing"),
        "window 0": (["--window", "0"], "window=0. Expected a positive integer"),
        "existing run name": (["--run_name", "taken"], "already exists"),
    }
    ref.assert_cli_errors({
        case: (["experiments.timeseries", "--workdir_root", str(root), *args], fragment)
        for case, (args, fragment) in cases.items()
    })
    assert sorted(p.name for p in (root / "timeseries").iterdir()) == ["taken"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--window", "250"], "window=250"),
        (["--horizon", "0"], "horizon=0"),
        (["--hidden", "-2"], "hidden=-2"),
        (["--epochs", "0"], "epochs=0"),
        (["--period", "0"], "period=0"),
        (["--train_fraction", "0.9", "--validation_fraction", "0.2"], "sum below 1"),
        (["--validation_fraction", "0"], "validation_fraction=0.0"),
        (["--series", "gold"], "invalid choice: 'gold'"),
        (["--csv", "", ], "csv=''"),
        (["--learning_rate", "nan"], "learning_rate=nan"),
    ],
)
def test_more_errors_in_process(ref, tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(["--workdir_root", str(tmp_path / "runs"), *args])
    assert excinfo.value.code == 2
    assert fragment in ref.error_line(capsys.readouterr().err)
    assert not list((tmp_path / "runs").glob("timeseries/*"))
