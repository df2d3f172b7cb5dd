"""The standard callback set of a run directory, and the NaN guard."""

from __future__ import annotations

import json
import math
import os
import time
import warnings

import keras
import numpy as np

from fmkeras.errors import FmkerasError
from fmkeras.training.checkpoints import (
    Interval,
    ResumableBackup,
    has_backup,
    snapshot,
    written_from,
)


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


class LossScaleGuard(keras.callbacks.Callback):
    """Stop when mixed-precision loss scaling has collapsed (steps keep being skipped).

    Under ``mixed_float16`` Keras wraps the optimizer in a
    ``LossScaleOptimizer``, which skips a step and halves its loss scale
    whenever the gradients are not finite. From the initial ``2**15``, a
    scale below ``min_scale`` means at least that many more skipped steps
    than successful growth: the run is silently learning nothing. This
    raises :class:`NonFiniteLossError` instead. A no-op without loss scaling.

    Args:
        min_scale: float. Loss scale below which training stops.
        check_every: int. Batches between checks (reading the scale syncs
            with the device).

    Example:

    >>> guard = LossScaleGuard(min_scale=1.0)  # pass to model.fit(callbacks=[...])
    """

    def __init__(self, min_scale=1.0, check_every=10):
        super().__init__()
        self.min_scale = float(min_scale)
        self.check_every = max(1, int(check_every))
        self._epoch = 0
        # Checked on Keras' callback thread: training is not synced per batch.
        self.async_safe = True

    def _scale(self):
        optimizer = getattr(self.model, "optimizer", None)
        scale = getattr(optimizer, "dynamic_scale", None)
        return None if scale is None else float(keras.ops.convert_to_numpy(scale))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every:
            return
        scale = self._scale()
        if scale is not None and scale < self.min_scale:
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"Training stopped: the mixed-precision loss scale collapsed to {scale:g} at "
                f"epoch {self._epoch + 1}, batch {batch}: the gradients keep overflowing, so "
                "the optimizer skips every step and nothing is learned. Expected finite "
                "gradients; try --precision float32 or mixed_bfloat16, or a lower learning "
                "rate. The last good checkpoint is kept.")


class EpochSeeds(keras.callbacks.Callback):
    """Reseed every random layer (dropout, noise, ...) from ``(seed, epoch)`` at each epoch.

    ``BackupAndRestore`` restores weights and the optimizer but not the state
    of the layers' ``SeedGenerator`` s, so a resumed run would draw other
    dropout masks than an uninterrupted one. Keying each generator to the
    epoch makes the draws of an epoch the same however the run got there.

    Args:
        seed: int. The run's seed.

    Example:

    >>> seeds = EpochSeeds(42)  # pass to model.fit(callbacks=[...])
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        generators = []
        for layer in self.model._flatten_layers(include_self=True):
            generators.extend(value for value in vars(layer).values()
                              if isinstance(value, keras.random.SeedGenerator))
        for i, generator in enumerate(generators):
            generator.state.assign(np.array([self.seed * 1009 + i, epoch << 20],
                                            dtype=generator.state.dtype))


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every ``every`` steps, move an average toward the weights, then
    set the weights to it, and once more at the last step: the planned one, or
    the batch where a callback listed before this one (:class:`TimeBudget`)
    stops training.

    The average covers every floating-point variable of the model, batch-norm
    moving statistics included. Its decay at step ``t`` of ``total_steps`` is
    ``decay * (t / total_steps) ** power``: zero at first (the weights train
    freely), rising to ``decay`` at the end, when the average smooths the
    noise of the last, small steps of a one-cycle schedule. The step is the
    optimizer's ``iterations``, so a resumed run (``BackupAndRestore``) keeps
    its place in the schedule; its average restarts from the restored weights.

    Args:
        total_steps: int. The run's optimizer steps.
        every: int. Steps between updates (airbench: 5).
        decay: float in [0, 1). The last update's decay (airbench: ``0.95 ** 5``).
        power: float. Shape of the decay's rise (airbench: 3).

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> history = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=2,
    ...                     verbose=0, callbacks=[Lookahead(total_steps=8, every=2)])
    >>> int(model.optimizer.iterations)
    8
    """

    def __init__(self, total_steps, every=5, decay=0.95 ** 5, power=3.0):
        super().__init__()
        for name, value, low in (("total_steps", total_steps, 1), ("every", every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Lookahead's {name} must be an integer of at least {low}. "
                                 f"Received: {name}={value!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Lookahead's decay must be in [0, 1). Received: decay={decay!r}")
        self.total_steps, self.every = total_steps, every
        self.decay, self.power = float(decay), float(power)
        self._average, self._last = None, 0

    def _variables(self):
        return [v for v in self.model.variables
                if "float" in keras.backend.standardize_dtype(v.dtype)]

    def on_train_begin(self, logs=None):
        self._average = None  # from the weights of this fit (or of the restored backup)
        self._last = self._step()

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution, a call can cover several steps: an update is due
        # whenever the steps since the last call cross a multiple of ``every``.
        step = self._step()
        last, self._last = self._last, step
        if step > self.total_steps:
            return
        # A callback before this one (TimeBudget) that stops training makes this batch
        # the last: averaged now, before the epoch's validation and checkpoints.
        if (step // self.every > last // self.every or step == self.total_steps
                or self.model.stop_training):
            self._apply(self.decay * (step / self.total_steps) ** self.power)

    def _step(self):
        # A MirroredVariable under a strategy: read through numpy, not int().
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _apply(self, decay):
        variables = self._variables()
        weights = [np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in variables]
        if self._average is None:
            self._average = weights
        else:
            for average, weight in zip(self._average, weights):
                average += (1.0 - decay) * (weight - average)
        for variable, average in zip(variables, self._average):
            variable.assign(average.astype(keras.backend.standardize_dtype(variable.dtype)))


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` once ``seconds`` of wall time have passed since it started.

    Checked after every batch (after every call, with
    ``steps_per_execution``), so the run stops at the first batch past the
    budget and then ends its epoch as usual (validation, checkpoints). The
    learning-rate schedule is not shortened: a one-cycle or cosine schedule
    stopped this way has not decayed, so size ``epochs`` to the budget and
    keep this as the limit: after the first epoch, a warning says when the
    epochs asked for will not fit, and how many would. Not for
    ``MultiWorkerMirroredStrategy``: each worker reads its own clock, and a
    worker that stops a batch before the others leaves them waiting in a
    collective.

    Attributes:
        steps: int. Batches run (calls, with ``steps_per_execution``).
        stopped_early: bool. Whether the budget ended the run.
        start: float. ``time.perf_counter()`` when ``fit`` started.
        first_step_end: float. ``time.perf_counter()`` after the first
            batch, which includes tracing: throughput is best measured
            from there.

    Args:
        seconds: float. The budget, above 0.
        per_fit: bool. ``True``: each ``fit`` gets the whole budget (and the
            counts restart). ``False``: one budget for every ``fit`` the
            callback is given to, from the first one's start (a fine-tuning
            run's phases): a ``fit`` that starts after it is spent stops
            after its first batch.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> budget = TimeBudget(seconds=1e-9)
    >>> history = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=3,
    ...                     verbose=0, callbacks=[budget])
    >>> budget.steps, budget.stopped_early, len(history.history["loss"])
    (1, True, 1)
    """

    def __init__(self, seconds, per_fit=True):
        super().__init__()
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"TimeBudget's seconds must be a number above 0. "
                             f"Received: seconds={seconds!r}")
        self.seconds = float(seconds)
        self.per_fit = bool(per_fit)
        self.start = self.first_step_end = None
        self.steps = 0
        self.stopped_early = False
        self._projected = False

    def on_train_begin(self, logs=None):
        if self.per_fit or self.start is None:
            self.start = time.perf_counter()
            self.first_step_end = None
            self.steps = 0
            self.stopped_early = False
            self._projected = False

    def on_epoch_end(self, epoch, logs=None):
        # Once, after the budget's first epoch: will the epochs asked for fit?
        if self._projected or self.model.stop_training:
            return
        self._projected = True
        left = self.params.get("epochs", epoch + 1) - epoch - 1
        if left <= 0 or not self.steps:
            return
        now = time.perf_counter()
        per_epoch = now - self.start  # without the first step's tracing, where it can be told
        if self.steps > 1:
            per_epoch = (now - self.first_step_end) * self.steps / (self.steps - 1)
        need = now - self.start + left * per_epoch
        if need > self.seconds:
            fit = epoch + 1 + max(0, int((self.seconds - (now - self.start)) // per_epoch))
            warnings.warn(
                f"At about {per_epoch:.3g} s an epoch, {epoch + 1 + left} epochs need about "
                f"{need / 60:.3g} min, past the {self.seconds / 60:.3g}-min time budget: "
                f"training will stop before the last epoch and the end of the learning-rate "
                f"schedule. About {fit} epoch{'s' if fit != 1 else ''} fit.", UserWarning,
                stacklevel=1)  # named here, not in Keras' callback list: the CLI's own line

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        now = time.perf_counter()
        if self.first_step_end is None:
            self.first_step_end = now
        if now - self.start >= self.seconds:
            self.model.stop_training = True
            self.stopped_early = True


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint(save_best_only=True)`` whose best value survives a resume.

    The best value so far is written beside the checkpoint
    (``<file>.best.json``) after each save and read back when training
    starts, so a resumed run does not overwrite a better checkpoint with the
    first epoch it trains. With ``interval_s`` > 0 the file is written at
    most once per ``interval_s`` seconds: a better epoch in between waits in
    memory and is written when the interval has passed, when training ends
    or by :meth:`flush`.

    Args:
        filepath: str. The ``.keras`` file.
        monitor: str. Metric to watch.
        interval_s: float. Seconds between writes; 0 writes every improvement.
        mode: ``"auto"``, ``"min"`` or ``"max"``, as in ``ModelCheckpoint``:
            ``"auto"`` takes lower as better for losses and higher for
            accuracies; other metrics (a GAN's ``g_loss`` counts) need
            ``"min"`` or ``"max"``.

    Example:

    >>> best = BestCheckpoint("/tmp/fmkeras-example/best.keras", monitor="val_loss")
    """

    def __init__(self, filepath, monitor="val_loss", interval_s=0.0, mode="auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Expected mode 'auto', 'min' or 'max'. Received: mode={mode!r}")
        super().__init__(filepath, monitor=monitor, save_best_only=True, mode=mode)
        self.mode = mode
        self.state_path = f"{filepath}.best.json"
        self.clock = Interval(interval_s)
        self._pending = None  # (epoch, weights) of a best epoch not yet written
        # Only the epoch hooks act: keep Keras' asynchronous step dispatch.
        self.async_safe = True

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._pending = None
        self.clock.reset()
        if os.path.exists(self.state_path) and os.path.exists(self.filepath):
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
            if (state.get("monitor") == self.monitor
                    and state.get("mode", "auto") == self.mode):
                self.best = float(state["best"])

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self._should_save_model(epoch, None, logs, self.filepath):
            self._pending = None
            if self.clock.due():
                self._write(epoch)
            else:
                self._pending = (epoch, snapshot(self.model.weights))
        elif self._pending is not None and self.clock.due():
            self.flush()

    def _write(self, epoch):
        dirname = os.path.dirname(self.filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        self.model.save(self.filepath, overwrite=True)
        if self.best is not None:
            tmp = f"{self.state_path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"monitor": self.monitor, "mode": self.mode,
                           "best": float(self.best), "epoch": epoch}, f)
            os.replace(tmp, self.state_path)
        self.clock.reset()

    def flush(self):
        """Write the best epoch the interval held back, if any."""
        if self._pending is None:
            return
        epoch, values = self._pending
        self._pending = None
        written_from(self.model.weights, values, lambda: self._write(epoch))

    def on_train_end(self, logs=None):
        self.flush()


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """``keras.callbacks.TensorBoard`` writing per-epoch summaries without syncing every batch.

    Keras' TensorBoard does per-batch work in ``on_train_batch_end`` even
    when it writes per epoch (a scalar call for every log, profiler
    checks): about 0.4 ms a step on a CPU, a fifth of the callbacks' time
    in a digits epoch of the default job. Writing per epoch, without the graph or a
    profile, that hook has nothing to do, so this subclass skips it (and
    declares itself safe for Keras' asynchronous callback dispatch on the
    backends that use it).

    Args:
        log_dir: str. Where the event files go.
        **kwargs: other ``TensorBoard`` arguments except ``update_freq``,
            ``write_graph`` and ``profile_batch`` (fixed: ``"epoch"``,
            ``False``, 0).

    Example:

    >>> board = EpochTensorBoard("/tmp/fmkeras-example/tensorboard")
    >>> board.update_freq, board.async_safe
    ('epoch', True)
    """

    def __init__(self, log_dir, **kwargs):
        super().__init__(log_dir, update_freq="epoch", write_graph=False, profile_batch=0,
                         **kwargs)
        self.async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        return  # per-epoch summaries only: no per-batch work


def prepare_resume(run_dir):
    """Whether ``run_dir`` holds an interrupted run to resume.

    Example:

    >>> prepare_resume("/nonexistent/run")
    False
    """
    return has_backup(os.path.join(run_dir, "checkpoints", "backup"))


def resumable_callbacks(run_dir, identity=None, force_resume=False, nan_guard=True,
                        every_s=0.0):
    """Backup (so a rerun resumes), ``history.csv`` and TensorBoard, without a best checkpoint.

    For tasks whose product is not "the best classifier" (pretraining, GANs).

    Args:
        run_dir: str. The run directory.
        identity: optional dict. What must match to resume.
        force_resume: bool. Resume even if ``identity`` changed.
        nan_guard: bool. Add :class:`NaNGuard` (it watches ``loss``).
        every_s: float. Write the backup at most this often, in seconds
            (0: every epoch); see :class:`ResumableBackup`.

    Example:

    >>> [type(c).__name__ for c in resumable_callbacks("/tmp/fmkeras-example-run")][:2]
    ['ResumableBackup', 'NaNGuard']
    """
    history = os.path.join(run_dir, "history.csv")
    resume = prepare_resume(run_dir)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    callbacks = [ResumableBackup(os.path.join(run_dir, "checkpoints", "backup"), identity,
                                 force_resume, history_path=history, interval_s=every_s)]
    if nan_guard:
        callbacks += [NaNGuard(), LossScaleGuard()]
    callbacks += [keras.callbacks.CSVLogger(history, append=resume),
                  EpochTensorBoard(os.path.join(run_dir, "tensorboard"))]
    return callbacks


def after_fit(callbacks):
    """Finish what callbacks left undone when ``fit`` ended by an exception.

    Call it in a ``finally`` after ``fit``. Keras skips ``on_train_end`` when
    training raises, so:

    - checkpoints held back by ``checkpoint_every_s`` (the ``flush`` of
      :class:`ResumableBackup` and :class:`BestCheckpoint`) are written: the
      rerun resumes after the last completed epoch;
    - files left open (``CSVLogger``'s) are closed, so the history written so
      far reaches the disk.

    After a normal ``fit`` there is nothing left to do.

    Example:

    >>> after_fit([])
    """
    for callback in callbacks:
        flush = getattr(callback, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception as err:  # noqa: BLE001 - never hide the error that stopped fit
                warnings.warn(f"Could not write the last checkpoint of {type(callback).__name__}:"
                              f" {type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
    for callback in callbacks:
        handle = getattr(callback, "csv_file", None)
        if handle is not None and not handle.closed:
            handle.close()


def standard_callbacks(run_dir, monitor="val_loss", early_stopping_patience=None,
                       reduce_lr_patience=None, resume=False, extra=(), seed=None,
                       identity=None, force_resume=False, every_s=0.0):
    """The callbacks every fmkeras training run uses.

    Writes into ``run_dir``: ``checkpoints/best.keras`` (best ``monitor``),
    ``checkpoints/backup/`` (:class:`ResumableBackup`: rerunning an
    interrupted run in the same directory resumes it; the backup stays after
    ``fit`` until :func:`fmkeras.training.checkpoints.remove_backups`),
    ``history.csv`` and ``tensorboard/``.

    Args:
        run_dir: str. The run directory.
        monitor: str. Metric for the best checkpoint and early stopping.
        early_stopping_patience: optional int. Epochs without improvement
            before stopping (best weights restored); ``None`` disables it.
        reduce_lr_patience: optional int. Epochs without improvement before
            halving the learning rate; ``None`` disables it.
        resume: bool. A resumed run: append to an existing ``history.csv`` and
            keep the best checkpoint so far. A fresh run (``False``) removes a
            previous run's ``best.keras``, so neither its weights nor its best
            value carry into this run.
        extra: iterable of more callbacks, appended at the end.
        seed: optional int. Adds :class:`EpochSeeds`, so random layers draw the
            same values in an epoch whether or not the run was resumed.
        identity: optional dict. What must match to resume (see
            :class:`fmkeras.training.checkpoints.ResumableBackup`).
        force_resume: bool. Resume even if ``identity`` changed.
        every_s: float. Write the backup and the best checkpoint at most this
            often, in seconds (0: at every epoch end); held-back epochs are
            written by :func:`after_fit` if ``fit`` raises.

    Returns:
        list of ``keras.callbacks.Callback``.

    Example:

    >>> callbacks = standard_callbacks("/tmp/fmkeras-example-run")
    >>> type(callbacks[0]).__name__
    'ResumableBackup'
    """
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    best_path = os.path.join(checkpoints, "best.keras")
    if not resume:
        for stale in (best_path, f"{best_path}.best.json"):
            if os.path.exists(stale):
                os.remove(stale)
    backup = ResumableBackup(os.path.join(checkpoints, "backup"), identity, force_resume,
                             history_path=os.path.join(run_dir, "history.csv"),
                             interval_s=every_s)
    best = BestCheckpoint(best_path, monitor=monitor,
                          interval_s=every_s)
    callbacks = [
        backup,
        NaNGuard(),
        LossScaleGuard(),
        best,
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resume),
        EpochTensorBoard(os.path.join(run_dir, "tensorboard")),
    ]
    if reduce_lr_patience is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=reduce_lr_patience))
    if early_stopping_patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, patience=early_stopping_patience, restore_best_weights=True))
    if seed is not None:
        callbacks.append(EpochSeeds(seed))
    callbacks.extend(extra)
    return callbacks
