"""The benchmark script runs end to end and reports what it promises.

Timings are not asserted (they belong to the benchmark's own report, not to
unit tests); this keeps the script from rotting.
"""

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import benchmark  # noqa: E402

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the benchmark runs on TensorFlow"
)

HAS_TORCH = importlib.util.find_spec("torch") is not None


def assert_torch_column(row, printed, installed):
    """The torch.nn.RNN numbers of a one-size run, in its JSON row and in its
    printed header and table (one line per mode): numbers where torch is
    installed, "torch not installed" where it is not."""
    assert f"| speedup | vs {benchmark.TORCH} |" in printed
    header = printed.splitlines()[0]
    for mode in ("train", "inference"):
        if installed:
            assert row[mode]["torch_ms"] > 0 and row[mode]["vs_torch"] > 0, mode
        else:
            assert row[mode]["torch_ms"] is None and row[mode]["vs_torch"] is None, mode
    if installed:
        assert re.search(r"torch \S+ \(CPU, \d+ threads\)", header), header
        # speedup vs SimpleRNN, then vs torch.nn.RNN, both numbers
        assert len(re.findall(r"\| \*\*\d+\.\d\dx\*\* \| \*\*\d+\.\d\dx\*\* \|", printed)) == 2
        assert "torch not installed" not in printed
    else:
        assert "torch not installed" in header
        assert printed.count("| torch not installed |") == 2


def assert_header(printed):
    header = printed.splitlines()[0]
    assert header.startswith("# ") and f", {os.cpu_count()} cores, " in header, header
    assert re.search(r", \d{4}-\d\d-\d\d, commit (unknown|[0-9a-f]+(\+changes)?), ", header)


def test_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(
        ["--rounds", "2", "--warmup", "1", "--sizes", "4,6,3,5", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    (row,) = json.loads(out.read_text())["results"]
    assert row["size"] == [4, 6, 3, 5]
    for mode in ("train", "inference"):
        r = row[mode]
        for key in ("vanilla_ms", "simple_ms", "speedup", "ceiling", "limit_ms"):
            assert r[key] > 0, (mode, key)
        assert f"| (4, 6, 3, 5) | {mode} |" in printed
    assert row["gradient_norms"]["ms"] > 0
    assert "speedup ceiling" in printed and "cost vs one train step" in printed
    assert "VanillaRNN fused path: native kernels" in printed
    assert_header(printed)
    assert_torch_column(row, printed, installed=HAS_TORCH)
    # The FMA peak, measured in the same run, and each size's share of it.
    peak = json.loads(out.read_text())["fma_peak"]
    assert peak["vector_width"] in (8, 16) and peak["gflops"] > 1
    share = 100 * row["train"]["vanilla_gflops"] / peak["gflops"]
    assert f"(4, 6, 3, 5) train {share:.0f}%" in printed


def test_benchmark_runs_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    out = tmp_path / "bench.json"
    benchmark.main(
        ["--rounds", "1", "--warmup", "1", "--sizes", "4,6,3,5", "--no-gradient-norms",
         "--json", str(out)]
    )
    (row,) = json.loads(out.read_text())["results"]
    assert_torch_column(row, capsys.readouterr().out, installed=False)


def test_torch_model_is_the_simple_rnn_model():
    # The weight mapping, checked against SimpleRNN itself: same predictions,
    # same initial MSE loss, and the same SGD step for every weight (so the
    # gradients agree too). Random biases, so that a bias left out of the
    # mapping shows.
    pytest.importorskip("torch")
    B, T, D, H = 3, 5, 2, 4
    rng = np.random.default_rng(0)
    simple = benchmark.build_pair(B, T, D, H)["SimpleRNN"]
    simple.set_weights(
        [w + 0.3 * rng.standard_normal(w.shape).astype("float32") for w in simple.get_weights()]
    )
    torch_model = benchmark.TorchModel(simple)
    x = rng.standard_normal((B, T, D)).astype("float32")
    y = rng.standard_normal((B, T, 1)).astype("float32")

    expected = simple.predict_on_batch(x)
    np.testing.assert_allclose(torch_model.predict_on_batch(x), expected, atol=1e-5)
    initial_mse = float(np.mean((expected - y) ** 2))
    before = simple.get_weights()
    assert torch_model.train_on_batch(x, y) == pytest.approx(initial_mse, rel=1e-5)
    assert float(simple.train_on_batch(x, y)) == pytest.approx(initial_mse, rel=1e-5)

    rnn, head = torch_model.rnn, torch_model.head
    as_keras = (rnn.weight_ih_l0.T, rnn.weight_hh_l0.T, rnn.bias_ih_l0, head.weight.T, head.bias)
    torch_steps = [w.detach().numpy() - b for w, b in zip(as_keras, before)]
    keras_steps = [a - b for a, b in zip(simple.get_weights(), before)]
    # torch.nn.RNN's second bias b_hh (from 0) gets the same gradient as b_ih.
    torch_steps.append(rnn.bias_hh_l0.detach().numpy())
    keras_steps.append(keras_steps[2])
    for got, want in zip(torch_steps, keras_steps):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-7)


def test_benchmark_runs_on_the_jax_backend(tmp_path):
    # The same script with KERAS_BACKEND=jax (how it runs on a GPU machine):
    # the fused path is JAX's, the matmul limit is measured with JAX's
    # kernels, and the gradient-norm cost is JAX's too.
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
    (row,) = json.loads(out.read_text())["results"]
    for mode in ("train", "inference"):
        for key in ("vanilla_ms", "simple_ms", "speedup", "ceiling", "limit_ms"):
            assert row[mode][key] > 0, (mode, key)
    assert row["gradient_norms"]["ms"] > 0 and row["gradient_norms"]["cost_vs_train_step"] > 0
    assert_torch_column(row, proc.stdout, installed=HAS_TORCH)
    assert "JAX " in proc.stdout and "on CPU" in proc.stdout
    assert "VanillaRNN fused path: lax.scan with a custom VJP" in proc.stdout
    assert "cost vs one train step" in proc.stdout


def test_vector_width_ab(capsys, monkeypatch):
    # The A/B of the step kernels' widths, where the build has both.
    import vector_widths
    from keras_vrnn import native

    if native.choose_isa(native.cpu_features()) != "avx512":
        pytest.skip(f"no AVX-512 on this CPU ({native.cpu_model()})")
    monkeypatch.setattr(vector_widths, "SIZES", [(4, 6, 3, 20)])
    vector_widths.main(["--rounds", "2"])
    printed = capsys.readouterr().out
    for op in ("forward", "backward"):
        assert re.search(rf"\| \(4, 6, 3, 20\) \| {op} \| [\d.]+ \| [\d.]+ \| \*\*[\d.]+x\*\* \|",
                         printed), printed
