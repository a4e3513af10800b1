"""Tests for keras_vrnn.lyapunov_exponents: exact spectra of linear RNNs, a
tanh RNN against an independent NumPy QR-method reference, layer selection
and argument errors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vrnn  # noqa: E402

T, F = 40, 3


def model_with(recurrent, activation="linear", timesteps=T, seed=0, **kwargs):
    units = recurrent.shape[0]
    keras.utils.set_random_seed(seed)
    rnn = keras_vrnn.VanillaRNN(units, activation=activation, name="rnn", **kwargs)
    model = keras.Sequential([keras.Input((timesteps, F)), rnn])
    rnn.cell.recurrent_kernel.assign(recurrent.astype("float32"))
    return model, rnn


def inputs(batch=3, timesteps=T, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, timesteps, F)).astype(
        "float32"
    )


def reference_exponents(x, W, U, b, warmup=0, mask=None):
    """QR method written from the definitions: h_t = tanh(x_t W + h_{t-1} U
    + b) (row vectors), so dh_t/dh_{t-1} = diag(1 - h_t^2) U^T for column
    vectors; Q_0 = I; per sample, exponent i = mean log |R_t[i, i]| over the
    kept (unmasked, t >= warmup) steps; sorted, then averaged."""
    x, W, U, b = (np.asarray(a, np.float64) for a in (x, W, U, b))
    spectra = []
    for n in range(x.shape[0]):
        h = np.zeros(U.shape[0])
        q = np.eye(U.shape[0])
        logs = []
        for t in range(x.shape[1]):
            if mask is not None and not mask[n, t]:
                continue
            h = np.tanh(x[n, t] @ W + h @ U + b)
            jacobian = np.diag(1.0 - h**2) @ U.T
            q, r = np.linalg.qr(jacobian @ q)
            if t >= warmup:
                logs.append(np.log(np.abs(np.diag(r))))
        spectra.append(np.sort(np.mean(logs, axis=0))[::-1])
    return np.mean(spectra, axis=0)


@pytest.mark.parametrize("gain", [0.6, 1.0, 1.3])
def test_linear_scaled_orthogonal_gives_log_gain(gain):
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))
    model, _ = model_with(gain * q)
    exponents = keras_vrnn.lyapunov_exponents(model, inputs())
    assert exponents.dtype == np.float64 and exponents.shape == (5,)
    expected = np.log(np.float64(np.float32(gain * 1.0)))
    np.testing.assert_allclose(exponents, np.full(5, expected), atol=2e-6)
    top = keras_vrnn.lyapunov_exponents(model, inputs(), num_exponents=2)
    np.testing.assert_allclose(top, np.full(2, expected), atol=2e-6)


def test_linear_diagonal_gives_sorted_log_abs():
    d = np.array([0.5, -2.0, 1.1, 0.3, -0.9])
    model, _ = model_with(np.diag(d))
    exponents = keras_vrnn.lyapunov_exponents(model, inputs(), warmup_steps=5)
    expected = np.sort(np.log(np.abs(d.astype("float32").astype(np.float64))))[::-1]
    np.testing.assert_allclose(exponents, expected, atol=1e-6)
    # Leading exponents from a generic subspace, on a long trajectory.
    model, _ = model_with(np.diag(d), timesteps=400)
    top = keras_vrnn.lyapunov_exponents(model, inputs(timesteps=400), num_exponents=2)
    np.testing.assert_allclose(top, expected[:2], atol=0.02)


@pytest.mark.parametrize("warmup", [0, 7])
def test_tanh_matches_numpy_reference(warmup):
    rng = np.random.default_rng(3)
    units = 6
    recurrent = 1.5 * rng.standard_normal((units, units)) / np.sqrt(units)
    model, rnn = model_with(recurrent, activation="tanh")
    x = inputs(batch=4)
    exponents = keras_vrnn.lyapunov_exponents(model, x, warmup_steps=warmup)
    cell = rnn.cell
    expected = reference_exponents(
        x, cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy(),
        warmup,
    )
    np.testing.assert_allclose(exponents, expected, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(exponents) <= 0)
    # A non-symmetric U: the transposed Jacobian would give other numbers.
    wrong = reference_exponents(
        x, cell.kernel.numpy(), cell.recurrent_kernel.numpy().T, cell.bias.numpy(),
        warmup,
    )
    assert not np.allclose(exponents, wrong, atol=1e-3)


def test_masked_steps_are_skipped():
    rng = np.random.default_rng(4)
    recurrent = rng.standard_normal((4, 4)) / 2.0
    keras.utils.set_random_seed(0)
    rnn = keras_vrnn.VanillaRNN(4, name="rnn")
    model = keras.Sequential([keras.Input((T, F)), keras.layers.Masking(0.0), rnn])
    rnn.cell.recurrent_kernel.assign(recurrent.astype("float32"))
    x = inputs(batch=2)
    mask = np.ones((2, T), bool)
    mask[0, 10:15] = False
    mask[1, -6:] = False
    x[~mask] = 0.0
    exponents = keras_vrnn.lyapunov_exponents(model, x)
    cell = rnn.cell
    expected = reference_exponents(
        x, cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy(),
        mask=mask,
    )
    np.testing.assert_allclose(exponents, expected, rtol=1e-9, atol=1e-12)


def test_layer_selection_and_errors():
    inputs_ = keras.Input((T, F))
    h = keras_vrnn.VanillaRNN(3, return_sequences=True, name="a")(inputs_)
    h = keras.layers.Bidirectional(
        keras.layers.RNN(keras_vrnn.VanillaRNNCell(2)), name="bi"
    )(h)
    model = keras.Model(inputs_, h)
    x = inputs(batch=2)
    match = r"Received: model with 3 vanilla RNN layers .*; pass layer="
    with pytest.raises(ValueError, match=match):
        keras_vrnn.lyapunov_exponents(model, x)
    assert keras_vrnn.lyapunov_exponents(model, x, layer="a").shape == (3,)
    backward = model.get_layer("bi").backward_layer
    by_key = keras_vrnn.lyapunov_exponents(model, x, layer="bi/backward")
    by_layer = keras_vrnn.lyapunov_exponents(model, x, layer=backward)
    np.testing.assert_array_equal(by_key, by_layer)
    assert by_key.shape == (2,)
    cases = [
        (dict(layer="nope"), "Received: layer='nope'"),
        (dict(layer="a", num_exponents=0), "Received: num_exponents=0"),
        (dict(layer="a", num_exponents=4), "at most the layer's units .3."),
        (dict(layer="a", num_exponents=True), "Received: num_exponents=True"),
        (dict(layer="a", warmup_steps=-1), "Received: warmup_steps=-1"),
        (dict(layer="a", warmup_steps=1.5), "Received: warmup_steps=1.5"),
        (dict(layer="a", warmup_steps=T),
         rf"in \[0, {T}\).*Received: warmup_steps={T}"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            keras_vrnn.lyapunov_exponents(model, x, **kwargs)
    dense_only = keras.Sequential([keras.Input((T, F)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Received: model with 0 vanilla RNN"):
        keras_vrnn.lyapunov_exponents(dense_only, x)
    with pytest.raises(ValueError, match="Received: model of type ndarray"):
        keras_vrnn.lyapunov_exponents(x, x)
