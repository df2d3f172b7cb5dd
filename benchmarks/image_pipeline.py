"""Images per second: fmkeras ImageDataGenerator vs the legacy Keras one.

Both generators get identical arguments::

    ImageDataGenerator(rescale=1./255, shear_range=0.2, zoom_range=0.2,
                       horizontal_flip=True).flow_from_directory(
        train_dir, target_size=(s, s), batch_size=32, class_mode="categorical")

and are timed in steady state (after one warm-up epoch) by pulling batches
with ``next()``, as training loops and ``model.fit`` do; then ``model.fit``
steps per second with a tiny CNN are timed for each pipeline. The data is a
subset of the CIFAR-10 JPEG folders (extracted from
``../shared/datasets/cifar10-train-jpg.tar.gz`` into /tmp) or, when that
archive is absent, generated images.

Usage::

    python benchmarks/image_pipeline.py --images 5000 --sizes 32 224
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.legacy.preprocessing.image import (  # noqa: E402
    ImageDataGenerator as LegacyGenerator,
)
from PIL import Image  # noqa: E402

from fmkeras.data.archives import safe_extract  # noqa: E402
from fmkeras.data.image_data_generator import ImageDataGenerator  # noqa: E402
from fmkeras.train import positive

ARCHIVE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets",
                       "cifar10-train-jpg.tar.gz")
GENERATOR_ARGS = dict(rescale=1.0 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True)


def prepare_data(images, workdir, archive):
    """A class-per-folder subset of ``images`` files; returns its path."""
    subset = os.path.join(workdir, f"subset_{images}")
    if os.path.isdir(subset):
        return subset
    source = os.path.join(workdir, "train")
    if not os.path.isdir(source):
        if os.path.exists(archive):
            print(f"Extracting {archive} into {workdir} ...")
            safe_extract(archive, workdir)
        else:
            print("CIFAR-10 archive not found; generating random 32x32 JPEGs.")
            rng = np.random.default_rng(0)
            for c in range(10):
                os.makedirs(os.path.join(source, f"class{c}"), exist_ok=True)
                for i in range(images // 10 + 1):
                    pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
                    Image.fromarray(pixels).save(os.path.join(source, f"class{c}", f"{i}.jpg"))
    classes = sorted(os.listdir(source))
    per_class = images // len(classes)
    for c in classes:
        os.makedirs(os.path.join(subset, c))
        for name in sorted(os.listdir(os.path.join(source, c)))[:per_class]:
            os.symlink(os.path.join(source, c, name), os.path.join(subset, c, name))
    return subset


def images_per_second(iterator, batches):
    """Steady-state rate of ``next(iterator)`` over ``batches`` batches."""
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def dataset_images_per_second(dataset, warmup, batches):
    """Steady-state rate of iterating a dataset's tensors, after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        seen += int(x.shape[0])
    return seen / (time.perf_counter() - start)


def tiny_cnn(size):
    try:
        from fmkeras.models import simple_cnn
        return simple_cnn((size, size, 3), 10, filters=(8, 16), dense_units=32)
    except ImportError:  # builders not available: an equivalent Sequential
        return keras.Sequential([
            keras.Input((size, size, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(), keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def fit_steps_per_second(data, size, steps, **fit_kwargs):
    """Steps/s of the second of two ``steps``-long epochs of ``model.fit``."""
    keras.utils.set_random_seed(0)
    model = tiny_cnn(size)
    model.compile("adam", "categorical_crossentropy")
    timer = _EpochTimer()
    model.fit(data, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[timer], **fit_kwargs)
    return steps / timer.seconds


def run(size, directory, batch_size, measure_batches, fit_steps):
    target = (size, size)
    flow_args = dict(target_size=target, batch_size=batch_size, class_mode="categorical")
    start = time.perf_counter()
    ours = ImageDataGenerator(**GENERATOR_ARGS).flow_from_directory(directory, **flow_args)
    build = time.perf_counter() - start
    legacy = LegacyGenerator(**GENERATOR_ARGS).flow_from_directory(directory, **flow_args)
    batches = min(len(ours), measure_batches)
    # Warm-up epoch: traces the graph, fills the OS file cache for both.
    images_per_second(ours, len(ours))
    images_per_second(legacy, len(legacy))
    rate_ours = images_per_second(ours, batches)
    rate_legacy = images_per_second(legacy, batches)
    rate_dataset = dataset_images_per_second(ours.as_dataset(repeat=True), len(ours), batches)
    print(f"\n== {size}x{size}, {ours.samples} images, batch {batch_size}, "
          f"{batches} batches timed ==")
    print(f"  fmkeras iterator build (index + validate + decode cache): {build:.1f} s")
    print(f"  legacy  next():               {rate_legacy:10.0f} images/s")
    print(f"  fmkeras next():               {rate_ours:10.0f} images/s   "
          f"ratio {rate_ours / rate_legacy:5.1f}x")
    print(f"  fmkeras as_dataset() tensors: {rate_dataset:10.0f} images/s   "
          f"ratio {rate_dataset / rate_legacy:5.1f}x")
    # Two epochs of `steps` must fit in one pass over a PyDataset.
    steps = max(1, min(fit_steps, len(ours) // 2))
    fit_legacy = fit_steps_per_second(legacy, size, steps)
    fit_ours = fit_steps_per_second(ours, size, steps)
    fit_dataset = fit_steps_per_second(ours.as_dataset(repeat=True), size, steps, shuffle=False)
    print(f"  model.fit (tiny CNN), {steps} steps/epoch, second epoch:")
    print(f"    legacy iterator:          {fit_legacy:7.1f} steps/s")
    print(f"    fmkeras iterator:         {fit_ours:7.1f} steps/s   "
          f"ratio {fit_ours / fit_legacy:5.1f}x")
    print(f"    fmkeras as_dataset():     {fit_dataset:7.1f} steps/s   "
          f"ratio {fit_dataset / fit_legacy:5.1f}x")
    return rate_ours / rate_legacy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive(int), default=5000, help="images in the subset")
    parser.add_argument("--sizes", type=positive(int), nargs="+", default=[32, 224])
    parser.add_argument("--batch-size", type=positive(int), default=32)
    parser.add_argument("--measure-batches", type=positive(int), default=10**9,
                        help="batches timed per pipeline (default: one epoch)")
    parser.add_argument("--fit-steps", type=positive(int), default=50)
    parser.add_argument("--workdir", default="/tmp/cifar10")
    parser.add_argument("--archive", default=ARCHIVE)
    args = parser.parse_args(argv)
    print(f"platform: {platform.platform()}, python {sys.version.split()[0]}")
    print(f"cpus: os.cpu_count()={os.cpu_count()}, "
          f"usable={len(os.sched_getaffinity(0))}, load avg={os.getloadavg()}")
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}")
    os.makedirs(args.workdir, exist_ok=True)
    directory = prepare_data(args.images, args.workdir, args.archive)
    ratios = {size: run(size, directory, args.batch_size, args.measure_batches, args.fit_steps)
              for size in args.sizes}
    targets = {32: 10.0, 224: 5.0}
    print("\nsummary (next() images/s ratio fmkeras/legacy):")
    for size, ratio in ratios.items():
        goal = targets.get(size)
        verdict = "" if goal is None else f" (target >= {goal:.0f}x: " + (
            "met)" if ratio >= goal else "NOT met)")
        print(f"  {size}x{size}: {ratio:.1f}x{verdict}")


if __name__ == "__main__":
    main()
