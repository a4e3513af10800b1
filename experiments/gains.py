"""The main job: one character-level language model on Shakespeare, trained
at recurrent gains that make its gradients vanish, sit at the edge and
explode.

A vanilla RNN multiplies the gradient that flows back one step by the
Jacobian `diag(tanh'(z_t)) W_hh^T`. This study trains the model of
`experiments.text` (Embedding -> VanillaRNN(tanh) -> Dense, 192 units,
windows of 64 characters) with W_hh = g x a random orthogonal matrix, for
each gain g of `--gains`, and measures what the last prediction of a window
credits to each earlier state, `||dl_T/dh_t||` (`keras_vrnn.GradientNormCallback`,
last-step view), and the largest Lyapunov exponent lambda_1 of the hidden
dynamics, at initialisation and during training.

The default gains, 0.5, 1 and 3, were chosen from the per-step factors they
give at initialisation on this model and data: 0.50 (the last step's credit
halves each step back: horizon 10 of 64 steps), 0.99 (the edge: credit
reaches the whole window) and 1.37 (it grows ~1.4x per step back: the first
step's gradient is ~4e9 times the last one's; not 3, because tanh' < 1
where units saturate).

    python -m experiments.gains                        # defaults, ~2 minutes
    python -m experiments.gains --gains 0.5,0.9,1.1,2 --epochs 4
    python -m experiments.gains --text_file my.txt     # any UTF-8 text
    python -m experiments.gains --help                 # every setting

Every setting of `experiments.text` applies to each gain. Each gain is one
configuration of a sweep (`experiments.common`: resumable, `--workers N` on a
dask cluster, HParams). A gain whose training diverges (inf/NaN) is
recorded as diverged and the study goes on.

Outputs (`runs/gains/<run_name>/`): results.json and results.md (per gain:
validation bpc, last-step factor, horizon and lambda_1 at the start and end
of training, spectral radius of W_hh), plots/last_step_credit.png and per
gain configs/gain_<g>/ (a full `experiments.text` run dir). One TensorBoard
overlays the gains: `tensorboard --logdir runs/gains/<run_name>`.
"""

import dataclasses
import functools
import math
import os
import pathlib
import shutil
import time
from typing import ClassVar

import numpy as np

from experiments import common
from experiments import text
from experiments.common import fmt, option

METRICS = ("bpc", "factor_start", "factor_end", "horizon_start", "horizon_end",
           "lyapunov_start", "lyapunov_end", "spectral_radius_end", "h_mean_start", "h_mean_end",
           "saturated_start", "saturated_end", "slope_start", "slope_end")
# Validation windows on which the hidden states are summarised.
STATE_SAMPLES = 256


@dataclasses.dataclass
class Config(common.SweepConfig, text.Config):
    """A char-LM at several recurrent gains (the settings of experiments.text)."""

    experiment: ClassVar[str] = "gains"
    sweep_axes: ClassVar[tuple] = ("gains",)

    # Vanishing, the edge and exploding at initialisation (module doc).
    gains: str = option("0.5,1,3", "Comma-separated recurrent gains g (W_hh = g x orthogonal).")

    def validate(self):
        super().validate()
        if any(g <= 0 for g in self.gain_list()):
            raise ValueError(f"Received: gains={self.gains!r}. Expected positive gains, "
                             f"e.g. --gains 0.5,1,3.")
        for name, value, why in (
                ("recurrent_gain", self.recurrent_gain, "--gains sets the gain of each run"),
                ("init_from", self.init_from, "the study compares initialisations"),
                ("strategy", None if self.strategy == "default" else self.strategy,
                 "the gains run as configurations; use --workers")):
            if value is not None:
                raise ValueError(f"Received: {name}={value!r}. Expected it unset: {why}.")
        text.prepare_data(self.text_config(None))  # bad text: exit 2, no run dir made

    def gain_list(self):
        return common.split_list("gains", self.gains, float)

    def text_config(self, gain):
        """The `experiments.text` settings of one gain."""
        fields = {f.name for f in dataclasses.fields(text.Config)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
        return text.Config(**{**values, "recurrent_gain": gain})


def gradient_summary(config_dir):
    """Start and end of training from GradientNormCallback's NPZ file: the
    last-step factor and horizon, lambda_1 and the spectral radius."""
    layer = common.logged_layer(os.path.join(config_dir, common.GRADIENT_NORMS_FILE))
    factor, horizon = layer["last_step_factor"], layer["last_step_horizon"]
    lyapunov, radius = layer["lyapunov"][:, 0], layer["spectral_radius"]
    return {"factor_start": factor[0], "factor_end": factor[-1],
            "horizon_start": horizon[0], "horizon_end": horizon[-1],
            "lyapunov_start": lyapunov[0], "lyapunov_end": lyapunov[-1],
            "spectral_radius_end": radius[-1]}


def state_summary(model, x, phase):
    """What the units do on windows `x`: the mean of h_t (tanh is zero-centred),
    the fraction of |h_t| > 0.95 (saturated) and, for tanh, the mean slope
    tanh'(z_t) = 1 - h_t^2 that scales every step of the backward pass."""
    import keras

    rnn = model.get_layer("rnn")
    h = np.asarray(keras.Model(model.inputs, rnn.output).predict(x, verbose=0), np.float64)
    slope = float(np.mean(1 - h * h)) if rnn.cell.activation is keras.activations.tanh else None
    return {f"h_mean_{phase}": float(h.mean()),
            f"saturated_{phase}": float(np.mean(np.abs(h) > 0.95)), f"slope_{phase}": slope}


def run_gain(params, config_dir, config):
    """Trains the char-LM at one gain in `config_dir` (an experiments.text run dir)."""
    import keras

    gain_config = config.text_config(params["gain"])
    prepared = text.prepare_data(gain_config)
    x_val = prepared["splits"]["validation"][0][:STATE_SAMPLES]
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)  # the initial weights of the run below
    states = state_summary(text.build_model(gain_config, prepared["vocab"].size), x_val, "start")
    results = text.train_and_evaluate(gain_config, pathlib.Path(config_dir))
    checkpoint = os.path.join(config_dir, common.CHECKPOINT_FILE)
    if os.path.exists(checkpoint):  # the best epoch's weights
        states.update(state_summary(keras.saving.load_model(checkpoint), x_val, "end"))
    if results["status"] == common.STATUS_OK:  # finished: its backup is not needed
        shutil.rmtree(os.path.join(config_dir, common.BACKUP_DIR), ignore_errors=True)
    metrics = {**gradient_summary(config_dir), **states,
               "train_s": results["train_time_s"]}
    if results["status"] == common.STATUS_DIVERGED:
        return {**metrics, "status": "diverged",
                "diverged_step": results["diverged_at"]["step"] + 1}
    return {**metrics, "bpc": results["validation"]["bpc"]}


def configurations(config):
    return [(f"gain_{g:g}", {"gain": g}) for g in config.gain_list()]


def regime(factor):
    if not common.finite(factor):
        return "–"
    return "vanishing" if factor < 0.95 else "exploding" if factor > 1.05 else "edge"


def markdown(results, config):
    """results.md: one line per gain, then every configuration."""
    lines = [
        f"{common.counts_line(results)} Each gain: {config.epochs} x "
        f"{config.steps_per_epoch} batches of {config.batch_size} windows of "
        f"{config.seq_len} characters, {config.hidden} tanh units.",
        "",
        "factor: fitted per-step change of the last step's credit ||dl_T/dh_t|| "
        "(< 1 vanishing, > 1 exploding); horizon: steps back until it is 1e-3 of its "
        f"last-step value ({config.seq_len}: the whole window); lambda_1: largest "
        "Lyapunov exponent (nats/step), exp(lambda_1) ~ factor. Start: at "
        "initialisation; end: after training."]
    def span(r, key, show=fmt):
        return f"{show(r.get(key + '_start'))} → {show(r.get(key + '_end'))}"

    lines += common.md_section("Per gain", *common.md_table(
        ["g", "status", "val bpc", "factor", "horizon", "exp(λ₁)", "ρ(W_hh)",
         "mean h", "saturated", "mean tanh′"],
        [[fmt(r["gain"]), common.status_text(r), fmt(r.get("bpc"), 4),
          f"{fmt(r.get('factor_start'))} ({regime(r.get('factor_start'))}) → "
          f"{fmt(r.get('factor_end'))} ({regime(r.get('factor_end'))})",
          span(r, "horizon"), span(r, "lyapunov", _exp), f"{fmt(r['gain'])} → "
          f"{fmt(r.get('spectral_radius_end'))}", span(r, "h_mean", _fixed),
          span(r, "saturated", _percent), span(r, "slope")] for r in results["rows"]],
        "rlrlllllll"), "", "Each cell: at initialisation → after training. mean h, "
        "saturated (share of |h_t| > 0.95) and mean tanh′ = 1 − h_t² on "
        f"{STATE_SAMPLES} validation windows.")
    lines += common.configs_section(results["rows"], (*METRICS, "train_s", "wall_s"))
    return common.md_report("Recurrent gain study: a char-LM on real text", lines)


def _fixed(value):
    return f"{value:+.3f}" if common.finite(value) else "–"


def _percent(value):
    return f"{100 * value:.0f}%" if common.finite(value) else "–"


def _exp(value):
    return fmt(math.exp(value)) if common.finite(value) else "–"


def _last_step_norms(npz_file, row):
    return common.logged_layer(npz_file)["last_step_mean_norms"][row]


def _factors(npz_file):
    layer = common.logged_layer(npz_file)
    return layer["steps"], layer["last_step_factor"]


def plot_credit(rows, workdir, png):
    """||dl_T/dh_t|| vs steps back per gain at initialisation and at the end
    of training, and the fitted per-step factor during training."""
    npz = common.GRADIENT_NORMS_FILE

    def profile(row, log):
        return common.config_profile(workdir, row["config_id"], npz, read=functools.partial(
            _last_step_norms, row=log))

    def draw(ax, _, panel):
        if panel == "factor":
            for i, r in enumerate(rows):
                found = common.config_profile(workdir, r["config_id"], npz, read=_factors)
                if found is not None:
                    ax.plot(*found, color=f"C{i}", label=f"g = {r['gain']:g}")
            ax.axhline(1.0, color="0.5", lw=1, ls="--")
            ax.set(xlabel="training step", title="per-step factor while training",
                   ylabel="factor of ||dl_T/dh_t|| per step back")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            return
        title, log = panel
        common.steps_back_panel(ax, f"last step's credit, {title}", [
            (profile(r, log), f"g = {r['gain']:g}", dict(color=f"C{i}"))
            for i, r in enumerate(rows)])
        ax.set_ylabel("mean ||dl_T/dh_t||")

    panels = [("at initialisation", 0), ("end of training", -1), "factor"]
    return common.plot_panels(png, [None], panels, draw, (4.6, 3.8))


def _print_summary(results):
    rows = [(f"{r['gain']:g}", common.status_text(r), fmt(r.get("bpc"), 4),
             f"{fmt(r.get('factor_start'))} → {fmt(r.get('factor_end'))}",
             f"{fmt(r.get('horizon_start'))} → {fmt(r.get('horizon_end'))}",
             f"{fmt(r.get('lyapunov_start'))} → {fmt(r.get('lyapunov_end'))}",
             f"{_percent(r.get('saturated_start'))} → {_percent(r.get('saturated_end'))}")
            for r in results["rows"]]
    print("\nLast step's credit ||dl_T/dh_t|| per step back (start → end of training):")
    print("\n".join(common.format_table(
        rows, ("gain", "status", "val bpc", "factor", "horizon", "λ₁ (nats/step)",
               "|h| > 0.95"))))
    print("factor < 1: the credit vanishes step by step back; > 1: it explodes. Table and "
          "plots in results.md and plots/.")


def train_and_evaluate(config, workdir):
    """Runs (or resumes) one text run per gain; writes the report and plot."""
    start = time.perf_counter()
    records = config.sweep(workdir, configurations(config),
                           functools.partial(run_gain, config=config), METRICS)
    rows = common.rows_of(records)
    png = plot_credit(rows, workdir, common.plots_dir(workdir) / "last_step_credit.png")
    results = common.results_of("gains", records, time.perf_counter() - start, plots=[str(png)])
    common.save_report(workdir, results, markdown(results, config), verbose=False)
    if config.verbose:
        _print_summary(results)
    return results


def main(argv=None):
    return common.run_main(train_and_evaluate, Config, argv, configurations=configurations)


if __name__ == "__main__":
    main()
