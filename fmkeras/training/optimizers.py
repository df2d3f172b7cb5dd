"""Optimizers and learning-rate schedules chosen by name from a config."""

from __future__ import annotations

import keras

from fmkeras.errors import ConfigError

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
SCHEDULES = ("constant", "cosine", "plateau")


def learning_rate_schedule(learning_rate, schedule="constant", total_steps=None,
                           warmup_steps=0):
    """A learning rate (float or ``LearningRateSchedule``) by schedule name.

    ``cosine`` warms up linearly for ``warmup_steps`` then decays to zero at
    ``total_steps``. ``plateau`` and ``constant`` return the float; the
    plateau halving is a callback (``ReduceLROnPlateau``).

    Args:
        learning_rate: float. Peak learning rate.
        schedule: str. ``constant``, ``cosine`` or ``plateau``.
        total_steps: int. Optimizer steps of the whole run (for ``cosine``).
        warmup_steps: int. Linear warm-up steps (for ``cosine``).

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
    if schedule != "cosine":
        return float(learning_rate)
    if not total_steps or total_steps <= warmup_steps:
        raise ConfigError(
            f"The cosine schedule needs total_steps > warmup_steps. "
            f"Received: total_steps={total_steps}, warmup_steps={warmup_steps}")
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup_steps, warmup_target=learning_rate,
            warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)


def build_optimizer(name, learning_rate, weight_decay=None):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd``, ``rmsprop``).

    Args:
        name: str. Optimizer name.
        learning_rate: float or ``LearningRateSchedule``.
        weight_decay: optional float. Decoupled weight decay.

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
        kwargs["momentum"] = 0.9
        kwargs["nesterov"] = True
    return OPTIMIZERS[name](**kwargs)
