"""Compression in the fine-tune task: pruning in the last phase, int8 quantization, metrics."""

import json
import pathlib

import keras
import numpy as np
import pytest
from conftest import Stop, StopAt, write_image_folder

from fmkeras import config as config_lib
from fmkeras.errors import ConfigError
from fmkeras.tasks import fine_tune as task

FIELDS = ("accuracy", "keras_bytes", "gzip_bytes", "latency_ms")


def small_encoder():
    """Conv then a 288 -> 64 Dense: big enough for pruning and int8 to show in the size."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="features")(x)
    return keras.Model(inputs, x, name="small_encoder")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    data = write_image_folder(root / "imgs", per_class=8, size=(8, 8))
    path = str(root / "encoder.keras")
    small_encoder().save(path)
    return data, path


def tiny_config(setup, run_dir, *overrides):
    data, encoder = setup
    base = [f"data.path={data}", f"run_dir={run_dir}", "data.image_size=8",
            "data.batch_size=4", "data.validation_split=0.2", f"model.encoder_path={encoder}",
            "train.head_epochs=1", "train.epochs=2", "train.learning_rate=0.001",
            "train.verbose=0", "jit_compile=false"]
    return config_lib.load_config(task.FineTuneConfig, None, base + list(overrides))


def test_prune_in_the_last_phase_then_quantize_and_export(setup, tmp_path):
    run_dir = str(tmp_path / "run")
    result = task.run(tiny_config(setup, run_dir, "compression.prune_sparsity=0.5",
                                  "compression.quantize=int8"))
    metrics = json.loads(pathlib.Path(run_dir, "metrics.json").read_text())
    for stage in ("before_pruning", "float", "int8"):
        for field in FIELDS:
            assert metrics[f"{stage}_{field}"] >= 0, f"{stage}_{field}"
    # Phase 2 trained every weighted layer of the encoder: conv, features and the head.
    assert metrics["pruned_layers"] == 3
    assert metrics["pruned_sparsity"] == pytest.approx(0.5, abs=0.01)
    for name in ("conv", "features"):
        kernel = result.model.get_layer("small_encoder").get_layer(name).kernel.numpy()
        assert (kernel == 0).mean() == pytest.approx(0.5, abs=0.01), name
    assert metrics["float_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert metrics["float_gzip_bytes"] < metrics["before_pruning_gzip_bytes"]  # zeros compress
    assert metrics["int8_keras_bytes"] < metrics["float_keras_bytes"]
    # The quantized model is the one exported, and the export check passed.
    assert metrics["exported"] == "int8"
    assert pathlib.Path(result.export_path, "saved_model.pb").exists()


def test_pruning_the_only_phase_and_no_compression_keys_without_it(setup, tmp_path):
    result = task.run(tiny_config(setup, str(tmp_path / "a"), "train.epochs=0",
                                  "compression.prune_sparsity=0.3", "export.enabled=false"))
    # With phase 2 off, phase 1 is the last one: only the head's kernel trains and is pruned.
    assert result.metrics["pruned_layers"] == 1
    head = result.model.get_layer("predictions").kernel.numpy()
    assert (head == 0).mean() == pytest.approx(0.3, abs=0.02)
    assert result.metrics["exported"] == "float"
    encoder = result.model.get_layer("small_encoder").get_layer("features").kernel.numpy()
    assert (encoder == 0).mean() == 0.0

    plain = task.run(tiny_config(setup, str(tmp_path / "b"), "train.epochs=0",
                                 "export.enabled=false"))
    assert not any(key.startswith(("float_", "before_pruning_", "exported"))
                   for key in plain.metrics)
    assert np.isfinite(plain.metrics["test_accuracy"])


@pytest.mark.parametrize("override, match", [
    ("compression.prune_sparsity=1.0", r"Expected 0 <= compression.prune_sparsity < 1"),
    ("compression.quantize=int3", r"Unknown compression.quantize.*Received: 'int3'"),
])
def test_compression_config_errors(setup, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        task.run(tiny_config(setup, str(tmp_path / "run"), override))


def pruned_kernels(model):
    encoder = model.get_layer("small_encoder")
    return [encoder.get_layer(name).kernel.numpy() for name in ("conv", "features")]


def test_interrupted_pruning_resumes_where_it_stopped(setup, tmp_path):
    # Phase 2 is epochs 1-4; the schedule ramps over its first two and stops at epoch 2,
    # mid-ramp: the resumed run must continue the ramp, not restart it.
    settings = ["compression.prune_sparsity=0.5", "train.epochs=4", "deterministic=true",
                "checkpoint_every_s=0", "export.enabled=false"]
    sparsity = {}

    class Sparsity(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            sparsity[epoch] = float(np.mean(pruned_kernels(self.model)[1] == 0))

    straight = task.run(tiny_config(setup, str(tmp_path / "straight"), *settings),
                        callbacks=[Sparsity()])
    # The target is reached halfway through phase 2 (epochs 1-4), then the rest recovers.
    assert sparsity[1] < 0.49 and sparsity[2] == pytest.approx(0.5, abs=1e-3)
    run_dir = str(tmp_path / "resumed")
    with pytest.raises(Stop):
        task.run(tiny_config(setup, run_dir, *settings), callbacks=[StopAt(2)])
    resumed = task.run(tiny_config(setup, run_dir, *settings))
    assert resumed.metrics["pruned_sparsity"] == pytest.approx(0.5, abs=0.01)
    for a, b in zip(pruned_kernels(straight.model), pruned_kernels(resumed.model)):
        np.testing.assert_array_equal(a == 0, b == 0)  # the same weights pruned
        np.testing.assert_allclose(a, b, atol=1e-5)
