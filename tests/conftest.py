"""Shared test helpers: a float64 NumPy reference for the vanilla RNN.

The reference is deliberately written from the equations, not from the code
under test:

    h_t = act(x_t W + h_{t-1} U + b)                      (forward)
    dh_t = g_t + (dh_{t+1} * act'(z_{t+1})) U^T          (BPTT, total dL/dh_t)

with `g_t` the direct gradient of the loss `L = sum(c * y)` with respect to
`h_t`. Everything is float64, computed from the very float32 values the
layers see, so a float32 layer should agree to ~1e-6 relative.

Helpers are plain functions here; test modules get them through the `ref`
fixture. Parametrisations, which are needed at import time, are in
rnn_configs.py.
"""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
# TensorFlow unless KERAS_BACKEND says otherwise: `make test` runs the
# backend-neutral files (BACKEND_TESTS) again under JAX and PyTorch, where
# tests marked `tensorflow_only` are skipped.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rnn_configs import ACTIVATIONS  # noqa: E402


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# act(z) and act'(z), both written in terms of the pre-activation z.
_ACT = {
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "linear": (lambda z: z, lambda z: np.ones_like(z)),
    "softplus": (
        lambda z: np.logaddexp(0.0, z),
        lambda z: _sigmoid(z),
    ),
}


def fused_covers(activation):
    """Whether the running backend's fused path takes `activation` (on
    PyTorch, torch's RNN kernel has tanh and relu only)."""
    import keras

    return keras.backend.backend() != "torch" or activation in ("tanh", "relu")


def f64(a):
    if hasattr(a, "detach"):  # a torch tensor (which may require grad)
        a = a.detach().cpu()
    return np.asarray(a, dtype=np.float64)


def rnn_forward(
    x, W, U, b=None, h0=None, activation="tanh", go_backwards=False,
    in_mask=None, rec_mask=None,
):
    """Plain loop. Returns `(hs, zs, xs)` in *processing* order (B, T, .).

    `xs` is the (reversed, dropped-out) input actually fed to step t.
    `in_mask` (B, F) / `rec_mask` (B, H) are per-sequence dropout masks
    (already scaled by 1/(1-rate)), applied to x_t and h_{t-1}.
    """
    act, _ = _ACT[activation]
    x, W, U = f64(x), f64(W), f64(U)
    batch, timesteps, _ = x.shape
    units = W.shape[1]
    xs = x[:, ::-1] if go_backwards else x
    if in_mask is not None:
        xs = xs * f64(in_mask)[:, None, :]
    h = np.zeros((batch, units)) if h0 is None else f64(h0)
    hs, zs = [], []
    for t in range(timesteps):
        h_in = h if rec_mask is None else h * f64(rec_mask)
        z = xs[:, t] @ W + h_in @ U
        if b is not None:
            z = z + f64(b)
        h = act(z)
        zs.append(z)
        hs.append(h)
    return np.stack(hs, 1), np.stack(zs, 1), xs


def rnn_reference(
    x, W, U, b=None, h0=None, activation="tanh", go_backwards=False,
    return_sequences=False, c=None, c_state=None, in_mask=None, rec_mask=None,
):
    """Forward pass and hand-written float64 BPTT of
    `L = sum(c * y) (+ sum(c_state * final_state))`.

    `y` is what a Keras RNN layer returns: the full sequence in processing
    order (reversed for `go_backwards`, as Keras does) or the last output.
    Returns a dict with `y`, `state`, the gradients `dx`, `dW`, `dU`, `db`,
    `dh0`, and `dh` / `direct` (B, T, H): total and direct dL/dh_t indexed by
    *input* time (the probe's layout).
    """
    _, dact = _ACT[activation]
    hs, zs, xs = rnn_forward(
        x, W, U, b, h0, activation, go_backwards, in_mask, rec_mask
    )
    batch, timesteps, units = hs.shape
    W, U = f64(W), f64(U)
    y = hs if return_sequences else hs[:, -1]
    g = np.zeros_like(hs)
    if c is not None:
        if return_sequences:
            g += f64(c)
        else:
            g[:, -1] += f64(c)
    if c_state is not None:
        g[:, -1] += f64(c_state)

    dh = np.zeros_like(hs)
    dz = np.zeros_like(hs)
    carry = np.zeros((batch, units))
    for t in reversed(range(timesteps)):
        dh[:, t] = g[:, t] + carry
        dz[:, t] = dh[:, t] * dact(zs[:, t])
        carry = dz[:, t] @ U.T
        if rec_mask is not None:
            carry = carry * f64(rec_mask)
    h_init = np.zeros((batch, units)) if h0 is None else f64(h0)
    h_prev = np.concatenate([h_init[:, None], hs[:, :-1]], axis=1)
    if rec_mask is not None:
        h_prev = h_prev * f64(rec_mask)[:, None, :]
    dW = np.einsum("btf,bth->fh", xs, dz)
    dU = np.einsum("bti,bth->ih", h_prev, dz)
    db = dz.sum(axis=(0, 1))
    dxs = dz @ W.T
    if in_mask is not None:
        dxs = dxs * f64(in_mask)[:, None, :]
    flip = (lambda a: a[:, ::-1]) if go_backwards else (lambda a: a)
    return {
        "y": y,
        "state": hs[:, -1],
        "hs": hs,
        "dx": flip(dxs),
        "dW": dW,
        "dU": dU,
        "db": db,
        "dh0": carry,
        "dh": flip(dh),
        "direct": flip(g),
    }


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (norm-relative, float64)."""
    actual = f64(actual)
    expected = f64(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.max(np.abs(expected)), 1e-30) if expected.size else 1.0
    return float(np.max(np.abs(actual - expected))) / scale if actual.size else 0.0


def assert_rel_close(actual, expected, tol, what=""):
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def make_problem(
    seed=0, batch=3, timesteps=5, features=3, units=4, use_bias=True,
    initial_state=False,
):
    """Random float32 inputs, weights and loss weights (a dict)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    q, _ = np.linalg.qr(rng.standard_normal((units, units)))
    p = {
        "x": f32(rng.standard_normal((batch, timesteps, features))),
        "W": f32(rng.standard_normal((features, units)) * 0.6),
        # Non-symmetric, spectral norm ~1: neither vanishing nor exploding
        # over a few steps, and U != U^T so a transposition bug shows.
        "U": f32(0.8 * q + 0.2 * rng.standard_normal((units, units))),
        "b": f32(rng.standard_normal(units) * 0.3) if use_bias else None,
        "h0": (
            f32(rng.standard_normal((batch, units)) * 0.5) if initial_state else None
        ),
        "c": f32(rng.standard_normal((batch, timesteps, units))),
        "c_last": f32(rng.standard_normal((batch, units))),
        "c_state": f32(rng.standard_normal((batch, units))),
    }
    p["weights"] = [p["W"], p["U"]] + ([p["b"]] if use_bias else [])
    return p


def run_tf(layer, x, initial_state=None, c=None, c_state=None, training=False,
           mask=None):
    """Calls an RNN layer and differentiates it with the running backend's
    own autodiff (tf.GradientTape, jax.value_and_grad, torch.autograd).

    Returns a dict with the output `y`, the final `state` (if
    `return_state`), the loss and its gradients `dx`, `dW`, `dU`, `db` (None
    without bias) and `dh0`. The loss is `sum(c * y) + sum(c_state * state)`;
    `c` defaults to ones.
    """
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if not layer.built:
        layer.build(x.shape)
    weights = list(layer.trainable_weights)
    kwargs = {"training": training}
    if mask is not None:
        kwargs["mask"] = ops.convert_to_tensor(mask)

    def loss_of(x, h0):
        if h0 is not None:
            kwargs["initial_state"] = h0
        out = layer(x, **kwargs)
        y, state = (out[0], out[1]) if getattr(layer, "return_state", False) else (out, None)
        y = ops.cast(y, "float32")
        loss = ops.sum((1.0 if c is None else ops.convert_to_tensor(c)) * y)
        if state is not None:
            state = ops.cast(state, "float32")
            if c_state is not None:
                loss = loss + ops.sum(ops.convert_to_tensor(c_state) * state)
        return loss, (y, state)

    x = ops.convert_to_tensor(x)
    h0 = None if initial_state is None else ops.convert_to_tensor(initial_state)
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            if h0 is not None:
                tape.watch(h0)
            loss, (y, state) = loss_of(x, h0)
        grads = tape.gradient(loss, [x] + weights + ([h0] if h0 is not None else []))
        grads = list(grads) + ([None] if h0 is None else [])
    elif backend == "jax":
        import jax

        others = list(layer.non_trainable_variables)

        def f(values, x, h0):
            with keras.StatelessScope(state_mapping=list(zip(weights, values))) as scope:
                loss, aux = loss_of(x, h0)
            return loss, (aux, [scope.get_current_value(v) for v in others])

        (loss, ((y, state), updates)), grads = jax.value_and_grad(
            f, argnums=(0, 1, 2), has_aux=True
        )([w.value for w in weights], x, h0)
        for variable, value in zip(others, updates):  # the seed generator's
            if value is not None:
                variable.assign(value)
        grads = [grads[1], *grads[0], grads[2]]
    else:
        import torch

        x.requires_grad_()
        if h0 is not None:
            h0.requires_grad_()
        loss, (y, state) = loss_of(x, h0)
        sources = [x] + [w.value for w in weights] + [h0]
        grads = torch.autograd.grad(
            loss, [s for s in sources if s is not None], allow_unused=True
        )
        grads = list(grads) + ([None] if h0 is None else [])
    grads = [None if g is None else ops.convert_to_numpy(g) for g in grads]
    return {
        "y": ops.convert_to_numpy(y),
        "state": None if state is None else ops.convert_to_numpy(state),
        "loss": float(ops.convert_to_numpy(loss)),
        "dx": grads[0],
        "dW": grads[1],
        "dU": grads[2],
        "db": grads[3] if len(weights) == 3 else None,
        "dh0": grads[-1] if h0 is not None else None,
    }


def check_against_reference(result, expected, tol, grads=True):
    """Asserts a `run_tf` result equals an `rnn_reference` dict."""
    assert_rel_close(result["y"], expected["y"], tol, "output")
    if result["state"] is not None:
        assert_rel_close(result["state"], expected["state"], tol, "state")
    if not grads:
        return
    for key in ("dx", "dW", "dU", "db", "dh0"):
        if result[key] is not None:
            assert_rel_close(result[key], expected[key], tol, key)


def pytest_collection_modifyitems(config, items):
    """Skips tests marked `tensorflow_only` on any other Keras backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason=f"needs the TensorFlow backend (KERAS_BACKEND={backend})"
    )
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused path (`VanillaRNN._fused_inner_loop`), so a
    test can assert which path a layer really took."""
    from keras_vrnn.layer import VanillaRNN

    calls = []
    original = VanillaRNN._fused_inner_loop

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(VanillaRNN, "_fused_inner_loop", spy)
    return calls


@pytest.fixture
def no_xla(monkeypatch):
    """Runs the fused TensorFlow XLA loops (the fallback of the native
    kernels) without XLA compilation, where they run.

    The XLA loops are compiled once per activation, dropout variant and
    input shape, ~1-2 s each on a small CPU. test_fused.py tests both
    shipped implementations (native kernels and compiled XLA loops) against
    the generic loop and the NumPy reference; test_layer.py and
    test_cell.py, which test the layer's API and its agreement with
    SimpleRNN, run the native kernels, or the same XLA loop code uncompiled.
    """
    monkeypatch.setenv("KERAS_VRNN_XLA", "0")


@pytest.fixture(scope="session")
def ref():
    """This module: `ref.rnn_reference(...)`, `ref.assert_rel_close(...)`..."""
    return sys.modules[__name__]


@pytest.fixture
def restore_policy():
    """Restores Keras' global dtype policy after a test that changes it."""
    import keras

    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)



# ---------------------------------------------------------------------------
# Experiment command lines that must fail
# ---------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_line(err):
    """The single stderr line of a failed experiment run (asserting that it
    is one line, `error: ...`, and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def assert_cli_errors(cases):
    """Runs `{case: (args after "python -m", fragment)}` as concurrent real
    processes in the repository (without TF_CONFIG); each must exit with
    status 2 and one error line containing its fragment."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for case, (args, _) in cases.items()
    }
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case, err)
        assert cases[case][1] in error_line(err), (case, err)


__all__ = [
    "ACTIVATIONS",
    "assert_cli_errors",
    "error_line",
    "fused_covers",
    "assert_rel_close",
    "check_against_reference",
    "make_problem",
    "rel_err",
    "rnn_forward",
    "rnn_reference",
    "run_tf",
]
