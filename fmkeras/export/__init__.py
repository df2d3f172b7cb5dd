"""SavedModel export for serving, written atomically and checked after writing.

Exports land in ``<export_root>/<name>/<version>/``, the layout TensorFlow
Serving watches. Each version is written to a temporary folder next to it and
renamed into place, so a failed export never leaves a half-written version.
Right after writing, :func:`check_export` reloads the SavedModel with plain
TensorFlow in a separate Python process that never imports fmkeras (started
at the first check and reused by later ones) and compares its outputs with
the in-memory model at two batch sizes.

One module per model family: :mod:`fmkeras.export.image` (classifiers of
image bytes), and the text and generator exporters beside it.
"""

from fmkeras.export.core import (
    ExportError,
    check_export,
    next_version,
    numpy_outputs,
    write_versioned,
)
from fmkeras.export.generator import MAX_SAMPLE_BATCH, export_generator, generator_archive
from fmkeras.export.image import (
    MAX_SERVING_PIXELS,
    export_image_classifier,
    image_classifier_archive,
)
from fmkeras.export.text import (
    export_text_classifier,
    export_translator,
    text_classifier_archive,
    translator_archive,
)

__all__ = ["ExportError", "MAX_SAMPLE_BATCH", "MAX_SERVING_PIXELS", "check_export",
           "export_generator", "generator_archive",
           "export_image_classifier", "image_classifier_archive",
           "export_text_classifier", "export_translator", "text_classifier_archive",
           "translator_archive",
           "next_version", "numpy_outputs", "write_versioned"]
