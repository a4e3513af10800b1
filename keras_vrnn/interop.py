"""Weights to and from `torch.nn.RNN`, on any Keras backend.

torch.nn.RNN computes `h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`,
VanillaRNN `h_t = act(x_t W + h_{t-1} U + b)`: kernel = W_ih^T,
recurrent_kernel = W_hh^T, bias = b_ih + b_hh (b_hh = 0 towards torch).
torch is imported on the first call only.
"""

import keras
import numpy as np

from keras_vrnn.layer import VanillaRNN


def _check(ok, what, fix):
    if not ok:
        raise ValueError(f"Received: {what}. {fix}")


def from_torch(rnn, **kwargs):
    """A built `VanillaRNN` with the weights of a single-layer `torch.nn.RNN`.

    A bidirectional `rnn` gives `keras.layers.Bidirectional(VanillaRNN)`
    (merge_mode "concat", torch's layout). `batch_first` and `dropout` (which
    torch applies between stacked layers only) do not change the function:
    the layer takes batch-major `(batch, timesteps, features)`.

    Args:
        rnn: `torch.nn.RNN`, one layer, tanh or relu, with or without bias.
        **kwargs: for `VanillaRNN`; `return_sequences` defaults to True
            (torch's `output`), `dtype` to the weights' dtype.

    Returns:
        The built layer.

    Example:

    ```python
    layer = keras_vrnn.from_torch(torch.nn.RNN(8, 16, batch_first=True))
    ```
    """
    import torch

    _check(isinstance(rnn, torch.nn.RNN), f"rnn={type(rnn).__name__}",
           "Expected a torch.nn.RNN (LSTM and GRU are not vanilla RNNs).")
    _check(rnn.num_layers == 1, f"num_layers={rnn.num_layers}",
           "Expected 1; convert each layer of a stack separately.")
    _check(rnn.nonlinearity in ("tanh", "relu"), f"nonlinearity={rnn.nonlinearity!r}",
           "Expected 'tanh' or 'relu'.")

    def weights(suffix):
        get = lambda name: getattr(rnn, f"{name}_l0{suffix}").detach().cpu().double().numpy()  # noqa: E731
        bias = [get("bias_ih") + get("bias_hh")] if rnn.bias else []
        return [get("weight_ih").T, get("weight_hh").T] + bias

    dtype = str(rnn.weight_ih_l0.dtype).removeprefix("torch.")
    kwargs = {"return_sequences": True, "dtype": dtype, **kwargs}
    layer = VanillaRNN(
        rnn.hidden_size, activation=rnn.nonlinearity, use_bias=rnn.bias, **kwargs
    )
    parts = [layer]
    if rnn.bidirectional:
        layer = keras.layers.Bidirectional(layer)
        parts = [layer.forward_layer, layer.backward_layer]
    layer.build((None, None, rnn.input_size))
    for part, suffix in zip(parts, ("", "_reverse")):
        part.set_weights(weights(suffix))
    return layer


def to_torch(layer):
    """`torch.nn.RNN(batch_first=True)` with the weights of a built layer.

    Args:
        layer: a built `VanillaRNN` (tanh or relu, not `go_backwards`), or
            `keras.layers.Bidirectional` of two with merge_mode "concat".
            Dropout, state and output settings are the layer's own: the
            module computes the layer's inference function.

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
    with torch.no_grad():
        for part, suffix in zip(parts, ("", "_reverse")):
            kernel, recurrent_kernel, *bias = part.get_weights()
            values = [kernel.T, recurrent_kernel.T] + bias + [np.zeros_like(b) for b in bias]
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), values):
                param = getattr(rnn, f"{name}_l0{suffix}")
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return rnn
