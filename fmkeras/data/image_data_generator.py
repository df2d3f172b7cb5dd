"""A drop-in, tf.data-backed replacement for the legacy Keras ``ImageDataGenerator``.

``ImageDataGenerator(...).flow_from_directory(...)`` (and ``flow``,
``flow_from_dataframe``) return an :class:`ImageIterator`. It is a
``keras.utils.PyDataset``, so ``model.fit(iterator)`` works as in old
tutorials with ``len(iterator)`` steps per epoch, and it is also:

- random access: ``iterator[i]`` is batch ``i`` of the current epoch, built by
  one compiled TensorFlow function (gather from the decoded-image cache, one
  fused affine resampling, normalisation);
- iterable forever, like the legacy iterator (``next(iterator)``);
- convertible with ``iterator.as_dataset()`` to a prefetched ``tf.data.Dataset``
  (the fastest way to feed ``model.fit``).

Files are decoded once, in parallel, when the iterator is built: that pass
finds unreadable images (skipped with one warning) and fills an in-memory
cache of resized ``uint8`` images when it fits (``cache="auto"``). Random
draws are stateless, seeded by ``(seed, epoch, batch index)``, so an epoch's
batches are reproducible whatever ran before.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count
from fmkeras.data.augment import (
    Augmentation,
    augment_images,
    random_affine_params,
    transform_images,
)
from fmkeras.data.image_iterators import (  # noqa: F401 - re-exported
    DataFrameIterator,
    DirectoryIterator,
    ImageIterator,
    NumpyArrayIterator,
)
from fmkeras.errors import FmkerasError

__all__ = [
    "DataFrameIterator",
    "DirectoryIterator",
    "ImageDataGenerator",
    "ImageIterator",
    "NumpyArrayIterator",
]

_INTERPOLATION_ORDERS = {0: "nearest", 1: "bilinear"}
# The legacy transform keys, at the values that change nothing.
_IDENTITY_TRANSFORM = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
                       "flip_horizontal": False, "flip_vertical": False,
                       "channel_shift_intensity": 0.0, "brightness": 1.0}
# random_affine_params' names for them.
_PARAM_KEYS = {"theta": "theta", "tx": "tx", "ty": "ty", "shear": "shear", "zx": "zx",
               "zy": "zy", "flip_h": "flip_horizontal", "flip_v": "flip_vertical",
               "channel_shift": "channel_shift_intensity", "brightness": "brightness"}


class ImageDataGenerator:
    """Batches of augmented images from folders, data frames or arrays.

    Takes the arguments of the legacy ``keras`` ``ImageDataGenerator`` with the
    same meaning; what cannot be honoured raises :class:`FmkerasError`.

    Args:
        featurewise_center: bool. Subtract the per-channel mean computed by
            :meth:`fit`.
        samplewise_center: bool. Subtract each image's mean.
        featurewise_std_normalization: bool. Divide by the per-channel std
            computed by :meth:`fit` (implies ``featurewise_center``).
        samplewise_std_normalization: bool. Divide each image by its std
            (implies ``samplewise_center``).
        zca_whitening: bool. Not supported: ``True`` raises.
        zca_epsilon: float. Accepted for compatibility.
        rotation_range: float. Random rotation in ``[-r, r]`` degrees.
        width_shift_range: float, int or list. Horizontal shift (see
            :class:`fmkeras.data.augment.Augmentation`).
        height_shift_range: float, int or list. Vertical shift.
        brightness_range: optional pair of floats. Random brightness factor.
        shear_range: float. Random shear angle in ``[-s, s]`` degrees.
        zoom_range: float or pair. Random zoom, ``z`` meaning ``[1-z, 1+z]``.
        channel_shift_range: float. Random shift added to every channel.
        fill_mode: str. ``"constant"``, ``"nearest"``, ``"reflect"`` or ``"wrap"``.
        cval: float. Fill value for ``fill_mode="constant"``.
        horizontal_flip: bool. Random left-right flips.
        vertical_flip: bool. Random upside-down flips.
        rescale: optional float. Multiply images by this after augmentation.
        preprocessing_function: optional callable taking and returning one
            image (a rank-3 numpy array); runs in Python, so it is slow.
        data_format: ``"channels_last"`` or ``"channels_first"``; defaults to
            ``keras.config.image_data_format()``.
        validation_split: float in ``[0, 1)``. Fraction held out for
            ``subset="validation"``.
        interpolation_order: int. 0 (nearest) or 1 (bilinear) resampling for
            the geometric transforms.
        dtype: output dtype; defaults to ``keras.config.floatx()``.

    Example:

    >>> gen = ImageDataGenerator(rescale=1.0 / 255, zoom_range=0.2, horizontal_flip=True)
    >>> train = gen.flow_from_directory("data/digits/train", target_size=(8, 8),
    ...                                 color_mode="grayscale", batch_size=16, seed=0)
    Found 1437 images belonging to 10 classes.
    >>> x, y = train[0]
    >>> x.shape, y.shape, bool(0.0 <= x.min() and x.max() <= 1.0)
    ((16, 8, 8, 1), (16, 10), True)
    """

    @accepts_numpy_scalars
    def __init__(self, featurewise_center=False, samplewise_center=False,
                 featurewise_std_normalization=False, samplewise_std_normalization=False,
                 zca_whitening=False, zca_epsilon=1e-6, rotation_range=0,
                 width_shift_range=0.0, height_shift_range=0.0, brightness_range=None,
                 shear_range=0.0, zoom_range=0.0, channel_shift_range=0.0,
                 fill_mode="nearest", cval=0.0, horizontal_flip=False, vertical_flip=False,
                 rescale=None, preprocessing_function=None, data_format=None,
                 validation_split=0.0, interpolation_order=1, dtype=None):
        if zca_whitening:
            raise FmkerasError(
                "zca_whitening is not supported by fmkeras.data.ImageDataGenerator. "
                "Expected zca_whitening=False. Received: zca_whitening=True")
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise FmkerasError(
                "Expected data_format 'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}")
        if not 0 <= validation_split < 1:
            raise FmkerasError(
                "Expected validation_split in [0, 1). "
                f"Received: validation_split={validation_split!r}")
        if interpolation_order not in _INTERPOLATION_ORDERS:
            raise FmkerasError(
                "Expected interpolation_order 0 (nearest) or 1 (bilinear). "
                f"Received: interpolation_order={interpolation_order!r}")
        if rescale is not None and not isinstance(rescale, (int, float)):
            raise FmkerasError(f"Expected rescale to be a number or None. Received: {rescale!r}")
        if preprocessing_function is not None and not callable(preprocessing_function):
            raise FmkerasError(
                "Expected preprocessing_function to be callable or None. "
                f"Received: {preprocessing_function!r}")
        if featurewise_std_normalization and not featurewise_center:
            warnings.warn("featurewise_std_normalization=True also turns on "
                          "featurewise_center, as in keras.", stacklevel=2)
            featurewise_center = True
        if samplewise_std_normalization and not samplewise_center:
            warnings.warn("samplewise_std_normalization=True also turns on "
                          "samplewise_center, as in keras.", stacklevel=2)
            samplewise_center = True
        self.augmentation = Augmentation(
            rotation_range=rotation_range, width_shift_range=width_shift_range,
            height_shift_range=height_shift_range, shear_range=shear_range,
            zoom_range=zoom_range, horizontal_flip=horizontal_flip,
            vertical_flip=vertical_flip, channel_shift_range=channel_shift_range,
            brightness_range=brightness_range, fill_mode=fill_mode, cval=cval,
            interpolation=_INTERPOLATION_ORDERS[interpolation_order])
        self.featurewise_center = featurewise_center
        self.samplewise_center = samplewise_center
        self.featurewise_std_normalization = featurewise_std_normalization
        self.samplewise_std_normalization = samplewise_std_normalization
        self.zca_whitening = False
        self.zca_epsilon = zca_epsilon
        self.rescale = rescale
        self.preprocessing_function = preprocessing_function
        self.data_format = data_format
        self.validation_split = validation_split
        self._validation_split = validation_split  # legacy attribute name
        self.interpolation_order = interpolation_order
        self.dtype = dtype or keras.config.floatx()
        self.mean = None
        self.std = None
        self.channel_axis = 3 if data_format == "channels_last" else 1

    def __getattr__(self, name):
        # Legacy code reads e.g. ``gen.rotation_range``; they live in the Augmentation.
        augmentation = self.__dict__.get("augmentation")
        if augmentation is not None and name in Augmentation.__dataclass_fields__:
            return getattr(augmentation, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----------------------------------------------------------------- statistics
    def fit(self, x, augment=False, rounds=1, seed=None):
        """Compute the per-channel mean and std for ``featurewise_*`` normalisation.

        Args:
            x: array of rank 4 in this generator's ``data_format``.
            augment: bool. Compute the statistics on augmented copies.
            rounds: int. Number of augmented copies when ``augment=True``.
            seed: optional int. Seed of the augmentation.

        Example:

        >>> gen = ImageDataGenerator(featurewise_center=True)
        >>> gen.fit(np.ones((4, 8, 8, 3)))
        >>> gen.mean.shape
        (1, 1, 3)
        """
        x = np.array(x, dtype=self.dtype, copy=True)
        if x.ndim != 4:
            raise FmkerasError(
                f"Expected fit(x) with a rank-4 image batch. Received: x.shape={x.shape}")
        if not np.isfinite(x).all():
            raise FmkerasError(f"Expected fit(x) with finite pixels. Received: "
                               f"{np.size(x) - np.isfinite(x).sum()} NaN or infinite values")
        if augment and not is_count(rounds, 1):
            raise FmkerasError(
                f"Expected rounds to be a positive integer. Received: rounds={rounds!r}")
        if self.rescale:
            x *= self.rescale
        if augment:
            channels_last = x if self.channel_axis == 3 else x.transpose(0, 2, 3, 1)
            copies = [augment_images(channels_last, self.augmentation, (seed or 0, r)).numpy()
                      for r in range(rounds)]
            x = np.concatenate(copies).astype(self.dtype)
            if self.channel_axis == 1:
                x = x.transpose(0, 3, 1, 2)
        axes = tuple(a for a in (0, 1, 2, 3) if a != self.channel_axis)
        shape = [1, 1, 1]
        shape[self.channel_axis - 1] = x.shape[self.channel_axis]
        if self.featurewise_center:
            self.mean = np.reshape(np.mean(x, axis=axes), shape)
            x -= self.mean
        if self.featurewise_std_normalization:
            self.std = np.reshape(np.std(x, axis=axes), shape)

    def _check_fitted(self, channels=None):
        """Raise unless the featurewise statistics exist (for images of ``channels``)."""
        stats = (("featurewise_center", self.mean), ("featurewise_std_normalization", self.std))
        missing = [name for name, stat in stats if getattr(self, name) and stat is None]
        if missing:
            raise FmkerasError(
                f"{' and '.join(missing)} need statistics: call generator.fit(x_sample) "
                "before flow(), flow_from_directory() or flow_from_dataframe(). "
                "Received: a generator that was never fitted.")
        for name, stat in stats:
            if channels and getattr(self, name) and np.size(stat) != channels:
                raise FmkerasError(
                    f"Expected images with the {np.size(stat)} channel(s) fit() saw for "
                    f"{name}. Received: images with {channels} channel(s)")

    def standardize_tensor(self, x, mean=None, std=None):
        """Normalise a batch tensor in this generator's ``data_format`` (graph friendly).

        Applies, in the legacy order, ``preprocessing_function``, ``rescale``,
        the samplewise then the featurewise normalisation.

        Args:
            x: float tensor of rank 4.
            mean: optional per-channel mean; defaults to the fitted one.
            std: optional per-channel std; defaults to the fitted one.

        Example:

        >>> ImageDataGenerator(rescale=0.5).standardize_tensor(tf.ones((1, 2, 2, 3)))[0, 0, 0]
        <tf.Tensor: shape=(3,), dtype=float32, numpy=array([0.5, 0.5, 0.5], dtype=float32)>
        """
        if self.preprocessing_function is not None:
            x = tf.ensure_shape(
                tf.numpy_function(self._apply_preprocessing, [x], tf.float32, stateful=False),
                x.shape)
        if self.rescale:
            x = x * self.rescale
        if self.samplewise_center:
            x = x - tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        if self.samplewise_std_normalization:
            x = x / (tf.math.reduce_std(x, axis=[1, 2, 3], keepdims=True) + 1e-6)
        shape = [-1, 1, 1] if self.channel_axis == 1 else [-1]
        if self.featurewise_center:
            mean = self.mean if mean is None else mean
            x = x - tf.reshape(tf.cast(mean, x.dtype), shape)
        if self.featurewise_std_normalization:
            std = self.std if std is None else std
            x = x / (tf.reshape(tf.cast(std, x.dtype), shape) + 1e-6)
        return x

    def standardize(self, x):
        """Normalise a numpy image or batch, as the legacy ``standardize`` does.

        Args:
            x: array of rank 3 (one image) or 4 (a batch).

        Example:

        >>> float(ImageDataGenerator(rescale=0.5).standardize(np.ones((2, 2, 3)))[0, 0, 0])
        0.5
        """
        x = np.asarray(x, dtype=np.float32)
        single = x.ndim == 3
        out = self.standardize_tensor(tf.constant(x[None] if single else x)).numpy()
        return out[0] if single else out

    # ------------------------------------------------- legacy per-image transforms
    def _single_image(self, x, method):
        """``x`` as a float32 ``[1, h, w, c]`` batch, or a clear error."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise FmkerasError(f"Expected {method}(x) with one image of rank 3 "
                               f"({self.data_format}). Received: x.shape={x.shape}")
        return (x if self.channel_axis == 3 else x.transpose(1, 2, 0))[None]

    def get_random_transform(self, img_shape, seed=None):
        """Draw the random transform of one image, as the legacy method does.

        Args:
            img_shape: tuple. The image's shape (rank 3, in ``data_format``).
            seed: optional int. Same seed, same transform.

        Returns:
            dict with the legacy keys ``theta``, ``tx``, ``ty``, ``shear`` (degrees
            and pixels), ``zx``, ``zy``, ``flip_horizontal``, ``flip_vertical``,
            ``channel_shift_intensity`` and ``brightness`` (``None`` when off);
            ``tx`` moves along the width and ``ty`` along the height, as
            :meth:`apply_transform` reads them (the legacy method draws ``tx``
            from ``height_shift_range``, moving images sideways; here
            ``width_shift_range`` gives ``tx``).

        Example:

        >>> gen = ImageDataGenerator(rotation_range=30)
        >>> params = gen.get_random_transform((8, 8, 3), seed=1)
        >>> -30 <= params["theta"] <= 30 and params == gen.get_random_transform((8, 8, 3), seed=1)
        True
        """
        if len(img_shape) != 3:
            raise FmkerasError(f"Expected img_shape of rank 3. Received: {tuple(img_shape)}")
        rows, cols = (img_shape[0], img_shape[1]) if self.channel_axis == 3 else img_shape[1:]
        seed = int(np.random.randint(2**31 - 1) if seed is None else seed)
        drawn = random_affine_params(self.augmentation, 1, rows, cols, (seed, 0))
        params = {legacy: float(drawn[ours][0]) for ours, legacy in _PARAM_KEYS.items()}
        params["flip_horizontal"] = bool(params["flip_horizontal"])
        params["flip_vertical"] = bool(params["flip_vertical"])
        if not self.augmentation.channel_shift_range:
            params["channel_shift_intensity"] = None
        if self.augmentation.brightness_range is None:
            params["brightness"] = None
        return params

    def apply_transform(self, x, transform_parameters):
        """Apply a transform (from :meth:`get_random_transform`, or written by hand) to one image.

        Missing keys mean "no change", as in the legacy method; the fill mode,
        fill value and interpolation are this generator's.

        Args:
            x: array of rank 3 (one image, in ``data_format``).
            transform_parameters: dict with some of the keys
                :meth:`get_random_transform` returns.

        Returns:
            float32 array of the shape of ``x``.

        Example:

        >>> image = np.arange(9, dtype="float32").reshape(3, 3, 1)
        >>> ImageDataGenerator().apply_transform(image, {"flip_horizontal": True})[0, :, 0]
        array([2., 1., 0.], dtype=float32)
        """
        batch = self._single_image(x, "apply_transform")
        given = dict(transform_parameters)
        unknown = sorted(set(given) - set(_IDENTITY_TRANSFORM))
        if unknown:
            raise FmkerasError(f"Unknown transform parameters {unknown}. Expected some of "
                               f"{sorted(_IDENTITY_TRANSFORM)}")
        values = {**_IDENTITY_TRANSFORM, **{k: v for k, v in given.items() if v is not None}}
        params = {name: tf.constant([float(values[key])], tf.float32)
                  for name, key in _PARAM_KEYS.items()}
        geometric = any(float(values[k]) != float(_IDENTITY_TRANSFORM[k])
                        for k in ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal",
                                  "flip_vertical"))
        out = transform_images(
            batch, params, self.augmentation, geometric=geometric,
            channel_shift=given.get("channel_shift_intensity") is not None,
            brightness=given.get("brightness") is not None).numpy()[0]
        return out if self.channel_axis == 3 else out.transpose(2, 0, 1)

    def random_transform(self, x, seed=None):
        """One image with a random transform drawn from this generator's ranges (legacy API).

        Example:

        >>> gen = ImageDataGenerator(horizontal_flip=True)
        >>> gen.random_transform(np.zeros((4, 4, 3)), seed=0).shape
        (4, 4, 3)
        """
        self._single_image(x, "random_transform")
        return self.apply_transform(x, self.get_random_transform(np.shape(x), seed))

    def _apply_preprocessing(self, batch):
        out = []
        for image in batch:
            result = np.asarray(self.preprocessing_function(image), np.float32)
            if result.shape != np.shape(image):
                raise FmkerasError(
                    f"Expected preprocessing_function to return an image of the shape it "
                    f"was given, {np.shape(image)}. Received: an array of shape "
                    f"{result.shape}")
            out.append(result)
        return np.stack(out)

    # ---------------------------------------------------------------------- flows
    @accepts_numpy_scalars
    def flow(self, x, y=None, batch_size=32, shuffle=True, sample_weight=None, seed=None,
             save_to_dir=None, save_prefix="", save_format="png", ignore_class_split=False,
             subset=None):
        """Batches of augmented images from an array.

        Args:
            x: array ``(n, height, width, channels)`` (or channels first).
            y: optional labels, any array with ``n`` rows, passed through.
            batch_size: int. Images per batch.
            shuffle: bool. Reshuffle every epoch.
            sample_weight: optional array of ``n`` weights.
            seed: optional int. Seed of the shuffling and augmentation.
            save_to_dir: must be None (not supported).
            save_prefix: ignored.
            save_format: ignored.
            ignore_class_split: bool. Allow a split whose parts hold different
                classes.
            subset: ``"training"``, ``"validation"`` or None.

        Returns:
            A :class:`NumpyArrayIterator`.

        Example:

        >>> it = ImageDataGenerator(horizontal_flip=True).flow(np.zeros((10, 8, 8, 3)),
        ...                                                  np.arange(10), batch_size=4)
        >>> len(it), it[0][0].shape
        (3, (4, 8, 8, 3))
        """
        _check_unsupported(save_to_dir=save_to_dir)
        self._check_fitted()
        return NumpyArrayIterator(
            x, y, self, batch_size=batch_size, shuffle=shuffle, sample_weight=sample_weight,
            seed=seed, subset=subset, ignore_class_split=ignore_class_split)

    @accepts_numpy_scalars
    def flow_from_directory(self, directory, target_size=(256, 256), color_mode="rgb",
                            classes=None, class_mode="categorical", batch_size=32, shuffle=True,
                            seed=None, save_to_dir=None, save_prefix="", save_format="png",
                            follow_links=False, subset=None, interpolation="nearest",
                            keep_aspect_ratio=False, cache="auto", validate_images=True,
                            max_bad_fraction=0.05):
        """Batches of augmented images from a ``directory/<class>/<image>`` folder.

        Args:
            directory: str or path. One sub-folder per class.
            target_size: ``(height, width)`` every image is resized to.
            color_mode: ``"grayscale"``, ``"rgb"`` or ``"rgba"``.
            classes: optional list of class folder names, in index order.
            class_mode: ``"categorical"``, ``"binary"``, ``"sparse"``,
                ``"input"`` or None (images only).
            batch_size: int. Images per batch.
            shuffle: bool. Reshuffle every epoch; if False, batches follow
                ``filenames``.
            seed: optional int. Seed of the shuffling and augmentation.
            save_to_dir: must be None (not supported).
            save_prefix: ignored.
            save_format: ignored.
            follow_links: bool. Follow symbolic links to folders.
            subset: ``"training"``, ``"validation"`` or None; needs
                ``validation_split``.
            interpolation: resize method: ``"nearest"``, ``"bilinear"``,
                ``"bicubic"``, ``"lanczos"``, ``"box"`` or ``"area"``.
            keep_aspect_ratio: must be False (not supported).
            cache: ``"auto"``, True or False. Keep the decoded, resized images
                in memory (``"auto"``: when they take at most 2 GiB).
            validate_images: bool. Decode every image once up front and skip
                unreadable ones (always done when caching; the cheap header
                check always runs).
            max_bad_fraction: float. Above this fraction of unreadable files,
                raise :class:`fmkeras.errors.DataError` instead of warning.

        Returns:
            A :class:`DirectoryIterator`.

        Example:

        >>> it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        ...     "data/digits/train", target_size=(28, 28), color_mode="grayscale")
        Found 1437 images belonging to 10 classes.
        >>> it.class_indices["0"], it.image_shape
        (0, (28, 28, 1))
        """
        _check_unsupported(save_to_dir=save_to_dir, keep_aspect_ratio=keep_aspect_ratio)
        self._check_fitted()
        return DirectoryIterator(
            directory, self, target_size=target_size, color_mode=color_mode, classes=classes,
            class_mode=class_mode, batch_size=batch_size, shuffle=shuffle, seed=seed,
            follow_links=follow_links, subset=subset, interpolation=interpolation,
            cache=cache, validate_images=validate_images, max_bad_fraction=max_bad_fraction)

    @accepts_numpy_scalars
    def flow_from_dataframe(self, dataframe, directory=None, x_col="filename", y_col="class",
                            weight_col=None, target_size=(256, 256), color_mode="rgb",
                            classes=None, class_mode="categorical", batch_size=32, shuffle=True,
                            seed=None, save_to_dir=None, save_prefix="", save_format="png",
                            subset=None, interpolation="nearest", validate_filenames=True,
                            cache="auto", max_bad_fraction=0.05):
        """Batches of augmented images listed in a table of file names and labels.

        Args:
            dataframe: a pandas ``DataFrame``, a dict of lists, or any object
                whose ``obj[column]`` is a sequence.
            directory: optional folder the file names are relative to.
            x_col: str. Column of file names.
            y_col: str or list of str. Label column(s).
            weight_col: optional str. Column of sample weights.
            target_size: ``(height, width)`` every image is resized to.
            color_mode: ``"grayscale"``, ``"rgb"`` or ``"rgba"``.
            classes: optional list of class names; rows with other labels are
                dropped.
            class_mode: ``"categorical"`` (string or list labels),
                ``"binary"``, ``"sparse"``, ``"raw"``, ``"input"`` or None.
            batch_size: int. Images per batch.
            shuffle: bool. Reshuffle every epoch.
            seed: optional int. Seed of the shuffling and augmentation.
            save_to_dir: must be None (not supported).
            save_prefix: ignored.
            save_format: ignored.
            subset: ``"training"``, ``"validation"`` or None.
            interpolation: resize method, as in :meth:`flow_from_directory`.
            validate_filenames: bool. Decode every image once up front and skip
                missing or unreadable ones.
            cache: ``"auto"``, True or False, as in :meth:`flow_from_directory`.
            max_bad_fraction: float, as in :meth:`flow_from_directory`.

        Returns:
            A :class:`DataFrameIterator`.

        Example:

        >>> table = {"filename": ["0/0000.png", "1/0001.png", "7/0007.png"],
        ...          "class": ["zero", "one", "seven"]}
        >>> it = ImageDataGenerator().flow_from_dataframe(
        ...     table, "data/digits/train", target_size=(8, 8), batch_size=2, shuffle=False)
        Found 3 validated image filenames belonging to 3 classes.
        >>> it.class_indices
        {'one': 0, 'seven': 1, 'zero': 2}
        >>> x, y = it[0]
        >>> x.shape, y.argmax(axis=1).tolist()
        ((2, 8, 8, 3), [2, 0])
        """
        _check_unsupported(save_to_dir=save_to_dir)
        self._check_fitted()
        return DataFrameIterator(
            dataframe, directory, self, x_col=x_col, y_col=y_col, weight_col=weight_col,
            target_size=target_size, color_mode=color_mode, classes=classes,
            class_mode=class_mode, batch_size=batch_size, shuffle=shuffle, seed=seed,
            subset=subset, interpolation=interpolation, validate_images=validate_filenames,
            cache=cache, max_bad_fraction=max_bad_fraction)


def _check_unsupported(save_to_dir=None, keep_aspect_ratio=False):
    if save_to_dir is not None:
        raise FmkerasError(
            "save_to_dir is not supported; save batches yourself, e.g. with "
            f"keras.utils.save_img. Expected save_to_dir=None. Received: {save_to_dir!r}")
    if keep_aspect_ratio:
        raise FmkerasError(
            "keep_aspect_ratio=True is not supported; crop the images beforehand. "
            "Expected keep_aspect_ratio=False. Received: True")
