"""The image-classification task end to end: run directory, metrics, resume, export."""

import csv
import dataclasses
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import DIGITS, Stop, StopAt, write_image_folder

from fmkeras import config as config_lib
from fmkeras.data.images import index_directory
from fmkeras.errors import ConfigError
from fmkeras.tasks import image_classification as task
from fmkeras.training.callbacks import NonFiniteLossError


def tiny_config(data_path, run_dir, *overrides):
    base = [f"data.path={data_path}", f"run_dir={run_dir}", "data.image_size=8",
            "data.color_mode=rgb", "data.batch_size=4", "train.epochs=2", "train.warmup_epochs=0"]
    if not any(o.startswith("model.name=") for o in overrides):  # a small simple_cnn
        base += ["model.filters=[4]", "model.dense_units=8"]
    return config_lib.load_config(task.ImageClassificationConfig, None, base + list(overrides))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_the_whole_run_directory(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=("cat", "dog", "émeu"), per_class=6)
    (tmp_path / "imgs" / "dog" / "empty.png").write_bytes(b"")
    run_dir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="empty.png: empty file"):
        result = task.run(tiny_config(data, run_dir, "data.max_bad_fraction=0.1"))
    for name in ("config.yaml", "manifest.json", "metrics.json", "history.csv", "report.md",
                 "plots/training_curves.png", "plots/confusion_matrix.png",
                 "checkpoints/best.keras"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.listdir(os.path.join(run_dir, "tensorboard"))
    metrics = json.loads(pathlib.Path(run_dir, "metrics.json").read_text())
    assert {"test_accuracy", "test_loss", "macro_f1"} <= set(metrics)
    assert metrics["data_skipped_files"] == 1  # and the report names the file
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(read_rows(os.path.join(run_dir, "history.csv"))) == 2
    report = pathlib.Path(run_dir, "report.md").read_text(encoding="utf-8")
    assert "| émeu |" in report and "plots/confusion_matrix.png" in report
    assert "## Data problems" in report and "dog/empty.png" in report
    assert "tensorflow" in report and "model:" in report
    manifest = json.loads(pathlib.Path(run_dir, "manifest.json").read_text())
    assert manifest["seed"] == 42 and len(manifest["config_sha256"]) == 64
    assert manifest["versions"]["tensorflow"] and manifest["task"] == "image-classification"
    saved = config_lib.read_yaml(os.path.join(run_dir, "config.yaml"))
    assert saved["task"] == "image-classification" and saved["train"]["epochs"] == 2
    assert result.export_path == os.path.join(run_dir, "export", "image_classifier", "1")


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_each_epoch_runs_exactly_its_batches(tmp_path, steps_per_execution):
    """The repeated pipeline must not let an epoch run on into the next one's batches."""
    data = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=8)
    config = tiny_config(data, str(tmp_path / "run"), "export.enabled=false",
                         "train.verbose=0", f"train.steps_per_execution={steps_per_execution}")
    result = task.run(config)
    steps = -(-result.metrics["train_samples"] // 4)
    assert steps % 3  # not a whole number of 3-step groups
    assert int(result.model.optimizer.iterations) == 2 * steps


class FirstEpoch(keras.callbacks.Callback):
    first = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first is None:
            self.first = epoch


def test_rerun_resumes_an_interrupted_run(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=6)
    run_dir = str(tmp_path / "run")
    config = tiny_config(data, run_dir, "train.epochs=4", "export.enabled=false")
    with pytest.raises(Stop):
        task.run(config, callbacks=[StopAt(2)])
    assert len(read_rows(os.path.join(run_dir, "history.csv"))) == 2
    first = FirstEpoch()
    task.run(config, callbacks=[first])
    assert first.first == 2  # resumed, not restarted
    rows = read_rows(os.path.join(run_dir, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_run_gives_the_notebook_its_precision_and_determinism_back(tmp_path):
    """A run sets the dtype policy and op determinism it asks for, then restores the caller's."""
    from tensorflow.python.framework import config as tf_config

    data = write_image_folder(tmp_path / "imgs", per_class=4)
    config = tiny_config(data, str(tmp_path / "run"), "precision=mixed_bfloat16",
                         "deterministic=true", "train.epochs=1", "export.enabled=false",
                         "train.verbose=0")
    result = task.run(config)
    assert result.metrics["precision_policy"] == "mixed_bfloat16"
    conv = next(x for x in result.model.layers if isinstance(x, keras.layers.Conv2D))
    assert conv.dtype_policy.name == "mixed_bfloat16"  # the model keeps its own policy
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(Stop):  # and when the run stops with an error
        task.run(dataclasses.replace(config, run_dir=str(tmp_path / "run2")),
                 callbacks=[StopAt(0)])
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not tf_config.is_op_determinism_enabled()


def test_nan_loss_stops_with_error(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=4)
    config = tiny_config(data, str(tmp_path / "run"), "train.learning_rate=1e30",
                         "train.optimizer=sgd", "train.schedule=constant", "train.epochs=5",
                         "export.enabled=false")
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch"):
        task.run(config)


def test_single_folder_gets_a_held_out_test_split(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=10)
    train, val, test = task.load_splits(
        tiny_config(data, str(tmp_path / "r"), "data.test_split=0.2").data, seed=0)
    assert (len(train), len(val), len(test)) == (14, 2, 4)
    assert not set(train.filenames) & set(test.filenames)


def test_default_preset_reaches_target_and_export_serves_the_same_accuracy(tmp_path):
    """The README's main job: >= 0.95 on data/digits/test, and the export agrees."""
    config = config_lib.load_config(task.ImageClassificationConfig, "digits_cnn",
                                    [f"run_dir={tmp_path / 'run'}", "train.verbose=0"])
    result = task.run(config)
    assert result.metrics["test_accuracy"] >= 0.95
    index = index_directory(os.path.join(DIGITS, "test"))
    serve = tf.saved_model.load(result.export_path).signatures["serving_default"]
    labels = []
    for start in range(0, len(index), 128):
        batch = [pathlib.Path(p).read_bytes() for p in index.paths[start:start + 128]]
        labels.extend(b.decode() for b in serve(image_bytes=tf.constant(batch))["label"].numpy())
    served_accuracy = np.mean(np.array(labels) == np.array(index.class_names)[index.labels])
    assert served_accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-9)


def test_tfds_name_as_data_path(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        config = tiny_config("tfds:mnist", str(tmp_path / "run"), "data.color_mode=grayscale",
                             "train.epochs=1", "export.check=false")
        result = task.run(config)
    assert result.metrics["test_samples"] == 12
    assert result.metrics["train_samples"] > 0  # mock_data ignores split slicing
    assert result.export_path and 0.0 <= result.metrics["test_accuracy"] <= 1.0


def test_same_seed_reruns_identically_and_another_seed_differs(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=6)

    def weights(name, seed):
        config = tiny_config(data, str(tmp_path / name), f"seed={seed}", "deterministic=true",
                             "export.enabled=false", "train.verbose=0")
        return task.run(config).model.get_weights()

    first, again, other = weights("a", 1), weights("b", 1), weights("c", 2)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(first, other))


def test_resumed_run_matches_an_uninterrupted_one_bitwise(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=6)
    overrides = ("train.epochs=4", "export.enabled=false", "deterministic=true",
                 "data.augment.rotation_range=15", "data.augment.horizontal_flip=true",
                 "train.verbose=0")
    straight = task.run(tiny_config(data, str(tmp_path / "straight"), *overrides))
    config = tiny_config(data, str(tmp_path / "resumed"), *overrides)
    with pytest.raises(Stop):
        task.run(config, callbacks=[StopAt(2)])
    resumed = task.run(config)
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(read_rows(os.path.join(str(tmp_path / "resumed"), "history.csv"))) == 4


def test_fast_cnn_is_adapted_to_the_training_images_before_fit(tmp_path):
    data = write_image_folder(tmp_path / "imgs", per_class=12, size=(16, 16))
    config = tiny_config(data, str(tmp_path / "run"), "data.image_size=16", "model.name=fast_cnn",
                         "model.filters=[4, 8]", "train.optimizer=sgd", "train.momentum=0.85",
                         "train.schedule=onecycle", "train.warmup_epochs=1",
                         "train.learning_rate=0.2", "export.enabled=false", "train.verbose=0")
    seen = {}

    class Kernel(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["kernel"] = self.model.get_layer("whitening").kernel.numpy()

    result = task.run(config, callbacks=[Kernel()])
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
    best = keras.saving.load_model(os.path.join(result.run_dir, "checkpoints", "best.keras"))
    whitening = best.get_layer("whitening")
    np.testing.assert_array_equal(whitening.kernel.numpy(), seen["kernel"])  # frozen
    train = task.load_splits(config.data, config.seed)[0]
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(p)) / 255.0
                       for p in train.paths])
    patches = whitening.kernel.numpy().reshape(12, 24)[:, :12]
    # Adapted, not random: the training images' patches come out decorrelated.
    sample = np.stack([images[:, i:i + 15, j:j + 15, :] for i in (0, 1) for j in (0, 1)],
                      axis=3).reshape(-1, 12)
    raw = np.cov(sample, rowvar=False)
    assert np.abs(raw - np.diag(np.diag(raw))).max() > 0.05  # the pixels are correlated
    cov = np.cov(sample @ patches, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05
    assert result.metrics["precision_policy"] == "float32"


@pytest.mark.parametrize("preset, policy, widths", [
    ("cifar10_fast", "float32", [32, 128, 128]),
    ("cifar10_fast_bf16", "mixed_bfloat16", [64, 256, 256]),
])
def test_cifar10_fast_preset_runs_on_a_small_folder(tmp_path, preset, policy, widths):
    data = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=12,
                              size=(32, 32))
    config = config_lib.load_config(task.ImageClassificationConfig, preset, [
        f"data.path={data}", f"run_dir={tmp_path / 'run'}", "data.batch_size=8",
        "data.validation_split=0.0", "train.epochs=5", "train.verbose=0",
        "train.learning_rate=0.1",  # the preset's 1.5 is for batches of 1024
        "export.enabled=false"])
    result = task.run(config)
    assert result.model.name == "fast_cnn"
    assert result.metrics["precision_policy"] == policy
    assert [layer.filters for layer in result.model.layers
            if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3)][::2] \
        == widths  # two 3x3 convolutions a block
    assert result.model.optimizer.momentum == pytest.approx(0.85)
    assert result.model.optimizer.norm_bias_lr_scale == 64.0
    rows = read_rows(os.path.join(result.run_dir, "history.csv"))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_cifar10_fast_benchmark_test_time_augmentation():
    from conftest import load_script

    bench = load_script("benchmarks", "cifar10_fast.py")
    images = np.zeros((4, 6, 6, 1), "float32")
    images[:, :, :3] = 1.0  # bright left half
    labels = np.eye(2, dtype="float32")[[0, 0, 1, 1]]
    # Says class 0 when the left half is brighter (plus a small bias to 0): class 0 on
    # every original, class 1 on every mirror; summed, the bias decides: class 0.
    inputs = keras.Input((6, 6, 1))
    left = keras.ops.mean(inputs[:, :, :3], axis=(1, 2, 3))
    right = keras.ops.mean(inputs[:, :, 3:], axis=(1, 2, 3))
    scores = keras.ops.stack([left - right + 0.1, right - left], axis=-1)
    model = keras.Model(inputs, keras.ops.softmax(scores))
    plain, flip, shifted = bench.tta_accuracy(model, [(images, labels)])
    assert plain == 0.5 and flip == 0.5 and 0.0 <= shifted <= 1.0
    moved = bench._shifted(images, 1, 1)
    np.testing.assert_array_equal(moved[:, :, :2], images[:, :, 1:3])


def test_lookahead_trains_changes_the_weights_and_must_match_to_resume(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8)
    settings = ("export.enabled=false", "train.epochs=4", "train.learning_rate=0.01")
    plain = tiny_config(data, tmp_path / "plain", *settings)
    averaged = tiny_config(data, tmp_path / "averaged", *settings, "train.lookahead=true")
    final = []  # the weights fit ends with (the run then loads its best checkpoint)
    spy = keras.callbacks.LambdaCallback(
        on_train_end=lambda logs: final.append(spy.model.get_weights()))
    results = [task.run(config, callbacks=[spy]) for config in (plain, averaged)]
    rows = read_rows(os.path.join(results[1].run_dir, "history.csv"))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert not all(np.allclose(a, b) for a, b in zip(*final))
    splits = task.make_datasets(averaged)
    assert task.resume_identity(averaged, splits)["optimizer"]["lookahead"] is True
    assert "lookahead" not in task.resume_identity(plain, splits)["optimizer"]
    with pytest.raises(ConfigError, match="train.lookahead"):
        tiny_config(data, tmp_path / "bad", "train.lookahead=maybe")


def test_cpu_bf16_flags_reads_the_flags_line(tmp_path):
    import platform

    from fmkeras.training.precision import cpu_bf16_flags, cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\n"
                    "vmx flags\t: ept vpid\n"
                    "flags\t\t: fpu avx512f amx_bf16 amx_tile avx512_bf16\n")
    assert cpu_bf16_flags(str(info)) == ("avx512_bf16", "amx_bf16")
    assert cpu_model(str(info)) == "Some Xeon"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_bf16_flags(str(info)) == ()
    assert cpu_model(str(info)) == (platform.processor() or platform.machine() or "unknown CPU")
    assert cpu_bf16_flags(str(tmp_path / "missing")) == ()


def test_cifar10_fast_benchmark_picks_the_bf16_preset_where_bf16_units_make_it_fit(monkeypatch):
    from conftest import load_script

    from fmkeras.training import precision

    bench = load_script("benchmarks", "cifar10_fast.py")
    calls = []

    def estimate(seconds):
        return lambda: calls.append(seconds) or seconds

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    preset, reason = bench.choose_preset("auto", estimate(700.0), budget_s=900.0)
    assert preset == "cifar10_fast_bf16"
    assert reason.startswith("CPU bfloat16 units: AMX_BF16")
    assert "estimated at 11.7 min (12.8 with a 10% margin) for a 15-min budget" in reason
    # Within the budget but not with the margin (the real fit runs a few percent longer).
    preset, reason = bench.choose_preset("auto", estimate(850.0), budget_s=900.0)
    assert preset == "cifar10_fast" and "too slow" in reason
    # bf16 units that do not make it fast enough (AVX512_BF16 without AMX): half width.
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    preset, reason = bench.choose_preset("auto", estimate(1400.0), budget_s=900.0)
    assert preset == "cifar10_fast" and "AVX512_BF16" in reason and "too slow" in reason
    assert bench.choose_preset("auto", estimate(1400.0), budget_s=1800.0)[0] == "cifar10_fast_bf16"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    preset, reason = bench.choose_preset("auto", estimate(1.0))
    assert preset == "cifar10_fast" and "no bfloat16 units" in reason
    assert bench.choose_preset("cifar10_fast_bf16") == ("cifar10_fast_bf16", "asked for")
    assert calls == [700.0, 850.0, 1400.0, 1400.0]  # measured only on a CPU with bf16 units


def test_cifar10_fast_benchmark_estimates_training_time_from_timed_steps(monkeypatch):
    from conftest import load_script

    from fmkeras.train import load_task_config
    from fmkeras.training import distribute

    bench = load_script("benchmarks", "cifar10_fast.py")
    _, config = load_task_config(task.TASK, "cifar10_fast_bf16",
                                 ["data.batch_size=4", "model.filters=[4,8,8]"])
    seen = {}

    def timed(builder, batch, steps):
        model = builder()
        seen.update(policy=model.dtype_policy.name, shape=batch[0].shape, steps=steps,
                    widths=[layer.filters for layer in model.layers
                            if isinstance(layer, keras.layers.Conv2D)][::2])
        return 0.5

    monkeypatch.setattr(distribute, "seconds_per_step", timed)
    # 13 epochs of ceil(12 / 4) = 3 steps (13 images less the 10% held out, not ceil(13 / 4)),
    # half a second each.
    assert bench.estimated_training_seconds(config, images=13, steps=2) == 13 * 3 * 0.5
    assert seen == dict(policy="mixed_bfloat16", shape=(4, 32, 32, 3), steps=2, widths=[4, 8, 8])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_cifar10_fast_benchmark_rejects_a_bad_override_before_extracting(tmp_path, capsys):
    from conftest import load_script

    bench = load_script("benchmarks", "cifar10_fast.py")
    archive = tmp_path / "cifar.tar.gz"
    archive.write_bytes(b"not read")
    code = bench.main(["--archive", str(archive), "--run-dir", str(tmp_path / "run"),
                       "--set", "model.filterz=[8]"])
    assert code == 2
    assert "filterz" in capsys.readouterr().err
