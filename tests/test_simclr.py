"""SimCLR: the NT-Xent loss, learning, serialization, and the pretrain -> fine-tune chain."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, replicas_env, write_image_folder

from fmkeras import config as config_lib
from fmkeras import train as cli
from fmkeras.errors import ConfigError
from fmkeras.models.simclr import SimCLR, nt_xent_loss
from fmkeras.tasks import fine_tune
from fmkeras.tasks import pretrain_simclr as task


def tiny_encoder():
    return keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
    ], name="tiny_encoder")


def test_nt_xent_rewards_matching_views():
    rng = np.random.default_rng(0)
    z = tf.constant(rng.normal(size=(8, 16)), tf.float32)
    matched = float(nt_xent_loss(z, z, temperature=0.1))
    shuffled = float(nt_xent_loss(z, tf.roll(z, 1, axis=0), temperature=0.1))
    assert matched < shuffled
    uniform = float(nt_xent_loss(tf.ones((4, 3)), tf.ones((4, 3)), temperature=1.0))
    np.testing.assert_allclose(uniform, np.log(7), rtol=1e-5)  # 2N-1 equally likely views


def test_a_few_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    model = SimCLR(tiny_encoder(), projection_dim=8, hidden_dim=16, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    # Flat colours: what identifies an image survives the crops, shifts and brightness.
    colors = np.random.default_rng(0).uniform(30, 220, (16, 1, 1, 3))
    images = np.broadcast_to(colors, (16, 16, 16, 3)).astype("float32")
    losses = model.fit(images, batch_size=8, epochs=8, verbose=0, shuffle=False).history["loss"]
    assert np.mean(losses[-2:]) < 0.7 * losses[0]


def test_compiles_without_xla_which_cannot_resample_the_views():
    # jit_compile "auto" means XLA on a GPU, and XLA has no ImageProjectiveTransformV3:
    # the first step failed with "Detected unsupported operations".
    model = SimCLR(tiny_encoder(), projection_dim=8, hidden_dim=16, seed=3)
    with pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):
        model.compile(optimizer="adam", jit_compile=True)
    assert model.jit_compile is False
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    assert np.isfinite(model.fit(images, batch_size=4, verbose=0).history["loss"][0])


def test_a_single_image_batch_has_no_negatives_and_no_weight():
    from fmkeras.data import Augmentation

    # No augmentation: both views are the image itself, so the loss is deterministic.
    model = SimCLR(tiny_encoder(), projection_dim=8, hidden_dim=16, seed=0,
                   augmentation=Augmentation())
    model.compile(optimizer="sgd", jit_compile=False)
    images = np.random.default_rng(2).uniform(0, 255, (5, 16, 16, 3)).astype("float32")
    first_four = model.evaluate(images[:4], batch_size=4, verbose=0)
    assert first_four > 0.0
    # Batches of 4 and 1: the single image (loss 0, no negatives) does not count.
    np.testing.assert_allclose(model.evaluate(images, batch_size=4, verbose=0), first_four,
                               rtol=1e-5)
    # In training too: a batch of one moves nothing (its gradient is zero).
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images[:1], batch_size=1, epochs=1, verbose=0).history
    assert history["loss"] == [0.0]
    for a, b in zip(before, model.trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())


# Nine images in global batches of 8 on two replicas: the last batch gives one replica
# a single image and the other none. The empty share once failed twice over: its batch
# norm's statistics were NaN (NaN weights after the step), and on Intel CPUs with
# AVX-512 TensorFlow's oneDNN convolution returned the empty input unchanged, so the
# projection head got 3 channels instead of 4 ("Matrix size-incompatible").
MIRRORED_REMAINDER = textwrap.dedent("""
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    from fmkeras.models.simclr import SimCLR
    from fmkeras.training import distribute

    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        encoder = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3),
                                   keras.layers.BatchNormalization()])
        model = SimCLR(encoder, projection_dim=4, hidden_dim=8, seed=0)
        model.compile(optimizer="adam")
    images = np.random.default_rng(0).uniform(0, 255, (9, 16, 16, 3)).astype("float32")
    history = model.fit(tf.data.Dataset.from_tensor_slices(images).batch(8), epochs=2,
                        verbose=0, shuffle=False).history
    evaluated = model.evaluate(tf.data.Dataset.from_tensor_slices(images).batch(8), verbose=0)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history["loss"],
                      "evaluated": evaluated,
                      "finite": all(np.isfinite(w).all() for w in model.get_weights())}))
""")


def test_a_replica_with_one_image_or_none_under_mirrored_strategy():
    env = replicas_env(FMKERAS_CPU_REPLICAS="2", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_REMAINDER], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]  # was: "Must have at least one class"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["finite"]
    assert all(np.isfinite(report["loss"])) and min(report["loss"]) > 0
    assert np.isfinite(report["evaluated"]) and report["evaluated"] > 0


def test_round_trips_through_a_keras_file(tmp_path):
    model = SimCLR(tiny_encoder(), projection_dim=8, hidden_dim=16, temperature=0.5, seed=1)
    images = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, SimCLR) and reloaded.temperature == 0.5
    assert reloaded.augmentation == model.augmentation
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    # A quantized copy's projection head comes back quantized (it failed to load).
    from fmkeras.training.compression import quantize

    small = quantize(model)
    small.save(str(tmp_path / "int8.keras"))
    again = keras.saving.load_model(str(tmp_path / "int8.keras"))
    assert again.projection.get_layer("projection_hidden").quantization_mode == "int8"
    np.testing.assert_allclose(again.predict(images, verbose=0),
                               small.predict(images, verbose=0), atol=1e-6)


def test_rejects_bad_temperature():
    with pytest.raises(ValueError, match="Received: temperature=0"):
        SimCLR(tiny_encoder(), temperature=0)
    with pytest.raises(ValueError, match="Received: encoder of type str"):
        SimCLR("simple_cnn")


def test_pretrain_then_fine_tune_from_the_encoder(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=8, size=(16, 16))
    run_dir = str(tmp_path / "simclr")
    small = ["data.image_size=16", "data.color_mode=grayscale", "model.backbone=cifar_resnet8",
             "model.alpha=null"]
    config = config_lib.load_config(task.PretrainSimCLRConfig, "digits_simclr", [
        f"data.path={data}", f"run_dir={run_dir}", "data.batch_size=4", "train.epochs=1",
        "model.projection_dim=8", "model.hidden_dim=16", "train.verbose=0", *small])
    result = task.run(config)
    metrics = json.loads(pathlib.Path(run_dir, "metrics.json").read_text())
    assert np.isfinite(metrics["final_loss"]) and np.isfinite(metrics["final_val_loss"])
    encoder_path = os.path.join(run_dir, "encoder.keras")
    assert metrics["encoder_path"] == encoder_path and os.path.exists(encoder_path)
    assert os.path.exists(os.path.join(run_dir, "history.csv"))

    tuned = fine_tune.run(config_lib.load_config(fine_tune.FineTuneConfig, "digits_finetune", [
        f"data.path={data}", f"run_dir={tmp_path / 'tuned'}", "data.batch_size=4",
        f"model.encoder_path={encoder_path}", "train.head_epochs=1", "train.epochs=0",
        "export.enabled=false", "train.verbose=0", *small]))
    trained = result.model.encoder.get_layer("stem_conv").get_weights()[0]
    loaded = tuned.model.get_layer("cifar_resnet8").get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(loaded, trained)


def test_without_validation_there_is_no_validation_loss(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=4, size=(16, 16))
    (tmp_path / "imgs" / "b" / "empty.png").write_bytes(b"")  # skipped, and reported
    run_dir = tmp_path / "simclr"
    # Eight images in batches of 7: the last batch, a single image, has no negatives
    # and is left out rather than stepping the optimizer on a zero gradient.
    config = config_lib.load_config(task.PretrainSimCLRConfig, "digits_simclr", [
        f"data.path={data}", f"run_dir={run_dir}", "data.batch_size=7", "train.epochs=1",
        "data.validation_split=0", "model.projection_dim=8", "model.hidden_dim=16",
        "data.max_bad_fraction=0.2", "train.verbose=0"])
    with pytest.warns(UserWarning, match="empty.png: empty file"):
        result = task.run(config)
    assert int(result.model.optimizer.iterations) == 1
    text = (run_dir / "metrics.json").read_text()
    metrics = json.loads(text)
    assert "NaN" not in text and "final_val_loss" not in metrics
    assert metrics["data_skipped_files"] == 1
    assert "b/empty.png" in (run_dir / "report.md").read_text(encoding="utf-8")


def test_config_errors_and_cli_entry(tmp_path):
    config = config_lib.load_config(task.PretrainSimCLRConfig, None, ["model.temperature=0"])
    with pytest.raises(ConfigError, match="Expected model.temperature > 0"):
        task.run(config)
    module, config = cli.load_task_config("pretrain-simclr")
    assert module is task and config.model.views.zoom_range == [0.6, 1.0]
