"""SimCLR pretraining: unlabelled images -> contrastively trained encoder (``encoder.keras``).

``run(config)`` reads the training images of ``data.path`` as the
image-classification task does (labels are ignored), trains a
:class:`fmkeras.models.SimCLR` around ``model.backbone`` and saves the
encoder as ``<run_dir>/encoder.keras``. Fine-tune it with
``python -m fmkeras.train fine-tune --set model.encoder_path=<run_dir>/encoder.keras``,
or train it with a head as ``image-classification`` does (same
``model.encoder_path``, with ``data.rescale=1.0``).
"""

from __future__ import annotations

import dataclasses
import math
import os

from fmkeras import config as config_lib
from fmkeras.data import images as image_data
from fmkeras.data.augment import Augmentation
from fmkeras.errors import ConfigError
from fmkeras.evaluation import classification as cls_eval
from fmkeras.models.simclr import DEFAULT_AUGMENTATION, SimCLR
from fmkeras.tasks import base
from fmkeras.tasks.fine_tune import FineTuneDataConfig, build_backbone
from fmkeras.tasks.image_classification import (
    AugmentConfig,
    make_datasets,
    skipped_files_section,
    validate_data,  # noqa: F401 - same image folders, same checks (--validate-data)
)
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import distribute, optimizers
from fmkeras.training import precision as precision_lib

TASK = "pretrain-simclr"


@dataclasses.dataclass
class ViewAugmentConfig(AugmentConfig):
    """How each SimCLR view is drawn (``ImageDataGenerator`` meaning; zoom < 1 crops)."""

    rotation_range: float = DEFAULT_AUGMENTATION.rotation_range
    width_shift_range: float = DEFAULT_AUGMENTATION.width_shift_range
    height_shift_range: float = DEFAULT_AUGMENTATION.height_shift_range
    zoom_range: list[float] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_AUGMENTATION.zoom_range))
    horizontal_flip: bool = DEFAULT_AUGMENTATION.horizontal_flip
    brightness_range: list[float] | None = dataclasses.field(
        default_factory=lambda: list(DEFAULT_AUGMENTATION.brightness_range))

    def augmentation(self):
        """The :class:`fmkeras.data.Augmentation` these settings describe."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "in_model"}
        for key in ("zoom_range", "brightness_range"):
            if isinstance(fields[key], list):
                fields[key] = tuple(fields[key])
        return Augmentation(**fields)


@dataclasses.dataclass
class SimCLRModelConfig:
    """The encoder (as in fine-tune) and SimCLR's projection head and loss."""

    backbone: str = "mobilenet_v2"
    weights: str | None = None
    alpha: float | None = None
    encoder_path: str | None = None
    projection_dim: int = 64
    hidden_dim: int = 128
    temperature: float = 0.1
    views: ViewAugmentConfig = dataclasses.field(default_factory=ViewAugmentConfig)


@dataclasses.dataclass
class SimCLRTrainConfig:
    """Optimisation settings."""

    epochs: int = 10
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    verbose: int | str = "auto"


@dataclasses.dataclass
class PretrainSimCLRConfig(config_lib.RunSettings):
    """The full config of the pretrain-simclr task.

    Example:

    >>> config = PretrainSimCLRConfig()
    >>> config.model.temperature, config.data.rescale
    (0.1, 1.0)
    """

    data: FineTuneDataConfig = dataclasses.field(default_factory=FineTuneDataConfig)
    model: SimCLRModelConfig = dataclasses.field(default_factory=SimCLRModelConfig)
    train: SimCLRTrainConfig = dataclasses.field(default_factory=SimCLRTrainConfig)


def _check_config(config):
    config_lib.check_common_keys(config, kind=PretrainSimCLRConfig)
    if config.data.pipeline != "tfdata":
        raise ConfigError(f"Expected data.pipeline='tfdata'. Received: {config.data.pipeline!r}")
    if config.train.epochs < 1:
        raise ConfigError(f"Expected train.epochs >= 1. Received: {config.train.epochs}")
    if config.data.rescale != 1.0:
        raise ConfigError("Expected data.rescale=1.0: encoders take [0, 255] pixels. "
                          f"Received: {config.data.rescale}")
    if config.model.temperature <= 0:
        raise ConfigError(f"Expected model.temperature > 0. Received: {config.model.temperature}")
    if config.data.batch_size < 2:
        raise ConfigError(f"Expected data.batch_size >= 2 (views need negatives). "
                          f"Received: {config.data.batch_size}")


@base.keeps_global_settings
def run(config, callbacks=()):
    """Pretrain an encoder with SimCLR and save it as ``<run_dir>/encoder.keras``.

    Args:
        config: :class:`PretrainSimCLRConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult` whose ``model`` is the SimCLR
        model; ``metrics["encoder_path"]`` is the saved encoder.

    Example:

    >>> config = PretrainSimCLRConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["encoder_path"]  # doctest: +SKIP
    """
    _check_config(config)
    budget = base.time_budget(config)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed, config.deterministic)
    splits = make_datasets(base.with_global_batch(config, dist))
    base.prepare_run_dir(run_dir, config, TASK)
    policy = precision_lib.set_precision(config.precision)

    data, train, model_config = config.data, config.train, config.model
    channels = image_data.check_color_mode(data.color_mode)
    with base.model_scope(dist):
        encoder = build_backbone(model_config, (data.image_size, data.image_size, channels))
        model = SimCLR(encoder, model_config.projection_dim, model_config.hidden_dim,
                       model_config.temperature, model_config.views.augmentation(),
                       seed=config.seed)
        # A batch with no replica holding two images has no negatives to learn
        # from: it would step the optimizer on a zero gradient (momentum still
        # moves the weights), so it is left out.
        min_batch = dist.replicas + 1
        steps = dist.steps_per_epoch(splits.train_samples, data.batch_size, min_batch)
        lr = optimizers.learning_rate_schedule(train.learning_rate, train.schedule,
                                               total_steps=steps * train.epochs)
        model.compile(optimizer=optimizers.build_optimizer(train.optimizer, lr,
                                                           train.weight_decay),
                      jit_compile=config.jit_compile)
    history_path = os.path.join(run_dir, "history.csv")
    identity = {"model": config_lib.to_dict(model_config),
                "optimizer": base.optimizer_identity(train),
                "data": {"path": data.path, "batch_size": data.batch_size,
                         "image_size": data.image_size, "train_samples": splits.train_samples},
                "replicas": dist.replicas}
    fit_callbacks = [
        *callbacks_lib.resumable_callbacks(run_dir, identity, config.force_resume,
                                           every_s=config.checkpoint_every_s),
        callbacks_lib.EpochSeeds(config.seed), *splits.callbacks, *callbacks]
    try:
        dist.fit(model, dist.dataset(splits.train, min_batch=min_batch, steps=steps),
                 validation_data=splits.validation, epochs=train.epochs,
                 callbacks=fit_callbacks, verbose=train.verbose, shuffle=False)
    finally:
        callbacks_lib.after_fit(fit_callbacks)

    encoder_path = os.path.join(run_dir, "encoder.keras")
    encoder.save(encoder_path)
    history = cls_eval.read_history(history_path)
    cls_eval.plot_training_curves(history, os.path.join(run_dir, "plots", "training_curves.png"))
    metrics = {"first_loss": history["loss"][0], "final_loss": history["loss"][-1],
               "precision_policy": policy, "encoder": encoder.name,
               "num_parameters": int(encoder.count_params()),
               "train_samples": splits.train_samples, "encoder_path": encoder_path,
               "data_skipped_files": len(splits.skipped_files), **dist.describe(),
               **base.budget_metrics(budget)}
    if "val_loss" in history and not math.isnan(history["val_loss"][-1]):  # nan: no validation
        metrics["final_val_loss"] = history["val_loss"][-1]
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    base.write_report(run_dir, "SimCLR pretraining", metrics, None, ["plots/training_curves.png"],
                      sections=[("Data problems", skipped_files_section(splits.skipped_files))])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model)
