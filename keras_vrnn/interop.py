"""Weights to and from `torch.nn.RNN` (imported on first call), on any backend.

torch's `h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)` is VanillaRNN's
`act(x_t W + h_{t-1} U + b)` with W = W_ih^T, U = W_hh^T, b = b_ih + b_hh.
"""

import keras
import numpy as np

from keras_vrnn.layer import VanillaRNN


def _check(ok, what, fix):
    if not ok:
        raise ValueError(f"Received: {what}. {fix}")


def from_torch(rnn, **kwargs):
    """A built `VanillaRNN` computing what a single-layer `torch.nn.RNN` does.

    Args:
        rnn: `torch.nn.RNN`, one layer, tanh or relu, with or without bias,
            bidirectional or not. `batch_first` and `dropout` (torch applies
            it between stacked layers only) do not change the function; the
            layer takes batch-major `(batch, timesteps, features)` input.
        **kwargs: for `VanillaRNN`; `return_sequences` defaults to True
            (torch's `output`), `dtype` to the weights' dtype.

    Returns:
        The layer; `keras.layers.Bidirectional(VanillaRNN)` (merge_mode
        "concat", as torch) for a bidirectional `rnn`.

    Example: `layer = keras_vrnn.from_torch(torch.nn.RNN(8, 16))`
    """
    import torch

    _check(isinstance(rnn, torch.nn.RNN), f"rnn={type(rnn).__name__}",
           "Expected a torch.nn.RNN (LSTM and GRU are not vanilla RNNs).")
    _check(rnn.num_layers == 1, f"num_layers={rnn.num_layers}",
           "Expected 1; convert each layer of a stack separately.")
    # (torch.nn.RNN itself takes only tanh and relu, and no proj_size.)
    kwargs = {"return_sequences": True, **kwargs}
    kwargs.setdefault("dtype", str(rnn.weight_ih_l0.dtype).removeprefix("torch."))
    layer = VanillaRNN(rnn.hidden_size, rnn.nonlinearity, rnn.bias, **kwargs)
    parts = [layer]
    if rnn.bidirectional:
        layer = keras.layers.Bidirectional(layer)
        parts = [layer.forward_layer, layer.backward_layer]
    layer.build((None, None, rnn.input_size))
    # In float64 from any torch dtype (set_weights casts), biases summed.
    w = {k: v.detach().cpu().double().numpy() for k, v in rnn.named_parameters()}
    for part, s in zip(parts, ("", "_reverse")):
        bias = [w[f"bias_ih_l0{s}"] + w[f"bias_hh_l0{s}"]] if rnn.bias else []
        part.set_weights([w[f"weight_ih_l0{s}"].T, w[f"weight_hh_l0{s}"].T] + bias)
    return layer


def to_torch(layer):
    """`torch.nn.RNN(batch_first=True)` computing what a built layer does at
    inference (dropout, state and output options are not carried over).

    Args:
        layer: a `VanillaRNN` (tanh or relu, not `go_backwards`), or
            `keras.layers.Bidirectional` of two, merge_mode "concat".

    Returns:
        The module, on the CPU, in the weights' dtype.
    """
    import torch

    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    parts = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    if bidirectional:
        _check(layer.merge_mode == "concat", f"merge_mode={layer.merge_mode!r}",
               "torch.nn.RNN concatenates both directions; use merge_mode='concat'.")
    configs = []
    for part, backwards in zip(parts, (False, True)):
        _check(isinstance(part, VanillaRNN), f"layer={type(part).__name__}",
               "Expected a VanillaRNN, or Bidirectional(VanillaRNN).")
        _check(part.built, f"an unbuilt layer '{part.name}'", "Build or call it first.")
        names = [n for n in ("tanh", "relu") if part.activation is keras.activations.get(n)]
        _check(names, f"activation={part.activation!r}", "Expected tanh or relu.")
        _check(part.go_backwards == backwards, f"go_backwards={part.go_backwards}",
               "torch.nn.RNN runs backwards only as the second direction of "
               "a bidirectional one; flip the sequence instead.")
        configs.append((names[0], part.units, part.use_bias, part.cell.kernel.shape[0]))
    _check(len(set(configs)) == 1, f"(activation, units, use_bias, features)={configs}",
           "Expected the same for both directions.")
    activation, units, use_bias, features = configs[0]
    rnn = torch.nn.RNN(
        features, units, nonlinearity=activation, bias=use_bias, batch_first=True,
        bidirectional=bidirectional, dtype=getattr(torch, parts[0].cell.kernel.dtype),
    )
    state = {}
    for part, s in zip(parts, ("", "_reverse")):
        kernel, recurrent_kernel, *bias = part.get_weights()
        values = [kernel.T, recurrent_kernel.T] + bias + [np.zeros_like(b) for b in bias]
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), values):
            state[f"{name}_l0{s}"] = torch.from_numpy(np.ascontiguousarray(value))
    rnn.load_state_dict(state)  # strict: every parameter, no other
    return rnn
