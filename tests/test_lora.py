"""LoRA: only adapters train, base weights stay, the merged model predicts the same."""

import keras
import numpy as np
import pytest

from fmkeras.models import transformer_classifier
from fmkeras.training import lora


def mlp():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=8, name="einsum")(x)
    outputs = keras.layers.Dense(3, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, keras.utils.to_categorical(rng.integers(0, 3, n), 3)


def test_patterns_select_layers_and_only_adapters_train():
    model = mlp()
    selected = lora.enable_lora(model, rank=2, patterns=["hidden", "einsum"])
    assert [layer.name for layer in selected] == ["hidden", "einsum"]
    assert lora.trainable_parameter_count(model) == (6 * 2 + 2 * 16) + (16 * 2 + 2 * 8)
    before = {w.path: w.numpy().copy() for w in model.weights if "lora" not in w.path}
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    model.fit(*data(), batch_size=8, epochs=2, verbose=0)
    for w in model.weights:
        if "lora" not in w.path:
            np.testing.assert_array_equal(w.numpy(), before[w.path])
    assert np.abs(model.get_layer("hidden").lora_kernel_b.numpy()).max() > 0


def test_frozen_batch_norms_keep_their_moving_statistics():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    lora.enable_lora(model, rank=2)
    bn = model.get_layer("bn")
    before = [w.numpy().copy() for w in bn.weights]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    model.fit(*data(), batch_size=8, epochs=2, verbose=0)
    for value, weight in zip(before, bn.weights):
        np.testing.assert_array_equal(weight.numpy(), value)
    merged = lora.merge_lora(model)
    assert merged.get_layer("bn").trainable
    assert len(merged.trainable_weights) == len(merged.weights) - 2  # all but BN's moving stats


def test_merged_model_predicts_the_same_without_adapters(tmp_path):
    model = mlp()
    lora.enable_lora(model, rank=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    merged = lora.merge_lora(model)
    assert lora.lora_layers(merged) == [] and len(lora.lora_layers(model)) == 3
    np.testing.assert_allclose(merged.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    path = str(tmp_path / "merged.keras")
    merged.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)


def test_embedding_and_transformer_layers_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = transformer_classifier(vocab_size=20, sequence_length=6, num_classes=2,
                                   d_model=8, num_heads=2, ff_dim=8, num_layers=1)
    selected = lora.enable_lora(model, rank=np.int64(2),  # NumPy ints, as the builders take
                                patterns=["query", "value", "token_embedding"])
    assert selected
    adapters = [w for layer in selected for w in layer.weights if "lora" in w.name]
    assert len(adapters) == 2 * len(selected)
    assert {w.dtype for w in adapters} == {"float32"}
    assert {w.path for w in model.trainable_weights} == {w.path for w in adapters}
    assert any(isinstance(layer, keras.layers.Embedding) for layer in selected)
    tokens = np.random.default_rng(0).integers(1, 20, (4, 6))
    merged = lora.merge_lora(model)
    np.testing.assert_allclose(merged.predict(tokens, verbose=0), model.predict(tokens, verbose=0),
                               atol=1e-3)


def test_errors_name_what_was_received():
    with pytest.raises(ValueError, match="Received: rank=0"):
        lora.enable_lora(mlp(), rank=0)
    with pytest.raises(ValueError, match=r"some of \['einsum', 'head', 'hidden'\]. Received"):
        lora.enable_lora(mlp(), rank=2, patterns="nothing*")
    with pytest.raises(ValueError, match="Expected `model` to be a keras.Model. Received: model "
                                         "of type str"):
        lora.enable_lora("hidden", rank=2)


def test_enabling_again_keeps_one_rank_per_layer():
    model = mlp()
    lora.enable_lora(model, rank=2, patterns="hidden")
    count = lora.trainable_parameter_count(model)
    assert [layer.name for layer in lora.enable_lora(model, rank=2)] == \
        ["hidden", "einsum", "head"]  # the same rank again: the adapters already there stay
    assert lora.trainable_parameter_count(model) > count
    with pytest.raises(ValueError, match=r"another rank: \['hidden \(rank 2\)', 'einsum \(rank "
                                         r"2\)', 'head \(rank 2\)'\]. Expected rank=4"):
        lora.enable_lora(model, rank=4)
