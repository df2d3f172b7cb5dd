"""LoRA fine-tuning: low-rank adapters on selected layers, then merged before export.

:func:`enable_lora` turns on Keras' own LoRA (``layer.enable_lora(rank)``)
for the ``Dense``, ``EinsumDense`` and ``Embedding`` layers whose names match
the given patterns, and freezes every other weight, so only the adapters
train. :func:`merge_lora` returns a plain model (no adapters) whose kernels
include the trained updates: export that one.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile

import keras

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models._checks import check_model

LORA_LAYER_TYPES = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
_LORA_KEYS = ("lora_rank", "lora_alpha")


def _all_layers(model):
    """Every layer below ``model``: nested models and custom layers' sublayers included."""
    # Keras tracks sublayers of custom layers (attention's query/key/value) here only.
    return model._flatten_layers(include_self=False, recursive=True)


def lora_layers(model):
    """The layers of ``model`` (nested ones included) with LoRA enabled.

    Example:

    >>> lora_layers(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    []
    """
    return [layer for layer in _all_layers(model) if getattr(layer, "lora_enabled", False)]


@accepts_numpy_scalars
def enable_lora(model, rank, patterns=("*",), lora_alpha=None, freeze_others=True,
                exclude=()):
    """Enable LoRA on the Dense/EinsumDense/Embedding layers whose name matches a pattern.

    Args:
        model: built ``keras.Model``.
        rank: int. Rank of the low-rank update.
        patterns: iterable of ``fnmatch`` patterns over layer names
            (``"*query*"``, ``"encoder_*"``); ``"*"`` selects all.
        lora_alpha: optional float. Scale of the update is
            ``lora_alpha / rank`` (default 1).
        freeze_others: bool. Freeze every other weight (biases of the
            selected layers included), so only the adapters train; layers
            without adapters become non-trainable too, so batch norms keep
            their moving statistics (inference mode, as Keras fine-tuning
            does).
        exclude: iterable of ``fnmatch`` patterns over layer names never
            given adapters, even when ``patterns`` match them.

    Returns:
        list of the layers now carrying LoRA. The adapters are created with
        the layer's variable dtype, float32 under mixed precision.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="proj")])
    >>> [layer.name for layer in enable_lora(model, rank=2)]
    ['proj']
    >>> trainable_parameter_count(model)
    24
    """
    check_model("model", model)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"Expected a positive integer rank. Received: rank={rank!r}")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    selected = [layer for layer in _all_layers(model)
                if isinstance(layer, LORA_LAYER_TYPES)
                and any(fnmatch.fnmatchcase(layer.name, p) for p in patterns)
                and not any(fnmatch.fnmatchcase(layer.name, p) for p in exclude)]
    if not selected:
        names = sorted({layer.name for layer in _all_layers(model)
                        if isinstance(layer, LORA_LAYER_TYPES)})
        raise ValueError(f"No Dense, EinsumDense or Embedding layer matches the patterns. "
                         f"Expected patterns matching some of {names}. Received: {patterns}")
    other = [f"{layer.name} (rank {layer.lora_rank})" for layer in selected
             if layer.lora_enabled and layer.lora_rank != rank]
    if other:
        raise ValueError(f"LoRA is already on with another rank: {other}. Expected rank={rank} "
                         f"for every selected layer; merge_lora(model) first to start again")
    chosen = {id(layer) for layer in selected}
    # A layer an earlier call froze would hide the adapters below it.
    for layer in [model, *_all_layers(model)]:
        if not layer.trainable and (id(layer) in chosen or any(
                id(sub) in chosen for sub in _all_layers(layer))):
            layer.trainable = True
    for layer in selected:
        if not layer.lora_enabled:
            layer.enable_lora(rank, lora_alpha=lora_alpha)
    for layer in lora_layers(model):  # the base weights under adapters stay frozen
        for name in ("_kernel", "_embeddings"):
            if isinstance(getattr(layer, name, None), keras.Variable):
                getattr(layer, name).trainable = False
    if freeze_others:
        adapters = {id(v) for v in _adapters(model)}
        for variable in model.weights:
            if id(variable) not in adapters:
                variable.trainable = False
        # A frozen variable still changes in a layer that trains: batch norms
        # update their moving statistics unless the layer itself is frozen.
        for layer in _all_layers(model):
            if not any(id(v) in adapters for v in layer.weights):
                layer.trainable = False
    return selected


def _adapters(model):
    """The LoRA variables (``lora_kernel_*``, ``lora_embeddings_*``) of ``model``."""
    return [v for layer in lora_layers(model) for v in layer.weights
            if v.name.startswith("lora_")]


def trainable_parameter_count(model):
    """Number of trainable parameters (with LoRA on: the adapters, unless more was left on).

    Example:

    >>> trainable_parameter_count(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    9
    """
    return int(sum(int(keras.ops.size(w)) for w in model.trainable_weights))


def _strip_lora(config):
    if isinstance(config, dict):
        return {k: _strip_lora(v) for k, v in config.items() if k not in _LORA_KEYS}
    if isinstance(config, list):
        return [_strip_lora(v) for v in config]
    return config


def merge_lora(model):
    """A copy of ``model`` without adapters, each LoRA update added into its kernel.

    The copy predicts what ``model`` predicts and is what to save or export.
    Its weights are all trainable again; ``model`` is unchanged.

    Args:
        model: ``keras.Model`` with LoRA enabled on some layers.

    Returns:
        A new ``keras.Model`` of the same architecture.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="proj")])
    >>> _ = enable_lora(model, rank=2)
    >>> lora_layers(merge_lora(model))
    []
    """
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)  # a fresh, uncompiled copy: no optimizer state
    merged = keras.saving.deserialize_keras_object(config)
    for layer in [merged, *_all_layers(merged)]:  # enable_lora froze layers without adapters
        layer.trainable = True
    # Keras saves a LoRA layer's kernel with the update merged in.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "merged.weights.h5")
        model.save_weights(path)
        merged.load_weights(path)
    return merged
