"""TensorFlow Datasets image classification sets as fmkeras pipelines.

``tfds_image_dataset("mnist", split="train", ...)`` loads a tfds dataset with
``as_supervised=True`` and applies the same resize, rescale, cache, shuffle,
batch and prefetch steps as the folder pipeline, so either source plugs into
the same task. Offline tests use ``tensorflow_datasets.testing.mock_data``.
"""

from __future__ import annotations

import os

import tensorflow as tf

from fmkeras.data.images import (
    COLOR_MODES,
    _to_channels,
    batch_pipeline,
    check_color_mode,
    check_image_size,
)
from fmkeras.errors import DataError

TFDS_PREFIX = "tfds:"


def _first_line(err):
    return (str(err).splitlines() or [""])[0]


def is_tfds_name(source):
    """Whether ``source`` names a tfds dataset (``"tfds:mnist"``).

    Example:

    >>> is_tfds_name("tfds:cifar10"), is_tfds_name("data/digits")
    (True, False)
    """
    return isinstance(source, str) and source.startswith(TFDS_PREFIX)


def tfds_image_dataset(name, image_size, split="train", batch_size=32, color_mode=None,
                       shuffle=False, seed=0, cache=True, rescale=1.0 / 255,
                       label_mode="int", data_dir=None, download=True, augment=None):
    """A batched ``(images, labels)`` dataset and its class names from tfds.

    Args:
        name: str. A tfds name, with or without the ``tfds:`` prefix
            (``"mnist"``, ``"cifar10:3.0.2"``).
        image_size: int or ``(height, width)``.
        split: str. A tfds split expression (``"train[:90%]"``).
        batch_size: int.
        color_mode: optional str. ``grayscale``, ``rgb`` or ``rgba``; defaults
            to the dataset's own channels.
        shuffle: bool. Shuffle each epoch with ``seed``.
        seed: int.
        cache: bool. Cache decoded, resized images in memory.
        rescale: float. Factor applied to the ``[0, 255]`` pixels.
        label_mode: str. ``int`` or ``categorical``.
        data_dir: optional str. tfds data folder.
        download: bool. Let tfds download and prepare the data if missing.
        augment: optional callable ``(images, labels) -> (images, labels)``
            applied per batch after caching.

    Returns:
        ``(dataset, class_names)``.

    Example:

    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=8):
    ...     ds, names = tfds_image_dataset("mnist", 16, batch_size=4)
    >>> names[:2], next(iter(ds))[0].shape
    (['0', '1'], TensorShape([4, 16, 16, 1]))
    """
    import tensorflow_datasets as tfds

    if name.startswith(TFDS_PREFIX):
        name = name[len(TFDS_PREFIX):]
    image_size = check_image_size(image_size)
    if label_mode not in ("int", "categorical"):
        raise DataError(f"Expected label_mode 'int' or 'categorical'. Received: {label_mode!r}")
    try:
        ds, info = tfds.load(name, split=split, as_supervised=True, with_info=True,
                             data_dir=data_dir, download=download, shuffle_files=False)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as err:
        raise DataError(f"Cannot load tfds dataset {name!r} (split {split!r}): "
                        f"{_first_line(err)}") from None
    except OSError as err:  # no network (requests' errors are OSErrors), a full disk, ...
        folder = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        raise DataError(
            f"Cannot download or prepare tfds dataset {name!r}: {type(err).__name__}: "
            f"{_first_line(err)}. Expected network access on first use (tfds downloads and "
            f"prepares it into {folder}); on a machine without one, run `tfds build {name}` "
            f"where there is and copy the prepared folder into {folder}, or set "
            f"TFDS_DATA_DIR.") from None
    label = info.supervised_keys[1] if info.supervised_keys else "label"
    feature = info.features[label]
    if not hasattr(feature, "names"):
        raise DataError(
            f"tfds dataset {name!r} has no class labels. Expected an image classification "
            f"dataset whose label is a ClassLabel. Received label feature: {feature!r}")
    class_names = list(feature.names)
    image_shape = info.features[info.supervised_keys[0]].shape
    channels = (check_color_mode(color_mode) if color_mode
                else (image_shape[-1] if image_shape and image_shape[-1] in (1, 3, 4) else 3))
    if channels not in COLOR_MODES.values():
        raise DataError(f"Unsupported channel count {channels} in {name!r}.")

    def prepare(image, label_id):
        image = _to_channels(tf.cast(image, tf.float32), channels)
        image = tf.image.resize(image, image_size, method="bilinear")
        return image, tf.cast(label_id, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = batch_pipeline(ds, batch_size, cache=cache, shuffle_buffer=10_000 if shuffle else 0,
                        seed=seed, num_classes=len(class_names), label_mode=label_mode,
                        augment=augment, rescale=rescale)
    return ds, class_names
