"""End-to-end tests of experiments/text.py (tiny sizes) and its CLI errors."""

import json
import math

import numpy as np
import pytest

from experiments import common
from experiments import training
from experiments import text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TINY = [
    "--seq_len", "12", "--hidden", "8", "--embed_dim", "4", "--batch_size", "8",
    "--epochs", "2", "--steps_per_epoch", "3", "--sample_length", "12",
    "--grad_every_n_batches", "1000", "--verbose", "0",
]


def _corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    lines = [f"the cat sat on mat number {i % 7}.\n" for i in range(60)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory):
    """One tiny run on the default corpus (its first 4000 characters)."""
    root = tmp_path_factory.mktemp("runs")
    argv = TINY + [
        "--workdir_root", str(root), "--run_name", "first", "--max_chars", "3000",
    ]
    workdir, results = text.main(argv)
    return root, workdir, results


def test_results_json(shakespeare_run):
    _, workdir, results = shakespeare_run
    saved = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
    assert saved["experiment"] == "text"
    for split in ("train", "validation"):
        nats, bpc = saved[split]["loss_nats"], saved[split]["bpc"]
        assert math.isfinite(nats) and math.isfinite(bpc) and bpc > 0
        assert bpc == pytest.approx(nats / math.log(2))
    b = saved["baselines"]
    vocab_size = saved["data"]["vocab_size"]
    assert b["uniform_bpc"] == pytest.approx(math.log2(vocab_size))
    assert 0 < b["unigram_bpc"] <= b["uniform_bpc"]
    assert 0 < b["unigram_bpc_train"] <= b["uniform_bpc"]
    assert saved["data"]["chars_used"] == 3000
    assert saved["data"]["source"].startswith("Shakespeare")
    sample = saved["sample"]["text"]
    assert sample.startswith("ROMEO:\n") and len(sample) == len("ROMEO:\n") + 12
    assert saved["epochs"] == 2 and saved["best_epoch"] in (1, 2)
    assert len(saved["history"]["val_loss"]) == 2
    assert saved["validation"] == results["validation"]


def test_config_round_trip(shakespeare_run):
    root, workdir, _ = shakespeare_run
    config = common.load_config(text.Config, workdir)
    assert config == text.Config(
        seq_len=12, hidden=8, embed_dim=4, batch_size=8, epochs=2,
        steps_per_epoch=3, sample_length=12, grad_every_n_batches=1000, verbose=0,
        workdir_root=str(root), run_name="first", max_chars=3000,
    )
    assert workdir == root / "text" / "first"


def test_checkpoint_loads_predicts_and_samples_reproducibly(shakespeare_run):
    _, workdir, results = shakespeare_run
    model = training.load_best_model(workdir)
    vocab_size = results["data"]["vocab_size"]
    logits = np.asarray(model.predict(np.zeros((2, 5), "int32"), verbose=0))
    assert logits.shape == (2, 5, vocab_size)
    vocab = text.data.CharVocab.from_json((workdir / "vocab.json").read_text())
    assert vocab.size == vocab_size
    # The saved best model, the same seed: the same sample as the run's.
    again = text.sample(model, vocab, "ROMEO:\n", 12, temperature=0.8, seed=0)
    assert again == results["sample"]["text"]
    assert text.sample(model, vocab, "A", 0) == "A"


def test_plots_and_logs(shakespeare_run):
    _, workdir, _ = shakespeare_run
    for name in ("loss_curves", "gradient_heatmap", "gradient_norms_vs_steps_back"):
        png = workdir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
    for sub in ("train", "validation"):
        events = list((workdir / "logs" / sub).glob("events.out.tfevents.*"))
        assert events, sub
    assert (workdir / "logs" / "gradient_norms.npz").exists()


def test_text_file_data_and_one_hot_model(tmp_path):
    """--text_file and --embed_dim 0 (one-hot), without training."""
    corpus = _corpus(tmp_path)
    config = text.Config(text_file=str(corpus), seq_len=12, validation_fraction=0.2,
                         sample_prompt="the", embed_dim=0, hidden=5)
    config.validate()
    prepared = text.prepare_data(config)
    vocab, info = prepared["vocab"], prepared["info"]
    raw = corpus.read_text(encoding="utf-8")
    assert info["source"] == str(corpus) and info["chars_used"] == len(raw)
    assert vocab.chars == sorted(set(raw))
    assert info["train_chars"] + info["validation_chars"] == len(raw)
    x, y = prepared["splits"]["train"]
    assert x.shape[1] == 12 and np.array_equal(x[:, 1:], y[:, :-1])
    assert vocab.decode(x[0]) == raw[:12]
    xv, _ = prepared["splits"]["validation"]
    assert vocab.decode(xv[0]) == raw[info["train_chars"]:][:12]  # the tail
    b = prepared["baselines"]
    assert b["uniform_bpc"] == pytest.approx(math.log2(vocab.size))
    model = text.build_model(config, vocab.size)
    assert model.get_layer("embed").trainable is False  # fixed one-hot
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("embed").embeddings), np.eye(vocab.size))
    assert model(x[:2]).shape == (2, 12, vocab.size)
    config.max_chars = 100
    assert text.prepare_data(config)["info"]["chars_used"] == 100


def test_default_prompt_falls_back_to_the_text(tmp_path):
    """A text without a character of the default prompt ("ROMEO:\n": no
    upper case here) samples from the start of its first line; the run does
    not fail."""
    corpus = _corpus(tmp_path)  # "the cat sat on mat number 0.\n" ...
    assert not set(text.DEFAULT_PROMPT) <= set(corpus.read_text(encoding="utf-8"))
    config = text.Config(text_file=str(corpus), seq_len=12)
    prepared = text.prepare_data(config)
    assert prepared["prompt"] == "the cat sat on mat number 0.\n"
    assert "'ROMEO:\\n'" in prepared["prompt_note"]
    # The first non-blank line, cut to FALLBACK_PROMPT_CHARS characters.
    assert text.fallback_prompt("\n\n  ab\ncd") == "ab\n"
    assert text.fallback_prompt("x" * 100) == "x" * text.FALLBACK_PROMPT_CHARS
    assert text.fallback_prompt(" \n \n") == " \n"

    workdir, results = text.main(TINY + [
        "--text_file", str(corpus), "--workdir_root", str(tmp_path / "runs"),
    ])
    saved = json.loads((workdir / "results.json").read_text(encoding="utf-8"))
    sample = saved["sample"]
    assert sample["prompt"] == "the cat sat on mat number 0.\n"
    assert "do not occur in the text" in sample["prompt_note"]
    assert sample["text"].startswith(sample["prompt"])
    assert len(sample["text"]) == len(sample["prompt"]) + 12
    # The config keeps what was asked for; the default prompt is not an error.
    assert json.loads((workdir / "config.json").read_text())["sample_prompt"] == (
        text.DEFAULT_PROMPT
    )


def test_existing_run_name_exits_2(shakespeare_run, capsys):
    root, first, _ = shakespeare_run
    before = (first / "results.json").read_bytes()
    with pytest.raises(SystemExit) as excinfo:
        text.main(TINY + ["--workdir_root", str(root), "--run_name", "first"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err
    assert (first / "results.json").read_bytes() == before


# ---------------------------------------------------------------------------
# Command-line errors: exit 2, one line "error: ...", no traceback, fast.
# ---------------------------------------------------------------------------


def test_cli_errors(ref, tmp_path):
    """The documented CLI errors, each in its own `python -m experiments.text`
    (run concurrently: they exit before TensorFlow is imported)."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "short.txt").write_text("to be or not", encoding="utf-8")
    root = tmp_path / "runs"
    (root / "text" / "taken").mkdir(parents=True)
    cases = {
        "missing file": (["--text_file", str(tmp_path / "nope.txt")], "no such file"),
        "empty file": (["--text_file", str(tmp_path / "empty.txt")], "0 bytes"),
        "binary file": (["--text_file", str(tmp_path / "blob.bin")], "binary"),
        "shorter than a sequence": (
            ["--text_file", str(tmp_path / "short.txt"), "--seq_len", "64"],
            "text shorter than one sequence",
        ),
        "hidden 0": (["--hidden", "0"], "hidden=0. Expected a positive integer"),
        "existing run name": (["--run_name", "taken"], "already exists"),
    }
    ref.assert_cli_errors({
        case: (["experiments.text", "--workdir_root", str(root), *args], fragment)
        for case, (args, fragment) in cases.items()
    })
    # Failed runs leave no run directory behind.
    assert sorted(p.name for p in (root / "text").iterdir()) == ["taken"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seq_len", "500"], "validation part of"),
        (["--sample_prompt", "ROMEO"], "sample_prompt='ROMEO'"),
        (["--seq_len", "-5"], "seq_len=-5. Expected a positive integer"),
        (["--embed_dim", "-1"], "embed_dim=-1"),
        (["--validation_fraction", "1.5"], "validation_fraction=1.5"),
        (["--temperature", "0"], "temperature=0.0"),
        (["--clipnorm", "-1"], "clipnorm=-1.0"),
        (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
        (["--batch_size", "ten"], "batch_size='ten'. Expected an integer"),
        (["--text_file", ""], "text_file=''"),
    ],
)
def test_more_errors_in_process(ref, tmp_path, capsys, args, fragment):
    corpus = _corpus(tmp_path)
    argv = ["--workdir_root", str(tmp_path / "runs"), "--text_file", str(corpus)]
    with pytest.raises(SystemExit) as excinfo:
        text.main(argv + args)
    assert excinfo.value.code == 2
    assert fragment in ref.error_line(capsys.readouterr().err)
    assert not list((tmp_path / "runs").glob("text/*"))
