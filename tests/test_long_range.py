"""Tests for experiments/long_range.py: the five models, a tiny end-to-end
sweep (adding + copy, a VanillaRNN and the LSTM) and the `--budget long`
preset (shrunk to seconds by flags after it)."""

import json
import math

import numpy as np
import pytest

from experiments import long_range
from experiments import tasks


def _png_ok(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_models_are_what_they_claim():
    import keras

    import keras_vrnn

    s = long_range.Config(units=5).fixed_settings()
    irnn = long_range.build_model("adding", 7, "irnn", s, seed=0)
    layer = irnn.get_layer("rnn")
    assert isinstance(layer, keras_vrnn.VanillaRNN)
    assert layer.activation is keras.activations.relu
    np.testing.assert_array_equal(layer.cell.recurrent_kernel.value.numpy(), np.eye(5))
    assert float(irnn.optimizer.learning_rate) == pytest.approx(s["irnn_learning_rate"])
    assert irnn.optimizer.global_clipnorm is None

    clip = long_range.build_model("copy", 4, "rnn_tanh_clip", s, seed=0)
    assert clip.optimizer.global_clipnorm == pytest.approx(1.0)
    assert float(clip.optimizer.learning_rate) == pytest.approx(s["learning_rate"])
    rnn = clip.get_layer("rnn")
    assert rnn.activation is keras.activations.tanh and rnn.return_sequences
    w = rnn.cell.recurrent_kernel.value.numpy()
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-5)  # orthogonal
    assert clip.output_shape == (None, 4 + 2 * s["copy_len"], s["n_symbols"] + 2)

    omega = long_range.build_model("adding", 7, "rnn_tanh_clip_omega", s, seed=0)
    assert isinstance(omega, keras_vrnn.VanishingGradientRegularizer)
    assert omega.strength == pytest.approx(s["omega_strength"]) and omega.layer == "rnn"
    assert omega.optimizer.global_clipnorm == pytest.approx(s["clipnorm"])
    assert omega.model.get_layer("rnn").activation is keras.activations.tanh

    lstm = long_range.build_model("adding", 7, "lstm", s, seed=0)
    assert isinstance(lstm.get_layer("rnn"), keras.layers.LSTM)
    assert keras_vrnn.diagnostics.rnn_layers(lstm) == []


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    argv = [
        "--adding_lengths", "6", "--copy_lengths", "3", "--models", "rnn_tanh,lstm",
        "--copy_len", "2", "--units", "4", "--batch_size", "8", "--train_steps", "2",
        "--steps_per_epoch", "2", "--validation_samples", "8", "--test_samples", "8",
        "--grad_samples", "8", "--grad_every_n_batches", "2",
        "--workdir_root", str(tmp_path), "--run_name", "tiny",
    ]
    workdir, _ = long_range.main(argv)
    results = json.loads((workdir / "results.json").read_text())
    assert results["counts"] == {"ok": 4, "diverged": 0, "crashed": 0, "skipped": 0}
    rows = {r["config_id"]: r for r in results["rows"]}
    assert set(rows) == {
        "adding_T6_rnn_tanh", "adding_T6_lstm", "copy_T3_rnn_tanh", "copy_T3_lstm"
    }
    copy_baseline = tasks.copy_memory_baseline(3, n_symbols=8, copy_len=2)
    assert results["baselines"] == {
        "adding_T6": pytest.approx(1 / 6), "copy_T3": pytest.approx(copy_baseline)
    }
    for cid, row in rows.items():
        assert math.isfinite(row["metric"]) and row["metric"] > 0, cid
        assert row["metric_ratio"] == pytest.approx(row["metric"] / row["baseline"])
        assert row["train_steps_done"] == 2 and isinstance(row["solved"], bool)
    # VanillaRNN: gradient norms logged, heat map drawn; LSTM: skipped.
    for task in ("adding_T6", "copy_T3"):
        rnn = rows[f"{task}_rnn_tanh"]
        assert rnn["gradient_logging"] == "on"
        assert 1 <= rnn["grad_horizon_end"] <= (6 if task == "adding_T6" else 3 + 4)
        assert rnn["grad_factor_end"] > 0
        assert _png_ok(workdir / "configs" / f"{task}_rnn_tanh" / rnn["heatmap"])
        lstm = rows[f"{task}_lstm"]
        assert lstm["gradient_logging"] == "skipped (no VanillaRNN layer)"
        assert "heatmap" not in lstm and "grad_factor_end" not in lstm
        assert not (workdir / "configs" / f"{task}_lstm" / "logs" / "gradient_norms.npz").exists()
        # TensorBoard training logs for every model.
        assert (workdir / "configs" / f"{task}_lstm" / "logs" / "train").is_dir()
    for name in ("metric_vs_T.png", "final_gradient_norms.png"):
        assert _png_ok(workdir / "plots" / name)
    md = (workdir / "results.md").read_text()
    assert "## Adding problem (test MSE)" in md and "| 6 | 0.1667 |" in md
    assert "## Copy memory (test cross-entropy, nats/step)" in md

    # The same run name with fewer models would leave two configurations out
    # of results.json: refused before anything in the dir changes.
    before = (workdir / "results.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        long_range.main([a if a != "rnn_tanh,lstm" else "rnn_tanh" for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Received: models='rnn_tanh'") and err.count("\n") == 1
    assert "adding_T6_lstm, copy_T3_lstm" in err
    assert (workdir / "results.json").read_bytes() == before
    assert json.loads((workdir / "config.json").read_text())["models"] == "rnn_tanh,lstm"


def test_bad_flags_exit_2(tmp_path, capsys):
    for flags, fragment in (
        (["--models", "rnn_tanh,gru"], "Expected items from"),
        (["--adding_lengths", "", "--copy_lengths", ""], "Expected at least one task"),
        (["--adding_lengths", "1"], "Expected integers >= 2"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            long_range.main(flags + ["--workdir_root", str(tmp_path)])
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_long_budget_preset(tmp_path):
    """`--budget long` sets the adding problem at T=100 with all five models;
    flags after it win (here: everything shrunk to a 2-step smoke run)."""
    argv = ["--budget", "long", "--adding_lengths", "6", "--units", "4", "--batch_size", "8",
            "--train_steps", "2", "--steps_per_epoch", "2", "--validation_samples", "8",
            "--test_samples", "8", "--grad_samples", "8", "--grad_every_n_batches", "1",
            "--workdir_root", str(tmp_path), "--run_name", "long", "--verbose", "0"]
    workdir, results = long_range.main(argv)
    config = json.loads((workdir / "config.json").read_text())
    assert config["budget"] == "long" and config["copy_lengths"] == ""
    assert config["train_steps"] == 2 and config["models"] == (
        "rnn_tanh,rnn_tanh_clip,irnn,rnn_tanh_clip_omega,lstm")
    assert results["counts"]["ok"] == 5
    rows = {r["model"]: r for r in results["rows"]}
    for model in ("rnn_tanh", "rnn_tanh_clip", "irnn", "rnn_tanh_clip_omega"):
        assert 1 <= rows[model]["grad_horizon_end"] <= 6, model
    assert "grad_horizon_end" not in rows["lstm"]
    assert _png_ok(workdir / "plots" / "gradient_norms_by_model.png")
    preset = long_range.BUDGETS["long"]
    assert preset[preset.index("--adding_lengths") + 1] == "100"
    assert int(preset[preset.index("--train_steps") + 1]) >= 2000
    assert config["omega_strength"] == 10.0
    with pytest.raises(SystemExit):
        long_range.main(["--budget", "huge", "--workdir_root", str(tmp_path)])
