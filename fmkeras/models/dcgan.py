"""DCGAN generator and discriminator builders (Functional API).

The depth follows the image size: a generator starts from a 4x4 map (7x7 for
28x28 images) and doubles it with stride-2 transposed convolutions until the
target size is reached; the discriminator mirrors it with stride-2
convolutions. Both can be class-conditional through label embeddings.
"""

from __future__ import annotations

import keras

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models._checks import check_positive_int, check_rate
from fmkeras.models.normalization import FusedBatchNormalization

# Image size -> (start size of the generator's first map, number of 2x steps).
SUPPORTED_SIZES = {16: (4, 2), 28: (7, 2), 32: (4, 3), 64: (4, 4)}
SUPPORTED_CHANNELS = (1, 3)
# Width of the label embedding concatenated with the generator's latent.
LABEL_EMBEDDING_DIM = 16


def _check_num_classes(num_classes):
    if num_classes is None:
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "Expected `num_classes` to be None (unconditional) or an integer >= 2. "
            f"Received: num_classes={num_classes!r}"
        )


def check_image_shape(image_shape):
    """Validates a DCGAN image shape and returns it with its start size and depth.

    Args:
        image_shape: tuple of int. `(height, width, channels)` with a square
            size in 16, 28, 32 or 64 and 1 or 3 channels.

    Returns:
        A tuple `((height, width, channels), start_size, num_steps)`.

    Example:

    >>> check_image_shape((28, 28, 1))
    ((28, 28, 1), 7, 2)
    """
    try:
        height, width, channels = (int(d) for d in image_shape)
    except (TypeError, ValueError):
        raise ValueError(
            "Expected `image_shape` to be (height, width, channels). "
            f"Received: image_shape={image_shape!r}"
        ) from None
    if height != width or height not in SUPPORTED_SIZES:
        raise ValueError(
            f"Expected square images of size {sorted(SUPPORTED_SIZES)}. "
            f"Received: image_shape={tuple(image_shape)!r}"
        )
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(
            f"Expected images with 1 or 3 channels. Received: image_shape={tuple(image_shape)!r}"
        )
    start, steps = SUPPORTED_SIZES[height]
    return (height, width, channels), start, steps


def _apply_upsample_block(x, filters, dtype, name):
    x = keras.layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", use_bias=False, dtype=dtype, name=f"{name}_conv"
    )(x)
    x = FusedBatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
    return keras.layers.ReLU(dtype=dtype, name=f"{name}_relu")(x)


@accepts_numpy_scalars
def dcgan_generator(
    latent_dim,
    image_shape,
    base_filters=64,
    num_classes=None,
    dtype=None,
    name="dcgan_generator",
):
    """Builds a DCGAN generator mapping latents (and labels) to images in [-1, 1].

    Dense -> batch norm -> ReLU -> reshape to a 4x4 map (7x7 for 28x28), then
    stride-2 transposed convolutions with batch norm and ReLU, halving the
    filters each time, and a last stride-2 transposed convolution to the image
    channels with a float32 tanh.

    Args:
        latent_dim: int. Size of the latent vector.
        image_shape: tuple of int. `(size, size, channels)`; size in
            16, 28, 32, 64 and channels 1 or 3.
        base_filters: int. Filters of the last hidden block; earlier blocks
            double it.
        num_classes: int or None. When set, the model takes a second input
            `labels` of shape `(batch, 1)` whose embedding is concatenated
            with the latent.
        dtype: str, `keras.DTypePolicy` or None. Dtype policy of the layers;
            None follows the global policy. The output is always float32.
        name: str. Name of the model.

    Returns:
        An uncompiled `keras.Model` with inputs `latents` (and `labels`).

    Example:

    >>> gen = dcgan_generator(32, (16, 16, 1), base_filters=8)
    >>> gen(keras.random.normal((2, 32))).shape
    TensorShape([2, 16, 16, 1])
    """
    check_positive_int("latent_dim", latent_dim)
    check_positive_int("base_filters", base_filters)
    _check_num_classes(num_classes)
    (_, _, channels), start, steps = check_image_shape(image_shape)

    latents = keras.Input((latent_dim,), name="latents")
    inputs = [latents]
    x = latents
    if num_classes is not None:
        labels = keras.Input((1,), dtype="int32", name="labels")
        inputs.append(labels)
        embedded = keras.layers.Embedding(
            num_classes, LABEL_EMBEDDING_DIM, dtype=dtype, name="label_embedding"
        )(labels)
        embedded = keras.layers.Flatten(dtype=dtype, name="label_flatten")(embedded)
        x = keras.layers.Concatenate(dtype=dtype, name="latent_label_concat")([x, embedded])

    filters = base_filters * 2 ** (steps - 1)
    x = keras.layers.Dense(start * start * filters, use_bias=False, dtype=dtype, name="project")(x)
    x = keras.layers.BatchNormalization(dtype=dtype, name="project_bn")(x)
    x = keras.layers.ReLU(dtype=dtype, name="project_relu")(x)
    x = keras.layers.Reshape((start, start, filters), dtype=dtype, name="project_reshape")(x)
    for i in range(1, steps):
        x = _apply_upsample_block(x, base_filters * 2 ** (steps - 1 - i), dtype, f"up{i}")
    x = keras.layers.Conv2DTranspose(
        channels, 4, strides=2, padding="same", dtype=dtype, name="to_image"
    )(x)
    images = keras.layers.Activation("tanh", dtype="float32", name="images")(x)
    return keras.Model(inputs if num_classes is not None else latents, images, name=name)


@accepts_numpy_scalars
def dcgan_discriminator(
    image_shape,
    base_filters=64,
    dropout=0.3,
    num_classes=None,
    dtype=None,
    name="dcgan_discriminator",
):
    """Builds a DCGAN discriminator returning one real/fake logit per image.

    Stride-2 convolutions with LeakyReLU(0.2) and optional dropout, doubling
    the filters each time, then flatten and a float32 Dense(1) logit.

    Args:
        image_shape: tuple of int. `(size, size, channels)`; size in
            16, 28, 32, 64 and channels 1 or 3.
        base_filters: int. Filters of the first convolution.
        dropout: float. Dropout rate after each convolution, in [0, 1);
            0 disables it.
        num_classes: int or None. When set, the model takes a second input
            `labels` of shape `(batch, 1)`, embedded as a size x size map and
            concatenated to the image as an extra channel.
        dtype: str, `keras.DTypePolicy` or None. Dtype policy of the layers;
            None follows the global policy. The logits are always float32.
        name: str. Name of the model.

    Returns:
        An uncompiled `keras.Model` with inputs `images` (and `labels`) and
        logits of shape `(batch, 1)`.

    Example:

    >>> disc = dcgan_discriminator((16, 16, 1), base_filters=8)
    >>> disc(keras.ops.zeros((2, 16, 16, 1))).shape
    TensorShape([2, 1])
    """
    check_positive_int("base_filters", base_filters)
    _check_num_classes(num_classes)
    check_rate("dropout", dropout)
    (size, _, channels), _, steps = check_image_shape(image_shape)

    images = keras.Input((size, size, channels), name="images")
    inputs = [images]
    x = images
    if num_classes is not None:
        labels = keras.Input((1,), dtype="int32", name="labels")
        inputs.append(labels)
        label_map = keras.layers.Embedding(
            num_classes, size * size, dtype=dtype, name="label_embedding"
        )(labels)
        label_map = keras.layers.Reshape((size, size, 1), dtype=dtype, name="label_map")(label_map)
        x = keras.layers.Concatenate(dtype=dtype, name="image_label_concat")([x, label_map])

    for i in range(steps):
        x = keras.layers.Conv2D(
            base_filters * 2**i, 4, strides=2, padding="same", dtype=dtype, name=f"down{i + 1}_conv"
        )(x)
        x = keras.layers.LeakyReLU(0.2, dtype=dtype, name=f"down{i + 1}_lrelu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, dtype=dtype, name=f"down{i + 1}_dropout")(x)
    x = keras.layers.Flatten(dtype=dtype, name="flatten")(x)
    logits = keras.layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(inputs if num_classes is not None else images, logits, name=name)
