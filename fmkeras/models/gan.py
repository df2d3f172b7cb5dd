"""A GAN model that trains a generator and a discriminator with `model.fit`.

Both networks are updated simultaneously from one forward pass, with the
non-saturating loss. Under a `mixed_float16` policy both optimizers are wrapped
in `LossScaleOptimizer` (Keras only wraps `self.optimizer`), both losses are
scaled, and a step with non-finite gradients in either network is skipped for
both. Losses are divided by the global batch size so that gradients summed
across replicas by a `tf.distribute` strategy are those of the global batch.
"""

from __future__ import annotations

import keras

from fmkeras._lazy import tf
from fmkeras.errors import FmkerasError
from fmkeras.models._checks import check_model


def _all_finite(grads):
    flags = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _replica_info():
    """Returns `(num_replicas, replica_id)` of the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # Cross-replica context: a single logical computation.
        return 1, 0
    return ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group


def _all_replicas(flag):
    """True only if `flag` holds on every replica."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return flag
    failures = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flag), "int32"))
    return tf.equal(failures, 0)


def sum_over_replicas(value):
    """``value`` summed over the replicas (e.g. a last, partial batch split unevenly).

    Also used by :class:`fmkeras.models.SimCLR`; outside a strategy it is ``value``.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def at_least_one(batch):
    """``batch`` with one blank (zero) example appended when it has none.

    A replica's share of a last, partial batch may be empty. Run as one blank
    example of weight 0 instead, it adds no gradient, where an empty batch
    would give batch norm NaN statistics (NaN weights after the step) and, on
    Intel CPUs with AVX-512, oneDNN's ``Conv2D`` returns an empty input
    unchanged. Also used by :class:`fmkeras.models.SimCLR`.

    Example:

    >>> at_least_one(tf.zeros((0, 4, 4, 1))).shape, at_least_one(tf.ones((3, 2))).shape
    (TensorShape([1, 4, 4, 1]), TensorShape([3, 2]))
    """
    blank = tf.maximum(1 - tf.shape(batch)[0], 0)
    return tf.pad(batch, [[0, blank]] + [[0, 0]] * (batch.shape.rank - 1))


def _keep_loss_scale(optimizer, flag):
    """Doubles `optimizer`'s loss scale where `flag` is true (undoing a skip's halving)."""

    def restore(strategy, flag):
        flag = strategy.experimental_local_results(flag)[0]
        scale = optimizer.dynamic_scale
        scale.assign(tf.where(flag, scale * 2.0, tf.identity(scale)))

    # The scale is a mirrored variable: like LossScaleOptimizer itself, update
    # it in a cross-replica context where the strategy needs merge_call.
    tf.__internal__.distribute.interim.maybe_merge_call(restore, tf.distribute.get_strategy(), flag)


def _sigmoid_bce(targets, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)


@keras.saving.register_keras_serializable(package="fmkeras")
class GAN(keras.Model):
    """A generator and a discriminator trained adversarially through `fit`.

    Data is a batch of images in [-1, 1], or `(images, labels)` for
    class-conditional networks (built with `num_classes`); fakes are then
    generated for the labels of the real batch. Calling the model generates
    images from latents (`[latents, labels]` when conditional).

    Each step updates both networks from one forward pass. With
    `LossScaleOptimizer`s (wrapped automatically under `mixed_float16`), a
    step whose gradients are non-finite in either network is skipped for
    both; in full precision gradients are applied as computed and
    `fmkeras.training.gan_callbacks.GANGuard` stops a diverged run.

    Args:
        generator: keras.Model. Maps `latents` (and `labels`) to images.
        discriminator: keras.Model. Maps images (and `labels`) to one logit
            per image.
        seed: int or None. Seed of the latent and instance-noise draws.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import numpy as np
    >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
    >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
    ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
    >>> gan.compile(d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
    ...             g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    >>> history = gan.fit(np.zeros((8, 16, 16, 1), "float32"), batch_size=4, verbose=0)
    >>> sorted(history.history)
    ['d_fake', 'd_loss', 'd_real', 'g_loss']
    """

    def __init__(self, generator, discriminator, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_model("generator", generator)
        check_model("discriminator", discriminator)
        num_g, num_d = len(generator.inputs), len(discriminator.inputs)
        if num_g != num_d or num_g not in (1, 2):
            raise FmkerasError(
                "Expected generator and discriminator to both take 1 input (unconditional) "
                "or both 2 inputs (conditional, second one the labels). "
                f"Received: {num_g} generator and {num_d} discriminator inputs"
            )
        made = tuple(generator.outputs[0].shape[1:])
        judged = tuple(discriminator.inputs[0].shape[1:])
        if len(made) != len(judged) or any(
                a is not None and b is not None and a != b for a, b in zip(made, judged)):
            raise FmkerasError(
                f"Expected the generator to make images of the shape the discriminator "
                f"takes. Received: generator output {made}, discriminator input {judged}")
        self.generator = generator
        self.discriminator = discriminator
        self.conditional = num_g == 2
        self.latent_dim = int(generator.inputs[0].shape[-1])
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_real_tracker = keras.metrics.Mean(name="d_real")
        self.d_fake_tracker = keras.metrics.Mean(name="d_fake")
        # The sub-models are built Functional models, so this wrapper is too.
        self.built = True

    @property
    def metrics(self):
        """The trackers reset by Keras at each epoch."""
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_real_tracker, self.d_fake_tracker]

    def compile(self, d_optimizer, g_optimizer, label_smoothing=0.0, instance_noise=0.0, **kwargs):
        """Configures the two optimizers and the loss options.

        Args:
            d_optimizer: keras.optimizers.Optimizer, str or dict. Optimizer of
                the discriminator.
            g_optimizer: keras.optimizers.Optimizer, str or dict. Optimizer of
                the generator; must be a different object.
            label_smoothing: float. One-sided label smoothing in [0, 1): real
                targets of the discriminator become `1 - label_smoothing`.
            instance_noise: float. Standard deviation of Gaussian noise added
                to real and fake images seen by the discriminator; 0 disables.
            **kwargs: passed to `keras.Model.compile` (`run_eagerly`,
                `jit_compile`, `steps_per_execution`); `loss` and `optimizer`
                are not accepted.

        Example:

        >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
        >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
        ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
        >>> gan.compile(d_optimizer="adam", g_optimizer="adam", label_smoothing=0.1)
        >>> type(gan.d_optimizer).__name__, gan.d_optimizer is gan.g_optimizer
        ('Adam', False)
        """
        for key in ("optimizer", "loss", "metrics"):
            if key in kwargs:
                raise FmkerasError(
                    "Expected `d_optimizer` and `g_optimizer`; the GAN defines its own losses "
                    f"and metrics. Received: {key}={kwargs[key]!r}"
                )
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise FmkerasError(
                "Expected `label_smoothing` in [0, 1). "
                f"Received: label_smoothing={label_smoothing!r}"
            )
        if float(instance_noise) < 0.0:
            raise FmkerasError(
                f"Expected `instance_noise` >= 0. Received: instance_noise={instance_noise!r}"
            )
        d_optimizer = keras.optimizers.get(d_optimizer)
        g_optimizer = keras.optimizers.get(g_optimizer)
        if d_optimizer is g_optimizer:
            raise FmkerasError(
                "Expected two different optimizer objects, one per network. "
                "Received: the same object for d_optimizer and g_optimizer"
            )
        super().compile(optimizer=None, **kwargs)
        if keras.config.dtype_policy().name == "mixed_float16" or (
            self.dtype_policy.name == "mixed_float16"
        ):
            LossScale = keras.optimizers.LossScaleOptimizer
            if not isinstance(d_optimizer, LossScale):
                d_optimizer = LossScale(d_optimizer, name="d_loss_scale_optimizer")
            if not isinstance(g_optimizer, LossScale):
                g_optimizer = LossScale(g_optimizer, name="g_loss_scale_optimizer")
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.label_smoothing = float(label_smoothing)
        self.instance_noise = float(instance_noise)
        # Build now, outside the traced step, so no variable is created there.
        if not d_optimizer.built:
            d_optimizer.build(self.discriminator.trainable_variables)
        if not g_optimizer.built:
            g_optimizer.build(self.generator.trainable_variables)

    def get_compile_config(self):
        if not getattr(self, "compiled", False) or not hasattr(self, "d_optimizer"):
            return None
        return {
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
            "label_smoothing": self.label_smoothing,
            "instance_noise": self.instance_noise,
        }

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("d_optimizer", "g_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("generator", "discriminator"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)

    def call(self, inputs, training=False):
        """Generates images from `latents`, or `[latents, labels]` when conditional.

        Labels may be ``(batch,)`` or ``(batch, 1)`` integers, as in ``fit``.
        """
        if self.conditional and isinstance(inputs, (list, tuple)) and len(inputs) == 2:
            latents, labels = inputs
            inputs = [latents, tf.reshape(tf.cast(labels, "int32"), (-1, 1))]
        return self.generator(inputs, training=training)

    # -- one step ---------------------------------------------------------

    def _unpack(self, data):
        images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        if weights is not None:
            raise FmkerasError("Expected no sample_weight: the GAN losses weigh every image "
                               "alike. Received: sample weights in the data")
        if isinstance(images, (tuple, list)) and len(images) == 2 and labels is None:
            images, labels = images
        if self.conditional and labels is None:
            raise FmkerasError(
                "Expected (images, labels) batches for a class-conditional GAN. "
                "Received: images without labels"
            )
        images = tf.cast(images, "float32")
        if self.conditional:
            labels = tf.reshape(tf.cast(labels, "int32"), (-1, 1))
            return images, labels
        return images, None

    def _normal(self, shape):
        """Standard normal draws that differ between replicas."""
        num_replicas, replica_id = _replica_info()
        if num_replicas == 1:
            return keras.random.normal(shape, seed=self.seed_generator)
        # Every replica draws the same block and keeps its own slice.
        block = keras.random.normal((num_replicas, *shape), seed=self.seed_generator)
        return tf.gather(block, replica_id)

    def _forward(self, real, labels, training):
        """Returns per-example losses and the real/fake discriminator logits."""
        batch = tf.shape(real)[0]
        latents = self._normal((batch, self.latent_dim))
        gen_in = [latents, labels] if self.conditional else latents
        fake = self.generator(gen_in, training=training)
        if self.instance_noise > 0.0 and training:
            real = real + self.instance_noise * self._normal(tf.shape(real))
            fake = fake + self.instance_noise * self._normal(tf.shape(fake))
        real_in = [real, labels] if self.conditional else real
        fake_in = [fake, labels] if self.conditional else fake
        real_logits = tf.cast(self.discriminator(real_in, training=training), "float32")
        fake_logits = tf.cast(self.discriminator(fake_in, training=training), "float32")
        real_targets = tf.fill(tf.shape(real_logits), 1.0 - self.label_smoothing)
        d_losses = _sigmoid_bce(real_targets, real_logits) + _sigmoid_bce(
            tf.zeros_like(fake_logits), fake_logits
        )
        # Non-saturating generator loss: -log D(G(z)).
        g_losses = _sigmoid_bce(tf.ones_like(fake_logits), fake_logits)
        return d_losses, g_losses, real_logits, fake_logits

    def _update_metrics(self, d_losses, g_losses, real_logits, fake_logits, weights):
        self.d_loss_tracker.update_state(d_losses, sample_weight=weights)
        self.g_loss_tracker.update_state(g_losses, sample_weight=weights)
        self.d_real_tracker.update_state(tf.sigmoid(real_logits), sample_weight=weights)
        self.d_fake_tracker.update_state(tf.sigmoid(fake_logits), sample_weight=weights)
        return {m.name: m.result() for m in self.metrics}

    def _padded(self, data):
        """Real images and labels (one blank if there are none) and each one's weight."""
        real, labels = self._unpack(data)
        count = tf.shape(real)[0]
        real = at_least_one(real)
        labels = at_least_one(labels) if labels is not None else None
        weights = tf.cast(tf.range(tf.shape(real)[0]) < count, "float32")[:, None]
        return real, labels, count, weights

    def _apply_both_or_neither(self, d_grads, g_grads):
        d_vars = self.discriminator.trainable_variables
        g_vars = self.generator.trainable_variables
        LossScale = keras.optimizers.LossScaleOptimizer
        if not (
            isinstance(self.d_optimizer, LossScale) and isinstance(self.g_optimizer, LossScale)
        ):
            # Full precision: gradients are applied as computed; GANGuard
            # stops a run whose losses become non-finite.
            self.d_optimizer.apply(d_grads, d_vars)
            self.g_optimizer.apply(g_grads, g_vars)
            return
        d_ok = _all_replicas(_all_finite(d_grads))
        g_ok = _all_replicas(_all_finite(g_grads))
        both_ok = tf.logical_and(d_ok, g_ok)
        # LossScaleOptimizer skips a step (and halves its scale) when it sees a
        # non-finite gradient. Show it one whenever either network overflowed,
        # then undo the halving for the network whose own gradients were fine.
        nan = tf.constant(float("nan"))
        d_grads = [g if g is None else tf.where(both_ok, g, tf.cast(nan, g.dtype)) for g in d_grads]
        g_grads = [g if g is None else tf.where(both_ok, g, tf.cast(nan, g.dtype)) for g in g_grads]
        self.d_optimizer.apply(d_grads, d_vars)
        self.g_optimizer.apply(g_grads, g_vars)
        _keep_loss_scale(self.d_optimizer, tf.logical_and(d_ok, tf.logical_not(g_ok)))
        _keep_loss_scale(self.g_optimizer, tf.logical_and(g_ok, tf.logical_not(d_ok)))

    def build_optimizers(self):
        """Build both optimizers (their slots exist before the first step) and return them.

        Used to restore a checkpoint before training starts.

        Example:

        >>> from fmkeras.models.dcgan import dcgan_discriminator, dcgan_generator
        >>> gan = GAN(dcgan_generator(16, (16, 16, 1), base_filters=8),
        ...           dcgan_discriminator((16, 16, 1), base_filters=8), seed=1)
        >>> gan.compile(d_optimizer="adam", g_optimizer="adam")
        >>> [o.built for o in gan.build_optimizers()]
        [True, True]
        """
        pairs = ((self.d_optimizer, self.discriminator), (self.g_optimizer, self.generator))
        for optimizer, network in pairs:
            if not optimizer.built:
                optimizer.build(network.trainable_variables)
        return [self.d_optimizer, self.g_optimizer]

    def train_step(self, data):
        real, labels, count, weights = self._padded(data)
        # The images of all replicas: a last, partial batch may leave one empty.
        global_batch = tf.maximum(sum_over_replicas(tf.cast(count, "float32")), 1.0)
        with tf.GradientTape() as d_tape, tf.GradientTape() as g_tape:
            d_losses, g_losses, real_logits, fake_logits = self._forward(real, labels, True)
            d_loss = tf.reduce_sum(d_losses * weights) / global_batch
            g_loss = tf.reduce_sum(g_losses * weights) / global_batch
            if isinstance(self.d_optimizer, keras.optimizers.LossScaleOptimizer):
                d_loss = self.d_optimizer.scale_loss(d_loss)
            if isinstance(self.g_optimizer, keras.optimizers.LossScaleOptimizer):
                g_loss = self.g_optimizer.scale_loss(g_loss)
        d_grads = d_tape.gradient(d_loss, self.discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_loss, self.generator.trainable_variables)
        self._apply_both_or_neither(d_grads, g_grads)
        return self._update_metrics(d_losses, g_losses, real_logits, fake_logits, weights)

    def test_step(self, data):
        real, labels, _, weights = self._padded(data)
        return self._update_metrics(*self._forward(real, labels, False), weights)
