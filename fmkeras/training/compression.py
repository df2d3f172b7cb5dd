"""Compression: Keras weight quantization, magnitude pruning, and what they buy.

:func:`quantize` returns a copy of a model with Keras' own quantized layers
(``int8`` or ``float8`` kernels for Dense, EinsumDense and Embedding
layers). :func:`prune` zeroes the smallest-magnitude kernel weights of each
Dense/convolution layer in place; :class:`PruningCallback` does the same
gradually during training, holding pruned weights at zero;
:func:`sparsity` reports the result. :func:`model_size` and
:func:`predict_latency_ms` measure a model before and after.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
import warnings

import keras
import numpy as np

from fmkeras._gc import collect_once
from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_number

QUANTIZATION_MODES = ("int8", "int4", "float8")


def _copy(model):
    """An uncompiled copy of ``model`` with the same weights."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(model.get_weights())
    return clone


def quantize(model, mode="int8"):
    """A copy of ``model`` whose Dense/EinsumDense/Embedding kernels are quantized.

    Args:
        model: built ``keras.Model``.
        mode: str. One of ``"int8"``, ``"int4"``, ``"float8"`` (Keras'
            ``Model.quantize`` modes).

    Returns:
        A new ``keras.Model``; ``model`` is unchanged. It saves to ``.keras``
        and exports like the original.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> quantize(model).layers[0].kernel.dtype
    'int8'
    """
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"Expected mode in {list(QUANTIZATION_MODES)}. Received: mode={mode!r}")
    clone = _copy(model)
    with warnings.catch_warnings(), collect_once():
        # Keras warns for every layer it leaves as is (inputs, activations, ...).
        warnings.filterwarnings("ignore", message=r"Layer .* does not have a `quantize` method",
                                category=UserWarning)
        clone.quantize(mode)
    return clone


_PRUNABLE_TYPES = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                   keras.layers.Conv3D, keras.layers.DepthwiseConv1D,
                   keras.layers.DepthwiseConv2D)


def _prunable(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, _PRUNABLE_TYPES) and layer.built
            and getattr(layer, "quantization_mode", None) is None]


def _magnitude_mask(kernel, fraction):
    """``1`` where ``kernel`` survives pruning its ``fraction`` smallest magnitudes, else ``0``."""
    count = int(round(fraction * kernel.size))
    if not count:
        return np.ones_like(kernel)
    # Exactly ``count`` zeros: a threshold would also drop every weight tied with it.
    smallest = np.argpartition(np.abs(kernel).ravel(), count - 1)[:count]
    mask = np.ones(kernel.size, kernel.dtype)
    mask[smallest] = 0
    return mask.reshape(kernel.shape)


@accepts_numpy_scalars
def prune(model, sparsity_target):
    """Zero the smallest-magnitude ``sparsity_target`` of each Dense/Conv kernel, in place.

    One-shot pruning: fine-tune afterwards to recover accuracy (the zeros are
    not held fixed during further training).

    Args:
        model: built ``keras.Model``.
        sparsity_target: float in ``[0, 1)``. Fraction of each kernel to zero.

    Returns:
        float. The fraction of prunable kernel weights now zero.

    Example:

    >>> model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10)])
    >>> round(prune(model, 0.5), 2)
    0.5
    """
    if isinstance(sparsity_target, bool) or not isinstance(sparsity_target, (int, float)) \
            or not 0.0 <= sparsity_target < 1.0:
        raise ValueError(f"Expected 0 <= sparsity_target < 1. Received: {sparsity_target!r}")
    for layer in _prunable(model):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        if int(round(sparsity_target * kernel.size)):
            layer.kernel.assign(kernel * _magnitude_mask(kernel, sparsity_target))
    return sparsity(model)


def polynomial_sparsity(step, target, begin_step, end_step, power=3):
    """The sparsity of the gradual schedule at ``step`` (Zhu & Gupta, 2017).

    Rises from 0 at ``begin_step`` to ``target`` at ``end_step``, quickly at
    first then slowly: ``target * (1 - (1 - progress) ** power)``.

    Example:

    >>> [round(polynomial_sparsity(s, 0.8, 0, 10), 3) for s in (0, 5, 10, 20)]
    [0.0, 0.7, 0.8, 0.8]
    """
    if step <= begin_step:
        return 0.0
    if step >= end_step:
        return float(target)
    progress = (step - begin_step) / (end_step - begin_step)
    return float(target * (1.0 - (1.0 - progress) ** power))


class PruningCallback(keras.callbacks.Callback):
    """Gradual magnitude pruning during ``fit``: masks grow to ``target_sparsity``.

    Every ``frequency`` steps until ``end_step`` the masks are recomputed:
    each selected kernel keeps its largest-magnitude weights, zeroing the
    fraction :func:`polynomial_sparsity` gives for the step. After every
    batch the masks are applied again, so pruned weights stay zero while the
    others train. When training ends the final masks (at the full target)
    are applied and dropped: the model is a plain Keras model with zeros in
    its kernels, to save or export as it is.

    A ``fit`` that resumes from a backup (``ResumableBackup`` or Keras'
    ``BackupAndRestore`` restored the model) continues the schedule: the
    step count is the optimizer's ``iterations`` (the optimizer must have
    been new when the interrupted ``fit`` began, as in the fine-tune task,
    which compiles each phase) and the masks are the kernels' zeros.

    Args:
        target_sparsity: float in ``[0, 1)``. Fraction of each kernel zeroed.
        end_step: optional int. Step (batch) of this ``fit`` at which the
            target is reached; default: half of the ``fit``'s steps, leaving
            the rest to recover with the masks fixed.
        begin_step: int. Step at which pruning starts.
        frequency: optional int. Steps between mask updates (default:
            about ten updates over the schedule).
        layers: optional list of layers to prune; default: the Dense,
            convolution and depthwise-convolution layers whose kernel is
            trainable when training begins.

    Attributes:
        pruned_layers: list of the layers pruned.
        achieved_sparsity: float. Fraction of zeros in the pruned kernels
            after training.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
    >>> model.compile("sgd", "mse")
    >>> callback = PruningCallback(0.5)
    >>> _ = model.fit(np.ones((4, 8)), np.ones((4, 8)), epochs=2, verbose=0,
    ...               callbacks=[callback])
    >>> callback.achieved_sparsity
    0.5
    """

    def __init__(self, target_sparsity, end_step=None, begin_step=0, frequency=None,
                 layers=None):
        super().__init__()
        if not (is_number(target_sparsity) and 0.0 <= target_sparsity < 1.0):
            raise ValueError(f"Expected 0 <= target_sparsity < 1. "
                             f"Received: target_sparsity={target_sparsity!r}")
        if end_step is not None and end_step <= begin_step:
            raise ValueError(f"Expected end_step > begin_step. Received: end_step={end_step}, "
                             f"begin_step={begin_step}")
        self.target_sparsity = float(target_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = end_step
        self.frequency = frequency
        self._layers = layers
        self.pruned_layers = []
        self.achieved_sparsity = 0.0
        self._masks = None
        self._step = 0

    def on_train_begin(self, logs=None):
        if self._layers is not None:
            self.pruned_layers = list(self._layers)
        else:
            trainable = {id(v) for v in self.model.trainable_weights}
            self.pruned_layers = [layer for layer in _prunable(self.model)
                                  if id(layer.kernel) in trainable]
        if self.end_step is None:
            steps = (self.params or {}).get("steps") or 1
            epochs = (self.params or {}).get("epochs") or 1
            self.end_step = self.begin_step + max(1, (steps * epochs) // 2)
        if self.frequency is None:
            self.frequency = max(1, (self.end_step - self.begin_step) // 10)
        self._step = 0
        self._masks = [np.ones(tuple(layer.kernel.shape), layer.kernel.dtype)
                       for layer in self.pruned_layers]
        if getattr(self.model, "_initial_epoch", None):  # restored from a backup
            self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if self._step > self.begin_step:
                self._masks = [(keras.ops.convert_to_numpy(layer.kernel) != 0).astype(
                    layer.kernel.dtype) for layer in self.pruned_layers]

    def _update_masks(self, fraction):
        self._masks = [_magnitude_mask(keras.ops.convert_to_numpy(layer.kernel), fraction)
                       for layer in self.pruned_layers]

    def _apply_masks(self):
        for layer, mask in zip(self.pruned_layers, self._masks):
            layer.kernel.assign(layer.kernel * mask)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step <= self.end_step and (
                (self._step - self.begin_step) % self.frequency == 0
                or self._step == self.end_step):
            self._update_masks(polynomial_sparsity(self._step, self.target_sparsity,
                                                   self.begin_step, self.end_step))
        self._apply_masks()

    def on_train_end(self, logs=None):
        # Reach the full target even when training stopped before end_step.
        self._update_masks(self.target_sparsity)
        self._apply_masks()
        self._masks = None  # strip: nothing of the pruning stays in the model
        kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in self.pruned_layers]
        total = sum(k.size for k in kernels)
        self.achieved_sparsity = (float(sum((k == 0).sum() for k in kernels) / total)
                                  if total else 0.0)


def sparsity(model):
    """Fraction of zero weights in the Dense/Conv kernels of ``model``.

    Example:

    >>> sparsity(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2,
    ...                                                  kernel_initializer="zeros")]))
    1.0
    """
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in _prunable(model)]
    total = sum(k.size for k in kernels)
    return float(sum((k == 0).sum() for k in kernels) / total) if total else 0.0


def model_size(model):
    """Bytes of ``model`` saved as ``.keras``, and of that file gzip-compressed.

    The optimizer is left out (a compiled model is measured through an
    uncompiled copy), so models compare whether trained or not.
    ``.keras`` archives are stored uncompressed, so pruning shows in the
    gzip size (zeros compress) and quantization in both.

    Returns:
        dict with ``keras_bytes`` and ``gzip_bytes``.

    Example:

    >>> size = model_size(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
    >>> size["keras_bytes"] > size["gzip_bytes"] > 0
    True
    """
    with tempfile.TemporaryDirectory(prefix="fmkeras-size-") as folder:
        path = os.path.join(folder, "model.keras")
        (_copy(model) if getattr(model, "optimizer", None) is not None else model).save(path)
        with open(path, "rb") as f:
            data = f.read()
    return {"keras_bytes": len(data), "gzip_bytes": len(gzip.compress(data, mtime=0))}


def predict_latency_ms(model, batch, repeats=10, warmup=2):
    """Median milliseconds of ``model.predict_on_batch(batch)`` over ``repeats`` calls.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    >>> predict_latency_ms(model, np.ones((4, 2)), repeats=3) > 0
    True
    """
    for _ in range(warmup):
        model.predict_on_batch(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)
