"""Data pipelines: image folders, tfds, the ImageDataGenerator-compatible API, text corpora.

The names below load their module on first use (PEP 562), so that
``fmkeras.data.augment``'s :class:`Augmentation`, which the SimCLR model
imports, does not bring in the TensorFlow pipelines with it.
"""

import importlib

_MODULES = {
    "augment": ("Augmentation", "augment_images"),
    "image_data_generator": ("ImageDataGenerator",),
    "image_iterators": ("DataFrameIterator", "DirectoryIterator", "ImageIterator",
                        "NumpyArrayIterator"),
    "images": ("DirectoryIndex", "image_dataset", "index_directory", "split_index"),
    "text": ("classification_dataset", "load_vocabulary", "read_labelled_text",
             "read_parallel_tsv", "save_vocabulary", "translation_dataset",
             "translation_vectorizers"),
    "tfds_images": ("tfds_image_dataset",),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
