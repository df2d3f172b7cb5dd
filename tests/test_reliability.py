"""Reliability: runs survive SIGKILL and SIGTERM and resume exactly.

Each test maps to a point of the reliability promise in the README:
resume after a kill (bitwise on CPU with deterministic: true), SIGTERM saves
and exits with code 143, history keeps one row per epoch.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, write_image_folder

from fmkeras.train import EXIT_TERMINATED

EPOCHS = 6


def command(data, run_dir):
    return [sys.executable, "-m", "fmkeras.train", "image-classification",
            "--set", f"data.path={data}", "--set", f"train.epochs={EPOCHS}",
            "--set", "data.image_size=16", "--set", "data.color_mode=rgb",
            "--set", "deterministic=true", "--set", "export.enabled=false",
            "--set", "train.verbose=0", "--set", "data.augment.horizontal_flip=true",
            "--run-dir", str(run_dir)]


def start(data, run_dir):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(command(data, run_dir), env=env, stdout=subprocess.DEVNULL,
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
    proc = start(data, run_dir)
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
