"""Image-generation task: a tiny end-to-end run, the generator export, CLI bad inputs."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_image_folder
from test_cli import assert_one_line_error, run_main

from fmkeras import export as export_lib
from fmkeras.errors import ConfigError, DataError
from fmkeras.models import dcgan_generator
from fmkeras.tasks import image_generation


def tiny_config(data_path, run_dir, **data):
    config = image_generation.ImageGenerationConfig()
    config.data.path = data_path
    config.data.batch_size = 8
    for key, value in data.items():
        setattr(config.data, key, value)
    config.model.latent_dim = 8
    config.model.base_filters = 8
    config.train.epochs = 1
    config.train.verbose = 0
    config.evaluation.classifier_epochs = 1
    config.evaluation.num_samples = 8
    config.run_dir = str(run_dir)
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = write_image_folder(root / "data", classes=("a", "b", "c"), per_class=8,
                              size=(16, 16), mode="L")
    (root / "data" / "c" / "empty.png").write_bytes(b"")  # 1 of 25: skipped, and reported
    with pytest.warns(UserWarning, match="empty.png: empty file"):
        result = image_generation.run(tiny_config(data, root / "run"))
    return result


def test_run_writes_samples_checkpoints_metrics_and_report(tiny_run):
    run_dir = tiny_run.run_dir
    for name in ("config.yaml", "history.csv", "report.md", "plots/samples_epoch_001.png",
                 "plots/progress.png", "checkpoints/generator.keras",
                 "checkpoints/discriminator.keras", "checkpoints/fid_classifier.keras"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    for key in ("fid", "kid", "inception_score"):
        assert np.isfinite(metrics[key]), key
    assert metrics["fid"] >= 0.0 and 1.0 <= metrics["inception_score"] <= 3.0
    assert metrics["fid_extractor"] == "classifier:fid_classifier"
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "plots/samples_epoch_001.png" in report and "| fid |" in report
    assert metrics["data_skipped_files"] == 1
    assert "## Data problems" in report and "c/empty.png" in report


def test_export_round_trip_uint8_and_seeded_sample(tiny_run):
    path = tiny_run.export_path
    assert path.endswith(os.path.join("export", "image_generator", "1"))
    loaded = tf.saved_model.load(path)
    latents = np.random.default_rng(0).standard_normal((2, 8)).astype("float32")
    images = loaded.signatures["serving_default"](latents=tf.constant(latents))["images"]
    assert images.dtype == tf.uint8 and images.shape == (2, 16, 16, 1)
    expected = np.round((tiny_run.model.generator(latents).numpy() + 1.0) * 127.5)
    assert np.max(np.abs(images.numpy().astype(int) - expected)) <= 1
    sample = loaded.signatures["sample"]
    first = sample(batch_size=tf.constant(3), seed=tf.constant(5))["images"].numpy()
    again = sample(batch_size=tf.constant(3), seed=tf.constant(5))["images"].numpy()
    other = sample(batch_size=tf.constant(3), seed=tf.constant(6))["images"].numpy()
    assert first.shape == (3, 16, 16, 1) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_conditional_generator_export_is_checked(tmp_path):
    generator = dcgan_generator(4, (16, 16, 3), base_filters=4, num_classes=3)
    path = export_lib.export_generator(generator, str(tmp_path), "cond", check=True)
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["sample"](batch_size=tf.constant(4), seed=tf.constant(1))
    assert out["images"].shape == (4, 16, 16, 3) and out["labels"].dtype == tf.int32
    served = loaded.signatures["serving_default"](
        latents=tf.zeros((2, 4)), labels=tf.constant([0, 2], tf.int32))
    assert served["images"].dtype == tf.uint8
    # A label outside the table, or a negative batch size, is refused in the graph (on a GPU
    # an unchecked gather returns zeros instead of failing).
    for labels in ([0, 3], [-1, 0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"Expected labels \[0, 3\)"):
            loaded.signatures["serving_default"](latents=tf.zeros((2, 4)),
                                                 labels=tf.constant(labels, tf.int32))
    for batch_size in (-2, export_lib.MAX_SAMPLE_BATCH + 1):  # one request is one batch
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"Expected batch_size \[0, "):
            loaded.signatures["sample"](batch_size=tf.constant(batch_size), seed=tf.constant(1))
    # NaN latents would come back as black images: refused.
    for bad in (np.nan, np.inf):
        with pytest.raises(tf.errors.InvalidArgumentError, match="Expected finite latents"):
            loaded.signatures["serving_default"](latents=tf.constant([[bad, 0, 0, 0]]),
                                                 labels=tf.constant([0], tf.int32))


def test_a_gan_exports_its_generator_and_other_models_are_named(tmp_path):
    from fmkeras.errors import FmkerasError
    from fmkeras.models import GAN, dcgan_discriminator

    generator = dcgan_generator(4, (16, 16, 1), base_filters=4)
    gan = GAN(generator, dcgan_discriminator((16, 16, 1), base_filters=4))
    path = export_lib.export_generator(gan, str(tmp_path), "gan", check=False)
    served = tf.saved_model.load(path).signatures["serving_default"](latents=tf.zeros((2, 4)))
    assert served["images"].shape == (2, 16, 16, 1)
    with pytest.raises(FmkerasError, match="Expected a functional keras.Model generator, or a "
                                           "GAN. Received: str"):
        export_lib.export_generator("generator.keras", str(tmp_path), "bad")


def test_bad_config_values_raise_clear_errors(tmp_path):
    config = tiny_config(str(tmp_path / "missing"), tmp_path / "run")
    with pytest.raises(DataError, match="not found.*missing"):
        image_generation.run(config)
    config.data.image_size = 20
    with pytest.raises(ConfigError, match=r"Expected one of \[16, 28, 32, 64\]. Received: 20"):
        image_generation.run(config)


def test_cli_missing_data_dir(capsys, tmp_path):
    code, _, err = run_main(capsys, "image-generation", "--set", "data.path=/no/such/folder",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not found", "/no/such/folder")


def test_cli_unsupported_image_size(capsys, tmp_path):
    code, _, err = run_main(capsys, "image-generation", "--set", "data.image_size=48",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "data.image_size", "Received: 48")


def test_cli_wrong_types(capsys, tmp_path):
    code, _, err = run_main(capsys, "image-generation", "--set", "model.latent_dim=big")
    assert_one_line_error(code, err, "model.latent_dim", "int", "'big'")
    code, _, err = run_main(capsys, "image-generation", "--set", "data.conditional=maybe")
    assert_one_line_error(code, err, "data.conditional", "bool")


def test_cli_unknown_extractor(capsys, tmp_path):
    code, _, err = run_main(capsys, "image-generation", "--set", "evaluation.extractor=vgg",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "evaluation.extractor", "'vgg'")


def test_offline_inception_fid_fails_before_training(capsys, tmp_path, offline_keras):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4, size=(16, 16))
    run_dir = tmp_path / "r"
    code, _, err = run_main(capsys, "image-generation", "--set", f"data.path={data}",
                            "--set", "evaluation.extractor=inception",
                            "--run-dir", str(run_dir))
    assert_one_line_error(code, err, "Cannot download the ImageNet weights of InceptionV3",
                          "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                          "evaluation.inception_weights")
    assert not (run_dir / "history.csv").exists()  # stopped before the first epoch


def test_too_few_held_out_images_fail_before_training(capsys, tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("x",), per_class=3, size=(16, 16))
    run_dir = tmp_path / "r"
    code, _, err = run_main(capsys, "image-generation", "--set", f"data.path={data}",
                            "--run-dir", str(run_dir))
    assert_one_line_error(code, err, "at least 2 held-out images", "Received: 1 held out of 3",
                          "data.test_split=0.2")
    assert not (run_dir / "history.csv").exists()


def test_flat_folder_is_one_unlabelled_class(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=("a",), per_class=10, size=(16, 16))
    flat = tmp_path / "flat"
    os.rename(os.path.join(root, "a"), flat)
    data = image_generation.GenerationDataConfig(path=str(flat))
    train, test = image_generation.load_splits(data, seed=0)
    assert train.class_names == ["all"] and len(train) + len(test) == 10
    config = tiny_config(str(flat), tmp_path / "run", conditional=True)
    with pytest.raises(ConfigError, match="needs 2\\+ class folders"):
        image_generation.run(config)
