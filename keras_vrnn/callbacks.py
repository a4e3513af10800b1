"""`GradientNormCallback`: watch BPTT gradients vanish or explode during `fit`."""

import csv
import logging
import os
import re
import tempfile

import keras
import numpy as np

from keras_vrnn import diagnostics

logger = logging.getLogger("keras_vrnn")

__all__ = ["GradientNormCallback", "tag_prefix"]

NPZ_NAME = "gradient_norms.npz"
CSV_NAME = "gradient_norms.csv"
HORIZON_THRESHOLD = 1e-3

# Tag suffixes, per layer, under the layer's tag prefix (see `tag_prefix`).
SCALAR_TAGS = (
    "grad_norm_first",
    "grad_norm_middle",
    "grad_norm_last",
    "grad_norm_first_last_ratio",
    "grad_norm_decay_factor",
    "grad_norm_horizon",
    "spectral_radius",
    "nonfinite",
)
HISTOGRAM_TAG = "log10_grad_norm"
IMAGE_TAG = "grad_norm_heatmap"

_CALL_SUFFIX = re.compile(r"/call_\d+$")


def tag_prefix(key):
    """TensorBoard tag prefix of a layer key: `/` becomes `.`.

    `"vanilla_rnn"` stays `"vanilla_rnn"`, `"bidirectional/forward"` becomes
    `"bidirectional.forward"` (Keras layer names never contain `/`, so
    `.`-joined keys cannot collide with a plain name made by Keras). Any
    other character TensorBoard would rewrite becomes `_`.
    """
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", key.replace("/", "."))


def _check_log_dir(log_dir):
    if isinstance(log_dir, bytes) or not isinstance(log_dir, (str, os.PathLike)):
        raise ValueError(
            "`log_dir` must be a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}."
        )
    path = os.fspath(log_dir)
    if not isinstance(path, str) or not path.strip():
        raise ValueError(
            f"`log_dir` must be a non-empty path. Received: log_dir={log_dir!r}."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"`log_dir` exists and is not a directory. Received: log_dir={path!r}."
        )
    return path


def _check_data(data):
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        kind = type(data).__name__
        length = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise ValueError(
            "`data` must be a tuple (x, y) or (x, y, sample_weight) holding one "
            f"fixed batch. Received: data of type {kind}{length}."
        )
    x, y = data[0], data[1]
    sample_weight = data[2] if len(data) == 3 else None
    diagnostics.check_batch(x, y, sample_weight)
    return x, y, sample_weight


def _check_layers(layers):
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(isinstance(name, str) and name for name in layers)
    ):
        raise ValueError(
            "`layers` must be None (all vanilla RNN layers) or a non-empty list "
            f"of layer names or keys. Received: layers={layers!r}."
        )
    return list(layers)


def _optimizer_step(model):
    """`model.optimizer.iterations` as an int (also for a distributed
    variable, which `int()` does not take)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class GradientNormCallback(keras.callbacks.Callback):
    """Logs per-timestep BPTT gradient norms to TensorBoard during `fit`.

    Every `every_n_batches` training batches (and once at the start of
    training, step 0) the callback measures, on one fixed batch `data`, the
    exact gradient norm `||dL/dh_t||_2` of the model's loss with respect to
    the hidden state of every vanilla RNN layer at every timestep t (see
    `keras_vrnn.timestep_gradient_norms`: one forward and one backward pass),
    and writes it where `keras.callbacks.TensorBoard(log_dir)` writes its
    training logs, `log_dir/train`, so both appear in one dashboard. The step
    is the global number of training batches done (that of Keras'
    `TensorBoard` with `update_freq="batch"`; it keeps counting across
    several `fit` calls with the same callback).

    For each layer key (e.g. `"vanilla_rnn"`, or `"bi/forward"` and
    `"bi/backward"` for a `Bidirectional`) with tag prefix `p` (the key with
    `/` replaced by `.`, see `tag_prefix`), it logs:

    - scalars `p/grad_norm_first`, `p/grad_norm_middle`, `p/grad_norm_last`:
      the batch-mean norm at timesteps 0, T // 2 and T - 1;
    - `p/grad_norm_first_last_ratio`: first / last;
    - `p/grad_norm_decay_factor`: the per-step factor fitted on the mean
      norms (`keras_vrnn.fit_decay_factor`; < 1 vanishing, > 1 exploding);
    - `p/grad_norm_horizon`: `keras_vrnn.effective_horizon` of the mean
      norms, threshold 1e-3;
    - `p/spectral_radius`: spectral radius of the recurrent kernel `W_hh`;
    - `p/nonfinite`: 1 when a gradient norm is inf or NaN, else 0;
    - histogram `p/log10_grad_norm`: log10 of every (sample, timestep) norm
      (zero and non-finite ones left out);
    - image `p/grad_norm_heatmap`: log10 of the mean norm, one row per
      logging step so far, one column per timestep: the picture of vanishing
      (dark early timesteps) or exploding gradients.

    A custom-scalars layout (TensorBoard's "Custom Scalars" tab) groups each
    layer's charts into one category.

    The same numbers are kept in `log_dir/gradient_norms.npz`, rewritten
    (atomically) at every log so a killed run keeps its data:

    - `"steps"`: int64 `(n_logs,)`; `"keys"`: the layer keys (str array);
    - per key: `"<key>/mean_norms"` `(n_logs, T)`, and `(n_logs,)` arrays
      `"<key>/spectral_radius"`, `"<key>/max_singular_value"`,
      `"<key>/factor"`, `"<key>/horizon"`, `"<key>/first_last_ratio"`,
      `"<key>/nonfinite"` (float64, NaN kept);
    - `"direct"` and `"horizon_threshold"` (0-d), the settings used;

    and in `log_dir/gradient_norms.csv`, long format with header
    `step,layer,timestep,mean_norm` (appended at every log). See
    `keras_vrnn.plots` for pictures made from the NPZ file.

    Non-finite gradients never stop training: they are logged as they are
    (NaN or inf), flagged with `nonfinite = 1` and reported with a warning on
    the `"keras_vrnn"` Python logger.

    Distribution: under a `tf.distribute` strategy (`MirroredStrategy`,
    `MultiWorkerMirroredStrategy`) the callback runs, like every Keras
    callback, outside replica context: each measurement is one forward and
    one backward pass on the whole fixed batch with the model's current
    weights (replicated and identical on every replica), so it gives the same
    numbers as without a strategy (Keras' per-replica loss scaling is undone,
    see `timestep_gradient_norms`). With several workers every worker
    measures; give each its own `log_dir`.

    Resuming: with `resume=True`, a run restarted after an interruption (e.g.
    with `keras.callbacks.BackupAndRestore`, which restores the weights and
    the optimizer's step counter) continues the logs in `log_dir` instead of
    starting them afresh: at the start of `fit` the callback reads the NPZ
    file, keeps the logs at steps up to the restored step
    `model.optimizer.iterations` (later ones were measured after the last
    backup and are measured again), rewrites the NPZ and CSV files to match,
    and counts on from that step (no extra measurement at the start). So an
    interrupted and resumed run ends with the same files as an uninterrupted
    one. TensorBoard event files are appended (TensorBoard's default
    `--purge_orphaned_data` drops the interrupted run's later steps).
    Without an NPZ file in `log_dir`, `resume=True` starts normally.

    Note: TensorBoard polls only the newest event file of a run by default;
    to see this callback's and Keras' `TensorBoard` logs update live in the
    same run, start it with `tensorboard --logdir ... --reload_multifile=true`
    (a fresh start reads everything either way).

    Args:
        log_dir: Directory of the logs, the same as Keras' `TensorBoard`
            callback's.
        data: A fixed batch `(x, y)` or `(x, y, sample_weight)`, as passed
            to `model.fit`. Keep it small (e.g. 32 to 256 samples): each log
            runs one forward and one backward pass on it.
        every_n_batches: Positive int, log every that many training batches.
            Default 50.
        layers: Optional list of layer names or keys to log (a
            `Bidirectional` name selects both directions). Default: all
            vanilla RNN layers of the model.
        direct: If `True`, log the direct part of the gradient only (see
            `timestep_gradient_norms`). Default `False`.
        resume: If `True`, continue the logs an interrupted run left in
            `log_dir` (see "Resuming" above). Default `False`: the files are
            started afresh.

    Example:

    ```python
    callbacks = [
        keras.callbacks.TensorBoard("logs/run1"),
        keras_vrnn.GradientNormCallback(
            "logs/run1", (x_val[:64], y_val[:64]), every_n_batches=20
        ),
    ]
    model.fit(x, y, epochs=10, callbacks=callbacks)
    # tensorboard --logdir logs
    ```
    """

    def __init__(
        self,
        log_dir,
        data,
        every_n_batches=50,
        layers=None,
        direct=False,
        resume=False,
    ):
        super().__init__()
        diagnostics._require_tensorflow("GradientNormCallback")
        self.log_dir = _check_log_dir(log_dir)
        self.data = _check_data(data)
        self.every_n_batches = diagnostics.check_positive_int(
            "every_n_batches", every_n_batches
        )
        self.layers = _check_layers(layers)
        self.direct = diagnostics.check_bool("direct", direct)
        self.resume = diagnostics.check_bool("resume", resume)
        self._resume_pending = resume
        self._train_dir = os.path.join(self.log_dir, "train")
        self._npz_path = os.path.join(self.log_dir, NPZ_NAME)
        self._csv_path = os.path.join(self.log_dir, CSV_NAME)
        self._writer = None
        self._seen_model = None
        self._reset()

    # -- state ----------------------------------------------------------------
    def _reset(self):
        self._keys = None
        self._prefixes = {}
        self._steps = []
        self._history = {}
        self._global_batch = 0
        self._epoch_start = 0
        self._last_logged = None
        self._csv_started = False

    def set_model(self, model):
        if model is not self._seen_model:
            self._close_writer()
            self._reset()
            self._seen_model = model
        super().set_model(model)

    @property
    def npz_path(self):
        """Path of the NPZ file (`log_dir/gradient_norms.npz`)."""
        return self._npz_path

    @property
    def csv_path(self):
        """Path of the CSV file (`log_dir/gradient_norms.csv`)."""
        return self._csv_path

    # -- Keras hooks -----------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self._resume_pending:
            self._resume_pending = False
            self._resume_logs(_optimizer_step(self.model))
        self._epoch_start = self._global_batch
        if self._last_logged != self._global_batch:
            self._log(self._global_batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._global_batch

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the index of the last batch run (several with
        # steps_per_execution > 1), counted from the start of the epoch.
        step = self._epoch_start + int(batch) + 1
        previous, self._global_batch = self._global_batch, max(step, self._global_batch)
        n = self.every_n_batches
        if self._global_batch // n > previous // n:
            self._log(self._global_batch)

    def on_train_end(self, logs=None):
        self._close_writer()

    # -- resuming ---------------------------------------------------------------
    def _resume_logs(self, step):
        """Continues the logs in `log_dir` at `step` (see "Resuming")."""
        self._global_batch = self._epoch_start = step
        if not os.path.exists(self._npz_path):
            return
        with np.load(self._npz_path) as saved:
            arrays = {name: saved[name] for name in saved.files}
        if bool(arrays["direct"]) != self.direct:
            raise ValueError(
                f"GradientNormCallback cannot resume the logs in "
                f"{self._npz_path!r}: they were measured with direct="
                f"{bool(arrays['direct'])}. Received: direct={self.direct}."
            )
        keep = arrays["steps"] <= step
        self._start([str(key) for key in arrays["keys"]])
        for key in self._keys:
            for field in self._history[key]:
                self._history[key][field] = list(arrays[f"{key}/{field}"][keep])
        self._steps = [int(s) for s in arrays["steps"][keep]]
        self._last_logged = step  # measured before the interruption, or not due
        os.makedirs(self.log_dir, exist_ok=True)
        self._write_npz()
        self._rewrite_csv()

    # -- one measurement -------------------------------------------------------
    def _select_keys(self, available):
        if self.layers is None:
            return list(available)
        selected = set()
        for name in self.layers:
            matches = [k for k in available if k == name or k.startswith(name + "/")]
            if not matches:
                raise ValueError(
                    f"GradientNormCallback: no vanilla RNN layer '{name}' in model "
                    f"'{self.model.name}' (available: {list(available)}). "
                    f"Received: layers={self.layers!r}."
                )
            selected.update(matches)
        return [k for k in available if k in selected]

    def _start(self, keys):
        self._keys = keys
        self._prefixes = {}
        used = set()
        for key in keys:
            prefix, i = tag_prefix(key), 1
            while prefix in used:
                i += 1
                prefix = f"{tag_prefix(key)}_{i}"
            used.add(prefix)
            self._prefixes[key] = prefix
        fields = (
            "mean_norms", "spectral_radius", "max_singular_value", "factor",
            "horizon", "first_last_ratio", "nonfinite",
        )
        self._history = {key: {f: [] for f in fields} for key in keys}

    def _log(self, step):
        x, y, sample_weight = self.data
        norms = diagnostics.timestep_gradient_norms(
            self.model, x, y, sample_weight, direct=self.direct
        )
        if self._keys is None:
            self._start(self._select_keys(list(norms)))
        missing = [key for key in self._keys if key not in norms]
        if missing:
            raise ValueError(
                f"GradientNormCallback: the resumed logs in {self._npz_path!r} "
                f"are for layers {self._keys}, but model '{self.model.name}' "
                f"has {list(norms)}. Received: resume=True with another "
                f"model; use a new log_dir."
            )
        layers = dict(diagnostics.rnn_layers(self.model))
        current = {}
        bad = []
        for key in self._keys:
            values = norms[key]
            with np.errstate(all="ignore"):
                mean = values.mean(axis=0)
                ratio = mean[0] / mean[-1]
            timesteps = mean.shape[0]
            layer = layers.get(key) or layers.get(_CALL_SUFFIX.sub("", key))
            stats = diagnostics.recurrent_kernel_stats(layer)
            nonfinite = not bool(np.all(np.isfinite(values)))
            if nonfinite:
                bad.append(key)
            record = {
                "mean_norms": mean,
                "spectral_radius": float(stats["spectral_radius"]),
                "max_singular_value": float(stats["max_singular_value"]),
                "factor": diagnostics.fit_decay_factor(mean),
                "horizon": float(
                    diagnostics.effective_horizon(mean, HORIZON_THRESHOLD)
                ),
                "first_last_ratio": float(ratio),
                "nonfinite": float(nonfinite),
            }
            for field, value in record.items():
                self._history[key][field].append(value)
            current[key] = {
                **record,
                "first": float(mean[0]),
                "middle": float(mean[timesteps // 2]),
                "last": float(mean[-1]),
                "values": values,
            }
        self._steps.append(int(step))
        self._last_logged = step
        if bad:
            logger.warning(
                "GradientNormCallback: non-finite BPTT gradient norms at step %d "
                "for layer(s) %s; logged as NaN/inf with nonfinite=1.",
                step,
                ", ".join(bad),
            )
        os.makedirs(self.log_dir, exist_ok=True)
        self._write_summaries(step, current)
        self._write_npz()
        self._append_csv(step, current)

    # -- outputs ---------------------------------------------------------------
    def _get_writer(self):
        if self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self._train_dir)
            with self._writer.as_default():
                self._write_layout()
        return self._writer

    def _close_writer(self):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def _write_layout(self):
        import tensorflow as tf
        from tensorboard.plugins.custom_scalar import layout_pb2
        from tensorboard.plugins.custom_scalar import summary as cs_summary

        def chart(prefix, title, *suffixes):
            p = re.escape(prefix)
            tags = [f"^{p}/{s}$" for s in suffixes]
            return layout_pb2.Chart(
                title=title, multiline=layout_pb2.MultilineChartContent(tag=tags)
            )

        categories = []
        for key in self._keys:
            prefix = self._prefixes[key]
            categories.append(
                layout_pb2.Category(
                    title=f"BPTT gradient norms: {key}",
                    chart=[
                        chart(
                            prefix,
                            "mean ||dL/dh_t|| at the first, middle, last step",
                            "grad_norm_(first|middle|last)",
                        ),
                        chart(
                            prefix,
                            "first / last step ratio",
                            "grad_norm_first_last_ratio",
                        ),
                        chart(
                            prefix, "fitted per-step factor", "grad_norm_decay_factor"
                        ),
                        chart(
                            prefix,
                            "effective horizon (steps back)",
                            "grad_norm_horizon",
                        ),
                        chart(prefix, "spectral radius of W_hh", "spectral_radius"),
                        chart(prefix, "non-finite gradients (1 = yes)", "nonfinite"),
                    ],
                )
            )
        layout = layout_pb2.Layout(category=categories)
        tf.summary.experimental.write_raw_pb(
            cs_summary.pb(layout).SerializeToString(), step=0
        )

    def _write_summaries(self, step, current):
        import tensorflow as tf

        from keras_vrnn import plots

        writer = self._get_writer()
        with writer.as_default():
            for key in self._keys:
                p = self._prefixes[key]
                c = current[key]
                scalars = {
                    "grad_norm_first": c["first"],
                    "grad_norm_middle": c["middle"],
                    "grad_norm_last": c["last"],
                    "grad_norm_first_last_ratio": c["first_last_ratio"],
                    "grad_norm_decay_factor": c["factor"],
                    "grad_norm_horizon": c["horizon"],
                    "spectral_radius": c["spectral_radius"],
                    "nonfinite": c["nonfinite"],
                }
                for name, value in scalars.items():
                    tf.summary.scalar(f"{p}/{name}", value, step=step)
                values = c["values"]
                with np.errstate(all="ignore"):
                    usable = values[np.isfinite(values) & (values > 0)]
                tf.summary.histogram(
                    f"{p}/{HISTOGRAM_TAG}", np.log10(usable), step=step
                )
                png = plots.heatmap_png(
                    np.stack(self._history[key]["mean_norms"]),
                    self._steps,
                    f"log10 mean ||dL/dh_t||: {key}",
                )
                image = tf.image.decode_png(png, channels=3)[None]
                tf.summary.image(f"{p}/{IMAGE_TAG}", image, step=step)
        writer.flush()

    def _write_npz(self):
        arrays = {
            "steps": np.asarray(self._steps, dtype=np.int64),
            "keys": np.asarray(self._keys, dtype=str),
            "direct": np.asarray(self.direct),
            "horizon_threshold": np.asarray(HORIZON_THRESHOLD),
        }
        for key in self._keys:
            for field, values in self._history[key].items():
                arrays[f"{key}/{field}"] = np.asarray(values, dtype=np.float64)
        fd, tmp = tempfile.mkstemp(
            dir=self.log_dir, prefix=".gradient_norms-", suffix=".npz"
        )
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self._npz_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _csv_rows(self, step, mean_norms_by_key):
        return [
            (int(step), key, t, repr(float(value)))
            for key in self._keys
            for t, value in enumerate(mean_norms_by_key[key])
        ]

    def _rewrite_csv(self):
        """Writes the CSV file afresh from the history kept in memory."""
        rows = []
        for i, step in enumerate(self._steps):
            rows += self._csv_rows(
                step, {k: self._history[k]["mean_norms"][i] for k in self._keys}
            )
        tmp = self._csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("step", "layer", "timestep", "mean_norm"))
            writer.writerows(rows)
        os.replace(tmp, self._csv_path)
        self._csv_started = True

    def _append_csv(self, step, current):
        mode = "a" if self._csv_started else "w"
        rows = self._csv_rows(
            step, {key: current[key]["mean_norms"] for key in self._keys}
        )
        with open(self._csv_path, mode, newline="") as f:
            writer = csv.writer(f)
            if not self._csv_started:
                writer.writerow(("step", "layer", "timestep", "mean_norm"))
            writer.writerows(rows)
        self._csv_started = True
