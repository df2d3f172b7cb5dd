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
    from fmkeras.export.core import check_tolerance

    # A reloaded int8 graph may round an activation the other way: one quantization step.
    assert (check_tolerance(model), check_tolerance(quantized)) == (1e-5, 1e-2)
    x = inputs()
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.02)
    path = str(tmp_path / "int8.keras")
    quantized.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0),
                               quantized.predict(x, verbose=0), atol=1e-6)


def test_quantizing_collects_garbage_once_not_once_per_dropped_kernel(monkeypatch):
    import gc

    from fmkeras import _gc

    calls = []
    collect = lambda generation=2: calls.append(1) or 0  # noqa: E731
    monkeypatch.setattr(gc, "collect", collect)
    compression.quantize(mlp(), "int8")  # Keras drops two float kernels
    assert calls == [1]
    with _gc.collect_once():
        with _gc.collect_once():
            gc.collect()
        assert calls == [1]  # the inner block does not collect
    assert calls == [1, 1] and gc.collect is collect


def _quantized_paths(model):
    return sorted(layer.path for layer in model._flatten_layers(include_self=False)
                  if layer.quantization_mode is not None)


def _tiny_transformer(kind):
    from fmkeras.models import transformer_classifier, transformer_seq2seq

    tiny = dict(d_model=8, num_heads=2, ff_dim=8)
    ids = np.random.default_rng(0).integers(1, 20, (3, 6)).astype("int32")
    if kind == "classifier":
        return transformer_classifier(20, 6, 3, num_layers=1, **tiny), ids
    return (transformer_seq2seq(20, 20, 6, num_encoder_layers=1, num_decoder_layers=1, **tiny),
            {"encoder_inputs": ids, "decoder_inputs": ids})


@pytest.mark.parametrize("kind, policy", [("classifier", "mixed_bfloat16"),
                                          ("seq2seq", "float32")])
def test_quantized_transformers_reload_with_their_int8_sub_layers(tmp_path, kind, policy):
    from fmkeras import saving

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model, x = _tiny_transformer(kind)
    quantized = compression.quantize(model, "int8")
    paths = _quantized_paths(quantized)
    # The embeddings and the attention inside the Transformer's own layers are int8 too.
    assert any(path.endswith("embedding/token_embedding") for path in paths), paths
    assert any(path.endswith("self_attention/query") for path in paths), paths
    def outputs(m):  # eager: tracing costs more than these few calls
        return keras.ops.convert_to_numpy(m(x, training=False))

    expected = outputs(quantized)
    path = str(tmp_path / "int8.keras")
    quantized.save(path)
    reloaded = saving.load_model(path)
    assert _quantized_paths(reloaded) == paths
    assert reloaded.get_layer(paths[0].split("/")[0]).dtype_policy.name == policy
    np.testing.assert_array_equal(outputs(reloaded), expected)
    reloaded.save(path)  # and again from the reloaded model, with plain Keras
    np.testing.assert_array_equal(outputs(keras.saving.load_model(path)), expected)
    # An unquantized model's configs keep a plain policy.
    assert "DTypePolicyMap" not in str(model.get_config())


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


def test_prune_zeros_the_fraction_asked_when_magnitudes_tie():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(
        10, kernel_initializer=keras.initializers.Constant(0.1))])
    assert compression.prune(model, 0.1) == pytest.approx(0.1)  # was 1.0: every tie went


def test_errors_name_what_was_received():
    with pytest.raises(ValueError, match="Received: mode='int3'"):
        compression.quantize(mlp(), "int3")
    with pytest.raises(ValueError, match="Received: 1.0"):
        compression.prune(mlp(), 1.0)
    with pytest.raises(ValueError, match="Received: '0.5'"):
        compression.prune(mlp(), "0.5")


class Recorder(keras.callbacks.Callback):
    """Sparsity of the hidden kernel after each batch (the pruning callback runs first)."""

    def __init__(self):
        super().__init__()
        self.sparsities = []

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.get_layer("hidden").kernel.numpy()
        self.sparsities.append(float((kernel == 0).mean()))


def test_pruning_callback_grows_the_masks_and_holds_them():
    model = mlp()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    x = inputs()
    y = keras.utils.to_categorical(np.arange(16) % 4, 4)
    pruning, recorder = compression.PruningCallback(0.6, end_step=8, frequency=2), Recorder()
    model.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=[pruning, recorder])
    seen = np.array(recorder.sparsities)
    assert seen[0] == 0.0 and np.all(np.diff(seen[:8]) >= 0)  # gradual, never undone
    assert seen[7] == pytest.approx(0.6, abs=0.01)
    # After end_step the masks are fixed: training goes on and the zeros stay.
    np.testing.assert_allclose(seen[8:], 0.6, atol=0.01)
    assert pruning.achieved_sparsity == pytest.approx(0.6, abs=0.01)
    assert compression.sparsity(model) == pytest.approx(0.6, abs=0.01)
    assert pruning._masks is None  # stripped: the model is plain Keras
    assert {layer.name for layer in pruning.pruned_layers} == {"hidden", "head"}


def test_pruning_callback_reaches_the_target_and_skips_frozen_kernels(tmp_path):
    model = mlp()
    model.get_layer("hidden").trainable = False
    frozen = model.get_layer("hidden").kernel.numpy().copy()
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    pruning = compression.PruningCallback(0.5)  # schedule from the fit's own length
    x, y = inputs(), keras.utils.to_categorical(np.arange(16) % 4, 4)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[pruning])
    assert [layer.name for layer in pruning.pruned_layers] == ["head"]
    np.testing.assert_array_equal(model.get_layer("hidden").kernel.numpy(), frozen)
    assert (model.get_layer("head").kernel.numpy() == 0).mean() == pytest.approx(0.5, abs=0.01)
    path = str(tmp_path / "pruned.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.get_layer("head").kernel.numpy(),
                                  model.get_layer("head").kernel.numpy())


def test_size_and_latency_measure_compression():
    model = mlp()
    dense = compression.model_size(model)
    compression.prune(model, 0.8)
    pruned = compression.model_size(model)
    quantized = compression.model_size(compression.quantize(model, "int8"))
    assert pruned["gzip_bytes"] < dense["gzip_bytes"]  # zeros compress
    assert quantized["keras_bytes"] < pruned["keras_bytes"]
    assert compression.predict_latency_ms(model, inputs(), repeats=2) > 0
    with pytest.raises(ValueError, match="Received: target_sparsity=1.0"):
        compression.PruningCallback(1.0)
    with pytest.raises(ValueError, match="Received: target_sparsity='0.5'"):
        compression.PruningCallback("0.5")
