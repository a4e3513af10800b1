"""Pascanu, Mikolov & Bengio's (2013) regulariser against vanishing gradients."""

import math

import keras
from keras import ops
from keras.src import backend as keras_backend  # `rnn` loop, as RNN uses it

from keras_vrnn import diagnostics
from keras_vrnn import probe as probe_lib


@keras.saving.register_keras_serializable(package="keras_vrnn")
class VanishingGradientRegularizer(keras.Model):
    """Trains `model` on `E + strength * Omega`, Pascanu et al.'s (2013) Omega.

    `Omega = sum_k (||d_{k+1} J_k|| / ||d_{k+1}|| - 1)^2` (their eq. 9), with
    `d_k = dE/dh_k` (total BPTT gradient) and `J_k = dh_{k+1}/dh_k =
    diag(act'(z_{k+1})) W_hh^T` of one vanilla RNN layer, `h_{k+1} = act(z_{k+1})`,
    `z_{k+1} = x_{k+1} W + h_k W_hh + b`: a sum over the transitions between its
    hidden states (T - 1 per sequence), averaged over the batch. A term is 0 when
    one step carries the error back without shrinking or growing it; steps with
    `d_{k+1} = 0` count 0. As in the paper (eq. 11), only `W_hh` gets Omega's
    gradient, with `d` and the states held constant (immediate derivatives: the
    `W_hh` of `J_k` and of `z_{k+1}`); the other weights get `dE/dw` only. The sum
    goes to the optimizer, so its clipping (`global_clipnorm`) applies to both.

    Why a model wrapper with its own `train_step`: Omega needs `dE/dh_t`, a
    gradient of the loss, which a `keras.regularizers.Regularizer` (weights only),
    `add_loss` (forward pass) or a callback (no access to the gradient) cannot
    have. Here one backward pass gives `dE/dw` and `dE/dh_t` (a zero probe on every
    `h_t`, `keras_vrnn.probe`), a second, local one Omega's gradient. Prediction,
    evaluation and `model.save` (a `.keras` file with the wrapped model) are the
    usual ones; fit logs the batch mean of Omega as `omega`. TensorFlow backend
    only. The layer runs without dropout and masks.

    Args:
        model: The `keras.Model` to train.
        strength: Weight of Omega, a number >= 0 (0: plain training).
        layer: Name of the `VanillaRNN` (or `keras.layers.RNN(VanillaRNNCell)`)
            layer to regularise; None: the model's only one.
        **kwargs: `keras.Model` arguments (e.g. `name`).

    Example:

    ```python
    inner = keras.Sequential([keras.Input((100, 2)), keras_vrnn.VanillaRNN(64),
                              keras.layers.Dense(1)])
    model = keras_vrnn.VanishingGradientRegularizer(inner, strength=1.0)
    model.compile(keras.optimizers.Adam(1e-3, global_clipnorm=1.0), "mse")
    model.fit(x, y)  # logs loss and omega
    ```
    """

    def __init__(self, model, strength=1.0, layer=None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"VanishingGradientRegularizer trains with tf.GradientTape. Received: backend="
                f"{keras.backend.backend()!r}. Expected tensorflow: set KERAS_BACKEND=tensorflow.")
        if not isinstance(model, keras.Model):
            raise ValueError(f"Received: model={model!r}. Expected a keras.Model.")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
                math.isfinite(strength) and strength >= 0):
            raise ValueError(f"Received: strength={strength!r}. Expected a finite number >= 0, "
                             "e.g. strength=1.0.")
        found = [rnn for key, rnn in diagnostics.rnn_layers(model) if layer in (None, rnn.name)]
        if len(found) != 1:
            names = [rnn.name for _, rnn in diagnostics.rnn_layers(model)]
            raise ValueError(
                f"Received: layer={layer!r}. Expected the name of one VanillaRNN or "
                f"RNN(VanillaRNNCell) layer of model '{model.name}' (None: its only one); "
                f"it has {names}.")
        if found[0].cell.dropout or found[0].cell.recurrent_dropout:
            raise ValueError(f"Received: layer '{found[0].name}' with dropout. Expected "
                             "dropout=0 and recurrent_dropout=0: Omega follows one trajectory.")
        super().__init__(**kwargs)
        self.model, self.strength, self.layer = model, float(strength), found[0].name
        # Not tracked: `model.metrics` (and so `evaluate`) stays the wrapped model's.
        object.__setattr__(self, "_omega", keras.metrics.Mean(name="omega"))

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def _rnn(self):
        return next(rnn for _, rnn in diagnostics.rnn_layers(self.model) if rnn.name == self.layer)

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        rnn, calls = self._rnn(), []

        def source(sequences, initial_state, mask):  # the first call's probe
            if mask is not None:
                raise ValueError(f"Layer '{rnn.name}' received a mask. Expected none: "
                                 "VanishingGradientRegularizer does not support masking.")
            if calls:
                return None
            p = ops.zeros((*ops.shape(sequences)[:2], rnn.cell.units), sequences.dtype)
            tape.watch(p)
            h0 = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
            calls.append((sequences, h0, p))
            return p

        with tf.GradientTape() as tape:
            with probe_lib.attach(rnn, source):
                y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=True)
            self._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
            scaled = self.optimizer.scale_loss(loss)
        weights, (sequences, h0, p) = self.trainable_weights, calls[0]
        *grads, d = tape.gradient(scaled, [*weights, p])
        recurrent = rnn.cell.recurrent_kernel
        with tf.GradientTape(watch_accessed_variables=False) as omega_tape:
            omega_tape.watch(recurrent.value)
            omega = omega_value(rnn, sequences, h0, d)
        for i, w in enumerate(weights):
            if w is recurrent:
                grads[i] += self.strength * omega_tape.gradient(omega, recurrent.value)
        self.optimizer.apply(grads, weights)
        self._omega.update_state(omega)
        return {**self.compute_metrics(x, y, y_pred, sample_weight), "omega": self._omega.result()}

    def reset_metrics(self):
        super().reset_metrics()
        self._omega.reset_state()

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "strength": self.strength, "layer": self.layer}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects)
        return cls(model, **config)


def omega_value(rnn, sequences, h0, d):
    """Omega of `rnn` (see `VanishingGradientRegularizer`) for its input `sequences`
    (batch, T, features), initial state `h0` and `d = dE/dh_t` (batch, T, units, by
    input time), as a function of `W_hh` alone (everything else held constant)."""
    import tensorflow as tf

    cell, recurrent = rnn.cell, rnn.cell.recurrent_kernel.value
    xs, d = (ops.flip(sequences, 1), ops.flip(d, 1)) if rnn.go_backwards else (sequences, d)
    xw = ops.stop_gradient(ops.matmul(xs, cell.kernel) + (0 if cell.bias is None else cell.bias))

    def step(x_t, states):  # the layer's own forward, for the states h_k
        h = cell.activation(x_t + ops.matmul(states[0], recurrent))
        return h, [h]

    hs = ops.stop_gradient(keras_backend.rnn(step, xw, [h0], return_all_outputs=True)[1])
    with tf.GradientTape(watch_accessed_variables=False) as tape:  # act'(z), any activation
        z = xw[:, 1:] + ops.matmul(hs[:, :-1], recurrent)  # z_{k+1}, k = 1 .. T-1
        tape.watch(z)
        a = cell.activation(z)
    slope = tape.gradient(a, z)
    d = ops.stop_gradient(d[:, 1:])
    scale = ops.max(ops.abs(d), axis=-1, keepdims=True)  # d/||d|| without underflow
    live = scale > 0
    d = d / ops.where(live, scale, 1.0)
    d = d / ops.where(live, ops.norm(d, axis=-1, keepdims=True), 1.0)
    carried = ops.matmul(d * slope, ops.transpose(recurrent))  # d_{k+1} J_k / ||d_{k+1}||
    ratio = ops.sqrt(ops.sum(ops.square(carried), axis=-1) + 1e-12)  # differentiable at 0
    return ops.mean(ops.sum(ops.where(live[..., 0], ops.square(ratio - 1.0), 0.0), axis=1))
