"""`VanillaRNN`: a drop-in for `keras.layers.SimpleRNN` with a fused fast path."""

import keras
from keras import ops
from keras import regularizers

from keras_vrnn import fused
from keras_vrnn import probe as probe_lib
from keras_vrnn.cell import VanillaRNNCell
from keras_vrnn.cell import check_input_shape

# The fused kernel of the backend Keras runs on (fixed when Keras is
# imported), as Keras' LSTM and GRU take theirs from `keras.src.backend`.
if keras.backend.backend() == "tensorflow":
    from keras_vrnn import fused_tf as _fused_backend
elif keras.backend.backend() == "jax":
    from keras_vrnn import fused_jax as _fused_backend
elif keras.backend.backend() == "torch":
    from keras_vrnn import fused_torch as _fused_backend
else:
    _fused_backend = None

# Layer-level keys of the cell's config, which the layer writes itself.
_CELL_LAYER_KEYS = ("name", "trainable", "dtype")


def _cell_setting(name):
    """A read-only property forwarding to the cell, as in SimpleRNN."""
    return property(lambda self: getattr(self.cell, name), doc=f"The cell's `{name}`.")


@keras.saving.register_keras_serializable(package="keras_vrnn")
class VanillaRNN(keras.layers.RNN):
    """Vanilla (Elman) RNN layer: `h_t = act(x_t W_xh + h_{t-1} W_hh + b)`.

    A drop-in replacement for `keras.layers.SimpleRNN`: same arguments, same
    weights in the same order (`kernel`, `recurrent_kernel`, `bias`) and the
    same outputs in every mode, plus a fused fast path (`keras_vrnn.fused`)
    taken when the configuration allows: one matrix product projects all
    steps' inputs, the loop carries only `h_{t-1} @ W_hh`. On TensorFlow and
    JAX (hand-written BPTT) it covers activation tanh, relu, sigmoid or
    linear, with or without bias, dropout, recurrent dropout, `go_backwards`,
    `initial_state`, `stateful`, `return_sequences` and `return_state`. On
    PyTorch it is torch's own RNN kernel (cuDNN on NVIDIA GPUs): tanh or
    relu, the same options except recurrent dropout while training, gradient
    probes included. Everything else (a mask, `unroll=True`, other
    activations) runs the generic `keras.layers.RNN` loop. Environment
    variables (TensorFlow): see `keras_vrnn.fused_tf`.

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
        shape = check_input_shape(
            f"Layer '{self.name}'", shape, 3, "(batch, timesteps, features)",
            "For a single sequence add a batch axis; for scalar series add a "
            "feature axis, e.g. x[..., None]; give the feature size in keras.Input.",
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
    # `probe.attach` needs no hook here: `inner_loop` reads the probe itself.
    reads_probes = True

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        probe = probe_lib.lookup(self, sequences, initial_state, mask)
        if self.use_fused is not False:
            reason = fused.unsupported_reason(self, mask, probe, training)
            if reason is None:
                return self._fused_inner_loop(sequences, initial_state, training, probe)
            # A probe the fused path cannot take falls back: a diagnostic
            # must not fail on the user's use_fused.
            if self.use_fused is True and (
                probe is None or fused.unsupported_reason(self, mask, None, training)
            ):
                raise ValueError(
                    f"Layer '{self.name}' has use_fused=True but the fused path "
                    f"cannot run this configuration: {reason}. Pass "
                    "use_fused='auto' to fall back to the generic loop."
                )
        if probe is not None:
            return probe_lib.probed_inner_loop(
                self, sequences, initial_state, mask, training, probe
            )
        return super().inner_loop(sequences, initial_state, mask, training)

    def _fused_inner_loop(self, sequences, initial_state, training, probe):
        """`inner_loop` by the backend's fused kernel (see `keras_vrnn.fused`)."""
        cell = self.cell
        dtype = sequences.dtype
        h0 = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        h0 = ops.cast(h0, dtype)
        x = sequences
        # Dropout masks are the cell's own (one per sequence), so both paths
        # drop exactly the same units for the same seed.
        if training and cell.dropout > 0:
            x = x * ops.expand_dims(cell.get_dropout_mask(x[:, 0, :]), 1)
        rec_mask = None
        if training and cell.recurrent_dropout > 0:
            rec_mask = ops.cast(cell.get_recurrent_dropout_mask(h0), dtype)
        p = None if probe is None else ops.cast(probe.tensor, dtype)
        # Batch-major (B, T, .) throughout, like the layer's inputs and
        # outputs, so that no transpose runs outside the compiled loops.
        if self.go_backwards:
            x = ops.flip(x, axis=1)
            p = None if p is None else ops.flip(p, axis=1)
        outputs = _fused_backend.recurrence_from_inputs(
            x,
            ops.cast(cell.kernel, dtype),
            None if cell.bias is None else ops.cast(cell.bias, dtype),
            h0,
            ops.cast(cell.recurrent_kernel, dtype),
            fused.activation_name(cell.activation),
            rec_mask,
            p,
            weight_gradients=probe is None or probe.weight_gradients,
        )
        last = outputs[:, -1]
        return last, outputs, [last]

    def get_config(self):
        # The RNN base writes the layer's own settings and the cell; the
        # cell's arguments are the layer's, flattened as in SimpleRNN.
        config = super().get_config()
        del config["cell"]
        cell_config = self.cell.get_config()
        for key in _CELL_LAYER_KEYS:
            del cell_config[key]
        return {
            **config,
            **cell_config,
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "use_fused": self.use_fused,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# The cell's settings, read-only properties of the layer as in SimpleRNN.
for _name in (
    "units", "activation", "use_bias", "kernel_initializer", "recurrent_initializer",
    "bias_initializer", "kernel_regularizer", "recurrent_regularizer", "bias_regularizer",
    "kernel_constraint", "recurrent_constraint", "bias_constraint", "dropout",
    "recurrent_dropout", "seed",
):
    setattr(VanillaRNN, _name, _cell_setting(_name))
