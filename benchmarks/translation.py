"""English -> Spanish Transformer on gettext messages for a fixed time budget: BLEU and chrF.

Usage::

    python benchmarks/translation.py --minutes 10

Data: ``../shared/datasets/gettext-en-es-train.tsv`` (20,849 ``source<TAB>target``
pairs); the script exits with a message when it is absent. A fixed seed holds
out 5% for validation and 5% for test; the vocabularies are learnt on the
training split only. Training (``fmkeras.tasks.translation.run``, the
``en_es_transformer`` model size with a longer context) stops after the
``--minutes`` wall-clock budget; the best validation checkpoint then decodes
the test sentences (greedy, or ``--beam N``) and sacrebleu scores them
(corpus BLEU and chrF, case-insensitive since the model sees lowercased text).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from dcgan import machine  # noqa: E402

from fmkeras.tasks import translation  # noqa: E402
from fmkeras.train import positive  # noqa: E402
from fmkeras.training.callbacks import TimeBudget  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(os.path.dirname(REPO), "shared", "datasets", "gettext-en-es-train.tsv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=positive(float), default=10.0, help="training budget")
    parser.add_argument("--data", default=CORPUS, help="source<TAB>target corpus")
    parser.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    parser.add_argument("--max-test", type=positive(int), default=1000,
                        help="test sentences scored")
    parser.add_argument("--run-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"Skipping: the shared corpus is absent (expected {args.data}).")
        return 0

    config = translation.TranslationConfig()
    config.data.path = args.data
    config.data.sequence_length = 32
    config.data.source_vocab_size = config.data.target_vocab_size = 8000
    config.data.validation_split = config.data.test_split = 0.05
    config.train.epochs = 1000  # the time budget stops training
    config.train.schedule = "constant"
    config.train.learning_rate = 1e-3
    config.train.warmup_epochs = 0
    config.train.label_smoothing = 0.1
    config.train.verbose = 2
    config.decode.method = "beam" if args.beam else "greedy"
    config.decode.beam_width = max(args.beam, 1)
    config.decode.max_test_sentences = args.max_test
    config.export.enabled = False
    config.precision = "float32"
    config.run_dir = args.run_dir or tempfile.mkdtemp(prefix="fmkeras-bench-translation-")

    budget = TimeBudget(args.minutes * 60)
    started = time.perf_counter()
    result = translation.run(config, callbacks=[budget])
    m = result.metrics
    print(f"\nmachine: {machine()}")
    print(f"data: {args.data}: {m['train_samples']} train / {m['test_samples']} test pairs "
          f"(seed {config.seed}), {m['scored_sentences']} scored")
    print(f"model: transformer_seq2seq, {m['num_parameters']:,} parameters, "
          f"{budget.steps} training steps in {args.minutes:g} min budget "
          f"({time.perf_counter() - started:.0f} s total with decoding)")
    print(f"decode: {config.decode.method}" + (f" (beam {args.beam})" if args.beam else ""))
    print(f"BLEU {m['bleu']:.2f}  chrF {m['chrf']:.2f}  test token accuracy "
          f"{m['test_accuracy']:.3f}")
    print(f"run dir: {config.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
