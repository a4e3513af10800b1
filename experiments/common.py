"""What every experiment shares: config and flags, checks, run directory, sweeps.

An experiment is one module of four parts, as in the flax examples:
`Config` (a dataclass of `BaseConfig`, `TrainingConfig` or `SweepConfig`, one
`option(default, help, <allowed values>)` per setting, every field a flag
`--name value`; `validate()` checks each field against its option and raises
one-line "Received: ... Expected ..." errors; a subclass adds what spans fields),
`build_model`, `train_and_evaluate(config, workdir) -> results` (data first,
raising `DataError` before heavy work, then `experiments.training` for Keras)
and `main(argv=None)`, which returns `run_main(train_and_evaluate, Config, argv)`.
This module imports neither TensorFlow nor Keras: bad flags and data are one
line on stderr without their start-up time.

A run dir `<workdir_root>/<experiment>/<run_name>/` (default name: the UTC start
time) holds config.json, results.json, plots/ and logs/ (TensorBoard); a training
run adds model.keras (best validation loss), history.json and, until it ends,
backup/; a sweep adds configs/<config id>/ (result.json, logs/,
HParams). Exit status: 0 finished; 2 bad settings or data (one line `error: ...`,
nothing created or changed); 3 training diverged (NaN/inf loss or weights:
stopped at once, results.json has `"status": "diverged"` and `diverged_at`;
logs, checkpoint and the last good backup are kept).

A run dir is never overwritten. The same command and `--run_name` resumes what
was interrupted: a training run from its last completed epoch, ending with the
results of an uninterrupted run (the data order is a function of seed and batch
number, `training.shuffled_batch_indices`); a sweep by skipping the
configurations recorded "ok" or "diverged" and retrying crashed ones. A sweep
with other fixed settings, or whose swept values leave out a recorded
configuration, is refused. Sweeps run in this process (`--workers 1`), on a
local dask cluster (`--workers N`) or on a running one (`--scheduler`).
"""

import argparse
import dataclasses
import datetime
import itertools
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import time
import traceback
import types
import typing
import uuid
import zipfile
from typing import ClassVar

import numpy as np

STATUS_OK, STATUS_DIVERGED = "ok", "diverged"
USAGE_EXIT_CODE, DIVERGED_EXIT_CODE = 2, 3
STRATEGIES = ("default", "mirrored", "multi-worker")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")
CONFIG_FILE, RESULTS_FILE, HISTORY_FILE = "config.json", "results.json", "history.json"
CHECKPOINT_FILE, LOCK_FILE = "model.keras", ".lock"
LOGS_DIR, PLOTS_DIR, BACKUP_DIR = "logs", "plots", "backup"
BACKUP_METADATA_FILE = "training_metadata.json"
GRADIENT_NORMS_FILE = os.path.join(LOGS_DIR, "gradient_norms.npz")  # GradientNormCallback's
RESULT, CONFIGS_DIR = "result.json", "configs"
STATUSES, FINISHED = ("ok", "diverged", "crashed"), ("ok", "diverged")
# Seconds to sleep after every training batch, so that tests can kill a run
# in the middle of an epoch.
TEST_BATCH_SLEEP_ENV = "KERAS_VRNN_TEST_BATCH_SLEEP"


class DataError(ValueError):
    """Bad user data; the message says what was received and expected."""


class SweepError(ValueError):
    """A sweep cannot start (bad directory or settings)."""


def fail(err):
    """Prints one line `error: <message>` on stderr and exits with status 2."""
    print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE)


def _shown(value):
    return repr(value) if isinstance(value, str) else f"{value}"


def check_int(name, value, minimum=1, example=None):
    """`value` as int if it is an integer >= minimum (not a bool)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if minimum is None or value >= minimum:
            return int(value)
    expected = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    hint = f" (e.g. --{name} {example})" if example is not None else ""
    raise ValueError(f"Received: {name}={_shown(value)}. Expected {expected}{hint}.")


def check_number(name, value, low=0.0, high=None, low_ok=False, note=""):
    """`value` as float if it is finite, above `low` (or equal, `low_ok`) and below `high`."""
    number = isinstance(value, (int, float, np.integer, np.floating))
    if number and not isinstance(value, bool) and math.isfinite(value):
        if (value >= low if low_ok else value > low) and (high is None or value < high):
            return float(value)
    expected = (f"a number strictly between {low:g} and {high:g}" if high is not None
                else f"a finite number {'>=' if low_ok else '>'} {low:g}")
    note = f" ({note})" if note else ""
    raise ValueError(f"Received: {name}={_shown(value)}. Expected {expected}{note}.")


def check_choice(name, value, choices):
    if value in tuple(choices):
        return value
    raise ValueError(f"Received: {name}={_shown(value)}. Expected one of {list(choices)}.")


def check_run_name(run_name):
    """`run_name` if it is one safe path component."""
    if isinstance(run_name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", run_name):
        return run_name
    raise ValueError(f"Received: run_name={_shown(run_name)}. Expected a directory name of "
                     f"letters, digits and . _ = + - (starting with a letter or digit), "
                     f"e.g. --run_name hidden256.")


def check_keras_file(name, path):
    """`path` if it is a `.keras` zip with Keras' config.json and weights
    (whether they fit the model is checked when they are loaded)."""
    file = pathlib.Path(path)
    size = file.stat().st_size if file.is_file() else 0
    if not file.exists():
        problem = f"no such file; relative paths start at {os.getcwd()!r}"
    elif not file.is_file():
        problem = "not a file"
    elif file.suffix != ".keras":
        problem = "its name does not end in .keras"
    elif not size or not zipfile.is_zipfile(file):
        problem = f"{size} bytes that are not a zip archive, not a Keras model" if size else (
            "0 bytes, not a Keras model")
    else:
        with zipfile.ZipFile(file) as archive:
            missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
        problem = f"a zip archive without {' and '.join(sorted(missing))}" if missing else None
    if problem:
        raise ValueError(f"Received: {name}={str(path)!r} ({problem}). Expected a .keras model "
                         f"file saved by Keras (e.g. the model.keras of an earlier run).")
    return file


def multi_worker_task(environ=None):
    """`(task_type, index, is_chief)` of this worker, from `TF_CONFIG`; the
    chief is the "chief" task, or worker 0 without one."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        raise ValueError("Received: strategy='multi-worker' without a TF_CONFIG environment "
                         f"variable. Expected TF_CONFIG in every worker's environment, e.g. "
                         f"{example}.")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"Received: TF_CONFIG={raw!r} (not JSON: {err}). "
                         f"Expected e.g. {example}.") from None
    cluster, task = (spec.get("cluster"), spec.get("task")) if isinstance(spec, dict) else (None,) * 2
    try:
        kind, index = task["type"], task["index"]
        ok = (kind in ("chief", "worker") and all(
            isinstance(h, str) and ":" in h for hosts in cluster.values() for h in hosts)
              and type(index) is int and 0 <= index < len(cluster[kind]))
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"Received: TF_CONFIG={raw!r}. Expected a cluster of \"host:port\" "
                         f"lists and this worker's task (type \"chief\" or \"worker\", an "
                         f"index into its list), e.g. {example}.")
    return kind, index, kind == "chief" or (index == 0 and "chief" not in cluster)


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


# --- Config and command line ---------------------------------------------------


def option(default, help, choices=None, at_least=None, below=None, note=""):  # noqa: A002
    """A config field: its default, its `--help` text and the values
    `validate` accepts: one of `choices`, or a number >= `at_least` (without
    it: an int >= 1, a float > 0) and < `below`; None where the default is."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "at_least": at_least, "below": below, "note": note})


def _unwrap(hint):
    """`int` for `Optional[int]`, the type itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def check_field(field, value, kind):
    """`value` of the config `field` of type `kind`, checked against its `option`."""
    meta, name = field.metadata, field.name
    if value is None and field.default is None:
        return value
    if meta.get("choices"):
        return check_choice(name, value, meta["choices"])
    low = meta.get("at_least")
    if kind is int:
        minimum = 1 if low is None else low
        return check_int(name, value, minimum, example=field.default if (
            isinstance(field.default, int) and field.default >= minimum) else None)
    if kind is float:
        return check_number(name, value, low=low or 0.0, high=meta.get("below"),
                            low_ok=low is not None, note=meta.get("note", ""))
    return value


@dataclasses.dataclass
class BaseConfig:
    """Settings of every experiment."""

    experiment: ClassVar[str] = "experiment"
    # Settings that may change when a run is resumed (how, not what).
    resume_ignores: ClassVar[tuple] = ("verbose",)
    # A sweep's comma-separated list fields: they may grow when it is resumed.
    sweep_axes: ClassVar[tuple] = ()

    seed: int = option(0, "Random seed (Python, NumPy, backend, data order).", at_least=0)
    grad_every_n_batches: int = option(
        50, "Measure per-timestep BPTT gradient norms every N training batches.")
    verbose: int = option(1, "Keras progress output: 0 silent, 1 progress bar, "
                          "2 one line per epoch.", choices=(0, 1, 2))
    workdir_root: str = option("runs", "Root directory; a run goes to "
                               "<root>/<experiment>/<run_name>/.")
    run_name: typing.Optional[str] = option(
        None, "Name of the run directory (default: UTC start time, e.g. "
        "20261128-061500). The name of an interrupted run resumes it; a "
        "finished run is never overwritten.")

    def validate(self):
        """Checks every field against its `option`; subclasses add the rest."""
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            if _unwrap(hints[field.name]) is not bool:
                check_field(field, getattr(self, field.name), _unwrap(hints[field.name]))
        if not isinstance(self.workdir_root, str) or not self.workdir_root:
            raise ValueError(f"Received: workdir_root={self.workdir_root!r}. Expected "
                             f"a non-empty directory path, e.g. --workdir_root runs.")
        if self.run_name is not None:
            check_run_name(self.run_name)


@dataclasses.dataclass
class TrainingConfig(BaseConfig):
    """Settings of experiments that train one VanillaRNN model with `fit`."""

    hidden: int = option(192, "Units of the VanillaRNN layer.")
    activation: str = option("tanh", "Activation of the VanillaRNN layer.",
                             choices=ACTIVATIONS)
    # None: Keras' "orthogonal" (gain 1); > 1 makes the recurrence expand.
    recurrent_gain: typing.Optional[float] = option(
        None, "Initialize the recurrent kernel as an orthogonal matrix times "
        "this gain (keras_vrnn.initializers.ScaledOrthogonal; default: plain "
        "orthogonal, gain 1).")
    batch_size: int = option(64, "Sequences per training batch (global: split "
                             "across replicas).")
    epochs: int = option(8, "Number of epochs.")
    learning_rate: float = option(3e-3, "Learning rate of the optimizer.")
    optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS)
    clipnorm: float = option(1.0, "Global gradient-norm clipping threshold (0: off).",
                             at_least=0, note="0 turns clipping off")
    strategy: str = option(
        "default", "Distribution: default (one device), mirrored (tf.distribute."
        "MirroredStrategy over all local GPUs, or all logical CPUs without a "
        "GPU) or multi-worker (MultiWorkerMirroredStrategy configured by the "
        "TF_CONFIG environment variable; start the same command, with "
        "--run_name, on every worker). --batch_size is the global batch.",
        choices=STRATEGIES)
    init_from: typing.Optional[str] = option(
        None, "A .keras model (e.g. the model.keras of an earlier run with the "
        "same architecture) whose weights this run starts from; the optimizer "
        "starts afresh (default: none, random initialization).")

    def validate(self):
        super().validate()
        if self.init_from is not None:
            check_keras_file("init_from", self.init_from)
        if self.strategy == "multi-worker":
            multi_worker_task()
            if self.run_name is None:
                raise ValueError(
                    "Received: strategy='multi-worker' without --run_name. Expected "
                    "an explicit --run_name, the same on every worker, so that "
                    "they agree on the run directory.")


@dataclasses.dataclass
class SweepConfig(BaseConfig):
    """Settings of every sweep; a subclass names its `sweep_axes`."""

    # Fields that change where and how, not what, is computed.
    resume_ignores: ClassVar[tuple] = ("workers", "threads", "scheduler", "verbose",
                                       "run_name", "workdir_root")

    workers: int = option(1, "Worker processes of a local dask cluster for the "
                          "configurations; 1 runs them in this process.")
    threads: int = option(0, "TensorFlow threads per local worker (0: cpu_count // workers).",
                          at_least=0)
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
        if self.scheduler is not None and not re.fullmatch(r"\w+://\S+:\d+", self.scheduler):
            raise ValueError(f"Received: scheduler={self.scheduler!r}. Expected a dask "
                             f"scheduler address, e.g. --scheduler tcp://127.0.0.1:8786.")

    def fixed_settings(self):
        """The settings that must match when a sweep is resumed."""
        skip = set(self.resume_ignores) | set(self.sweep_axes)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def sweep(self, workdir, configs, fn, metric_names):
        return run_sweep(str(workdir), configs, fn, workers=self.workers, threads=self.threads,
                         scheduler=self.scheduler, metric_names=metric_names,
                         progress=self.verbose > 0, label=self.experiment)


_EPILOG = """\
exit status: 0 finished; 2 bad settings or data (one line "error: ...", nothing
  overwritten); 3 training diverged (NaN/inf loss or gradients): stopped at once,
  results.json has "status": "diverged" and the step; logs, the best checkpoint
  and the last good backup are kept.
resuming: run the same command (same --run_name) again after an interruption: it
  continues from the last completed epoch and ends with the results of an
  uninterrupted run. A finished run is never overwritten.
"""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        wrong = re.match(r"argument --(\S+): invalid (int|float) value: (.*)", message)
        if wrong:
            name, kind, value = wrong.groups()
            message = f"Received: {name}={value}. Expected {'an integer' if kind == 'int' else 'a number'}."
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: ", r"\1: ", message)
        self.exit(USAGE_EXIT_CODE, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parse_config(config_cls, argv=None, description=None, prog=None):
    """A `config_cls` from the command line (not validated yet); `--help` lists
    every field with its help and default; a bad flag is one line and exit 2."""
    parser = _OneLineParser(prog=prog, description=description or config_cls.__doc__,
                            epilog=_EPILOG if issubclass(config_cls, TrainingConfig) else None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind, help_text = _unwrap(hints[field.name]), field.metadata.get("help", "")
        if "default" not in help_text.lower():
            help_text += f" (default: {_shown(field.default)})"
        flag, help_text = f"--{field.name}", help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=kind, default=field.default,
                                help=help_text, choices=choices,
                                metavar=None if choices else kind.__name__.upper())
    return config_cls(**vars(parser.parse_args(argv)))


def load_config(config_cls, path):
    """Reads a `config.json` (or a run dir holding one) back into a config."""
    path = pathlib.Path(path)
    values = json.loads((path / CONFIG_FILE if path.is_dir() else path).read_text())
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"Received: {str(path)!r} with unknown settings {unknown}. "
                         f"Expected the config.json of a {config_cls.__name__} run.")
    return config_cls(**values)


# --- JSON files ------------------------------------------------------------------


def jsonable(value):
    """`value` with NumPy types, tuples and paths as JSON types; NaN/inf as
    None (strict JSON; a record's status says why a number is missing)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if value is None or isinstance(value, str) else str(value)


def write_json(path, obj):
    """Writes `obj` as strict JSON atomically (temporary file, os.replace)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path):
    """The parsed JSON file, or None if it is missing or unreadable."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


def save_results(workdir, results):
    return write_json(pathlib.Path(workdir) / RESULTS_FILE, results)


# --- Run directory -----------------------------------------------------------------


def timestamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def plots_dir(workdir):
    path = pathlib.Path(workdir) / PLOTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_dir(experiment, run_name=None, root="runs"):
    """Creates `<root>/<experiment>/<run_name or UTC time>/`; an explicit name
    that exists is an error (runs are never overwritten)."""
    parent = pathlib.Path(root) / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"Received: workdir_root={str(root)!r}, but {str(parent)!r} "
                         f"cannot be created (a file is in the way). Expected a "
                         f"directory path.") from None
    base = timestamp()
    names = [run_name] if run_name else (base if i == 1 else f"{base}-{i}" for i in range(1, 10_000))
    for name in names:
        try:
            (parent / name).mkdir()  # atomic: two runs started together get two
            return parent / name
        except FileExistsError:
            continue
    raise ValueError(f"Received: run_name={run_name!r}, but {str(parent / run_name)!r} already "
                     f"exists. {_NEVER}")


_NEVER = ("Expected a new run name (runs are never overwritten); pick another "
          "--run_name or delete that directory.")


def _lock(workdir):
    """Holds `<workdir>/.lock` while this process uses the run dir."""
    import filelock

    lock = filelock.FileLock(str(workdir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(
            f"Received: run_name={workdir.name!r}, but {str(workdir)!r} is in use by "
            f"another running process. Expected a run directory no other process "
            f"is using; wait for it to end or pick another --run_name.") from None
    return lock


def read_backup(workdir):
    """The committed backup's metadata (`epoch`, `step`, `weights`) or None."""
    meta = read_json(pathlib.Path(workdir) / BACKUP_DIR / BACKUP_METADATA_FILE)
    if isinstance(meta, dict) and isinstance(meta.get("epoch"), int) and (
            pathlib.Path(workdir) / BACKUP_DIR / str(meta.get("weights"))).is_file():
        return meta
    return None


def open_run_dir(config, configurations=None):
    """`(workdir, resumed, lock)`: a new run dir, or the run under `--run_name`
    whose config.json holds the same settings (but for `resume_ignores` and a
    sweep's axes): an unfinished training run (locked), or any sweep whose
    swept values cover its recorded configurations (no lock: dask workers
    write there)."""
    run_name, sweep = config.run_name, isinstance(config, SweepConfig)
    if getattr(config, "strategy", None) == "multi-worker":
        kind, index, is_chief = multi_worker_task()
        run_name = run_name if is_chief else f"{run_name}.{kind}-{index}"
    path = pathlib.Path(config.workdir_root) / config.experiment / str(run_name)
    if run_name is None or not path.is_dir():
        workdir = new_run_dir(config.experiment, run_name, config.workdir_root)
        return workdir, False, None if sweep else _lock(workdir)
    saved = read_json(path / CONFIG_FILE)
    if (path / RESULTS_FILE).exists() and not sweep:
        problem = f"already exists and is a finished run (it has {RESULTS_FILE}). {_NEVER}"
    elif not isinstance(config, (TrainingConfig, SweepConfig)):
        problem = f"already exists. {_NEVER}"
    elif not sweep and read_backup(path) is None:
        problem = f"already exists and has no backup to resume from (no epoch of it finished). {_NEVER}"
    elif not isinstance(saved, dict):
        problem = f"has no readable {CONFIG_FILE} to resume with. {_NEVER}"
    else:
        current, ignored = dataclasses.asdict(config), (*config.resume_ignores, *config.sweep_axes)
        differences = [f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now"
                       for k in sorted(set(current) | set(saved))
                       if k not in ignored and saved.get(k) != jsonable(current.get(k))]
        problem = (f"holds {'a sweep' if sweep else 'an unfinished run'} with other settings "
                   f"({'; '.join(differences)}). Expected the same command to resume it, "
                   f"or a new --run_name.")
        if not differences and sweep:
            ids = [cid for cid, _ in configurations(config)] if configurations else None
            if ids is not None:
                check_covers_recorded(str(path), ids, {k: getattr(config, k) for k in config.sweep_axes})
            return path, True, None
        if not differences:
            lock = _lock(path)  # checked first: a refused run creates no lock file
            if not (path / RESULTS_FILE).exists():
                return path, True, lock
            lock.release()  # it finished while we were checking
            problem = f"is a finished run. {_NEVER}"
    raise ValueError(f"Received: run_name={run_name!r}, but {str(path)!r} {problem}")


def _remove_if_unused(workdir, created):
    """Removes a run dir holding only config.json and the lock, then the
    folders above it this run created (`created`, deepest first) if empty."""
    if workdir is None or not workdir.is_dir():
        return
    entries = list(workdir.iterdir())
    if any(e.name not in (CONFIG_FILE, LOCK_FILE) or not e.is_file() for e in entries):
        return
    for entry in entries:
        entry.unlink()
    workdir.rmdir()
    for folder in created:
        try:
            folder.rmdir()  # only if empty: another run may have started there
        except OSError:
            break


def prog_name(fn):
    """`python -m experiments.<name>` for messages, from `fn`'s module."""
    module = getattr(fn, "__module__", "") or ""
    if module == "__main__":
        module = getattr(sys.modules["__main__"].__spec__, "name", "")
    return f"python -m {module}" if module.startswith("experiments.") else None


def run_main(train_and_evaluate, config_cls, argv=None, configurations=None):
    """Parses and validates the flags, opens the run dir (`open_run_dir`),
    runs `train_and_evaluate(config, workdir)` and says where the results
    are (exit status: module doc). `configurations(config) -> [(id, params)]`
    lets a sweep that leaves out recorded ones be refused before anything
    changes. Returns `(workdir, results)`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir, resumed, lock, created = None, False, None, []
    try:
        try:
            config = parse_config(config_cls, argv, prog=prog_name(train_and_evaluate))
            config.validate()
            folder = pathlib.Path(config.workdir_root) / config.experiment
            created = list(itertools.takewhile(  # the folders this run makes
                lambda f: not (f.exists() or f.is_symlink()), (folder, *folder.parents)))
            workdir, resumed, lock = open_run_dir(config, configurations)
            sweep = isinstance(config, SweepConfig)
            if sweep or not resumed:
                write_json(workdir / CONFIG_FILE, dataclasses.asdict(config))
            if not resumed:
                print(f"Run directory: {workdir}", flush=True)
            elif sweep:
                print(f"Resuming sweep in {workdir}", flush=True)
            else:
                print(f"Resuming run in {workdir} from epoch {read_backup(workdir)['epoch']} "
                      f"(its last backup)", flush=True)
            results = train_and_evaluate(config, workdir)
        except (DataError, FileNotFoundError) as err:
            if not resumed:
                _remove_if_unused(workdir, created)
            fail(err)
        except ValueError as err:
            if workdir is not None:  # raised inside train_and_evaluate: a bug
                raise
            fail(err)
        status = results.get("status")
        if (workdir / RESULTS_FILE).exists():
            if status != STATUS_DIVERGED:
                shutil.rmtree(workdir / BACKUP_DIR, ignore_errors=True)
            (workdir / LOCK_FILE).unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()
    table = f" (table: {workdir / 'results.md'})" if sweep else ""
    logs = f"{workdir}  (HParams tab: the sweep)" if sweep else workdir / LOGS_DIR
    print(f"\nResults and plots: {workdir}/\n  results:     {workdir / RESULTS_FILE}{table}\n"
          f"  plots:       {workdir / PLOTS_DIR}/\n  TensorBoard: tensorboard --logdir {logs}")
    if status == STATUS_DIVERGED:
        where = results["diverged_at"]
        kept = (f"best checkpoint {CHECKPOINT_FILE}" if results.get("checkpoint")
                else "no checkpoint (no epoch finished)")
        print(f"diverged: training stopped at step {where['step']} (global batch "
              f"index, epoch {where['epoch']}, batch {where['batch']}): non-finite "
              f"{where['cause']}. Logs and {kept} kept in {str(workdir)!r}; try a "
              f"lower --learning_rate or --clipnorm.", file=sys.stderr, flush=True)
        raise SystemExit(DIVERGED_EXIT_CODE)
    return workdir, results


# --- Training runs: history, results, plots ----------------------------------------


def load_history(workdir):
    """`{name: [value per epoch]}` from history.json (NaN for null)."""
    epochs = (read_json(pathlib.Path(workdir) / HISTORY_FILE) or {}).get("epochs", [])
    keys = list(dict.fromkeys(k for e in epochs for k in e if k != "epoch"))
    return {k: [math.nan if e.get(k) is None else e[k] for e in epochs] for k in keys}


def best_epoch(history, monitor="val_loss"):
    """1-based epoch with the lowest finite `monitor` value, or None."""
    values = [(v, i) for i, v in enumerate(history.get(monitor) or []) if math.isfinite(v)]
    return min(values)[1] + 1 if values else None


def training_results(config, workdir, strategy, history, monitor, train_time, first_epoch):
    """The results every training run reports; status "diverged" with
    `diverged_at`, the kept checkpoint and backup when `monitor` stopped it."""
    results = {
        "experiment": config.experiment, "status": STATUS_OK,
        "best_epoch": best_epoch(history), "epochs": len(history.get("loss", [])),
        "history": history, "train_time_s": train_time,
        "run": {"strategy": config.strategy, "replicas": strategy.num_replicas_in_sync,
                "resumed_from_epoch": first_epoch or None, "init_from": config.init_from},
    }
    if monitor.diverged is not None:
        backup = read_backup(workdir)
        results.update(
            status=STATUS_DIVERGED, diverged_at=monitor.diverged,
            checkpoint=CHECKPOINT_FILE if (workdir / CHECKPOINT_FILE).exists() else None,
            backup_epoch=backup["epoch"] if backup else None)
    return results


def plot_loss_curves(history, png, scale=1.0, ylabel="loss", baselines=None, title=None):
    """Training and validation loss per epoch (times `scale`), with optional
    `{label: value}` horizontal baselines; returns the PNG path."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for key, label, style in (("loss", "train", "-o"), ("val_loss", "validation", "-s")):
        if history.get(key):
            values = np.asarray(history[key], float) * scale
            ax.plot(np.arange(1, len(values) + 1), values, style, ms=3, label=label)
    for i, (label, value) in enumerate((baselines or {}).items()):
        if value is not None and math.isfinite(value):
            ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title or "")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right" if baselines else "best", framealpha=0.9)
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


def plot_gradient_norms(workdir):
    """plots/gradient_heatmap.png and gradient_norms_vs_steps_back.png from
    the run's logs/gradient_norms.npz (nothing if it has none)."""
    from keras_vrnn import plots

    npz = pathlib.Path(workdir) / GRADIENT_NORMS_FILE
    if not npz.exists():
        return []
    out = plots_dir(workdir)
    pngs = [out / "gradient_heatmap.png", out / "gradient_norms_vs_steps_back.png"]
    plots.plot_gradient_heatmap(str(npz), str(pngs[0]))
    plots.plot_norms_vs_steps_back(str(npz), str(pngs[1]))
    return pngs


def logged_layer(npz):
    """The logs of the model's one VanillaRNN layer in GradientNormCallback's
    NPZ file (`keras_vrnn.plots`' reader), float64, with the logged `steps`."""
    from keras_vrnn import plots

    logs = plots.load_gradient_norms(npz)
    layer = {k: np.asarray(v, np.float64) for k, v in logs["layers"][logs["keys"][0]].items()}
    return {**layer, "steps": logs["steps"]}


def format_table(rows, headers):
    """A plain-text table (list of lines) for a final summary."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]


# --- Sweeps: configurations recorded in configs/<id>/, run here or on dask ---------


def make_config_id(params, keys, abbrev):
    """A filesystem-safe id, e.g. `tanh_g1.25_T200` for `{"activation": "",
    "gain": "g", "T": "T"}` (the prefix of each key)."""
    parts = [f"{abbrev[k]}{params[k]:g}" if isinstance(params[k], float)
             else f"{abbrev[k]}{params[k]}" for k in keys]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts))


def _one_line(exc):
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return lines[0][:500]


def _write_events(logdir, summaries, suffix):
    """Summary protos in a new event file (TensorBoard's writer, no TensorFlow)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(logdir, filename_suffix=suffix)  # its name is unique already
    for summary in summaries:
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def _hparam(value):
    value = jsonable(value)
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

    scalars = {k: float(v) for k, v in record["metrics"].items() if finite(v)}
    if record["status"] != "crashed":
        scalars["diverged"] = float(record["status"] == "diverged")
    _write_events(config_dir, [hp.hparams_pb({k: _hparam(v) for k, v in params.items()},
                                             trial_id=config_id)] + [
        summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)])
        for k, v in scalars.items()], ".hparams")


def config_dir_of(sweep_dir, config_id):
    return os.path.join(sweep_dir, CONFIGS_DIR, config_id)


def _record(sweep_dir, config_id):
    record = read_json(os.path.join(config_dir_of(sweep_dir, config_id), RESULT))
    return record if isinstance(record, dict) and record.get("status") in STATUSES else None


def recorded_config_ids(sweep_dir):
    """Ids with a result.json (any status; not an interrupted attempt)."""
    root = os.path.join(sweep_dir, CONFIGS_DIR)
    return [n for n in (sorted(os.listdir(root)) if os.path.isdir(root) else [])
            if _record(sweep_dir, n)]


def check_covers_recorded(sweep_dir, config_ids, axes=None):
    """`SweepError` if a configuration recorded in `sweep_dir` is not among
    `config_ids`, naming the changed swept `axes` (`{flag: value}`)."""
    left_out = sorted(set(recorded_config_ids(sweep_dir)) - set(config_ids))
    if not left_out:
        return
    shown = ", ".join(left_out[:5]) + (f", ... ({len(left_out)} in all)" if len(left_out) > 5 else "")
    saved = read_json(os.path.join(sweep_dir, CONFIG_FILE)) or {}
    changed = [k for k in axes or {} if k in saved and saved[k] != axes[k]]
    received = ", ".join(f"{k}={axes[k]!r}" for k in changed) or f"{len(config_ids)} configuration(s)"
    earlier = "; earlier: " + ", ".join(f"{k}={saved[k]!r}" for k in changed) if changed else ""
    raise SweepError(
        f"Received: {received} for run dir {sweep_dir}, which holds {len(left_out)} "
        f"recorded configuration(s) that this sweep leaves out ({shown}{earlier}). "
        f"Expected swept values that include every recorded configuration (the report "
        f"covers all of them), or a new --run_name.")


def execute_config(fn, config_id, params, config_dir):
    """Runs `fn(params, config_dir) -> metrics` for one configuration (here or
    on a dask worker) and stores its record: "ok", "diverged" (`fn` returned
    `{"status": "diverged", "diverged_step": step, ...}`; `error` optional) or
    "crashed" with the one-line error (traceback.txt); never raises for the
    configuration's errors."""
    shutil.rmtree(config_dir, ignore_errors=True)  # an interrupted attempt's leftovers
    os.makedirs(config_dir)
    record = {"config_id": config_id, "params": dict(params), "status": "ok",
              "diverged_step": None, "error": None, "metrics": {}}
    start = time.perf_counter()
    try:
        metrics = dict(fn(dict(params), config_dir) or {})
        record.update(status=metrics.pop("status", "ok"), error=metrics.pop("error", None),
                      diverged_step=metrics.pop("diverged_step", None), metrics=metrics)
    except Exception as exc:  # noqa: BLE001 (a crash is a result here)
        record.update(status="crashed", error=_one_line(exc))
        pathlib.Path(config_dir, "traceback.txt").write_text(traceback.format_exc())
    record["wall_s"] = round(time.perf_counter() - start, 3)
    record = jsonable(record)
    write_hparams_run(config_dir, config_id, params, record)
    write_json(os.path.join(config_dir, RESULT), record)
    return record


def _dask_client(workers, threads, scheduler):
    """A client of the cluster at `scheduler`, or of a new LocalCluster of
    `workers` processes with `threads` TensorFlow threads each (loopback)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise DataError(f"Received: scheduler={scheduler!r} ({_one_line(err)}). Expected "
                            f"the address of a running dask scheduler.") from None
    threads = str(threads or max(1, (os.cpu_count() or 1) // workers))
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads,
           "OMP_NUM_THREADS": threads, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", scheduler_kwargs={"dashboard": False},
                               env=env, silence_logs=logging.ERROR))


def run_sweep(sweep_dir, configs, fn, *, workers=1, threads=0, scheduler=None,
              metric_names=(), progress=True, label="sweep"):
    """Runs the `(config_id, params)` of `configs` not finished in `sweep_dir`
    (`execute_config`): in this process, on a LocalCluster of `workers`, or on
    the dask `scheduler`, whose workers import `experiments` and see the dir at
    the same absolute path. Every configuration seeds itself, so where does not
    change the results. Returns every record (with `skipped`), in order."""
    sweep_dir = os.path.abspath(sweep_dir)  # dask workers may start elsewhere
    ids = [cid for cid, _ in configs]
    if len(set(ids)) != len(ids):
        raise SweepError(f"Duplicate configuration ids: {sorted({c for c in ids if ids.count(c) > 1})}.")
    check_covers_recorded(sweep_dir, ids)
    write_hparams_config(sweep_dir, [p for _, p in configs], metric_names)
    records = {}
    for cid in ids:
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
                    write_json(os.path.join(config_dir_of(sweep_dir, cid), RESULT), record)
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


# --- Sweep reports: results.json, results.md, multi-panel plots ---------------------


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
    save_results(workdir, results)
    (pathlib.Path(workdir) / "results.md").write_text(md)
    if verbose:
        print("\n" + md.split("\n## All configurations")[0])
    return results


def rows_of(records):
    """One flat table row per record: id, params, status, metrics."""
    return [{"config_id": r["config_id"], **r["params"], "status": r["status"],
             "diverged_step": r.get("diverged_step"), "error": r.get("error"),
             "wall_s": r.get("wall_s"), **(r.get("metrics") or {})} for r in records]


def finite(value):
    """Whether a row's value is a finite number (missing ones are None)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt(value, digits=3):
    """A number for the report tables ("–" for a missing or NaN one)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def status_text(row):
    """`ok`, `diverged@<step>` or `crashed: <error>` for the report tables."""
    if row["status"] == "diverged":
        return f"diverged@{row['diverged_step']}"
    return row["status"] + (f": {row.get('error')}" if row["status"] == "crashed" else "")


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
    """`{(row[k] for k in keys): [rows sorted by row[order]]}`, groups in row order."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return {key: sorted(group, key=lambda r: r[order]) for key, group in groups.items()}


def md_table(header, lines, align):
    """A markdown table: `header` cells, a line per list of cells; `align`
    has an "l" or "r" per column."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align),
            *(line(cells) for cells in lines)]


def md_section(title, *lines):
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
    return "\n".join([f"# {title}", "", *lines]) + "\n"


def config_profile(workdir, config_id, path, key=None, read=None):
    """What a configuration wrote at `path`: `read(file)`, or the array `key`
    of an NPZ file; None when file or key is absent (it crashed before)."""
    file = os.path.join(config_dir_of(str(workdir), config_id), path)
    if not os.path.exists(file):
        return None
    if read is not None:
        return read(file)
    with np.load(file) as arrays:
        return np.asarray(arrays[key]) if key in arrays.files else None


def plot_panels(png, row_keys, col_keys, draw, panel_size, legend_ncols=0):
    """A figure of a panel per (row key, column key) filled by `draw(ax, row_key,
    col_key)`, saved to `png`; with `legend_ncols`, one legend below all panels."""
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
    """Per-step profiles (e.g. mean ||dL/dh_t||) against steps back from the
    last step, log y: `curves` is `[(profile or None, label, style)]`; one
    with nothing to draw keeps its label in the legend (dotted)."""
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

