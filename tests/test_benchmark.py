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

