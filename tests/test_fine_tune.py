"""The fine-tune task: frozen head training, partial unfreezing, metrics, export."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
from conftest import write_image_folder

from fmkeras import config as config_lib
from fmkeras import train as cli
from fmkeras.errors import ConfigError
from fmkeras.models import backbones
from fmkeras.tasks import fine_tune as task

BACKBONE = "mobilenet_v2"


class BackboneSnapshots(keras.callbacks.Callback):
    """Every backbone variable (moving statistics included) at the start and end of each fit."""

    def __init__(self):
        super().__init__()
        self.fits = []

    def _snapshot(self):
        layer = self.model.get_layer(BACKBONE)
        return {f"{sub.name}/{i}": w.numpy().copy()
                for sub in layer.layers for i, w in enumerate(sub.weights)}

    def on_train_begin(self, logs=None):
        self.fits.append([self._snapshot(), None])

    def on_train_end(self, logs=None):
        self.fits[-1][1] = self._snapshot()


def changed_layers(before, after):
    return {key.rsplit("/", 1)[0] for key in before if not np.array_equal(before[key], after[key])}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("ft") / "imgs", classes=("a", "b"),
                              per_class=8, size=(32, 32))


def tiny_config(data_path, run_dir, *overrides):
    base = [f"data.path={data_path}", f"run_dir={run_dir}", "data.batch_size=4",
            "data.validation_split=0.2", "model.alpha=0.35", "train.head_epochs=1",
            "train.epochs=1", "train.learning_rate=0.01", "train.unfreeze_layers=4",
            "export.check=false", "train.verbose=0"]
    return config_lib.load_config(task.FineTuneConfig, None, base + list(overrides))


def test_two_phases_freeze_then_unfreeze_the_top(images, tmp_path):
    run_dir = str(tmp_path / "run")
    snapshots = BackboneSnapshots()
    result = task.run(tiny_config(images, run_dir), callbacks=[snapshots])

    (p1_before, p1_after), (p2_before, p2_after) = snapshots.fits
    # Phase 1: nothing in the backbone moves, batch-norm moving statistics included.
    assert changed_layers(p1_before, p1_after) == set()
    assert any("moving_variance" in w.path for w in result.model.get_layer(BACKBONE).weights)
    # Phase 2: the top 4 weighted layers minus their batch norms, and nothing else.
    assert changed_layers(p2_before, p2_after) == {"block_16_project", "Conv_1"}

    metrics = json.loads(pathlib.Path(run_dir, "metrics.json").read_text())
    assert {"phase1_test_accuracy", "test_accuracy", "trainable_params_phase1",
            "trainable_params_phase2"} <= set(metrics)
    head = 1280 * 2 + 2
    assert metrics["trainable_params_phase1"] == head
    features = result.model.get_layer(BACKBONE)
    unfrozen = sum(features.get_layer(name).count_params() for name in ("block_16_project",
                                                                        "Conv_1"))
    assert metrics["trainable_params_phase2"] == head + unfrozen
    for name in ("config.yaml", "history_phase1.csv", "history_phase2.csv", "report.md",
                 "plots/confusion_matrix.png", "plots/training_curves_phase2.png"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.path.exists(os.path.join(result.export_path, "saved_model.pb"))
    assert config_lib.read_yaml(os.path.join(run_dir, "config.yaml"))["task"] == "fine-tune"


def test_starts_from_a_saved_encoder(images, tmp_path):
    encoder = backbones.backbone(BACKBONE, (32, 32, 3), alpha=0.35)
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    # Without recalibration every variable, batch-norm statistics included, is the saved one.
    folder = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8,
                                size=(32, 32))
    (tmp_path / "imgs" / "b" / "empty.png").write_bytes(b"")  # skipped, and reported
    config = tiny_config(folder, str(tmp_path / "run"), f"model.encoder_path={path}",
                         "train.epochs=0", "export.enabled=false",
                         "model.recalibrate_batchnorm=false", "data.max_bad_fraction=0.1")
    snapshots = BackboneSnapshots()
    with pytest.warns(UserWarning, match="empty.png: empty file"):
        result = task.run(config, callbacks=[snapshots])
    assert result.metrics["data_skipped_files"] == 1
    assert "b/empty.png" in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    start = snapshots.fits[0][0]
    for layer in encoder.layers:
        for i, w in enumerate(layer.weights):
            np.testing.assert_array_equal(start[f"{layer.name}/{i}"], w.numpy())
    assert len(snapshots.fits) == 1 and result.metrics["trainable_params_phase2"] == 1280 * 2 + 2


@pytest.mark.parametrize("override, match", [
    ("data.rescale=0.5", "Expected data.rescale=1.0"),
    ("model.backbone=vgg99", r"Expected one of \[.*\]. Received: 'vgg99'"),
    ("model.encoder_path=/nope/encoder.keras", "Encoder not found"),
    ("model.weights=/nope/w.weights.h5", "weights file not found"),
    ("train.head_epochs=0", "Expected train.head_epochs >= 1"),
])
def test_config_errors(images, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        task.run(tiny_config(images, str(tmp_path / "run"), override))


def test_cli_knows_the_task_and_preset():
    module, config = cli.load_task_config("fine-tune", overrides=["train.epochs=1"])
    assert module is task and config.model.backbone == "mobilenet_v2"
    assert config.model.weights is None and config.data.rescale == 1.0


def test_alpha_is_left_out_with_a_warning_for_backbones_other_than_mobilenet():
    # The preset's alpha (0.35) with --set model.backbone=resnet50 crashed: ResNet50() got
    # an unexpected keyword argument 'alpha'.
    settings = task.FineTuneModelConfig(backbone="simple_cnn", alpha=0.35)
    with pytest.warns(UserWarning, match="model.alpha=0.35 is not used with "
                                         "model.backbone=simple_cnn"):
        features = task.build_backbone(settings, (16, 16, 3))
    assert features.output_shape[-1] == 128


def test_recalibrated_batchnorm_keeps_random_backbone_features_alive():
    features = task.build_backbone(task.FineTuneModelConfig(alpha=0.35), (32, 32, 3))
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    before = float(np.std(features([images], training=False)))
    count = task.recalibrate_batchnorm(features, [(images, None)] * 10)
    after = float(np.std(features([images], training=False)))
    assert count > 10
    assert before < 1e-6 < 1e-2 < after  # vanishing features become usable ones
    frozen = [w.numpy().copy() for w in features.trainable_weights]
    task.recalibrate_batchnorm(features, [(images, None)] * 2)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(frozen, features.trainable_weights))


def test_recalibrate_batchnorm_value_is_checked(images, tmp_path):
    config = tiny_config(images, str(tmp_path / "run"), "model.recalibrate_batchnorm=sometimes")
    with pytest.raises(ConfigError, match="recalibrate_batchnorm"):
        task.run(config)
