"""Optimizers and learning-rate schedules chosen by name from a config."""

from __future__ import annotations

import warnings

import keras

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count, is_number
from fmkeras.errors import ConfigError

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
        if not (is_number(norm_bias_lr_scale) and norm_bias_lr_scale > 0):
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


def orthogonalize(matrix, steps=3):
    """An approximately orthogonal matrix with the singular vectors of ``matrix``.

    Muon's quintic Newton-Schulz iteration (Jordan et al., 2024): after
    scaling ``matrix`` to a Frobenius norm of one, each step maps every
    singular value ``s`` to ``3.4445 s - 4.7750 s^3 + 2.0315 s^5``, which
    pushes it towards 1 fast (it ends between about 0.5 and 1.2 rather than
    exactly at 1, which trains as well). Only matrix products, so it runs on
    any device, unlike an SVD.

    Args:
        matrix: 2-D tensor.
        steps: int >= 1. Iterations.

    Returns:
        A tensor of the shape of ``matrix``.

    Example:

    >>> import numpy as np
    >>> g = np.random.default_rng(0).normal(size=(8, 32)).astype("float32")
    >>> s = np.linalg.svd(keras.ops.convert_to_numpy(orthogonalize(g, steps=5)),
    ...                   compute_uv=False)
    >>> bool(s.min() > 0.5 and s.max() < 1.3)
    True
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = keras.ops.convert_to_tensor(matrix)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = keras.ops.transpose(x)
    x = x / (keras.ops.sqrt(keras.ops.sum(keras.ops.square(x))) + 1e-7)
    for _ in range(steps):
        gram = keras.ops.matmul(x, keras.ops.transpose(x))
        x = a * x + keras.ops.matmul(b * gram + c * keras.ops.matmul(gram, gram), x)
    return x if wide else keras.ops.transpose(x)


def check_muon_settings(muon_scale, muon_momentum, prefix=""):
    """Raise ``ValueError`` unless ``muon_scale > 0`` and ``0 <= muon_momentum < 1``.

    Plain Python (no TensorFlow), so configs can be checked before anything starts.

    Example:

    >>> check_muon_settings(0.16, 0.6)
    >>> check_muon_settings(0.16, 1.0, prefix="train.")
    Traceback (most recent call last):
    ...
    ValueError: Expected 0 <= train.muon_momentum < 1. Received: train.muon_momentum=1.0
    """
    if not (is_number(muon_scale) and muon_scale > 0):
        raise ValueError(f"Expected {prefix}muon_scale > 0. "
                         f"Received: {prefix}muon_scale={muon_scale!r}")
    if not (is_number(muon_momentum) and 0 <= muon_momentum < 1):
        raise ValueError(f"Expected 0 <= {prefix}muon_momentum < 1. "
                         f"Received: {prefix}muon_momentum={muon_momentum!r}")


@keras.saving.register_keras_serializable(package="fmkeras")
class MuonSGD(SGD):
    """Muon for convolution kernels, this module's :class:`SGD` for every other variable.

    Each 4-D kernel ``(height, width, in, out)`` is first rescaled to a
    Frobenius norm of ``sqrt(out)`` (about one per filter), then moves by
    ``muon_scale * learning_rate`` along its Nesterov momentum
    (``muon_momentum``) made orthogonal (:func:`orthogonalize`, the kernel
    seen as an ``out x (height * width * in)`` matrix): Muon (Jordan et al.,
    2024), as airbench's fastest CIFAR-10 recipe uses it. Every filter
    moves by about the same angle, whatever its gradient's scale. Weight
    decay does not apply to these kernels (their size is fixed). Use it for
    networks whose convolutions are followed by a normalization, which makes
    each filter's scale immaterial; biases, normalization offsets and dense
    layers follow SGD (with ``norm_bias_lr_scale``, weight decay and
    ``momentum``).

    Args:
        muon_scale: float > 0. Muon's step, as a fraction of the learning
            rate (so it follows the same schedule).
        muon_momentum: float in [0, 1). Nesterov momentum of the kernels.
        ns_steps: int >= 1. Newton-Schulz iterations.
        **kwargs: passed to :class:`SGD`.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((6, 6, 2)),
    ...                           keras.layers.Conv2D(4, 3, use_bias=False),
    ...                           keras.layers.BatchNormalization(scale=False),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> model.compile(MuonSGD(0.5, momentum=0.85, nesterov=True, muon_scale=0.05), "mse")
    >>> x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    >>> _ = model.train_on_batch(x, np.ones((8, 4), "float32"))
    >>> # Rescaled to norm sqrt(4 filters), then one orthogonal step of 0.5 * 0.05:
    >>> bool(abs(np.linalg.norm(model.layers[0].kernel.numpy()) - 2.0) < 0.1)
    True
    """

    def __init__(self, *args, muon_scale=0.16, muon_momentum=0.6, ns_steps=3, **kwargs):
        super().__init__(*args, **kwargs)
        check_muon_settings(muon_scale, muon_momentum)
        if not (isinstance(ns_steps, int) and ns_steps >= 1):
            raise ValueError(f"Expected an int ns_steps >= 1. Received: ns_steps={ns_steps!r}")
        self.muon_scale = float(muon_scale)
        self.muon_momentum = float(muon_momentum)
        self.ns_steps = ns_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._muon_slots = {}
        self.muon_momentums = []
        for variable in variables:
            if len(variable.shape) == 4:
                self._muon_slots[self._var_key(variable)] = len(self.muon_momentums)
                self.muon_momentums.append(
                    self.add_variable_from_reference(variable, "muon_momentum"))

    def _use_weight_decay(self, variable):
        return len(variable.shape) != 4 and super()._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if len(variable.shape) != 4:
            return super().update_step(gradient, variable, learning_rate)
        ops = keras.ops
        momentum = self.muon_momentums[self._muon_slots[self._var_key(variable)]]
        gradient = ops.cast(gradient, variable.dtype)
        self.assign(momentum, ops.add(ops.multiply(momentum, self.muon_momentum), gradient))
        direction = ops.add(gradient, ops.multiply(momentum, self.muon_momentum))
        height, width, channels_in, channels_out = variable.shape
        matrix = ops.reshape(ops.transpose(direction, (3, 0, 1, 2)), (channels_out, -1))
        step = ops.transpose(
            ops.reshape(orthogonalize(matrix, self.ns_steps),
                        (channels_out, height, width, channels_in)), (1, 2, 3, 0))
        norm = ops.sqrt(ops.sum(ops.square(variable)))
        rate = ops.cast(learning_rate, variable.dtype) * self.muon_scale
        self.assign(variable, ops.subtract(
            ops.multiply(variable, channels_out ** 0.5 / (norm + 1e-7)),
            ops.multiply(step, rate)))

    def get_config(self):
        return {**super().get_config(), "muon_scale": self.muon_scale,
                "muon_momentum": self.muon_momentum, "ns_steps": self.ns_steps}


OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
              "muon": MuonSGD}


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


def warmup_steps_for(steps_per_epoch, warmup_epochs, epochs, schedule="cosine"):
    """Warm-up steps for ``warmup_epochs`` of a run of ``epochs``.

    A warm-up as long as the run itself (a preset's one warm-up epoch with
    ``train.epochs=1``, say) is shortened to ``epochs - 1`` epochs, with a
    warning, so a quick short run trains instead of stopping.

    Args:
        steps_per_epoch: int. Optimizer steps per epoch.
        warmup_epochs: int. Requested warm-up epochs (>= 0).
        epochs: int. Epochs of the run (>= 1).
        schedule: str. The schedule; only ``cosine`` and ``onecycle`` warm up.

    Example:

    >>> warmup_steps_for(10, 2, epochs=5)
    20
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warmup_steps_for(10, 1, epochs=1), len(caught)
    (0, 1)
    """
    if not is_count(warmup_epochs, 0):
        raise ConfigError(f"Expected train.warmup_epochs to be an integer >= 0. "
                          f"Received: {warmup_epochs!r}")
    if warmup_epochs >= epochs and schedule in ("cosine", "onecycle"):
        warnings.warn(f"train.warmup_epochs={warmup_epochs} is not below train.epochs="
                      f"{epochs}: warming up for {epochs - 1} epoch(s) instead", stacklevel=2)
        warmup_epochs = epochs - 1
    return steps_per_epoch * warmup_epochs


@accepts_numpy_scalars
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
                    norm_bias_lr_scale=1.0, muon_scale=0.16, muon_momentum=0.6):
    """A Keras optimizer by name (``adam``, ``adamw``, ``sgd``, ``rmsprop``, ``muon``).

    ``muon`` is :class:`MuonSGD`: Muon for convolution kernels, Nesterov SGD
    for the other variables.

    Args:
        name: str. Optimizer name.
        learning_rate: float or ``LearningRateSchedule``.
        weight_decay: optional float. Decoupled weight decay: each step
            takes ``learning_rate * weight_decay`` of every weight
            (``muon``: of every weight but the convolution kernels).
        momentum: float. Nesterov momentum of ``sgd`` and of ``muon``'s SGD
            part (other optimizers ignore it).
        norm_bias_lr_scale: float. Step factor for normalization offsets
            (:class:`SGD`); ``sgd`` and ``muon`` only, since adaptive
            optimizers undo it.
        muon_scale: float. ``muon``'s kernel step as a fraction of the
            learning rate.
        muon_momentum: float. ``muon``'s Nesterov momentum for the kernels.

    Example:

    >>> build_optimizer("adam", 1e-3).__class__.__name__
    'Adam'
    >>> build_optimizer("muon", 1.5, muon_scale=0.16).muon_scale
    0.16
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
    if norm_bias_lr_scale != 1 and name not in ("sgd", "muon"):
        raise ConfigError(f"train.norm_bias_lr_scale needs optimizer sgd or muon (Adam-like "
                          f"optimizers normalise the step, which undoes the factor). Received: "
                          f"optimizer={name!r}, norm_bias_lr_scale={norm_bias_lr_scale!r}")
    if name in ("sgd", "muon"):
        if not 0 <= momentum < 1:
            raise ConfigError(f"Expected 0 <= momentum < 1. Received: momentum={momentum!r}")
        kwargs["momentum"] = float(momentum)
        kwargs["nesterov"] = True
    if name == "muon":
        try:
            check_muon_settings(muon_scale, muon_momentum, prefix="train.")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        kwargs.update(muon_scale=muon_scale, muon_momentum=muon_momentum,
                      norm_bias_lr_scale=float(norm_bias_lr_scale))
    elif name == "sgd" and norm_bias_lr_scale != 1:
        return SGD(norm_bias_lr_scale=float(norm_bias_lr_scale), **kwargs)
    return OPTIMIZERS[name](**kwargs)
