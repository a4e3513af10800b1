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
`--run_name`.

Run directory. `run_main` creates `<workdir_root>/<experiment>/<run name>/`
(default name: the UTC start time, e.g. `20261128-061500`, with `-2`, `-3`,
... appended if taken; an explicit `--run_name` that exists is an error: a run
is never overwritten) and every run writes there::

    config.json                  the full config (`load_config` reads it back)
    logs/                        TensorBoard: train/ and validation/ scalars,
                                 per-timestep BPTT gradient norms
    logs/gradient_norms.npz      the gradient norms as arrays
    model.keras                  best model (lowest validation loss)
    results.json                 metrics and baselines
    plots/*.png                  loss curves, gradient heat map, ...

Errors. Bad settings or data end the program with exit status 2 and one line
`error: <message>` on stderr, no traceback: a `ValueError` (which includes
`DataError`) or `FileNotFoundError` from parsing, `validate()` or the run dir,
and a `DataError` or `FileNotFoundError` raised by `train_and_evaluate`. A
plain `ValueError` from inside `train_and_evaluate` is treated as a bug and
keeps its traceback. A run dir that a failed run left with nothing but its
`config.json` is removed again.

TensorFlow and Keras are imported lazily (inside functions), so parsing,
validation and these errors take no TensorFlow start-up time. Printing is fine
here (experiments are programs); the `keras_vrnn` library itself never prints.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import sys
import types
import typing
from typing import ClassVar

import numpy as np

from experiments.data import DataError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
LOGS_DIR = "logs"
PLOTS_DIR = "plots"
CHECKPOINT_FILE = "model.keras"
GRADIENT_NORMS_FILE = "gradient_norms.npz"  # written by GradientNormCallback

# Errors that mean "bad settings or data", not "bug": one line, exit 2.
_CONFIG_ERRORS = (ValueError, FileNotFoundError)  # before train_and_evaluate
_DATA_ERRORS = (DataError, FileNotFoundError)  # inside train_and_evaluate
USAGE_EXIT_CODE = 2


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
        # argparse's own message for a bad type already names the flag.
        message = re.sub(r"^argument (--\S+?)(/--no-\S+)?: ", "", message)
        self.exit(
            USAGE_EXIT_CODE,
            f"error: {' '.join(message.split())} (see {self.prog} --help)\n",
        )


_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}


def build_parser(config_cls, description=None, prog=None):
    """An `argparse.ArgumentParser` with one flag per field of `config_cls`."""
    if description is None:
        description = (config_cls.__doc__ or "").strip() or None
    parser = _OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(config_cls)
    base_names = {f.name for f in dataclasses.fields(BaseConfig)}
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


def _remove_if_unused(workdir):
    """Removes a run dir that holds nothing but its config.json."""
    if workdir is None or not workdir.is_dir():
        return
    entries = list(workdir.iterdir())
    if all(entry.name == CONFIG_FILE and entry.is_file() for entry in entries):
        for entry in entries:
            entry.unlink()
        workdir.rmdir()


# ---------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------


def set_seed(seed):
    """Seeds Python, NumPy and the Keras backend (`keras.utils.set_random_seed`)."""
    import keras

    keras.utils.set_random_seed(int(seed))


def standard_callbacks(workdir, grad_batch, every_n_batches=50):
    """The callbacks every run uses.

    Args:
        workdir: The run directory.
        grad_batch: A fixed `(x, y)` batch on which `GradientNormCallback`
            measures the per-timestep BPTT gradient norms.
        every_n_batches: Measure them every this many training batches.

    Returns:
        `[TensorBoard(<workdir>/logs), GradientNormCallback(<workdir>/logs,
        data=grad_batch, every_n_batches=...), ModelCheckpoint(
        <workdir>/model.keras, best on val_loss)]`. Pass validation data to
        `fit` so the checkpoint has a `val_loss` to monitor.
    """
    import keras

    import keras_vrnn

    log_dir = str(logs_dir(workdir))
    return [
        keras.callbacks.TensorBoard(log_dir=log_dir),
        keras_vrnn.GradientNormCallback(
            log_dir, data=grad_batch, every_n_batches=every_n_batches
        ),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint_path(workdir)),
            monitor="val_loss",
            mode="min",
            save_best_only=True,
        ),
    ]


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


def _jsonable(value):
    """Converts NumPy scalars/arrays and paths; non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _write_json(path, obj):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n",
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


def run_main(train_and_evaluate, config_cls, argv=None, description=None, prog=None):
    """Parses the command line, validates, creates the run dir and runs.

    Steps: `parse_config` -> `config.validate()` -> `new_run_dir` ->
    `config.json` -> `train_and_evaluate(config, workdir)` -> prints where the
    results are and the `tensorboard` command.

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
    """
    # Quieter TensorFlow start-up; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if prog is None:
        module = getattr(train_and_evaluate, "__module__", "") or ""
        if module == "__main__":
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            module = spec.name if spec is not None else ""
        prog = f"python -m {module}" if module.startswith("experiments.") else None
    workdir = None
    try:
        config = parse_config(config_cls, argv, description, prog)
        config.validate()
        workdir = new_run_dir(
            config_cls.experiment, config.run_name, config.workdir_root
        )
        save_config(workdir, config)
    except _CONFIG_ERRORS as err:
        _remove_if_unused(workdir)
        _fail(err)
    print(f"Run directory: {workdir}", flush=True)
    try:
        results = train_and_evaluate(config, workdir)
    except _DATA_ERRORS as err:
        _remove_if_unused(workdir)
        _fail(err)
    print(f"\nResults, checkpoint and plots: {workdir}/")
    print(f"  results:     {workdir / RESULTS_FILE}")
    print(f"  plots:       {workdir / PLOTS_DIR}/")
    print(f"  TensorBoard: tensorboard --logdir {logs_dir(workdir)}")
    return workdir, results
