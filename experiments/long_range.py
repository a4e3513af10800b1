"""Long-range memory: where a vanilla RNN stops learning, and why.

Two classic tasks whose difficulty is set by the distance T that information
must travel (see `experiments.tasks`):

- adding problem (Le et al., 2015): remember one marked value for up to T
  steps; metric test MSE, baseline 1/6 (always predict 1);
- copy memory (Arjovsky et al., 2016): reproduce `copy_len` symbols after a
  delay of T steps; metric test cross-entropy in nats per step, baseline
  `tasks.copy_memory_baseline(T)` (blank, then a uniform guess).

Four models (64 units, one recurrent layer, a Dense head):

- `rnn_tanh`: `keras_vrnn.VanillaRNN`, tanh, orthogonal W_hh, Adam;
- `irnn`: VanillaRNN with relu and W_hh = identity
  (`ScaledIdentity(1.0)`), input weights N(0, 0.001^2), and a small Adam
  learning rate (`irnn_learning_rate`) as in Le et al. (2015);
- `rnn_tanh_clip`: `rnn_tanh` with global-norm gradient clipping
  (`global_clipnorm`, Pascanu et al., 2013): it tames exploding gradients but
  cannot bring back vanished ones;
- `lstm`: `keras.layers.LSTM`, the gated reference.

    python -m experiments.long_range                     # defaults, 24 configs
    python -m experiments.long_range --adding_lengths 200,400 \\
        --copy_lengths 100 --train_steps 5000 --workers 2  # a bigger sweep
    python -m experiments.long_range --help              # every setting

Cost of the defaults: 8 minutes of CPU time (measured: 13.5 minutes wall on
2 cores shared with other jobs, load ~6), so under 10 minutes on 2 free
cores. The LSTM costs about as much as the three vanilla RNNs together.

Each (task, T, model) is one configuration of a sweep (`experiments.sweep`:
resumable with the same `--run_name`, `--workers N`, HParams dashboard). Each
trains `train_steps` Adam steps on fresh sequences (a new batch every step),
keeps the weights with the best validation loss (checked every
`steps_per_epoch` steps), and reports the test metric on `test_samples`
unseen sequences against the task's baseline. A model has learned when its
metric is well below the baseline (`solved`: below `solved_fraction` x
baseline).

Gradients. For the VanillaRNN models `keras_vrnn.GradientNormCallback` logs
`||dL/dh_t||` for every timestep every `grad_every_n_batches` steps on a
fixed validation batch (TensorBoard, `logs/gradient_norms.npz`) and the run
gets a heat map PNG (plots/gradient_heatmap.png in its config dir). The
table reports, at the end of training, the fitted per-step factor and the
effective horizon (steps back until the mean norm falls to 1e-3 of its
last-step value; for the adding problem the loss is at the last step only).
When T exceeds the horizon, the early part of the sequence receives no
gradient, and the model stays at the baseline. The LSTM has no VanillaRNN
layer to probe: its gradient logging is skipped (recorded as such).

Outputs (run dir `runs/long_range/<run_name>/`): config.json, results.json
(one row per configuration), results.md (metric vs T per model against the
baseline), plots/metric_vs_T.png, plots/final_gradient_norms.png, and per
configuration configs/<id>/ (result.json, logs/ with TensorBoard and gradient
norms, plots/gradient_heatmap.png, HParams).
"""

import dataclasses
import functools
import logging
import math
import os
import time
from typing import ClassVar

import numpy as np

from experiments import runner
from experiments import sweep
from experiments import tasks
from experiments.runner import option

MODELS = ("rnn_tanh", "irnn", "rnn_tanh_clip", "lstm")
TASKS = ("adding", "copy")
LAYER = "rnn"
HORIZON_THRESHOLD = 1e-3


@dataclasses.dataclass
class Config(sweep.SweepConfig):
    """Long-range memory: adding problem and copy memory, vanilla RNNs vs LSTM."""

    experiment: ClassVar[str] = "long_range"
    sweep_axes: ClassVar[tuple] = ("adding_lengths", "copy_lengths", "models")

    # --- the sweep --------------------------------------------------------
    # Empty string: skip the task.
    adding_lengths: str = option(
        "20,50,100", "Comma-separated T of the adding problem ('' skips it)."
    )
    copy_lengths: str = option(
        "10,20,40", "Comma-separated delays T of copy memory ('' skips it)."
    )
    models: str = option(
        "rnn_tanh,irnn,rnn_tanh_clip,lstm",
        "Comma-separated models: rnn_tanh, irnn, rnn_tanh_clip, lstm.",
    )
    # --- tasks ------------------------------------------------------------
    # Arjovsky et al. copy 10 symbols; that plateaus at the baseline for
    # thousands of steps, beyond the default budget. 3 is learnable in it.
    copy_len: int = option(
        3, "Copy memory: number of symbols to copy (Arjovsky et al.: 10)."
    )
    n_symbols: int = option(8, "Copy memory: number of data symbols.")
    # --- models and training ----------------------------------------------
    units: int = option(64, "Units of the recurrent layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    # The default budget; every step sees a fresh batch.
    train_steps: int = option(800, "Adam steps per configuration.")
    # Validation (best weights) and TensorBoard epoch logs at this interval.
    steps_per_epoch: int = option(100, "Training steps between validations.")
    # 2e-3: learns the short tasks within the default budget.
    learning_rate: float = option(
        2e-3, "Adam learning rate of rnn_tanh, rnn_tanh_clip and lstm."
    )
    # Le et al. (2015) train IRNNs with a small learning rate.
    irnn_learning_rate: float = option(1e-4, "Adam learning rate of irnn.")
    # Pascanu et al. (2013): rescale the whole gradient to this norm.
    clipnorm: float = option(
        1.0, "Global gradient-norm threshold of rnn_tanh_clip."
    )
    # --- evaluation -------------------------------------------------------
    validation_samples: int = option(256, "Validation sequences (best weights).")
    # A multiple of 256 (the evaluation batch): one batch shape to compile.
    test_samples: int = option(1024, "Test sequences for the final metric.")
    # solved: metric < solved_fraction * baseline.
    solved_fraction: float = option(
        0.5, "A run counts as solved when its metric is below this x baseline."
    )
    grad_every_n_batches: int = option(
        200, "Log per-timestep BPTT gradient norms every N training batches."
    )
    grad_samples: int = option(
        64, "Validation sequences used for the gradient-norm logging."
    )

    def validate(self):
        super().validate()
        if not self.adding_list() and not self.copy_list():
            raise ValueError(
                "Received: adding_lengths='' and copy_lengths=''. Expected at "
                "least one task, e.g. --adding_lengths 20,50."
            )
        self.model_list()
        runner.check_positive_int("copy_len", self.copy_len, example=10)
        runner.check_int("n_symbols", self.n_symbols, minimum=2)
        runner.check_positive_int("units", self.units, example=64)
        runner.check_positive_int("batch_size", self.batch_size, example=32)
        runner.check_positive_int("train_steps", self.train_steps, example=800)
        runner.check_positive_int("steps_per_epoch", self.steps_per_epoch, example=100)
        runner.check_positive("learning_rate", self.learning_rate)
        runner.check_positive("irnn_learning_rate", self.irnn_learning_rate)
        runner.check_positive("clipnorm", self.clipnorm)
        runner.check_positive_int("validation_samples", self.validation_samples)
        runner.check_positive_int("test_samples", self.test_samples)
        runner.check_fraction("solved_fraction", self.solved_fraction)
        runner.check_positive_int("grad_samples", self.grad_samples, example=64)

    def adding_list(self):
        if not self.adding_lengths.strip():
            return []
        return sweep.split_list("adding_lengths", self.adding_lengths, int, minimum=2)

    def copy_list(self):
        if not self.copy_lengths.strip():
            return []
        return sweep.split_list("copy_lengths", self.copy_lengths, int, minimum=1)

    def model_list(self):
        return sweep.split_list("models", self.models, str, choices=MODELS)


# ---------------------------------------------------------------------------
# Data, models
# ---------------------------------------------------------------------------


def make_data(task, n, T, seed, settings):
    """`(x, y)` for a task; seeds differ per split via `seed`."""
    if task == "adding":
        return tasks.adding_problem(n, T, seed=seed)
    return tasks.copy_memory(
        n, T, seed=seed, n_symbols=settings["n_symbols"], copy_len=settings["copy_len"]
    )


def baseline(task, T, settings):
    if task == "adding":
        return tasks.ADDING_BASELINE_MSE
    return tasks.copy_memory_baseline(
        T, n_symbols=settings["n_symbols"], copy_len=settings["copy_len"]
    )


def build_model(task, T, model_name, settings, seed):
    """The model of one configuration, compiled (jit off, see dynamics)."""
    import keras

    import keras_vrnn

    units = settings["units"]
    lr = settings["learning_rate"]
    clip = None
    if model_name == "lstm":
        rnn = keras.layers.LSTM(
            units, return_sequences=task == "copy", name=LAYER,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 1),
        )
    elif model_name == "irnn":
        rnn = keras_vrnn.VanillaRNN(
            units,
            activation="relu",
            recurrent_initializer=keras_vrnn.initializers.ScaledIdentity(1.0),
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001, seed=seed),
            return_sequences=task == "copy",
            name=LAYER,
        )
        lr = settings["irnn_learning_rate"]
    else:
        rnn = keras_vrnn.VanillaRNN(
            units,
            activation="tanh",
            recurrent_initializer=keras_vrnn.initializers.ScaledOrthogonal(
                1.0, seed=seed + 1
            ),
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            return_sequences=task == "copy",
            name=LAYER,
        )
        if model_name == "rnn_tanh_clip":
            clip = settings["clipnorm"]
    head_init = keras.initializers.GlorotUniform(seed=seed + 2)
    if task == "adding":
        layers = [keras.Input((T, 2), name="x"), rnn, keras.layers.Dense(
            1, kernel_initializer=head_init, name="out")]
        loss = "mse"
    else:
        vocab = settings["n_symbols"] + 2
        layers = [
            keras.Input((T + 2 * settings["copy_len"],), dtype="int32", name="x"),
            # One-hot input: a frozen identity embedding.
            keras.layers.Embedding(
                vocab, vocab, embeddings_initializer="identity", trainable=False,
                name="one_hot",
            ),
            rnn,
            keras.layers.Dense(vocab, kernel_initializer=head_init, name="logits"),
        ]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential(layers, name=f"{task}_{model_name}")
    kwargs = {"learning_rate": lr}
    if clip is not None:
        kwargs["global_clipnorm"] = clip
    model.compile(
        optimizer=keras.optimizers.Adam(**kwargs), loss=loss, jit_compile=False
    )
    return model


def _callbacks_module():
    import keras

    class BestWeights(keras.callbacks.Callback):
        """Keeps the weights of the epoch with the lowest finite val_loss and
        stops at the first non-finite training loss."""

        def __init__(self):
            super().__init__()
            self.best = math.inf
            self.best_epoch = None
            self.weights = None
            self.step = 0
            self.diverged_at = None

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            loss = (logs or {}).get("loss")
            if self.diverged_at is None and loss is not None and not math.isfinite(float(loss)):
                self.diverged_at = self.step
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get("val_loss")
            if value is not None and math.isfinite(value) and value < self.best:
                self.best, self.best_epoch = float(value), epoch + 1
                self.weights = self.model.get_weights()

    return BestWeights


# ---------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------


def run_config(params, config_dir, settings):
    """Trains and evaluates one (task, T, model); see the module doc."""
    import keras

    from keras_vrnn import diagnostics
    from keras_vrnn import plots

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    task, T, model_name = params["task"], params["T"], params["model"]
    s = settings
    seed = s["seed"]
    keras.backend.clear_session()
    runner.set_seed(seed)
    # The same data for every model of one (task, T): seeds from (seed, T).
    base = seed * 1_000_003 + T * 101 + (0 if task == "adding" else 50)
    steps = s["train_steps"]
    spe = min(s["steps_per_epoch"], steps)
    epochs = max(1, steps // spe)
    steps = epochs * spe
    x_train, y_train = make_data(task, steps * s["batch_size"], T, base + 1, s)
    x_val, y_val = make_data(task, s["validation_samples"], T, base + 2, s)
    x_test, y_test = make_data(task, s["test_samples"], T, base + 3, s)
    model = build_model(task, T, model_name, s, seed)
    callbacks = runner.standard_callbacks(
        config_dir,
        grad_batch=(x_val[: s["grad_samples"]], y_val[: s["grad_samples"]]),
        every_n_batches=s["grad_every_n_batches"],
    )
    # Best weights are kept in memory (BestWeights): no checkpoint file per
    # configuration. LSTM: no VanillaRNN layer, so no gradient logging.
    has_vanilla = bool(diagnostics.rnn_layers(model))
    callbacks = [
        c
        for c in callbacks
        if not isinstance(c, keras.callbacks.ModelCheckpoint)
        and (has_vanilla or type(c).__name__ != "GradientNormCallback")
    ]
    best = _callbacks_module()()
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=s["batch_size"],
        epochs=epochs,
        steps_per_epoch=spe,
        shuffle=False,
        validation_data=(x_val, y_val),
        validation_batch_size=256,
        callbacks=[best] + callbacks,
        verbose=0,
    ).history
    train_s = time.perf_counter() - start
    result = {
        "baseline": baseline(task, T, s),
        "train_steps_done": best.step,
        "train_s": train_s,
        "best_epoch": best.best_epoch,
        "final_train_loss": (history.get("loss") or [None])[-1],
        "gradient_logging": "on" if has_vanilla else "skipped (no VanillaRNN layer)",
    }
    # Gradient picture: the callback's norms (last log = end of training).
    npz = runner.gradient_norms_path(config_dir)
    if has_vanilla and npz.exists():
        data = plots.load_gradient_norms(str(npz))
        layer = data["layers"][data["keys"][0]]
        result["grad_factor_end"] = float(layer["factor"][-1])
        result["grad_horizon_end"] = float(layer["horizon"][-1])
        result["grad_factor_start"] = float(layer["factor"][0])
        result["grad_horizon_start"] = float(layer["horizon"][0])
        result["spectral_radius_end"] = float(layer["spectral_radius"][-1])
        png = runner.plots_dir(config_dir) / "gradient_heatmap.png"
        plots.plot_gradient_heatmap(str(npz), str(png))
        result["heatmap"] = os.path.relpath(png, config_dir)
    if best.diverged_at is not None and best.weights is None:
        result.update(status="diverged", diverged_step=best.diverged_at)
        return result
    if best.weights is not None:
        model.set_weights(best.weights)
    metric = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0))
    result["metric"] = metric
    result["metric_ratio"] = metric / result["baseline"]
    result["solved"] = bool(metric < s["solved_fraction"] * result["baseline"])
    if best.diverged_at is not None:
        # Diverged later in training; the metric is that of the best
        # weights before the divergence.
        result.update(status="diverged", diverged_step=best.diverged_at)
    return result


# ---------------------------------------------------------------------------
# The sweep, tables and plots
# ---------------------------------------------------------------------------

METRIC_NAMES = ("metric", "baseline", "metric_ratio", "grad_factor_end", "grad_horizon_end")


def configurations(config):
    out = []
    for task, lengths in (("adding", config.adding_list()), ("copy", config.copy_list())):
        for T in lengths:
            for model_name in config.model_list():
                params = {"task": task, "T": T, "model": model_name}
                cid = sweep.make_config_id(
                    params, ["task", "T", "model"], {"task": "", "T": "T", "model": ""}
                )
                out.append((cid, params))
    return out


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _row(record):
    row = {
        "config_id": record["config_id"],
        **record["params"],
        "status": record["status"],
        "diverged_step": record.get("diverged_step"),
        "error": record.get("error"),
        "wall_s": record.get("wall_s"),
    }
    row.update(record.get("metrics") or {})
    return row


def _cell(row):
    if row is None:
        return ""
    if row["status"] == "crashed":
        return "crashed"
    metric = row.get("metric")
    text = _fmt(metric)
    if row["status"] == "diverged":
        text += f" (diverged@{row.get('diverged_step')})"
    if metric is not None and row.get("solved"):
        text = f"**{text}**"
    if row.get("grad_horizon_end") is not None:
        text += f" h={int(row['grad_horizon_end'])}"
    return text


def markdown(rows, config, counts, wall_s):
    models = config.model_list()
    lines = [
        "# Long-range memory: vanilla RNNs vs LSTM",
        "",
        f"{len(rows)} configurations ({counts['ok']} ok, {counts['diverged']} "
        f"diverged, {counts['crashed']} crashed; {counts['skipped']} reused), "
        f"{wall_s:.0f} s this start, "
        f"{sum(r.get('wall_s') or 0 for r in rows):.0f} s in configurations. "
        f"{config.train_steps} Adam steps x batch "
        f"{config.batch_size}, {config.units} units, test on "
        f"{config.test_samples} sequences.",
        "",
        "Cells: test metric (bold: solved, below "
        f"{config.solved_fraction:g} x baseline); `h=`: effective gradient "
        "horizon at the end of training (steps back until mean ||dL/dh_t|| "
        "falls to 1e-3 of its last-step value; = sequence length: never), "
        "VanillaRNN models only. It is meaningful for the adding problem (loss "
        "at the last step only); copy memory has a loss at every step, so its "
        "h is mostly the whole sequence (T + 2 x copy_len).",
    ]
    for task, title, unit, lengths in (
        ("adding", "Adding problem", "test MSE", config.adding_list()),
        ("copy", "Copy memory", "test cross-entropy, nats/step", config.copy_list()),
    ):
        if not lengths:
            continue
        lines += [
            "",
            f"## {title} ({unit})",
            "",
            "| T | baseline | " + " | ".join(models) + " |",
            "|---:|---:|" + "---|" * len(models),
        ]
        for T in lengths:
            cells = []
            for m in models:
                row = next(
                    (r for r in rows if r["task"] == task and r["T"] == T and r["model"] == m),
                    None,
                )
                cells.append(_cell(row))
            lines.append(
                f"| {T} | {_fmt(baseline(task, T, config.fixed_settings()), 4)} | "
                + " | ".join(cells) + " |"
            )
    lines += [
        "",
        "## All configurations",
        "",
        "| config | status | metric | baseline | metric/baseline | factor start→end "
        "| horizon start→end | rho(W_hh) end | best epoch | train s | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        status = r["status"] + (
            f"@{r.get('diverged_step')}" if r["status"] == "diverged" else ""
        )
        if r["status"] == "crashed":
            status += f": {r.get('error')}"
        fac = (
            f"{_fmt(r.get('grad_factor_start'))}→{_fmt(r.get('grad_factor_end'))}"
            if r.get("grad_factor_end") is not None else "–"
        )
        hor = (
            f"{_fmt(r.get('grad_horizon_start'))}→{_fmt(r.get('grad_horizon_end'))}"
            if r.get("grad_horizon_end") is not None else "–"
        )
        lines.append(
            f"| {r['config_id']} | {status} | {_fmt(r.get('metric'))} | "
            f"{_fmt(r.get('baseline'))} | {_fmt(r.get('metric_ratio'))} | {fac} | "
            f"{hor} | {_fmt(r.get('spectral_radius_end'))} | "
            f"{_fmt(r.get('best_epoch'))} | {_fmt(r.get('train_s'), 2)} | "
            f"{_fmt(r.get('wall_s'), 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot_metrics(rows, config, png):
    """Test metric vs T per model, with the task's baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (task, lengths)
        for task, lengths in (("adding", config.adding_list()), ("copy", config.copy_list()))
        if lengths
    ]
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    settings = config.fixed_settings()
    for ax, (task, lengths) in zip(axes, panels):
        ts = np.asarray(lengths)
        ax.plot(ts, [baseline(task, T, settings) for T in ts], "k--", lw=1.2,
                label="baseline (no memory)")
        for i, m in enumerate(config.model_list()):
            sel = sorted(
                (r for r in rows if r["task"] == task and r["model"] == m
                 and r.get("metric") is not None),
                key=lambda r: r["T"],
            )
            if sel:
                ax.plot([r["T"] for r in sel], [r["metric"] for r in sel], "-o",
                        color=f"C{i}", label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ts)
        ax.set_xticklabels([str(t) for t in ts])
        ax.minorticks_off()
        lo, hi = ax.get_ylim()
        ticks = [
            m * 10.0**e for e in range(-6, 3) for m in (1, 2, 5)
            if lo <= m * 10.0**e <= hi
        ]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.set_xlabel("T (steps to remember across)")
        ax.set_ylabel("test MSE" if task == "adding" else "test cross-entropy (nats/step)")
        ax.set_title("Adding problem" if task == "adding" else "Copy memory")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(png, dpi=90)
    return png


def plot_final_gradients(rows, workdir, config, png):
    """Mean ||dL/dh_t|| vs steps back at the end of training, per task and
    VanillaRNN model, one curve per T."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from keras_vrnn import plots

    models = [m for m in config.model_list() if m != "lstm"]
    panels = [
        (task, lengths)
        for task, lengths in (("adding", config.adding_list()), ("copy", config.copy_list()))
        if lengths
    ]
    if not models or not panels:
        return None
    fig = Figure(figsize=(4.2 * len(models), 3.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), len(models), squeeze=False)
    for i, (task, lengths) in enumerate(panels):
        for j, m in enumerate(models):
            ax = axes[i][j]
            drawn = False
            for k, T in enumerate(lengths):
                row = next(
                    (r for r in rows if r["task"] == task and r["T"] == T and r["model"] == m),
                    None,
                )
                if row is None:
                    continue
                npz = runner.gradient_norms_path(
                    sweep.config_dir_of(str(workdir), row["config_id"])
                )
                if not npz.exists():
                    continue
                data = plots.load_gradient_norms(str(npz))
                mean = data["layers"][data["keys"][0]]["mean_norms"][-1]
                ok = np.isfinite(mean) & (mean > 0)
                if not ok.any():
                    continue
                back = np.arange(mean.size - 1, -1, -1)
                metric = row.get("metric")
                label = f"T={T}" + (f" ({_fmt(metric)})" if metric is not None else "")
                ax.plot(back[ok], mean[ok], color=f"C{k}", label=label)
                drawn = True
            if drawn:
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            ax.set_title(f"{task}: {m}, end of training")
            ax.set_xlabel("steps back from the last step")
            ax.set_ylabel("mean ||dL/dh_t||")
            ax.grid(True, which="both", alpha=0.3)
    fig.savefig(png, dpi=90)
    return png


def train_and_evaluate(config, workdir):
    start = time.perf_counter()
    settings = config.fixed_settings()
    records = sweep.run_sweep(
        str(workdir),
        configurations(config),
        functools.partial(run_config, settings=settings),
        workers=config.workers,
        threads=config.threads or None,
        metric_names=METRIC_NAMES,
        progress=config.verbose > 0,
        label="long_range",
    )
    wall_s = time.perf_counter() - start
    rows = [_row(r) for r in records]
    counts = sweep.summarize(records)
    out = runner.plots_dir(workdir)
    pngs = [str(plot_metrics(rows, config, out / "metric_vs_T.png"))]
    grad_png = plot_final_gradients(rows, workdir, config, out / "final_gradient_norms.png")
    if grad_png is not None:
        pngs.append(str(grad_png))
    results = {
        "experiment": "long_range",
        "counts": counts,
        "wall_s": wall_s,
        # wall_s: this start; configs_wall_s: all configurations' own times,
        # including those finished by an earlier start of a resumed sweep.
        "configs_wall_s": sum(r.get("wall_s") or 0.0 for r in records),
        "baselines": {
            f"{task}_T{T}": baseline(task, T, settings)
            for task, lengths in (("adding", config.adding_list()), ("copy", config.copy_list()))
            for T in lengths
        },
        "rows": rows,
        "plots": pngs,
    }
    md = markdown(rows, config, counts, wall_s)
    return sweep.save_report(workdir, results, md, config.verbose)


def main(argv=None):
    return sweep.run_sweep_main(
        train_and_evaluate, Config, argv, configurations=configurations
    )


if __name__ == "__main__":
    main()
