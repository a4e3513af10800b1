"""`keras_vrnn.from_torch` / `to_torch` against `torch.nn.RNN` itself: same
outputs and gradients (torch.autograd on one side, the Keras backend's own
autodiff on the other), exact weight round trips, and the refusals."""

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_vrnn  # noqa: E402
from keras_vrnn import VanillaRNN  # noqa: E402

FWD_TOL = 1e-5
GRAD_TOL = 1e-4
CONFIGS = [  # (nonlinearity, bias, bidirectional): every pair of values
    ("tanh", True, False), ("tanh", False, True), ("relu", True, True),
    ("relu", False, False),
]


def _torch_rnn(nonlinearity="tanh", bias=True, bidirectional=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"batch_first": True, **kwargs}
    rnn = torch.nn.RNN(3, 4, nonlinearity=nonlinearity, bias=bias,
                       bidirectional=bidirectional, **kwargs)
    with torch.no_grad():  # both biases non-zero, so that dropping one shows
        for param in rnn.parameters():
            param.normal_(0.0, 0.5)
    return rnn


def _torch_run(rnn, x, c, h0=None):
    """Output, final state and gradients of L = sum(c * output), by torch."""
    x = torch.tensor(x, requires_grad=True)
    h0 = None if h0 is None else torch.tensor(h0[None], requires_grad=True)
    y, h_n = rnn(x) if h0 is None else rnn(x, h0)
    loss = (torch.from_numpy(c) * y).sum()
    sources = [x, *rnn.parameters()] + ([h0] if h0 is not None else [])
    grads = [g.numpy() for g in torch.autograd.grad(loss, sources)]
    return y.detach().numpy(), h_n.detach().numpy(), grads


def _problem(seed=1, batch=3, timesteps=5, units=4, directions=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, timesteps, 3)).astype("float32")
    c = rng.standard_normal((batch, timesteps, directions * units)).astype("float32")
    h0 = (rng.standard_normal((batch, units)) * 0.5).astype("float32")
    return x, c, h0


@pytest.mark.parametrize("nonlinearity, bias, bidirectional", CONFIGS)
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_outputs_and_gradients_match_torch(ref, direction, nonlinearity, bias,
                                           bidirectional):
    if direction == "from_torch":
        rnn = _torch_rnn(nonlinearity, bias, bidirectional)
        layer = keras_vrnn.from_torch(rnn)
    else:
        layer = VanillaRNN(4, activation=nonlinearity, use_bias=bias,
                           return_sequences=True, bias_initializer="random_normal")
        if bidirectional:
            layer = keras.layers.Bidirectional(layer)
        layer.build((3, 5, 3))
        rnn = keras_vrnn.to_torch(layer)
        assert rnn.batch_first and rnn.bidirectional == bidirectional
    assert isinstance(layer, keras.layers.Bidirectional) == bidirectional
    x, c, h0 = _problem(directions=1 + bidirectional)
    h0 = None if bidirectional else h0  # a Bidirectional layer takes two states
    got = ref.run_tf(layer, x, h0, c=c)
    y, _, grads = _torch_run(rnn, x, c, h0)
    ref.assert_rel_close(got["y"], y, FWD_TOL, "output")
    ref.assert_rel_close(got["dx"], grads[0], GRAD_TOL, "dx")
    # The (forward) layer's weights: kernel = W_ih^T, recurrent = W_hh^T,
    # bias = b_ih + b_hh, so each gets torch's gradient transposed.
    ref.assert_rel_close(got["dW"], grads[1].T, GRAD_TOL, "d kernel")
    ref.assert_rel_close(got["dU"], grads[2].T, GRAD_TOL, "d recurrent_kernel")
    if not bidirectional:
        if bias:
            ref.assert_rel_close(got["db"], grads[3], GRAD_TOL, "d bias")
            ref.assert_rel_close(got["db"], grads[4], GRAD_TOL, "d bias")
        ref.assert_rel_close(got["dh0"], grads[-1][0], GRAD_TOL, "d initial state")


def test_bidirectional_last_output_is_both_final_states(ref):
    # Keras' Bidirectional without return_sequences: the forward state after
    # the last step and the backward one after the first, torch's h_n.
    rnn = _torch_rnn(bidirectional=True)
    layer = keras_vrnn.from_torch(rnn, return_sequences=False)
    x, _, _ = _problem(directions=2)
    _, h_n, _ = _torch_run(rnn, x, np.zeros((3, 5, 8), "float32"))
    y = keras.ops.convert_to_numpy(layer(x))
    ref.assert_rel_close(y, np.concatenate([h_n[0], h_n[1]], axis=-1), FWD_TOL, "output")


def test_weights_round_trip_exactly():
    rnn = _torch_rnn(bidirectional=True)
    back = keras_vrnn.to_torch(keras_vrnn.from_torch(rnn))
    for suffix in ("", "_reverse"):
        for name in ("weight_ih", "weight_hh"):
            key = f"{name}_l0{suffix}"
            torch.testing.assert_close(getattr(back, key), getattr(rnn, key), rtol=0, atol=0)
        # The two biases arrive summed in bias_ih, bias_hh is zero.
        summed = getattr(rnn, f"bias_ih_l0{suffix}") + getattr(rnn, f"bias_hh_l0{suffix}")
        torch.testing.assert_close(getattr(back, f"bias_ih_l0{suffix}"), summed)
        assert not getattr(back, f"bias_hh_l0{suffix}").any()
    layer = VanillaRNN(4, activation="relu", bias_initializer="random_normal")
    layer.build((2, 5, 3))
    again = keras_vrnn.from_torch(keras_vrnn.to_torch(layer))
    assert again.activation is keras.activations.relu
    for a, b in zip(layer.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dtype_and_batch_first_false(ref):
    # float64 weights give a float64 layer; a time-major (batch_first=False)
    # module has the same weights: the layer takes the transposed input.
    rnn = _torch_rnn(batch_first=False).double()
    layer = keras_vrnn.from_torch(rnn)
    assert all(w.dtype == "float64" for w in layer.weights)
    x, _, _ = _problem()
    y = keras.ops.convert_to_numpy(layer(x.astype("float64")))
    with torch.no_grad():
        want = rnn(torch.from_numpy(x.astype("float64")).transpose(0, 1))[0].transpose(0, 1)
    # (JAX computes in float32 unless jax_enable_x64 is set.)
    tol = FWD_TOL if keras.backend.backend() == "jax" else 1e-12
    ref.assert_rel_close(y, want.numpy(), tol, "float64 output")
    assert keras_vrnn.to_torch(layer).weight_hh_l0.dtype == torch.float64


@pytest.mark.parametrize(
    "module, fragment",
    [
        (lambda: torch.nn.LSTM(3, 4), "rnn=LSTM"),
        (lambda: torch.nn.GRU(3, 4), "rnn=GRU"),
        (lambda: torch.nn.RNN(3, 4, num_layers=2), "num_layers=2"),
    ],
    ids=["lstm", "gru", "two_layers"],
)
def test_from_torch_refuses(module, fragment):
    with pytest.raises(ValueError, match="Received: ") as excinfo:
        keras_vrnn.from_torch(module())
    assert fragment in str(excinfo.value)


def _built(layer):
    layer.build((2, 5, 3))
    return layer


@pytest.mark.parametrize(
    "layer, fragment",
    [
        (lambda: _built(VanillaRNN(4, activation="sigmoid")), "activation="),
        (lambda: _built(VanillaRNN(4, go_backwards=True)), "go_backwards=True"),
        (lambda: VanillaRNN(4), "unbuilt layer"),
        (lambda: _built(keras.layers.SimpleRNN(4)), "layer=SimpleRNN"),
        (
            lambda: _built(keras.layers.Bidirectional(VanillaRNN(4), merge_mode="sum")),
            "merge_mode='sum'",
        ),
        (
            lambda: _built(keras.layers.Bidirectional(
                VanillaRNN(4), backward_layer=VanillaRNN(4, "relu", go_backwards=True)
            )),
            "(activation, units, use_bias, features)=",
        ),
    ],
    ids=["sigmoid", "go_backwards", "unbuilt", "simple_rnn", "merge_sum", "mismatch"],
)
def test_to_torch_refuses(layer, fragment):
    with pytest.raises(ValueError, match="Received: ") as excinfo:
        keras_vrnn.to_torch(layer())
    assert fragment in str(excinfo.value)
