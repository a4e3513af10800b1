"""End-to-end tests of experiments/gains.py, the recurrent gain study (tiny sizes)."""

import json
import math

import numpy as np
import pytest

from experiments import gains

TINY = [
    "--max_chars", "12000", "--seq_len", "24", "--hidden", "16", "--embed_dim", "4",
    "--batch_size", "16", "--epochs", "2", "--steps_per_epoch", "3",
    "--grad_every_n_batches", "2", "--sample_length", "8", "--verbose", "0",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    workdir, results = gains.main(TINY + ["--workdir_root", str(root), "--run_name", "s"])
    return root, workdir, results


def test_one_row_per_gain_with_the_regimes_the_gains_imply(study):
    _, _, results = study
    rows = {r["gain"]: r for r in results["rows"]}
    assert sorted(rows) == [0.5, 1.0, 3.0]
    assert all(r["status"] == "ok" and math.isfinite(r["bpc"]) for r in rows.values())
    start = {g: r["factor_start"] for g, r in rows.items()}
    # Small initial states: nearly linear, so the last step's credit changes
    # by about g per step back, tanh' < 1 pulling the large gain below g.
    assert abs(start[0.5] - 0.5) < 0.05
    assert 0.9 < start[1.0] <= 1.0
    assert 1.1 < start[3.0] < 3.0
    assert rows[0.5]["horizon_start"] < 24 == rows[3.0]["horizon_start"]
    for r in rows.values():
        # Two independent measurements of one rate: the fitted decay of the
        # BPTT norms and the QR estimate of the top Lyapunov exponent.
        assert abs(math.exp(r["lyapunov_start"]) / r["factor_start"] - 1) < 0.1, r


def test_each_gain_is_a_tensorboard_run_under_one_log_dir(study):
    from tensorboard.backend.event_processing import event_accumulator as ea

    _, workdir, results = study
    for row in results["rows"]:
        train = workdir / "configs" / row["config_id"] / "logs" / "train"
        acc = ea.EventAccumulator(str(train), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])
        for tag in ("rnn/last_step_grad_norm_decay_factor", "rnn/last_step_grad_norm_horizon",
                    "rnn/lyapunov_max"):
            assert tag in tags, (row["config_id"], sorted(tags))
    assert list(workdir.glob("events.out.tfevents.*"))  # the HParams config


def test_report_files(study):
    _, workdir, results = study
    md = (workdir / "results.md").read_text()
    assert "## Per gain" in md and "vanishing" in md and "exploding" in md
    assert (workdir / "plots" / "last_step_credit.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((workdir / "results.json").read_text())
    assert [r["config_id"] for r in on_disk["rows"]] == ["gain_0.5", "gain_1", "gain_3"]
    for row in results["rows"]:  # finished text runs keep no backup
        config_dir = workdir / "configs" / row["config_id"]
        assert (config_dir / "model.keras").exists() and not (config_dir / "backup").exists()


def test_rerun_reuses_finished_gains_and_adds_new_ones(study, capsys):
    root, workdir, first = study
    _, again = gains.main(TINY + ["--workdir_root", str(root), "--run_name", "s",
                                  "--gains", "0.5,1,3,0.8"])
    assert again["counts"]["skipped"] == 3 and len(again["rows"]) == 4
    assert [r["bpc"] for r in again["rows"][:3]] == [r["bpc"] for r in first["rows"]]
    # --verbose 0: the new gain's text run reports nothing; only where the
    # results are (the command's own two lines) is printed.
    printed = capsys.readouterr().out
    assert "Text:" not in printed and "Best epoch" not in printed and "Sample" not in printed
    assert "Resuming sweep in" in printed and "results.json" in printed


def test_a_diverging_gain_is_recorded_and_the_study_goes_on(tmp_path):
    # Linear units at g = 3 over 48 steps, no clipping: the gradients overflow
    # float32 (3^96 > 3e38) at the first step; g = 0.5 trains normally.
    _, results = gains.main(TINY + [
        "--workdir_root", str(tmp_path), "--run_name", "d", "--gains", "0.5,3",
        "--activation", "linear", "--optimizer", "sgd", "--learning_rate", "0.1",
        "--clipnorm", "0", "--seq_len", "48"])
    rows = {r["gain"]: r for r in results["rows"]}
    assert rows[0.5]["status"] == "ok"
    assert rows[3.0]["status"] == "diverged" and rows[3.0]["diverged_step"] >= 1
    assert results["counts"]["diverged"] == 1 and results["counts"]["crashed"] == 0
    assert np.isnan(rows[3.0].get("bpc", np.nan))
