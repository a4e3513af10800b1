"""Serialization of VanillaRNN / VanillaRNNCell: configs and .keras files.

The saved model is loaded in a fresh Python process that only does
`import keras_vrnn` (no custom_objects), as a user would.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_vrnn
from keras_vrnn import VanillaRNN
from keras_vrnn import VanillaRNNCell
from keras_vrnn.initializers import ScaledOrthogonal


def _all_cell_args():
    """Every cell argument, none at its default."""
    return dict(
        units=5,
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        recurrent_initializer=ScaledOrthogonal(gain=0.9, seed=4),
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L2(0.01),
        recurrent_regularizer="l1",
        bias_regularizer=keras.regularizers.L1L2(l1=0.1, l2=0.2),
        kernel_constraint="non_neg",
        recurrent_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="unit_norm",
        dropout=0.25,
        recurrent_dropout=0.125,
        seed=1234,
    )


def _all_layer_args(use_fused):
    return dict(
        _all_cell_args(),
        activity_regularizer="l2",
        return_sequences=True,
        return_state=True,
        go_backwards=True,
        stateful=True,
        unroll=True,
        zero_output_for_mask=True,
        use_fused=use_fused,
        name="my_vrnn",
        trainable=False,
        dtype="mixed_float16",
    )


@pytest.mark.parametrize("use_fused", ["auto", True, False])
def test_layer_config_round_trip(use_fused):
    layer = VanillaRNN(**_all_layer_args(use_fused))
    config = layer.get_config()
    clone = VanillaRNN.from_config(config)
    assert clone.get_config() == config
    # Every argument survives, including the two SimpleRNN does not have.
    assert clone.seed == 1234 and config["seed"] == 1234
    assert clone.use_fused is use_fused or clone.use_fused == use_fused == "auto"
    assert clone.units == 5
    assert clone.activation is keras.activations.relu
    assert clone.use_bias is False
    assert isinstance(clone.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(clone.recurrent_initializer, ScaledOrthogonal)
    assert clone.recurrent_initializer.get_config() == {"gain": 0.9, "seed": 4}
    assert isinstance(clone.bias_initializer, keras.initializers.Ones)
    assert clone.kernel_regularizer.get_config() == {"l2": 0.01}
    assert isinstance(clone.recurrent_regularizer, keras.regularizers.L1)
    assert clone.bias_regularizer.get_config() == pytest.approx(
        {"l1": 0.1, "l2": 0.2}
    )
    assert isinstance(clone.activity_regularizer, keras.regularizers.L2)
    assert isinstance(clone.kernel_constraint, keras.constraints.NonNeg)
    assert clone.recurrent_constraint.get_config()["max_value"] == 2.0
    assert isinstance(clone.bias_constraint, keras.constraints.UnitNorm)
    assert (clone.dropout, clone.recurrent_dropout) == (0.25, 0.125)
    assert clone.return_sequences and clone.return_state and clone.go_backwards
    assert clone.stateful and clone.unroll and clone.zero_output_for_mask
    assert clone.name == "my_vrnn" and clone.trainable is False
    assert clone.dtype_policy.name == "mixed_float16"
    assert clone.cell.dtype_policy.name == "mixed_float16"
    # The config is plain JSON.
    assert json.loads(json.dumps(config)) == config


def test_simple_rnn_config_has_no_seed_but_ours_does():
    # The documented difference: SimpleRNN.get_config drops `seed`, so a
    # restored SimpleRNN draws different dropout masks; VanillaRNN keeps it.
    assert "seed" not in keras.layers.SimpleRNN(3, seed=5).get_config()
    assert VanillaRNN(3, seed=5).get_config()["seed"] == 5


@pytest.mark.usefixtures("no_xla")
@pytest.mark.parametrize("use_fused", ["auto", False])
def test_restored_layer_draws_the_same_dropout_masks(use_fused):
    layer = VanillaRNN(
        4, dropout=0.5, recurrent_dropout=0.5, seed=99, return_sequences=True,
        use_fused=use_fused,
    )
    clone = VanillaRNN.from_config(layer.get_config())
    x = np.random.default_rng(0).standard_normal((3, 5, 3)).astype("float32")
    layer.build(x.shape)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    for _ in range(2):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(layer(x, training=True)), keras.ops.convert_to_numpy(clone(x, training=True))
        )


def test_cell_config_round_trip():
    cell = VanillaRNNCell(**_all_cell_args(), name="c", dtype="mixed_bfloat16")
    config = cell.get_config()
    clone = VanillaRNNCell.from_config(config)
    assert clone.get_config() == config
    assert clone.seed == 1234 and clone.units == 5 and clone.use_bias is False
    assert clone.dtype_policy.name == "mixed_bfloat16"
    assert json.loads(json.dumps(config)) == config
    # Through keras.layers.RNN's own (de)serialization.
    rnn = keras.layers.RNN(cell, return_sequences=True)
    rnn_clone = keras.layers.RNN.from_config(rnn.get_config())
    assert isinstance(rnn_clone.cell, VanillaRNNCell)
    assert rnn_clone.cell.get_config() == config
    # And by registered name, without custom_objects.
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(cell)
    )
    assert isinstance(restored, VanillaRNNCell)
    assert restored.get_config() == config


def test_bidirectional_config_round_trip():
    bi = keras.layers.Bidirectional(VanillaRNN(3, seed=7, use_fused=False))
    clone = keras.layers.Bidirectional.from_config(bi.get_config())
    assert isinstance(clone.forward_layer, VanillaRNN)
    assert isinstance(clone.backward_layer, VanillaRNN)
    assert clone.backward_layer.go_backwards
    assert clone.forward_layer.use_fused is False
    assert clone.forward_layer.seed == 7


_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    import keras_vrnn  # registers the classes: no custom_objects below

    model_path, x_path, out_path, info_path = sys.argv[1:5]
    model = keras.saving.load_model(model_path)
    np.save(out_path, model.predict(np.load(x_path), verbose=0))
    vrnn = model.get_layer("vrnn")
    info = {
        "classes": [type(layer).__name__ for layer in model.layers],
        "cell": type(model.get_layer("rnn_cell").cell).__name__,
        "seed": vrnn.seed,
        "use_fused": vrnn.use_fused,
        "recurrent_initializer": type(vrnn.recurrent_initializer).__name__,
        "backend": keras.backend.backend(),
    }
    with open(info_path, "w") as f:
        json.dump(info, f)
    """
)


def test_saved_model_loads_in_fresh_process(tmp_path):
    inputs = keras.Input((5, 3))
    h = VanillaRNN(
        4, return_sequences=True, seed=21, dropout=0.1, use_fused="auto",
        recurrent_initializer=ScaledOrthogonal(0.9, seed=2),
        bias_initializer="random_normal", name="vrnn",
    )(inputs)
    h = keras.layers.RNN(
        VanillaRNNCell(3, activation="relu", bias_initializer="random_normal"),
        return_sequences=True, go_backwards=True, name="rnn_cell",
    )(h)
    h = keras.layers.Bidirectional(VanillaRNN(2, use_fused=False), name="bi")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    rng = np.random.default_rng(0)
    model.set_weights(  # not what the initializers would give
        [rng.standard_normal(w.shape).astype("float32") * 0.5
         for w in model.get_weights()]
    )
    x = rng.standard_normal((6, 5, 3)).astype("float32")
    expected = model.predict(x, verbose=0)

    model_path = tmp_path / "model.keras"
    model.save(model_path)
    np.save(tmp_path / "x.npy", x)
    backend = keras.backend.backend()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    proc = subprocess.run(
        [
            sys.executable, "-c", _LOADER, str(model_path),
            str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
            str(tmp_path / "info.json"),
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["backend"] == backend
    assert info["classes"][1:4] == ["VanillaRNN", "RNN", "Bidirectional"]
    assert info["cell"] == "VanillaRNNCell"
    assert info["seed"] == 21 and info["use_fused"] == "auto"
    assert info["recurrent_initializer"] == "ScaledOrthogonal"

    # In this process too.
    loaded = keras.saving.load_model(model_path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_only_round_trip(tmp_path):
    layer = VanillaRNN(4, bias_initializer="random_normal", name="rnn")
    model = keras.Sequential([keras.Input((5, 3)), layer])
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    other = keras.Sequential([keras.Input((5, 3)), VanillaRNN(4, name="rnn")])
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    # SimpleRNN weights transfer through get_weights/set_weights (same names,
    # shapes and order). Not through .weights.h5 files: Keras keys those by
    # the snake-cased class name ("layers/simple_rnn/cell/vars" vs
    # "layers/vanilla_rnn/cell/vars"), which a differently named class
    # cannot match.
    simple = keras.Sequential(
        [keras.Input((5, 3)), keras.layers.SimpleRNN(4, name="rnn")]
    )
    simple.set_weights(model.get_weights())
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(simple(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6
    )
    assert keras_vrnn.VanillaRNN is VanillaRNN
