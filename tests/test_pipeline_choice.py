"""Augmentation in the tf.data path and in the model, and the task's pipeline choice."""

import os

import numpy as np
import pytest
from conftest import write_image_folder

from fmkeras import config as config_lib
from fmkeras.data import Augmentation, image_dataset
from fmkeras.errors import ConfigError
from fmkeras.models import mlp
from fmkeras.models.augmentation import augmentation_layers, with_augmentation
from fmkeras.tasks import image_classification as task


def epoch(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


def test_tfdata_augmentation_is_seeded_per_epoch(image_folder):
    aug = Augmentation(rotation_range=30, zoom_range=0.2, horizontal_flip=True)
    make = lambda: image_dataset(image_folder, 12, batch_size=4, augment=aug, seed=5)  # noqa
    ds = make()
    first, second = epoch(ds), epoch(ds)
    assert not np.allclose(first, second)  # a new epoch, new transforms
    np.testing.assert_array_equal(epoch(make()), first)  # same seed, same first epoch
    plain = epoch(image_dataset(image_folder, 12, batch_size=4))
    assert not np.allclose(first, plain)
    assert first.min() >= 0.0 and first.max() <= 1.0  # rescaled after augmentation


def test_repeated_pipeline_gives_the_same_epochs_and_fit_the_same_weights(image_folder):
    """repeat=True keeps one iterator: its passes must be the epochs a fresh pass gives."""
    import keras

    from fmkeras.data.images import EpochCounter

    aug = Augmentation(width_shift_range=2, horizontal_flip=True)
    settings = dict(image_size=12, batch_size=3, augment=aug, seed=5, shuffle=True,
                    label_mode="categorical")
    once = image_dataset(image_folder, **settings)
    passes = [epoch(once) for _ in range(3)]  # a fresh counter: epochs 0, 1, 2
    repeated = image_dataset(image_folder, repeat=True, **settings)
    steps = -(-len(passes[0]) // 3)
    stream = np.concatenate([x.numpy() for x, _ in repeated.take(3 * steps)])
    np.testing.assert_array_equal(stream, np.concatenate(passes))

    def train(repeat, initial_epoch=0):
        keras.utils.set_random_seed(0)
        counter = EpochCounter()
        ds = image_dataset(image_folder, repeat=repeat, epoch_counter=counter, **settings)
        model = mlp((12, 12, 3), (8,), 2)
        model.compile("sgd", "categorical_crossentropy")
        model.fit(ds, epochs=initial_epoch + 3, initial_epoch=initial_epoch, verbose=0,
                  steps_per_epoch=steps if repeat else None, callbacks=[counter.callback()],
                  shuffle=False)
        return model.get_weights()

    # The callback sets the counter once: prefetching runs ahead into the next epoch.
    for a, b in zip(train(False, 2), train(True, 2)):
        np.testing.assert_array_equal(a, b)


def test_augmentation_layers_train_only():
    aug = Augmentation(rotation_range=40, width_shift_range=0.2, shear_range=10,
                       zoom_range=0.2, horizontal_flip=True, brightness_range=(0.8, 1.2))
    block = augmentation_layers(aug, seed=1)
    assert [layer.name for layer in block.layers] == [
        "random_flip", "random_rotation", "random_translation", "random_shear", "random_zoom",
        "random_brightness"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(block(x, training=False)), x)
    assert not np.allclose(np.asarray(block(x, training=True)), x)


def test_in_model_augmentation_rejects_what_layers_cannot_do():
    with pytest.raises(ValueError, match="channel_shift_range"):
        augmentation_layers(Augmentation(channel_shift_range=10))
    wrapped = with_augmentation(mlp((8, 8, 1), (4,), 2), Augmentation(), rescale=0.5)
    assert wrapped.output_shape == (None, 2)


def split_folder(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root / "train", classes=("a", "b", "c"), per_class=8)
    write_image_folder(root / "test", classes=("a", "b", "c"), per_class=3, seed=1)
    return str(root)


def config_for(data, run_dir, *overrides):
    base = [f"data.path={data}", f"run_dir={run_dir}", "data.image_size=8",
            "data.color_mode=rgb", "data.batch_size=4", "model.filters=[4]",
            "model.dense_units=8", "train.epochs=1", "train.warmup_epochs=0",
            "train.verbose=0", "data.augment.rotation_range=10", "data.augment.zoom_range=0.1",
            "data.augment.horizontal_flip=true", "data.validation_split=0.25"]
    return config_lib.load_config(task.ImageClassificationConfig, None, base + list(overrides))


@pytest.mark.parametrize("overrides", [
    ("data.pipeline=image_data_generator",),
    ("data.augment.in_model=true",),
    ("data.pipeline=tfdata",),
])
def test_task_runs_with_each_pipeline_and_exports(tmp_path, overrides):
    data = split_folder(tmp_path)
    result = task.run(config_for(data, str(tmp_path / "run"), *overrides))
    assert result.metrics["test_samples"] == 9
    assert result.metrics["train_samples"] == 18  # 24 minus a 25% validation split
    assert os.path.exists(os.path.join(result.export_path, "saved_model.pb"))


def test_generator_pipeline_needs_a_test_folder(tmp_path):
    data = write_image_folder(tmp_path / "flat")
    with pytest.raises(ConfigError, match="needs a folder with train/ and test/"):
        task.run(config_for(data, str(tmp_path / "run"), "data.pipeline=image_data_generator"))


def test_unknown_pipeline(tmp_path):
    with pytest.raises(ConfigError, match="Received: 'keras'"):
        task.run(config_for("data/digits", str(tmp_path / "run"), "data.pipeline=keras"))
