"""Step time of float32 vs mixed_bfloat16, and XLA on vs off, for the CNN and Transformer.

Run: ``python benchmarks/precision.py [--steps 10] [--batch 32] [--fast-cnn]``

Each model is timed with ``train_on_batch`` after two warm-up steps. The
script reports which setting ``jit_compile: auto``
(:func:`fmkeras.training.distribute.jit_compile_auto`) would choose, and
checks that it is never the slower of the two it measured.

``--fast-cnn`` also times CIFAR-10's ``fast_cnn`` at both preset widths
(32/128/128 of ``cifar10_fast``, 64/256/256 of ``cifar10_fast_bf16``) at
``--fast-cnn-batch`` (1024, the presets' batch), float32 against
``mixed_bfloat16``, without XLA: the figures behind choosing the bf16 preset
on a CPU with bfloat16 units.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import keras
import numpy as np
import tensorflow as tf

from fmkeras import models
from fmkeras.train import positive
from fmkeras.training import distribute
from fmkeras.training.precision import cpu_model


def _cnn(batch):
    x = np.random.default_rng(0).uniform(0, 1, (batch, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[np.arange(batch) % 10]
    return (lambda: models.simple_cnn((32, 32, 3), 10, filters=(32, 64), dense_units=128),
            (x, y))


def _transformer(batch):
    x = np.random.default_rng(0).integers(1, 2000, (batch, 64)).astype("int32")
    y = np.eye(2, dtype="float32")[np.arange(batch) % 2]
    return (lambda: models.transformer_classifier(2000, 64, 2, d_model=64, num_heads=4,
                                                  ff_dim=128, num_layers=2),
            (x, y))


FAST_CNN_WIDTHS = ((32, 128, 128), (64, 256, 256))


def fast_cnn_rows(batch, steps):
    """``[(widths, policy, seconds per step)]`` for ``fast_cnn`` at both preset widths."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[np.arange(batch) % 10]
    rows = []
    for widths in FAST_CNN_WIDTHS:
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            try:
                seconds = distribute.seconds_per_step(
                    lambda w=widths: models.fast_cnn((32, 32, 3), 10, widths=w), (x, y),
                    steps=steps)
            finally:
                keras.mixed_precision.set_global_policy("float32")
            rows.append((widths, policy, seconds))
    return rows


def machine():
    """One line naming the machine the figures come from."""
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, {cpu_model()}, "
            f"TF {tf.__version__}, Keras {keras.__version__}, device {distribute.device_name()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive(int), default=10)
    parser.add_argument("--batch", type=positive(int), default=32)
    parser.add_argument("--fast-cnn", action="store_true",
                        help="also time fast_cnn at both CIFAR-10 preset widths")
    parser.add_argument("--fast-cnn-batch", type=positive(int), default=1024)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"batch {args.batch}, {args.steps} timed steps\n")
    print(f"{'model':<12} {'setting':<22} {'ms/step':>9} {'ratio':>7}")
    failures = []
    for name, spec in (("cnn", _cnn), ("transformer", _transformer)):
        builder, batch = spec(args.batch)
        times = {}
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            measured = distribute.measure_jit_compile(builder, batch, steps=args.steps)
            times[(policy, False)], times[(policy, True)] = measured[False], measured[True]
            auto = distribute.jit_compile_auto(builder, batch, key=(name, policy),
                                               steps=args.steps)
            # jit_compile_auto measured again: compare its choice with its own cache rule
            # and with this run's figures (the slower must never be picked by more than noise).
            chosen, other = measured[auto], measured[not auto]
            print(f"  {name}/{policy}: auto -> jit_compile={auto} "
                  f"({chosen * 1e3:.1f} vs {other * 1e3:.1f} ms/step)")
            if chosen > other * 1.25:
                failures.append(f"{name}/{policy}: auto chose jit_compile={auto}, "
                                f"{chosen * 1e3:.1f} ms vs {other * 1e3:.1f} ms")
        keras.mixed_precision.set_global_policy("float32")
        base = times[("float32", False)]
        for (policy, jit), seconds in times.items():
            print(f"{name:<12} {policy + (' +XLA' if jit else ''):<22} "
                  f"{seconds * 1e3:9.1f} {seconds / base:7.2f}")
    if args.fast_cnn:
        print(f"\nfast_cnn, batch {args.fast_cnn_batch}, no XLA\n")
        print(f"{'widths':<14} {'setting':<16} {'ms/step':>9} {'images/s':>9} {'ratio':>7}")
        base = None
        for widths, policy, seconds in fast_cnn_rows(args.fast_cnn_batch, args.steps):
            base = seconds if policy == "float32" else base
            print(f"{'/'.join(map(str, widths)):<14} {policy:<16} {seconds * 1e3:9.1f} "
                  f"{args.fast_cnn_batch / seconds:9.0f} {seconds / base:7.2f}")
    if failures:
        print("FAIL: jit_compile auto picked the slower setting:\n  " + "\n  ".join(failures))
        return 1
    print("OK: jit_compile auto never picked the slower setting (25% noise allowance "
          "between its own timing and this run's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
