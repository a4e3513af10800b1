"""Divergence: a run whose loss or gradients become NaN/inf stops at once,
writes results.json with status "diverged" and the step, keeps its logs and
its last good checkpoint and backup, and exits with status 3."""

import contextlib
import io
import json
import math

import numpy as np
import pytest

from experiments import common
from experiments import training
from experiments import timeseries

TINY = ["--window", "6", "--hidden", "4", "--grad_every_n_batches", "5",
        "--verbose", "0"]
# SGD far above its stable step size on the output layer: the loss grows
# geometrically and overflows in the second epoch (13 batches of 16 each).
EXPLODING = TINY + [
    "--batch_size", "16", "--epochs", "4", "--optimizer", "sgd",
    "--learning_rate", "3", "--clipnorm", "0", "--recurrent_gain", "3",
]
# A linear recurrence with a large gain: overflows within the first epoch.
AT_ONCE = TINY + [
    "--batch_size", "64", "--epochs", "3", "--optimizer", "sgd",
    "--learning_rate", "0.3", "--clipnorm", "0", "--recurrent_gain", "3",
    "--activation", "linear",
]


def _run(argv, root, name, capsys):
    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(argv + ["--workdir_root", str(root), "--run_name", name])
    workdir = root / "timeseries" / name
    return excinfo.value.code, workdir, capsys.readouterr()


def test_exploding_run_stops_cleanly_with_status_diverged(tmp_path):
    """One scenario (its run is the expensive part)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as excinfo:
        timeseries.main(EXPLODING + ["--workdir_root", str(tmp_path),
                                     "--run_name", "boom"])
    workdir = tmp_path / "timeseries" / "boom"
    err = err.getvalue()

    # 1. Exit status 3 and one "diverged: ..." line, no traceback.
    assert excinfo.value.code == common.DIVERGED_EXIT_CODE == 3
    lines = [line for line in err.splitlines() if line.startswith("diverged: ")]
    assert len(lines) == 1, err
    assert "non-finite loss" in lines[0] and str(workdir) in lines[0]
    assert "Traceback" not in err

    # 2. results.json: status, where (global batch index), what is kept.
    results = json.loads((workdir / "results.json").read_text())
    assert results["status"] == "diverged"
    where = results["diverged_at"]
    steps_per_epoch = 13  # sunspots: 208 training windows // 16
    assert where["step"] == where["epoch"] * steps_per_epoch + where["batch"]
    assert where["epoch"] >= 1, where  # one good epoch first (see EXPLODING)
    assert where["cause"] == "loss" and where["loss"] in ("inf", "nan")
    assert results["epochs"] == where["epoch"] + 1 < 4  # stopped at once
    assert math.isfinite(results["history"]["loss"][0])
    assert results["history"]["loss"][-1] is None  # NaN/inf in strict JSON
    assert results["checkpoint"] == "model.keras"
    assert results["backup_epoch"] == where["epoch"]  # the last good epoch
    assert "test" not in results  # a diverged model is not evaluated

    # 3. The logs, the last good checkpoint and backup are kept, finite.
    model = training.load_best_model(workdir)
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert common.read_backup(workdir)["epoch"] == where["epoch"]
    for sub in ("train", "validation"):
        assert list((workdir / "logs" / sub).glob("events.out.tfevents.*")), sub
    with np.load(workdir / "logs" / "gradient_norms.npz") as npz:
        assert npz["steps"][0] == 0 and len(npz["steps"]) >= 4
    assert (workdir / "plots" / "loss_curves.png").exists()

    # 4. A diverged run is finished: the same command does not touch it.
    before = (workdir / "results.json").read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as excinfo:
        timeseries.main(EXPLODING + ["--workdir_root", str(tmp_path),
                                     "--run_name", "boom"])
    assert excinfo.value.code == 2
    assert "is a finished run" in err.getvalue()
    assert (workdir / "results.json").read_bytes() == before


def test_divergence_in_the_first_epoch_leaves_no_checkpoint(tmp_path, capsys):
    code, workdir, captured = _run(AT_ONCE, tmp_path, "now", capsys)
    assert code == 3
    results = json.loads((workdir / "results.json").read_text())
    assert results["status"] == "diverged"
    assert results["diverged_at"]["epoch"] == 0
    assert results["checkpoint"] is None and results["backup_epoch"] is None
    assert not (workdir / "model.keras").exists()
    assert "no checkpoint (no epoch finished)" in captured.err


def test_monitor_catches_a_nan_gradient_with_a_finite_loss():
    """loss = mean(sqrt(|p - p|)) is 0, but its gradient is inf * 0 = NaN."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(
        optimizer="sgd",
        loss=lambda y, p: keras.ops.mean(keras.ops.sqrt(keras.ops.abs(p - p))),
    )
    from experiments.training import DivergenceMonitor

    monitor = DivergenceMonitor()
    x = np.ones((8, 3), "float32")
    model.fit(x, x[:, :2], batch_size=4, epochs=2, callbacks=[monitor], verbose=0)
    assert monitor.diverged == {
        "step": 0, "epoch": 0, "batch": 0, "cause": "gradients", "loss": 0.0}
    assert int(model.optimizer.iterations) == 1  # stopped after that batch
    assert monitor.steps_done == 1
