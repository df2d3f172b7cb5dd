"""Text classification from a pretrain-mlm run, and LoRA in the text-classification task."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
from conftest import REPO

from fmkeras import config as config_lib
from fmkeras import saving
from fmkeras.data import text as text_data
from fmkeras.errors import ConfigError
from fmkeras.tasks import pretrain_mlm
from fmkeras.tasks import text_classification as text_task
from fmkeras.training import lora

SAMPLE = os.path.join(REPO, "data", "langid", "langid.tsv")
MODEL = ["model.d_model=16", "model.num_heads=2", "model.ff_dim=16", "model.num_layers=1"]


class Snapshot(keras.callbacks.Callback):
    """The named layers' weights, and the dtypes of every LoRA variable, as training starts."""

    def __init__(self, *names):
        super().__init__()
        self.names = names
        self.weights = {}
        self.lora_dtypes = set()

    def on_train_begin(self, logs=None):
        for name in self.names:
            self.weights[name] = {w.path: w.numpy().copy()
                                  for w in self.model.get_layer(name).weights}
        self.lora_dtypes = {w.dtype for layer in lora.lora_layers(self.model)
                            for w in layer.weights if w.name.startswith("lora_")}



@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("langid") / "langid.tsv"
    with open(SAMPLE, encoding="utf-8") as f:
        path.write_text("".join(f.readlines()[:161]), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def mlm_run(texts, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("mlm") / "run")
    config = config_lib.load_config(pretrain_mlm.PretrainMLMConfig, "langid_mlm", [
        f"data.path={texts}", f"run_dir={run_dir}", "data.sequence_length=12",
        "data.batch_size=32", "train.epochs=1", "train.verbose=0", "jit_compile=false",
        "precision=float32", *MODEL])
    pretrain_mlm.run(config)
    return run_dir


def text_config(texts, run_dir, *overrides):
    base = [f"data.path={texts}", f"run_dir={run_dir}", "data.sequence_length=12",
            "data.batch_size=32", "train.epochs=1", "train.verbose=0", "jit_compile=false",
            "precision=float32", *MODEL]
    return config_lib.load_config(text_task.TextClassificationConfig, None,
                                  base + list(overrides))


@pytest.fixture(scope="module")
def from_mlm(texts, mlm_run, tmp_path_factory):
    """One run does it all: MLM start, LoRA rank 2, mixed_bfloat16, export with its check."""
    snapshot = Snapshot("embedding", "encoder_block_0")
    config = text_config(texts, str(tmp_path_factory.mktemp("tc") / "run"),
                         f"model.encoder_path={mlm_run}", "lora.rank=2",
                         "precision=mixed_bfloat16")
    return text_task.run(config, callbacks=[snapshot]), snapshot, config


def test_text_classification_starts_from_the_mlm_run(from_mlm, mlm_run):
    result, snapshot, _ = from_mlm
    mlm = saving.load_model(os.path.join(mlm_run, "mlm.keras"), compile=False)
    for name in ("embedding", "encoder_block_0"):
        expected = {w.path: w.numpy() for w in mlm.get_layer(name).weights}
        assert len(expected) > 1
        for path, want in expected.items():  # the base weights; the adapters are new
            np.testing.assert_array_equal(snapshot.weights[name][path], want)
    vocabulary = text_data.load_vocabulary(os.path.join(mlm_run, "vocabulary.txt"))
    assert text_data.load_vocabulary(
        os.path.join(result.run_dir, "vocab", "tokens.txt")) == vocabulary
    metrics = json.loads(pathlib.Path(result.run_dir, "metrics.json").read_text())
    assert metrics["vocab_size"] == len(vocabulary)
    assert metrics["encoder_path"] == os.path.join(mlm_run, "mlm.keras")
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


@pytest.mark.parametrize("overrides, expected, received", [
    (["model.d_model=32"], "Expected model.d_model=16", "Received: model.d_model=32"),
    (["model.num_layers=2", "data.sequence_length=8"],
     "Expected model.num_layers=1, data.sequence_length=12",
     "Received: model.num_layers=2, data.sequence_length=8"),
    (["model.name=gru"], "needs model.name='transformer'", "Received: model.name='gru'"),
])
def test_mlm_mismatch_names_the_settings(texts, mlm_run, tmp_path, overrides, expected,
                                         received):
    config = text_config(texts, str(tmp_path / "run"), f"model.encoder_path={mlm_run}",
                         *overrides)
    with pytest.raises(ConfigError) as info:
        text_task.run(config)
    assert expected in str(info.value) and received in str(info.value)
    assert not os.path.exists(tmp_path / "run")  # refused before the run starts


def test_lora_trains_fewer_parameters_in_float32_and_exports_merged(from_mlm):
    result, snapshot, config = from_mlm
    assert snapshot.lora_dtypes == {"float32"}  # adapters stay float32 under mixed_bfloat16
    metrics = result.metrics
    without = text_task.build_model(config.model, metrics["vocab_size"], 12,
                                   result.model.output_shape[-1])
    full = without.count_params()
    assert metrics["lora_rank"] == 2
    assert 0 < metrics["trainable_parameters"] < full / 2
    assert metrics["total_parameters"] > full  # the adapters come on top
    # The model returned and exported is merged: no adapters, the plain model's size.
    assert lora.lora_layers(result.model) == [] and result.model.count_params() == full
    assert os.path.exists(os.path.join(result.export_path, "saved_model.pb"))  # check passed


def test_lora_config_errors(texts, tmp_path):
    with pytest.raises(ConfigError, match="Expected lora.rank >= 0"):
        text_task.run(text_config(texts, str(tmp_path / "a"), "lora.rank=-1"))
    with pytest.raises(ConfigError, match="lora.patterns: No Dense"):
        text_task.run(text_config(texts, str(tmp_path / "b"), "lora.rank=2",
                                  "lora.patterns=[nothing*]", "export.enabled=false"))


def test_finetune_preset_matches_the_mlm_preset():
    finetune = config_lib.load_config(text_task.TextClassificationConfig, "langid_mlm_finetune")
    mlm = config_lib.load_config(pretrain_mlm.PretrainMLMConfig, "langid_mlm")
    for key in ("d_model", "num_heads", "ff_dim", "num_layers"):
        assert getattr(finetune.model, key) == getattr(mlm.model, key), key
    assert finetune.data.sequence_length == mlm.data.sequence_length
    assert finetune.model.encoder_path == "runs/mlm" and finetune.lora.rank == 0
