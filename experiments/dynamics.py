"""Why vanilla RNNs forget: recurrent gain x activation x sequence length.

BPTT multiplies the gradient, once per step back, by `diag(act'(z_t)) W_hh^T`:
the per-step `factor` of ||dL/dh_t|| is about rho(W_hh) * mean|act'(z)| (< 1
vanishing, > 1 exploding), and log(factor) tends to lambda_1, the top Lyapunov
exponent of the forward dynamics. A configuration (gain g, activation, T) has
W_hh = `ScaledOrthogonal(g)`, inputs N(0, input_scale^2), the mean of the
first `target_steps` inputs as target and the MSE at the last step only. On
`eval_samples` fixed sequences, at initialisation and after `train_steps` Adam
steps, it measures `factor` and `horizon` (steps back to 1e-3 of the last-step
norm), `lyapunov` (lambda_1, nats per step), the theories rho * mean|act'| and
rho * rms act', and the float64 `jacobian_factor` of ||dh_T/dh_t||, finite
where float32 overflows ("diverged" at step 0; inf/NaN in training: at that
1-based step). One compiled model per (activation, T) serves every gain.

    python -m experiments.dynamics                # defaults: 64 configs
    python -m experiments.dynamics --workers 2    # on a local dask cluster
    python -m experiments.dynamics --gains 0.9,1.1 --activations tanh --lengths 100
    python -m experiments.dynamics --help         # every setting

Outputs in runs/dynamics/<run_name>/ (resumable, see `experiments.sweep`):
results.json, results.md, plots/ (norms_vs_steps_back_T<T>.png,
factor_vs_gain.png), configs/<id>/ (result.json, norms.npz, logs/, HParams).
"""

import dataclasses
import functools
import logging
import math
import os
import time
from typing import ClassVar

import numpy as np

from experiments import common
from experiments import sweep
from experiments.common import option
from experiments.sweep import finite, fmt

LAYER = "rnn"
HORIZON_THRESHOLD = 1e-3
JACOBIAN_SAMPLES = 8
PHASES = (("init", "at initialisation"), ("trained", "after training"))
GRID = ("T", "activation", "gain")
METRIC_NAMES = (*(f"{p}_{k}" for p in ("init", "trained") for k in (
    "factor", "lyapunov", "theory", "horizon")), "init_theory_rms", "init_jacobian_factor",
    "init_mean_abs_dact", "trained_spectral_radius", "final_eval_loss")


@dataclasses.dataclass
class Config(sweep.SweepConfig):
    """Gradient dynamics of vanilla RNNs: recurrent gain x activation x length."""

    experiment: ClassVar[str] = "dynamics"
    sweep_axes: ClassVar[tuple] = ("gains", "activations", "lengths")

    gains: str = option("0.5,0.8,0.9,1.0,1.1,1.25,1.5,2.0", "Recurrent gains g (W_hh = g * Q).")
    activations: str = option("tanh,sigmoid,relu,linear", "Comma-separated activations.")
    lengths: str = option("50,200", "Comma-separated sequence lengths T.")
    input_scale: float = option(1.0, "Standard deviation of the inputs.")
    target_steps: int = option(1, "The target is the mean of the first N inputs.")
    units: int = option(32, "Units of the VanillaRNN layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    # A short run: enough to move the weights, not to solve the task.
    train_steps: int = option(300, "Adam steps (0: measure at init only).")
    steps_per_epoch: int = option(50, "Training steps per (logged) epoch.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    # 0 keeps the raw dynamics (divergence is part of the result).
    clipnorm: float = option(0.0, "Global gradient-norm clipping threshold (0: off).")
    eval_samples: int = option(128, "Fixed batch on which the gradient norms are measured.")
    grad_every_n_batches: int = option(150, "Also log the gradient norms during training "
                                       "every N batches (GradientNormCallback, TensorBoard).")

    def validate(self):
        super().validate()
        if any(not g > 0 for g in self.gain_list()):
            raise ValueError(f"Received: gains={self.gains!r}. Expected positive gains, "
                             f"e.g. --gains 0.5,1.0,2.0.")
        self.activation_list()
        for name in ("target_steps", "units", "batch_size", "steps_per_epoch", "eval_samples"):
            common.check_int(name, getattr(self, name))
        if self.target_steps >= min(self.length_list()):
            raise ValueError(f"Received: target_steps={self.target_steps} with lengths "
                             f"{self.lengths!r}. Expected target_steps < every length.")
        common.check_int("train_steps", self.train_steps, minimum=0)
        for name in ("input_scale", "learning_rate"):
            common.check_number(name, getattr(self, name))
        common.check_number("clipnorm", self.clipnorm, low_ok=True, note="0 turns clipping off")

    def gain_list(self):
        return sweep.split_list("gains", self.gains, float)

    def activation_list(self):
        return sweep.split_list("activations", self.activations, str, choices=common.ACTIVATIONS)

    def length_list(self):
        return sweep.split_list("lengths", self.lengths, int, minimum=2)


def make_task(n, T, seed, input_scale=1.0, target_steps=1):
    """Inputs `(n, T, 1)` ~ N(0, input_scale^2) and the mean of the first
    `target_steps` as the target `(n, 1)`; seeded by `(seed, T)`."""
    x = (np.random.default_rng([seed, T]).standard_normal((n, T, 1)) * input_scale)
    return x.astype(np.float32), x[:, :target_steps, 0].mean(1, keepdims=True).astype(np.float32)


_DERIVATIVES = {  # act(z) and act'(z) given z and a = act(z)
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)), lambda z, a: a * (1.0 - a)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z)),
}


def activation_derivative_stats(x, kernel, recurrent_kernel, bias=None, activation="tanh"):
    """`(mean |act'(z)|, rms act'(z))` over samples, steps and units of the
    float64 forward trajectory from `h = 0` (NaN when it overflows)."""
    (act, dact), u = _DERIVATIVES[activation], np.asarray(recurrent_kernel, np.float64)
    projected = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64) + (
        0.0 if bias is None else np.asarray(bias, np.float64))
    h, slopes = np.zeros((x.shape[0], u.shape[0])), []
    with np.errstate(all="ignore"):
        for t in range(x.shape[1]):
            h = act(z := projected[:, t] + h @ u)
            slopes.append(np.abs(dact(z, h)))
        mean_abs, rms = np.mean(slopes), np.sqrt(np.mean(np.square(slopes)))
    return (float(mean_abs), float(rms)) if np.isfinite(mean_abs + rms) else (math.nan,) * 2


def _float64(fn, fallback=math.nan):
    """`fn()`, or `fallback` where the float64 trajectory overflows."""
    try:
        with np.errstate(all="ignore"):
            return fn()
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        return fallback


def measure(model, x, y, activation):
    """`(metrics, profiles)` of the `rnn` layer on `(x, y)`: the scalars of the
    module doc; per step `mean_norms` and (geometric mean) `jacobian_norms`."""
    import keras_vrnn as kv

    layer = model.get_layer(LAYER)
    norms = kv.timestep_gradient_norms(model, x, y)[LAYER]
    ok, stats = bool(np.isfinite(norms).all()), kv.recurrent_kernel_stats(layer)
    rho = float(stats["spectral_radius"])
    mean_abs, rms = activation_derivative_stats(x, *layer.get_weights(), activation=activation)
    jac = _float64(lambda: kv.state_jacobian_norms(model, x, JACOBIAN_SAMPLES)[LAYER],
                   np.full((1, norms.shape[1]), np.nan))
    lyapunov = _float64(lambda: float(kv.lyapunov_exponents(model, x, num_exponents=1)[0]))
    with np.errstate(all="ignore"):
        profiles = {"mean_norms": norms.mean(0), "jacobian_norms": np.exp(np.log(jac).mean(0))}
    return {"finite": ok, "factor": kv.fit_decay_factor(norms) if ok else math.nan,
            "horizon": float(kv.effective_horizon(norms, HORIZON_THRESHOLD)) if ok else math.nan,
            "lyapunov": lyapunov,
            "jacobian_factor": kv.fit_decay_factor(jac), "spectral_radius": rho,
            "max_singular_value": float(stats["max_singular_value"]),
            "mean_abs_dact": mean_abs, "rms_dact": rms, "theory": rho * mean_abs,
            "theory_rms": rho * rms, "last_step_norm": float(profiles["mean_norms"][-1])}, profiles


@functools.lru_cache(maxsize=1)
def build_model(activation, T, units, learning_rate, clipnorm):
    """VanillaRNN(units, activation) -> Dense(1), compiled with Adam and MSE
    (weights: `initialize`); one per process, reused while consecutive
    configurations share its shape (every gain of a row, in sweep order)."""
    import keras

    import keras_vrnn
    from experiments import training

    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((T, 1), name="x"),
                              keras_vrnn.VanillaRNN(units, activation=activation, name=LAYER),
                              keras.layers.Dense(1, name="out")], name=f"rnn_{activation}")
    # The fused RNN path is compiled on its own; XLA for the whole step costs seconds.
    model.compile(optimizer=training.make_optimizer("adam", learning_rate, clipnorm),
                  loss="mse", jit_compile=False)
    return model


def initialize(model, gain, seed, learning_rate):
    """W_hh = `ScaledOrthogonal(gain, seed)`, Glorot-uniform kernels, zero
    biases and a zeroed optimizer: a reused model as if freshly built."""
    import keras

    import keras_vrnn

    rng, layer = np.random.default_rng([seed, 7]), model.get_layer(LAYER)

    def glorot(shape):
        return rng.uniform(-(limit := math.sqrt(6.0 / sum(shape))), limit, size=shape)

    units, features = layer.cell.units, layer.cell.kernel.shape[0]
    recurrent = keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)((units, units))
    layer.set_weights([glorot((features, units)), keras.ops.convert_to_numpy(recurrent),
                       np.zeros(units)])
    model.get_layer("out").set_weights([glorot((units, 1)), np.zeros(1)])
    for variable in model.optimizer.variables:
        variable.assign(learning_rate if variable.name == "learning_rate"
                        else np.zeros(variable.shape, variable.dtype))


def run_config(params, config_dir, settings):
    """Measures one (gain, activation, T); returns its metrics with status
    "diverged" and the step where inf/NaN appeared."""
    s, (gain, activation, T) = settings, (params["gain"], params["activation"], params["T"])
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes
    task = functools.partial(make_task, T=T, input_scale=s["input_scale"],
                             target_steps=s["target_steps"])
    eval_data = task(s["eval_samples"], seed=s["seed"] + 1)
    model = build_model(activation, T, s["units"], s["learning_rate"], s["clipnorm"])
    initialize(model, gain, s["seed"], s["learning_rate"])
    result, npz = {}, {}

    def measured(phase):
        metrics, profiles = measure(model, *eval_data, activation)
        result.update({f"{phase}_{k}": v for k, v in metrics.items()})
        npz.update({f"{phase}_{k}": v for k, v in profiles.items()})
        return metrics["finite"]

    status, step, phase = ("ok", None, None) if measured("init") else ("diverged", 0, "init")
    if status == "ok" and s["train_steps"] > 0:
        history, monitor = sweep.fit_steps(
            model, config_dir, s, lambda n: task(n, seed=s["seed"] + 2), eval_data, eval_data)
        result["train_steps_done"] = monitor.steps_done
        if monitor.diverged is not None:
            status, step, phase = "diverged", monitor.diverged["step"] + 1, "train"
        else:
            result.update(final_train_loss=history["loss"][-1],
                          final_eval_loss=history["val_loss"][-1])
            if not measured("trained"):
                status, step, phase = "diverged", monitor.steps_done, "trained-gradients"
    result["target_variance"] = float(np.var(eval_data[1]))  # the trivial predictor's loss
    np.savez(os.path.join(config_dir, "norms.npz"), **npz)
    return {**result, "status": status, "diverged_step": step, "diverged_phase": phase}


def configurations(config):
    """`[(config_id, params)]` in table order: T, activation, gain."""
    return [(sweep.make_config_id(p, ["activation", "gain", "T"],
                                  {"activation": "", "gain": "g", "T": "T"}), p)
            for T in config.length_list() for activation in config.activation_list()
            for p in ({"activation": activation, "gain": g, "T": T} for g in config.gain_list())]


def _overflowed(row):  # float32 inf/NaN at init: the float64 Jacobian factor stands in
    return row.get("diverged_phase") == "init"


def _column(rows, key):
    return np.array([r[key] if finite(r.get(key)) else math.nan for r in rows], np.float64)


def log_factor(rows, phase):
    """`log(factor)` of each row in `phase` (to set next to lambda_1), NaN where unmeasured."""
    with np.errstate(all="ignore"):
        return np.log(_column(rows, f"{phase}_factor"))


def _median(values):
    values = np.asarray(values)[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def summarize(rows):
    """Per (T, activation) and phase: max factor, the gains where the factor
    and exp(lambda_1) cross 1, median log(factor) - lambda_1 and relative
    errors of the theories; the diverged and crashed gains."""
    out = []
    for (T, activation), sel in sweep.group_rows(rows, ("T", "activation"), "gain").items():
        entry, gains = {"T": T, "activation": activation}, [r["gain"] for r in sel]
        for ph, _ in PHASES:
            factors = [r.get("init_jacobian_factor") if ph == "init" and _overflowed(r)
                       else r.get(f"{ph}_factor") for r in sel]
            lyapunov, factor = _column(sel, f"{ph}_lyapunov"), _column(sel, f"{ph}_factor")
            entry.update({f"{ph}_max_factor": max(filter(finite, factors), default=None),
                          f"{ph}_crossing_gain": sweep.log_crossing(gains, factors),
                          f"{ph}_lyapunov_crossing_gain": sweep.log_crossing(
                              gains, list(np.exp(lyapunov))),
                          f"{ph}_log_factor_minus_lyapunov_median": _median(
                              log_factor(sel, ph) - lyapunov)})
            with np.errstate(all="ignore"):
                for theory in ("theory", "theory_rms"):
                    entry[f"{ph}_{theory}_median_rel_err"] = _median(
                        np.abs(factor / _column(sel, f"{ph}_{theory}") - 1))
        entry["diverged"] = [{"gain": r["gain"], "step": r.get("diverged_step"),
                              "phase": r.get("diverged_phase")}
                             for r in sel if r["status"] == "diverged"]
        entry["crashed"] = [r["gain"] for r in sel if r["status"] == "crashed"]
        out.append(entry)
    return out


def _cell(row, phase, activation):
    """measured / theory [/ rms theory] || log(factor) / lambda_1, or what happened."""
    if row is None or row["status"] == "crashed":
        return "" if row is None else "crashed"
    factor, theory, rms, lyap = (row.get(f"{phase}_{k}")
                                 for k in ("factor", "theory", "theory_rms", "lyapunov"))
    if not finite(factor):
        jac = row.get("init_jacobian_factor")
        text = (("overflow@0" + (f" (jac {fmt(jac)})" if finite(jac) else ""))
                if phase == "init" and _overflowed(row) else sweep.status_text(row)
                if row["status"] == "diverged" else "–")
    else:
        rms_text = f" [{fmt(rms)}]" if activation in ("relu", "tanh") and finite(rms) else ""
        text = fmt(factor) + (f" / {fmt(theory)}{rms_text}" if finite(theory) else "")
    lyap_text = f"{fmt(float(log_factor([row], phase)[0]))} / {fmt(lyap)}"
    return text + (f" ‖ {lyap_text}" if finite(lyap) else "")


SUMMARY_COLUMNS = (  # header, keys (several: joined by " / ", 2 digits)
    ("max factor init", "init_max_factor"), ("factor = 1 at gain (init)", "init_crossing_gain"),
    ("lambda1 = 0 at gain (init)", "init_lyapunov_crossing_gain"),
    ("max factor trained", "trained_max_factor"),
    ("median log_factor - lambda1 init / trained", "init_log_factor_minus_lyapunov_median",
     "trained_log_factor_minus_lyapunov_median"), ("median rel. err. theory mean / rms (init)",
                                                   "init_theory_median_rel_err",
                                                   "init_theory_rms_median_rel_err"))


def markdown(results, config):
    """results.md: a factor table per length and phase, the summary, all rows."""
    rows, activations = results["rows"], config.activation_list()
    by_key = sweep.index_rows(rows, GRID)
    lines = [
        f"{sweep.counts_line(results)} Units {config.units}, {config.train_steps} Adam steps (lr "
        f"{config.learning_rate:g}, batch {config.batch_size}), loss (MSE) at the last step "
        f"only, gradients measured on {config.eval_samples} sequences.", "",
        "Cells: measured per-step factor of ||dL/dh_t|| (fit_decay_factor; < 1 vanishing, "
        "> 1 exploding) / theory rho * mean|act'(z)| [/ rho * rms act'(z)] ‖ log_factor / "
        "lambda1 (the top Lyapunov exponent, nats per step, on the same sequences). "
        "`overflow@0`: float32 inf/NaN at initialisation (jac: float64 Jacobian factor); "
        "`diverged@k`: training loss inf/NaN at step k."]
    for T in config.length_list():
        for phase, title in PHASES:
            lines += sweep.md_section(f"T = {T}, {title}", *sweep.md_table(
                ["gain", *activations],
                [[f"{g:g}", *(_cell(by_key.get((T, a, g)), phase, a) for a in activations)]
                 for g in config.gain_list()], "r" + "l" * len(activations)))
    lines += sweep.md_section(
        "Summary per activation and length", "Max factor and crossing gain at init include "
        "the float64 Jacobian factor of configurations that overflowed float32.", "",
        *sweep.md_table(["T", "activation", *(h for h, *_ in SUMMARY_COLUMNS), "diverged"], [
            [e["T"], e["activation"], *(" / ".join(fmt(e[k], 3 if len(keys) == 1 else 2)
                                                   for k in keys) for _, *keys in SUMMARY_COLUMNS),
             ", ".join(f"g={d['gain']:g}@{d['step']}" for d in e["diverged"]) or "none"]
            for e in results["summary"]], "rl" + "r" * len(SUMMARY_COLUMNS) + "l"))
    lines += sweep.configs_section(rows, ["init_jacobian_factor", *(c for ph, _ in PHASES for c in (
        f"{ph}_factor", (f"{ph} log_factor", lambda r, p=ph: fmt(float(log_factor([r], p)[0]))),
        (f"{ph} lambda1", lambda r, p=ph: fmt(r.get(f"{p}_lyapunov"))), f"{ph}_theory",
        f"{ph}_spectral_radius", f"{ph}_mean_abs_dact", f"{ph}_horizon")),
        ("eval loss (var y)", lambda r: f"{fmt(r.get('final_eval_loss'))} "
                                        f"({fmt(r.get('target_variance'))})"),
        ("s", lambda r: fmt(r.get("wall_s"), 2))])
    return sweep.md_report("Gradient dynamics of vanilla RNNs", lines)


def _norms_curve(row, profile, phase):
    """`(profile or None: nothing to draw, label suffix saying why)`: a norms-plot curve."""
    jac = row.get("init_jacobian_factor")
    jac = f"; float64 Jacobian ×{jac:.3g}/step" if _overflowed(row) and finite(jac) else ""
    if row["status"] == "crashed" or profile is None or not np.all(np.isfinite(profile)):
        why = "crashed" if row["status"] == "crashed" else sweep.status_text(row) + jac
        return None, f" ({why})" if row["status"] != "ok" else ""
    if not (profile > 0).any():
        return None, " (all 0)"
    label = f", ×{row[f'{phase}_factor']:.3g}/step" if finite(row.get(f"{phase}_factor")) else ""
    return profile, label + ("" if (profile > 0).all() else " (→0: underflow)")


def plot_norms(rows, workdir, config, T, png):
    """Mean ||dL/dh_t|| vs steps back: init and trained rows, a panel per
    activation, a curve per gain."""
    from matplotlib import colormaps

    gains, by_key = config.gain_list(), sweep.index_rows(rows, GRID)
    colors = dict(zip(gains, colormaps["viridis"](np.linspace(0, 0.9, len(gains)))))

    def draw(ax, phase_title, activation):
        (phase, title), curves = phase_title, []
        for gain, row in ((g, by_key.get((T, activation, g))) for g in gains):
            if row is not None:
                profile, label = _norms_curve(row, sweep.config_profile(
                    workdir, row["config_id"], "norms.npz", f"{phase}_mean_norms"), phase)
                curves.append((profile, f"g={gain:g}{label}", dict(color=colors[gain], lw=1.3)))
        sweep.steps_back_panel(ax, f"{activation}, T={T}, {title}", curves)

    return sweep.plot_panels(png, PHASES, config.activation_list(), draw, (4.0, 3.6))


FACTOR_STYLES = {  # metric: legend label, line style (lyapunov: drawn as exp(lambda_1))
    "init_theory": ("theory ρ·mean|act'| (init)", dict(color="C0", lw=1.5)),
    "init_theory_rms": ("ρ·rms act' (init)", dict(color="C0", ls=":", lw=1.5)),
    "trained_theory": ("theory (trained)", dict(color="C3", lw=1.0, alpha=0.6)),
    "init_factor": ("measured (init)", dict(color="C0", marker="o", ls="none")),
    "trained_factor": ("measured (trained)", dict(color="C3", marker="x", ls="none")),
    "init_lyapunov": ("exp(λ₁) (init)", dict(color="C2", marker="s", ls="none", mfc="none")),
    "trained_lyapunov": ("exp(λ₁) (trained)", dict(color="C4", marker="+", ls="none", ms=9)),
    "init_jacobian_factor": ("float64 Jacobian (float32 overflow)",
                             dict(color="C1", marker="^", ls="none"))}


def plot_factors(rows, config, png):
    """Per-step factor vs gain (log-log): measured, exp(lambda_1), theory, 1."""
    gains, groups = config.gain_list(), sweep.group_rows(rows, ("T", "activation"), "gain")

    def draw(ax, T, activation):
        sel = groups.get((T, activation), [])
        ax.axhline(1.0, color="k", lw=1, ls="--", label="factor = 1")
        ax.plot(gains, gains, color="0.6", lw=1, label="rho (linear)")
        for key, (label, style) in FACTOR_STYLES.items():
            pts = [(r["gain"], math.exp(r[key]) if key.endswith("lyapunov") else r[key])
                   for r in sel if finite(r.get(key))
                   and (key != "init_jacobian_factor" or _overflowed(r))]
            if pts:
                ax.plot(*zip(*pts), label=label, **style)
        for r in sel:
            if r["status"] == "diverged" and not _overflowed(r):
                ax.axvline(r["gain"], color="C3", lw=0.8, alpha=0.3)
        sweep.log_log_axes(ax, gains, title=f"{activation}, T={T}", ylabel="per-step factor",
                           xlabel="recurrent gain g (= spectral radius at init)")

    return sweep.plot_panels(png, config.length_list(), config.activation_list(), draw,
                             (4.0, 3.6), legend_ncols=5)


def train_and_evaluate(config, workdir):
    """Runs (or resumes) the sweep; writes results.json, results.md, plots."""
    start = time.perf_counter()
    records = config.sweep(workdir, configurations(config), functools.partial(
        run_config, settings=config.fixed_settings()), METRIC_NAMES)
    rows, plots = sweep.rows_of(records), common.plots_dir(workdir)
    pngs = [str(plot_norms(rows, workdir, config, T, plots / f"norms_vs_steps_back_T{T}.png"))
            for T in config.length_list()]
    pngs.append(str(plot_factors(rows, config, plots / "factor_vs_gain.png")))
    results = sweep.results_of("dynamics", records, time.perf_counter() - start,
                               summary=summarize(rows), plots=pngs)
    return sweep.save_report(workdir, results, markdown(results, config), config.verbose)


def main(argv=None):
    return sweep.run_sweep_main(train_and_evaluate, Config, argv, configurations=configurations)


if __name__ == "__main__":
    main()
