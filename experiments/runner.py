"""Shared runner of the experiments: config, command line, run dir, callbacks.

Every experiment is one module `experiments/<name>.py` with the same three
parts (in the style of flax's examples: once you know one, you know them all):

1. A config: a `@dataclasses.dataclass` subclassing `BaseConfig`, one field
   per setting, each with its default and a help text (`option(...)`), plus a
   `validate()` method that checks the values and raises `ValueError` with a
   one-line "Received: ... Expected ..." message (use the `check_*` helpers).
   The experiment's name is a class variable: `experiment: ClassVar[str]`.
2. `train_and_evaluate(config, workdir) -> dict`: loads the data (raising
   `experiments.data.DataError` for bad user data *before* any heavy work),
   imports TensorFlow/Keras lazily, builds and trains the model with
   `standard_callbacks(...)`, writes plots and `save_results(workdir, ...)`
   and returns the results dict.
3. `main(argv=None)`: `return run_main(train_and_evaluate, Config, argv)`,
   and `if __name__ == "__main__": main()`.

A new experiment looks like this::

    @dataclasses.dataclass
    class Config(runner.BaseConfig):
        experiment: ClassVar[str] = "adding"

        # Sequence length of the adding problem.
        T: int = runner.option(100, "Sequence length of the adding problem.")

        def validate(self):
            super().validate()
            runner.check_positive_int("T", self.T)

    def train_and_evaluate(config, workdir):
        x, y = ...                       # data first: DataError -> exit 2
        runner.set_seed(config.seed)
        import keras                     # lazily, after validation
        ...
        history = model.fit(..., callbacks=runner.standard_callbacks(
            workdir, grad_batch=(x[:32], y[:32]),
            every_n_batches=config.grad_every_n_batches))
        runner.plot_loss_curves(history, runner.plots_dir(workdir) / "loss_curves.png")
        runner.plot_gradient_norms(workdir)
        results = {...}
        runner.save_results(workdir, results)
        return results

    def main(argv=None):
        return runner.run_main(train_and_evaluate, Config, argv)

Command line. `parse_config` turns every field into a flag `--field_name
value` (booleans: `--flag` / `--no-flag`) with the field's help text and
default in `--help`. `BaseConfig` adds the flags common to all experiments:
`--seed`, `--grad_every_n_batches`, `--verbose`, `--workdir_root` and
`--run_name`. `TrainingConfig` (a `BaseConfig` for experiments that train
one model with `fit`; text and timeseries use it) adds `--strategy` and
`--init_from` and makes runs resumable (below).

Training runs (`TrainingConfig`). `train_and_evaluate` then

- creates the `tf.distribute` strategy first (`make_strategy(config.strategy)`:
  "default", "mirrored" = `MirroredStrategy` over all local GPUs, or all
  logical CPUs without a GPU, "multi-worker" = `MultiWorkerMirroredStrategy`
  configured by the `TF_CONFIG` environment variable), builds and compiles
  the model inside `strategy.scope()` and calls `fit` outside it; the
  optimizer goes through `clip_global_gradient`, so that `--clipnorm` clips
  the global batch's gradient as on one device;
- feeds training batches as a `tf.data` dataset (`batch_dataset`) with the
  global batch size (split across replicas, auto-sharded across workers by
  data) and a data order that is a pure function of (seed, batch number)
  (`shuffled_batch_indices`), so a resumed run sees exactly the batches an
  uninterrupted one would have seen; the batch size must be a multiple of
  the number of replicas (`check_global_batch`);
- loads `--init_from PATH` (a `.keras` model, checked without TensorFlow by
  `check_keras_file` in `validate()`) with `load_initial_weights`;
- uses `standard_callbacks(..., resumable=True, stop_on_divergence=True)` and
  `initial_epoch(workdir)`, and takes the per-epoch history from
  `load_history(workdir)`, which survives a resume;
- on divergence (`divergence(callbacks)` is not None) writes results.json
  with `"status": "diverged"` and returns; otherwise `"status": "ok"`.

Resuming. Every training run backs itself up at the end of every epoch
(`RunBackup`, a `keras.callbacks.BackupAndRestore` that writes to
`<run dir>/backup/` atomically). Starting the same command again with the
same `--run_name` after the run was killed resumes it from its last completed
epoch into the same run directory: weights, optimizer state, data order,
best-checkpoint threshold, history, gradient-norm NPZ/CSV (truncated to the
backed-up step, then appended) and TensorBoard logs (new event files next to
the old ones) continue, and it ends with the same results as an
uninterrupted run. An existing run dir is resumed only if it has a backup and
no results.json and its config.json has the same settings (`verbose` may
differ); a finished run (results.json) or one without a backup is an error
(exit 2), never overwritten. A run dir is locked while a process uses it.
The backup is deleted when the run finishes with status "ok".

With `--strategy multi-worker`, start the same command (with an explicit
`--run_name`) on every worker; the chief writes to `<run_name>/`, any other
worker to `<run_name>.<task type>-<index>/` (the same model, results and
resume rules in each).

Run directory. `run_main` creates `<workdir_root>/<experiment>/<run name>/`
(default name: the UTC start time, e.g. `20261128-061500`, with `-2`, `-3`,
... appended if taken; an explicit `--run_name` that exists is an error, but
for an unfinished training run, which is resumed: a run is never
overwritten) and every run writes there::

    config.json                  the full config (`load_config` reads it back)
    logs/                        TensorBoard: train/ and validation/ scalars,
                                 per-timestep BPTT gradient norms
    logs/gradient_norms.npz      the gradient norms as arrays (and .csv)
    model.keras                  best model (lowest validation loss)
    history.json                 per-epoch losses and metrics (training runs)
    backup/                      last completed epoch, while a training run
                                 is unfinished (and kept if it diverged)
    results.json                 metrics and baselines, "status"
    plots/*.png                  loss curves, gradient heat map, ...

Exit status: 0 finished ("status": "ok" in results.json); 2 bad settings or
data (below); 3 (`DIVERGED_EXIT_CODE`) training diverged: the loss or the
gradients became NaN/inf, training stopped at once and results.json has
`"status": "diverged"` and `"diverged_at"` (the global batch index `step`,
`epoch`, `batch`, `cause`); the logs, the best checkpoint model.keras (if an
epoch finished before) and the backup of the last good epoch are kept.

Errors. Bad settings or data end the program with exit status 2 and one line
`error: <message>` on stderr, no traceback: a `ValueError` (which includes
`DataError`) or `FileNotFoundError` from parsing, `validate()` or the run dir,
and a `DataError` or `FileNotFoundError` raised by `train_and_evaluate`. A
plain `ValueError` from inside `train_and_evaluate` is treated as a bug and
keeps its traceback. A run dir that a failed run left with nothing but its
`config.json` is removed again, and so are the folders above it
(`<workdir_root>/<experiment>/`, `<workdir_root>/`) that the run created:
a rejected input leaves nothing behind.

TensorFlow and Keras are imported lazily (inside functions), so parsing,
validation and these errors take no TensorFlow start-up time. Printing is fine
here (experiments are programs); the `keras_vrnn` library itself never prints.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import re
import shutil
import sys
import time
import types
import typing
import warnings
import zipfile
from typing import ClassVar

import numpy as np

from experiments.data import DataError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
LOGS_DIR = "logs"
PLOTS_DIR = "plots"
CHECKPOINT_FILE = "model.keras"
GRADIENT_NORMS_FILE = "gradient_norms.npz"  # written by GradientNormCallback
HISTORY_FILE = "history.json"  # per-epoch logs of a training run (EpochHistory)
BACKUP_DIR = "backup"  # RunBackup's folder inside the run dir
BACKUP_METADATA_FILE = "training_metadata.json"  # the commit record of a backup
LOCK_FILE = ".lock"  # held (flock) by the process using a run dir

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
STRATEGIES = ("default", "mirrored", "multi-worker")
# Test hook: seconds to sleep after every training batch (tests/test_resume.py
# uses it to kill a run in the middle of an epoch). Not for normal use.
TEST_BATCH_SLEEP_ENV = "KERAS_VRNN_TEST_BATCH_SLEEP"

# Errors that mean "bad settings or data", not "bug": one line, exit 2.
_CONFIG_ERRORS = (ValueError, FileNotFoundError)  # before train_and_evaluate
_DATA_ERRORS = (DataError, FileNotFoundError)  # inside train_and_evaluate
USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3  # training stopped on a NaN/inf loss or gradient


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def option(default, help, choices=None):  # noqa: A002 (argparse's name)
    """A config field with its default and its `--help` text.

    Args:
        default: Default value (immutable: int, float, str, bool or None).
        help: One or two sentences for `--help` (the default is appended).
        choices: Optional allowed values (checked by argparse).
    """
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class BaseConfig:
    """Settings common to every experiment (subclass it, see module doc)."""

    experiment: ClassVar[str] = "experiment"

    # Seed of Python, NumPy and the backend (weights, shuffling, sampling).
    seed: int = option(0, "Random seed (Python, NumPy, backend, data order).")
    # How often GradientNormCallback measures per-timestep BPTT gradients.
    grad_every_n_batches: int = option(
        50, "Measure per-timestep BPTT gradient norms every N training batches."
    )
    # Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    verbose: int = option(
        1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.",
        choices=(0, 1, 2),
    )
    # Runs go to <workdir_root>/<experiment>/<run_name>/.
    workdir_root: str = option(
        "runs", "Root directory; a run goes to <root>/<experiment>/<run_name>/."
    )
    # None: the UTC start time, e.g. 20261128-061500 (-2, -3, ... if taken).
    run_name: typing.Optional[str] = option(
        None,
        "Name of the run directory (default: UTC start time, e.g. "
        "20261128-061500). An existing name is an error, never overwritten.",
    )

    def validate(self):
        """Checks the values; raises `ValueError` with a one-line message.

        Subclasses extend it and call `super().validate()` first.
        """
        check_int("seed", self.seed, minimum=0)
        check_positive_int("grad_every_n_batches", self.grad_every_n_batches)
        check_choice("verbose", self.verbose, (0, 1, 2))
        if not isinstance(self.workdir_root, str) or not self.workdir_root:
            raise ValueError(
                f"Received: workdir_root={self.workdir_root!r}. Expected a "
                f"non-empty directory path, e.g. --workdir_root runs."
            )
        if self.run_name is not None:
            check_run_name(self.run_name)


@dataclasses.dataclass
class TrainingConfig(BaseConfig):
    """Settings of experiments that train one model with `fit` (see module doc).

    Adds `--strategy` and `--init_from`, and makes runs resumable: an
    interrupted run started again with the same `--run_name` continues from
    its last completed epoch.
    """

    # Settings that may differ when a run is resumed (they change how the
    # run reports, not what it computes).
    resume_ignores: ClassVar[tuple] = ("verbose",)

    # An existing name: resumed if unfinished (see the module doc).
    run_name: typing.Optional[str] = option(
        None,
        "Name of the run directory (default: UTC start time, e.g. "
        "20261128-061500). The name of an interrupted run resumes it; a "
        "finished run is never overwritten.",
    )

    # default: no tf.distribute strategy (one device).
    strategy: str = option(
        "default",
        "Distribution: default (one device), mirrored (tf.distribute."
        "MirroredStrategy over all local GPUs, or all logical CPUs without a "
        "GPU) or multi-worker (MultiWorkerMirroredStrategy configured by the "
        "TF_CONFIG environment variable; start the same command, with "
        "--run_name, on every worker). --batch_size is the global batch.",
        choices=STRATEGIES,
    )
    # A model.keras of an earlier run with the same architecture.
    init_from: typing.Optional[str] = option(
        None,
        "A .keras model (e.g. the model.keras of an earlier run with the "
        "same architecture) whose weights this run starts from; the "
        "optimizer starts afresh (default: none, random initialization).",
    )

    def validate(self):
        super().validate()
        check_choice("strategy", self.strategy, STRATEGIES)
        if self.init_from is not None:
            check_keras_file("init_from", self.init_from)
        if self.strategy == "multi-worker":
            multi_worker_task()  # TF_CONFIG must be usable
            if self.run_name is None:
                raise ValueError(
                    "Received: strategy='multi-worker' without --run_name. "
                    "Expected an explicit --run_name, the same on every "
                    "worker, so that they agree on the run directory."
                )


def _describe(value):
    return f"{value!r}" if isinstance(value, str) else f"{value}"


def check_int(name, value, minimum=None):
    """Raises `ValueError` unless `value` is an int (>= minimum, if given)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum):
        return int(value)
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    raise ValueError(f"Received: {name}={_describe(value)}. Expected {expected}.")


def check_positive_int(name, value, example=None):
    """Raises `ValueError` unless `value` is an integer > 0."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value > 0:
        return int(value)
    hint = f" (e.g. --{name} {example})" if example is not None else ""
    raise ValueError(
        f"Received: {name}={_describe(value)}. Expected a positive integer{hint}."
    )


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not (
        isinstance(value, bool)
    )


def check_positive(name, value):
    """Raises `ValueError` unless `value` is a finite number > 0."""
    if _is_number(value) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(
        f"Received: {name}={_describe(value)}. Expected a positive finite number."
    )


def check_non_negative(name, value, meaning_of_zero=""):
    """Raises `ValueError` unless `value` is a finite number >= 0."""
    if _is_number(value) and math.isfinite(value) and value >= 0:
        return value
    zero = f" ({meaning_of_zero})" if meaning_of_zero else ""
    raise ValueError(
        f"Received: {name}={_describe(value)}. Expected a finite number >= 0{zero}."
    )


def check_fraction(name, value):
    """Raises `ValueError` unless 0 < value < 1."""
    if _is_number(value) and 0.0 < value < 1.0:
        return float(value)
    raise ValueError(
        f"Received: {name}={_describe(value)}. Expected a number strictly "
        f"between 0 and 1 (e.g. --{name} 0.1)."
    )


def check_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`."""
    if value in tuple(choices):
        return value
    raise ValueError(
        f"Received: {name}={_describe(value)}. Expected one of {list(choices)}."
    )


_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def check_run_name(run_name):
    """Raises `ValueError` unless `run_name` is one safe path component."""
    if isinstance(run_name, str) and _RUN_NAME_RE.match(run_name):
        return run_name
    raise ValueError(
        f"Received: run_name={_describe(run_name)}. Expected a directory name "
        f"of letters, digits and . _ = + - (starting with a letter or digit), "
        f"e.g. --run_name hidden256."
    )


def check_keras_file(name, path):
    """Raises `ValueError` unless `path` looks like a Keras `.keras` model.

    Checked without TensorFlow: an existing, non-empty file named `*.keras`
    that is a zip archive holding Keras' `config.json` and
    `model.weights.h5`. (Whether its weights fit the model is checked when
    they are loaded, see `load_initial_weights`.)
    """
    expected = (
        "a .keras model file saved by Keras (e.g. the model.keras of an "
        "earlier run)"
    )
    shown = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(shown, str) or not shown:
        raise ValueError(f"Received: {name}={shown!r}. Expected {expected}.")
    file = pathlib.Path(shown)
    if not file.exists():
        raise ValueError(
            f"Received: {name}={shown!r} (no such file). Expected {expected}; "
            f"check the path (relative paths start at {os.getcwd()!r})."
        )
    if not file.is_file():
        raise ValueError(
            f"Received: {name}={shown!r} (not a file). Expected {expected}."
        )
    if file.suffix != ".keras":
        raise ValueError(
            f"Received: {name}={shown!r} (its name does not end in .keras). "
            f"Expected {expected}."
        )
    size = file.stat().st_size
    problem = None
    if size == 0:
        problem = "0 bytes"
    elif not zipfile.is_zipfile(file):
        problem = f"{size} bytes that are not a zip archive"
    else:
        try:
            with zipfile.ZipFile(file) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as err:
            problem = f"a damaged zip archive: {err}"
        else:
            missing = sorted({"config.json", "model.weights.h5"} - names)
            if missing:
                problem = f"a zip archive without {' and '.join(missing)}"
    if problem:
        raise ValueError(
            f"Received: {name}={shown!r} ({problem}, not a Keras model). "
            f"Expected {expected}."
        )
    return file


def multi_worker_task(environ=None):
    """`(task_type, task_index, is_chief)` of this worker, from `TF_CONFIG`.

    Raises `ValueError` (one line) unless the `TF_CONFIG` environment
    variable holds a usable cluster spec, e.g.
    `{"cluster": {"worker": ["host1:12345", "host2:12345"]},
    "task": {"type": "worker", "index": 0}}`. The chief is the "chief" task,
    or worker 0 when the cluster has no "chief".
    """
    environ = os.environ if environ is None else environ
    example = (
        '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "Received: strategy='multi-worker' without a TF_CONFIG "
            "environment variable. Expected TF_CONFIG in every worker's "
            f"environment, e.g. TF_CONFIG='{example}'."
        )
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Received: TF_CONFIG={raw!r} (not JSON: {err}). Expected e.g. "
            f"TF_CONFIG='{example}'."
        ) from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    ok = (
        isinstance(cluster, dict)
        and cluster
        and all(
            isinstance(hosts, list)
            and hosts
            and all(isinstance(h, str) and ":" in h for h in hosts)
            for hosts in cluster.values()
        )
        and isinstance(task, dict)
        and task.get("type") in ("chief", "worker")
        and task.get("type") in cluster
        and isinstance(task.get("index"), int)
        and not isinstance(task.get("index"), bool)
        and 0 <= task["index"] < len(cluster[task["type"]])
    )
    if not ok:
        raise ValueError(
            f"Received: TF_CONFIG={raw!r}. Expected a cluster of "
            f"\"host:port\" lists and this worker's task (type \"chief\" or "
            f"\"worker\", an index into its list), e.g. TF_CONFIG='{example}'."
        )
    task_type, index = task["type"], task["index"]
    is_chief = task_type == "chief" or (
        task_type == "worker" and index == 0 and "chief" not in cluster
    )
    return task_type, index, is_chief


def _field_type(hint):
    """(scalar type, is_optional) of a field's type hint."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False


def _parse_scalar(kind, name):
    """An argparse `type=` for int/float/str that names the flag on error."""

    def parse(text):
        try:
            return kind(text)
        except ValueError:
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(
                f"Received: {name}={text!r}. Expected {what}."
            ) from None

    parse.__name__ = kind.__name__
    return parse


class _OneLineParser(argparse.ArgumentParser):
    """Reports command-line errors as one line `error: ...` (exit 2)."""

    def error(self, message):
        # Our message for a bad type already names the flag ("Received:
        # name=..."); argparse's own ones (e.g. an invalid choice) keep it.
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: (?=Received:)", "", message)
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: ", r"\1: ", message)
        self.exit(
            USAGE_EXIT_CODE,
            f"error: {' '.join(message.split())} (see {self.prog} --help)\n",
        )


_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}

_TRAINING_EPILOG = f"""\
exit status:
  0  finished; results.json has "status": "{STATUS_OK}"
  {USAGE_EXIT_CODE}  bad settings or data: one line "error: ..." on stderr, nothing
     overwritten
  {DIVERGED_EXIT_CODE}  training diverged (NaN/inf loss or gradients): stopped at once,
     results.json has "status": "{STATUS_DIVERGED}" and the step (global batch
     index); logs, the best checkpoint and the last good backup are kept

resuming:
  Run the same command again (same --run_name) to resume a run that was
  interrupted (killed, preempted): it continues from its last completed
  epoch in the same run directory and ends with the same results as an
  uninterrupted run. A finished run (one with results.json) is never
  overwritten.
"""


def _common_field_names(config_cls):
    """Fields declared by this module's config classes (`--help` group
    "common settings")."""
    names = set()
    for cls in config_cls.__mro__:
        if cls.__module__ == __name__ and dataclasses.is_dataclass(cls):
            names |= {f.name for f in dataclasses.fields(cls)}
    return names


def build_parser(config_cls, description=None, prog=None):
    """An `argparse.ArgumentParser` with one flag per field of `config_cls`."""
    if description is None:
        description = (config_cls.__doc__ or "").strip() or None
    epilog = (
        _TRAINING_EPILOG
        if isinstance(config_cls, type) and issubclass(config_cls, TrainingConfig)
        else None
    )
    parser = _OneLineParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(config_cls)
    base_names = _common_field_names(config_cls)
    own = parser.add_argument_group(f"{config_cls.experiment} settings")
    common = parser.add_argument_group("common settings")
    for field in dataclasses.fields(config_cls):
        kind, _ = _field_type(hints[field.name])
        group = common if field.name in base_names else own
        flag = f"--{field.name}"
        default = field.default
        if default is dataclasses.MISSING:
            raise TypeError(
                f"Config field {field.name!r} of {config_cls.__name__} has no "
                f"default; every config field needs one."
            )
        help_text = field.metadata.get("help", "")
        if "default" not in help_text.lower():
            shown = repr(default) if isinstance(default, str) else default
            help_text = f"{help_text} (default: {shown})".strip()
        # argparse formats help with %-interpolation.
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        if kind not in (int, float, str):
            raise TypeError(
                f"Config field {field.name!r} has type {kind!r}; only int, "
                f"float, str, bool and Optional of those become flags."
            )
        choices = field.metadata.get("choices")
        group.add_argument(
            flag,
            type=_parse_scalar(kind, field.name),
            default=default,
            choices=choices,
            metavar=None if choices else _METAVARS[kind],
            help=help_text,
        )
    return parser


def parse_config(config_cls, argv=None, description=None, prog=None):
    """Builds a `config_cls` from command-line arguments.

    Args:
        config_cls: A dataclass (normally a `BaseConfig` subclass) whose
            fields all have defaults and types int, float, str, bool or
            Optional of those.
        argv: Arguments without the program name (default `sys.argv[1:]`).
        description: `--help` text (default: the class docstring).
        prog: Program name in messages (default: from `sys.argv[0]`).

    Returns:
        A `config_cls` instance (not validated yet: call `validate()`).
        `--help` prints the flags with their help and defaults and exits 0;
        an unknown flag or unparseable value prints one line `error: ...`
        and exits 2.
    """
    parser = build_parser(config_cls, description, prog)
    namespace = parser.parse_args(argv)
    return config_cls(**vars(namespace))


def config_to_dict(config):
    """The config as a JSON-able dict (field name -> value)."""
    return dataclasses.asdict(config)


def save_config(workdir, config):
    """Writes `<workdir>/config.json`; returns its path."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    _write_json(path, config_to_dict(config))
    return path


def load_config(config_cls, path):
    """Reads a `config.json` (or a run dir holding one) back into a config."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    values = json.loads(path.read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"Received: {str(path)!r} with unknown settings {unknown}. Expected "
            f"the config.json of a {config_cls.__name__} run."
        )
    return config_cls(**values)


# ---------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------


def timestamp():
    """The current UTC time as `YYYYmmdd-HHMMSS`."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_run_dir(experiment, run_name=None, root="runs"):
    """Creates and returns a fresh run directory `<root>/<experiment>/<name>/`.

    Args:
        experiment: Experiment name (the middle directory).
        run_name: Directory name. Default: the UTC time (`timestamp()`), with
            `-2`, `-3`, ... appended when that name is taken.
        root: Root directory of all runs.

    Returns:
        `pathlib.Path` of the new, empty directory.

    Raises:
        ValueError: if an explicitly requested `run_name` exists already
            (a run is never overwritten) or is not a plain directory name.
    """
    parent = pathlib.Path(root) / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(
            f"Received: workdir_root={str(root)!r}, but {str(parent)!r} cannot "
            f"be created (a file is in the way). Expected a directory path."
        ) from None
    if run_name is not None:
        check_run_name(run_name)
        path = parent / run_name
        try:
            path.mkdir()
        except FileExistsError:
            raise ValueError(
                f"Received: run_name={run_name!r}, but {str(path)!r} already "
                f"exists. Expected a new run name (runs are never "
                f"overwritten); pick another --run_name or delete that "
                f"directory."
            ) from None
        return path
    base = timestamp()
    for attempt in range(1, 10_000):
        path = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()  # atomic: two runs started together get two dirs
            return path
        except FileExistsError:
            continue
    raise ValueError(f"Could not find a free run name under {str(parent)!r}.")


def worker_run_name(config):
    """The run name of this process: `config.run_name`, with
    `.<task type>-<index>` appended on a non-chief multi-worker task."""
    if getattr(config, "strategy", None) != "multi-worker":
        return config.run_name
    task_type, index, is_chief = multi_worker_task()
    return config.run_name if is_chief else f"{config.run_name}.{task_type}-{index}"


def _settings_differences(config, saved):
    ignore = set(getattr(type(config), "resume_ignores", ()))
    current = config_to_dict(config)
    keys = sorted((set(current) | set(saved)) - ignore)
    return [
        f"{k}: {saved.get(k, '(missing)')!r} there, {current.get(k, '(missing)')!r} now"
        for k in keys
        if current.get(k, "(missing)") != saved.get(k, "(missing)")
    ]


def _lock(path):
    """Takes the run dir's lock (released when the process ends) or raises."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return None
    fd = os.open(path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(
            f"Received: run_name={path.name!r}, but {str(path)!r} is in use by "
            f"another running process. Expected a run directory no other "
            f"process is using; wait for it to end or pick another --run_name."
        ) from None
    return fd


def _unlock(fd):
    if fd is not None:
        os.close(fd)


def open_run_dir(config):
    """The run dir of `config`: a new one, or an unfinished one to resume.

    A new dir is made by `new_run_dir`. An existing `--run_name` dir is
    resumed when the config is a `TrainingConfig`, the dir has a backup
    (`backup/training_metadata.json`) and no results.json, and its
    config.json has the same settings (but those in `resume_ignores`).

    Returns:
        `(workdir, resumed, lock)`: `lock` is the open file descriptor of
        the dir's lock (pass it to `close_run_dir` when done), or None.

    Raises:
        ValueError: the dir exists and is finished, not resumable or in use,
            or holds a run with other settings (see `new_run_dir` too).
    """
    experiment = type(config).experiment
    run_name = worker_run_name(config)
    root = config.workdir_root
    if run_name is not None:
        check_run_name(run_name)
        path = pathlib.Path(root) / experiment / run_name
        if path.is_dir():
            return _open_existing(config, path)
    workdir = new_run_dir(experiment, run_name, root)
    return workdir, False, _lock(workdir)


def _open_existing(config, path):
    name = path.name
    never = (
        "Expected a new run name (runs are never overwritten); pick another "
        "--run_name or delete that directory."
    )
    if (path / RESULTS_FILE).exists():
        raise ValueError(
            f"Received: run_name={name!r}, but {str(path)!r} already exists and "
            f"is a finished run (it has {RESULTS_FILE}). {never}"
        )
    if not isinstance(config, TrainingConfig):
        raise ValueError(
            f"Received: run_name={name!r}, but {str(path)!r} already exists. "
            f"{never}"
        )
    if read_backup(path) is None:
        raise ValueError(
            f"Received: run_name={name!r}, but {str(path)!r} already exists "
            f"and has no backup to resume from (no epoch of it finished). "
            f"{never}"
        )
    try:
        saved = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(
            f"Received: run_name={name!r}, but {str(path)!r} has no readable "
            f"{CONFIG_FILE} to resume with. {never}"
        )
    differences = _settings_differences(config, saved)
    if differences:
        raise ValueError(
            f"Received: run_name={name!r} with settings that differ from those "
            f"of the unfinished run in {str(path)!r} ({'; '.join(differences)}). "
            f"Expected the same command to resume it, or a new --run_name."
        )
    lock = _lock(path)
    if (path / RESULTS_FILE).exists():  # finished while we were checking
        _unlock(lock)
        raise ValueError(
            f"Received: run_name={name!r}, but {str(path)!r} is a finished run. "
            f"{never}"
        )
    return path, True, lock


def close_run_dir(lock, workdir=None):
    """Releases the lock `open_run_dir` returned (and removes the lock file
    of a finished run, one with results.json)."""
    if lock is not None and workdir is not None and (workdir / RESULTS_FILE).exists():
        (workdir / LOCK_FILE).unlink(missing_ok=True)
    _unlock(lock)


def logs_dir(workdir):
    """`<workdir>/logs` (TensorBoard's `--logdir`)."""
    return pathlib.Path(workdir) / LOGS_DIR


def plots_dir(workdir):
    """`<workdir>/plots`, created if needed."""
    path = pathlib.Path(workdir) / PLOTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_path(workdir):
    """`<workdir>/model.keras`, the best-on-validation checkpoint."""
    return pathlib.Path(workdir) / CHECKPOINT_FILE


def gradient_norms_path(workdir):
    """`<workdir>/logs/gradient_norms.npz`, written by GradientNormCallback."""
    return logs_dir(workdir) / GRADIENT_NORMS_FILE


def backup_dir(workdir):
    """`<workdir>/backup`, where `RunBackup` keeps the last completed epoch."""
    return pathlib.Path(workdir) / BACKUP_DIR


def history_path(workdir):
    """`<workdir>/history.json`, the per-epoch logs (`EpochHistory`)."""
    return pathlib.Path(workdir) / HISTORY_FILE


def read_backup(workdir):
    """The committed backup of a run dir, or None.

    Returns:
        The backup's metadata dict: `epoch` (epochs completed), `step`
        (training batches done, the optimizer's step), `weights` (file name
        in `backup/`), or None if there is no complete backup.
    """
    path = backup_dir(workdir) / BACKUP_METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("epoch"), int)
        or not isinstance(meta.get("weights"), str)
        or not (backup_dir(workdir) / meta["weights"]).is_file()
    ):
        return None
    return meta


def initial_epoch(workdir):
    """The epoch a (resumed) run starts at: that of its backup, else 0."""
    meta = read_backup(workdir)
    return meta["epoch"] if meta else 0


def load_history(workdir):
    """The per-epoch logs of a training run, `{name: [value per epoch]}`.

    Read from `history.json` (written by `EpochHistory` at every epoch end,
    so it covers every epoch of a resumed run; NaN/inf are read back as NaN).
    Empty if there is none.
    """
    path = history_path(workdir)
    if not path.exists():
        return {}
    epochs = json.loads(path.read_text(encoding="utf-8")).get("epochs", [])
    return _history_from_epochs(epochs)


def _history_from_epochs(epochs):
    keys = []
    for entry in epochs:
        keys += [k for k in entry if k != "epoch" and k not in keys]
    return {
        k: [math.nan if e.get(k) is None else e.get(k) for e in epochs]
        for k in keys
    }


def _missing_dirs(path):
    """`path` and those of its parents that do not exist, deepest first."""
    path = pathlib.Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


def _remove_if_unused(workdir, created=()):
    """Removes a run dir that holds nothing but its config.json (and lock),
    then those of the folders in `created` (deepest first: the ones this run
    made above it, see `_missing_dirs`) that are left empty."""
    if workdir is None or not workdir.is_dir():
        return
    entries = list(workdir.iterdir())
    if not all(
        entry.name in (CONFIG_FILE, LOCK_FILE) and entry.is_file()
        for entry in entries
    ):
        return
    for entry in entries:
        entry.unlink()
    workdir.rmdir()
    for folder in created:
        if folder.is_symlink() or not folder.is_dir():
            break
        try:
            folder.rmdir()  # only if empty: another run may have started there
        except OSError:
            break


# ---------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------


def set_seed(seed):
    """Seeds Python, NumPy and the Keras backend (`keras.utils.set_random_seed`)."""
    import keras

    keras.utils.set_random_seed(int(seed))


def make_strategy(name):
    """The `tf.distribute` strategy named by `--strategy`.

    Create it before any other TensorFlow work of the process (a
    `MultiWorkerMirroredStrategy` must be); build and compile the model in
    its `scope()`. One strategy per name and process: a second call returns
    the same object (two strategies in one process would hand out the same
    collective-op keys and break each other's all-reduces).

    Args:
        name: "default" (`tf.distribute.get_strategy()`: no distribution),
            "mirrored" (`MirroredStrategy` over all local GPUs, or over all
            logical CPU devices when there is no GPU) or "multi-worker"
            (`MultiWorkerMirroredStrategy`, from `TF_CONFIG`).
    """
    check_choice("strategy", name, STRATEGIES)
    return _strategy(name)


@functools.cache
def _strategy(name):
    import tensorflow as tf

    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or (
            tf.config.list_logical_devices("CPU")
        )
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi-worker":
        multi_worker_task()
        return _multi_worker_strategy_class()()
    return tf.distribute.get_strategy()


@functools.cache
def _multi_worker_strategy_class():
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` does
        what Keras 3 asks of it (checked with Keras 3.15, TensorFlow 2.21).

        With several workers, Keras' `fit` (TensorFlow backend) calls
        `strategy.reduce` in two ways TensorFlow's collective reduce rejects:
        on a whole `(x, y)` batch at once (to build the model, "Attempt to
        convert a value (PerReplica...)"), and with `axis=0` on the scalar
        loss and metrics of every step ("Invalid reduction dimension 0 for
        input with 0 dimensions"). Here structures are reduced leaf by leaf,
        and scalars across replicas only (`axis=None`), which is what both
        calls mean.
        """

        def reduce(self, reduce_op, value, axis):
            parent = super()

            def one(v):
                local = v.values[0] if hasattr(v, "values") else v
                scalar = getattr(getattr(local, "shape", None), "rank", None) == 0
                return parent.reduce(reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy


def check_global_batch(batch_size, strategy):
    """Raises `DataError` unless the global batch splits evenly.

    Keras averages the loss per replica and sums the replicas' gradients, so
    only equal shares give the gradient of the global batch.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise DataError(
            f"Received: batch_size={batch_size} with {replicas} replicas "
            f"(tf.distribute). Expected a multiple of {replicas}: the batch "
            f"size is global and is split evenly across the replicas."
        )
    return batch_size // replicas


def eval_batch_size(n, strategy, preferred=256):
    """A batch size for `evaluate` and validation data under `strategy`.

    At most `preferred` (and `n`), and a multiple of the number of replicas,
    so that the first batch splits evenly: Keras 3 (TensorFlow backend)
    reduces the first evaluation batch across the replicas to build the
    model, which fails for unequal shares (a later, smaller last batch is
    fine). With one replica: `min(preferred, n)`.

    Raises:
        DataError: fewer than one sample per replica.
    """
    replicas = strategy.num_replicas_in_sync
    size = (min(preferred, n) // replicas) * replicas
    if size < 1:
        raise DataError(
            f"Received: {n} evaluation samples with {replicas} replicas "
            f"(tf.distribute). Expected at least one sample per replica; use "
            f"more data or fewer replicas."
        )
    return size


def clip_global_gradient(optimizer):
    """Makes `global_clipnorm` clip the global batch's gradient under a
    `tf.distribute` strategy; returns `optimizer` (changed in place).

    Keras 3 clips each replica's gradient before the replicas' gradients are
    summed, so with N replicas the clipped sum can have a norm of up to
    N * global_clipnorm, and a distributed run differs from a one-device run
    whenever clipping is active. Here the norm of the summed gradient is
    computed first (one extra all-reduce) and every replica's share is
    scaled by the same factor, so their sum is exactly the clipped global
    gradient (NaN/inf norms give NaN, as Keras' own clipping does). Without
    `global_clipnorm`, or with one replica, Keras' clipping is unchanged.
    (The saved optimizer is the plain Keras one.)
    """
    import tensorflow as tf

    keras_clip = optimizer._clip_gradients

    def clip_gradients(grads):
        clip = optimizer.global_clipnorm
        context = tf.distribute.get_replica_context()
        if not clip or context is None or context.num_replicas_in_sync == 1:
            return keras_clip(grads)
        dense = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        present = [g for g in dense if g is not None]
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
        norm = tf.linalg.global_norm(total)
        scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        return [None if g is None else g * tf.cast(scale, g.dtype) for g in dense]

    optimizer._clip_gradients = clip_gradients
    return optimizer


def shuffled_batch_indices(n, batch_size, seed, first_batch, num_batches,
                           whole_passes=False):
    """Row indices of training batches `first_batch ... + num_batches - 1`.

    The batches are those of one endless stream: pass `p` over the `n` rows
    is the permutation `np.random.default_rng([seed, p]).permutation(n)`.
    With `whole_passes=True` each pass gives `n // batch_size` batches (the
    rest of the pass is left out, a different rest each pass), so an epoch
    can be one pass; otherwise the passes are concatenated and a batch may
    span two. Batch `g` depends only on (`n`, `batch_size`, `seed`, `g`), so
    a resumed run draws exactly the batches an uninterrupted one would.

    Returns:
        An int64 array `(num_batches, batch_size)`.
    """
    if num_batches <= 0:
        return np.zeros((0, batch_size), dtype=np.int64)

    def permutation(p):
        return np.random.default_rng([int(seed), int(p)]).permutation(n)

    if whole_passes:
        per_pass = n // batch_size
        if per_pass < 1:
            raise ValueError(
                f"Received: n={n}, batch_size={batch_size}. Expected at least "
                f"one whole batch per pass."
            )
        rows = []
        for g in range(first_batch, first_batch + num_batches):
            p, j = divmod(g, per_pass)
            if j == 0 or not rows:
                perm = permutation(p)
            rows.append(perm[j * batch_size : (j + 1) * batch_size])
        return np.stack(rows).astype(np.int64)
    start = first_batch * batch_size
    stop = start + num_batches * batch_size
    first_pass, last_pass = start // n, (stop - 1) // n
    stream = np.concatenate([permutation(p) for p in range(first_pass, last_pass + 1)])
    offset = start - first_pass * n
    flat = stream[offset : offset + num_batches * batch_size]
    return flat.reshape(num_batches, batch_size).astype(np.int64)


def batch_dataset(arrays, batch_indices):
    """A `tf.data.Dataset` of the batches `tuple(a[rows] for a in arrays)`.

    One element per row of `batch_indices` (global batches, from
    `shuffled_batch_indices`), prefetched. Under a strategy Keras splits
    every batch evenly across the replicas; across workers the dataset is
    auto-sharded by data (each worker computes the same stream and keeps its
    share of every global batch).
    """
    import tensorflow as tf

    tensors = tuple(tf.constant(a) for a in arrays)
    batch_indices = np.asarray(batch_indices, dtype=np.int64)
    batch_size = batch_indices.shape[1]
    dataset = (
        tf.data.Dataset.from_tensor_slices(batch_indices.reshape(-1))
        .batch(batch_size, drop_remainder=True)
        .map(lambda rows: tuple(tf.gather(t, rows) for t in tensors))
        .prefetch(2)
    )
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def load_initial_weights(model, path):
    """Sets `model`'s weights to those of the `.keras` model at `path`.

    Raises:
        DataError: the file cannot be loaded as a Keras model, or its
            weights do not fit `model` (another architecture).
    """
    import keras

    import keras_vrnn  # noqa: F401 (registers VanillaRNN for deserialisation)

    path = os.fspath(path)
    expected = (
        "a .keras model saved by Keras with this run's architecture (e.g. "
        "the model.keras of an earlier run with the same settings)"
    )
    try:
        source = keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 (any failure: bad user file)
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise DataError(
            f"Received: init_from={path!r} (cannot be loaded: {reason}). "
            f"Expected {expected}."
        ) from None
    theirs = [tuple(w.shape) for w in source.weights]
    ours = [tuple(w.shape) for w in model.weights]
    if theirs != ours:
        raise DataError(
            f"Received: init_from={path!r}, a model with weight shapes "
            f"{theirs}. Expected {expected}: weight shapes {ours}."
        )
    model.set_weights(source.get_weights())
    return model


# ---------------------------------------------------------------------------
# Callbacks of training runs (classes made on first use: Keras is imported
# lazily). `runner.RunBackup` etc. work as module attributes.
# ---------------------------------------------------------------------------

_LAZY_CALLBACKS = ("BestModelCheckpoint", "DivergenceMonitor", "EpochHistory",
                   "RunBackup")


def __getattr__(name):
    if name in _LAZY_CALLBACKS:
        return getattr(_callback_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _callback_classes():
    import keras
    import tensorflow as tf

    class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
        """`ModelCheckpoint(save_best_only=True)` on `val_loss`, made safe.

        The model is written to a temporary file and renamed, so a kill
        never leaves a truncated `model.keras`; a NaN/inf `val_loss` never
        counts as best (Keras' own would save a diverged model as the first
        "best"). `initial_value_threshold`: the best value so far (resume).
        """

        def __init__(self, filepath, initial_value_threshold=None):
            super().__init__(
                os.fspath(filepath),
                monitor="val_loss",
                mode="min",
                save_best_only=True,
                initial_value_threshold=initial_value_threshold,
            )

        def on_epoch_end(self, epoch, logs=None):
            current = (logs or {}).get(self.monitor)
            if current is None:
                warnings.warn(
                    f"BestModelCheckpoint: no {self.monitor} in the epoch "
                    f"logs (pass validation data to fit); nothing saved.",
                    stacklevel=2,
                )
                return
            current = float(current)
            if not math.isfinite(current) or (
                self.best is not None and not current < self.best
            ):
                return
            self.best = current
            final = pathlib.Path(self.filepath)
            partial = final.with_name(f".partial-{final.name}")
            self.model.save(partial, overwrite=True)
            os.replace(partial, final)

    class DivergenceMonitor(keras.callbacks.Callback):
        """Stops `fit` at the first batch with a NaN/inf loss or update.

        After every training batch it checks the batch's loss (Keras' running
        mean of the epoch, non-finite from the first non-finite batch on) and
        that all trainable weights are finite (a NaN/inf gradient makes the
        update non-finite even when the loss is not). On the first failure it
        sets `model.stop_training` and `diverged` to a dict: `step` (global
        index of the batch, from 0, counting the batches of all epochs and of
        a resumed run's earlier part), `epoch`, `batch` (index in the epoch),
        `cause` ("loss" or "gradients") and `loss` (the epoch's running mean;
        "nan" or "inf" when not finite). `diverged` is None while training is
        fine.
        """

        def __init__(self):
            super().__init__()
            self.diverged = None
            self._check = None
            self._step = 0
            self._epoch = 0
            self._epoch_start = 0

        def on_train_begin(self, logs=None):
            self.diverged = None
            # Restored by a RunBackup placed before this callback.
            self._step = _optimizer_step(self.model)
            variables = [v.value for v in self.model.trainable_variables]

            @tf.function
            def all_finite():
                return tf.reduce_all(
                    [tf.reduce_all(tf.math.is_finite(v)) for v in variables]
                )

            self._check = all_finite

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self._epoch_start = self._step

        def on_train_batch_end(self, batch, logs=None):
            step = self._epoch_start + int(batch)
            self._step = step + 1
            if self.diverged is not None:
                return
            loss = (logs or {}).get("loss")
            loss = None if loss is None else float(loss)
            cause = None
            if loss is not None and not math.isfinite(loss):
                cause = "loss"
            elif not bool(self._check()):
                cause = "gradients"
            if cause is not None:
                self.diverged = {
                    "step": step,
                    "epoch": self._epoch,
                    "batch": int(batch),
                    "cause": cause,
                    # JSON has no NaN/inf: those are kept as "nan", "inf".
                    "loss": loss if loss is None or math.isfinite(loss) else str(loss),
                }
                self.model.stop_training = True

    class RunBackup(keras.callbacks.BackupAndRestore):
        """`BackupAndRestore` for run dirs: atomic, and after all callbacks.

        Differences from Keras' own (which this is, for `fit`):

        - A backup is committed atomically: the weights (and optimizer
          state) go to a new `epoch-<N>.weights.h5`, then
          `training_metadata.json` (epoch, optimizer step, file name) is
          replaced in one `os.replace`; a kill at any moment leaves the
          previous or the new backup, never a mix (Keras' writes the weights
          file in place and the metadata after it).
        - The backup of an epoch is committed when the next epoch begins (or
          training ends), i.e. after every callback has finished that epoch
          (history, checkpoint, gradient-norm files): whatever the backup
          says is done has been written. Place it first in the callback list,
          so that it also restores first.
        - Nothing is committed once `divergence.diverged` is set: the backup
          keeps the last good epoch. It is not deleted at the end of `fit`
          (the runner deletes it once results.json is written).

        `restored`: the metadata restored at the start of `fit`, or None.
        """

        def __init__(self, backup_dir, divergence=None):
            super().__init__(
                os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=False
            )
            self.divergence = divergence
            self.restored = None
            self._pending = False

        def on_train_begin(self, logs=None):
            self.restored = None
            self._pending = False
            super().on_train_begin(logs)

        def _load_model(self):
            meta = read_backup(pathlib.Path(self.backup_dir).parent)
            if meta is None:
                return
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(os.path.join(self.backup_dir, meta["weights"]))
            self.model._initial_epoch = meta["epoch"]
            self._current_epoch = meta["epoch"]
            self.restored = meta

        def on_epoch_begin(self, epoch, logs=None):
            self._commit()

        def on_epoch_end(self, epoch, logs=None):
            self._current_epoch = epoch + 1
            self._pending = True

        def on_train_end(self, logs=None):
            self._commit()

        def _commit(self):
            pending, self._pending = self._pending, False
            diverged = self.divergence is not None and self.divergence.diverged
            if pending and not diverged:
                self._save_model()

        def _save_model(self):
            folder = pathlib.Path(self.backup_dir)
            folder.mkdir(parents=True, exist_ok=True)
            epoch = self._current_epoch
            name = f"epoch-{epoch:06d}.weights.h5"
            self.model.save_weights(str(folder / name), overwrite=True)
            meta = {
                "epoch": epoch,
                "batch": 0,
                "step": _optimizer_step(self.model),
                "weights": name,
            }
            _write_json(folder / BACKUP_METADATA_FILE, meta)  # the commit
            for old in folder.glob("epoch-*.weights.h5"):
                if old.name != name:
                    old.unlink()

    class EpochHistory(keras.callbacks.Callback):
        """Keeps the per-epoch logs in `history.json`, across resumes.

        Written (atomically) at every epoch end; at the start of `fit`, the
        epochs before the one `backup` restored are read back (later ones,
        which a killed run wrote after its last backup, are dropped).
        `history`: `{name: [value per epoch]}` of all epochs.
        """

        def __init__(self, path, backup=None):
            super().__init__()
            self.path = pathlib.Path(path)
            self.backup = backup
            self.epochs = []

        def on_train_begin(self, logs=None):
            start = 0
            if self.backup is not None and self.backup.restored:
                start = self.backup.restored["epoch"]
            self.epochs = []
            if start and self.path.exists():
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                self.epochs = [e for e in saved["epochs"] if e["epoch"] < start]

        def on_epoch_end(self, epoch, logs=None):
            entry = {"epoch": int(epoch)}
            entry.update({k: float(v) for k, v in (logs or {}).items()})
            self.epochs = [e for e in self.epochs if e["epoch"] < epoch] + [entry]
            _write_json(self.path, {"epochs": self.epochs})

        @property
        def history(self):
            return _history_from_epochs(self.epochs)

    class _SleepAfterBatch(keras.callbacks.Callback):
        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds

        def on_train_batch_end(self, batch, logs=None):
            time.sleep(self.seconds)

    return types.SimpleNamespace(
        BestModelCheckpoint=BestModelCheckpoint,
        DivergenceMonitor=DivergenceMonitor,
        EpochHistory=EpochHistory,
        RunBackup=RunBackup,
        SleepAfterBatch=_SleepAfterBatch,
    )


def _optimizer_step(model):
    """`model.optimizer.iterations` as an int (also for a distributed
    variable, which `int()` does not take)."""
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _best_so_far(workdir):
    """The lowest finite val_loss of the epochs a resumed run keeps, or None."""
    meta = read_backup(workdir)
    if not meta:
        return None
    path = history_path(workdir)
    if not path.exists():
        return None
    epochs = json.loads(path.read_text(encoding="utf-8")).get("epochs", [])
    values = [
        e.get("val_loss") for e in epochs if e["epoch"] < meta["epoch"]
    ]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else None


def standard_callbacks(workdir, grad_batch, every_n_batches=50, *,
                       resumable=False, stop_on_divergence=False):
    """The callbacks every run uses.

    Args:
        workdir: The run directory.
        grad_batch: A fixed `(x, y)` batch on which `GradientNormCallback`
            measures the per-timestep BPTT gradient norms.
        every_n_batches: Measure them every this many training batches.
        resumable: Also back the run up at every epoch end and resume it from
            there (`RunBackup`, first in the list), keep the history in
            `history.json` (`EpochHistory`), continue the gradient-norm files
            (`GradientNormCallback(resume=True)`) and the best-checkpoint
            threshold. Use `initial_epoch(workdir)` to start the data at the
            right batch.
        stop_on_divergence: Also stop at the first NaN/inf loss or update
            (`DivergenceMonitor`; see `divergence(callbacks)`).

    Returns:
        `[TensorBoard(<workdir>/logs), GradientNormCallback(<workdir>/logs,
        data=grad_batch, every_n_batches=...), BestModelCheckpoint(
        <workdir>/model.keras, best on val_loss; a ModelCheckpoint)]`,
        preceded by `RunBackup` and `DivergenceMonitor` and followed by
        `EpochHistory` when asked for. Pass validation data to `fit` so the
        checkpoint has a `val_loss` to monitor.
    """
    import keras

    import keras_vrnn

    classes = _callback_classes()
    log_dir = str(logs_dir(workdir))
    monitor = classes.DivergenceMonitor() if stop_on_divergence else None
    backup = (
        classes.RunBackup(backup_dir(workdir), divergence=monitor)
        if resumable
        else None
    )
    callbacks = [c for c in (backup, monitor) if c is not None]
    callbacks += [
        keras.callbacks.TensorBoard(log_dir=log_dir),
        keras_vrnn.GradientNormCallback(
            log_dir, data=grad_batch, every_n_batches=every_n_batches,
            resume=resumable,
        ),
        classes.BestModelCheckpoint(
            checkpoint_path(workdir),
            initial_value_threshold=_best_so_far(workdir) if resumable else None,
        ),
    ]
    if resumable or stop_on_divergence:
        callbacks.append(classes.EpochHistory(history_path(workdir), backup))
    sleep = os.environ.get(TEST_BATCH_SLEEP_ENV)
    if sleep and resumable:
        callbacks.append(classes.SleepAfterBatch(float(sleep)))
    return callbacks


def fit_resumable(model, workdir, config, train, validation, *, steps_per_epoch,
                  validation_batch_size, grad_rows, whole_passes=False):
    """`model.fit` as every single-run experiment runs it.

    With `standard_callbacks(resumable=True, stop_on_divergence=True)`, the
    seeded batch order of `shuffled_batch_indices` (continued at the right
    batch when the run resumes) and gradient norms measured on the training
    rows `grad_rows`.

    Args:
        model: A compiled model.
        workdir: The run directory.
        config: The run's config (`epochs`, `batch_size`, `seed`,
            `grad_every_n_batches`, `verbose`).
        train, validation: `(x, y)` arrays.
        steps_per_epoch: Training batches per epoch.
        validation_batch_size: From `eval_batch_size`.
        grad_rows: Indices of the fixed gradient-norm batch in `train`.
        whole_passes: Passed to `shuffled_batch_indices`.

    Returns:
        `(callbacks, first_epoch, train_time_s)`; `first_epoch > 0` when the
        run resumed; see `divergence(callbacks)`.
    """
    x_train, y_train = train
    callbacks = standard_callbacks(
        workdir,
        grad_batch=(x_train[grad_rows], y_train[grad_rows]),
        every_n_batches=config.grad_every_n_batches,
        resumable=True,
        stop_on_divergence=True,
    )
    first_epoch = initial_epoch(workdir)  # > 0 when resuming
    start = time.perf_counter()
    if first_epoch < config.epochs:
        batches = shuffled_batch_indices(
            len(x_train),
            config.batch_size,
            config.seed,
            first_batch=first_epoch * steps_per_epoch,
            num_batches=(config.epochs - first_epoch) * steps_per_epoch,
            whole_passes=whole_passes,
        )
        model.fit(
            batch_dataset((x_train, y_train), batches),
            epochs=config.epochs,
            initial_epoch=first_epoch,
            shuffle=False,  # the batches are shuffled already (seeded)
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_batch_size=validation_batch_size,
            callbacks=callbacks,
            verbose=config.verbose,
        )
    return callbacks, first_epoch, time.perf_counter() - start


def divergence(callbacks):
    """The `DivergenceMonitor.diverged` dict of a callback list, or None."""
    for callback in callbacks:
        if isinstance(callback, _callback_classes().DivergenceMonitor):
            return callback.diverged
    return None


def load_best_model(workdir):
    """Loads `<workdir>/model.keras` (the best epoch on validation loss)."""
    import keras

    import keras_vrnn  # noqa: F401 (registers VanillaRNN for deserialisation)

    return keras.saving.load_model(str(checkpoint_path(workdir)))


def restore_best_weights(model, workdir):
    """Loads the weights of `<workdir>/model.keras` into `model` in place.

    Cheaper than `load_best_model` (the model's compiled functions are
    reused); the model must have the checkpoint's architecture.
    """
    model.load_weights(str(checkpoint_path(workdir)))
    return model


def best_epoch(history, monitor="val_loss"):
    """1-based epoch with the lowest `monitor` value in a Keras History."""
    values = _history_dict(history).get(monitor) or []
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    return min(finite)[1] + 1 if finite else None


# ---------------------------------------------------------------------------
# Results and plots
# ---------------------------------------------------------------------------


def jsonable(value):
    """`value` with NumPy scalars/arrays, tuples and paths made JSON types.

    Non-finite floats become None (strict JSON has no inf/NaN; a record's
    `status` says why a number is missing); any other unknown type becomes
    its `str`, so that writing a results file never fails at the end of a
    run. Shared by every experiment and the sweeps.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _write_json(path, obj):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, path)


def save_results(workdir, results):
    """Writes `<workdir>/results.json` (NaN/inf become null); returns its path."""
    path = pathlib.Path(workdir) / RESULTS_FILE
    _write_json(path, results)
    return path


def _history_dict(history):
    return getattr(history, "history", history) or {}


def plot_loss_curves(
    history, png, scale=1.0, ylabel="loss", baselines=None, title=None
):
    """Plots training and validation loss per epoch to a PNG file.

    Args:
        history: A Keras `History` (from `fit`) or its `.history` dict.
        png: Output path.
        scale: Factor applied to the losses (e.g. `1 / ln 2` for bits).
        ylabel: Y-axis label.
        baselines: Optional `{label: value}` drawn as horizontal lines
            (already in the plotted unit).
        title: Optional title.

    Returns:
        The path of the PNG.
    """
    from matplotlib.figure import Figure

    history = _history_dict(history)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for key, label, style in (
        ("loss", "train", "-o"),
        ("val_loss", "validation", "-s"),
    ):
        values = history.get(key)
        if values:
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, np.asarray(values) * scale, style, ms=3, label=label)
    for i, (label, value) in enumerate((baselines or {}).items()):
        if value is not None and math.isfinite(value):
            ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right" if baselines else "best", framealpha=0.9)
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


def plot_gradient_norms(workdir, layer=None):
    """Writes `plots/gradient_heatmap.png` and
    `plots/gradient_norms_vs_steps_back.png` from the run's gradient norms.

    Uses `keras_vrnn.plots`. Returns the list of PNG paths written (empty,
    with a note on stderr, if the callback recorded nothing).
    """
    from keras_vrnn import plots

    npz = gradient_norms_path(workdir)
    if not npz.exists():
        print(
            f"note: no {GRADIENT_NORMS_FILE} in {str(logs_dir(workdir))!r}; "
            f"skipping the gradient plots.",
            file=sys.stderr,
        )
        return []
    out = plots_dir(workdir)
    heatmap = out / "gradient_heatmap.png"
    steps_back = out / "gradient_norms_vs_steps_back.png"
    plots.plot_gradient_heatmap(str(npz), str(heatmap), layer=layer)
    plots.plot_norms_vs_steps_back(str(npz), str(steps_back), layer=layer)
    return [heatmap, steps_back]


def format_table(rows, headers):
    """A plain-text table (list of lines) for the final printout."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def _fail(err):
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE)


def _diverged_message(workdir, results):
    where = results.get("diverged_at") or {}
    step = where.get("step")
    cause = where.get("cause") or "loss or gradients"
    checkpoint = (
        f"best checkpoint {CHECKPOINT_FILE}"
        if checkpoint_path(workdir).exists()
        else "no checkpoint (no epoch finished)"
    )
    return (
        f"diverged: training stopped at step {step} (global batch index, "
        f"epoch {where.get('epoch')}, batch {where.get('batch')}): non-finite "
        f"{cause}. Logs and {checkpoint} kept in {str(workdir)!r}; try a lower "
        f"--learning_rate or --clipnorm."
    )


def run_main(train_and_evaluate, config_cls, argv=None, description=None, prog=None):
    """Parses the command line, validates, creates the run dir and runs.

    Steps: `parse_config` -> `config.validate()` -> `open_run_dir` (a new
    run dir, or an unfinished one to resume, see the module doc) ->
    `config.json` (new runs) -> `train_and_evaluate(config, workdir)` ->
    prints where the results are and the `tensorboard` command. A finished
    training run's backup is then deleted.

    Args:
        train_and_evaluate: `fn(config, workdir: pathlib.Path) -> dict`.
        config_cls: The experiment's config dataclass (a `BaseConfig`
            subclass; its `experiment` class variable names the run folder).
        argv: Command-line arguments without the program name (default
            `sys.argv[1:]`).
        description: `--help` text (default: the config's docstring).
        prog: Program name for messages (default `python -m <module>`).

    Returns:
        `(workdir, results)`.

    Raises:
        SystemExit(2): after printing one line `error: <message>` to stderr
            for bad settings or data (see the module doc).
        SystemExit(3): after results.json with `"status": "diverged"` was
            written, and one line `diverged: ...` on stderr.
    """
    # Quieter TensorFlow start-up; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if prog is None:
        module = getattr(train_and_evaluate, "__module__", "") or ""
        if module == "__main__":
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            module = spec.name if spec is not None else ""
        prog = f"python -m {module}" if module.startswith("experiments.") else None
    workdir, resumed, lock, created = None, False, None, []
    try:
        config = parse_config(config_cls, argv, description, prog)
        config.validate()
        # The folders the run dir needs that do not exist yet: removed again
        # if the run is rejected before it wrote anything.
        created = _missing_dirs(
            pathlib.Path(config.workdir_root) / type(config).experiment
        )
        workdir, resumed, lock = open_run_dir(config)
        if not resumed:
            save_config(workdir, config)
    except _CONFIG_ERRORS as err:
        if not resumed:
            _remove_if_unused(workdir, created)
        close_run_dir(lock)
        _fail(err)
    try:
        if resumed:
            print(
                f"Resuming run in {workdir} from epoch {initial_epoch(workdir)} "
                f"(its last backup)",
                flush=True,
            )
        else:
            print(f"Run directory: {workdir}", flush=True)
        try:
            results = train_and_evaluate(config, workdir)
        except _DATA_ERRORS as err:
            if not resumed:
                _remove_if_unused(workdir, created)
            _fail(err)
        status = results.get("status") if isinstance(results, dict) else None
        finished = (workdir / RESULTS_FILE).exists()
        if finished and status != STATUS_DIVERGED and backup_dir(workdir).is_dir():
            shutil.rmtree(backup_dir(workdir))
    finally:
        close_run_dir(lock, workdir)
    print(f"\nResults, checkpoint and plots: {workdir}/")
    print(f"  results:     {workdir / RESULTS_FILE}")
    print(f"  plots:       {workdir / PLOTS_DIR}/")
    print(f"  TensorBoard: tensorboard --logdir {logs_dir(workdir)}")
    if status == STATUS_DIVERGED:
        sys.stdout.flush()
        print(_diverged_message(workdir, results), file=sys.stderr, flush=True)
        raise SystemExit(DIVERGED_EXIT_CODE)
    return workdir, results
