"""Callbacks for `fmkeras.models.gan.GAN` training: samples, checkpoints, guards.

- `SampleGrid` writes a grid of images generated from fixed latents after
  every epoch, and a `progress.png` showing how those samples evolved.
- `GANCheckpoint` saves the generator and the discriminator as `.keras` files.
- `GANGuard` stops a run that diverged (non-finite losses) or whose
  discriminator saturated, and warns when the samples collapse to one image.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import keras
import numpy as np
from PIL import Image

from fmkeras.config import is_count
from fmkeras.errors import FmkerasError
from fmkeras.training.callbacks import NonFiniteLossError

logger = logging.getLogger(__name__)


class DiscriminatorSaturatedError(FmkerasError):
    """The discriminator won for too long: the generator gets no useful gradient."""


def images_to_grid(images, columns=None, padding=1):
    """Tiles a batch of images in [-1, 1] into one uint8 image.

    Args:
        images: np.ndarray. `(n, height, width, channels)` with values in
            [-1, 1] and 1 or 3 channels.
        columns: int or None. Images per row; None makes the grid square-ish.
        padding: int. Pixels of black border between images.

    Returns:
        np.ndarray of uint8, `(rows * (h + p) - p, columns * (w + p) - p, c)`.

    Example:

    >>> images_to_grid(np.zeros((4, 8, 8, 1))).shape
    (17, 17, 1)
    """
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise FmkerasError(
            f"Expected images shaped (n, height, width, 1 or 3). Received: shape={images.shape}"
        )
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    # -1 is black once mapped to [0, 255] (zeros would give a grey border).
    grid = np.full((rows * (h + padding) - padding, columns * (w + padding) - padding, c), -1.0)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[
            r * (h + padding) : r * (h + padding) + h, col * (w + padding) : col * (w + padding) + w
        ] = image
    return np.clip((grid + 1.0) * 127.5, 0, 255).round().astype("uint8")


def save_png(image, path):
    """Writes a `(height, width, 1 or 3)` uint8 array as a PNG file.

    Example:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_png(np.zeros((4, 6, 1), np.uint8), os.path.join(folder, "sample.png"))
    ...     with Image.open(os.path.join(folder, "sample.png")) as image:
    ...         print(image.size, image.mode)
    (6, 4) L
    """
    image = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(image).save(path, format="PNG")


def _num_classes(generator):
    try:
        return generator.get_layer("label_embedding").input_dim
    except ValueError:
        raise FmkerasError(
            "Expected `labels` for a conditional generator without a 'label_embedding' layer. "
            "Received: labels=None"
        ) from None


class _FixedLatents:
    """Fixed generator inputs (latents, and labels for a conditional GAN)."""

    def __init__(self, num_samples, seed, labels, min_samples=1):
        if not is_count(num_samples, min_samples):
            raise FmkerasError(f"Expected num_samples to be an integer >= {min_samples}. "
                               f"Received: num_samples={num_samples!r}")
        if labels is not None and len(labels) != num_samples:
            raise FmkerasError(f"Expected one label per sample ({num_samples}). "
                               f"Received: {len(labels)} labels")
        self.num_samples = num_samples
        self.seed = seed
        self.labels = labels
        self.inputs = None

    def generate(self, model):
        if self.inputs is None:
            rng = np.random.default_rng(self.seed)
            latents = rng.standard_normal((self.num_samples, model.latent_dim)).astype("float32")
            self.inputs = latents
            if model.conditional:
                labels = self.labels
                classes = _num_classes(model.generator)
                if labels is None:
                    labels = np.arange(self.num_samples) % classes
                labels = np.asarray(labels, "int32").reshape(-1, 1)
                if ((labels < 0) | (labels >= classes)).any():
                    raise FmkerasError(f"Expected sample labels in [0, {classes}). "
                                       f"Received: {labels.ravel().tolist()}")
                self.inputs = [latents, labels]
        return keras.ops.convert_to_numpy(model.generator(self.inputs, training=False))


class SampleGrid(keras.callbacks.Callback):
    """Saves images generated from fixed latents after each epoch.

    Writes `<directory>/samples_epoch_001.png`, ... and, when training ends,
    `<directory>/progress.png`: one row per epoch (at most `max_progress_rows`,
    evenly spaced) of the first `progress_columns` samples.

    Args:
        directory: str. Folder for the PNG files; created if missing.
        num_samples: int. Images per grid.
        seed: int. Seed of the fixed latents.
        labels: sequence of int or None. Class of each sample for a
            conditional GAN; None cycles through the classes.
        max_progress_rows: int. Most epochs shown in `progress.png`.
        progress_columns: int. Samples per epoch in `progress.png`.

    Example:

    >>> import tempfile
    >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
    >>> from fmkeras.models.gan import GAN
    >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
    ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
    >>> gan.compile(d_optimizer="adam", g_optimizer="adam")
    >>> images = np.zeros((8, 16, 16, 1), "float32")
    >>> plots = tempfile.mkdtemp()
    >>> _ = gan.fit(images, epochs=2, batch_size=4, verbose=0,
    ...             callbacks=[SampleGrid(plots, num_samples=4)])
    >>> sorted(os.listdir(plots))
    ['progress.png', 'samples_epoch_001.png', 'samples_epoch_002.png']
    """

    def __init__(
        self,
        directory,
        num_samples=16,
        seed=0,
        labels=None,
        max_progress_rows=10,
        progress_columns=8,
    ):
        super().__init__()
        self.directory = directory
        self.latents = _FixedLatents(num_samples, seed, labels)
        self.max_progress_rows = max_progress_rows
        self.progress_columns = progress_columns
        self.history = []  # (epoch, samples) pairs kept for progress.png.

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        samples = self.latents.generate(self.model)
        save_png(
            images_to_grid(samples),
            os.path.join(self.directory, f"samples_epoch_{epoch + 1:03d}.png"),
        )
        self.history.append((epoch + 1, samples[: self.progress_columns]))

    def on_train_end(self, logs=None):
        if not self.history:
            return
        keep = np.unique(
            np.linspace(0, len(self.history) - 1, self.max_progress_rows).round().astype(int)
        )
        rows = np.concatenate([self.history[i][1] for i in keep])
        columns = len(self.history[0][1])
        save_png(
            images_to_grid(rows, columns=columns), os.path.join(self.directory, "progress.png")
        )


class GANCheckpoint(keras.callbacks.Callback):
    """Saves the generator and the discriminator as `.keras` files each epoch.

    Args:
        directory: str. Folder for the files; created if missing.
        latest_only: bool. If True, overwrite `generator.keras` and
            `discriminator.keras`; otherwise write
            `generator_epoch_001.keras`, `discriminator_epoch_001.keras`, ...

    Example:

    >>> import tempfile
    >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
    >>> from fmkeras.models.gan import GAN
    >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
    ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
    >>> gan.compile(d_optimizer="adam", g_optimizer="adam")
    >>> checkpoints = tempfile.mkdtemp()
    >>> _ = gan.fit(np.zeros((8, 16, 16, 1), "float32"), epochs=2, batch_size=4, verbose=0,
    ...             callbacks=[GANCheckpoint(checkpoints, latest_only=True)])
    >>> sorted(os.listdir(checkpoints))
    ['discriminator.keras', 'generator.keras']
    """

    def __init__(self, directory, latest_only=False):
        super().__init__()
        self.directory = directory
        self.latest_only = latest_only

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        suffix = "" if self.latest_only else f"_epoch_{epoch + 1:03d}"
        for network in ("generator", "discriminator"):
            path = os.path.join(self.directory, f"{network}{suffix}.keras")
            getattr(self.model, network).save(path)


def mean_pairwise_distance(images):
    """Mean root-mean-square difference between all pairs of images.

    Args:
        images: np.ndarray. `(n, ...)` with n >= 2.

    Returns:
        float. 0 when all images are identical.

    Example:

    >>> mean_pairwise_distance(np.ones((3, 4, 4, 1)))
    0.0
    """
    flat = np.asarray(images, "float64").reshape(len(images), -1)
    if len(flat) < 2:
        raise FmkerasError(f"Expected at least 2 images. Received: {len(flat)} image(s)")
    sq = (flat**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0) / flat.shape[1]
    upper = np.triu_indices(len(flat), k=1)
    return float(np.sqrt(d2[upper]).mean())


class GANGuard(keras.callbacks.Callback):
    """Stops GAN training that diverged or saturated; warns on mode collapse.

    Stops (sets `model.stop_training`, records `stop_reason`, logs it, and
    if `raise_on_stop` raises `fmkeras.training.callbacks.NonFiniteLossError`
    or `DiscriminatorSaturatedError`) when `d_loss` or `g_loss`
    becomes NaN/inf, or when the discriminator has won for `patience`
    consecutive batches: `d_loss` below `min_d_loss`, or `d_fake` below
    `margin` while `d_real` is above `1 - margin`. The batch logs are Keras'
    running means over the epoch. After each epoch, samples from fixed
    latents whose mean pairwise distance is below `collapse_threshold`
    trigger a `warnings.warn` (mode collapse), once per epoch.

    Args:
        patience: int. Consecutive saturated batches before stopping.
        min_d_loss: float. Discriminator loss regarded as saturated.
        margin: float. `d_fake < margin and d_real > 1 - margin` is saturated.
        collapse_threshold: float. Mean pairwise RMS distance (images in
            [-1, 1]) under which samples count as collapsed; 0 disables.
        num_samples: int. Fixed latents used for the collapse check.
        seed: int. Seed of those latents.
        raise_on_stop: bool. Raise an error (an `FmkerasError`) instead of
            only stopping.

    Example:

    >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
    >>> from fmkeras.models.gan import GAN
    >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
    ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
    >>> gan.compile(d_optimizer="adam", g_optimizer="adam")
    >>> guard = GANGuard(patience=20, num_samples=4)
    >>> _ = gan.fit(np.zeros((8, 16, 16, 1), "float32"), epochs=2, batch_size=4, verbose=0,
    ...             callbacks=[guard])
    >>> guard.stop_reason is None  # None when training was not stopped
    True
    >>> guard.last_sample_distance > guard.collapse_threshold  # samples still differ
    True
    """

    def __init__(
        self,
        patience=50,
        min_d_loss=1e-3,
        margin=0.01,
        collapse_threshold=0.01,
        num_samples=8,
        seed=0,
        raise_on_stop=False,
    ):
        super().__init__()
        if patience < 1:
            raise FmkerasError(f"Expected `patience` >= 1. Received: patience={patience!r}")
        self.patience = patience
        self.min_d_loss = min_d_loss
        self.margin = margin
        self.collapse_threshold = collapse_threshold
        # The collapse check compares samples with each other: two at least.
        self.latents = _FixedLatents(num_samples, seed, None, min_samples=2)
        self.raise_on_stop = raise_on_stop
        self.stop_reason = None
        self.last_sample_distance = None
        self._saturated_batches = 0

    def on_train_begin(self, logs=None):
        self.stop_reason = None
        self._saturated_batches = 0

    def _stop(self, reason, error_class):
        self.stop_reason = reason
        self.model.stop_training = True
        logger.error("GANGuard stopped training: %s", reason)
        if self.raise_on_stop:
            raise error_class(reason)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for key in ("d_loss", "g_loss"):
            if key in logs and not math.isfinite(float(logs[key])):
                self._stop(
                    f"{key} became {float(logs[key])} at batch {batch}; training diverged. "
                    "Expected finite losses; lower the learning rates or check the data.",
                    NonFiniteLossError,
                )
                return
        d_loss, d_real, d_fake = (logs.get(k) for k in ("d_loss", "d_real", "d_fake"))
        saturated = (d_loss is not None and float(d_loss) < self.min_d_loss) or (
            d_real is not None
            and d_fake is not None
            and float(d_fake) < self.margin
            and float(d_real) > 1.0 - self.margin
        )
        self._saturated_batches = self._saturated_batches + 1 if saturated else 0
        if self._saturated_batches >= self.patience:
            self._stop(
                f"the discriminator saturated for {self._saturated_batches} consecutive batches "
                f"(d_loss={d_loss}, d_real={d_real}, d_fake={d_fake}); the generator gets no "
                "useful gradient.",
                DiscriminatorSaturatedError,
            )

    def on_epoch_end(self, epoch, logs=None):
        if not self.collapse_threshold or self.model.stop_training:
            return
        distance = mean_pairwise_distance(self.latents.generate(self.model))
        self.last_sample_distance = distance
        if distance < self.collapse_threshold:
            warnings.warn(
                f"GAN samples from different latents are nearly identical after epoch "
                f"{epoch + 1} (mean pairwise distance {distance:.4g} < "
                f"{self.collapse_threshold}): the generator may have collapsed.",
                RuntimeWarning,
                stacklevel=2,
            )
