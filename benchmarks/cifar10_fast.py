"""CIFAR-10 fast: how far fmkeras' fast_cnn recipe gets within a CPU time budget.

Run: ``python benchmarks/cifar10_fast.py [--minutes 15] [--preset auto] [--images N]
[--epochs E] [--set KEY=VALUE ...]``

Extracts ``../shared/datasets/cifar10-train-jpg.tar.gz`` (or ``--archive``)
into ``/tmp`` with :func:`fmkeras.data.archives.safe_extract`, trains the
``cifar10_fast`` preset (``fast_cnn`` with widths 32/128/128 and an adapted
patch-whitening layer, flip and 2-pixel translate augmentation, label
smoothing 0.2, Nesterov SGD with a one-cycle schedule, airbench's weight
decay and 64x steps for batch-norm offsets, batch 1024) on it through the
image-classification task, which holds out a fixed 10% of the images (by
seed) as the test set, and stops at the time budget. Reports
test accuracy, with test-time flip (the best model's predictions on each
image and its mirror, averaged) and with flip and 1-pixel shifts.
``--images`` trains on a class-balanced subset to check the script quickly.

``--preset auto`` (the default) picks ``cifar10_fast_bf16`` (the same recipe
at airbench94's full width, 64/256/256, in ``mixed_bfloat16``, 13 epochs) on a
GPU or on a CPU with bfloat16 units (AVX512_BF16 or AMX_BF16), where a bf16
step takes about half the float32 time, and ``cifar10_fast`` (half width,
float32, 17 epochs) elsewhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from fmkeras.train import positive

ARCHIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "datasets", "cifar10-train-jpg.tar.gz")
EXTRACTED = os.path.join(tempfile.gettempdir(), "fmkeras-cifar10")


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``seconds`` of wall time have passed since ``fit`` started."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.start = None
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True
            self.stopped_early = True


def cpu_model():
    """The CPU model from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


PRESETS = ("cifar10_fast", "cifar10_fast_bf16")


def choose_preset(preset="auto"):
    """``(preset name, reason)``: ``auto`` resolved for this machine.

    Example:

    >>> choose_preset("cifar10_fast")
    ('cifar10_fast', 'asked for')
    >>> choose_preset("auto")[0] in PRESETS
    True
    """
    if preset != "auto":
        return preset, "asked for"
    from fmkeras.training.precision import cpu_bf16_flags

    if tf.config.list_physical_devices("GPU"):
        return "cifar10_fast_bf16", "a GPU"
    flags = cpu_bf16_flags()
    if flags:
        return "cifar10_fast_bf16", "CPU bfloat16 units: " + ", ".join(f.upper() for f in flags)
    return "cifar10_fast", "no GPU, and no bfloat16 units (AVX512_BF16, AMX_BF16) on this CPU"


def class_folders(archive):
    """Extract ``archive`` once and return its folder of class folders."""
    from fmkeras.data.archives import safe_extract

    root = os.path.join(EXTRACTED, "train")
    if not os.path.isdir(root):
        safe_extract(archive, EXTRACTED)
    return root


def subset(root, images, seed=0):
    """Copy a class-balanced random subset of ``images`` images into a new folder."""
    classes = sorted(os.listdir(root))
    target = os.path.join(EXTRACTED, f"subset-{images}")
    if os.path.isdir(target):
        return target
    rng = np.random.default_rng(seed)
    for name in classes:
        files = sorted(os.listdir(os.path.join(root, name)))
        os.makedirs(os.path.join(target, name))
        for file in rng.choice(files, min(len(files), images // len(classes)), replace=False):
            shutil.copy(os.path.join(root, name, file), os.path.join(target, name, file))
    return target


def _shifted(images, dx, dy):
    """``images`` moved by ``(dx, dy)`` pixels (at most 1), edges reflected."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def tta_accuracy(model, test):
    """Accuracy alone, averaged with the mirror image, and with 1-pixel shifts too.

    The last is airbench's "level 2": the image and its mirror (weight 1),
    and both moved by one pixel down-right and up-left (weight 1/2).
    """
    hits = np.zeros(3)
    total = 0
    for x, y in test:
        x, labels = np.asarray(x), np.argmax(y, -1)
        mirror = x[:, :, ::-1]
        plain = np.asarray(model.predict_on_batch(x))
        flip = plain + np.asarray(model.predict_on_batch(mirror))
        shifted = flip.copy()
        for d in (1, -1):
            for view in (x, mirror):
                shifted += 0.5 * np.asarray(model.predict_on_batch(_shifted(view, d, d)))
        hits += [np.sum(np.argmax(p, -1) == labels) for p in (plain, flip, shifted)]
        total += len(labels)
    return tuple(hits / total)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive(float), default=15.0,
                        help="training time budget")
    parser.add_argument("--preset", choices=("auto",) + PRESETS, default="auto",
                        help="auto: cifar10_fast_bf16 on a GPU or a CPU with bfloat16 units, "
                             "else cifar10_fast")
    parser.add_argument("--images", type=positive(int), default=None, help="train on a subset")
    parser.add_argument("--epochs", type=positive(int), default=None, help="override train.epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset key, as in python -m fmkeras.train "
                             "(e.g. --set model.filters=[64,128,128])")
    parser.add_argument("--archive", default=ARCHIVE)
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.archive):
        print(f"CIFAR-10 archive not found at {args.archive}; nothing to do.")
        return 0

    from fmkeras.errors import ConfigError
    from fmkeras.tasks import image_classification as task
    from fmkeras.train import load_task_config

    # The config is checked before the archive is extracted.
    path = os.path.join(EXTRACTED, f"subset-{args.images}" if args.images else "train")
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="cifar10-fast-")
    overrides = [f"data.path={path}", f"run_dir={run_dir}", "train.verbose=2"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    overrides += args.set
    preset, reason = choose_preset(args.preset)
    try:
        _, config = load_task_config(task.TASK, preset, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = class_folders(args.archive)
    if args.images:
        subset(root, args.images)

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}, "
          f"TF {tf.__version__}")
    print(f"preset: {preset} ({reason}); {config.precision}, widths {list(config.model.filters)}, "
          f"{config.train.epochs} epochs")
    budget = TimeBudget(args.minutes * 60)
    start = time.monotonic()
    result = task.run(config, callbacks=[budget])
    seconds = time.monotonic() - start

    test = task.make_datasets(config).test  # the same held-out split (same seed)
    best = os.path.join(run_dir, "checkpoints", "best.keras")
    model = keras.saving.load_model(best) if os.path.exists(best) else result.model
    accuracy, flip, shifted = tta_accuracy(model, test)
    m = result.metrics
    print(f"\nimages: {m['train_samples']} train, {m['test_samples']} test")
    print(f"time: {seconds / 60:.1f} min total (budget {args.minutes} min for training"
          f"{', reached' if budget.stopped_early else ''}), run dir {run_dir}")
    print(f"test accuracy: {m['test_accuracy']:.4f} (task), {accuracy:.4f} (best model), "
          f"{flip:.4f} with test-time flip (x{flip / max(accuracy, 1e-9):.3f}), "
          f"{shifted:.4f} with flip and 1-pixel shifts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
