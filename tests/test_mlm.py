"""Masked-language-model pretraining: masking, the model, and the task."""

import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from fmkeras import config as config_lib
from fmkeras import train as cli
from fmkeras.errors import DataError
from fmkeras.models.mlm import mask_tokens, mlm_model
from fmkeras.tasks import pretrain_mlm as task


def test_masking_never_touches_padding_and_follows_the_rate():
    ids = tf.constant(np.random.default_rng(0).integers(2, 50, (64, 32)), tf.int32)
    ids = tf.concat([ids, tf.zeros((64, 8), tf.int32)], axis=1)
    inputs, labels, weights = mask_tokens(ids, mask_id=50, vocab_size=51, rate=0.15, seed=(1, 2))
    weights, inputs = weights.numpy(), inputs.numpy()
    np.testing.assert_array_equal(labels.numpy(), ids.numpy())
    assert weights[:, 32:].sum() == 0 and (inputs[:, 32:] == 0).all()
    assert 0.12 < weights[:, :32].mean() < 0.18
    chosen = weights == 1
    assert 0.7 < (inputs[chosen] == 50).mean() < 0.9
    assert (inputs[~chosen] == ids.numpy()[~chosen]).all()
    again = mask_tokens(ids, 50, 51, 0.15, seed=(1, 2))[0].numpy()
    np.testing.assert_array_equal(again, inputs)
    with pytest.raises(ValueError, match="Received: rate=0"):
        mask_tokens(ids, 50, 51, rate=0)
    np.testing.assert_array_equal(mask_tokens(ids, np.int64(50), np.int64(51), 0.15,
                                              seed=(1, 2))[0], inputs)
    with pytest.raises(ValueError, match="Received: rate='0.15'"):
        mask_tokens(ids, 50, 51, rate="0.15")


def test_unknown_tokens_are_never_prediction_targets():
    # [UNK] (id 1) is the commonest word id of a word vocabulary: when it was a target, a
    # model answering [UNK] everywhere scored its frequency as masked_accuracy (stuck ~0.31).
    ids = tf.constant([[1, 1, 5, 1, 7, 1, 0, 0]] * 32, tf.int32)
    inputs, labels, weights = mask_tokens(ids, mask_id=9, vocab_size=10, rate=1.0, seed=(3, 4))
    weights, inputs = weights.numpy(), inputs.numpy()
    assert weights[ids.numpy() == 1].sum() == 0
    assert (inputs[ids.numpy() == 1] == 1).all()
    assert weights[ids.numpy() > 1].all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_id=10, vocab_size=10), r"mask_id in \[2, 10\) .* Received: mask_id=10"),
    (dict(mask_id=1, vocab_size=10), "Received: mask_id=1"),
    (dict(mask_id=2, vocab_size=2), "Received: vocab_size=2"),
])
def test_mask_and_vocabulary_ids_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_tokens(tf.constant([[5, 6]]), **kwargs)


def test_batches_are_cut_to_their_length_bucket():
    config = task.PretrainMLMConfig()
    ids = np.zeros((40, 32), "int32")
    for i in range(40):
        ids[i, :1 + i % 20] = 2 + i
    batches = list(task._dataset(ids, config, mask_id=60, vocab_size=61, shuffle=True,
                                 seed_offset=0, batch_size=8))
    seen = []
    for inputs, labels, weights in batches:
        labels = labels.numpy()
        longest = (labels > 0).sum(1).max()
        assert labels.shape[1] % task.BUCKET_WIDTH == 0 or labels.shape[1] == 32
        assert longest <= labels.shape[1] < longest + task.BUCKET_WIDTH
        assert inputs.shape == labels.shape == weights.shape
        seen.extend(labels[:, 0].tolist())
    assert sorted(seen) == list(range(2, 42))  # every text once, none cut short


def test_mlm_model_round_trips(tmp_path):
    model = mlm_model(30, 8, d_model=16, num_heads=2, ff_dim=16, num_layers=1)
    assert model.output.dtype == "float32"
    ids = np.ones((2, 8), "int32")
    path = str(tmp_path / "mlm.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(ids, verbose=0),
                               model.predict(ids, verbose=0), atol=1e-6)


def test_task_learns_to_restore_masked_tokens(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "a dog ran in the park"] * 40),
                      encoding="utf-8")
    run_dir = str(tmp_path / "run")
    config = config_lib.load_config(task.PretrainMLMConfig, "langid_mlm", [
        f"data.path={corpus}", f"run_dir={run_dir}", "data.sequence_length=8",
        "data.batch_size=16", "data.mask_rate=0.3", "model.d_model=16", "model.num_heads=2",
        "model.ff_dim=16", "model.num_layers=1", "train.epochs=4", "train.learning_rate=0.01",
        "train.verbose=0"])
    result = task.run(config)
    metrics = json.loads(pathlib.Path(run_dir, "metrics.json").read_text())
    assert metrics["final_loss"] < metrics["first_loss"]
    assert metrics["vocab_size"] == metrics["mask_id"] + 1
    for name in ("mlm.keras", "vocabulary.txt", "history.csv", "report.md"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert result.model.get_layer("encoder_block_0") is not None


def test_errors_and_cli_entry(tmp_path):
    config = config_lib.load_config(task.PretrainMLMConfig, None,
                                     [f"data.path={tmp_path / 'none.txt'}"])
    with pytest.raises(DataError, match="Text file not found"):
        task.run(config)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"text number {i}\n" for i in range(8)), encoding="utf-8")
    for split in ("0", "0.01"):  # no held-out text: nothing to score masked accuracy on
        config = config_lib.load_config(task.PretrainMLMConfig, None, [
            f"data.path={texts}", f"data.validation_split={split}",
            f"run_dir={tmp_path / 'r'}"])
        with pytest.raises(DataError, match=f"none of 8 with data.validation_split={split}"):
            task.run(config)
    assert not (tmp_path / "r").exists()
    module, config = cli.load_task_config("pretrain-mlm")
    assert module is task and config.data.mask_rate == 0.15
