"""The low-label benchmark's labelled subset (the full benchmark is run by hand)."""

import importlib.util
import os

import pytest
from conftest import REPO, write_image_folder


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "low_label", os.path.join(REPO, "benchmarks", "low_label.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labelled_subset_keeps_k_per_class_and_the_whole_test_split(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", classes=("a", "b"), per_class=5)
    write_image_folder(root / "test", classes=("a", "b"), per_class=3)
    bench = load_benchmark()
    first = bench.labelled_subset(str(root), 2, str(tmp_path / "k2"), seed=1)
    again = bench.labelled_subset(str(root), 2, str(tmp_path / "k2-again"), seed=1)
    for name in ("a", "b"):
        kept = sorted(os.listdir(os.path.join(first, "train", name)))
        assert len(kept) == 2 and kept == sorted(os.listdir(os.path.join(again, "train", name)))
        assert len(os.listdir(os.path.join(first, "test", name))) == 3
    with pytest.raises(ValueError, match="Received: 0"):
        bench.labelled_subset(str(root), 0, str(tmp_path / "k0"))
