"""Long-range memory: where a vanilla RNN stops learning, and why.

The adding problem and copy memory (`experiments.tasks`) over the distance T that
information must travel, for five models: `rnn_tanh`, `irnn`, `rnn_tanh_clip`,
`rnn_tanh_clip_omega` and `lstm` (docs/results.md: their definitions, the metrics,
cost and outputs). Each (task, T, model) trains `train_steps` Adam steps, keeps the
best validation weights and reports the test metric against the memoryless baseline;
for the VanillaRNN models `GradientNormCallback` logs ||dL/dh_t|| per timestep.

    python -m experiments.long_range                     # defaults, 24 configs, ~8 min CPU
    python -m experiments.long_range --budget long       # adding T=100, 5 models
    python -m experiments.long_range --help              # every setting, e.g. --workers 2

Outputs in runs/long_range/<run_name>/ (resumable, see `experiments.common`).
"""

import dataclasses
import functools
import logging
import os
import time
from typing import ClassVar

from experiments import common
from experiments import tasks
from experiments.common import fmt, option

MODELS = ("rnn_tanh", "irnn", "rnn_tanh_clip", "rnn_tanh_clip_omega", "lstm")
# Presets of --budget: flags put before the command line's, which win.
BUDGETS = {"default": [], "long": [
    "--adding_lengths", "100", "--copy_lengths", "", "--train_steps", "5000",
    "--steps_per_epoch", "250", "--grad_every_n_batches", "500", "--omega_strength", "10",
    "--models", "rnn_tanh,rnn_tanh_clip,irnn,rnn_tanh_clip_omega,lstm"]}
LAYER = "rnn"
METRIC_NAMES = ("metric", "baseline", "metric_ratio", "grad_factor_end", "grad_horizon_end")


@dataclasses.dataclass
class Config(common.SweepConfig):
    """Long-range memory: adding problem and copy memory, vanilla RNNs vs LSTM."""

    experiment: ClassVar[str] = "long_range"
    sweep_axes: ClassVar[tuple] = ("adding_lengths", "copy_lengths", "models")

    adding_lengths: str = option("20,50,100", "Comma-separated T of the adding problem ('' skips it).")
    copy_lengths: str = option("10,20,40", "Comma-separated delays T of copy memory ('' skips it).")
    models: str = option("rnn_tanh,irnn,rnn_tanh_clip,lstm", "Comma-separated models: "
                         "rnn_tanh, irnn, rnn_tanh_clip, rnn_tanh_clip_omega, lstm.")
    budget: str = option("default", "Preset of the settings (BUDGETS): default, or long "
                         "(adding T=100, 5000 steps, all five models, omega_strength 10).",
                         choices=tuple(BUDGETS))
    copy_len: int = option(3, "Copy memory: number of symbols to copy (Arjovsky et al.: 10).")
    n_symbols: int = option(8, "Copy memory: number of data symbols.", at_least=2)
    units: int = option(64, "Units of the recurrent layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    train_steps: int = option(800, "Adam steps per configuration.")
    steps_per_epoch: int = option(100, "Training steps between validations.")
    learning_rate: float = option(2e-3, "Adam learning rate of rnn_tanh, rnn_tanh_clip and lstm.")
    irnn_learning_rate: float = option(1e-4, "Adam learning rate of irnn.")
    clipnorm: float = option(1.0, "Global gradient-norm threshold of rnn_tanh_clip(_omega).")
    omega_strength: float = option(1.0, "Weight of Pascanu et al.'s Omega in rnn_tanh_clip_omega.",
                                  at_least=0)
    validation_samples: int = option(256, "Validation sequences (best weights).")
    # A multiple of 256 (the evaluation batch): one batch shape to compile.
    test_samples: int = option(1024, "Test sequences for the final metric.")
    solved_fraction: float = option(
        0.5, "A run counts as solved when its metric is below this x baseline.", below=1)
    grad_every_n_batches: int = option(
        200, "Log per-timestep BPTT gradient norms every N training batches.")
    grad_samples: int = option(64, "Validation sequences used for the gradient-norm logging.")

    def validate(self):
        super().validate()
        if not self.tasks():
            raise ValueError("Received: adding_lengths='' and copy_lengths=''. Expected at "
                             "least one task, e.g. --adding_lengths 20,50.")
        self.model_list()

    def tasks(self):
        """`[(task, [T, ...])]` of the tasks with lengths."""
        return [(task, common.split_list(f"{task}_lengths", text, int, minimum=minimum))
                for task, text, minimum in (("adding", self.adding_lengths, 2),
                                            ("copy", self.copy_lengths, 1)) if text.strip()]

    def model_list(self):
        return common.split_list("models", self.models, str, choices=MODELS)


def make_data(task, n, T, seed, settings):
    if task == "adding":
        return tasks.adding_problem(n, T, seed=seed)
    return tasks.copy_memory(n, T, seed=seed, n_symbols=settings["n_symbols"],
                             copy_len=settings["copy_len"])


def baseline(task, T, settings):
    if task == "adding":
        return tasks.ADDING_BASELINE_MSE
    return tasks.copy_memory_baseline(T, n_symbols=settings["n_symbols"],
                                      copy_len=settings["copy_len"])


def build_model(task, T, model_name, settings, seed):
    """The compiled model of one configuration (jit off, see dynamics)."""
    import keras

    import keras_vrnn
    from experiments import training

    glorot, sequences = keras.initializers.GlorotUniform, task == "copy"
    if model_name == "lstm":
        rnn = keras.layers.LSTM(settings["units"], return_sequences=sequences, name=LAYER,
                                kernel_initializer=glorot(seed=seed),
                                recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 1))
    elif model_name == "irnn":
        rnn = keras_vrnn.VanillaRNN(
            settings["units"], activation="relu", return_sequences=sequences, name=LAYER,
            recurrent_initializer=keras_vrnn.initializers.ScaledIdentity(1.0),
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.001, seed=seed))
    else:
        rnn = keras_vrnn.VanillaRNN(
            settings["units"], activation="tanh", return_sequences=sequences, name=LAYER,
            recurrent_initializer=keras_vrnn.initializers.ScaledOrthogonal(1.0, seed=seed + 1),
            kernel_initializer=glorot(seed=seed))
    if task == "adding":
        layers = [keras.Input((T, 2), name="x"), rnn,
                  keras.layers.Dense(1, kernel_initializer=glorot(seed=seed + 2), name="out")]
        loss = "mse"
    else:
        vocab = settings["n_symbols"] + 2
        layers = [keras.Input((T + 2 * settings["copy_len"],), dtype="int32", name="x"),
                  # One-hot input: a frozen identity embedding.
                  keras.layers.Embedding(vocab, vocab, embeddings_initializer="identity",
                                         trainable=False, name="one_hot"),
                  rnn, keras.layers.Dense(vocab, kernel_initializer=glorot(seed=seed + 2),
                                          name="logits")]
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Sequential(layers, name=f"{task}_{model_name}")
    if model_name == "rnn_tanh_clip_omega":
        model = keras_vrnn.VanishingGradientRegularizer(model, settings["omega_strength"],
                                                        name=f"{task}_{model_name}")
    lr = settings["irnn_learning_rate" if model_name == "irnn" else "learning_rate"]
    clip = settings["clipnorm"] if model_name.startswith("rnn_tanh_clip") else 0.0
    model.compile(optimizer=training.make_optimizer("adam", lr, clip), loss=loss, jit_compile=False)
    return model


def _gradient_summary(config_dir):
    """Factor, horizon and spectral radius at the start and end of training
    from the GradientNormCallback logs, and the heat map."""
    from keras_vrnn import plots

    layer = common.logged_layer(npz := os.path.join(config_dir, common.GRADIENT_NORMS_FILE))
    png = common.plots_dir(config_dir) / "gradient_heatmap.png"
    plots.plot_gradient_heatmap(npz, str(png))
    return {**{f"grad_{key}_{when}": float(layer[key][i]) for when, i in (("end", -1), ("start", 0))
               for key in ("factor", "horizon")},
            "spectral_radius_end": float(layer["spectral_radius"][-1]),
            "heatmap": os.path.relpath(png, config_dir)}


def run_config(params, config_dir, settings):
    """Trains and evaluates one (task, T, model); see the module doc."""
    import keras

    from keras_vrnn import diagnostics
    from experiments import training

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    task, T, model_name, s = params["task"], params["T"], params["model"], settings
    keras.backend.clear_session()
    keras.utils.set_random_seed(s["seed"])
    # The same data for every model of one (task, T).
    base = s["seed"] * 1_000_003 + T * 101 + (0 if task == "adding" else 50)
    x_val, y_val = make_data(task, s["validation_samples"], T, base + 2, s)
    x_test, y_test = make_data(task, s["test_samples"], T, base + 3, s)
    model = build_model(task, T, model_name, s, s["seed"])
    vanilla = bool(diagnostics.rnn_layers(model))  # the LSTM has no layer to probe
    start = time.perf_counter()
    # Patience beyond the last epoch: no early stop, the best weights restored.
    history, monitor = training.fit_steps(
        model, config_dir, s, lambda n: make_data(task, n, T, base + 1, s), (x_val, y_val),
        (x_val[:s["grad_samples"]], y_val[:s["grad_samples"]]) if vanilla else None,
        [keras.callbacks.EarlyStopping(patience=s["train_steps"] + 1, restore_best_weights=True)],
        validation_batch_size=256)
    result = {"baseline": baseline(task, T, s), "train_steps_done": monitor.steps_done,
              "train_s": time.perf_counter() - start,
              "best_epoch": common.best_epoch(history),
              "final_train_loss": history["loss"][-1],
              "gradient_logging": "on" if vanilla else "skipped (no VanillaRNN layer)"}
    if vanilla:
        result.update(_gradient_summary(config_dir))
    if monitor.diverged is not None:
        result.update(status="diverged", diverged_step=monitor.diverged["step"] + 1)
    if result["best_epoch"] is None:  # diverged before any finite validation
        return result
    # The best weights (EarlyStopping restored them): after a divergence, those before it.
    metric = float(model.evaluate(x_test, y_test, batch_size=256, verbose=0))
    return {**result, "metric": metric, "metric_ratio": metric / result["baseline"],
            "solved": metric < s["solved_fraction"] * result["baseline"]}


GRID = ("task", "T", "model")
TITLES = {"adding": ("Adding problem", "test MSE"),
          "copy": ("Copy memory", "test cross-entropy, nats/step")}


def configurations(config):
    return [(common.make_config_id(p, GRID, {"task": "", "T": "T", "model": ""}), p)
            for task, lengths in config.tasks() for T in lengths
            for p in ({"task": task, "T": T, "model": m} for m in config.model_list())]


def _cell(row):
    if row is None or row["status"] == "crashed":
        return "" if row is None else "crashed"
    text = fmt(row.get("metric"))
    text += f" (diverged@{row.get('diverged_step')})" if row["status"] == "diverged" else ""
    text = f"**{text}**" if row.get("solved") else text
    horizon = row.get("grad_horizon_end")
    return text + (f" h={int(horizon)}" if horizon is not None else "")


def markdown(results, config):
    """results.md: the metric vs T per model and task, and every row."""
    rows, models, settings = results["rows"], config.model_list(), config.fixed_settings()
    lines = [
        f"{common.counts_line(results)} {config.train_steps} Adam steps x batch "
        f"{config.batch_size}, {config.units} units, test on {config.test_samples} sequences.",
        "",
        f"Cells: test metric (bold: solved, below {config.solved_fraction:g} x baseline); "
        "`h=`: effective gradient horizon at the end of training (steps back until mean "
        "||dL/dh_t|| falls to 1e-3 of its last-step value; = sequence length: never), "
        "VanillaRNN models only. It is meaningful for the adding problem (loss at the last "
        "step only); copy memory has a loss at every step, so its h is mostly the whole "
        "sequence (T + 2 x copy_len)."]
    by_key = common.index_rows(rows, GRID)
    for task, lengths in config.tasks():
        lines += common.md_section("{} ({})".format(*TITLES[task]), *common.md_table(
            ["T", "baseline", *models],
            [[T, fmt(baseline(task, T, settings), 4), *(_cell(by_key.get((task, T, m)))
                                                       for m in models)] for T in lengths],
            "rr" + "l" * len(models)))
    lines += common.configs_section(rows, (
        "metric", "baseline", "metric_ratio", "grad_factor_start", "grad_factor_end",
        "grad_horizon_start", "grad_horizon_end", "spectral_radius_end", "best_epoch",
        "train_s", "wall_s"))
    return common.md_report("Long-range memory: vanilla RNNs vs LSTM", lines)


def plot_metrics(rows, config, png):
    """Test metric vs T per model, with the task's baseline."""
    settings, groups = config.fixed_settings(), common.group_rows(rows, ("task", "model"), "T")

    def draw(ax, _, panel):
        task, lengths = panel
        ax.plot(lengths, [baseline(task, T, settings) for T in lengths], "k--", lw=1.2,
                marker="_", ms=16, label="baseline (no memory)")  # visible for one T too
        for i, m in enumerate(config.model_list()):
            sel = [r for r in groups.get((task, m), []) if r.get("metric") is not None]
            if sel:
                ax.plot([r["T"] for r in sel], [r["metric"] for r in sel], "-o", color=f"C{i}",
                        label=m)
        common.log_log_axes(ax, lengths, xlabel="T (steps to remember across)",
                           ylabel=TITLES[task][1], title=TITLES[task][0])
        ax.legend(fontsize=8)

    return common.plot_panels(png, [None], config.tasks(), draw, (5.5, 4.2))


def _final_curve(workdir, row, label, color):
    """`(profile, label, style)`: the last logged mean ||dL/dh_t|| of a configuration
    (None: not logged), the label with its test metric."""
    def last(npz):
        return common.logged_layer(npz)["mean_norms"][-1]

    profile = row and common.config_profile(workdir, row["config_id"], common.GRADIENT_NORMS_FILE,
                                              read=last)
    metric = f" ({fmt(row['metric'])})" if row and row.get("metric") else ""
    return profile, label + metric, dict(color=color)


def plot_final_gradients(rows, workdir, config, plots):
    """Mean ||dL/dh_t|| vs steps back at the end of training: final_gradient_norms.png, a
    panel per task and VanillaRNN model, a curve per T; gradient_norms_by_model.png, a panel
    per (task, T), a curve per VanillaRNN model ([] without such models)."""
    models, by_key = [m for m in config.model_list() if m != "lstm"], common.index_rows(rows, GRID)
    colors = {m: f"C{i}" for i, m in enumerate(config.model_list())}  # as in plot_metrics

    def per_model(ax, panel, m):
        task, lengths = panel
        curves = [_final_curve(workdir, by_key.get((task, T, m)), f"T={T}", f"C{k}")
                  for k, T in enumerate(lengths)]
        common.steps_back_panel(ax, f"{task}: {m}, end of training",
                                [c for c in curves if c[0] is not None])

    def per_length(ax, _, panel):
        common.steps_back_panel(ax, "{}, T={}: end of training".format(*panel), [
            _final_curve(workdir, by_key.get((*panel, m)), m, colors[m]) for m in models])

    panels = [(task, T) for task, lengths in config.tasks() for T in lengths]
    return [common.plot_panels(plots / "final_gradient_norms.png", config.tasks(), models,
                               per_model, (4.2, 3.6)),
            common.plot_panels(plots / "gradient_norms_by_model.png", [None], panels,
                               per_length, (5.0, 3.8))] if models else []


def train_and_evaluate(config, workdir):
    """Runs (or resumes) the sweep; writes results.json, results.md, plots."""
    start = time.perf_counter()
    settings = config.fixed_settings()
    records = config.sweep(workdir, configurations(config),
                           functools.partial(run_config, settings=settings), METRIC_NAMES)
    rows, out = common.rows_of(records), common.plots_dir(workdir)
    pngs = [plot_metrics(rows, config, out / "metric_vs_T.png"),
            *plot_final_gradients(rows, workdir, config, out)]
    results = common.results_of(
        "long_range", records, time.perf_counter() - start,
        baselines={f"{task}_T{T}": baseline(task, T, settings)
                   for task, lengths in config.tasks() for T in lengths},
        plots=[str(p) for p in pngs])
    return common.save_report(workdir, results, markdown(results, config), config.verbose)


def main(argv=None):
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--budget", default="default")
    budget = pre.parse_known_args(argv)[0].budget
    argv = BUDGETS.get(budget, []) + argv  # an unknown one: the parser's error
    return common.run_main(train_and_evaluate, Config, argv, configurations=configurations)


if __name__ == "__main__":
    main()
