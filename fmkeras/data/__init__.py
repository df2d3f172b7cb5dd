"""Data pipelines: image folders, tfds, the ImageDataGenerator-compatible API, text corpora."""

from fmkeras.data.augment import Augmentation, augment_images
from fmkeras.data.image_data_generator import ImageDataGenerator
from fmkeras.data.image_iterators import (
    DataFrameIterator,
    DirectoryIterator,
    ImageIterator,
    NumpyArrayIterator,
)
from fmkeras.data.images import DirectoryIndex, image_dataset, index_directory, split_index
from fmkeras.data.text import (
    classification_dataset,
    load_vocabulary,
    read_labelled_text,
    read_parallel_tsv,
    save_vocabulary,
    translation_dataset,
    translation_vectorizers,
)
from fmkeras.data.tfds_images import tfds_image_dataset

__all__ = [
    "Augmentation", "DataFrameIterator", "DirectoryIndex", "DirectoryIterator",
    "ImageDataGenerator", "ImageIterator", "NumpyArrayIterator", "augment_images",
    "classification_dataset", "image_dataset", "index_directory", "load_vocabulary",
    "read_labelled_text", "read_parallel_tsv", "save_vocabulary", "split_index",
    "tfds_image_dataset", "translation_dataset", "translation_vectorizers",
]
