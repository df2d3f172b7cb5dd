"""Shared fixtures: tiny image folders, dtype-policy hygiene, the --runslow flag."""

import json
import os
import socket
import subprocess

import keras
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "data", "digits")
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


# The files that take longest (seconds on 2 CPU cores, about), run first: with
# ``-n 2 --dist loadfile --no-loadscope-reorder`` xdist hands out files in
# collection order, so neither worker is left running a long file alone at
# the end. (xdist's default order is by number of tests.)
SLOW_FILES = ("test_notebooks.py",  # 250
              "test_strategy_tasks.py",  # 180
              "test_image_classification.py",  # 170
              "test_reliability.py",  # 160
              "test_distribute.py",  # 120
              "test_resume_tasks.py",  # 115
              "test_translation_task.py",  # 95
              "test_fine_tune.py",  # 95
              "test_compression.py",  # 75
              "test_pipeline_choice.py",  # 55
              "test_image_generation_task.py",  # 50
              "test_jax_backend.py",  # 45
              "test_fine_tune_compression.py",  # 45
              "test_gan.py",  # 40
              "test_cli.py",  # 40
              "test_export.py",  # 40
              "test_text_classification_task.py",  # 35
              "test_text_transfer.py")  # 35


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


SESSION_POLICY = keras.mixed_precision.global_policy().name


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    """Tests may change the global policy; never leak it into the next test.

    Module-scoped fixtures that run a task (which sets its precision policy)
    are set up before this fixture, so each test starts from the session's
    policy and ends by going back to it.
    """
    keras.mixed_precision.set_global_policy(SESSION_POLICY)
    yield
    keras.mixed_precision.set_global_policy(SESSION_POLICY)


@pytest.fixture(autouse=True)
def _no_op_determinism_leak():
    """Runs with ``deterministic: true`` turn TensorFlow op determinism on for the
    whole process (and Keras then compiles without XLA); turn it off after each test."""
    yield
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


class Stop(Exception):
    """The interruption :class:`StopAt` raises (tests expect it with ``pytest.raises``)."""


class StopAt(keras.callbacks.Callback):
    """Interrupt ``fit`` at the start of ``epoch``, as a crash would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Stop()


def load_script(*parts):
    """Import a script that is not in a package (a benchmark, a CI helper) by its path.

    ``parts`` are joined under the repository root, e.g. ``("benchmarks", "low_label.py")``.
    """
    import importlib.util

    path = os.path.join(REPO, *parts)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_ports(count):
    """``count`` distinct free localhost ports (for multi-worker ``TF_CONFIG`` clusters)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def replicas_env(**extra):
    """``os.environ`` for a process that splits the CPU into logical replicas.

    oneDNN off, as ``python -m fmkeras.train`` sets it for such runs: replicas
    running its kernels at once crash TensorFlow now and then on Intel CPUs
    with AVX-512.
    """
    return {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", **extra}


def start_workers(argv, count=2, env=None, **popen):
    """Start ``argv(index)`` as worker ``index`` of a ``count``-worker localhost
    ``TF_CONFIG`` cluster (CPU only, quiet TensorFlow logs); return the processes."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(count)]}
    procs = []
    for index in range(count):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": json.dumps(config),
                      "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen(argv(index), env=worker_env, text=True, **popen))
    return procs


def write_image_folder(root, classes=("a", "b"), per_class=4, size=(12, 10), mode="RGB",
                       fmt="png", seed=0):
    """Write ``root/<class>/<i>.<fmt>`` with class-dependent brightness; return root."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for c, name in enumerate(classes):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            base = 40 + 160 * c / max(1, len(classes) - 1)
            pixels = np.clip(rng.normal(base, 20, (*size, channels)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
            image.save(os.path.join(folder, f"img{i}.{fmt}"))
    return str(root)


def write_corrupt_jpeg(path):
    """A JPEG whose header and end marker are intact but whose body is zeros.

    Only decoding finds it: the header check passes.
    """
    import io

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data[:20] + b"\0" * (len(data) - 22) + data[-2:])
    return os.path.basename(path)


@pytest.fixture
def image_folder(tmp_path):
    """A tiny two-class RGB PNG folder."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def offline_keras(monkeypatch, tmp_path):
    """Keras downloads as on a machine without network: an empty cache, name lookups fail."""
    import socket
    import urllib.error

    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras-home"))
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
