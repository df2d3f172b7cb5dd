"""Losses the tasks compile with; importing :mod:`fmkeras.models` registers them."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fmkeras")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (padding still masked).

    Keras' sparse loss has no ``label_smoothing``; this one one-hot encodes the
    integer labels first. The model output's padding mask is applied by
    ``keras.losses.Loss`` as for any loss.

    Args:
        label_smoothing: float in ``[0, 1)``.
        name: str. Loss name.

    Example:

    >>> loss = SmoothedSparseCrossentropy(0.1)
    >>> round(float(loss([[1]], [[[0.1, 0.9]]])), 3)
    0.215
    """

    def __init__(self, label_smoothing=0.0, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = keras.ops.convert_to_tensor(y_pred)
        depth = keras.ops.shape(y_pred)[-1]
        y_true = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), depth, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(y_true, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def text_loss(label_smoothing):
    """The sparse cross-entropy used by the text tasks (smoothed when asked).

    Example:

    >>> type(text_loss(0.1)).__name__, type(text_loss(0.0)).__name__
    ('SmoothedSparseCrossentropy', 'SparseCategoricalCrossentropy')
    """
    if label_smoothing:
        return SmoothedSparseCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()
