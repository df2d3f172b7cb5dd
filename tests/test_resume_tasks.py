"""Pretraining and GAN runs resume after an interruption, like every other task.

A callback raises at the start of epoch 2 of 3; the backup of epoch 2 stays,
and rerunning the same config trains epoch 3 only and leaves a history of
exactly 3 rows.
"""

import csv
import os

import keras
import pytest
from conftest import Stop, StopAt, write_image_folder

from fmkeras.train import load_task_config

EPOCHS = 3


class Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    images = write_image_folder(root / "imgs", classes=("a", "b"), per_class=6, size=(16, 16))
    texts = root / "texts.tsv"
    texts.write_text("text\tlabel\n" + "".join(f"{w} {w} uno dos tres\tes\n" for w in
                                                 "abcdefghijklmnop"), encoding="utf-8")
    return {"images": images, "texts": texts}


def overrides(task, inputs):
    common = ["train.verbose=0", f"train.epochs={EPOCHS}"]
    return common + {
        "pretrain-mlm": [f"data.path={inputs['texts']}", "data.sequence_length=8",
                         "data.batch_size=4", "model.d_model=8", "model.num_heads=2",
                         "model.ff_dim=8", "model.num_layers=1"],
        "pretrain-simclr": [f"data.path={inputs['images']}", "data.image_size=16",
                            "data.batch_size=4", "model.backbone=cifar_resnet8",
                            "model.alpha=null"],
        "image-generation": [f"data.path={inputs['images']}", "data.image_size=16",
                             "data.batch_size=4", "model.latent_dim=4", "model.base_filters=4",
                             "evaluation.classifier_epochs=1", "evaluation.num_samples=4",
                             "export.enabled=false"],
    }[task]


@pytest.mark.parametrize("task", ["pretrain-mlm", "pretrain-simclr", "image-generation"])
def test_interrupted_run_resumes_from_its_backup(task, inputs, tmp_path):
    run_dir = str(tmp_path / "run")
    module, config = load_task_config(task, overrides=overrides(task, inputs), run_dir=run_dir)
    with pytest.raises(Stop):
        module.run(config, callbacks=[StopAt(2)])
    backup = os.path.join(run_dir, "checkpoints", "backup")
    assert "epoch-0002.weights.h5" in os.listdir(backup)

    epochs = Epochs()
    module, config = load_task_config(task, overrides=overrides(task, inputs), run_dir=run_dir)
    module.run(config, callbacks=[epochs])
    assert epochs.seen == [2]  # epochs 0 and 1 were restored, not retrained
    with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(EPOCHS))
    assert not os.path.exists(backup)  # removed once the run completed


class StopAfterTraining(keras.callbacks.Callback):
    """Stands for Ctrl-C while the task evaluates or exports, once fit has returned."""

    def on_train_end(self, logs=None):
        raise Stop("after the last epoch")


@pytest.mark.parametrize("task", ["pretrain-mlm", "image-generation"])
def test_a_run_stopped_after_its_last_epoch_is_not_trained_again(task, inputs, tmp_path):
    run_dir = str(tmp_path / "run")
    module, config = load_task_config(task, overrides=overrides(task, inputs), run_dir=run_dir)
    with pytest.raises(Stop):
        module.run(config, callbacks=[StopAfterTraining()])
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))

    epochs = Epochs()
    module, config = load_task_config(task, overrides=overrides(task, inputs), run_dir=run_dir)
    result = module.run(config, callbacks=[epochs])
    assert epochs.seen == []  # every epoch restored from the backup
    with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(EPOCHS))
    if task == "image-generation":
        assert result.metrics["epochs_trained"] == EPOCHS
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "backup"))


def test_changed_settings_refuse_to_resume(inputs, tmp_path):
    run_dir = str(tmp_path / "run")
    task = "pretrain-mlm"
    module, config = load_task_config(task, overrides=overrides(task, inputs), run_dir=run_dir)
    with pytest.raises(Stop):
        module.run(config, callbacks=[StopAt(1)])
    module, config = load_task_config(task, overrides=[*overrides(task, inputs),
                                                       "data.mask_rate=0.3"], run_dir=run_dir)
    with pytest.raises(Exception, match="mask_rate"):
        module.run(config)


FINE_TUNE = ["data.image_size=16", "data.batch_size=4", "model.backbone=cifar_resnet8",
             "model.alpha=null",
             "train.head_epochs=2", "train.epochs=2", "train.unfreeze_layers=2",
             "train.verbose=0", "export.enabled=false"]


@pytest.mark.parametrize("stop_at, retrained", [(1, [1, 2, 3]), (3, [3])])
def test_fine_tune_resumes_in_the_phase_it_stopped(inputs, tmp_path, stop_at, retrained):
    run_dir = str(tmp_path / "run")
    settings = [f"data.path={inputs['images']}", *FINE_TUNE]
    module, config = load_task_config("fine-tune", overrides=settings, run_dir=run_dir)
    with pytest.raises(Stop):
        module.run(config, callbacks=[StopAt(stop_at)])

    epochs = Epochs()
    module, config = load_task_config("fine-tune", overrides=settings, run_dir=run_dir)
    module.run(config, callbacks=[epochs])
    assert epochs.seen == retrained  # finished epochs and phases are not trained again
    for phase, expected in ((1, [0, 1]), (2, [2, 3])):
        with open(os.path.join(run_dir, f"history_phase{phase}.csv"), encoding="utf-8") as f:
            assert [int(row["epoch"]) for row in csv.DictReader(f)] == expected
    leftovers = [f for f in os.listdir(os.path.join(run_dir, "checkpoints"))
                 if f.startswith(("backup", "phase"))]
    assert leftovers == []
