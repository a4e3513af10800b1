"""VanillaRNN and RNN(VanillaRNNCell) on the JAX backend: same numbers as on
TensorFlow (and as the NumPy reference), forward and gradients.

Keras fixes its backend at import, so the JAX side runs in a subprocess with
KERAS_BACKEND=jax; the weights and inputs travel in an .npz file the test
writes, the results come back in another.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_vrnn import VanillaRNN
from keras_vrnn import VanillaRNNCell

pytest.importorskip("jax")
# Compares the JAX backend (subprocess) with TensorFlow (here).
pytestmark = pytest.mark.tensorflow_only

TOL = 1e-5
# (activation, go_backwards, return_sequences) x the three implementations.
CONFIGS = [
    ("tanh", False, True),
    ("relu", True, False),
    ("sigmoid", False, False),
    ("linear", True, True),
]
KINDS = ("fused", "generic", "rnn_cell")

_JAX_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import jax
    import jax.numpy as jnp
    import keras
    import keras_vrnn
    from keras_vrnn import VanillaRNN, VanillaRNNCell
    from keras_vrnn.probe import attached_probe

    assert keras.backend.backend() == "jax", keras.backend.backend()
    data_path, configs_path, out_path = sys.argv[1:4]
    d = dict(np.load(data_path))
    configs = json.load(open(configs_path))
    x, h0 = jnp.asarray(d["x"]), jnp.asarray(d["h0"])
    weights = [d["W"], d["U"], d["b"]]
    out = {}

    fused_calls = []
    original = VanillaRNN._fused_inner_loop
    def spy(*args, **kwargs):
        fused_calls.append(1)
        return original(*args, **kwargs)
    VanillaRNN._fused_inner_loop = spy

    def make(kind, act, back, seq, **kw):
        if kind == "rnn_cell":
            layer = keras.layers.RNN(
                VanillaRNNCell(4, activation=act, **kw),
                go_backwards=back, return_sequences=seq,
            )
        else:
            layer = VanillaRNN(
                4, activation=act, go_backwards=back, return_sequences=seq,
                use_fused=(kind == "fused"), **kw,
            )
        layer.build(x.shape)
        layer.set_weights(weights)
        return layer

    def grads_of(layer, c, training=False):
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def loss(tv, x, h0, probe):
            with attached_probe(layer, probe):
                y, _ = layer.stateless_call(
                    tv, ntv, x, initial_state=h0, training=training
                )
            return jnp.sum(c * y), y

        probe = jnp.zeros(x.shape[:2] + (4,))
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
        (_, y), (dw, dx, dh0, dprobe) = fn(tv, x, h0, probe)
        return dict(y=y, dW=dw[0], dU=dw[1], db=dw[2], dx=dx, dh0=dh0,
                    dprobe=dprobe)

    for name, kind, act, back, seq in configs:
        c = jnp.asarray(d["c"] if seq else d["c_last"])
        before = len(fused_calls)
        result = grads_of(make(kind, act, back, seq), c)
        out[name + "/fused_ran"] = np.array(len(fused_calls) > before)
        for key, value in result.items():
            out[name + "/" + key] = np.asarray(value)

    # Dropout: fused and generic draw the same masks from the same seed.
    for kind in ("fused", "generic"):
        layer = make(kind, "tanh", False, True, dropout=0.3,
                     recurrent_dropout=0.4, seed=5)
        result = grads_of(layer, jnp.asarray(d["c"]), training=True)
        for key, value in result.items():
            out["dropout_" + kind + "/" + key] = np.asarray(value)

    # A tiny model: fit runs, and 2 SGD steps agree between the two paths.
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 5, 3)).astype("float32")
    ys = rng.standard_normal((6, 1)).astype("float32")
    models = []
    for use_fused in (True, False):
        model = keras.Sequential([
            keras.Input((5, 3)),
            VanillaRNN(4, use_fused=use_fused),
            keras.layers.Dense(1),
        ])
        if models:
            model.set_weights(models[0].get_weights())
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        models.append(model)
    for j, w in enumerate(models[0].get_weights()):
        out[f"init/{j}"] = w
    for i, model in enumerate(models):
        # fit(): 2 SGD steps of 3 samples each, no shuffling.
        history = model.fit(xs, ys, batch_size=3, epochs=1, shuffle=False,
                            verbose=0)
        out[f"fit_loss_{i}"] = np.array(history.history["loss"][0])
        for j, w in enumerate(model.get_weights()):
            out[f"train_{i}/{j}"] = w
    np.savez(out_path, **out)
    """
)


def _run_jax(tmp_path, p):
    data = {k: p[k] for k in ("x", "W", "U", "b", "h0", "c", "c_last")}
    np.savez(tmp_path / "data.npz", **data)
    configs = [
        [_name(kind, *config), kind, *config]
        for kind in KINDS
        for config in CONFIGS
    ]
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    env = dict(
        os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        [
            sys.executable, "-c", _JAX_SCRIPT, str(tmp_path / "data.npz"),
            str(tmp_path / "configs.json"), str(tmp_path / "out.npz"),
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(tmp_path / "out.npz"))


def _name(kind, activation, go_backwards, return_sequences):
    return f"{kind}-{activation}-back{int(go_backwards)}-seq{int(return_sequences)}"


def _tf_layer(kind, activation, go_backwards, return_sequences, p):
    if kind == "rnn_cell":
        layer = keras.layers.RNN(
            VanillaRNNCell(4, activation=activation),
            go_backwards=go_backwards, return_sequences=return_sequences,
        )
    else:
        layer = VanillaRNN(
            4, activation=activation, go_backwards=go_backwards,
            return_sequences=return_sequences, use_fused=(kind == "fused"),
        )
    layer.build(p["x"].shape)
    layer.set_weights(p["weights"])
    return layer


@pytest.mark.usefixtures("no_xla")  # TF side: test_fused.py covers XLA
def test_jax_backend_matches_tensorflow(ref, tmp_path):
    # One test, one subprocess (importing JAX and compiling costs ~20 s of
    # CPU; a module fixture would run once per xdist worker).
    p = ref.make_problem(seed=31, initial_state=True)
    jax_out = _run_jax(tmp_path, p)

    # 1. Every implementation x activation config: JAX == TF == reference.
    for kind in KINDS:
        for activation, go_backwards, return_sequences in CONFIGS:
            name = _name(kind, activation, go_backwards, return_sequences)
            got = {
                k.split("/", 1)[1]: v
                for k, v in jax_out.items()
                if k.startswith(name + "/")
            }
            # The fused JAX path really ran for "fused", and only there.
            assert bool(got["fused_ran"]) == (kind == "fused"), name
            c = p["c"] if return_sequences else p["c_last"]
            layer = _tf_layer(kind, activation, go_backwards, return_sequences, p)
            tf_result = ref.run_tf(layer, p["x"], p["h0"], c=c)
            expected = ref.rnn_reference(
                p["x"], p["W"], p["U"], p["b"], p["h0"], activation,
                go_backwards, return_sequences, c=c,
            )
            for key in ("y", "dx", "dW", "dU", "db", "dh0"):
                ref.assert_rel_close(
                    got[key], tf_result[key], TOL, f"{name}: jax vs tf {key}"
                )
                ref.assert_rel_close(
                    got[key], expected[key], TOL, f"{name}: jax vs ref {key}"
                )
            # The gradient probe on JAX: the total BPTT dL/dh_t.
            ref.assert_rel_close(
                got["dprobe"], expected["dh"], TOL, f"{name}: jax probe"
            )

    # 2. Dropout on JAX: fused and generic draw the same masks (same seed).
    for key in ("y", "dx", "dW", "dU", "db", "dh0", "dprobe"):
        ref.assert_rel_close(
            jax_out[f"dropout_fused/{key}"], jax_out[f"dropout_generic/{key}"],
            TOL if key == "y" else 1e-4, f"jax dropout {key}",
        )
    assert not np.allclose(  # and dropout did drop something
        jax_out["dropout_fused/y"],
        jax_out[_name("fused", "tanh", False, True) + "/y"],
    )

    # 3. Training on JAX: fit runs; 2 SGD steps agree between the paths.
    assert np.isfinite(jax_out["fit_loss_0"])
    ref.assert_rel_close(jax_out["fit_loss_0"], jax_out["fit_loss_1"], 1e-5, "loss")
    n = len([k for k in jax_out if k.startswith("train_0/")])
    assert n == 5  # kernel, recurrent_kernel, bias, dense kernel, dense bias
    for j in range(n):
        ref.assert_rel_close(
            jax_out[f"train_0/{j}"], jax_out[f"train_1/{j}"], 1e-5,
            f"weight {j} after 2 SGD steps",
        )
        assert not np.array_equal(jax_out[f"train_0/{j}"], jax_out[f"init/{j}"])
