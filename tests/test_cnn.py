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
    assert mlp((8,), 4, 2).count_params() == (8 * 4 + 4) + (4 * 2 + 2)  # one int: one layer
    with pytest.raises(ValueError, match="Received: hidden_units=None"):
        mlp((8,), None, 2)


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
    (lambda: simple_cnn((16, 16, 1), 1), "A softmax over one unit always outputs 1"),
    (lambda: mlp((8,), (4,), 1), "output_activation='sigmoid'"),
])
def test_bad_arguments_name_what_was_received(call, message):
    with pytest.raises(ValueError, match="Received") as info:
        call()
    assert message in str(info.value)


# --- fast_cnn and PatchWhitening ------------------------------------------------------

from fmkeras.models import PatchWhitening, adapt_whitening, fast_cnn  # noqa: E402


def correlated_images(n=256, size=12, seed=0):
    """Smooth, channel-correlated images: their 2x2 patches are far from white."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, size // 2, size // 2, 1))
    grey = np.kron(base, np.ones((1, 2, 2, 1)))
    return (grey * [0.9, 0.5, 0.2] + 0.05 * rng.random((n, size, size, 3))).astype("float32")


def test_fast_cnn_parameter_count_and_layers():
    model = fast_cnn((32, 32, 3), 10, widths=(8, 16, 16))
    # whitening 2x2x3x24 + 24 bias + 24 offset; each block conv(cin->w) + conv(w->w), no bias;
    # each batch norm: beta + moving mean + moving variance (no gamma); head 16 x 10.
    convs = 9 * (24 * 8 + 8 * 8 + 8 * 16 + 16 * 16 + 16 * 16 + 16 * 16)
    norms = 3 * 2 * (8 + 16 + 16)
    assert model.count_params() == 2 * 2 * 3 * 24 + 2 * 24 + convs + norms + 16 * 10
    assert model.output_shape == (None, 10)
    assert [w.name for w in model.get_layer("whitening").trainable_weights] == ["bias"]
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("whitening_activation").activation is keras.activations.relu
    gelu = fast_cnn((32, 32, 3), 10, widths=(8, 16, 16), whitening_activation="gelu")
    assert gelu.get_layer("whitening_activation").activation is keras.activations.gelu
    assert gelu.count_params() == model.count_params()


def test_fast_cnn_identity_init_passes_the_first_channels_through():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    for identity, expect_equal in ((True, True), (False, False)):
        model = fast_cnn((32, 32, 3), 10, widths=(8, 16, 16), identity_init=identity)
        conv = model.get_layer("block2_conv2")  # 16 -> 16 channels
        y = np.asarray(conv(x))
        assert np.allclose(y, x, atol=1e-6) == expect_equal
        first = np.asarray(model.get_layer("block2_conv1")(x[..., :8]))  # 8 -> 16
        assert np.allclose(first[..., :8], x[..., :8], atol=1e-6) == expect_equal
        assert np.std(first[..., 8:]) > 0.01  # the other filters stay random


def test_fast_cnn_rejects_images_too_small_for_its_blocks():
    with pytest.raises(ValueError, match=r"at least 9.*input_shape=\(8, 8, 3\)"):
        fast_cnn((8, 8, 3), 10, widths=(4, 4, 4))
    with pytest.raises(ValueError, match="widths"):
        fast_cnn((32, 32, 3), 10, widths=(4, 0))
    with pytest.raises(ValueError, match=r"input_shape=\(None, 8, 3\)"):
        fast_cnn((None, 8, 3), 10, widths=(4, 4, 4))
    with pytest.raises(ValueError, match="Received: bn_momentum='0.4'"):
        fast_cnn((32, 32, 3), 10, widths=(4,), bn_momentum="0.4")
    with pytest.raises(ValueError, match="Received: logit_scale='0.1'"):
        fast_cnn((32, 32, 3), 10, widths=(4,), logit_scale="0.1")


def test_fast_cnn_takes_any_image_size_when_height_and_width_are_none():
    model = fast_cnn((None, None, 3), 10, widths=(8, 16, 16))
    fixed = fast_cnn((32, 32, 3), 10, widths=(8, 16, 16))
    assert model.count_params() == fixed.count_params()
    fixed.set_weights(model.get_weights())
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0),
                               fixed.predict(images, verbose=0), atol=1e-6)
    assert model.predict(images[:, :24, :20], verbose=0).shape == (2, 10)


def test_resnet_takes_any_image_size_and_simple_cnn_says_why_it_cannot():
    model = resnet((None, None, 3), 4, depth=8, base_filters=4)
    assert model.predict(np.zeros((1, 20, 12, 3), "float32"), verbose=0).shape == (1, 4)
    with pytest.raises(ValueError, match=r"at least 4.*input_shape=\(None, 2, 3\)"):
        resnet((None, 2, 3), 4, depth=8)
    with pytest.raises(ValueError, match=r"flattens.*must be known.*\(None, None, 3\)"):
        simple_cnn((None, None, 3), 4)


def test_patch_whitening_decorrelates_the_patches_it_was_adapted_to():
    images = correlated_images()
    layer = PatchWhitening()
    layer.adapt(images)
    out = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-3)
    cov = np.cov(out[:, :12], rowvar=False)
    # Identity but for epsilon, which shrinks the weakest directions (here the noise).
    np.testing.assert_allclose(np.diag(cov)[:4], 1.0, atol=0.01)
    assert np.diag(cov).max() < 1.0 + 1e-3
    off_diagonal = cov - np.diag(np.diag(cov))
    assert np.abs(off_diagonal).max() < 1e-3
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-5)


def test_patch_whitening_weight_decay_pulls_towards_centred_outputs():
    # The centring offset is frozen and the trainable bias starts at zero, so
    # decoupled weight decay on the bias keeps the outputs centred.
    images = correlated_images(64)
    layer = PatchWhitening()
    layer.adapt(images)
    np.testing.assert_array_equal(layer.bias.numpy(), 0.0)
    assert np.abs(layer.center.numpy()).max() > 0.1
    layer.bias.assign(np.full(24, 0.5, dtype="float32"))
    optimizer = keras.optimizers.SGD(1.0, weight_decay=0.5)
    for _ in range(30):
        optimizer.apply([keras.ops.zeros((24,))], [layer.bias])
    out = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-3)


def test_patch_whitening_loads_weights_saved_with_the_offset_in_the_bias():
    images = correlated_images(16)
    layer = PatchWhitening()
    layer.adapt(images)
    expected = keras.ops.convert_to_numpy(layer(images))
    # The two-variable layout of earlier releases: bias (offset included), kernel.
    old = PatchWhitening()
    old.build(images.shape)
    old.load_own_variables({"0": layer.center.numpy(), "1": layer.kernel.numpy()})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(old(images)), expected, atol=1e-5)
    np.testing.assert_array_equal(old.center.numpy(), 0.0)
    with pytest.raises(ValueError):
        old.load_own_variables({"0": layer.center.numpy()})


def test_patch_whitening_bad_inputs_name_what_was_received():
    layer = PatchWhitening()
    with pytest.raises(ValueError, match=r"Received shape \(4, 12, 3\)"):
        layer.adapt(np.zeros((4, 12, 3)))
    layer.adapt(correlated_images(8))
    with pytest.raises(ValueError, match="built for 3 channels. Received images with 1"):
        layer.adapt(np.zeros((4, 12, 12, 1)))
    images = np.array(correlated_images(8))
    images[0, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="finite pixels. Received: 1 NaN"):
        layer.adapt(images)
    with pytest.raises(ValueError, match="epsilon"):
        PatchWhitening(epsilon=0)


def test_fast_cnn_round_trip_keeps_the_adapted_whitening(tmp_path):
    model = fast_cnn((12, 12, 3), 4, widths=(4, 8))
    images = correlated_images(64)
    assert adapt_whitening(model, images) == 1
    path = str(tmp_path / "fast.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-6)
    np.testing.assert_array_equal(loaded.get_layer("whitening").kernel.numpy(),
                                  model.get_layer("whitening").kernel.numpy())


def test_fast_cnn_trains_and_keeps_its_whitening_frozen():
    rng = np.random.default_rng(0)
    images = correlated_images(64)
    labels = keras.utils.to_categorical(rng.integers(0, 2, 64), 2)
    images[labels[:, 1] == 1] *= 0.5  # a learnable difference
    model = fast_cnn((12, 12, 3), 2, widths=(8, 8))
    adapt_whitening(model, images)
    kernel = model.get_layer("whitening").kernel.numpy()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    before = model.evaluate(images, labels, verbose=0)
    model.fit(images, labels, epochs=8, batch_size=16, verbose=0)
    assert model.evaluate(images, labels, verbose=0) < before
    np.testing.assert_array_equal(model.get_layer("whitening").kernel.numpy(), kernel)


def test_numpy_scalars_are_taken_where_numbers_are():
    """``num_classes = labels.max() + 1`` is an np.int64; Keras' layers refuse those."""
    from fmkeras.data import ImageDataGenerator
    from fmkeras.models import lstm_classifier, transformer_classifier

    n = np.int64
    assert simple_cnn((8, 8, 1), n(3), filters=(n(4),)).output_shape == (None, 3)
    assert resnet((8, 8, 1), n(3), depth=n(8)).output_shape == (None, 3)
    assert mlp((4,), [n(8)], n(2)).output_shape == (None, 2)
    assert transformer_classifier(n(20), n(8), n(3), d_model=n(8), num_heads=n(2), ff_dim=n(8),
                                  num_layers=n(1)).output_shape == (None, 3)
    assert lstm_classifier(n(20), n(3), embedding_dim=n(4), units=n(4)).output_shape == (None, 3)
    flow = ImageDataGenerator(rescale=np.float32(1 / 255)).flow(
        np.zeros((4, 8, 8, 1)), np.arange(4), batch_size=n(2), shuffle=False)
    assert flow[0][0].shape == (2, 8, 8, 1)
