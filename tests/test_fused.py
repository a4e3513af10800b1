"""The fused path of `VanillaRNN` against the generic loop (`use_fused=False`)
and against the float64 NumPy reference, including gradient probes.

`use_fused=True` is used for the fused side: it raises if the fused path
cannot run, so these tests cannot silently compare the generic loop with
itself.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vrnn import VanillaRNN
from keras_vrnn import VanillaRNNCell
from keras_vrnn import fused as fused_lib
from keras_vrnn import probe as probe_lib
from keras_vrnn.probe import attached_probe
from rnn_configs import ACTIVATIONS

BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.tensorflow_only

FWD_TOL = 1e-5
GRAD_TOL = 1e-4
BOOL_PAIRS = [(False, False), (True, True), (False, True), (True, False)]


def rotated(*names, extra=()):
    """Every activation x every value of `extra` (a list of tuples), each
    with one of the four value pairs of the two boolean options `names`,
    rotated so that each pair occurs with every activation and every value
    of `extra`: the interactions that matter, at a quarter of the product."""
    configs = []
    extra = list(extra) or [()]
    for i, activation in enumerate(ACTIVATIONS):
        for j, rest in enumerate(extra):
            a, b = BOOL_PAIRS[(i + j) % 4]
            values = (activation, *rest, a, b)
            configs.append(
                pytest.param(
                    *values,
                    id="-".join(
                        [activation]
                        + [str(v) for v in rest]
                        + [f"{names[0]}{int(a)}", f"{names[1]}{int(b)}"]
                    ),
                )
            )
    return configs


def _xla_only_for(activation, monkeypatch, compiled=("tanh", "relu")):
    """XLA-compiles the fused loops (as shipped) only for `compiled`
    activations. Each (activation, dropout, probe, shape) variant costs an
    XLA compilation of 1-2 s; test_fused_matches_generic compiles all four
    activations, the variant tests below run the others uncompiled (the very
    same loop code, run eagerly)."""
    if activation not in compiled:
        monkeypatch.setenv("KERAS_VRNN_XLA", "0")


@pytest.fixture(params=["native", "xla"] if BACKEND == "tensorflow" else [BACKEND])
def impl(request, monkeypatch):
    """Runs a test on each TensorFlow implementation of the fused loops: the
    native CPU kernels (as shipped, where they build) and the XLA-compiled
    loops (their fallback), and checks that the named one really ran. On
    JAX and PyTorch: once, on that backend's fused kernel."""
    if BACKEND != "tensorflow":
        yield BACKEND
        return
    from keras_vrnn import fused_tf

    fused_calls = count_calls(monkeypatch, fused_tf, "recurrence_from_inputs")
    native_calls = count_calls(monkeypatch, fused_tf, "_native_recurrence")
    if request.param == "xla":
        monkeypatch.setenv("KERAS_VRNN_NATIVE", "0")
    else:
        require_native()
    yield request.param
    # Every fused run went the named way (tests of the generic loop: none).
    assert len(native_calls) == (len(fused_calls) if request.param == "native" else 0)


def count_calls(monkeypatch, module, name):
    """A list that grows by one at each call of `module.name` (patched)."""
    calls = []
    function = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def require_native():
    """The native kernels, built and loaded; a clear failure if they cannot be
    on a CPU they are built for (a skip on one they are not: ARM, no AVX2)."""
    from keras_vrnn import native

    if not native.enabled():
        pytest.skip("native kernels disabled by KERAS_VRNN_NATIVE")
    if native.choose_isa(native.cpu_features()) is None:
        pytest.skip(f"no native kernels for this CPU ({native.cpu_model()})")
    lib = native.library()
    assert lib is not None, f"native kernels unavailable: {native.unavailable_reason()}"
    return lib


def skip_uncovered(ref, activation="tanh", recurrent_dropout=0.0):
    """Skips a test of the fused path where the backend's kernel does not
    take the configuration (test_torch_backend.py tests that fallback)."""
    if not ref.fused_covers(activation) or (BACKEND == "torch" and recurrent_dropout):
        pytest.skip(f"torch's RNN kernel: no {activation} or recurrent dropout")


def _pair(shape, weight_seed=0, ref=None, **kwargs):
    """A fused and a generic VanillaRNN with the same random weights (`ref`:
    skips configurations the backend's fused kernel does not take)."""
    if ref is not None:
        skip_uncovered(
            ref, kwargs.get("activation", "tanh"), kwargs.get("recurrent_dropout", 0)
        )
    fused = VanillaRNN(4, use_fused=True, **kwargs)
    generic = VanillaRNN(4, use_fused=False, **kwargs)
    fused.build(shape)
    generic.build(shape)
    rng = np.random.default_rng(weight_seed)
    weights = [
        (rng.standard_normal(w.shape) * 0.5).astype("float32")
        for w in fused.get_weights()
    ]
    fused.set_weights(weights)
    generic.set_weights(weights)
    return fused, generic


def _compare(ref, rf, rg):
    ref.assert_rel_close(rf["y"], rg["y"], FWD_TOL, "output")
    if rg["state"] is not None:
        ref.assert_rel_close(rf["state"], rg["state"], FWD_TOL, "state")
    for key in ("dx", "dW", "dU", "db", "dh0"):
        assert (rf[key] is None) == (rg[key] is None), key
        if rg[key] is not None:
            ref.assert_rel_close(rf[key], rg[key], GRAD_TOL, key)


@pytest.mark.parametrize(
    "activation, go_backwards, return_sequences, return_state, use_bias, "
    "initial_state",
    rotated(
        "bias", "h0",
        extra=[
            (gb, rs, st)
            for gb in (False, True)
            for rs in (False, True)
            for st in (False, True)
        ],
    ),
)
def test_fused_matches_generic(
    ref, impl, activation, use_bias, go_backwards, return_sequences, return_state,
    initial_state,
):
    p = ref.make_problem(seed=1, use_bias=use_bias, initial_state=initial_state)
    fused, generic = _pair(
        p["x"].shape, ref=ref,
        activation=activation,
        use_bias=use_bias,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        return_state=return_state,
    )
    c = p["c"] if return_sequences else p["c_last"]
    args = dict(initial_state=p["h0"], c=c, c_state=p["c_state"])
    rf, rg = ref.run_tf(fused, p["x"], **args), ref.run_tf(generic, p["x"], **args)
    _compare(ref, rf, rg)
    # And both against the float64 reference.
    expected = ref.rnn_reference(
        p["x"], *fused.get_weights()[:2],
        fused.get_weights()[2] if use_bias else None, p["h0"], activation,
        go_backwards, return_sequences, c=c,
        c_state=p["c_state"] if return_state else None,
    )
    ref.check_against_reference(rf, expected, FWD_TOL)


@pytest.mark.parametrize(
    "activation, rates, go_backwards, return_sequences",
    rotated("back", "seq", extra=[((0.4, 0.0),), ((0.0, 0.5),), ((0.3, 0.4),)]),
)
def test_fused_dropout_matches_generic(
    ref, impl, monkeypatch, activation, rates, go_backwards, return_sequences
):
    _xla_only_for(activation, monkeypatch)
    dropout, recurrent_dropout = rates
    p = ref.make_problem(seed=2, initial_state=True)
    fused, generic = _pair(
        p["x"].shape, ref=ref,
        activation=activation,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        seed=17,
    )
    c = p["c"] if return_sequences else p["c_last"]
    for _ in range(2):  # the second call draws new masks on both
        rf = ref.run_tf(fused, p["x"], p["h0"], c=c, training=True)
        rg = ref.run_tf(generic, p["x"], p["h0"], c=c, training=True)
        _compare(ref, rf, rg)
    plain = ref.run_tf(fused, p["x"], p["h0"], c=c, training=False)
    assert not np.allclose(plain["y"], rf["y"])  # dropout did something


@pytest.mark.parametrize(
    "activation, dropout, go_backwards, return_sequences",
    rotated("back", "seq", extra=[(0.0,), (0.3,)]),
)
def test_fused_stateful_matches_generic(
    ref, impl, monkeypatch, activation, dropout, go_backwards, return_sequences
):
    _xla_only_for(activation, monkeypatch)
    shape = (3, 5, 3)
    fused, generic = _pair(
        shape, ref=ref,
        stateful=True,
        activation=activation,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        dropout=dropout,
        recurrent_dropout=dropout,
        seed=5,
    )
    rng = np.random.default_rng(3)
    batches = rng.standard_normal((3,) + shape).astype("float32")
    for i, x in enumerate(batches):
        if i == 2:
            fused.reset_state()
            generic.reset_state()
        rf = ref.run_tf(fused, x, training=dropout > 0)
        rg = ref.run_tf(generic, x, training=dropout > 0)
        _compare(ref, rf, rg)
        ref.assert_rel_close(
            keras.ops.convert_to_numpy(fused.states[0]),
            keras.ops.convert_to_numpy(generic.states[0]),
            FWD_TOL,
            f"state after batch {i}",
        )


@pytest.mark.parametrize(
    "timesteps, activation, go_backwards",
    [
        (1, "tanh", False),
        (1, "tanh", True),
        (37, "tanh", True),
        (37, "relu", False),
    ],
)
def test_sequence_lengths_match_reference(ref, impl, timesteps, activation, go_backwards):
    # The TF loop runs 4 steps per iteration and zero-pads the last chunk:
    # 1 is shorter than a chunk, 37 (and 5, used everywhere else) is not a
    # multiple of 4.
    p = ref.make_problem(seed=timesteps, timesteps=timesteps, initial_state=True)
    fused, generic = _pair(
        p["x"].shape, ref=ref, activation=activation, go_backwards=go_backwards,
        return_sequences=True,
    )
    # Tame the weights so 37 linear/relu steps neither explode nor vanish.
    W = p["W"] * 0.5
    U = (p["U"] * 0.7).astype("float32")
    for layer in (fused, generic):
        layer.set_weights([W, U, p["b"]])
    expected = ref.rnn_reference(
        p["x"], W, U, p["b"], p["h0"], activation, go_backwards, True, c=p["c"]
    )
    rf = ref.run_tf(fused, p["x"], p["h0"], c=p["c"])
    rg = ref.run_tf(generic, p["x"], p["h0"], c=p["c"])
    ref.check_against_reference(rf, expected, FWD_TOL)
    _compare(ref, rf, rg)
    assert rf["y"].shape == (3, timesteps, 4)


def _model(use_fused, timesteps=None, return_sequences=False, **kwargs):
    inputs = keras.Input(shape=(timesteps, 3))
    h = VanillaRNN(
        4, return_sequences=return_sequences, use_fused=use_fused, **kwargs
    )(inputs)
    outputs = keras.layers.Dense(2)(h)
    return keras.Model(inputs, outputs)


def _twin_models(**kwargs):
    fused = _model(True, **kwargs)
    generic = _model(False, **kwargs)
    generic.set_weights(fused.get_weights())
    for m in (fused, generic):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return fused, generic


def test_dynamic_time_dimension(ref):
    # keras.Input(shape=(None, F)): the fused path's unknown-length branch.
    return_sequences = True
    fused, generic = _twin_models(return_sequences=return_sequences)
    rng = np.random.default_rng(4)
    for timesteps in (7,):
        x = rng.standard_normal((3, timesteps, 3)).astype("float32")
        yf = fused.predict(x, batch_size=3, verbose=0)
        yg = generic.predict(x, batch_size=3, verbose=0)
        ref.assert_rel_close(yf, yg, FWD_TOL, f"predict T={timesteps}")
    x = rng.standard_normal((3, 6, 3)).astype("float32")
    y = rng.standard_normal(
        (3, 6, 2) if return_sequences else (3, 2)
    ).astype("float32")
    for _ in range(2):
        lf = fused.train_on_batch(x, y)
        lg = generic.train_on_batch(x, y)
        np.testing.assert_allclose(lf, lg, rtol=1e-5)
    for wf, wg in zip(fused.get_weights(), generic.get_weights()):
        ref.assert_rel_close(wf, wg, 1e-5, "weights after train steps")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(return_sequences=True, go_backwards=True),
        dict(
            activation="relu", use_bias=False, dropout=0.3,
            recurrent_dropout=0.3, seed=11,
        ),
    ],
    ids=["seq_backwards", "relu_nobias_dropout"],
)
def test_training_end_to_end(ref, kwargs):
    skip_uncovered(ref, recurrent_dropout=kwargs.get("recurrent_dropout", 0))
    fused, generic = _twin_models(timesteps=5, **kwargs)
    initial = [w.copy() for w in fused.get_weights()]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 3)).astype("float32")
    out_shape = (3, 5, 2) if kwargs.get("return_sequences") else (3, 2)
    y = rng.standard_normal(out_shape).astype("float32")
    for _ in range(3):
        lf = fused.train_on_batch(x, y)
        lg = generic.train_on_batch(x, y)
        np.testing.assert_allclose(lf, lg, rtol=1e-5)
    for wf, wg, w0 in zip(fused.get_weights(), generic.get_weights(), initial):
        ref.assert_rel_close(wf, wg, 1e-5, "weights after 3 SGD steps")
        assert not np.array_equal(wf, w0)  # training moved every weight


# ---------------------------------------------------------------------------
# Configurations the fused path does not cover: fallback, or ValueError
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["mask", "unroll", "softplus", "custom_callable"]
)
def test_uncovered_configurations_fall_back(ref, fused_calls, case):
    p = ref.make_problem(seed=6, initial_state=True)
    kwargs = dict(return_sequences=True)
    mask = None
    activation = "tanh"
    if case == "mask":
        mask = np.ones((3, 5), bool)
        mask[0, 2] = mask[2, 0] = False
    elif case == "unroll":
        kwargs["unroll"] = True
    elif case == "softplus":
        activation = kwargs["activation"] = "softplus"
    else:
        kwargs["activation"] = lambda z: keras.ops.tanh(z)
    auto = VanillaRNN(4, use_fused="auto", **kwargs)
    generic = VanillaRNN(4, use_fused=False, **kwargs)
    for layer in (auto, generic):
        layer.build(p["x"].shape)
        layer.set_weights(p["weights"])
    ra = ref.run_tf(auto, p["x"], p["h0"], c=p["c"], mask=mask)
    rg = ref.run_tf(generic, p["x"], p["h0"], c=p["c"], mask=mask)
    assert not fused_calls
    for key in ("y", "dx", "dW", "dU", "db", "dh0"):
        np.testing.assert_array_equal(ra[key], rg[key], err_msg=key)
    if mask is None:  # and it is right
        expected = ref.rnn_reference(
            p["x"], p["W"], p["U"], p["b"], p["h0"], activation, False, True,
            c=p["c"],
        )
        ref.check_against_reference(ra, expected, FWD_TOL)

    strict = VanillaRNN(4, use_fused=True, **kwargs)
    with pytest.raises(ValueError) as excinfo:
        strict(p["x"], mask=None if mask is None else mask)
    message = str(excinfo.value)
    assert "use_fused=True" in message and "use_fused='auto'" in message
    keyword = {
        "mask": "mask", "unroll": "unroll=True", "softplus": "softplus",
        "custom_callable": "activation",
    }[case]
    assert keyword in message, message


@pytest.mark.parametrize("activation", [None, keras.activations.relu, "sigmoid"])
def test_activation_aliases_take_the_fused_path(ref, fused_calls, activation):
    name = {None: "linear", "sigmoid": "sigmoid"}.get(activation, "relu")
    skip_uncovered(ref, name)
    p = ref.make_problem(seed=7)
    layer = VanillaRNN(4, activation=activation, return_sequences=True)
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    result = ref.run_tf(layer, p["x"], c=p["c"])
    assert fused_calls
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], None, name, False, True, c=p["c"]
    )
    ref.check_against_reference(result, expected, FWD_TOL)


def test_unsupported_reason():
    layer = VanillaRNN(4)
    assert fused_lib.unsupported_reason(layer, None) is None
    assert "mask" in fused_lib.unsupported_reason(layer, np.ones((1, 2), bool))
    direct = probe_lib.Probe(np.zeros((1, 2, 4)), True, True)
    assert "probe" in fused_lib.unsupported_reason(layer, None, direct)
    full = probe_lib.Probe(np.zeros((1, 2, 4)), False, True)
    assert fused_lib.unsupported_reason(layer, None, full) is None  # every backend
    assert fused_lib.activation_name(None) == "linear"
    assert fused_lib.activation_name(keras.activations.softplus) is None


# ---------------------------------------------------------------------------
# Gradient probes: dL/dp_t is the total dL/dh_t (or its direct part)
# ---------------------------------------------------------------------------


def _probe_layer(kind, **kwargs):
    if kind == "rnn_cell":
        cell_kwargs = {
            k: kwargs.pop(k)
            for k in ("activation", "dropout", "recurrent_dropout", "seed")
            if k in kwargs
        }
        return keras.layers.RNN(VanillaRNNCell(4, **cell_kwargs), **kwargs)
    use_fused = {"fused": "auto", "generic": False}[kind]
    return VanillaRNN(4, use_fused=use_fused, **kwargs)


def _probe_gradient(layer, x, h0, c, probe_shape, direct_only, training=False,
                    use_fused=None):
    """The layer's output and dL/dprobe, L = sum(c * y), by the backend's
    own autodiff."""
    ops = keras.ops
    x, c = ops.convert_to_tensor(x), ops.convert_to_tensor(c)
    h0 = None if h0 is None else ops.convert_to_tensor(h0)

    def loss_of(probe):
        with attached_probe(layer, probe, direct_only=direct_only):
            y = layer(x, initial_state=h0, training=training)
        return ops.sum(c * y), y

    if BACKEND == "jax":
        import jax

        (_, y), grad = jax.value_and_grad(loss_of, has_aux=True)(ops.zeros(probe_shape))
    elif BACKEND == "torch":
        import torch

        probe = ops.zeros(probe_shape).requires_grad_()
        loss, y = loss_of(probe)
        (grad,) = torch.autograd.grad(loss, probe)
    else:
        probe = tf.zeros(probe_shape)
        with tf.GradientTape() as tape:
            tape.watch(probe)
            loss, y = loss_of(probe)
        grad = tape.gradient(loss, probe)
    return ops.convert_to_numpy(y), ops.convert_to_numpy(grad)


@pytest.mark.parametrize(
    "activation, kind, direct_only, go_backwards, return_sequences",
    rotated(
        "back", "seq",
        extra=[
            (kind, direct)
            for kind in ("fused", "generic", "rnn_cell")
            for direct in (False, True)
        ],
    ),
)
def test_probe_gradient_is_bptt(
    ref, impl, monkeypatch, fused_calls, activation, kind, direct_only, go_backwards,
    return_sequences,
):
    _xla_only_for(activation, monkeypatch)
    p = ref.make_problem(seed=8, initial_state=True)
    layer = _probe_layer(
        kind,
        activation=activation,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    c = p["c"] if return_sequences else p["c_last"]
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards,
        return_sequences, c=c,
    )
    y, grad = _probe_gradient(
        layer, p["x"], p["h0"], c, (3, 5, 4), direct_only
    )
    # The zero probe changes nothing in the forward pass.
    ref.assert_rel_close(y, expected["y"], FWD_TOL, "output with probe")
    want = expected["direct"] if direct_only else expected["dh"]
    ref.assert_rel_close(grad, want, FWD_TOL, "probe gradient")
    # Non-trivial: the recurrence contributes (total != direct).
    assert not np.allclose(expected["dh"], expected["direct"])
    # The fused path serves full probes (not torch's kernel); direct-only ones
    # need the generic loop.
    fused = kind == "fused" and not direct_only and ref.fused_covers(activation)
    assert bool(fused_calls) == fused
    # The probe is detached afterwards: a plain call works and matches.
    ref.assert_rel_close(
        layer(p["x"], initial_state=p["h0"]), expected["y"], FWD_TOL, "after"
    )
    assert probe_lib.lookup(layer, None, None, None) is None
    assert "inner_loop" not in vars(layer)


@pytest.mark.parametrize(
    "kind, go_backwards",
    [("fused", True), ("generic", False), ("rnn_cell", True)],
)
def test_probe_gradient_with_dropout(ref, impl, kind, go_backwards):
    p = ref.make_problem(seed=9, initial_state=True)
    layer = _probe_layer(
        kind, return_sequences=True, go_backwards=go_backwards,
        dropout=0.3, recurrent_dropout=0.4, seed=21,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    gen = keras.random.SeedGenerator(21)
    ones = keras.ops.ones
    in_mask = keras.ops.convert_to_numpy(keras.random.dropout(ones((3, 3)), 0.3, seed=gen))
    rec_mask = keras.ops.convert_to_numpy(keras.random.dropout(ones((3, 4)), 0.4, seed=gen))
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", go_backwards, True,
        c=p["c"], in_mask=in_mask, rec_mask=rec_mask,
    )
    y, grad = _probe_gradient(
        layer, p["x"], p["h0"], p["c"], (3, 5, 4), False, training=True
    )
    ref.assert_rel_close(y, expected["y"], FWD_TOL, "output")
    ref.assert_rel_close(grad, expected["dh"], FWD_TOL, "probe gradient")


def test_direct_only_probe_with_use_fused_true(ref, fused_calls):
    # A direct-only probe cuts the recurrence, which only the generic loop
    # can do; even use_fused=True takes the generic loop then (a diagnostic
    # must not fail on the user's setting) and gives the direct part.
    p = ref.make_problem(seed=10)
    layer = VanillaRNN(4, use_fused=True, return_sequences=True)
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    _, grad = _probe_gradient(layer, p["x"], None, p["c"], (3, 5, 4), True)
    np.testing.assert_allclose(grad, p["c"])
    assert not fused_calls
    # A full probe uses the fused path (torch's kernel too) and gives the
    # full BPTT gradient.
    _, grad = _probe_gradient(layer, p["x"], None, p["c"], (3, 5, 4), False)
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], None, "tanh", False, True, c=p["c"]
    )
    ref.assert_rel_close(grad, expected["dh"], FWD_TOL, "probe gradient")
    assert fused_calls


@pytest.mark.parametrize("kind", ["fused", "rnn_cell"])
def test_probe_sources_nest_and_detach(kind):
    # The innermost attachment serves the calls; leaving it restores the
    # outer one, leaving that detaches the layer (no hook left behind).
    layer = _probe_layer(kind, return_sequences=True)
    x = np.zeros((2, 5, 3), "float32")
    seen = []
    with probe_lib.attach(layer, lambda *args: seen.append("outer")):
        with probe_lib.attach(layer, lambda *args: seen.append("inner")):
            layer(x)
        layer(x)
    layer(x)
    assert seen == ["inner", "outer"]
    assert "inner_loop" not in vars(layer)
    assert probe_lib.lookup(layer, x, None, None) is None


@tensorflow_only
def test_probe_in_compiled_function(ref):
    # Inside a tf.function (as diagnostics callbacks use it).
    p = ref.make_problem(seed=12)
    layer = VanillaRNN(4, return_sequences=True)
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])

    @tf.function
    def probe_grad(x):
        probe = tf.zeros((3, 5, 4))
        with tf.GradientTape() as tape:
            tape.watch(probe)
            with attached_probe(layer, probe):
                y = layer(x)
            loss = tf.reduce_sum(p["c"] * y)
        return tape.gradient(loss, probe)

    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], None, "tanh", False, True, c=p["c"]
    )
    ref.assert_rel_close(probe_grad(p["x"]), expected["dh"], FWD_TOL, "probe")


def test_activations_cover_the_fused_path():
    # Guard: the parametrizations above span what the fused path supports.
    assert set(ACTIVATIONS) == set(fused_lib.SUPPORTED_ACTIVATIONS)


@tensorflow_only
@pytest.mark.parametrize("native_env, xla_env", [("1", "1"), ("0", "1"), ("0", "0")])
def test_environment_switches(ref, monkeypatch, native_env, xla_env):
    # KERAS_VRNN_NATIVE=0 and KERAS_VRNN_XLA=0 are read when the loop runs:
    # the named implementation runs, with the same numbers.
    from keras_vrnn import fused_tf

    if native_env == "1":
        require_native()
    monkeypatch.setenv("KERAS_VRNN_NATIVE", native_env)
    monkeypatch.setenv("KERAS_VRNN_XLA", xla_env)
    native_calls = count_calls(monkeypatch, fused_tf, "_native_recurrence")
    xla_calls = count_calls(monkeypatch, fused_tf, "_forward_xla")
    plain_calls = count_calls(monkeypatch, fused_tf, "_forward")
    p = ref.make_problem(seed=15)
    fused, generic = _pair(p["x"].shape, return_sequences=True)
    ref.assert_rel_close(fused(p["x"]), generic(p["x"]), FWD_TOL, "output")
    assert bool(native_calls) == (native_env == "1")
    assert bool(xla_calls) == (native_env == "0" and xla_env == "1")
    assert bool(plain_calls) == (native_env == "0" and xla_env == "0")


# Batch split: on a CPU with 2+ cores the fused loops run the batch as two
# concurrent halves. Every row is its own recurrence, so the halves must give
# what the whole batch gives, in every configuration the fused path covers.


@tensorflow_only
def test_batch_split_decision(monkeypatch):
    from keras_vrnn import fused_tf

    monkeypatch.setattr(fused_tf.os, "cpu_count", lambda: 2)
    assert fused_tf._parts(fused_tf._MIN_SPLIT_BATCH) == 2
    assert fused_tf._parts(fused_tf._MIN_SPLIT_BATCH - 1) == 1
    assert fused_tf._parts(None) == 2  # unknown at trace time: decided at run time
    monkeypatch.setattr(fused_tf.os, "cpu_count", lambda: 1)
    assert fused_tf._parts(None) == 1
    monkeypatch.setattr(fused_tf.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("KERAS_VRNN_BATCH_PARTS", "1")
    assert fused_tf._parts(None) == 1
    monkeypatch.setenv("KERAS_VRNN_BATCH_PARTS", "3")
    assert fused_tf._parts(None) == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("KERAS_VRNN_BATCH_PARTS", bad)
        with pytest.raises(ValueError, match=f"Received: KERAS_VRNN_BATCH_PARTS='{bad}'"):
            fused_tf._parts(None)


@tensorflow_only
@pytest.mark.parametrize(
    "activation, rates, go_backwards, probe",
    [
        ("tanh", (0.0, 0.0), False, False),
        ("tanh", (0.3, 0.4), True, False),
        ("relu", (0.0, 0.5), False, True),
        ("tanh", (0.0, 0.0), True, True),
    ],
)
def test_batch_split_matches_generic(
    ref, monkeypatch, fused_calls, activation, rates, go_backwards, probe
):
    from keras_vrnn import fused_tf

    # A batch of 3 is cut into 2 + 1 rows: uneven parts, both non-trivial.
    # (The XLA loops' split; the native kernels' own is in test_native.py.)
    monkeypatch.setenv("KERAS_VRNN_NATIVE", "0")
    monkeypatch.setattr(fused_tf, "_MIN_SPLIT_BATCH", 2)
    monkeypatch.setattr(fused_tf.os, "cpu_count", lambda: 2)
    split = []
    real_split = fused_tf._split
    monkeypatch.setattr(
        fused_tf, "_split", lambda t, parts: split.append(parts) or real_split(t, parts)
    )
    dropout, recurrent_dropout = rates
    p = ref.make_problem(seed=13, initial_state=True)
    kwargs = dict(
        activation=activation, go_backwards=go_backwards, return_sequences=True,
        dropout=dropout, recurrent_dropout=recurrent_dropout, seed=5,
    )
    fused, generic = _pair(p["x"].shape, **kwargs)
    training = bool(dropout or recurrent_dropout)
    if probe:
        got = _probe_gradient(fused, p["x"], p["h0"], p["c"], (3, 5, 4), False, training)
        want = _probe_gradient(
            generic, p["x"], p["h0"], p["c"], (3, 5, 4), False, training
        )
        ref.assert_rel_close(got[0], want[0], FWD_TOL, "output")
        ref.assert_rel_close(got[1], want[1], GRAD_TOL, "probe gradient")
    else:
        args = dict(initial_state=p["h0"], c=p["c"], training=training)
        _compare(
            ref, ref.run_tf(fused, p["x"], **args), ref.run_tf(generic, p["x"], **args)
        )
    assert fused_calls and 2 in split


@tensorflow_only
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_batch_split_with_unknown_batch_size(ref, monkeypatch, batch):
    # As in `fit`, the batch size is unknown when the step is traced; whether
    # to cut is decided at run time: 1 row runs whole, 2 and 5 are cut.
    from keras_vrnn import fused_tf

    monkeypatch.setenv("KERAS_VRNN_NATIVE", "0")
    monkeypatch.setattr(fused_tf.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(fused_tf, "_MIN_SPLIT_BATCH", 2)
    p = ref.make_problem(seed=14, batch=batch)
    fused, generic = _pair(p["x"].shape, return_sequences=True)

    def value_and_grads(layer):
        @tf.function(input_signature=[tf.TensorSpec((None, 5, 3))])
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(p["c"] * layer(x))
            return loss, tape.gradient(loss, [x] + layer.trainable_weights)

        return run(p["x"])

    (lf, gf), (lg, gg) = value_and_grads(fused), value_and_grads(generic)
    ref.assert_rel_close(lf, lg, FWD_TOL, "loss")
    for name, a, b in zip(("dx", "dW", "dU", "db"), gf, gg):
        ref.assert_rel_close(a, b, GRAD_TOL, name)


@tensorflow_only
@pytest.mark.parametrize("known", ["state", "sequences"])
def test_batch_size_known_on_one_input_only(ref, impl, known):
    # E.g. sampling text: sequences (1, None, D) with a (1, H) state, or
    # sequences of unknown batch with a state of known batch. The fused
    # loops need one static (B, H) shape for their carried state. (Keras'
    # generic loop fails on the second case, so the reference is the generic
    # layer called with static shapes.)
    p = ref.make_problem(seed=15, batch=1, initial_state=True)
    fused, generic = _pair(p["x"].shape, return_sequences=True)
    x_spec = (1, None, 3) if known == "sequences" else (None, 5, 3)
    h_spec = (1, 4) if known == "state" else (None, 4)

    @tf.function(input_signature=[tf.TensorSpec(x_spec), tf.TensorSpec(h_spec)])
    def f(x, h0):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fused(x, initial_state=h0)
            loss = tf.reduce_sum(p["c"] * y)
        return y, tape.gradient(loss, [x] + fused.trainable_weights)

    y, grads = f(p["x"], p["h0"])
    want = ref.run_tf(generic, p["x"], initial_state=p["h0"], c=p["c"])
    ref.assert_rel_close(y, want["y"], FWD_TOL, "output")
    for name, got in zip(("dx", "dW", "dU", "db"), grads):
        ref.assert_rel_close(got, want[name], GRAD_TOL, name)
