"""TensorFlow, imported the first time one of its attributes is used.

``fmkeras.models`` registers every custom layer when it is imported, and
some of its modules hold TensorFlow-only code (the GAN and SimCLR train
steps, the ``tf.while_loop`` searches, the fused batch norm). Importing
TensorFlow there lazily lets the builders themselves (``fast_cnn``,
``transformer_classifier``...), which use only ``keras.ops``, load and run on
Keras' other backends, where TensorFlow may not be installed. On the
TensorFlow backend nothing changes: Keras has imported TensorFlow already.
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for the module ``name`` that imports it on first attribute access.

    Example:

    >>> json = LazyModule("json")
    >>> json.dumps([1])
    '[1]'
    """

    def __getattr__(self, attr):  # only for names this stand-in lacks (``tf.__internal__`` too)
        return getattr(importlib.import_module(self.__name__), attr)


tf = LazyModule("tensorflow")
