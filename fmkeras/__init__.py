"""fmkeras: train, evaluate and ship foundation-model families with Keras 3.

The package is organised in layers (see ``ARCHITECTURE`` in the README):
``fmkeras.models`` (builders), ``fmkeras.data`` (pipelines),
``fmkeras.training`` (precision, callbacks), ``fmkeras.evaluation``
(metrics, reports), ``fmkeras.export`` (SavedModels) and ``fmkeras.tasks``
(one ``run(config)`` per job). ``python -m fmkeras.train`` is the CLI.
"""

__version__ = "0.1.0"
