"""Resumable training state: atomic, checked, refused when the run changed.

:class:`ResumableBackup` replaces ``keras.callbacks.BackupAndRestore``:

- at the end of an epoch it writes ``backup/epoch-NNNN.weights.h5`` (model
  and optimizer variables) to a temporary name, renames it into place, then
  records ``state.json``; the two newest epochs are kept;
- with ``interval_s`` > 0 it writes at most once per ``interval_s`` seconds
  (the ``checkpoint_every_s`` config key; short epochs would otherwise spend
  a large share of their time writing files). An epoch it does not write is
  kept in memory, and :meth:`ResumableBackup.flush` writes it when training
  stops by an exception, Ctrl-C or SIGTERM (the tasks call it through
  :func:`fmkeras.training.callbacks.after_fit`); only a hard kill loses
  work, at most ``interval_s`` seconds of it;
- when training starts it restores the newest checkpoint that loads; a
  truncated, zero-byte or foreign file is skipped with a warning naming it,
  and if none loads the run starts fresh from its initial weights (never a
  half-loaded model);
- a resume whose model, optimizer, batch size or data differ from the saved
  run is refused with the differing keys listed, unless ``force=True``;
- the backup is deleted only when training ends normally, so it survives a
  run that stops by NaN, exception or signal.

The contract for an interrupted epoch: it restarts from its beginning, with
its own data order (pipelines keyed to the epoch), so no batch counts twice.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import shutil
import time
import warnings

import keras
import numpy as np

from fmkeras.errors import ConfigError

STATE_FILE = "state.json"
_NAME = re.compile(r"epoch-(\d+)\.weights\.h5$")


def _flatten(data, prefix=""):
    flat = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_keys(saved, current):
    """Dotted keys whose values differ between two nested dicts.

    Example:

    >>> differing_keys({"model": {"depth": 8}}, {"model": {"depth": 20}})
    ['model.depth']
    """
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def read_state(backup_dir):
    """The saved ``state.json`` of a backup folder, or ``None``.

    Example:

    >>> read_state("/nonexistent") is None
    True
    """
    path = os.path.join(backup_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _truncate_history(path, completed):
    if not path or not os.path.exists(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < completed]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)


class Interval:
    """A clock that says when ``seconds`` have passed since the last :meth:`reset`.

    ``seconds`` <= 0 means always due.

    Example:

    >>> Interval(0).due(), Interval(3600).due()
    (True, False)
    """

    def __init__(self, seconds=0.0):
        self.seconds = float(seconds)
        self.reset()

    def reset(self):
        """Start counting again from now."""
        self._last = time.monotonic()

    def due(self):
        """Whether ``seconds`` have passed since the last reset."""
        return self.seconds <= 0 or time.monotonic() - self._last >= self.seconds


def snapshot(variables):
    """Host copies of ``variables`` (to write later with :func:`written_from`).

    Example:

    >>> import keras
    >>> v = keras.Variable([1.0, 2.0])
    >>> snapshot([v])[0].tolist()
    [1.0, 2.0]
    """
    return [np.array(v.numpy(), copy=True) for v in variables]


def written_from(variables, values, write):
    """Call ``write()`` while ``variables`` hold ``values``, then put back what they held.

    Example:

    >>> import keras
    >>> v = keras.Variable([1.0])
    >>> written_from([v], [[5.0]], lambda: print(v.numpy()))
    [5.]
    >>> v.numpy()
    array([1.], dtype=float32)
    """
    current = snapshot(variables)
    try:
        for variable, value in zip(variables, values):
            variable.assign(value)
        write()
    finally:
        for variable, value in zip(variables, current):
            variable.assign(value)


def has_backup(backup_dir):
    """Whether ``backup_dir`` holds an epoch checkpoint (a run to resume).

    Example:

    >>> has_backup("/nonexistent")
    False
    """
    return bool(glob.glob(os.path.join(backup_dir, "epoch-*.weights.h5")))


class ResumableBackup(keras.callbacks.Callback):
    """Back up training at epoch ends and resume from the newest good backup.

    The backup outlives ``fit`` (with its last epoch), so work done after
    training (evaluation, export) can be interrupted without losing it: a
    later ``fit`` in the same folder restores that epoch and trains only
    the epochs left. Call :func:`remove_backups` when the run is complete,
    so that the next run in the folder starts afresh.

    Args:
        backup_dir: str. Folder for the backups (``<run_dir>/checkpoints/backup``).
        identity: dict. What must match to resume (resolved model, optimizer
            and batch settings, a fingerprint of the data).
        force: bool. Resume even when ``identity`` differs.
        keep: int. How many epoch checkpoints to keep.
        history_path: optional str. A ``CSVLogger`` file; rows of epochs the
            restored checkpoint does not hold are dropped, so each epoch
            appears once.
        interval_s: float. Write at most once per this many seconds; an
            epoch not written waits in memory for the next write or for
            :meth:`flush`. 0 writes every epoch.

    Example:

    >>> backup = ResumableBackup("/tmp/fmkeras-example/backup", {"model": {"depth": 8}})
    """

    def __init__(self, backup_dir, identity=None, force=False, keep=2, history_path=None,
                 interval_s=0.0):
        super().__init__()
        self.backup_dir = backup_dir
        self.run_dir = os.path.dirname(os.path.dirname(backup_dir))  # <run>/checkpoints/backup
        self.history_path = history_path
        self.identity = identity or {}
        self.force = force
        self.keep = max(1, int(keep))
        self.restored_epoch = None
        self.clock = Interval(interval_s)
        self._pending = None  # (completed epochs, variable values) not yet written
        # Only the epoch hooks act: keep Keras' asynchronous step dispatch.
        self.async_safe = True

    def _checkpoints(self):
        found = []
        for path in glob.glob(os.path.join(self.backup_dir, "epoch-*.weights.h5")):
            match = _NAME.search(path)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def check_identity(self):
        """Raise ``ConfigError`` if the saved run differs from this one (unless forced)."""
        state = read_state(self.backup_dir)
        if state is None or self.force:
            return
        changed = differing_keys(state.get("identity", {}), self.identity)
        if changed:
            raise ConfigError(
                f"Refusing to resume the run in {self.run_dir!r}: these settings changed since it "
                f"was interrupted: {', '.join(changed)}. "
                "Expected the same model, optimizer, batch size and data; use a new run "
                "directory, or --force-resume to resume anyway.")

    def on_train_begin(self, logs=None):
        # A model fitted before (fine-tuning phases) keeps the epoch an earlier restore
        # set; Keras would start this fit there.
        self.model._initial_epoch = None
        self._pending = None
        self.clock.reset()
        self.check_identity()
        checkpoints = self._checkpoints()
        if not checkpoints:
            return
        self._restore(checkpoints)
        epochs = (self.params or {}).get("epochs")
        if self.restored_epoch and epochs is not None and self.restored_epoch > epochs:
            raise ConfigError(
                f"The run in {self.run_dir!r} already trained {self.restored_epoch} epochs, more "
                f"than the {epochs} this run asks for (train.epochs). Expected train.epochs >= "
                f"{self.restored_epoch} to resume it, or a new run directory.")
        _truncate_history(self.history_path, self.restored_epoch or 0)

    def _optimizers(self):
        """The model's optimizers, built so their slots can be restored."""
        build = getattr(self.model, "build_optimizers", None)
        if callable(build):  # models with several optimizers (the GAN) build their own
            return build()
        optimizer = self.model.optimizer
        if optimizer is None:
            return []
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        return [optimizer]

    def _variables(self):
        """What a backup holds: the model's variables and its optimizers'."""
        variables = list(self.model.variables)
        for optimizer in self._optimizers():
            variables += list(optimizer.variables)
        return variables

    def _restore(self, checkpoints):
        variables = self._variables()
        initial = [v.numpy() for v in variables]

        def reset():  # undo a partial load
            for variable, value in zip(variables, initial):
                variable.assign(value)

        for epoch, path in checkpoints:
            try:
                self._load(path)
            except Exception as err:  # noqa: BLE001 - any unreadable file means: try the older one
                reset()
                reason = str(err).splitlines()[0] if str(err) else ""
                warnings.warn(f"Skipping unusable checkpoint {path}: {type(err).__name__}: "
                              f"{reason}", RuntimeWarning, stacklevel=3)
                continue
            self.model._initial_epoch = epoch
            self.restored_epoch = epoch
            return
        reset()
        warnings.warn(f"No usable checkpoint in {self.backup_dir}; starting from scratch.",
                      RuntimeWarning, stacklevel=3)

    def _load(self, path):
        """Load all of a checkpoint, or raise: Keras' mismatch warnings count as failures."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # A forced resume may change the optimizer: keep what still fits.
            self.model.load_weights(path, skip_mismatch=self.force)
        problems = [str(w.message).splitlines()[0] for w in caught
                    if issubclass(w.category, UserWarning)]
        if problems and not self.force:
            raise ValueError(f"checkpoint does not match this model: {problems[0]}")
        if problems:
            warnings.warn(f"Forced resume from {path}: some state was not restored "
                          f"({problems[0]})", RuntimeWarning, stacklevel=4)

    def on_epoch_end(self, epoch, logs=None):
        if logs and any(isinstance(v, float) and not math.isfinite(v) for v in logs.values()):
            return  # never back up an epoch that ended in NaN
        if self.clock.due():
            self._pending = None
            self._write(epoch + 1)
        else:
            self._pending = (epoch + 1, snapshot(self._variables()))

    def flush(self):
        """Write the newest completed epoch if the interval held it back.

        Call after ``fit`` raised (the weights then are mid-epoch; the
        held-back values are those at the end of the epoch).
        """
        if self._pending is None:
            return
        completed, values = self._pending
        self._pending = None
        written_from(self._variables(), values, lambda: self._write(completed))

    def _write(self, completed):
        os.makedirs(self.backup_dir, exist_ok=True)
        final = os.path.join(self.backup_dir, f"epoch-{completed:04d}.weights.h5")
        tmp = os.path.join(self.backup_dir, f".tmp-epoch-{completed:04d}.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        os.replace(tmp, final)
        state_tmp = os.path.join(self.backup_dir, f".{STATE_FILE}.tmp")
        with open(state_tmp, "w", encoding="utf-8") as f:
            json.dump({"epoch": completed, "identity": self.identity}, f, indent=1,
                      sort_keys=True)
        os.replace(state_tmp, os.path.join(self.backup_dir, STATE_FILE))
        for _, old in self._checkpoints()[self.keep:]:
            os.remove(old)
        self.clock.reset()

    def on_train_end(self, logs=None):
        # Reached only when fit returns normally. The backup stays (with the last
        # epoch) until the task has evaluated and exported too (``remove_backups``):
        # interrupted after training, a rerun restores it and trains no more epochs.
        self.flush()


def remove_backups(run_dir):
    """Remove what lets a rerun resume: ``checkpoints/backup*`` and finished-phase markers.

    Tasks call it last, once evaluation, report and export are written; a
    rerun in the same directory then starts a fresh run.

    Example:

    >>> remove_backups("/nonexistent/run")  # nothing there: nothing to do
    """
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith("backup") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith("phase") and name.endswith("_done.npz"):
            os.remove(path)
