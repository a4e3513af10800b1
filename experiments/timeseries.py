"""Time-series forecasting: VanillaRNN -> Dense(horizon).

Forecasts the next `horizon` values of a univariate series from the last
`window` values, and compares the test error, in the series' original units,
with two naive baselines.

    python -m experiments.timeseries                  # sunspots, < 1 minute
    python -m experiments.timeseries --series co2
    python -m experiments.timeseries --csv my.csv --column load --period 24
    python -m experiments.timeseries --help           # every setting

Data (`experiments.data`): "sunspots" (yearly, 309 values, period 11) or
"co2" (weekly, 2284 values, period 52) from statsmodels, or one column of a
CSV file (`--csv PATH --column NAME`; `--period` sets the seasonal period of
the seasonal-naive baseline, which is left out for a CSV without one). The
series is split by time into train / validation / test (`series_splits`: no
target of one split is a target of another, no future value is an input; the
first windows of validation and test take their inputs from the end of the
previous split, which is known past). A `Standardizer` fitted on the training
part only scales inputs and targets for the network.

Metrics (results.json and the final printout), in original units, on the test
split (and validation): MSE and MAE of

- the model (the best checkpoint on validation loss),
- persistence: the last observed value, repeated for every horizon step,
- seasonal naive: the value one season (`period`) before each target.

Training: an epoch is one pass over the training windows in a seeded
random order (a new order each epoch), in `len(train) // batch_size` whole
batches (the few windows left over differ from epoch to epoch).
`--strategy mirrored|multi-worker` trains data-parallel (`--batch_size` is
the global batch); an interrupted run resumes when started again with the
same `--run_name`; `--init_from` starts from the weights of a saved model;
a run whose loss or gradients become NaN/inf stops with status "diverged"
(exit 3). See `experiments.runner`.

Run dir (see `experiments.runner`): config.json, results.json, model.keras,
scaler.json, history.json, logs/ (TensorBoard, gradient norms),
plots/loss_curves.png, plots/forecast_vs_truth.png (test split),
plots/gradient_heatmap.png and plots/gradient_norms_vs_steps_back.png.
"""

import dataclasses
from typing import ClassVar, Optional

import numpy as np

from experiments import data
from experiments import runner
from experiments.runner import option

BUILTIN_SERIES = ("sunspots", "co2")


ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")


@dataclasses.dataclass
class Config(runner.TrainingConfig):
    """Time-series forecasting with a VanillaRNN (sunspots, co2 or a CSV)."""

    experiment: ClassVar[str] = "timeseries"

    # --- data -------------------------------------------------------------
    series: str = option(
        "sunspots", "Built-in series (ignored with --csv).", choices=BUILTIN_SERIES
    )
    # A CSV file with a header row; replaces --series.
    csv: Optional[str] = option(
        None, "CSV file to read the series from, instead of --series (default: none)."
    )
    # Needed when the CSV has several numeric columns.
    column: Optional[str] = option(
        None, "Column of the CSV (default: its only numeric column)."
    )
    # Default: 11 for sunspots, 52 for co2; none (no baseline) for a CSV.
    period: Optional[int] = option(
        None,
        "Seasonal period in rows, for the seasonal-naive baseline (default: "
        "11 for sunspots, 52 for co2, none (no such baseline) for a CSV).",
    )
    # Differences make a trending series (co2) stationary: the network then
    # forecasts the change from the last observed value.
    difference: bool = option(
        True, "Model first differences (forecast = last value + predicted changes)."
    )
    window: int = option(24, "Past values the model sees (BPTT steps).")
    horizon: int = option(1, "Future values to forecast.")
    # The test fraction is what remains: 1 - validation - train.
    train_fraction: float = option(
        0.7, "Fraction of the series (its start) for training."
    )
    validation_fraction: float = option(
        0.15, "Fraction after the training part for validation (rest: test)."
    )

    # --- model and training -------------------------------------------------
    hidden: int = option(32, "Units of the VanillaRNN layer.")
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
    batch_size: int = option(
        32, "Windows per training batch (global: split across replicas)."
    )
    epochs: int = option(20, "Number of epochs.")
    learning_rate: float = option(3e-3, "Learning rate of the optimizer.")
    optimizer: str = option(
        "adam", "Optimizer.", choices=("adam", "sgd", "rmsprop")
    )
    clipnorm: float = option(
        1.0, "Global gradient-norm clipping threshold (0: off)."
    )
    # Few batches per epoch here (6 for sunspots): measure more often.
    grad_every_n_batches: int = option(
        10, "Measure per-timestep BPTT gradient norms every N training batches."
    )

    def validate(self):
        super().validate()
        runner.check_choice("series", self.series, BUILTIN_SERIES)
        if self.csv is not None and not self.csv:
            raise ValueError(
                "Received: csv=''. Expected the path of a CSV file, or no "
                "--csv for a built-in series."
            )
        if self.column is not None and not self.column:
            raise ValueError(
                "Received: column=''. Expected a column name, e.g. --column "
                "value."
            )
        if self.period is not None:
            runner.check_positive_int("period", self.period, example=12)
        runner.check_positive_int("window", self.window, example=24)
        runner.check_positive_int("horizon", self.horizon, example=1)
        runner.check_fraction("train_fraction", self.train_fraction)
        runner.check_fraction("validation_fraction", self.validation_fraction)
        if self.train_fraction + self.validation_fraction >= 1.0:
            raise ValueError(
                f"Received: train_fraction={self.train_fraction}, "
                f"validation_fraction={self.validation_fraction}. Expected a "
                f"sum below 1 (the rest is the test split), e.g. 0.7 and 0.15."
            )
        runner.check_positive_int("hidden", self.hidden, example=32)
        runner.check_choice("activation", self.activation, ACTIVATIONS)
        if self.recurrent_gain is not None:
            runner.check_positive("recurrent_gain", self.recurrent_gain)
        runner.check_positive_int("batch_size", self.batch_size, example=32)
        runner.check_positive_int("epochs", self.epochs, example=20)
        runner.check_positive("learning_rate", self.learning_rate)
        runner.check_choice("optimizer", self.optimizer, ("adam", "sgd", "rmsprop"))
        runner.check_non_negative("clipnorm", self.clipnorm, "0 turns clipping off")

    @property
    def fractions(self):
        test = 1.0 - self.train_fraction - self.validation_fraction
        return (self.train_fraction, self.validation_fraction, test)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def prepare_data(config):
    """Loads, splits, windows and scales the series (pure NumPy, no TF).

    With `config.difference` the network works on the first differences
    `d[i] = values[i + 1] - values[i]` (inputs and targets), and its forecasts
    are summed back onto the last observed value; otherwise on the values.

    Returns:
        Dict with `values` (original units), `meta`, `scaler` (fitted on the
        training part of the modelled series only) and, per split name,
        a dict with `x`, `y` (scaled, float32: the network's inputs and
        targets), `index` (`(N, horizon)` positions of the targets in
        `values`), `truth` (`values[index]`) and `origin` (`(N,)`, the last
        value observed at forecast time, `values[index[:, 0] - 1]`).

    Raises:
        DataError: unknown file or column, non-numeric or all-missing
            column, or a series too short for the window and fractions.
    """
    source = config.csv if config.csv is not None else config.series
    values, meta = data.load_series(source, column=config.column, period=config.period)
    modelled = np.diff(values) if config.difference else values
    shift = 1 if config.difference else 0  # modelled[i] ends at values[i + shift]
    fractions = config.fractions
    windows = data.series_splits(
        modelled, config.window, config.horizon, fractions, with_indices=True
    )
    train_slice = data.split_by_time(len(modelled), fractions)[0]
    scaler = data.Standardizer().fit(modelled[train_slice])
    splits = {}
    for name, (x, y, index) in windows.items():
        index = index + shift
        splits[name] = {
            "x": scaler.transform(x).astype("float32"),
            "y": scaler.transform(y).astype("float32"),
            "index": index,
            "truth": values[index],
            "origin": values[index[:, 0] - 1],
        }
    meta = dict(meta)
    meta.update({f"{name}_windows": len(s["x"]) for name, s in splits.items()})
    meta["modelled"] = "first differences" if config.difference else "values"
    return {"values": values, "meta": meta, "scaler": scaler, "splits": splits}


def to_levels(prediction, split, scaler, difference):
    """Network outputs (scaled) -> forecasts in original units, `(N, horizon)`."""
    prediction = scaler.inverse_transform(np.asarray(prediction, dtype=np.float64))
    if difference:
        return split["origin"][:, None] + np.cumsum(prediction, axis=1)
    return prediction


def baseline_forecasts(values, split, horizon, period):
    """Persistence and seasonal-naive forecasts in original units.

    Returns:
        `{"persistence": array, "seasonal_naive": array or None}` and a note
        explaining a missing seasonal-naive forecast (or None).
    """
    last_observed = split["origin"][:, None]  # a window of one value
    forecasts = {"persistence": data.persistence_forecast(last_observed, horizon)}
    note = None
    if period is None:
        forecasts["seasonal_naive"] = None
        note = "no seasonal period (pass --period) for this series"
    else:
        try:
            forecasts["seasonal_naive"] = data.seasonal_naive_forecast(
                values, split["index"], period
            )
        except data.DataError as err:
            forecasts["seasonal_naive"] = None
            note = str(err)
    return forecasts, note


def _metrics(truth, forecast):
    if forecast is None:
        return None
    return {"mse": data.mse(truth, forecast), "mae": data.mae(truth, forecast)}


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_model(config):
    """Input (window, 1) -> VanillaRNN(hidden) -> Dense(horizon)."""
    import keras

    import keras_vrnn

    recurrent = "orthogonal"
    if config.recurrent_gain is not None:
        recurrent = keras_vrnn.initializers.ScaledOrthogonal(
            gain=config.recurrent_gain, seed=config.seed
        )
    return keras.Sequential(
        [
            keras.Input((config.window, 1), name="past"),
            keras_vrnn.VanillaRNN(
                config.hidden,
                activation=config.activation,
                recurrent_initializer=recurrent,
                name="rnn",
            ),
            keras.layers.Dense(config.horizon, name="forecast"),
        ],
        name="forecaster",
    )


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


def plot_forecast(png, target_index, truth, forecasts, title, ylabel):
    """Test-split truth and the 1-step-ahead (first horizon step) forecasts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.add_subplot()
    t = target_index[:, 0]
    ax.plot(t, truth[:, 0], "k-", lw=1.8, label="truth")
    styles = {"model": "C0-", "persistence": "C1--", "seasonal naive": "C2:"}
    for label, forecast in forecasts.items():
        if forecast is not None:
            ax.plot(t, forecast[:, 0], styles.get(label, "-"), lw=1.3, label=label)
    ax.set_xlabel("time step (position in the series)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100)
    return png


# ---------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------


def train_and_evaluate(config, workdir):
    """Trains the forecaster, evaluates it and the baselines; writes the run dir.

    Returns:
        The results dict (also saved as results.json), with `"status"`:
        "ok", or "diverged" (then without test metrics, see the runner).
    """
    prepared = prepare_data(config)  # DataError here: exit 2, nothing trained
    values, meta, scaler = prepared["values"], prepared["meta"], prepared["scaler"]
    splits = prepared["splits"]
    x_train, y_train = splits["train"]["x"], splits["train"]["y"]
    x_val, y_val = splits["validation"]["x"], splits["validation"]["y"]
    steps_per_epoch = len(x_train) // config.batch_size
    if steps_per_epoch < 1:
        raise data.DataError(
            f"Received: {len(x_train)} training windows with batch_size="
            f"{config.batch_size}. Expected at least one whole batch; use "
            f"--batch_size {len(x_train)} or less, or a longer series."
        )

    strategy = runner.make_strategy(config.strategy)  # first TensorFlow work
    runner.check_global_batch(config.batch_size, strategy)
    val_batch = runner.eval_batch_size(len(x_val), strategy, config.batch_size)
    runner.set_seed(config.seed)
    with strategy.scope():
        model = build_model(config)
        optimizer = runner.clip_global_gradient(make_optimizer(config))
        model.compile(optimizer=optimizer, loss="mse", metrics=["mae"])
    if config.init_from is not None:
        runner.load_initial_weights(model, config.init_from)
    (workdir / "scaler.json").write_text(scaler.to_json() + "\n", encoding="utf-8")
    print(
        f"Series: {meta['name']} ({meta['column']}), {meta['n']} values, "
        f"modelling its {meta['modelled']}; windows train/validation/test = "
        f"{meta['train_windows']}/{meta['validation_windows']}/"
        f"{meta['test_windows']} (window {config.window}, horizon "
        f"{config.horizon}); {strategy.num_replicas_in_sync} replica(s)."
    )

    rng = np.random.default_rng(config.seed)
    grad_rows = rng.choice(len(x_train), min(config.batch_size, len(x_train)), False)
    callbacks, first_epoch, train_time = runner.fit_resumable(
        model,
        workdir,
        config,
        (x_train, y_train),
        (x_val, y_val),
        steps_per_epoch=steps_per_epoch,
        validation_batch_size=val_batch,
        grad_rows=grad_rows,
        whole_passes=True,
    )
    history = runner.load_history(workdir)
    results = {
        "experiment": Config.experiment,
        "status": runner.STATUS_OK,
        "data": {**meta, "scaler": {"mean": scaler.mean, "std": scaler.std}},
        "units": f"original units of {meta['column']!r}",
        "run": {
            "strategy": config.strategy,
            "replicas": strategy.num_replicas_in_sync,
            "resumed_from_epoch": first_epoch or None,
            "init_from": config.init_from,
        },
    }
    plots = runner.plots_dir(workdir)
    title = f"VanillaRNN on {meta['name']}"
    diverged = runner.divergence(callbacks)
    if diverged is not None:
        return _diverged(workdir, results, diverged, history, train_time, title)

    runner.restore_best_weights(model, workdir)  # report the best epoch
    # One predict call for both splits (one trace instead of two).
    parts = ("validation", "test")
    stacked = np.concatenate([splits[name]["x"] for name in parts])
    outputs = model.predict(stacked, batch_size=1024, verbose=0)
    offset = 0
    for name in parts:
        split = splits[name]
        n = len(split["x"])
        prediction = to_levels(
            outputs[offset : offset + n], split, scaler, config.difference
        )
        offset += n
        forecasts, note = baseline_forecasts(
            values, split, config.horizon, meta["period"]
        )
        results[name] = {
            "model": _metrics(split["truth"], prediction),
            "persistence": _metrics(split["truth"], forecasts["persistence"]),
            "seasonal_naive": _metrics(split["truth"], forecasts["seasonal_naive"]),
        }
        if note:
            results[name]["seasonal_naive_note"] = note
    test_forecasts = {
        "model": prediction,
        "persistence": forecasts["persistence"],
        "seasonal naive": forecasts["seasonal_naive"],
    }
    results.update(
        best_epoch=runner.best_epoch(history),
        epochs=len(history.get("loss", [])),
        history=history,
        train_time_s=train_time,
    )

    runner.plot_loss_curves(
        history, plots / "loss_curves.png", ylabel="MSE (standardised units)",
        title=title,
    )
    plot_forecast(
        plots / "forecast_vs_truth.png",
        splits["test"]["index"],
        splits["test"]["truth"],
        test_forecasts,
        title=f"{meta['name']}: test split, 1-step-ahead forecasts",
        ylabel=meta["column"],
    )
    runner.plot_gradient_norms(workdir)
    runner.save_results(workdir, results)
    _print_summary(results, meta)
    return results


def _diverged(workdir, results, diverged, history, train_time, title):
    """results.json of a run that diverged: where, and what is kept."""
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
    runner.plot_loss_curves(
        history, runner.plots_dir(workdir) / "loss_curves.png",
        ylabel="MSE (standardised units)", title=f"{title} (diverged)",
    )
    runner.plot_gradient_norms(workdir)
    runner.save_results(workdir, results)
    return results


def _print_summary(results, meta):
    rows = []
    test = results["test"]
    for label, key in (
        ("model", "model"),
        ("persistence", "persistence"),
        ("seasonal naive", "seasonal_naive"),
    ):
        m = test[key]
        rows.append(
            (label, "n/a", "n/a") if m is None else (
                label, f"{m['mse']:.4g}", f"{m['mae']:.4g}"
            )
        )
    print()
    print(
        f"Best epoch {results['best_epoch']} of {results['epochs']}, "
        f"trained in {results['train_time_s']:.0f} s."
    )
    print(
        f"Test split ({meta['test_windows']} forecasts), "
        f"{results['units']}:"
    )
    print("\n".join(runner.format_table(rows, ("", "MSE", "MAE"))))
    if test.get("seasonal_naive_note"):
        print(f"(seasonal naive: {test['seasonal_naive_note']})")


def main(argv=None):
    return runner.run_main(train_and_evaluate, Config, argv)


if __name__ == "__main__":
    main()
