"""Sweeps: many configurations of one experiment in one run dir, on dask.

A sweep is a list of `(config_id, params)` (small JSON-able dicts; the id
encodes the swept values) and one picklable function
`fn(params, config_dir) -> metrics dict` that trains or measures one
configuration and may write anything into `config_dir`. `run_sweep` runs
every configuration not finished yet and keeps going whatever happens:

- one that raises is recorded as "crashed" with its one-line error (the
  traceback in `<config_dir>/traceback.txt`); a crash may be transient, so a
  rerun tries it again;
- one that diverges raises `Diverged(step)` or returns `{"status":
  "diverged", "diverged_step": step, ...}` and is recorded as "diverged";
- everything else is "ok".

Where it runs: `--workers 1` (the default) in this process; `--workers N`
on a `dask.distributed.LocalCluster` of N worker processes (one thread each,
TensorFlow limited to `--threads` threads, default cpu_count // N); or
`--scheduler tcp://HOST:PORT` on a running dask cluster, whose workers must
import `experiments` and `keras_vrnn` (start them in the repository root or
with it on PYTHONPATH) and see the run dir at the same absolute path. The
results do not depend on where: every configuration seeds itself.

Run dir `runs/<experiment>/<run_name>/`: sweep.json (experiment and fixed
settings), config.json, configs/<config id>/result.json (written atomically
when the configuration is done) beside what `fn` wrote, TensorBoard HParams
summaries (`tensorboard --logdir` the run dir, HParams tab), results.json,
results.md and plots/.

Resuming: the same command and `--run_name` skips every configuration
recorded "ok" or "diverged" and runs the rest. It is refused (exit 2,
nothing touched) when the fixed settings differ (results must not be
mixed), when the dir is no sweep of this experiment, or when the swept
values leave out a recorded configuration: the report covers exactly the
configurations recorded in the dir, those of its config.json, so a smaller
rerun would report a subset while the rest stayed on disk (a union of two
grids is in general no grid). Adding values resumes; for a subset use a new
`--run_name`.
"""

import dataclasses
import logging
import math
import os
import pathlib
import re
import shutil
import socket
import time
import traceback
import typing
import uuid
from typing import ClassVar

from experiments import common
from experiments.common import option

MANIFEST, RESULT, CONFIGS_DIR = "sweep.json", "result.json", "configs"
STATUSES, FINISHED = ("ok", "diverged", "crashed"), ("ok", "diverged")


class SweepError(ValueError):
    """A sweep cannot start (bad directory or settings); one-line message."""


class Diverged(Exception):
    """Raised by a configuration whose training became inf/NaN at `step`;
    `metrics` measured before are kept in its record."""

    def __init__(self, step, message="", metrics=None):
        super().__init__(message or f"diverged at step {step}")
        self.step, self.metrics = step, dict(metrics or {})


def split_list(name, text, kind, minimum=None, choices=None):
    """The items of a comma-separated flag (`"0.5,1,2"`) as `kind`, each
    finite, >= minimum, one of `choices` and given once."""
    what = {int: "integers", float: "numbers", str: "names"}[kind]
    example = {int: "50,200", float: "0.5,1.0,2.0", str: "tanh,relu"}[kind]
    values = []
    for item in [i.strip() for i in str(text).split(",") if i.strip()] or [""]:
        try:
            value = kind(item) if item else None
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)):
            problem = f"Expected a comma-separated list of finite {what}, e.g. --{name} {example}"
        elif minimum is not None and value < minimum:
            problem = f"Expected {what} >= {minimum}"
        elif choices is not None and value not in choices:
            problem = f"Expected items from {list(choices)}"
        elif value in values:
            problem = f"Got {item!r} twice; expected each value once"
        else:
            values.append(value)
            continue
        raise ValueError(f"Received: {name}={text!r} (item {item!r}). {problem}.")
    return values


def make_config_id(params, keys, abbrev):
    """A filesystem-safe id, e.g. `tanh_g1.25_T200` for `{"activation": "",
    "gain": "g", "T": "T"}` (the prefix of each key)."""
    parts = [f"{abbrev[k]}{params[k]:g}" if isinstance(params[k], float)
             else f"{abbrev[k]}{params[k]}" for k in keys]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts))


def _one_line(exc):
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return lines[0][:500]


# ---------------------------------------------------------------------------
# TensorBoard HParams, written without TensorFlow
# ---------------------------------------------------------------------------


def _write_events(logdir, summaries, suffix):
    """Writes Summary protos to a new event file (TensorBoard's own record
    writer on a plain file: its EventFileWriter would import TensorFlow)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    with open(os.path.join(logdir, name), "wb") as f:
        writer = RecordWriter(f)
        events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
        events += [event_pb2.Event(wall_time=time.time(), step=0, summary=s) for s in summaries]
        for event in events:
            writer.write(event.SerializeToString())


def _hparam(value):
    value = common.jsonable(value)
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def write_hparams_config(sweep_dir, params_list, metric_names):
    """The sweep's HParams experiment: swept values and metric names."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    domains = {}
    for params in params_list:
        for key, value in params.items():
            domains.setdefault(key, set()).add(_hparam(value))
    hparams = [hp.HParam(k, hp.Discrete(sorted(v, key=str) if len({type(x) for x in v}) > 1
                                        else sorted(v))) for k, v in domains.items()]
    for old in pathlib.Path(sweep_dir).glob("events.out.tfevents.*.hparams_config"):
        old.unlink()
    _write_events(sweep_dir, [hp.hparams_config_pb(
        hparams=hparams, metrics=[hp.Metric(m) for m in [*metric_names, "diverged"]])],
        ".hparams_config")


def write_hparams_run(config_dir, config_id, params, record):
    """One trial: `hparams(params)` and a scalar per finite metric."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    scalars = {k: float(v) for k, v in record["metrics"].items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
    if record["status"] != "crashed":
        scalars["diverged"] = float(record["status"] == "diverged")
    _write_events(config_dir, [hp.hparams_pb({k: _hparam(v) for k, v in params.items()},
                                             trial_id=config_id)] + [
        summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)])
        for k, v in scalars.items()], ".hparams")


# ---------------------------------------------------------------------------
# Sweep directory
# ---------------------------------------------------------------------------


def config_dir_of(sweep_dir, config_id):
    return os.path.join(sweep_dir, CONFIGS_DIR, config_id)


def _record(sweep_dir, config_id):
    record = common.read_json(os.path.join(config_dir_of(sweep_dir, config_id), RESULT))
    return record if isinstance(record, dict) and record.get("status") in STATUSES else None


def recorded_config_ids(sweep_dir):
    """Ids with a result.json (any status; not an interrupted attempt)."""
    root = os.path.join(sweep_dir, CONFIGS_DIR)
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    return [name for name in names if _record(sweep_dir, name)]


def check_covers_recorded(sweep_dir, config_ids, axes=None):
    """`SweepError` if a configuration recorded in `sweep_dir` is not among
    `config_ids`; the message names the changed swept `axes` (`{flag:
    value}`) against the dir's config.json."""
    left_out = sorted(set(recorded_config_ids(sweep_dir)) - set(config_ids))
    if not left_out:
        return
    shown = ", ".join(left_out[:5]) + (f", ... ({len(left_out)} in all)" if len(left_out) > 5 else "")
    saved = common.read_json(os.path.join(sweep_dir, common.CONFIG_FILE)) or {}
    changed = [k for k in axes or {} if k in saved and saved[k] != axes[k]]
    received = ", ".join(f"{k}={axes[k]!r}" for k in changed) or f"{len(config_ids)} configuration(s)"
    earlier = "; earlier: " + ", ".join(f"{k}={saved[k]!r}" for k in changed) if changed else ""
    raise SweepError(
        f"Received: {received} for run dir {sweep_dir}, which holds {len(left_out)} "
        f"recorded configuration(s) that this sweep leaves out ({shown}{earlier}). "
        f"Expected swept values that include every recorded configuration (the report "
        f"covers all of them), or a new --run_name.")


def prepare_sweep_dir(sweep_dir, experiment, settings, config_ids=None, axes=None):
    """Creates the manifest of a new sweep dir (returns False) or checks an
    existing one for resuming (returns True); `SweepError` if it is not a
    sweep of `experiment`, has other settings, or holds recorded
    configurations outside `config_ids`."""
    path, settings = os.path.join(sweep_dir, MANIFEST), common.jsonable(settings)
    if not (os.path.isdir(sweep_dir) and os.listdir(sweep_dir)):
        os.makedirs(os.path.join(sweep_dir, CONFIGS_DIR), exist_ok=True)
        common.write_json(path, {"experiment": experiment, "settings": settings})
        return False
    manifest = common.read_json(path)
    if not isinstance(manifest, dict):
        raise SweepError(f"Run dir {sweep_dir} already exists and is not a sweep (no "
                         f"readable {MANIFEST}); it is never overwritten. Pass a new --run_name.")
    if manifest.get("experiment") != experiment:
        raise SweepError(f"Run dir {sweep_dir} holds a sweep of experiment "
                         f"{manifest.get('experiment')!r}, not {experiment!r}. Pass a new --run_name.")
    old = manifest.get("settings", {})
    differences = [f"{k}: {old.get(k, '<unset>')!r} -> {settings.get(k, '<unset>')!r}"
                   for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if differences:
        raise SweepError(f"Run dir {sweep_dir} holds a sweep with other settings "
                         f"({'; '.join(differences)}); resuming would mix results. Rerun with "
                         f"the same settings to resume, or pass a new --run_name.")
    if config_ids is not None:
        check_covers_recorded(sweep_dir, config_ids, axes)
    return True


def execute_config(fn, config_id, params, config_dir):
    """Runs one configuration (in this process or on a dask worker), stores
    and returns its record; never raises for the configuration's own errors."""
    shutil.rmtree(config_dir, ignore_errors=True)  # an interrupted attempt's leftovers
    os.makedirs(config_dir)
    record = {"config_id": config_id, "params": dict(params), "status": "ok",
              "diverged_step": None, "error": None, "metrics": {}}
    start = time.perf_counter()
    try:
        metrics = dict(fn(dict(params), config_dir) or {})
        record.update(status=metrics.pop("status", "ok"),
                      diverged_step=metrics.pop("diverged_step", None),
                      error=metrics.pop("error", None), metrics=metrics)
    except Diverged as exc:
        record.update(status="diverged", diverged_step=exc.step, error=str(exc),
                      metrics=exc.metrics)
    except Exception as exc:  # noqa: BLE001 (a crash is a result here)
        record.update(status="crashed", error=_one_line(exc))
        pathlib.Path(config_dir, "traceback.txt").write_text(traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - start, 3)
    record = common.jsonable(record)
    write_hparams_run(config_dir, config_id, params, record)
    common.write_json(os.path.join(config_dir, RESULT), record)
    return record


def _dask_client(workers, threads, scheduler):
    """A client of the cluster at `scheduler`, or of a new LocalCluster of
    `workers` processes with `threads` TensorFlow threads each (loopback)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise common.DataError(
                f"Received: scheduler={scheduler!r} ({_one_line(err)}). Expected the "
                f"address of a running dask scheduler.") from None
    threads = str(threads or max(1, (os.cpu_count() or 1) // workers))
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
           "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", scheduler_kwargs={"dashboard": False}, env=env,
                           silence_logs=logging.ERROR)
    return Client(cluster)


def run_sweep(sweep_dir, configs, fn, *, workers=1, threads=0, scheduler=None,
              metric_names=(), progress=True, label="sweep"):
    """Runs the configurations not finished in `sweep_dir` (in order of
    `configs`, see the module doc for where) and returns every record:
    config_id, params, status, diverged_step, error, metrics, wall_s, skipped."""
    sweep_dir = os.path.abspath(sweep_dir)  # dask workers may start elsewhere
    ids = [cid for cid, _ in configs]
    if len(set(ids)) != len(ids):
        raise SweepError(f"Duplicate configuration ids: {sorted({c for c in ids if ids.count(c) > 1})}.")
    check_covers_recorded(sweep_dir, ids)
    write_hparams_config(sweep_dir, [p for _, p in configs], metric_names)
    records = {}
    for cid, _ in configs:
        done = _record(sweep_dir, cid)
        if done is not None and done["status"] in FINISHED:
            records[cid] = {**done, "skipped": True}
    todo = [(cid, params) for cid, params in configs if cid not in records]
    if progress and records:
        print(f"{label}: {len(records)} of {len(configs)} configurations finished before, skipped")

    def finish(record):
        records[record["config_id"]] = {**record, "skipped": False}
        if progress:
            print(f"{label} [{len(records)}/{len(configs)}] {record['config_id']}: "
                  f"{record['status']} in {record['wall_s'] or 0:.1f}s", flush=True)

    if todo and workers == 1 and not scheduler:
        for cid, params in todo:
            finish(execute_config(fn, cid, params, config_dir_of(sweep_dir, cid)))
    elif todo:
        from dask.distributed import as_completed

        client = _dask_client(workers, threads, scheduler)
        try:
            futures = {client.submit(execute_config, fn, cid, params, config_dir_of(sweep_dir, cid),
                                     key=f"{label}-{cid}-{uuid.uuid4().hex}", pure=False):
                       (cid, params) for cid, params in todo}
            for future in as_completed(futures):
                try:
                    record = future.result()
                except Exception as exc:  # noqa: BLE001 (the worker process died)
                    cid, params = futures[future]
                    record = {"config_id": cid, "params": params, "status": "crashed",
                              "diverged_step": None, "metrics": {}, "wall_s": None,
                              "error": f"worker process failed: {_one_line(exc)}"}
                    common.write_json(os.path.join(config_dir_of(sweep_dir, cid), RESULT), record)
                finish(record)
        finally:  # also on Ctrl-C: no worker processes are left behind
            cluster = None if scheduler else client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
    return [records[cid] for cid in ids]


def summarize(records):
    """Counts per status and of the configurations reused from before."""
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    return {**counts, "skipped": sum(bool(r.get("skipped")) for r in records)}


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class SweepConfig(common.BaseConfig):
    """Settings of every sweep; a subclass names its `sweep_axes`, the
    comma-separated list fields that span the sweep."""

    sweep_axes: ClassVar[tuple] = ()
    # Fields that change where and how, not what, is computed.
    execution_fields: ClassVar[tuple] = ("workers", "threads", "scheduler", "verbose",
                                         "run_name", "workdir_root")

    # 1 runs the configurations one after another in this process.
    workers: int = option(1, "Worker processes of a local dask cluster for the "
                          "configurations; 1 runs them in this process.")
    # 0: cpu_count // workers threads for TensorFlow in each worker.
    threads: int = option(0, "TensorFlow threads per local worker (0: cpu_count // workers).")
    # An existing dask cluster instead of a local one.
    scheduler: typing.Optional[str] = option(
        None, "Address of a running dask scheduler, e.g. tcp://10.0.0.5:8786, whose "
        "workers run the configurations (they must see the run dir at the same path).")
    run_name: typing.Optional[str] = option(
        None, "Name of the run directory (default: UTC start time). Reusing the name of "
        "an earlier run of this sweep resumes it: finished configurations are skipped; "
        "the swept values may add configurations but not leave out recorded ones.")
    # Keras' own per-epoch output is always off in a sweep.
    verbose: int = option(1, "0: silent; 1 or 2: one progress line per finished "
                          "configuration.", choices=(0, 1, 2))

    def validate(self):
        super().validate()
        common.check_int("workers", self.workers, example=2)
        common.check_int("threads", self.threads, minimum=0)
        if self.scheduler is not None and not re.fullmatch(r"\w+://\S+:\d+", self.scheduler):
            raise ValueError(f"Received: scheduler={self.scheduler!r}. Expected a dask "
                             f"scheduler address, e.g. --scheduler tcp://127.0.0.1:8786.")

    def fixed_settings(self):
        """The settings that must match when a sweep is resumed."""
        skip = set(self.execution_fields) | set(self.sweep_axes)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def sweep(self, workdir, configs, fn, metric_names):
        return run_sweep(str(workdir), configs, fn, workers=self.workers, threads=self.threads,
                         scheduler=self.scheduler, metric_names=metric_names,
                         progress=self.verbose > 0, label=self.experiment)


def results_of(experiment, records, wall_s, **extra):
    """A sweep's results.json: counts, wall times (`wall_s` of this start,
    `configs_wall_s` of every configuration, also those an earlier start of a
    resumed sweep finished), one row per configuration and `extra`."""
    return {"experiment": experiment, "counts": summarize(records), "wall_s": wall_s,
            "configs_wall_s": sum(r.get("wall_s") or 0.0 for r in records),
            "rows": rows_of(records), **extra}


def counts_line(results):
    """The report's first sentence: what ran, what was reused, how long."""
    c = results["counts"]
    return (f"{len(results['rows'])} configurations ({c['ok']} ok, {c['diverged']} diverged, "
            f"{c['crashed']} crashed; {c['skipped']} reused from an earlier start), "
            f"{results['wall_s']:.0f} s this start, {results['configs_wall_s']:.0f} s in "
            f"configurations.")


def save_report(workdir, results, md, verbose):
    """results.json and results.md; prints the summary tables when verbose."""
    common.save_results(workdir, results)
    (pathlib.Path(workdir) / "results.md").write_text(md)
    if verbose:
        print("\n" + md.split("\n## All configurations")[0])
    return results


def run_sweep_main(train_and_evaluate, config_cls, argv=None, configurations=None):
    """`common.run_main` for sweeps: the same flags and errors, and resuming
    (see the module doc). `configurations(config) -> [(id, params)]` lets a
    rerun that leaves out recorded ones be refused before anything changes.
    Returns `(workdir, results)`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        config = common.parse_config(config_cls, argv, prog=common.prog_name(train_and_evaluate))
        config.validate()
        ids = [cid for cid, _ in configurations(config)] if configurations else None
        path = pathlib.Path(config.workdir_root) / config.experiment / str(config.run_name)
        axes = {k: getattr(config, k) for k in config.sweep_axes}
        if config.run_name is None or not path.exists():
            path = common.new_run_dir(config.experiment, config.run_name, config.workdir_root)
        resumed = prepare_sweep_dir(str(path), config.experiment, config.fixed_settings(),
                                    ids, axes)
        common.write_json(path / common.CONFIG_FILE, dataclasses.asdict(config))
    except (ValueError, FileNotFoundError) as err:
        common.fail(err)
    print(f"{'Resuming sweep in' if resumed else 'Run directory:'} {path}", flush=True)
    try:
        results = train_and_evaluate(config, path)
    except (common.DataError, FileNotFoundError) as err:
        common.fail(err)
    print(f"\nResults and plots: {path}/\n  results:     {path / common.RESULTS_FILE} "
          f"(table: {path / 'results.md'})\n  plots:       {path / common.PLOTS_DIR}/\n"
          f"  TensorBoard: tensorboard --logdir {path}  (HParams tab: the sweep)")
    return path, results


def fmt(value, digits=3):
    """A number for the report tables ("–" for a missing or NaN one)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def rows_of(records):
    """One flat table row per record: id, params, status, metrics."""
    return [{"config_id": r["config_id"], **r["params"], "status": r["status"],
             "diverged_step": r.get("diverged_step"), "error": r.get("error"),
             "wall_s": r.get("wall_s"), **(r.get("metrics") or {})} for r in records]


def status_text(row):
    """`ok`, `diverged@<step>` or `crashed: <error>` for the report tables."""
    if row["status"] == "diverged":
        return f"diverged@{row['diverged_step']}"
    return row["status"] + (f": {row.get('error')}" if row["status"] == "crashed" else "")



def fit_steps(model, config_dir, settings, make_train, validation_data, grad_data,
              callbacks=(), **fit_kwargs):
    """Trains `train_steps // steps_per_epoch` logged epochs (at least one) of
    `steps_per_epoch` batches from `make_train(n)`, with `DivergenceMonitor`, `callbacks`,
    TensorBoard and (given `grad_data`) gradient norms in `<config_dir>/logs`.
    Returns `(history, monitor)`."""
    from experiments import training

    spe = min(settings["steps_per_epoch"], settings["train_steps"])
    epochs = max(1, settings["train_steps"] // spe)
    x, y = make_train(epochs * spe * settings["batch_size"])
    monitor = training.DivergenceMonitor()
    history = model.fit(
        x, y, batch_size=settings["batch_size"], epochs=epochs, steps_per_epoch=spe,
        shuffle=False, validation_data=validation_data, verbose=0, **fit_kwargs,
        callbacks=[monitor, *callbacks, *training.logging_callbacks(
            config_dir, grad_data, settings["grad_every_n_batches"])]).history
    return history, monitor


# ---------------------------------------------------------------------------
# Reports: markdown tables and multi-panel plots from the rows
# ---------------------------------------------------------------------------


def finite(value):
    """Whether a row's value is a finite number (missing ones are None)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def log_crossing(xs, ys, level=1.0):
    """The x where y crosses `level` along increasing xs, interpolated in
    log-log between neighbouring finite positive points, or None."""
    points = [(x, y) for x, y in zip(xs, ys) if finite(y) and y > 0]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        l0, l1 = math.log(y0 / level), math.log(y1 / level)
        if l0 == 0:
            return x0
        if l0 < 0 <= l1 or l1 <= 0 < l0:
            return math.exp(math.log(x0) + -l0 / (l1 - l0) * (math.log(x1) - math.log(x0)))
    return None


def index_rows(rows, keys):
    """`{(row[k] for k in keys): row}`: the rows of a grid by their swept values."""
    return {tuple(r[k] for k in keys): r for r in rows}


def group_rows(rows, keys, order):
    """`{(row[k] for k in keys): [rows sorted by row[order]]}`, the groups in
    the order of the rows (configuration order)."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return {key: sorted(group, key=lambda r: r[order]) for key, group in groups.items()}


def md_table(header, lines, align):
    """A markdown table: the `header` cells, then a line per list of cells;
    `align` has an "l" or "r" per column."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align),
            *(line(cells) for cells in lines)]


def md_section(title, *lines):
    """A `## title` section of a report: its lines after a blank line."""
    return ["", f"## {title}", "", *lines]


def configs_section(rows, columns):
    """The report's "All configurations" table: id, status and a column per
    entry of `columns`, a metric key or `(header, row -> text)`."""
    columns = [c if isinstance(c, tuple) else (c, lambda r, k=c: fmt(r.get(k))) for c in columns]
    return md_section("All configurations", *md_table(
        ["config", "status", *(h for h, _ in columns)],
        [[r["config_id"], status_text(r), *(f(r) for _, f in columns)] for r in rows],
        "ll" + "r" * len(columns)))


def md_report(title, lines):
    """The text of results.md: `# title` and the lines."""
    return "\n".join([f"# {title}", "", *lines]) + "\n"


def config_profile(workdir, config_id, path, key=None, read=None):
    """What a configuration wrote at `path` in its dir: `read(file)`, or the
    array `key` of an NPZ file; None when the file or key is absent (a
    configuration that crashed before writing it)."""
    file = os.path.join(config_dir_of(str(workdir), config_id), path)
    if not os.path.exists(file):
        return None
    if read is not None:
        return read(file)
    import numpy as np

    with np.load(file) as arrays:
        return np.asarray(arrays[key]) if key in arrays.files else None


def plot_panels(png, row_keys, col_keys, draw, panel_size, legend_ncols=0):
    """A figure of a panel per (row key, column key), `draw(ax, row_key,
    col_key)` filling each, saved to `png` (returned). With `legend_ncols`,
    one legend below all panels from the labels of the first."""
    from matplotlib.figure import Figure

    width, height = panel_size[0] * len(col_keys), panel_size[1] * len(row_keys)
    fig = Figure(figsize=(width, height + (0.8 if legend_ncols else 0)), layout="constrained")
    axes = fig.subplots(len(row_keys), len(col_keys), squeeze=False)
    for ax_row, row_key in zip(axes, row_keys):
        for ax, col_key in zip(ax_row, col_keys):
            draw(ax, row_key, col_key)
    if legend_ncols:
        handles = dict(zip(*reversed(axes[0][0].get_legend_handles_labels())))
        fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                   ncols=legend_ncols, fontsize=8)
    fig.savefig(png, dpi=90)
    return png


def steps_back_panel(ax, title, curves):
    """Per-step profiles (one value per step, e.g. mean ||dL/dh_t||) against
    the steps back from the last step, log y, their positive finite values:
    `curves` is `[(profile or None, label, style)]`; one with nothing to draw
    keeps its label in the legend (dotted, no points)."""
    import numpy as np

    for profile, label, style in curves:
        ok = np.zeros(0, bool) if profile is None else np.isfinite(profile) & (profile > 0)
        if ok.any():
            ax.plot(np.arange(profile.size - 1, -1, -1)[ok], profile[ok], label=label, **style)
            ax.set_yscale("log")
        else:
            ax.plot([], [], ls=":", label=label, **style)
    ax.set(title=title, xlabel="steps back from the last step", ylabel="mean ||dL/dh_t||")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="best")


def log_log_axes(ax, ticks, **labels):
    """Log-log axes whose x ticks are the swept values `ticks`."""
    ax.set(xscale="log", yscale="log", **labels)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.grid(True, which="major", alpha=0.3)
