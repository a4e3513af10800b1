"""Resume: a run killed with SIGKILL mid-epoch and started again with the same
command continues in the same run dir and ends exactly like an uninterrupted
run with the same seed (results.json, history, gradient-norm NPZ and CSV);
a finished run is never resumed or overwritten."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from experiments import common
from experiments import training
from experiments import timeseries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 3 batches per epoch (sunspots: 210 training windows), 3 epochs; a gradient
# norm log every 2 batches, so logs fall inside epochs (truncated on resume).
ARGS = [
    "--window", "6", "--hidden", "4", "--batch_size", "64", "--epochs", "3",
    "--grad_every_n_batches", "2", "--verbose", "0", "--seed", "3",
]
WALL_TIME = ("train_time_s",)


def _command(root, run_name):
    return [sys.executable, "-m", "experiments.timeseries", *ARGS,
            "--workdir_root", str(root), "--run_name", run_name]


def _comparable(results):
    """results.json without wall times and the run's own bookkeeping."""
    return {k: v for k, v in results.items() if k not in WALL_TIME + ("run",)}


def _backup_epoch(workdir):
    meta = common.read_backup(workdir)
    return meta["epoch"] if meta else 0


@pytest.mark.parametrize("whole_passes", [True, False])
def test_batch_order_depends_only_on_the_batch_number(whole_passes):
    """What makes a resumed run see the batches of an uninterrupted one."""
    n, size = 23, 5
    stream = training.shuffled_batch_indices(n, size, 7, 0, 20, whole_passes)
    assert stream.shape == (20, size)
    for first in (1, 4, 9, 13):
        later = training.shuffled_batch_indices(n, size, 7, first, 20 - first,
                                              whole_passes)
        np.testing.assert_array_equal(later, stream[first:])
    if whole_passes:  # 4 whole batches per pass, no row twice in a pass
        for p in range(5):
            rows = stream[4 * p : 4 * p + 4].ravel()
            assert len(set(rows.tolist())) == 20
    else:  # consecutive permutations of all rows
        flat = stream.ravel()
        for p in range(4):
            assert sorted(flat[n * p : n * (p + 1)].tolist()) == list(range(n))
    other = training.shuffled_batch_indices(n, size, 8, 0, 20, whole_passes)
    assert not np.array_equal(other, stream)  # the seed matters


def _kill_after_first_backup(proc, workdir, report, timeout=240):
    """Waits until the run has backed up epoch >= 1, lets it get into the
    next epoch, and SIGKILLs it; records what the run dir held then."""
    deadline = time.monotonic() + timeout
    try:
        while _backup_epoch(workdir) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                report["error"] = f"run ended or timed out first (rc {proc.poll()})"
                return
            time.sleep(0.05)
        time.sleep(0.25)  # a batch or so into the next epoch (0.2 s per batch)
        report["finished_before_kill"] = (workdir / "results.json").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        report["backup_epoch"] = _backup_epoch(workdir)
        report["events"] = sorted(
            p.name for p in (workdir / "logs" / "train").glob("events.out.*")
        )
        with np.load(workdir / "logs" / "gradient_norms.npz") as npz:
            report["npz_steps"] = npz["steps"].tolist()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killed_run_resumes_to_the_results_of_an_uninterrupted_run(tmp_path, capsys):
    """One scenario (its runs are the expensive part): kill, resume, compare."""
    root = tmp_path
    workdir = root / "timeseries" / "resumed"
    env = dict(os.environ, **{common.TEST_BATCH_SLEEP_ENV: "0.2"})
    victim = subprocess.Popen(
        _command(root, "resumed"), cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    report = {}
    killer = threading.Thread(
        target=_kill_after_first_backup, args=(victim, workdir, report)
    )
    killer.start()
    try:
        # Meanwhile, the reference in this process (the same command).
        reference, _ = timeseries.main(
            ARGS + ["--workdir_root", str(root), "--run_name", "uninterrupted"]
        )
    finally:
        killer.join()
        victim.stderr.close()

    # 1. The run was killed mid-run, after its first backup.
    assert "error" not in report, report
    assert not report["finished_before_kill"]
    assert 1 <= report["backup_epoch"] < 3
    assert report["npz_steps"]  # gradient norms were logged before the kill

    # 2. Another command on the same run name is refused, nothing touched.
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(ARGS + ["--workdir_root", str(root), "--run_name",
                                "resumed", "--hidden", "5"])
    assert excinfo.value.code == 2
    assert "hidden: 4 there, 5 now" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before

    # 3. The same command resumes it, in the same run dir.
    resumed = subprocess.run(
        _command(root, "resumed"), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming run in {workdir} from epoch {report['backup_epoch']}" in (
        resumed.stdout)

    # 4. Exactly the results of the uninterrupted run: the same weights, data
    # order and best-checkpoint decisions.
    results = json.loads((workdir / "results.json").read_text())
    expected = json.loads((reference / "results.json").read_text())
    assert results["status"] == expected["status"] == "ok"
    assert results["run"]["resumed_from_epoch"] == report["backup_epoch"]
    assert expected["run"]["resumed_from_epoch"] is None
    assert results["epochs"] == 3 and len(results["history"]["loss"]) == 3
    assert _comparable(results) == _comparable(expected)
    assert (workdir / "history.json").read_text() == (
        reference / "history.json").read_text()

    # 5. The gradient-norm files continued (truncated to the backup's step,
    # then appended) and equal the uninterrupted run's.
    with np.load(workdir / "logs" / "gradient_norms.npz") as got, np.load(
        reference / "logs" / "gradient_norms.npz"
    ) as want:
        assert got.files == want.files
        assert got["steps"].tolist() == list(range(0, 10, 2))
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert report["npz_steps"] == list(range(0, 2 * len(report["npz_steps"]), 2))
    assert (workdir / "logs" / "gradient_norms.csv").read_text() == (
        reference / "logs" / "gradient_norms.csv").read_text()

    # 6. TensorBoard logs appended (old event files kept); backup and lock
    # gone once finished with status ok; plots written.
    events = {p.name for p in (workdir / "logs" / "train").glob("events.out.*")}
    assert set(report["events"]) < events
    assert not (workdir / "backup").exists()
    assert not (workdir / ".lock").exists()
    for png in ("loss_curves", "forecast_vs_truth", "gradient_heatmap"):
        assert (workdir / "plots" / f"{png}.png").exists()

    # 7. Now finished: never resumed or overwritten again.
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(ARGS + ["--workdir_root", str(root), "--run_name", "resumed"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a finished run" in err, err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_init_from_continues_from_a_saved_model(tmp_path, capsys):
    """--init_from loads a .keras model's weights (here: distinctive ones)
    and trains on from them; another architecture is one clear error."""
    import keras

    config = timeseries.Config(window=6, hidden=4)
    model = timeseries.build_model(config)
    weights = [np.full(w.shape, 0.01 * (i + 1), "float32")
               for i, w in enumerate(model.weights)]
    model.set_weights(weights)
    saved = tmp_path / "start.keras"
    model.save(saved)
    other = timeseries.build_model(timeseries.Config(window=6, hidden=5))
    wrong = tmp_path / "hidden5.keras"
    other.save(wrong)

    # A learning rate so small that the best model keeps the loaded weights.
    args = ["--window", "6", "--hidden", "4", "--batch_size", "64",
            "--epochs", "1", "--optimizer", "sgd", "--learning_rate", "1e-12",
            "--grad_every_n_batches", "100", "--verbose", "0",
            "--workdir_root", str(tmp_path)]
    workdir, results = timeseries.main(
        args + ["--init_from", str(saved), "--run_name", "continued"])
    assert results["run"]["init_from"] == str(saved)
    best = keras.saving.load_model(workdir / "model.keras", compile=False)
    for got, want in zip(best.get_weights(), weights):
        np.testing.assert_allclose(got, want, atol=1e-6)

    with pytest.raises(SystemExit) as excinfo:
        timeseries.main(args + ["--init_from", str(wrong), "--run_name", "wrong"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Received: init_from="), err
    assert "weight shapes" in err[0]
    assert not (tmp_path / "timeseries" / "wrong").exists()  # nothing left


def test_gradient_norm_callback_resume_truncates_and_continues(tmp_path):
    """GradientNormCallback(resume=True) keeps the logs up to the restored
    optimizer step, drops later ones and counts on from there."""
    import csv

    import keras

    import keras_vrnn

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((5, 2)),
        keras_vrnn.VanillaRNN(3, use_fused=False, name="rnn"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 5, 2)).astype("float32")
    y = rng.standard_normal((24, 1)).astype("float32")

    def fit(callback, n):
        model.fit(x[:n], y[:n], batch_size=4, epochs=1, shuffle=False,
                  callbacks=[callback], verbose=0)

    fit(keras_vrnn.GradientNormCallback(tmp_path, (x[:4], y[:4]), 2), 24)
    with np.load(tmp_path / "gradient_norms.npz") as npz:
        first = {k: npz[k] for k in npz.files}
    assert first["steps"].tolist() == [0, 2, 4, 6]

    # As after restoring a backup taken after batch 3: steps 4 and 6 are
    # dropped, then batches 4, 5, 6 log steps 4 and 6 again (no step 3).
    model.optimizer.iterations.assign(3)
    fit(keras_vrnn.GradientNormCallback(
        tmp_path, (x[:4], y[:4]), 2, resume=True), 12)
    with np.load(tmp_path / "gradient_norms.npz") as npz:
        assert npz["steps"].tolist() == [0, 2, 4, 6]
        np.testing.assert_array_equal(
            npz["rnn/mean_norms"][:2], first["rnn/mean_norms"][:2])
    with open(tmp_path / "gradient_norms.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "layer", "timestep", "mean_norm"]
    assert [int(r[0]) for r in rows[1:]] == [s for s in (0, 2, 4, 6) for _ in range(5)]
