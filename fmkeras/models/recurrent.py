"""LSTM and GRU text classifiers over token ids (0 is padding)."""

from __future__ import annotations

import keras

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.models.transformer import check_classes, check_positive, check_rate

_CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def _recurrent_classifier(kind, vocab_size, num_classes, embedding_dim, units, num_layers,
                          bidirectional, dropout, dtype, name):
    check_positive(vocab_size=vocab_size, embedding_dim=embedding_dim, units=units,
                   num_layers=num_layers)
    check_classes(num_classes)
    check_rate(dropout=dropout)
    inputs = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, dtype=dtype,
                               name="embedding")(inputs)
    for i in range(num_layers):
        last = i == num_layers - 1
        layer = _CELLS[kind](units, return_sequences=not last, dtype=dtype,
                             name=f"{kind}_{i}")
        if bidirectional:
            layer = keras.layers.Bidirectional(layer, dtype=dtype, name=f"bidirectional_{i}")
        x = layer(x)
        x = keras.layers.Dropout(dropout, dtype=dtype, name=f"dropout_{i}")(x)
    x = keras.layers.Dense(num_classes, dtype=dtype, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


@accepts_numpy_scalars
def lstm_classifier(vocab_size, num_classes, embedding_dim=64, units=64, num_layers=1,
                    bidirectional=False, dropout=0.0, dtype=None, name="lstm_classifier"):
    """Builds an embedding + LSTM classifier that skips padded positions.

    Args:
        vocab_size: int. Vocabulary size, padding (0) included.
        num_classes: int. Number of classes (at least 2).
        embedding_dim: int. Size of each token vector.
        units: int. LSTM units per direction.
        num_layers: int. Stacked LSTM layers.
        bidirectional: bool. Read each sequence in both directions.
        dropout: float. Dropout rate in ``[0, 1)`` after each LSTM layer.
        dtype: str, ``keras.DTypePolicy`` or None. Policy for every layer
            except the float32 output; None uses the global policy.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model`` from int ids ``(batch, length)`` named
        ``token_ids`` to float32 class probabilities ``(batch, num_classes)``.

    Example:

    >>> model = lstm_classifier(50, 3, embedding_dim=16, units=8, bidirectional=True)
    >>> tuple(model(keras.ops.ones((2, 8), "int32")).shape)
    (2, 3)
    """
    return _recurrent_classifier("lstm", vocab_size, num_classes, embedding_dim, units,
                                 num_layers, bidirectional, dropout, dtype, name)


@accepts_numpy_scalars
def gru_classifier(vocab_size, num_classes, embedding_dim=64, units=64, num_layers=1,
                   bidirectional=False, dropout=0.0, dtype=None, name="gru_classifier"):
    """Builds an embedding + GRU classifier that skips padded positions.

    Args:
        vocab_size: int. Vocabulary size, padding (0) included.
        num_classes: int. Number of classes (at least 2).
        embedding_dim: int. Size of each token vector.
        units: int. GRU units per direction.
        num_layers: int. Stacked GRU layers.
        bidirectional: bool. Read each sequence in both directions.
        dropout: float. Dropout rate in ``[0, 1)`` after each GRU layer.
        dtype: str, ``keras.DTypePolicy`` or None. Policy for every layer
            except the float32 output; None uses the global policy.
        name: str. Model name.

    Returns:
        An uncompiled ``keras.Model`` from int ids ``(batch, length)`` named
        ``token_ids`` to float32 class probabilities ``(batch, num_classes)``.

    Example:

    >>> model = gru_classifier(50, 3, embedding_dim=16, units=8)
    >>> tuple(model(keras.ops.ones((2, 8), "int32")).shape)
    (2, 3)
    """
    return _recurrent_classifier("gru", vocab_size, num_classes, embedding_dim, units,
                                 num_layers, bidirectional, dropout, dtype, name)
