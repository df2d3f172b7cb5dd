"""Image classification from a saved encoder (e.g. pretrain-simclr's encoder.keras)."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder

from fmkeras import config as config_lib
from fmkeras import saving
from fmkeras.errors import ConfigError
from fmkeras.tasks import image_classification as image_task


class Snapshot(keras.callbacks.Callback):
    """The named layers' weights as training starts."""

    def __init__(self, *names):
        super().__init__()
        self.names = names
        self.weights = {}

    def on_train_begin(self, logs=None):
        for name in self.names:
            self.weights[name] = [w.numpy().copy() for w in self.model.get_layer(name).weights]



def tiny_encoder(size=8):
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    return keras.Model(inputs, x, name="tiny_encoder")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    keras.utils.set_random_seed(3)
    path = str(tmp_path_factory.mktemp("encoder") / "encoder.keras")
    tiny_encoder().save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "imgs", per_class=6)


def image_config(data, run_dir, *overrides):
    base = [f"data.path={data}", f"run_dir={run_dir}", "data.image_size=8",
            "data.color_mode=rgb", "data.batch_size=4", "data.rescale=1.0", "train.epochs=1",
            "train.warmup_epochs=0", "train.verbose=0", "jit_compile=false"]
    return config_lib.load_config(image_task.ImageClassificationConfig, None,
                                  base + list(overrides))


def test_image_classification_starts_from_a_saved_encoder(images, encoder_file, tmp_path):
    saved = saving.load_model(encoder_file, compile=False).get_layer("conv").get_weights()
    snapshot = Snapshot("tiny_encoder")
    result = image_task.run(image_config(images, str(tmp_path / "run"),
                                         f"model.encoder_path={encoder_file}",
                                         "export.check=false"), callbacks=[snapshot])
    start = snapshot.weights["tiny_encoder"]
    assert len(start) == 2
    for got, expected in zip(start, saved):
        np.testing.assert_array_equal(got, expected)
    trained = result.model.get_layer("tiny_encoder").get_layer("conv").get_weights()[0]
    assert not np.array_equal(trained, saved[0])  # the encoder trains unless frozen
    metrics = json.loads(pathlib.Path(result.run_dir, "metrics.json").read_text())
    assert metrics["trainable_parameters"] == metrics["total_parameters"] == (
        3 * 3 * 3 * 4 + 4 + 4 * 2 + 2)
    # The export takes [0, 255] pixels, as the encoder does.
    serve = tf.saved_model.load(result.export_path).signatures["serve_images"]
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(serve(images=tf.constant(pixels))["probabilities"].numpy(),
                               result.model.predict(pixels, verbose=0), rtol=1e-4, atol=1e-5)


def test_an_encoder_saved_in_mixed_bfloat16_runs_in_the_runs_float32(images, tmp_path):
    """A .keras file keeps each layer's policy; a float32 run must not compute in bfloat16."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(3)
    bf16 = tiny_encoder()
    keras.mixed_precision.set_global_policy("float32")
    path = str(tmp_path / "encoder.keras")
    bf16.save(path)
    result = image_task.run(image_config(images, str(tmp_path / "run"),
                                         f"model.encoder_path={path}", "precision=float32",
                                         "model.freeze_encoder=true", "export.check=true"))
    encoder = result.model.get_layer("tiny_encoder")
    assert {layer.dtype_policy.name for layer in encoder.layers} == {"float32"}
    for got, expected in zip(encoder.get_weights(), bf16.get_weights()):
        np.testing.assert_array_equal(got, expected)  # the saved weights, unchanged (frozen)
    assert os.path.exists(os.path.join(result.export_path, "saved_model.pb"))


def test_frozen_encoder_trains_only_the_head(images, encoder_file, tmp_path):
    folder = os.path.dirname(encoder_file)  # a pretrain-simclr run folder is enough
    result = image_task.run(image_config(images, str(tmp_path / "run"),
                                         f"model.encoder_path={folder}",
                                         "model.freeze_encoder=true", "export.enabled=false"))
    assert result.metrics["trainable_parameters"] == 4 * 2 + 2
    saved = saving.load_model(encoder_file, compile=False).get_layer("conv").get_weights()[0]
    trained = result.model.get_layer("tiny_encoder").get_layer("conv").get_weights()[0]
    np.testing.assert_array_equal(trained, saved)


def test_flatten_head_with_a_hidden_layer(images, encoder_file, tmp_path):
    result = image_task.run(image_config(images, str(tmp_path / "run"),
                                         f"model.encoder_path={encoder_file}",
                                         "model.pooling=flatten", "model.head_units=5",
                                         "model.freeze_encoder=true", "export.enabled=false"))
    # conv output 6x6x4 flattened -> Dense(5) -> Dense(2)
    assert result.metrics["trainable_parameters"] == (6 * 6 * 4 * 5 + 5) + (5 * 2 + 2)
    assert result.model.get_layer("hidden").units == 5


def test_a_folder_without_an_encoder_is_named(images, tmp_path):
    with pytest.raises(ConfigError, match="or a pretrain-simclr run folder holding "
                                          "encoder.keras. Received: model.encoder_path="):
        image_task.run(image_config(images, str(tmp_path / "run"),
                                    f"model.encoder_path={tmp_path}"))


@pytest.mark.parametrize("override, match", [
    ("model.pooling=sum", r"avg, max or flatten. Received: 'sum'"),
    ("model.head_units=-1", r"head_units >= 0.*Received: -1"),
    ("data.rescale=0.5", r"needs data.rescale=1.0.*Received: data.rescale=0.5"),
    ("data.image_size=12", r"Expected \(12, 12, 3\).*Received: \(8, 8, 3\)"),
    ("data.color_mode=grayscale", r"Expected \(8, 8, 1\).*Received: \(8, 8, 3\)"),
])
def test_image_encoder_errors_name_expected_and_received(images, encoder_file, tmp_path,
                                                         override, match):
    with pytest.raises(ConfigError, match=match):
        image_task.run(image_config(images, str(tmp_path / "run"),
                                    f"model.encoder_path={encoder_file}", override))
