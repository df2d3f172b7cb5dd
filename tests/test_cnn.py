"""Builders of fmkeras.models.cnn: parameter counts, shapes, dtypes, round trips."""

import os

import keras
import numpy as np
import pytest

from fmkeras.models import mlp, resnet, simple_cnn


def conv_params(k, cin, cout):
    return k * k * cin * cout + cout


def test_simple_cnn_parameter_count_matches_formula():
    model = simple_cnn((16, 16, 1), 10, filters=(8, 16), dense_units=32, dropout=0.5)
    flat = (16 // 4) * (16 // 4) * 16
    expected = conv_params(3, 1, 8) + conv_params(3, 8, 16) + (flat * 32 + 32) + (32 * 10 + 10)
    assert model.count_params() == expected


def test_simple_cnn_default_tutorial_shape():
    model = simple_cnn((32, 32, 3), 10)
    assert [layer.name for layer in model.layers[1:4]] == ["conv1", "pool1", "conv2"]
    # 3 conv-pool stages: 32 -> 4; Flatten 4*4*128 = 2048 -> Dense 128 -> 10.
    expected = (conv_params(3, 3, 32) + conv_params(3, 32, 64) + conv_params(3, 64, 128)
                + 2048 * 128 + 128 + 128 * 10 + 10)
    assert model.count_params() == expected
    assert model.output_shape == (None, 10)


def test_resnet20_matches_keras_cifar10_example():
    # ResNet-20 v1 of the Keras CIFAR-10 example: 274,442 parameters.
    model = resnet((32, 32, 3), 10, depth=20)
    assert model.count_params() == 274442
    assert model.name == "resnet20"
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
                   and not layer.name.endswith("shortcut")]
    assert len(conv_layers) + 1 == 20  # 19 convolutions + the classifier


def test_resnet8_small_count():
    model = resnet((16, 16, 1), 4, depth=8, base_filters=4)
    bn = lambda c: 4 * c  # noqa: E731 - gamma, beta, moving mean and variance
    stem = conv_params(3, 1, 4) + bn(4)
    stage1 = 2 * (conv_params(3, 4, 4) + bn(4))
    stage2 = conv_params(3, 4, 8) + bn(8) + conv_params(3, 8, 8) + bn(8) + conv_params(1, 4, 8)
    stage3 = (conv_params(3, 8, 16) + bn(16) + conv_params(3, 16, 16) + bn(16)
              + conv_params(1, 8, 16))
    assert model.count_params() == stem + stage1 + stage2 + stage3 + 16 * 4 + 4


def test_mlp_count_and_flatten():
    model = mlp((8, 8, 1), hidden_units=(32, 16), num_outputs=3)
    assert model.count_params() == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 3 + 3)
    assert model.output_shape == (None, 3)


BUILDERS = {
    "simple_cnn": lambda: simple_cnn((8, 8, 1), 3, filters=(4, 8), dense_units=8),
    "resnet": lambda: resnet((8, 8, 3), 3, depth=8, base_filters=4),
    "mlp": lambda: mlp((8, 8, 1), (8,), 3),
}


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_output_shape_and_dtype_under_policy(name, policy):
    keras.mixed_precision.set_global_policy(policy)
    model = BUILDERS[name]()
    x = np.random.default_rng(0).uniform(size=(2, *model.input_shape[1:])).astype("float32")
    y = model(x, training=False)
    assert tuple(y.shape) == (2, 3)
    assert y.dtype == "float32"  # the final activation stays in float32
    np.testing.assert_allclose(np.sum(np.asarray(y), axis=-1), 1.0, rtol=1e-3)
    compute = "float32" if policy == "float32" else policy.split("_")[1]
    hidden = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][0]
    assert hidden.compute_dtype == compute
    assert hidden.variable_dtype == "float32"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_get_config_and_keras_file_round_trip(name, tmp_path):
    model = BUILDERS[name]()
    x = np.random.default_rng(1).uniform(size=(3, *model.input_shape[1:])).astype("float32")
    clone = keras.Model.from_config(model.get_config())
    assert [x.name for x in clone.layers] == [x.name for x in model.layers]
    path = os.path.join(tmp_path, f"{name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: simple_cnn((4, 4, 1), 2), "at least 8"),
    (lambda: simple_cnn((16, 16), 2), "input_shape"),
    (lambda: simple_cnn((16, 16, 1), 0), "num_classes"),
    (lambda: simple_cnn((16, 16, 1), 2, dropout=1.5), "dropout"),
    (lambda: resnet((32, 32, 3), 10, depth=21), "6n + 2"),
    (lambda: mlp((8,), (0,), 2), "hidden_units"),
])
def test_bad_arguments_name_what_was_received(call, message):
    with pytest.raises(ValueError, match="Received") as info:
        call()
    assert message in str(info.value)
