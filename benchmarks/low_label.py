"""Low-label digits: what pretraining buys when only a few images per class carry labels.

Run: ``python benchmarks/low_label.py [--per-class 5 20] [--epochs 10] [--simclr-epochs 10]``

For each ``--per-class`` count, copies that many labelled training images per
class (fixed seed) next to the full ``test/`` split, then trains three ways
through the fmkeras tasks and reports test accuracy and wall time:

- ``scratch_cnn``: the ``digits_cnn`` preset (simple CNN from scratch);
- ``finetune_random``: ``digits_finetune`` from a randomly initialised
  MobileNetV2 (0.35), head then top layers;
- ``finetune_simclr``: the same, starting from an encoder pretrained once by
  ``pretrain-simclr`` on every training image, labels unused.

``--weights imagenet`` adds ``finetune_imagenet`` where the network allows
the download (ImageNet weights need ``--image-size`` 96 or more). Results go
to ``benchmarks/results/low_label.json`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "data", "digits")


def labelled_subset(root, per_class, dest, seed=0):
    """Copy ``per_class`` images of each class of ``root/train`` and all of ``root/test``.

    Args:
        root: str. Folder with ``train/`` and ``test/`` class folders.
        per_class: int. Labelled images kept per class (all if fewer).
        dest: str. Folder to create; gets ``train/`` and ``test/``.
        seed: int. Which images are kept.

    Returns:
        str. ``dest``.

    Example:

    >>> path = labelled_subset(DIGITS, 2, tempfile.mkdtemp())  # doctest: +SKIP
    """
    if per_class < 1:
        raise ValueError(f"Expected per_class >= 1. Received: {per_class}")
    rng = random.Random(seed)
    train = os.path.join(root, "train")
    for name in sorted(os.listdir(train)):
        files = sorted(os.listdir(os.path.join(train, name)))
        os.makedirs(os.path.join(dest, "train", name), exist_ok=True)
        for file in rng.sample(files, min(per_class, len(files))):
            shutil.copy(os.path.join(train, name, file), os.path.join(dest, "train", name, file))
    shutil.copytree(os.path.join(root, "test"), os.path.join(dest, "test"), dirs_exist_ok=True)
    return dest


def _run(module, config_cls, preset, overrides):
    from fmkeras import config as config_lib

    config = config_lib.load_config(config_cls, preset, overrides)
    start = time.monotonic()
    result = module.run(config)
    keep = ("test_accuracy", "phase1_test_accuracy", "final_loss")
    return {"seconds": round(time.monotonic() - start, 1),
            **{key: result.metrics[key] for key in keep if key in result.metrics}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DIGITS, help="folder with train/ and test/")
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--epochs", type=int, default=10, help="supervised epochs per phase")
    parser.add_argument("--simclr-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--weights", choices=["imagenet"], help="also fine-tune these weights")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "low_label.json"))
    args = parser.parse_args(argv)

    from fmkeras.tasks import fine_tune, image_classification, pretrain_simclr

    work = tempfile.mkdtemp(prefix="fmkeras-low-label-")
    size = f"data.image_size={args.image_size}"
    quiet = "train.verbose=2"
    simclr = _run(pretrain_simclr, pretrain_simclr.PretrainSimCLRConfig, "digits_simclr", [
        f"data.path={args.data}", size, quiet, f"train.epochs={args.simclr_epochs}",
        f"run_dir={os.path.join(work, 'simclr')}"])
    encoder = os.path.join(work, "simclr", "encoder.keras")
    rows = []
    for per_class in args.per_class:
        data = labelled_subset(args.data, per_class, os.path.join(work, f"data{per_class}"))
        common = [f"data.path={data}", "data.validation_split=0", quiet, "export.enabled=false"]
        tuned = common + [size, f"train.head_epochs={args.epochs}", f"train.epochs={args.epochs}"]
        runs = {
            "scratch_cnn": (image_classification, image_classification.ImageClassificationConfig,
                            "digits_cnn", common + [f"train.epochs={2 * args.epochs}"]),
            "finetune_random": (fine_tune, fine_tune.FineTuneConfig, "digits_finetune", tuned),
            "finetune_simclr": (fine_tune, fine_tune.FineTuneConfig, "digits_finetune",
                                tuned + [f"model.encoder_path={encoder}"]),
        }
        if args.weights:
            runs["finetune_imagenet"] = (fine_tune, fine_tune.FineTuneConfig, "digits_finetune",
                                         tuned + [f"model.weights={args.weights}"])
        for method, (module, cls, preset, overrides) in runs.items():
            run_dir = os.path.join(work, f"{method}-{per_class}")
            rows.append({"per_class": per_class, "method": method,
                         **_run(module, cls, preset, overrides + [f"run_dir={run_dir}"])})

    import keras
    import tensorflow as tf

    report = {"simclr_pretraining": simclr, "results": rows, "args": vars(args),
              "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                           "python": platform.python_version()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print("\n| labels/class | method | test accuracy | seconds |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['per_class']} | {row['method']} | {row['test_accuracy']:.3f} | "
              f"{row['seconds']} |")
    print(f"\nSimCLR pretraining: {simclr['seconds']} s. Results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
