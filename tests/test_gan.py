"""GAN training through model.fit, mixed precision, distribution, saving, callbacks."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import replicas_env
from PIL import Image

from fmkeras.errors import FmkerasError
from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
from fmkeras.models.gan import GAN
from fmkeras.training.callbacks import NonFiniteLossError
from fmkeras.training.gan_callbacks import (
    DiscriminatorSaturatedError,
    GANCheckpoint,
    GANGuard,
    SampleGrid,
    images_to_grid,
    mean_pairwise_distance,
)

LATENT = 8
SHAPE = (16, 16, 1)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_gan(num_classes=None, seed=1, **compile_kwargs):
    gan = GAN(
        dcgan_generator(LATENT, SHAPE, base_filters=8, num_classes=num_classes),
        dcgan_discriminator(SHAPE, base_filters=8, num_classes=num_classes),
        seed=seed,
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
        g_optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5),
        **compile_kwargs,
    )
    return gan


def images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)).astype("float32")


def snapshot(model):
    return [w.numpy().copy() for w in model.trainable_weights]


def changed(before, model):
    return [not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights)]


@pytest.fixture
def mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def test_fit_updates_both_networks_and_reports_metrics():
    gan = make_gan(label_smoothing=0.1, instance_noise=0.05)
    gen_before, disc_before = snapshot(gan.generator), snapshot(gan.discriminator)
    history = gan.fit(images(), batch_size=4, epochs=1, verbose=0)
    assert sorted(history.history) == ["d_fake", "d_loss", "d_real", "g_loss"]
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert all(0.0 < history.history[k][-1] < 1.0 for k in ("d_real", "d_fake"))
    assert all(changed(gen_before, gan.generator))
    assert all(changed(disc_before, gan.discriminator))
    assert int(gan.d_optimizer.iterations) == int(gan.g_optimizer.iterations) == 2
    logs = gan.evaluate(images(4, seed=1), batch_size=4, verbose=0, return_dict=True)
    assert sorted(logs) == ["d_fake", "d_loss", "d_real", "g_loss"]


def test_conditional_gan_trains_on_image_label_dataset():
    gan = make_gan(num_classes=3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    data = tf.data.Dataset.from_tensor_slices((images(), labels)).batch(4)
    before = snapshot(gan)
    history = gan.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["g_loss"][-1])
    assert all(changed(before, gan))
    generated = gan([np.zeros((2, LATENT), "float32"), np.array([[0], [2]], "int32")])
    assert tuple(generated.shape) == (2, *SHAPE)
    latents = np.random.default_rng(0).normal(size=(5, LATENT)).astype("float32")
    flat = gan.predict([latents, np.array([0, 1, 2, 0, 1])], verbose=0)  # 1-D labels, as fit
    np.testing.assert_allclose(flat, gan.predict([latents, np.array([[0], [1], [2], [0], [1]])],
                                                 verbose=0), atol=1e-6)
    with pytest.raises(FmkerasError, match="labels"):
        gan.fit(images(), batch_size=4, epochs=1, verbose=0)


def test_call_generates_images_from_latents():
    gan = make_gan()
    out = keras.ops.convert_to_numpy(gan(np.zeros((3, LATENT), "float32")))
    assert out.shape == (3, *SHAPE) and np.abs(out).max() <= 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"instance_noise": -0.1}, "instance_noise"),
        ({"loss": "mse"}, "loss"),
    ],
)
def test_compile_rejects_bad_arguments(kwargs, match):
    with pytest.raises(FmkerasError, match=match):
        make_gan(**kwargs)


def test_one_optimizer_for_both_networks_is_rejected():
    gan = GAN(dcgan_generator(LATENT, SHAPE, 8), dcgan_discriminator(SHAPE, 8))
    adam = keras.optimizers.Adam()
    with pytest.raises(FmkerasError, match="two different optimizer"):
        gan.compile(d_optimizer=adam, g_optimizer=adam)


def test_mismatched_networks_are_rejected():
    with pytest.raises(FmkerasError, match="Received: 2 generator and 1 discriminator"):
        GAN(dcgan_generator(LATENT, SHAPE, 8, num_classes=3), dcgan_discriminator(SHAPE, 8))


def test_generator_and_discriminator_of_other_shapes_are_rejected():
    with pytest.raises(FmkerasError, match=r"generator output \(16, 16, 1\), "
                                           r"discriminator input \(32, 32, 3\)"):
        GAN(dcgan_generator(LATENT, (16, 16, 1), 8), dcgan_discriminator((32, 32, 3), 8))
    with pytest.raises(ValueError, match="Expected `discriminator` to be a keras.Model"):
        GAN(dcgan_generator(LATENT, SHAPE, 8), "discriminator")


def test_mixed_precision_wraps_both_optimizers_and_skips_overflow_steps(mixed_precision):
    gan = make_gan()
    assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert gan.generator.get_layer("up1_conv").compute_dtype == "float16"
    history = gan.fit(images(), batch_size=4, epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())

    # An inf pixel gives the discriminator non-finite gradients: neither
    # network may move, the discriminator's loss scale halves, the
    # generator's stays.
    d_scale, g_scale = float(gan.d_optimizer.dynamic_scale), float(gan.g_optimizer.dynamic_scale)
    before = snapshot(gan)
    bad = images(4)
    bad[0, 0, 0, 0] = np.inf
    gan.fit(bad, batch_size=4, epochs=1, verbose=0)
    assert not any(changed(before, gan))
    assert float(gan.d_optimizer.dynamic_scale) == d_scale / 2
    assert float(gan.g_optimizer.dynamic_scale) == g_scale


def test_keras_file_round_trip(tmp_path):
    gan = make_gan(num_classes=3, label_smoothing=0.2)
    labels = np.array([0, 1, 2, 0])
    gan.fit(images(4), labels, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "gan.keras")
    gan.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, GAN) and loaded.conditional and loaded.seed == 1
    assert loaded.label_smoothing == 0.2
    assert int(loaded.d_optimizer.iterations) == 1
    latents = np.random.default_rng(0).normal(size=(2, LATENT)).astype("float32")
    inputs = [latents, np.array([[1], [2]], "int32")]
    np.testing.assert_allclose(loaded(inputs), gan(inputs), atol=1e-6)
    history = loaded.fit(images(4), labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["d_loss"][-1])


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
    from fmkeras.models.gan import GAN
    from fmkeras.training.distribute import prepare_model

    def build(strategy, optimizer=keras.optimizers.Adam):
        with strategy.scope():
            gan = GAN(dcgan_generator(8, (16, 16, 1), base_filters=8),
                      dcgan_discriminator((16, 16, 1), base_filters=8, dropout=0.0), seed=1)
            gan.compile(d_optimizer=optimizer(1e-2), g_optimizer=optimizer(1e-2))
        return gan

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 1)).astype("float32")
    gan = build(strategy)
    before = [w.numpy().copy() for w in gan.trainable_weights]
    history = gan.fit(x, batch_size=8, epochs=1, verbose=0).history
    moved = [not np.array_equal(a, w.numpy()) for a, w in zip(before, gan.trainable_weights)]

    # Losses are divided by the global batch: one SGD step on 2 replicas
    # moves the discriminator as one step on one device. A zero output kernel
    # makes the fakes independent of the (per-replica) latents.
    def gap_after_one_step(count):
        single = build(tf.distribute.get_strategy(), keras.optimizers.SGD)
        mirrored = build(strategy, keras.optimizers.SGD)
        for model in (single, mirrored):  # builds the optimizers; with 7 images the
            prepare_model(model)  # mirrored fit's first batch splits 4 / 3 (Keras'
            model.fit(x[:count], batch_size=8, epochs=1, verbose=0)  # own build fails)
        single.generator.get_layer("to_image").kernel.assign(
            np.zeros(single.generator.get_layer("to_image").kernel.shape, "float32"))
        mirrored.set_weights(single.get_weights())
        batch = tf.data.Dataset.from_tensor_slices(x[:count]).batch(count)
        single.train_step(next(iter(batch)))
        shares = next(iter(strategy.experimental_distribute_dataset(batch)))
        strategy.run(mirrored.train_step, args=(shares,))
        return max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in
                   zip(single.discriminator.weights, mirrored.discriminator.weights))

    gap = gap_after_one_step(8)
    # Replicas of 4 and 3 images: each divides by the 7 of the step, not its count times 2.
    uneven_gap = gap_after_one_step(7)
    # One image: the second replica's share is empty; it runs one blank image of weight 0.
    empty_gap = gap_after_one_step(1)
    # Nine images in batches of 8: each epoch ends with an empty share. Batch norm's
    # statistics of no images were NaN, and the second epoch's losses and weights too.
    nine = build(strategy)
    nine_history = nine.fit(x[:9], batch_size=8, epochs=2, verbose=0).history
    nine_finite = bool(all(np.isfinite(v).all() for v in nine_history.values())
                       and all(np.isfinite(w).all() for w in nine.get_weights()))

    # Mixed precision: an overflow on the second replica only must skip the
    # step for both networks on both replicas.
    keras.config.set_dtype_policy("mixed_float16")
    mixed = build(strategy)
    before = [w.numpy().copy() for w in mixed.trainable_weights]
    bad = x[:8].copy()
    bad[7, 0, 0, 0] = np.inf
    mixed.fit(bad, batch_size=8, epochs=1, verbose=0)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "finite": bool(all(np.isfinite(v[-1]) for v in history.values())),
        "all_moved": bool(all(moved)),
        "single_vs_mirrored_gap": gap,
        "uneven_gap": uneven_gap,
        "empty_gap": empty_gap,
        "nine_finite": nine_finite,
        "skipped": not any(not np.array_equal(a, w.numpy())
                           for a, w in zip(before, mixed.trainable_weights)),
        "scales": [float(mixed.d_optimizer.dynamic_scale.numpy()),
                   float(mixed.g_optimizer.dynamic_scale.numpy())],
    }))
    """
)


def test_trains_under_mirrored_strategy_on_two_logical_cpus():
    # Logical devices must be configured before TensorFlow initialises them,
    # which this process already did: run in a fresh interpreter.
    env = replicas_env(TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["finite"] and report["all_moved"] and report["skipped"]
    assert report["single_vs_mirrored_gap"] < 1e-5 and report["uneven_gap"] < 1e-5
    assert report["empty_gap"] < 1e-5 and report["nine_finite"]
    d_scale, g_scale = report["scales"]
    assert d_scale == g_scale / 2  # only the discriminator overflowed


def test_sample_grid_and_checkpoint_write_files(tmp_path):
    gan = make_gan()
    plots, checkpoints = tmp_path / "plots", tmp_path / "checkpoints"
    callbacks = [SampleGrid(str(plots), num_samples=4), GANCheckpoint(str(checkpoints))]
    gan.fit(images(4), batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    for name in ("samples_epoch_001.png", "samples_epoch_002.png"):
        with Image.open(plots / name) as grid:
            assert grid.size == (33, 33)  # 2x2 images of 16 px with 1 px padding
    with Image.open(plots / "progress.png") as progress:
        assert progress.size == (4 * 17 - 1, 2 * 17 - 1)  # one row per epoch
    generator = keras.saving.load_model(checkpoints / "generator_epoch_002.keras")
    np.testing.assert_allclose(
        generator(np.ones((1, LATENT), "float32")), gan(np.ones((1, LATENT), "float32")), atol=1e-6
    )
    assert (checkpoints / "discriminator_epoch_001.keras").is_file()


def test_guard_stops_on_nan_loss():
    gan = make_gan()
    data = images(8)
    data[:] = np.nan
    guard = GANGuard(collapse_threshold=0)
    history = gan.fit(data, batch_size=4, epochs=3, verbose=0, callbacks=[guard])
    assert gan.stop_training
    assert "d_loss became nan" in guard.stop_reason
    assert len(history.history["d_loss"]) == 1

    with pytest.raises(NonFiniteLossError, match="diverged"):
        gan.fit(data, batch_size=4, epochs=1, verbose=0, callbacks=[GANGuard(raise_on_stop=True)])


def test_guard_stops_when_discriminator_saturates():
    guard = GANGuard(patience=3)
    guard.set_model(make_gan())
    guard.on_train_begin()
    won = {"d_loss": 0.5, "g_loss": 6.0, "d_real": 0.999, "d_fake": 0.001}
    for batch in range(2):
        guard.on_train_batch_end(batch, won)
    guard.on_train_batch_end(2, {**won, "d_fake": 0.3})  # resets the count
    assert guard.stop_reason is None
    for batch in range(3, 6):
        guard.on_train_batch_end(batch, won)
    assert guard.model.stop_training
    assert "saturated for 3 consecutive batches" in guard.stop_reason

    strict = GANGuard(patience=1, raise_on_stop=True)
    strict.set_model(guard.model)
    with pytest.raises(DiscriminatorSaturatedError, match="saturated"):
        strict.on_train_batch_end(0, {**won, "d_loss": 1e-5})


def test_guard_warns_on_collapsed_samples():
    gan = make_gan()
    guard = GANGuard(collapse_threshold=0.01)
    guard.set_model(gan)
    guard.on_epoch_end(0)  # a random generator gives varied samples: no warning
    assert guard.last_sample_distance > 0.01
    to_image = gan.generator.get_layer("to_image")
    to_image.kernel.assign(np.zeros(to_image.kernel.shape, "float32"))
    with pytest.warns(RuntimeWarning, match="nearly identical"):
        guard.on_epoch_end(1)
    assert guard.last_sample_distance < 1e-6


def test_grid_and_distance_helpers():
    grid = images_to_grid(-np.ones((5, 4, 4, 3)), columns=3, padding=1)
    assert grid.shape == (9, 14, 3) and grid.dtype == np.uint8
    assert mean_pairwise_distance(np.stack([np.zeros((2, 2)), np.ones((2, 2))])) == 1.0
    with pytest.raises(FmkerasError, match="Received: shape"):
        images_to_grid(np.zeros((2, 4, 4)))


def test_callbacks_and_fit_name_arguments_that_would_fail_later(tmp_path):
    with pytest.raises(FmkerasError, match="one label per sample \\(4\\). Received: 2 labels"):
        SampleGrid(str(tmp_path), num_samples=4, labels=[0, 1])
    with pytest.raises(FmkerasError, match=r"num_samples to be an integer >= 2. Received: "
                                           r"num_samples=1"):
        GANGuard(num_samples=1)  # crashed at the end of the first epoch
    gan = make_gan(num_classes=3)
    grid = SampleGrid(str(tmp_path), num_samples=2, labels=[0, 3])
    grid.set_model(gan)
    with pytest.raises(FmkerasError, match=r"sample labels in \[0, 3\). Received: \[0, 3\]"):
        grid.on_epoch_end(0)
    with pytest.raises(FmkerasError, match="Expected no sample_weight"):  # was ignored
        gan.fit(images(), np.zeros(8, "int32"), sample_weight=np.ones(8), batch_size=4,
                epochs=1, verbose=0)
