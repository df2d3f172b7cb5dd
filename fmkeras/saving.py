"""The one way fmkeras loads a model file: Keras safe mode, after a look inside.

A ``.keras`` file is a zip holding ``config.json``; loading it deserializes
that config. Keras' safe mode refuses Lambda layers, and fmkeras goes further
before Keras reads anything: the config may name only classes from Keras and
fmkeras, may not call ``enable_unsafe_deserialization``, and lookup layers
may not point their vocabulary at a file or a URL. Legacy ``.h5`` model
files, where Keras ignores safe mode, are refused unless asked for.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import keras

from fmkeras.errors import FmkerasError

# Modules a config may name: Keras' own and fmkeras' registered layers.
SAFE_MODULE_PREFIXES = ("keras", "fmkeras")
_LOOKUP_LAYERS = {"StringLookup", "IntegerLookup", "TextVectorization", "Hashing"}
# Plain functions may come only from these (activations, losses, metrics, fmkeras').
_FUNCTION_MODULES = ("keras.activations", "keras.src.activations", "keras.losses",
                     "keras.src.losses", "keras.metrics", "keras.src.metrics", "fmkeras")


class UnsafeModelError(FmkerasError):
    """A model file was refused because loading it could run code or read other files."""


def _unsafe_entries(node, where="config"):
    """Yield a reason for every entry of a Keras config that could run code or read files."""
    if isinstance(node, dict):
        module = node.get("module")
        if isinstance(module, str) and module.split(".")[0] not in SAFE_MODULE_PREFIXES:
            yield f"{where} names module {module!r} (class {node.get('class_name')!r})"
        class_name = node.get("class_name")
        if class_name == "function" and isinstance(module, str) and not module.startswith(
                _FUNCTION_MODULES):
            yield f"{where} calls function {node.get('config')!r} from {module!r}"
        if class_name == "Lambda":
            yield f"{where} holds a Lambda layer (Python code)"
        for value in node.values():
            if isinstance(value, str) and "enable_unsafe_deserialization" in value:
                yield f"{where} calls enable_unsafe_deserialization"
        if class_name in _LOOKUP_LAYERS:
            vocabulary = (node.get("config") or {}).get("vocabulary")
            if isinstance(vocabulary, str):
                yield (f"{where}: {class_name} reads its vocabulary from {vocabulary!r}; "
                       "expected an inline list")
        for key, value in node.items():
            yield from _unsafe_entries(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _unsafe_entries(value, f"{where}[{i}]")


def inspect_keras_file(path):
    """Reasons why the ``.keras`` file at ``path`` is unsafe to load (empty if none).

    Args:
        path: str. A ``.keras`` archive.

    Example:

    >>> import tempfile
    >>> from fmkeras.models import mlp
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> mlp((4,), (3,), 2).save(path)
    >>> inspect_keras_file(path)
    []
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise FmkerasError(f"Not a readable .keras file: {path!r} ({err}). Expected a zip "
                           "archive holding config.json, as written by model.save().") from None
    return list(dict.fromkeys(_unsafe_entries(config)))


def load_model(path, unsafe=False, allow_h5=False, compile=True, custom_objects=None):
    """Load a Keras model file safely (every fmkeras load goes through here).

    Args:
        path: str. A ``.keras`` file (or ``.h5`` with ``allow_h5=True``).
        unsafe: bool. Skip the checks and load with Keras safe mode off. Only
            for files you made yourself; prints a warning.
        allow_h5: bool. Accept a legacy ``.h5``/``.hdf5`` model file, which
            Keras loads without safe mode; implies the same warning.
        compile: bool. Restore the training config too.
        custom_objects: optional dict of extra classes.

    Returns:
        ``keras.Model``.

    Raises:
        UnsafeModelError: naming what was found, before Keras reads the config.

    Example:

    >>> import tempfile
    >>> from fmkeras.models import mlp
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> mlp((4,), (3,), 2).save(path)
    >>> load_model(path).name
    'mlp'
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FmkerasError(f"Model file not found. Expected a .keras file. Received: {path!r}")
    legacy = path.lower().endswith((".h5", ".hdf5"))
    if legacy and not allow_h5:
        raise UnsafeModelError(
            f"Refusing legacy HDF5 model file {path!r}: Keras loads it without safe mode, so it "
            "can run code. Re-save it as .keras, or pass allow_h5=True if you trust it.")
    if unsafe or legacy:
        warnings.warn(f"Loading {path!r} without safety checks: a crafted file can run code.",
                      UserWarning, stacklevel=2)
        return keras.saving.load_model(path, compile=compile, custom_objects=custom_objects,
                                       safe_mode=False)
    if not path.lower().endswith(".keras"):
        raise FmkerasError(f"Expected a .keras model file. Received: {path!r}")
    problems = inspect_keras_file(path)
    if problems:
        raise UnsafeModelError(f"Refusing to load {path!r}: " + "; ".join(problems[:5]))
    import fmkeras.models  # noqa: F401 - registers fmkeras layers before deserializing

    return keras.saving.load_model(path, compile=compile, custom_objects=custom_objects,
                                   safe_mode=True)
