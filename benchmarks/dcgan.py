"""DCGAN on CIFAR-10 JPEGs for a fixed time budget: classifier FID and images per second.

Usage::

    python benchmarks/dcgan.py --minutes 10 --out benchmarks/results/dcgan_samples.png

Data: ``../shared/datasets/cifar10-train-jpg.tar.gz`` (``train/<class>/*.jpg``,
50,000 32x32 RGB images) is extracted into ``/tmp/fmkeras-cifar10``; the script
exits with a message when the archive is absent.

Split (fixed seed): 90% trains the GAN; the other 10% (5,000 images) is held
out and split again, 60% to train the scoring classifier and 40% (2,000
images) as the FID reference. The classifier is a small ``simple_cnn``
(filters 32/64, dense 64) trained for ``--classifier-epochs`` on real held-out
images in [-1, 1]; its penultimate layer gives the features ("classifier
FID", as TF-GAN reports for MNIST). The generator produces as many images as
the reference holds, so both sides of the FID have the same sample count.
These FIDs compare runs of this script with each other; they are not
InceptionV3 FIDs and cannot be compared with published CIFAR-10 numbers.

Images per second counts real training images through ``GAN.train_step``
(one discriminator and one generator update per batch), over the training
wall time after the first (tracing) batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fmkeras.data import images as image_data  # noqa: E402
from fmkeras.evaluation import generation  # noqa: E402
from fmkeras.tasks import image_generation as ig  # noqa: E402
from fmkeras.train import positive
from fmkeras.training import gan_callbacks  # noqa: E402
from fmkeras.training.callbacks import TimeBudget  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(os.path.dirname(REPO), "shared", "datasets", "cifar10-train-jpg.tar.gz")


def machine():
    """CPU model, core count and TensorFlow version, for the printed report."""
    import tensorflow as tf

    from fmkeras.training.precision import cpu_model

    cpu = cpu_model()
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{cpu}, {len(os.sched_getaffinity(0))} usable cores, "
            f"{len(gpus)} GPU(s), TF {tf.__version__}, Python {platform.python_version()}")


def extract(archive, target):
    """Extract the CIFAR-10 JPEG archive once; returns the ``train/`` folder."""
    folder = os.path.join(target, "train")
    if not os.path.isdir(folder):
        os.makedirs(target, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=positive(float), default=10.0, help="training budget")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "dcgan_samples.png"))
    parser.add_argument("--archive", default=ARCHIVE)
    parser.add_argument("--extract-to", default="/tmp/fmkeras-cifar10")
    parser.add_argument("--batch-size", type=positive(int), default=64)
    parser.add_argument("--base-filters", type=positive(int), default=32)
    parser.add_argument("--latent-dim", type=positive(int), default=100)
    parser.add_argument("--classifier-epochs", type=positive(int), default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.archive):
        print(f"CIFAR-10 archive not found at {args.archive}; nothing to benchmark.")
        return 0

    keras.utils.set_random_seed(args.seed)
    index = image_data.index_directory(extract(args.archive, args.extract_to))
    train_index, held_out = image_data.split_index(index, 0.1, args.seed)
    classifier_index, reference_index = image_data.split_index(held_out, 0.4, args.seed + 1)
    config = ig.ImageGenerationConfig()
    config.data.image_size, config.data.color_mode = 32, "rgb"
    config.data.batch_size = args.batch_size
    config.model.latent_dim, config.model.base_filters = args.latent_dim, args.base_filters
    config.model.dropout = 0.2
    config.seed = args.seed

    t0 = time.perf_counter()
    train_ds = ig.scaled_dataset(train_index, config.data, shuffle=True, seed=args.seed)
    for _ in train_ds:  # decode and cache once, outside the timed training
        pass
    print(f"decoded {len(train_index)} training images in {time.perf_counter() - t0:.0f} s")

    gan = ig.build_gan(config, (32, 32, 3))
    gan.compile(d_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5),
                g_optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), label_smoothing=0.1)
    budget = TimeBudget(args.minutes * 60)
    gan.fit(train_ds.map(lambda x, y: x).repeat(), epochs=1_000_000,
            steps_per_epoch=len(train_index) // args.batch_size, shuffle=False, verbose=0,
            callbacks=[budget, gan_callbacks.GANGuard(collapse_threshold=0.0)])
    train_seconds = time.perf_counter() - budget.start
    timed = time.perf_counter() - budget.first_step_end
    images_per_second = (budget.steps - 1) * args.batch_size / timed

    classifier_ds = ig.scaled_dataset(classifier_index, config.data, shuffle=True, seed=1)
    classifier = ig.train_classifier(classifier_ds, (32, 32, 3), 10, args.classifier_epochs,
                                     args.seed)
    reference, labels = ig.dataset_arrays(ig.scaled_dataset(reference_index, config.data, False, 0),
                                   len(reference_index))
    accuracy = float(np.mean(classifier.predict(reference, verbose=0).argmax(-1) == labels))
    extractor = generation.classifier_extractor(classifier)
    fake = ig.generate(gan.generator, len(reference), seed=args.seed)
    metrics = ig.score(reference, fake, extractor)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    gan_callbacks.save_png(gan_callbacks.images_to_grid(fake[:64], columns=8), args.out)
    results = {
        "machine": machine(), "minutes": args.minutes, "train_seconds": round(train_seconds, 1),
        "train_steps": budget.steps, "images_seen": budget.steps * args.batch_size,
        "epochs_seen": round(budget.steps * args.batch_size / len(train_index), 2),
        "images_per_second": round(images_per_second, 1), "batch_size": args.batch_size,
        "base_filters": args.base_filters, "latent_dim": args.latent_dim,
        "classifier_accuracy": round(accuracy, 4), "num_samples": len(reference),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    for key, value in results.items():
        print(f"{key:22s} {value}")
    print(f"samples: {args.out} ({os.path.getsize(args.out) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
