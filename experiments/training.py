"""The Keras callbacks of the experiments, and `fit` as a resumable run.

Imported once training starts (it imports Keras and TensorFlow), so that
parsing and validation stay fast; see `experiments.common` for the run
directory these callbacks write into.
"""

import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

import keras_vrnn
from experiments import common


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


class _SleepAfterBatch(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


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
    """`model.fit` as a resumable, divergence-checked training run.

    The batches are `shuffled_batch_indices` of (seed, batch number), from the
    restored epoch on; callbacks: `RunBackup`, `DivergenceMonitor`,
    TensorBoard, gradient norms on the training rows `grad_rows`, the best
    checkpoint (its threshold: the best kept epoch) and `EpochHistory`.

    Returns:
        `(monitor, first_epoch, train_time_s)`; `first_epoch > 0` if resumed.
    """
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
        callbacks.append(_SleepAfterBatch(float(os.environ[common.TEST_BATCH_SLEEP_ENV])))
    start = time.perf_counter()
    if first_epoch < config.epochs:
        batches = common.shuffled_batch_indices(
            len(x), config.batch_size, config.seed, first_epoch * steps_per_epoch,
            (config.epochs - first_epoch) * steps_per_epoch, whole_passes)
        model.fit(common.batch_dataset((x, y), batches), epochs=config.epochs,
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
        model.compile(optimizer=common.make_optimizer(
            config.optimizer, config.learning_rate, config.clipnorm), **compile_kwargs)
    if config.init_from is not None:
        common.load_initial_weights(model, config.init_from)
    return model


def recurrent_initializer(gain, seed):
    """Keras' "orthogonal", or `ScaledOrthogonal(gain)` for a recurrent gain."""
    if gain is None:
        return "orthogonal"
    return keras_vrnn.initializers.ScaledOrthogonal(gain=gain, seed=seed)


def weights_finite(model):
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
