"""Image classification: folder of class folders -> trained, evaluated, exported CNN.

``run(config)`` reads ``data.path`` (a folder with ``train/`` and ``test/``
class folders, or a single folder of class folders from which a test split
is held out), builds ``model.name`` with the builders of
:mod:`fmkeras.models` (or, with ``model.encoder_path``, a classifier head on
a saved encoder such as ``pretrain-simclr``'s ``encoder.keras``), trains
with ``model.fit`` and the standard callbacks, evaluates on the test split
and exports a SavedModel that serves image bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import keras
import numpy as np
import tensorflow as tf

from fmkeras import config as config_lib
from fmkeras import export as export_lib
from fmkeras import models
from fmkeras.data import images as image_data
from fmkeras.data import tfds_images
from fmkeras.data.augment import Augmentation
from fmkeras.data.image_data_generator import ImageDataGenerator
from fmkeras.errors import ConfigError, DataError, cwd_note
from fmkeras.evaluation import classification as cls_eval
from fmkeras.models.augmentation import with_augmentation
from fmkeras.tasks import base, transfer
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import distribute, optimizers
from fmkeras.training import precision as precision_lib

TASK = "image-classification"


@dataclasses.dataclass
class AugmentConfig:
    """Random training-time transforms, with the legacy ``ImageDataGenerator`` meaning.

    ``in_model: true`` runs them as Keras preprocessing layers inside the
    model (for accelerators) instead of in the input pipeline.
    """

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    shear_range: float = 0.0
    zoom_range: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    channel_shift_range: float = 0.0
    brightness_range: list[float] | None = None
    fill_mode: str = "nearest"
    cval: float = 0.0
    in_model: bool = False

    def augmentation(self):
        """The :class:`fmkeras.data.Augmentation` these settings describe."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "in_model"}
        if fields["brightness_range"] is not None:
            fields["brightness_range"] = tuple(fields["brightness_range"])
        return Augmentation(**fields)


@dataclasses.dataclass
class ImageDataConfig:
    """Where the images are and how they are batched.

    ``path`` is a folder holding ``train/`` and ``test/`` class folders, a
    folder of class folders from which ``test_split`` is held out, or a tfds
    name (``tfds:mnist``). ``pipeline`` is ``tfdata`` (the native pipeline)
    or ``image_data_generator`` (the ImageDataGenerator-compatible API; needs
    ``train/`` and ``test/`` folders).
    """

    path: str = "data/digits"
    image_size: int = 16
    color_mode: str = "grayscale"
    batch_size: int = 32
    validation_split: float = 0.1
    test_split: float = 0.2
    rescale: float = 1.0 / 255
    cache: bool = True
    max_bad_fraction: float = 0.05
    pipeline: str = "tfdata"
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


@dataclasses.dataclass
class ImageModelConfig:
    """Which builder and its main hyper-parameters.

    ``encoder_path`` (a ``.keras`` encoder taking ``[0, 255]`` pixels, e.g.
    ``<simclr run>/encoder.keras``, or that run's folder) takes precedence over ``name``: the
    classifier is ``pooling`` (``avg``, ``max`` or ``flatten``), a ReLU
    layer of ``head_units`` (0: none), ``dropout`` and a softmax on that
    encoder, which is trained too unless ``freeze_encoder``. It needs
    ``data.rescale: 1.0``.
    """

    name: str = "simple_cnn"
    encoder_path: str | None = None
    freeze_encoder: bool = False
    pooling: str = "avg"
    head_units: int = 0
    filters: tuple[int, ...] = (32, 64, 128)
    dense_units: int = 128
    dropout: float = 0.5
    depth: int = 20
    base_filters: int = 16
    hidden_units: tuple[int, ...] = (256, 128)


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings.

    ``schedule``: ``constant``, ``cosine``, ``onecycle`` or ``plateau``
    (:func:`fmkeras.training.optimizers.learning_rate_schedule`);
    ``momentum`` is the Nesterov momentum of ``optimizer: sgd``, and
    ``norm_bias_lr_scale`` its step factor for batch-norm offsets
    (:class:`fmkeras.training.optimizers.SGD`). ``optimizer: muon``
    (:class:`fmkeras.training.optimizers.MuonSGD`) trains convolution
    kernels with Muon, steps of ``muon_scale`` times the learning rate with
    Nesterov momentum ``muon_momentum``, and the rest as ``sgd``.
    ``lookahead: true`` adds airbench's lookahead
    (:class:`fmkeras.training.callbacks.Lookahead`): every 5 steps the weights
    are set to an average of themselves whose decay rises to ``0.95 ** 5``.
    """

    epochs: int = 15
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    norm_bias_lr_scale: float = 1.0
    muon_scale: float = 0.16
    muon_momentum: float = 0.6
    schedule: str = "cosine"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    lookahead: bool = False
    early_stopping_patience: int | None = None
    steps_per_execution: int = 1
    verbose: int | str = "auto"


@dataclasses.dataclass
class ExportConfig(config_lib.ExportSettings):
    """SavedModel export settings (``<run_dir>/export/<name>/<version>``)."""

    name: str = "image_classifier"


@dataclasses.dataclass
class ImageClassificationConfig(config_lib.RunSettings):
    """The full config of the image-classification task.

    Example:

    >>> config = ImageClassificationConfig()
    >>> config.data.path, config.model.name
    ('data/digits', 'simple_cnn')
    """

    data: ImageDataConfig = dataclasses.field(default_factory=ImageDataConfig)
    model: ImageModelConfig = dataclasses.field(default_factory=ImageModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


MODEL_NAMES = ("simple_cnn", "resnet", "fast_cnn", "mlp")
# The model keys each builder reads (name and encoder_path always are).
MODEL_KEYS = {"simple_cnn": ("filters", "dense_units", "dropout"),
              "resnet": ("depth", "base_filters"), "fast_cnn": ("filters",),
              "mlp": ("hidden_units", "dropout"),
              "encoder": ("freeze_encoder", "pooling", "head_units", "dropout")}


def build_model(model_config, input_shape, num_classes):
    """Build the configured classifier (uncompiled).

    Example:

    >>> build_model(ImageModelConfig(), (16, 16, 1), 10).name
    'simple_cnn'
    """
    if model_config.encoder_path:
        encoder = transfer.load_encoder(model_config.encoder_path, input_shape)
        encoder.trainable = not model_config.freeze_encoder
        return models.image_classifier(encoder, num_classes, model_config.dropout,
                                       pooling=model_config.pooling,
                                       hidden_units=model_config.head_units)
    name = model_config.name
    if name == "simple_cnn":
        return models.simple_cnn(input_shape, num_classes, filters=model_config.filters,
                                 dense_units=model_config.dense_units,
                                 dropout=model_config.dropout)
    if name == "resnet":
        return models.resnet(input_shape, num_classes, depth=model_config.depth,
                             base_filters=model_config.base_filters)
    if name == "fast_cnn":
        return models.fast_cnn(input_shape, num_classes, widths=model_config.filters)
    if name == "mlp":
        return models.mlp(input_shape, model_config.hidden_units, num_classes,
                          dropout=model_config.dropout)
    raise ConfigError(
        f"Unknown model.name. Expected one of {list(MODEL_NAMES)}. Received: {name!r}")


def adapt_first_layer(model, train, scale=1.0, images=5000):
    """Adapt a :class:`fmkeras.models.cnn.PatchWhitening` input layer to training images.

    Reads about ``images`` images of the training pipeline (as the model gets
    them, times ``scale``); does nothing for models without such a layer.

    Example:

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensors((tf.zeros((4, 16, 16, 3)), tf.zeros((4, 10))))
    >>> adapt_first_layer(models.simple_cnn((16, 16, 3), 10), ds)
    0
    """
    if not any(isinstance(layer, models.PatchWhitening) for layer in model.layers):
        return 0
    batches, seen = [], 0
    for batch, _ in train:
        batches.append(np.asarray(batch) * scale)
        seen += len(batches[-1])
        if seen >= images:
            break
    return models.adapt_whitening(model, np.concatenate(batches)[:images])


def load_splits(data_config, seed, skipped=None):
    """Index ``data.path`` into train, validation and test :class:`DirectoryIndex` es.

    Unusable files are left out with one warning; their paths are appended to
    the list ``skipped`` when one is given (for the run's report).

    Example:

    >>> train, val, test = load_splits(ImageDataConfig(), seed=0)
    >>> len(train) + len(val), len(test)
    (1437, 360)
    """
    root = data_config.path
    if not os.path.isdir(root):
        raise DataError(
            f"Image data folder not found. Expected a folder with train/ and test/ class "
            f"folders, or a folder of class folders. Received: data.path={root!r}{cwd_note(root)}")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    def check(index):
        return image_data.validate_index(index, max_bad_fraction=data_config.max_bad_fraction,
                                         skipped=skipped)

    if os.path.isdir(train_dir):
        train = check(image_data.index_directory(train_dir))
        if os.path.isdir(test_dir):
            test = check(image_data.index_directory(test_dir, classes=train.class_names,
                                                    allow_empty_classes=True))
        else:
            train, test = image_data.split_index(train, data_config.test_split, seed,
                                                 "data.test_split")
    else:
        train, test = image_data.split_index(check(image_data.index_directory(root)),
                                             data_config.test_split, seed, "data.test_split")
    if test is None:
        raise DataError(f"No test images: {root!r} has no test/ folder and data.test_split=0.")
    train, val = image_data.split_index(train, data_config.validation_split, seed + 1,
                                         "data.validation_split")
    return train, val, test


@dataclasses.dataclass
class ImageSplits:
    """Batched train/validation/test datasets and what the task needs to know of them."""

    train: object
    validation: object
    test: object
    class_names: list
    train_samples: int
    test_samples: int
    callbacks: list = dataclasses.field(default_factory=list)
    repeats: bool = False  # ``train`` repeats its epochs without end
    skipped_files: list = dataclasses.field(default_factory=list)  # unusable, left out
    validation_samples: int | None = None


def make_datasets(config, repeat=False):
    """Build the train, validation and test pipelines from ``config.data``.

    With ``repeat``, a folder's training pipeline repeats its epochs without
    end (``fit`` then keeps one iterator and prepares the next epoch's first
    batches while one ends), ``repeats`` is true, and ``fit`` needs
    ``steps_per_epoch`` (:meth:`Distribution.steps_per_epoch`) to tell where
    epochs end.

    ``data.path`` is a folder (see :func:`load_splits`) or a tfds name such as
    ``tfds:mnist`` (``train`` split for training and validation, ``test`` for
    testing).

    Example:

    >>> splits = make_datasets(ImageClassificationConfig())
    >>> splits.class_names[:3], splits.test_samples
    (['0', '1', '2'], 360)
    """
    data, seed = config.data, config.seed
    aug = data.augment.augmentation()
    in_model = data.augment.in_model
    if data.pipeline == "image_data_generator":
        return _generator_splits(data, aug if not in_model else Augmentation(), seed)
    common = dict(image_size=(data.image_size, data.image_size), batch_size=data.batch_size,
                  color_mode=data.color_mode, rescale=1.0 if in_model else data.rescale,
                  label_mode="categorical")
    train_aug = None if aug.is_identity or in_model else aug
    if tfds_images.is_tfds_name(data.path):
        keep = int(round(100 * (1 - data.validation_split)))
        train, names = tfds_images.tfds_image_dataset(
            data.path, split=f"train[:{keep}%]", shuffle=True, seed=seed, cache=data.cache,
            augment=train_aug, **common)
        val = (tfds_images.tfds_image_dataset(data.path, split=f"train[{keep}%:]",
                                              cache=data.cache, **common)[0]
               if data.validation_split else None)
        test = tfds_images.tfds_image_dataset(data.path, split="test", cache=False, **common)[0]
        count = lambda ds: int(ds.unbatch().reduce(0, lambda n, _: n + 1))  # noqa: E731
        return ImageSplits(train, val, test, names, count(train), count(test),
                           validation_samples=count(val) if val is not None else None)
    skipped = []
    train_index, val_index, test_index = load_splits(data, seed, skipped)
    _check_class_count(train_index.class_names, data.path)
    common.update(num_classes=len(train_index.class_names), validate=False)  # checked above
    # The epoch's order and augmentation follow Keras' epoch number, so a resumed run
    # replays exactly the epochs an uninterrupted one would.
    counter = image_data.EpochCounter()
    train = image_data.image_dataset(train_index, shuffle=True, seed=seed, cache=data.cache,
                                     augment=train_aug, epoch_counter=counter, repeat=repeat,
                                     **common)
    val = (image_data.image_dataset(val_index, cache=data.cache, **common)
           if val_index is not None else None)
    test = image_data.image_dataset(test_index, cache=False, **common)
    return ImageSplits(train, val, test, train_index.class_names, len(train_index),
                       len(test_index), [counter.callback()],
                       repeat, skipped, len(val_index) if val_index is not None else None)


def skipped_files_section(paths, shown=20):
    """The report's "Data problems" text for the image files a run left out.

    Example:

    >>> skipped_files_section([])
    'none: every image file was usable'
    >>> print(skipped_files_section(["data/a/x.png"]))
    1 unusable image file skipped (the run's first warning and `--validate-data` give the reasons):
    - data/a/x.png
    """
    if not paths:
        return "none: every image file was usable"
    lines = [f"{len(paths)} unusable image file{'s' if len(paths) > 1 else ''} skipped (the "
             f"run's first warning and `--validate-data` give the reasons):"]
    lines += [f"- {path}" for path in paths[:shown]]
    if len(paths) > shown:
        lines.append(f"- ... and {len(paths) - shown} more")
    return "\n".join(lines)


def resume_identity(config, splits):
    """What must not change for an interrupted run to be resumed.

    Example:

    >>> splits = make_datasets(ImageClassificationConfig())
    >>> sorted(resume_identity(ImageClassificationConfig(), splits))
    ['data', 'model', 'optimizer']
    """
    data = config.data
    optimizer = {k: getattr(config.train, k) for k in (
        "optimizer", "learning_rate", "weight_decay", "momentum", "schedule",
        "warmup_epochs", "label_smoothing")}
    if config.train.norm_bias_lr_scale != 1:  # runs from before the key still resume
        optimizer["norm_bias_lr_scale"] = config.train.norm_bias_lr_scale
    if config.train.lookahead:  # likewise
        optimizer["lookahead"] = True
    if config.train.optimizer == "muon":
        optimizer["muon_scale"] = config.train.muon_scale
        optimizer["muon_momentum"] = config.train.muon_momentum
    return {
        "model": config_lib.to_dict(config.model),
        "optimizer": optimizer,
        "data": {"path": data.path, "batch_size": data.batch_size,
                 "image_size": data.image_size, "color_mode": data.color_mode,
                 "classes": list(splits.class_names), "train_samples": splits.train_samples},
    }


def _check_class_count(class_names, path):
    if len(class_names) < 2:
        raise DataError(f"A classifier needs at least 2 class folders in {path!r}. "
                        f"Received: {list(class_names)}")


def _generator_splits(data, aug, seed):
    """Train/validation/test from the ImageDataGenerator-compatible API."""
    train_dir, test_dir = os.path.join(data.path, "train"), os.path.join(data.path, "test")
    if tfds_images.is_tfds_name(data.path) or not os.path.isdir(test_dir):
        raise ConfigError(
            "data.pipeline=image_data_generator needs a folder with train/ and test/ class "
            f"folders. Received: data.path={data.path!r}")
    if not os.path.isdir(train_dir):
        raise DataError(f"No train/ folder in {data.path!r}.")
    fields = {f.name: getattr(aug, f.name) for f in dataclasses.fields(aug)
              if f.name != "interpolation"}
    augmenting = ImageDataGenerator(rescale=data.rescale, validation_split=data.validation_split,
                                    **fields)
    plain = ImageDataGenerator(rescale=data.rescale, validation_split=data.validation_split)
    flow = dict(target_size=(data.image_size, data.image_size), color_mode=data.color_mode,
                class_mode="categorical", batch_size=data.batch_size, seed=seed,
                interpolation="bilinear", max_bad_fraction=data.max_bad_fraction)
    subset = "training" if data.validation_split else None
    train = augmenting.flow_from_directory(train_dir, subset=subset, shuffle=True, **flow)
    _check_class_count(list(train.class_indices), train_dir)
    val = (plain.flow_from_directory(train_dir, subset="validation", shuffle=False, **flow)
           if data.validation_split else None)
    test = ImageDataGenerator(rescale=data.rescale).flow_from_directory(
        test_dir, classes=list(train.class_indices), shuffle=False, **flow)
    return ImageSplits(train.as_dataset(), val.as_dataset() if val else None, test.as_dataset(),
                       list(train.class_indices), train.samples, test.samples,
                       validation_samples=val.samples if val else None)


PIPELINES = ("tfdata", "image_data_generator")


def validate_data(config):
    """List every problem the run would skip or stop on, without training (``--validate-data``).

    Returns:
        list of ``(path, reason)``; folders that cannot be used at all raise
        :class:`DataError` as the run would.

    Example:

    >>> validate_data(ImageClassificationConfig())
    []
    """
    from fmkeras.data.image_files import scan_images

    data = config.data
    if tfds_images.is_tfds_name(data.path):
        return []
    channels = image_data.check_color_mode(data.color_mode)
    load = functools.partial(image_data.load_image, channels=channels)
    folders = [os.path.join(data.path, d) for d in ("train", "test")
               if os.path.isdir(os.path.join(data.path, d))] or [data.path]
    problems = []
    for folder in folders:
        index = image_data.index_directory(folder)
        if folder == folders[0]:  # the training classes, as the run checks them
            _check_class_count(index.class_names, folder)
        problems.extend(scan_images(index.paths, load)[2])
    return problems


def _check_config(config):
    config_lib.check_common_keys(config, kind=ImageClassificationConfig)
    if config.train.epochs < 1:
        raise ConfigError(f"Expected train.epochs >= 1. Received: {config.train.epochs}")
    if config.train.optimizer == "muon":  # before any data is read (no TensorFlow yet)
        try:
            optimizers.check_muon_settings(config.train.muon_scale, config.train.muon_momentum,
                                           prefix="train.")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    image_data.check_color_mode(config.data.color_mode)
    if config.model.encoder_path and config.data.rescale != 1.0:
        raise ConfigError("model.encoder_path needs data.rescale=1.0: saved encoders take "
                          "[0, 255] pixels and preprocess them themselves. Received: "
                          f"data.rescale={config.data.rescale}")
    if config.model.pooling not in ("avg", "max", "flatten"):
        raise ConfigError(f"Expected model.pooling avg, max or flatten. "
                          f"Received: {config.model.pooling!r}")
    if not isinstance(config.model.head_units, int) or config.model.head_units < 0:
        raise ConfigError(f"Expected model.head_units >= 0 (0: no hidden layer). "
                          f"Received: {config.model.head_units!r}")
    if config.data.pipeline not in PIPELINES:
        raise ConfigError(f"Unknown data.pipeline. Expected one of {list(PIPELINES)}. "
                          f"Received: {config.data.pipeline!r}")
    _warn_unused(config)


def _warn_unused(config):
    """Warn about model and optimizer keys the chosen model and optimizer do not read."""
    model, train = config.model, config.train
    builder = "encoder" if model.encoder_path else model.name
    if builder in MODEL_KEYS:
        config_lib.warn_unused(
            model, "model.", ("name", "encoder_path", *MODEL_KEYS[builder]),
            "model.encoder_path" if model.encoder_path else f"model.name={model.name}")
    # norm_bias_lr_scale off sgd/muon is an error of build_optimizer's, not a warning.
    optimizer_keys = {"sgd": ("momentum", "norm_bias_lr_scale"),
                      "muon": ("momentum", "norm_bias_lr_scale", "muon_scale", "muon_momentum")}
    unread = {"momentum", "muon_scale", "muon_momentum"} - set(
        optimizer_keys.get(train.optimizer, ()))
    config_lib.warn_unused(train, "train.",
                           [f.name for f in dataclasses.fields(train) if f.name not in unread],
                           f"train.optimizer={train.optimizer}")


@base.keeps_global_settings
def run(config, callbacks=()):
    """Train, evaluate and export an image classifier as configured.

    Args:
        config: :class:`ImageClassificationConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult`.

    Example:

    >>> config = ImageClassificationConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["test_accuracy"]  # doctest: +SKIP
    """
    _check_config(config)
    budget = base.time_budget(config)  # refused on several workers before any joins
    # The strategy comes first: multi-worker runs must start before TensorFlow does.
    dist = distribute.Distribution(config.strategy)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    # Seed next: tf.data shuffles draw on the global seed as well as their own.
    precision_lib.set_seed(config.seed, config.deterministic)
    # One iterator for the whole fit (none built per epoch) where no worker
    # shards the data (tf.distribute needs finite epochs to split them) and
    # each call runs one step (Keras runs whole groups of steps_per_execution,
    # which would run on into the next epoch's batches).
    repeat = dist.workers == 1 and config.train.steps_per_execution == 1
    splits = make_datasets(base.with_global_batch(config, dist), repeat=repeat)
    resume = callbacks_lib.prepare_resume(run_dir)
    base.prepare_run_dir(run_dir, config, TASK)
    policy = precision_lib.set_precision(config.precision)

    data, train = config.data, config.train
    size = (data.image_size, data.image_size)
    channels = image_data.check_color_mode(data.color_mode)
    class_names = splits.class_names
    rescale = data.rescale
    with base.model_scope(dist):
        model = build_model(config.model, (*size, channels), len(class_names))
        adapt_first_layer(model, splits.train, data.rescale if data.augment.in_model else 1.0)
        if data.augment.in_model:
            model = with_augmentation(model, data.augment.augmentation(), config.seed,
                                      data.rescale)
            rescale = 1.0  # the wrapped model takes [0, 255] pixels
        steps = dist.steps_per_epoch(splits.train_samples, data.batch_size)
        lr = optimizers.learning_rate_schedule(
            train.learning_rate, train.schedule, total_steps=steps * train.epochs,
            warmup_steps=optimizers.warmup_steps_for(steps, train.warmup_epochs, train.epochs,
                                                     train.schedule))
        model.compile(
            optimizer=optimizers.build_optimizer(
                train.optimizer, lr, train.weight_decay, train.momentum,
                train.norm_bias_lr_scale, train.muon_scale, train.muon_momentum),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
            metrics=["accuracy"], jit_compile=config.jit_compile,
            steps_per_execution=train.steps_per_execution)
    monitor = "val_loss" if splits.validation is not None else "loss"
    if budget is not None:
        callbacks = [budget, *callbacks]
    if train.lookahead:  # last: it averages at the batch where another callback stops fit
        callbacks = [*callbacks, callbacks_lib.Lookahead(steps * train.epochs)]
    callbacks = callbacks_lib.standard_callbacks(
        run_dir, monitor=monitor, early_stopping_patience=train.early_stopping_patience,
        reduce_lr_patience=2 if train.schedule == "plateau" else None, resume=resume,
        extra=[*splits.callbacks, *callbacks], seed=config.seed,
        identity={**resume_identity(config, splits), "replicas": dist.replicas},
        force_resume=config.force_resume, every_s=config.checkpoint_every_s)
    try:
        dist.fit(model, dist.dataset(splits.train, steps=steps),
                 validation_data=dist.eval_dataset(splits.validation, splits.validation_samples,
                                                   data.batch_size),
                 epochs=train.epochs, steps_per_epoch=steps if splits.repeats else None,
                 callbacks=callbacks, verbose=train.verbose, shuffle=False)
    finally:
        callbacks_lib.after_fit(callbacks)

    best = os.path.join(run_dir, "checkpoints", "best.keras")
    if os.path.exists(best):
        model.load_weights(best)
    test_loss, _ = model.evaluate(
        dist.eval_dataset(splits.test, splits.test_samples, data.batch_size), verbose=0)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in splits.test))
    probabilities = distribute.predict(model, np.concatenate(images))
    y_true = np.concatenate(labels).argmax(-1)
    scores = cls_eval.classification_metrics(y_true, probabilities, class_names)
    metrics = {"test_accuracy": scores["accuracy"], "test_loss": float(test_loss),
               "macro_f1": scores["macro_f1"], "precision_policy": policy,
               "num_parameters": int(model.count_params()),
               **transfer.parameter_metrics(model),
               "train_samples": splits.train_samples, "test_samples": splits.test_samples,
               "data_skipped_files": len(splits.skipped_files), **dist.describe(),
               **base.budget_metrics(budget)}

    plots = os.path.join(run_dir, "plots")
    history = cls_eval.read_history(os.path.join(run_dir, "history.csv"))
    cls_eval.plot_training_curves(history, os.path.join(plots, "training_curves.png"))
    cls_eval.plot_confusion_matrix(scores["confusion_matrix"], class_names,
                                   os.path.join(plots, "confusion_matrix.png"))

    export_path = None
    if config.export.enabled:
        # Real test images, re-encoded, exercise the bytes signature in the check.
        pixels = np.clip(np.round(images[0][:3] / rescale), 0, 255).astype(np.uint8)
        samples = [tf.io.encode_png(p).numpy() for p in pixels]
        export_path = export_lib.export_image_classifier(
            model, os.path.join(run_dir, "export"), config.export.name, class_names, size,
            channels, rescale=rescale, sample_bytes=samples, check=config.export.check)
        metrics["export_path"] = export_path
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    base.write_report(run_dir, "Image classification", metrics, scores["per_class"],
                      ["plots/training_curves.png", "plots/confusion_matrix.png"],
                      sections=[("Data problems", skipped_files_section(splits.skipped_files))])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model,
                          export_path=export_path)
