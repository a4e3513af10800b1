"""Gradient probes: a zero tensor added to every hidden state h_t.

A probe `p` of zeros changes nothing in the forward pass, but the gradient
of the loss with respect to `p_t` is exactly the total dL/dh_t (direct path
plus the path through h_{t+1}, ...): full BPTT from one forward and one
backward pass. With `direct_only=True` the carried state is wrapped in
`stop_gradient`, so the gradient is only the direct part.

`attach` records, for one layer and a `with` block, a source of the probe
of each call of the layer's loop, which asks `lookup` for it:
`keras_vrnn.VanillaRNN` in its `inner_loop` (the fused path adds the probe
in its own loops); a `keras.layers.RNN` over a `VanillaRNNCell` gets this
module's `inner_loop` on the instance for the duration. Nothing here
imports the layer.
"""

import collections
import contextlib

from keras import ops
from keras.src import backend as keras_backend  # `rnn` loop, as RNN uses it

Probe = collections.namedtuple("Probe", ["tensor", "direct_only", "weight_gradients"])

# id(layer) -> (source, direct_only, weight_gradients), while attached.
_ATTACHED = {}


@contextlib.contextmanager
def attach(layer, source, direct_only=False, weight_gradients=True):
    """Attaches a probe source to an RNN layer for the duration.

    `source(sequences, initial_state, mask)` is called by each call of the
    layer's loop and returns its probe `(batch, timesteps, units)`, or None
    (unprobed). `weight_gradients=False` promises that only the probe (or
    the inputs) is differentiated: the native kernels then skip the weight
    gradients. A layer without `reads_probes` gets `inner_loop` set on the
    instance, with `object.__setattr__` so Keras' tracking does not see it.
    """
    key = id(layer)
    previous = _ATTACHED.get(key)
    _ATTACHED[key] = (source, bool(direct_only), bool(weight_gradients))
    hooked = not getattr(layer, "reads_probes", False) and "inner_loop" not in vars(layer)
    if hooked:
        object.__setattr__(
            layer,
            "inner_loop",
            lambda sequences, initial_state, mask, training=False: inner_loop(
                layer, sequences, initial_state, mask, training
            ),
        )
    try:
        yield
    finally:
        if previous is None:
            del _ATTACHED[key]
        else:
            _ATTACHED[key] = previous
        if hooked:
            object.__delattr__(layer, "inner_loop")


@contextlib.contextmanager
def attached_probe(layer, probe, direct_only=False, weight_gradients=True):
    """Attaches one probe tensor (batch, timesteps, units) to an RNN layer.

    Works for `keras_vrnn.VanillaRNN` and for `keras.layers.RNN` wrapping a
    single `VanillaRNNCell`; see `attach` for the arguments.
    """
    with attach(layer, lambda *_: probe, direct_only, weight_gradients):
        yield probe


def lookup(layer, sequences, initial_state, mask):
    """The `Probe` of this call of `layer`'s loop, or None."""
    entry = _ATTACHED.get(id(layer))
    if entry is None:
        return None
    source, direct_only, weight_gradients = entry
    tensor = source(sequences, initial_state, mask)
    return None if tensor is None else Probe(tensor, direct_only, weight_gradients)


def inner_loop(layer, sequences, initial_state, mask, training=False):
    """`RNN.inner_loop` of a probed `keras.layers.RNN` (see `attach`)."""
    probe = lookup(layer, sequences, initial_state, mask)
    if probe is None:
        return type(layer).inner_loop(layer, sequences, initial_state, mask, training)
    return probed_inner_loop(layer, sequences, initial_state, mask, training, probe)


def probed_inner_loop(layer, sequences, initial_state, mask, training, probe):
    """The generic RNN loop with `probe` (a `Probe`) added to each h_t."""
    cell = layer.cell
    features = sequences.shape[-1]
    # The probe travels with the inputs so `go_backwards` and masking treat
    # it exactly like the input of the same time step.
    packed = ops.concatenate(
        [sequences, ops.cast(probe.tensor, sequences.dtype)], axis=-1
    )
    if isinstance(mask, (list, tuple)):
        mask = mask[0]

    def step(inputs, states):
        x, p = inputs[:, :features], inputs[:, features:]
        prev = states[0]
        if probe.direct_only:
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
