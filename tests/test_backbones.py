"""keras.applications backbones: names, built-in preprocessing, local weights, the head."""

import keras
import numpy as np
import pytest
from keras.src.applications import imagenet_utils

from fmkeras.errors import DataError
from fmkeras.models import backbones

SHAPE = (32, 32, 3)


def tiny(weights=None, **kwargs):
    return backbones.backbone("mobilenet_v2", SHAPE, weights=weights, alpha=0.35, **kwargs)


def pixels(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *SHAPE)).astype("float32")


@pytest.mark.parametrize("name, canonical, features", [
    ("ResNet50", "resnet50", 2048), ("mobilenet_v2", "mobilenet_v2", 1280),
    ("EfficientNetB0", "efficientnet_b0", 1280), ("convnext-tiny", "convnext_tiny", 768)])
def test_names_are_case_insensitive_and_headless(name, canonical, features):
    model = backbones.backbone(name, SHAPE)
    assert model.name == canonical
    assert model.output_shape == (None, 1, 1, features)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Expected one of \[.*'resnet50'.*\]. Received: 'vgg'"):
        backbones.backbone("vgg", SHAPE)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocessing_matches_keras_preprocess_input(mode):
    x = pixels()
    expected = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    got = backbones.PixelPreprocessing(mode)(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-4)


def test_preprocessing_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Received: mode='bgr'"):
        backbones.PixelPreprocessing("bgr")


def test_local_weights_round_trip(tmp_path):
    source = tiny()
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = tiny(weights=path)
    x = pixels()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), source.predict(x, verbose=0),
                               rtol=1e-5, atol=0)
    for got, want in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)
    fresh = tiny().get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, source.get_weights()))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(ValueError, match="weights file not found.*nope.weights.h5"):
        tiny(weights=missing)


def test_mismatched_weights_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / "wide.weights.h5")
    backbones.backbone("mobilenet_v2", SHAPE, alpha=0.5).save_weights(path)
    with pytest.raises(ValueError, match="does not match backbone 'mobilenet_v2'"):
        tiny(weights=path)
    with pytest.warns(UserWarning, match="kept their initial weights"):
        tiny(weights=path, skip_mismatch=True)


def test_classifier_head_saves_and_reloads(tmp_path):
    model = backbones.image_classifier(tiny(), 3, dropout=0.1)
    assert model.output_shape == (None, 3)
    assert [layer.name for layer in model.layers] == [
        "images", "mobilenet_v2", "pool", "dropout", "predictions"]
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = pixels()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_classifier_output_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = backbones.image_classifier(tiny(), 2)
    assert model.output.dtype == "float32"


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"input_shape.*Received: 32"):
        backbones.backbone("mobilenet_v2", 32)
    features = tiny()
    with pytest.raises(ValueError, match="Received: num_classes=0"):
        backbones.image_classifier(features, 0)
    with pytest.raises(ValueError, match="softmax over one unit"):
        backbones.image_classifier(features, 1)
    with pytest.raises(ValueError, match="Received: pooling='sum'"):
        backbones.image_classifier(features, 2, pooling="sum")
    with pytest.raises(ValueError, match="Expected `backbone_model` to be a keras.Model. "
                                         "Received: backbone_model of type str"):
        backbones.image_classifier("mobilenet_v2", 2)


def test_cifar_resnet_backbone_is_the_resnet_trunk_and_loads_local_weights(tmp_path):
    from fmkeras.models import cnn

    model = backbones.backbone("CIFAR-ResNet8", (16, 16, 3))
    assert model.name == "cifar_resnet8"
    assert model.output_shape == (None, 4, 4, 64)
    full = cnn.resnet((16, 16, 3), num_classes=10, depth=8)
    head = 64 * 10 + 10
    assert model.count_params() == full.count_params() - head
    path = str(tmp_path / "trunk.weights.h5")
    model.save_weights(path)
    loaded = backbones.backbone("cifar_resnet8", (16, 16, 3), weights=path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_cifar_resnet_backbone_rejects_imagenet_and_foreign_arguments():
    with pytest.raises(ValueError, match="no ImageNet weights.*Received: weights='imagenet'"):
        backbones.backbone("cifar_resnet8", (16, 16, 3), weights="imagenet")
    with pytest.raises(ValueError, match=r"only \['base_filters'\] as extra arguments. "
                                         r"Received: \['alpha'\]"):
        backbones.backbone("cifar_resnet8", (16, 16, 3), alpha=0.35)


def test_simple_cnn_backbone_is_simple_cnns_conv_stages():
    from fmkeras.models import cnn

    model = backbones.backbone("simple_cnn", (16, 16, 1), filters=(8, 16))
    assert model.output_shape == (None, 4, 4, 16)
    full = cnn.simple_cnn((16, 16, 1), 10, filters=(8, 16), dense_units=0, dropout=0.0)
    assert model.count_params() == full.count_params() - (4 * 4 * 16 * 10 + 10)
    with pytest.raises(ValueError, match="at least 8"):
        backbones.backbone("simple_cnn", (4, 4, 1))


@pytest.mark.parametrize("pooling, hidden, features", [("avg", 0, 16), ("max", 0, 16),
                                                       ("flatten", 0, 256), ("flatten", 32, 32)])
def test_image_classifier_pooling_and_hidden_layer(pooling, hidden, features):
    trunk = backbones.backbone("simple_cnn", (16, 16, 1), filters=(8, 16))
    model = backbones.image_classifier(trunk, 3, dropout=0.1, pooling=pooling,
                                       hidden_units=hidden)
    assert model.output_shape == (None, 3)
    assert model.get_layer("predictions").kernel.shape == (features, 3)
    assert model.count_params() == trunk.count_params() + sum(
        int(np.prod(w.shape)) for layer in model.layers if layer is not trunk
        for w in layer.weights)


def test_image_classifier_rejects_unknown_pooling():
    trunk = backbones.backbone("simple_cnn", (16, 16, 1), filters=(8, 16))
    with pytest.raises(ValueError, match="'avg', 'max' or 'flatten'. Received: pooling='sum'"):
        backbones.image_classifier(trunk, 3, pooling="sum")


def test_imagenet_weights_without_network_is_a_clear_error(offline_keras):
    with pytest.raises(DataError) as info:
        backbones.backbone("mobilenet_v2", (96, 96, 3), weights="imagenet", alpha=0.35)
    message = str(info.value)
    assert message.startswith("Cannot download the ImageNet weights of mobilenet_v2: URL fetch "
                              "failure on https://")
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    assert "Name or service not known" in message and "local weights file" in message
