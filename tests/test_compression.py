"""Post-training quantization and magnitude pruning."""

import keras
import numpy as np
import pytest

from fmkeras.training import compression


def mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    x = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs)


def inputs():
    return np.random.default_rng(0).normal(size=(16, 12)).astype("float32")


def test_int8_copy_predicts_close_and_reloads(tmp_path):
    model = mlp()
    quantized = compression.quantize(model, "int8")
    assert quantized.get_layer("hidden").kernel.dtype == "int8"
    assert model.get_layer("hidden").kernel.dtype == "float32"  # the original is untouched
    x = inputs()
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.02)
    path = str(tmp_path / "int8.keras")
    quantized.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0),
                               quantized.predict(x, verbose=0), atol=1e-6)


def test_prune_reaches_the_target_sparsity():
    model = mlp()
    assert compression.sparsity(model) == 0.0
    original = model.get_layer("hidden").kernel.numpy().copy()
    achieved = compression.prune(model, 0.5)
    assert achieved == pytest.approx(0.5, abs=0.01)
    kernel = model.get_layer("hidden").kernel.numpy()
    kept = kernel != 0
    assert kept.mean() == pytest.approx(0.5, abs=0.01)
    np.testing.assert_array_equal(kernel[kept], original[kept])  # survivors unchanged
    assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()  # smallest went


def test_errors_name_what_was_received():
    with pytest.raises(ValueError, match="Received: mode='int3'"):
        compression.quantize(mlp(), "int3")
    with pytest.raises(ValueError, match="Received: 1.0"):
        compression.prune(mlp(), 1.0)
