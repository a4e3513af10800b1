"""Why vanilla RNNs forget: recurrent gain x activation x sequence length.

Sweeps W_hh = `ScaledOrthogonal(g)` over gains, activations and lengths, measuring the per-step
factor of ||dL/dh_t||, lambda_1 and rho * mean|act'(z)| at initialisation and after training
(docs/results.md defines each); outputs in runs/dynamics/<run_name>/ (resumable).

    python -m experiments.dynamics [--help]   # defaults: 64 configs, ~2 min of CPU
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
from experiments.common import finite, fmt, option

LAYER, HORIZON_THRESHOLD, JACOBIAN_SAMPLES = "rnn", 1e-3, 8
PHASES = (("init", "at initialisation"), ("trained", "after training"))
GRID = ("T", "activation", "gain")
METRIC_NAMES = (*(f"{p}_{k}" for p in ("init", "trained") for k in (
    "factor", "lyapunov", "theory", "horizon")), "init_theory_rms", "init_jacobian_factor",
    "init_mean_abs_dact", "trained_spectral_radius", "final_eval_loss")


@dataclasses.dataclass
class Config(common.SweepConfig):
    """Gradient dynamics of vanilla RNNs: recurrent gain x activation x length."""

    experiment: ClassVar[str] = "dynamics"
    sweep_axes: ClassVar[tuple] = ("gains", "activations", "lengths")

    gains: str = option("0.5,0.8,0.9,1.0,1.1,1.25,1.5,2.0",
                        "Comma-separated recurrent gains g (W_hh = g * orthogonal).")
    activations: str = option("tanh,sigmoid,relu,linear", "Comma-separated activations.")
    lengths: str = option("50,200", "Comma-separated sequence lengths T.")
    input_scale: float = option(1.0, "Standard deviation of the inputs.")
    target_steps: int = option(1, "The target is the mean of the first N inputs.")
    units: int = option(32, "Units of the VanillaRNN layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    train_steps: int = option(300, "Adam steps, enough to move the weights, not to solve the "
                              "task (0: measure at init only).", at_least=0)
    steps_per_epoch: int = option(50, "Training steps per (logged) epoch.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    clipnorm: float = option(0.0, "Global gradient-norm clipping (0: off, the raw dynamics).",
                             at_least=0, note="0 turns clipping off")
    eval_samples: int = option(128, "Fixed batch on which the gradient norms are measured.")
    grad_every_n_batches: int = option(150, "Also log the gradient norms during training "
                                       "every N batches (GradientNormCallback, TensorBoard).")

    def validate(self):
        super().validate()
        if any(not g > 0 for g in self.gain_list()):
            raise ValueError(f"Received: gains={self.gains!r}. Expected positive gains, "
                             f"e.g. --gains 0.5,1.0,2.0.")
        self.activation_list()
        if self.target_steps >= min(self.length_list()):
            raise ValueError(f"Received: target_steps={self.target_steps} with lengths "
                             f"{self.lengths!r}. Expected target_steps < every length.")

    def gain_list(self):
        return common.split_list("gains", self.gains, float)

    def activation_list(self):
        return common.split_list("activations", self.activations, str, choices=common.ACTIVATIONS)

    def length_list(self):
        return common.split_list("lengths", self.lengths, int, minimum=2)


def make_task(n, T, seed, input_scale=1.0, target_steps=1):
    """x `(n, T, 1)` ~ N(0, input_scale^2) seeded by `(seed, T)`, y = x[:, :target_steps] mean."""
    x = (np.random.default_rng([seed, T]).standard_normal((n, T, 1)) * input_scale)
    return x.astype(np.float32), x[:, :target_steps, 0].mean(1, keepdims=True).astype(np.float32)


_DERIVATIVES = {  # act(z) and act'(z) given z and a = act(z)
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)), lambda z, a: a * (1.0 - a)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z))}


def activation_derivative_stats(x, kernel, recurrent_kernel, bias=None, activation="tanh"):
    """`(mean |act'(z)|, rms act'(z))` of the float64 trajectory from h = 0 (NaN: overflow)."""
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


def measure(model, x, y, activation):
    """`(metrics, profiles)` on `(x, y)`: factor, lyapunov, theories...; per-step norms."""
    import keras_vrnn as kv

    layer, norms = model.get_layer(LAYER), kv.timestep_gradient_norms(model, x, y)[LAYER]
    ok, stats = bool(np.isfinite(norms).all()), kv.recurrent_kernel_stats(layer)
    rho, factor = float(stats["spectral_radius"]), kv.fit_decay_factor(norms) if ok else math.nan
    mean_abs, rms = activation_derivative_stats(x, *layer.get_weights(), activation=activation)
    with np.errstate(all="ignore"):
        try:  # float64, finite where float32 overflows (up to float64's own range)
            jac = kv.state_jacobian_norms(model, x, JACOBIAN_SAMPLES)[LAYER]
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            jac = np.full((1, norms.shape[1]), np.nan)
        profiles = {"mean_norms": norms.mean(0), "jacobian_norms": np.exp(np.log(jac).mean(0))}
        return {"finite": ok, "factor": factor, "log_factor": float(np.log(factor)),
                "lyapunov": float(kv.lyapunov_exponents(model, x, num_exponents=1)[0]),
                "horizon": float(kv.effective_horizon(norms, HORIZON_THRESHOLD) if ok else np.nan),
                "jacobian_factor": kv.fit_decay_factor(jac), "spectral_radius": rho,
                "max_singular_value": float(stats["max_singular_value"]), "rms_dact": rms,
                "mean_abs_dact": mean_abs, "theory": rho * mean_abs, "theory_rms": rho * rms,
                "last_step_norm": float(profiles["mean_norms"][-1])}, profiles


@functools.lru_cache(maxsize=1)
def build_model(activation, T, units, learning_rate, clipnorm):
    """VanillaRNN -> Dense(1), Adam, MSE (weights: `initialize`), reused per shape."""
    import keras

    import keras_vrnn
    from experiments import training

    keras.backend.clear_session()
    model = keras.Sequential([keras.Input((T, 1), name="x"),
                              keras_vrnn.VanillaRNN(units, activation=activation, name=LAYER),
                              keras.layers.Dense(1, name="out")], name=f"rnn_{activation}")
    # No XLA for the whole step: the fused RNN path is compiled on its own.
    model.compile(optimizer=training.make_optimizer("adam", learning_rate, clipnorm),
                  loss="mse", jit_compile=False)
    return model


def initialize(model, gain, seed, learning_rate):
    """ScaledOrthogonal W_hh, Glorot kernels, zero biases, zeroed optimizer: as if new."""
    import keras_vrnn

    rng, layer = np.random.default_rng([seed, 7]), model.get_layer(LAYER)

    def glorot(shape):
        return rng.uniform(-(limit := math.sqrt(6.0 / sum(shape))), limit, size=shape)

    units, features = layer.cell.units, layer.cell.kernel.shape[0]
    recurrent = keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)((units, units))
    layer.set_weights([glorot((features, units)), np.asarray(recurrent), np.zeros(units)])
    model.get_layer("out").set_weights([glorot((units, 1)), np.zeros(1)])
    for v in model.optimizer.variables:
        v.assign(learning_rate if v.name == "learning_rate" else np.zeros(v.shape, v.dtype))


def run_config(params, config_dir, settings):
    """Metrics of one (gain, activation, T); "diverged": the step and phase of inf/NaN."""
    s, (gain, activation, T) = settings, (params["gain"], params["activation"], params["T"])
    from experiments import training

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes
    task = functools.partial(make_task, T=T, **{k: s[k] for k in ("input_scale", "target_steps")})
    eval_data, result, npz = task(s["eval_samples"], seed=s["seed"] + 1), {}, {}
    model = build_model(activation, T, s["units"], s["learning_rate"], s["clipnorm"])
    initialize(model, gain, s["seed"], s["learning_rate"])

    def measured(phase, **extra):  # whether the gradient norms are finite
        metrics, profiles = measure(model, *eval_data, activation)
        result.update(extra | {f"{phase}_{k}": v for k, v in metrics.items()})
        npz.update({f"{phase}_{k}": v for k, v in profiles.items()})
        return metrics["finite"]

    status, step, phase = ("ok", None, None) if measured("init") else ("diverged", 0, "init")
    if status == "ok" and s["train_steps"] > 0:
        history, monitor = training.fit_steps(
            model, config_dir, s, lambda n: task(n, seed=s["seed"] + 2), eval_data, eval_data)
        result["train_steps_done"] = monitor.steps_done
        if monitor.diverged is not None:
            status, step, phase = "diverged", monitor.diverged["step"] + 1, "train"
        elif not measured("trained", final_train_loss=history["loss"][-1],
                          final_eval_loss=history["val_loss"][-1]):
            status, step, phase = "diverged", monitor.steps_done, "trained-gradients"
    result["target_variance"] = float(np.var(eval_data[1]))  # the trivial predictor's loss
    np.savez(os.path.join(config_dir, "norms.npz"), **npz)
    return {**result, "status": status, "diverged_step": step, "diverged_phase": phase}


def configurations(config):
    """`[(config_id, params)]` in table order: T, activation, gain."""
    return [(common.make_config_id(p, list(p), {"activation": "", "gain": "g", "T": "T"}), p)
            for T in config.length_list() for activation in config.activation_list()
            for p in ({"activation": activation, "gain": g, "T": T} for g in config.gain_list())]


def _overflowed(row):  # float32 inf/NaN at init: the float64 Jacobian factor stands in
    return row.get("diverged_phase") == "init"


def _stat(fn, values):  # fn of the finite values, None if there are none
    return float(fn(values[np.isfinite(values)])) if np.isfinite(values).any() else None


STATS = ("max_factor", "crossing_gain", "lyapunov_crossing_gain",  # of the summary, per phase
         "log_factor_minus_lyapunov_median", "theory_median_rel_err", "theory_rms_median_rel_err")


def summarize(rows):
    """Per (T, activation) and phase: `STATS` (crossings: where factor, exp(lambda_1) = 1)."""
    out = []
    for (T, activation), sel in common.group_rows(rows, ("T", "activation"), "gain").items():
        entry, gains = {"T": T, "activation": activation}, [r["gain"] for r in sel]

        def col(key):
            return np.array([r[key] if finite(r.get(key)) else np.nan for r in sel], float)

        for ph, _ in PHASES:
            factors = np.where([ph == "init" and _overflowed(r) for r in sel],
                               col("init_jacobian_factor"), col(f"{ph}_factor"))
            with np.errstate(all="ignore"):
                lyapunov, ratios = col(f"{ph}_lyapunov"), [
                    col(f"{ph}_factor") / col(f"{ph}_{t}") for t in ("theory", "theory_rms")]
                entry.update(zip((f"{ph}_{k}" for k in STATS), (
                    _stat(np.max, factors), common.log_crossing(gains, list(factors)),
                    common.log_crossing(gains, list(np.exp(lyapunov))),
                    _stat(np.median, col(f"{ph}_log_factor") - lyapunov),
                    *(_stat(np.median, np.abs(ratio - 1)) for ratio in ratios))))
        entry["diverged"] = [{"gain": r["gain"], "step": r.get("diverged_step"), "phase": r.get(
            "diverged_phase")} for r in sel if r["status"] == "diverged"]
        out.append({**entry, "crashed": [r["gain"] for r in sel if r["status"] == "crashed"]})
    return out


def _cell(row, phase, activation):
    """measured / theory [/ rms theory] ‖ log(factor) / lambda_1, or what happened."""
    if row is None or row["status"] == "crashed":
        return "" if row is None else "crashed"
    factor, theory, rms, log_factor, lyap, jac = (row.get(f"{phase}_{k}") for k in (
        "factor", "theory", "theory_rms", "log_factor", "lyapunov", "jacobian_factor"))
    if finite(factor):
        rms_text = f" [{fmt(rms)}]" if activation in ("relu", "tanh") and finite(rms) else ""
        text = fmt(factor) + (f" / {fmt(theory)}{rms_text}" if finite(theory) else "")
    elif phase == "init" and _overflowed(row):
        text = "overflow@0" + (f" (jac {fmt(jac)})" if finite(jac) else "")
    else:
        text = common.status_text(row) if row["status"] == "diverged" else "–"
    return text + (f" ‖ {fmt(log_factor)} / {fmt(lyap)}" if finite(lyap) else "")


def markdown(results, config):
    """results.md: a factor table per length and phase, the summary, all rows."""
    rows, activations = results["rows"], config.activation_list()
    by_key, columns = common.index_rows(rows, GRID), [f"{p}_{k}" for p, _ in PHASES for k in STATS]
    lines = [f"{common.counts_line(results)} Units {config.units}, {config.train_steps} Adam "
             f"steps (lr {config.learning_rate:g}, batch {config.batch_size}), loss (MSE) at the "
             f"last step only, gradients measured on {config.eval_samples} sequences.", "",
             "Cells: measured per-step factor of ||dL/dh_t|| (fit_decay_factor; < 1 vanishing, "
             "> 1 exploding) / theory rho * mean|act'(z)| [/ rho * rms act'(z)] ‖ log_factor / "
             "lambda1 (top Lyapunov exponent, nats per step, same sequences). `overflow@0`: "
             "float32 inf/NaN at initialisation (jac: float64 Jacobian factor); `diverged@k`: "
             "training loss inf/NaN at step k."]
    for T in config.length_list():
        for phase, title in PHASES:
            cells = [[f"{g:g}", *(_cell(by_key.get((T, a, g)), phase, a) for a in activations)]
                     for g in config.gain_list()]
            lines += common.md_section(f"T = {T}, {title}", *common.md_table(
                ["gain", *activations], cells, "r" + "l" * len(activations)))
    lines += common.md_section(
        "Summary per activation and length", "Max factor and crossing gain at init include "
        "the float64 Jacobian factor of configurations that overflowed float32.", "",
        *common.md_table(["T", "activation", *columns, "diverged"], [
            [e["T"], e["activation"], *(fmt(e[k]) for k in columns), ", ".join(
                f"g={d['gain']:g}@{d['step']}" for d in e["diverged"]) or "none"]
            for e in results["summary"]], "rl" + "r" * len(columns) + "l"))
    lines += common.configs_section(rows, ["init_jacobian_factor", *(
        f"{ph}_{k}" for ph, _ in PHASES for k in ("factor", "log_factor", "lyapunov", "theory",
                                                  "spectral_radius", "mean_abs_dact", "horizon")),
        ("eval loss (var y)", lambda r: f"{fmt(r.get('final_eval_loss'))} "
                                        f"({fmt(r.get('target_variance'))})"),
        ("s", lambda r: fmt(r.get("wall_s"), 2))])
    return common.md_report("Gradient dynamics of vanilla RNNs", lines)


def plot_norms(rows, workdir, config, T, png):
    """Mean ||dL/dh_t|| vs steps back: a panel per phase and activation, a curve per gain."""
    from matplotlib import colormaps

    gains, by_key = config.gain_list(), common.index_rows(rows, GRID)
    colors = dict(zip(gains, colormaps["viridis"](np.linspace(0, 0.9, len(gains)))))

    def draw(ax, phase_title, activation):
        (phase, title), curves = phase_title, []
        for r in filter(None, (by_key.get((T, activation, g)) for g in gains)):
            factor, why = r.get(f"{phase}_factor"), common.status_text(r).split(":")[0]
            label = f", ×{factor:.3g}/step" if finite(factor) else f" ({why})" * (why != "ok")
            norms = common.config_profile(workdir, r["config_id"], "norms.npz",
                                         f"{phase}_mean_norms") if finite(factor) else None
            curves.append((norms, f"g={r['gain']:g}{label}", dict(color=colors[r["gain"]], lw=1.3)))
        common.steps_back_panel(ax, f"{activation}, T={T}, {title}", curves)

    return common.plot_panels(png, PHASES, config.activation_list(), draw, (4.0, 3.6))


FACTOR_STYLES = {  # metric: legend label, line style (lyapunov: drawn as exp(lambda_1))
    "init_theory": ("theory ρ·mean|act'| (init)", dict(color="C0", lw=1.5)),
    "init_theory_rms": ("ρ·rms act' (init)", dict(color="C0", ls=":", lw=1.5)),
    "trained_theory": ("theory (trained)", dict(color="C3", lw=1.0, alpha=0.6)),
    "init_factor": ("measured (init)", dict(color="C0", marker="o", ls="none")),
    "trained_factor": ("measured (trained)", dict(color="C3", marker="x", ls="none")),
    "init_lyapunov": ("exp(λ₁) (init)", dict(color="C2", marker="s", ls="none", mfc="none")),
    "trained_lyapunov": ("exp(λ₁) (trained)", dict(color="C4", marker="+", ls="none", ms=9)),
    "init_jacobian_factor": ("float64 Jacobian, overflow", dict(color="C1", marker="^", ls="none"))}


def plot_factors(rows, config, png):
    """Per-step factor vs gain (log-log): measured, exp(lambda_1), theory, 1."""
    gains, groups = config.gain_list(), common.group_rows(rows, ("T", "activation"), "gain")

    def draw(ax, T, activation):
        sel = groups.get((T, activation), [])
        ax.axhline(1.0, color="k", lw=1, ls="--", label="factor = 1")
        ax.plot(gains, gains, color="0.6", lw=1, label="rho (linear)")
        for key, (label, style) in FACTOR_STYLES.items():
            pts = [(r["gain"], math.exp(r[key]) if key.endswith("lyapunov") else r[key])
                   for r in sel if finite(r.get(key))
                   and (key != "init_jacobian_factor" or _overflowed(r))]
            ax.plot(*(zip(*pts) if pts else ([], [])), label=label, **style)  # every label
        for r in (r for r in sel if r["status"] == "diverged" and not _overflowed(r)):
            ax.axvline(r["gain"], color="C3", lw=0.8, alpha=0.3)
        common.log_log_axes(ax, gains, title=f"{activation}, T={T}", ylabel="per-step factor",
                           xlabel="recurrent gain g (= spectral radius at init)")

    return common.plot_panels(png, config.length_list(), config.activation_list(), draw,
                             (4.0, 3.6), legend_ncols=5)


def train_and_evaluate(config, workdir):
    """Runs (or resumes) the sweep; writes results.json, results.md, plots."""
    start = time.perf_counter()
    records = config.sweep(workdir, configurations(config), functools.partial(
        run_config, settings=config.fixed_settings()), METRIC_NAMES)
    rows, out = common.rows_of(records), common.plots_dir(workdir)
    pngs = [plot_norms(rows, workdir, config, T, out / f"norms_vs_steps_back_T{T}.png")
            for T in config.length_list()]
    pngs.append(plot_factors(rows, config, out / "factor_vs_gain.png"))
    results = common.results_of("dynamics", records, time.perf_counter() - start,
                               summary=summarize(rows), plots=[str(p) for p in pngs])
    return common.save_report(workdir, results, markdown(results, config), config.verbose)


def main(argv=None):
    return common.run_main(train_and_evaluate, Config, argv, configurations=configurations)


if __name__ == "__main__":
    main()
