"""Tests for keras_vrnn.diagnostics: per-timestep BPTT gradient norms and the
Jacobian / kernel statistics next to them.

Every configuration of `timestep_gradient_norms` is checked twice in float64:
against a hand-written NumPy BPTT (min-char-rnn style) of a tanh RNN with a
Dense readout and an MSE loss, and against central finite differences on the
probe (a non-zero probe adds epsilon to h_t of one sample, step and unit).
Backend-neutral: the same tests run on TensorFlow, JAX and torch (autodiff
references by the backend's own autodiff, `grad_of`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vrnn  # noqa: E402
from keras_vrnn import diagnostics  # noqa: E402
from keras_vrnn.initializers import ScaledOrthogonal  # noqa: E402
from keras_vrnn.probe import attached_probe  # noqa: E402

B, T, F, U, O = 2, 4, 3, 3, 2  # batch, timesteps, features, units, outputs
BACKEND = keras.backend.backend()


@pytest.fixture
def float64(monkeypatch):
    """Builds models in float64 (layers, loss) and restores the defaults.

    Keras' type promotion maps float64 to float32 on backends other than
    TensorFlow (`ops.tanh` of float64 is float32 on JAX, a torch Dense
    layer adds its float64 bias in float32): here it keeps float64. On JAX,
    x64 is enabled for the test.
    """
    from keras.src.backend.common import dtypes

    monkeypatch.setitem(dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
    floatx = keras.config.floatx()
    policy = keras.config.dtype_policy()
    if BACKEND == "jax":
        import jax

        x64 = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)
    if BACKEND == "jax":
        jax.config.update("jax_enable_x64", x64)


def compiled(fn):
    """`fn` compiled by the backend (weights read as constants), for the
    many evaluations of finite differences; eager on torch."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def grad_of(f, z):
    """d f(z) / dz of a scalar function of one tensor, by the backend's own
    autodiff, as a NumPy array."""
    z = keras.ops.convert_to_tensor(z)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(z)
            out = f(z)
        return tape.gradient(out, z).numpy()
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(f)(z))
    import torch

    z = z.detach().requires_grad_()
    return torch.autograd.grad(f(z), z)[0].detach().cpu().numpy()


def assert_path(fused_calls, kind):
    """The path really taken: fused by default, the generic loop otherwise
    (a probed torch call may take either)."""
    if kind != "fused" or BACKEND != "torch":
        assert bool(fused_calls) == (kind == "fused")


def _data(seed=0, batch=B, timesteps=T, features=F, outputs=O, sequences=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, features))
    shape = (batch, timesteps, outputs) if sequences else (batch, outputs)
    y = rng.standard_normal(shape)
    return x, y


def _rnn(kind, units=U, seed=0, **kwargs):
    """One RNN layer of the kind under test; random, non-trivial weights."""
    init = dict(
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.8, seed=seed),
        recurrent_initializer=ScaledOrthogonal(gain=1.2, seed=seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=seed + 1),
    )
    if kind == "fused":
        return keras_vrnn.VanillaRNN(units, **init, **kwargs)
    if kind == "generic":
        return keras_vrnn.VanillaRNN(units, use_fused=False, **init, **kwargs)
    assert kind == "cell"
    return keras.layers.RNN(keras_vrnn.VanillaRNNCell(units, **init), **kwargs)


def _compile(model):
    model.compile(optimizer="sgd", loss="mse")
    return model


def _w(layer):
    cell = layer.cell
    f = lambda v: np.asarray(v.numpy(), np.float64)  # noqa: E731
    return f(cell.kernel), f(cell.recurrent_kernel), f(cell.bias)


def _dense_w(layer):
    return (
        np.asarray(layer.kernel.numpy(), np.float64),
        np.asarray(layer.bias.numpy(), np.float64),
    )


# ---------------------------------------------------------------------------
# NumPy float64 reference: forward, BPTT (min-char-rnn style)
# ---------------------------------------------------------------------------


def np_forward(x, W, U_, b, go_backwards=False, mask=None):
    """tanh RNN in processing order. Returns (activations, states, mask) with
    states[:, t] the carried state after step t (== activation unless the
    step is masked)."""
    xs = x[:, ::-1] if go_backwards else x
    ms = None if mask is None else (mask[:, ::-1] if go_backwards else mask)
    h = np.zeros((x.shape[0], U_.shape[0]))
    acts, states = [], []
    for t in range(xs.shape[1]):
        a = np.tanh(xs[:, t] @ W + h @ U_ + b)
        h = a if ms is None else np.where(ms[:, t, None], a, h)
        acts.append(a)
        states.append(h)
    return np.stack(acts, 1), np.stack(states, 1), ms


def np_backward(acts, W, U_, d_states, ms=None, direct=False):
    """BPTT: dh_t = d_out_t + W_hh^T (dh_{t+1} * (1 - h_{t+1}^2)).

    `d_states` (B, T, U) is the gradient w.r.t. each step's output, in
    processing order. Returns the reported dL/dh_t (0 at masked steps; the
    direct part only with `direct`) and dL/dx, both in processing order.
    """
    carry = np.zeros_like(acts[:, 0])
    reported = np.zeros_like(acts)
    dx = np.zeros(acts.shape[:2] + (W.shape[0],))
    for t in reversed(range(acts.shape[1])):
        carry = carry + d_states[:, t]
        keep = np.ones((acts.shape[0], 1), bool) if ms is None else ms[:, t, None]
        reported[:, t] = np.where(keep, d_states[:, t] if direct else carry, 0.0)
        dz = carry * (1.0 - acts[:, t] ** 2)
        dx[:, t] = np.where(keep, dz @ W.T, 0.0)
        carry = np.where(keep, dz @ U_.T, carry)
    return reported, dx


def np_mse_grad(y_in, Wy, by, target, sample_weight=None):
    """dL/d(readout input) for L = Keras MSE (mean over all entries)."""
    y = y_in @ Wy + by
    w = 1.0
    if sample_weight is not None:
        w = sample_weight.reshape((-1,) + (1,) * (y.ndim - 1))
    dy = 2.0 * w * (y - target) / y.size
    return dy @ Wy.T


def _last_only(d_last, timesteps):
    d = np.zeros((d_last.shape[0], timesteps, d_last.shape[-1]))
    d[:, -1] = d_last
    return d


def reference_single(layer, dense, x, y, return_sequences, mask=None,
                     sample_weight=None, direct=False):
    W, U_, b = _w(layer)
    acts, states, ms = np_forward(x, W, U_, b, mask=mask)
    Wy, by = _dense_w(dense)
    y_in = states if return_sequences else states[:, -1]
    d_in = np_mse_grad(y_in, Wy, by, y, sample_weight)
    d_states = d_in if return_sequences else _last_only(d_in, x.shape[1])
    reported, _ = np_backward(acts, W, U_, d_states, ms, direct)
    return np.linalg.norm(reported, axis=-1)


def reference_stacked(l1, l2, dense, x, y, return_sequences, direct=False):
    W1, U1, b1 = _w(l1)
    W2, U2, b2 = _w(l2)
    acts1, h1, _ = np_forward(x, W1, U1, b1)
    acts2, h2, _ = np_forward(h1, W2, U2, b2)
    Wy, by = _dense_w(dense)
    y_in = h2 if return_sequences else h2[:, -1]
    d_in = np_mse_grad(y_in, Wy, by, y)
    d2 = d_in if return_sequences else _last_only(d_in, x.shape[1])
    rep2, dh1 = np_backward(acts2, W2, U2, d2, direct=direct)
    # The lower layer's direct part still includes the upper layer's full
    # recurrence (only its own h_{t+1} path is cut).
    _, dh1_full = np_backward(acts2, W2, U2, d2)
    rep1, _ = np_backward(acts1, W1, U1, dh1_full, direct=direct)
    return np.linalg.norm(rep1, axis=-1), np.linalg.norm(rep2, axis=-1)


def reference_bidirectional(bi, dense, x, y, return_sequences, direct=False):
    Wf, Uf, bf = _w(bi.forward_layer)
    Wb, Ub, bb = _w(bi.backward_layer)
    acts_f, hf, _ = np_forward(x, Wf, Uf, bf)
    acts_b, hb, _ = np_forward(x, Wb, Ub, bb, go_backwards=True)  # processing order
    Wy, by = _dense_w(dense)
    units = Uf.shape[0]
    if return_sequences:
        y_in = np.concatenate([hf, hb[:, ::-1]], axis=-1)  # both by input time
        d_in = np_mse_grad(y_in, Wy, by, y)
        d_f, d_b = d_in[..., :units], d_in[..., units:][:, ::-1]
    else:
        y_in = np.concatenate([hf[:, -1], hb[:, -1]], axis=-1)
        d_in = np_mse_grad(y_in, Wy, by, y)
        d_f = _last_only(d_in[..., :units], x.shape[1])
        d_b = _last_only(d_in[..., units:], x.shape[1])
    rep_f, _ = np_backward(acts_f, Wf, Uf, d_f, direct=direct)
    rep_b, _ = np_backward(acts_b, Wb, Ub, d_b, direct=direct)
    return np.linalg.norm(rep_f, axis=-1), np.linalg.norm(rep_b[:, ::-1], axis=-1)


# ---------------------------------------------------------------------------
# Central finite differences
# ---------------------------------------------------------------------------


def _fd(loss_of, shape, eps=1e-6):
    """Central differences of a scalar `loss_of(delta)` w.r.t. every entry
    of a (B, T, U) perturbation; returns ||grad|| over U, (B, T)."""
    grads = np.zeros(shape)
    for index in np.ndindex(*shape):
        delta = np.zeros(shape)
        delta[index] = eps
        plus = float(loss_of(keras.ops.convert_to_tensor(delta)))
        minus = float(loss_of(keras.ops.convert_to_tensor(-delta)))
        grads[index] = (plus - minus) / (2 * eps)
    return np.linalg.norm(grads, axis=-1)


def fd_total(model, layer, x, y, sample_weight=None, eps=1e-6):
    """||dL/dh_t|| by central differences on a probe attached to `layer`:
    the probe adds epsilon to h_t of one sample, step and unit."""
    x = keras.ops.convert_to_tensor(x)
    sw = None if sample_weight is None else keras.ops.convert_to_tensor(sample_weight)

    @compiled  # one trace, then graph-speed evaluations
    def loss_of(probe):
        with attached_probe(layer, probe):
            y_pred = model(x, training=False)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw,
                                  training=False)

    return _fd(loss_of, (x.shape[0], x.shape[1], layer.cell.units), eps)


def fd_direct(model, h, downstream, x, y, eps=1e-6):
    """||d+L/dh_t||: perturb the hidden sequence `h` (B, T, U) only where the
    rest of the network reads it (`downstream(h)` -> y_pred), not in the
    recurrence that produced it."""
    h = keras.ops.convert_to_tensor(h)

    @compiled
    def loss_of(delta):
        y_pred = downstream(h + delta)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)

    return _fd(loss_of, tuple(h.shape), eps)


def _close(actual, expected, tol=1e-7, what=""):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(np.max(np.abs(expected)), 1e-30)
    err = np.max(np.abs(actual - expected)) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


KINDS = ["fused", "generic", "cell"]


# ---------------------------------------------------------------------------
# timestep_gradient_norms: every configuration, NumPy BPTT and FD
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_single_layer(float64, fused_calls, kind, return_sequences):
    x, y = _data(sequences=return_sequences)
    rnn = _rnn(kind, return_sequences=return_sequences, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    fused_calls.clear()
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)
    assert list(norms) == ["rnn"]
    assert norms["rnn"].shape == (B, T) and norms["rnn"].dtype == np.float64
    assert_path(fused_calls, kind)
    expected = reference_single(rnn, dense, x, y, return_sequences)
    _close(norms["rnn"], expected, 1e-9, "numpy BPTT")
    _close(norms["rnn"], fd_total(model, rnn, x, y), 1e-6, "finite differences")
    # Full BPTT: not just the direct part (which is 0 before T-1 for "last").
    assert np.all(norms["rnn"] > 0)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_direct_only(float64, kind, return_sequences):
    x, y = _data(sequences=return_sequences)
    rnn = _rnn(kind, return_sequences=return_sequences, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)["rnn"]
    expected = reference_single(rnn, dense, x, y, return_sequences, direct=True)
    _close(norms, expected, 1e-9, "numpy direct")

    h = np.asarray(_rnn_sequence(rnn, x))

    def downstream(hp):
        return dense(hp if return_sequences else hp[:, -1])

    fd = fd_direct(model, h, downstream, x, y)
    _close(norms, fd, 1e-6, "finite differences (direct)")
    if not return_sequences:
        assert np.all(norms[:, :-1] == 0.0) and np.all(norms[:, -1] > 0)
    total = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    assert not np.allclose(total, norms)


def _rnn_sequence(layer, x):
    """The full hidden sequence of an RNN layer (whatever return_sequences)."""
    seq = layer.return_sequences
    object.__setattr__(layer, "return_sequences", True)
    try:
        return keras.ops.convert_to_numpy(layer(x))
    finally:
        object.__setattr__(layer, "return_sequences", seq)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", ["fused", "generic"])
def test_stacked_layers(float64, kind, return_sequences):
    x, y = _data(sequences=return_sequences)
    l1 = _rnn(kind, return_sequences=True, name="lower", seed=1)
    l2 = _rnn(
        kind, units=U + 1, return_sequences=return_sequences, name="upper", seed=2
    )
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), l1, l2, dense]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)
    assert list(norms) == ["lower", "upper"]
    ref1, ref2 = reference_stacked(l1, l2, dense, x, y, return_sequences)
    _close(norms["lower"], ref1, 1e-9, "numpy lower")
    _close(norms["upper"], ref2, 1e-9, "numpy upper")
    _close(norms["lower"], fd_total(model, l1, x, y), 1e-6, "fd lower")
    _close(norms["upper"], fd_total(model, l2, x, y), 1e-6, "fd upper")

    direct = keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)
    ref1, ref2 = reference_stacked(l1, l2, dense, x, y, return_sequences, direct=True)
    _close(direct["lower"], ref1, 1e-9, "numpy lower direct")
    _close(direct["upper"], ref2, 1e-9, "numpy upper direct")
    h1 = keras.ops.convert_to_numpy(l1(x))
    fd = fd_direct(model, h1, lambda hp: dense(l2(hp)), x, y)
    _close(direct["lower"], fd, 1e-6, "fd lower direct")


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional(float64, kind, return_sequences):
    x, y = _data(sequences=return_sequences)
    bi = keras.layers.Bidirectional(
        _rnn(kind, return_sequences=return_sequences), name="bi"
    )
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), bi, dense]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)
    assert list(norms) == ["bi/forward", "bi/backward"]
    ref_f, ref_b = reference_bidirectional(bi, dense, x, y, return_sequences)
    _close(norms["bi/forward"], ref_f, 1e-9, "numpy forward")
    _close(norms["bi/backward"], ref_b, 1e-9, "numpy backward")
    fd_f = fd_total(model, bi.forward_layer, x, y)
    fd_b = fd_total(model, bi.backward_layer, x, y)
    _close(norms["bi/forward"], fd_f, 1e-6, "fd forward")
    _close(norms["bi/backward"], fd_b, 1e-6, "fd backward")
    if not return_sequences:
        # The backward layer's output is its state at input time 0: its
        # gradient is largest there and flows towards later input times.
        assert np.all(norms["bi/backward"][:, 0] > 0)

    direct = keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)
    ref_f, ref_b = reference_bidirectional(bi, dense, x, y, return_sequences, True)
    _close(direct["bi/forward"], ref_f, 1e-9, "numpy forward direct")
    _close(direct["bi/backward"], ref_b, 1e-9, "numpy backward direct")


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_masking(float64, kind, return_sequences):
    x, y = _data(seed=3, timesteps=T + 1, sequences=return_sequences)
    x[0, -2:] = 0.0  # sample 0: two padded steps at the end
    x[1, 1] = 0.0  # sample 1: one masked step in the middle
    mask = np.any(x != 0.0, axis=-1)
    rnn = _rnn(kind, return_sequences=return_sequences, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(
        keras.Sequential(
            [keras.Input((T + 1, F)), keras.layers.Masking(0.0), rnn, dense]
        )
    )
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    assert np.all(norms[~mask] == 0.0)  # exactly zero
    assert np.all(norms[mask] > 0.0)
    _close(norms, fd_total(model, rnn, x, y), 1e-6, "finite differences")
    if not return_sequences:  # Keras masks the loss for sequences; not here
        expected = reference_single(rnn, dense, x, y, False, mask=mask)
        _close(norms, expected, 1e-9, "numpy")
    direct = keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)["rnn"]
    assert np.all(direct[~mask] == 0.0)


def test_sample_weight(float64):
    x, y = _data(seed=4, sequences=False)
    sw = np.array([0.3, 2.0])
    rnn = _rnn("fused", return_sequences=False, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y, sample_weight=sw)["rnn"]
    _close(norms, fd_total(model, rnn, x, y, sample_weight=sw), 1e-6, "fd")
    expected = reference_single(rnn, dense, x, y, False, sample_weight=sw)
    _close(norms, expected, 1e-9, "numpy")
    unweighted = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    assert not np.allclose(norms, unweighted)


def test_float32_model_matches_reference():
    x, y = _data(seed=5)
    x, y = x.astype("float32"), y.astype("float32")
    rnn = _rnn("fused", return_sequences=True, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    assert norms.dtype == np.float64
    _close(norms, reference_single(rnn, dense, x.astype("float64"), y, True), 1e-5)


def test_nested_models_and_functional(float64):
    """RNN layers inside a sub-model and a custom layer are found."""
    x, y = _data(seed=6)

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rnn = keras_vrnn.VanillaRNN(U, return_sequences=True, name="in_block")

        def call(self, inputs):
            return self.rnn(inputs)

    inner = keras.Sequential(
        [keras.Input((T, F)), _rnn("cell", return_sequences=True, name="inner_rnn")],
        name="inner",
    )
    inputs = keras.Input((T, F))
    h = inner(inputs)
    h = Block(name="block")(h)
    outputs = keras.layers.Dense(O)(h)
    model = _compile(keras.Model(inputs, outputs))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)
    assert list(norms) == ["inner_rnn", "in_block"]
    layer = model.get_layer("inner").get_layer("inner_rnn")
    _close(norms["inner_rnn"], fd_total(model, layer, x, y), 1e-6, "fd nested")


def test_use_fused_true_with_direct(float64):
    x, y = _data(seed=7)
    rnn = keras_vrnn.VanillaRNN(U, return_sequences=True, use_fused=True, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    direct = keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)["rnn"]
    _close(direct, reference_single(rnn, dense, x, y, True, direct=True), 1e-9)
    assert rnn.use_fused is True


# ---------------------------------------------------------------------------
# Graph speed, caching, side effects
# ---------------------------------------------------------------------------


def test_cached_function_retraces_only_for_new_signature():
    x, y = _data(seed=8, batch=4)
    x, y = x.astype("float32"), y.astype("float32")
    model = _compile(
        keras.Sequential(
            [
                keras.Input((T, F)),
                keras_vrnn.VanillaRNN(U, return_sequences=True),
                keras.layers.Dense(O),
            ]
        )
    )
    first = keras_vrnn.timestep_gradient_norms(model, x, y)
    (fn,) = diagnostics._NORMS_FUNCTIONS[model].values()

    def traces():  # torch runs eagerly: nothing to count
        if BACKEND == "tensorflow":
            return fn.compiled.experimental_get_tracing_count()
        return fn.compiled._cache_size() if BACKEND == "jax" else None

    assert traces() in (1, None)
    for _ in range(3):
        again = keras_vrnn.timestep_gradient_norms(model, x * 1.0, y)
    np.testing.assert_array_equal(list(first.values())[0], list(again.values())[0])
    assert traces() in (1, None)
    keras_vrnn.timestep_gradient_norms(model, x[:2], y[:2])  # new batch size
    assert traces() in (2, None)
    keras_vrnn.timestep_gradient_norms(model, x, y, direct=True)  # its own function
    assert len(diagnostics._NORMS_FUNCTIONS[model]) == 2


def test_model_state_left_unchanged():
    """Loss-tracking metrics (multi-output) and stateful states are restored."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, T, F)).astype("float32")
    ya, yb = rng.standard_normal((4, T, 1)), rng.standard_normal((4, 1))
    inputs = keras.Input(batch_shape=(4, T, F))
    rnn = keras_vrnn.VanillaRNN(U, return_sequences=True, stateful=True, name="rnn")
    h = rnn(inputs)
    out_a = keras.layers.Dense(1, name="a")(h)
    out_b = keras.layers.Dense(1, name="b")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, [out_a, out_b])
    model.compile("sgd", loss=["mse", "mse"])
    model.train_on_batch(x, [ya, yb])
    # Set, since a step updates the states on TensorFlow and torch, not JAX.
    model.get_layer("rnn").states[0].assign(rng.standard_normal((4, U)).astype("float32"))
    before = [v.numpy() for v in model.metrics_variables]
    states = [v.numpy() for v in model.get_layer("rnn").states]
    assert np.any(states[0] != 0)
    norms = keras_vrnn.timestep_gradient_norms(model, x, [ya, yb])
    assert norms["rnn"].shape == (4, T)
    after = [v.numpy() for v in model.metrics_variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(states[0], model.get_layer("rnn").states[0].numpy())


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def _simple_model(compiled=True):
    model = keras.Sequential(
        [keras.Input((T, F)), keras_vrnn.VanillaRNN(U), keras.layers.Dense(O)]
    )
    return _compile(model) if compiled else model


def test_errors():
    x, y = _data(sequences=False)
    with pytest.raises(ValueError, match="not compiled.*Received"):
        keras_vrnn.timestep_gradient_norms(_simple_model(compiled=False), x, y)
    with pytest.raises(ValueError, match="Received: x batch size 2, y batch size 3"):
        keras_vrnn.timestep_gradient_norms(_simple_model(), x, np.zeros((3, O)))
    with pytest.raises(ValueError, match="sample_weight batch size 5"):
        keras_vrnn.timestep_gradient_norms(
            _simple_model(), x, y, sample_weight=np.ones(5)
        )
    dense_only = _compile(
        keras.Sequential(
            [keras.Input((T, F)), keras.layers.Flatten(), keras.layers.Dense(O)]
        )
    )
    with pytest.raises(ValueError, match="found no .*Received: model"):
        keras_vrnn.timestep_gradient_norms(dense_only, x, y)
    with pytest.raises(ValueError, match="Received: model of type"):
        keras_vrnn.timestep_gradient_norms(keras_vrnn.VanillaRNN(2), x, y)
    with pytest.raises(ValueError, match="Received: direct="):
        keras_vrnn.timestep_gradient_norms(_simple_model(), x, y, direct=1)


def test_stacked_cells_rnn_is_skipped(caplog):
    x, y = _data(sequences=False)
    model = _compile(keras.Sequential([
        keras.Input((T, F)),
        keras.layers.RNN([keras_vrnn.VanillaRNNCell(2), keras_vrnn.VanillaRNNCell(2)]),
        keras.layers.Dense(O),
    ]))
    with caplog.at_level("WARNING", logger="keras_vrnn"):
        with pytest.raises(ValueError, match="found no"):
            keras_vrnn.timestep_gradient_norms(model, x, y)
    assert "StackedRNNCells" in caplog.text


# ---------------------------------------------------------------------------
# Causes: kernel statistics, state Jacobians; summaries
# ---------------------------------------------------------------------------


def test_recurrent_kernel_stats():
    layer = keras_vrnn.VanillaRNN(
        6, recurrent_initializer=ScaledOrthogonal(gain=0.9, seed=0)
    )
    layer.build((None, T, F))
    stats = keras_vrnn.recurrent_kernel_stats(layer)
    assert set(stats) == {"spectral_radius", "max_singular_value"}
    assert isinstance(stats["spectral_radius"], np.float64)
    np.testing.assert_allclose(stats["spectral_radius"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(stats["max_singular_value"], 0.9, rtol=1e-6)

    cell = keras_vrnn.VanillaRNNCell(
        6,
        recurrent_initializer=keras_vrnn.initializers.SpectralRadiusNormal(
            0.7, seed=1
        ),
    )
    rnn = keras.layers.RNN(cell)
    rnn.build((None, T, F))
    for obj in (cell, rnn):
        stats = keras_vrnn.recurrent_kernel_stats(obj)
        np.testing.assert_allclose(stats["spectral_radius"], 0.7, rtol=1e-5)
        assert stats["max_singular_value"] > 0.7  # non-normal

    cell.recurrent_kernel.assign(np.full((6, 6), np.nan))
    assert np.isnan(keras_vrnn.recurrent_kernel_stats(cell)["spectral_radius"])
    with pytest.raises(ValueError, match="Received: unbuilt"):
        keras_vrnn.recurrent_kernel_stats(keras_vrnn.VanillaRNN(3))
    with pytest.raises(ValueError, match="Received: Bidirectional"):
        keras_vrnn.recurrent_kernel_stats(
            keras.layers.Bidirectional(keras_vrnn.VanillaRNN(3))
        )
    with pytest.raises(ValueError, match="Received: Dense"):
        keras_vrnn.recurrent_kernel_stats(keras.layers.Dense(3))


def _autodiff_state_jacobian_norms(layer, x, mask=None):
    """||dh_final/dh_t||_2 by the backend's autodiff: a zero probe on h_t,
    the Jacobian of the final state w.r.t. the probe, one unit at a time."""
    x = keras.ops.convert_to_tensor(x)
    batch, timesteps = x.shape[:2]
    units = layer.cell.units
    kwargs = {} if mask is None else {"mask": keras.ops.convert_to_tensor(mask)}
    seq = layer.return_sequences
    object.__setattr__(layer, "return_sequences", False)

    def final_unit(u):
        def f(probe):
            with attached_probe(layer, probe):
                return keras.ops.sum(layer(x, **kwargs)[:, u])
        return f

    try:
        zeros = np.zeros((batch, timesteps, units), keras.backend.standardize_dtype(x.dtype))
        jac = np.stack([grad_of(final_unit(u), zeros) for u in range(units)], 1)
    finally:  # jac: (B, U, T, U)
        object.__setattr__(layer, "return_sequences", seq)
    out = np.zeros((batch, timesteps))
    for b in range(batch):
        for t in range(timesteps):
            out[b, t] = np.linalg.norm(jac[b, :, t, :], 2)
    return out


@pytest.mark.parametrize(
    "activation, go_backwards, masked",
    [("tanh", False, False), ("relu", False, False), ("sigmoid", True, False),
     ("softplus", False, False), ("tanh", False, True)],
)
def test_state_jacobian_norms_match_autodiff(float64, activation, go_backwards, masked):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 6, F))
    mask = None
    if masked:
        mask = np.ones((3, 6), bool)
        mask[0, 2] = False
        mask[1, 4:] = False
    layer = keras_vrnn.VanillaRNN(
        4, activation=activation, go_backwards=go_backwards,
        recurrent_initializer=ScaledOrthogonal(gain=1.3, seed=2),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=3),
        name="rnn",
    )
    if masked:
        inputs = keras.Input((6, F))
        input_mask = keras.ops.any(keras.ops.not_equal(inputs, 0.0), axis=-1)
        model = keras.Model(inputs, layer(inputs, mask=input_mask))
        x[~mask] = 0.0
        result = keras_vrnn.state_jacobian_norms(model, x, max_samples=2)
    else:
        result = keras_vrnn.state_jacobian_norms(layer, x, max_samples=2)
    assert list(result) == ["rnn"]
    norms = result["rnn"]
    assert norms.shape == (2, 6)
    expected = _autodiff_state_jacobian_norms(
        layer, x[:2], None if mask is None else mask[:2]
    )
    if masked:
        # Autodiff reports 0 at masked steps (h_t is discarded there); the
        # Jacobian function treats them as identity steps. Compare the rest.
        keep = mask[:2]
        _close(norms[keep], expected[keep], 1e-9, activation)
    else:
        _close(norms, expected, 1e-9, activation)
    last = 0 if go_backwards else -1
    np.testing.assert_allclose(norms[:, last], 1.0)


def test_state_jacobian_norms_linear_orthogonal_and_bidirectional():
    rho = 0.8
    rnn = keras_vrnn.VanillaRNN(
        5, activation=None, recurrent_initializer=ScaledOrthogonal(gain=rho, seed=0),
        return_sequences=True,
    )
    model = keras.Sequential(
        [keras.Input((7, F)), keras.layers.Bidirectional(rnn, name="bi")]
    )
    x = np.random.default_rng(11).standard_normal((4, 7, F)).astype("float32")
    norms = keras_vrnn.state_jacobian_norms(model, x, max_samples=3)
    assert list(norms) == ["bi/forward", "bi/backward"]
    k = np.arange(6, -1, -1)
    expected = np.broadcast_to(rho**k, (3, 7))
    np.testing.assert_allclose(norms["bi/forward"], expected, rtol=1e-5)
    np.testing.assert_allclose(norms["bi/backward"], expected[:, ::-1], rtol=1e-5)
    with pytest.raises(ValueError, match="Received: max_samples=0"):
        keras_vrnn.state_jacobian_norms(model, x, max_samples=0)


@pytest.mark.parametrize("rho", [0.8, 1.1])
def test_fit_decay_factor_linear_orthogonal(rho):
    """Linear RNN, W_hh = rho * orthogonal, loss on the last output: the
    measured gradient norms decay (or grow) by exactly rho per step back."""
    timesteps = 24
    rng = np.random.default_rng(12)
    x = rng.standard_normal((8, timesteps, F)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    model = _compile(keras.Sequential([
        keras.Input((timesteps, F)),
        keras_vrnn.VanillaRNN(
            16,
            activation="linear",
            recurrent_initializer=ScaledOrthogonal(gain=rho, seed=3),
            name="rnn",
        ),
        keras.layers.Dense(1),
    ]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    factor = keras_vrnn.fit_decay_factor(norms)
    assert abs(factor - rho) <= 0.05 * rho, factor
    assert abs(keras_vrnn.fit_decay_factor(norms.mean(axis=0)) - rho) <= 0.05 * rho


def test_fit_decay_factor_and_effective_horizon_synthetic():
    k = np.arange(29, -1, -1)
    profile = 3.0 * 0.5 ** k  # (30,), last step 3.0
    assert keras_vrnn.fit_decay_factor(profile) == pytest.approx(0.5, rel=1e-12)
    noisy = profile * np.exp(np.random.default_rng(0).normal(0, 0.1, (5, 30)))
    assert keras_vrnn.fit_decay_factor(noisy) == pytest.approx(0.5, rel=0.03)
    with_bad = profile.copy()
    with_bad[[3, 10]] = 0.0
    with_bad[5] = np.nan
    with_bad[6] = np.inf
    assert keras_vrnn.fit_decay_factor(with_bad) == pytest.approx(0.5, rel=1e-12)
    assert np.isnan(keras_vrnn.fit_decay_factor(np.array([0.0, 0.0, 1.0])))
    assert keras_vrnn.fit_decay_factor(1.5 ** k) == pytest.approx(1.5)

    # 0.5**10 = 9.8e-4 < 1e-3 <= 0.5**9
    assert keras_vrnn.effective_horizon(profile) == 10
    assert keras_vrnn.effective_horizon(profile, threshold=0.1) == 4
    assert keras_vrnn.effective_horizon(np.ones(30)) == 30
    assert keras_vrnn.effective_horizon(np.tile(profile, (3, 1))) == 10
    trailing = np.concatenate([profile, [0.0, 0.0]])  # masked trailing steps
    assert keras_vrnn.effective_horizon(trailing) == 10
    assert np.isnan(keras_vrnn.effective_horizon(np.zeros(5)))
    with pytest.raises(ValueError, match="Received: threshold=0"):
        keras_vrnn.effective_horizon(profile, threshold=0)
    with pytest.raises(ValueError, match="Received: norms with shape"):
        keras_vrnn.fit_decay_factor(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------
# Last-step credit: ||dl_T/dh_t||, l_T the loss of the last time step alone
# ---------------------------------------------------------------------------


def reference_last_step(layer, dense, x, y, return_sequences, sample_weight=None):
    """NumPy BPTT of l_T: for per-step outputs, the MSE of y_pred[:, -1]
    against y[:, -1] (mean over the batch and outputs); otherwise L."""
    W, U_, b = _w(layer)
    acts, states, _ = np_forward(x, W, U_, b)
    Wy, by = _dense_w(dense)
    target = y[:, -1] if return_sequences else y
    d_in = np_mse_grad(states[:, -1], Wy, by, target, sample_weight)
    reported, _ = np_backward(acts, W, U_, _last_only(d_in, x.shape[1]))
    return np.linalg.norm(reported, axis=-1)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", KINDS)
def test_last_step_only(float64, fused_calls, kind, return_sequences):
    x, y = _data(seed=21, sequences=return_sequences)
    rnn = _rnn(kind, return_sequences=return_sequences, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    fused_calls.clear()
    norms = keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only=True)
    assert list(norms) == ["rnn"] and norms["rnn"].shape == (B, T)
    assert_path(fused_calls, kind)  # the fused path, one pass
    expected = reference_last_step(rnn, dense, x, y, return_sequences)
    _close(norms["rnn"], expected, 1e-9, "numpy BPTT of l_T")

    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)

    @compiled
    def last_loss(probe):  # l_T by its definition, for finite differences
        with attached_probe(rnn, probe):
            y_pred = model(xt, training=False)
        if return_sequences:
            return keras.losses.mean_squared_error(yt[:, -1], y_pred[:, -1])[None]
        return model.compute_loss(x=xt, y=yt, y_pred=y_pred, training=False)[None]

    fd = _fd(lambda p: keras.ops.mean(last_loss(p)), (B, T, U))
    _close(norms["rnn"], fd, 1e-6, "finite differences of l_T")
    total = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    if return_sequences:
        assert not np.allclose(total, norms["rnn"])
    else:  # the output is the last step: l_T is the loss itself
        _close(norms["rnn"], total, 1e-12, "last-step model")


def test_last_step_only_slices_sample_weights(float64):
    x, y = _data(seed=22)
    rnn = _rnn("fused", return_sequences=True, name="rnn")
    dense = keras.layers.Dense(O)
    model = _compile(keras.Sequential([keras.Input((T, F)), rnn, dense]))
    per_sample = np.array([0.3, 2.0])
    norms = keras_vrnn.timestep_gradient_norms(
        model, x, y, sample_weight=per_sample, last_step_only=True
    )["rnn"]
    expected = reference_last_step(rnn, dense, x, y, True, per_sample)
    _close(norms, expected, 1e-9, "per-sample weights")
    # Temporal weights (batch, T): only the last step's column counts.
    temporal = np.ones((B, T)) * 5.0
    temporal[:, -1] = per_sample
    norms = keras_vrnn.timestep_gradient_norms(
        model, x, y, sample_weight=temporal, last_step_only=True
    )["rnn"]
    _close(norms, expected, 1e-9, "temporal weights, last column")
    with pytest.raises(ValueError, match="Received: last_step_only='yes'"):
        keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only="yes")


def test_last_step_only_linear_orthogonal_decays_by_the_gain():
    """Linear RNN, W_hh = rho * orthogonal, sequence output: the last step's
    credit to h_t is exactly ||dl_T/dh_T|| rho^(T-1-t)."""
    timesteps, rho = 12, 0.7
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, timesteps, F)).astype("float32")
    y = rng.standard_normal((4, timesteps, 1)).astype("float32")
    model = _compile(keras.Sequential([
        keras.Input((timesteps, F)),
        keras_vrnn.VanillaRNN(
            8, activation="linear", return_sequences=True,
            recurrent_initializer=ScaledOrthogonal(gain=rho, seed=4),
        ),
        keras.layers.Dense(1),
    ]))
    norms = keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only=True)
    norms = next(iter(norms.values()))
    k = np.arange(timesteps - 1, -1, -1)
    np.testing.assert_allclose(norms, norms[:, -1:] * rho**k, rtol=1e-4)
    assert keras_vrnn.fit_decay_factor(norms) == pytest.approx(rho, rel=1e-5)


def test_recompile_with_another_loss_retraces(float64):
    x, y = _data(seed=24)

    def build():
        keras.utils.set_random_seed(5)
        return keras.Sequential([
            keras.Input((T, F)), _rnn("fused", return_sequences=True, name="rnn"),
            keras.layers.Dense(O),
        ])

    model = build()
    model.compile(optimizer="sgd", loss="mse")
    mse = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    mse_last = keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only=True)
    model.compile(optimizer="sgd", loss="mae")
    mae = keras_vrnn.timestep_gradient_norms(model, x, y)["rnn"]
    mae_last = keras_vrnn.timestep_gradient_norms(model, x, y, last_step_only=True)
    fresh = build()
    fresh.set_weights(model.get_weights())
    fresh.compile(optimizer="sgd", loss="mae")
    assert not np.allclose(mse, mae)
    assert not np.allclose(mse_last["rnn"], mae_last["rnn"])
    _close(mae, keras_vrnn.timestep_gradient_norms(fresh, x, y)["rnn"], 1e-12)
    expected = keras_vrnn.timestep_gradient_norms(fresh, x, y, last_step_only=True)
    _close(mae_last["rnn"], expected["rnn"], 1e-12)
    # Measuring again with the same compiled loss reuses the functions.
    functions = dict(diagnostics._NORMS_FUNCTIONS[model])
    keras_vrnn.timestep_gradient_norms(model, x, y)
    assert diagnostics._NORMS_FUNCTIONS[model] == functions
