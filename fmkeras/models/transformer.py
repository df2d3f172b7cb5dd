"""Transformer layers and builders for translation and text classification.

The layers are registered serializable and pass masks along: token id 0 is
padding, so a padded position never changes what other positions compute,
and a decoder position never sees the positions after it. Masks are boolean,
so MultiHeadAttention fills masked scores with a value that fits the compute
dtype (``-3e4`` for float16), and mixed precision cannot overflow.
"""

from __future__ import annotations

import keras
from keras import ops

from fmkeras._gc import collect_once
from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models._checks import check_positive_int
from fmkeras.models._checks import check_rate as _check_rate

_PACKAGE = "fmkeras"


def check_positive(**values):
    """Raises ValueError unless every keyword value is a positive int.

    Example:

    >>> check_positive(d_model=64, num_heads=0)
    Traceback (most recent call last):
    ...
    ValueError: Expected num_heads to be a positive integer. Received: num_heads=0
    """
    for key, value in values.items():
        check_positive_int(key, value)


def check_rate(**values):
    """Raises ValueError unless every keyword value is a number in [0, 1).

    Example:

    >>> check_rate(dropout=0.1)
    >>> check_rate(dropout=1.0)
    Traceback (most recent call last):
    ...
    ValueError: Expected dropout in [0, 1). Received: dropout=1.0
    """
    for key, value in values.items():
        _check_rate(key, value)


def check_classes(num_classes):
    """Raises ValueError unless ``num_classes`` is an int >= 2.

    Example:

    >>> check_classes(2)
    >>> check_classes(1)
    Traceback (most recent call last):
    ...
    ValueError: Expected `num_classes` to be an integer >= 2. Received: num_classes=1
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(
            f"Expected `num_classes` to be an integer >= 2. Received: num_classes={num_classes!r}")


def check_choice(key, value, choices):
    """Raises ValueError unless ``value`` is one of ``choices``.

    Example:

    >>> check_choice("pooling", "max", ("cls", "mean"))
    Traceback (most recent call last):
    ...
    ValueError: Expected `pooling` to be one of ['cls', 'mean']. Received: pooling='max'
    """
    if value not in choices:
        raise ValueError(
            f"Expected `{key}` to be one of {list(choices)}. Received: {key}={value!r}")


def _check_heads(d_model, num_heads):
    if d_model % num_heads:
        raise ValueError(
            "Expected `d_model` to be divisible by `num_heads`. "
            f"Received: d_model={d_model}, num_heads={num_heads}")


class _QuantizableSublayers(keras.layers.Layer):
    """Base for layers that make their own Dense, EinsumDense or Embedding sub-layers.

    ``Model.quantize`` makes those sub-layers int8 (or int4, float8), but a
    ``.keras`` file rebuilds them from this layer's config as float layers,
    and their quantized weights then fail to load. So the config's ``dtype``
    becomes a ``DTypePolicyMap`` of the quantized sub-layers' paths, the
    sub-layers are made with the map's default policy, and ``build`` ends with
    :meth:`_quantize_sublayers`, which quantizes them again before the saved
    weights are loaded.
    """

    def __init__(self, **kwargs):
        dtype = kwargs.get("dtype")
        if isinstance(dtype, dict):
            dtype = keras.dtype_policies.get(dtype)
        policies = {}
        if isinstance(dtype, keras.dtype_policies.DTypePolicyMap):
            policies = {path: dtype[path] for path in dtype}
            kwargs["dtype"] = dtype.default_policy
        super().__init__(**kwargs)
        self._sublayer_policies = policies

    def _quantize_sublayers(self):
        if not self._sublayer_policies:
            return
        with collect_once():
            for layer in self._flatten_layers(include_self=False):
                policy = self._sublayer_policies.get(layer.path)
                if policy is not None and layer.quantization_mode is None:
                    layer.dtype_policy = policy  # a built layer quantizes itself

    def get_config(self):
        config = super().get_config()
        quantized = {layer.path: layer.dtype_policy
                     for layer in self._flatten_layers(include_self=False)
                     if layer.quantization_mode is not None}
        if quantized:
            config["dtype"] = keras.dtype_policies.serialize(
                keras.dtype_policies.DTypePolicyMap(self.dtype_policy, quantized))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionalEmbedding(_QuantizableSublayers):
    """Token embedding plus a learned position embedding; id 0 is padding.

    Args:
        vocab_size: int. Number of token ids, padding (0) included.
        sequence_length: int. Longest sequence the layer accepts (one
            position vector each); shorter ones are fine.
        d_model: int. Size of each embedding vector.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> layer = PositionalEmbedding(vocab_size=50, sequence_length=8, d_model=16)
    >>> tuple(layer(keras.ops.ones((2, 5), "int32")).shape)
    (2, 5, 16)
    """

    def __init__(self, vocab_size, sequence_length, d_model, **kwargs):
        super().__init__(**kwargs)
        check_positive(vocab_size=vocab_size, sequence_length=sequence_length,
                       d_model=d_model)
        self.vocab_size = vocab_size
        self.sequence_length = sequence_length
        self.d_model = d_model
        self.token_embedding = keras.layers.Embedding(
            vocab_size, d_model, mask_zero=True, dtype=self.dtype_policy,
            name="token_embedding")
        self.position_embedding = keras.layers.Embedding(
            sequence_length, d_model, dtype=self.dtype_policy, name="position_embedding")

    def _check_length(self, shape):
        if shape[-1] is not None and shape[-1] > self.sequence_length:
            raise ValueError(
                f"Expected sequences of at most sequence_length={self.sequence_length} "
                f"tokens. Received: input_shape={tuple(shape)}")

    def build(self, input_shape):
        self._check_length(input_shape)
        self.token_embedding.build(input_shape)
        self.position_embedding.build((self.sequence_length,))
        self._quantize_sublayers()
        self.built = True

    def call(self, inputs):
        # Models take ``(None,)`` sequences, so ``build`` never sees the length.
        self._check_length(tuple(inputs.shape))
        positions = ops.arange(ops.shape(inputs)[-1])
        return self.token_embedding(inputs) + self.position_embedding(positions)

    def compute_mask(self, inputs, previous_mask=None):
        return ops.not_equal(inputs, 0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.d_model,)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, sequence_length=self.sequence_length,
                      d_model=self.d_model)
        return config


class _TransformerBlock(_QuantizableSublayers):
    """What the encoder and decoder blocks share: attention factory, feed-forward, config.

    Residuals are post-norm (``norm(x + sublayer(x))``), as in the original
    Transformer. Sub-layers are made in ``build``, once the width is known,
    with this layer's dtype policy.
    """

    def __init__(self, num_heads, ff_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive(num_heads=num_heads, ff_dim=ff_dim)
        check_rate(dropout=dropout)
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.supports_masking = True

    def _sublayer(self, cls, *args, **kwargs):
        return cls(*args, dtype=self.dtype_policy, **kwargs)

    def _attention(self, name, query_shape, value_shape):
        d_model = query_shape[-1]
        _check_heads(d_model, self.num_heads)
        layer = self._sublayer(keras.layers.MultiHeadAttention, self.num_heads,
                               d_model // self.num_heads, dropout=self.dropout, name=name)
        layer.build(query_shape, value_shape)
        return layer

    def _residual(self, name, shape):
        """Dropout and layer norm closing one residual branch."""
        norm = self._sublayer(keras.layers.LayerNormalization, epsilon=1e-5,
                              name=f"{name}_norm")
        norm.build(shape)
        return self._sublayer(keras.layers.Dropout, self.dropout, name=f"{name}_dropout"), norm

    def _build_feed_forward(self, shape):
        self.ff_inner = self._sublayer(keras.layers.Dense, self.ff_dim, activation="relu",
                                       name="ff_inner")
        self.ff_inner.build(shape)
        self.ff_outer = self._sublayer(keras.layers.Dense, shape[-1], name="ff_outer")
        self.ff_outer.build(tuple(shape[:-1]) + (self.ff_dim,))
        self.ff_dropout, self.ff_norm = self._residual("ff", shape)

    def _feed_forward(self, x, training):
        y = self.ff_outer(self.ff_inner(x))
        return self.ff_norm(x + self.ff_dropout(y, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, ff_dim=self.ff_dim, dropout=self.dropout)
        return config


def _padding_mask(query_length, key_mask):
    """Boolean (batch, query_length, key_length) mask from a key padding mask."""
    if key_mask is None:
        return None
    key_mask = ops.cast(key_mask, "bool")[:, None, :]
    return ops.broadcast_to(
        key_mask, (ops.shape(key_mask)[0], query_length, ops.shape(key_mask)[-1]))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerEncoderBlock(_TransformerBlock):
    """Self-attention and feed-forward block that ignores padded positions.

    Args:
        num_heads: int. Attention heads; must divide the input width.
        ff_dim: int. Width of the hidden feed-forward layer.
        dropout: float. Dropout rate in ``[0, 1)`` for attention and output.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> block = TransformerEncoderBlock(num_heads=2, ff_dim=32)
    >>> tuple(block(keras.ops.zeros((2, 8, 16))).shape)
    (2, 8, 16)
    """

    def build(self, input_shape):
        self.attention = self._attention("self_attention", input_shape, input_shape)
        self.attention_dropout, self.attention_norm = self._residual("attention", input_shape)
        self._build_feed_forward(input_shape)
        self._quantize_sublayers()
        self.built = True

    def call(self, inputs, mask=None, training=None):
        attention_mask = _padding_mask(ops.shape(inputs)[1], mask)
        y = self.attention(inputs, inputs, attention_mask=attention_mask, training=training)
        x = self.attention_norm(inputs + self.attention_dropout(y, training=training))
        return self._feed_forward(x, training)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerDecoderBlock(_TransformerBlock):
    """Causal self-attention, cross-attention to the encoder, and feed-forward.

    Position ``i`` attends only to decoder positions ``<= i`` that are not
    padding, and to encoder positions that are not padding. Call it as
    ``block(decoder_sequence, encoder_sequence)``; Keras passes both masks.
    ``block(..., return_attention_scores=True)`` returns ``(outputs,
    cross_attention_scores)``, the scores shaped ``(batch, num_heads,
    decoder_length, encoder_length)`` (see :func:`cross_attention_weights`).

    Args:
        num_heads: int. Attention heads; must divide the input width.
        ff_dim: int. Width of the hidden feed-forward layer.
        dropout: float. Dropout rate in ``[0, 1)`` for attention and output.
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> block = TransformerDecoderBlock(num_heads=2, ff_dim=32)
    >>> out = block(keras.ops.zeros((2, 7, 16)), keras.ops.zeros((2, 8, 16)))
    >>> tuple(out.shape)
    (2, 7, 16)
    """

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        if encoder_sequence_shape is None:
            encoder_sequence_shape = decoder_sequence_shape
        shape = decoder_sequence_shape
        self.self_attention = self._attention("self_attention", shape, shape)
        self.self_dropout, self.self_norm = self._residual("self", shape)
        self.cross_attention = self._attention("cross_attention", shape,
                                               encoder_sequence_shape)
        self.cross_dropout, self.cross_norm = self._residual("cross", shape)
        self._build_feed_forward(shape)
        self._quantize_sublayers()
        self.built = True

    def call(self, decoder_sequence, encoder_sequence, decoder_sequence_mask=None,
             encoder_sequence_mask=None, training=None, return_attention_scores=False):
        length = ops.shape(decoder_sequence)[1]
        y = self.self_attention(
            decoder_sequence, decoder_sequence, use_causal_mask=True,
            attention_mask=_padding_mask(length, decoder_sequence_mask), training=training)
        x = self.self_norm(decoder_sequence + self.self_dropout(y, training=training))
        # MultiHeadAttention deletes the Keras mask of the tensors it is given; the encoder
        # output is shared by every decoder block, so give it a copy and keep the mask
        # for the next block.
        memory = ops.copy(encoder_sequence)
        y = self.cross_attention(
            x, memory, attention_mask=_padding_mask(length, encoder_sequence_mask),
            training=training, return_attention_scores=return_attention_scores)
        if return_attention_scores:
            y, scores = y
        x = self.cross_norm(x + self.cross_dropout(y, training=training))
        outputs = self._feed_forward(x, training)
        return (outputs, scores) if return_attention_scores else outputs

    def compute_mask(self, decoder_sequence, previous_mask=None):
        return previous_mask

    def compute_output_shape(self, decoder_sequence_shape, encoder_sequence_shape=None):
        return decoder_sequence_shape


def cross_attention_weights(model, source_ids, target_ids, block=-1):
    """Where each decoder position of a seq2seq Transformer looks in the source.

    Runs ``model`` (a :func:`transformer_seq2seq` model) up to one decoder
    block, then that block with ``return_attention_scores=True``, in
    inference mode. Row ``i`` of the result is the block's cross-attention
    from decoder input position ``i`` (the ``[start]`` token, then the
    tokens produced so far), i.e. while predicting output token ``i``, over
    the source positions. Padded source positions get weight 0.

    Args:
        model: keras.Model. Built by :func:`transformer_seq2seq`.
        source_ids: int array ``(batch, source_length)``. Source ids, 0 for padding.
        target_ids: int array ``(batch, target_length)``. Decoder inputs:
            the start id followed by target ids, 0 for padding.
        block: int. Index of the decoder block, ``-1`` (the last) by default.

    Returns:
        float32 np.ndarray ``(batch, num_heads, target_length,
        source_length)``; each row over non-padded source positions sums to 1.

    Example:

    >>> model = transformer_seq2seq(50, 60, sequence_length=8, d_model=16, num_heads=2,
    ...                             ff_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    >>> ids = keras.ops.ones((2, 8), "int32")
    >>> cross_attention_weights(model, ids, ids[:, :5]).shape
    (2, 2, 5, 8)
    """
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerDecoderBlock)]
    if not blocks:
        raise ValueError("Expected a model with TransformerDecoderBlock layers, e.g. from "
                         f"transformer_seq2seq. Received: model {model.name!r} without any")
    if not isinstance(block, int) or not -len(blocks) <= block < len(blocks):
        raise ValueError(f"Expected `block` to index one of the model's {len(blocks)} decoder "
                         f"blocks. Received: block={block!r}")
    layer = blocks[block]
    # The block's two inputs (decoder and encoder sequences) as a sub-model.
    block_inputs = keras.Model(model.input, list(layer.input), name=f"{layer.name}_inputs")
    source_ids = ops.cast(ops.convert_to_tensor(source_ids), "int32")
    target_ids = ops.cast(ops.convert_to_tensor(target_ids), "int32")
    decoder_sequence, encoder_sequence = block_inputs(
        {"encoder_inputs": source_ids, "decoder_inputs": target_ids}, training=False)
    _, scores = layer(decoder_sequence, encoder_sequence,
                      decoder_sequence_mask=ops.not_equal(target_ids, 0),
                      encoder_sequence_mask=ops.not_equal(source_ids, 0), training=False,
                      return_attention_scores=True)
    return ops.convert_to_numpy(ops.cast(scores, "float32"))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends one learned vector to each sequence and marks it as not padding.

    Args:
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> tuple(ClassToken()(keras.ops.zeros((2, 8, 16))).shape)
    (2, 9, 16)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.token = self.add_weight(name="token", shape=(1, 1, input_shape[-1]),
                                     initializer="random_normal")

    def call(self, inputs):
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, ops.shape(inputs)[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_mask(self, inputs, previous_mask=None):
        if previous_mask is None:
            return None
        first = ops.ones_like(previous_mask[:, :1], dtype="bool")
        return ops.concatenate([first, ops.cast(previous_mask, "bool")], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[-1])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FirstToken(keras.layers.Layer):
    """Takes the vector at position 0 of each sequence (the class token).

    Args:
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> tuple(FirstToken()(keras.ops.zeros((2, 9, 16))).shape)
    (2, 16)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[:, 0, :]

    def compute_mask(self, inputs, previous_mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMean(keras.layers.Layer):
    """Averages the vectors of the non-padded positions of each sequence.

    Unlike ``GlobalAveragePooling1D``, a sequence that is all padding (an
    empty text) gives zeros instead of 0/0 = NaN, which would otherwise spread
    into the loss and the weights.

    Args:
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Example:

    >>> x = keras.ops.ones((2, 3, 4))
    >>> mask = keras.ops.convert_to_tensor([[True, True, False], [False, False, False]])
    >>> keras.ops.convert_to_numpy(MaskedMean()(x, mask=mask)).tolist()
    [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        weights = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1)
        return ops.sum(inputs * weights, axis=1) / count

    def compute_mask(self, inputs, previous_mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def _output_head(x, units, activation, name, dtype):
    # Logits and probabilities in float32 whatever the compute policy.
    x = keras.layers.Dense(units, name=f"{name}_logits", dtype=dtype)(x)
    if activation is None:
        return keras.layers.Activation("linear", name=name, dtype="float32")(x)
    return keras.layers.Activation(activation, name=name, dtype="float32")(x)


@accepts_numpy_scalars
def transformer_seq2seq(source_vocab_size, target_vocab_size, sequence_length, d_model=128,
                        num_heads=4, ff_dim=256, num_encoder_layers=2, num_decoder_layers=2,
                        dropout=0.1, output_activation="softmax", dtype=None,
                        name="transformer_seq2seq"):
    """Builds an encoder-decoder Transformer for teacher-forced translation.

    Inputs are int token ids, 0 for padding: ``encoder_inputs`` (the source)
    and ``decoder_inputs`` (the target shifted right, starting with the start
    token), each of shape ``(batch, length)`` with ``length <=
    sequence_length``. The output ``(batch, decoder_length,
    target_vocab_size)`` holds next-token probabilities in float32 and carries
    the decoder padding mask, so Keras losses ignore padded positions.

    Args:
        source_vocab_size: int. Source vocabulary size, padding included.
        target_vocab_size: int. Target vocabulary size, padding included.
        sequence_length: int. Longest source and decoder input accepted.
        d_model: int. Width of embeddings and blocks; divisible by ``num_heads``.
        num_heads: int. Attention heads per block.
        ff_dim: int. Hidden width of each feed-forward layer.
        num_encoder_layers: int. Encoder blocks.
        num_decoder_layers: int. Decoder blocks.
        dropout: float. Dropout rate in ``[0, 1)``.
        output_activation: str or None. ``"softmax"`` (probabilities) or
            ``None`` (logits).
        dtype: str, ``keras.DTypePolicy`` or None. Policy for every layer
            except the float32 output; None uses the global policy.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model``.

    Example:

    >>> model = transformer_seq2seq(50, 60, sequence_length=8, d_model=16, num_heads=2,
    ...                             ff_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    >>> ids = keras.ops.ones((2, 8), "int32")
    >>> tuple(model({"encoder_inputs": ids, "decoder_inputs": ids}).shape)
    (2, 8, 60)
    """
    check_positive(source_vocab_size=source_vocab_size, target_vocab_size=target_vocab_size,
                   sequence_length=sequence_length, d_model=d_model, num_heads=num_heads,
                   ff_dim=ff_dim, num_encoder_layers=num_encoder_layers,
                   num_decoder_layers=num_decoder_layers)
    check_rate(dropout=dropout)
    check_choice("output_activation", output_activation, ("softmax", None))
    _check_heads(d_model, num_heads)
    encoder_inputs = keras.Input((None,), dtype="int32", name="encoder_inputs")
    decoder_inputs = keras.Input((None,), dtype="int32", name="decoder_inputs")
    x = PositionalEmbedding(source_vocab_size, sequence_length, d_model, dtype=dtype,
                            name="encoder_embedding")(encoder_inputs)
    x = keras.layers.Dropout(dropout, dtype=dtype, name="encoder_embedding_dropout")(x)
    for i in range(num_encoder_layers):
        x = TransformerEncoderBlock(num_heads, ff_dim, dropout, dtype=dtype,
                                    name=f"encoder_block_{i}")(x)
    encoded = x
    y = PositionalEmbedding(target_vocab_size, sequence_length, d_model, dtype=dtype,
                            name="decoder_embedding")(decoder_inputs)
    y = keras.layers.Dropout(dropout, dtype=dtype, name="decoder_embedding_dropout")(y)
    for i in range(num_decoder_layers):
        y = TransformerDecoderBlock(num_heads, ff_dim, dropout, dtype=dtype,
                                    name=f"decoder_block_{i}")(y, encoded)
    y = keras.layers.Dropout(dropout, dtype=dtype, name="decoder_output_dropout")(y)
    outputs = _output_head(y, target_vocab_size, output_activation, "next_token", dtype)
    return keras.Model({"encoder_inputs": encoder_inputs, "decoder_inputs": decoder_inputs},
                       outputs, name=name)


@accepts_numpy_scalars
def transformer_classifier(vocab_size, sequence_length, num_classes, d_model=128, num_heads=4,
                           ff_dim=256, num_layers=2, pooling="cls", dropout=0.1, dtype=None,
                           name="transformer_classifier"):
    """Builds a Transformer encoder that classifies token-id sequences.

    Args:
        vocab_size: int. Vocabulary size, padding (0) included.
        sequence_length: int. Longest input accepted.
        num_classes: int. Number of classes (at least 2).
        d_model: int. Width of embeddings and blocks; divisible by ``num_heads``.
        num_heads: int. Attention heads per block.
        ff_dim: int. Hidden width of each feed-forward layer.
        num_layers: int. Encoder blocks.
        pooling: str. ``"cls"`` prepends a learned class token and classifies
            its output; ``"mean"`` averages the non-padded positions (an
            all-padding sequence pools to zeros).
        dropout: float. Dropout rate in ``[0, 1)``.
        dtype: str, ``keras.DTypePolicy`` or None. Policy for every layer
            except the float32 output; None uses the global policy.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model`` from int ids ``(batch, length)`` named
        ``token_ids`` to float32 class probabilities ``(batch, num_classes)``.

    Example:

    >>> model = transformer_classifier(50, 8, 3, d_model=16, num_heads=2, ff_dim=32,
    ...                                num_layers=1)
    >>> tuple(model(keras.ops.ones((2, 8), "int32")).shape)
    (2, 3)
    """
    check_positive(vocab_size=vocab_size, sequence_length=sequence_length, d_model=d_model,
                   num_heads=num_heads, ff_dim=ff_dim, num_layers=num_layers)
    check_classes(num_classes)
    check_choice("pooling", pooling, ("cls", "mean"))
    check_rate(dropout=dropout)
    _check_heads(d_model, num_heads)
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    x = PositionalEmbedding(vocab_size, sequence_length, d_model, dtype=dtype,
                            name="embedding")(inputs)
    if pooling == "cls":
        x = ClassToken(dtype=dtype, name="class_token")(x)
    x = keras.layers.Dropout(dropout, dtype=dtype, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerEncoderBlock(num_heads, ff_dim, dropout, dtype=dtype,
                                    name=f"encoder_block_{i}")(x)
    if pooling == "cls":
        x = FirstToken(dtype=dtype, name="pool")(x)
    else:
        x = MaskedMean(dtype=dtype, name="pool")(x)
    x = keras.layers.Dropout(dropout, dtype=dtype, name="pool_dropout")(x)
    outputs = _output_head(x, num_classes, "softmax", "probabilities", dtype)
    return keras.Model(inputs, outputs, name=name)

