"""FusedBatchNormalization: the same results as Keras' BatchNormalization, by the fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fmkeras.models import FusedBatchNormalization, fast_cnn


def images(shape=(8, 5, 5, 4), seed=0):
    return np.random.default_rng(seed).normal(2.0, 3.0, size=shape).astype("float32")


def twin_layers(shape, **kwargs):
    """A Keras batch norm and a fused one with the same (random) starting weights."""
    reference, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    reference.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(1)
    weights = [w + rng.normal(0, 0.1, w.shape).astype("float32") for w in reference.get_weights()]
    weights = [np.abs(w) if "variance" in v.path else w
               for w, v in zip(weights, reference.weights)]
    reference.set_weights(weights)
    fused.set_weights(weights)
    return reference, fused


@pytest.mark.parametrize("kwargs", [{}, {"scale": False, "momentum": 0.4},
                                    {"center": False, "epsilon": 1e-4}])
def test_fused_batch_norm_matches_keras_in_training_inference_and_gradients(kwargs):
    x = images()
    reference, fused = twin_layers(x.shape, **kwargs)
    for _ in range(3):  # three moving-average updates
        np.testing.assert_allclose(fused(x, training=True), reference(x, training=True),
                                   atol=2e-6)
    for a, b in zip(fused.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fused(x, training=False), reference(x, training=False),
                               atol=2e-6)
    tensor = tf.constant(x)
    for training in (True, False):
        grads = []
        for layer in (fused, reference):
            with tf.GradientTape() as tape:
                tape.watch(tensor)
                loss = tf.reduce_sum(layer(tensor, training=training) ** 3)
            grads.append(tape.gradient(loss, [tensor, *layer.trainable_weights]))
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def op_types(layer, x, training):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_runs_the_fused_kernel(training):
    x = images()
    reference, fused = twin_layers(x.shape)
    assert "FusedBatchNormV3" in op_types(fused, x, training)
    assert "FusedBatchNormV3" not in op_types(reference, x, training)


def test_fused_batch_norm_frozen_layer_uses_moving_statistics():
    x = images()
    reference, fused = twin_layers(x.shape)
    reference.trainable = fused.trainable = False
    before = [w.copy() for w in fused.get_weights()]
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=2e-6)
    for a, b in zip(fused.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape, kwargs", [((6, 5), {}), ((4, 3, 3, 2), {"axis": 1}),
                                           ((4, 3, 3, 2), {"epsilon": 1e-6})])
def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_does_not_apply(shape, kwargs):
    # 2-D input, channels-first axis and an epsilon below the kernel's floor.
    x = images(shape)
    reference, fused = twin_layers(x.shape, **kwargs)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=2e-6)
    np.testing.assert_allclose(fused.moving_variance, reference.moving_variance, rtol=1e-6)


def test_fused_batch_norm_under_mixed_bfloat16_returns_the_compute_dtype():
    x = images()
    layer = FusedBatchNormalization(dtype="mixed_bfloat16")
    out = layer(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert layer.moving_mean.dtype == "float32"
    normalized = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(np.asarray(tf.cast(out, tf.float32)), normalized, atol=0.05)


def test_fused_batch_norm_round_trips_in_a_keras_file(tmp_path):
    model = fast_cnn((12, 12, 3), 4, widths=(4, 8))
    assert {type(layer) for layer in model.layers if "bn" in layer.name} == {
        FusedBatchNormalization}
    x = images((3, 12, 12, 3))
    model(x, training=True)  # move the moving statistics away from their start
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("block1_bn1"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
