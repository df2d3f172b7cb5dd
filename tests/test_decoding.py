"""Greedy and beam-search decoding: agreement, early stop, graph use."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fmkeras.models.decoding import beam_search, greedy_search
from fmkeras.models.transformer import transformer_seq2seq

START, END = 2, 3
PAD, UNK, A, B = 0, 1, 4, 5


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    return transformer_seq2seq(50, 40, 8, d_model=16, num_heads=2, ff_dim=32,
                               num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)


@pytest.fixture(scope="module")
def source():
    ids = np.random.default_rng(0).integers(1, 50, (3, 8)).astype("int32")
    ids[1, 5:] = 0
    return ids


class TableModel:
    """A stand-in decoder: next-token probabilities depend only on the last token.

    ``calls`` counts model runs inside the graph loop (one per decoding step).
    """

    def __init__(self, table):
        self.table = tf.constant(table, tf.float32)
        self.calls = tf.Variable(0)

    def get_layer(self, name):
        raise ValueError(name)

    def __call__(self, inputs, training=False):
        self.calls.assign_add(1)
        return tf.gather(self.table, inputs["decoder_inputs"])


def table_model():
    # After [start]: A 0.5, B 0.4, [end] 0.1. After A: [end] 0.3 is the best
    # single step but only 0.5 * 0.3 = 0.15 in all; after B: [end] 0.9, so
    # B [end] = 0.36 is the better translation that greedy search misses.
    table = np.full((6, 6), 1e-6)
    table[START, [A, B, END]] = [0.5, 0.4, 0.1]
    table[A, [END, UNK, A, B]] = [0.3, 0.2, 0.25, 0.25]
    table[B, [END, A]] = [0.9, 0.1]
    table[END, END] = 1.0
    return TableModel(table / table.sum(axis=1, keepdims=True))


def test_beam_width_one_equals_greedy(model, source):
    greedy = greedy_search(model, source, START, END)
    beam = beam_search(model, source, START, END, beam_width=1, length_penalty=0.6)
    assert greedy.dtype == tf.int32 and tuple(greedy.shape) == (3, 8)
    np.testing.assert_array_equal(greedy.numpy(), beam.numpy())


def test_outputs_are_padded_after_the_end_token(model, source):
    for tokens in (greedy_search(model, source, START, END, max_length=6).numpy(),
                   beam_search(model, source, START, END, beam_width=3, max_length=6).numpy()):
        assert tokens.shape == (3, 6)
        for row in tokens:
            ends = np.flatnonzero(row == END)
            if ends.size:
                assert (row[ends[0] + 1:] == 0).all()


def test_beam_search_finds_the_more_probable_translation():
    greedy = greedy_search(table_model(), np.ones((1, 4), "int32"), START, END, max_length=5)
    np.testing.assert_array_equal(greedy.numpy(), [[A, END, 0, 0, 0]])
    tokens, scores = beam_search(table_model(), np.ones((1, 4), "int32"), START, END,
                                 beam_width=2, length_penalty=0.0, max_length=5,
                                 return_scores=True)
    np.testing.assert_array_equal(tokens.numpy(), [[B, END, 0, 0, 0]])
    np.testing.assert_allclose(scores.numpy(), [np.log(0.36)], atol=1e-3)


def test_loops_stop_when_every_sequence_has_ended():
    fake = table_model()
    greedy_search(fake, np.ones((2, 4), "int32"), START, END, max_length=8)
    assert int(fake.calls.numpy()) == 2  # A, then [end]; not 8 steps
    fake = table_model()
    beam_search(fake, np.ones((2, 4), "int32"), START, END, beam_width=2, max_length=8)
    assert int(fake.calls.numpy()) == 2  # both beams end at step 2: B [end] and A [end]


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_token_ids_outside_the_vocabulary_and_flat_inputs_are_refused(model, source, search):
    with pytest.raises(ValueError, match=r"`start_id` to be a token id in \[0, 40\).*"
                                         r"Received: start_id=40"):
        search(model, source, 40, END)
    with pytest.raises(ValueError, match="Received: end_id=-1"):
        search(model, source, START, -1)
    with pytest.raises(ValueError, match=r"shape \(batch, source_length\). "
                                         r"Received: shape \(8,\)"):
        search(model, source[0], START, END)


def test_usable_in_a_saved_model_signature(model, source, tmp_path):
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def translate(ids):
        return {"greedy": greedy_search(model, ids, START, END),
                "beam": beam_search(model, ids, START, END, beam_width=2)}

    module.translate = translate
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": translate})
    serve = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    out = serve(tf.constant(source))
    np.testing.assert_array_equal(out["greedy"].numpy(),
                                  greedy_search(model, source, START, END).numpy())
    np.testing.assert_array_equal(out["beam"].numpy(),
                                  beam_search(model, source, START, END, beam_width=2).numpy())
    assert tuple(serve(tf.constant(source[:1]))["beam"].shape) == (1, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beam_width=0), "Received: beam_width=0"),
    (dict(length_penalty=-1.0), "Received: length_penalty=-1.0"),
    (dict(max_length=9), "Received: max_length=9"),
])
def test_rejects_bad_arguments(model, source, kwargs, match):
    with pytest.raises(ValueError, match=f"Expected.*{match}"):
        beam_search(model, source, START, END, **kwargs)
