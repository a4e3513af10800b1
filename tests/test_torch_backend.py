"""VanillaRNN on the PyTorch backend: torch's own RNN kernel runs where it
covers the configuration, and the generic loop (same numbers) where not.

The fused path's numbers against the generic loop and the NumPy reference
are in test_fused.py and test_layer.py, which run on every backend.
"""

import keras
import numpy as np
import pytest

from keras_vrnn import VanillaRNN

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason=f"needs the torch backend (KERAS_BACKEND={keras.backend.backend()})",
)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of torch's RNN kernels (`torch._VF.rnn_tanh` / `rnn_relu`)
    called through keras_vrnn.fused_torch."""
    from keras_vrnn import fused_torch

    calls = []
    for name, kernel in list(fused_torch.KERNELS.items()):
        monkeypatch.setitem(
            fused_torch.KERNELS, name,
            lambda *args, name=name, kernel=kernel: calls.append(name) or kernel(*args),
        )
    return calls


def _pair(**kwargs):
    layers = [VanillaRNN(4, use_fused=f, return_sequences=True, **kwargs) for f in ("auto", False)]
    rng = np.random.default_rng(0)
    for layer in layers:
        layer.build((3, 5, 3))
    weights = [(rng.standard_normal(w.shape) * 0.5).astype("float32")
               for w in layers[0].get_weights()]
    for layer in layers:
        layer.set_weights(weights)
    return layers


@pytest.mark.parametrize(
    "kwargs, training, kernel",
    [
        (dict(), False, "tanh"),
        (dict(activation="relu", go_backwards=True), True, "relu"),
        (dict(dropout=0.5, seed=3), True, "tanh"),  # input dropout: fused
        (dict(recurrent_dropout=0.5, seed=3), False, "tanh"),  # inactive
        (dict(recurrent_dropout=0.5, seed=3), True, None),  # generic loop
        (dict(activation="sigmoid"), False, None),
        (dict(activation="linear"), True, None),
    ],
    ids=["tanh", "relu_backwards", "dropout", "recurrent_dropout_inference",
         "recurrent_dropout_training", "sigmoid", "linear"],
)
def test_kernel_or_generic_loop(ref, kernel_calls, kwargs, training, kernel):
    auto, generic = _pair(**kwargs)
    p = ref.make_problem(seed=4, initial_state=True)
    got = ref.run_tf(auto, p["x"], p["h0"], c=p["c"], training=training)
    assert kernel_calls == ([kernel] if kernel else [])
    want = ref.run_tf(generic, p["x"], p["h0"], c=p["c"], training=training)
    for key in ("y", "dx", "dW", "dU", "db", "dh0"):
        ref.assert_rel_close(got[key], want[key], 1e-5 if key == "y" else 1e-4, key)


@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
def test_use_fused_true_names_torchs_coverage(activation):
    layer = VanillaRNN(4, activation=activation, use_fused=True)
    with pytest.raises(ValueError, match=r"use_fused=True.*\('tanh', 'relu'\)"):
        layer(np.zeros((2, 5, 3), "float32"))
    layer = VanillaRNN(4, recurrent_dropout=0.5, use_fused=True)
    layer(np.zeros((2, 5, 3), "float32"))  # inference: torch's kernel
    with pytest.raises(ValueError, match="recurrent dropout"):
        layer(np.zeros((2, 5, 3), "float32"), training=True)
