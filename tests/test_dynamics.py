"""Tests for experiments/dynamics.py: theory and lambda_1 checks on a linear
RNN, the derivative statistics, model reuse, and a tiny end-to-end sweep."""

import json
import os

import numpy as np
import pytest

from experiments import dynamics


def _settings(**overrides):
    # One batch shape (8, T, 1) everywhere: one XLA compilation per model.
    values = dict(units=8, batch_size=8, train_steps=0, eval_samples=8, seed=0)
    config = dynamics.Config(**{**values, **overrides})
    return config.fixed_settings()


@pytest.mark.parametrize("gain", [0.9, 1.1])
def test_linear_rnn_factor_matches_spectral_radius(gain):
    # Linear activation, W_hh = gain * orthogonal, loss at the last step
    # only: ||dL/dh_t|| = gain^(T-1-t) ||dL/dh_{T-1}|| exactly.
    s = _settings()
    x, y = dynamics.make_task(8, 40, seed=1)
    model = dynamics.build_model("linear", 40, s["units"], s["learning_rate"], s["clipnorm"])
    dynamics.initialize(model, gain, seed=0, learning_rate=1e-3)
    metrics, profiles = dynamics.measure(model, x, y, "linear")
    assert metrics["spectral_radius"] == pytest.approx(gain, rel=1e-6)
    assert metrics["mean_abs_dact"] == 1.0 and metrics["theory"] == pytest.approx(gain, rel=1e-6)
    assert metrics["factor"] == pytest.approx(metrics["theory"], rel=0.05)
    assert metrics["factor"] == pytest.approx(gain, rel=1e-3)  # in fact exact
    assert metrics["jacobian_factor"] == pytest.approx(gain, rel=1e-3)
    # Every Jacobian is gain * Q^T: every direction grows by exactly gain.
    assert metrics["lyapunov"] == pytest.approx(np.log(gain), abs=1e-6)
    ratios = profiles["mean_norms"][:-1] / profiles["mean_norms"][1:]
    np.testing.assert_allclose(ratios, gain, rtol=1e-3)


def test_lyapunov_is_measured_on_the_eval_sequences(tmp_path):
    # NumPy reference: lambda_1 of the tanh trajectory on the eval batch,
    # one random vector pushed through J_t = diag(1 - h_t^2) U^T per sample.
    s = _settings()
    params = {"activation": "tanh", "gain": 1.5, "T": 30}
    row = dynamics.run_config(params, str(tmp_path), s)
    model = dynamics.build_model("tanh", 30, s["units"], s["learning_rate"], s["clipnorm"])
    w, u, b = (np.asarray(v, np.float64) for v in model.get_layer("rnn").get_weights())
    x, _ = dynamics.make_task(s["eval_samples"], 30, seed=s["seed"] + 1)
    h, v = np.zeros((x.shape[0], 8)), np.ones((x.shape[0], 8)) / np.sqrt(8)
    total = np.zeros(x.shape[0])
    for t in range(30):
        h = np.tanh(x[:, t].astype(np.float64) @ w + h @ u + b)
        v = (1 - h**2) * (v @ u)  # row vectors: v J_t^T
        total += np.log(np.linalg.norm(v, axis=1))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    # A different start vector: equal up to the alignment transient.
    assert row["init_lyapunov"] == pytest.approx(np.mean(total / 30), abs=0.03)
    assert row["init_lyapunov"] < np.log(1.5)  # saturation: below log(gain)


def test_activation_derivative_stats():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 2))
    w = rng.standard_normal((2, 3))
    u = 0.5 * np.linalg.qr(rng.standard_normal((3, 3)))[0]
    assert dynamics.activation_derivative_stats(x, w, u, None, "linear") == (1.0, 1.0)
    # Reference loop.
    h = np.zeros((5, 3))
    ds = {"tanh": [], "relu": [], "sigmoid": []}
    for act in ds:
        h = np.zeros((5, 3))
        for t in range(7):
            z = x[:, t] @ w + h @ u
            if act == "tanh":
                h = np.tanh(z)
                ds[act].append(1 - h**2)
            elif act == "relu":
                h = np.maximum(z, 0)
                ds[act].append((z > 0).astype(float))
            else:
                h = 1 / (1 + np.exp(-z))
                ds[act].append(h * (1 - h))
        d = np.stack(ds[act])
        mean_abs, rms = dynamics.activation_derivative_stats(x, w, u, None, act)
        assert mean_abs == pytest.approx(np.abs(d).mean())
        assert rms == pytest.approx(np.sqrt((d**2).mean()))


def test_reused_model_gives_the_same_results(tmp_path):
    # What makes --workers 1 and --workers 2 agree: a cached model re-set for
    # a configuration is in the state of a freshly built one.
    s = _settings(train_steps=4, steps_per_epoch=2, grad_every_n_batches=100)
    params = {"activation": "tanh", "gain": 1.25, "T": 12}
    dynamics.build_model.cache_clear()
    os.makedirs(tmp_path / "a")
    fresh = dynamics.run_config(params, str(tmp_path / "a"), s)
    # The cached model now holds trained weights and Adam moments.
    assert dynamics.build_model.cache_info().currsize == 1
    os.makedirs(tmp_path / "b")
    reused = dynamics.run_config(params, str(tmp_path / "b"), s)
    assert dynamics.build_model.cache_info().hits >= 1
    for key in ("init_factor", "trained_factor", "final_train_loss", "trained_spectral_radius",
                "init_lyapunov", "trained_lyapunov"):
        assert reused[key] == pytest.approx(fresh[key], rel=1e-5), key


def _png_ok(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    argv = [
        "--gains", "0.9,1000", "--activations", "linear", "--lengths", "40",
        "--units", "4", "--batch_size", "8", "--train_steps", "4",
        "--steps_per_epoch", "2", "--eval_samples", "8",
        # Big enough that the linear RNN blows up within a few steps.
        "--learning_rate", "1",
        "--grad_every_n_batches", "2", "--workdir_root", str(tmp_path),
        "--run_name", "tiny",
    ]
    workdir, results = dynamics.main(argv)
    assert workdir == tmp_path / "dynamics" / "tiny"
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["counts"] == {
        "ok": 0, "diverged": 2, "crashed": 0, "skipped": 0
    }
    rows = {r["config_id"]: r for r in on_disk["rows"]}
    assert set(rows) == {"linear_g0.9_T40", "linear_g1000_T40"}
    # Linear, gain 1000, T = 40: 1000^39 overflows float32 at initialisation.
    blown = rows["linear_g1000_T40"]
    assert blown["status"] == "diverged" and blown["diverged_step"] == 0
    assert blown["diverged_phase"] == "init" and blown["init_factor"] is None
    assert blown["init_jacobian_factor"] == pytest.approx(1000, rel=1e-3)
    assert blown["init_theory"] == pytest.approx(1000, rel=1e-6)
    # lambda_1 from the float64 trajectory: finite where float32 overflowed.
    assert blown["init_lyapunov"] == pytest.approx(np.log(1000), abs=1e-6)
    # Linear, gain 0.9, learning rate 1: measured at init, then diverges
    # during training (recorded with its step, not a crash).
    trained = rows["linear_g0.9_T40"]
    assert trained["status"] == "diverged" and trained["diverged_phase"] == "train"
    assert 1 <= trained["diverged_step"] <= 4
    assert trained["init_factor"] == pytest.approx(0.9, rel=1e-3)
    assert trained["init_lyapunov"] == pytest.approx(np.log(0.9), abs=1e-6)
    for key in ("init_theory", "init_theory_rms", "init_horizon", "init_mean_abs_dact",
                "init_spectral_radius", "target_variance"):
        assert np.isfinite(trained[key]), key
    summary = on_disk["summary"][0]
    assert summary["activation"] == "linear" and len(summary["diverged"]) == 2
    assert summary["init_theory_median_rel_err"] < 1e-3
    # log(factor) = lambda_1 = log(g) for the linear RNN; exp(lambda_1) = 1 at g = 1.
    assert abs(summary["init_log_factor_minus_lyapunov_median"]) < 1e-3
    assert summary["init_lyapunov_crossing_gain"] == pytest.approx(1.0, rel=1e-6)
    md = (workdir / "results.md").read_text()
    assert "## T = 40, at initialisation" in md and "overflow@0 (jac 1e+03)" in md
    assert "| 0.9 | 0.9 / 0.9 ‖ -0.105 / -0.105 |" in md and "diverged@" in md
    assert "overflow@0 (jac 1e+03) ‖ – / 6.91" in md
    header = next(line for line in md.splitlines() if line.startswith("| config |"))
    assert "| init_log_factor | init_lyapunov |" in header
    assert "| trained_log_factor | trained_lyapunov |" in header
    summary_header = next(line for line in md.splitlines() if line.startswith("| T |"))
    for key in ("init_lyapunov_crossing_gain", "init_log_factor_minus_lyapunov_median",
                "trained_log_factor_minus_lyapunov_median"):
        assert f"| {key} |" in summary_header
    for name in ("norms_vs_steps_back_T40.png", "factor_vs_gain.png"):
        assert _png_ok(workdir / "plots" / name)
    config = json.loads((workdir / "config.json").read_text())
    assert config["gains"] == "0.9,1000"
    cfg_dir = workdir / "configs" / "linear_g0.9_T40"
    assert (cfg_dir / "result.json").exists() and (cfg_dir / "norms.npz").exists()
    assert (cfg_dir / "logs" / "gradient_norms.npz").exists()
    assert any(p.name.startswith("events.out") for p in (cfg_dir / "logs" / "train").iterdir())

    # Same run name again: resumed, nothing rerun.
    _, again = dynamics.main(argv)
    assert again["counts"]["skipped"] == 2
    assert [(r["config_id"], r["status"], r.get("init_factor")) for r in again["rows"]] == [
        (r["config_id"], r["status"], r.get("init_factor")) for r in on_disk["rows"]
    ]
    # Other settings under the same name: refused with one line, exit 2.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        dynamics.main(argv + ["--units", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Received: run_name='tiny'") and "units: 4 there, 5 now" in err


def test_rerun_that_leaves_out_configurations_is_refused(tmp_path, capsys):
    """The same --run_name with fewer gains would report a subset while the
    others stay on disk: refused (exit 2) and nothing in the dir changes;
    more gains resume, and the report covers every configuration."""
    argv = [
        "--activations", "linear", "--lengths", "10", "--units", "4",
        "--batch_size", "8", "--train_steps", "0", "--eval_samples", "8",
        "--workdir_root", str(tmp_path), "--run_name", "shrink", "--verbose", "0",
    ]
    workdir, first = dynamics.main(argv + ["--gains", "0.9,1.1"])
    assert [r["config_id"] for r in first["rows"]] == [
        "linear_g0.9_T10", "linear_g1.1_T10"
    ]

    def snapshot():
        return {
            str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(workdir.rglob("*")) if p.is_file()
        }

    before = snapshot()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        dynamics.main(argv + ["--gains", "0.9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Received: gains='0.9'")
    assert "linear_g1.1_T10" in err and "earlier: gains='0.9,1.1'" in err
    assert "--run_name" in err
    assert snapshot() == before  # results.json and config.json as they were

    # More gains: the finished ones are reused, the report has all three.
    _, grown = dynamics.main(argv + ["--gains", "0.9,1.1,1.2"])
    assert [r["config_id"] for r in grown["rows"]] == [
        "linear_g0.9_T10", "linear_g1.1_T10", "linear_g1.2_T10"
    ]
    assert grown["counts"]["skipped"] == 2
    on_disk = json.loads((workdir / "results.json").read_text())
    assert len(on_disk["rows"]) == 3
    assert json.loads((workdir / "config.json").read_text())["gains"] == "0.9,1.1,1.2"


def test_bad_flags_exit_2(tmp_path, capsys):
    for flags, fragment in (
        (["--gains", "0.5,-1"], "Expected positive gains"),
        (["--activations", "tanh,softplus"], "Expected items from"),
        (["--lengths", "50,50"], "twice"),
        (["--workers", "0"], "workers=0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            dynamics.main(flags + ["--workdir_root", str(tmp_path)])
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err
    assert not (tmp_path / "dynamics").exists() or not any((tmp_path / "dynamics").iterdir())
