"""Time-series forecasting: VanillaRNN -> Dense(horizon).

Forecasts the next `horizon` values of a univariate series from the last
`window` values and compares the test error, in the series' units, with two
naive baselines.

    python -m experiments.timeseries                  # sunspots, < 1 minute
    python -m experiments.timeseries --series co2
    python -m experiments.timeseries --csv my.csv --column load --period 24
    python -m experiments.timeseries --help           # every setting

Data (`experiments.data`): "sunspots" (yearly, period 11) or "co2" (weekly,
period 52) from statsmodels, or a column of a CSV file (`--period` sets the
season of the seasonal-naive baseline, left out for a CSV without one). The
series is split by time into train / validation / test; no target of one
split is a target of another and no future value is an input (validation
and test windows take their first inputs from the end of the split before,
known past). A `Standardizer` fitted on the training part scales the data.

Metrics (results.json), in original units, on the validation and test
splits: MSE and MAE of the model (best checkpoint on validation loss), of
persistence (the last observed value) and of seasonal naive (the value one
season before each target). An epoch is one pass over the training windows
in a seeded order, `len(train) // batch_size` whole batches.

`--strategy`, resuming, `--init_from` and divergence (exit 3): see
`experiments.common`. Run dir: config.json, results.json, model.keras,
scaler.json, history.json, logs/, plots/loss_curves.png,
plots/forecast_vs_truth.png (test split), plots/gradient_heatmap.png and
plots/gradient_norms_vs_steps_back.png.
"""

import dataclasses
from typing import ClassVar, Optional

import numpy as np

from experiments import common
from experiments import data
from experiments.common import option


@dataclasses.dataclass
class Config(common.TrainingConfig):
    """Time-series forecasting with a VanillaRNN (sunspots, co2 or a CSV)."""

    experiment: ClassVar[str] = "timeseries"

    series: str = option("sunspots", "Built-in series (ignored with --csv).",
                         choices=tuple(data.BUILTIN_SERIES))
    # A CSV file with a header row; replaces --series.
    csv: Optional[str] = option(
        None, "CSV file to read the series from, instead of --series (default: none).")
    # Needed when the CSV has several numeric columns.
    column: Optional[str] = option(None, "Column of the CSV (default: its only numeric column).")
    period: Optional[int] = option(
        None, "Seasonal period in rows, for the seasonal-naive baseline (default: "
        "11 for sunspots, 52 for co2, none (no such baseline) for a CSV).")
    # Differences make a trending series (co2) stationary: the network then
    # forecasts the change from the last observed value.
    difference: bool = option(
        True, "Model first differences (forecast = last value + predicted changes).")
    window: int = option(24, "Past values the model sees (BPTT steps).")
    horizon: int = option(1, "Future values to forecast.")
    # The test fraction is the rest: 1 - train - validation.
    train_fraction: float = option(0.7, "Fraction of the series (its start) for training.",
                                   below=1)
    validation_fraction: float = option(
        0.15, "Fraction after the training part for validation (rest: test).", below=1)
    # A small network and batch for a few hundred windows.
    hidden: int = option(32, "Units of the VanillaRNN layer.")
    batch_size: int = option(32, "Windows per training batch (global: split across replicas).")
    epochs: int = option(20, "Number of epochs.")
    # Few batches per epoch here (6 for sunspots): measure more often.
    grad_every_n_batches: int = option(
        10, "Measure per-timestep BPTT gradient norms every N training batches.")

    def validate(self):
        super().validate()
        for name in ("csv", "column"):
            if getattr(self, name) == "":
                raise ValueError(f"Received: {name}=''. Expected a CSV path or column "
                                 f"name, or no --{name}.")
        if self.train_fraction + self.validation_fraction >= 1.0:
            raise ValueError(
                f"Received: train_fraction={self.train_fraction}, validation_fraction="
                f"{self.validation_fraction}. Expected a sum below 1 (the rest is the "
                f"test split), e.g. 0.7 and 0.15.")

    @property
    def fractions(self):
        return (self.train_fraction, self.validation_fraction,
                1.0 - self.train_fraction - self.validation_fraction)


def prepare_data(config):
    """Loads, splits, windows and scales the series (NumPy only).

    With `difference` the network sees and predicts `d[i] = values[i + 1] -
    values[i]`, and its forecasts are summed onto the last observed value.
    Returns a dict: `values`, `meta`, `scaler` and `splits`, per split a dict
    with `x`, `y` (scaled float32), `index` (positions of the targets in
    `values`), `truth` (`values[index]`) and `origin` (the last value
    observed at forecast time). Raises `DataError` for bad data.
    """
    values, meta = data.load_series(config.csv or config.series, column=config.column,
                                    period=config.period)
    modelled = np.diff(values) if config.difference else values
    shift = int(config.difference)  # modelled[i] ends at values[i + shift]
    windows = data.series_splits(modelled, config.window, config.horizon, config.fractions)
    train_slice = data.split_by_time(len(modelled), config.fractions)[0]
    scaler = data.Standardizer().fit(modelled[train_slice])
    splits = {}
    for name, (x, y, index) in windows.items():
        index = index + shift
        splits[name] = {"x": scaler.transform(x).astype("float32"),
                        "y": scaler.transform(y).astype("float32"), "index": index,
                        "truth": values[index], "origin": values[index[:, 0] - 1]}
    meta = {**meta, **{f"{n}_windows": len(s["x"]) for n, s in splits.items()},
            "modelled": "first differences" if config.difference else "values"}
    return {"values": values, "meta": meta, "scaler": scaler, "splits": splits}


def to_levels(prediction, split, scaler, difference):
    """Network outputs (scaled) -> forecasts in original units, `(N, horizon)`."""
    prediction = scaler.inverse_transform(np.asarray(prediction, np.float64))
    return split["origin"][:, None] + np.cumsum(prediction, axis=1) if difference else prediction


def baseline_forecasts(values, split, horizon, period):
    """`{"persistence": ..., "seasonal_naive": ... or None}` in original units,
    and why seasonal naive is missing (or None)."""
    forecasts = {"persistence": np.repeat(split["origin"][:, None], horizon, axis=1),
                 "seasonal_naive": None}
    if period is None:
        return forecasts, "no seasonal period (pass --period) for this series"
    try:
        forecasts["seasonal_naive"] = data.seasonal_naive_forecast(values, split["index"], period)
    except data.DataError as err:
        return forecasts, str(err)
    return forecasts, None


def build_model(config):
    """Input (window, 1) -> VanillaRNN(hidden) -> Dense(horizon)."""
    import keras

    import keras_vrnn
    from experiments.training import recurrent_initializer

    return keras.Sequential([
        keras.Input((config.window, 1), name="past"),
        keras_vrnn.VanillaRNN(config.hidden, activation=config.activation, name="rnn",
                              recurrent_initializer=recurrent_initializer(
                                  config.recurrent_gain, config.seed)),
        keras.layers.Dense(config.horizon, name="forecast"),
    ], name="forecaster")


def plot_forecast(png, split, forecasts, title, ylabel):
    """Test-split truth and the first-step forecasts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax = fig.add_subplot()
    t = split["index"][:, 0]
    ax.plot(t, split["truth"][:, 0], "k-", lw=1.8, label="truth")
    for (label, forecast), style in zip(forecasts.items(), ("C0-", "C1--", "C2:")):
        if forecast is not None:
            ax.plot(t, forecast[:, 0], style, lw=1.3, label=label.replace("_", " "))
    ax.set(xlabel="time step (position in the series)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100)


def train_and_evaluate(config, workdir):
    """Trains, evaluates the model and the baselines; writes the run dir."""
    prepared = prepare_data(config)  # DataError here: exit 2, nothing trained
    values, meta, scaler, splits = (prepared[k] for k in ("values", "meta", "scaler", "splits"))
    x_train, y_train = splits["train"]["x"], splits["train"]["y"]
    steps_per_epoch = len(x_train) // config.batch_size
    if steps_per_epoch < 1:
        raise data.DataError(
            f"Received: {len(x_train)} training windows with batch_size="
            f"{config.batch_size}. Expected at least one whole batch; use --batch_size "
            f"{len(x_train)} or less, or a longer series.")
    from experiments import training

    strategy = training.make_strategy(config.strategy)  # the first TensorFlow work
    training.check_global_batch(config.batch_size, strategy)
    val = splits["validation"]
    val_batch = training.eval_batch_size(len(val["x"]), strategy, config.batch_size)
    model = training.build_trained_model(config, lambda: build_model(config), strategy,
                                          {"loss": "mse", "metrics": ["mae"]})
    (workdir / "scaler.json").write_text(scaler.to_json() + "\n", encoding="utf-8")
    if config.verbose:  # 0: silent, as Keras' verbose=0
        print(f"Series: {meta['name']} ({meta['column']}), {meta['n']} values, modelling its "
              f"{meta['modelled']}; windows train/validation/test = {meta['train_windows']}/"
              f"{meta['validation_windows']}/{meta['test_windows']} (window {config.window}, "
              f"horizon {config.horizon}); {strategy.num_replicas_in_sync} replica(s).")
    rng = np.random.default_rng(config.seed)
    grad_rows = rng.choice(len(x_train), min(config.batch_size, len(x_train)), False)
    monitor, first_epoch, train_time = training.fit_resumable(
        model, workdir, config, (x_train, y_train), (val["x"], val["y"]),
        steps_per_epoch=steps_per_epoch, validation_batch_size=val_batch,
        grad_rows=grad_rows, whole_passes=True)
    history = common.load_history(workdir)
    results = common.training_results(config, workdir, strategy, history, monitor,
                                      train_time, first_epoch)
    results.update(data={**meta, "scaler": {"mean": scaler.mean, "std": scaler.std}},
                   units=f"original units of {meta['column']!r}")
    title = f"VanillaRNN on {meta['name']}"
    common.plot_loss_curves(history, common.plots_dir(workdir) / "loss_curves.png",
                            ylabel="MSE (standardised units)",
                            title=title + (" (diverged)" if monitor.diverged else ""))
    common.plot_gradient_norms(workdir)
    if monitor.diverged is None:  # a diverged model is not evaluated
        model.load_weights(str(workdir / common.CHECKPOINT_FILE))  # the best epoch
        # One predict call for both splits (one trace instead of two).
        parts = [splits["validation"], splits["test"]]
        outputs = np.split(model.predict(np.concatenate([s["x"] for s in parts]),
                                         batch_size=1024, verbose=0), [len(val["x"])])
        for name, split, output in zip(("validation", "test"), parts, outputs):
            forecasts, note = baseline_forecasts(values, split, config.horizon, meta["period"])
            forecasts = {"model": to_levels(output, split, scaler, config.difference),
                         **forecasts}
            results[name] = {k: None if f is None else {
                "mse": data.mse(split["truth"], f), "mae": data.mae(split["truth"], f)}
                for k, f in forecasts.items()}
            if note:
                results[name]["seasonal_naive_note"] = note
        plot_forecast(common.plots_dir(workdir) / "forecast_vs_truth.png", splits["test"],
                      forecasts, f"{meta['name']}: test split, 1-step-ahead forecasts",
                      meta["column"])
    common.save_results(workdir, results)
    if monitor.diverged is None and config.verbose:
        test = results["test"]
        rows = [(k.replace("_", " "), *(("n/a", "n/a") if test[k] is None else (
            f"{test[k]['mse']:.4g}", f"{test[k]['mae']:.4g}")))
            for k in ("model", "persistence", "seasonal_naive")]
        print(f"\nBest epoch {results['best_epoch']} of {results['epochs']}, trained in "
              f"{train_time:.0f} s. Test split ({meta['test_windows']} forecasts), "
              f"{results['units']}:")
        print("\n".join(common.format_table(rows, ("", "MSE", "MAE"))))
    return results


def main(argv=None):
    return common.run_main(train_and_evaluate, Config, argv)


if __name__ == "__main__":
    main()
