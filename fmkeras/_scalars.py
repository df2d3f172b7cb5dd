"""NumPy scalars accepted wherever the public API takes a number."""

from __future__ import annotations

import functools

import numpy as np


def _python(value):
    """A NumPy scalar as a Python one; lists and tuples of them too (``filters``, sizes)."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (list, tuple) and any(isinstance(v, np.generic) for v in value):
        return type(value)(v.item() if isinstance(v, np.generic) else v for v in value)
    return value


def accepts_numpy_scalars(fn):
    """Decorator: NumPy scalar arguments arrive as the Python numbers they hold.

    ``num_classes = labels.max() + 1`` is an ``np.int64``; Keras' layers and
    fmkeras' own checks expect an ``int`` and would refuse it.

    Example:

    >>> @accepts_numpy_scalars
    ... def units(count):
    ...     return type(count).__name__
    >>> units(np.int64(3))
    'int'
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(_python(a) for a in args), **{k: _python(v) for k, v in kwargs.items()})

    return wrapper
