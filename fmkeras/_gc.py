"""One garbage collection instead of one per variable Keras drops."""

import contextlib
import gc
import threading

_lock = threading.Lock()
_depth = 0
_saved = None


@contextlib.contextmanager
def collect_once():
    """Run the block with ``gc.collect`` a no-op, then collect once at the end.

    Keras' ``Layer.__delattr__`` calls ``gc.collect()`` for every variable it
    drops, and quantizing a layer drops its float kernel. With TensorFlow
    loaded a collection takes about 0.7 s on 2 CPU cores, so quantizing (or
    reloading) a one-layer Transformer spent 16 s collecting. Nested blocks
    collect once, when the outermost ends.

    Example:

    >>> with collect_once():
    ...     gc.collect()  # a no-op here
    0
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.collect
            gc.collect = lambda generation=2: 0
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            collect = _saved if _depth == 0 else None
            if collect is not None:
                gc.collect = collect
        if collect is not None:
            collect()
