"""Tests for keras_vrnn.VanishingGradientRegularizer (Pascanu et al.'s Omega).

The reference is written from the paper's equations in float64 NumPy:

    Omega = mean_b sum_{k=1}^{T-1} (||d_k J_k|| / ||d_k|| - 1)^2,
    J_k = diag(act'(z_k)) U^T,  z_k = x_k W + h_{k-1} U + b

(processing-order indices k of the layer's states, h_{k-1} the state before
step k), with the states h and the gradients d held fixed; its gradient with
respect to U by central finite differences of that function.
"""

import numpy as np
import pytest

import keras
import keras_vrnn
from keras_vrnn import regularizers

# The wrapper's train_step uses tf.GradientTape (other backends: test_bad_models).
pytestmark = pytest.mark.tensorflow_only

_DACT = {"tanh": lambda z: 1.0 - np.tanh(z) ** 2,
         "sigmoid": lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2,
         "softplus": lambda z: 1.0 / (1.0 + np.exp(-z))}


def _omega_reference(ref, p, U, d, activation, go_backwards):
    """Omega(U) with the trajectory of p's own U held fixed (float64)."""
    hs, _, xs = ref.rnn_forward(p["x"], p["W"], p["U"], p["b"], p["h0"], activation,
                                go_backwards)
    d = ref.f64(d)[:, ::-1] if go_backwards else ref.f64(d)
    z = xs[:, 1:] @ ref.f64(p["W"]) + hs[:, :-1] @ U + ref.f64(p["b"])
    total = 0.0
    for b in range(d.shape[0]):
        for k in range(d.shape[1] - 1):
            g = d[b, k + 1]
            if np.linalg.norm(g) > 0:
                carried = (g * _DACT[activation](z[b, k])) @ U.T
                total += (np.linalg.norm(carried) / np.linalg.norm(g) - 1.0) ** 2
    return total / d.shape[0]


def _layer(p, activation="tanh", go_backwards=False):
    units = p["U"].shape[0]
    rnn = keras_vrnn.VanillaRNN(units, activation=activation, go_backwards=go_backwards,
                                name="rnn")
    rnn.build(p["x"].shape)
    rnn.set_weights(p["weights"])
    return rnn


@pytest.mark.parametrize("activation,go_backwards",
                         [("tanh", False), ("tanh", True), ("sigmoid", False),
                          ("softplus", True)])
def test_omega_and_its_gradient_match_the_reference(ref, activation, go_backwards):
    import tensorflow as tf

    p = ref.make_problem(seed=1, batch=3, timesteps=6, units=4, initial_state=True)
    d = np.random.default_rng(2).standard_normal(p["c"].shape).astype(np.float32)
    d[1, 3] = 0.0  # a step without gradient counts 0
    d[2] *= 1e-30  # and a tiny one is normalised without underflow
    rnn = _layer(p, activation, go_backwards)
    U = rnn.cell.recurrent_kernel
    with tf.GradientTape() as tape:
        omega = regularizers.omega_value(rnn, tf.constant(p["x"]), tf.constant(p["h0"]),
                                         tf.constant(d))
    grad = tape.gradient(omega, U.value).numpy()
    U64 = ref.f64(p["U"])
    expected = _omega_reference(ref, p, U64, d, activation, go_backwards)
    assert float(omega) == pytest.approx(expected, rel=1e-5)
    assert expected > 0.05  # not a trivially zero case
    eps, fd = 1e-6, np.zeros_like(U64)
    for i in np.ndindex(U64.shape):
        step = np.zeros_like(U64)
        step[i] = eps
        fd[i] = (_omega_reference(ref, p, U64 + step, d, activation, go_backwards)
                 - _omega_reference(ref, p, U64 - step, d, activation, go_backwards)) / (2 * eps)
    ref.assert_rel_close(grad, fd, 1e-4, "dOmega/dU")


def _adding_model(timesteps=6, units=4, seed=0):
    return keras.Sequential([
        keras.Input((timesteps, 2)),
        keras_vrnn.VanillaRNN(units, name="rnn", kernel_initializer=keras.initializers
                              .GlorotUniform(seed=seed), recurrent_initializer=keras_vrnn
                              .initializers.ScaledOrthogonal(0.7, seed=seed + 1)),
        keras.layers.Dense(1, name="out",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed))])


def _data(n=8, timesteps=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, timesteps, 2)).astype(np.float32)
    return x, (x[:, 0, :1] + x[:, -1, :1]).astype(np.float32)


def test_train_step_adds_strength_times_omega_gradient_to_w_hh_only(ref):
    """One SGD step: W_hh moves by -lr (dE/dU + strength dOmega/dU), with d =
    dE/dh_t from the reference BPTT; every other weight by -lr dE/dw."""
    x, y = _data()
    lr, strength = 0.1, 3.0
    model = keras_vrnn.VanishingGradientRegularizer(_adding_model(), strength=strength)
    model.compile(keras.optimizers.SGD(lr), "mse")
    W, U, b, w_out, b_out = [ref.f64(w) for w in model.get_weights()]
    h_last = ref.rnn_forward(x, W, U, b)[0][:, -1]
    c = 2.0 / len(x) * ((h_last @ w_out + b_out) - y) @ w_out.T  # dMSE/dh_T
    r = ref.rnn_reference(x, W, U, b, c=c)
    dw_out = h_last.T @ (2.0 / len(x) * ((h_last @ w_out + b_out) - y))
    p = {"x": x, "W": W, "U": U, "b": b, "h0": np.zeros((len(x), U.shape[0]))}
    fd = np.zeros_like(U)
    for i in np.ndindex(U.shape):
        step = np.zeros_like(U)
        step[i] = 1e-6
        fd[i] = (_omega_reference(ref, p, U + step, r["dh"], "tanh", False)
                 - _omega_reference(ref, p, U - step, r["dh"], "tanh", False)) / 2e-6
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["omega"] == pytest.approx(_omega_reference(ref, p, U, r["dh"], "tanh", False),
                                          rel=1e-4)
    new = model.get_weights()
    ref.assert_rel_close((W - new[0]) / lr, r["dW"], 1e-4, "kernel")
    ref.assert_rel_close((U - new[1]) / lr, r["dU"] + strength * fd, 1e-4, "recurrent kernel")
    ref.assert_rel_close((b - new[2]) / lr, r["db"], 1e-4, "bias")
    ref.assert_rel_close((w_out - new[3]) / lr, dw_out, 1e-4, "head")
    assert np.abs(fd).max() > 1e-3  # Omega does move W_hh


def test_train_step_computes_omega_before_the_update_in_every_model(ref):
    """In a graph-mode train step (no XLA) nothing but a control dependency
    orders Omega's reads of the weights before the optimizer's writes; with
    the race, some of several fresh models logged and applied the Omega of
    half-updated weights."""
    x, y = _data()
    for _ in range(5):
        model = keras_vrnn.VanishingGradientRegularizer(_adding_model(), strength=3.0)
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
        W, U, b, w_out, b_out = [ref.f64(w) for w in model.get_weights()]
        h_last = ref.rnn_forward(x, W, U, b)[0][:, -1]
        c = 2.0 / len(x) * ((h_last @ w_out + b_out) - y) @ w_out.T
        p = {"x": x, "W": W, "U": U, "b": b, "h0": np.zeros((len(x), U.shape[0]))}
        expected = _omega_reference(ref, p, U, ref.rnn_reference(x, W, U, b, c=c)["dh"],
                                    "tanh", False)
        logs = model.train_on_batch(x, y, return_dict=True)
        assert logs["omega"] == pytest.approx(expected, rel=1e-5)


def test_a_weight_without_gradient_is_left_alone():
    """A trainable weight the loss does not reach (None gradient) is skipped by
    the optimizer, as in a plain model; the rest trains."""
    x, y = _data()
    sequential = _adding_model()
    inner = keras.Model(sequential.inputs, sequential.outputs)
    inner.unused = keras.layers.Dense(3, name="unused")  # tracked, never called
    inner.unused.build((None, 4))
    assert len(inner.trainable_weights) == 7
    model = keras_vrnn.VanishingGradientRegularizer(inner, strength=1.0)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
    unused, rnn = inner.unused.get_weights(), inner.get_layer("rnn").get_weights()
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["omega"])
    for before, after in zip(unused, inner.unused.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(rnn[1], inner.get_layer("rnn").get_weights()[1])


def test_trains_logs_omega_saves_and_loads(tmp_path):
    x, y = _data(n=64, timesteps=8)
    model = keras_vrnn.VanishingGradientRegularizer(_adding_model(8, 8), strength=0.5)
    model.compile(keras.optimizers.Adam(1e-2, global_clipnorm=1.0), "mse")
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert len(history["omega"]) == 8 and all(np.isfinite(history["omega"]))
    assert np.ndim(model.evaluate(x, y, verbose=0)) == 0  # omega is a training log only
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_vrnn.VanishingGradientRegularizer)
    assert (loaded.strength, loaded.layer) == (0.5, "rnn")
    assert loaded.get_config()["model"]["class_name"] == "Sequential"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert "omega" in loaded.fit(x, y, epochs=1, verbose=0).history


def test_works_with_the_gradient_norm_callback(tmp_path):
    x, y = _data()
    model = keras_vrnn.VanishingGradientRegularizer(_adding_model(), strength=1.0)
    model.compile("adam", "mse")
    callback = keras_vrnn.GradientNormCallback(str(tmp_path), (x, y), every_n_batches=1)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    assert (tmp_path / "gradient_norms.npz").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"strength": -1.0}, "Received: strength=-1.0"),
    ({"strength": float("nan")}, "Received: strength=nan"),
    ({"strength": True}, "Received: strength=True"),
    ({"layer": "out"}, "Received: layer='out'.*it has \\['rnn'\\]"),
    ({"layer": "missing"}, "Received: layer='missing'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_vrnn.VanishingGradientRegularizer(_adding_model(), **kwargs)


def test_bad_models(monkeypatch):
    with pytest.raises(ValueError, match="Received: model=.*Expected a keras.Model"):
        keras_vrnn.VanishingGradientRegularizer(keras_vrnn.VanillaRNN(3))
    lstm = keras.Sequential([keras.Input((5, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="Received: layer=None.*it has \\[\\]"):
        keras_vrnn.VanishingGradientRegularizer(lstm)
    two = keras.Sequential([keras.Input((5, 2)), keras_vrnn.VanillaRNN(3, return_sequences=True),
                            keras_vrnn.VanillaRNN(3)])
    with pytest.raises(ValueError, match="Received: layer=None"):
        keras_vrnn.VanishingGradientRegularizer(two)
    keras_vrnn.VanishingGradientRegularizer(two, layer=two.layers[1].name)  # one named: fine
    drop = keras.Sequential([keras.Input((5, 2)), keras_vrnn.VanillaRNN(3, dropout=0.1)])
    with pytest.raises(ValueError, match="with dropout"):
        keras_vrnn.VanishingGradientRegularizer(drop)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="Received: backend='jax'"):
        keras_vrnn.VanishingGradientRegularizer(_adding_model())
