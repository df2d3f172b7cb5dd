"""Reliability: runs survive SIGKILL and SIGTERM and resume exactly.

Each test maps to a point of the reliability promise in the README:
resume after a kill (bitwise on CPU with deterministic: true), SIGTERM saves
and exits with code 143, history keeps one row per epoch.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, Stop, StopAt, load_script, write_image_folder

from fmkeras.train import EXIT_TERMINATED

EPOCHS = 6


def command(data, run_dir, every_s=0):
    return [sys.executable, "-m", "fmkeras.train", "image-classification",
            "--set", f"data.path={data}", "--set", f"train.epochs={EPOCHS}",
            "--set", "data.image_size=16", "--set", "data.color_mode=rgb",
            "--set", "deterministic=true", "--set", "export.enabled=false",
            "--set", "train.verbose=0", "--set", "data.augment.horizontal_flip=true",
            "--set", f"checkpoint_every_s={every_s}", "--run-dir", str(run_dir)]


def start(data, run_dir, every_s=0):
    """The run; ``every_s=0`` writes each epoch (a hard kill loses what an interval holds)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(command(data, run_dir, every_s), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def rows(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wait_for_epochs(proc, run_dir, count, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(rows(run_dir)) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("the run did not reach the epoch in time")


def final_weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "best.keras"))
    return model.get_weights()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data") / "imgs", classes=("a", "b", "c"),
                              per_class=60)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    proc = start(data, run_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return run_dir


def test_resume_after_sigkill_is_bitwise_equal(data, straight, tmp_path):
    run_dir = tmp_path / "killed"
    proc = start(data, run_dir)
    reached = wait_for_epochs(proc, run_dir, 2)
    proc.kill()
    proc.communicate()
    assert reached, "finished before it could be killed"
    resumed = start(data, run_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    history = rows(run_dir)
    assert [int(r["epoch"]) for r in history] == list(range(EPOCHS))
    for a, b in zip(final_weights(straight), final_weights(run_dir)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_exits_143_and_the_next_run_resumes(data, tmp_path):
    run_dir = tmp_path / "termed"
    # An interval longer than the run: the epoch SIGTERM keeps is written on the way out.
    proc = start(data, run_dir, every_s=3600)
    assert wait_for_epochs(proc, run_dir, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "SIGTERM" in err
    assert os.path.exists(run_dir / "checkpoints" / "backup")
    done = len(rows(run_dir))
    resumed = start(data, run_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert [int(r["epoch"]) for r in rows(run_dir)] == list(range(EPOCHS))
    assert done >= 1


# --- checkpoints are atomic and checked -------------------------------------------------

from fmkeras import config as config_lib  # noqa: E402
from fmkeras.errors import ConfigError  # noqa: E402
from fmkeras.tasks import image_classification as task  # noqa: E402


class FirstEpoch(keras.callbacks.Callback):
    first = None

    def on_epoch_begin(self, epoch, logs=None):
        self.first = epoch if self.first is None else self.first


def tiny(data, run_dir, *overrides):
    base = [f"data.path={data}", f"run_dir={run_dir}", "data.image_size=8",
            "data.color_mode=rgb", "data.batch_size=8", "model.filters=[4]",
            "model.dense_units=8", "train.epochs=4", "train.warmup_epochs=0",
            "export.enabled=false", "train.verbose=0", "checkpoint_every_s=0"]
    return config_lib.load_config(task.ImageClassificationConfig, None, base + list(overrides))


def interrupted(data, run_dir, at=3, *overrides):
    config = tiny(data, run_dir, *overrides)
    with pytest.raises(Stop):
        task.run(config, callbacks=[StopAt(at)])
    return config


def backups(run_dir):
    folder = os.path.join(run_dir, "checkpoints", "backup")
    return sorted(f for f in os.listdir(folder) if f.startswith("epoch-"))


def test_backup_keeps_two_atomic_checkpoints_and_survives_an_exception(data, tmp_path):
    interrupted(data, str(tmp_path / "run"))
    assert backups(str(tmp_path / "run")) == ["epoch-0002.weights.h5", "epoch-0003.weights.h5"]
    folder = tmp_path / "run" / "checkpoints" / "backup"
    assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "empty", "foreign"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(data, tmp_path, damage):
    run_dir = str(tmp_path / "run")
    config = interrupted(data, run_dir)
    newest = os.path.join(run_dir, "checkpoints", "backup", "epoch-0003.weights.h5")
    if damage == "truncate":
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) // 2)
    elif damage == "empty":
        open(newest, "wb").close()
    else:
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(newest)
    first = FirstEpoch()
    with pytest.warns(RuntimeWarning, match="epoch-0003.weights.h5"):
        task.run(config, callbacks=[first])
    assert first.first == 2  # resumed from the previous good epoch
    assert [int(r["epoch"]) for r in rows(run_dir)] == [0, 1, 2, 3]


def test_no_usable_checkpoint_starts_fresh(data, tmp_path):
    run_dir = str(tmp_path / "run")
    config = interrupted(data, run_dir)
    for name in backups(run_dir):
        open(os.path.join(run_dir, "checkpoints", "backup", name), "wb").close()
    first = FirstEpoch()
    with pytest.warns(RuntimeWarning) as record:
        task.run(config, callbacks=[first])
    messages = [str(w.message) for w in record]
    assert any("starting from scratch" in m for m in messages)
    assert sum("Skipping unusable checkpoint" in m for m in messages) == 2
    assert first.first == 0
    assert [int(r["epoch"]) for r in rows(run_dir)] == [0, 1, 2, 3]


def test_resume_with_changed_settings_is_refused_unless_forced(data, tmp_path):
    run_dir = str(tmp_path / "run")
    interrupted(data, run_dir)
    changed = tiny(data, run_dir, "data.batch_size=4", "train.optimizer=sgd")
    with pytest.raises(ConfigError, match="data.batch_size, optimizer.optimizer"):
        task.run(changed)
    first = FirstEpoch()
    with pytest.warns(RuntimeWarning, match="some state was not restored"):
        task.run(tiny(data, run_dir, "data.batch_size=4", "train.optimizer=sgd",
                      "force_resume=true"), callbacks=[first])
    assert first.first == 3


def test_best_checkpoint_value_survives_a_resume(data, tmp_path):
    run_dir = str(tmp_path / "run")
    config = interrupted(data, run_dir, 3)
    state = json.loads((tmp_path / "run" / "checkpoints" / "best.keras.best.json").read_text())
    task.run(config)
    again = json.loads((tmp_path / "run" / "checkpoints" / "best.keras.best.json").read_text())
    assert again["best"] <= state["best"]


def test_a_fresh_run_in_a_finished_run_dir_keeps_nothing_of_the_old_best(data, tmp_path):
    # The finished run's best checkpoint (lower val_loss, another architecture) used to
    # outrank every epoch of the new run and be loaded into it at the end.
    run_dir = str(tmp_path / "run")
    task.run(tiny(data, run_dir, "train.epochs=1"))
    state_path = tmp_path / "run" / "checkpoints" / "best.keras.best.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "best": 0.0}))  # a value no epoch beats
    result = task.run(tiny(data, run_dir, "train.epochs=1", "model.dense_units=16"))
    state = json.loads(state_path.read_text())
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header and this run's one epoch
    val_loss = float(history[1].split(",")[history[0].split(",").index("val_loss")])
    assert state["best"] == pytest.approx(val_loss)
    assert np.isfinite(result.metrics["test_loss"])


def test_resuming_with_fewer_epochs_than_were_trained_is_refused(data, tmp_path):
    # It used to train nothing and report the longer run's model as this shorter one.
    run_dir = str(tmp_path / "run")
    interrupted(data, run_dir, 3)  # epochs 0-2 done
    with pytest.raises(ConfigError, match=r"already trained 3 epochs, more than the 2 this run "
                                          r"asks for \(train.epochs\). Expected train.epochs >= 3"):
        task.run(tiny(data, run_dir, "train.epochs=2"))
    assert backups(run_dir) == ["epoch-0002.weights.h5", "epoch-0003.weights.h5"]
    result = task.run(tiny(data, run_dir))  # the run it was, resumed
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 1 + 4
    assert np.isfinite(result.metrics["test_loss"])


def test_changed_sgd_momentum_refuses_to_resume(data, tmp_path):
    run_dir = str(tmp_path / "run")
    interrupted(data, run_dir, 3, "train.optimizer=sgd", "train.momentum=0.9")
    with pytest.raises(ConfigError, match="optimizer.momentum"):
        task.run(tiny(data, run_dir, "train.optimizer=sgd", "train.momentum=0.5"))


# --- checkpoint_every_s: fewer writes, nothing lost short of a hard kill -----------------

class Recorder(keras.callbacks.Callback):
    """Weights and losses at each epoch end; checkpoint files seen before the run ended."""

    def __init__(self, run_dir, raise_in_epoch=None):
        super().__init__()
        self.run_dir, self.raise_in_epoch = run_dir, raise_in_epoch
        self.weights, self.losses, self.files = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.losses.append(logs["loss"])
        folder = os.path.join(self.run_dir, "checkpoints")
        self.files.append(sorted(f for _, _, names in os.walk(folder) for f in names))

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.raise_in_epoch and batch == 1:
            raise Stop()  # mid-epoch: the weights no longer match an epoch end

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def test_interval_holds_back_writes_and_an_exception_writes_the_last_epoch(data, tmp_path):
    run_dir = str(tmp_path / "run")
    recorder = Recorder(run_dir, raise_in_epoch=3)
    config = tiny(data, run_dir, "checkpoint_every_s=3600", "data.validation_split=0.0")
    with pytest.raises(Stop):
        task.run(config, callbacks=[recorder])
    # Nothing was written while training: the interval had not passed.
    assert not any(f.endswith((".h5", ".keras")) for files in recorder.files for f in files)
    assert backups(run_dir) == ["epoch-0003.weights.h5"]  # written on the way out
    model = recorder.model
    model.load_weights(os.path.join(run_dir, "checkpoints", "backup", "epoch-0003.weights.h5"))
    for saved, at_epoch_end in zip(model.get_weights(), recorder.weights[2]):
        np.testing.assert_array_equal(saved, at_epoch_end)  # not the mid-epoch weights
    best = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "best.keras"))
    best_epoch = int(np.argmin(recorder.losses))
    for saved, expected in zip(best.get_weights(), recorder.weights[best_epoch]):
        np.testing.assert_array_equal(saved, expected)
    first = FirstEpoch()
    task.run(tiny(data, run_dir, "checkpoint_every_s=3600", "data.validation_split=0.0"),
             callbacks=[first])
    assert first.first == 3
    assert [int(r["epoch"]) for r in rows(run_dir)] == [0, 1, 2, 3]


def test_interval_zero_writes_every_epoch(data, tmp_path):
    run_dir = str(tmp_path / "run")
    recorder = Recorder(run_dir)
    task.run(tiny(data, run_dir, "checkpoint_every_s=0"), callbacks=[recorder])
    for epoch, files in enumerate(recorder.files):
        assert f"epoch-{epoch + 1:04d}.weights.h5" in files and "best.keras" in files


@pytest.mark.parametrize("value", ["-1", "soon", "true"])
def test_bad_checkpoint_interval_is_refused(data, tmp_path, value):
    with pytest.raises(ConfigError, match="checkpoint_every_s"):
        tiny(data, str(tmp_path / "run"), f"checkpoint_every_s={value}")


# Point 5: dependency floors exclude releases with known deserialization advisories.

def _audit_module():
    return load_script(".ci", "audit.py")


def test_dependency_floors_exclude_known_advisories():
    audit = _audit_module()
    with open(os.path.join(REPO, ".ci", "advisories.json"), encoding="utf-8") as f:
        advisories = json.load(f)
    declared = audit.floors()
    assert {"keras", "tensorflow"} <= set(declared)
    assert audit.problems(advisories, declared, {}) == []


def test_audit_flags_an_affected_floor_and_installed_version():
    from packaging.version import Version

    audit = _audit_module()
    advisories = {"keras": [{"id": "CVE-X", "fixed": "3.9.0", "summary": "s"}]}
    found = audit.problems(advisories, {"keras": Version("3.8.0")}, {"keras": Version("3.1.0")})
    assert len(found) == 2 and all("CVE-X" in line for line in found)
    assert "floor for keras is 3.8.0" in found[0] and "installed keras 3.1.0" in found[1]


def test_every_model_load_goes_through_the_safe_loader():
    # Only fmkeras/saving.py may call Keras' loaders; everything else uses saving.load_model.
    import re

    direct = re.compile(r"keras\.(saving|models)\.load_model\(")
    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "fmkeras")):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.endswith(os.path.join("fmkeras", "saving.py")):
                with open(path, encoding="utf-8") as f:
                    offenders += [f"{path}:{i}" for i, line in enumerate(f, 1)
                                  if direct.search(line)]
    assert offenders == []
