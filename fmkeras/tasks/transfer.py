"""Pretrain -> fine-tune glue the tasks share: saved encoders, MLM runs, LoRA, compression.

- :func:`load_encoder` loads a ``.keras`` image encoder (``pretrain-simclr``'s
  ``encoder.keras``) and checks it fits the data (fine-tune,
  image-classification).
- :func:`load_mlm_run` reads a ``pretrain-mlm`` run (``mlm.keras`` and its
  ``vocabulary.txt``); :meth:`MLMRun.check_fits` and
  :meth:`MLMRun.copy_encoder` put its embedding and encoder blocks into a
  :func:`fmkeras.models.transformer_classifier` (text-classification).
- :class:`LoRAConfig` and :func:`apply_lora` add low-rank adapters to a built
  model (text-classification); :func:`fmkeras.training.lora.merge_lora`
  removes them before export.
- :class:`CompressionConfig` and :func:`measure` describe pruning and
  quantization and what they cost (fine-tune).

Every model file is read with :func:`fmkeras.saving.load_model` (safe mode).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from fmkeras import config as config_lib
from fmkeras import saving
from fmkeras.errors import ConfigError
from fmkeras.training import compression, distribute
from fmkeras.training import lora as lora_lib


def load_encoder(path, input_shape, key="model.encoder_path"):
    """Load a saved ``.keras`` encoder (safe mode, uncompiled) that takes ``input_shape``.

    Args:
        path: str. The ``.keras`` file, e.g. ``<simclr run>/encoder.keras``, or
            a ``pretrain-simclr`` run folder (its ``encoder.keras`` is read).
        input_shape: ``(height, width, channels)`` of the data.
        key: str. The config key named in errors.

    Returns:
        ``keras.Model``.

    Raises:
        ConfigError: the file is missing or its input shape differs from
            ``input_shape`` (both are named).

    Example:

    >>> try:
    ...     load_encoder("/nope/encoder.keras", (8, 8, 3))
    ... except ConfigError as err:
    ...     print(str(err).split(". ")[0])
    Encoder not found
    """
    given = path
    if os.path.isdir(path):
        path = os.path.join(path, "encoder.keras")
    if not os.path.isfile(path):
        raise ConfigError(f"Encoder not found. Expected a .keras file, or a pretrain-simclr run "
                          f"folder holding encoder.keras. Received: {key}={given!r}")
    encoder = saving.load_model(path, compile=False)
    if tuple(encoder.input_shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"Encoder input shape does not match the data. Expected {tuple(input_shape)} "
            f"(data.image_size, data.color_mode). Received: {tuple(encoder.input_shape[1:])}"
            f" from {path!r}")
    return in_global_policy(encoder)


def in_global_policy(model):
    """``model``, with its mixed-precision layers moved to Keras' global dtype policy.

    A ``.keras`` file keeps each layer's dtype policy, so an encoder saved by
    a ``mixed_bfloat16`` run would compute in bfloat16 inside a ``float32``
    run (its export then differed from the in-memory model). Layers with a
    mixed policy other than the global one are rebuilt with the global one;
    variables are float32 under every policy, so the weights carry over
    unchanged. ``float32`` layers stay as they are (a builder may have kept
    them in float32 on purpose). Returns ``model`` itself when nothing moves.

    Example:

    >>> layer = keras.layers.Dense(2, dtype="mixed_bfloat16")
    >>> model = keras.Sequential([keras.Input((3,)), layer])
    >>> [x.dtype_policy.name for x in in_global_policy(model).layers]
    ['float32']
    """
    policy = keras.mixed_precision.global_policy()

    def moves(layer):
        own = layer.dtype_policy
        return own.name != policy.name and own.compute_dtype != own.variable_dtype

    if not any(moves(layer) for layer in model._flatten_layers(include_self=False)):
        return model

    def rebuild(layer):
        config = layer.get_config()
        if moves(layer):
            config["dtype"] = policy.name
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


@dataclasses.dataclass
class MLMRun:
    """A ``pretrain-mlm`` run: its model, vocabulary and encoder settings.

    Attributes:
        model_path: str. The ``mlm.keras`` file.
        model: ``keras.Model``. The MLM model (uncompiled).
        vocabulary: list of str. Its tokens, ``[mask]`` last.
        settings: dict. ``d_model``, ``num_heads``, ``ff_dim``,
            ``num_layers``, ``sequence_length`` and ``vocab_size`` of the
            encoder.

    Example:

    >>> from fmkeras.tasks.text_classification import TextModelConfig
    >>> settings = dict(d_model=64, num_heads=4, ff_dim=128, num_layers=2, sequence_length=32,
    ...                 vocab_size=3)  # as load_mlm_run reads them from a run
    >>> run = MLMRun("mlm.keras", model=None, vocabulary=["", "[UNK]", "[mask]"], settings=settings)
    >>> run.check_fits(TextModelConfig(num_layers=1), sequence_length=32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: The classifier ... Expected model.num_layers=2. Received: ...
    """

    model_path: str
    model: object
    vocabulary: list
    settings: dict

    def check_fits(self, model_config, sequence_length):
        """Raise :class:`ConfigError` naming every setting of a classifier that differs.

        Args:
            model_config: the text task's model config (``name``,
                ``d_model``, ``num_heads``, ``ff_dim``, ``num_layers``).
            sequence_length: int. ``data.sequence_length``.
        """
        if model_config.name != "transformer":
            raise ConfigError(f"model.encoder_path (an MLM run) needs model.name='transformer'. "
                              f"Received: model.name={model_config.name!r}")
        wanted = {f"model.{k}": self.settings[k]
                  for k in ("d_model", "num_heads", "ff_dim", "num_layers")}
        wanted["data.sequence_length"] = self.settings["sequence_length"]
        given = {f"model.{k}": getattr(model_config, k)
                 for k in ("d_model", "num_heads", "ff_dim", "num_layers")}
        given["data.sequence_length"] = sequence_length
        wrong = [k for k in wanted if wanted[k] != given[k]]
        if wrong:
            raise ConfigError(
                f"The classifier does not match the MLM encoder of {self.model_path!r}. "
                f"Expected {', '.join(f'{k}={wanted[k]}' for k in wrong)}. "
                f"Received: {', '.join(f'{k}={given[k]}' for k in wrong)}")

    def copy_encoder(self, classifier):
        """Copy the embedding and every ``encoder_block_<i>`` into ``classifier``.

        Returns:
            list of the layer names copied.
        """
        names = ["embedding", *(f"encoder_block_{i}"
                                for i in range(self.settings["num_layers"]))]
        for name in names:
            source = self.model.get_layer(name).get_weights()
            target = classifier.get_layer(name)
            shapes = [tuple(w.shape) for w in target.weights]
            if [tuple(w.shape) for w in source] != shapes:
                raise ConfigError(f"Layer {name!r} of {self.model_path!r} does not fit the "
                                  f"classifier. Expected weight shapes {shapes}. Received: "
                                  f"{[tuple(w.shape) for w in source]}")
            target.set_weights(source)
        return names


def load_mlm_run(path, key="model.encoder_path"):
    """Read a ``pretrain-mlm`` run: ``path`` is its ``mlm.keras`` or its run directory.

    The vocabulary is the ``vocabulary.txt`` beside ``mlm.keras``.

    Raises:
        ConfigError: a file is missing, or the vocabulary does not match the
            model's embedding.

    Example:

    >>> try:
    ...     load_mlm_run("/nope")
    ... except ConfigError as err:
    ...     print(str(err).split(". ")[0])
    MLM run not found
    """
    from fmkeras.data import text as text_data

    model_path = os.path.join(path, "mlm.keras") if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise ConfigError(f"MLM run not found. Expected a pretrain-mlm run directory or its "
                          f"mlm.keras. Received: {key}={path!r}")
    vocab_path = os.path.join(os.path.dirname(model_path), "vocabulary.txt")
    if not os.path.isfile(vocab_path):
        raise ConfigError(f"Expected the MLM run's vocabulary.txt beside {model_path!r}. "
                          f"Received: no {vocab_path!r}")
    model = saving.load_model(model_path, compile=False)
    try:
        embedding = model.get_layer("embedding")
    except ValueError:
        raise ConfigError(f"Expected a pretrain-mlm model (a layer named 'embedding') in "
                          f"{model_path!r}. Received: model {model.name!r}") from None
    blocks = [layer for layer in model.layers if layer.name.startswith("encoder_block_")]
    if not blocks:
        raise ConfigError(f"Expected encoder_block_<i> layers in {model_path!r}. "
                          f"Received: {[layer.name for layer in model.layers]}")
    vocabulary = text_data.load_vocabulary(vocab_path)
    if len(vocabulary) != embedding.vocab_size:
        raise ConfigError(f"Vocabulary {vocab_path!r} does not match {model_path!r}. Expected "
                          f"{embedding.vocab_size} tokens. Received: {len(vocabulary)}")
    settings = {"d_model": embedding.d_model, "sequence_length": embedding.sequence_length,
                "vocab_size": embedding.vocab_size, "num_heads": blocks[0].num_heads,
                "ff_dim": blocks[0].ff_dim, "num_layers": len(blocks)}
    return MLMRun(model_path, model, vocabulary, settings)


@dataclasses.dataclass
class LoRAConfig:
    """Low-rank adapters (Keras' LoRA) instead of training every weight.

    ``rank: 0`` turns LoRA off. Otherwise the Dense, EinsumDense and
    Embedding layers whose names match ``patterns`` (``fnmatch``, ``"*"``
    all) get rank-``rank`` adapters scaled by ``alpha / rank`` (``alpha``
    null: ``rank``, i.e. scale 1); every other weight is frozen, except the
    layers matching ``train_layers`` (default: the new classification head
    and class token), which train in full. The adapters are merged into the
    kernels before export.
    """

    rank: int = 0
    patterns: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    alpha: float | None = None
    train_layers: list[str] = dataclasses.field(
        default_factory=lambda: ["*logits", "class_token"])


def check_lora_config(lora_config):
    """Raise :class:`ConfigError` for LoRA settings that cannot work.

    Example:

    >>> check_lora_config(LoRAConfig(rank=4))
    >>> check_lora_config(LoRAConfig(rank=-1))
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: Expected lora.rank >= 0 (0: off). Received: -1
    """
    if not isinstance(lora_config.rank, int) or lora_config.rank < 0:
        raise ConfigError(f"Expected lora.rank >= 0 (0: off). Received: {lora_config.rank!r}")
    if lora_config.alpha is not None and lora_config.alpha <= 0:
        raise ConfigError(f"Expected lora.alpha > 0 or null. Received: {lora_config.alpha}")
    if lora_config.rank and not lora_config.patterns:
        raise ConfigError("Expected at least one lora.patterns entry. Received: []")
    if not lora_config.rank:
        config_lib.warn_unused(lora_config, "lora.", ("rank",), "lora.rank=0 (LoRA off)")


def apply_lora(model, lora_config):
    """Enable LoRA on ``model`` as configured (nothing when ``rank`` is 0).

    Call it on the built model (after loading pretrained weights) and before
    compiling, under the distribution scope.

    Returns:
        list of the layers given adapters.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="proj"),
    ...                           keras.layers.Dense(2, name="probabilities_logits")])
    >>> [layer.name for layer in apply_lora(model, LoRAConfig(rank=2))]
    ['proj']
    >>> lora_lib.trainable_parameter_count(model)  # proj's adapters + the whole head
    42
    """
    import fnmatch

    check_lora_config(lora_config)
    if not lora_config.rank:
        return []
    try:
        selected = lora_lib.enable_lora(model, lora_config.rank, lora_config.patterns,
                                        lora_config.alpha, exclude=lora_config.train_layers)
    except ValueError as err:
        raise ConfigError(f"lora.patterns: {err}") from None
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if any(fnmatch.fnmatchcase(layer.name, p) for p in lora_config.train_layers):
            for variable in layer.weights:
                variable.trainable = True
    return selected


def parameter_metrics(model):
    """``trainable_parameters`` and ``total_parameters`` of ``model`` (adapters included).

    Example:

    >>> import keras
    >>> parameter_metrics(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    {'trainable_parameters': 9, 'total_parameters': 9}
    """
    return {"trainable_parameters": lora_lib.trainable_parameter_count(model),
            "total_parameters": int(model.count_params())}


@dataclasses.dataclass
class CompressionConfig:
    """Pruning during the last training phase, and post-training quantization.

    ``prune_sparsity`` (0: off) is the fraction of each trained Dense/conv
    kernel zeroed by gradual magnitude pruning
    (:class:`fmkeras.training.compression.PruningCallback`): the target is
    reached halfway through the phase, then the rest recovers with the
    masks fixed. ``quantize`` (null: off, or ``int8``) quantizes the
    Dense/EinsumDense/Embedding kernels of the final model with Keras'
    ``Model.quantize``.
    """

    quantize: str | None = None
    prune_sparsity: float = 0.0


def check_compression_config(compression_config):
    """Raise :class:`ConfigError` for compression settings that cannot work.

    Example:

    >>> check_compression_config(CompressionConfig(quantize="int8", prune_sparsity=0.5))
    >>> check_compression_config(CompressionConfig(prune_sparsity=1.0))
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: Expected 0 <= compression.prune_sparsity < 1. Received: 1.0
    """
    c = compression_config
    if not 0.0 <= c.prune_sparsity < 1.0:
        raise ConfigError(f"Expected 0 <= compression.prune_sparsity < 1. "
                          f"Received: {c.prune_sparsity}")
    if c.quantize is not None and c.quantize not in compression.QUANTIZATION_MODES:
        raise ConfigError(f"Unknown compression.quantize. Expected null or one of "
                          f"{list(compression.QUANTIZATION_MODES)}. Received: {c.quantize!r}")


def measure(model, images, labels, batch_size=32):
    """Test accuracy, saved size and predict latency of an image classifier.

    Args:
        model: ``keras.Model`` (compiled or not).
        images: array of test inputs.
        labels: int array of the true classes.
        batch_size: int. Batch for predicting and for the latency.

    Returns:
        dict with ``accuracy``, ``keras_bytes``, ``gzip_bytes`` and
        ``latency_ms`` (median ms per ``predict_on_batch`` of
        ``batch_size`` test inputs).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> result = measure(model, np.zeros((4, 4)), np.zeros(4, int), batch_size=2)  # class 0
    >>> result["accuracy"], sorted(result)
    (1.0, ['accuracy', 'gzip_bytes', 'keras_bytes', 'latency_ms'])
    """
    probabilities = distribute.predict(model, images, batch_size)
    accuracy = float(np.mean(np.argmax(probabilities, -1) == np.asarray(labels)))
    return {"accuracy": accuracy, **compression.model_size(model),
            "latency_ms": compression.predict_latency_ms(model, images[:batch_size])}
