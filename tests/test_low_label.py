"""The low-label benchmark's labelled subset and summary (the full benchmark is run by hand)."""

import os

import pytest
from conftest import load_script, write_image_folder


def load_benchmark():
    return load_script("benchmarks", "low_label.py")


def test_labelled_subset_keeps_a_fraction_per_class_and_the_whole_test_split(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train", classes=("a", "b"), per_class=10)
    write_image_folder(root / "test", classes=("a", "b"), per_class=3)
    bench = load_benchmark()
    assert bench.labelled_subset(str(root), 0.2, str(tmp_path / "k2"), seed=1) == 4
    bench.labelled_subset(str(root), 0.2, str(tmp_path / "k2-again"), seed=1)
    bench.labelled_subset(str(root), 0.2, str(tmp_path / "k2-other"), seed=2)
    other = []
    for name in ("a", "b"):
        kept = sorted(os.listdir(tmp_path / "k2" / "train" / name))
        assert len(kept) == 2 and kept == sorted(os.listdir(tmp_path / "k2-again" / "train" / name))
        other.append(kept != sorted(os.listdir(tmp_path / "k2-other" / "train" / name)))
        assert len(os.listdir(tmp_path / "k2" / "test" / name)) == 3
    assert any(other)
    # A tiny fraction still keeps one labelled image per class.
    assert bench.labelled_subset(str(root), 0.01, str(tmp_path / "one")) == 2
    with pytest.raises(ValueError, match=r"in \(0, 1\]. Received: 0"):
        bench.labelled_subset(str(root), 0, str(tmp_path / "k0"))


def test_summary_gives_mean_and_spread_per_method():
    bench = load_benchmark()
    rows = [{"label_fraction": 0.1, "labelled_images": 4, "method": method, "seed": seed,
             "test_accuracy": acc, "trainable_parameters": 7, "seconds": 2.0}
            for method, seed, acc in [("scratch", 0, 0.5), ("scratch", 1, 0.7), ("simclr", 0, 0.9)]]
    summary = {row["method"]: row for row in bench.summarise(rows)}
    assert summary["scratch"]["runs"] == 2
    assert summary["scratch"]["mean"] == pytest.approx(0.6)
    assert summary["scratch"]["std"] == pytest.approx(0.1)
    assert summary["simclr"]["std"] == 0.0


def test_cli_rejects_a_backbone_without_a_scratch_twin(capsys):
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.main(["--backbone", "mobilenet_v2"])
    assert "Received: 'mobilenet_v2'" in capsys.readouterr().err
