"""Image generation: folder of images -> trained DCGAN, FID/KID/IS, exported generator.

``run(config)`` reads ``data.path`` (a folder of class folders, optionally
with ``train/`` and ``test/``; a flat folder of images is one unlabelled
class), scales the images to [-1, 1], trains a :class:`fmkeras.models.GAN`
built from the DCGAN builders with ``fit``, then scores generated images
against held-out real ones (FID, KID, Inception Score) and exports the
generator as a SavedModel serving uint8 images.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from fmkeras import config as config_lib
from fmkeras import export as export_lib
from fmkeras import models, saving
from fmkeras.data import images as image_data
from fmkeras.errors import ConfigError, DataError, cwd_note
from fmkeras.evaluation import classification as cls_eval
from fmkeras.evaluation import generation
from fmkeras.models.dcgan import SUPPORTED_SIZES
from fmkeras.models.gan import GAN
from fmkeras.tasks import base
from fmkeras.tasks.image_classification import (
    skipped_files_section,
    validate_data,  # noqa: F401 - same image folders, same checks (--validate-data)
)
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import distribute, gan_callbacks
from fmkeras.training import precision as precision_lib

TASK = "image-generation"
EXTRACTORS = ("classifier", "inception")


@dataclasses.dataclass
class GenerationDataConfig:
    """Where the images are; ``test/`` (or ``test_split`` of them) is held out for scoring."""

    path: str = "data/digits"
    image_size: int = 16
    color_mode: str = "grayscale"
    batch_size: int = 64
    conditional: bool = False
    test_split: float = 0.2
    cache: bool = True


@dataclasses.dataclass
class GenerationModelConfig:
    """DCGAN sizes (see :func:`fmkeras.models.dcgan_generator`)."""

    latent_dim: int = 64
    base_filters: int = 32
    dropout: float = 0.3


@dataclasses.dataclass
class GenerationTrainConfig:
    """Adam settings of the two networks and the GAN's stabilisers."""

    epochs: int = 30
    d_learning_rate: float = 2e-4
    g_learning_rate: float = 2e-4
    beta_1: float = 0.5
    label_smoothing: float = 0.1
    instance_noise: float = 0.0
    verbose: int | str = "auto"


@dataclasses.dataclass
class GenerationEvalConfig:
    """How samples are scored.

    ``extractor`` is ``classifier`` (a small ``simple_cnn`` trained on the
    real labelled training images for ``classifier_epochs``, or loaded from
    ``classifier_path``) or ``inception`` (InceptionV3 with
    ``inception_weights``: ``imagenet`` or a local weights file).
    """

    extractor: str = "classifier"
    classifier_path: str | None = None
    classifier_epochs: int = 5
    inception_weights: str = "imagenet"
    num_samples: int = 1000


@dataclasses.dataclass
class GenerationExportConfig(config_lib.ExportSettings):
    """SavedModel export settings (``<run_dir>/export/<name>/<version>``)."""

    name: str = "image_generator"


@dataclasses.dataclass
class ImageGenerationConfig:
    """The full config of the image-generation task.

    Example:

    >>> config = ImageGenerationConfig()
    >>> config.data.path, config.evaluation.extractor
    ('data/digits', 'classifier')
    """

    data: GenerationDataConfig = dataclasses.field(default_factory=GenerationDataConfig)
    model: GenerationModelConfig = dataclasses.field(default_factory=GenerationModelConfig)
    train: GenerationTrainConfig = dataclasses.field(default_factory=GenerationTrainConfig)
    evaluation: GenerationEvalConfig = dataclasses.field(default_factory=GenerationEvalConfig)
    export: GenerationExportConfig = dataclasses.field(default_factory=GenerationExportConfig)
    precision: str = "auto"
    strategy: str = "auto"
    seed: int = 42
    run_dir: str | None = None
    force_resume: bool = False
    checkpoint_every_s: float = 30.0
    max_minutes: float | None = None

    def __post_init__(self):
        config_lib.check_checkpoint_interval(self.checkpoint_every_s)


def _check_config(config):
    config_lib.check_common_keys(config, kind=ImageGenerationConfig)
    data, train, evaluation = config.data, config.train, config.evaluation
    if data.image_size not in SUPPORTED_SIZES:
        raise ConfigError(f"Unsupported data.image_size. Expected one of {sorted(SUPPORTED_SIZES)}."
                          f" Received: {data.image_size}")
    if image_data.check_color_mode(data.color_mode) not in (1, 3):
        raise ConfigError("Expected data.color_mode 'grayscale' or 'rgb'. "
                          f"Received: {data.color_mode!r}")
    for key, value in (("data.batch_size", data.batch_size), ("train.epochs", train.epochs),
                       ("model.latent_dim", config.model.latent_dim),
                       ("model.base_filters", config.model.base_filters),
                       ("evaluation.classifier_epochs", evaluation.classifier_epochs)):
        if value < 1:
            raise ConfigError(f"Expected {key} >= 1. Received: {value}")
    if evaluation.num_samples < 2:
        raise ConfigError(f"Expected evaluation.num_samples >= 2. Received: "
                          f"{evaluation.num_samples}")
    if evaluation.extractor not in EXTRACTORS:
        raise ConfigError(f"Unknown evaluation.extractor. Expected one of {list(EXTRACTORS)}. "
                          f"Received: {evaluation.extractor!r}")
    if not 0.0 < data.test_split < 1.0:
        raise ConfigError(f"Expected data.test_split in (0, 1). Received: {data.test_split}")


def _index(folder, skipped=None):
    """Index class folders, or a flat folder of images as one class ``all``."""
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    if any(e.is_dir() for e in entries):
        return image_data.validate_index(image_data.index_directory(folder), skipped=skipped)
    files = sorted(e.name for e in entries if e.is_file()
                   and e.name.lower().endswith(image_data.IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"Expected images or class folders of images. Received: data.path "
                        f"{folder!r} without images")
    index = image_data.DirectoryIndex(folder, files, np.zeros(len(files), np.int32), ["all"])
    return image_data.validate_index(index, skipped=skipped)


def load_splits(data_config, seed, skipped=None):
    """Index ``data.path`` into training and held-out :class:`DirectoryIndex` es.

    Uses ``train/`` and ``test/`` when present, else holds out
    ``data.test_split`` of the folder. Unusable files are left out with one
    warning; their paths are appended to the list ``skipped`` when one is
    given (for the run's report).

    Example:

    >>> train, test = load_splits(GenerationDataConfig(), seed=0)
    >>> len(train), len(test)
    (1437, 360)
    """
    root = data_config.path
    if not os.path.isdir(root):
        raise DataError(f"Image data folder not found. Expected a folder of images or of class "
                        f"folders. Received: data.path={root!r}{cwd_note(root)}")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        train = _index(train_dir, skipped)
        test = image_data.index_directory(test_dir, classes=train.class_names,
                                          allow_empty_classes=True)
        return train, image_data.validate_index(test, skipped=skipped)
    train = _index(train_dir if os.path.isdir(train_dir) else root, skipped)
    return image_data.split_index(train, data_config.test_split, seed, "data.test_split")


def scaled_dataset(index, data, shuffle, seed):
    """``(images in [-1, 1], int labels)`` batches of ``index`` as ``data`` says.

    Args:
        index: :class:`fmkeras.data.images.DirectoryIndex`.
        data: :class:`GenerationDataConfig` (size, colour mode, batch size, cache).
        shuffle: bool. Reshuffle each epoch.
        seed: int. Shuffle seed.

    Example:

    >>> train, _ = load_splits(GenerationDataConfig(), seed=0)
    >>> x, y = next(iter(scaled_dataset(train, GenerationDataConfig(), False, 0)))
    >>> float(x.numpy().min()) >= -1.0
    True
    """
    ds = image_data.image_dataset(index, data.image_size, batch_size=data.batch_size,
                                  color_mode=data.color_mode, shuffle=shuffle, seed=seed,
                                  cache=data.cache, rescale=1.0 / 127.5, validate=False)
    return ds.map(lambda x, y: (x - 1.0, y))


def dataset_arrays(ds, limit):
    """The first ``limit`` ``(images, labels)`` of a batched dataset as two NumPy arrays.

    Example:

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensor_slices((np.zeros((5, 2)), np.arange(5))).batch(2)
    >>> [a.shape for a in dataset_arrays(ds, 3)]
    [(3, 2), (3,)]
    """
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(b) for b in images) >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def build_gan(config, image_shape, num_classes=None):
    """The configured (uncompiled) DCGAN pair wrapped in a :class:`GAN`.

    Example:

    >>> build_gan(ImageGenerationConfig(), (16, 16, 1)).latent_dim
    64
    """
    m = config.model
    generator = models.dcgan_generator(m.latent_dim, image_shape, base_filters=m.base_filters,
                                       num_classes=num_classes)
    discriminator = models.dcgan_discriminator(image_shape, base_filters=m.base_filters,
                                               dropout=m.dropout, num_classes=num_classes)
    return GAN(generator, discriminator, seed=config.seed, name="dcgan")


def train_classifier(train_ds, image_shape, num_classes, epochs, seed):
    """A small ``simple_cnn`` on real images in [-1, 1], the classifier-FID extractor.

    Example:

    >>> # model = train_classifier(ds, (16, 16, 1), 10, epochs=3, seed=0)
    """
    keras.utils.set_random_seed(seed)
    model = models.simple_cnn(image_shape, num_classes, filters=(32, 64), dense_units=64,
                              dropout=0.3, name="fid_classifier")
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_ds, epochs=epochs, verbose=0, shuffle=False)
    return model


def make_extractor(config, train_ds, image_shape, num_classes, run_dir):
    """The feature extractor named by ``config.evaluation`` (saving a trained classifier).

    Example:

    >>> # extractor = make_extractor(config, train_ds, (16, 16, 1), 10, "runs/x")
    """
    evaluation = config.evaluation
    if evaluation.extractor == "inception":
        weights = evaluation.inception_weights
        if weights != "imagenet" and not os.path.isfile(weights):
            raise ConfigError("Expected evaluation.inception_weights 'imagenet' or an existing "
                              f"weights file. Received: {weights!r}")
        return generation.inception_extractor(weights=weights)
    if evaluation.classifier_path:
        if not os.path.isfile(evaluation.classifier_path):
            raise DataError("Classifier file not found. Expected a .keras classifier. "
                            f"Received: evaluation.classifier_path={evaluation.classifier_path!r}")
        model = saving.load_model(evaluation.classifier_path)
    else:
        if num_classes < 2:
            raise ConfigError("evaluation.extractor=classifier needs labelled data (2+ class "
                              "folders). Received: 1 class; use evaluation.extractor=inception "
                              "or evaluation.classifier_path")
        model = train_classifier(train_ds, image_shape, num_classes,
                                 evaluation.classifier_epochs, config.seed)
        model.save(os.path.join(run_dir, "checkpoints", "fid_classifier.keras"))
    return generation.classifier_extractor(model)


def generate(generator, num_samples, num_classes=None, seed=0, batch_size=256):
    """``num_samples`` images in [-1, 1] from seeded latents (labels cycling when conditional).

    Example:

    >>> gen = models.dcgan_generator(8, (16, 16, 1), base_filters=8)
    >>> generate(gen, 3).shape
    (3, 16, 16, 1)
    """
    rng = np.random.default_rng(seed)
    latent_dim = int(generator.inputs[0].shape[-1])
    out = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        latents = rng.standard_normal((n, latent_dim)).astype("float32")
        inputs = latents
        if num_classes is not None:
            labels = (np.arange(start, start + n) % num_classes).astype("int32").reshape(-1, 1)
            inputs = [latents, labels]
        out.append(keras.ops.convert_to_numpy(generator(inputs, training=False)))
    return np.concatenate(out)


def score(real, fake, extractor):
    """FID, KID and Inception Score of ``fake`` against ``real`` images in [-1, 1].

    Example:

    >>> # score(real_images, generate(gan.generator, 360), extractor)
    """
    real_features, _ = generation.extract_features(real, extractor)
    fake_features, fake_probs = generation.extract_features(fake, extractor)
    real_stats = generation.FeatureStatistics(real_features.mean(0), np.cov(real_features,
                                                                             rowvar=False),
                                              len(real_features))
    fake_stats = generation.FeatureStatistics(fake_features.mean(0), np.cov(fake_features,
                                                                            rowvar=False),
                                              len(fake_features))
    metrics = {"fid": generation.fid(real_stats, fake_stats, extractor),
               "fid_extractor": extractor.name}
    # Half-size subsets, so the subsets differ and kid_std says something.
    subset = max(2, min(1000, len(real_features) // 2, len(fake_features) // 2))
    kid_mean, kid_std = generation.kid(real_features, fake_features, num_subsets=50,
                                       subset_size=subset)
    metrics.update(kid=kid_mean, kid_std=kid_std)
    if fake_probs is not None:
        is_mean, is_std = generation.inception_score(fake_probs, splits=min(10, len(fake_probs)))
        metrics.update(inception_score=is_mean, inception_score_std=is_std)
    return metrics


@base.keeps_global_settings
def run(config, callbacks=()):
    """Train, score and export a DCGAN as configured.

    Writes ``plots/samples_epoch_XXX.png`` and ``plots/progress.png``,
    ``checkpoints/generator.keras`` and ``checkpoints/discriminator.keras``,
    ``history.csv``, ``metrics.json`` (``fid``, ``kid``,
    ``inception_score``, ``fid_extractor``, ...), ``report.md`` and
    ``export/<name>/<version>``.

    Args:
        config: :class:`ImageGenerationConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult` whose ``model`` is the trained GAN.

    Example:

    >>> config = ImageGenerationConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["fid"]  # doctest: +SKIP
    """
    _check_config(config)
    budget = base.time_budget(config)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed)
    data = config.data
    skipped = []
    train_index, test_index = load_splits(data, config.seed, skipped)
    # Checked before training: scoring needs real images the GAN did not train on.
    n = min(config.evaluation.num_samples, len(test_index))
    if n < 2:
        raise DataError(
            f"Expected at least 2 held-out images to score the generator. Received: "
            f"{len(test_index)} held out of {len(train_index) + len(test_index)} in "
            f"{data.path!r} (data.test_split={data.test_split}). Add images, raise "
            f"data.test_split or give a test/ folder of 2 or more.")
    num_classes = len(train_index.class_names)
    if data.conditional and num_classes < 2:
        raise ConfigError("data.conditional=true needs 2+ class folders. Received: 1 class in "
                          f"{data.path!r}")
    base.prepare_run_dir(run_dir, config, TASK)
    policy = precision_lib.set_precision(config.precision)
    channels = image_data.check_color_mode(data.color_mode)
    image_shape = (data.image_size, data.image_size, channels)

    global_data = base.with_global_batch(config, dist).data
    train_ds = scaled_dataset(train_index, global_data, shuffle=True, seed=config.seed)
    gan_ds = train_ds if data.conditional else train_ds.map(lambda x, y: x)
    t = config.train
    with base.model_scope(dist):
        gan = build_gan(config, image_shape, num_classes if data.conditional else None)
        gan.compile(d_optimizer=keras.optimizers.Adam(t.d_learning_rate, beta_1=t.beta_1),
                    g_optimizer=keras.optimizers.Adam(t.g_learning_rate, beta_1=t.beta_1),
                    label_smoothing=t.label_smoothing, instance_noise=t.instance_noise)
    plots = os.path.join(run_dir, "plots")
    guard = gan_callbacks.GANGuard(seed=config.seed)
    identity = {"model": config_lib.to_dict(config.model),
                "optimizer": base.optimizer_identity(t),
                "data": {"path": data.path, "batch_size": data.batch_size,
                         "image_size": data.image_size, "color_mode": data.color_mode,
                         "conditional": data.conditional, "train_samples": len(train_index)},
                "replicas": dist.replicas}
    fit_callbacks = [
        gan_callbacks.SampleGrid(plots, num_samples=64 if data.image_size <= 32 else 36,
                                 seed=config.seed),
        gan_callbacks.GANCheckpoint(os.path.join(run_dir, "checkpoints"), latest_only=True),
        guard,
        *callbacks_lib.resumable_callbacks(run_dir, identity, config.force_resume,
                                           nan_guard=False,  # GANGuard watches both losses
                                           every_s=config.checkpoint_every_s),
        *callbacks,
    ]
    # Inception's weights are fetched before training: offline, the run stops in seconds
    # (one line on what to do), not after the GAN has trained.
    extractor = (make_extractor(config, train_ds, image_shape, num_classes, run_dir)
                 if config.evaluation.extractor == "inception" else None)
    steps = dist.steps_per_epoch(len(train_index), data.batch_size)
    try:
        dist.fit(gan, dist.dataset(gan_ds, steps=steps), epochs=t.epochs,
                 callbacks=fit_callbacks, verbose=t.verbose, shuffle=False)
    finally:
        callbacks_lib.after_fit(fit_callbacks)

    real, _ = dataset_arrays(scaled_dataset(test_index, data, shuffle=False, seed=0), n)
    if extractor is None:
        extractor = make_extractor(config, train_ds, image_shape, num_classes, run_dir)
    fake = generate(gan.generator, n, num_classes if data.conditional else None, config.seed)
    # Every epoch of the run, also those a resumed run restored instead of training.
    history = cls_eval.read_history(os.path.join(run_dir, "history.csv"))
    metrics = score(real, fake, extractor)
    metrics.update(num_samples=n, precision_policy=policy, train_samples=len(train_index),
                   epochs_trained=len(next(iter(history.values()), [])),
                   num_parameters=int(gan.generator.count_params()),
                   data_skipped_files=len(skipped), **dist.describe(),
                   **base.budget_metrics(budget))
    if guard.stop_reason:
        metrics["stop_reason"] = guard.stop_reason

    shown = ["plots/progress.png"]
    if history:
        cls_eval.plot_training_curves(history, os.path.join(plots, "training_curves.png"))
        shown.append("plots/training_curves.png")
    last = sorted(f for f in os.listdir(plots) if f.startswith("samples_epoch_"))[-1:]
    shown = [f"plots/{f}" for f in last] + shown

    export_path = None
    if config.export.enabled:
        export_path = export_lib.export_generator(
            gan.generator, os.path.join(run_dir, "export"), config.export.name,
            check=config.export.check)
        metrics["export_path"] = export_path
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    base.write_report(run_dir, "Image generation", metrics, plots=shown,
                      sections=[("Data problems", skipped_files_section(skipped))])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=gan, export_path=export_path)
