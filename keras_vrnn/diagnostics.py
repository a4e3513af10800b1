"""Gradient diagnostics: per-timestep BPTT gradient norms, and their causes.

Effect: `timestep_gradient_norms`, the exact `||dL/dh_t||_2` of the compiled
loss at every step of every vanilla RNN layer (one forward and one backward
pass, zero probes: `keras_vrnn.probe`). Causes, from the per-step Jacobian
`dh_s/dh_{s-1} = diag(act'(z_s)) W_hh^T`: `recurrent_kernel_stats` (spectral
radius and norm of `W_hh`), `state_jacobian_norms` (`||dh_T/dh_t||_2` on real
data) and `lyapunov_exponents` (asymptotic log-growth rates). Summaries of a
norm profile: `fit_decay_factor` and `effective_horizon`. Layers are found
as `rnn_layers` lists them.
"""

import contextlib
import functools
import logging
import weakref

import keras
import numpy as np

from keras_vrnn import fused
from keras_vrnn import initializers as vrnn_initializers
from keras_vrnn import probe as probe_lib
from keras_vrnn.cell import VanillaRNNCell

logger = logging.getLogger("keras_vrnn")

__all__ = [
    "effective_horizon",
    "fit_decay_factor",
    "lyapunov_exponents",
    "recurrent_kernel_stats",
    "rnn_layers",
    "state_jacobian_norms",
    "timestep_gradient_norms",
]


# ---------------------------------------------------------------------------
# Finding the layers
# ---------------------------------------------------------------------------


def _is_vanilla_rnn(layer):
    return isinstance(layer, keras.layers.RNN) and isinstance(
        layer.cell, VanillaRNNCell
    )


def _is_stacked_vanilla(layer):
    cells = getattr(getattr(layer, "cell", None), "cells", None)
    return isinstance(layer, keras.layers.RNN) and any(
        isinstance(c, VanillaRNNCell) for c in (cells or ())
    )


def _children(layer):
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:  # not a Keras layer
        return list(getattr(layer, "layers", []) or [])


def rnn_layers(model):
    """Lists the vanilla RNN layers of a model, in call-graph order.

    Walks `model` and every nested model or layer for `VanillaRNN`,
    `keras.layers.RNN(VanillaRNNCell)` and `Bidirectional` over either (two
    entries, `"<name>/forward"` and `"<name>/backward"`); an RNN over
    `StackedRNNCells` cannot be probed and is skipped with a warning.
    Returns `(key, layer)` pairs; keys are layer names, made unique with the
    path of enclosing layers when two layers share a name.
    """
    found = []  # (path tuple, suffix or None, layer)
    seen = set()

    def visit(layer, path):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        here = path + (layer.name,)
        if isinstance(layer, keras.layers.Bidirectional):
            if _is_vanilla_rnn(layer.forward_layer) and _is_vanilla_rnn(
                layer.backward_layer
            ):
                found.append((here, "forward", layer.forward_layer))
                found.append((here, "backward", layer.backward_layer))
                return
        if _is_vanilla_rnn(layer):
            found.append((here, None, layer))
            return
        if _is_stacked_vanilla(layer):
            logger.warning(
                "keras_vrnn: layer '%s' is a keras.layers.RNN over a list of "
                "cells (StackedRNNCells), which gradient probes do not "
                "support; it is skipped. Use one RNN layer per cell.",
                layer.name,
            )
            return
        for child in _children(layer):
            visit(child, here)

    visit(model, ())
    names = [p[-1] for p in dict.fromkeys(p for p, _, _ in found)]
    result = []
    for path, suffix, layer in found:
        # The outermost model's name is never part of a key.
        key = path[-1] if names.count(path[-1]) == 1 else "/".join(path[1:] or path)
        if suffix is not None:
            key = f"{key}/{suffix}"
        result.append((key, layer))
    return result


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def check_positive_int(name, value):
    """`value` as an int, once it is a positive int (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}.")
    return int(value)


def check_bool(name, value):
    """`value`, once it is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}.")
    return value


def _leaves(structure):
    return [a for a in keras.tree.flatten(structure) if a is not None]


def _batch_size(name, structure):
    sizes = set()
    for leaf in _leaves(structure):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"`{name}` must be batched arrays (leading batch axis). "
                f"Received: {name} with a scalar of type {type(leaf).__name__}."
            )
        sizes.add(shape[0])
    if len(sizes) > 1:
        raise ValueError(f"All arrays in `{name}` must have the same batch size. "
                         f"Received: {name} with batch sizes {sorted(sizes)}.")
    return sizes.pop() if sizes else None


def check_batch(x, y, sample_weight=None):
    """Validates `(x, y, sample_weight)` and returns the batch size."""
    if x is None or not _leaves(x):
        raise ValueError(f"`x` must hold input arrays. Received: x={x!r}.")
    sizes = {"x": _batch_size("x", x), "y": _batch_size("y", y),
             "sample_weight": _batch_size("sample_weight", sample_weight)}
    if len({s for s in sizes.values() if s is not None}) > 1:
        details = ", ".join(f"{k} batch size {v}" for k, v in sizes.items() if v is not None)
        raise ValueError("x, y and sample_weight must have the same number of "
                         f"samples. Received: {details}.")
    if sizes["x"] == 0:
        raise ValueError("`x` must hold at least one sample. Received: batch size 0.")
    return sizes["x"]


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} needs a compiled keras.Model. Received: model of "
                         f"type {type(model).__name__}.")
    if not getattr(model, "compiled", False):
        raise ValueError(f"{what} differentiates the model's compiled loss, but the "
                         f"model is not compiled. Received: model '{model.name}' (not "
                         "compiled). Call model.compile(loss=...) first.")


def _entries(model, what, required=True):
    """`rnn_layers(model)`, once `model` is a Keras layer (and, if
    `required`, has a vanilla RNN layer)."""
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"{what} needs a Keras model or layer. Received: model "
                         f"of type {type(model).__name__}.")
    entries = rnn_layers(model)
    if required and not entries:
        raise ValueError(
            f"{what} found no keras_vrnn.VanillaRNN or keras.layers.RNN("
            "keras_vrnn.VanillaRNNCell) layer (also looked inside Bidirectional "
            f"wrappers and nested models). Received: model '{model.name}' "
            f"({type(model).__name__}) with layers {[c.name for c in _children(model)]}."
        )
    return entries


def _to_tensor(a):
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        # As Keras' data adapters do: float arrays are fed as floatx.
        a = a.astype(keras.config.floatx(), copy=False)
    return None if a is None else keras.ops.convert_to_tensor(a)


# ---------------------------------------------------------------------------
# Per-timestep gradient norms
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _attached(entries, make_source, **options):
    """Attaches `make_source(key, layer)` (see `probe.attach`) to each layer
    of `entries` ((key, layer) pairs) for the duration."""
    with contextlib.ExitStack() as stack:
        for key, layer in entries:
            stack.enter_context(probe_lib.attach(layer, make_source(key, layer), **options))
        yield


def _row_norms(g):
    """||g||_2 over the last axis, float64. Float32 squares in float64 can
    neither overflow nor underflow (1e-30 keeps its norm); float64 rows are
    rescaled by their maximum first."""
    if g.dtype != np.float64:
        return np.sqrt(np.sum(np.square(g.astype(np.float64)), axis=-1))
    with np.errstate(all="ignore"):
        scale = np.max(np.abs(g), axis=-1)
        safe = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        norms = safe * np.sqrt(np.sum(np.square(g / safe[..., None]), axis=-1))
    norms = np.where(np.isinf(scale), np.inf, norms)
    return np.where(np.isnan(g).any(axis=-1), np.nan, norms)


def _compute_loss(model, x, y, y_pred, sample_weight):
    kwargs = {"training": False} if getattr(model, "_compute_loss_has_training_arg", True) else {}
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs)


def _state_variables(model):
    """Every variable a measurement reads: weights, states, metrics."""
    return list(model.variables) + list(model.metrics_variables)


def _unscale_for_distribution(loss):
    """Undoes Keras' `1 / num_replicas_in_sync` loss scaling of the current
    `tf.distribute` strategy: a measurement runs once on the whole batch."""
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * tf.cast(replicas, loss.dtype) if replicas > 1 else loss


def _is_step_axis(a, timesteps, rank):
    return a is not None and len(a.shape) >= rank and a.shape[1] == timesteps


def _last_step(y, y_pred, sample_weight, timesteps):
    """`(y, y_pred, sample_weight)` cut to the last time step: when an output
    has a time axis (rank >= 3, axis 1 of length `timesteps`), every array
    with that axis (rank >= 2 for targets and weights) keeps `[:, -1:]`."""
    if not any(_is_step_axis(a, timesteps, 3) for a in keras.tree.flatten(y_pred)):
        return y, y_pred, sample_weight  # the output is the last step only

    def cut(rank):
        return lambda a: a[:, -1:] if _is_step_axis(a, timesteps, rank) else a

    y_pred = keras.tree.map_structure(cut(3), y_pred)
    y, sample_weight = keras.tree.map_structure(cut(2), (y, sample_weight))
    return y, y_pred, sample_weight


def _probed_loss(model, group, state, data, direct, last_step_only, make):
    """`(loss, {name: probe})` of one forward pass with the probe
    `make(name, zeros)` on every call of each layer of `group` (`name`: the
    key, `"<key>/call_<i>"` for later calls), in a `StatelessScope` (with
    the values `state` of `_state_variables`, if given)."""
    x, y, sample_weight = data
    records = {key: {} for key, _ in group}

    def make_source(key, layer):
        def source(sequences, initial_state, mask):
            dtype = keras.backend.standardize_dtype(sequences.dtype)
            shape = keras.ops.shape(sequences)[:2] + (layer.cell.units,)
            zeros = keras.ops.zeros(
                shape, dtype if "float" in dtype else layer.compute_dtype)
            name = f"{key}/call_{len(records[key])}" if records[key] else key
            records[key][name] = make(name, zeros)
            return records[key][name]

        return source

    mapping = None if state is None else list(zip(_state_variables(model), state))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        with _attached(group, make_source, direct_only=direct, weight_gradients=False):
            y_pred = model(x, training=False)
        probes = {n: p for calls in records.values() for n, p in calls.items()}
        if last_step_only and probes:
            timesteps = next(iter(probes.values())).shape[1]
            y, y_pred, sample_weight = _last_step(y, y_pred, sample_weight, timesteps)
        loss = _compute_loss(model, x, y, y_pred, sample_weight)
    if keras.backend.backend() == "tensorflow":
        loss = _unscale_for_distribution(loss)
    return loss, probes


def _probe_gradients(run):
    """`{name: dloss/dprobe}` of `run(make)` (see `_probed_loss`): one
    forward and one backward pass, by the backend's own autodiff; only the
    probes are differentiated."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            loss, probes = run(lambda name, p: (tape.watch(p), p)[1])
        return dict(zip(probes, tape.gradient(
            loss, list(probes.values()), unconnected_gradients="zero")))
    if backend == "jax":
        import jax

        # A first pass finds the probes (under `jax.jit`, XLA drops it).
        probes = run(lambda name, p: p)[1]
        grads = jax.grad(lambda ps: run(lambda name, _: ps[name])[0])(probes)
        return {name: grads[name] for name in probes}  # in call order
    import torch

    with torch.enable_grad():
        loss, probes = run(lambda name, p: p.requires_grad_())
        grads = torch.autograd.grad(loss, list(probes.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(probes.items(), grads)}


def _make_norms_function(model, entries, direct, last_step_only):
    """`fn(x, y, sample_weight) -> {name: gradient}`, compiled by the backend
    (`tf.function`, `jax.jit`; eager on torch) as `fn.compiled`."""
    model_ref = weakref.ref(model)
    # Total: one pass probes every layer (zero probes do not interact).
    # Direct: one pass per layer, so only that layer's recurrence is cut.
    groups = [[e] for e in entries] if direct and len(entries) > 1 else [entries]
    names = []

    def gradients(state, x, y, sample_weight):
        grads = {}
        for group in groups:
            grads.update(_probe_gradients(functools.partial(
                _probed_loss, model_ref(), group, state, (x, y, sample_weight),
                direct, last_step_only)))
        names[:] = grads
        return list(grads.values())

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(gradients)
    elif backend == "jax":
        import jax

        compiled = jax.jit(gradients)
    else:
        compiled = gradients

    def fn(x, y, sample_weight):
        # JAX reads the variables' values as arguments (a jitted function
        # would otherwise keep those of its first trace).
        state = None
        if backend == "jax":
            state = [v.value for v in _state_variables(model_ref())]
        return dict(zip(names, compiled(state, x, y, sample_weight)))

    fn.compiled = compiled
    return fn


# model -> {(direct, last_step_only, layer ids): norms function}, and model ->
# the compiled loss those functions traced; weak so models can be freed.
_NORMS_FUNCTIONS = weakref.WeakKeyDictionary()
_TRACED_LOSS = weakref.WeakKeyDictionary()


def _norms_function(model, entries, direct, last_step_only=False):
    # A recompile makes a new CompileLoss: the traced functions computed the
    # old loss, so they are dropped (an identity check, as ids can be reused).
    compiled_loss = getattr(model, "_compile_loss", None)
    if model not in _TRACED_LOSS or _TRACED_LOSS[model][0] is not compiled_loss:
        _TRACED_LOSS[model] = (compiled_loss,)
        _NORMS_FUNCTIONS[model] = {}
    cache = _NORMS_FUNCTIONS[model]
    layer_ids = tuple((k, id(layer)) for k, layer in entries)
    key = (bool(direct), bool(last_step_only), layer_ids)
    if key not in cache:
        cache[key] = _make_norms_function(model, entries, direct, last_step_only)
    return cache[key]


def _to_numpy(g):
    if keras.backend.standardize_dtype(g.dtype) not in ("float32", "float64"):
        g = keras.ops.cast(g, "float32")  # float16 and bfloat16 exactly
    return keras.ops.convert_to_numpy(g)


def timestep_gradient_norms(
    model, x, y, sample_weight=None, direct=False, last_step_only=False
):
    """Per-timestep BPTT gradient norms `||dL/dh_t||_2` of every RNN layer.

    `L` is the compiled loss as Keras computes it (`model.compute_loss(...,
    training=False)`, reduction and regularization included), `h_t` a
    layer's hidden state at step t, the gradient the *total* one (full
    BPTT). Zero probes on the hidden states (`keras_vrnn.probe`) are
    differentiated by the backend's autodiff, one forward and one backward
    pass in a `tf.function` or `jax.jit` function (eager on torch) cached per
    model and compiled loss, on the fused path when the layer takes it.

    With `last_step_only=True` the loss is `l_T`, the last step's alone
    (the credit the final prediction gives each earlier state): for an
    output with a time axis (rank >= 3, axis 1 of length T) the compiled
    loss of `y_pred[:, -1:]` against `y[:, -1:]` (targets and sample
    weights with that axis cut likewise); for a last-step output, `L`.

    Layers are those of `rnn_layers`, indexed by input time; masked steps
    report 0; a layer called more than once gets `"<name>"`,
    `"<name>/call_1"`, ... The model is left unchanged (metric and
    stateful-RNN updates are not applied). Under a `tf.distribute` strategy,
    call it outside replica context (as Keras callbacks are): the norms are
    those without a strategy (Keras' per-replica loss scaling is undone).

    Args:
        model: A compiled `keras.Model` with at least one vanilla RNN layer.
        x: Input batch (array, or a structure of arrays).
        y: Target batch, as passed to `model.fit`.
        sample_weight: Optional sample weights, as passed to `model.fit`.
        direct: If `True`, the direct part `d+L/dh_t` only (paths that do not
            pass through `h_{t+1}` of the same layer; other layers keep
            their recurrence), one forward and backward pass per layer.
        last_step_only: If `True`, differentiate `l_T` instead of `L`.

    Returns:
        A dict mapping each layer key to a float64 NumPy array
        `(batch, timesteps)` of gradient norms.

    Raises:
        ValueError: The model is not compiled, contains no vanilla RNN
            layer, or x, y and sample_weight have different batch sizes.

    Example:

    ```python
    norms = keras_vrnn.timestep_gradient_norms(model, x[:64], y[:64])
    norms["vanilla_rnn"].shape  # (64, 100)
    credit = keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only=True)
    keras_vrnn.fit_decay_factor(credit["vanilla_rnn"])  # per-step decay
    ```
    """
    _check_model(model, "timestep_gradient_norms")
    check_bool("direct", direct)
    check_bool("last_step_only", last_step_only)
    check_batch(x, y, sample_weight)
    entries = _entries(model, "timestep_gradient_norms")
    x, y, sample_weight = keras.tree.map_structure(_to_tensor, (x, y, sample_weight))
    if not model.built:
        model(x, training=False)  # build eagerly, outside the compiled function
    fn = _norms_function(model, entries, direct, last_step_only)
    return {key: _row_norms(_to_numpy(g)) for key, g in fn(x, y, sample_weight).items()}


# ---------------------------------------------------------------------------
# Causes: the recurrent kernel and the state Jacobians
# ---------------------------------------------------------------------------


def _variable_numpy(variable):
    """A Keras variable's value as a float64 NumPy array."""
    return np.asarray(variable.numpy(), np.float64)


def _cell_of(layer, what):
    if isinstance(layer, VanillaRNNCell):
        return layer
    if _is_vanilla_rnn(layer):
        return layer.cell
    if isinstance(layer, keras.layers.Bidirectional):
        raise ValueError(
            f"{what} takes one direction at a time. Received: Bidirectional "
            f"layer '{layer.name}'; pass its .forward_layer or .backward_layer."
        )
    raise ValueError(
        f"{what} needs a keras_vrnn.VanillaRNN, a keras.layers.RNN wrapping a "
        "VanillaRNNCell, or a VanillaRNNCell. Received: "
        f"{type(layer).__name__} '{getattr(layer, 'name', layer)}'."
    )


def recurrent_kernel_stats(layer):
    """Spectral radius and largest singular value of a layer's `W_hh`.

    BPTT multiplies the gradient once per step by `diag(act'(z_t)) W_hh^T`:
    for a linear RNN the norms go like `spectral_radius ** k` over `k` steps
    in the long run, and transiently up to `max_singular_value ** k`.
    `layer`: a built VanillaRNN, RNN(VanillaRNNCell) or VanillaRNNCell.
    Returns float64 NumPy scalars `"spectral_radius"` (largest |eigenvalue|)
    and `"max_singular_value"` (spectral norm), NaN for a non-finite kernel.
    """
    cell = _cell_of(layer, "recurrent_kernel_stats")
    if not cell.built:
        raise ValueError(
            "recurrent_kernel_stats needs a built layer (call it on data or "
            f"build the model first). Received: unbuilt layer '{layer.name}'."
        )
    w = _variable_numpy(cell.recurrent_kernel)
    if not np.all(np.isfinite(w)):
        nan = np.float64(np.nan)
        return {"spectral_radius": nan, "max_singular_value": nan}
    return {
        "spectral_radius": np.float64(vrnn_initializers.spectral_radius(w)),
        "max_singular_value": np.float64(vrnn_initializers.largest_singular_value(w)),
    }


def _capturing(entries, captured):
    """Records the first call's (sequences, h0, mask) of each layer of
    `entries` in `captured[key]` (NumPy); attaches no probe."""

    def make_source(key, layer):
        def source(sequences, initial_state, mask):
            h0 = initial_state
            if isinstance(h0, (list, tuple)):
                h0 = h0[0]
            m = mask[0] if isinstance(mask, (list, tuple)) else mask
            captured.setdefault(key, (
                keras.ops.convert_to_numpy(sequences),
                keras.ops.convert_to_numpy(h0),
                None if m is None else keras.ops.convert_to_numpy(m).astype(bool),
            ))
            return None

        return source

    return _attached(entries, make_source)


_NUMPY_ACTIVATIONS = {
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "sigmoid": (lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)), lambda z, a: a * (1.0 - a)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(np.float64)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z)),
}


def _activation_pair(activation):
    """(act, act') as float64 NumPy functions of z (act' also gets act(z))."""
    name = fused.activation_name(activation)
    if name is not None:
        return _NUMPY_ACTIVATIONS[name]

    def run(z, make):  # act' is the gradient of sum(act(z)), elementwise
        z = make("z", keras.ops.convert_to_tensor(z))
        return keras.ops.sum(activation(z)), {"z": z}

    def act(z):
        return _to_numpy(activation(keras.ops.convert_to_tensor(z))).astype(np.float64)

    def dact(z, a):
        grad = _probe_gradients(functools.partial(run, z))["z"]
        return _to_numpy(grad).astype(np.float64)

    return act, dact


def _derivatives(layer, sequences, h0, mask):
    """`(act'(z_t), W_hh)` in float64: `(samples, T, units)` in processing
    order, NaN at masked (identity) steps, and the recurrent kernel."""
    cell = layer.cell
    kernel = _variable_numpy(cell.kernel)
    recurrent = _variable_numpy(cell.recurrent_kernel)
    bias = _variable_numpy(cell.bias) if cell.bias is not None else 0.0
    act, dact = _activation_pair(cell.activation)
    xs = np.asarray(sequences, np.float64)
    m = None if mask is None else np.asarray(mask, bool)
    if layer.go_backwards:
        xs = xs[:, ::-1]
        m = None if m is None else m[:, ::-1]
    samples, timesteps, _ = xs.shape
    units = recurrent.shape[0]
    projected = xs @ kernel + bias
    h = np.asarray(h0, np.float64).reshape(samples, units)
    derivatives = np.empty((samples, timesteps, units))
    for t in range(timesteps):
        z = projected[:, t] + h @ recurrent
        a = act(z)
        d = dact(z, a)
        if m is not None:
            keep = m[:, t, None]
            a = np.where(keep, a, h)
            d = np.where(keep, d, np.nan)  # NaN marks "identity step"
        derivatives[:, t] = d
        h = a
    return derivatives, recurrent


def _jacobian_norms(layer, sequences, h0, mask):
    """||dh_T/dh_t||_2 (samples, T) by input time, float64."""
    derivatives, recurrent = _derivatives(layer, sequences, h0, mask)
    samples, timesteps, units = derivatives.shape
    m = mask
    # P_t = J_{T-1} ... J_{t+1} (processing order), J_s = diag(d_s) W_hh^T,
    # kept as P * exp(log_scale) so long products neither over- nor underflow.
    eye = np.broadcast_to(np.eye(units), (samples, units, units))
    product = eye.copy()
    log_scale = np.zeros(samples)
    norms = np.empty((samples, timesteps))
    norms[:, -1] = 1.0
    w_t = recurrent.T
    for s in range(timesteps - 1, 0, -1):
        d = derivatives[:, s]
        identity_step = np.isnan(d[:, 0]) if m is not None else np.zeros(samples, bool)
        step = d[:, :, None] * w_t[None]  # diag(d) W^T
        step = np.where(identity_step[:, None, None], eye, step)
        product = product @ step
        scale = np.max(np.abs(product), axis=(1, 2))
        ok = np.isfinite(scale) & (scale > 0)
        safe = np.where(ok, scale, 1.0)
        product = product / safe[:, None, None]
        log_scale = log_scale + np.log(safe)
        sv = np.linalg.svd(
            np.nan_to_num(product, nan=0.0, posinf=0.0, neginf=0.0), compute_uv=False
        )[:, 0]
        with np.errstate(over="ignore", invalid="ignore"):
            value = sv * np.exp(log_scale)
        overflow = np.where(np.isnan(scale), np.nan, np.inf)
        value = np.where(ok | (scale == 0), value, overflow)
        norms[:, s - 1] = value
    if layer.go_backwards:
        norms = norms[:, ::-1]
    return np.ascontiguousarray(norms)


def state_jacobian_norms(model_or_layer, x, max_samples=8):
    """Norms `||dh_T/dh_t||_2` of the state Jacobian products on real data.

    Each layer's trajectory is recomputed in float64 on the first
    `max_samples` samples of `x`, and the spectral norm of `dh_T/dh_t =
    J_T ... J_{t+1}`, `J_s = diag(act'(z_s)) W_hh^T`, reported for every t
    (1 at t = T): the part of `dL/dh_t` the recurrence controls. Masked
    steps are identity steps; for `go_backwards` layers `T` is input time 0.
    Cost: `samples * T` products and SVDs of `(units, units)` matrices.

    Args:
        model_or_layer: A Keras model (all its `rnn_layers`), or one vanilla
            RNN layer or `Bidirectional`, `x` then its input.
        x: Input batch for `model_or_layer`.
        max_samples: Positive int, the number of samples of `x` used.

    Returns:
        A dict mapping each layer key to a float64 NumPy array
        `(samples, timesteps)`, indexed by input time.
    """
    max_samples = check_positive_int("max_samples", max_samples)
    check_batch(x, None)
    entries = _entries(model_or_layer, "state_jacobian_norms")
    x = keras.tree.map_structure(lambda a: a[:max_samples], x)
    captured = _capture(model_or_layer, x, entries)
    return {
        key: _jacobian_norms(layer, *captured[key])
        for key, layer in entries
        if key in captured
    }


def _capture(model_or_layer, x, entries):
    """Calls `model_or_layer` on `x` (stateful states left as they are) and
    returns the first call's (sequences, h0, mask) of each layer of
    `entries`, by key."""
    captured = {}
    with keras.StatelessScope(), _capturing(entries, captured):
        model_or_layer(x, training=False)
    return captured


def _lyapunov(layer, sequences, h0, mask, num_exponents=None, warmup_steps=0):
    """Lyapunov exponents (samples, k) by the QR method, descending."""
    derivatives, recurrent = _derivatives(layer, sequences, h0, mask)
    samples, timesteps, units = derivatives.shape
    k = units if num_exponents is None else num_exponents
    if k == units:
        q = np.eye(units)
    else:  # a generic k-dim subspace (axes could miss the leading directions)
        q = np.linalg.qr(np.random.default_rng(0).standard_normal((units, k)))[0]
    q = np.broadcast_to(q, (samples, units, k))
    total = np.zeros((samples, k))
    counted = np.zeros((samples, 1))
    for t in range(timesteps):
        d = derivatives[:, t]
        carried = np.isnan(d[:, :1])  # masked step: J_t = I
        # Row-vector layer h_t = act(x_t W + h_{t-1} U + b): for column
        # vectors, J_t = dh_t/dh_{t-1} = diag(act'(z_t)) U^T.
        step = d[:, :, None] * (recurrent.T @ q)
        q, r = np.linalg.qr(np.where(carried[:, :, None], q, step))
        if t >= warmup_steps:
            with np.errstate(divide="ignore"):
                logs = np.log(np.abs(np.diagonal(r, axis1=1, axis2=2)))
            total += np.where(carried, 0.0, logs)
            counted += ~carried
    with np.errstate(invalid="ignore", divide="ignore"):
        return -np.sort(-total / counted, axis=-1)


def lyapunov_exponents(model, x, layer=None, num_exponents=None, warmup_steps=0):
    """Lyapunov exponents of a vanilla RNN layer's hidden dynamics on `x`.

    The trajectory `h_t = act(x_t W + h_{t-1} U + b)` is recomputed in
    float64 and its Jacobians `J_t = diag(act'(z_t)) U^T` fed to the QR
    method, `Q_t R_t = J_t Q_{t-1}`: exponent `i` is the mean of
    `log |R_t[i, i]|`, nats per step (`Q_0`: the identity for the full
    spectrum, else a seeded random orthonormal basis). Positive: chaos,
    exploding gradients; negative: vanishing; `lambda_1` is the log-growth
    rate of `||dh_T/dh_t||`. Masked steps are skipped; each sample's
    exponents are sorted descending, then averaged over the batch.

    Args:
        model: A Keras model (or layer) that contains vanilla RNN layers.
        x: Input batch for `model`. Every sample is used: keep it small.
        layer: The layer, or its key from `rnn_layers` (e.g.
            `"bi/forward"`); `None` for the model's only vanilla RNN layer.
        num_exponents: Positive int, at most the layer's units. Default: all.
        warmup_steps: Int in `[0, timesteps)`, the number of first steps
            discarded (the transient from `h_0`). Default 0.

    Returns:
        A float64 NumPy array `(num_exponents,)`, descending.

    Raises:
        ValueError: no such layer (or several and `layer` is None), or an
            argument is out of range.

    Example:

    ```python
    exponents = keras_vrnn.lyapunov_exponents(model, x[:8], warmup_steps=20)
    exponents[0]  # lambda_1: < 0 contracting, > 0 chaotic
    ```
    """
    check_batch(x, None)
    entries = _entries(model, "lyapunov_exponents", required=False)
    found = [(k, e) for k, e in entries if layer is None or layer is e or layer == k]
    if layer is None and len(found) != 1:
        raise ValueError(
            f"lyapunov_exponents needs one layer. Received: model with "
            f"{len(entries)} vanilla RNN layers {[k for k, _ in entries]}; pass layer=."
        )
    if not found:
        raise ValueError(
            "`layer` must be one of the model's vanilla RNN layers or keys "
            f"{[k for k, _ in entries]}. Received: layer={layer!r}."
        )
    key, layer = found[0]
    units = layer.cell.units
    if num_exponents is not None and check_positive_int(
        "num_exponents", num_exponents
    ) > units:
        raise ValueError(
            f"`num_exponents` must be at most the layer's units ({units}). "
            f"Received: num_exponents={num_exponents}."
        )
    sequences, h0, mask = _capture(model, x, [(key, layer)])[key]
    timesteps = sequences.shape[1]
    ok = isinstance(warmup_steps, (int, np.integer)) and not isinstance(warmup_steps, bool)
    if not ok or not 0 <= warmup_steps < timesteps:
        raise ValueError(
            f"`warmup_steps` must be an int in [0, {timesteps}) (the number of "
            f"timesteps). Received: warmup_steps={warmup_steps!r}."
        )
    spectra = _lyapunov(layer, sequences, h0, mask, num_exponents, int(warmup_steps))
    return spectra.mean(axis=0)


# ---------------------------------------------------------------------------
# Summaries of a norm profile
# ---------------------------------------------------------------------------


def _as_profile(norms, name):
    a = np.asarray(norms, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise ValueError(
            f"`{name}` expects norms of shape (timesteps,) or (batch, "
            f"timesteps). Received: norms with shape {a.shape}."
        )
    return a


def fit_decay_factor(norms):
    """Per-step growth/decay factor of gradient norms, by least squares.

    Fits `log ||dL/dh_t|| = a + k log(factor)`, `k = T - 1 - t` the steps
    back from the last: `factor < 1` vanishing, `> 1` exploding (exactly
    `rho` for a linear RNN with `W_hh = rho * orthogonal` and the loss on
    the last output). Zero (masked) and non-finite norms are ignored.
    `norms`: `(timesteps,)` or `(batch, timesteps)` (all samples fitted
    together). Returns a Python float; NaN with fewer than two usable steps.
    """
    a = _as_profile(norms, "fit_decay_factor")
    timesteps = a.shape[-1]
    steps_back = np.arange(timesteps - 1, -1, -1, dtype=np.float64)
    steps_back = np.broadcast_to(steps_back, a.shape)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(a) & (a > 0)
    k = steps_back[valid]
    if np.unique(k).size < 2:
        return float("nan")
    log_norms = np.log(a[valid])
    k_mean = k.mean()
    centered = k - k_mean
    slope = np.sum(centered * (log_norms - log_norms.mean())) / np.sum(centered**2)
    with np.errstate(over="ignore"):
        return float(np.exp(slope))


def effective_horizon(norms, threshold=1e-3):
    """Steps back until the gradient norm falls below `threshold` times its
    last-step value: the smallest `k >= 1` with `norms[r - k] < threshold *
    norms[r]` (an int), `r` the last step with a finite, non-zero norm
    (others are skipped); `T` if it never falls that low, NaN if no norm is
    usable. `norms`: `(timesteps,)` or `(batch, timesteps)` (batch mean).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(
            f"`threshold` must be a positive number. Received: threshold={threshold!r}."
        )
    a = _as_profile(norms, "effective_horizon")
    if a.ndim == 2:
        a = a.mean(axis=0)
    timesteps = a.shape[0]
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(a) & (a > 0)
    if not valid.any():
        return float("nan")
    r = int(np.nonzero(valid)[0][-1])
    below = np.nonzero(valid[:r] & (a[:r] < threshold * a[r]))[0]
    if below.size == 0:
        return int(timesteps)
    return int(r - below[-1])
