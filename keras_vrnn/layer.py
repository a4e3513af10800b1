"""`VanillaRNN`: a drop-in for `keras.layers.SimpleRNN` with a fused fast path."""

import keras
from keras import activations
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_vrnn import fused
from keras_vrnn import probe as probe_lib
from keras_vrnn.cell import VanillaRNNCell

_USE_FUSED_VALUES = ("auto", True, False)


@keras.saving.register_keras_serializable(package="keras_vrnn")
class VanillaRNN(keras.layers.RNN):
    """Vanilla (Elman) RNN layer: `h_t = act(x_t W_xh + h_{t-1} W_hh + b)`.

    A drop-in replacement for `keras.layers.SimpleRNN`: same arguments, same
    weights in the same order (`kernel`, `recurrent_kernel`, `bias`) and the
    same outputs in every mode. It adds a fused fast path (see
    `keras_vrnn.fused`), taken automatically when the configuration allows:
    the input projection of all time steps is one matrix product, the loop
    carries only `h_{t-1} @ W_hh`, and a hand-written BPTT loop computes the
    gradients. The fused path covers the TensorFlow and JAX backends with
    activation tanh, relu, sigmoid or linear, with or without bias, dropout,
    recurrent dropout, `go_backwards`, `initial_state`, `stateful`,
    `return_sequences` and `return_state`. It is not used (the generic
    `keras.layers.RNN` loop is) with a mask, `unroll=True`, another
    activation, or on the PyTorch backend.

    Args:
        units: Positive integer, size of the hidden state.
        activation: Activation function. Default `"tanh"`; `None` is linear.
        use_bias: Whether the layer uses a bias vector. Default `True`.
        kernel_initializer: Initializer for `kernel`. Default
            `"glorot_uniform"`.
        recurrent_initializer: Initializer for `recurrent_kernel`. Default
            `"orthogonal"`. See `keras_vrnn.initializers`.
        bias_initializer: Initializer for `bias`. Default `"zeros"`.
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            Optional weight regularizers.
        activity_regularizer: Optional regularizer on the layer's output.
        kernel_constraint, recurrent_constraint, bias_constraint:
            Optional weight constraints.
        dropout: Float in [0, 1], input dropout (one mask per sequence).
        recurrent_dropout: Float in [0, 1], recurrent-state dropout (one mask
            per sequence).
        return_sequences: Return the whole output sequence (default: last).
        return_state: Also return the last state.
        go_backwards: Process the sequence backwards and return the reversed
            sequence.
        stateful: Carry the last state of each sample into the next batch.
            Requires a fixed batch size.
        unroll: Unroll the loop (generic path; short sequences only).
        zero_output_for_mask: Output zeros (instead of the previous output)
            at masked steps when `return_sequences=True`.
        seed: Optional integer seed for the dropout masks (kept by
            `get_config`, unlike `SimpleRNN`).
        use_fused: `"auto"` (default) takes the fused path when the
            configuration allows it, `False` always uses the generic loop,
            `True` raises if the fused path cannot be used.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list with one `(batch, units)` tensor.
        mask: Optional boolean `(batch, timesteps)`; `False` steps are skipped.
        training: Python boolean; dropout is applied only when `True`.

    Returns:
        `(batch, units)`, or `(batch, timesteps, units)` with
        `return_sequences=True`; with `return_state=True` a list
        `[output, final_state]`.

    Example:

    ```python
    x = np.random.random((32, 10, 8)).astype("float32")
    y = keras_vrnn.VanillaRNN(4)(x)  # (32, 4)
    seq, state = keras_vrnn.VanillaRNN(
        4, return_sequences=True, return_state=True
    )(x)  # seq: (32, 10, 4), state: (32, 4)
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
        activity_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        unroll=False,
        seed=None,
        use_fused="auto",
        **kwargs,
    ):
        # Identity, not `in`: 1, 0 and 1.0 compare equal to True/False but
        # would not behave like them (`use_fused is True` in inner_loop).
        if not (use_fused is True or use_fused is False or use_fused == "auto"):
            raise ValueError(
                f"Received: use_fused={use_fused!r}. Expected one of "
                "'auto', True or False."
            )
        cell = VanillaRNNCell(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            dtype=kwargs.get("dtype", None),
            trainable=kwargs.get("trainable", True),
            name="vanilla_rnn_cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )
        self.use_fused = use_fused

    # -- input checks -----------------------------------------------------
    def _check_sequences_shape(self, shape):
        shape = tuple(shape)
        if len(shape) != 3:
            raise ValueError(
                f"Layer '{self.name}' expects inputs of rank 3 "
                f"(batch, timesteps, features). Received: input shape={shape} "
                f"(rank {len(shape)}). For a single sequence add a batch axis; "
                "for scalar series add a feature axis, e.g. x[..., None]."
            )
        if shape[-1] is None:
            raise ValueError(
                f"Layer '{self.name}' needs a known feature dimension. "
                f"Received: input shape={shape}. Specify it in keras.Input."
            )
        if self.cell.built:
            expected = self.cell.kernel.shape[0]
            if shape[-1] != expected:
                raise ValueError(
                    f"Layer '{self.name}' was built for {expected} input "
                    f"features. Received: input shape={shape} with "
                    f"{shape[-1]} features. Feed inputs with {expected} "
                    "features, or create a new layer."
                )

    def build(self, sequences_shape, initial_state_shape=None):
        self._check_sequences_shape(sequences_shape)
        if self.stateful and sequences_shape[0] is None:
            raise ValueError(
                f"Layer '{self.name}' has stateful=True, which needs a fixed "
                f"batch size. Received: input shape={tuple(sequences_shape)} "
                "(batch size None). Pass keras.Input(batch_shape=(B, T, F)) "
                "or call the layer on a batch of fixed size."
            )
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        self._check_sequences_shape(sequences.shape)
        if initial_state is not None:
            states = (
                list(initial_state)
                if isinstance(initial_state, (list, tuple))
                else [initial_state]
            )
            batch = sequences.shape[0]
            for state in states:
                shape = tuple(state.shape)
                ok = len(shape) == 2 and shape[-1] == self.units
                if ok and batch is not None and shape[0] is not None:
                    ok = shape[0] == batch
                if len(states) != 1 or not ok:
                    raise ValueError(
                        f"Layer '{self.name}' expects initial_state to be one "
                        f"tensor of shape (batch, units)=({batch}, "
                        f"{self.units}). Received: initial_state with shapes "
                        f"{[tuple(s.shape) for s in states]}."
                    )
        return super().call(
            sequences, mask=mask, training=training, initial_state=initial_state
        )

    # -- the loop ---------------------------------------------------------
    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        probe, direct_only = probe_lib.get_probe(self)
        # A direct-only probe cuts the recurrence, which only the generic
        # loop can do; a diagnostic must not fail on the user's use_fused.
        if self.use_fused in ("auto", True) and not direct_only:
            reason = fused.unsupported_reason(self, mask, direct_only)
            if reason is None:
                return fused.fused_inner_loop(
                    self, sequences, initial_state, training=training, probe=probe,
                    weight_gradients=probe_lib.weight_gradients_wanted(self),
                )
            if self.use_fused is True:
                raise ValueError(
                    f"Layer '{self.name}' has use_fused=True but the fused path "
                    f"cannot run this configuration: {reason}. Pass "
                    "use_fused='auto' to fall back to the generic loop."
                )
        if probe is not None:
            return probe_lib.probed_inner_loop(
                self, sequences, initial_state, mask, training
            )
        return super().inner_loop(sequences, initial_state, mask, training)

    # -- the cell's settings, read-only as in SimpleRNN ----------------------
    @property
    def units(self):
        return self.cell.units

    @property
    def activation(self):
        return self.cell.activation

    @property
    def use_bias(self):
        return self.cell.use_bias

    @property
    def kernel_initializer(self):
        return self.cell.kernel_initializer

    @property
    def recurrent_initializer(self):
        return self.cell.recurrent_initializer

    @property
    def bias_initializer(self):
        return self.cell.bias_initializer

    @property
    def kernel_regularizer(self):
        return self.cell.kernel_regularizer

    @property
    def recurrent_regularizer(self):
        return self.cell.recurrent_regularizer

    @property
    def bias_regularizer(self):
        return self.cell.bias_regularizer

    @property
    def kernel_constraint(self):
        return self.cell.kernel_constraint

    @property
    def recurrent_constraint(self):
        return self.cell.recurrent_constraint

    @property
    def bias_constraint(self):
        return self.cell.bias_constraint

    @property
    def dropout(self):
        return self.cell.dropout

    @property
    def recurrent_dropout(self):
        return self.cell.recurrent_dropout

    @property
    def seed(self):
        return self.cell.seed

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
            "activity_regularizer": regularizers.serialize(
                self.activity_regularizer
            ),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": constraints.serialize(self.recurrent_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
            "use_fused": self.use_fused,
        }
        base_config = super().get_config()
        del base_config["cell"]
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
