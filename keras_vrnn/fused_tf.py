"""TensorFlow implementation of the fused recurrence (see `keras_vrnn.fused`).

Per-step cost on CPU is dominated by executor overhead, so the loops here
(a) process `CHUNK` time steps per `tf.while_loop` iteration, unrolled in
Python, which divides the loop-control overhead by `CHUNK`, and (b) are
compiled with XLA (`jit_compile=True`), which turns the loop into native code.
Only the loops are compiled: XLA on the whole Keras train step is slower on
CPU because TensorFlow's automatic while-loop gradient is; ours is written by
hand.
"""

import tensorflow as tf

from keras_vrnn.fused import activation_derivative

# Steps per loop iteration, and whether the loops are XLA-compiled. Chosen
# with benchmarks/benchmark.py on a 2-core CPU (see README).
CHUNK = 4
USE_XLA = True

_ACTIVATIONS = {
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "relu": tf.nn.relu,
    "linear": lambda z: z,
}


def _chunked(t, timesteps, n_chunks, chunk):
    """(T, B, H) -> (n_chunks, chunk, B, H), zero-padded at the end."""
    # Static lengths only: with an unknown length chunk == 1 and nothing pads.
    pad = n_chunks * chunk - timesteps if isinstance(timesteps, int) else 0
    if pad:
        t = tf.pad(t, [[0, pad], [0, 0], [0, 0]])
    shape = tf.shape(t)
    return tf.reshape(t, tf.stack([n_chunks, chunk, shape[1], shape[2]]))


def _unchunked(stacked, timesteps):
    shape = tf.shape(stacked)
    flat = tf.reshape(stacked, tf.stack([shape[0] * shape[1], shape[2], shape[3]]))
    return flat[:timesteps]


def _layout(projected):
    """Static number of steps per iteration and of iterations."""
    timesteps = projected.shape[0]
    if timesteps is None:  # unknown length: one step per iteration
        return tf.shape(projected)[0], 1, tf.shape(projected)[0]
    chunk = max(1, min(CHUNK, timesteps))
    return timesteps, chunk, -(-timesteps // chunk)


def _forward(projected, h0, recurrent_kernel, rec_mask, probe, act):
    timesteps, chunk, n_chunks = _layout(projected)
    act_fn = _ACTIVATIONS[act]
    xs = _chunked(projected, timesteps, n_chunks, chunk)
    ps = None if probe is None else _chunked(probe, timesteps, n_chunks, chunk)
    out = tf.TensorArray(projected.dtype, size=n_chunks)

    def body(i, h, out):
        x_steps = tf.unstack(xs[i], num=chunk)
        p_steps = None if ps is None else tf.unstack(ps[i], num=chunk)
        hs = []
        for j in range(chunk):
            h_in = h if rec_mask is None else h * rec_mask
            h = act_fn(x_steps[j] + tf.matmul(h_in, recurrent_kernel))
            if p_steps is not None:
                h = h + p_steps[j]
            hs.append(h)
        return i + 1, h, out.write(i, tf.stack(hs))

    _, _, out = tf.while_loop(
        lambda i, *_: i < n_chunks,
        body,
        (tf.constant(0), h0, out),
        maximum_iterations=n_chunks,
    )
    return _unchunked(out.stack(), timesteps)


def _backward(upstream, hs, h0, recurrent_kernel, rec_mask, probe, act):
    """dZ (= dL/d projected), dL/dh_t (probe only), dL/dh0 and dL/dW_hh."""
    a = hs if probe is None else hs - probe
    derivative = activation_derivative(act, a)
    timesteps, chunk, n_chunks = _layout(upstream)
    gs = _chunked(upstream, timesteps, n_chunks, chunk)
    # Padded steps get derivative 0, so the carry stays exactly 0 there.
    ds = None if derivative is None else _chunked(derivative, timesteps, n_chunks, chunk)
    want_dh = probe is not None
    dz_out = tf.TensorArray(upstream.dtype, size=n_chunks)
    dh_out = tf.TensorArray(upstream.dtype, size=n_chunks)

    def body(i, carry, dz_out, dh_out):
        c = n_chunks - 1 - i
        g_steps = tf.unstack(gs[c], num=chunk)
        d_steps = None if ds is None else tf.unstack(ds[c], num=chunk)
        dzs, dhs = [None] * chunk, [None] * chunk
        for j in reversed(range(chunk)):
            dh = g_steps[j] + carry
            dz = dh if d_steps is None else dh * d_steps[j]
            dzs[j], dhs[j] = dz, dh
            carry = tf.matmul(dz, recurrent_kernel, transpose_b=True)
            if rec_mask is not None:
                carry = carry * rec_mask
        dz_out = dz_out.write(c, tf.stack(dzs))
        if want_dh:
            dh_out = dh_out.write(c, tf.stack(dhs))
        return i + 1, carry, dz_out, dh_out

    carry0 = tf.zeros_like(upstream[0])
    _, dh0, dz_out, dh_out = tf.while_loop(
        lambda i, *_: i < n_chunks,
        body,
        (tf.constant(0), carry0, dz_out, dh_out),
        maximum_iterations=n_chunks,
    )
    dz = _unchunked(dz_out.stack(), timesteps)
    dh = _unchunked(dh_out.stack(), timesteps) if want_dh else None
    # dW_hh = sum_t (h_{t-1} * m)^T dz_t, as one GEMM over all steps.
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
    if rec_mask is not None:
        h_prev = h_prev * rec_mask
    units = tf.shape(hs)[-1]
    d_kernel = tf.matmul(
        tf.reshape(h_prev, [-1, units]), tf.reshape(dz, [-1, units]), transpose_a=True
    )
    return dz, dh, dh0, d_kernel


# No `reduce_retracing`: it would relax the static time length the chunked
# layout relies on; one trace per input shape is what we want.
_forward_xla = tf.function(_forward, jit_compile=True)
_backward_xla = tf.function(_backward, jit_compile=True)


def recurrence(projected, h0, recurrent_kernel, act, rec_mask=None, probe=None):
    """hs[t] = act(projected[t] + (hs[t-1] * rec_mask) @ U) (+ probe[t]).

    Time-major tensors: `projected` and `probe` (T, B, H), `h0` and
    `rec_mask` (B, H). Returns hs (T, B, H), differentiable with respect to
    projected, h0, U and probe by the hand-written BPTT below.
    """
    forward = _forward_xla if USE_XLA else _forward
    backward = _backward_xla if USE_XLA else _backward
    extra = [t for t in (rec_mask, probe) if t is not None]

    @tf.custom_gradient
    def _recurrence(projected, h0, recurrent_kernel, *extra):
        m = extra[0] if rec_mask is not None else None
        p = extra[-1] if probe is not None else None
        # The tape must not differentiate the loop itself (`grad` does), so
        # its inputs are cut from it here.
        hs = forward(
            *[
                None if t is None else tf.stop_gradient(t)
                for t in (projected, h0, recurrent_kernel, m, p)
            ],
            act,
        )

        def grad(upstream):
            dz, dh, dh0, d_kernel = backward(upstream, hs, h0, recurrent_kernel, m, p, act)
            grads = [dz, dh0, d_kernel]
            if m is not None:
                grads.append(tf.zeros_like(m))  # masks are constants
            if p is not None:
                grads.append(dh)
            return grads

        return hs, grad

    return _recurrence(projected, h0, recurrent_kernel, *extra)
