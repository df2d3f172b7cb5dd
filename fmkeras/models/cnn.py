"""Image classifier builders: the tutorial CNN, the CIFAR ResNet, a fast CIFAR net and an MLP.

Every builder returns an uncompiled Functional ``keras.Model``, names each
layer deterministically, passes ``dtype`` to every layer so a mixed-precision
policy applies, and keeps the final activation in float32 so the softmax is
computed at full precision.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models._checks import (
    check_classes,
    check_image_sides,
    check_input_shape,
    check_positive_int,
    check_positive_real,
    check_rate,
)
from fmkeras.models.normalization import FusedBatchNormalization


def _head(x, num_classes, activation, dtype, name="predictions",
          names=("num_classes", "activation")):
    """Dense logits (compute dtype) followed by the activation in float32."""
    check_classes(num_classes, activation, names)
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
    check_image_sides(x.shape[1:], 2 ** len(filters),
                      f"simple_cnn halves the image {len(filters)} times (filters={filters})")
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, kernel_size, padding="same", activation="relu",
                          dtype=dtype, name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}")(x)
    return x


@accepts_numpy_scalars
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
    check_image_sides(input_shape, 1, "simple_cnn flattens its last feature map", known=True)
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
    x = FusedBatchNormalization(dtype=dtype, name=f"{name}_bn")(x)
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

    Example:

    >>> x = apply_basic_block(keras.Input((8, 8, 16)), 32, strides=2, dtype=None, name="block")
    >>> tuple(x.shape)
    (None, 4, 4, 32)
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
    check_image_sides(x.shape[1:], 4, "resnet halves the image twice")
    blocks = (depth - 2) // 6
    x = _conv_bn(x, base_filters, 1, dtype, "stem")
    for stage in range(3):
        filters = base_filters * 2 ** stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = apply_basic_block(x, filters, strides, dtype, f"stage{stage + 1}_block{block + 1}")
    return x


@accepts_numpy_scalars
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


@keras.saving.register_keras_serializable(package="fmkeras")
class PatchWhitening(layers.Layer):
    """A frozen ``patch_size`` x ``patch_size`` convolution that whitens image patches.

    :meth:`adapt` sets the kernel from data: the eigenvectors of the patch
    covariance scaled by ``1 / sqrt(eigenvalue + epsilon * mean eigenvalue)``,
    each with its negative (``2 * patch_size**2 * channels`` filters), and a
    frozen ``center`` offset so that the outputs have zero mean. The kernel
    and the offset are not trained; a ``bias`` that starts at zero is, so
    weight decay pulls the outputs back to centred ones rather than to the
    offset-free projection (as in airbench, whose inputs are standardized).
    This first layer makes the features the next layers see
    decorrelated from the first step, which is much of how a small network
    learns CIFAR-10 in a few epochs (Jordan, "94% on CIFAR-10 in 3.29
    seconds on a single GPU", 2024). Before ``adapt`` the kernel is a fixed
    random projection.

    Args:
        patch_size: int. Side of the patches (and of the kernel); ``valid``
            padding, so the output is ``patch_size - 1`` pixels smaller.
        epsilon: float. Added to the eigenvalues, relative to their mean.

    Example:

    >>> layer = PatchWhitening()
    >>> images = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32")
    >>> layer.adapt(images)
    >>> tuple(layer(images).shape)
    (64, 7, 7, 24)
    """

    def __init__(self, patch_size=2, epsilon=5e-4, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("patch_size", patch_size)
        if not epsilon > 0:
            raise ValueError(f"Expected epsilon > 0. Received: epsilon={epsilon!r}")
        self.patch_size = int(patch_size)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        filters = 2 * self.patch_size ** 2 * channels
        self.kernel = self.add_weight(
            shape=(self.patch_size, self.patch_size, channels, filters), name="kernel",
            initializer="glorot_uniform", trainable=False)
        self.bias = self.add_weight(shape=(filters,), name="bias", initializer="zeros")
        self.center = self.add_weight(shape=(filters,), name="center", initializer="zeros",
                                      trainable=False)

    def adapt(self, images):
        """Set the kernel and the centring offset from ``images`` (``[n, h, w, c]``, as the
        model gets them), and the trainable bias to zero.

        Raises:
            ValueError: ``images`` is not 4-D, its channels differ from the
                layer's input, it is smaller than one patch, or it holds NaN or
                infinite values.
        """
        images = np.asarray(images, dtype="float64")
        p = self.patch_size
        if images.ndim != 4 or min(images.shape[1:3]) < p or not len(images):
            raise ValueError(f"PatchWhitening.adapt expects images [n, height, width, channels] "
                             f"of at least {p}x{p} pixels. Received shape {images.shape}")
        if not self.built:
            self.build(images.shape)
        channels = images.shape[-1]
        if self.kernel.shape[2] != channels:
            raise ValueError(f"PatchWhitening was built for {self.kernel.shape[2]} channels. "
                             f"Received images with {channels}")
        if not np.isfinite(images).all():
            raise ValueError(f"PatchWhitening.adapt expects finite pixels. Received: "
                             f"{images.size - np.isfinite(images).sum()} NaN or infinite values")
        h, w = images.shape[1] - p + 1, images.shape[2] - p + 1
        # Patches flattened in the kernel's (row, column, channel) order.
        patches = np.stack([images[:, i:i + h, j:j + w, :] for i in range(p) for j in range(p)],
                           axis=3).reshape(-1, p * p * channels)
        mean = patches.mean(0)
        centred = patches - mean
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
        eigenvalues = np.maximum(eigenvalues, 0.0)[::-1]
        vectors = vectors[:, ::-1]  # strongest direction first
        scaled = vectors / np.sqrt(eigenvalues + self.epsilon * eigenvalues.mean() + 1e-12)
        filters = np.concatenate([scaled, -scaled], axis=1)
        self.kernel.assign(filters.reshape(p, p, channels, -1).astype("float32"))
        self.center.assign((-mean @ filters).astype("float32"))
        self.bias.assign(np.zeros(filters.shape[1], dtype="float32"))

    def call(self, inputs):
        kernel = ops.cast(self.kernel, inputs.dtype)
        offset = ops.cast(self.center + self.bias, inputs.dtype)
        return ops.conv(inputs, kernel, padding="valid") + offset

    def load_own_variables(self, store):
        if len(store.keys()) == 2:
            # Saved before the centring offset was split from the bias: the
            # stored bias holds both, so the offset stays zero.
            self.bias.assign(store["0"])
            self.kernel.assign(store["1"])
            self.center.assign(np.zeros(self.center.shape, dtype="float32"))
            return
        super().load_own_variables(store)

    def compute_output_shape(self, input_shape):
        shrink = self.patch_size - 1
        size = [None if s is None else s - shrink for s in input_shape[1:3]]
        return (input_shape[0], *size, 2 * self.patch_size ** 2 * input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "epsilon": self.epsilon}


@accepts_numpy_scalars
def fast_cnn(input_shape, num_classes, widths=(64, 256, 256), whitening=True,
             bn_momentum=0.4, logit_scale=1 / 9, identity_init=True, activation="softmax",
             whitening_activation="relu", dtype=None, name="fast_cnn"):
    """A small fast-to-train CNN for 32x32 images, after Jordan's airbench (2024).

    A 2x2 :class:`PatchWhitening` layer (call :func:`adapt_whitening` on
    training images before ``fit``; the image-classification task does) and
    a ReLU (``whitening_activation``), then one block per entry of ``widths``:
    conv 3x3, max-pool 2, batch norm, GELU, conv 3x3, batch norm, GELU
    (convolutions without bias, batch norms without scale, computed by
    TensorFlow's fused kernel:
    :class:`fmkeras.models.normalization.FusedBatchNormalization`). Global
    max pooling and a bias-free dense layer whose logits are multiplied by
    ``logit_scale``. Wide layers at low resolution keep the arithmetic
    dense, which suits CPUs too.

    Args:
        input_shape: tuple of int. ``(height, width, channels)``, at least
            ``2 ** len(widths) + 1`` pixels on each side; height and width
            may be None (any size, e.g. smaller crops early in training).
        num_classes: int.
        widths: tuple of int. Channels of each block.
        whitening: bool. ``PatchWhitening`` first; else a trainable 2x2 conv.
        bn_momentum: float. Batch-norm moving-average momentum (Keras
            convention: the weight of the old value); low, for short runs.
        logit_scale: float. Factor on the logits.
        identity_init: bool. Start each convolution's first ``in_channels``
            filters as the identity (the rest random), an implicit residual
            connection at initialisation.
        activation: str. Final activation, computed in float32.
        whitening_activation: str. Activation after the whitening layer.
            Its filters come in pairs of opposite sign, so a ReLU keeps every
            whitened value; airbench's GELU (``"gelu"``) costs about 10% more
            time per step on a CPU, for the same accuracy.
        dtype: optional dtype policy name for every layer.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = fast_cnn((32, 32, 3), 10, widths=(32, 128, 128))
    >>> model.count_params()
    498704
    """
    input_shape = check_input_shape(input_shape, rank=3)
    check_classes(num_classes, activation)
    widths = tuple(widths)
    for width in widths:
        check_positive_int("widths", width)
    check_image_sides(input_shape, 2 ** len(widths) + 1,
                      f"fast_cnn halves the image {len(widths)} times after a 2x2 valid "
                      f"convolution (widths={widths})")
    check_rate("bn_momentum", bn_momentum)
    check_positive_real("logit_scale", logit_scale)
    inputs = keras.Input(shape=input_shape, name="images")
    if whitening:
        x = PatchWhitening(dtype=dtype, name="whitening")(inputs)
    else:
        x = layers.Conv2D(8 * input_shape[-1], 2, dtype=dtype, name="whitening")(inputs)
    x = layers.Activation(whitening_activation, dtype=dtype, name="whitening_activation")(x)
    for i, width in enumerate(widths, start=1):
        for j in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, dtype=dtype,
                              name=f"block{i}_conv{j}")(x)
            if j == 1:
                x = layers.MaxPooling2D(2, dtype=dtype, name=f"block{i}_pool")(x)
            x = FusedBatchNormalization(momentum=bn_momentum, scale=False, dtype=dtype,
                                        name=f"block{i}_bn{j}")(x)
            x = layers.Activation("gelu", dtype=dtype, name=f"block{i}_gelu{j}")(x)
    x = layers.GlobalMaxPooling2D(dtype=dtype, name="max_pool")(x)
    x = layers.Dense(num_classes, use_bias=False, dtype=dtype, name="predictions_dense")(x)
    x = layers.Rescaling(logit_scale, dtype=dtype, name="logit_scale")(x)
    outputs = layers.Activation(activation, dtype="float32", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=name)
    if identity_init:
        for layer in model.layers:
            if isinstance(layer, layers.Conv2D) and layer.name.startswith("block"):
                _partial_identity(layer.kernel)
    return model


def _partial_identity(kernel):
    """Make the first ``in_channels`` filters of a conv ``kernel`` pass their input through."""
    values = np.array(kernel.numpy())
    height, width, channels_in, channels_out = values.shape
    keep = min(channels_in, channels_out)
    values[..., :keep] = 0.0
    values[height // 2, width // 2, np.arange(keep), np.arange(keep)] = 1.0
    kernel.assign(values)


def adapt_whitening(model, images):
    """Adapt every :class:`PatchWhitening` layer of ``model`` that sits on its input.

    Args:
        model: a ``keras.Model`` (e.g. from :func:`fast_cnn`).
        images: array ``[n, height, width, channels]`` as the model receives
            them (a few thousand training images are plenty).

    Returns:
        int. How many layers were adapted (0 for models without one).

    Example:

    >>> model = fast_cnn((16, 16, 3), 10, widths=(8, 16))
    >>> adapt_whitening(model, np.random.default_rng(0).random((32, 16, 16, 3)))
    1
    """
    adapted = 0
    for layer in model.layers:
        if isinstance(layer, PatchWhitening):
            if not any(layer.input is tensor for tensor in model.inputs):
                raise ValueError(f"adapt_whitening needs {layer.name!r} on the model input; "
                                 "adapt it yourself with the images it receives.")
            layer.adapt(images)
            adapted += 1
    return adapted


@accepts_numpy_scalars
def mlp(input_shape, hidden_units, num_outputs, dropout=0.0, activation="relu",
        output_activation="softmax", dtype=None, name="mlp"):
    """A multi-layer perceptron; multi-dimensional inputs are flattened first.

    Args:
        input_shape: tuple of int. Shape of one example.
        hidden_units: sequence of int (or one int). Width of each hidden layer.
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
    if isinstance(hidden_units, int):
        hidden_units = (hidden_units,)
    try:
        hidden_units = tuple(hidden_units)
    except TypeError:
        raise ValueError(f"Expected hidden_units to be a tuple of ints such as (64, 32). "
                         f"Received: hidden_units={hidden_units!r}") from None
    for i, units in enumerate(hidden_units, start=1):
        check_positive_int("hidden_units", units)
        x = layers.Dense(units, activation=activation, dtype=dtype, name=f"hidden{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, dtype=dtype, name=f"dropout{i}")(x)
    outputs = _head(x, num_outputs, output_activation or "linear", dtype, name="outputs",
                    names=("num_outputs", "output_activation"))
    return keras.Model(inputs, outputs, name=name)
