"""Why vanilla RNNs forget: recurrent gain x activation x sequence length.

Back-propagation through time multiplies the gradient, once per step back,
by the Jacobian `diag(act'(z_t)) W_hh^T`. Linear theory says its norm shrinks
or grows by about

    factor ~ spectral_radius(W_hh) * mean |act'(z)|

per step: below 1 gradients vanish geometrically, above 1 they explode. This
experiment measures that factor and checks the theory.

    python -m experiments.dynamics                      # defaults, 64 configs
    python -m experiments.dynamics --workers 2          # in parallel
    python -m experiments.dynamics --gains 0.9,1.1 --activations tanh \\
        --lengths 100 --run_name quick
    python -m experiments.dynamics --help               # every setting

Cost of the defaults: 7 minutes of CPU time (measured: 15 minutes wall on 2
cores shared with other jobs, load ~5). Each (activation, T) compiles one
model, reused for all gains of that row.

Sweep. Every combination of a recurrent gain g (`--gains`), an activation
(`--activations`: tanh, sigmoid, relu, linear) and a sequence length T
(`--lengths`) is one configuration. W_hh starts as `ScaledOrthogonal(gain=g)`
(all singular values and |eigenvalues| equal g, so the spectral radius is
exactly g); the input kernel is Glorot-uniform, the bias zero.

Task. Inputs are N(0, `input_scale`^2), one feature per step; the target is
the mean of the first `target_steps` inputs; the loss (MSE) sits only at the
last step (VanillaRNN -> Dense(1) on the last hidden state). So for every
t < T - 1 the gradient dL/dh_t is pure backward propagation through the
recurrence, and `||dL/dh_t||` against the number of steps back shows the
per-step factor directly.

Measurements (at initialisation and after `train_steps` Adam steps on fresh
random batches, the same data for every configuration of one length):

- `||dL/dh_t||` for every sample and step (`keras_vrnn.timestep_gradient_norms`
  on a fixed batch of `eval_samples`), its batch mean per step (plotted);
- `factor`: the fitted per-step factor (`keras_vrnn.fit_decay_factor` on all
  samples; < 1 vanishing, > 1 exploding) and the `horizon`
  (`keras_vrnn.effective_horizon`: steps back until the mean norm is 1e-3 of
  its last-step value, T = never);
- the theory `theory = rho * mean|act'(z)|`, with rho the exact spectral
  radius of W_hh (`recurrent_kernel_stats`) and mean |act'(z)| over the
  batch, all steps and units of the forward trajectory (recomputed in float64
  from the layer's weights); also `theory_rms = rho * sqrt(mean act'(z)^2)`:
  for an orthogonal W_hh a random gradient direction is scaled by the RMS of
  the derivatives, not their mean, which matters for relu (act' is 0 or 1:
  mean = p, RMS = sqrt(p));
- `jacobian_factor`: the factor of `||dh_T/dh_t||` (float64,
  `keras_vrnn.state_jacobian_norms` on 8 samples), which does not depend on
  the loss and stays finite where float32 gradients overflow.

Divergence. A configuration whose forward pass or gradients are inf/NaN at
initialisation is recorded as "diverged" at step 0 (not trained; its
Jacobian factor is still reported); one whose training loss becomes inf/NaN
stops there and is recorded as "diverged" at that step (1-based). The sweep
goes on. A linear RNN with g > 1 at T = 200 overflows float32 this way.

Outputs (run dir `runs/dynamics/<run_name>/`, resumable, see
`experiments.sweep`): config.json, results.json (one row per configuration
plus per-activation summaries), results.md (the tables), plots/
`norms_vs_steps_back_T<T>.png` (mean norm vs steps back, one curve per gain,
one panel per activation, at init and after training) and
`factor_vs_gain.png` (measured factors vs gain with the theory and the
factor = 1 boundary), and per configuration configs/<id>/ (result.json,
norms.npz, logs/ with TensorBoard scalars and GradientNormCallback logs,
HParams). `tensorboard --logdir runs/dynamics/<run_name>` shows everything,
the sweep in the HParams tab.
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
from experiments.runner import option

ACTIVATIONS = ("tanh", "sigmoid", "relu", "linear")
LAYER = "rnn"
HORIZON_THRESHOLD = 1e-3
JACOBIAN_SAMPLES = 8


@dataclasses.dataclass
class Config(sweep.SweepConfig):
    """Gradient dynamics of vanilla RNNs: recurrent gain x activation x length."""

    experiment: ClassVar[str] = "dynamics"
    sweep_axes: ClassVar[tuple] = ("gains", "activations", "lengths")

    # --- the sweep --------------------------------------------------------
    # Spectral radius of W_hh = g exactly (ScaledOrthogonal(gain=g)).
    gains: str = option(
        "0.5,0.8,0.9,1.0,1.1,1.25,1.5,2.0",
        "Comma-separated recurrent gains g (W_hh = g * orthogonal).",
    )
    activations: str = option(
        "tanh,sigmoid,relu,linear",
        "Comma-separated activations (tanh, sigmoid, relu, linear).",
    )
    lengths: str = option("50,200", "Comma-separated sequence lengths T.")
    # --- task -------------------------------------------------------------
    # Inputs N(0, input_scale^2), one feature per step.
    input_scale: float = option(1.0, "Standard deviation of the inputs.")
    # y = mean of x_0 .. x_{k-1}: the net must carry it T - k steps.
    target_steps: int = option(
        1, "The target is the mean of the first N inputs."
    )
    # --- model and training ------------------------------------------------
    units: int = option(32, "Units of the VanillaRNN layer.")
    batch_size: int = option(64, "Sequences per training batch.")
    # A short run: enough to move the weights, not to solve the task.
    train_steps: int = option(300, "Adam steps (0: measure at init only).")
    # Logging granularity of the TensorBoard loss curves.
    steps_per_epoch: int = option(50, "Training steps per (logged) epoch.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    # 0 keeps the raw dynamics (divergence is part of the result).
    clipnorm: float = option(
        0.0, "Global gradient-norm clipping threshold (0: off)."
    )
    # --- measurement -------------------------------------------------------
    eval_samples: int = option(
        128, "Fixed batch on which the gradient norms are measured."
    )
    grad_every_n_batches: int = option(
        150,
        "Also log the gradient norms during training every N batches "
        "(GradientNormCallback, TensorBoard).",
    )

    def validate(self):
        super().validate()
        self.gain_list()
        self.activation_list()
        self.length_list()
        runner.check_positive("input_scale", self.input_scale)
        runner.check_positive_int("target_steps", self.target_steps, example=1)
        if self.target_steps >= min(self.length_list()):
            raise ValueError(
                f"Received: target_steps={self.target_steps} with lengths "
                f"{self.lengths!r}. Expected target_steps < every length (the "
                "target must lie before the last step)."
            )
        runner.check_positive_int("units", self.units, example=32)
        runner.check_positive_int("batch_size", self.batch_size, example=64)
        runner.check_int("train_steps", self.train_steps, minimum=0)
        runner.check_positive_int("steps_per_epoch", self.steps_per_epoch, example=50)
        runner.check_positive("learning_rate", self.learning_rate)
        runner.check_non_negative("clipnorm", self.clipnorm, "0 turns clipping off")
        runner.check_positive_int("eval_samples", self.eval_samples, example=128)

    def gain_list(self):
        gains = sweep.split_list("gains", self.gains, float)
        for g in gains:
            if not g > 0:
                raise ValueError(
                    f"Received: gains={self.gains!r} (gain {g:g}). Expected "
                    "positive gains, e.g. --gains 0.5,1.0,2.0."
                )
        return gains

    def activation_list(self):
        return sweep.split_list(
            "activations", self.activations, str, choices=ACTIVATIONS
        )

    def length_list(self):
        return sweep.split_list("lengths", self.lengths, int, minimum=2)


# ---------------------------------------------------------------------------
# Task and measurements (NumPy)
# ---------------------------------------------------------------------------


def make_task(n, T, seed, input_scale=1.0, target_steps=1):
    """Inputs `(n, T, 1)` ~ N(0, input_scale^2); target `(n, 1)` = mean of the
    first `target_steps` inputs. Seeded by `(seed, T)`."""
    rng = np.random.default_rng([seed, T])
    x = (rng.standard_normal((n, T, 1)) * input_scale).astype(np.float32)
    y = x[:, :target_steps, 0].mean(axis=1, keepdims=True).astype(np.float32)
    return x, y


_DERIVATIVES = {
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (
        lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
        lambda z, a: a * (1.0 - a),
    ),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z)),
}


def activation_derivative_stats(x, kernel, recurrent_kernel, bias, activation):
    """Mean |act'(z)| and RMS act'(z) along the forward trajectory (float64).

    Recomputes `h_t = act(x_t W + h_{t-1} U + b)` from `h_{-1} = 0` and
    averages over samples, steps and units.

    Returns:
        `(mean_abs, rms)`, NaN when the trajectory overflows.
    """
    act, dact = _DERIVATIVES[activation]
    x = np.asarray(x, np.float64)
    w = np.asarray(kernel, np.float64)
    u = np.asarray(recurrent_kernel, np.float64)
    b = np.zeros(u.shape[0]) if bias is None else np.asarray(bias, np.float64)
    projected = x @ w + b
    h = np.zeros((x.shape[0], u.shape[0]))
    total_abs = total_sq = 0.0
    with np.errstate(all="ignore"):
        for t in range(x.shape[1]):
            z = projected[:, t] + h @ u
            h = act(z)
            d = dact(z, h)
            total_abs += float(np.abs(d).sum())
            total_sq += float((d * d).sum())
    count = x.shape[0] * x.shape[1] * u.shape[0]
    mean_abs, rms = total_abs / count, math.sqrt(total_sq / count)
    if not (math.isfinite(mean_abs) and math.isfinite(rms)):
        return float("nan"), float("nan")
    return mean_abs, rms


def _finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def measure(model, x, y, activation):
    """All gradient-dynamics measurements of the model's `rnn` layer.

    Returns:
        `(metrics, profiles)`: scalars (factor, horizon, theory, ...) and
        the arrays `mean_norms` (T,) and `jacobian_norms` (T,).
    """
    import keras

    import keras_vrnn

    layer = model.get_layer(LAYER)
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)[LAYER]
    finite = bool(np.all(np.isfinite(norms)))
    with np.errstate(all="ignore"):
        mean_norms = norms.mean(axis=0)
    stats = keras_vrnn.recurrent_kernel_stats(layer)
    rho = float(stats["spectral_radius"])
    weights = [np.asarray(w.value.numpy()) for w in layer.cell.weights]  # TF backend
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    mean_abs, rms = activation_derivative_stats(x, kernel, recurrent, bias, activation)
    try:
        jac = keras_vrnn.state_jacobian_norms(model, x, max_samples=JACOBIAN_SAMPLES)[LAYER]
        jac_factor = keras_vrnn.fit_decay_factor(jac)
        with np.errstate(all="ignore"):
            jac_mean = np.exp(np.log(jac).mean(axis=0))  # geometric mean
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        jac_factor, jac_mean = float("nan"), np.full(norms.shape[1], np.nan)
    metrics = {
        "finite": finite,
        "factor": keras_vrnn.fit_decay_factor(norms) if finite else float("nan"),
        "horizon": (
            float(keras_vrnn.effective_horizon(norms, HORIZON_THRESHOLD))
            if finite
            else float("nan")
        ),
        "jacobian_factor": jac_factor,
        "spectral_radius": rho,
        "max_singular_value": float(stats["max_singular_value"]),
        "mean_abs_dact": mean_abs,
        "rms_dact": rms,
        "theory": rho * mean_abs,
        "theory_rms": rho * rms,
        "last_step_norm": float(mean_norms[-1]),
    }
    return metrics, {"mean_norms": mean_norms, "jacobian_norms": jac_mean}


# ---------------------------------------------------------------------------
# One configuration (runs in the sweep, possibly in a worker process)
# ---------------------------------------------------------------------------


def build_model(units, activation, T, learning_rate, clipnorm):
    """VanillaRNN(units, activation) -> Dense(1), compiled with Adam + MSE.

    The weights are set by `initialize` (NumPy, exact and reproducible).
    """
    import keras

    import keras_vrnn

    model = keras.Sequential(
        [
            keras.Input((T, 1), name="x"),
            keras_vrnn.VanillaRNN(units, activation=activation, name=LAYER),
            keras.layers.Dense(1, name="out"),
        ],
        name=f"rnn_{activation}",
    )
    kwargs = {"learning_rate": learning_rate}
    if clipnorm > 0:
        kwargs["global_clipnorm"] = clipnorm
    # jit_compile=False: the fused RNN path is XLA-compiled on its own; a
    # whole-step XLA compile costs seconds per model and gains nothing here.
    model.compile(
        optimizer=keras.optimizers.Adam(**kwargs), loss="mse", jit_compile=False
    )
    return model


def _glorot_uniform(rng, shape):
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, size=shape)


def initialize(model, gain, seed, learning_rate):
    """Sets fresh initial weights and a fresh optimizer state.

    W_hh = `ScaledOrthogonal(gain, seed)` (spectral radius exactly `gain`),
    input and output kernels Glorot-uniform, biases zero, all drawn with
    NumPy from `seed`; Adam's step count and moments are zeroed. A model
    reused for the next configuration is thus in exactly the state of a
    freshly built one (the compiled training and measurement functions are
    kept: no retracing or XLA compilation per configuration).
    """
    import keras

    import keras_vrnn

    rng = np.random.default_rng([seed, 7])
    cell = model.get_layer(LAYER).cell
    units, features = cell.units, cell.kernel.shape[0]
    recurrent = keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)(
        (units, units)
    )
    model.get_layer(LAYER).set_weights(
        [
            _glorot_uniform(rng, (features, units)),
            keras.ops.convert_to_numpy(recurrent),
            np.zeros(units),
        ]
    )
    model.get_layer("out").set_weights([_glorot_uniform(rng, (units, 1)), np.zeros(1)])
    optimizer = model.optimizer
    for variable in optimizer.variables:
        if variable.name == "learning_rate":
            variable.assign(learning_rate)
        else:
            variable.assign(np.zeros(variable.shape, variable.dtype))


# One compiled model per worker process, reused while consecutive
# configurations share (activation, T, units, lr, clipnorm): the sweep order
# (T, activation, gain) makes every gain of a row reuse it.
_MODEL_CACHE = {}


def get_model(activation, T, settings):
    import keras

    key = (activation, T, settings["units"], settings["learning_rate"], settings["clipnorm"])
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        keras.backend.clear_session()
        _MODEL_CACHE[key] = build_model(
            settings["units"], activation, T, settings["learning_rate"],
            settings["clipnorm"],
        )
    return _MODEL_CACHE[key]


def _divergence_monitor():
    """A callback that stops training at the first non-finite batch loss."""
    import keras

    class DivergenceMonitor(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0
            self.diverged_at = None

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            loss = (logs or {}).get("loss")
            if self.diverged_at is None and loss is not None:
                if not math.isfinite(float(loss)):
                    self.diverged_at = self.step
                    self.model.stop_training = True

    return DivergenceMonitor()


def run_config(params, config_dir, settings):
    """Measures one (gain, activation, T) configuration; see the module doc.

    Returns the metrics dict for the sweep (status "diverged" with the step
    when inf/NaN appeared).
    """
    import keras

    gain, activation, T = params["gain"], params["activation"], params["T"]
    s = settings
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes
    runner.set_seed(s["seed"])
    x_eval, y_eval = make_task(
        s["eval_samples"], T, s["seed"] + 1, s["input_scale"], s["target_steps"]
    )
    model = get_model(activation, T, s)
    initialize(model, gain, s["seed"], s["learning_rate"])
    init, init_profiles = measure(model, x_eval, y_eval, activation)
    result = {f"init_{k}": v for k, v in init.items()}
    profiles = {f"init_{k}": v for k, v in init_profiles.items()}
    status, diverged_step, phase = "ok", None, None
    history = {}
    if not init["finite"]:
        status, diverged_step, phase = "diverged", 0, "init"
    elif s["train_steps"] > 0:
        spe = min(s["steps_per_epoch"], s["train_steps"])
        epochs = max(1, s["train_steps"] // spe)
        steps = epochs * spe
        x_train, y_train = make_task(
            steps * s["batch_size"], T, s["seed"] + 2, s["input_scale"],
            s["target_steps"],
        )
        monitor = _divergence_monitor()
        callbacks = runner.standard_callbacks(
            config_dir,
            grad_batch=(x_eval, y_eval),  # same shape as `measure`: no retrace
            every_n_batches=s["grad_every_n_batches"],
        )
        # The sweep's own artefacts are the measurements: no checkpoint.
        callbacks = [c for c in callbacks if not isinstance(c, keras.callbacks.ModelCheckpoint)]
        fit = model.fit(
            x_train,
            y_train,
            batch_size=s["batch_size"],
            epochs=epochs,
            steps_per_epoch=spe,
            shuffle=False,
            validation_data=(x_eval, y_eval),
            callbacks=[monitor] + callbacks,
            verbose=0,
        )
        history = fit.history
        weights_finite = all(
            np.all(np.isfinite(w.value.numpy())) for w in model.weights
        )
        if monitor.diverged_at is not None or not weights_finite:
            status, phase = "diverged", "train"
            diverged_step = monitor.diverged_at or monitor.step
        result["train_steps_done"] = monitor.step
    if status == "ok" and s["train_steps"] > 0:
        trained, trained_profiles = measure(model, x_eval, y_eval, activation)
        result.update({f"trained_{k}": v for k, v in trained.items()})
        profiles.update({f"trained_{k}": v for k, v in trained_profiles.items()})
        result["final_train_loss"] = history.get("loss", [float("nan")])[-1]
        result["final_eval_loss"] = history.get("val_loss", [float("nan")])[-1]
        if not trained["finite"]:
            status, diverged_step, phase = "diverged", monitor.step, "trained-gradients"
    # The trivial predictor's loss: the target's variance.
    result["target_variance"] = float(np.var(y_eval))
    np.savez(os.path.join(config_dir, "norms.npz"), **profiles)
    result["status"] = status
    result["diverged_step"] = diverged_step
    result["diverged_phase"] = phase
    return result


# ---------------------------------------------------------------------------
# The sweep, tables and plots
# ---------------------------------------------------------------------------


def configurations(config):
    """`[(config_id, params)]` in table order: T, activation, gain."""
    out = []
    for T in config.length_list():
        for activation in config.activation_list():
            for gain in config.gain_list():
                params = {"activation": activation, "gain": gain, "T": T}
                cid = sweep.make_config_id(
                    params, ["activation", "gain", "T"],
                    {"activation": "", "gain": "g", "T": "T"},
                )
                out.append((cid, params))
    return out


METRIC_NAMES = (
    "init_factor",
    "init_theory",
    "init_theory_rms",
    "init_jacobian_factor",
    "init_horizon",
    "init_mean_abs_dact",
    "trained_factor",
    "trained_theory",
    "trained_spectral_radius",
    "trained_horizon",
    "final_eval_loss",
)


def flatten(record):
    """One table row from a sweep record."""
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


def _fmt(value, digits=3):
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _cell_factor(row, phase):
    """Measured factor of a phase, or what happened instead."""
    status = row["status"]
    if status == "crashed":
        return "crashed"
    value = row.get(f"{phase}_factor")
    if _finite(value):
        return _fmt(value)
    if phase == "init" and row.get("diverged_phase") == "init":
        jac = row.get("init_jacobian_factor")
        extra = f" (jac {_fmt(jac)})" if _finite(jac) else ""
        return f"overflow@0{extra}"
    if phase == "trained" and status == "diverged":
        return f"diverged@{row.get('diverged_step')}"
    return "–"


def crossing_gain(gains, factors):
    """Gain where log(factor) crosses 0, interpolated in log-log (or None)."""
    pts = [(g, f) for g, f in zip(gains, factors) if _finite(f) and f > 0]
    for (g0, f0), (g1, f1) in zip(pts, pts[1:]):
        l0, l1 = math.log(f0), math.log(f1)
        if l0 == 0:
            return g0
        if l0 < 0 <= l1 or l1 <= 0 < l0:
            w = -l0 / (l1 - l0)
            return math.exp(math.log(g0) + w * (math.log(g1) - math.log(g0)))
    return None


def summarize(rows, config):
    """Per (T, activation): max factors, where the factor crosses 1, and how
    well the theory predicts the measured factor."""
    out = []
    for T in config.length_list():
        for activation in config.activation_list():
            sel = sorted(
                (r for r in rows if r["T"] == T and r["activation"] == activation),
                key=lambda r: r["gain"],
            )
            if not sel:
                continue
            gains = [r["gain"] for r in sel]
            entry = {"T": T, "activation": activation}
            for phase in ("init", "trained"):
                # Where float32 overflowed at init, the float64 Jacobian
                # factor stands in for the measured one.
                factors = [
                    r.get(f"{phase}_factor")
                    if _finite(r.get(f"{phase}_factor"))
                    else r.get(f"{phase}_jacobian_factor")
                    if phase == "init" and r.get("diverged_phase") == "init"
                    else None
                    for r in sel
                ]
                finite = [f for f in factors if _finite(f)]
                entry[f"{phase}_max_factor"] = max(finite) if finite else None
                entry[f"{phase}_crossing_gain"] = crossing_gain(gains, factors)
                for theory in ("theory", "theory_rms"):
                    errs = [
                        abs(r[f"{phase}_factor"] / r[f"{phase}_{theory}"] - 1)
                        for r in sel
                        if _finite(r.get(f"{phase}_factor"))
                        and _finite(r.get(f"{phase}_{theory}"))
                        and r[f"{phase}_{theory}"] > 0
                    ]
                    entry[f"{phase}_{theory}_median_rel_err"] = (
                        float(np.median(errs)) if errs else None
                    )
            entry["diverged"] = [
                {"gain": r["gain"], "step": r.get("diverged_step"), "phase": r.get("diverged_phase")}
                for r in sel
                if r["status"] == "diverged"
            ]
            entry["crashed"] = [r["gain"] for r in sel if r["status"] == "crashed"]
            out.append(entry)
    return out


def markdown(rows, summary, config, counts, wall_s):
    """results.md: factor tables (init, trained) and the full details."""
    lines = [
        "# Gradient dynamics of vanilla RNNs",
        "",
        f"{len(rows)} configurations ({counts['ok']} ok, {counts['diverged']} "
        f"diverged, {counts['crashed']} crashed; {counts['skipped']} reused "
        f"from an earlier start), {wall_s:.0f} s this start, "
        f"{sum(r.get('wall_s') or 0 for r in rows):.0f} s in configurations. "
        f"Units {config.units}, "
        f"{config.train_steps} Adam steps (lr {config.learning_rate:g}, "
        f"batch {config.batch_size}), loss (MSE) at the last step only, "
        f"gradients measured on {config.eval_samples} sequences.",
        "",
        "Cells: measured per-step factor of ||dL/dh_t|| (fit_decay_factor; "
        "< 1 vanishing, > 1 exploding) / theory rho * mean|act'(z)| "
        "[/ rho * rms act'(z)]. `overflow@0`: float32 inf/NaN at "
        "initialisation (jac: float64 Jacobian factor); `diverged@k`: "
        "training loss inf/NaN at step k.",
    ]
    activations = config.activation_list()
    for T in config.length_list():
        for phase, title in (("init", "at initialisation"), ("trained", "after training")):
            lines += ["", f"## T = {T}, {title}", ""]
            lines.append("| gain | " + " | ".join(activations) + " |")
            lines.append("|---:|" + "---|" * len(activations))
            for gain in config.gain_list():
                cells = []
                for activation in activations:
                    row = next(
                        (r for r in rows if r["T"] == T and r["activation"] == activation
                         and r["gain"] == gain),
                        None,
                    )
                    if row is None:
                        cells.append("")
                        continue
                    text = _cell_factor(row, phase)
                    theory = row.get(f"{phase}_theory")
                    theory_rms = row.get(f"{phase}_theory_rms")
                    if _finite(row.get(f"{phase}_factor")) and _finite(theory):
                        text += f" / {_fmt(theory)}"
                        if activation in ("relu", "tanh") and _finite(theory_rms):
                            text += f" [{_fmt(theory_rms)}]"
                    cells.append(text)
                lines.append(f"| {gain:g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Summary per activation and length",
        "",
        "Max factor and crossing gain at init include the float64 Jacobian "
        "factor of configurations that overflowed float32.",
        "",
        "| T | activation | max factor init | factor = 1 at gain (init) | "
        "max factor trained | median rel. err. theory mean / rms (init) | diverged |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for e in summary:
        div = ", ".join(f"g={d['gain']:g}@{d['step']}" for d in e["diverged"]) or "none"
        lines.append(
            f"| {e['T']} | {e['activation']} | {_fmt(e['init_max_factor'])} | "
            f"{_fmt(e['init_crossing_gain'])} | {_fmt(e['trained_max_factor'])} | "
            f"{_fmt(e['init_theory_median_rel_err'], 2)} / "
            f"{_fmt(e['init_theory_rms_median_rel_err'], 2)} | {div} |"
        )
    lines += [
        "",
        "## All configurations",
        "",
        "| config | status | init factor | jac factor | rho·mean|act'| | "
        "mean|act'| | horizon | trained factor | trained rho | trained mean|act'| "
        "| trained horizon | eval loss (var y) | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        status = r["status"] + (
            f"@{r['diverged_step']}" if r["status"] == "diverged" else ""
        )
        if r["status"] == "crashed":
            status += f": {r.get('error')}"
        lines.append(
            f"| {r['config_id']} | {status} | {_fmt(r.get('init_factor'))} | "
            f"{_fmt(r.get('init_jacobian_factor'))} | {_fmt(r.get('init_theory'))} | "
            f"{_fmt(r.get('init_mean_abs_dact'))} | {_fmt(r.get('init_horizon'))} | "
            f"{_fmt(r.get('trained_factor'))} | {_fmt(r.get('trained_spectral_radius'))} | "
            f"{_fmt(r.get('trained_mean_abs_dact'))} | {_fmt(r.get('trained_horizon'))} | "
            f"{_fmt(r.get('final_eval_loss'))} ({_fmt(r.get('target_variance'))}) | "
            f"{_fmt(r.get('wall_s'), 2)} |"
        )
    return "\n".join(lines) + "\n"


def _load_profiles(workdir, config_id):
    path = os.path.join(sweep.config_dir_of(str(workdir), config_id), "norms.npz")
    if not os.path.exists(path):
        return {}
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def plot_norms(rows, workdir, config, T, png):
    """Mean ||dL/dh_t|| vs steps back: rows init/trained, one panel per
    activation, one curve per gain."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    activations = config.activation_list()
    gains = config.gain_list()
    cmap = colormaps["viridis"]
    lg = np.log(gains)
    span = (lg.max() - lg.min()) or 1.0
    fig = Figure(figsize=(4.0 * len(activations), 7.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(activations), squeeze=False)
    for i, phase in enumerate(("init", "trained")):
        for j, activation in enumerate(activations):
            ax = axes[i][j]
            drawn = False
            for gain in gains:
                row = next(
                    (r for r in rows if r["T"] == T and r["activation"] == activation
                     and r["gain"] == gain),
                    None,
                )
                color = cmap(0.9 * (math.log(gain) - lg.min()) / span)
                label = f"g={gain:g}"
                if row is None:
                    continue
                prof = _load_profiles(workdir, row["config_id"]).get(f"{phase}_mean_norms")
                factor = row.get(f"{phase}_factor")
                if prof is None or not np.all(np.isfinite(prof)):
                    # Not measured (diverged earlier, crashed) or overflowed.
                    if row["status"] == "diverged":
                        label += f" (diverged@{row.get('diverged_step')}"
                        jac = row.get(f"{phase}_jacobian_factor")
                        if row.get("diverged_phase") == "init" and _finite(jac):
                            label += f"; float64 Jacobian ×{jac:.3g}/step"
                        label += ")"
                    elif row["status"] == "crashed":
                        label += " (crashed)"
                    ax.plot([], [], color=color, ls=":", label=label)
                    continue
                # Zeros: float32 underflow (or dead relu units); not drawn.
                ok = prof > 0
                if not ok.any():
                    ax.plot([], [], color=color, ls=":", label=label + " (all 0)")
                    continue
                if _finite(factor):
                    label += f", ×{factor:.3g}/step"
                if not ok.all():
                    label += " (→0: underflow)"
                steps_back = np.arange(prof.size - 1, -1, -1)
                ax.plot(steps_back[ok], prof[ok], color=color, lw=1.3, label=label)
                drawn = True
            if drawn:
                ax.set_yscale("log")
            ax.set_title(f"{activation}, T={T}, {'at init' if phase == 'init' else 'trained'}")
            ax.set_xlabel("steps back from the last step")
            ax.set_ylabel("mean ||dL/dh_t||")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.savefig(png, dpi=90)
    return png


def plot_factors(rows, config, png):
    """Fitted factor vs gain (log-log): measured at init and after training,
    the theory rho * mean|act'| (and RMS variant), and factor = 1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    activations = config.activation_list()
    lengths = config.length_list()
    gains = np.asarray(config.gain_list())
    fig = Figure(
        figsize=(4.0 * len(activations), 3.6 * len(lengths) + 0.8), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(lengths), len(activations), squeeze=False)
    legend = {}
    for i, T in enumerate(lengths):
        for j, activation in enumerate(activations):
            ax = axes[i][j]
            sel = sorted(
                (r for r in rows if r["T"] == T and r["activation"] == activation),
                key=lambda r: r["gain"],
            )

            def series(key, rows_=sel):
                return (
                    np.asarray([r["gain"] for r in rows_ if _finite(r.get(key))]),
                    np.asarray([r[key] for r in rows_ if _finite(r.get(key))]),
                )

            ax.axhline(1.0, color="k", lw=1, ls="--", label="factor = 1")
            ax.plot(gains, gains, color="0.6", lw=1, label="rho (linear)")
            for key, style, label in (
                ("init_theory", dict(color="C0", ls="-", lw=1.5), "theory ρ·mean|act'| (init)"),
                ("init_theory_rms", dict(color="C0", ls=":", lw=1.5), "ρ·rms act' (init)"),
                ("trained_theory", dict(color="C3", ls="-", lw=1.0, alpha=0.6), "theory (trained)"),
                ("init_factor", dict(color="C0", marker="o", ls="none"), "measured (init)"),
                ("trained_factor", dict(color="C3", marker="x", ls="none"), "measured (trained)"),
            ):
                gx, fy = series(key)
                if gx.size:
                    ax.plot(gx, fy, label=label, **style)
            gx, fy = series("init_jacobian_factor", [
                r for r in sel if r.get("diverged_phase") == "init"
            ])
            if gx.size:
                ax.plot(gx, fy, color="C1", marker="^", ls="none",
                        label="float64 Jacobian (float32 overflow)")
            for r in sel:
                if r["status"] == "diverged" and r.get("diverged_phase") != "init":
                    ax.axvline(r["gain"], color="C3", lw=0.8, alpha=0.3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(gains)
            ax.set_xticklabels([f"{g:g}" for g in gains], fontsize=7)
            ax.minorticks_off()
            lo, hi = ax.get_ylim()
            ticks = [t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5)
                     if lo <= t <= hi]
            ax.set_yticks(ticks)
            ax.set_yticklabels([f"{t:g}" for t in ticks], fontsize=7)
            ax.set_xlabel("recurrent gain g (= spectral radius at init)")
            ax.set_ylabel("per-step factor")
            ax.set_title(f"{activation}, T={T}")
            ax.grid(True, which="major", alpha=0.3)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()), list(legend), loc="outside lower center",
        ncols=4, fontsize=8,
    )
    fig.savefig(png, dpi=90)
    return png


def train_and_evaluate(config, workdir):
    """Runs (or resumes) the sweep, writes results.json/.md and plots."""
    start = time.perf_counter()
    settings = config.fixed_settings()
    configs = configurations(config)
    fn = functools.partial(run_config, settings=settings)
    records = sweep.run_sweep(
        str(workdir),
        configs,
        fn,
        workers=config.workers,
        threads=config.threads or None,
        metric_names=METRIC_NAMES,
        progress=config.verbose > 0,
        label="dynamics",
    )
    wall_s = time.perf_counter() - start
    rows = [flatten(r) for r in records]
    counts = sweep.summarize(records)
    summary = summarize(rows, config)
    plots = runner.plots_dir(workdir)
    pngs = [
        str(plot_norms(rows, workdir, config, T, plots / f"norms_vs_steps_back_T{T}.png"))
        for T in config.length_list()
    ]
    pngs.append(str(plot_factors(rows, config, plots / "factor_vs_gain.png")))
    results = {
        "experiment": "dynamics",
        "counts": counts,
        "wall_s": wall_s,
        # wall_s: this start; configs_wall_s: all configurations' own times,
        # including those finished by an earlier start of a resumed sweep.
        "configs_wall_s": sum(r.get("wall_s") or 0.0 for r in records),
        "rows": rows,
        "summary": summary,
        "plots": pngs,
    }
    md = markdown(rows, summary, config, counts, wall_s)
    return sweep.save_report(workdir, results, md, config.verbose)


def main(argv=None):
    return sweep.run_sweep_main(
        train_and_evaluate, Config, argv, configurations=configurations
    )


if __name__ == "__main__":
    main()
