"""Gradient diagnostics give the same numbers on TensorFlow, JAX and torch.

Keras fixes its backend at import, so each backend runs in its own
subprocess on the same weights and data (NumPy, seeded): the per-timestep
gradient norms (total, last-step and direct views), the state Jacobian
norms, the Lyapunov exponents and one log of GradientNormCallback come back
in .npz files and are compared with TensorFlow's to 1e-5 relative.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs every backend in subprocesses; once, from the TensorFlow run",
)
BACKENDS = [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]
TOL = 1e-5

_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import keras_vrnn

    out, logs = sys.argv[1:3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 3)).astype("float32")
    y = rng.standard_normal((5, 7, 2)).astype("float32")
    inputs = keras.Input((7, 3))
    h = keras_vrnn.VanillaRNN(4, return_sequences=True, name="rnn")(inputs)
    cell = keras_vrnn.VanillaRNNCell(3, activation="softplus")  # act' by autodiff
    h = keras.layers.Bidirectional(
        keras.layers.RNN(cell, return_sequences=True), name="bi")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.set_weights(
        [rng.normal(0.0, 0.6, w.shape).astype("float32") for w in model.get_weights()])
    result = {}
    for view, kwargs in (("total", {}), ("last", {"last_step_only": True}),
                         ("direct", {"direct": True})):
        norms = keras_vrnn.timestep_gradient_norms(model, x, y, **kwargs)
        result.update({f"{view}:{k}": v for k, v in norms.items()})
    jacobians = keras_vrnn.state_jacobian_norms(model, x, max_samples=3)
    result.update({f"jacobian:{k}": v for k, v in jacobians.items()})
    for key in ("rnn", "bi/forward", "bi/backward"):
        result[f"lyapunov:{key}"] = keras_vrnn.lyapunov_exponents(model, x, layer=key)
    cb = keras_vrnn.GradientNormCallback(logs, (x, y), every_n_batches=100)
    model.fit(x, y, batch_size=5, epochs=1, verbose=0, callbacks=[cb])
    with np.load(cb.npz_path) as data:
        result.update({f"callback:{k}": data[k][0] for k in data.files
                       if "/" in k and data[k].ndim >= 1})
    np.savez(out, backend=keras.backend.backend(), **result)
    """
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    procs = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        procs[backend] = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(tmp / f"{backend}.npz"),
             str(tmp / f"logs_{backend}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    out = {}
    for backend, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (backend, err)
        with np.load(tmp / f"{backend}.npz") as data:
            assert str(data["backend"]) == backend
            out[backend] = {k: data[k] for k in data.files if k != "backend"}
    return out


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "tensorflow"])
def test_same_numbers_as_tensorflow(results, ref, backend):
    expected, actual = results["tensorflow"], results[backend]
    assert sorted(actual) == sorted(expected)
    views = {name.split(":")[0] for name in expected}
    assert views == {"total", "last", "direct", "jacobian", "lyapunov", "callback"}
    for name, value in expected.items():
        # NaN where a number is undefined (the backward layer's last-step
        # profile has one usable step: no decay factor), the same on both.
        np.testing.assert_array_equal(np.isnan(actual[name]), np.isnan(value), name)
        ref.assert_rel_close(np.nan_to_num(actual[name]), np.nan_to_num(value), TOL,
                             f"{backend} {name}")
    # The views differ from each other, so agreeing is not trivial.
    assert not np.allclose(expected["total:rnn"], expected["last:rnn"])
    assert not np.allclose(expected["total:rnn"], expected["direct:rnn"])
