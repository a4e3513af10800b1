"""What every experiment shares: config and flags, checks, run directory.

An experiment is one module with four parts, as in the flax examples:

1. `Config`, a dataclass (subclass of `BaseConfig`, `TrainingConfig` or
   `sweep.SweepConfig`) with one commented field per setting,
   `option(default, help)`, and a `validate()` that raises `ValueError` with
   a one-line "Received: ... Expected ..." message (`check_int`,
   `check_number`, `check_choice`). Every field is a flag `--name value`
   (booleans `--name` / `--no-name`).
2. `build_model(config, ...)`.
3. `train_and_evaluate(config, workdir) -> dict`: loads the data first
   (raising `DataError` before any heavy work), then imports
   `experiments.training` (Keras and TensorFlow), trains, writes plots and
   `results.json` and returns the results.
4. `main(argv=None)`: `return common.run_main(train_and_evaluate, Config, argv)`
   (`sweep.run_sweep_main` for sweeps).

This module imports neither TensorFlow nor Keras, so that bad flags and data
are reported without their start-up time.

Run directory `<workdir_root>/<experiment>/<run_name>/` (default name: the UTC
start time, `-2`, `-3`, ... if taken): config.json, results.json, model.keras
(best validation loss), history.json, logs/ (TensorBoard; gradient norms as
NPZ and CSV), plots/, and backup/ while a training run is unfinished.

Exit status: 0 finished; 2 bad settings or data: one line `error: ...` on
stderr, nothing created or changed (a run dir the rejected run made is
removed again, with the folders above it that it made); 3 training diverged
(NaN/inf loss or weights): training stopped at once, results.json has
`"status": "diverged"` and `diverged_at`, logs, checkpoint and the backup of
the last good epoch are kept.

Resuming. A `TrainingConfig` run backs itself up at every epoch end
(`training.RunBackup`). Started again with the same command and `--run_name`
after a kill, it continues from its last completed epoch in the same dir and
ends with the results of an uninterrupted run: the data order is a pure
function of (seed, batch number) (`training.shuffled_batch_indices`), and history,
gradient-norm files, best-checkpoint threshold and TensorBoard logs continue.
Only an unfinished run with a backup and the same settings is resumed; a
finished one is never overwritten. A run dir is locked (`filelock`) while a
process uses it. With `--strategy multi-worker` every worker runs the same
command; non-chief workers write to `<run_name>.<task type>-<index>/`.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import shutil
import sys
import types
import typing
import zipfile
from typing import ClassVar

import numpy as np

STATUS_OK, STATUS_DIVERGED = "ok", "diverged"
USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
STRATEGIES = ("default", "mirrored", "multi-worker")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")
CONFIG_FILE, RESULTS_FILE, HISTORY_FILE = "config.json", "results.json", "history.json"
CHECKPOINT_FILE, LOCK_FILE = "model.keras", ".lock"
LOGS_DIR, PLOTS_DIR, BACKUP_DIR = "logs", "plots", "backup"
BACKUP_METADATA_FILE = "training_metadata.json"
# Seconds to sleep after every training batch; lets tests/test_resume.py kill
# a run in the middle of an epoch.
TEST_BATCH_SLEEP_ENV = "KERAS_VRNN_TEST_BATCH_SLEEP"


class DataError(ValueError):
    """Bad user data; the one-line message says what was received, what was
    expected and how to fix it."""


def fail(err):
    """Prints one line `error: <message>` on stderr and exits with status 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE)


# ---------------------------------------------------------------------------
# Checks: one-line ValueError "Received: name=value. Expected ..."
# ---------------------------------------------------------------------------


def _shown(value):
    return repr(value) if isinstance(value, str) else f"{value}"


def check_int(name, value, minimum=1, example=None):
    """`value` as int if it is an integer >= minimum (not a bool)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if minimum is None or value >= minimum:
            return int(value)
    expected = {None: "an integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    hint = f" (e.g. --{name} {example})" if example is not None else ""
    raise ValueError(f"Received: {name}={_shown(value)}. Expected {expected}{hint}.")


def check_number(name, value, low=0.0, high=None, low_ok=False, note=""):
    """`value` as float if it is a finite number above `low` (or equal to it
    with `low_ok`) and below `high`."""
    number = isinstance(value, (int, float, np.integer, np.floating))
    if number and not isinstance(value, bool) and math.isfinite(value):
        if (value >= low if low_ok else value > low) and (high is None or value < high):
            return float(value)
    if high is not None:
        expected = f"a number strictly between {low:g} and {high:g}"
    else:
        expected = f"a finite number {'>=' if low_ok else '>'} {low:g}"
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
    raise ValueError(
        f"Received: run_name={_shown(run_name)}. Expected a directory name of "
        f"letters, digits and . _ = + - (starting with a letter or digit), "
        f"e.g. --run_name hidden256.")


def check_keras_file(name, path):
    """Checks, without TensorFlow, that `path` is a `.keras` zip archive with
    Keras' config.json and model.weights.h5 (whether the weights fit the
    model is checked when they are loaded, `load_initial_weights`)."""
    file = pathlib.Path(path)
    expected = "a .keras model file saved by Keras (e.g. the model.keras of an earlier run)"
    problem = None
    if not file.exists():
        problem = f"no such file; relative paths start at {os.getcwd()!r}"
    elif not file.is_file():
        problem = "not a file"
    elif file.suffix != ".keras":
        problem = "its name does not end in .keras"
    elif file.stat().st_size == 0:
        problem = "0 bytes, not a Keras model"
    elif not zipfile.is_zipfile(file):
        problem = f"{file.stat().st_size} bytes that are not a zip archive, not a Keras model"
    else:
        with zipfile.ZipFile(file) as archive:
            missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
        if missing:
            problem = f"a zip archive without {' and '.join(sorted(missing))}"
    if problem:
        raise ValueError(f"Received: {name}={str(path)!r} ({problem}). Expected {expected}.")
    return file


def multi_worker_task(environ=None):
    """`(task_type, index, is_chief)` of this worker, from `TF_CONFIG`; the
    chief is the "chief" task, or worker 0 without one."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise ValueError(
            "Received: strategy='multi-worker' without a TF_CONFIG environment "
            f"variable. Expected TF_CONFIG in every worker's environment, e.g. "
            f"TF_CONFIG='{example}'.")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"Received: TF_CONFIG={raw!r} (not JSON: {err}). "
                         f"Expected e.g. TF_CONFIG='{example}'.") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    try:
        kind, index = task["type"], task["index"]
        ok = (kind in ("chief", "worker") and all(
            isinstance(h, str) and ":" in h for hosts in cluster.values() for h in hosts)
              and type(index) is int and 0 <= index < len(cluster[kind]))
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(
            f"Received: TF_CONFIG={raw!r}. Expected a cluster of \"host:port\" "
            f"lists and this worker's task (type \"chief\" or \"worker\", an "
            f"index into its list), e.g. TF_CONFIG='{example}'.")
    is_chief = kind == "chief" or (index == 0 and "chief" not in cluster)
    return kind, index, is_chief


# ---------------------------------------------------------------------------
# Config and command line
# ---------------------------------------------------------------------------


def option(default, help, choices=None):  # noqa: A002 (argparse's name)
    """A config field: its default, its `--help` text and allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class BaseConfig:
    """Settings of every experiment."""

    experiment: ClassVar[str] = "experiment"
    # Settings that may change when a run is resumed (how, not what).
    resume_ignores: ClassVar[tuple] = ("verbose",)

    # Seeds Python, NumPy and the backend (weights, data order, sampling).
    seed: int = option(0, "Random seed (Python, NumPy, backend, data order).")
    # How often GradientNormCallback measures per-timestep BPTT gradients.
    grad_every_n_batches: int = option(
        50, "Measure per-timestep BPTT gradient norms every N training batches.")
    # Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    verbose: int = option(1, "Keras progress output: 0 silent, 1 progress bar, "
                          "2 one line per epoch.", choices=(0, 1, 2))
    # Runs go to <workdir_root>/<experiment>/<run_name>/.
    workdir_root: str = option("runs", "Root directory; a run goes to "
                               "<root>/<experiment>/<run_name>/.")
    # None: the UTC start time, e.g. 20261128-061500.
    run_name: typing.Optional[str] = option(
        None, "Name of the run directory (default: UTC start time, e.g. "
        "20261128-061500). The name of an interrupted run resumes it; a "
        "finished run is never overwritten.")

    def validate(self):
        check_int("seed", self.seed, minimum=0)
        check_int("grad_every_n_batches", self.grad_every_n_batches)
        check_choice("verbose", self.verbose, (0, 1, 2))
        if not isinstance(self.workdir_root, str) or not self.workdir_root:
            raise ValueError(f"Received: workdir_root={self.workdir_root!r}. Expected "
                             f"a non-empty directory path, e.g. --workdir_root runs.")
        if self.run_name is not None:
            check_run_name(self.run_name)


@dataclasses.dataclass
class TrainingConfig(BaseConfig):
    """Settings of experiments that train one VanillaRNN model with `fit`."""

    # Units of the VanillaRNN layer.
    hidden: int = option(192, "Units of the VanillaRNN layer.")
    activation: str = option("tanh", "Activation of the VanillaRNN layer.",
                             choices=ACTIVATIONS)
    # None: Keras' "orthogonal" (gain 1); > 1 makes the recurrence expand.
    recurrent_gain: typing.Optional[float] = option(
        None, "Initialize the recurrent kernel as an orthogonal matrix times "
        "this gain (keras_vrnn.initializers.ScaledOrthogonal; default: plain "
        "orthogonal, gain 1).")
    # Global: split evenly across the replicas of a tf.distribute strategy.
    batch_size: int = option(64, "Sequences per training batch (global: split "
                             "across replicas).")
    epochs: int = option(8, "Number of epochs.")
    learning_rate: float = option(3e-3, "Learning rate of the optimizer.")
    optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS)
    # Clips the norm of all gradients together (Keras global_clipnorm).
    clipnorm: float = option(1.0, "Global gradient-norm clipping threshold (0: off).")
    strategy: str = option(
        "default", "Distribution: default (one device), mirrored (tf.distribute."
        "MirroredStrategy over all local GPUs, or all logical CPUs without a "
        "GPU) or multi-worker (MultiWorkerMirroredStrategy configured by the "
        "TF_CONFIG environment variable; start the same command, with "
        "--run_name, on every worker). --batch_size is the global batch.",
        choices=STRATEGIES)
    # A model.keras of an earlier run with the same architecture.
    init_from: typing.Optional[str] = option(
        None, "A .keras model (e.g. the model.keras of an earlier run with the "
        "same architecture) whose weights this run starts from; the optimizer "
        "starts afresh (default: none, random initialization).")

    def validate(self):
        super().validate()
        check_int("hidden", self.hidden, example=64)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.recurrent_gain is not None:
            check_number("recurrent_gain", self.recurrent_gain)
        check_int("batch_size", self.batch_size, example=32)
        check_int("epochs", self.epochs, example=8)
        check_number("learning_rate", self.learning_rate)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_number("clipnorm", self.clipnorm, low_ok=True, note="0 turns clipping off")
        check_choice("strategy", self.strategy, STRATEGIES)
        if self.init_from is not None:
            check_keras_file("init_from", self.init_from)
        if self.strategy == "multi-worker":
            multi_worker_task()
            if self.run_name is None:
                raise ValueError(
                    "Received: strategy='multi-worker' without --run_name. Expected "
                    "an explicit --run_name, the same on every worker, so that "
                    "they agree on the run directory.")


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
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: (?=Received:)", "", message)
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: ", r"\1: ", message)
        self.exit(USAGE_EXIT_CODE,
                  f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _flag_type(kind, name):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(
                f"Received: {name}={text!r}. Expected {what}.") from None
    return parse


def parse_config(config_cls, argv=None, description=None, prog=None):
    """A `config_cls` from the command line (not validated yet); `--help`
    lists every field with its help and default; a bad flag is one line
    `error: ...` and exit 2."""
    parser = _OneLineParser(prog=prog, description=description or config_cls.__doc__,
                            epilog=_EPILOG if issubclass(config_cls, TrainingConfig) else None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        help_text = field.metadata.get("help", "")
        if "default" not in help_text.lower():
            help_text += f" (default: {_shown(field.default)})"
        flag, help_text = f"--{field.name}", help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(flag, type=_flag_type(kind, field.name), default=field.default,
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


# ---------------------------------------------------------------------------
# JSON files
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------


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
    raise ValueError(
        f"Received: run_name={run_name!r}, but {str(parent / run_name)!r} already "
        f"exists. Expected a new run name (runs are never overwritten); pick "
        f"another --run_name or delete that directory.")


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


def open_run_dir(config):
    """`(workdir, resumed, lock)`: a new run dir, or the unfinished training
    run of the same settings under `--run_name`, to resume."""
    run_name = config.run_name
    if getattr(config, "strategy", None) == "multi-worker":
        kind, index, is_chief = multi_worker_task()
        run_name = run_name if is_chief else f"{run_name}.{kind}-{index}"
    path = pathlib.Path(config.workdir_root) / config.experiment / str(run_name)
    if run_name is None or not path.is_dir():
        workdir = new_run_dir(config.experiment, run_name, config.workdir_root)
        return workdir, False, _lock(workdir)
    never = ("Expected a new run name (runs are never overwritten); pick another "
             "--run_name or delete that directory.")
    saved = read_json(path / CONFIG_FILE)
    if (path / RESULTS_FILE).exists():
        problem = f"already exists and is a finished run (it has {RESULTS_FILE}). {never}"
    elif not isinstance(config, TrainingConfig):
        problem = f"already exists. {never}"
    elif read_backup(path) is None:
        problem = ("already exists and has no backup to resume from (no epoch of "
                   f"it finished). {never}")
    elif not isinstance(saved, dict):
        problem = f"has no readable {CONFIG_FILE} to resume with. {never}"
    else:
        current = dataclasses.asdict(config)
        differences = [
            f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now"
            for k in sorted(set(current) | set(saved))
            if k not in config.resume_ignores and saved.get(k) != current.get(k)]
        problem = (f"holds an unfinished run with other settings "
                   f"({'; '.join(differences)}). Expected the same command to "
                   f"resume it, or a new --run_name.")
        if not differences:
            lock = _lock(path)  # checked first: a refused run creates no lock file
            if not (path / RESULTS_FILE).exists():
                return path, True, lock
            lock.release()  # it finished while we were checking
            problem = f"is a finished run. {never}"
    raise ValueError(f"Received: run_name={run_name!r}, but {str(path)!r} {problem}")


def _remove_if_unused(workdir, created):
    """Removes a run dir holding only config.json and the lock, then the
    folders above it this run created (deepest first) if left empty."""
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


def _missing_dirs(path):
    """`path` and those of its parents that do not exist, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def prog_name(fn):
    """`python -m experiments.<name>` for messages, from `fn`'s module."""
    module = getattr(fn, "__module__", "") or ""
    if module == "__main__":
        module = getattr(sys.modules["__main__"].__spec__, "name", "")
    return f"python -m {module}" if module.startswith("experiments.") else None


def run_main(train_and_evaluate, config_cls, argv=None):
    """Parses and validates the flags, opens the run dir (new or resumed),
    runs `train_and_evaluate(config, workdir)` and prints where the results
    are. Bad settings or data: exit 2 (see the module doc); divergence:
    exit 3 after results.json. Returns `(workdir, results)`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir, resumed, lock, created = None, False, None, []
    try:
        try:
            config = parse_config(config_cls, argv, prog=prog_name(train_and_evaluate))
            config.validate()
            created = _missing_dirs(pathlib.Path(config.workdir_root) / config.experiment)
            workdir, resumed, lock = open_run_dir(config)
            if not resumed:
                write_json(workdir / CONFIG_FILE, dataclasses.asdict(config))
            print(f"Resuming run in {workdir} from epoch {read_backup(workdir)['epoch']} "
                  f"(its last backup)" if resumed else f"Run directory: {workdir}",
                  flush=True)
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
    print(f"\nResults, checkpoint and plots: {workdir}/\n"
          f"  results:     {workdir / RESULTS_FILE}\n"
          f"  plots:       {workdir / PLOTS_DIR}/\n"
          f"  TensorBoard: tensorboard --logdir {workdir / LOGS_DIR}")
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


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def load_history(workdir):
    """`{name: [value per epoch]}` from history.json (NaN for null)."""
    epochs = (read_json(pathlib.Path(workdir) / HISTORY_FILE) or {}).get("epochs", [])
    keys = list(dict.fromkeys(k for e in epochs for k in e if k != "epoch"))
    return {k: [math.nan if e.get(k) is None else e[k] for e in epochs] for k in keys}


def best_epoch(history, monitor="val_loss"):
    """1-based epoch with the lowest finite `monitor` value, or None."""
    values = [(v, i) for i, v in enumerate(history.get(monitor) or []) if math.isfinite(v)]
    return min(values)[1] + 1 if values else None


# ---------------------------------------------------------------------------
# Results, plots
# ---------------------------------------------------------------------------


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

    npz = pathlib.Path(workdir) / LOGS_DIR / "gradient_norms.npz"
    if not npz.exists():
        return []
    out = plots_dir(workdir)
    pngs = [out / "gradient_heatmap.png", out / "gradient_norms_vs_steps_back.png"]
    plots.plot_gradient_heatmap(str(npz), str(pngs[0]))
    plots.plot_norms_vs_steps_back(str(npz), str(pngs[1]))
    return pngs


def format_table(rows, headers):
    """A plain-text table (list of lines) for a final summary."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]
