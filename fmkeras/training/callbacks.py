"""The standard callback set of a run directory, and the NaN guard."""

from __future__ import annotations

import csv
import json
import math
import os

import keras

from fmkeras.errors import FmkerasError


class NonFiniteLossError(FmkerasError):
    """Training produced a NaN or infinite loss."""


class NaNGuard(keras.callbacks.Callback):
    """Stop training with an error when a watched metric becomes NaN or infinite.

    Unlike ``keras.callbacks.TerminateOnNaN``, which watches only ``loss`` and
    ends the run quietly, this raises :class:`NonFiniteLossError` naming the
    epoch, batch and metric, so the caller (and the CLI exit code) sees the
    failure. Checkpoints written before the bad batch are left intact.

    Args:
        monitor: tuple of str. Metric names to watch in the batch logs.

    Example:

    >>> guard = NaNGuard(monitor=("loss",))
    """

    def __init__(self, monitor=("loss",)):
        super().__init__()
        # Checked on Keras' callback thread: training is not synced per batch, and the
        # error still names the batch (Keras re-raises it at the next dispatch).
        self.async_safe = True
        self.monitor = tuple(monitor)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key in self.monitor:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self.model.stop_training = True
                raise NonFiniteLossError(
                    f"Training stopped: {key} became {float(value)} at epoch {self._epoch + 1}, "
                    f"batch {batch}. Expected finite values; lower the learning rate or check "
                    f"the data. The last good checkpoint is kept.")


def prepare_resume(run_dir):
    """Get ``run_dir`` ready to resume; return the completed epochs, or ``None``.

    ``BackupAndRestore`` resumes from the last completed epoch. The history
    may hold a row for an epoch the backup does not (killed between the two
    writes), so rows from that epoch on are dropped: each epoch appears once.

    Args:
        run_dir: str. The run directory.

    Example:

    >>> prepare_resume("/nonexistent/run") is None
    True
    """
    metadata = os.path.join(run_dir, "checkpoints", "backup", "training_metadata.json")
    if not os.path.exists(metadata):
        return None
    with open(metadata, encoding="utf-8") as f:
        completed = int(json.load(f).get("epoch", 0))
    history = os.path.join(run_dir, "history.csv")
    if os.path.exists(history):
        with open(history, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < completed]
        with open(history, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(kept)
    return completed


def close_files(callbacks):
    """Close files callbacks left open when ``fit`` ended by an exception.

    ``CSVLogger`` closes its file in ``on_train_end``, which Keras skips when
    training raises; the history written so far must still reach the disk.

    Example:

    >>> close_files([])
    """
    for callback in callbacks:
        handle = getattr(callback, "csv_file", None)
        if handle is not None and not handle.closed:
            handle.close()


def standard_callbacks(run_dir, monitor="val_loss", early_stopping_patience=None,
                       reduce_lr_patience=None, resume=False, extra=()):
    """The callbacks every fmkeras training run uses.

    Writes into ``run_dir``: ``checkpoints/best.keras`` (best ``monitor``),
    ``checkpoints/backup/`` (``BackupAndRestore``: rerunning an interrupted
    run in the same directory resumes it), ``history.csv`` and
    ``tensorboard/``.

    Args:
        run_dir: str. The run directory.
        monitor: str. Metric for the best checkpoint and early stopping.
        early_stopping_patience: optional int. Epochs without improvement
            before stopping (best weights restored); ``None`` disables it.
        reduce_lr_patience: optional int. Epochs without improvement before
            halving the learning rate; ``None`` disables it.
        resume: bool. Append to an existing ``history.csv`` (a resumed run).
        extra: iterable of more callbacks, appended at the end.

    Returns:
        list of ``keras.callbacks.Callback``.

    Example:

    >>> callbacks = standard_callbacks("/tmp/fmkeras-example-run")
    >>> type(callbacks[0]).__name__
    'BackupAndRestore'
    """
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    backup = keras.callbacks.BackupAndRestore(os.path.join(checkpoints, "backup"))
    best = keras.callbacks.ModelCheckpoint(
        os.path.join(checkpoints, "best.keras"), monitor=monitor, save_best_only=True)
    # With per-epoch saving their batch hooks do nothing, so Keras may keep
    # dispatching steps asynchronously instead of syncing after every batch.
    backup.async_safe = best.async_safe = True
    callbacks = [
        backup,
        NaNGuard(),
        best,
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
    ]
    if reduce_lr_patience is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=reduce_lr_patience))
    if early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=early_stopping_patience, restore_best_weights=True))
    callbacks.extend(extra)
    return callbacks
