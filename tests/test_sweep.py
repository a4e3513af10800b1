"""Tests for the sweeps of experiments/common.py: crash/diverge recording, resume, dask
workers (a LocalCluster, and a scheduler and workers started as separate
processes), HParams events. The configuration function here is pure NumPy,
so the engine is tested in seconds (the workers never import TensorFlow)."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import ClassVar

import numpy as np
import pytest

from experiments import common


# Module-level so spawn workers can unpickle it by reference.
CALLS_FILE = "calls.log"


def toy_fn(params, config_dir):
    """Seeded "training": crashes on request, diverges when scale > 1."""
    with open(os.path.join(os.path.dirname(os.path.dirname(config_dir)), CALLS_FILE), "a") as f:
        f.write(os.path.basename(config_dir) + "\n")
    if params.get("crash"):
        raise RuntimeError("boom: injected failure\nsecond line")
    rng = np.random.default_rng(params["seed"])
    w = rng.standard_normal(8) * params["scale"]
    norms = np.abs(w).cumprod()
    if not np.all(np.isfinite(norms)) or params["scale"] > 1e3:
        return {"status": "diverged", "diverged_step": 3, "last": float("inf")}
    if params["scale"] > 100:
        return {"status": "diverged", "diverged_step": 5, "error": "overflow in toy",
                "partial": 1.5}
    np.save(os.path.join(config_dir, "norms.npy"), norms)
    return {"loss": float(norms.sum()), "factor": float(norms[-1] / norms[0])}


def dying_fn(params, config_dir):
    """`toy_fn`, but the worker process dies on request."""
    if params.get("die"):
        os._exit(3)
    return toy_fn(params, config_dir)


def _configs(scales=(0.5, 1.0, 2.0), crash=False, extra=()):
    configs = []
    for s in list(scales) + list(extra):
        params = {"scale": float(s), "seed": 3}
        if crash and s == 1.0:
            params["crash"] = True
        configs.append((common.make_config_id(params, ["scale"], {"scale": "s"}), params))
    return configs


def _calls(sweep_dir):
    path = os.path.join(sweep_dir, CALLS_FILE)
    return open(path).read().split() if os.path.exists(path) else []


@dataclasses.dataclass
class ToySweep(common.SweepConfig):
    """A toy sweep over `scales` (the configurations of `_configs`)."""

    experiment: ClassVar[str] = "toy"
    sweep_axes: ClassVar[tuple] = ("scales",)

    scales: str = common.option("0.5,1,2", "Comma-separated scales.")
    steps: int = common.option(10, "Steps.")

    def configurations(self):
        return _configs(scales=common.split_list("scales", self.scales, float))


def _prepare(tmp_path, name="sw", **settings):
    """The run dir of a ToySweep named `name` (with its config.json, as
    `run_main` writes it) and whether it resumes one."""
    config = ToySweep(workdir_root=str(tmp_path), run_name=name, **settings)
    path, resumed, lock = common.open_run_dir(config, ToySweep.configurations)
    assert lock is None  # sweeps hold no lock: dask workers write there
    common.write_json(path / "config.json", dataclasses.asdict(config))
    return str(path), resumed


def test_crash_and_divergence_are_recorded_and_sweep_continues(tmp_path):
    d, resumed = _prepare(tmp_path)
    assert not resumed
    configs = _configs(scales=(0.5, 1.0, 500.0, 1e4), crash=True)
    records = common.run_sweep(d, configs, toy_fn, progress=False, metric_names=["loss"])
    status = {r["config_id"]: r["status"] for r in records}
    assert status == {"s0.5": "ok", "s1": "crashed", "s500": "diverged", "s10000": "diverged"}
    crashed = records[1]
    assert crashed["error"] == "RuntimeError: boom: injected failure"
    assert "Traceback" in open(os.path.join(d, "configs", "s1", "traceback.txt")).read()
    assert records[2]["diverged_step"] == 5 and records[2]["metrics"] == {"partial": 1.5}
    # Non-finite metrics are stored as strict-JSON null.
    assert records[3]["diverged_step"] == 3 and records[3]["metrics"]["last"] is None
    for cid, _ in configs:
        on_disk = json.load(open(os.path.join(d, "configs", cid, "result.json")))
        assert on_disk["status"] == status[cid]
    assert common.summarize(records)["crashed"] == 1


def test_rerun_skips_finished_configs_and_retries_crashed(tmp_path):
    d, _ = _prepare(tmp_path)
    first = common.run_sweep(d, _configs(crash=True), toy_fn, progress=False)
    assert _calls(d) == ["s0.5", "s1", "s2"]
    # Same run name again: resumable; only the crashed one (now fixed) and a
    # new axis value run.
    d2, resumed = _prepare(tmp_path)
    assert resumed and d2 == d
    sweep_records = common.run_sweep(
        d, _configs(extra=(4.0,)), toy_fn, progress=False
    )
    assert _calls(d) == ["s0.5", "s1", "s2", "s1", "s4"]
    assert [r["skipped"] for r in sweep_records] == [True, False, True, False]
    assert [r["status"] for r in sweep_records] == ["ok"] * 4
    assert sweep_records[0]["metrics"] == first[0]["metrics"]


def test_resume_refuses_changed_settings_and_foreign_dirs(tmp_path):
    d, _ = _prepare(tmp_path, steps=10)
    common.save_results(d, {"experiment": "toy"})  # a finished sweep resumes too
    assert _prepare(tmp_path, steps=10, workers=3, verbose=0) == (d, True)
    with pytest.raises(ValueError, match=r"holds a sweep with other settings \(steps: 10 "
                                         r"there, 20 now\)"):
        _prepare(tmp_path, steps=20)
    plain = tmp_path / "toy" / "plain"
    plain.mkdir()
    (plain / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="has no readable config.json"):
        _prepare(tmp_path, "plain")


def test_leaving_out_recorded_configs_is_refused(tmp_path):
    d, _ = _prepare(tmp_path)
    common.run_sweep(d, _configs(crash=True), toy_fn, progress=False)
    # An interrupted attempt (no result.json) holds no result: not counted.
    os.makedirs(os.path.join(d, "configs", "s8"))
    assert common.recorded_config_ids(d) == ["s0.5", "s1", "s2"]  # s1 crashed
    saved = open(os.path.join(d, "config.json")).read()
    with pytest.raises(common.SweepError) as excinfo:
        _prepare(tmp_path, scales="0.5")
    message = str(excinfo.value)
    assert message.startswith("Received: scales='0.5' for run dir")
    assert "2 recorded configuration(s)" in message and "(s1, s2; earlier: " in message
    assert open(os.path.join(d, "config.json")).read() == saved  # unchanged
    # run_sweep itself refuses too, before it runs or writes anything.
    calls = _calls(d)
    with pytest.raises(common.SweepError, match=r"leaves out \(s1, s2\)"):
        common.run_sweep(d, _configs(scales=(0.5, 4.0)), toy_fn, progress=False)
    assert _calls(d) == calls and not os.path.exists(os.path.join(d, "configs", "s4"))
    # A superset resumes: every recorded configuration is in the records.
    assert _prepare(tmp_path, scales="0.5,1,2,8") == (d, True)
    records = common.run_sweep(d, _configs(extra=(8.0,)), toy_fn, progress=False)
    assert [r["config_id"] for r in records] == ["s0.5", "s1", "s2", "s8"]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def _assert_same_sweeps(d1, r1, d2, r2):
    assert _strip(r1) == _strip(r2)
    np.testing.assert_array_equal(
        np.load(os.path.join(d1, "configs", "s2", "norms.npy")),
        np.load(os.path.join(d2, "configs", "s2", "norms.npy")),
    )


def test_local_dask_cluster_matches_in_process(tmp_path, capsys):
    configs = _configs(scales=(0.5, 1.0, 2.0, 500.0), crash=True)
    d1, _ = _prepare(tmp_path, "w1")
    d2, _ = _prepare(tmp_path, "w2")
    r1 = common.run_sweep(d1, configs, toy_fn, workers=1, label="toy")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("toy [1/4] s0.5: ok in ") and "[2/4] s1: crashed" in lines[1]
    r2 = common.run_sweep(d2, configs, toy_fn, workers=2, threads=1, progress=False)
    _assert_same_sweeps(d1, r1, d2, r2)
    # Resumed on the cluster: nothing finished runs again, the crash reruns.
    calls = _calls(d2)
    again = common.run_sweep(d2, configs, toy_fn, workers=2, progress=False)
    assert [r["skipped"] for r in again] == [True, False, True, True]
    assert sorted(_calls(d2)) == sorted(calls + ["s1"])


def test_a_dying_worker_process_is_a_crash_record(tmp_path):
    import dask
    import distributed  # noqa: F401 (its config defaults exist before the set below)

    d, _ = _prepare(tmp_path)
    configs = _configs(scales=(0.5,)) + [("die", {"die": True, "scale": 1.0, "seed": 3})]
    # No retries on other workers: the first death is the configuration's.
    # (Set before distributed is imported, the whole "distributed" section
    # would count as new and be removed again on exit, its defaults with it.)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        records = common.run_sweep(d, configs, dying_fn, workers=2, progress=False)
    assert [r["status"] for r in records] == ["ok", "crashed"]
    assert records[1]["error"].startswith("worker process failed: KilledWorker")
    on_disk = json.load(open(os.path.join(d, "configs", "die", "result.json")))
    assert on_disk["status"] == "crashed" and common.recorded_config_ids(d) == ["die", "s0.5"]


def test_sweep_on_a_separately_started_dask_cluster(tmp_path):
    """A scheduler and two workers, each its own process on 127.0.0.1, as
    `--scheduler tcp://HOST:PORT` finds them; shut down at the end."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(  # workers import toy_fn
        [tests_dir, os.path.dirname(tests_dir), os.environ.get("PYTHONPATH", "")]))
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli"]
    procs = [subprocess.Popen(
        dask[:2] + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "no scheduler"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(
                dask[:2] + ["distributed.cli.dask_worker", address, "--nworkers", "1",
                            "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            # Crash and divergence records come back from the workers too.
            configs = _configs(scales=(0.5, 1.0, 2.0, 500.0), crash=True)
            d1, _ = _prepare(tmp_path, "here")
            d2, _ = _prepare(tmp_path, "there")
            r1 = common.run_sweep(d1, configs, toy_fn, progress=False)
            r2 = common.run_sweep(d2, configs, toy_fn, scheduler=address, progress=False)
            _assert_same_sweeps(d1, r1, d2, r2)
            assert [r["status"] for r in r2] == ["ok", "crashed", "ok", "diverged"]
            workers = {w["host"] for w in client.scheduler_info()["workers"].values()}
            assert workers == {"127.0.0.1"}
            client.shutdown()  # the scheduler and its workers end
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_hparams_events_written(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    d, _ = _prepare(tmp_path)
    common.run_sweep(d, _configs(), toy_fn, progress=False, metric_names=["loss", "factor"])
    top = ea.EventAccumulator(d)
    top.Reload()
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = list(top.PluginTagToContent("hparams").values())[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    names = {h.name for h in data.experiment.hparam_infos}
    metrics = {m.name.tag for m in data.experiment.metric_infos}
    assert names == {"scale", "seed"} and metrics == {"loss", "factor", "diverged"}

    run = ea.EventAccumulator(os.path.join(d, "configs", "s2"))
    run.Reload()
    content = list(run.PluginTagToContent("hparams").values())[0]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["scale"].number_value == 2.0
    assert start.group_name == "s2"
    expected = json.load(open(os.path.join(d, "configs", "s2", "result.json")))
    assert run.Scalars("loss")[0].value == pytest.approx(expected["metrics"]["loss"])
    assert run.Scalars("diverged")[0].value == 0.0
