"""Optimizers and learning-rate schedules chosen by name from a config."""

from __future__ import annotations

import keras

from fmkeras.errors import ConfigError

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")


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


def build_optimizer(name, learning_rate, weight_decay=None, momentum=0.9):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd``, ``rmsprop``).

    Args:
        name: str. Optimizer name.
        learning_rate: float or ``LearningRateSchedule``.
        weight_decay: optional float. Decoupled weight decay.
        momentum: float. Nesterov momentum of ``sgd`` (other optimizers
            ignore it).

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
    if name == "sgd":
        if not 0 <= momentum < 1:
            raise ConfigError(f"Expected 0 <= momentum < 1. Received: momentum={momentum!r}")
        kwargs["momentum"] = float(momentum)
        kwargs["nesterov"] = True
    return OPTIMIZERS[name](**kwargs)
