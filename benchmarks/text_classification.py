"""Language identification on gettext messages: Transformer vs LSTM under one time budget.

Usage::

    python benchmarks/text_classification.py --minutes 10

Data: ``../shared/datasets/gettext-langid-train.tsv`` (header ``text<TAB>label``,
126,552 messages in 9 languages); the script exits with a message when it is
absent. A fixed seed holds out 5% for validation and 10% for test; the
vocabulary is learnt on the training split only. Each model
(``fmkeras.tasks.text_classification.run``, the ``langid_transformer`` and
``langid_lstm`` presets' sizes) trains for ``--minutes`` of wall-clock time,
then the best validation checkpoint is scored on the test split.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dcgan import machine  # noqa: E402

from fmkeras import config as config_lib  # noqa: E402
from fmkeras.tasks import text_classification as tc  # noqa: E402
from fmkeras.train import positive  # noqa: E402
from fmkeras.training.callbacks import TimeBudget  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(os.path.dirname(REPO), "shared", "datasets", "gettext-langid-train.tsv")
PRESETS = {"transformer": "langid_transformer", "lstm": "langid_lstm"}


def run_model(name, path, minutes):
    """Train the ``name`` preset's model on ``path`` for ``minutes``; return (metrics, steps)."""
    config = config_lib.load_config(tc.TextClassificationConfig, PRESETS[name])
    config.data.path = path
    config.data.validation_split, config.data.test_split = 0.05, 0.1
    config.data.max_tokens = 20000
    config.train.epochs = 1000  # the time budget stops training
    config.train.schedule = "constant"
    config.train.learning_rate = 1e-3
    config.train.warmup_epochs = 0
    config.train.verbose = 2
    config.export.enabled = False
    config.precision = "float32"
    config.run_dir = tempfile.mkdtemp(prefix=f"fmkeras-bench-langid-{name}-")
    budget = TimeBudget(minutes * 60)
    result = tc.run(config, callbacks=[budget])
    return result.metrics, budget.steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive(float), default=10.0,
                        help="training budget per model")
    parser.add_argument("--data", default=CORPUS, help="text<TAB>label file")
    parser.add_argument("--models", default="transformer,lstm", help="comma-separated")
    args = parser.parse_args(argv)
    unknown = [name for name in args.models.split(",") if name not in PRESETS]
    if unknown:
        parser.error(f"unknown --models {unknown}; expected some of {sorted(PRESETS)}")
    if not os.path.isfile(args.data):
        print(f"Skipping: the shared corpus is absent (expected {args.data}).")
        return 0
    rows = []
    for name in args.models.split(","):
        metrics, steps = run_model(name, args.data, args.minutes)
        rows.append((name, metrics, steps))
    print(f"\nmachine: {machine()}")
    first = rows[0][1]
    print(f"data: {args.data}: {first['train_samples']} train / {first['test_samples']} test "
          f"texts, seed 42; budget {args.minutes:g} min per model")
    print("| model | parameters | steps | test accuracy | macro F1 |")
    print("|---|---|---|---|---|")
    for name, m, steps in rows:
        print(f"| {name} | {m['num_parameters']:,} | {steps} | {m['test_accuracy']:.4f} "
              f"| {m['macro_f1']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
