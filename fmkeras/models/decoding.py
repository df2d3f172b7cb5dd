"""Greedy and beam-search decoding for :func:`transformer_seq2seq` models.

Both searches are ``tf.while_loop`` graphs over fixed-size token buffers:
one traced function decodes every step, with no Python per token, and the
loop stops as soon as every sequence has produced the end token. They are
plain TensorFlow, so a SavedModel signature can call them; called eagerly
they run through a ``tf.function`` cached per model and settings.

Each step re-runs the whole model on the buffer (no key/value cache): simple
and exact, and cheap for the short sentences these models translate.

The start and end ids come from the target vectorizer, e.g.
``vocab = target_vectorizer.get_vocabulary(); vocab.index("[start]")``.
"""

from __future__ import annotations

import weakref

import numpy as np

from fmkeras._lazy import tf
from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models.transformer import check_positive

_NEG_INF = -1e9  # Finite, so sums of "impossible" scores never become NaN.
_COMPILED = weakref.WeakKeyDictionary()  # model -> {settings: tf.function}


def _sequence_length(model, layer_name):
    """The ``sequence_length`` of the model's embedding layer ``layer_name``, or None."""
    try:
        return model.get_layer(layer_name).sequence_length
    except ValueError:
        return None


def _max_length(model, max_length):
    """The decode length asked for, or the decoder embedding's length."""
    limit = _sequence_length(model, "decoder_embedding")
    if max_length is None:
        if limit is None:
            raise ValueError("Expected `max_length`, or a model with a `decoder_embedding` "
                             "layer to take it from. Received: max_length=None")
        return limit
    check_positive(max_length=max_length)
    if limit is not None and max_length > limit:
        raise ValueError(f"Expected `max_length` <= the model's sequence_length ({limit}). "
                         f"Received: max_length={max_length}")
    return max_length


def _log_probs(model, encoder_inputs, tokens, step, from_logits):
    """Log-probabilities ``(batch, vocab)`` of the token after position ``step``."""
    outputs = model({"encoder_inputs": encoder_inputs, "decoder_inputs": tokens},
                    training=False)
    scores = tf.cast(tf.gather(outputs, step, axis=1), tf.float32)
    if from_logits:
        return tf.nn.log_softmax(scores)
    return tf.math.log(tf.maximum(scores, 1e-30))


def _write(tokens, column, values):
    """``tokens`` with ``values`` placed in an all-zero ``column`` (last axis)."""
    width = tf.shape(tokens)[-1]
    return tokens + tf.one_hot(column, width, dtype=tokens.dtype) * values[..., None]


def _start_buffer(batch, start_id, max_length):
    start = tf.fill([batch, 1], tf.cast(start_id, tf.int32))
    return tf.concat([start, tf.zeros([batch, max_length], tf.int32)], axis=1)


def _greedy_graph(model, encoder_inputs, start_id, end_id, max_length, from_logits):
    batch = tf.shape(encoder_inputs)[0]

    def keep_going(step, tokens, finished):
        return tf.logical_and(step < max_length, tf.logical_not(tf.reduce_all(finished)))

    def decode_step(step, tokens, finished):
        log_probs = _log_probs(model, encoder_inputs, tokens[:, :max_length], step, from_logits)
        chosen = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        chosen = tf.where(finished, tf.zeros_like(chosen), chosen)
        tokens = _write(tokens, step + 1, chosen)
        return step + 1, tokens, tf.logical_or(finished, tf.equal(chosen, end_id))

    _, tokens, _ = tf.while_loop(
        keep_going, decode_step,
        (tf.constant(0), _start_buffer(batch, start_id, max_length), tf.zeros([batch], tf.bool)),
        maximum_iterations=max_length)
    return tokens[:, 1:]


def _beam_graph(model, encoder_inputs, start_id, end_id, max_length, from_logits, beam_width,
                length_penalty):
    batch = tf.shape(encoder_inputs)[0]
    beams_encoder_inputs = tf.repeat(encoder_inputs, beam_width, axis=0)
    # Only beam 0 is alive at first, so the first step does not pick duplicates.
    first = tf.concat([[0.0], tf.fill([beam_width - 1], _NEG_INF)], axis=0)

    def keep_going(step, tokens, scores, finished, lengths):
        return tf.logical_and(step < max_length, tf.logical_not(tf.reduce_all(finished)))

    def decode_step(step, tokens, scores, finished, lengths):
        log_probs = _log_probs(model, beams_encoder_inputs, tokens[:, :max_length], step,
                               from_logits)
        vocab = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, [batch, beam_width, vocab])
        # A finished beam may only continue with padding, at no cost.
        pad_only = tf.where(tf.range(vocab) == 0, 0.0, _NEG_INF)
        log_probs = tf.where(finished[..., None], pad_only, log_probs)
        total = tf.reshape(scores[..., None] + log_probs, [batch, beam_width * vocab])
        scores, index = tf.math.top_k(total, k=beam_width)
        parent, chosen = index // vocab, index % vocab
        width = max_length + 1
        tokens = tf.gather(tf.reshape(tokens, [batch, beam_width, width]), parent,
                           batch_dims=1)
        finished = tf.gather(finished, parent, batch_dims=1)
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~finished, tf.int32)
        tokens = tf.reshape(_write(tokens, step + 1, chosen), [batch * beam_width, width])
        finished = tf.logical_or(finished, tf.equal(chosen, end_id))
        return step + 1, tokens, scores, finished, lengths

    _, tokens, scores, _, lengths = tf.while_loop(
        keep_going, decode_step,
        (tf.constant(0), _start_buffer(batch * beam_width, start_id, max_length),
         tf.tile(first[None, :], [batch, 1]), tf.zeros([batch, beam_width], tf.bool),
         tf.zeros([batch, beam_width], tf.int32)),
        maximum_iterations=max_length)
    # GNMT length penalty: ((5 + length) / 6) ** alpha; alpha 0 ranks by raw log-prob.
    penalty = tf.pow((5.0 + tf.cast(lengths, tf.float32)) / 6.0, length_penalty)
    normalized = scores / penalty
    best = tf.argmax(normalized, axis=1, output_type=tf.int32)
    tokens = tf.reshape(tokens, [batch, beam_width, max_length + 1])
    return (tf.gather(tokens, best, batch_dims=1)[:, 1:],
            tf.gather(normalized, best, batch_dims=1))


def _token_settings(model, start_id, end_id, max_length, from_logits):
    """The settings both searches share, checked against the model's vocabulary."""
    try:
        vocab_size = model.output_shape[-1]
    except AttributeError:  # a subclassed model that was never built from an Input
        vocab_size = None
    for name, value in (("start_id", start_id), ("end_id", end_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 \
                or (vocab_size is not None and value >= vocab_size):
            raise ValueError(f"Expected `{name}` to be a token id in [0, {vocab_size or 'vocab'})"
                             f", the model's target vocabulary. Received: {name}={value!r}")
    return dict(start_id=int(start_id), end_id=int(end_id),
                max_length=_max_length(model, max_length), from_logits=bool(from_logits))


def _run(graph, model, encoder_inputs, settings):
    """Runs ``graph`` in the current graph, or eagerly through a cached tf.function."""
    encoder_inputs = tf.cast(encoder_inputs, tf.int32)
    if encoder_inputs.shape.rank not in (None, 2):
        raise ValueError(f"Expected encoder_inputs of shape (batch, source_length). "
                         f"Received: shape {tuple(encoder_inputs.shape)}")
    limit = _sequence_length(model, "encoder_embedding")
    length = encoder_inputs.shape[-1] if encoder_inputs.shape.rank == 2 else None
    if limit is not None and length is not None and length > limit:
        raise ValueError(f"Expected encoder_inputs of at most the model's sequence_length="
                         f"{limit} tokens. Received: shape {tuple(encoder_inputs.shape)}")
    if tf.inside_function():
        return graph(model, encoder_inputs, **settings)
    cache = _COMPILED.setdefault(model, {})
    key = (graph.__name__,) + tuple(sorted(settings.items()))
    if key not in cache:
        # A weak reference, so that the cache entry does not keep its model alive.
        model_ref = weakref.ref(model)
        cache[key] = tf.function(
            lambda ids: graph(model_ref(), ids, **settings), autograph=False,
            input_signature=[tf.TensorSpec([None, None], tf.int32, name="encoder_inputs")])
    return cache[key](encoder_inputs)


@accepts_numpy_scalars
def greedy_search(model, encoder_inputs, start_id, end_id, max_length=None, from_logits=False):
    """Translates a batch by always taking the most probable next token.

    Args:
        model: keras.Model. A :func:`transformer_seq2seq` model (inputs
            ``encoder_inputs`` and ``decoder_inputs``).
        encoder_inputs: int tensor ``(batch, source_length)``. Source ids, 0
            for padding.
        start_id: int. Id of the ``[start]`` token.
        end_id: int. Id of the ``[end]`` token.
        max_length: int or None. Most tokens to generate; None uses the
            model's sequence length.
        from_logits: bool. Whether the model outputs logits, not probabilities.

    Returns:
        int32 tensor ``(batch, max_length)``: generated ids, the end token
        included, then 0.

    Example:

    >>> from fmkeras.models.transformer import transformer_seq2seq
    >>> model = transformer_seq2seq(50, 50, 8, d_model=16, num_heads=2, ff_dim=32,
    ...                             num_encoder_layers=1, num_decoder_layers=1)
    >>> tuple(greedy_search(model, tf.ones((2, 8), tf.int32), 2, 3).shape)
    (2, 8)
    """
    settings = _token_settings(model, start_id, end_id, max_length, from_logits)
    return _run(_greedy_graph, model, encoder_inputs, settings)


@accepts_numpy_scalars
def beam_search(model, encoder_inputs, start_id, end_id, beam_width=4, length_penalty=0.6,
                max_length=None, from_logits=False, return_scores=False):
    """Translates a batch keeping the ``beam_width`` best partial translations.

    Beams are ranked by summed log-probability; the final choice divides it
    by the GNMT length penalty ``((5 + length) / 6) ** length_penalty``.
    ``beam_width=1`` gives the same tokens as :func:`greedy_search`.

    Args:
        model: keras.Model. A :func:`transformer_seq2seq` model.
        encoder_inputs: int tensor ``(batch, source_length)``. Source ids, 0
            for padding.
        start_id: int. Id of the ``[start]`` token.
        end_id: int. Id of the ``[end]`` token.
        beam_width: int. Beams kept per sentence.
        length_penalty: float. Exponent ``alpha`` of the length penalty;
            0 ranks by raw log-probability, larger favours longer outputs.
        max_length: int or None. Most tokens to generate; None uses the
            model's sequence length.
        from_logits: bool. Whether the model outputs logits, not probabilities.
        return_scores: bool. Also return each chosen beam's normalised score.

    Returns:
        int32 tensor ``(batch, max_length)`` of ids (end token included, then
        0), or ``(ids, scores)`` when ``return_scores``.

    Example:

    >>> from fmkeras.models.transformer import transformer_seq2seq
    >>> model = transformer_seq2seq(50, 50, 8, d_model=16, num_heads=2, ff_dim=32,
    ...                             num_encoder_layers=1, num_decoder_layers=1)
    >>> tuple(beam_search(model, tf.ones((2, 8), tf.int32), 2, 3, beam_width=3).shape)
    (2, 8)
    """
    check_positive(beam_width=beam_width)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or length_penalty < 0:
        raise ValueError("Expected `length_penalty` to be a number >= 0. "
                         f"Received: length_penalty={length_penalty!r}")
    settings = dict(_token_settings(model, start_id, end_id, max_length, from_logits),
                    beam_width=beam_width, length_penalty=float(length_penalty))
    tokens, scores = _run(_beam_graph, model, encoder_inputs, settings)
    return (tokens, scores) if return_scores else tokens
