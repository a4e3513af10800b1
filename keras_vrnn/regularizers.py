"""Pascanu, Mikolov & Bengio's (2013) regulariser against vanishing gradients."""

import keras
from keras import ops
from keras.src import backend as keras_backend  # `rnn` loop, as RNN uses it

from keras_vrnn import diagnostics
from keras_vrnn import fused
from keras_vrnn import probe as probe_lib


@keras.saving.register_keras_serializable(package="keras_vrnn")
class VanishingGradientRegularizer(keras.Model):
    """Trains `model` on `E + strength * Omega`, Pascanu et al.'s (2013) regulariser.

    `Omega = sum_k (||d_{k+1} J_k|| / ||d_{k+1}|| - 1)^2` (their eq. 9), `d_k = dE/dh_k`,
    `J_k = dh_{k+1}/dh_k = diag(act'(z_{k+1})) W_hh^T` of one vanilla RNN layer, summed over
    the T - 1 transitions between its states (0 where `d_{k+1} = 0`), batch mean. As in the
    paper (eq. 11) only `W_hh` gets its gradient, with `d` and the states held constant.
    A wrapper with its own `train_step` because Omega needs `dE/dh_t`, which a Regularizer,
    `add_loss` or a callback never sees (docs/design.md); `fit` logs `omega`. TensorFlow only.

    Args:
        model: The `keras.Model` to train (its layer without dropout and masks).
        strength: Weight of Omega, >= 0.
        layer: Name of its `VanillaRNN` (or `RNN(VanillaRNNCell)`); None: the only one.
        **kwargs: `keras.Model` arguments (e.g. `name`).

    Example:

    ```python
    model = keras_vrnn.VanishingGradientRegularizer(rnn_model, strength=1.0)
    model.compile(keras.optimizers.Adam(1e-3, global_clipnorm=1.0), "mse")
    model.fit(x, y)  # logs loss and omega; model.save("m.keras") as usual
    ```
    """

    def __init__(self, model, strength=1.0, layer=None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(f"Received: backend={keras.backend.backend()!r}. Expected "
                               "tensorflow (KERAS_BACKEND): train_step uses tf.GradientTape.")
        if not isinstance(model, keras.Model):
            raise ValueError(f"Received: model={model!r}. Expected a keras.Model.")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
                0 <= strength < float("inf")):
            raise ValueError(f"Received: strength={strength!r}. Expected a number >= 0, e.g. 1.0.")
        names = [rnn.name for _, rnn in diagnostics.rnn_layers(model)]
        found = [rnn for _, rnn in diagnostics.rnn_layers(model) if layer in (None, rnn.name)]
        if len(found) != 1:  # none, or layer=None and several
            raise ValueError(f"Received: layer={layer!r}. Expected the name of one VanillaRNN "
                             f"layer of model '{model.name}' (None: its only one); it has {names}.")
        if found[0].cell.dropout or found[0].cell.recurrent_dropout:
            raise ValueError(f"Received: layer '{found[0].name}' with dropout. Expected none.")
        super().__init__(**kwargs)
        self.model, self.strength, self.layer = model, float(strength), found[0].name
        # Untracked, so `metrics` (and `evaluate`) stay the wrapped model's.
        object.__setattr__(self, "_rnn", found[0])
        object.__setattr__(self, "_omega", keras.metrics.Mean(name="omega"))

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        rnn, calls = self._rnn, []

        def source(sequences, initial_state, mask):  # Omega is of the first call
            if mask is not None:
                raise ValueError(f"Layer '{rnn.name}' received a mask. Expected none.")
            p = ops.zeros((*ops.shape(sequences)[:2], rnn.cell.units), sequences.dtype)
            tape.watch(p)
            calls.append((sequences, tf.nest.flatten(initial_state)[0], p))
            return p

        with tf.GradientTape() as tape:
            with probe_lib.attach(rnn, source):
                y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
            self._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
            scaled = self.optimizer.scale_loss(loss)
        weights, (sequences, h0, p) = self.trainable_weights, calls[0]
        *grads, d = tape.gradient(scaled, [*weights, p])
        with tf.GradientTape() as omega_tape:
            omega = omega_value(rnn, sequences, h0, d)
        recurrent = rnn.cell.recurrent_kernel
        extra = self.strength * omega_tape.gradient(omega, recurrent.value)
        grads = [g + extra if w is recurrent else g for g, w in zip(grads, weights)]
        with tf.control_dependencies([omega]):  # Omega reads the weights before they change
            self.optimizer.apply([g if g is None else tf.identity(g) for g in grads], weights)
        self._omega.update_state(omega)
        return {**self.compute_metrics(x, y, y_pred, sample_weight), "omega": self._omega.result()}

    def reset_metrics(self):
        super().reset_metrics()
        self._omega.reset_state()

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "strength": self.strength, "layer": self.layer}

    @classmethod
    def from_config(cls, config):
        return cls(**{**config, "model": keras.saving.deserialize_keras_object(config["model"])})


def omega_value(rnn, sequences, h0, d):
    """Omega of `rnn` for inputs `sequences`, state `h0`, `d = dE/dh_t` (batch, T, units)."""
    import tensorflow as tf

    from keras_vrnn import fused_tf  # TensorFlow's kernels: Omega is TensorFlow only

    cell, recurrent = rnn.cell, rnn.cell.recurrent_kernel.value
    xs, d = (ops.flip(sequences, 1), ops.flip(d, 1)) if rnn.go_backwards else (sequences, d)
    xw = ops.stop_gradient(ops.matmul(xs, cell.kernel) + (0 if cell.bias is None else cell.bias))

    def step(x_t, states):  # the layer's own forward, for the states h_k
        h = cell.activation(x_t + ops.matmul(states[0], recurrent))
        return h, [h]

    name, bias = fused.activation_name(cell.activation), cell.bias
    hs = ops.stop_gradient(fused_tf.recurrence_from_inputs(  # native kernels, as the layer
        xs, cell.kernel.value, bias if bias is None else bias.value, h0, recurrent, name)
        if name else keras_backend.rnn(step, xw, [h0], return_all_outputs=True)[1])
    with tf.GradientTape(watch_accessed_variables=False) as tape:  # act'(z), any activation
        z = xw[:, 1:] + ops.matmul(hs[:, :-1], recurrent)  # z_{k+1}, k = 1 .. T-1
        tape.watch(z)
        a = cell.activation(z)
    slope = tape.gradient(a, z)
    d = ops.stop_gradient(d[:, 1:])
    scale = ops.max(ops.abs(d), axis=-1, keepdims=True)  # d / ||d|| without underflow
    live = scale > 0
    d = d / ops.where(live, scale, 1.0)
    d = d / ops.where(live, ops.norm(d, axis=-1, keepdims=True), 1.0)
    carried = ops.matmul(d * slope, ops.transpose(recurrent))  # d_{k+1} J_k / ||d_{k+1}||
    ratio = ops.sqrt(ops.sum(ops.square(carried), axis=-1) + 1e-12)  # differentiable at 0
    return ops.mean(ops.sum(ops.where(live[..., 0], ops.square(ratio - 1.0), 0.0), axis=1))
