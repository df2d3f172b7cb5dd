"""Optimizers and learning-rate schedules chosen by name from a config."""

from __future__ import annotations

import keras

from fmkeras.errors import ConfigError

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")


@keras.saving.register_keras_serializable(package="fmkeras")
class SGD(keras.optimizers.SGD):
    """Keras' SGD with a larger step for the offsets of normalization layers.

    Every variable named ``beta`` (the offset of ``BatchNormalization`` and
    ``LayerNormalization``) moves ``norm_bias_lr_scale`` times as far as the
    other variables; the decoupled weight decay, a fraction of each variable
    per step, is unchanged. airbench (Jordan, 2024) trains batch-norm offsets
    with 64 times the learning rate: behind a batch norm without a scale,
    they are all the network has to shift a channel, and small steps leave
    them behind. Momentum is linear, so the factor is applied to their
    gradients.

    Args:
        norm_bias_lr_scale: float > 0. Step factor for ``beta`` variables.
        **kwargs: passed to ``keras.optimizers.SGD``.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> model.compile(SGD(0.1, norm_bias_lr_scale=64.0), "mse")
    >>> _ = model.train_on_batch(np.eye(3, dtype="float32"), np.ones((3, 3)))
    >>> np.round(model.layers[0].beta.numpy(), 2)  # 0.1 * 64 * 2/3 (the MSE gradient)
    array([4.27, 4.27, 4.27], dtype=float32)
    """

    def __init__(self, *args, norm_bias_lr_scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not norm_bias_lr_scale > 0:
            raise ValueError(f"Expected norm_bias_lr_scale > 0. "
                             f"Received: norm_bias_lr_scale={norm_bias_lr_scale!r}")
        self.norm_bias_lr_scale = float(norm_bias_lr_scale)

    def apply(self, grads, trainable_variables=None):
        variables = (trainable_variables if trainable_variables is not None
                     else self._trainable_variables)
        scale = self.norm_bias_lr_scale
        grads = [g * scale if g is not None and v.name == "beta" else g
                 for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "norm_bias_lr_scale": self.norm_bias_lr_scale}


@keras.saving.register_keras_serializable(package="fmkeras")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear one-cycle: up from ``start_fraction * peak`` to ``peak``, then down.

    The rate climbs linearly for ``warmup_steps``, then falls linearly to
    ``end_fraction * peak`` at ``total_steps`` and stays there (Smith's
    one-cycle policy, in the triangular form fast CIFAR-10 recipes use).

    Args:
        peak: float. Highest learning rate.
        total_steps: int. Steps of the whole run.
        warmup_steps: int. Steps to reach ``peak``.
        start_fraction: float. First rate, as a fraction of ``peak``.
        end_fraction: float. Last rate, as a fraction of ``peak``.

    Example:

    >>> lr = OneCycle(1.0, total_steps=100, warmup_steps=20)
    >>> [round(float(lr(s)), 3) for s in (0, 20, 60, 100)]
    [0.2, 1.0, 0.535, 0.07]
    """

    def __init__(self, peak, total_steps, warmup_steps, start_fraction=0.2, end_fraction=0.07):
        if not total_steps > warmup_steps >= 0:
            raise ValueError(f"OneCycle needs total_steps > warmup_steps >= 0. Received: "
                             f"total_steps={total_steps}, warmup_steps={warmup_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_fraction = float(start_fraction)
        self.end_fraction = float(end_fraction)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = self.start_fraction + (1 - self.start_fraction) * step / max(self.warmup_steps, 1)
        down_length = self.total_steps - self.warmup_steps
        down = 1 - (1 - self.end_fraction) * (step - self.warmup_steps) / down_length
        fraction = keras.ops.where(step < self.warmup_steps, up,
                                   keras.ops.maximum(down, self.end_fraction))
        return self.peak * fraction

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "start_fraction": self.start_fraction,
                "end_fraction": self.end_fraction}


def learning_rate_schedule(learning_rate, schedule="constant", total_steps=None,
                           warmup_steps=0):
    """A learning rate (float or ``LearningRateSchedule``) by schedule name.

    ``cosine`` warms up linearly for ``warmup_steps`` then decays to zero at
    ``total_steps``. ``onecycle`` (:class:`OneCycle`) climbs linearly from a
    fifth of the rate for ``warmup_steps``, then falls linearly to 7% of it at
    ``total_steps``. ``plateau`` and ``constant`` return the float; the
    plateau halving is a callback (``ReduceLROnPlateau``).

    Args:
        learning_rate: float. Peak learning rate.
        schedule: str. ``constant``, ``cosine``, ``onecycle`` or ``plateau``.
        total_steps: int. Optimizer steps of the whole run (``cosine``, ``onecycle``).
        warmup_steps: int. Linear warm-up steps (``cosine``, ``onecycle``).

    Example:

    >>> lr = learning_rate_schedule(1e-3, "cosine", total_steps=100, warmup_steps=10)
    >>> round(float(lr(10)), 6)
    0.001
    """
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"Unknown learning-rate schedule. Expected one of {list(SCHEDULES)}. "
            f"Received: schedule={schedule!r}")
    if not learning_rate > 0:
        raise ConfigError(f"Expected learning_rate > 0. Received: learning_rate={learning_rate!r}")
    if schedule not in ("cosine", "onecycle"):
        return float(learning_rate)
    if not total_steps or total_steps <= warmup_steps:
        raise ConfigError(
            f"The {schedule} schedule needs total_steps > warmup_steps: set "
            f"train.warmup_epochs below train.epochs. "
            f"Received: total_steps={total_steps}, warmup_steps={warmup_steps}")
    if schedule == "onecycle":
        return OneCycle(learning_rate, total_steps, warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=learning_rate,
            warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)


def build_optimizer(name, learning_rate, weight_decay=None, momentum=0.9,
                    norm_bias_lr_scale=1.0):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd``, ``rmsprop``).

    Args:
        name: str. Optimizer name.
        learning_rate: float or ``LearningRateSchedule``.
        weight_decay: optional float. Decoupled weight decay: each step
            takes ``learning_rate * weight_decay`` of every weight.
        momentum: float. Nesterov momentum of ``sgd`` (other optimizers
            ignore it).
        norm_bias_lr_scale: float. Step factor for normalization offsets
            (:class:`SGD`); ``sgd`` only, since adaptive optimizers undo it.

    Example:

    >>> build_optimizer("adam", 1e-3).__class__.__name__
    'Adam'
    """
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer. Expected one of {sorted(OPTIMIZERS)}. "
            f"Received: optimizer={name!r}")
    kwargs = {"learning_rate": learning_rate}
    if weight_decay:
        kwargs["weight_decay"] = weight_decay
    if not norm_bias_lr_scale > 0:
        raise ConfigError(f"Expected train.norm_bias_lr_scale > 0. "
                          f"Received: {norm_bias_lr_scale!r}")
    if norm_bias_lr_scale != 1 and name != "sgd":
        raise ConfigError(f"train.norm_bias_lr_scale needs optimizer sgd (Adam-like optimizers "
                          f"normalise the step, which undoes the factor). Received: "
                          f"optimizer={name!r}, norm_bias_lr_scale={norm_bias_lr_scale!r}")
    if name == "sgd":
        if not 0 <= momentum < 1:
            raise ConfigError(f"Expected 0 <= momentum < 1. Received: momentum={momentum!r}")
        kwargs["momentum"] = float(momentum)
        kwargs["nesterov"] = True
        if norm_bias_lr_scale != 1:
            return SGD(norm_bias_lr_scale=float(norm_bias_lr_scale), **kwargs)
    return OPTIMIZERS[name](**kwargs)
