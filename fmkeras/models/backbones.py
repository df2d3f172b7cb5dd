"""Pretrained image backbones from ``keras.applications`` and a classifier head for them.

:func:`backbone` returns a headless ``keras.applications`` network that takes
``[0, 255]`` pixels: the network's own ``preprocess_input`` is built in as a
serializable layer, so the model saves, reloads and exports without extra
code. :func:`image_classifier` puts pooling, dropout and a float32 softmax on
top, calling the backbone in inference mode so its batch-norm statistics stay
fixed while it is fine-tuned.
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import ops

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.errors import ConfigError, keras_download
from fmkeras.models import cnn
from fmkeras.models._checks import check_classes, check_input_shape, check_model

# How each family's ``preprocess_input`` maps [0, 255] pixels (keras.applications'
# imagenet_utils modes). EfficientNet and ConvNeXt normalise inside the network.
_CAFFE_MEAN = (103.939, 116.779, 123.68)  # BGR
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")

# canonical name -> (keras.applications constructor name, preprocessing mode)
_BACKBONES = {
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "resnet50_v2": ("ResNet50V2", "tf"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    "mobilenet_v3_small": ("MobileNetV3Small", "none"),
    "efficientnet_b0": ("EfficientNetB0", "none"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "none"),
    "convnext_tiny": ("ConvNeXtTiny", "none"),
}
# fmkeras' own trunks (random initialisation or a local weights file): the conv
# stages of simple_cnn and of the CIFAR-style ResNets, small enough to pretrain
# with SimCLR on a CPU. name -> (builder of the stages, its keyword defaults)
_NATIVE = {
    "simple_cnn": (cnn.apply_conv_stages, {"filters": (32, 64, 128)}),
    "cifar_resnet8": (cnn.apply_resnet_stages, {"depth": 8, "base_filters": 16}),
    "cifar_resnet14": (cnn.apply_resnet_stages, {"depth": 14, "base_filters": 16}),
    "cifar_resnet20": (cnn.apply_resnet_stages, {"depth": 20, "base_filters": 16}),
}
BACKBONE_NAMES = (*_BACKBONES, *_NATIVE)


@keras.saving.register_keras_serializable(package="fmkeras")
class PixelPreprocessing(keras.layers.Layer):
    """A ``keras.applications`` ``preprocess_input`` as a layer (inputs are 0-255 pixels).

    Args:
        mode: str. ``"caffe"`` (RGB to BGR, minus the ImageNet mean),
            ``"tf"`` (scale to ``[-1, 1]``), ``"torch"`` (scale to ``[0, 1]``,
            then ImageNet mean and std) or ``"none"`` (identity).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``).

    Example:

    >>> layer = PixelPreprocessing("tf")
    >>> float(layer(keras.ops.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])
    1.0
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"Expected mode in {list(PREPROCESSING_MODES)}. "
                             f"Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN, x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, x.dtype)
            std = ops.convert_to_tensor(_TORCH_STD, x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def canonical_name(name):
    """The registry name for a user-spelled backbone name, or ``ValueError``.

    Case, ``-`` and ``_`` are ignored: ``"ResNet50"``, ``"mobilenetv2"`` and
    ``"MobileNet-V2"`` all resolve.

    Example:

    >>> canonical_name("MobileNetV2"), canonical_name("efficientnetb0")
    ('mobilenet_v2', 'efficientnet_b0')
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    for canonical in BACKBONE_NAMES:
        if canonical.replace("_", "") == key:
            return canonical
    raise ConfigError(f"Unknown backbone. Expected one of {list(BACKBONE_NAMES)}. "
                      f"Received: {name!r}")


@accepts_numpy_scalars
def backbone(name, input_shape, weights=None, skip_mismatch=False, **kwargs):
    """A headless ``keras.applications`` network that takes ``[0, 255]`` pixels.

    Besides the ``keras.applications`` families, ``"simple_cnn"`` (the
    conv-pool stages of :func:`fmkeras.models.simple_cnn`, ``filters`` as
    keyword) and ``"cifar_resnet8"``, ``"cifar_resnet14"`` and
    ``"cifar_resnet20"`` (the stages of :func:`fmkeras.models.resnet`,
    ``base_filters`` as keyword) are small encoders to pretrain on a CPU,
    e.g. with SimCLR. They have no ImageNet weights.

    Args:
        name: str. One of :data:`BACKBONE_NAMES` (case-insensitive, ``_``
            optional): ``"resnet50"``, ``"mobilenet_v2"``,
            ``"efficientnet_b0"``, ``"convnext_tiny"``, ``"cifar_resnet8"``, ...
        input_shape: ``(height, width, channels)``. ImageNet weights need 3
            channels.
        weights: ``"imagenet"`` (downloaded by Keras, needs the network),
            ``None`` (random initialisation) or a path to a weights file:
            ``.weights.h5`` or ``.keras`` saved by Keras 3 from the same
            backbone, or a legacy ``.h5`` (e.g. Keras' ``*_notop.h5``
            ImageNet files, matched by layer name).
        skip_mismatch: bool. With a weights file, skip layers whose weights
            do not fit instead of raising.
        **kwargs: more ``keras.applications`` arguments, e.g. ``alpha=0.35``
            for MobileNetV2.

    Returns:
        An uncompiled ``keras.Model`` named ``name`` mapping images to the
        last feature map ``[batch, h, w, features]``.

    Example:

    >>> model = backbone("mobilenet_v2", (32, 32, 3), weights=None, alpha=0.35)
    >>> model.output_shape
    (None, 1, 1, 1280)
    """
    canonical = canonical_name(name)
    is_file = weights not in (None, "imagenet")
    if is_file and not os.path.isfile(str(weights)):
        raise ConfigError(f"Backbone weights file not found. Expected 'imagenet', None or an "
                          f"existing weights file. Received: weights={weights!r}")
    input_shape = check_input_shape(input_shape, rank=3)
    inputs = keras.Input(input_shape, name="pixels")
    if canonical in _NATIVE:
        return _native_backbone(canonical, inputs, weights, skip_mismatch, **kwargs)
    constructor, mode = _BACKBONES[canonical]
    x = PixelPreprocessing(mode, name="preprocess")(inputs) if mode != "none" else inputs
    with keras_download(f"the ImageNet weights of {canonical}",
                        "weights (model.weights in a config)"):
        model = getattr(keras.applications, constructor)(
            include_top=False, weights=None if is_file else weights, input_tensor=x,
            input_shape=tuple(input_shape), name=canonical, **kwargs)
    if is_file:
        load_backbone_weights(model, str(weights), skip_mismatch)
    return model


def _native_backbone(name, inputs, weights, skip_mismatch, **kwargs):
    builder, defaults = _NATIVE[name]
    allowed = sorted(set(defaults) - {"depth"})  # the name fixes a ResNet's depth
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{name} takes only {allowed} as extra arguments. "
                          f"Received: {unknown}")
    if weights == "imagenet":
        raise ConfigError(f"{name} has no ImageNet weights. Expected weights=None or a local "
                          f"weights file. Received: weights='imagenet'")
    x = PixelPreprocessing("tf", name="preprocess")(inputs)
    x = builder(x, **{**defaults, **kwargs})
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_backbone_weights(model, str(weights), skip_mismatch)
    return model


def load_backbone_weights(model, path, skip_mismatch=False):
    """Load a weights file into a backbone, explaining a mismatch.

    Args:
        model: ``keras.Model``. A backbone built by :func:`backbone`.
        path: str. ``.weights.h5``/``.keras`` (Keras 3, by topology) or legacy
            ``.h5`` (by layer name).
        skip_mismatch: bool. Skip layers whose weights do not fit.

    Example:

    >>> model = backbone("mobilenet_v2", (32, 32, 3), alpha=0.35)
    >>> model.save_weights("/tmp/fmkeras-example.weights.h5")
    >>> load_backbone_weights(model, "/tmp/fmkeras-example.weights.h5")
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Backbone weights file not found. Received: {path!r}")
    legacy = path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
    kwargs = {"by_name": True} if legacy else {}
    # Keras reports skipped layers as warnings; collect them to explain or summarise.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path, skip_mismatch=skip_mismatch, **kwargs)
            error = None
        except (ValueError, KeyError, OSError) as err:
            error = f"{type(err).__name__}: {str(err)[:300]}"
    skipped = [str(w.message) for w in caught
               if issubclass(w.category, UserWarning) and "skip" in str(w.message).lower()]
    if error is None and skipped and not skip_mismatch:
        error = skipped[0][:300]
    if error is not None:
        raise ConfigError(
            f"Weights file does not match backbone {model.name!r}. Expected weights saved "
            f"from the same backbone and input channels (or pass skip_mismatch=True). "
            f"Received: {path!r} ({error})")
    if skipped:
        warnings.warn(f"{len(skipped)} layer(s) of {model.name!r} kept their initial weights: "
                      f"they do not match {path!r}.", UserWarning, stacklevel=2)


@accepts_numpy_scalars
def image_classifier(backbone_model, num_classes, dropout=0.2, pooling="avg", hidden_units=0,
                     name="image_classifier"):
    """Pooling, an optional hidden layer, dropout and a float32 softmax on a backbone.

    The backbone is called with ``training=False``: its batch normalisation
    stays in inference mode whether it is frozen or fine-tuned, the usual
    transfer-learning recipe. Freeze it with ``backbone_model.trainable =
    False`` (then compile).

    Args:
        backbone_model: ``keras.Model``. Maps images to a feature map, e.g.
            from :func:`backbone` or a SimCLR encoder.
        num_classes: int. Output classes.
        dropout: float. Dropout rate before the dense head.
        pooling: str. ``"avg"`` or ``"max"`` global pooling, or
            ``"flatten"`` (keeps the positions, as :func:`simple_cnn` does).
        hidden_units: int. Width of a ReLU ``Dense`` layer before the
            dropout (0: none). ``pooling="flatten"``, ``hidden_units=128``
            on the ``"simple_cnn"`` backbone rebuilds :func:`simple_cnn`.
        name: str. Model name.

    Returns:
        ``keras.Model`` mapping images to class probabilities; the backbone
        is its layer ``backbone_model.name``.

    Example:

    >>> features = backbone("mobilenet_v2", (32, 32, 3), alpha=0.35)
    >>> model = image_classifier(features, 10)
    >>> model.output_shape
    (None, 10)
    """
    check_model("backbone_model", backbone_model)
    check_classes(num_classes, "softmax")
    if pooling not in ("avg", "max", "flatten"):
        raise ValueError(f"Expected pooling 'avg', 'max' or 'flatten'. "
                         f"Received: pooling={pooling!r}")
    if not isinstance(hidden_units, int) or hidden_units < 0:
        raise ValueError(f"Expected hidden_units >= 0. Received: hidden_units={hidden_units!r}")
    inputs = keras.Input(backbone_model.input_shape[1:], name="images")
    x = backbone_model(inputs, training=False)
    if len(x.shape) == 4:
        pool = {"avg": keras.layers.GlobalAveragePooling2D,
                "max": keras.layers.GlobalMaxPooling2D, "flatten": keras.layers.Flatten}
        x = pool[pooling](name="pool")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
