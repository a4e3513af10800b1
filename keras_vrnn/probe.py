"""Gradient probes: a zero tensor added to every hidden state h_t.

Adding a probe `p` of zeros to the hidden states changes nothing in the
forward pass, but the gradient of the loss with respect to `p_t` is exactly
the total gradient dL/dh_t (direct path to the loss plus the path through
h_{t+1}, ...): full BPTT from one forward and one backward pass. With
`direct_only=True` the carried state is wrapped in `stop_gradient`, so the
probe's gradient is only the direct part (the path that does not go through
h_{t+1} of the same layer).

`keras_vrnn.diagnostics` attaches probes with `attached_probe`; the RNN
layers read them in `inner_loop`.
"""

import contextlib

from keras import ops
from keras.src import backend as keras_backend  # `rnn` loop, as RNN uses it

_ATTR = "_vrnn_probe"
_NO_WEIGHT_GRADIENTS = "_vrnn_probe_no_weight_gradients"


def get_probe(layer):
    """Returns `(probe, direct_only)` attached to `layer`, or `(None, False)`."""
    return getattr(layer, _ATTR, None) or (None, False)


def weight_gradients_wanted(layer):
    """False while a probe attached with `weight_gradients=False` is on `layer`."""
    return not getattr(layer, _NO_WEIGHT_GRADIENTS, False)


@contextlib.contextmanager
def attached_probe(layer, probe, direct_only=False, weight_gradients=True):
    """Attaches `probe` (batch, timesteps, units) to an RNN layer for one call.

    With `weight_gradients=False` the caller promises to differentiate with
    respect to the probe (or the inputs) only: the native kernels then skip
    the weight gradients, and the layer's weights get zero gradients from
    this call (a gradient-norm measurement needs dL/dh_t alone).

    Works for `keras_vrnn.VanillaRNN` and for `keras.layers.RNN` wrapping a
    single `VanillaRNNCell` (whose `inner_loop` is redirected for the
    duration). Object attributes are set with `object.__setattr__` so Keras'
    attribute tracking does not record the temporary tensors.
    """
    from keras_vrnn.layer import VanillaRNN

    object.__setattr__(layer, _ATTR, (probe, bool(direct_only)))
    object.__setattr__(layer, _NO_WEIGHT_GRADIENTS, not weight_gradients)
    patched = not isinstance(layer, VanillaRNN)
    if patched:
        object.__setattr__(
            layer,
            "inner_loop",
            lambda sequences, initial_state, mask, training=False: probed_inner_loop(
                layer, sequences, initial_state, mask, training
            ),
        )
    try:
        yield probe
    finally:
        object.__delattr__(layer, _ATTR)
        object.__delattr__(layer, _NO_WEIGHT_GRADIENTS)
        if patched:
            object.__delattr__(layer, "inner_loop")


def probed_inner_loop(layer, sequences, initial_state, mask, training=False):
    """The generic RNN loop with the attached probe added to each h_t."""
    probe, direct_only = get_probe(layer)
    cell = layer.cell
    features = sequences.shape[-1]
    # The probe travels with the inputs so `go_backwards` and masking treat
    # it exactly like the input of the same time step.
    packed = ops.concatenate(
        [sequences, ops.cast(probe, sequences.dtype)], axis=-1
    )
    if isinstance(mask, (list, tuple)):
        mask = mask[0]

    def step(inputs, states):
        x, p = inputs[:, :features], inputs[:, features:]
        prev = states[0]
        if direct_only:
            prev = ops.stop_gradient(prev)
        output, _ = cell(x, [prev], training=training)
        output = output + ops.cast(p, output.dtype)
        return output, [output]

    if not isinstance(initial_state, (list, tuple)):
        initial_state = [initial_state]
    return keras_backend.rnn(
        step,
        packed,
        list(initial_state),
        go_backwards=layer.go_backwards,
        mask=mask,
        unroll=layer.unroll,
        input_length=sequences.shape[1],
        zero_output_for_mask=layer.zero_output_for_mask,
        return_all_outputs=layer.return_sequences,
    )
