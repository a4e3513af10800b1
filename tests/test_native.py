"""The native CPU kernels (`keras_vrnn.native`): the ops against the float64
NumPy reference, their batch parts, their errors, and the build: cache key,
concurrent builds, and the fallback to the XLA loops when they cannot run.

The layer-level comparisons with the generic loop run on both
implementations in test_fused.py (its `impl` fixture).
"""

import os
import re
import shutil
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


def _vector_widths():
    """The float32 step kernels' vector widths this build has: (8,) or (8, 16)."""
    return (8, 16) if "AVX-512" in (native.kernels() or "") else (8,)


def _require_width(vector_width):
    _lib()
    if vector_width not in (0, *_vector_widths()):
        pytest.skip(f"no {vector_width}-wide kernels on this CPU ({native.cpu_model()})")


OP_CONFIGS = [
    (act, *[(i + k) % 2 == 0 for k in range(3)]) for i, act in enumerate(ACTIVATIONS)
] + [("tanh", False, True, True)]


# float64 runs on Eigen, float32 on the step kernels of each vector width.
@pytest.mark.parametrize(
    "dtype, tol, vector_width", [("float64", 1e-12, 0), ("float32", 1e-5, 8), ("float32", 1e-5, 16)]
)
@pytest.mark.parametrize("activation, use_bias, with_mask, with_probe", OP_CONFIGS)
# Units cover the column blocks of both widths: 4 (one partial vector), 21
# (16 + 5), 24 (16 + 8), 48 (32 + 16) and 70 (64 + 6); 13 rows cover the row
# tiles (6 + 7 in two parts, 6 + 6 + 1 whole).
@pytest.mark.parametrize("units", [4, 21, 24, 48, 70])
def test_ops_match_reference(
    ref, dtype, tol, vector_width, activation, use_bias, with_mask, with_probe, units
):
    lib = _lib()
    _require_width(vector_width)
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
    options = dict(activation=activation, min_part_rows=2, vector_width=vector_width)
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


@pytest.mark.parametrize("activation, use_bias, with_mask, with_probe", OP_CONFIGS)
def test_vector_widths_agree_to_the_bit(ref, activation, use_bias, with_mask, with_probe):
    # Both widths add the same products in the same order for every element
    # and share the activation's polynomial: the same float32 numbers.
    lib = _lib()
    _require_width(16)
    p = ref.make_problem(seed=9, batch=13, timesteps=5, units=70, initial_state=True,
                         use_bias=use_bias)
    mask = (np.random.default_rng(2).random((13, 70)) > 0.4) / 0.6
    args = [
        tf.constant(p["x"]), tf.constant(p["W"]),
        tf.constant(p["b"]) if use_bias else _empty("float32"),
        tf.constant(p["h0"]), tf.constant(p["U"]),
        tf.constant(mask, "float32") if with_mask else _empty("float32"),
        tf.constant(0.1 * p["c"]) if with_probe else _empty("float32"),
    ]
    results = []
    for vector_width in (8, 16):
        options = dict(activation=activation, min_part_rows=2, vector_width=vector_width)
        hs = lib.keras_vrnn_forward(*args, **options)
        results.append([hs, *lib.keras_vrnn_backward(tf.constant(p["c"]), hs, *args, **options)])
    for name, narrow, wide in zip(("hs", "dz", "dh", "dh0", "dW", "db", "dU"), *results):
        np.testing.assert_array_equal(narrow, wide, err_msg=name)


def test_unknown_vector_width_is_rejected():
    lib = _lib()
    args = [tf.zeros(s) for s in [(2, 5, 3), (3, 4), (4,), (2, 4), (4, 4)]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="Received: vector_width=12"):
        lib.keras_vrnn_forward(*args, _empty("float32"), _empty("float32"),
                               activation="tanh", vector_width=12)


def test_build_reports_its_kernels():
    # The kernels follow the CPU's features: AVX-512 builds have both widths
    # (16 by default), AVX2 builds the 8-wide kernels; float64 is on Eigen,
    # compiled for the same instruction set.
    _lib()
    expected = {
        "avx512": "float32: AVX-512 step kernels (AVX2 also built); float64: Eigen (AVX-512)",
        "avx2": "float32: AVX2 step kernels; float64: Eigen (AVX2)",
    }[native.choose_isa(native.cpu_features())]
    assert native.kernels() == expected


@pytest.mark.parametrize("vector_width", [8, 16])
def test_one_timestep_and_one_row(ref, vector_width):
    # The smallest shapes: no step before the first (dU from h0 alone), and
    # a part of one row, against the float64 reference.
    lib = _lib()
    _require_width(vector_width)
    for batch, timesteps in ((1, 1), (3, 1), (1, 4)):
        p = ref.make_problem(seed=batch + timesteps, batch=batch, timesteps=timesteps,
                             units=10, initial_state=True)
        args = [tf.constant(p[k]) for k in ("x", "W", "b", "h0", "U")]
        args += [_empty("float32"), _empty("float32")]
        options = dict(activation="tanh", min_part_rows=1, vector_width=vector_width)
        hs = lib.keras_vrnn_forward(*args, **options)
        dz, dh, dh0, d_kernel, d_bias, d_recurrent = lib.keras_vrnn_backward(
            tf.constant(p["c"]), hs, *args, **options
        )
        expected = ref.rnn_reference(
            p["x"], p["W"], p["U"], p["b"], p["h0"], "tanh", False, True, c=p["c"]
        )
        for name, got in (("hs", hs), ("dh0", dh0), ("dW", d_kernel), ("db", d_bias),
                          ("dU", d_recurrent)):
            ref.assert_rel_close(got, expected[name], 1e-5, f"{name} {batch}x{timesteps}")


@pytest.mark.parametrize("vector_width", [8, 16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_nan_propagates_as_in_float64(ref, activation, vector_width):
    # A NaN input poisons its row from that step on, in float32 (the step
    # kernels) exactly as in float64 (Eigen): relu(NaN) is NaN.
    lib = _lib()
    _require_width(vector_width)
    p = ref.make_problem(seed=11, batch=3, timesteps=5, units=10, initial_state=True)
    p["x"][1, 2, 0] = np.nan
    nan_at = {}
    for dtype in ("float32", "float64"):
        args = [tf.constant(np.asarray(p[k], dtype)) for k in ("x", "W", "b", "h0", "U")]
        args += [_empty(dtype), _empty(dtype)]
        width = vector_width if dtype == "float32" else 0
        nan_at[dtype] = np.isnan(
            lib.keras_vrnn_forward(*args, activation=activation, vector_width=width)
        )
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


def _fake_compiler(directory, exit_code=1):
    """A "compiler" that logs each compile (not `--version`) and exits 1."""
    script = directory / "fake-cxx"
    log = directory / "compiles.log"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "fake-cxx 1.0"; exit 0; fi\n'
        f'echo compile >> "{log}"\n'
        'echo "fake-cxx: error: no such thing" >&2\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return script, lambda: len(log.read_text().splitlines()) if log.exists() else 0


def test_failed_build_is_recorded_and_not_retried(fresh_native, monkeypatch, tmp_path_factory):
    compiler, compiles = _fake_compiler(tmp_path_factory.mktemp("cxx"))
    monkeypatch.setenv("KERAS_VRNN_CXX", str(compiler))
    with pytest.raises(RuntimeError, match=r"compiling vanilla_rnn_ops.cc failed \(exit 1\)"):
        native.build()
    assert compiles() == 1
    assert list(fresh_native.glob("*.so")) == []  # no partial file left
    record = native.failure_record(native.library_path())
    assert "no such thing" in record.read_text()
    # A new process (fresh module state): one warning naming the record and
    # the way to retry, and no second compile.
    with pytest.warns(RuntimeWarning, match="the build failed before") as caught:
        assert native.library() is None
    assert len(caught) == 1
    assert str(record) in str(caught[0].message) and "--rebuild" in str(caught[0].message)
    assert compiles() == 1
    # --rebuild compiles again; so does a change of compiler (another key).
    with pytest.raises(RuntimeError, match="failed"):
        native.build(rebuild=True)
    assert compiles() == 2
    other, other_compiles = _fake_compiler(tmp_path_factory.mktemp("cxx2"))
    monkeypatch.setenv("KERAS_VRNN_CXX", str(other))
    with pytest.raises(RuntimeError, match="failed"):
        native.build()
    assert other_compiles() == 1


def test_command_line_reports_the_failure_and_rebuilds(tmp_path):
    compiler, compiles = _fake_compiler(tmp_path)
    env = dict(os.environ, KERAS_VRNN_CACHE=str(tmp_path / "cache"), KERAS_VRNN_CXX=str(compiler),
               TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "keras_vrnn.native"]
    runs = [
        subprocess.run(command + extra, cwd=REPO, env=env, capture_output=True, text=True)
        for extra in ([], [], ["--rebuild"])
    ]
    assert [run.returncode for run in runs] == [1, 1, 1]
    assert compiles() == 2  # the second run found the record
    assert "the build failed before" in runs[1].stdout
    for run in runs:
        assert "float32, float64: XLA loops" in run.stdout


def test_unsupported_cpu_uses_the_xla_loops_without_building(fresh_native, monkeypatch):
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    compiles = count_calls(monkeypatch, native, "_compile")
    with pytest.warns(RuntimeWarning, match="this CPU is aarch64; the native kernels are built"):
        assert native.library() is None
    assert not compiles and list(fresh_native.iterdir()) == []


def test_missing_tensorflow_headers_are_reported(fresh_native, monkeypatch, tmp_path_factory):
    monkeypatch.setattr(tf.sysconfig, "get_include", lambda: str(tmp_path_factory.mktemp("inc")))
    with pytest.warns(RuntimeWarning, match=r"TensorFlow's C\+\+ headers are missing"):
        assert native.library() is None


def test_isa_follows_the_cpu_features(monkeypatch):
    avx2 = native.ISAS["avx2"][0]
    avx512 = native.ISAS["avx512"][0]
    assert native.choose_isa(avx512 | {"sse4_2"}, "x86_64") == "avx512"
    assert native.choose_isa(avx2, "x86_64") == "avx2"
    assert native.choose_isa(avx512 - {"avx512vl"}, "x86_64") == "avx2"
    assert native.choose_isa(avx2 - {"fma"}, "x86_64") is None
    assert native.choose_isa(avx512, "aarch64") is None
    monkeypatch.setenv("KERAS_VRNN_ISA", "avx2")
    assert native.choose_isa(avx512, "x86_64") == "avx2"
    monkeypatch.setenv("KERAS_VRNN_ISA", "avx1024")
    with pytest.raises(ValueError, match="Received: KERAS_VRNN_ISA='avx1024'"):
        native.choose_isa(avx512, "x86_64")
    for isa in native.ISAS:
        assert "-march=native" not in native.build_flags(isa)


def _march_features(target):
    """The /proc/cpuinfo names of the ISA extensions `-march=target` enables,
    from the compiler's predefined macros (__AVX512F__ -> avx512f)."""
    done = subprocess.run(
        [native._compiler(), f"-march={target}", "-dM", "-E", "-x", "c++", os.devnull],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"{native._compiler()} does not know -march={target}")
    return {m.group(1).lower() for m in re.finditer(r"#define __(\w+?)__ 1", done.stdout)}


# The CPU families the kernels are built for, and what each one gets.
TARGETS = {
    "haswell": "avx2", "znver2": "avx2", "znver3": "avx2",
    "skylake-avx512": "avx512", "icelake-server": "avx512", "sapphirerapids": "avx512",
    "znver4": "avx512", "znver5": "avx512",
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_cpu_family_gets_its_isa(target):
    features = _march_features(target)
    assert native.choose_isa(features, "x86_64") == TARGETS[target]
    # Nothing the flags turn on is missing on that CPU.
    assert native.ISAS[TARGETS[target]][0] <= features


@pytest.mark.parametrize("isa", list(native.ISAS))
def test_compiles_for_every_cpu_family(isa, tmp_path):
    # What each family of TARGETS builds, compiled (not run) on any machine,
    # so a header that breaks under one instruction set shows up everywhere.
    # The library this machine built of that set (`make test` builds it first)
    # already is that compile: its name keys the source, compiler and flags,
    # and it is written only after the compiler succeeded.
    built = native.library_path(isa)
    if built.exists():
        assert built.stat().st_size > 0 and not native.failure_record(built).exists()
        return
    command = native._build_command(tmp_path / "ops.o", isa)
    command = [a for a in command if a not in ("-shared", "-O3") and not a.startswith(("-l", "-L"))]
    done = subprocess.run([*command, "-c", "-O0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ops.o").stat().st_size > 0


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


def test_cache_key_ignores_where_the_checkout_and_tensorflow_live(
        fresh_native, monkeypatch, tmp_path_factory):
    # A second clone (its own source path) with its own venv (its own
    # TensorFlow path) of the same source and TensorFlow reuses the library.
    first = native.library_path()
    clone = tmp_path_factory.mktemp("clone")
    for source in native.SOURCES:
        shutil.copy(source, clone / source.name)
    monkeypatch.setattr(native, "SOURCE", clone / native.SOURCE.name)
    monkeypatch.setattr(native, "SOURCES", sorted(clone.iterdir()))
    lib, elsewhere = tf.sysconfig.get_lib(), "/elsewhere/venv/site-packages/tensorflow"
    for name in ("get_compile_flags", "get_link_flags"):
        flags = getattr(tf.sysconfig, name)()
        monkeypatch.setattr(tf.sysconfig, name,
                            lambda flags=flags: [f.replace(lib, elsewhere) for f in flags])
    monkeypatch.setattr(tf.sysconfig, "get_lib", lambda: elsewhere)
    assert native._build_command("out", "avx2") != []
    assert str(clone) in " ".join(native._build_command("out", "avx2"))
    assert native.library_path() == first
    # ... but not a changed compile flag.
    monkeypatch.setattr(tf.sysconfig, "get_compile_flags", lambda: ["-DOTHER=1"])
    assert native.library_path() != first


def test_concurrent_builds_make_one_file(tmp_path):
    # Two processes (as pytest-xdist workers are) building into an empty
    # cache: one builds, the other waits for it; one file, no leftovers. The
    # "compiler" logs each compile, waits so that the builds overlap and
    # copies this machine's real library (the compile itself is tested above).
    built = _lib() and native.library_path()
    cxx = tmp_path / "cxx"
    cxx.mkdir()
    log, script = cxx / "compiles.log", cxx / "copying-cxx"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "copying-cxx 1.0"; exit 0; fi\n'
        f'echo compile >> "{log}"\n'
        'while [ "$1" != -o ]; do shift; done\n'
        f'sleep 3 && cp "{built}" "$2"\n'
    )
    script.chmod(0o755)
    cache = tmp_path / "cache"
    env = dict(os.environ, KERAS_VRNN_CACHE=str(cache), KERAS_VRNN_CXX=str(script),
               TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "keras_vrnn.native"]
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert log.read_text().splitlines() == ["compile"]  # the second one waited
    # Each prints the library's path, then what each dtype runs.
    paths = {line[len("library: "):] for out, _ in outputs for line in out.splitlines()
             if line.startswith("library: ")}
    assert len(paths) == 1
    assert all(out.strip().splitlines()[-1].startswith("float64: Eigen") for out, _ in outputs)
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".so"]
    assert os.path.getsize(paths.pop()) > 0
