"""Augmentation inside the model, as Keras preprocessing layers (for accelerators).

On a GPU or TPU the input pipeline can starve the device; running the random
transforms as layers moves them onto it. The layers are active only in
training (``training=True``), so an exported model serves unchanged.
"""

from __future__ import annotations

import keras
from keras import layers

from fmkeras.data.augment import Augmentation


def _fraction(value):
    if isinstance(value, (list, tuple)):
        raise ValueError(
            "In-model augmentation takes shifts as one fraction of the side. "
            f"Expected a float in [0, 1). Received: {value!r}")
    return float(value)


def augmentation_layers(aug, seed=None, name="augmentation"):
    """A ``keras.Sequential`` of preprocessing layers doing what ``aug`` describes.

    Rotation and shear are in degrees, shifts are fractions of the side and a
    zoom ``z`` means ``[1 - z, 1 + z]``, as in :class:`fmkeras.data.Augmentation`
    (unlike the fused pipeline, each transform here resamples once).

    Args:
        aug: :class:`fmkeras.data.Augmentation`.
        seed: optional int. Seed of the random layers.
        name: str. Name of the returned block.

    Returns:
        ``keras.Sequential`` (identity when ``aug`` changes nothing).

    Example:

    >>> block = augmentation_layers(Augmentation(rotation_range=10, horizontal_flip=True))
    >>> [layer.name for layer in block.layers]
    ['random_flip', 'random_rotation']
    >>> [layer.name for layer in augmentation_layers(Augmentation()).layers]
    ['identity']
    """
    if not isinstance(aug, Augmentation):
        raise TypeError(f"Expected an fmkeras.data.Augmentation. Received: {type(aug).__name__}")
    if aug.channel_shift_range:
        raise ValueError("channel_shift_range has no Keras preprocessing layer; use the tf.data "
                         "pipeline. Expected channel_shift_range=0. "
                         f"Received: {aug.channel_shift_range}")
    fill = {"fill_mode": aug.fill_mode, "fill_value": aug.cval,
            "interpolation": aug.interpolation, "seed": seed}
    block = []
    flip = ("horizontal_and_vertical" if aug.horizontal_flip and aug.vertical_flip
            else "horizontal" if aug.horizontal_flip else "vertical" if aug.vertical_flip
            else None)
    if flip:
        block.append(layers.RandomFlip(flip, seed=seed, name="random_flip"))
    if aug.rotation_range:
        block.append(layers.RandomRotation(aug.rotation_range / 360.0, name="random_rotation",
                                           **fill))
    width, height = _fraction(aug.width_shift_range), _fraction(aug.height_shift_range)
    if width or height:
        block.append(layers.RandomTranslation(height, width, name="random_translation", **fill))
    if aug.shear_range:
        # RandomShear takes the shear as a fraction of the side: tan(angle).
        import math
        shear = math.tan(math.radians(aug.shear_range))
        block.append(layers.RandomShear(x_factor=shear, y_factor=0.0, name="random_shear",
                                        **fill))
    # Augmentation stores zoom_range as a (low, high) pair; (1, 1) means no zoom.
    low, high = aug.zoom_range
    if (low, high) != (1.0, 1.0):
        # Keras' factor is the change in size: positive zooms out.
        block.append(layers.RandomZoom((low - 1, high - 1), name="random_zoom", **fill))
    if aug.brightness_range:
        low, high = aug.brightness_range
        block.append(layers.RandomBrightness((low - 1, high - 1), value_range=(0, 255),
                                             seed=seed, name="random_brightness"))
    # An empty Sequential cannot be built: keep one pass-through layer.
    return keras.Sequential(block or [layers.Identity(name="identity")], name=name)


def with_augmentation(model, aug, seed=None, rescale=1.0):
    """Wrap ``model`` so that it takes ``[0, 255]`` pixels and augments them in training.

    Args:
        model: ``keras.Model`` taking rescaled images.
        aug: :class:`fmkeras.data.Augmentation`.
        seed: optional int.
        rescale: float. Applied after augmentation, before ``model``.

    Returns:
        A Functional ``keras.Model`` named like ``model``.

    Example:

    >>> from fmkeras.models import mlp
    >>> wrapped = with_augmentation(mlp((8, 8, 1), (4,), 2), Augmentation(zoom_range=0.1))
    >>> wrapped.output_shape
    (None, 2)
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="pixels")
    x = augmentation_layers(aug, seed)(inputs)
    x = layers.Rescaling(rescale, name="rescale")(x)
    return keras.Model(inputs, model(x), name=f"{model.name}_augmented")
