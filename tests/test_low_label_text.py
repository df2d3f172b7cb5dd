"""The low-label text benchmark's splits (the full benchmark is run by hand)."""


import numpy as np
import pytest
from conftest import load_script

from fmkeras import config as config_lib
from fmkeras.tasks import text_classification as text_task


def load_benchmark():
    return load_script("benchmarks", "low_label_text.py")


def test_split_is_per_class_seeded_and_disjoint():
    bench = load_benchmark()
    labels = np.repeat([0, 1, 2], 10)
    parts = bench.split_corpus(labels, 3, test_per_class=3, per_class=2, seed=5)
    test, pool, labelled = (set(parts[k].tolist()) for k in ("test", "pool", "labelled"))
    assert not test & pool and labelled <= pool and len(test | pool) == 30
    assert np.bincount(labels[parts["test"]]).tolist() == [3, 3, 3]
    assert np.bincount(labels[parts["labelled"]]).tolist() == [2, 2, 2]
    again = bench.split_corpus(labels, 3, 3, 2, seed=5)
    assert all((again[k] == parts[k]).all() for k in parts)
    with pytest.raises(ValueError, match="Class 0 has 10 texts"):
        bench.split_corpus(labels, 3, test_per_class=9, per_class=2)


def test_the_task_tests_exactly_the_held_out_rows(tmp_path):
    bench = load_benchmark()
    train = [(f"train text {i}", "ab"[i % 2]) for i in range(13)]
    test = [(f"test text {i}", "ab"[i % 2]) for i in range(7)]
    path = str(tmp_path / "data.tsv")
    test_split = bench.write_classifier_file(path, train, test)
    config = config_lib.load_config(text_task.TextClassificationConfig, None, [
        f"data.path={path}", "data.validation_split=0", f"data.test_split={test_split}",
        f"seed={bench.CLASSIFIER_SEED}"])
    splits, names, _ = text_task.load_texts(config)
    assert sorted(splits["test"].texts) == sorted(t for t, _ in test)
    assert sorted(splits["train"].texts) == sorted(t for t, _ in train)
    assert names == ["a", "b"]
    assert bench.choose_corpus(bench.EMBEDDED_CORPUS)[0] == bench.EMBEDDED_CORPUS
    with pytest.raises(FileNotFoundError, match="Received: --corpus"):
        bench.choose_corpus(str(tmp_path / "none.tsv"))
