"""Inspect the recurrence of a saved model: `python -m keras_vrnn.inspect`.

    python -m keras_vrnn.inspect MODEL.keras DATA.npz [--x KEY] [--y KEY]
        [--layer NAME] [--out DIR]

Prints, per vanilla RNN layer (VanillaRNN, RNN(VanillaRNNCell), SimpleRNN; `--layer`: one
key): the spectral radius and largest singular value of `W_hh`, factor and horizon of
`||dL/dh_t||` and of the last step's `||dl_T/dh_t||`, and the largest Lyapunov exponent, on
the arrays `--x` ("x") and `--y` ("y") of DATA.npz with the model's saved loss. SimpleRNN
layers are measured as VanillaRNN clones of the same config and weights (said in the
header; not inside a Bidirectional). Writes `<key>_heatmap.png` (every sample's
`||dL/dh_t||`) and `<key>_steps_back.png` (both views' means) to `--out` (default
`MODEL_inspect` beside the model), which must be new or empty. Bad input: one `error: ...`
line on stderr, nothing written, exit 2.
"""

import argparse
import os
import sys

import keras
import numpy as np

from keras_vrnn import diagnostics as diag
from keras_vrnn.callbacks import tag_prefix
from keras_vrnn.layer import VanillaRNN


def as_vanilla(model):
    """`(model, converted)`: a clone with SimpleRNN layers replaced by VanillaRNN layers of
    the same config and weights, compiled like `model`; `model` itself when it has none."""
    found = []

    def convert(layer):
        if isinstance(layer, keras.layers.SimpleRNN):
            found.append(layer.name)
            return VanillaRNN.from_config(layer.get_config())
        return layer  # shared: same weights

    clone = keras.models.clone_model(model, clone_function=convert, recursive=True)
    if not found:
        return model, []
    clone.set_weights(model.get_weights())
    clone.compile_from_config(model.get_compile_config())
    return clone, found


def inspect(model, x, y, layer=None):
    """Per-layer numbers, `{key: {name: value}}`, and the norms of both views, `{key:
    (norms, last_step_norms)}`, each `(batch, timesteps)`."""
    want, got = tuple(model.inputs[0].shape[1:]), np.shape(x)[1:]
    if len(got) != len(want) or any(w not in (None, g) for w, g in zip(want, got)):
        raise ValueError(f"x does not fit the model's input. Received: x with shape "
                         f"{np.shape(x)}. Expected (batch, *{want}) (None: any).")
    entries = [(k, rnn) for k, rnn in diag.rnn_layers(model) if layer in (None, k)]
    if not entries:
        raise ValueError(f"No vanilla RNN layer to measure. Received: --layer {layer!r}. Expected "
                         f"one of {[k for k, _ in diag.rnn_layers(model)]} (SimpleRNN layers "
                         "inside a Bidirectional are not converted).")
    views = [diag.timestep_gradient_norms(model, x, y, last_step_only=v) for v in (False, True)]
    stats, profiles = {}, {}
    for key, rnn in entries:
        stats[key] = {k: float(v) for k, v in diag.recurrent_kernel_stats(rnn).items()}
        for view, n in zip(("", "last_step_"), (v[key] for v in views)):
            stats[key][view + "factor"] = diag.fit_decay_factor(n)
            stats[key][view + "horizon"] = diag.effective_horizon(n)
        stats[key]["lyapunov_max"] = float(diag.lyapunov_exponents(model, x, layer=key)[0])
        profiles[key] = tuple(v[key] for v in views)
    return stats, profiles


def write_plots(profiles, out):
    """`<key>_heatmap.png` and `<key>_steps_back.png` per layer, in `out`."""
    from keras_vrnn import plots

    for key, (norms, last) in profiles.items():
        p = os.path.join(out, tag_prefix(key))
        plots._save(plots.heatmap_figure(norms, np.arange(len(norms)), f"||dL/dh_t||: {key}",
                                         ylabel="sample"), p + "_heatmap.png")
        plots._save(plots.steps_back_figure([norms.mean(0), last.mean(0)], [0, 1], f"Gradient "
                    f"norm vs steps back: {key}", label="0: L, 1: l_T"), p + "_steps_back.png")


def _load(args):
    try:
        model = keras.models.load_model(args.model)
    except Exception as e:
        raise ValueError(f"Cannot load the model. Received: {args.model!r} ({e}). "
                         "Expected a .keras file written by model.save.") from e
    simple = [l for l in model._flatten_layers() if isinstance(l, keras.layers.SimpleRNN)]
    if not diag.rnn_layers(model) and not simple:
        raise ValueError(f"No RNN layer in model '{model.name}'. Expected a VanillaRNN, "
                         "RNN(VanillaRNNCell) or SimpleRNN layer.")
    if not model.compiled:
        raise ValueError(f"Model '{model.name}' was saved without a loss. Expected a model "
                         "saved after model.compile(loss=...): compile it and save it again.")
    with np.load(args.data, allow_pickle=False) as data:
        missing = [k for k in (args.x, args.y) if k not in data.files]
        if missing:
            raise ValueError(f"No array {missing[0]!r} in {args.data!r}. Expected one of "
                             f"{data.files} (set --x / --y).")
        return model, data[args.x], data[args.y]


def main(argv=None):
    parser = argparse.ArgumentParser("python -m keras_vrnn.inspect", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for name, default in (("model", ...), ("data", ...), ("--x", "x"), ("--y", "y"),
                          ("--layer", None), ("--out", None)):
        parser.add_argument(name, **({} if default is ... else {"default": default}))
    args = parser.parse_args(argv)
    out = args.out or os.path.splitext(args.model)[0] + "_inspect"
    try:
        if os.path.isdir(out) and os.listdir(out) or os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"The output folder is not empty. Received: --out {out!r}. "
                             "Expected a new or empty folder.")
        model, x, y = _load(args)
        measured, converted = as_vanilla(model)
        stats, profiles = inspect(measured, x, y, args.layer)
    except Exception as e:  # one line, Keras style
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    note = f"; SimpleRNN {converted} measured as VanillaRNN (same config and weights)"
    print(f"model {args.model}, x {x.shape}, y {y.shape}" + (note if converted else ""))
    for key, values in stats.items():
        print(key + ": " + ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
    write_plots(profiles, out)
    print(f"plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
