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
GPU, and on a CPU with bfloat16 units (AVX512_BF16, AMX_BF16) where a few
timed steps of that network put its training within the budget. With AMX a
bf16 step takes about half the float32 time; with AVX512_BF16 alone, on an
Intel Xeon, 1.6 times as long. Elsewhere it picks ``cifar10_fast`` (half
width, float32, 17 epochs).
"""

from __future__ import annotations

import argparse
import math
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
from fmkeras.training.callbacks import TimeBudget
from fmkeras.training.precision import cpu_model

ARCHIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                       "shared", "datasets", "cifar10-train-jpg.tar.gz")
EXTRACTED = os.path.join(tempfile.gettempdir(), "fmkeras-cifar10")


PRESETS = ("cifar10_fast", "cifar10_fast_bf16")
CIFAR10_TRAIN_IMAGES = 50_000


def estimated_training_seconds(config, images=CIFAR10_TRAIN_IMAGES, steps=3):
    """Seconds ``config``'s ``fit`` would take here, from a few timed steps of its network.

    Builds the preset's network in its precision, times ``steps``
    ``train_on_batch`` calls at its batch size after two warm-up calls, and
    multiplies by the run's steps: epochs times batches of the training
    images (``images`` less the config's test and validation fractions).

    Example:

    >>> from fmkeras.tasks import image_classification as task
    >>> from fmkeras.train import load_task_config
    >>> _, config = load_task_config(task.TASK, "cifar10_fast_bf16",
    ...                              ["data.batch_size=8", "model.filters=[8,8,8]"])
    >>> estimated_training_seconds(config, images=16, steps=1) > 0
    True
    """
    from fmkeras.tasks import image_classification as task
    from fmkeras.training import distribute
    from fmkeras.training.precision import global_settings_kept, set_precision

    batch, size = config.data.batch_size, config.data.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, size, size, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[np.arange(batch) % 10]
    with global_settings_kept():
        set_precision(config.precision)
        seconds = distribute.seconds_per_step(
            lambda: task.build_model(config.model, (size, size, 3), 10), (x, y), steps=steps)
    train_images = math.ceil(
        (1 - config.data.test_split - config.data.validation_split) * images)
    return seconds * config.train.epochs * math.ceil(train_images / batch)


# The estimate times the network's steps only; the real ``fit`` ran 2-7% past it
# (the pipeline, the epoch ends, the lookahead averages), so it must fit with room.
ESTIMATE_MARGIN = 1.1


def choose_preset(preset="auto", estimate=None, budget_s=900.0):
    """``(preset name, reason)``: ``auto`` resolved for this machine.

    ``auto`` takes ``cifar10_fast_bf16`` on a GPU; on a CPU with bfloat16
    units (AVX512_BF16, AMX_BF16) when ``estimate()``, its measured training
    time in seconds, is within ``budget_s`` with :data:`ESTIMATE_MARGIN` to
    spare; ``cifar10_fast`` otherwise. The flags alone do not settle it: on an Intel Xeon with
    oneDNN kept off AMX, a bf16 step of this network took 1.6x the float32
    time (``benchmarks/README.scaling.md``), and 13 full-width epochs would
    take 40 minutes.

    Args:
        preset: ``"auto"`` or one of :data:`PRESETS`.
        estimate: callable returning ``cifar10_fast_bf16``'s training
            seconds here; called only on a CPU with bfloat16 units. Default:
            :func:`estimated_training_seconds` of the preset as shipped.
        budget_s: float. The training time budget.

    Example:

    >>> choose_preset("cifar10_fast")
    ('cifar10_fast', 'asked for')
    >>> choose_preset("auto", estimate=lambda: 60.0)[0] in PRESETS
    True
    """
    if preset != "auto":
        return preset, "asked for"
    from fmkeras.training.precision import cpu_bf16_flags

    if tf.config.list_physical_devices("GPU"):
        return "cifar10_fast_bf16", "a GPU"
    flags = cpu_bf16_flags()
    if not flags:
        return "cifar10_fast", "no GPU, and no bfloat16 units (AVX512_BF16, AMX_BF16) on this CPU"
    if estimate is None:
        from fmkeras.tasks import image_classification as task
        from fmkeras.train import load_task_config

        _, config = load_task_config(task.TASK, "cifar10_fast_bf16", [])
        estimate = lambda: estimated_training_seconds(config)  # noqa: E731
    units = "CPU bfloat16 units: " + ", ".join(f.upper() for f in flags)
    seconds = estimate()
    verdict = (f"{units}; cifar10_fast_bf16's training estimated at {seconds / 60:.1f} min "
               f"({seconds * ESTIMATE_MARGIN / 60:.1f} with a "
               f"{ESTIMATE_MARGIN - 1:.0%} margin) for a {budget_s / 60:g}-min budget")
    if seconds * ESTIMATE_MARGIN <= budget_s:
        return "cifar10_fast_bf16", verdict
    return "cifar10_fast", verdict + ": too slow here, so the half width in float32"


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
                        help="auto: cifar10_fast_bf16 on a GPU, or on a CPU with bfloat16 units "
                             "where its measured training time fits the budget; else "
                             "cifar10_fast")
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
    try:
        configs = {name: load_task_config(task.TASK, name, overrides)[1]
                   for name in (PRESETS if args.preset == "auto" else (args.preset,))}
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    preset, reason = choose_preset(
        args.preset, budget_s=args.minutes * 60, estimate=lambda: estimated_training_seconds(
            configs["cifar10_fast_bf16"], args.images or CIFAR10_TRAIN_IMAGES))
    config = configs[preset]
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
