"""The benchmark script runs end to end and reports what it promises.

Timings are not asserted (they belong to the benchmark's own report, not to
unit tests); this keeps the script from rotting.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import benchmark  # noqa: E402

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the benchmark runs on TensorFlow"
)


def test_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(
        ["--rounds", "2", "--warmup", "1", "--sizes", "4,6,3,5", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["size"] == [4, 6, 3, 5]
    for mode in ("train", "inference"):
        r = row[mode]
        for key in ("vanilla_ms", "simple_ms", "speedup", "ceiling", "limit_ms"):
            assert r[key] > 0, (mode, key)
        assert f"| (4, 6, 3, 5) | {mode} |" in printed
    assert row["gradient_norms"]["ms"] > 0
    assert "speedup ceiling" in printed and "cost vs one train step" in printed
    assert "VanillaRNN fused path: native kernels" in printed



def test_benchmark_runs_on_the_jax_backend(tmp_path):
    # The same script with KERAS_BACKEND=jax (how it runs on a GPU machine):
    # the fused path is JAX's, the matmul limit is measured with JAX's
    # kernels, and there is no gradient-norm table (TensorFlow only).
    pytest.importorskip("jax")
    import os
    import subprocess

    out = tmp_path / "bench.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable, str(Path(benchmark.__file__)), "--rounds", "2", "--warmup", "1",
            "--sizes", "4,6,3,5", "--json", str(out),
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    for mode in ("train", "inference"):
        for key in ("vanilla_ms", "simple_ms", "speedup", "ceiling", "limit_ms"):
            assert row[mode][key] > 0, (mode, key)
    assert "gradient_norms" not in row
    assert "JAX " in proc.stdout and "on CPU" in proc.stdout
    assert "VanillaRNN fused path: lax.scan with a custom VJP" in proc.stdout
    assert "cost vs one train step" not in proc.stdout
