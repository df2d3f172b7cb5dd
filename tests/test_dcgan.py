"""Shapes, dtypes, parameter counts and errors of the DCGAN builders."""

import keras
import numpy as np
import pytest

from fmkeras.models.dcgan import check_image_shape, dcgan_discriminator, dcgan_generator

LATENT = 8
BASE = 8


@pytest.mark.parametrize("size", [16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_for_every_size(size, channels):
    gen = dcgan_generator(LATENT, (size, size, channels), base_filters=BASE)
    disc = dcgan_discriminator((size, size, channels), base_filters=BASE)
    assert tuple(gen.output.shape) == (None, size, size, channels)
    assert tuple(disc.output.shape) == (None, 1)
    assert gen.output.dtype == "float32" and disc.output.dtype == "float32"
    # Depth follows the size: 2 upsamplings for 16 and 28, 3 for 32, 4 for 64.
    expected_steps = {16: 2, 28: 2, 32: 3, 64: 4}[size]
    transposed = [lay for lay in gen.layers if isinstance(lay, keras.layers.Conv2DTranspose)]
    strided = [lay for lay in disc.layers if isinstance(lay, keras.layers.Conv2D)]
    assert len(transposed) == len(strided) == expected_steps


def test_forward_pass_range_and_shapes():
    gen = dcgan_generator(LATENT, (16, 16, 3), base_filters=BASE)
    disc = dcgan_discriminator((16, 16, 3), base_filters=BASE)
    images = keras.ops.convert_to_numpy(gen(np.random.normal(size=(4, LATENT)).astype("float32")))
    assert images.shape == (4, 16, 16, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert keras.ops.convert_to_numpy(disc(images)).shape == (4, 1)


def test_28x28_starts_from_7x7():
    gen = dcgan_generator(LATENT, (28, 28, 1), base_filters=BASE)
    assert tuple(gen.get_layer("project_reshape").output.shape) == (None, 7, 7, 2 * BASE)


@pytest.mark.parametrize("size,channels", [(16, 1), (28, 1), (32, 3)])
def test_conditional_models(size, channels):
    gen = dcgan_generator(LATENT, (size, size, channels), base_filters=BASE, num_classes=10)
    disc = dcgan_discriminator((size, size, channels), base_filters=BASE, num_classes=10)
    assert [i.name for i in gen.inputs] == ["latents", "labels"]
    assert [i.name for i in disc.inputs] == ["images", "labels"]
    latents = np.random.normal(size=(2, LATENT)).astype("float32")
    labels = np.array([[3], [7]], "int32")
    images = keras.ops.convert_to_numpy(gen([latents, labels]))
    assert tuple(images.shape) == (2, size, size, channels)
    # The label map is one extra channel in front of the first convolution.
    assert disc.get_layer("image_label_concat").output.shape[-1] == channels + 1
    assert tuple(disc([images, labels]).shape) == (2, 1)


def _conv_params(kernel, in_ch, out_ch, bias):
    return kernel * kernel * in_ch * out_ch + (out_ch if bias else 0)


def test_exact_parameter_counts():
    # 16x16x1, latent 8, base 8: start 4x4 with 16 filters, one 8-filter block.
    gen = dcgan_generator(LATENT, (16, 16, 1), base_filters=BASE)
    dense = LATENT * 4 * 4 * 16
    bn = 4 * (4 * 4 * 16) + 4 * 8  # gamma, beta, moving mean and variance
    convs = _conv_params(4, 16, 8, bias=False) + _conv_params(4, 8, 1, bias=True)
    assert gen.count_params() == dense + bn + convs

    disc = dcgan_discriminator((16, 16, 1), base_filters=BASE)
    convs = _conv_params(4, 1, 8, bias=True) + _conv_params(4, 8, 16, bias=True)
    logits = 4 * 4 * 16 + 1
    assert disc.count_params() == convs + logits

    # Conditional: a 16-d label embedding widens the projection's input and a
    # 16*16 label map adds one input channel.
    cgen = dcgan_generator(LATENT, (16, 16, 1), base_filters=BASE, num_classes=3)
    assert cgen.count_params() == gen.count_params() + 3 * 16 + 16 * 4 * 4 * 16
    cdisc = dcgan_discriminator((16, 16, 1), base_filters=BASE, num_classes=3)
    assert cdisc.count_params() == disc.count_params() + 3 * 16 * 16 + 4 * 4 * 1 * 8


def test_dtype_is_threaded_and_outputs_stay_float32():
    gen = dcgan_generator(LATENT, (16, 16, 1), base_filters=BASE, dtype="mixed_float16")
    disc = dcgan_discriminator((16, 16, 1), base_filters=BASE, dtype="mixed_float16")
    assert gen.get_layer("up1_conv").compute_dtype == "float16"
    assert disc.get_layer("down1_conv").compute_dtype == "float16"
    assert gen.get_layer("project").variable_dtype == "float32"
    out = gen(np.zeros((2, LATENT), "float32"))
    assert out.dtype == "float32"
    assert disc(out).dtype == "float32"


def test_layers_are_named_and_dropout_is_optional():
    disc = dcgan_discriminator((16, 16, 1), base_filters=BASE, dropout=0.0, name="critic")
    names = [lay.name for lay in disc.layers]
    assert disc.name == "critic"
    assert names == ["images", "down1_conv", "down1_lrelu", "down2_conv", "down2_lrelu"] + [
        "flatten",
        "logits",
    ]
    with_dropout = dcgan_discriminator((16, 16, 1), base_filters=BASE, dropout=0.3)
    assert "down1_dropout" in [lay.name for lay in with_dropout.layers]


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: dcgan_generator(LATENT, (20, 20, 1)), "size"),
        (lambda: dcgan_generator(LATENT, (16, 32, 1)), "size"),
        (lambda: dcgan_generator(LATENT, (16, 16, 2)), "channels"),
        (lambda: dcgan_generator(0, (16, 16, 1)), "latent_dim"),
        (lambda: dcgan_generator(LATENT, (16, 16, 1), num_classes=1), "num_classes"),
        (lambda: dcgan_discriminator((64, 64, 4)), "channels"),
        (lambda: dcgan_discriminator((16, 16, 1), dropout=1.0), "dropout"),
        (lambda: dcgan_discriminator((16, 16)), "image_shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, match):
    with pytest.raises(ValueError, match=match) as info:
        build()
    assert "Expected" in str(info.value) and "Received" in str(info.value)


def test_check_image_shape():
    assert check_image_shape((64, 64, 3)) == ((64, 64, 3), 4, 4)
