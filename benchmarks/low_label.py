"""Low-label images: what SimCLR pretraining buys when only a few images carry labels.

Run: ``python benchmarks/low_label.py [--label-fraction 0.1] [--seeds 0 1 2]``

SimCLR (``pretrain-simclr``) first pretrains an encoder, by default the
conv-pool stages of ``simple_cnn`` (``--backbone``; ``cifar_resnet8`` and
deeper also work), on every training image of ``--data`` (the embedded
digits, or e.g. a CIFAR-10 folder with ``train/`` and ``test/``), labels
unused. Then, for each ``--label-fraction`` and seed, that fraction of each
class's training images keeps its labels and the ``image-classification``
task trains on them four ways, with the same labels, epochs, optimizer and
full test split:

- ``scratch_cnn``: the ``digits_cnn`` preset's ``simple_cnn`` from random
  weights. With the default backbone it is the same network as the two
  ``simclr`` rows (conv stages, flatten, Dense 128, dropout, softmax);
- ``scratch_encoder``: a randomly initialised encoder through the same code
  path as the pretrained one (a control: same head, no pretraining);
- ``simclr_linear``: the pretrained encoder frozen, only a softmax on its
  flattened features trained (``--probe-learning-rate``): a linear probe;
- ``simclr_finetune``: the pretrained encoder with the head, all trained.

``--weights imagenet`` adds ``imagenet_finetune`` (the ``fine-tune`` task on
MobileNetV2; needs the network, ``--color-mode rgb`` and ``--image-size``
96 or more). Results go to ``benchmarks/results/low_label.json`` and are
printed as a table (mean and spread over seeds) with the machine they ran
on. The text counterpart (MLM pretraining, LoRA) is
``benchmarks/low_label_text.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time

from fmkeras.train import positive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "data", "digits")


def labelled_subset(root, fraction, dest, seed=0):
    """Copy ``fraction`` of each class of ``root/train`` (at least one) and all of ``root/test``.

    Args:
        root: str. Folder with ``train/`` and ``test/`` class folders.
        fraction: float in (0, 1]. Share of each class's images kept.
        dest: str. Folder to create; gets ``train/`` and ``test/``.
        seed: int. Which images are kept.

    Returns:
        int. The number of labelled training images copied.

    Example:

    >>> labelled_subset(DIGITS, 0.1, tempfile.mkdtemp())  # doctest: +SKIP
    143
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"Expected a label fraction in (0, 1]. Received: {fraction}")
    rng = random.Random(seed)
    train = os.path.join(root, "train")
    copied = 0
    for name in sorted(os.listdir(train)):
        files = sorted(os.listdir(os.path.join(train, name)))
        keep = rng.sample(files, max(1, math.floor(fraction * len(files))))
        os.makedirs(os.path.join(dest, "train", name), exist_ok=True)
        for file in keep:
            shutil.copy(os.path.join(train, name, file), os.path.join(dest, "train", name, file))
        copied += len(keep)
    shutil.copytree(os.path.join(root, "test"), os.path.join(dest, "test"), dirs_exist_ok=True)
    return copied


def machine():
    """The CPU model (``/proc/cpuinfo``), core count and GPU, if any, in words."""
    import tensorflow as tf

    from fmkeras.training.precision import cpu_model

    name = cpu_model()

    gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
    return f"{name}, {os.cpu_count()} cores" + (f", GPU {', '.join(gpus)}" if gpus else "")


def _run(module, config_cls, preset, overrides):
    from fmkeras import config as config_lib

    config = config_lib.load_config(config_cls, preset, overrides)
    start = time.monotonic()
    result = module.run(config)
    keep = ("test_accuracy", "test_macro_f1", "final_loss", "trainable_parameters")
    row = {"seconds": round(time.monotonic() - start, 1),
           **{key: result.metrics[key] for key in keep if key in result.metrics}}
    model = getattr(result, "model", None)
    if model is not None and "trainable_parameters" not in row:
        row["trainable_parameters"] = int(sum(int(math.prod(v.shape))
                                              for v in model.trainable_weights))
    return row, result


def _methods(args, data, encoder, random_encoder):
    from fmkeras.tasks import fine_tune, image_classification

    common = [f"data.path={data}", "data.validation_split=0", f"data.image_size={args.image_size}",
              f"data.color_mode={args.color_mode}", "train.verbose=2", "export.enabled=false",
              f"train.epochs={args.epochs}"]
    supervised = common + [f"train.learning_rate={args.learning_rate}"]
    # simple_cnn's own head (flatten, Dense 128, the preset's dropout) on simple_cnn's
    # stages is simple_cnn itself; other encoders get global average pooling.
    head = (["model.pooling=flatten", "model.head_units=128"] if args.backbone == "simple_cnn"
            else ["model.pooling=avg", "model.head_units=0"])
    from_encoder = ["data.rescale=1.0", *head]
    cls = image_classification.ImageClassificationConfig
    methods = {
        "scratch_cnn": (image_classification, cls, "digits_cnn", supervised),
        "scratch_encoder": (image_classification, cls, "digits_cnn",
                            supervised + from_encoder + [f"model.encoder_path={random_encoder}"]),
        "simclr_linear": (image_classification, cls, "digits_cnn",
                          common + [f"train.learning_rate={args.probe_learning_rate}",
                                    "data.rescale=1.0", "model.pooling=flatten",
                                    "model.head_units=0", f"model.encoder_path={encoder}",
                                    "model.freeze_encoder=true"]),
        "simclr_finetune": (image_classification, cls, "digits_cnn",
                            supervised + from_encoder + [f"model.encoder_path={encoder}"]),
    }
    if args.weights:
        methods["imagenet_finetune"] = (fine_tune, fine_tune.FineTuneConfig, "digits_finetune", [
            f"data.path={data}", "data.validation_split=0", "train.verbose=2",
            "export.enabled=false", f"data.image_size={args.image_size}",
            f"model.weights={args.weights}"])
    return methods


def summarise(rows):
    """Mean and standard deviation of test accuracy per label fraction and method.

    Example:

    >>> summarise([{"label_fraction": 0.1, "labelled_images": 9, "method": "a",
    ...             "test_accuracy": 0.5, "trainable_parameters": 10, "seconds": 1.0}])
    [{'label_fraction': 0.1, 'labelled_images': 9, 'method': 'a', 'runs': 1, 'mean': 0.5, \
'std': 0.0, 'trainable_parameters': 10, 'seconds': 1.0}]
    """
    groups = {}
    for row in rows:
        groups.setdefault((row["label_fraction"], row["method"]), []).append(row)
    out = []
    for (fraction, method), group in groups.items():
        accs = [row["test_accuracy"] for row in group]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        out.append({"label_fraction": fraction, "labelled_images": group[0]["labelled_images"],
                    "method": method, "runs": len(accs), "mean": round(mean, 4),
                    "std": round(std, 4),
                    "trainable_parameters": group[0].get("trainable_parameters"),
                    "seconds": round(sum(row["seconds"] for row in group) / len(group), 1)})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DIGITS, help="folder with train/ and test/")
    parser.add_argument("--label-fraction", type=positive(float), nargs="+", default=[0.1])
    parser.add_argument("--epochs", type=positive(int), default=30, help="supervised epochs")
    parser.add_argument("--simclr-epochs", type=positive(int), default=100)
    parser.add_argument("--backbone", default="simple_cnn",
                        help="simple_cnn (the digits_cnn preset's model) or cifar_resnet8/14/20")
    parser.add_argument("--image-size", type=positive(int), default=16)
    parser.add_argument("--color-mode", default="grayscale")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one run per seed: which images keep labels, and training")
    parser.add_argument("--learning-rate", type=positive(float), default=0.002)
    parser.add_argument("--probe-learning-rate", type=positive(float), default=0.01,
                        help="learning rate of the linear probe (only the head trains)")
    parser.add_argument("--weights", choices=["imagenet"], help="also fine-tune these weights")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "low_label.json"))
    args = parser.parse_args(argv)
    from fmkeras.models import backbones

    try:
        args.backbone = backbones.canonical_name(args.backbone)
    except ValueError as err:
        parser.error(f"--backbone: {err}")
    if args.backbone != "simple_cnn" and not args.backbone.startswith("cifar_resnet"):
        parser.error(f"--backbone must be simple_cnn or a cifar_resnet (small enough to "
                     f"pretrain on a CPU). Received: {args.backbone!r}")
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(args.data, split)):
            parser.error(f"--data needs train/ and test/ class folders. Received: {args.data!r}")

    from fmkeras.tasks import pretrain_simclr

    work = tempfile.mkdtemp(prefix="fmkeras-low-label-")
    image = [f"data.image_size={args.image_size}", f"data.color_mode={args.color_mode}"]
    quiet = "train.verbose=2"
    simclr, _ = _run(pretrain_simclr, pretrain_simclr.PretrainSimCLRConfig, "digits_simclr", [
        f"data.path={args.data}", *image, quiet, f"train.epochs={args.simclr_epochs}",
        f"model.backbone={args.backbone}",
        f"run_dir={os.path.join(work, 'simclr')}"])
    encoder = os.path.join(work, "simclr", "encoder.keras")
    channels = 1 if args.color_mode == "grayscale" else 3
    random_encoder = os.path.join(work, "random_encoder.keras")
    backbones.backbone(args.backbone, (args.image_size, args.image_size, channels)).save(
        random_encoder)

    rows = []
    for fraction in args.label_fraction:
        for seed in args.seeds:
            data = os.path.join(work, f"data{fraction}-{seed}")
            labelled = labelled_subset(args.data, fraction, data, seed=seed)
            for method, (module, config_cls, preset, overrides) in _methods(
                    args, data, encoder, random_encoder).items():
                run_dir = os.path.join(work, f"{method}-{fraction}-{seed}")
                row, _ = _run(module, config_cls, preset,
                              overrides + [f"seed={seed}", f"run_dir={run_dir}"])
                rows.append({"label_fraction": fraction, "labelled_images": labelled,
                             "seed": seed, "method": method, **row})

    import keras
    import tensorflow as tf

    summary = summarise(rows)
    report = {"machine": machine(), "simclr_pretraining": simclr, "summary": summary,
              "results": rows, "args": vars(args),
              "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                           "python": platform.python_version()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\nMachine: {report['machine']}. Mean (std) over seeds {args.seeds}.")
    print("\n| labels | method | test accuracy | trainable params | seconds |")
    print("|---|---|---|---|---|")
    for row in summary:
        print(f"| {row['labelled_images']} ({row['label_fraction']:.0%}) | {row['method']} | "
              f"{row['mean']:.3f} ({row['std']:.3f}) | {row['trainable_parameters']:,} | "
              f"{row['seconds']} |")
    print(f"\nSimCLR pretraining ({args.backbone}, {args.simclr_epochs} epochs): "
          f"{simclr['seconds']} s, loss {simclr['final_loss']:.3f}. Results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
