"""Why vanilla RNNs forget: recurrent gain x activation x sequence length.

Back-propagation through time multiplies the gradient, once per step back,
by the Jacobian `diag(act'(z_t)) W_hh^T`; linear theory says its norm changes
by about `factor ~ spectral_radius(W_hh) * mean |act'(z)|` per step: below 1
gradients vanish geometrically, above 1 they explode. This sweep measures
that factor and checks the theory.

    python -m experiments.dynamics                      # defaults, 64 configs
    python -m experiments.dynamics --workers 2          # on a local dask cluster
    python -m experiments.dynamics --gains 0.9,1.1 --activations tanh \\
        --lengths 100 --run_name quick
    python -m experiments.dynamics --help               # every setting

The defaults cost about 7 minutes of CPU time; a process compiles one model
per (activation, T) and reuses it for every gain.

A configuration is a recurrent gain g, an activation and a length T: W_hh =
`ScaledOrthogonal(gain=g)` (spectral radius exactly g), Glorot-uniform input
kernel, zero bias; inputs N(0, `input_scale`^2), one feature per step; the
target is the mean of the first `target_steps` inputs and the MSE loss sits
at the last step only, so `||dL/dh_t||` against the steps back is pure
backward propagation through the recurrence.

Measured on `eval_samples` fixed sequences at initialisation and after
`train_steps` Adam steps: `||dL/dh_t||` and its fitted per-step `factor`, the
`horizon` (steps back until the mean norm is 1e-3 of its last-step value),
the theories `rho * mean|act'(z)|` and `rho * rms act'(z)` (which an
orthogonal W_hh follows for relu) from the float64 forward trajectory, and
the float64 `jacobian_factor` of `||dh_T/dh_t||` (finite where float32
overflows). Overflow at initialisation is "diverged" at step 0 (not
trained); inf/NaN in training stops it, "diverged" at that (1-based) step.

Outputs (`runs/dynamics/<run_name>/`, see `experiments.sweep`): results.json
(a row per configuration, a summary per activation and length), results.md,
plots/norms_vs_steps_back_T<T>.png, plots/factor_vs_gain.png; per
configuration configs/<id>/ with result.json, norms.npz, logs/ and HParams.
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


@dataclasses.dataclass
class Config(sweep.SweepConfig):
    """Gradient dynamics of vanilla RNNs: recurrent gain x activation x length."""

    experiment: ClassVar[str] = "dynamics"
    sweep_axes: ClassVar[tuple] = ("gains", "activations", "lengths")

    gains: str = option("0.5,0.8,0.9,1.0,1.1,1.25,1.5,2.0",
                        "Comma-separated recurrent gains g (W_hh = g * orthogonal).")
    activations: str = option("tanh,sigmoid,relu,linear",
                              "Comma-separated activations (tanh, sigmoid, relu, linear).")
    lengths: str = option("50,200", "Comma-separated sequence lengths T.")
    input_scale: float = option(1.0, "Standard deviation of the inputs.")
    # y = mean of x_0 .. x_{k-1}: the network must carry it T - k steps.
    target_steps: int = option(1, "The target is the mean of the first N inputs.")
    units: int = option(32, "Units of the VanillaRNN layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    # A short run: enough to move the weights, not to solve the task.
    train_steps: int = option(300, "Adam steps (0: measure at init only).")
    # Logging granularity of the TensorBoard loss curves.
    steps_per_epoch: int = option(50, "Training steps per (logged) epoch.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    # 0 keeps the raw dynamics (divergence is part of the result).
    clipnorm: float = option(0.0, "Global gradient-norm clipping threshold (0: off).")
    eval_samples: int = option(128, "Fixed batch on which the gradient norms are measured.")
    grad_every_n_batches: int = option(
        150, "Also log the gradient norms during training every N batches "
        "(GradientNormCallback, TensorBoard).")

    def validate(self):
        super().validate()
        if any(not g > 0 for g in self.gain_list()):
            raise ValueError(f"Received: gains={self.gains!r}. Expected positive gains, "
                             f"e.g. --gains 0.5,1.0,2.0.")
        self.activation_list()
        common.check_number("input_scale", self.input_scale)
        common.check_int("target_steps", self.target_steps, example=1)
        if self.target_steps >= min(self.length_list()):
            raise ValueError(
                f"Received: target_steps={self.target_steps} with lengths {self.lengths!r}. "
                f"Expected target_steps < every length (the target must lie before the "
                f"last step).")
        for name in ("units", "batch_size", "steps_per_epoch", "eval_samples"):
            common.check_int(name, getattr(self, name))
        common.check_int("train_steps", self.train_steps, minimum=0)
        common.check_number("learning_rate", self.learning_rate)
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
    x = (np.random.default_rng([seed, T]).standard_normal((n, T, 1)) * input_scale).astype(
        np.float32)
    return x, x[:, :target_steps, 0].mean(axis=1, keepdims=True).astype(np.float32)


_DERIVATIVES = {  # act(z) and act'(z) given z and a = act(z)
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)), lambda z, a: a * (1.0 - a)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z)),
}


def activation_derivative_stats(x, kernel, recurrent_kernel, bias=None, activation="tanh"):
    """`(mean |act'(z)|, rms act'(z))` over samples, steps and units of the
    float64 forward trajectory from `h = 0` (NaN when it overflows)."""
    act, dact = _DERIVATIVES[activation]
    u = np.asarray(recurrent_kernel, np.float64)
    projected = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    projected += 0.0 if bias is None else np.asarray(bias, np.float64)
    h, total_abs, total_sq = np.zeros((x.shape[0], u.shape[0])), 0.0, 0.0
    with np.errstate(all="ignore"):
        for t in range(x.shape[1]):
            z = projected[:, t] + h @ u
            h = act(z)
            d = dact(z, h)
            total_abs, total_sq = total_abs + np.abs(d).sum(), total_sq + (d * d).sum()
    count = x.shape[0] * x.shape[1] * u.shape[0]
    mean_abs, rms = float(total_abs / count), float(math.sqrt(total_sq / count))
    return (mean_abs, rms) if math.isfinite(mean_abs + rms) else (math.nan, math.nan)


def measure(model, x, y, activation):
    """`(metrics, profiles)` of the model's `rnn` layer: the scalars above
    and the arrays `mean_norms` and `jacobian_norms` (one value per step)."""
    import keras_vrnn

    layer = model.get_layer(LAYER)
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)[LAYER]
    ok = bool(np.isfinite(norms).all())
    with np.errstate(all="ignore"):
        mean_norms = norms.mean(axis=0)
    stats = keras_vrnn.recurrent_kernel_stats(layer)
    rho = float(stats["spectral_radius"])
    mean_abs, rms = activation_derivative_stats(x, *layer.get_weights(), activation=activation)
    try:
        jac = keras_vrnn.state_jacobian_norms(model, x, max_samples=JACOBIAN_SAMPLES)[LAYER]
        jac_factor = keras_vrnn.fit_decay_factor(jac)
        with np.errstate(all="ignore"):
            jac_mean = np.exp(np.log(jac).mean(axis=0))  # geometric mean
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        jac_factor, jac_mean = math.nan, np.full(norms.shape[1], np.nan)
    return {"finite": ok, "factor": keras_vrnn.fit_decay_factor(norms) if ok else math.nan,
            "horizon": float(keras_vrnn.effective_horizon(norms, HORIZON_THRESHOLD)) if ok
            else math.nan, "jacobian_factor": jac_factor, "spectral_radius": rho,
            "max_singular_value": float(stats["max_singular_value"]),
            "mean_abs_dact": mean_abs, "rms_dact": rms, "theory": rho * mean_abs,
            "theory_rms": rho * rms, "last_step_norm": float(mean_norms[-1]),
            }, {"mean_norms": mean_norms, "jacobian_norms": jac_mean}


def build_model(units, activation, T, learning_rate, clipnorm):
    """VanillaRNN(units, activation) -> Dense(1), compiled with Adam and MSE;
    `initialize` sets its weights."""
    import keras

    import keras_vrnn
    from experiments import training

    model = keras.Sequential([keras.Input((T, 1), name="x"),
                              keras_vrnn.VanillaRNN(units, activation=activation, name=LAYER),
                              keras.layers.Dense(1, name="out")], name=f"rnn_{activation}")
    # jit_compile=False: the fused RNN path is compiled on its own; a whole
    # step XLA compile costs seconds per model and gains nothing here.
    model.compile(optimizer=training.make_optimizer("adam", learning_rate, clipnorm),
                  loss="mse", jit_compile=False)
    return model


def initialize(model, gain, seed, learning_rate):
    """Fresh weights (W_hh = `ScaledOrthogonal(gain, seed)`, Glorot-uniform
    kernels from NumPy, zero biases) and a zeroed optimizer: a reused model
    is in the state of a freshly built one, its compiled functions kept."""
    import keras

    import keras_vrnn

    rng = np.random.default_rng([seed, 7])

    def glorot(shape):
        return rng.uniform(-(limit := math.sqrt(6.0 / sum(shape))), limit, size=shape)

    layer = model.get_layer(LAYER)
    units, features = layer.cell.units, layer.cell.kernel.shape[0]
    recurrent = keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)((units, units))
    layer.set_weights([glorot((features, units)), keras.ops.convert_to_numpy(recurrent),
                       np.zeros(units)])
    model.get_layer("out").set_weights([glorot((units, 1)), np.zeros(1)])
    for variable in model.optimizer.variables:
        variable.assign(learning_rate if variable.name == "learning_rate"
                        else np.zeros(variable.shape, variable.dtype))


@functools.lru_cache(maxsize=1)
def get_model(activation, T, units, learning_rate, clipnorm):
    """One compiled model per process, reused while consecutive
    configurations share its shape (every gain of a row, in sweep order)."""
    import keras

    keras.backend.clear_session()
    return build_model(units, activation, T, learning_rate, clipnorm)


def run_config(params, config_dir, settings):
    """Measures one (gain, activation, T); returns its metrics with status
    "diverged" and the step where inf/NaN appeared."""
    s, (gain, activation, T) = settings, (params["gain"], params["activation"], params["T"])
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes
    task = functools.partial(make_task, T=T, input_scale=s["input_scale"],
                             target_steps=s["target_steps"])
    x_eval, y_eval = task(s["eval_samples"], seed=s["seed"] + 1)
    model = get_model(activation, T, s["units"], s["learning_rate"], s["clipnorm"])
    initialize(model, gain, s["seed"], s["learning_rate"])
    init, profiles = measure(model, x_eval, y_eval, activation)
    result = {f"init_{k}": v for k, v in init.items()}
    profiles = {f"init_{k}": v for k, v in profiles.items()}
    status, step, phase = "ok", None, None
    if not init["finite"]:
        status, step, phase = "diverged", 0, "init"
    elif s["train_steps"] > 0:
        history, monitor = sweep.fit_steps(
            model, config_dir, s, lambda n: task(n, seed=s["seed"] + 2), (x_eval, y_eval),
            (x_eval, y_eval))
        result["train_steps_done"] = monitor.steps_done
        if monitor.diverged is not None:
            status, step, phase = "diverged", monitor.diverged["step"] + 1, "train"
        else:
            trained, more = measure(model, x_eval, y_eval, activation)
            result.update({f"trained_{k}": v for k, v in trained.items()},
                          final_train_loss=history["loss"][-1],
                          final_eval_loss=history["val_loss"][-1])
            profiles.update({f"trained_{k}": v for k, v in more.items()})
            if not trained["finite"]:
                status, step, phase = "diverged", monitor.steps_done, "trained-gradients"
    result["target_variance"] = float(np.var(y_eval))  # the trivial predictor's loss
    np.savez(os.path.join(config_dir, "norms.npz"), **profiles)
    return {**result, "status": status, "diverged_step": step, "diverged_phase": phase}


def configurations(config):
    """`[(config_id, params)]` in table order: T, activation, gain."""
    return [(sweep.make_config_id(p, ["activation", "gain", "T"],
                                  {"activation": "", "gain": "g", "T": "T"}), p)
            for T in config.length_list() for activation in config.activation_list()
            for p in ({"activation": activation, "gain": g, "T": T} for g in config.gain_list())]


METRIC_NAMES = ("init_factor", "init_theory", "init_theory_rms", "init_jacobian_factor",
                "init_horizon", "init_mean_abs_dact", "trained_factor", "trained_theory",
                "trained_spectral_radius", "trained_horizon", "final_eval_loss")
GRID = ("T", "activation", "gain")


def _overflowed(row):
    """Whether float32 overflowed at initialisation (the float64 Jacobian
    factor then stands in for the measured one)."""
    return row.get("diverged_phase") == "init"


def summarize(rows):
    """Per (T, activation): max factors, the gain where the factor crosses 1,
    and the median relative error of the theories."""
    out = []
    for (T, activation), sel in sweep.group_rows(rows, ("T", "activation"), "gain").items():
        entry, gains = {"T": T, "activation": activation}, [r["gain"] for r in sel]
        for phase, _ in PHASES:
            factors = [r[f"{phase}_factor"] if finite(r.get(f"{phase}_factor")) else
                       r.get("init_jacobian_factor") if phase == "init" and _overflowed(r)
                       else None for r in sel]
            entry[f"{phase}_max_factor"] = max(filter(finite, factors), default=None)
            entry[f"{phase}_crossing_gain"] = sweep.log_crossing(gains, factors)
            for theory in ("theory", "theory_rms"):
                pairs = [(r.get(f"{phase}_factor"), r.get(f"{phase}_{theory}")) for r in sel]
                errors = [abs(f / t - 1) for f, t in pairs if finite(f) and finite(t) and t > 0]
                entry[f"{phase}_{theory}_median_rel_err"] = (
                    float(np.median(errors)) if errors else None)
        entry["diverged"] = [{"gain": r["gain"], "step": r.get("diverged_step"),
                              "phase": r.get("diverged_phase")}
                             for r in sel if r["status"] == "diverged"]
        entry["crashed"] = [r["gain"] for r in sel if r["status"] == "crashed"]
        out.append(entry)
    return out


def _cell(row, phase, activation):
    """A factor-table cell: measured / theory [/ rms theory], or what happened."""
    if row is None or row["status"] == "crashed":
        return "" if row is None else "crashed"
    factor, theory, rms = (row.get(f"{phase}_{k}") for k in ("factor", "theory", "theory_rms"))
    if not finite(factor):
        if phase == "init" and _overflowed(row):
            jac = row.get("init_jacobian_factor")
            return "overflow@0" + (f" (jac {fmt(jac)})" if finite(jac) else "")
        return sweep.status_text(row) if row["status"] == "diverged" else "–"
    rms_text = f" [{fmt(rms)}]" if activation in ("relu", "tanh") and finite(rms) else ""
    return fmt(factor) + (f" / {fmt(theory)}{rms_text}" if finite(theory) else "")


def markdown(results, config):
    """results.md: a factor table per length and phase, the summary, all rows."""
    rows, activations = results["rows"], config.activation_list()
    by_key = sweep.index_rows(rows, GRID)
    lines = [
        f"{sweep.counts_line(results)} Units {config.units}, {config.train_steps} Adam steps (lr "
        f"{config.learning_rate:g}, batch {config.batch_size}), loss (MSE) at the last step "
        f"only, gradients measured on {config.eval_samples} sequences.", "",
        "Cells: measured per-step factor of ||dL/dh_t|| (fit_decay_factor; < 1 vanishing, "
        "> 1 exploding) / theory rho * mean|act'(z)| [/ rho * rms act'(z)]. `overflow@0`: "
        "float32 inf/NaN at initialisation (jac: float64 Jacobian factor); `diverged@k`: "
        "training loss inf/NaN at step k."]
    for T in config.length_list():
        for phase, title in PHASES:
            lines += sweep.md_section(f"T = {T}, {title}", *sweep.md_table(
                ["gain", *activations],
                [[f"{g:g}", *(_cell(by_key.get((T, a, g)), phase, a) for a in activations)]
                 for g in config.gain_list()], "r" + "l" * len(activations)))
    lines += sweep.md_section(
        "Summary per activation and length", "Max factor and crossing gain at init include "
        "the float64 Jacobian factor of configurations that overflowed float32.", "",
        *sweep.md_table(
            ["T", "activation", "max factor init", "factor = 1 at gain (init)",
             "max factor trained", "median rel. err. theory mean / rms (init)", "diverged"],
            [[e["T"], e["activation"], fmt(e["init_max_factor"]), fmt(e["init_crossing_gain"]),
              fmt(e["trained_max_factor"]), f"{fmt(e['init_theory_median_rel_err'], 2)} / "
              f"{fmt(e['init_theory_rms_median_rel_err'], 2)}",
              ", ".join(f"g={d['gain']:g}@{d['step']}" for d in e["diverged"]) or "none"]
             for e in results["summary"]], "rlrrrrl"))
    lines += sweep.configs_section(rows, [
        "init_factor", "init_jacobian_factor", "init_theory", "init_mean_abs_dact",
        "init_horizon", "trained_factor", "trained_spectral_radius", "trained_mean_abs_dact",
        "trained_horizon", ("eval loss (var y)", lambda r: f"{fmt(r.get('final_eval_loss'))} "
                                                       f"({fmt(r.get('target_variance'))})"),
        ("s", lambda r: fmt(r.get("wall_s"), 2))])
    return sweep.md_report("Gradient dynamics of vanilla RNNs", lines)


def _norms_curve(row, profile, phase, gain):
    """`(profile or None, label)`: one curve of the norms plot, None where
    nothing can be drawn (the label says why)."""
    label = f"g={gain:g}"
    if row["status"] == "crashed":
        return None, label + " (crashed)"
    if profile is None or not np.all(np.isfinite(profile)):
        if row["status"] != "diverged":
            return None, label
        jac = row.get("init_jacobian_factor")
        jac = f"; float64 Jacobian ×{jac:.3g}/step" if _overflowed(row) and finite(jac) else ""
        return None, f"{label} ({sweep.status_text(row)}{jac})"
    if not (profile > 0).any():
        return None, label + " (all 0)"
    if finite(row.get(f"{phase}_factor")):
        label += f", ×{row[f'{phase}_factor']:.3g}/step"
    return profile, label + ("" if (profile > 0).all() else " (→0: underflow)")


def plot_norms(rows, workdir, config, T, png):
    """Mean ||dL/dh_t|| vs steps back: init and trained rows, a panel per
    activation, a curve per gain."""
    from matplotlib import colormaps

    gains, by_key = config.gain_list(), sweep.index_rows(rows, GRID)
    lg = np.log(gains)

    def draw(ax, phase_title, activation):
        (phase, title), curves = phase_title, []
        for gain in gains:
            row = by_key.get((T, activation, gain))
            if row is not None:
                profile, label = _norms_curve(row, sweep.config_profile(
                    workdir, row["config_id"], "norms.npz", f"{phase}_mean_norms"), phase, gain)
                color = colormaps["viridis"](0.9 * (math.log(gain) - lg.min())
                                             / ((lg.max() - lg.min()) or 1.0))
                curves.append((profile, label, dict(color=color, lw=1.3)))
        sweep.steps_back_panel(ax, f"{activation}, T={T}, {title}", curves)

    return sweep.plot_panels(png, PHASES, config.activation_list(), draw, (4.0, 3.6))


FACTOR_STYLES = {  # metric: legend label, line style
    "init_theory": ("theory ρ·mean|act'| (init)", dict(color="C0", lw=1.5)),
    "init_theory_rms": ("ρ·rms act' (init)", dict(color="C0", ls=":", lw=1.5)),
    "trained_theory": ("theory (trained)", dict(color="C3", lw=1.0, alpha=0.6)),
    "init_factor": ("measured (init)", dict(color="C0", marker="o", ls="none")),
    "trained_factor": ("measured (trained)", dict(color="C3", marker="x", ls="none")),
    "init_jacobian_factor": ("float64 Jacobian (float32 overflow)",
                             dict(color="C1", marker="^", ls="none"))}


def plot_factors(rows, config, png):
    """Fitted factor vs gain (log-log), measured and theory, and factor = 1."""
    gains, groups = config.gain_list(), sweep.group_rows(rows, ("T", "activation"), "gain")

    def draw(ax, T, activation):
        sel = groups.get((T, activation), [])
        ax.axhline(1.0, color="k", lw=1, ls="--", label="factor = 1")
        ax.plot(gains, gains, color="0.6", lw=1, label="rho (linear)")
        for key, (label, style) in FACTOR_STYLES.items():
            pts = [(r["gain"], r[key]) for r in sel if finite(r.get(key))
                   and (key != "init_jacobian_factor" or _overflowed(r))]
            if pts:
                ax.plot(*zip(*pts), label=label, **style)
        for r in sel:
            if r["status"] == "diverged" and not _overflowed(r):
                ax.axvline(r["gain"], color="C3", lw=0.8, alpha=0.3)
        sweep.log_log_axes(ax, gains, title=f"{activation}, T={T}", ylabel="per-step factor",
                           xlabel="recurrent gain g (= spectral radius at init)")

    return sweep.plot_panels(png, config.length_list(), config.activation_list(), draw,
                             (4.0, 3.6), legend_ncols=4)


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
