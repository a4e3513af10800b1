"""TensorFlow implementation of the fused recurrence (see `keras_vrnn.fused`).

What costs time on a CPU (measured with `benchmarks/benchmark.py` and its
ablations on 2 cores) and what this module does about it:

- Per-step framework overhead: only the loops are XLA-compiled
  (`jit_compile=True`); XLA on the whole train step is slower on CPU, as
  TensorFlow's automatic while-loop gradient is (ours is hand-written).
- Layout copies: the interface is batch-major `(B, T, H)` like the layer's,
  so no transpose runs outside compiled code; the loop reads slices `[:, t]`
  and writes time-major, transposed once at the end.
- One idle core: XLA runs the per-step `(B, H) x (H, H)` product on one
  core, so on a CPU the batch is cut into halves run as two independent
  compiled loops, concurrently (`KERAS_VRNN_BATCH_PARTS`); each row is its
  own recurrence, so the numbers are those of the whole batch.
- dW_hh: one GEMM after the backward loop by TensorFlow's matmul (with
  XLA's, the train step at (64,200,64,256) was 1.47x instead of 1.68x
  faster than SimpleRNN).

Environment, read when a loop is built (eagerly: each call; in a
`tf.function`: when traced): `KERAS_VRNN_BATCH_PARTS` (default 2) parts for
a batch of 32+ rows on a 2+-core CPU (1: no cut; never on an accelerator;
the native kernels cut per intra-op thread themselves); `KERAS_VRNN_XLA=0`
runs the loops uncompiled (debugging); `KERAS_VRNN_NATIVE=0` turns the
native kernels off (`keras_vrnn.native`).
"""

import os

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from keras_vrnn.fused import activation_derivative, project

# The native kernels' batch parts (one per intra-op thread): 16+ rows each.
_MIN_PART_ROWS = 16
_BATCH_PARTS = 2  # default KERAS_VRNN_BATCH_PARTS (benchmark.py, 2-core CPU)
# A batch below this is not cut (decided at run time when its size is unknown
# at trace time): each part would be too small a product for a second core
# to pay for the extra launch.
_MIN_SPLIT_BATCH = 32

_ACTIVATIONS = {"tanh": tf.tanh, "sigmoid": tf.sigmoid, "relu": tf.nn.relu, "linear": lambda z: z}


def _batch_parts():
    """`KERAS_VRNN_BATCH_PARTS`, a positive integer (default 2)."""
    value = os.environ.get("KERAS_VRNN_BATCH_PARTS", "").strip()
    if not value:
        return _BATCH_PARTS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"Received: KERAS_VRNN_BATCH_PARTS={value!r}. Expected a positive "
            "integer, the number of concurrent parts of a batch (1: no cut)."
        )
    return int(value)


def _use_xla():
    """False when `KERAS_VRNN_XLA` is 0/false/no/off."""
    value = os.environ.get("KERAS_VRNN_XLA", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def _swap_batch_time(t):  # (B, T, H) <-> (T, B, H)
    return tf.transpose(t, [1, 0, 2])


def _timesteps(steps):
    """Number of steps of batch-major `steps`, static when known."""
    return steps.shape[1] if steps.shape[1] is not None else tf.shape(steps)[1]


def _forward(projected, h0, recurrent_kernel, rec_mask, probe, act):
    """hs (B, T, H) from batch-major projected inputs (and probe)."""
    act_fn = _ACTIVATIONS[act]
    timesteps = _timesteps(projected)
    # Steps are read as batch-major slices [:, t] (no transposed copy of the
    # inputs) and written time-major, transposed once at the end.
    out = tf.TensorArray(projected.dtype, size=timesteps, element_shape=h0.shape)

    def body(t, h, out):
        h_in = h if rec_mask is None else h * rec_mask
        h = act_fn(projected[:, t] + tf.matmul(h_in, recurrent_kernel))
        if probe is not None:
            h = h + probe[:, t]
        return t + 1, h, out.write(t, h)

    _, _, out = tf.while_loop(lambda t, *_: t < timesteps, body, (tf.constant(0), h0, out),
                              maximum_iterations=timesteps)
    return _swap_batch_time(out.stack())


def _backward(upstream, hs, h0, recurrent_kernel, rec_mask, probe, act):
    """The reverse loop, batch-major in and out.

    Returns dZ (= dL/d projected), dL/dh_t (probe only, else None), dL/dh0,
    and `h_prev_t`, the (H, B*T) left operand of dW_hh = h_prev_t @ dZ.
    """
    timesteps = _timesteps(upstream)
    want_dh = probe is not None
    dz_out = tf.TensorArray(upstream.dtype, size=timesteps, element_shape=h0.shape)
    dh_out = tf.TensorArray(upstream.dtype, size=timesteps, element_shape=h0.shape)

    def body(i, carry, dz_out, dh_out):
        t = timesteps - 1 - i
        dh = upstream[:, t] + carry
        a = hs[:, t] if probe is None else hs[:, t] - probe[:, t]
        derivative = activation_derivative(act, a)
        dz = dh if derivative is None else dh * derivative
        dz_out = dz_out.write(t, dz)
        if want_dh:
            dh_out = dh_out.write(t, dh)
        carry = tf.matmul(dz, recurrent_kernel, transpose_b=True)
        if rec_mask is not None:
            carry = carry * rec_mask
        return i + 1, carry, dz_out, dh_out

    _, dh0, dz_out, dh_out = tf.while_loop(
        lambda i, *_: i < timesteps, body,
        (tf.constant(0), tf.zeros_like(h0), dz_out, dh_out), maximum_iterations=timesteps)
    dz = _swap_batch_time(dz_out.stack())
    dh = _swap_batch_time(dh_out.stack()) if want_dh else None
    # dW_hh = sum_t (h_{t-1} * m)^T dz_t: its left operand, all steps at once.
    h_prev = tf.concat([h0[:, None], hs[:, :-1]], axis=1)
    if rec_mask is not None:
        h_prev = h_prev * rec_mask[:, None]
    h_prev_t = tf.transpose(tf.reshape(h_prev, [-1, tf.shape(hs)[-1]]))
    return dz, dh, dh0, h_prev_t


# No `reduce_retracing`: one trace per input shape is what XLA wants anyway.
_forward_xla = tf.function(_forward, jit_compile=True)
_backward_xla = tf.function(_backward, jit_compile=True)


def _parts(batch):
    """Into how many parts a batch of `batch` rows is cut: on a CPU with 2+
    cores, `KERAS_VRNN_BATCH_PARTS` from `_MIN_SPLIT_BATCH` rows on (None,
    unknown at trace time: `recurrence` decides at run time); else 1."""
    parts = _batch_parts()
    if parts < 2 or (os.cpu_count() or 1) < 2:
        return 1
    if batch is not None and batch < _MIN_SPLIT_BATCH:
        return 1
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return 1
    return parts


def _split(t, parts):
    """`parts` slices of the batch axis, sizes differing by at most one."""
    if t is None:
        return [None] * parts
    if parts == 1:
        return [t]
    batch = tf.shape(t)[0]
    sizes = [(batch + parts - 1 - i) // parts for i in range(parts)]
    return tf.split(t, tf.stack(sizes), axis=0, num=parts)


def _join(tensors):
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=0)


def _native_library(dtype):
    """The native kernels (`keras_vrnn.native`) where they run: float32/64,
    not on an accelerator, not inside an XLA-compiled function (a custom op
    has no XLA kernel), not with `KERAS_VRNN_NATIVE=0`; else None."""
    if dtype not in (tf.float32, tf.float64):
        return None
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return None
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return None
    # Imported here, not at the top: `python -m keras_vrnn.native` runs that
    # module as a script, which must not be imported by `import keras_vrnn`.
    from keras_vrnn import native

    return native.library()


def _native_recurrence(
    lib, x, kernel, bias, h0, recurrent_kernel, act, rec_mask, probe, weight_gradients=True
):
    """`recurrence_from_inputs` by the native kernels (which cut the batch
    themselves); `weight_gradients=False` leaves the weight gradients zero."""
    empty = tf.zeros([0], x.dtype)
    optional = [t for t in (bias, rec_mask, probe) if t is not None]

    @tf.custom_gradient
    def _recurrence(x, kernel, h0, recurrent_kernel, *optional):
        given = iter(optional)
        b, m, p = [next(given) if t is not None else empty for t in (bias, rec_mask, probe)]
        options = dict(activation=act, min_part_rows=_MIN_PART_ROWS)
        hs = lib.keras_vrnn_forward(x, kernel, b, h0, recurrent_kernel, m, p, **options)

        def grad(upstream):
            dz, dh, dh0, d_kernel, d_bias, d_recurrent = lib.keras_vrnn_backward(
                upstream, hs, x, kernel, b, h0, recurrent_kernel, m, p,
                weight_gradients=weight_gradients, **options
            )
            # dL/dx = dZ W^T, left to TensorFlow so that it is pruned when
            # nothing needs it (the first layer's inputs).
            units = tf.shape(dz)[-1]
            dx = tf.reshape(
                tf.matmul(tf.reshape(dz, [-1, units]), kernel, transpose_b=True),
                tf.shape(x),
            )
            grads = [dx, d_kernel, dh0, d_recurrent]
            if bias is not None:
                grads.append(d_bias)
            if rec_mask is not None:
                grads.append(tf.zeros_like(m))  # masks are constants
            if probe is not None:
                grads.append(tf.reshape(dh, tf.shape(hs)))
            return grads

        return hs, grad

    return _recurrence(x, kernel, h0, recurrent_kernel, *optional)


def recurrence_from_inputs(
    x, kernel, bias, h0, recurrent_kernel, act, rec_mask=None, probe=None,
    weight_gradients=True,
):
    """hs[:, t] = act(x[:, t] @ W + b + (hs[:, t-1] * rec_mask) @ U) (+ probe[:, t]).

    `x` (B, T, D) batch-major. By the native kernels where they run
    (`keras_vrnn.native`; `weight_gradients=False` lets them skip the weight
    gradients), else by `recurrence` on the projected inputs.
    """
    lib = _native_library(x.dtype)
    if lib is not None:
        return _native_recurrence(
            lib, x, kernel, bias, h0, recurrent_kernel, act, rec_mask, probe,
            weight_gradients,
        )
    return recurrence(project(x, kernel, bias), h0, recurrent_kernel, act, rec_mask, probe)


def recurrence(projected, h0, recurrent_kernel, act, rec_mask=None, probe=None):
    """hs[:, t] = act(projected[:, t] + (hs[:, t-1] * rec_mask) @ U) (+ probe[:, t]).

    Batch-major tensors: `projected` and `probe` (B, T, H), `h0` and
    `rec_mask` (B, H). Returns hs (B, T, H), differentiable with respect to
    projected, h0, U and probe by the hand-written BPTT above.
    """
    xla = _use_xla()
    forward = _forward_xla if xla else _forward
    backward = _backward_xla if xla else _backward
    # The loops carry (B, H) tensors, which must keep one static shape: a
    # batch size known on one input holds for all.
    batch = projected.shape[0] if projected.shape[0] is not None else h0.shape[0]
    if batch is not None:
        projected = tf.ensure_shape(projected, [batch, None, None])
        h0 = tf.ensure_shape(h0, [batch, None])
    parts = _parts(batch)
    # With the batch size unknown at trace time, both ways are traced and
    # the run-time size picks one.
    decided_at_run_time = parts > 1 and batch is None
    extra = [t for t in (rec_mask, probe) if t is not None]

    def if_large(in_parts, whole):
        return tf.cond(tf.shape(projected)[0] >= _MIN_SPLIT_BATCH, in_parts, whole)

    @tf.custom_gradient
    def _recurrence(projected, h0, recurrent_kernel, *extra):
        m = extra[0] if rec_mask is not None else None
        p = extra[-1] if probe is not None else None
        # The tape must not differentiate the loop itself (`grad` does), so
        # its inputs are cut from it here.
        projected, h0, recurrent_kernel, m, p = [
            None if t is None else tf.stop_gradient(t)
            for t in (projected, h0, recurrent_kernel, m, p)
        ]

        def forward_parts(n):
            return [
                forward(*piece[:2], recurrent_kernel, *piece[2:], act)
                for piece in zip(*[_split(t, n) for t in (projected, h0, m, p)])
            ]

        def backward_parts(n, upstream, hs_parts):
            dzs, dhs, dh0s, d_kernels = [], [], [], []
            for g, hs_part, h, mp, pp in zip(
                _split(upstream, n), hs_parts, *[_split(t, n) for t in (h0, m, p)]
            ):
                dz, dh, dh0, h_prev_t = backward(g, hs_part, h, recurrent_kernel, mp, pp, act)
                units = tf.shape(dz)[-1]
                d_kernels.append(tf.matmul(h_prev_t, tf.reshape(dz, [-1, units])))
                dzs.append(dz)
                dhs.append(dh)
                dh0s.append(dh0)
            grads = [_join(dzs), _join(dh0s), tf.add_n(d_kernels)]
            if m is not None:
                grads.append(tf.zeros_like(m))  # masks are constants
            if p is not None:
                grads.append(_join(dhs))
            return grads

        if decided_at_run_time:
            hs = if_large(
                lambda: _join(forward_parts(parts)), lambda: forward_parts(1)[0]
            )
        else:
            hs_parts = forward_parts(parts)
            hs = _join(hs_parts)

        def grad(upstream):
            if decided_at_run_time:
                return if_large(
                    lambda: backward_parts(parts, upstream, _split(hs, parts)),
                    lambda: backward_parts(1, upstream, [hs]),
                )
            return backward_parts(parts, upstream, hs_parts)

        return hs, grad

    return _recurrence(projected, h0, recurrent_kernel, *extra)
