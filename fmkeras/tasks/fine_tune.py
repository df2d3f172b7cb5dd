"""Fine-tuning: a pretrained backbone -> trained head -> fine-tuned top layers -> export.

``run(config)`` reads images as :mod:`fmkeras.tasks.image_classification`
does (``[0, 255]`` pixels: the backbone carries its own preprocessing),
builds ``model.backbone`` (``keras.applications``, weights ``imagenet``, none
or a local file) or loads a saved encoder (``model.encoder_path``, e.g. from
``pretrain-simclr``), and trains in two phases in one run:

1. the head only, the backbone frozen (``trainable = False``; it is always
   called with ``training=False``, so batch norm stays in inference mode);
2. the top ``train.unfreeze_layers`` weighted layers of the backbone (0: all)
   at the lower ``train.learning_rate``, after recompiling.

Each phase writes ``history_phase<N>.csv``; ``metrics.json`` holds
``phase1_test_accuracy``, ``test_accuracy`` (after phase 2) and the trainable
parameter counts. The result exports like any image classifier. A run is not
resumable: rerunning it starts again.

``compression.prune_sparsity`` prunes the kernels the last phase trains,
gradually, during that phase; ``compression.quantize: int8`` quantizes the
final model afterwards. ``metrics.json`` then compares test accuracy, saved
size (``.keras`` bytes, and gzipped) and predict latency (ms per batch)
before and after each (``before_pruning_*``, ``float_*``, ``int8_*``), and
``exported`` says which model the SavedModel holds (the quantized one when
quantizing, else the float one, pruned or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from fmkeras import config as config_lib
from fmkeras import export as export_lib
from fmkeras.data import images as image_data
from fmkeras.errors import ConfigError
from fmkeras.evaluation import classification as cls_eval
from fmkeras.models import backbones
from fmkeras.tasks import base, transfer
from fmkeras.tasks.image_classification import (
    ExportConfig,
    ImageDataConfig,
    make_datasets,
    skipped_files_section,
    validate_data,  # noqa: F401 - same image folders, same checks (--validate-data)
)
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import checkpoints as checkpoints_lib
from fmkeras.training import compression as compression_lib
from fmkeras.training import distribute, optimizers
from fmkeras.training import precision as precision_lib

TASK = "fine-tune"


@dataclasses.dataclass
class FineTuneDataConfig(ImageDataConfig):
    """:class:`ImageDataConfig` with backbone defaults: 32x32 RGB ``[0, 255]`` pixels."""

    image_size: int = 32
    color_mode: str = "rgb"
    rescale: float = 1.0


@dataclasses.dataclass
class FineTuneModelConfig:
    """The backbone and the head.

    ``weights`` is ``imagenet`` (downloaded by Keras; needs the network),
    null (random) or a local weights file. ``encoder_path`` (a ``.keras``
    encoder, e.g. ``<simclr run>/encoder.keras``) replaces the
    ``keras.applications`` backbone. ``alpha`` is MobileNet's width.
    ``recalibrate_batchnorm`` re-estimates the backbone's batch-norm
    statistics on the training images before the frozen phase (``auto``:
    for random weights and saved encoders, whose statistics are untrained
    or from another domain; not for ``imagenet`` or a weights file).
    """

    backbone: str = "mobilenet_v2"
    weights: str | None = None
    alpha: float | None = None
    encoder_path: str | None = None
    dropout: float = 0.2
    pooling: str = "avg"
    recalibrate_batchnorm: bool | str = "auto"


@dataclasses.dataclass
class FineTuneTrainConfig:
    """The two phases: head only, then the unfrozen top of the backbone.

    ``unfreeze_layers`` counts layers with weights from the top (0: the
    whole backbone); ``epochs: 0`` skips phase 2. Batch-norm layers stay
    frozen unless ``train_batchnorm``.
    """

    head_epochs: int = 3
    head_learning_rate: float = 1e-3
    epochs: int = 3
    learning_rate: float = 1e-4
    unfreeze_layers: int = 0
    train_batchnorm: bool = False
    optimizer: str = "adam"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    verbose: int | str = "auto"


@dataclasses.dataclass
class FineTuneConfig(config_lib.RunSettings):
    """The full config of the fine-tune task.

    Example:

    >>> config = FineTuneConfig()
    >>> config.model.backbone, config.data.rescale
    ('mobilenet_v2', 1.0)
    """

    data: FineTuneDataConfig = dataclasses.field(default_factory=FineTuneDataConfig)
    model: FineTuneModelConfig = dataclasses.field(default_factory=FineTuneModelConfig)
    train: FineTuneTrainConfig = dataclasses.field(default_factory=FineTuneTrainConfig)
    export: ExportConfig = dataclasses.field(
        default_factory=lambda: ExportConfig(name="fine_tuned_classifier"))
    compression: transfer.CompressionConfig = dataclasses.field(
        default_factory=transfer.CompressionConfig)


def build_backbone(model_config, input_shape):
    """The configured backbone: a saved encoder or a ``keras.applications`` network.

    Example:

    >>> build_backbone(FineTuneModelConfig(alpha=0.35), (32, 32, 3)).name
    'mobilenet_v2'
    """
    if model_config.encoder_path:
        return transfer.load_encoder(model_config.encoder_path, input_shape)
    kwargs = {"alpha": model_config.alpha} if model_config.alpha is not None else {}
    if kwargs and not backbones.canonical_name(model_config.backbone).startswith("mobilenet"):
        warnings.warn(f"model.alpha={model_config.alpha!r} is not used with model.backbone="
                      f"{model_config.backbone} (it is MobileNet's width); it has no effect",
                      UserWarning, stacklevel=2)
        kwargs = {}
    return backbones.backbone(model_config.backbone, input_shape, model_config.weights, **kwargs)


def recalibrate_batchnorm(model, dataset, batches=40, momentum=0.8):
    """Re-estimate every batch-norm layer's moving statistics on ``dataset``.

    No weight changes: the layers are called in training mode, which only
    updates their moving means and variances. A randomly initialised (or
    briefly pretrained) backbone has near-initial statistics; frozen, it
    runs in inference mode with them and its features vanish to ~0 after a
    deep stack, so the head cannot learn. Recalibrated statistics fix that.

    Args:
        model: keras.Model holding BatchNormalization layers (trainable).
        dataset: iterable of ``(images, labels)`` batches.
        batches: int. How many batches to average over.
        momentum: float. Moving-average momentum used meanwhile.

    Returns:
        int. The number of batch-norm layers recalibrated.

    Example:

    >>> import numpy as np
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    >>> recalibrate_batchnorm(net, [(np.full((8, 4), 5.0), None)] * 40)
    1
    >>> round(float(net.layers[0].moving_mean.numpy()[0]), 2)
    5.0
    """
    layers = [layer for layer in model._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = momentum
    # keras.applications models take their single input as a one-element list.
    as_list = isinstance(getattr(model, "_inputs_struct", None), (list, tuple))
    # One traced graph for all the batches: eager calls of a MobileNetV2 cost
    # about 100x more per batch on a CPU than the graph (traced once, ~2 s).
    # Traced after the momentum change, so the graph uses the new momentum.
    forward = tf.function(lambda images: model([images] if as_list else images, training=True),
                          reduce_retracing=True)
    seen = 0
    try:
        while seen < batches:  # a small dataset is gone through several times
            before = seen
            for images, _ in dataset:
                forward(images)
                seen += 1
                if seen >= batches:
                    break
            if seen == before:  # empty dataset
                break
    finally:
        for layer, value in zip(layers, saved):
            layer.momentum = value
    return len(layers)


def unfreeze_top(backbone_model, layers=0, train_batchnorm=False):
    """Make the top ``layers`` weighted layers of a backbone trainable (0: all).

    Args:
        backbone_model: ``keras.Model``.
        layers: int. How many layers with weights, counted from the output.
        train_batchnorm: bool. Also train batch-norm scales and offsets
            (their moving statistics never update: the backbone runs in
            inference mode).

    Returns:
        list of the layers left trainable.

    Example:

    >>> model = backbones.backbone("mobilenet_v2", (32, 32, 3), alpha=0.35)
    >>> [layer.name for layer in unfreeze_top(model, 4)]  # batch norms stay frozen
    ['block_16_project', 'Conv_1']
    """
    if layers < 0:
        raise ConfigError(f"Expected train.unfreeze_layers >= 0. Received: {layers}")
    backbone_model.trainable = True
    weighted = [layer for layer in backbone_model.layers if layer.weights]
    keep_frozen = weighted[:-layers] if layers else []
    for layer in keep_frozen:
        layer.trainable = False
    if not train_batchnorm:
        for layer in weighted:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return [layer for layer in weighted if layer.trainable]


def trainable_count(model):
    """Number of trainable parameters.

    Example:

    >>> trainable_count(keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]))
    9
    """
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _check_config(config):
    config_lib.check_common_keys(config, kind=FineTuneConfig)
    if config.model.recalibrate_batchnorm not in (True, False, "auto"):
        raise ConfigError("Expected model.recalibrate_batchnorm true, false or 'auto'. "
                          f"Received: {config.model.recalibrate_batchnorm!r}")
    train, data = config.train, config.data
    if train.head_epochs < 1:
        raise ConfigError(f"Expected train.head_epochs >= 1. Received: {train.head_epochs}")
    if train.epochs < 0:
        raise ConfigError(f"Expected train.epochs >= 0. Received: {train.epochs}")
    if train.unfreeze_layers < 0:
        raise ConfigError(f"Expected train.unfreeze_layers >= 0 (0: the whole backbone). "
                          f"Received: {train.unfreeze_layers}")
    if data.rescale != 1.0:
        raise ConfigError("Expected data.rescale=1.0: backbones take [0, 255] pixels and "
                          f"preprocess them themselves. Received: {data.rescale}")
    if data.augment.in_model:
        raise ConfigError("Expected data.augment.in_model=false for fine-tune. Received: true")
    if data.pipeline != "tfdata":
        raise ConfigError(f"Expected data.pipeline='tfdata'. Received: {data.pipeline!r}")
    transfer.check_compression_config(config.compression)


def _phase_done_path(run_dir, phase):
    return os.path.join(run_dir, "checkpoints", f"phase{phase}_done.npz")


def _load_done_phase(model, run_dir, phase, identity, force):
    """Load the weights a completed phase left (a resumed run skips it); False if none."""
    path = _phase_done_path(run_dir, phase)
    if not os.path.exists(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as saved:
            saved_identity = json.loads(str(saved["identity"]))
            weights = [saved[f"w{i}"] for i in range(int(saved["count"]))]
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(f"Ignoring unusable phase checkpoint {path}: {err}", RuntimeWarning,
                      stacklevel=3)
        return False
    changed = checkpoints_lib.differing_keys(saved_identity, identity)
    if changed and not force:
        raise ConfigError(
            f"Refusing to resume the run in {run_dir!r}: these settings changed since it was "
            f"interrupted: {', '.join(changed)}. Expected the same model, optimizer, batch "
            "size and data; use a new run directory, or --force-resume to resume anyway.")
    model.set_weights(weights)
    return True


def _save_done_phase(model, run_dir, phase, identity):
    path = _phase_done_path(run_dir, phase)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    weights = model.get_weights()
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, identity=json.dumps(identity, sort_keys=True), count=len(weights),
             **{f"w{i}": w for i, w in enumerate(weights)})
    os.replace(tmp, path)


def _fit_phase(model, config, splits, run_dir, phase, learning_rate, epochs, initial_epoch,
               callbacks, dist, identity=None):
    """Compile (the trainable set changed) and fit one phase, logging history_phase<N>.csv.

    Each phase backs itself up (``checkpoints/backup_phase<N>``, see ``checkpoint_every_s``)
    and leaves ``checkpoints/phase<N>_done.npz`` when it completes, so a
    rerun of an interrupted run skips finished phases and resumes the
    current one at its last completed epoch.
    """
    train = config.train
    identity = {**(identity or {}), "phase": phase}
    history_path = os.path.join(run_dir, f"history_phase{phase}.csv")
    with base.model_scope(dist):
        model.compile(
            optimizer=optimizers.build_optimizer(train.optimizer, learning_rate,
                                                 train.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
            metrics=["accuracy"], jit_compile=config.jit_compile)
    if _load_done_phase(model, run_dir, phase, identity, config.force_resume):
        return cls_eval.read_history(history_path)
    backup_dir = os.path.join(run_dir, "checkpoints", f"backup_phase{phase}")
    resume = checkpoints_lib.has_backup(backup_dir)
    fit_callbacks = [
        checkpoints_lib.ResumableBackup(backup_dir, identity, config.force_resume,
                                        history_path=history_path,
                                        interval_s=config.checkpoint_every_s),
        callbacks_lib.NaNGuard(),
        callbacks_lib.LossScaleGuard(),
        keras.callbacks.CSVLogger(history_path, append=resume),
        callbacks_lib.EpochTensorBoard(os.path.join(run_dir, "tensorboard", f"phase{phase}")),
        callbacks_lib.EpochSeeds(config.seed), *splits.callbacks, *callbacks]
    steps = dist.steps_per_epoch(splits.train_samples, config.data.batch_size)
    try:
        dist.fit(model, dist.dataset(splits.train, steps=steps),
                 validation_data=dist.eval_dataset(splits.validation, splits.validation_samples,
                                                   config.data.batch_size),
                 epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                 callbacks=fit_callbacks, verbose=train.verbose, shuffle=False)
    finally:
        callbacks_lib.after_fit(fit_callbacks)
    _save_done_phase(model, run_dir, phase, identity)
    return cls_eval.read_history(history_path)


def _prefixed(prefix, values):
    return {f"{prefix}_{key}": value for key, value in values.items()}


@base.keeps_global_settings
def run(config, callbacks=()):
    """Train a head on a frozen backbone, fine-tune its top, evaluate and export.

    Args:
        config: :class:`FineTuneConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for both
            phases' ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult`.

    Example:

    >>> config = FineTuneConfig()
    >>> config.train.head_epochs, config.train.epochs = 1, 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["phase1_test_accuracy"], result.metrics["test_accuracy"]  # doctest: +SKIP
    """
    _check_config(config)
    # One limit for both phases: a phase 2 that starts with it spent trains one batch.
    budget = base.time_budget(config, per_fit=False)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed, config.deterministic)
    splits = make_datasets(base.with_global_batch(config, dist))
    base.prepare_run_dir(run_dir, config, TASK)
    policy = precision_lib.set_precision(config.precision)

    data, train = config.data, config.train
    size = (data.image_size, data.image_size)
    channels = image_data.check_color_mode(data.color_mode)
    class_names = splits.class_names
    with base.model_scope(dist):
        features = build_backbone(config.model, (*size, channels))
        model = backbones.image_classifier(features, len(class_names), config.model.dropout,
                                           config.model.pooling)

    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in splits.test))
    test_images, y_true = np.concatenate(images), np.concatenate(labels).argmax(-1)
    comp = config.compression
    pruning = (compression_lib.PruningCallback(comp.prune_sparsity)
               if comp.prune_sparsity else None)
    compression_metrics = {}

    def last_phase_callbacks(epochs):
        """The extra callbacks, and the pruning callback, for the last phase."""
        if pruning is None:
            return callbacks
        # The target is reached halfway through the phase; the rest recovers. (Keras'
        # params count the epochs of earlier phases too, so the default would be later.)
        steps = dist.steps_per_epoch(splits.train_samples, data.batch_size)
        pruning.end_step = max(1, steps * epochs // 2)
        compression_metrics.update(_prefixed("before_pruning", transfer.measure(
            model, test_images, y_true, data.batch_size)))
        return [*callbacks, pruning]

    recalibrate = config.model.recalibrate_batchnorm
    if recalibrate == "auto":
        recalibrate = config.model.encoder_path is not None or config.model.weights is None
    recalibrated = recalibrate_batchnorm(features, splits.train) if recalibrate else 0
    features.trainable = False
    params_phase1 = trainable_count(model)
    identity = {"model": config_lib.to_dict(config.model),
                "optimizer": base.optimizer_identity(train),
                "data": {"path": data.path, "batch_size": data.batch_size,
                         "image_size": data.image_size, "color_mode": data.color_mode,
                         "classes": list(class_names), "train_samples": splits.train_samples},
                "compression": config_lib.to_dict(config.compression),
                "replicas": dist.replicas}
    _fit_phase(model, config, splits, run_dir, 1, train.head_learning_rate, train.head_epochs,
               0, callbacks if train.epochs else last_phase_callbacks(train.head_epochs), dist,
               identity)
    test = dist.eval_dataset(splits.test, splits.test_samples, data.batch_size)
    phase1_loss, phase1_accuracy = model.evaluate(test, verbose=0)

    params_phase2 = params_phase1
    if train.epochs:
        unfreeze_top(features, train.unfreeze_layers, train.train_batchnorm)
        params_phase2 = trainable_count(model)
        _fit_phase(model, config, splits, run_dir, 2, train.learning_rate, train.epochs,
                   train.head_epochs, last_phase_callbacks(train.epochs), dist, identity)
    test_loss, _ = model.evaluate(test, verbose=0)
    probabilities = distribute.predict(model, test_images)
    scores = cls_eval.classification_metrics(y_true, probabilities, class_names)
    metrics = {"phase1_test_accuracy": float(phase1_accuracy),
               "phase1_test_loss": float(phase1_loss),
               "test_accuracy": scores["accuracy"], "test_loss": float(test_loss),
               "macro_f1": scores["macro_f1"], "precision_policy": policy,
               "backbone": features.name, "num_parameters": int(model.count_params()),
               "trainable_params_phase1": params_phase1,
               "batchnorm_layers_recalibrated": recalibrated,
               "trainable_params_phase2": params_phase2,
               "train_samples": splits.train_samples, "test_samples": splits.test_samples,
               "data_skipped_files": len(splits.skipped_files), **dist.describe(),
               **base.budget_metrics(budget)}
    exported = model
    if pruning is not None or comp.quantize:
        metrics.update(compression_metrics)
        metrics.update(_prefixed("float", transfer.measure(model, test_images, y_true,
                                                           data.batch_size)))
        metrics["model_sparsity"] = compression_lib.sparsity(model)
        metrics["exported"] = "float"
    if pruning is not None:
        metrics["pruned_sparsity"] = pruning.achieved_sparsity
        metrics["pruned_layers"] = len(pruning.pruned_layers)
    if comp.quantize:
        exported = compression_lib.quantize(model, comp.quantize)
        metrics.update(_prefixed(comp.quantize, transfer.measure(exported, test_images, y_true,
                                                                 data.batch_size)))
        metrics["exported"] = comp.quantize

    plots = ["plots/confusion_matrix.png"]
    cls_eval.plot_confusion_matrix(scores["confusion_matrix"], class_names,
                                   os.path.join(run_dir, plots[0]))
    for phase in (1, 2):
        history = os.path.join(run_dir, f"history_phase{phase}.csv")
        if os.path.exists(history):
            plots.append(f"plots/training_curves_phase{phase}.png")
            cls_eval.plot_training_curves(cls_eval.read_history(history),
                                          os.path.join(run_dir, plots[-1]))

    export_path = None
    if config.export.enabled:
        pixels = np.clip(np.round(images[0][:3]), 0, 255).astype(np.uint8)
        samples = [tf.io.encode_png(p).numpy() for p in pixels]
        export_path = export_lib.export_image_classifier(
            exported, os.path.join(run_dir, "export"), config.export.name, class_names, size,
            channels, rescale=1.0, sample_bytes=samples, check=config.export.check)
        metrics["export_path"] = export_path
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    base.write_report(run_dir, "Fine-tuning", metrics, scores["per_class"], plots,
                      sections=[("Data problems", skipped_files_section(splits.skipped_files))])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model,
                          export_path=export_path)
