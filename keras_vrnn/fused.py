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
O(batch * T * units) (the native kernels: hidden states and inputs).

As in Keras' own RNN layers (`keras/src/backend/*/rnn.py`),
`VanillaRNN.inner_loop` asks the backend's kernel module for the recurrence,
else runs the generic loop. Each module has the entry point
`recurrence_from_inputs(x, kernel, bias, h0, recurrent_kernel, act,
rec_mask, probe, weight_gradients)`:

- `keras_vrnn.fused_tf` (TensorFlow): on a CPU, native kernels built for this
  machine on first use (`keras_vrnn.native`); where they cannot be built, on
  an accelerator, in float16 or inside an XLA-compiled function, an
  XLA-compiled `tf.while_loop` with `tf.custom_gradient`;
- `keras_vrnn.fused_jax` (JAX): `lax.scan` with `jax.custom_vjp`;
- `keras_vrnn.fused_torch` (PyTorch): torch's own RNN kernel and autograd
  (tanh and relu; no recurrent dropout while training).

This module holds what they share and imports none of them. A gradient probe
(`keras_vrnn.probe`): `h_t = act(z_t) + p_t`, its gradient the total dL/dh_t.
"""

import keras
from keras import activations
from keras import ops

SUPPORTED_ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")
TORCH_ACTIVATIONS = ("tanh", "relu")  # keras_vrnn.fused_torch.KERNELS


def activation_name(activation):
    """The name of a supported Keras activation, or None."""
    if activation is None:
        return "linear"
    for name in SUPPORTED_ACTIVATIONS:
        if activation is activations.get(name):
            return name
    return None


def unsupported_reason(layer, mask, probe=None, training=False):
    """Why the fused path cannot run `layer` (a string), or None if it can."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax", "torch"):
        return f"the {backend} backend is not covered"
    if mask is not None:
        return "a mask was given (masked steps need the generic loop)"
    if layer.unroll:
        return "unroll=True asks for the unrolled generic loop"
    covered = TORCH_ACTIVATIONS if backend == "torch" else SUPPORTED_ACTIVATIONS
    if activation_name(layer.cell.activation) not in covered:
        return f"activation {layer.cell.activation!r} is not one of {covered}"
    if probe is not None and probe.direct_only:
        return "a direct-only gradient probe cuts the recurrence"
    if backend == "torch" and training and layer.cell.recurrent_dropout > 0:
        return "torch's RNN kernel has no recurrent dropout"
    return None


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
