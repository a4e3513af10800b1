"""JAX implementation of the fused recurrence (see `keras_vrnn.fused`).

`lax.scan` compiles to a native XLA loop; `jax.custom_vjp` replaces JAX's
automatic scan transpose with the same hand-written BPTT as the TensorFlow
path, so both backends compute the same gradients the same way.
"""

import functools

import jax
import jax.numpy as jnp

from keras_vrnn.fused import activation_derivative
from keras_vrnn.fused import project

# Steps per iteration of the compiled loops.
_UNROLL = 4

_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
                "linear": lambda z: z}


def _forward(act, projected, h0, recurrent_kernel, rec_mask, probe):
    act_fn = _ACTIVATIONS[act]

    def step(h, inputs):
        x, p = inputs
        h_in = h if rec_mask is None else h * rec_mask
        h = act_fn(x + h_in @ recurrent_kernel)
        if p is not None:
            h = h + p
        return h, h

    _, hs = jax.lax.scan(step, h0, (projected, probe), unroll=_UNROLL)
    return hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(act, projected, h0, recurrent_kernel, rec_mask, probe):
    return _forward(act, projected, h0, recurrent_kernel, rec_mask, probe)


def _recurrence_fwd(act, projected, h0, recurrent_kernel, rec_mask, probe):
    hs = _forward(act, projected, h0, recurrent_kernel, rec_mask, probe)
    return hs, (hs, h0, recurrent_kernel, rec_mask, probe)


def _recurrence_bwd(act, residuals, upstream):
    hs, h0, recurrent_kernel, rec_mask, probe = residuals
    a = hs if probe is None else hs - probe
    derivative = activation_derivative(act, a)

    def step(carry, inputs):
        g, d = inputs
        dh = g + carry
        dz = dh if d is None else dh * d
        carry = dz @ recurrent_kernel.T
        if rec_mask is not None:
            carry = carry * rec_mask
        return carry, (dz, dh)

    dh0, (dz, dh) = jax.lax.scan(
        step, jnp.zeros_like(h0), (upstream, derivative), reverse=True, unroll=_UNROLL)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    if rec_mask is not None:
        h_prev = h_prev * rec_mask
    units = hs.shape[-1]
    d_kernel = h_prev.reshape(-1, units).T @ dz.reshape(-1, units)
    d_mask = None if rec_mask is None else jnp.zeros_like(rec_mask)
    d_probe = None if probe is None else dh
    return dz, dh0, d_kernel, d_mask, d_probe


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def recurrence_from_inputs(
    x, kernel, bias, h0, recurrent_kernel, act, rec_mask=None, probe=None,
    weight_gradients=True,
):
    """Same contract as `keras_vrnn.fused_tf.recurrence_from_inputs`; under
    `jit` XLA drops unused weight gradients (`weight_gradients` not needed)."""
    return recurrence(project(x, kernel, bias), h0, recurrent_kernel, act, rec_mask, probe)


@functools.partial(jax.jit, static_argnums=(3,))  # eagerly: compiled once per shape
def recurrence(projected, h0, recurrent_kernel, act, rec_mask=None, probe=None):
    """Same contract as `keras_vrnn.fused_tf.recurrence` (batch-major).

    `lax.scan` runs over the leading axis, so the loop is time-major inside;
    XLA fuses the two transposes into the surrounding code.
    """
    if probe is not None:
        probe = jnp.swapaxes(probe, 0, 1)
    hs = _recurrence(
        act, jnp.swapaxes(projected, 0, 1), h0, recurrent_kernel, rec_mask, probe
    )
    return jnp.swapaxes(hs, 0, 1)
