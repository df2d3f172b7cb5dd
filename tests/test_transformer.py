"""Transformer and recurrent builders: masking, serialization, training, precision."""

import keras
import numpy as np
import pytest

from fmkeras.models.decoding import greedy_search
from fmkeras.models.recurrent import gru_classifier, lstm_classifier
from fmkeras.models.transformer import (
    ClassToken,
    FirstToken,
    MaskedMean,
    PositionalEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    cross_attention_weights,
    transformer_classifier,
    transformer_seq2seq,
)

VOCAB, LENGTH, D_MODEL, HEADS, FF = 50, 8, 16, 2, 32
TINY = dict(d_model=D_MODEL, num_heads=HEADS, ff_dim=FF, dropout=0.0)


def seq2seq(**overrides):
    config = dict(TINY, num_encoder_layers=1, num_decoder_layers=1)
    config.update(overrides)
    return transformer_seq2seq(VOCAB, VOCAB + 10, LENGTH, **config)


def classifier(pooling="cls", **overrides):
    config = dict(TINY, num_layers=1, pooling=pooling)
    config.update(overrides)
    return transformer_classifier(VOCAB, LENGTH, 3, **config)


def token_ids(seed=0, batch=2, length=LENGTH, padded_from=None):
    ids = np.random.default_rng(seed).integers(1, VOCAB, (batch, length)).astype("int32")
    if padded_from is not None:
        ids[:, padded_from:] = 0
    return ids


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return seq2seq()


def run(model, source, target):
    return keras.ops.convert_to_numpy(
        model({"encoder_inputs": source, "decoder_inputs": target}, training=False))


def test_padding_does_not_change_encoder_outputs(model):
    encoder = keras.Model(model.get_layer("encoder_inputs").output,
                          model.get_layer("encoder_block_0").output)
    short = token_ids(padded_from=5)[:, :5]
    padded = np.pad(short, ((0, 0), (0, 3)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(encoder(short)),
                               keras.ops.convert_to_numpy(encoder(padded))[:, :5], atol=1e-5)
    # And the decoder sees the same encoder memory, however much padding.
    target = token_ids(seed=1)
    np.testing.assert_allclose(run(model, short, target), run(model, padded, target), atol=1e-5)


def test_future_tokens_do_not_change_earlier_decoder_outputs(model):
    source, target = token_ids(), token_ids(seed=1)
    changed = target.copy()
    changed[:, 5:] = changed[:, 5:] % (VOCAB - 1) + 1  # another non-padding id
    before, after = run(model, source, target), run(model, source, changed)
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-5)
    assert not np.allclose(before[:, 5:], after[:, 5:])


def test_blocks_apply_explicit_masks():
    keras.utils.set_random_seed(4)
    x = keras.random.normal((2, LENGTH, D_MODEL))
    mask = np.arange(LENGTH)[None, :].repeat(2, 0) < 5
    encoder = TransformerEncoderBlock(HEADS, FF)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(encoder(x, mask=mask))[:, :5],
                               keras.ops.convert_to_numpy(encoder(x[:, :5])), atol=1e-5)
    decoder = TransformerDecoderBlock(HEADS, FF)
    memory = keras.random.normal((2, 6, D_MODEL))
    full = decoder(x, memory, encoder_sequence_mask=mask[:, :6])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(full)[:, :5],
                               keras.ops.convert_to_numpy(decoder(x[:, :5], memory[:, :5])),
                               atol=1e-5)


def test_decoder_block_returns_cross_attention_scores_on_request():
    keras.utils.set_random_seed(5)
    x, memory = keras.random.normal((2, 5, D_MODEL)), keras.random.normal((2, 6, D_MODEL))
    mask = np.arange(6)[None, :].repeat(2, 0) < 4
    decoder = TransformerDecoderBlock(HEADS, FF)
    plain = decoder(x, memory, encoder_sequence_mask=mask)
    outputs, scores = decoder(x, memory, encoder_sequence_mask=mask,
                              return_attention_scores=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs),
                               keras.ops.convert_to_numpy(plain), atol=1e-6)
    scores = keras.ops.convert_to_numpy(scores)
    assert scores.shape == (2, HEADS, 5, 6)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.abs(scores[..., 4:]).max() == 0.0  # masked encoder positions


def test_cross_attention_weights():
    keras.utils.set_random_seed(6)
    model = seq2seq(num_decoder_layers=2)
    source, target = token_ids(padded_from=5), token_ids(seed=7, length=6, padded_from=4)
    weights = cross_attention_weights(model, source, target)
    assert weights.shape == (2, HEADS, 6, LENGTH) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert np.abs(weights[..., 5:]).max() == 0.0  # padded source positions
    # Source padding does not move the weights on the real tokens.
    np.testing.assert_allclose(cross_attention_weights(model, source[:, :5], target),
                               weights[..., :5], atol=1e-5)
    first = cross_attention_weights(model, source, target, block=0)
    assert first.shape == weights.shape and not np.allclose(first, weights)
    # The model keeps its single output.
    assert len(model.outputs) == 1
    with pytest.raises(ValueError, match="decoder blocks"):
        cross_attention_weights(model, source, target, block=2)
    with pytest.raises(ValueError, match="TransformerDecoderBlock"):
        cross_attention_weights(classifier(), source, target)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_ignores_padding(pooling):
    model = classifier(pooling)
    short = token_ids()[:, :5]
    padded = np.pad(short, ((0, 0), (0, 3)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(short)),
                               keras.ops.convert_to_numpy(model(padded)), atol=1e-5)


def test_mean_pooling_of_an_all_padding_row_stays_finite_through_training():
    keras.utils.set_random_seed(1)
    model = classifier("mean")
    ids = token_ids(batch=4)
    ids[1] = 0  # an empty text: nothing but padding
    probabilities = keras.ops.convert_to_numpy(model(ids))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  run_eagerly=True)
    losses = model.fit(ids, np.array([0, 1, 2, 0]), epochs=2, verbose=0).history["loss"]
    assert np.isfinite(losses).all()
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_masked_mean_matches_keras_average_pooling_when_rows_have_tokens():
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], bool)
    expected = keras.layers.GlobalAveragePooling1D()(x, mask=mask)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(MaskedMean()(x, mask=mask)),
                               keras.ops.convert_to_numpy(expected), rtol=1e-6)
    layer = MaskedMean.from_config(MaskedMean(name="pool").get_config())
    assert layer.name == "pool"


def test_sequences_longer_than_the_model_are_refused_by_name():
    too_long = token_ids(length=LENGTH + 4)
    for call in (lambda: classifier()(too_long),
                 lambda: classifier("mean").predict(too_long, verbose=0)):
        with pytest.raises(ValueError, match=f"at most sequence_length={LENGTH} tokens"):
            call()
    with pytest.raises(ValueError, match=f"sequence_length={LENGTH} tokens. Received: shape"):
        greedy_search(seq2seq(), too_long, 1, 2)


def _attention_params(d):
    return 4 * (d * d + d)  # query, key, value and output projections with biases


def _feed_forward_params(d, ff):
    return d * ff + ff + ff * d + d


def test_parameter_counts():
    d, ff, v_src, v_tgt = D_MODEL, FF, VOCAB, VOCAB + 10
    norm = 2 * d
    encoder = _attention_params(d) + 2 * norm + _feed_forward_params(d, ff)
    decoder = 2 * _attention_params(d) + 3 * norm + _feed_forward_params(d, ff)
    expected = ((v_src + LENGTH) * d + encoder + (v_tgt + LENGTH) * d + decoder
                + d * v_tgt + v_tgt)
    assert seq2seq().count_params() == expected
    head = d * 3 + 3
    assert classifier("mean").count_params() == (VOCAB + LENGTH) * d + encoder + head
    assert classifier("cls").count_params() == (VOCAB + LENGTH) * d + d + encoder + head
    emb, units = 16, 8
    lstm = 4 * (emb * units + units * units + units)
    assert lstm_classifier(VOCAB, 3, embedding_dim=emb, units=units).count_params() == (
        VOCAB * emb + lstm + units * 3 + 3)
    gru = 3 * (emb * units + units * units + 2 * units)  # reset_after: two bias vectors
    assert gru_classifier(VOCAB, 3, embedding_dim=emb, units=units,
                          bidirectional=True).count_params() == (
        VOCAB * emb + 2 * gru + 2 * units * 3 + 3)


def test_layers_are_named_and_configs_round_trip():
    model = classifier("cls")
    names = [layer.name for layer in model.layers]
    assert len(set(names)) == len(names)
    assert {"embedding", "class_token", "encoder_block_0", "pool", "probabilities"} <= set(names)
    layers = [PositionalEmbedding(VOCAB, LENGTH, D_MODEL, name="p"),
              TransformerEncoderBlock(HEADS, FF, 0.1, name="e"),
              TransformerDecoderBlock(HEADS, FF, 0.1, name="d"), ClassToken(name="c"),
              FirstToken(name="f")]
    for layer in layers:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config


@pytest.mark.parametrize("build", [seq2seq, classifier, lambda: lstm_classifier(
    VOCAB, 3, embedding_dim=16, units=8, bidirectional=True)], ids=["seq2seq", "cls", "lstm"])
def test_serialization_round_trips(build, tmp_path):
    keras.utils.set_random_seed(2)
    model = build()
    inputs = token_ids(padded_from=6)
    if len(model.inputs) == 2:
        inputs = {"encoder_inputs": inputs, "decoder_inputs": token_ids(seed=3, padded_from=4)}
    expected = keras.ops.convert_to_numpy(model(inputs))
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(inputs)), expected, atol=1e-6)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)), expected, atol=1e-6)


def _loss_drops(model, inputs, labels):
    # Eager: for six steps of a tiny model, tracing a graph costs more than it saves.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  run_eagerly=True)
    # One batch per epoch: the first epoch's loss is the loss before any update.
    losses = model.fit(inputs, labels, batch_size=2, epochs=6, verbose=0).history["loss"]
    assert losses[-1] < 0.9 * losses[0]


def test_training_lowers_loss():
    keras.utils.set_random_seed(3)
    source, target = token_ids(padded_from=6), token_ids(seed=4, padded_from=5)
    _loss_drops(seq2seq(), {"encoder_inputs": source, "decoder_inputs": target},
                np.roll(target, -1, axis=1))
    _loss_drops(classifier("mean"), source, np.array([0, 2]))
    _loss_drops(gru_classifier(VOCAB, 3, embedding_dim=16, units=8), source, np.array([0, 2]))


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_precision_policies(policy):
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        compute = keras.mixed_precision.global_policy().compute_dtype
        model = seq2seq()
        block = model.get_layer("decoder_block_0")
        assert block.compute_dtype == block.cross_attention.compute_dtype == compute
        assert block.cross_attention.variable_dtype == "float32"
        source, target = token_ids(padded_from=5), token_ids(seed=1, padded_from=3)
        out = run(model, source, target)
        assert out.shape == (2, LENGTH, VOCAB + 10) and out.dtype == np.float32
        assert np.isfinite(out).all()
        for build in (lambda: classifier("cls"), lambda: classifier("mean"),
                      lambda: lstm_classifier(VOCAB, 3, embedding_dim=16, units=8)):
            probs = keras.ops.convert_to_numpy(build()(source))
            assert probs.shape == (2, 3) and probs.dtype == np.float32
            assert np.isfinite(probs).all()
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_dtype_argument_reaches_every_sub_layer():
    model = seq2seq(dtype="mixed_bfloat16")
    block = model.get_layer("encoder_block_0")
    assert {layer.compute_dtype for layer in block._flatten_layers()} == {"bfloat16"}
    assert model.get_layer("next_token").compute_dtype == "float32"
    assert run(model, token_ids(), token_ids(seed=1)).dtype == np.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=10, num_heads=4), "divisible"),
    (dict(ff_dim=0), "ff_dim"),
    (dict(num_encoder_layers=-1), "num_encoder_layers"),
    (dict(dropout=1.5), "dropout"),
])
def test_seq2seq_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Expected.*{match}.*Received|{match}.*Received"):
        seq2seq(**kwargs)


def test_classifiers_reject_bad_arguments():
    with pytest.raises(ValueError, match="Expected `pooling`.*Received: pooling='max'"):
        classifier("max")
    with pytest.raises(ValueError, match="num_classes.*Received: num_classes=1"):
        transformer_classifier(VOCAB, LENGTH, 1, **TINY)
    with pytest.raises(ValueError, match="Received: vocab_size=0"):
        lstm_classifier(0, 3)
    with pytest.raises(ValueError, match="at most sequence_length=8.*Received"):
        PositionalEmbedding(VOCAB, LENGTH, D_MODEL)(np.ones((1, LENGTH + 1), "int32"))


def test_source_padding_does_not_change_a_two_block_decoder():
    # Every decoder block must see the source padding mask, not only the first one.
    keras.utils.set_random_seed(0)
    model = transformer_seq2seq(30, 30, 10, d_model=16, num_heads=2, ff_dim=16,
                                num_encoder_layers=1, num_decoder_layers=2, dropout=0.0)
    target = np.array([[1, 5, 6, 7]], "int32")
    short = model({"encoder_inputs": np.array([[3, 4, 5]], "int32"), "decoder_inputs": target})
    padded = model({"encoder_inputs": np.array([[3, 4, 5, 0, 0, 0]], "int32"),
                    "decoder_inputs": target})
    np.testing.assert_allclose(np.asarray(short), np.asarray(padded), atol=1e-5)
