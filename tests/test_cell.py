"""Tests for `keras_vrnn.VanillaRNNCell`, alone and inside `keras.layers.RNN`.

Independent references: the float64 NumPy loop and BPTT in conftest.py,
Keras' own expected numbers for SimpleRNN, and `keras.layers.SimpleRNNCell`
with the same weights (`RNN(VanillaRNNCell)` runs Keras' generic loop, so it
must agree with `RNN(SimpleRNNCell)` bit for bit).
"""

import itertools

import keras
import numpy as np
import pytest
from keras.src import testing

from keras_vrnn import VanillaRNNCell
from rnn_configs import ACTIVATIONS
from rnn_configs import constant_initializers
from rnn_configs import covering_configs

TOL = 1e-5


def _twin_rnns(n_cells=1, units=4, shape=(3, 5, 3), weight_seed=0,
               cell_kwargs=None, **rnn_kwargs):
    """RNN(VanillaRNNCell...) and RNN(SimpleRNNCell...) with equal weights."""
    cell_kwargs = cell_kwargs or {}
    v_cells = [VanillaRNNCell(units, **cell_kwargs) for _ in range(n_cells)]
    s_cells = [
        keras.layers.SimpleRNNCell(units, **cell_kwargs) for _ in range(n_cells)
    ]
    v = keras.layers.RNN(v_cells if n_cells > 1 else v_cells[0], **rnn_kwargs)
    s = keras.layers.RNN(s_cells if n_cells > 1 else s_cells[0], **rnn_kwargs)
    v.build(shape)
    s.build(shape)
    rng = np.random.default_rng(weight_seed)
    weights = [
        (rng.standard_normal(w.shape) * 0.5).astype("float32")
        for w in v.get_weights()
    ]
    v.set_weights(weights)
    s.set_weights(weights)
    return v, s


def _equal(a, b, what=""):
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
        err_msg=what,
    )


# ---------------------------------------------------------------------------
# Keras-style basics and correctness
# ---------------------------------------------------------------------------


class VanillaRNNCellTest(testing.TestCase):
    def test_basics(self):
        x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype("float32")
        for use_bias, return_sequences, return_state in itertools.product(
            (True, False), repeat=3
        ):
            cell = VanillaRNNCell(5, use_bias=use_bias)
            layer = keras.layers.RNN(
                cell, return_sequences=return_sequences, return_state=return_state
            )
            out = layer(x)
            self.assertTrue(cell.built)
            self.assertLen(layer.trainable_weights, 3 if use_bias else 2)
            self.assertLen(cell.trainable_weights, 3 if use_bias else 2)
            y = out[0] if return_state else out
            self.assertEqual(
                tuple(y.shape), (4, 3, 5) if return_sequences else (4, 5)
            )
            if return_state:
                self.assertLen(out, 2)
                self.assertEqual(tuple(out[1].shape), (4, 5))
        self.assertEqual(cell.state_size, 5)
        self.assertEqual(cell.output_size, 5)

    def test_fit(self):
        cell = VanillaRNNCell(4, use_bias=False, dropout=0.2)
        model = keras.Sequential(
            [keras.Input((3, 2)), keras.layers.RNN(cell), keras.layers.Dense(1)]
        )
        model.compile(optimizer="sgd", loss="mse")
        rng = np.random.default_rng(1)
        x = rng.standard_normal((6, 3, 2)).astype("float32")
        y = rng.standard_normal((6, 1)).astype("float32")
        before = [w.copy() for w in cell.get_weights()]
        history = model.fit(x, y, batch_size=3, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        self.assertLen(cell.trainable_weights, 2)
        for a, b in zip(before, cell.get_weights()):
            self.assertFalse(np.array_equal(a, b))

    def test_correctness(self):
        # Keras' simple_rnn_test.py numbers, through keras.layers.RNN.
        sequence = np.arange(24).reshape((2, 3, 4)).astype("float32")
        for unroll, go_backwards in itertools.product((False, True), repeat=2):
            layer = keras.layers.RNN(
                VanillaRNNCell(4, **constant_initializers()),
                unroll=unroll,
                go_backwards=go_backwards,
            )
            expected = (
                [[0.11144729] * 4, [0.5528889] * 4] if go_backwards
                else [[0.405432] * 4, [0.73605347] * 4]
            )
            self.assertAllClose(layer(sequence), expected, atol=1e-6, rtol=1e-6)

    def test_statefulness(self):
        sequence = np.arange(24).reshape((2, 3, 4)).astype("float32")
        layer = keras.layers.RNN(
            VanillaRNNCell(4, **constant_initializers()), stateful=True
        )
        layer(sequence)
        expected = [[0.40559256] * 4, [0.7361247] * 4]
        self.assertAllClose(layer(sequence), expected, atol=1e-6, rtol=1e-6)
        layer.reset_state()
        layer(sequence)
        self.assertAllClose(layer(sequence), expected, atol=1e-6, rtol=1e-6)

    def test_masking(self):
        sequence = np.arange(24).reshape((2, 4, 3)).astype("float32")
        mask = np.array([[True, True, False, True], [True, False, False, True]])
        layer = keras.layers.RNN(
            VanillaRNNCell(2, **constant_initializers()),
            return_sequences=True,
            zero_output_for_mask=True,
        )
        output = layer(sequence, mask=mask)
        a, b, c = [0.0599281] * 2, [0.15122814] * 2, [0.32394567] * 2
        d, e, z = [0.3969304] * 2, [0.608085] * 2, [0.0, 0.0]
        self.assertAllClose(output[0], [a, b, z, c], atol=1e-6, rtol=1e-6)
        self.assertAllClose(output[1], [d, z, z, e], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_single_step_matches_numpy(ref, activation, use_bias):
    p = ref.make_problem(seed=1, use_bias=use_bias, initial_state=True)
    cell = VanillaRNNCell(4, activation=activation, use_bias=use_bias)
    cell.build((3, 3))
    cell.set_weights(p["weights"])
    x_t = p["x"][:, 0]
    expected, _, _ = ref.rnn_forward(
        x_t[:, None], p["W"], p["U"], p["b"], p["h0"], activation
    )
    output, states = cell(x_t, [p["h0"]])
    assert isinstance(states, list) and len(states) == 1
    ref.assert_rel_close(output, expected[:, 0], TOL, "output")
    _equal(states[0], output, "state == output")
    # A bare tensor state gives a bare tensor back.
    output2, state2 = cell(x_t, p["h0"])
    assert not isinstance(state2, (list, tuple))
    _equal(output2, output)


def test_get_initial_state():
    cell = VanillaRNNCell(6)
    (state,) = cell.get_initial_state(batch_size=3)
    assert tuple(state.shape) == (3, 6)
    assert keras.backend.standardize_dtype(state.dtype) == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(state), 0.0)
    cell16 = VanillaRNNCell(6, dtype="mixed_float16")
    (state16,) = cell16.get_initial_state(batch_size=2)
    assert keras.backend.standardize_dtype(state16.dtype) == "float16"


def test_weights_match_simple_rnn_cell():
    for use_bias in (True, False):
        v = VanillaRNNCell(4, use_bias=use_bias)
        s = keras.layers.SimpleRNNCell(4, use_bias=use_bias)
        v.build((2, 3))
        s.build((2, 3))
        assert [w.name for w in v.weights] == [w.name for w in s.weights]
        assert [tuple(w.shape) for w in v.weights] == [
            tuple(w.shape) for w in s.weights
        ]
        assert (v.bias is None) == (not use_bias)


def test_default_initializers():
    cell = VanillaRNNCell(5, seed=3)
    cell.build((2, 4))
    U = keras.ops.convert_to_numpy(cell.recurrent_kernel)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-5)  # orthogonal
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(cell.bias), 0.0)
    assert cell.seed == 3


# ---------------------------------------------------------------------------
# RNN(VanillaRNNCell) against the NumPy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "activation, use_bias, go_backwards, return_sequences, initial_state",
    covering_configs(),
)
def test_rnn_cell_matches_numpy_reference(
    ref, activation, use_bias, go_backwards, return_sequences, initial_state
):
    p = ref.make_problem(
        seed=ACTIVATIONS.index(activation), use_bias=use_bias,
        initial_state=initial_state,
    )
    layer = keras.layers.RNN(
        VanillaRNNCell(4, activation=activation, use_bias=use_bias),
        go_backwards=go_backwards,
        return_sequences=return_sequences,
        return_state=True,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    c = p["c"] if return_sequences else p["c_last"]
    result = ref.run_tf(layer, p["x"], p["h0"], c=c, c_state=p["c_state"])
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards,
        return_sequences, c=c, c_state=p["c_state"],
    )
    ref.check_against_reference(result, expected, TOL)


def test_rnn_cell_dropout_matches_numpy_reference(ref):
    p = ref.make_problem(seed=4, initial_state=True)
    layer = keras.layers.RNN(
        VanillaRNNCell(4, dropout=0.3, recurrent_dropout=0.4, seed=8),
        return_sequences=True,
    )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    gen = keras.random.SeedGenerator(8)
    ones = keras.ops.ones
    in_mask = np.asarray(keras.random.dropout(ones((3, 3)), 0.3, seed=gen))
    rec_mask = np.asarray(keras.random.dropout(ones((3, 4)), 0.4, seed=gen))
    result = ref.run_tf(layer, p["x"], p["h0"], c=p["c"], training=True)
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", False, True,
        c=p["c"], in_mask=in_mask, rec_mask=rec_mask,
    )
    ref.check_against_reference(result, expected, TOL)


# ---------------------------------------------------------------------------
# RNN(VanillaRNNCell) against RNN(SimpleRNNCell): bit for bit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("unroll", [False, True])
def test_rnn_cell_matches_simple_rnn_cell(ref, return_sequences, go_backwards,
                                          unroll):
    v, s = _twin_rnns(
        return_sequences=return_sequences, go_backwards=go_backwards,
        unroll=unroll, return_state=True,
    )
    p = ref.make_problem(seed=2, initial_state=True)
    c = p["c"] if return_sequences else p["c_last"]
    rv = ref.run_tf(v, p["x"], p["h0"], c=c, c_state=p["c_state"])
    rs = ref.run_tf(s, p["x"], p["h0"], c=c, c_state=p["c_state"])
    for key in ("y", "state", "dx", "dW", "dU", "db", "dh0"):
        _equal(rv[key], rs[key], key)


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_rnn_cell_masking_matches_simple_rnn_cell(zero_output_for_mask,
                                                  go_backwards):
    v, s = _twin_rnns(
        return_sequences=True, zero_output_for_mask=zero_output_for_mask,
        go_backwards=go_backwards,
    )
    x = np.random.default_rng(3).standard_normal((3, 5, 3)).astype("float32")
    mask = np.array(
        [[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool
    )
    _equal(v(x, mask=mask), s(x, mask=mask), "masked")


def test_rnn_cell_stateful_matches_simple_rnn_cell():
    v, s = _twin_rnns(stateful=True, return_sequences=True)
    rng = np.random.default_rng(4)
    for i, x in enumerate(rng.standard_normal((3, 3, 5, 3)).astype("float32")):
        if i == 2:
            v.reset_state()
            s.reset_state()
        _equal(v(x), s(x), f"batch {i}")
        _equal(keras.ops.convert_to_numpy(v.states[0]), keras.ops.convert_to_numpy(s.states[0]), f"state {i}")


@pytest.mark.parametrize("rates", [(0.5, 0.0), (0.0, 0.5), (0.3, 0.6)])
def test_rnn_cell_dropout_matches_simple_rnn_cell(rates):
    dropout, recurrent_dropout = rates
    v, s = _twin_rnns(
        return_sequences=True,
        cell_kwargs=dict(
            dropout=dropout, recurrent_dropout=recurrent_dropout, seed=13
        ),
    )
    x = np.random.default_rng(5).standard_normal((3, 5, 3)).astype("float32")
    first = v(x, training=True)
    _equal(first, s(x, training=True), "call 1")
    _equal(v(x, training=True), s(x, training=True), "call 2")
    assert not np.allclose(keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(v(x)))


@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_stacked_cells_match_simple_rnn_cells(ref, return_state, dropout):
    cell_kwargs = dict(dropout=dropout, recurrent_dropout=dropout, seed=3)
    v, s = _twin_rnns(
        n_cells=2, return_sequences=True, return_state=return_state,
        cell_kwargs=cell_kwargs,
    )
    assert len(v.trainable_weights) == 6
    x = np.random.default_rng(6).standard_normal((3, 5, 3)).astype("float32")
    training = dropout > 0
    yv = v(x, training=training)
    ys = s(x, training=training)
    if return_state:
        assert len(yv) == len(ys) == 3  # output and one state per cell
    for a, b in zip(
        yv if return_state else [yv], ys if return_state else [ys]
    ):
        _equal(a, b, "stacked")
    if not training:
        # Stacked = the reference applied twice.
        W1, U1, b1, W2, U2, b2 = v.get_weights()
        h1, _, _ = ref.rnn_forward(x, W1, U1, b1)
        h2, _, _ = ref.rnn_forward(h1, W2, U2, b2)
        ref.assert_rel_close(yv[0] if return_state else yv, h2, TOL, "stack")


def test_bidirectional_rnn_cell_matches_simple_rnn_cell():
    v = keras.layers.Bidirectional(
        keras.layers.RNN(VanillaRNNCell(4), return_sequences=True)
    )
    s = keras.layers.Bidirectional(
        keras.layers.RNN(keras.layers.SimpleRNNCell(4), return_sequences=True)
    )
    x = np.random.default_rng(7).standard_normal((3, 5, 3)).astype("float32")
    v.build(x.shape)
    s.build(x.shape)
    rng = np.random.default_rng(8)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in v.get_weights()]
    v.set_weights(weights)
    s.set_weights(weights)
    _equal(v(x), s(x), "bidirectional")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_rnn_cell_mixed_precision(policy):
    v, s = _twin_rnns(
        return_sequences=True, cell_kwargs=dict(dtype=policy), dtype=policy
    )
    x = np.random.default_rng(9).standard_normal((3, 5, 3)).astype("float32")
    yv, ys = v(x), s(x)
    assert keras.backend.standardize_dtype(yv.dtype) == policy.split("_")[1]
    cast = lambda t: keras.ops.cast(t, "float32")  # noqa: E731
    _equal(cast(yv), cast(ys), policy)


# ---------------------------------------------------------------------------
# Invalid arguments
# ---------------------------------------------------------------------------


def _assert_value_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "Received" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("units", [0, -1, 2.5, True, "8", None])
def test_cell_bad_units(units):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNNCell(units)
    _assert_value_error(excinfo, "units", repr(units))


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), None])
def test_cell_bad_rates(name, rate):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNNCell(4, **{name: rate})
    _assert_value_error(excinfo, name)


def test_cell_rate_bounds_are_inclusive():
    cell = VanillaRNNCell(4, dropout=0, recurrent_dropout=1)
    assert cell.dropout == 0.0 and cell.recurrent_dropout == 1.0


def test_cell_bad_activation_and_initializers():
    with pytest.raises(ValueError) as excinfo:
        VanillaRNNCell(4, activation="nope")
    _assert_value_error(excinfo, "activation", "nope")
    for name in ("kernel_initializer", "recurrent_initializer",
                 "bias_initializer"):
        with pytest.raises(ValueError) as excinfo:
            VanillaRNNCell(4, **{name: "nope"})
        _assert_value_error(excinfo, name, "nope")


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_cell_bad_seed(seed):
    with pytest.raises(ValueError) as excinfo:
        VanillaRNNCell(4, seed=seed)
    _assert_value_error(excinfo, "seed")


@pytest.mark.parametrize("shape", [(2, 3, 4), (3,), (2, None)])
def test_cell_build_rejects_bad_step_shape(shape):
    cell = VanillaRNNCell(4)
    with pytest.raises(ValueError) as excinfo:
        cell.build(shape)
    _assert_value_error(excinfo, "input_shape", "keras.layers.RNN")


def test_rnn_of_cell_rejects_rank_4_input():
    layer = keras.layers.RNN(VanillaRNNCell(4))
    with pytest.raises(ValueError) as excinfo:
        layer(np.zeros((2, 3, 4, 5), "float32"))
    _assert_value_error(excinfo, "input_shape")
