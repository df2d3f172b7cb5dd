"""Grad-CAM heat maps."""

import numpy as np
import pytest

from fmkeras.evaluation.gradcam import grad_cam, last_conv_layer, overlay
from fmkeras.models import resnet, simple_cnn


def test_heatmaps_shape_range_and_class():
    model = simple_cnn((16, 16, 1), 3, filters=(4, 8), dense_units=8)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    maps, classes = grad_cam(model, x)
    assert maps.shape == (2, 8, 8)  # conv2 runs at 8x8 after one pooling
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_array_equal(classes, model.predict(x, verbose=0).argmax(-1))
    maps, classes = grad_cam(model, x, class_index=1)
    assert classes.tolist() == [1, 1]


def test_target_layer_choice_and_errors():
    assert last_conv_layer(resnet((16, 16, 1), 2, depth=8, base_filters=4)) == \
        "stage3_block1_out"
    assert last_conv_layer(simple_cnn((16, 16, 1), 2)) == "conv3"
    model = simple_cnn((16, 16, 1), 3, filters=(4,), dense_units=0)
    with pytest.raises(ValueError, match="No layer 'nope'"):
        grad_cam(model, np.zeros((1, 16, 16, 1)), layer_name="nope")
    assert overlay(np.zeros((16, 16, 1)), np.ones((4, 4))).shape == (16, 16, 3)


def test_a_classifier_on_a_nested_backbone_is_explained_inside_the_backbone():
    import keras

    from fmkeras.models.backbones import image_classifier

    inner_in = keras.Input((16, 16, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(
        inner_in)
    features = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_b")(features)
    backbone = keras.Model(inner_in, features, name="backbone")
    model = image_classifier(backbone, 3, dropout=0.0)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    assert last_conv_layer(model) == "conv_b"
    maps, classes = grad_cam(model, x)
    assert maps.shape == (2, 8, 8) and maps.max() <= 1.0
    np.testing.assert_array_equal(classes, model.predict(x, verbose=0).argmax(-1))
    assert grad_cam(model, x, layer_name="conv_a")[0].shape == (2, 16, 16)
    with pytest.raises(ValueError, match=r"No layer 'nope'.*'backbone', 'input_layer.*'conv_a'"):
        grad_cam(model, x, layer_name="nope")
    with pytest.raises(ValueError, match=r"one per image \(2\). Received: class_index=\[0, 1, 2"):
        grad_cam(model, x, class_index=[0, 1, 2])


def test_class_index_outside_the_outputs_is_refused():
    model = simple_cnn((16, 16, 1), 3, filters=(4,), dense_units=0)
    with pytest.raises(ValueError, match=r"Expected class_index in \[0, 3\). "
                                         r"Received: class_index=7"):
        grad_cam(model, np.zeros((1, 16, 16, 1)), class_index=7)
    with pytest.raises(ValueError, match="Received: class_index=-1"):
        grad_cam(model, np.zeros((1, 16, 16, 1)), class_index=-1)
