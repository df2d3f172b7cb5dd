"""fmkeras.saving.load_model refuses crafted model files, with no side effect."""

import json
import os
import warnings
import zipfile

import keras
import numpy as np
import pytest

from fmkeras.errors import FmkerasError
from fmkeras.models import mlp, transformer_classifier
from fmkeras.saving import UnsafeModelError, inspect_keras_file, load_model


@pytest.fixture
def saved(tmp_path):
    path = str(tmp_path / "good.keras")
    mlp((4,), (3,), 2).save(path)
    return path


def rewrite(path, out, edit):
    """Copy a .keras archive, editing its config.json with ``edit(config)``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return str(out)


def first_dense(config):
    return next(layer for layer in config["config"]["layers"]
                if layer["class_name"] == "Dense")


def test_good_files_load_in_safe_mode(saved, tmp_path):
    model = load_model(saved)
    assert model.name == "mlp"
    path = str(tmp_path / "t.keras")
    classifier = transformer_classifier(20, 6, 3, d_model=8, num_heads=2, ff_dim=8, num_layers=1)
    classifier.save(path)
    x = np.array([[3, 4, 5, 0, 0, 0]])
    np.testing.assert_allclose(load_model(path).predict(x, verbose=0),
                               classifier.predict(x, verbose=0), rtol=1e-6)


def test_lambda_layer_with_code_is_refused(tmp_path):
    canary = tmp_path / "canary"
    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, outputs).save(path)

    def plant(config):  # what an attacker would put in the Lambda
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"]["config"]["code"] = f"open('{canary}', 'w')"
    bad = rewrite(path, tmp_path / "bad.keras", plant)
    with pytest.raises(UnsafeModelError, match="Lambda layer"):
        load_model(bad)
    assert not canary.exists()


def test_config_naming_os_system_is_refused(saved, tmp_path):
    canary = tmp_path / "canary"

    def plant(config):
        first_dense(config)["config"]["kernel_initializer"] = {
            "module": "os", "class_name": "system", "config": f"touch {canary}",
            "registered_name": None}
    bad = rewrite(saved, tmp_path / "bad.keras", plant)
    with pytest.raises(UnsafeModelError, match="module 'os'"):
        load_model(bad)
    assert not canary.exists()


def test_config_enabling_unsafe_deserialization_is_refused(saved, tmp_path):
    def plant(config):
        first_dense(config)["config"]["activation"] = {
            "module": "keras.config", "class_name": "function",
            "config": "enable_unsafe_deserialization", "registered_name": "function"}
    bad = rewrite(saved, tmp_path / "bad.keras", plant)
    with pytest.raises(UnsafeModelError, match="enable_unsafe_deserialization"):
        load_model(bad)
    # Safe mode still holds afterwards: a Lambda is still refused by Keras itself.
    inputs = keras.Input((2,))
    lam = str(tmp_path / "lam.keras")
    keras.Model(inputs, keras.layers.Lambda(lambda x: x)(inputs)).save(lam)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(lam)


@pytest.mark.parametrize("vocabulary", ["/etc/passwd", "https://example.com/vocab.txt"])
def test_lookup_vocabulary_pointing_outside_is_refused(tmp_path, vocabulary):
    inputs = keras.Input((1,), dtype="string")
    outputs = keras.layers.StringLookup(vocabulary=["a", "b"])(inputs)
    path = str(tmp_path / "lookup.keras")
    keras.Model(inputs, outputs).save(path)

    def plant(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "StringLookup":
                layer["config"]["vocabulary"] = vocabulary
    bad = rewrite(path, tmp_path / "bad.keras", plant)
    assert any("vocabulary" in reason for reason in inspect_keras_file(bad))
    with pytest.raises(UnsafeModelError, match="vocabulary"):
        load_model(bad)


def test_h5_model_files_need_opt_in(tmp_path):
    path = str(tmp_path / "legacy.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that HDF5 is legacy
        mlp((4,), (3,), 2).save(path)
    with pytest.raises(UnsafeModelError, match="legacy HDF5"):
        load_model(path)
    with pytest.warns(UserWarning, match="without safety checks"):
        assert load_model(path, allow_h5=True).name == "mlp"


def test_unsafe_flag_warns(saved):
    with pytest.warns(UserWarning, match="without safety checks"):
        load_model(saved, unsafe=True)


def test_missing_and_non_keras_files(tmp_path):
    with pytest.raises(FmkerasError, match="not found"):
        load_model(tmp_path / "nope.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FmkerasError, match="Not a readable .keras file"):
        load_model(junk)
    assert os.path.exists(junk)
