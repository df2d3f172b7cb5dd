"""The text-classification task end to end on a tiny corpus: metrics, plots, export, CLI."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_cli import assert_one_line_error, run_main

from fmkeras.data import text as text_data
from fmkeras.tasks import text_classification as tc

SAMPLE = os.path.join(REPO, "data", "langid", "langid.tsv")
SERVE_TEXTS = ["", "¿Dónde está el archivo?", "Open the file", "Datei öffnen"]


def write_texts(path, lines=200):
    with open(SAMPLE, encoding="utf-8") as f:
        path.write_text("".join(f.readlines()[:lines + 1]), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("langid")
    config = tc.TextClassificationConfig()
    config.data.path = write_texts(root / "langid.tsv")
    config.data.sequence_length = 12
    config.data.batch_size = 32
    config.model = tc.TextModelConfig(name="transformer", d_model=16, num_heads=2, ff_dim=32)
    config.train.epochs = 1
    config.train.verbose = 0
    config.precision = "float32"
    config.jit_compile = False
    config.run_dir = str(root / "run")
    return tc.run(config)


def test_run_writes_metrics_plots_and_vocab(result):
    run_dir = result.run_dir
    for name in ("metrics.json", "report.md", "plots/confusion_matrix.png",
                 "plots/training_curves.png", "vocab/tokens.txt", "vocab/labels.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert metrics["test_samples"] == 40 and metrics["model_name"] == "transformer"
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert "## Per-class results" in report


def test_export_serves_raw_strings_like_the_model(result):
    run_dir = result.run_dir
    with open(os.path.join(run_dir, "vocab", "labels.json"), encoding="utf-8") as f:
        labels = json.load(f)
    vectorizer = text_data.text_vectorizer(12, vocabulary=os.path.join(run_dir, "vocab",
                                                                       "tokens.txt"))
    serve = tf.saved_model.load(result.export_path).signatures["serving_default"]
    for batch in (SERVE_TEXTS[:1], SERVE_TEXTS):
        out = serve(text=tf.constant(batch))
        expected = result.model.predict(tf.cast(vectorizer(tf.constant(batch)), tf.int32),
                                        verbose=0)
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=1e-4, atol=1e-5)
        assert [label.decode() for label in out["label"].numpy()] == [
            labels[i] for i in expected.argmax(-1)]


@pytest.mark.parametrize("name", ["transformer", "lstm", "gru"])
def test_training_lowers_the_loss_under_mixed_bfloat16(name):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = tc.build_model(tc.TextModelConfig(name=name, d_model=16, num_heads=2, ff_dim=32,
                                              embedding_dim=16, units=16, dropout=0.0),
                           vocab_size=20, sequence_length=6, num_classes=3)
    ids = np.array([[2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 0, 0], [9, 10, 0, 0, 0, 0]] * 2)
    labels = np.array([0, 1, 2] * 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    losses = [float(model.train_on_batch(ids, labels)) for _ in range(6)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_float16_model_gives_finite_probabilities():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = tc.build_model(tc.TextModelConfig(d_model=16, num_heads=2, ff_dim=32), 20, 6, 3)
    out = model(tf.constant([[2, 3, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    assert out.dtype == "float32" and np.all(np.isfinite(out.numpy()))


def test_cli_missing_data(capsys, tmp_path):
    code, _, err = run_main(capsys, "text-classification", "--set", "data.path=/no/such.tsv",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not found", "/no/such.tsv")


def test_cli_file_without_usable_lines(capsys, tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("text\tlabel\n\n\ten\n", encoding="utf-8")
    code, _, err = run_main(capsys, "text-classification", "--set", f"data.path={path}",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "Expected at least one labelled text")


def test_cli_unknown_model_name(capsys, tmp_path):
    code, _, err = run_main(capsys, "text-classification", "--set", "model.name=bert",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "Unknown model.name", "'bert'", "transformer")
