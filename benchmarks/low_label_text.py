"""Low-label language identification: what MLM pretraining and LoRA buy with few labels.

Run: ``python benchmarks/low_label_text.py [--per-class 20] [--epochs 30] [--mlm-epochs 2]``

One run, all through the fmkeras tasks:

1. The corpus (``--corpus``; by default the shared 126k-line
   ``../shared/datasets/gettext-langid-train.tsv`` when it is there, else the
   embedded ``data/langid/langid.tsv``, with a message saying so) is split
   with ``--seed``: ``--test-per-class`` texts of each language form the
   fixed test set; the rest is the training portion.
2. ``pretrain-mlm`` (preset ``langid_mlm``) learns a vocabulary and an
   encoder from the training portion's texts (labels unused; at most
   ``--mlm-texts`` of them, drawn with the seed). No test text is in it: the
   test set is disjoint from the pretraining text as well as from the labels.
3. ``--per-class`` labelled texts of each language are drawn from the
   training portion (the same seed), and ``text-classification`` trains
   three ways on exactly those texts, with the same epochs, batch and
   model sizes (``langid_mlm_finetune``'s):

   - ``scratch``: the Transformer from random weights, its vocabulary
     learned from the labelled texts (all a from-scratch model can see);
   - ``mlm_full``: from the MLM run (its vocabulary, embedding and encoder
     blocks), every weight trained;
   - ``mlm_lora``: from the MLM run, LoRA rank ``--lora-rank`` adapters plus
     the new head trained, everything else frozen.

The classifier's file holds the labelled texts and the test texts, ordered so
that the task's own seeded split (``data.test_split``, no validation split)
puts exactly the test texts in its test set; the script checks this with the
task's loader before training. Test accuracy, macro F1, trainable parameters
and seconds go to ``benchmarks/results/low_label_text.json`` (with the
machine and versions) and are printed as a markdown table. Temporary files
live in a ``tempfile.mkdtemp()`` folder, never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from fmkeras.train import positive

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CORPUS = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets",
                                              "gettext-langid-train.tsv"))
EMBEDDED_CORPUS = os.path.join(REPO, "data", "langid", "langid.tsv")
MAX_CHARS = 500
CLASSIFIER_SEED = 42


def choose_corpus(path=None):
    """The corpus to use: ``path`` if given, else the shared one, else the embedded one.

    Returns:
        ``(path, note)``: the file and a line saying which it is and why.

    Raises:
        FileNotFoundError: ``path`` was given and does not exist.

    Example:

    >>> choose_corpus(EMBEDDED_CORPUS)[0] == EMBEDDED_CORPUS
    True
    """
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Corpus not found. Expected a TSV file with 'text' and "
                                    f"'label' columns. Received: --corpus {path!r}")
        return path, f"corpus: {path} (given)"
    if os.path.isfile(SHARED_CORPUS):
        return SHARED_CORPUS, f"corpus: {SHARED_CORPUS} (shared)"
    return EMBEDDED_CORPUS, (f"corpus: {EMBEDDED_CORPUS} (the shared corpus {SHARED_CORPUS} "
                             "is absent; falling back to the embedded 3000-line sample)")


def split_corpus(labels, num_classes, test_per_class, per_class, seed=0):
    """Seeded per-class split: test indices, training-portion indices, labelled subset.

    Args:
        labels: int array. The class of each text.
        num_classes: int. How many classes there are.
        test_per_class: int. Test texts per class.
        per_class: int. Labelled texts per class, drawn from the training portion.
        seed: int. Which texts go where.

    Returns:
        dict of int arrays: ``test``, ``pool`` (the training portion, test
        excluded) and ``labelled`` (a subset of ``pool``).

    Raises:
        ValueError: a count is below 1, or a class has too few texts for
            ``test_per_class + per_class`` (the class and counts are named).

    Example:

    >>> parts = split_corpus(np.array([0] * 5 + [1] * 5), 2, 2, 1)
    >>> [len(parts[k]) for k in ("test", "pool", "labelled")]
    [4, 6, 2]
    """
    if test_per_class < 1 or per_class < 1:
        raise ValueError(f"Expected test_per_class >= 1 and per_class >= 1. Received: "
                         f"test_per_class={test_per_class}, per_class={per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test, pool, labelled = [], [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < test_per_class + per_class:
            raise ValueError(f"Class {c} has {len(members)} texts. Expected at least "
                             f"test_per_class + per_class = {test_per_class + per_class}")
        test.extend(members[:test_per_class])
        pool.extend(members[test_per_class:])
        labelled.extend(members[test_per_class:test_per_class + per_class])
    return {"test": np.sort(test), "pool": np.sort(pool), "labelled": np.sort(labelled)}


def write_classifier_file(path, train_rows, test_rows, seed=CLASSIFIER_SEED):
    """Write ``text<TAB>label`` rows so the task's seeded split tests exactly ``test_rows``.

    ``text-classification`` splits each label's rows with ``seed``
    (stratified, no validation split here) and holds out
    ``round(n_label * test_split)`` of them; the file lays out the labels,
    asks the same split where it would look, and puts each label's test
    rows there.

    Args:
        path: str. The ``.tsv`` file to write.
        train_rows, test_rows: lists of ``(text, label)``.
        seed: int. The classifier's ``seed``.

    Returns:
        float. The ``data.test_split`` to run the task with.

    Example:

    >>> write_classifier_file(os.path.join(tempfile.mkdtemp(), "d.tsv"),
    ...                       [("a", "x")] * 3 + [("c", "y")] * 3, [("b", "x"), ("d", "y")])
    0.25
    """
    from fmkeras.data import text as text_data

    total = len(train_rows) + len(test_rows)
    test_split = len(test_rows) / total
    names = sorted({label for _, label in train_rows + test_rows})
    layout = np.array([names.index(label) for _, label in train_rows + test_rows])
    order = text_data.split_indices(total, 0.0, test_split, seed, labels=layout)
    rows = [None] * total
    for part, wanted in (("test", test_rows), ("train", train_rows)):
        for index, name in enumerate(names):
            places = [i for i in order[part] if layout[i] == index]
            mine = [row for row in wanted if row[1] == name]
            if len(places) != len(mine):
                raise ValueError(
                    f"Expected the split to hold out {len(mine)} of label {name!r} with "
                    f"test_split={test_split}. Received: {len(places)} for {part}")
            for i, row in zip(places, mine):
                rows[i] = row
    with open(path, "w", encoding="utf-8") as f:
        f.write("text\tlabel\n")
        f.writelines(f"{text}\t{label}\n" for text, label in rows)
    return test_split


def machine():
    """The CPU model (``/proc/cpuinfo``, else ``platform.processor()``) and core count."""
    from fmkeras.training.precision import cpu_model

    return {"cpu": cpu_model(), "processor": platform.processor(), "cores": os.cpu_count(),
            "platform": platform.platform()}


def _run(module, config_cls, preset, overrides):
    from fmkeras import config as config_lib

    config = config_lib.load_config(config_cls, preset, overrides)
    start = time.monotonic()
    result = module.run(config)
    return result, round(time.monotonic() - start, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="TSV with text and label columns "
                        "(default: the shared corpus if present, else the embedded sample)")
    parser.add_argument("--per-class", type=positive(int), default=20,
                        help="labelled texts per language")
    parser.add_argument("--test-per-class", type=positive(int), default=100)
    parser.add_argument("--epochs", type=positive(int), default=30,
                        help="classifier epochs (all three)")
    parser.add_argument("--batch-size", type=positive(int), default=16, help="classifier batch")
    parser.add_argument("--learning-rate", type=positive(float), default=1e-3,
                        help="scratch and mlm_full")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--lora-learning-rate", type=positive(float), default=5e-3)
    parser.add_argument("--mlm-texts", type=int, default=60000,
                        help="most pretraining texts (0: the whole training portion)")
    parser.add_argument("--mlm-epochs", type=positive(int), default=2)
    parser.add_argument("--mlm-learning-rate", type=positive(float), default=2e-3)
    parser.add_argument("--mask-rate", type=positive(float), default=0.15)
    parser.add_argument("--max-tokens", type=positive(int), default=8000,
                        help="MLM vocabulary size")
    parser.add_argument("--seed", type=int, default=0, help="which texts go where")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "low_label_text.json"))
    args = parser.parse_args(argv)

    try:
        corpus, note = choose_corpus(args.corpus)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(note, flush=True)
    import keras
    import tensorflow as tf

    from fmkeras import config as config_lib
    from fmkeras.data import text as text_data
    from fmkeras.tasks import pretrain_mlm
    from fmkeras.tasks import text_classification as text_task

    data = text_data.read_labelled_text(corpus, max_chars=MAX_CHARS)
    parts = split_corpus(data.labels, len(data.class_names), args.test_per_class,
                         args.per_class, args.seed)
    test_texts = {data.texts[i] for i in parts["test"]}
    # Drop any training-portion text that also appears in the test set (duplicates).
    pool = [i for i in parts["pool"] if data.texts[i] not in test_texts]
    labelled = [i for i in parts["labelled"] if data.texts[i] not in test_texts]
    rng = np.random.default_rng(args.seed + 1)
    mlm_pool = pool if not args.mlm_texts or args.mlm_texts >= len(pool) else \
        sorted(rng.choice(pool, args.mlm_texts, replace=False))

    work = tempfile.mkdtemp(prefix="fmkeras-low-label-text-")
    mlm_file = os.path.join(work, "mlm.txt")
    with open(mlm_file, "w", encoding="utf-8") as f:
        f.writelines(data.texts[i] + "\n" for i in mlm_pool)
    cls_file = os.path.join(work, "labelled.tsv")
    name = data.class_names
    train_rows = [(data.texts[i], name[data.labels[i]]) for i in labelled]
    test_rows = [(data.texts[i], name[data.labels[i]]) for i in parts["test"]]
    test_split = write_classifier_file(cls_file, train_rows, test_rows)

    quiet = "train.verbose=2"
    mlm_dir = os.path.join(work, "mlm")
    mlm_result, mlm_seconds = _run(pretrain_mlm, pretrain_mlm.PretrainMLMConfig, "langid_mlm", [
        f"data.path={mlm_file}", f"run_dir={mlm_dir}", quiet,
        f"data.max_tokens={args.max_tokens}", f"data.mask_rate={args.mask_rate}",
        f"train.epochs={args.mlm_epochs}", f"train.learning_rate={args.mlm_learning_rate}",
        f"data.max_chars={MAX_CHARS}"])
    mlm = {"seconds": mlm_seconds, "texts": len(mlm_pool), "epochs": args.mlm_epochs,
           **{k: mlm_result.metrics[k] for k in ("masked_accuracy", "val_loss", "first_loss",
                                                 "final_loss", "vocab_size", "num_parameters")}}
    print(f"MLM pretraining: {mlm}", flush=True)

    common = [f"data.path={cls_file}", "data.validation_split=0", f"data.test_split={test_split}",
              f"data.batch_size={args.batch_size}", f"data.max_chars={MAX_CHARS}",
              f"train.epochs={args.epochs}", f"seed={CLASSIFIER_SEED}", quiet,
              "export.enabled=false"]
    splits, _, _ = text_task.load_texts(config_lib.load_config(
        text_task.TextClassificationConfig, "langid_mlm_finetune", common))
    if sorted(splits["test"].texts) != sorted(t for t, _ in test_rows) or \
            sorted(splits["train"].texts) != sorted(t for t, _ in train_rows):
        raise RuntimeError("The classifier's split does not match the intended test set; "
                           "the benchmark would not be honest")
    methods = {
        "scratch": ["model.encoder_path=null", f"train.learning_rate={args.learning_rate}"],
        "mlm_full": [f"model.encoder_path={mlm_dir}", f"train.learning_rate={args.learning_rate}"],
        "mlm_lora": [f"model.encoder_path={mlm_dir}", f"lora.rank={args.lora_rank}",
                     f"train.learning_rate={args.lora_learning_rate}"],
    }
    rows = []
    for method, extra in methods.items():
        result, seconds = _run(text_task, text_task.TextClassificationConfig,
                               "langid_mlm_finetune",
                               common + extra + [f"run_dir={os.path.join(work, method)}"])
        m = result.metrics
        rows.append({"method": method, "test_accuracy": m["test_accuracy"],
                     "macro_f1": m["macro_f1"], "trainable_parameters": m["trainable_parameters"],
                     "total_parameters": m["total_parameters"], "seconds": seconds,
                     "train_samples": m["train_samples"], "test_samples": m["test_samples"]})
        print(f"{method}: {rows[-1]}", flush=True)

    report = {"corpus": corpus, "corpus_note": note, "mlm_pretraining": mlm, "results": rows,
              "test_set": "test_per_class texts of each language, disjoint from the labelled "
                          "subset and from the MLM pretraining texts",
              "args": vars(args), "machine": machine(),
              "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                           "numpy": np.__version__, "python": platform.python_version()}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\n{args.per_class} labelled texts per language ({rows[0]['train_samples']} in all), "
          f"{rows[0]['test_samples']} test texts, {args.epochs} epochs each.\n")
    print("| method | test accuracy | macro F1 | trainable parameters | seconds |\n"
          "|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['test_accuracy']:.3f} | {row['macro_f1']:.3f} | "
              f"{row['trainable_parameters']:,} | {row['seconds']} |")
    print(f"\nMLM pretraining: {mlm_seconds} s on {len(mlm_pool)} texts, {args.mlm_epochs} "
          f"epochs, masked accuracy {mlm['masked_accuracy']:.3f}. Machine: "
          f"{report['machine']['cpu']}. Results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
