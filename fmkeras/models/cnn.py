"""Image classifier builders: the tutorial CNN, the CIFAR ResNet and an MLP.

Every builder returns an uncompiled Functional ``keras.Model``, names each
layer deterministically, passes ``dtype`` to every layer so a mixed-precision
policy applies, and keeps the final activation in float32 so the softmax is
computed at full precision.
"""

from __future__ import annotations

import keras
from keras import layers

from fmkeras.models._checks import check_input_shape, check_positive_int, check_rate


def _head(x, num_classes, activation, dtype, name="predictions"):
    """Dense logits (compute dtype) followed by the activation in float32."""
    check_positive_int("num_classes", num_classes)
    x = layers.Dense(num_classes, dtype=dtype, name=f"{name}_dense")(x)
    return layers.Activation(activation, dtype="float32", name=name)(x)


def apply_conv_stages(x, filters=(32, 64, 128), kernel_size=3, dtype=None):
    """The conv-pool stages of :func:`simple_cnn` (no flatten, no head).

    Args:
        x: input tensor ``[batch, height, width, channels]``.
        filters: tuple of int. Filters of each ``Conv2D`` + ``MaxPooling2D`` stage.
        kernel_size: int. Convolution kernel size.
        dtype: dtype policy for every layer.

    Returns:
        The feature map, halved in size once per stage.

    Example:

    >>> x = apply_conv_stages(keras.Input((16, 16, 1)))
    >>> tuple(x.shape)
    (None, 2, 2, 128)
    """
    filters = tuple(filters)
    for f in filters:
        check_positive_int("filters", f)
    min_side = 2 ** len(filters)
    if min(x.shape[1:3]) < min_side:
        raise ValueError(
            f"simple_cnn halves the image {len(filters)} times, so height and width "
            f"must be at least {min_side}. Received: input_shape={tuple(x.shape[1:])}, "
            f"filters={filters}")
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, kernel_size, padding="same", activation="relu",
                          dtype=dtype, name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}")(x)
    return x


def simple_cnn(input_shape, num_classes, filters=(32, 64, 128), dense_units=128,
               dropout=0.5, kernel_size=3, activation="softmax", dtype=None,
               name="simple_cnn"):
    """The conv-pool stack with a dense head of the classic Keras tutorials.

    Each entry of ``filters`` adds ``Conv2D(f, kernel_size, padding="same",
    activation="relu")`` and ``MaxPooling2D(2)``; then ``Flatten``,
    ``Dense(dense_units, relu)``, ``Dropout`` and the classifier.

    Args:
        input_shape: tuple of int. ``(height, width, channels)``.
        num_classes: int. Number of output classes.
        filters: tuple of int. Filters of each conv-pool stage.
        dense_units: int. Width of the hidden dense layer (0 to skip it).
        dropout: float. Dropout rate before the classifier.
        kernel_size: int. Convolution kernel size.
        activation: str. Final activation, computed in float32.
        dtype: optional dtype policy name for every layer; ``None`` uses the
            global policy.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = simple_cnn((16, 16, 1), num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    input_shape = check_input_shape(input_shape, rank=3)
    check_rate("dropout", dropout)
    inputs = keras.Input(shape=input_shape, name="images")
    x = apply_conv_stages(inputs, filters, kernel_size, dtype)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", dtype=dtype, name="dense")(x)
    if dropout:
        x = layers.Dropout(dropout, dtype=dtype, name="dropout")(x)
    outputs = _head(x, num_classes, activation, dtype)
    return keras.Model(inputs, outputs, name=name)


def _conv_bn(x, filters, strides, dtype, name, relu=True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same",
                      kernel_initializer="he_normal", dtype=dtype, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", dtype=dtype, name=f"{name}_relu")(x)
    return x


def apply_basic_block(x, filters, strides, dtype, name):
    """A basic residual block: two 3x3 conv-BN, a projection shortcut when needed.

    Args:
        x: input tensor.
        filters: int. Output channels.
        strides: int. Stride of the first convolution (2 halves the size).
        dtype: dtype policy for every layer.
        name: str. Prefix of every layer name.

    Returns:
        The output tensor.
    """
    shortcut = x
    y = _conv_bn(x, filters, strides, dtype, f"{name}_1")
    y = _conv_bn(y, filters, 1, dtype, f"{name}_2", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        # Option B of He et al.: a 1x1 projection where the shape changes.
        shortcut = layers.Conv2D(filters, 1, strides=strides, kernel_initializer="he_normal",
                                 dtype=dtype, name=f"{name}_shortcut")(x)
    y = layers.Add(dtype=dtype, name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", dtype=dtype, name=f"{name}_out")(y)


def apply_resnet_stages(x, depth=20, base_filters=16, dtype=None):
    """The stem and three residual stages of :func:`resnet` (no pooling, no head).

    Args:
        x: input tensor ``[batch, height, width, channels]``.
        depth: int. ``6n + 2`` (8, 14, 20, 32, ...).
        base_filters: int. Channels of the first stage.
        dtype: dtype policy for every layer.

    Returns:
        The feature map, ``4 * base_filters`` channels at a quarter of the size.

    Example:

    >>> x = apply_resnet_stages(keras.Input((16, 16, 1)), depth=8)
    >>> tuple(x.shape)
    (None, 4, 4, 64)
    """
    check_positive_int("base_filters", base_filters)
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"Expected depth = 6n + 2 with n >= 1 (8, 14, 20, 32, ...). Received: depth={depth!r}")
    if min(x.shape[1:3]) < 4:
        raise ValueError(
            f"resnet halves the image twice, so height and width must be at least 4. "
            f"Received: input_shape={tuple(x.shape[1:])}")
    blocks = (depth - 2) // 6
    x = _conv_bn(x, base_filters, 1, dtype, "stem")
    for stage in range(3):
        filters = base_filters * 2 ** stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = apply_basic_block(x, filters, strides, dtype, f"stage{stage + 1}_block{block + 1}")
    return x


def resnet(input_shape, num_classes, depth=20, base_filters=16, activation="softmax",
           dtype=None, name=None):
    """The CIFAR-style ResNet of He et al. (2016): ``depth = 6n + 2`` layers.

    A 3x3 stem, three stages of ``n`` basic blocks with ``base_filters``,
    ``2 * base_filters`` and ``4 * base_filters`` channels (the last two start
    with stride 2), global average pooling and a dense classifier. With the
    defaults and a 32x32x3 input, ResNet-20 has 274,442 parameters, as the
    Keras CIFAR-10 ResNet v1 example.

    Args:
        input_shape: tuple of int. ``(height, width, channels)``.
        num_classes: int. Number of output classes.
        depth: int. Total depth, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        base_filters: int. Channels of the first stage.
        activation: str. Final activation, computed in float32.
        dtype: optional dtype policy name for every layer.
        name: str. Model name; defaults to ``resnet<depth>``.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = resnet((32, 32, 3), num_classes=10, depth=20)
    >>> model.count_params()
    274442
    """
    input_shape = check_input_shape(input_shape, rank=3)
    inputs = keras.Input(shape=input_shape, name="images")
    x = apply_resnet_stages(inputs, depth, base_filters, dtype)
    x = layers.GlobalAveragePooling2D(dtype=dtype, name="avg_pool")(x)
    outputs = _head(x, num_classes, activation, dtype)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def mlp(input_shape, hidden_units, num_outputs, dropout=0.0, activation="relu",
        output_activation="softmax", dtype=None, name="mlp"):
    """A multi-layer perceptron; multi-dimensional inputs are flattened first.

    Args:
        input_shape: tuple of int. Shape of one example.
        hidden_units: sequence of int. Width of each hidden layer.
        num_outputs: int. Width of the output layer.
        dropout: float. Dropout rate after each hidden layer.
        activation: str. Hidden activation.
        output_activation: str or None. Final activation, in float32
            (``None`` or ``"linear"`` for regression or logits).
        dtype: optional dtype policy name for every layer.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = mlp((8, 8, 1), hidden_units=(32,), num_outputs=10)
    >>> model.count_params()
    2410
    """
    input_shape = check_input_shape(input_shape)
    check_rate("dropout", dropout)
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    if len(input_shape) > 1:
        x = layers.Flatten(dtype=dtype, name="flatten")(x)
    for i, units in enumerate(hidden_units, start=1):
        check_positive_int("hidden_units", units)
        x = layers.Dense(units, activation=activation, dtype=dtype, name=f"hidden{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, dtype=dtype, name=f"dropout{i}")(x)
    outputs = _head(x, num_outputs, output_activation or "linear", dtype, name="outputs")
    return keras.Model(inputs, outputs, name=name)
