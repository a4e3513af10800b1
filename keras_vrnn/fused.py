"""The fused fast path of `VanillaRNN`: one GEMM in, a lean loop, hand-written BPTT.

Why it is faster than the generic `keras.layers.RNN` loop: on CPU a vanilla
RNN step is a tiny (batch, units) x (units, units) product, so per-step
framework overhead dominates, not FLOPs. The fused path

1. projects the inputs of all time steps at once, `X @ W_xh + b`, as one GEMM
   outside the loop (autodiff gives dW_xh, db and dX as single GEMMs too);
2. runs a forward loop carrying only `h_{t-1} @ W_hh` (matmul, add,
   activation per step), compiled (XLA on TensorFlow, `lax.scan` on JAX);
3. differentiates the loop with a custom gradient: a reverse loop carrying
   only `dz_t = (g_t + carry) * act'(z_t)`, `carry = dz_t @ W_hh^T`, and then
   `dW_hh = H_prev^T @ dZ` as one GEMM after the loop.

Memory: the backward keeps the T hidden states and the projected inputs,
O(batch * T * units), nothing per step beyond that (the native kernels keep
the hidden states and the layer's inputs only).

Backends: TensorFlow and JAX. On TensorFlow on a CPU, native kernels built
for this machine on first use (`keras_vrnn.native`: the projection, both
loops and the weight gradients in two custom ops, the batch cut into parts
run on TensorFlow's intra-op threads); where they cannot be built, on an
accelerator, in float16 or inside an XLA-compiled function, an XLA-compiled
`tf.while_loop` with `tf.custom_gradient` (see `keras_vrnn.fused_tf`). On
JAX, `lax.scan` with `jax.custom_vjp`.
Other backends, masks, `unroll=True` and activations other than tanh, relu,
sigmoid and linear use the generic loop.

A gradient probe (see `keras_vrnn.probe`) is supported: `h_t = act(z_t) +
p_t`, and the probe's gradient is the total dL/dh_t the reverse loop already
computes.
"""

import keras
from keras import activations
from keras import ops

SUPPORTED_ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")


def activation_name(activation):
    """The name of a supported Keras activation, or None."""
    if activation is None:
        return "linear"
    for name in SUPPORTED_ACTIVATIONS:
        if activation is activations.get(name):
            return name
    return None


def unsupported_reason(layer, mask, direct_only=False):
    """Why the fused path cannot run `layer` (a string), or None if it can."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        return f"the {backend} backend is not covered (tensorflow and jax are)"
    if mask is not None:
        return "a mask was given (masked steps need the generic loop)"
    if layer.unroll:
        return "unroll=True asks for the unrolled generic loop"
    if activation_name(layer.cell.activation) is None:
        return (
            f"activation {layer.cell.activation!r} is not one of "
            f"{SUPPORTED_ACTIVATIONS}"
        )
    if direct_only:
        return "a direct-only gradient probe cuts the recurrence"
    return None


def fused_inner_loop(
    layer, sequences, initial_state, training=False, probe=None, weight_gradients=True
):
    """Drop-in for `RNN.inner_loop`: returns `(last_output, outputs, states)`.

    `weight_gradients=False` (see `probe.attached_probe`) lets the native
    kernels skip the weight gradients; the other implementations ignore it.
    """
    cell = layer.cell
    dtype = sequences.dtype
    h0 = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
    h0 = ops.cast(h0, dtype)
    x = sequences
    # Dropout masks are the cell's own (one per sequence), so both paths drop
    # exactly the same units for the same seed.
    if training and cell.dropout > 0:
        x = x * ops.expand_dims(cell.get_dropout_mask(x[:, 0, :]), 1)
    rec_mask = None
    if training and cell.recurrent_dropout > 0:
        rec_mask = ops.cast(cell.get_recurrent_dropout_mask(h0), dtype)

    kernel = ops.cast(cell.kernel, dtype)
    recurrent_kernel = ops.cast(cell.recurrent_kernel, dtype)
    if probe is not None:
        probe = ops.cast(probe, dtype)
    # Batch-major (B, T, .) throughout, like the layer's inputs and outputs,
    # so that no transpose runs outside the compiled loops.
    if layer.go_backwards:
        x = ops.flip(x, axis=1)
        if probe is not None:
            probe = ops.flip(probe, axis=1)
    bias = None if cell.bias is None else ops.cast(cell.bias, dtype)
    act = activation_name(cell.activation)
    if keras.backend.backend() == "tensorflow":
        from keras_vrnn import fused_tf

        outputs = fused_tf.recurrence_from_inputs(
            x, kernel, bias, h0, recurrent_kernel, act, rec_mask, probe,
            weight_gradients=weight_gradients,
        )
    else:
        from keras_vrnn import fused_jax

        outputs = fused_jax.recurrence(
            project(x, kernel, bias), h0, recurrent_kernel, act, rec_mask, probe
        )
    last = outputs[:, -1]
    return last, outputs, [last]


def project(x, kernel, bias):
    """x @ W (+ b) for all steps of batch-major x (B, T, D): (B, T, H)."""
    # One 2-D GEMM (a 3-D x 2-D matmul would be a broadcast batched matmul,
    # with a batched product and a reduction over the batch for dW_xh).
    # (The batch is reshaped to what it was, not -1, so that a static batch
    # size stays static when the length is not.)
    batch, timesteps, features = ops.shape(x)
    projected = ops.matmul(ops.reshape(x, (-1, features)), kernel)
    projected = ops.reshape(projected, (batch, timesteps, ops.shape(kernel)[-1]))
    if bias is not None:
        projected = projected + bias
    return projected


def activation_derivative(act, a):
    """act'(z) written in terms of the activation's output a = act(z)."""
    if act == "tanh":
        return 1.0 - a * a
    if act == "sigmoid":
        return a * (1.0 - a)
    if act == "relu":
        return ops.cast(a > 0, a.dtype)
    return None  # linear: derivative 1, multiplication skipped
