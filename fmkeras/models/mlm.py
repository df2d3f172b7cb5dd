"""Masked-language-model pretraining of a Transformer encoder (BERT-style).

:func:`mask_tokens` picks positions to predict and corrupts them (80% the
mask id, 10% a random token, 10% unchanged). Padding (0) and ``[UNK]`` (1)
are never picked: an unknown word cannot be restored, and with a word
vocabulary ``[UNK]`` is the most frequent token, so a model answering
``[UNK]`` everywhere would score its frequency as accuracy without learning
anything. :func:`mlm_model` is a Transformer encoder, built from the layers
of :mod:`fmkeras.models.transformer` with the layer names
:func:`fmkeras.models.transformer_classifier` uses, plus a per-position
float32 softmax over the vocabulary.
"""

from __future__ import annotations

import keras

from fmkeras._lazy import tf
from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count, is_number
from fmkeras.models.transformer import PositionalEmbedding, TransformerEncoderBlock


@accepts_numpy_scalars
def mask_tokens(token_ids, mask_id, vocab_size, rate=0.15, seed=(0, 0)):
    """Corrupt a batch of token ids for masked-language-model training.

    Args:
        token_ids: int tensor ``[batch, length]``; 0 is padding and 1 is
            ``[UNK]`` (``TextVectorization``'s ids): neither is ever chosen.
        mask_id: int. The ``[mask]`` token id.
        vocab_size: int. Random replacements are drawn from ``[2, vocab_size)``
            (skipping padding and ``[UNK]``).
        rate: float. Fraction of known tokens (ids >= 2) chosen for prediction.
        seed: shape ``[2]`` int tensor or pair. Stateless random seed.

    Returns:
        ``(inputs, labels, weights)``: the corrupted ids, the original ids,
        and float32 ``1.0`` where the loss applies, ``0.0`` elsewhere.

    Example:

    >>> ids = tf.constant([[5, 1, 7, 0]])
    >>> inputs, labels, weights = mask_tokens(ids, mask_id=9, vocab_size=10, rate=1.0)
    >>> weights.numpy().tolist()
    [[1.0, 0.0, 1.0, 0.0]]
    """
    if not (is_number(rate) and 0.0 < rate <= 1.0):
        raise ValueError(f"Expected 0 < rate <= 1. Received: rate={rate!r}")
    if not is_count(vocab_size, 3):
        raise ValueError(f"Expected vocab_size >= 3 (padding, [UNK] and a token). "
                         f"Received: vocab_size={vocab_size!r}")
    if not is_count(mask_id, 2) or mask_id >= vocab_size:
        raise ValueError(f"Expected mask_id in [2, {vocab_size}) (not padding or [UNK]). "
                         f"Received: mask_id={mask_id!r}")
    token_ids = tf.cast(token_ids, tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    shape = tf.shape(token_ids)
    known = token_ids > 1  # neither padding nor [UNK]
    chosen = tf.logical_and(known, tf.random.stateless_uniform(shape, seeds[0]) < rate)
    action = tf.random.stateless_uniform(shape, seeds[1])
    random_ids = tf.random.stateless_uniform(shape, seeds[2], 2, vocab_size, tf.int32)
    inputs = tf.where(chosen & (action < 0.8), mask_id, token_ids)
    inputs = tf.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, token_ids, tf.cast(chosen, tf.float32)


@accepts_numpy_scalars
def mlm_model(vocab_size, sequence_length, d_model=128, num_heads=4, ff_dim=256, num_layers=2,
              dropout=0.1, dtype=None, name="mlm"):
    """A Transformer encoder with a per-position vocabulary softmax (uncompiled).

    Args:
        vocab_size: int. Vocabulary size, padding (0) and the mask id included.
        sequence_length: int. Longest input accepted.
        d_model: int. Width of embeddings and blocks.
        num_heads: int. Attention heads per block.
        ff_dim: int. Hidden width of each feed-forward layer.
        num_layers: int. Encoder blocks (named ``encoder_block_<i>``).
        dropout: float. Dropout rate.
        dtype: optional dtype policy for every layer but the float32 output.
        name: str. Model name.

    Returns:
        ``keras.Model`` from ``token_ids`` ``[batch, length]`` to
        probabilities ``[batch, length, vocab_size]``.

    Example:

    >>> model = mlm_model(30, 8, d_model=16, num_heads=2, ff_dim=16, num_layers=1)
    >>> model.output_shape
    (None, None, 30)
    """
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    x = PositionalEmbedding(vocab_size, sequence_length, d_model, dtype=dtype,
                            name="embedding")(inputs)
    x = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderBlock(num_heads, ff_dim, dropout, dtype=dtype,
                                    name=f"encoder_block_{i}")(x)
    x = keras.layers.Dense(d_model, activation="gelu", dtype=dtype, name="mlm_transform")(x)
    x = keras.layers.LayerNormalization(dtype=dtype, name="mlm_norm")(x)
    outputs = keras.layers.Dense(vocab_size, activation="softmax", dtype="float32",
                                 name="mlm_probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
