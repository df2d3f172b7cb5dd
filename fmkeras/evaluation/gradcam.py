"""Grad-CAM heat maps: where a CNN looked when it chose a class (Selvaraju et al., 2017)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def last_conv_layer(model):
    """The last layer with a 4-D output that is not pooling: the usual Grad-CAM target.

    A nested model (a backbone inside a classifier) is looked into: its own
    last such layer is named.

    Example:

    >>> from fmkeras.models import simple_cnn
    >>> last_conv_layer(simple_cnn((16, 16, 1), 10))
    'conv3'
    """
    image_layers = [layer for layer in model.layers
                    if getattr(layer, "output", None) is not None and len(layer.output.shape) == 4]
    for layer in reversed(image_layers):
        if isinstance(layer, keras.Model):
            return last_conv_layer(layer)
        if "pool" not in type(layer).__name__.lower():
            return layer.name
    raise ValueError(f"Model {model.name!r} has no layer with a 4-D (image) output. "
                     "Expected a convolutional model.")


def grad_cam(model, images, layer_name=None, class_index=None):
    """Grad-CAM heat maps in ``[0, 1]``, one per image, at the layer's resolution.

    Args:
        model: a Functional ``keras.Model`` classifier.
        images: array ``(batch, h, w, c)`` as the model takes them.
        layer_name: optional str. Convolutional layer to explain, in
            ``model`` or in a model nested in it (a backbone); defaults to
            :func:`last_conv_layer`.
        class_index: optional int or array of int. Class to explain per image;
            defaults to the predicted class.

    Returns:
        ``(heatmaps, class_indices)``: float array ``(batch, h', w')`` and the
        explained classes.

    Example:

    >>> from fmkeras.models import simple_cnn
    >>> maps, classes = grad_cam(simple_cnn((16, 16, 1), 3), np.zeros((2, 16, 16, 1)))
    >>> maps.shape
    (2, 4, 4)
    """
    layer_name = layer_name or last_conv_layer(model)
    probe = _probe(model, layer_name)
    if probe is None:
        raise ValueError(f"No layer {layer_name!r} in model {model.name!r}. Expected one of "
                         f"{_layer_names(model)}")
    images = tf.convert_to_tensor(np.asarray(images, np.float32))
    classes = model.output_shape[-1]
    if class_index is not None:
        index = np.asarray(class_index)
        if not np.issubdtype(index.dtype, np.integer) or ((index < 0) | (index >= classes)).any():
            raise ValueError(f"Expected class_index in [0, {classes}). "
                             f"Received: class_index={class_index!r}")
        if index.ndim > 1 or (index.ndim == 1 and len(index) != len(images)):
            raise ValueError(f"Expected one class_index, or one per image ({len(images)}). "
                             f"Received: class_index={class_index!r}")
    with tf.GradientTape() as tape:
        features, predictions = probe(images, training=False)
        predictions = tf.cast(predictions, tf.float32)
        if class_index is None:
            chosen = tf.argmax(predictions, axis=-1)
        else:
            chosen = tf.broadcast_to(tf.cast(class_index, tf.int64), tf.shape(predictions)[:1])
        score = tf.gather(predictions, chosen, axis=1, batch_dims=1)
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    return cam.numpy(), chosen.numpy()


def _layer_names(model):
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if isinstance(layer, keras.Model):
            names.extend(_layer_names(layer))
    return names


def _probe(model, layer_name):
    """A model from ``model``'s inputs to ``[layer output, model output]``, or None.

    The layer may sit in a nested model: the outer graph is then called again,
    sharing its layers, with the nested model swapped for its own probe.
    """
    if layer_name in [layer.name for layer in model.layers]:
        return keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    for nested in model.layers:
        inner = _probe(nested, layer_name) if isinstance(nested, keras.Model) else None
        if inner is None:
            continue
        found = []

        def call(layer, *args, **kwargs):
            if layer is not nested:
                return layer(*args, **kwargs)
            features, outputs = inner(*args, **kwargs)
            found.append(features)
            return outputs

        rewired = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                           call_function=call)
        return keras.Model(rewired.inputs, [found[0], rewired.output])
    return None


def overlay(image, heatmap, alpha=0.45):
    """Blend a heat map (resized to the image) over an image in ``[0, 1]``; returns RGB.

    Example:

    >>> overlay(np.zeros((8, 8, 1)), np.ones((2, 2))).shape
    (8, 8, 3)
    """
    import matplotlib

    image = np.asarray(image, np.float32)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    heat = tf.image.resize(np.asarray(heatmap, np.float32)[..., None], image.shape[:2]).numpy()
    colours = matplotlib.colormaps["jet"](heat[..., 0])[..., :3]
    return np.clip((1 - alpha) * image + alpha * colours, 0, 1)
