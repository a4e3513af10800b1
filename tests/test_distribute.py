"""Distribution: `MirroredStrategy` over two logical CPU devices and
`MultiWorkerMirroredStrategy` over two local worker processes train to the
same result as one device (float tolerance), for VanillaRNN's fused and
generic paths, the GradientNormCallback, global-norm clipping and the
experiments' `--strategy`.

Logical devices must be configured before TensorFlow starts, so the
mirrored checks run in a subprocess: this file run as a script (`python
tests/test_distribute.py mirrored-library|mirrored-experiment OUT ROOT`).
Each scenario is one test: its processes are the expensive part.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

# tf.distribute strategies: TensorFlow only, whatever KERAS_BACKEND says.
pytestmark = pytest.mark.tensorflow_only
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5

# 2 batches of 96 per epoch on sunspots, default clipping (global_clipnorm 1,
# active in the first steps): distributed clipping must equal one device's.
# 47 validation and 45 test windows: uneven shares in evaluate and predict.
TIMESERIES = ["--window", "6", "--hidden", "4", "--batch_size", "96",
              "--epochs", "3", "--grad_every_n_batches", "2", "--verbose", "0",
              "--validation_fraction", "0.152"]


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------------------
# The pieces, without a strategy
# ---------------------------------------------------------------------------


def test_batch_sizes_under_a_strategy():
    from experiments import training
    from experiments.data import DataError

    two = types.SimpleNamespace(num_replicas_in_sync=2)
    one = types.SimpleNamespace(num_replicas_in_sync=1)
    assert training.check_global_batch(64, two) == 32
    with pytest.raises(DataError, match="batch_size=33 with 2 replicas"):
        training.check_global_batch(33, two)
    # Evaluation: the first batch must split evenly; one replica: unchanged.
    assert training.eval_batch_size(47, two, 96) == 46
    assert training.eval_batch_size(500, two, 256) == 256
    assert training.eval_batch_size(47, one, 96) == 47
    with pytest.raises(DataError, match="1 evaluation samples with 2 replicas"):
        training.eval_batch_size(1, two)


def test_tf_config_parsing():
    from experiments import common

    cluster = {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]}

    def task(kind, index, spec=cluster):
        env = {"TF_CONFIG": json.dumps(
            {"cluster": spec, "task": {"type": kind, "index": index}})}
        return common.multi_worker_task(env)

    assert task("worker", 0) == ("worker", 0, True)
    assert task("worker", 1) == ("worker", 1, False)
    with_chief = {"chief": ["127.0.0.1:3333"], **cluster}
    assert task("chief", 0, with_chief) == ("chief", 0, True)
    assert task("worker", 0, with_chief) == ("worker", 0, False)
    for env, fragment in [
        ({}, "without a TF_CONFIG"),
        ({"TF_CONFIG": "{nope"}, "not JSON"),
        ({"TF_CONFIG": json.dumps({"cluster": cluster})}, "Received: TF_CONFIG="),
        ({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {
            "type": "worker", "index": 2}})}, "Received: TF_CONFIG="),
        ({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {
            "type": "evaluator", "index": 0}})}, "Received: TF_CONFIG="),
    ]:
        with pytest.raises(ValueError, match=fragment):
            common.multi_worker_task(env)


# ---------------------------------------------------------------------------
# The subprocess: two logical CPUs, MirroredStrategy vs. one device
# ---------------------------------------------------------------------------


def _two_logical_cpus():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )


def _mirrored_library_child(out, root):
    """VanillaRNN (both paths), GradientNormCallback and clipping."""
    _two_logical_cpus()
    import keras

    import keras_vrnn
    from experiments import training

    mirrored = training.make_strategy("mirrored")
    default = training.make_strategy("default")
    report = {"replicas": mirrored.num_replicas_in_sync}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 7, 3)).astype("float32")
    y = rng.standard_normal((32, 2)).astype("float32")
    batches = training.shuffled_batch_indices(32, 16, 0, 0, 6)  # 6 global batches

    def train(strategy, fused, log_dir):
        # The fused model is trained (and measured) outside strategy.scope(),
        # the generic one inside it; use_fused=True raises unless fused.
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((7, 3)),
                keras_vrnn.VanillaRNN(5, use_fused=fused, name="rnn"),
                keras.layers.Dense(2, name="out"),
            ])
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        callback = keras_vrnn.GradientNormCallback(
            log_dir, (x[:8], y[:8]), every_n_batches=2)
        scope = contextlib.nullcontext() if fused else strategy.scope()
        with scope:
            model.fit(training.batch_dataset((x, y), batches), epochs=2,
                      steps_per_epoch=3, callbacks=[callback], verbose=0,
                      shuffle=False)
        with np.load(os.path.join(log_dir, "gradient_norms.npz")) as npz:
            logged = npz["rnn/mean_norms"].tolist(), npz["steps"].tolist()
        return [np.asarray(w).tolist() for w in model.weights], logged

    for fused in (True, False):
        report[f"fused={fused}"] = {
            "one": train(default, fused, os.path.join(root, f"one-{fused}")),
            "two": train(mirrored, fused, os.path.join(root, f"two-{fused}")),
        }

    # Global-norm clipping: Keras clips per replica, clip_global_gradient the
    # sum. One SGD step on a Dense model with a clip that is surely active.
    def one_step(strategy, fix):
        keras.utils.set_random_seed(2)
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            optimizer = keras.optimizers.SGD(0.1, global_clipnorm=0.01)
            if fix:
                training.clip_global_gradient(optimizer)
            model.compile(optimizer=optimizer, loss="mse")
        data = training.batch_dataset((x[:, 0], y), batches[:1])
        model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
        return [np.asarray(w).tolist() for w in model.weights]

    report["clip"] = {
        "one": one_step(default, True),
        "two_fixed": one_step(mirrored, True),
        "two_keras": one_step(mirrored, False),
    }
    with open(out, "w") as f:
        json.dump(report, f)


def _mirrored_experiment_child(out, root):
    """The timeseries experiment with --strategy mirrored and default."""
    _two_logical_cpus()
    from experiments import training
    from experiments import timeseries

    report = {}
    for strategy in ("mirrored", "default"):
        timeseries.main(TIMESERIES + ["--strategy", strategy, "--workdir_root",
                                      root, "--run_name", strategy])
        model = training.load_best_model(os.path.join(root, "timeseries", strategy))
        report[f"{strategy} weights"] = [np.asarray(w).tolist() for w in model.weights]
    with open(out, "w") as f:
        json.dump(report, f)


def _run_child(mode, tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), mode, str(out), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_mirrored_over_two_devices_matches_one_device(tmp_path):
    """VanillaRNN, fused and generic path, a few Adam steps: same weights;
    GradientNormCallback: same norms (the whole fixed batch once, with the
    replicated weights; Keras' per-replica loss scaling undone when fit runs
    inside strategy.scope(), as for the generic model); global-norm
    clipping of the global batch's gradient."""
    report = _run_child("mirrored-library", tmp_path)
    assert report["replicas"] == 2
    for fused in (True, False):
        (w_one, (n_one, s_one)), (w_two, (n_two, s_two)) = (
            report[f"fused={fused}"]["one"], report[f"fused={fused}"]["two"])
        assert len(w_one) == len(w_two) == 5  # kernel, recurrent, bias, dense
        for a, b in zip(w_two, w_one):
            assert _max_rel(a, b) < TOL, fused
        assert s_one == s_two == [0, 2, 4, 6]
        assert _max_rel(n_two, n_one) < TOL, fused
    clip = report["clip"]
    for fixed, one in zip(clip["two_fixed"], clip["one"]):
        assert _max_rel(fixed, one) < TOL
    # Keras' own per-replica clipping would be another update.
    assert max(_max_rel(k, o) for k, o in zip(clip["two_keras"], clip["one"])) > 1e-2


@pytest.mark.slow
def test_mirrored_experiment_matches_default(tmp_path):
    """`python -m experiments.timeseries --strategy mirrored` vs default.

    Slow; covered by the two faster tests: the layer, callback and clipping
    under MirroredStrategy above, the experiment's distributed plumbing
    (datasets, clipping, uneven evaluation shares, results) in the
    multi-worker test below.
    """
    report = _run_child("mirrored-experiment", tmp_path)
    for a, b in zip(report["mirrored weights"], report["default weights"]):
        assert _max_rel(a, b) < TOL
    runs = tmp_path / "timeseries"
    with np.load(runs / "mirrored/logs/gradient_norms.npz") as got, np.load(
        runs / "default/logs/gradient_norms.npz"
    ) as want:
        assert got["steps"].tolist() == want["steps"].tolist() == [0, 2, 4, 6]
        assert _max_rel(got["rnn/mean_norms"], want["rnn/mean_norms"]) < TOL
    got = json.loads((runs / "mirrored" / "results.json").read_text())
    want = json.loads((runs / "default" / "results.json").read_text())
    assert got["status"] == want["status"] == "ok"
    assert got["run"]["replicas"] == 2 and want["run"]["replicas"] == 1
    _assert_close_results(got, want)


def _assert_close_results(got, want):
    for split in ("validation", "test"):
        for metric in ("mse", "mae"):
            assert got[split]["model"][metric] == pytest.approx(
                want[split]["model"][metric], rel=TOL), (split, metric)
    for key, values in want["history"].items():
        assert got["history"][key] == pytest.approx(values, rel=TOL), key
    assert got["best_epoch"] == want["best_epoch"]


# ---------------------------------------------------------------------------
# Multi-worker: two processes on loopback ports
# ---------------------------------------------------------------------------


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_matches_a_single_process(tmp_path):
    from experiments import timeseries

    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "experiments.timeseries", *TIMESERIES,
                 "--strategy", "multi-worker", "--run_name", "mw",
                 "--workdir_root", str(tmp_path)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True,
            ))
        # Meanwhile the reference: one process, one device.
        single, _ = timeseries.main(TIMESERIES + [
            "--workdir_root", str(tmp_path), "--run_name", "single"])
        errors = [w.communicate(timeout=400)[1] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, err in zip(workers, errors):
        assert w.returncode == 0, err[-4000:]
    chief = tmp_path / "timeseries" / "mw"
    other = tmp_path / "timeseries" / "mw.worker-1"  # the non-chief's own dir
    got = json.loads((chief / "results.json").read_text())
    want = json.loads((single / "results.json").read_text())
    assert got["status"] == "ok" and got["run"]["replicas"] == 2
    _assert_close_results(got, want)
    # Both workers hold the same (all-reduced) model and results.
    theirs = json.loads((other / "results.json").read_text())
    theirs.pop("train_time_s"), got.pop("train_time_s")
    assert theirs == got


if __name__ == "__main__":
    sys.path.insert(0, REPO)  # run as a script: the experiments package is here
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    children = {"mirrored-library": _mirrored_library_child,
                "mirrored-experiment": _mirrored_experiment_child}
    children[sys.argv[1]](sys.argv[2], sys.argv[3])
