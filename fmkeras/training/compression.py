"""Post-training compression: Keras weight quantization and one-shot magnitude pruning.

:func:`quantize` returns a copy of a model with Keras' own quantized layers
(``int8`` or ``float8`` kernels for Dense, EinsumDense and Embedding
layers). :func:`prune` zeroes the smallest-magnitude kernel weights of each
Dense/convolution layer in place; :func:`sparsity` reports the result.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

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
    with warnings.catch_warnings():
        # Keras warns for every layer it leaves as is (inputs, activations, ...).
        warnings.filterwarnings("ignore", message=r"Layer .* does not have a `quantize` method",
                                category=UserWarning)
        clone.quantize(mode)
    return clone


def _prunable(model):
    kinds = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, kinds) and layer.built]


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
    if not 0.0 <= sparsity_target < 1.0:
        raise ValueError(f"Expected 0 <= sparsity_target < 1. Received: {sparsity_target}")
    for layer in _prunable(model):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        count = int(round(sparsity_target * kernel.size))
        if count:
            threshold = np.partition(np.abs(kernel).ravel(), count - 1)[count - 1]
            layer.kernel.assign(np.where(np.abs(kernel) <= threshold, 0, kernel)
                                .astype(kernel.dtype))
    return sparsity(model)


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
