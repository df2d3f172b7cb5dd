"""Argument checks shared by the builders (errors name what was received)."""

import numbers

import keras


def check_positive_int(name, value):
    """Raise ``ValueError`` unless ``value`` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_rate(name, value):
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    if not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"Expected {name} in [0, 1). Received: {name}={value!r}")
    return float(value)


def check_classes(num_classes, activation, names=("num_classes", "activation")):
    """Check ``num_classes`` is a positive integer and not one softmax unit (always 1)."""
    check_positive_int(names[0], num_classes)
    if num_classes == 1 and activation == "softmax":
        raise ValueError(
            f"A softmax over one unit always outputs 1. Use {names[0]}=2, or "
            f"{names[1]}='sigmoid' for one binary output. Received: {names[0]}=1, "
            f"{names[1]}='softmax'")
    return int(num_classes)


def check_positive_real(name, value):
    """Raise ``ValueError`` unless ``value`` is a real number above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"Expected {name} to be a number above 0. Received: {name}={value!r}")
    return float(value)


def check_input_shape(shape, rank=None):
    """Return ``shape`` as a tuple of positive ints (or ``None`` dims), checking its rank."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(
            f"Expected input_shape to be a tuple such as (32, 32, 3). Received: {shape!r}"
        ) from None
    bad = [d for d in shape if d is not None and (
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1)]
    if bad or not shape or (rank is not None and len(shape) != rank):
        expected = f"{rank} positive integers" if rank else "positive integers"
        raise ValueError(f"Expected input_shape of {expected}. Received: input_shape={shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


def check_image_sides(shape, min_side, reason, known=False):
    """Raise ``ValueError`` unless height and width of ``(height, width, ...)`` are large enough.

    ``None`` sides (any size) pass unless ``known``; ``reason`` says why the
    builder needs ``min_side`` pixels (or known sides).
    """
    sides = tuple(shape[:2])
    if known and None in sides:
        raise ValueError(f"{reason}, so height and width must be known. "
                         f"Received: input_shape={tuple(shape)}")
    if any(side is not None and side < min_side for side in sides):
        raise ValueError(f"{reason}, so height and width must be at least {min_side}. "
                         f"Received: input_shape={tuple(shape)}")


def check_model(name, value):
    """Raise ``ValueError`` unless ``value`` is a ``keras.Model``."""
    if not isinstance(value, keras.Model):
        raise ValueError(f"Expected `{name}` to be a keras.Model. Received: {name} of type "
                         f"{type(value).__name__}")
    return value
