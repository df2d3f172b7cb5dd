"""The model builders on Keras' JAX backend with TensorFlow absent, and benchmarks/gpu_jax.py.

Each check runs in a child process with ``KERAS_BACKEND=jax`` and an import
hook that refuses ``tensorflow``, as on a GPU machine that has JAX only.
"""

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
from conftest import REPO, write_image_folder

from fmkeras import models

if importlib.util.find_spec("jax") is None:  # not imported here: this process runs TensorFlow
    pytest.skip("the JAX backend checks need jax (pip install -e '.[dev]')",
                allow_module_level=True)

NO_TENSORFLOW = textwrap.dedent("""
    import importlib.abc
    import sys

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")

    sys.meta_path.insert(0, NoTensorFlow())
""")


# Builder name, positional and keyword arguments (lists stand for tuples), for both backends.
BUILDERS = {
    "fast_cnn": ("fast_cnn", [[32, 32, 3], 10], {"widths": [8, 16, 16]}),
    "simple_cnn": ("simple_cnn", [[16, 16, 3], 4], {"filters": [8, 16], "dense_units": 8}),
    "resnet": ("resnet", [[16, 16, 3], 4], {"depth": 8, "base_filters": 4}),
    "transformer_classifier": ("transformer_classifier", [100, 16, 3],
                               {"d_model": 16, "num_heads": 2, "ff_dim": 32, "num_layers": 1}),
    "transformer_seq2seq": ("transformer_seq2seq", [50, 60, 12],
                            {"d_model": 16, "num_heads": 2, "ff_dim": 32,
                             "num_encoder_layers": 1, "num_decoder_layers": 1}),
}


def build(spec):
    """Build ``spec`` from :data:`BUILDERS` (this source also runs in the JAX child)."""
    name, args, kwargs = spec

    def tuples(value):
        return tuple(value) if isinstance(value, list) else value

    return getattr(models, name)(*map(tuples, args), **{k: tuples(v) for k, v in kwargs.items()})


def run_without_tensorflow(code, *argv, timeout=300):
    """Run ``code`` in a JAX-backend child that cannot import TensorFlow; return its stdout."""
    # XLA's CPU backend optimizes each compiled function at level 3 by default: a
    # truncated-normal initializer takes about 2 s to compile on 2 cores, 0.1 s at
    # level 0. These checks are about results, not speed.
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""),
                                  "--xla_backend_optimization_level=0"]).strip(),
           "PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "benchmarks")])}
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW + textwrap.dedent(code), *argv],
                            capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_builders_build_and_train_on_jax_without_tensorflow():
    expected = {name: build(spec).count_params()  # built here, on the TensorFlow backend
                for name, spec in BUILDERS.items()}
    out = run_without_tensorflow(inspect.getsource(build) + textwrap.dedent("""
        import json
        import keras
        import numpy as np
        from fmkeras import models
        from gpu_jax import make_train_step, _state

        assert keras.backend.backend() == "jax"
        counts = {name: build(spec).count_params()
                  for name, spec in json.loads(sys.argv[1]).items()}
        keras.utils.set_random_seed(0)
        model = models.fast_cnn((16, 16, 3), 4, widths=(8, 16))
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (32, 16, 16, 3)).astype("float32")
        models.adapt_whitening(model, x)
        y = np.eye(4, dtype="float32")[np.arange(32) % 4]
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        step = make_train_step(model, optimizer, keras.losses.CategoricalCrossentropy())
        state = _state(model, optimizer)
        losses = []
        for _ in range(15):
            loss, state = step(state, x, y, np.float32(0.05))
            losses.append(float(loss))
        print(json.dumps({"counts": counts, "losses": losses,
                          "tensorflow_loaded": "tensorflow" in sys.modules}))
    """), json.dumps(BUILDERS))
    report = json.loads(out.strip().splitlines()[-1])
    assert report["counts"] == expected
    assert report["losses"][-1] < 0.7 * report["losses"][0], report["losses"]
    assert not report["tensorflow_loaded"]


def test_gpu_augmentation_flips_shifts_and_keeps_labels():
    out = run_without_tensorflow("""
        import json
        import jax
        import numpy as np
        from gpu_jax import hold_out, make_augment

        # Pixel (r, c) holds 8 * c in channel 0 and 8 * r in channel 1; channel 2 is the id.
        n, size = 256, 16
        rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        images = np.zeros((n, size, size, 3), np.uint8)
        images[..., 0], images[..., 1] = 8 * cols, 8 * rows
        images[..., 2] = (np.arange(n) % 256)[:, None, None]
        labels = (np.arange(n) % 256).astype("float32")[:, None]
        x, y = make_augment(50, shift=2)(jax.random.key(1), images, labels)
        x, y = np.asarray(x) * 255, np.asarray(y)
        centre = x[:, :, 8, 8, :]
        step_right = x[:, :, 8, 9, 0] - x[:, :, 8, 8, 0]
        column = np.round(centre[..., 0] / 8).astype(int)  # of the flipped image, if flipped
        train, test = hold_out(np.repeat(np.arange(4), 50), fraction=0.1, seed=42)
        print(json.dumps({
            "shape": list(x.shape), "label_shape": list(y.shape),
            "labels_follow": bool(np.allclose(np.round(centre[..., 2]), y[..., 0])),
            "flipped": float((step_right < 0).mean()),
            "dx": sorted(set((np.where(step_right < 0, 15 - column, column) - 8).ravel().tolist())),
            "dy": sorted(set((np.round(centre[..., 1] / 8) - 8).astype(int).ravel().tolist())),
            "distinct": len(set(np.round(centre[..., 2]).astype(int).ravel().tolist())),
            "held_out": [int(len(train)), int(len(test))],
            "disjoint": not set(train) & set(test),
            "per_class": np.bincount(np.repeat(np.arange(4), 50)[test]).tolist(),
        }))
    """)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["shape"] == [5, 50, 16, 16, 3] and report["label_shape"] == [5, 50, 1]
    assert report["labels_follow"]
    assert report["distinct"] == 250  # a permutation: 250 of the 256 images, none twice
    assert 0.35 < report["flipped"] < 0.65
    assert report["dx"] == [-2, -1, 0, 1, 2] and report["dy"] == [-2, -1, 0, 1, 2]
    assert report["held_out"] == [180, 20] and report["disjoint"]
    assert report["per_class"] == [5, 5, 5, 5]


def test_gpu_script_end_to_end_on_a_tiny_archive(tmp_path):
    folder = write_image_folder(tmp_path / "train", classes=("cat", "ant", "bee"), per_class=10,
                                size=(32, 32), fmt="jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="train")
    out_json = tmp_path / "figures.json"
    out = run_without_tensorflow("""
        import sys
        from gpu_jax import main
        sys.exit(main(sys.argv[1:]))
    """, "--skip-precision", "--archive", str(archive), "--widths", "8", "8", "8",
        "--epochs", "1", "2", "--batch", "9", "--out", str(out_json))
    figures = json.loads(out_json.read_text())
    assert "cpu" in figures["machine"] and "JAX" in figures["machine"]
    runs = figures["cifar"]["runs"]
    assert [run["epochs"] for run in runs] == [1, 2]
    assert figures["cifar"]["train_images"] == 27 and figures["cifar"]["test_images"] == 3
    for run in runs:
        for view in ("plain", "flip", "flip_shift"):
            assert run[f"accuracy_{view}"] * 3 in (0, 1, 2, 3)
        assert np.isfinite(run["final_loss"]) and run["train_seconds"] > 0
    assert "time to 94%: not reached" in out
