"""Batch normalization through TensorFlow's fused kernel.

Keras 3's ``BatchNormalization`` computes the batch moments and the
normalization as separate TensorFlow ops (``tf.nn.moments`` and
``tf.nn.batch_normalization``), several passes over the activations forward
and more backward. TensorFlow's ``FusedBatchNormV3`` kernel does each
direction in one op; on a CPU it is about 3.5x faster for the activation
sizes of a small CIFAR network.
"""

from __future__ import annotations

import keras

from fmkeras._lazy import tf

# The fused kernel raises smaller epsilons to this value (a cuDNN limit).
_MIN_FUSED_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="fmkeras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Same arguments, weights, moving-average update and results as the Keras
    layer (up to float rounding), so it drops in wherever a batch norm
    normalizes the channels of images (``axis=-1`` of a 4-D
    ``[batch, height, width, channels]`` input). Where the fused kernel does
    not apply (another backend, axis or rank, a mask, ``synchronized=True``,
    ``renorm=True``, or ``epsilon`` below 1.001e-5, which the kernel would
    raise), it runs the Keras computation instead.

    Example:

    >>> import numpy as np
    >>> bn = FusedBatchNormalization(momentum=0.5, scale=False)
    >>> x = np.arange(16, dtype="float32").reshape(2, 2, 2, 2)
    >>> y = bn(x, training=True)
    >>> np.round(bn.moving_mean.numpy(), 2)
    array([3.5, 4. ], dtype=float32)
    """

    def _fusable(self, inputs, mask):
        return (mask is None and not self.synchronized and not self.renorm
                and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.epsilon >= _MIN_FUSED_EPSILON)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # Computed in float32, as the Keras layer does (float16 and bfloat16
        # batch statistics overflow or lose precision).
        x = tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            # The kernel returns the sample (Bessel-corrected) variance for the moving
            # average; Keras averages the population variance that it normalizes with.
            count = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
                data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)
