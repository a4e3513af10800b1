"""The native CPU kernels (`keras_vrnn.native`): the ops against the float64
NumPy reference, their batch parts, their errors, and the build: cache key,
concurrent builds, and the fallback to the XLA loops when they cannot run.

The layer-level comparisons with the generic loop run on both
implementations in test_fused.py (its `impl` fixture).
"""

import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vrnn import VanillaRNN
from keras_vrnn import fused_tf
from keras_vrnn import native
from rnn_configs import ACTIVATIONS
from test_fused import count_calls
from test_fused import require_native

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow custom ops"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lib():
    return require_native()


def _empty(dtype):
    return tf.zeros([0], dtype)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize(
    "activation, use_bias, with_mask, with_probe",
    [
        (act, *[(i + k) % 2 == 0 for k in range(3)])
        for i, act in enumerate(ACTIVATIONS)
    ]
    + [("tanh", False, True, True)],
)
# float32 runs on the step kernels where the build has them: units cover
# their column blocks (4: one partial vector; 21: 16 + a partial one; 24:
# 16 + 8) and their row tiles (13 rows: 6 + 7 in two parts, 6 + 6 + 1 whole).
@pytest.mark.parametrize("units", [4, 21, 24])
def test_ops_match_reference(
    ref, dtype, tol, activation, use_bias, with_mask, with_probe, units
):
    lib = _lib()
    # 13 rows in parts of >= 2 rows: uneven parts on any machine with 2+
    # intra-op threads (parts are one per thread).
    batch = 13
    p = ref.make_problem(
        seed=3, batch=batch, timesteps=6, units=units, initial_state=True, use_bias=use_bias
    )
    rng = np.random.default_rng(4)
    mask = (rng.random((batch, units)) > 0.4) / 0.6 if with_mask else None
    cast = lambda a: tf.constant(np.asarray(a, dtype))  # noqa: E731
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, False, True,
        c=p["c"], rec_mask=mask,
    )
    # A zero probe changes nothing forward; its gradient is dL/dh_t.
    probe = cast(np.zeros((batch, 6, units))) if with_probe else _empty(dtype)
    args = [
        cast(p["x"]), cast(p["W"]),
        cast(p["b"]) if use_bias else _empty(dtype),
        cast(p["h0"]), cast(p["U"]),
        cast(mask) if with_mask else _empty(dtype),
        probe,
    ]
    options = dict(activation=activation, min_part_rows=2)
    hs = lib.keras_vrnn_forward(*args, **options)
    ref.assert_rel_close(hs, expected["hs"], tol, "hs")
    dz, dh, dh0, d_kernel, d_bias, d_recurrent = lib.keras_vrnn_backward(
        cast(p["c"]), hs, *args, **options
    )
    ref.assert_rel_close(dh0, expected["dh0"], tol, "dh0")
    ref.assert_rel_close(d_kernel, expected["dW"], tol, "dW")
    ref.assert_rel_close(d_bias, expected["db"], tol, "db")
    ref.assert_rel_close(d_recurrent, expected["dU"], tol, "dU")
    # dL/dx = dZ W^T (computed by TensorFlow from dZ).
    ref.assert_rel_close(np.asarray(dz) @ p["W"].T, expected["dx"], tol * 10, "dx")
    if with_probe:
        ref.assert_rel_close(dh, expected["dh"], tol, "dh")
    else:
        assert dh.shape == (0,)
    # Without weight gradients (a gradient-norm measurement): the same dz,
    # dh and dh0 to the bit, and zeros where the weight gradients were.
    skipped = lib.keras_vrnn_backward(
        cast(p["c"]), hs, *args, weight_gradients=False, **options
    )
    for name, full, got in zip(("dz", "dh", "dh0"), (dz, dh, dh0), skipped[:3]):
        np.testing.assert_array_equal(got, full, err_msg=name)
    for name, full, got in zip(("dW", "db", "dU"), (d_kernel, d_bias, d_recurrent), skipped[3:]):
        assert got.shape == full.shape and not np.any(got), name


def test_build_reports_its_kernels():
    # On a CPU with AVX2 and FMA, -march=native builds the float32 step
    # kernels; elsewhere every dtype runs on Eigen. The report says which.
    _lib()
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as f:
        flags = set(" ".join(line for line in f if line.startswith("flags")).split())
    expected = (
        "float32: AVX2/FMA step kernels; float64: Eigen"
        if {"avx2", "fma"} <= flags
        else "float32, float64: Eigen"
    )
    assert native.kernels() == expected


def test_one_timestep_and_one_row(ref):
    # The smallest shapes: no step before the first (dU from h0 alone), and
    # a part of one row, against the float64 reference.
    lib = _lib()
    for batch, timesteps in ((1, 1), (3, 1), (1, 4)):
        p = ref.make_problem(seed=batch + timesteps, batch=batch, timesteps=timesteps,
                             units=10, initial_state=True)
        args = [tf.constant(p[k]) for k in ("x", "W", "b", "h0", "U")]
        args += [_empty("float32"), _empty("float32")]
        hs = lib.keras_vrnn_forward(*args, activation="tanh", min_part_rows=1)
        dz, dh, dh0, d_kernel, d_bias, d_recurrent = lib.keras_vrnn_backward(
            tf.constant(p["c"]), hs, *args, activation="tanh", min_part_rows=1
        )
        expected = ref.rnn_reference(
            p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", False, True, c=p["c"]
        )
        for name, got in (("hs", hs), ("dh0", dh0), ("dW", d_kernel), ("db", d_bias),
                          ("dU", d_recurrent)):
            ref.assert_rel_close(got, expected[name], 1e-5, f"{name} {batch}x{timesteps}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_propagates_as_in_float64(ref, activation):
    # A NaN input poisons its row from that step on, in float32 (the step
    # kernels, where built) exactly as in float64 (Eigen): relu(NaN) is NaN.
    lib = _lib()
    p = ref.make_problem(seed=11, batch=3, timesteps=5, units=10, initial_state=True)
    p["x"][1, 2, 0] = np.nan
    nan_at = {}
    for dtype in ("float32", "float64"):
        args = [tf.constant(np.asarray(p[k], dtype)) for k in ("x", "W", "b", "h0", "U")]
        args += [_empty(dtype), _empty(dtype)]
        nan_at[dtype] = np.isnan(lib.keras_vrnn_forward(*args, activation=activation))
    np.testing.assert_array_equal(nan_at["float32"], nan_at["float64"])
    assert nan_at["float32"][1, 2:].all() and not nan_at["float32"][[0, 2]].any()
    assert not nan_at["float32"][1, :2].any()


def test_parts_give_the_numbers_of_the_whole_batch(ref):
    # Every row is its own recurrence: cut into parts (2+ threads) or not,
    # the results agree to rounding.
    lib = _lib()
    p = ref.make_problem(seed=5, batch=9, timesteps=4, initial_state=True)
    args = [tf.constant(p[k]) for k in ("x", "W", "b", "h0", "U")]
    args += [_empty("float32"), _empty("float32")]
    results = {}
    for rows in (1, 10**6):  # as many parts as threads, then one part
        hs = lib.keras_vrnn_forward(*args, activation="tanh", min_part_rows=rows)
        grads = lib.keras_vrnn_backward(
            tf.constant(p["c"]), hs, *args, activation="tanh", min_part_rows=rows
        )
        results[rows] = [hs, *grads]
    for name, a, b in zip(("hs", "dz", "dh", "dh0", "dW", "db", "dU"), *results.values()):
        if np.size(b):
            ref.assert_rel_close(a, b, 1e-6, name)


@pytest.mark.parametrize(
    "which, shapes, fragment",
    [
        ("x", [(2, 3), (3, 4), (4,), (2, 4), (4, 4)], "inputs must be (batch, timesteps, features)"),
        ("h0", [(2, 5, 3), (3, 4), (4,), (3, 4), (4, 4)], "h0 must be (2, units)"),
        ("kernel", [(2, 5, 3), (5, 4), (4,), (2, 4), (4, 4)], "kernel must be (3, 4)"),
        ("U", [(2, 5, 3), (3, 4), (4,), (2, 4), (4, 5)], "recurrent_kernel must be (4, 4)"),
        ("bias", [(2, 5, 3), (3, 4), (5,), (2, 4), (4, 4)], "bias must be empty or (4,)"),
    ],
)
def test_ops_reject_bad_shapes(which, shapes, fragment):
    lib = _lib()
    args = [tf.zeros(s) for s in shapes] + [_empty("float32")] * 2
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        lib.keras_vrnn_forward(*args, activation="tanh")
    assert fragment in str(err.value) and "Received shape" in str(err.value)


def test_layer_in_a_jit_compiled_model_uses_the_xla_loops(ref, monkeypatch):
    # A custom op has no XLA kernel: inside an XLA-compiled function the
    # fused path takes its XLA loops, and the model trains the same.
    native_calls = count_calls(monkeypatch, fused_tf, "_native_recurrence")
    p = ref.make_problem(seed=6, batch=4)
    y = np.ones((4, 1), "float32")
    losses = {}
    for jit in (True, False):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5, 3)), VanillaRNN(4), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", jit_compile=jit)
        native_calls.clear()
        losses[jit] = [model.train_on_batch(p["x"], y) for _ in range(3)]
        assert bool(native_calls) == (not jit)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def test_float16_uses_the_xla_loops(ref, monkeypatch, restore_policy):
    native_calls = count_calls(monkeypatch, fused_tf, "_native_recurrence")
    keras.config.set_dtype_policy("mixed_float16")
    p = ref.make_problem(seed=7)
    layer = VanillaRNN(4, use_fused=True)
    out = layer(p["x"])
    assert out.dtype == "float16" and not native_calls


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """`keras_vrnn.native` with nothing loaded yet and a private cache."""
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setenv("KERAS_VRNN_CACHE", str(tmp_path))
    return tmp_path


def test_missing_compiler_falls_back_with_one_warning(ref, fresh_native, monkeypatch):
    monkeypatch.setenv("KERAS_VRNN_CXX", "no-such-compiler-xyz")
    with pytest.warns(RuntimeWarning, match=re.escape("no C++ compiler: 'no-such-compiler-xyz'")):
        assert native.library() is None
    assert "KERAS_VRNN_CXX" in native.unavailable_reason()
    # Warned once: later calls are silent; the fused path still works.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None
        p = ref.make_problem(seed=8, initial_state=True)
        fused = VanillaRNN(4, use_fused=True, return_sequences=True)
        fused.build(p["x"].shape)
        fused.set_weights(p["weights"])
        got = ref.run_tf(fused, p["x"], p["h0"], c=p["c"])
    expected = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", False, True, c=p["c"]
    )
    ref.check_against_reference(got, expected, 1e-5)


def test_failed_compilation_is_reported(fresh_native, monkeypatch):
    monkeypatch.setenv("KERAS_VRNN_CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match=r"compiling vanilla_rnn_ops.cc failed \(exit 1\)"):
        native.build()
    assert list(fresh_native.glob("*.so")) == []  # no partial file left


def test_disabled_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv("KERAS_VRNN_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None
    assert native.unavailable_reason() == "disabled by KERAS_VRNN_NATIVE"
    assert list(fresh_native.iterdir()) == []  # nothing built


def test_cache_file_is_per_cpu_and_source(fresh_native, monkeypatch):
    first = native.library_path()
    assert first.parent == fresh_native and first.suffix == ".so"
    monkeypatch.setattr(native, "_cpu_signature", lambda: "flags: another cpu")
    assert native.library_path() != first
    monkeypatch.undo()
    # The header the source includes is part of the key as well.
    header = fresh_native / "step_kernels.h"
    header.write_text("// another version\n")
    sources = [s for s in native.SOURCES if s.name != header.name] + [header]
    monkeypatch.setattr(native, "SOURCES", sources)
    assert native.library_path() != first


def test_concurrent_builds_make_one_file(tmp_path):
    # Two processes (as pytest-xdist workers are) building into an empty
    # cache: one builds, the other waits for it; one file, no leftovers.
    env = dict(os.environ, KERAS_VRNN_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "keras_vrnn.native"]
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    # Each prints the library's path, then what it runs.
    paths = {out.strip().splitlines()[-2] for out, _ in outputs}
    assert len(paths) == 1
    assert all("Eigen" in out.strip().splitlines()[-1] for out, _ in outputs)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock", ".so"]
    assert os.path.getsize(paths.pop()) > 0
