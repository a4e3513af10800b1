"""`VanillaRNNCell`: one step of the shared-weight Elman recurrence."""

import numbers

import keras
from keras import activations
from keras import initializers


def check_input_shape(owner, shape, rank, layout, hint):
    """`shape` as a tuple, once it has `rank` axes (`layout` names them) and
    a known last one, the feature size the weights are built for."""
    shape = tuple(shape)
    if len(shape) != rank or shape[-1] is None:
        raise ValueError(
            f"{owner} expects inputs of rank {rank} {layout} with a known "
            f"feature size. Received: input_shape={shape} (rank {len(shape)}). "
            f"{hint}"
        )
    return shape


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
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
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
class VanillaRNNCell(keras.layers.SimpleRNNCell):
    """One step of a vanilla (Elman) RNN with weights shared across time.

    `h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)`

    The same three weights serve every time step. Use it inside
    `keras.layers.RNN` (alone, in a list of cells for a stack, or wrapped by
    `keras.layers.Bidirectional`); `keras_vrnn.VanillaRNN` wraps it with a
    fast fused path. It is `keras.layers.SimpleRNNCell` (weights, step,
    config), except that invalid arguments raise instead of being clipped
    silently.

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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Received: seed={seed!r}. Expected an integer or None.")
        super().__init__(
            check_units(units),
            activation=get_activation(activation),
            use_bias=bool(use_bias),
            kernel_initializer=get_initializer("kernel_initializer", kernel_initializer),
            recurrent_initializer=get_initializer("recurrent_initializer", recurrent_initializer),
            bias_initializer=get_initializer("bias_initializer", bias_initializer),
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=check_rate("dropout", dropout),
            recurrent_dropout=check_rate("recurrent_dropout", recurrent_dropout),
            seed=seed,
            **kwargs,
        )

    def build(self, input_shape):
        check_input_shape(
            f"{type(self).__name__} '{self.name}'", input_shape, 2,
            "(batch, features), one time step",
            "Wrap the cell in keras.layers.RNN and feed (batch, timesteps, features).",
        )
        super().build(input_shape)
