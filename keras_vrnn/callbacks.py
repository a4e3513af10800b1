"""`GradientNormCallback`: watch BPTT gradients vanish or explode during `fit`."""

import collections
import csv
import io
import logging
import os
import re
import struct
import tempfile
import time
import zlib

import keras
import numpy as np

from keras_vrnn import diagnostics

logger = logging.getLogger("keras_vrnn")

__all__ = ["GradientNormCallback", "tag_prefix"]

NPZ_NAME = "gradient_norms.npz"
CSV_NAME = "gradient_norms.csv"
HORIZON_THRESHOLD = 1e-3
HEATMAP_LOGS = 64  # the heatmap shows the most recent logs
LYAPUNOV_SAMPLES = 4  # the first samples of `data` used for the exponents
LYAPUNOV_EXPONENTS = 32  # at most this many leading exponents are logged

# Scalar tag suffixes, per layer under the layer's tag prefix (see
# `tag_prefix`), and the number of a log each one shows.
SCALAR_TAGS = {
    "grad_norm_first": "first",
    "grad_norm_middle": "middle",
    "grad_norm_last": "last",
    "grad_norm_first_last_ratio": "first_last_ratio",
    "grad_norm_decay_factor": "factor",
    "grad_norm_horizon": "horizon",
    "last_step_grad_norm_decay_factor": "last_step_factor",
    "last_step_grad_norm_horizon": "last_step_horizon",
    "lyapunov_max": "lyapunov_max",
    "spectral_radius": "spectral_radius",
    "nonfinite": "nonfinite",
}
# The custom-scalars charts of each layer: (title, tag suffix regex).
CHARTS = (
    ("mean ||dL/dh_t||, first/middle/last step", "grad_norm_(first|middle|last)"),
    ("first / last step ratio", "grad_norm_first_last_ratio"),
    ("fitted per-step factor (L; l_T)", "(last_step_)?grad_norm_decay_factor"),
    ("effective horizon, steps back (L; l_T)", "(last_step_)?grad_norm_horizon"),
    ("largest Lyapunov exponent (nats per step)", "lyapunov_max"),
    ("spectral radius of W_hh", "spectral_radius"),
    ("non-finite gradients (1 = yes)", "nonfinite"),
)
HISTOGRAM_TAG = "log10_grad_norm"
LYAPUNOV_TAG = "lyapunov_spectrum"
IMAGE_TAG = "last_step_grad_norm_heatmap"
FIELDS = (
    "mean_norms", "spectral_radius", "max_singular_value", "factor", "horizon",
    "first_last_ratio", "nonfinite", "last_step_mean_norms", "last_step_factor",
    "last_step_horizon", "lyapunov",
)

_CALL_SUFFIX = re.compile(r"/call_\d+$")


def tag_prefix(key):
    """TensorBoard tag prefix of a layer key: `"bi/forward"` becomes
    `"bi.forward"` (Keras names never contain `/`, so no collision with a
    plain name); any other character TensorBoard would rewrite becomes `_`."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", key.replace("/", "."))


def _check_log_dir(log_dir):
    path = os.fspath(log_dir) if isinstance(log_dir, (str, os.PathLike)) else None
    if not isinstance(path, str) or not path.strip():
        raise ValueError("`log_dir` must be a non-empty path (str or os.PathLike). "
                         f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`log_dir` exists and is not a directory. Received: log_dir={path!r}.")
    return path


def _check_data(data):
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        kind = type(data).__name__
        length = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise ValueError("`data` must be a tuple (x, y) or (x, y, sample_weight) holding "
                         f"one fixed batch. Received: data of type {kind}{length}.")
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
        raise ValueError("`layers` must be None (all vanilla RNN layers) or a non-empty "
                         f"list of layer names or keys. Received: layers={layers!r}.")
    return list(layers)


def _base_key(key, layers):
    """The key in `layers` of a logged key (`"<key>/call_<i>"` or `"<key>"`)."""
    return key if key in layers else _CALL_SUFFIX.sub("", key)


def _optimizer_step(model):
    """`model.optimizer.iterations` as an int (also a distributed one)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class GradientNormCallback(keras.callbacks.Callback):
    """Logs per-timestep BPTT gradient norms to TensorBoard during `fit`.

    Every `every_n_batches` training batches, and at the start of training,
    it measures on one fixed batch `data` the exact norms `||dL/dh_t||_2` of
    every vanilla RNN layer and timestep, and `||dl_T/dh_t||` of the last
    step's loss (`keras_vrnn.timestep_gradient_norms`, both views), and the
    Lyapunov exponents of each layer. It writes them to `log_dir/train`,
    where `keras.callbacks.TensorBoard(log_dir)` writes its training logs
    (one dashboard), with TensorBoard's own event writer: no TensorFlow
    needed, any Keras backend. The step is the global number of training
    batches done (as Keras' `TensorBoard` with `update_freq="batch"`), and
    keeps counting across `fit` calls.

    For each layer key (e.g. `"rnn"`, or `"bi/forward"` and `"bi/backward"`)
    with tag prefix `p` (see `tag_prefix`):

    - scalars `p/grad_norm_first`, `_middle`, `_last` (batch-mean norm at
      steps 0, T // 2, T - 1), `p/grad_norm_first_last_ratio`,
      `p/grad_norm_decay_factor` and `p/grad_norm_horizon` (fit_decay_factor
      and effective_horizon, threshold 1e-3, of the mean norms), the same
      two with prefix `last_step_` for `||dl_T/dh_t||`, `p/lyapunov_max`
      (nats per step, first 4 samples of `data`, the layer's first call),
      `p/spectral_radius` of `W_hh` and `p/nonfinite` (1 if a norm is inf
      or NaN);
    - histograms `p/log10_grad_norm` (every finite, non-zero norm) and
      `p/lyapunov_spectrum` (the `min(units, 32)` leading exponents);
    - image `p/last_step_grad_norm_heatmap`: log10 of the mean last-step
      norm, one row per log (the 64 most recent), one column per timestep;

    and a custom-scalars layout with one category per layer.

    The same numbers go to `log_dir/gradient_norms.npz`, an uncompressed NPZ
    file each log extends in place (constant cost per log; a killed run
    keeps its data): `"steps"` (int64), `"keys"`, per key
    `"<key>/mean_norms"` and `"<key>/last_step_mean_norms"` `(n_logs, T)`,
    `"<key>/lyapunov"` `(n_logs, k)` and the `(n_logs,)` float64 arrays
    `spectral_radius`, `max_singular_value`, `factor`, `horizon`,
    `last_step_factor`, `last_step_horizon`, `first_last_ratio`,
    `nonfinite`, plus the settings `"direct"` and `"horizon_threshold"`; and
    to `log_dir/gradient_norms.csv` (`step,layer,timestep,mean_norm`, total
    view). `keras_vrnn.plots` draws from the NPZ file. Non-finite gradients
    never stop training: logged as they are, flagged, and reported with a
    warning on the `"keras_vrnn"` logger.

    Distribution (TensorFlow): the numbers are those without a strategy;
    with several workers give each its own `log_dir`. Resuming: with
    `resume=True` a restarted run (e.g. by `keras.callbacks.BackupAndRestore`)
    keeps the NPZ logs up to the restored `model.optimizer.iterations`,
    rewrites the NPZ and CSV files to match and counts on from there, so the
    files end as an uninterrupted run's (event files are appended). To see
    both callbacks' logs update live, start `tensorboard --logdir ...
    --reload_multifile=true`.

    Args:
        log_dir: Directory of the logs, the same as Keras' `TensorBoard`'s.
        data: A fixed batch `(x, y)` or `(x, y, sample_weight)`. Keep it
            small (32 to 256 samples): each log runs two forward and
            backward passes on it.
        every_n_batches: Positive int, log every that many training batches.
            Default 50.
        layers: Optional list of layer names or keys to log (a
            `Bidirectional` name selects both directions). Default: all.
        direct: If `True`, log the direct part of the gradient only (see
            `timestep_gradient_norms`). Default `False`.
        resume: If `True`, continue the logs an interrupted run left in
            `log_dir` (see above; without an NPZ file it starts normally).
            Default `False`: the files are started afresh.

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
        self._npz = None
        self._heatmap = collections.deque(maxlen=HEATMAP_LOGS)  # (step, rows)
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
        self._start([str(key) for key in arrays["keys"]])
        missing = [n for n in self._growing() if n not in arrays]
        if missing:
            raise ValueError(
                f"GradientNormCallback cannot resume the logs in "
                f"{self._npz_path!r}: they lack the arrays {missing}. "
                "Received: resume=True; use a new log_dir."
            )
        keep = arrays["steps"] <= step
        for name in self._growing():
            arrays[name] = arrays[name][keep]
        self._last_logged = step  # measured before the interruption, or not due
        self._npz = _GrowingNpz(self._npz_path, arrays, self._growing())
        def logs(field):
            for i, logged in enumerate(arrays["steps"]):
                yield int(logged), {k: arrays[f"{k}/{field}"][i] for k in self._keys}

        self._heatmap.extend(logs("last_step_mean_norms"))  # keeps the last ones
        self._write_csv(logs("mean_norms"), fresh=True)

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

    def _growing(self):
        """Names of the NPZ arrays that get one row per log, in file order."""
        return ["steps"] + [f"{k}/{f}" for k in self._keys for f in FIELDS]

    def _lyapunov(self, layers):
        """Leading Lyapunov exponents of each base layer, on a few samples."""
        x = keras.tree.map_structure(lambda a: a[:LYAPUNOV_SAMPLES], self.data[0])
        entries = [(k, layers[k]) for k in dict.fromkeys(
            _base_key(key, layers) for key in self._keys)]
        captured = diagnostics._capture(self.model, x, entries)
        spectra = {}
        for key, layer in entries:
            k = min(layer.cell.units, LYAPUNOV_EXPONENTS)
            with np.errstate(all="ignore"):
                spectra[key] = diagnostics._lyapunov(layer, *captured[key], k).mean(0)
        return spectra

    def _log(self, step):
        x, y, sample_weight = self.data
        norms, last = (
            diagnostics.timestep_gradient_norms(
                self.model, x, y, sample_weight, self.direct, last_step_only=view
            )
            for view in (False, True)
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
        spectra = self._lyapunov(layers)
        current = {}
        for key in self._keys:
            base = _base_key(key, layers)
            stats = diagnostics.recurrent_kernel_stats(layers[base])
            with np.errstate(all="ignore"):
                current[key] = {
                    "values": norms[key],
                    "mean_norms": norms[key].mean(axis=0),
                    "last_step_mean_norms": last[key].mean(axis=0),
                    "spectral_radius": float(stats["spectral_radius"]),
                    "max_singular_value": float(stats["max_singular_value"]),
                    "nonfinite": float(not np.isfinite([norms[key], last[key]]).all()),
                    "lyapunov": spectra[base],
                }
        self._record(step, current)

    def _record(self, step, current):
        """Writes one log: TensorBoard summaries, NPZ rows, CSV rows."""
        for c in current.values():
            for view in ("", "last_step_"):
                mean = c[f"{view}mean_norms"]
                c[f"{view}factor"] = diagnostics.fit_decay_factor(mean)
                c[f"{view}horizon"] = float(
                    diagnostics.effective_horizon(mean, HORIZON_THRESHOLD)
                )
            mean = c["mean_norms"]
            with np.errstate(all="ignore"):
                c["first_last_ratio"] = float(mean[0] / mean[-1])
            c.update(first=mean[0], middle=mean[mean.shape[0] // 2], last=mean[-1],
                     lyapunov_max=c["lyapunov"][0])
        bad = [key for key, c in current.items() if c["nonfinite"]]
        self._last_logged = step
        if bad:
            logger.warning(
                "GradientNormCallback: non-finite BPTT gradient norms at step %d "
                "for layer(s) %s; logged as NaN/inf with nonfinite=1.",
                step,
                ", ".join(bad),
            )
        os.makedirs(self.log_dir, exist_ok=True)
        means = {view: {k: c[f"{view}mean_norms"] for k, c in current.items()}
                 for view in ("", "last_step_")}
        self._heatmap.append((step, means["last_step_"]))
        self._write_summaries(step, current)
        rows = {"steps": step}
        rows.update({f"{k}/{f}": current[k][f] for k in self._keys for f in FIELDS})
        if self._npz is None:
            arrays = {
                "steps": np.asarray([step], np.int64),
                "keys": np.asarray(self._keys, dtype=str),
                "direct": np.asarray(self.direct),
                "horizon_threshold": np.asarray(HORIZON_THRESHOLD),
            }
            for name in self._growing()[1:]:
                arrays[name] = np.asarray(rows[name], np.float64)[None]
            self._npz = _GrowingNpz(self._npz_path, arrays, self._growing())
        else:
            self._npz.append(rows)
        self._write_csv([(step, means[""])])

    # -- outputs ---------------------------------------------------------------
    def _write_event(self, step, summary):
        """Writes one event (TensorBoard's own writer: no TensorFlow needed)."""
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.custom_scalar import metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tensorboard.util import tensor_util

        if self._writer is None:
            self._writer = EventFileWriter(self._train_dir)
            layout = summary_pb2.Summary()
            layout.value.add(
                tag=metadata.CONFIG_SUMMARY_TAG,
                metadata=metadata.create_summary_metadata(),
                tensor=tensor_util.make_tensor_proto(self._layout().SerializeToString()),
            )
            self._write_event(0, layout)
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._writer.add_event(event)

    def _close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _layout(self):
        from tensorboard.plugins.custom_scalar import layout_pb2

        return layout_pb2.Layout(category=[
            layout_pb2.Category(
                title=f"BPTT gradient norms: {key}",
                chart=[
                    layout_pb2.Chart(
                        title=title,
                        multiline=layout_pb2.MultilineChartContent(
                            tag=[f"^{re.escape(self._prefixes[key])}/{regex}$"]
                        ),
                    )
                    for title, regex in CHARTS
                ],
            )
            for key in self._keys
        ])

    def _write_summaries(self, step, current):
        """One log's summaries, as `tf.summary` writes them (tensors)."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb
        from tensorboard.plugins.image import metadata as image_metadata
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb
        from tensorboard.util import tensor_util

        from keras_vrnn import plots

        summary = summary_pb2.Summary()
        for key in self._keys:
            p, c = self._prefixes[key], current[key]
            values = c["values"]
            with np.errstate(all="ignore"):
                usable = values[np.isfinite(values) & (values > 0)]
            spectrum = c["lyapunov"]
            parts = [scalar_pb(f"{p}/{tag}", c[field]) for tag, field in SCALAR_TAGS.items()]
            parts += [histogram_pb(f"{p}/{HISTOGRAM_TAG}", np.log10(usable)),
                      histogram_pb(f"{p}/{LYAPUNOV_TAG}", spectrum[np.isfinite(spectrum)])]
            for part in parts:
                summary.value.extend(part.value)
            png = plots.heatmap_png(
                np.stack([rows[key] for _, rows in self._heatmap]),
                [logged for logged, _ in self._heatmap],
                f"log10 mean ||dl_T/dh_t||, last step's loss: {key}",
            )
            size = [str(n).encode() for n in struct.unpack(">II", png[16:24])]  # IHDR
            summary.value.add(
                tag=f"{p}/{IMAGE_TAG}",
                metadata=image_metadata.create_summary_metadata(None, None),
                tensor=tensor_util.make_tensor_proto(np.array(size + [png], object)),
            )
        self._write_event(step, summary)
        self._writer.flush()

    def _write_csv(self, logs, fresh=False):
        """Appends `(step, {key: mean norms})` logs, or writes them afresh."""
        path = self._csv_path + ".tmp" if fresh else self._csv_path
        start = fresh or not self._csv_started
        with open(path, "w" if start else "a", newline="") as f:
            writer = csv.writer(f)
            if start:
                writer.writerow(("step", "layer", "timestep", "mean_norm"))
            for step, means in logs:
                writer.writerows(
                    (int(step), key, t, repr(float(value)))
                    for key in self._keys
                    for t, value in enumerate(means[key])
                )
        if fresh:
            os.replace(path, self._csv_path)
        self._csv_started = True


# ---------------------------------------------------------------------------
# An NPZ file whose arrays grow by rows in place
# ---------------------------------------------------------------------------

_POLY = 0xEDB88320  # CRC-32 (zip, zlib), reflected: x^k is bit 31 - k


def _multmodp(a, b):
    """a * b modulo the CRC-32 polynomial (zlib's `multmodp`)."""
    p, m = 0, 1 << 31
    while m and a & ((m << 1) - 1):
        p ^= b if a & m else 0
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _shift(n):
    """x^(8 n) modulo the polynomial: `crc(A + B) = multmodp(shift(len(B)),
    crc(A)) ^ crc(B)`, so a CRC is updated without reading B again."""
    p, square = 1 << 31, 1 << 23
    while n:
        p = _multmodp(square, p) if n & 1 else p
        square, n = _multmodp(square, square), n >> 1
    return p


class _GrowingNpz:
    """An uncompressed NPZ file (as `np.savez` writes) whose arrays named in
    `growing` get rows appended in place: each has a fixed-size `.npy`
    header and room for `capacity` rows; `append` writes the rows, then the
    headers, then the zip directory (CRC-32s combined from the rows' running
    CRC, see `_shift`), at a cost independent of the number of rows. A full
    room makes the file be rewritten with twice the room.
    """

    HEADER = 128  # bytes of a growing array's .npy header

    def __init__(self, path, arrays, growing, capacity=64):
        self.path, growing = path, set(growing)
        self.capacity = max([capacity] + [2 * len(arrays[n]) for n in growing])
        self.entries, out = [], io.BytesIO()
        for key, array in arrays.items():
            e = {"key": key, "name": f"{key}.npy".encode(), "offset": out.tell()}
            out.write(bytes(30 + len(e["name"])))  # local header, filled below
            if key in growing:
                data = np.ascontiguousarray(array).tobytes()
                row = array.itemsize * int(np.prod(array.shape[1:]))
                e.update(dtype=array.dtype, shape=array.shape[1:], n=len(array),
                         row=row, xrow=_shift(row), crc_rows=zlib.crc32(data),
                         xpow=_shift(len(data)), data=out.tell())
                self._seal(e)
                out.write(e["header"] + data + bytes(row * (self.capacity - e["n"])))
            else:
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
                data = buffer.getvalue()
                e.update(size=len(data), crc=zlib.crc32(data))
                out.write(data)
            self.entries.append(e)
        self.directory = out.tell()
        out.write(self._directory())
        content = out.getbuffer()
        for e in self.entries:
            content[e["offset"]:e["offset"] + 30 + len(e["name"])] = self._local(e)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def _seal(self, e):
        """Sets a growing entry's .npy header, size and CRC from its rows."""
        text = repr({"descr": np.lib.format.dtype_to_descr(e["dtype"]),
                     "fortran_order": False, "shape": (e["n"], *e["shape"])})
        e["header"] = (b"\x93NUMPY\x01\x00" + struct.pack("<H", self.HEADER - 10)
                       + text.ljust(self.HEADER - 11).encode() + b"\n")
        e["size"] = self.HEADER + e["n"] * e["row"]
        e["crc"] = _multmodp(e["xpow"], zlib.crc32(e["header"])) ^ e["crc_rows"]

    @staticmethod
    def _local(e):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 33, e["crc"],
                           e["size"], e["size"], len(e["name"]), 0) + e["name"]

    def _directory(self):
        records = b"".join(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 33,
                        e["crc"], e["size"], e["size"], len(e["name"]), 0, 0, 0, 0,
                        0, e["offset"]) + e["name"]
            for e in self.entries
        )
        n = len(self.entries)
        return records + struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(records), self.directory, 0)

    def append(self, rows):
        """Appends one row to each growing array (`rows`: name -> row)."""
        growing = [e for e in self.entries if "row" in e]
        if any(e["n"] >= self.capacity for e in growing):
            with np.load(self.path) as saved:
                arrays = {e["key"]: saved[e["key"]] for e in self.entries}
            self.__init__(self.path, arrays, [e["key"] for e in growing],
                          2 * self.capacity)
            growing = [e for e in self.entries if "row" in e]
        with open(self.path, "r+b", buffering=0) as f:
            for e in growing:
                row = np.asarray(rows[e["key"]], e["dtype"])
                data = np.broadcast_to(row, e["shape"]).tobytes()
                f.seek(e["data"] + self.HEADER + e["n"] * e["row"])
                f.write(data)
                e["crc_rows"] = zlib.crc32(data, e["crc_rows"])
                e["xpow"] = _multmodp(e["xrow"], e["xpow"])
                e["n"] += 1
            # The file is inconsistent from the first header to the directory.
            for e in growing:
                self._seal(e)
                f.seek(e["data"])
                f.write(e["header"])
            f.seek(self.directory)
            f.write(self._directory())
            for e in growing:
                f.seek(e["offset"])
                f.write(self._local(e))
