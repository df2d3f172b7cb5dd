"""atheris harness: the config loader takes any bytes and fails only with ConfigError.

Run: ``python tests/fuzz/fuzz_config.py -runs=5000`` (CI runs it briefly).
"""

import sys

import atheris
import tensorflow  # noqa: F401  (imported first so that only fmkeras is instrumented)
import yaml

with atheris.instrument_imports(include=["fmkeras"]):
    from fmkeras import config as config_lib
    from fmkeras.errors import ConfigError
    from fmkeras.tasks.image_classification import ImageClassificationConfig


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    override = fdp.ConsumeUnicodeNoSurrogates(40)
    text = fdp.ConsumeUnicodeNoSurrogates(400)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    try:
        merged = config_lib.apply_overrides(loaded if isinstance(loaded, dict) else {},
                                            [override])
        config_lib.from_dict(ImageClassificationConfig, merged)
    except ConfigError:
        pass


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
