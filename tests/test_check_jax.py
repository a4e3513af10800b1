"""benchmarks/check_jax.py: the JAX-backend accuracy check that runs where
only JAX is installed (an accelerator machine;
its numbers are in docs/benchmarks.md).

Its float64 reference is checked against the tests' own reference, and the
script itself runs on JAX's CPU backend in a subprocess: it passes on the
real layers and fails (exit status 1) when a layer's output is off.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import check_jax  # noqa: E402


@pytest.mark.parametrize("config", check_jax.CONFIGS, ids=str)
def test_reference_agrees_with_the_tests_reference(ref, config):
    activation, go_backwards, return_sequences = config
    p = check_jax.problem(seed=3)
    got = check_jax.reference(p, activation, go_backwards, return_sequences)
    want = ref.rnn_reference(
        p["x"], p["W"], p["U"], p["b"], p["h0"], activation, go_backwards,
        return_sequences, c=p["c"] if return_sequences else p["c_last"],
    )
    for key in ("y", "dx", "dh0", "dW", "dU", "db"):
        ref.assert_rel_close(got[key], want[key], 1e-12, key)


def _run(code, *args):
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300,
    )


def test_check_passes_on_the_jax_backend():
    proc = _run("import sys, check_jax; sys.exit(check_jax.main())")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "e-" in line]
    assert len(rows) == 3 * len(check_jax.CONFIGS)
    assert "on CPU" in proc.stdout and "matmul precision highest" in proc.stdout
    assert "OK: VanillaRNN within 1e-05 (forward) and 0.0001 (gradients)" in proc.stdout


def test_check_fails_when_an_output_is_off():
    # The fused path's output off by 1e-4 relative: over the 1e-5 tolerance.
    proc = _run(
        """
        import sys, check_jax
        check_jax.CONFIGS = check_jax.CONFIGS[:1]
        original = check_jax.layer_results
        def off(kind, *args):
            result = original(kind, *args)
            if kind == "fused":
                result["y"] = result["y"] * (1 + 1e-4)
            return result
        check_jax.layer_results = off
        sys.exit(check_jax.main())
        """
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "FAILED: over the tolerances in [('fused', 'tanh', False, True)]" in proc.stdout


def test_check_refuses_another_backend():
    proc = _run(
        "import os, sys; os.environ['KERAS_BACKEND'] = 'tensorflow'; "
        "import check_jax; sys.exit(check_jax.main())"
    )
    assert proc.returncode == 2
    assert "Received: KERAS_BACKEND='tensorflow'; run it with KERAS_BACKEND=jax." in proc.stderr
