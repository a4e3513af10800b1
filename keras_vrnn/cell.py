"""`VanillaRNNCell`: one step of the shared-weight Elman recurrence."""

import numbers

import keras
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

# Keras' RNN layer pre-computes per-sequence dropout masks only for cells that
# inherit this mixin (see `RNN._maybe_config_dropout_masks`); it is not part of
# the public API, so we import it from its source module.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell


def check_units(units):
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(
            f"Received: units={units!r} (type {type(units).__name__}). "
            "Expected a positive integer, the size of the hidden state, "
            "e.g. units=64."
        )
    return units


def check_rate(name, rate):
    # numbers.Real also admits NumPy scalars (np.float32), as SimpleRNN does.
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (
        0.0 <= rate <= 1.0
    ):
        raise ValueError(
            f"Received: {name}={rate!r}. Expected a float in [0, 1], the "
            f"fraction of units to drop, e.g. {name}=0.1 (0 disables it)."
        )
    return float(rate)


def get_activation(activation):
    try:
        return activations.get(activation)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Received: activation={activation!r}. Expected a Keras activation "
            "name ('tanh', 'relu', 'sigmoid', 'linear', ...), a callable, or "
            f"None for linear. ({e})"
        ) from None


def get_initializer(name, identifier):
    try:
        return initializers.get(identifier)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Received: {name}={identifier!r}. Expected a Keras initializer "
            "name ('glorot_uniform', 'orthogonal', 'zeros', ...), an "
            "Initializer instance, or one of keras_vrnn.initializers. "
            f"({e})"
        ) from None


@keras.saving.register_keras_serializable(package="keras_vrnn")
class VanillaRNNCell(keras.layers.Layer, DropoutRNNCell):
    """One step of a vanilla (Elman) RNN with weights shared across time.

    `h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)`

    The same three weights serve every time step. Use it inside
    `keras.layers.RNN` (alone, in a list of cells for a stack, or wrapped by
    `keras.layers.Bidirectional`); `keras_vrnn.VanillaRNN` wraps it with a
    fast fused path. Numerically identical to `keras.layers.SimpleRNNCell`
    with the same weights; unlike it, invalid arguments raise instead of
    being clipped silently.

    Args:
        units: Positive integer, size of the hidden state.
        activation: Activation function (name or callable). Default `"tanh"`.
            `None` means linear.
        use_bias: Whether to add a bias vector. Default `True`.
        kernel_initializer: Initializer for `kernel` (input_dim, units).
            Default `"glorot_uniform"`.
        recurrent_initializer: Initializer for `recurrent_kernel`
            (units, units). Default `"orthogonal"`; see
            `keras_vrnn.initializers` for gain-controlled variants.
        bias_initializer: Initializer for `bias` (units,). Default `"zeros"`.
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            Optional regularizers for the three weights.
        kernel_constraint, recurrent_constraint, bias_constraint:
            Optional constraints for the three weights.
        dropout: Float in [0, 1], fraction of input units dropped (one mask
            per sequence, reused at every step). Default 0.
        recurrent_dropout: Float in [0, 1], fraction of the previous hidden
            state dropped before the recurrent product (one mask per
            sequence). Default 0.
        seed: Optional integer seed for the dropout masks.

    Call arguments:
        sequence: A 2D tensor `(batch, features)`, the input at one step.
        states: A list with one 2D tensor `(batch, units)`, `h_{t-1}`.
        training: Python boolean; dropout is applied only when `True`.

    Returns:
        `(output, [new_state])`, both `(batch, units)` and equal.

    Example:

    ```python
    x = np.random.random((32, 10, 8)).astype("float32")
    rnn = keras.layers.RNN(keras_vrnn.VanillaRNNCell(4))
    y = rnn(x)  # (32, 4)
    stack = keras.layers.RNN(
        [keras_vrnn.VanillaRNNCell(16), keras_vrnn.VanillaRNNCell(4)],
        return_sequences=True,
    )
    ys = stack(x)  # (32, 10, 4)
    ```
    """

    def __init__(
        self,
        units,
        activation="tanh",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        self.units = check_units(units)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(
                f"Received: seed={seed!r}. Expected an integer or None."
            )
        dropout = check_rate("dropout", dropout)
        recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        self.activation = get_activation(activation)
        self.use_bias = bool(use_bias)

        self.kernel_initializer = get_initializer(
            "kernel_initializer", kernel_initializer
        )
        self.recurrent_initializer = get_initializer(
            "recurrent_initializer", recurrent_initializer
        )
        self.bias_initializer = get_initializer("bias_initializer", bias_initializer)

        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

        self.kernel_constraint = constraints.get(kernel_constraint)
        self.recurrent_constraint = constraints.get(recurrent_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' processes one time step "
                "of shape (batch, features) with a known feature size. "
                f"Received: input_shape={tuple(input_shape)}. Wrap the cell in "
                "keras.layers.RNN and feed (batch, timesteps, features)."
            )
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,),
                name="bias",
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def call(self, sequence, states, training=False):
        prev_output = states[0] if isinstance(states, (list, tuple)) else states
        dp_mask = self.get_dropout_mask(sequence)
        rec_dp_mask = self.get_recurrent_dropout_mask(prev_output)

        if training and dp_mask is not None:
            sequence = sequence * dp_mask
        # Same association order as SimpleRNNCell ((x W + b) + h U), so the
        # two agree bit for bit in float32.
        h = ops.matmul(sequence, self.kernel)
        if self.bias is not None:
            h = ops.add(h, self.bias)
        if training and rec_dp_mask is not None:
            prev_output = prev_output * rec_dp_mask
        output = h + ops.matmul(prev_output, self.recurrent_kernel)
        if self.activation is not None:
            output = self.activation(output)

        new_state = [output] if isinstance(states, (list, tuple)) else output
        return output, new_state

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.state_size), dtype=self.compute_dtype)]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": initializers.serialize(
                self.recurrent_initializer
            ),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": regularizers.serialize(
                self.recurrent_regularizer
            ),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        base_config = super().get_config()
        return {**base_config, **config}
