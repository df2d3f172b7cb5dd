"""SimCLR: contrastive self-supervised pretraining of an image encoder.

:class:`SimCLR` wraps an encoder (any model mapping ``[0, 255]`` images to
features, e.g. :func:`fmkeras.models.backbones.backbone`) with a projection
head. Its ``train_step`` draws two random views of each image with the fused
augmentation of :mod:`fmkeras.data.augment` (a zoom in is a random crop
resized back), and minimises the NT-Xent loss: each view must pick its twin
among the ``2 * batch - 1`` other views of the batch.
"""

from __future__ import annotations

import dataclasses

import keras

from fmkeras._lazy import tf
from fmkeras.data.augment import Augmentation, augment_images
from fmkeras.models._checks import check_model
from fmkeras.models.gan import at_least_one, sum_over_replicas

# Random crops (zoom in up to 1/0.6), small shifts and rotations, flips, brightness.
DEFAULT_AUGMENTATION = Augmentation(rotation_range=15.0, width_shift_range=0.1,
                                    height_shift_range=0.1, zoom_range=(0.6, 1.0),
                                    horizontal_flip=True, brightness_range=(0.6, 1.4))


def nt_xent_loss(z1, z2, temperature=0.1):
    """The normalised-temperature cross-entropy (NT-Xent) of two batches of projections.

    Args:
        z1: float tensor ``[batch, dim]``. Projections of the first views.
        z2: float tensor ``[batch, dim]``. Projections of the second views.
        temperature: float. Softmax temperature of the cosine similarities.

    Returns:
        Scalar float32 tensor; 0 for fewer than two pairs (no negatives), an
        empty batch included (a replica's share of a last, partial batch).

    Example:

    >>> z = tf.eye(4)
    >>> float(nt_xent_loss(z, z, temperature=0.1)) < 1e-3
    True
    >>> float(nt_xent_loss(tf.zeros((0, 4)), tf.zeros((0, 4))))
    0.0
    """
    z = tf.math.l2_normalize(tf.cast(tf.concat([z1, z2], 0), tf.float32), axis=1)
    n = tf.shape(z1)[0]

    def loss():
        logits = tf.matmul(z, z, transpose_b=True) / temperature
        logits -= 1e9 * tf.eye(2 * n)  # a view is not its own positive
        labels = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    # The cross-entropy refuses an empty batch (logits [0, 0]).
    return tf.cond(n >= 2, loss, lambda: tf.zeros((), tf.float32))


@keras.saving.register_keras_serializable(package="fmkeras")
class SimCLR(keras.Model):
    """An encoder trained with SimCLR's contrastive loss; fit it on unlabelled images.

    Under a ``tf.distribute`` strategy each replica contrasts its own share of
    the batch, weighted by its images; a share of one image or none (the last,
    partial batch) adds no gradient, so ``model.fit`` on any dataset works.

    Args:
        encoder: ``keras.Model``. Maps ``[0, 255]`` images to features (a
            feature map is average-pooled).
        projection_dim: int. Size of the projection the loss compares.
        hidden_dim: int. Hidden width of the projection head.
        temperature: float. NT-Xent temperature.
        augmentation: optional :class:`fmkeras.data.Augmentation` (or its
            fields as a dict) drawing each view; defaults to
            :data:`DEFAULT_AUGMENTATION`.
        seed: optional int. Seeds the views.
        projection: optional ``keras.Model``, the projection head; by
            default ``Dense(hidden_dim, "relu")`` then ``Dense(projection_dim)``.
            The config carries the head, so a quantized copy reloads.
        **kwargs: base ``keras.Model`` arguments (``name``).

    Example:

    >>> from fmkeras.models.backbones import backbone
    >>> model = SimCLR(backbone("mobilenet_v2", (32, 32, 3), alpha=0.35), projection_dim=16)
    >>> model.compile(optimizer="adam")
    >>> images = tf.random.uniform((8, 32, 32, 3), 0, 255)
    >>> history = model.fit(images, batch_size=4, epochs=1, verbose=0)  # doctest: +SKIP
    """

    def __init__(self, encoder, projection_dim=64, hidden_dim=128, temperature=0.1,
                 augmentation=None, seed=None, projection=None, **kwargs):
        super().__init__(**kwargs)
        check_model("encoder", encoder)
        if temperature <= 0:
            raise ValueError(f"Expected temperature > 0. Received: temperature={temperature}")
        if isinstance(augmentation, dict):
            augmentation = Augmentation(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in augmentation.items()})
        self.encoder = encoder
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.augmentation = augmentation or DEFAULT_AUGMENTATION
        self.seed = seed
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        if projection is not None:
            check_model("projection", projection)
        self.projection = projection or keras.Sequential([
            keras.layers.Dense(hidden_dim, activation="relu", name="projection_hidden"),
            keras.layers.Dense(projection_dim, dtype="float32", name="projection_out"),
        ], name="projection")
        self.seed_generator = keras.random.SeedGenerator(seed)
        # The views are resampled by ImageProjectiveTransformV3 inside the
        # step, which XLA cannot compile (as for Keras' RandomZoom): Keras then
        # compiles without XLA, for jit_compile "auto" on a GPU as well.
        self.supports_jit = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        # Built from the encoder's shapes now, so weights (a resumed run's backup)
        # can be loaded before the first batch.
        features = encoder.output_shape
        self.projection.build((None, features[-1]))
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, images, training=False):
        features = self.encoder(images, training=training)
        if len(features.shape) == 4:
            features = self.pool(features)
        return self.projection(features, training=training)

    def _views_loss(self, images, training):
        """NT-Xent of two views of ``images``, and the weight of that loss.

        The weight is the number of images, or 0 for a single image: its two
        views have no negatives, so its loss (0) says nothing. The loss shown
        is the mean over images; a last batch of one image does not pull it
        towards 0.
        """
        images = tf.cast(images, tf.float32)
        count = tf.cast(tf.shape(images)[0], tf.float32)
        weight = tf.where(count >= 2.0, count, 0.0)
        # A replica's empty share of a last, partial batch runs as one blank
        # image (weight 0, so no gradient).
        images = at_least_one(images)
        views = []
        for _ in range(2):
            seed = keras.random.randint((2,), 0, 2**31 - 1, seed=self.seed_generator)
            views.append(augment_images(images, self.augmentation, seed))
        z = self(tf.concat(views, 0), training=training)
        z1, z2 = tf.split(z, 2)
        return nt_xent_loss(z1, z2, self.temperature), weight

    @staticmethod
    def _images(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        images = self._images(data)
        with tf.GradientTape() as tape:
            loss, weight = self._views_loss(images, training=True)
            # Replicas' gradients are summed; each replica's loss (negatives from its
            # own share of the batch) counts in proportion to its images, so the sum
            # is the mean over the global batch (a replica of one image counts 0).
            total = sum_over_replicas(weight)
            scaled = self.optimizer.scale_loss(loss * weight / tf.maximum(total, 1.0))
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss, sample_weight=weight)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        loss, weight = self._views_loss(self._images(data), training=False)
        self.loss_tracker.update_state(loss, sample_weight=weight)
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {**super().get_config(),
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim,
                "temperature": self.temperature,
                "augmentation": dataclasses.asdict(self.augmentation), "seed": self.seed,
                # Its layers' dtype policies: quantized ones come back quantized.
                "projection": keras.saving.serialize_keras_object(self.projection)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "projection"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
