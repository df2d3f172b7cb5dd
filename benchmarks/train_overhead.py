"""Steps per second of the fmkeras image-classification task vs a hand-written fit.

Both sides train the same builder (``simple_cnn``) on the same folder
(``data/digits/train``, or ``--data``) at the same image size and batch size.
The hand-written side is what a Keras user would type: ``keras.utils.
image_dataset_from_directory`` + ``cache`` + ``prefetch`` and ``model.fit``
with no callbacks. The fmkeras side is ``tasks.image_classification.run``
with all its callbacks (checkpoints, backup, CSV, TensorBoard, NaN guard).
Steady state: the first epoch (tracing, cache fill) is excluded, and each
side's figure is its median epoch over all repeats.

The embedded digits make 45-step epochs of about half a second, where the
task's per-epoch work (backup, best checkpoint, CSV, TensorBoard) weighs
most; ``--cifar N`` measures realistic epochs instead: N images per class of
the CIFAR-10 JPEGs in ``../shared/datasets`` (32x32 RGB).

Usage: ``python benchmarks/train_overhead.py [--epochs 6] [--data DIR] [--cifar 500]``
"""

import argparse
import os
import platform
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fmkeras.config import load_config  # noqa: E402
from fmkeras.models import simple_cnn  # noqa: E402
from fmkeras.tasks import image_classification  # noqa: E402
from fmkeras.train import positive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EpochTimer(keras.callbacks.Callback):
    """Wall time and step count of each epoch."""

    def __init__(self):
        super().__init__()
        self.times, self.steps = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._batches = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        self.steps.append(self._batches)


def steady_rates(timer):
    """Steps/s of each epoch after the first (tracing, cache fill).

    The caller takes the median, not the mean: on a shared machine an epoch
    now and then stalls for 0.2 s, on either side, which would swing a
    half-second epoch.
    """
    return [s / t for s, t in zip(timer.steps[1:], timer.times[1:])]


def fmkeras_rate(args, run_dir):
    config = load_config(image_classification.ImageClassificationConfig, "digits_cnn", [
        f"data.path={args.data}", f"train.epochs={args.epochs}", "export.enabled=false",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}",
        f"data.color_mode={args.color_mode}",
        "data.validation_split=0.0", "train.schedule=constant", "train.warmup_epochs=0",
        "train.verbose=0", f"run_dir={run_dir}"])
    timer = EpochTimer()
    image_classification.run(config, callbacks=[timer])
    return steady_rates(timer)


def plain_keras_rate(args):
    train_dir = os.path.join(args.data, "train")
    ds = keras.utils.image_dataset_from_directory(
        train_dir if os.path.isdir(train_dir) else args.data, label_mode="categorical",
        color_mode=args.color_mode, image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size, shuffle=True, seed=42, verbose=False)
    ds = ds.map(lambda x, y: (x / 255.0, y)).cache().prefetch(tf.data.AUTOTUNE)
    keras.utils.set_random_seed(42)
    channels = 1 if args.color_mode == "grayscale" else 3
    model = simple_cnn((args.image_size, args.image_size, channels), 10, dropout=0.3)
    model.compile(keras.optimizers.Adam(2e-3), "categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(ds, epochs=args.epochs, callbacks=[timer], verbose=0)
    return steady_rates(timer)


def cifar_subset(per_class, root):
    """``root/train/<class>`` with ``per_class`` CIFAR-10 JPEGs each, ``root/test`` with 20."""
    archive = os.path.join(REPO, "..", "shared", "datasets", "cifar10-train-jpg.tar.gz")
    if not os.path.exists(archive):
        raise SystemExit(f"CIFAR-10 archive not found at {archive}; run without --cifar.")
    source = os.path.join(root, "all")
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    top = os.path.join(source, "train")
    for name in sorted(os.listdir(top)):
        files = sorted(os.listdir(os.path.join(top, name)))
        for split, chosen in (("train", files[:per_class]),
                              ("test", files[per_class:per_class + 20])):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for file in chosen:
                os.symlink(os.path.join(top, name, file), os.path.join(root, split, name, file))
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "data", "digits"))
    parser.add_argument("--epochs", type=positive(int), default=6)
    parser.add_argument("--image-size", type=positive(int), default=16)
    parser.add_argument("--batch-size", type=positive(int), default=32)
    parser.add_argument("--repeats", type=positive(int), default=2)
    parser.add_argument("--color-mode", default="grayscale", choices=["grayscale", "rgb"])
    parser.add_argument("--cifar", type=positive(int), metavar="PER_CLASS",
                        help="use PER_CLASS CIFAR-10 images per class (32x32 RGB)")
    args = parser.parse_args(argv)
    if not args.cifar and not os.path.isdir(args.data):
        parser.error(f"--data must be a folder of class folders (or train/ and test/). "
                     f"Received: {args.data!r}")
    if args.cifar:
        args.data = cifar_subset(args.cifar, tempfile.mkdtemp(prefix="fmkeras-cifar-"))
        args.color_mode, args.image_size = "rgb", 32
    print(f"data: {args.data}, {args.image_size}x{args.image_size} {args.color_mode}, "
          f"batch {args.batch_size}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    ours, plain = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        with tempfile.TemporaryDirectory() as run_dir:
            ours.extend(fmkeras_rate(args, run_dir))
        plain.extend(plain_keras_rate(args))
    a, b = float(np.median(ours)), float(np.median(plain))
    print(f"fmkeras task:      {a:8.1f} steps/s (median of {len(ours)} epochs, "
          f"{args.repeats} runs)")
    print(f"hand-written fit:  {b:8.1f} steps/s")
    print(f"ratio fmkeras / hand-written: {a / b:.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
