"""Shared sweep engine: many configurations of one experiment, one run dir.

A sweep is a list of configurations (small JSON-able parameter dicts, each
with a stable id) and one module-level function

    fn(params: dict, config_dir: str) -> dict

that trains/measures one configuration, writes whatever it likes into
`config_dir` (TensorBoard logs, arrays, plots) and returns its metrics.
`run_sweep` runs the configurations and keeps going whatever happens:

- A configuration that raises is recorded with status "crashed" and the
  one-line error message (the traceback goes to `<config_dir>/traceback.txt`).
- A configuration that diverges (inf/NaN) either raises `Diverged(step)` or
  returns `{"status": "diverged", "diverged_step": step, ...}`; it is
  recorded with status "diverged" (its metrics, if any, are kept).
- Everything else has status "ok".

Layout of a sweep run dir (`runs/<experiment>/<run_name>/`)::

    sweep.json                        manifest: experiment, fixed settings
    events.out.tfevents.*.hparams_config   HParams experiment summary
    configs/<config id>/result.json   one per finished configuration,
                                      written atomically when it is done
    configs/<config id>/events.*.hparams   hp.hparams + metric scalars
    configs/<config id>/...           whatever `fn` wrote

Resume semantics (the choice made here): a run dir that holds a `sweep.json`
manifest is a sweep and is *resumable*. Starting the same experiment with the
same `--run_name` again reuses the dir, skips every configuration whose
`result.json` says "ok" or "diverged", and reruns the rest (never started,
interrupted, or "crashed": a crash may be transient, and a deterministic one
just crashes again and is recorded again). Resuming is refused (exit 2 via
`SweepError`) when the fixed settings recorded in the manifest differ from
the new ones (results from different settings must not be mixed), or when the
directory exists without a manifest (not a sweep: it is never touched).
Changing only the swept axes (e.g. adding a gain) is allowed: configuration
ids encode the axis values, so finished ones are reused and new ones run.
Leaving out a configuration the dir has recorded (its `result.json`: "ok",
"diverged" or "crashed") is refused too, with the earlier axis values in the
message. The report (results.json, results.md, plots) is made from the
swept axes of the command, so after a smaller rerun it would describe a
subset while the other configurations stayed on disk unreported. Merging
them into the report instead is worse: the union of two grids is in general
no grid (no config.json could describe it; tables and plots would have
holes), and a report that ignores the axes just typed is a surprise of its
own. Refusing loses nothing and keeps one rule: a sweep dir's report
covers exactly the configurations recorded in it, which are those of its
config.json. To look at a subset, rerun with a new `--run_name`. A
configuration dir without `result.json` (an interrupted attempt) holds no
result and does not count.

Parallelism: `workers=1` (default) runs in this process; `workers=N > 1`
uses a `concurrent.futures.ProcessPoolExecutor` with the "spawn" start method
whose workers set TensorFlow's thread pools to `threads` threads (default
`cpu_count // workers`) before TensorFlow is imported. Results do not depend
on `workers`: every configuration seeds itself from its parameters.

HParams: the sweep writes `hparams_config` once at the sweep level (the
swept parameters as discrete domains and the metric names), and each
configuration dir gets `hparams(...)` (trial id = config id) plus one scalar
per finite numeric metric and a `diverged` 0/1 scalar, so
`tensorboard --logdir runs/<experiment>/<run_name>` shows the sweep in the
HParams dashboard. The summaries are the protos of
`tensorboard.plugins.hparams.api` (`hparams_config_pb`/`hparams_pb`),
written with TensorBoard's pure-Python record writer so the sweep process
does not need TensorFlow.

Progress: one line on stderr, updated per finished configuration.
"""

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import typing
from typing import ClassVar

import numpy as np

from experiments import runner as _runner

MANIFEST = "sweep.json"
RESULT = "result.json"
CONFIGS_DIR = "configs"
FINISHED_STATUSES = ("ok", "diverged")
STATUSES = ("ok", "diverged", "crashed")


class SweepError(ValueError):
    """A sweep cannot start (bad directory or settings); one-line message."""


class Diverged(Exception):
    """Raise from a configuration function when training became inf/NaN.

    Args:
        step: The step (training step, or 0 for the initial forward pass) at
            which the first non-finite value appeared.
        message: Optional description (what overflowed).
        metrics: Optional metrics measured before the divergence; they are
            kept in the record.
    """

    def __init__(self, step, message="", metrics=None):
        super().__init__(message or f"diverged at step {step}")
        self.step = None if step is None else int(step)
        self.metrics = dict(metrics or {})


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def save_report(workdir, results, md, verbose):
    """Writes a sweep's `results.json` and `results.md` (`md`); when
    `verbose`, prints the summary tables (all but the per-configuration one,
    which starts at the heading "## All configurations")."""
    _runner.save_results(workdir, results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md)
    if verbose:
        print()
        print(md.split("\n## All configurations")[0])
    return results


def write_json_atomic(path, obj):
    """Writes `obj` as JSON to `path` atomically (temp file + os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_runner.jsonable(obj), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_ID_BAD = re.compile(r"[^A-Za-z0-9._=+-]+")


def make_config_id(params, keys=None, abbrev=None):
    """A filesystem-safe id from parameter values, e.g. `tanh_g1.25_T200`.

    Args:
        params: The configuration's parameter dict.
        keys: Order of the keys to include (default: sorted keys).
        abbrev: Optional `{key: prefix}`; a key mapped to "" contributes its
            value only, e.g. `{"activation": "", "gain": "g", "T": "T"}`.
    """
    keys = sorted(params) if keys is None else keys
    abbrev = abbrev or {}
    parts = []
    for key in keys:
        value = params[key]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        prefix = abbrev.get(key, f"{key}=")
        parts.append(f"{prefix}{text}")
    return _ID_BAD.sub("-", "_".join(parts)) or "config"


def _one_line(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


# ---------------------------------------------------------------------------
# TensorBoard HParams (no TensorFlow needed)
# ---------------------------------------------------------------------------


def _hp():
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2


_uid = iter(range(1 << 62))


def _write_summaries(logdir, summaries, suffix):
    """Writes `[(step, Summary proto)]` to a fresh event file in `logdir`.

    TensorBoard's `EventFileWriter` would import TensorFlow (for `gfile`);
    its `RecordWriter` on a plain file writes the same TFRecord format.
    """
    import socket

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(logdir, exist_ok=True)
    name = "events.out.tfevents.%010d.%s.%s.%s%s" % (
        time.time(), socket.gethostname(), os.getpid(), next(_uid), suffix,
    )
    with open(os.path.join(logdir, name), "wb") as f:
        writer = RecordWriter(f)
        events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
        events += [
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
            for step, summary in summaries
        ]
        for event in events:
            writer.write(event.SerializeToString())
        f.flush()
        os.fsync(f.fileno())


def _scalar_pb(tag, value):
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))]
    )


def _hparam_value(value):
    """HParams values must be bool, int, float or str."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    return json.dumps(_runner.jsonable(value))


def numeric_metrics(metrics):
    """The finite scalar numbers of a metrics dict (for TensorBoard)."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            if math.isfinite(float(value)):
                out[key] = float(value)
    return out


def write_hparams_config(sweep_dir, params_list, metric_names):
    """Writes the sweep-level `hparams_config` (replacing an older one)."""
    hp = _hp()
    values = {}
    for params in params_list:
        for key, value in params.items():
            values.setdefault(key, []).append(_hparam_value(value))
    hparams = []
    for key, vals in values.items():
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            if any(isinstance(v, float) for v in vals):
                vals = [float(v) for v in vals]
        elif not all(type(v) is type(vals[0]) for v in vals):
            vals = [str(v) for v in vals]
        hparams.append(hp.HParam(key, hp.Discrete(sorted(set(vals)))))
    metrics = [hp.Metric(name) for name in list(metric_names) + ["diverged"]]
    for name in os.listdir(sweep_dir):
        if name.startswith("events.out.tfevents") and name.endswith(".hparams_config"):
            os.unlink(os.path.join(sweep_dir, name))
    _write_summaries(
        sweep_dir,
        [(0, hp.hparams_config_pb(hparams=hparams, metrics=metrics))],
        ".hparams_config",
    )


def write_hparams_run(config_dir, config_id, params, record):
    """Writes `hparams(params)` and the metric scalars into `config_dir`."""
    hp = _hp()
    hparams = {k: _hparam_value(v) for k, v in params.items()}
    summaries = [(0, hp.hparams_pb(hparams, trial_id=config_id))]
    for tag, value in numeric_metrics(record.get("metrics")).items():
        summaries.append((0, _scalar_pb(tag, value)))
    if record["status"] != "crashed":
        summaries.append((0, _scalar_pb("diverged", record["status"] == "diverged")))
    _write_summaries(config_dir, summaries, ".hparams")


# ---------------------------------------------------------------------------
# Sweep directory (manifest, resume)
# ---------------------------------------------------------------------------


def _diff(old, new):
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
        for k in keys
        if old.get(k, "<unset>") != new.get(k, "<unset>")
    ]


def recorded_config_ids(sweep_dir):
    """Ids of the configurations with a `result.json` in `sweep_dir`, sorted
    (any status: ok, diverged or crashed; not an interrupted attempt)."""
    root = os.path.join(sweep_dir, CONFIGS_DIR)
    if not os.path.isdir(root):
        return []
    ids = []
    for name in sorted(os.listdir(root)):
        record = _read_json(os.path.join(root, name, RESULT))
        if isinstance(record, dict) and record.get("status") in STATUSES:
            ids.append(name)
    return ids


def check_covers_recorded(sweep_dir, config_ids, axes=None):
    """Refuses a sweep that leaves out configurations recorded in its dir.

    Args:
        sweep_dir: The run dir.
        config_ids: Ids of the configurations of the new start.
        axes: Optional `{flag: value}` of the swept axes of the new start;
            the message then names those that differ from the dir's
            config.json (the earlier start).

    Raises:
        SweepError: Some recorded configuration is not in `config_ids`.
    """
    left_out = sorted(set(recorded_config_ids(sweep_dir)) - set(config_ids))
    if not left_out:
        return
    shown = ", ".join(left_out[:5])
    if len(left_out) > 5:
        shown += f", ... ({len(left_out)} in all)"
    received = f"{len(config_ids)} configuration(s)"
    earlier = ""
    if axes:
        saved = _read_json(os.path.join(sweep_dir, _runner.CONFIG_FILE))
        saved = saved if isinstance(saved, dict) else {}
        changed = [k for k in axes if k in saved and saved[k] != axes[k]]
        if changed:
            received = ", ".join(f"{k}={axes[k]!r}" for k in changed)
            earlier = "; earlier: " + ", ".join(
                f"{k}={saved[k]!r}" for k in changed
            )
    raise SweepError(
        f"Received: {received} for run dir {sweep_dir}, which holds "
        f"{len(left_out)} recorded configuration(s) that this sweep leaves "
        f"out ({shown}{earlier}). Expected swept values that include every "
        f"recorded configuration (the report covers all of them), or a new "
        f"--run_name."
    )


def prepare_sweep_dir(sweep_dir, experiment, settings, config_ids=None, axes=None):
    """Creates a sweep dir or validates an existing one for resuming.

    Args:
        sweep_dir: The run dir, `runs/<experiment>/<run_name>`.
        experiment: Experiment name, stored in (and checked against) the
            manifest.
        settings: JSON-able dict of the settings that must not change on
            resume (everything that affects a configuration's result but is
            not part of its id).
        config_ids: Optional ids of the configurations to run; resuming is
            then refused if the dir has recorded others
            (`check_covers_recorded`), before anything in it changes.
        axes: Optional `{flag: value}` of the swept axes, for that message.

    Returns:
        True if an existing sweep is resumed, False if the dir is new.

    Raises:
        SweepError: The dir exists but is not a sweep of this experiment,
            its settings differ, or it has recorded configurations that
            `config_ids` leaves out.
    """
    settings = _runner.jsonable(settings)
    manifest_path = os.path.join(sweep_dir, MANIFEST)
    if os.path.isdir(sweep_dir) and os.listdir(sweep_dir):
        manifest = _read_json(manifest_path)
        if manifest is None:
            raise SweepError(
                f"Run dir {sweep_dir} already exists and is not a sweep "
                f"(no readable {MANIFEST}); it is never overwritten. Pass a "
                "new --run_name."
            )
        if manifest.get("experiment") != experiment:
            raise SweepError(
                f"Run dir {sweep_dir} holds a sweep of experiment "
                f"{manifest.get('experiment')!r}, not {experiment!r}. Pass a "
                "new --run_name."
            )
        differences = _diff(manifest.get("settings", {}), settings)
        if differences:
            raise SweepError(
                f"Run dir {sweep_dir} holds a sweep with other settings "
                f"({'; '.join(differences)}); resuming would mix results. "
                "Rerun with the same settings to resume, or pass a new "
                "--run_name."
            )
        if config_ids is not None:
            check_covers_recorded(sweep_dir, config_ids, axes)
        manifest["resumed"] = manifest.get("resumed", 0) + 1
        write_json_atomic(manifest_path, manifest)
        return True
    os.makedirs(os.path.join(sweep_dir, CONFIGS_DIR), exist_ok=True)
    write_json_atomic(
        manifest_path,
        {
            "experiment": experiment,
            "settings": settings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resumed": 0,
        },
    )
    return False


def config_dir_of(sweep_dir, config_id):
    return os.path.join(sweep_dir, CONFIGS_DIR, config_id)


def load_finished(sweep_dir, config_id):
    """The stored record of a finished ("ok"/"diverged") config, or None."""
    record = _read_json(os.path.join(config_dir_of(sweep_dir, config_id), RESULT))
    if isinstance(record, dict) and record.get("status") in FINISHED_STATUSES:
        return record
    return None


# ---------------------------------------------------------------------------
# Running one configuration (in this process or in a worker)
# ---------------------------------------------------------------------------


def _init_worker(threads):
    """Worker initializer: low TF thread counts, quiet TF logs."""
    threads = str(max(1, int(threads)))
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = threads
    os.environ["TF_NUM_INTEROP_THREADS"] = threads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:  # only possible with a non-spawn context
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:
            pass


def execute_config(fn, config_id, params, config_dir):
    """Runs one configuration and stores its record; never raises (except
    KeyboardInterrupt). Returns the record."""
    if os.path.isdir(config_dir):
        # Leftovers of an interrupted or crashed attempt: start clean so the
        # TensorBoard logs hold one attempt only.
        shutil.rmtree(config_dir)
    os.makedirs(config_dir)
    record = {
        "config_id": config_id,
        "params": dict(params),
        "status": "ok",
        "diverged_step": None,
        "error": None,
        "metrics": {},
        "wall_s": None,
    }
    start = time.perf_counter()
    try:
        result = fn(dict(params), config_dir)
        result = dict(result or {})
        status = result.pop("status", "ok")
        if status not in STATUSES:
            raise ValueError(
                f"configuration function returned status={status!r}; "
                f"expected one of {STATUSES}"
            )
        record["status"] = status
        record["diverged_step"] = result.pop("diverged_step", None)
        record["error"] = result.pop("error", None)
        record["metrics"] = result
    except Diverged as exc:
        record.update(
            status="diverged",
            diverged_step=exc.step,
            error=str(exc),
            metrics=exc.metrics,
        )
    except Exception as exc:  # noqa: BLE001 - a crash is a result here
        record.update(status="crashed", error=_one_line(exc))
        with open(os.path.join(config_dir, "traceback.txt"), "w") as f:
            f.write(traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - start, 3)
    record = _runner.jsonable(record)
    try:
        write_hparams_run(config_dir, config_id, params, record)
    except Exception as exc:  # noqa: BLE001 - logging must not lose a result
        record["hparams_error"] = _one_line(exc)
    write_json_atomic(os.path.join(config_dir, RESULT), record)
    return record


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


def _fmt_time(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One-line progress over configurations (carriage return on a TTY)."""

    def __init__(self, total, label="sweep", stream=None, enabled=True):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.counts = {s: 0 for s in STATUSES}
        self.skipped = 0
        self.done = 0
        self.start = time.perf_counter()
        self.ran = 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def skip(self, n):
        """Counts `n` configurations finished by an earlier start (one line)."""
        if n <= 0:
            return
        self.done += n
        self.skipped += n
        if self.enabled:
            self.stream.write(
                f"{self.label}: {n} of {self.total} configurations finished "
                "before, skipped\n"
            )
            self.stream.flush()

    def update(self, record):
        self.done += 1
        self.ran += 1
        self.counts[record["status"]] += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        eta = f", ~{_fmt_time(elapsed / self.ran * left)} left" if self.ran and left else ""
        what = record["status"]
        if record.get("wall_s") is not None:
            what += f" in {record['wall_s']:.1f}s"
        width = len(str(self.total))
        line = (
            f"{self.label} [{self.done:>{width}}/{self.total}] "
            f"ok {self.counts['ok']} diverged {self.counts['diverged']} "
            f"crashed {self.counts['crashed']} skipped {self.skipped} | "
            f"{_fmt_time(elapsed)}{eta} | {record['config_id']}: {what}"
        )
        if self.tty:
            end = "\n" if self.done == self.total else ""
            self.stream.write("\r\033[K" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


def run_sweep(
    sweep_dir,
    configs,
    fn,
    *,
    workers=1,
    threads=None,
    metric_names=(),
    progress=True,
    label="sweep",
):
    """Runs every configuration not finished yet; returns all records.

    Args:
        sweep_dir: A dir prepared with `prepare_sweep_dir`.
        configs: List of `(config_id, params)`; ids must be unique.
        fn: Module-level function `fn(params, config_dir) -> dict` (it must be
            picklable by reference for `workers > 1`).
        workers: 1 runs in this process; N > 1 runs N spawn processes.
        threads: TensorFlow threads per worker process (default
            `max(1, cpu_count // workers)`); ignored for `workers=1`.
        metric_names: Metric keys declared in the HParams experiment.
        progress: Print the one-line progress to stderr.
        label: Name shown in the progress line.

    Returns:
        The records (dicts with config_id, params, status, diverged_step,
        error, metrics, wall_s, skipped) in the order of `configs`: every
        configuration recorded in `sweep_dir`.

    Raises:
        SweepError: bad `workers`, duplicate ids, or `configs` leaves out a
            configuration recorded in `sweep_dir` (`check_covers_recorded`).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepError(f"Received: workers={workers!r}. Expected an integer >= 1.")
    ids = [cid for cid, _ in configs]
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise SweepError(f"Duplicate configuration ids: {dupes}.")
    check_covers_recorded(sweep_dir, ids)
    write_hparams_config(sweep_dir, [p for _, p in configs], metric_names)

    records = {}
    todo = []
    bar = Progress(len(configs), label=label, enabled=progress)
    for cid, params in configs:
        done = load_finished(sweep_dir, cid)
        if done is not None:
            done["skipped"] = True
            records[cid] = done
        else:
            todo.append((cid, params))
    bar.skip(len(records))

    def finish(record):
        record["skipped"] = False
        records[record["config_id"]] = record
        bar.update(record)

    if workers == 1:
        for cid, params in todo:
            finish(execute_config(fn, cid, params, config_dir_of(sweep_dir, cid)))
    elif todo:
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads,),
        )
        try:
            futures = {
                pool.submit(
                    execute_config, fn, cid, params, config_dir_of(sweep_dir, cid)
                ): (cid, params)
                for cid, params in todo
            }
            for future in concurrent.futures.as_completed(futures):
                cid, params = futures[future]
                try:
                    record = future.result()
                except Exception as exc:  # the worker process itself died
                    record = _runner.jsonable(
                        {
                            "config_id": cid,
                            "params": dict(params),
                            "status": "crashed",
                            "diverged_step": None,
                            "error": f"worker process failed: {_one_line(exc)}",
                            "metrics": {},
                            "wall_s": None,
                        }
                    )
                    config_dir = config_dir_of(sweep_dir, cid)
                    os.makedirs(config_dir, exist_ok=True)
                    write_json_atomic(os.path.join(config_dir, RESULT), record)
                finish(record)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [records[cid] for cid in ids]


def summarize(records):
    """Counts of each status, e.g. {"ok": 60, "diverged": 4, "crashed": 0}."""
    counts = {s: 0 for s in STATUSES}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    counts["skipped"] = sum(1 for r in records if r.get("skipped"))
    return counts


# ---------------------------------------------------------------------------
# Command-line entry point for sweep experiments
# ---------------------------------------------------------------------------



def split_list(name, text, kind, minimum=None, choices=None):
    """Parses a comma-separated flag value (`"0.5,1,2"`) into a list.

    Raises:
        ValueError: One-line message naming the flag, for an empty list, an
            unparseable or out-of-range item, or a duplicate.
    """
    what = {int: "integers", float: "numbers", str: "names"}[kind]
    example = {int: "50,200", float: "0.5,1.0,2.0", str: "tanh,relu"}[kind]
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ValueError(
            f"Received: {name}={text!r}. Expected a comma-separated list of "
            f"{what}, e.g. --{name} {example}."
        )
    values = []
    for item in items:
        try:
            value = kind(item)
        except ValueError:
            raise ValueError(
                f"Received: {name}={text!r} (item {item!r}). Expected a "
                f"comma-separated list of {what}, e.g. --{name} {example}."
            ) from None
        if kind is float and not math.isfinite(value):
            raise ValueError(f"Received: {name}={text!r}. Expected finite numbers.")
        if minimum is not None and not value >= minimum:
            raise ValueError(
                f"Received: {name}={text!r} (item {item!r}). Expected {what} "
                f">= {minimum}."
            )
        if choices is not None and value not in choices:
            raise ValueError(
                f"Received: {name}={text!r} (item {item!r}). Expected items "
                f"from {list(choices)}."
            )
        if value in values:
            raise ValueError(
                f"Received: {name}={text!r} with {item!r} twice. Expected each "
                "value once."
            )
        values.append(value)
    return values




@dataclasses.dataclass
class SweepConfig(_runner.BaseConfig):
    """Base config of a sweep experiment (subclass it like `BaseConfig`).

    Class variables of a subclass:
        sweep_axes: names of the comma-separated list fields that span the
            sweep (they may change when a sweep is resumed).
    """

    sweep_axes: ClassVar[tuple] = ()
    # Fields that change how, not what, is computed (ignored on resume).
    execution_fields: ClassVar[tuple] = (
        "workers",
        "threads",
        "verbose",
        "run_name",
        "workdir_root",
    )

    # 1: configurations run one after another in this process.
    workers: int = _runner.option(
        1,
        "Parallel worker processes (spawn) for the configurations; 1 runs "
        "them in this process.",
    )
    # 0: cpu_count // workers threads for TensorFlow in each worker.
    threads: int = _runner.option(
        0, "TensorFlow threads per worker process (0: cpu_count // workers)."
    )
    # An existing sweep dir of this experiment is resumed, not overwritten.
    run_name: typing.Optional[str] = _runner.option(
        None,
        "Name of the run directory (default: UTC start time). Reusing the "
        "name of an earlier run of this sweep resumes it: finished "
        "configurations are skipped; the swept values may add "
        "configurations but not leave out recorded ones.",
    )
    # Keras' own per-epoch output is always off in a sweep.
    verbose: int = _runner.option(
        1,
        "0: silent; 1 or 2: one progress line per finished configuration.",
        choices=(0, 1, 2),
    )

    def validate(self):
        super().validate()
        _runner.check_positive_int("workers", self.workers, example=2)
        _runner.check_int("threads", self.threads, minimum=0)

    def fixed_settings(self):
        """Settings that must match when a sweep is resumed."""
        skip = set(self.execution_fields) | set(self.sweep_axes)
        return {
            k: v for k, v in _runner.config_to_dict(self).items() if k not in skip
        }


def _fail(err):
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(_runner.USAGE_EXIT_CODE)


def open_run_dir(config, config_ids=None):
    """The sweep's run dir: new (via `runner.new_run_dir`) or resumed.

    `config_ids` (optional): the ids of the configurations to run; an
    existing dir with recorded configurations outside them is refused.

    Returns:
        `(workdir: pathlib.Path, resumed: bool)`.
    """
    import pathlib

    experiment = type(config).experiment
    settings = config.fixed_settings()
    if config.run_name is not None:
        path = pathlib.Path(config.workdir_root) / experiment / config.run_name
        if path.exists():
            axes = {k: getattr(config, k) for k in type(config).sweep_axes}
            resumed = prepare_sweep_dir(
                str(path), experiment, settings, config_ids, axes
            )
            return path, resumed
    workdir = _runner.new_run_dir(experiment, config.run_name, config.workdir_root)
    prepare_sweep_dir(str(workdir), experiment, settings)
    return workdir, False


def run_sweep_main(
    train_and_evaluate, config_cls, argv=None, description=None, configurations=None
):
    """`runner.run_main` for sweeps: same flags, errors and run dir, plus
    resume (see the module doc).

    `train_and_evaluate(config, workdir)` builds the configurations and
    calls `run_sweep(workdir, ...)`; finished configurations are skipped
    there. `config.json` is (re)written at every start.

    `configurations` (optional): `fn(config) -> [(config_id, params)]`, the
    experiment's configurations. With it, a resumed dir that has recorded
    configurations outside them is refused (exit 2) before anything in it
    changes, rather than by `run_sweep` after config.json was rewritten.

    Returns:
        `(workdir, results)`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = getattr(train_and_evaluate, "__module__", "") or ""
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else ""
    prog = f"python -m {module}" if module.startswith("experiments.") else None
    try:
        config = _runner.parse_config(config_cls, argv, description, prog)
        config.validate()
        config_ids = None
        if configurations is not None:
            config_ids = [cid for cid, _ in configurations(config)]
        workdir, resumed = open_run_dir(config, config_ids)
        _runner.save_config(workdir, config)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    verb = "Resuming sweep in" if resumed else "Run directory:"
    print(f"{verb} {workdir}", flush=True)
    try:
        results = train_and_evaluate(config, workdir)
    except (_runner.DataError, FileNotFoundError) as err:
        _fail(err)
    print(f"\nResults and plots: {workdir}/")
    print(f"  results:     {workdir / _runner.RESULTS_FILE} (table: {workdir / 'results.md'})")
    print(f"  plots:       {workdir / _runner.PLOTS_DIR}/")
    print(f"  TensorBoard: tensorboard --logdir {workdir}  (HParams tab: the sweep)")
    return workdir, results
