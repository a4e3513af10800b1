"""Tests for `keras_vrnn.VanillaRNN`: a drop-in for `keras.layers.SimpleRNN`.

Independent references: the float64 NumPy loop and BPTT in conftest.py, the
expected numbers of Keras' own `simple_rnn_test.py`, and
`keras.layers.SimpleRNN` with the same weights.
"""

import itertools

import keras
import numpy as np
import pytest
from keras.src import testing

import keras_vrnn
from keras_vrnn import VanillaRNN
from rnn_configs import ACTIVATIONS
from rnn_configs import constant_initializers
from rnn_configs import covering_configs

pytestmark = [
    # The fused TensorFlow loops run uncompiled here; test_fused.py covers XLA.
    pytest.mark.usefixtures("no_xla"),
]

PATHS = ("auto", False)  # fused (taken automatically) and the generic loop
TOL = 1e-5  # relative, float32


def _random_weights(layer, seed=0):
    """Non-trivial weights (incl. a non-zero bias) for a built layer."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(w.shape) * 0.5).astype("float32")
        for w in layer.get_weights()
    ]


def _twins(units=4, batch=3, timesteps=5, features=3, use_fused="auto",
           weight_seed=0, **kwargs):
    """A VanillaRNN and a SimpleRNN with the same random weights."""
    v = VanillaRNN(units, use_fused=use_fused, **kwargs)
    s = keras.layers.SimpleRNN(units, **kwargs)
    shape = (batch, timesteps, features)
    v.build(shape)
    s.build(shape)
    weights = _random_weights(v, weight_seed)
    v.set_weights(weights)
    s.set_weights(weights)
    return v, s


def _np(tensor, dtype=None):
    """A layer's output (or a variable) as a NumPy array, on any backend."""
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=dtype)


def _assert_same(actual, expected, use_fused, what=""):
    """The generic loop is SimpleRNN's loop: bit-identical. The fused path
    reorders float32 sums: equal to ~1e-6 relative."""
    actual = np.asarray(keras.ops.convert_to_numpy(actual), dtype=np.float64)
    expected = np.asarray(keras.ops.convert_to_numpy(expected), dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if use_fused is False:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        scale = max(np.max(np.abs(expected)), 1e-30)
        err = np.max(np.abs(actual - expected)) / scale
        assert err <= TOL, f"{what}: relative error {err:.3g}"


# ---------------------------------------------------------------------------
# Keras-style basics
# ---------------------------------------------------------------------------


class VanillaRNNTest(testing.TestCase):
    def test_basics(self):
        # Keras' own layer checks: serialization round trip, symbolic and
        # eager calls, a fit() step, mixed precision, masking support.
        self.run_layer_test(
            VanillaRNN,
            init_kwargs={"units": 3, "dropout": 0.5, "recurrent_dropout": 0.5},
            input_shape=(3, 2, 4),
            call_kwargs={"training": True},
            expected_output_shape=(3, 3),
            expected_num_trainable_weights=3,
            expected_num_non_trainable_weights=0,
            expected_num_non_trainable_variables=1,
            supports_masking=True,
        )
        # Regularizers and use_bias=False, checked directly (a second
        # run_layer_test costs another fit()).
        layer = VanillaRNN(
            3,
            return_sequences=True,
            use_bias=False,
            kernel_regularizer="l2",
            recurrent_regularizer="l2",
            activity_regularizer="l1",
            use_fused=False,
        )
        output = layer(np.ones((3, 2, 4), "float32"))
        self.assertEqual(tuple(output.shape), (3, 2, 3))
        self.assertLen(layer.trainable_weights, 2)
        self.assertLen(layer.losses, 3)
        self.assertTrue(layer.supports_masking)

    def test_correctness(self):
        # Expected numbers from Keras' simple_rnn_test.py (SimpleRNN).
        sequence = np.arange(24).reshape((2, 3, 4)).astype("float32")
        forward = [[0.405432] * 4, [0.73605347] * 4]
        backward = [[0.11144729] * 4, [0.5528889] * 4]
        for use_fused, unroll, go_backwards in itertools.product(
            PATHS, (False, True), (False, True)
        ):
            layer = VanillaRNN(
                4,
                unroll=unroll,
                go_backwards=go_backwards,
                use_fused=use_fused,
                **constant_initializers(),
            )
            self.assertAllClose(
                layer(sequence), backward if go_backwards else forward,
                atol=1e-6, rtol=1e-6,
            )

    def test_statefulness(self):
        sequence = np.arange(24).reshape((2, 3, 4)).astype("float32")
        expected = [[0.40559256] * 4, [0.7361247] * 4]
        for use_fused in PATHS:
            layer = VanillaRNN(
                4, stateful=True, use_fused=use_fused, **constant_initializers()
            )
            layer(sequence)
            self.assertAllClose(layer(sequence), expected, atol=1e-6, rtol=1e-6)
            layer.reset_state()
            layer(sequence)
            self.assertAllClose(layer(sequence), expected, atol=1e-6, rtol=1e-6)

    def test_pass_initial_state(self):
        sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
        initial_state = np.arange(8).reshape((2, 4)).astype("float32")
        for use_fused in PATHS:
            layer = VanillaRNN(4, use_fused=use_fused, **constant_initializers())
            self.assertAllClose(
                layer(sequence, initial_state=initial_state),
                [[0.33621645] * 4, [0.6262637] * 4],
                atol=1e-6, rtol=1e-6,
            )
            layer = VanillaRNN(
                4, go_backwards=True, use_fused=use_fused, **constant_initializers()
            )
            self.assertAllClose(
                layer(sequence, initial_state=[initial_state]),
                [[0.07344437] * 4, [0.43043602] * 4],
                atol=1e-6, rtol=1e-6,
            )

    def test_masking(self):
        sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
        mask = np.array([[True, True, False, True], [True, False, False, True]])
        for use_fused in PATHS:
            layer = VanillaRNN(
                4, unroll=True, use_fused=use_fused, **constant_initializers()
            )
            self.assertAllClose(
                layer(sequence, mask=mask),
                [[0.32951632] * 4, [0.61799484] * 4],
                atol=1e-6, rtol=1e-6,
            )
            for zero_output in (False, True):
                layer = VanillaRNN(
                    2,
                    return_sequences=True,
                    zero_output_for_mask=zero_output,
                    use_fused=use_fused,
                    **constant_initializers(),
                )
                output = layer(sequence, mask=mask)
                a, b = [0.0599281] * 2, [0.15122814] * 2
                c, d = [0.32394567] * 2, [0.3969304] * 2
                e, z = [0.608085] * 2, [0.0, 0.0]
                self.assertAllClose(
                    output[0], [a, b, z if zero_output else b, c],
                    atol=1e-6, rtol=1e-6,
                )
                self.assertAllClose(
                    output[1],
                    [d, z, z, e] if zero_output else [d, d, d, e],
                    atol=1e-6, rtol=1e-6,
                )
            layer = VanillaRNN(
                4, go_backwards=True, use_fused=use_fused, **constant_initializers()
            )
            self.assertAllClose(
                layer(sequence, mask=mask),
                [[0.07376196] * 4, [0.43645123] * 4],
                atol=1e-6, rtol=1e-6,
            )


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
def test_output_shapes(use_fused, return_sequences, return_state):
    layer = VanillaRNN(
        5,
        return_sequences=return_sequences,
        return_state=return_state,
        use_fused=use_fused,
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    out = layer(x)
    y_shape = (2, 3, 5) if return_sequences else (2, 5)
    expected = [y_shape, (2, 5)] if return_state else [y_shape]
    outs = list(out) if return_state else [out]
    assert [tuple(o.shape) for o in outs] == expected
    if return_state:  # the state is the last output
        last = outs[0][:, -1] if return_sequences else outs[0]
        np.testing.assert_array_equal(_np(outs[1]), _np(last))
    # Symbolic call and compute_output_shape agree.
    sym = layer(keras.Input(batch_shape=(2, 3, 4)))
    syms = list(sym) if return_state else [sym]
    assert [tuple(o.shape) for o in syms] == expected
    shapes = layer.compute_output_shape((2, 3, 4))
    shapes = list(shapes) if return_state else [shapes]
    assert [tuple(s) for s in shapes] == expected


@pytest.mark.parametrize("use_fused, use_bias", [("auto", True), (False, False)])
def test_fit_runs(use_fused, use_bias):
    layer = VanillaRNN(4, use_bias=use_bias, use_fused=use_fused, dropout=0.1)
    model = keras.Sequential(
        [keras.Input((5, 3)), layer, keras.layers.Dense(1)]
    )
    assert len(layer.trainable_weights) == (3 if use_bias else 2)
    assert layer.built and layer.cell.built
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5, 3)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    before = [w.copy() for w in layer.get_weights()]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = layer.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


# ---------------------------------------------------------------------------
# Against the float64 NumPy reference (forward and BPTT gradients)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize(
    "activation, use_bias, go_backwards, return_sequences, initial_state",
    covering_configs(),
)
def test_matches_numpy_reference(
    ref, fused_calls, use_fused, activation, use_bias, go_backwards,
    return_sequences, initial_state,
):
    p = ref.make_problem(
        seed=ACTIVATIONS.index(activation) * 4 + 2 * use_bias + go_backwards,
        use_bias=use_bias,
        initial_state=initial_state,
    )
    layer = VanillaRNN(
        4,
        activation=activation,
        use_bias=use_bias,
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        use_fused=use_fused,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    c = p["c"] if return_sequences else p["c_last"]
    result = ref.run_tf(layer, p["x"], p["h0"], c=c)
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards,
        return_sequences, c=c,
    )
    ref.check_against_reference(result, expected, TOL)
    assert (result["db"] is None) == (not use_bias)
    assert (result["dh0"] is None) == (not initial_state)
    assert bool(fused_calls) == (use_fused == "auto" and ref.fused_covers(activation))


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_return_state_gradient_matches_reference(ref, use_fused, return_sequences):
    p = ref.make_problem(seed=3, initial_state=True)
    layer = VanillaRNN(
        4, return_sequences=return_sequences, return_state=True,
        use_fused=use_fused,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    c = p["c"] if return_sequences else p["c_last"]
    result = ref.run_tf(layer, p["x"], p["h0"], c=c, c_state=p["c_state"])
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", False,
        return_sequences, c=c, c_state=p["c_state"],
    )
    ref.check_against_reference(result, expected, TOL)


def _dropout_masks(seed, batch, features, units, dropout, recurrent_dropout):
    """The masks Keras' RNN draws, reproduced independently: one
    SeedGenerator(seed), input mask first, then the recurrent mask (only the
    ones with a non-zero rate are drawn)."""
    gen = keras.random.SeedGenerator(seed)
    in_mask = rec_mask = None
    if dropout > 0:
        in_mask = keras.random.dropout(
            keras.ops.ones((batch, features)), dropout, seed=gen
        )
    if recurrent_dropout > 0:
        rec_mask = keras.random.dropout(
            keras.ops.ones((batch, units)), recurrent_dropout, seed=gen
        )
    to_np = lambda m: None if m is None else _np(m)  # noqa: E731
    return to_np(in_mask), to_np(rec_mask)


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize(
    "activation, go_backwards", [("tanh", False), ("relu", True)]
)
@pytest.mark.parametrize("rates", [(0.4, 0.0), (0.0, 0.5), (0.3, 0.4)])
def test_dropout_matches_numpy_reference(ref, use_fused, activation, go_backwards,
                                         rates):
    dropout, recurrent_dropout = rates
    p = ref.make_problem(seed=11, initial_state=True)
    layer = VanillaRNN(
        4,
        activation=activation,
        go_backwards=go_backwards,
        return_sequences=True,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        seed=125,
        use_fused=use_fused,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    in_mask, rec_mask = _dropout_masks(125, 3, 3, 4, dropout, recurrent_dropout)
    # Each mask drawn really drops something (else this test could not fail).
    assert all(m is None or (m == 0).any() for m in (in_mask, rec_mask))
    result = ref.run_tf(layer, p["x"], p["h0"], c=p["c"], training=True)
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards, True,
        c=p["c"], in_mask=in_mask, rec_mask=rec_mask,
    )
    ref.check_against_reference(result, expected, TOL)
    # Without training the very same layer applies no dropout.
    inference = ref.run_tf(layer, p["x"], p["h0"], c=p["c"], training=False)
    plain = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards, True,
        c=p["c"],
    )
    ref.check_against_reference(inference, plain, TOL)


# ---------------------------------------------------------------------------
# Against keras.layers.SimpleRNN with the same weights
# ---------------------------------------------------------------------------


def test_weights_names_shapes_and_order_match_simple_rnn():
    for use_bias in (True, False):
        v, s = _twins(use_bias=use_bias)
        assert [w.name for w in v.weights] == [w.name for w in s.weights]
        assert [tuple(w.shape) for w in v.weights] == [
            tuple(w.shape) for w in s.weights
        ]
        assert [w.name for w in v.trainable_weights] == (
            ["kernel", "recurrent_kernel", "bias"] if use_bias
            else ["kernel", "recurrent_kernel"]
        )
        assert len(v.non_trainable_variables) == len(s.non_trainable_variables)
        assert [w.dtype for w in v.weights] == [w.dtype for w in s.weights]


READ_ONLY = (
    "units", "activation", "use_bias",
    "kernel_initializer", "recurrent_initializer", "bias_initializer",
    "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
    "kernel_constraint", "recurrent_constraint", "bias_constraint",
    "dropout", "recurrent_dropout", "seed",
)


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_properties(name):
    kwargs = dict(
        activation="relu", use_bias=False,
        kernel_initializer="ones", recurrent_initializer="identity",
        bias_initializer="ones",
        kernel_regularizer="l2", recurrent_regularizer="l1",
        bias_regularizer="l1",
        kernel_constraint="non_neg", recurrent_constraint="unit_norm",
        bias_constraint="max_norm",
        dropout=0.25, recurrent_dropout=0.5,
    )
    layer = VanillaRNN(7, seed=42, **kwargs)
    simple = keras.layers.SimpleRNN(7, seed=42, **kwargs)
    value = getattr(layer, name)
    assert value is getattr(layer.cell, name)  # it forwards to the cell
    if name == "seed":
        assert value == 42
    elif name == "activation":
        assert value is getattr(simple, name)
    else:
        expected = getattr(simple, name)
        if isinstance(expected, (int, float, bool)):
            assert value == expected
        else:
            assert type(value) is type(expected)
    with pytest.raises(AttributeError):
        setattr(layer, name, "something else")


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_matches_simple_rnn_modes(
    ref, use_fused, return_sequences, return_state, go_backwards
):
    initial_state = return_sequences != go_backwards  # both values, per path
    kwargs = dict(
        return_sequences=return_sequences,
        return_state=return_state,
        go_backwards=go_backwards,
    )
    v, s = _twins(use_fused=use_fused, **kwargs)
    p = ref.make_problem(seed=5, initial_state=initial_state)
    c = p["c"] if return_sequences else p["c_last"]
    rv = ref.run_tf(v, p["x"], p["h0"], c=c, c_state=p["c_state"])
    rs = ref.run_tf(s, p["x"], p["h0"], c=c, c_state=p["c_state"])
    for key in ("y", "state", "dx", "dW", "dU", "db", "dh0"):
        if rs[key] is None:
            assert rv[key] is None, key
        else:
            _assert_same(rv[key], rs[key], use_fused, key)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("how", ["masking_layer", "mask_argument"])
def test_masking_matches_simple_rnn(
    fused_calls, return_sequences, go_backwards, zero_output_for_mask, how,
):
    use_fused = "auto"
    kwargs = dict(
        return_sequences=return_sequences,
        go_backwards=go_backwards,
        zero_output_for_mask=zero_output_for_mask,
    )
    v, s = _twins(batch=3, timesteps=6, use_fused=use_fused, **kwargs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 3)).astype("float32")
    mask = np.array(
        [[1, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=bool
    )
    if how == "masking_layer":
        x[~mask] = 0.0

        def model_of(layer):
            inputs = keras.Input(batch_shape=(3, 6, 3))
            return keras.Model(inputs, layer(keras.layers.Masking(0.0)(inputs)))

        yv = model_of(v)(x)
        ys = model_of(s)(x)
    else:
        yv = v(x, mask=mask)
        ys = s(x, mask=mask)
    # A mask means the generic loop, even with use_fused="auto": identical.
    _assert_same(yv, ys, False, "masked output")
    assert not fused_calls
    # The mask matters (else this test could not fail).
    assert not np.allclose(_np(ys), _np(s(x)))


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_stateful_matches_simple_rnn(use_fused, return_sequences):
    v, s = _twins(
        batch=2, timesteps=4, stateful=True, return_sequences=return_sequences,
        use_fused=use_fused,
    )
    rng = np.random.default_rng(2)
    x1, x2 = rng.standard_normal((2, 2, 4, 3)).astype("float32")
    for x in (x1, x2):
        _assert_same(v(x), s(x), use_fused, "stateful output")
        _assert_same(
            _np(v.states[0]), _np(s.states[0]), use_fused, "stored state"
        )
    carried = _np(v(x2))  # third batch: starts from x1, x2's state
    v.reset_state()
    s.reset_state()
    np.testing.assert_array_equal(_np(v.states[0]), 0.0)
    fresh_v, fresh_s = v(x2), s(x2)
    _assert_same(fresh_v, fresh_s, use_fused, "after reset_state")
    # After the reset the layer starts from zeros, as a stateless twin does.
    stateless = VanillaRNN(
        4, return_sequences=return_sequences, use_fused=use_fused
    )
    stateless.build(x2.shape)
    stateless.set_weights(v.get_weights())
    _assert_same(fresh_v, stateless(x2), use_fused, "reset == stateless")
    assert not np.allclose(carried, _np(fresh_v))


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_unroll_matches_simple_rnn(fused_calls, return_sequences, go_backwards):
    v, s = _twins(
        unroll=True, return_sequences=return_sequences, go_backwards=go_backwards
    )
    x = np.random.default_rng(3).standard_normal((3, 5, 3)).astype("float32")
    _assert_same(v(x), s(x), False, "unrolled")
    assert not fused_calls  # unroll=True is the generic loop


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize(
    "rates, go_backwards",
    [((0.5, 0.0), False), ((0.0, 0.5), True), ((0.3, 0.6), False),
     ((0.3, 0.6), True)],
)
def test_dropout_matches_simple_rnn(use_fused, rates, go_backwards):
    # Both layers draw their masks from SeedGenerator(seed) in the same order
    # (input mask, then recurrent mask, once per call), so with the same seed
    # they drop the same units: outputs are equal, call after call.
    dropout, recurrent_dropout = rates
    v, s = _twins(
        dropout=dropout, recurrent_dropout=recurrent_dropout, seed=7,
        return_sequences=True, go_backwards=go_backwards, use_fused=use_fused,
    )
    x = np.random.default_rng(4).standard_normal((3, 5, 3)).astype("float32")
    first_v, first_s = v(x, training=True), s(x, training=True)
    _assert_same(first_v, first_s, use_fused, "dropout, call 1")
    second_v, second_s = v(x, training=True), s(x, training=True)
    _assert_same(second_v, second_s, use_fused, "dropout, call 2")
    # New masks each call, and no dropout at inference.
    assert not np.allclose(_np(first_v), _np(second_v))
    _assert_same(v(x), s(x), use_fused, "inference")
    assert not np.allclose(_np(first_v), _np(v(x)))


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize(
    "policy, tol",
    [("mixed_float16", 1e-2), ("mixed_bfloat16", 5e-2)],
)
def test_mixed_precision_matches_simple_rnn(restore_policy, use_fused, policy, tol):
    global_policy = keras.config.dtype_policy().name
    x = np.random.default_rng(5).standard_normal((3, 5, 3)).astype("float32")
    v, s = _twins(dtype=policy, return_sequences=True, use_fused=use_fused)
    yv, ys = v(x), s(x)
    compute = policy.split("_")[1]
    dtype_of = keras.backend.standardize_dtype
    assert dtype_of(yv.dtype) == dtype_of(ys.dtype) == compute
    assert all(w.dtype == "float32" for w in v.weights)
    np.testing.assert_allclose(
        _np(yv, "float32"), _np(ys, "float32"), atol=tol, rtol=tol
    )
    # ... and both are close to the float32 result.
    full = VanillaRNN(4, return_sequences=True)
    full.build(x.shape)
    full.set_weights(v.get_weights())
    np.testing.assert_allclose(
        _np(yv, "float32"), _np(full(x)), atol=tol, rtol=tol
    )
    assert keras.config.dtype_policy().name == global_policy

    # A global policy too (restored by the fixture).
    keras.config.set_dtype_policy(policy)
    v2, s2 = _twins(return_sequences=True, use_fused=use_fused)
    assert v2.dtype_policy.name == policy
    yv2 = v2(x)
    assert dtype_of(yv2.dtype) == compute
    np.testing.assert_allclose(
        _np(yv2, "float32"), _np(s2(x), "float32"),
        atol=tol, rtol=tol,
    )


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
def test_bidirectional_matches_simple_rnn(use_fused, return_sequences, merge_mode):
    bv = keras.layers.Bidirectional(
        VanillaRNN(4, return_sequences=return_sequences, use_fused=use_fused),
        merge_mode=merge_mode,
    )
    bs = keras.layers.Bidirectional(
        keras.layers.SimpleRNN(4, return_sequences=return_sequences),
        merge_mode=merge_mode,
    )
    x = np.random.default_rng(6).standard_normal((3, 5, 3)).astype("float32")
    bv.build(x.shape)
    bs.build(x.shape)
    assert isinstance(bv.backward_layer, VanillaRNN)
    assert bv.backward_layer.go_backwards and bv.backward_layer.use_fused == use_fused
    weights = _random_weights(bv, seed=9)
    bv.set_weights(weights)
    bs.set_weights(weights)
    _assert_same(bv(x), bs(x), use_fused, "bidirectional")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], bool)
    _assert_same(bv(x, mask=mask), bs(x, mask=mask), False, "bidirectional mask")


# ---------------------------------------------------------------------------
# Invalid arguments and inputs: ValueError naming the argument, "Received"
# ---------------------------------------------------------------------------


def _assert_value_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "Received" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("units", [0, -1, 2.5, True, "8", None])
def test_bad_units(units):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(units)
    _assert_value_error(excinfo, "units")


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("rate", [-0.1, 1.5, "0.1", True])
def test_bad_dropout(name, rate):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, **{name: rate})
    _assert_value_error(excinfo, name)


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
def test_numpy_dropout_rate_accepted(name):
    # SimpleRNN accepts NumPy scalars, so the drop-in does too.
    layer = VanillaRNN(4, **{name: np.float32(0.25)})
    assert getattr(layer, name) == 0.25
    assert type(getattr(layer, name)) is float


@pytest.mark.parametrize("use_fused", ["yes", "AUTO", None, 1, 0, 1.0])
def test_bad_use_fused(use_fused):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, use_fused=use_fused)
    _assert_value_error(excinfo, "use_fused")


def test_bad_seed():
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, seed="1")
    _assert_value_error(excinfo, "seed")


def test_bad_activation():
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, activation="no_such_activation")
    _assert_value_error(excinfo, "activation", "no_such_activation")


@pytest.mark.parametrize(
    "name", ["kernel_initializer", "recurrent_initializer", "bias_initializer"]
)
def test_bad_initializer(name):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, **{name: "no_such_initializer"})
    _assert_value_error(excinfo, name, "no_such_initializer")


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5)])
def test_bad_input_rank(use_fused, shape):
    layer = VanillaRNN(4, use_fused=use_fused)
    with pytest.raises(ValueError) as excinfo:
        layer(np.zeros(shape, "float32"))
    _assert_value_error(excinfo, "rank 3", str(shape))


@pytest.mark.parametrize("use_fused", PATHS)
def test_bad_input_rank_symbolic(use_fused):
    layer = VanillaRNN(4, use_fused=use_fused)
    with pytest.raises(ValueError) as excinfo:
        layer(keras.Input((3,)))
    _assert_value_error(excinfo, "rank 3")


@pytest.mark.parametrize("use_fused", PATHS)
def test_feature_dimension_differs_from_build(use_fused):
    layer = VanillaRNN(4, use_fused=use_fused)
    layer(np.zeros((2, 3, 5), "float32"))
    with pytest.raises(ValueError) as excinfo:
        layer(np.zeros((2, 3, 6), "float32"))
    _assert_value_error(excinfo, "5", "6", "features")


@pytest.mark.parametrize("use_fused", PATHS)
@pytest.mark.parametrize(
    "state_shape", [(2, 3), (3, 4), (2, 4, 1), (4,)],
    ids=["wrong_units", "wrong_batch", "rank3", "rank1"],
)
def test_bad_initial_state_shape(use_fused, state_shape):
    layer = VanillaRNN(4, use_fused=use_fused)
    with pytest.raises(ValueError) as excinfo:
        layer(
            np.zeros((2, 3, 5), "float32"),
            initial_state=np.zeros(state_shape, "float32"),
        )
    _assert_value_error(excinfo, "initial_state", str(state_shape))


def test_two_initial_states_rejected():
    layer = VanillaRNN(4)
    state = np.zeros((2, 4), "float32")
    with pytest.raises(ValueError) as excinfo:
        layer(np.zeros((2, 3, 5), "float32"), initial_state=[state, state])
    _assert_value_error(excinfo, "initial_state")


def test_stateful_needs_fixed_batch_size():
    inputs = keras.Input(shape=(3, 5))
    with pytest.raises(ValueError) as excinfo:
        VanillaRNN(4, stateful=True)(inputs)
    _assert_value_error(excinfo, "stateful", "batch")
    # With a fixed batch size it works.
    out = VanillaRNN(4, stateful=True)(keras.Input(batch_shape=(2, 3, 5)))
    assert tuple(out.shape) == (2, 4)


def test_package_exports():
    assert keras_vrnn.VanillaRNN is VanillaRNN
    assert issubclass(VanillaRNN, keras.layers.RNN)
    assert keras_vrnn.__version__
