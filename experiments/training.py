"""The Keras side of the experiments: tf.distribute strategies, the
optimizer, the seeded batch stream, the callbacks and `fit` as a resumable
run. Imported once training starts; `experiments.common` (no TensorFlow)
has the run directory these write into."""

import functools
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import keras_vrnn
from experiments import common


def make_optimizer(name, learning_rate, clipnorm=0.0):
    """The Keras optimizer `name` with global-norm clipping (0: off) that also
    clips the global batch's gradient under a tf.distribute strategy."""
    classes = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD,
               "rmsprop": keras.optimizers.RMSprop}
    optimizer = classes[name](learning_rate=learning_rate,
                              global_clipnorm=clipnorm if clipnorm > 0 else None)
    return clip_global_gradient(optimizer)


def clip_global_gradient(optimizer):
    """Makes `global_clipnorm` clip the sum of the replicas' gradients.

    Keras 3 clips each replica's share before the shares are summed, so N
    replicas could step up to N times the clip. Here the norm of the summed
    gradient is all-reduced first and every share scaled by the same factor
    (NaN/inf norms give NaN, as Keras' clipping does). One replica or no
    clipping: Keras' own clipping.
    """
    keras_clip = optimizer._clip_gradients

    def clip_gradients(grads):
        clip = optimizer.global_clipnorm
        context = tf.distribute.get_replica_context()
        if not clip or context is None or context.num_replicas_in_sync == 1:
            return keras_clip(grads)
        dense = [None if g is None else tf.convert_to_tensor(g) for g in grads]
        total = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                   [g for g in dense if g is not None])
        norm = tf.linalg.global_norm(total)
        scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        return [None if g is None else g * tf.cast(scale, g.dtype) for g in dense]

    optimizer._clip_gradients = clip_gradients
    return optimizer


@functools.cache
def make_strategy(name):
    """The tf.distribute strategy of `--strategy`; one per name and process
    (two would hand out the same collective keys). Create it first."""
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name != "multi-worker":
        return tf.distribute.get_strategy()
    common.multi_worker_task()

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """Reduces structures leaf by leaf and scalars across replicas only
        (`axis=None`): Keras 3's `fit` reduces a whole batch to build the model
        and scalars with `axis=0`, which the collective reduce rejects."""

        def reduce(self, reduce_op, value, axis):
            def one(v):
                local = v.values[0] if hasattr(v, "values") else v
                scalar = getattr(getattr(local, "shape", None), "rank", None) == 0
                return super(MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, v, None if scalar else axis)
            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy()


def check_global_batch(batch_size, strategy):
    """The per-replica batch; `DataError` unless the global batch splits evenly
    (Keras averages per replica and sums, so only equal shares are exact)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise common.DataError(
            f"Received: batch_size={batch_size} with {replicas} replicas "
            f"(tf.distribute). Expected a multiple of {replicas}: the batch size "
            f"is global and is split evenly across the replicas.")
    return batch_size // replicas


def eval_batch_size(n, strategy, preferred=256):
    """At most `preferred` and `n`, a multiple of the replicas: Keras reduces
    the first evaluation batch across replicas, which needs equal shares."""
    replicas = strategy.num_replicas_in_sync
    size = (min(preferred, n) // replicas) * replicas
    if size < 1:
        raise common.DataError(
            f"Received: {n} evaluation samples with {replicas} replicas "
            f"(tf.distribute). Expected at least one sample per replica; use more "
            f"data or fewer replicas.")
    return size


def shuffled_batch_indices(n, batch_size, seed, first_batch, num_batches,
                           whole_passes=False):
    """Rows of training batches `first_batch ...` of one endless stream.

    Pass `p` over the `n` rows is `default_rng([seed, p]).permutation(n)`;
    with `whole_passes` each pass gives `n // batch_size` batches (its rest
    left out), otherwise a batch may span two passes. Batch `g` depends only
    on (n, batch_size, seed, g): a resumed run draws the batches an
    uninterrupted one would. Returns int64 `(num_batches, batch_size)`.
    """
    def permutation(p):
        return np.random.default_rng([int(seed), int(p)]).permutation(n)

    if num_batches <= 0:
        return np.zeros((0, batch_size), np.int64)
    if whole_passes:
        per_pass = n // batch_size
        passes = {}
        rows = []
        for g in range(first_batch, first_batch + num_batches):
            p, j = divmod(g, per_pass)
            perm = passes.setdefault(p, permutation(p))
            rows.append(perm[j * batch_size:(j + 1) * batch_size])
        return np.stack(rows).astype(np.int64)
    start, stop = first_batch * batch_size, (first_batch + num_batches) * batch_size
    stream = np.concatenate([permutation(p) for p in range(start // n, (stop - 1) // n + 1)])
    offset = start - (start // n) * n
    return stream[offset:offset + stop - start].reshape(num_batches, batch_size).astype(np.int64)


def batch_dataset(arrays, batch_indices):
    """A deterministic tf.data dataset of the batches `a[rows]`, sharded by
    data across workers (each keeps its share of every global batch)."""
    tensors = tuple(tf.constant(a) for a in arrays)
    batch_indices = np.asarray(batch_indices, np.int64)
    dataset = (tf.data.Dataset.from_tensor_slices(batch_indices.reshape(-1))
               .batch(batch_indices.shape[1], drop_remainder=True)
               .map(lambda rows: tuple(tf.gather(t, rows) for t in tensors))
               .prefetch(2))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def load_initial_weights(model, path):
    """Sets `model`'s weights from the `.keras` model at `path` (`DataError`
    if it does not load or has another architecture)."""
    expected = ("a .keras model saved by Keras with this run's architecture (e.g. "
                "the model.keras of an earlier run with the same settings)")
    try:
        source = keras.saving.load_model(os.fspath(path), compile=False)
    except Exception as err:  # noqa: BLE001 (any failure: a bad user file)
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise common.DataError(f"Received: init_from={str(path)!r} (cannot be loaded: "
                               f"{reason}). Expected {expected}.") from None
    theirs = [tuple(w.shape) for w in source.weights]
    ours = [tuple(w.shape) for w in model.weights]
    if theirs != ours:
        raise common.DataError(f"Received: init_from={str(path)!r}, a model with weight "
                               f"shapes {theirs}. Expected {expected}: weight shapes {ours}.")
    model.set_weights(source.get_weights())


def load_best_model(workdir):
    """The run's best checkpoint, `<workdir>/model.keras`."""
    return keras.saving.load_model(str(pathlib.Path(workdir) / common.CHECKPOINT_FILE))


def optimizer_step(model):
    """`model.optimizer.iterations` as an int (also when distributed)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class DivergenceMonitor(keras.callbacks.Callback):
    """Stops `fit` at the first batch with a NaN/inf loss or weights.

    After every batch it checks the epoch's running loss and that every
    trainable weight is finite (a NaN gradient makes the update NaN while the
    loss may be finite). `diverged` is then a dict: `step` (global batch index
    from 0, counting the epochs of a resumed run's earlier part), `epoch`,
    `batch`, `cause` ("loss" or "gradients"), `loss` ("nan"/"inf" if not
    finite); None while training is fine. `steps_done`: batches trained.
    """

    def __init__(self):
        super().__init__()
        self.diverged, self.steps_done, self._epoch, self._epoch_start = None, 0, 0, 0

    def on_train_begin(self, logs=None):
        self.diverged = None
        self.steps_done = optimizer_step(self.model)  # restored by RunBackup
        variables = [v.value for v in self.model.trainable_variables]
        self._finite = tf.function(lambda: tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(v)) for v in variables]))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._epoch_start = epoch, self.steps_done

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_start + int(batch)
        self.steps_done = step + 1
        loss = (logs or {}).get("loss")
        loss = None if loss is None else float(loss)
        if self.diverged is not None:
            return
        cause = "loss" if loss is not None and not math.isfinite(loss) else None
        if cause is None and not bool(self._finite()):
            cause = "gradients"
        if cause:
            self.diverged = {"step": step, "epoch": self._epoch, "batch": int(batch),
                             "cause": cause,
                             "loss": loss if loss is None or math.isfinite(loss) else str(loss)}
            self.model.stop_training = True


class RunBackup(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, committed atomically and last.

    The weights and optimizer state go to a new `epoch-<N>.weights.h5`, then
    `training_metadata.json` (epoch, optimizer step, file name) is replaced
    in one `os.replace`: a kill leaves the old or the new backup, never a mix.
    An epoch is committed when the next one begins (or training ends), after
    every callback has finished it, and never once `monitor` saw divergence:
    the backup keeps the last good epoch. Put it first in the callback list
    (it restores first). The run deletes it when it finished with status ok.
    """

    def __init__(self, workdir, monitor):
        super().__init__(str(pathlib.Path(workdir) / common.BACKUP_DIR),
                         delete_checkpoint=False)
        self.workdir, self.monitor, self.restored, self._pending = workdir, monitor, None, False

    def _load_model(self):
        self.restored = common.read_backup(self.workdir)
        if self.restored is not None:
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(os.path.join(self.backup_dir, self.restored["weights"]))
            self.model._initial_epoch = self._current_epoch = self.restored["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self._commit()

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch, self._pending = epoch + 1, True

    def on_train_end(self, logs=None):
        self._commit()

    def _commit(self):
        if self._pending and self.monitor.diverged is None:
            name = f"epoch-{self._current_epoch:06d}.weights.h5"
            os.makedirs(self.backup_dir, exist_ok=True)
            self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
            common.write_json(os.path.join(self.backup_dir, common.BACKUP_METADATA_FILE), {
                "epoch": self._current_epoch, "step": optimizer_step(self.model),
                "weights": name})
            for old in pathlib.Path(self.backup_dir).glob("epoch-*.weights.h5"):
                if old.name != name:
                    old.unlink()
        self._pending = False


class EpochHistory(keras.callbacks.Callback):
    """Keeps the per-epoch logs in history.json (atomically, every epoch),
    across resumes: the epochs before the one `backup` restored are kept,
    later ones, written by a killed run after its last backup, dropped."""

    def __init__(self, workdir, backup):
        super().__init__()
        self.path, self.backup, self.epochs = pathlib.Path(workdir) / common.HISTORY_FILE, backup, []

    def on_train_begin(self, logs=None):
        start = self.backup.restored["epoch"] if self.backup.restored else 0
        saved = (common.read_json(self.path) or {}).get("epochs", []) if start else []
        self.epochs = [e for e in saved if e["epoch"] < start]

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": int(epoch), **{k: float(v) for k, v in (logs or {}).items()}}
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch] + [entry]
        common.write_json(self.path, {"epochs": self.epochs})


class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint(save_best_only=True)` on val_loss, written to a
    temporary file and renamed (a kill never leaves a truncated model.keras);
    a NaN/inf val_loss never counts as best."""

    def __init__(self, filepath, best=None):
        super().__init__(os.fspath(filepath), monitor="val_loss", save_best_only=True,
                         initial_value_threshold=best)

    def on_epoch_end(self, epoch, logs=None):
        current = float((logs or {}).get(self.monitor, math.nan))
        if math.isfinite(current) and (self.best is None or current < self.best):
            self.best = current
            final = pathlib.Path(self.filepath)
            partial = final.with_name(f".partial-{final.name}")
            self.model.save(partial, overwrite=True)
            os.replace(partial, final)


def logging_callbacks(workdir, grad_batch, every_n_batches, resume=False):
    """TensorBoard in `<workdir>/logs` and, for a model with a VanillaRNN
    layer, the per-timestep BPTT gradient norms on `grad_batch` there."""
    log_dir = str(pathlib.Path(workdir) / common.LOGS_DIR)
    callbacks = [keras.callbacks.TensorBoard(log_dir=log_dir)]
    if grad_batch is not None:
        callbacks.append(keras_vrnn.GradientNormCallback(
            log_dir, data=grad_batch, every_n_batches=every_n_batches, resume=resume))
    return callbacks


def fit_resumable(model, workdir, config, train, validation, *, steps_per_epoch,
                  validation_batch_size, grad_rows, whole_passes=False):
    """`model.fit` as a resumable, divergence-checked run on the batches
    `shuffled_batch_indices` from the restored epoch on, with RunBackup,
    DivergenceMonitor, TensorBoard, gradient norms on the rows `grad_rows`,
    the best checkpoint and EpochHistory. Returns `(monitor, first_epoch,
    train_time_s)`; `first_epoch > 0` if resumed."""
    x, y = train
    monitor = DivergenceMonitor()
    backup = RunBackup(workdir, monitor)
    first_epoch = (common.read_backup(workdir) or {}).get("epoch", 0)
    kept = common.load_history(workdir).get("val_loss", [])[:first_epoch]
    kept = [v for v in kept if math.isfinite(v)]
    callbacks = [backup, monitor, *logging_callbacks(
        workdir, (x[grad_rows], y[grad_rows]), config.grad_every_n_batches, resume=True),
        BestModelCheckpoint(pathlib.Path(workdir) / common.CHECKPOINT_FILE,
                            min(kept) if kept else None),
        EpochHistory(workdir, backup)]
    if os.environ.get(common.TEST_BATCH_SLEEP_ENV):
        seconds = float(os.environ[common.TEST_BATCH_SLEEP_ENV])
        callbacks.append(keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: time.sleep(seconds)))
    start = time.perf_counter()
    if first_epoch < config.epochs:
        batches = shuffled_batch_indices(
            len(x), config.batch_size, config.seed, first_epoch * steps_per_epoch,
            (config.epochs - first_epoch) * steps_per_epoch, whole_passes)
        model.fit(batch_dataset((x, y), batches), epochs=config.epochs,
                  initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch, shuffle=False,
                  validation_data=validation, validation_batch_size=validation_batch_size,
                  callbacks=callbacks, verbose=config.verbose)
    return monitor, first_epoch, time.perf_counter() - start


def build_trained_model(config, build, strategy, compile_kwargs):
    """Builds (`build()`) and compiles the model in `strategy.scope()` with
    the configured optimizer, and loads `--init_from`."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build()
        model.compile(optimizer=make_optimizer(
            config.optimizer, config.learning_rate, config.clipnorm), **compile_kwargs)
    if config.init_from is not None:
        load_initial_weights(model, config.init_from)
    return model


def recurrent_initializer(gain, seed):
    """Keras' "orthogonal", or `ScaledOrthogonal(gain)` for a recurrent gain."""
    if gain is None:
        return "orthogonal"
    return keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)


def fit_steps(model, config_dir, settings, make_train, validation_data, grad_data,
              callbacks=(), **fit_kwargs):
    """Trains `train_steps // steps_per_epoch` logged epochs (at least one) of
    `steps_per_epoch` batches from `make_train(n)`, with `DivergenceMonitor`, `callbacks`,
    TensorBoard and (given `grad_data`) gradient norms in `<config_dir>/logs`.
    Returns `(history, monitor)`."""
    spe = min(settings["steps_per_epoch"], settings["train_steps"])
    epochs = max(1, settings["train_steps"] // spe)
    x, y = make_train(epochs * spe * settings["batch_size"])
    monitor = DivergenceMonitor()
    history = model.fit(
        x, y, batch_size=settings["batch_size"], epochs=epochs, steps_per_epoch=spe,
        shuffle=False, validation_data=validation_data, verbose=0, **fit_kwargs,
        callbacks=[monitor, *callbacks, *logging_callbacks(
            config_dir, grad_data, settings["grad_every_n_batches"])]).history
    return history, monitor
