"""The translation task end to end on a tiny corpus: run dir, BLEU/chrF, export, CLI errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_cli import assert_one_line_error, run_main

from fmkeras.data import text as text_data
from fmkeras.export.text import ids_to_text, translator_fn
from fmkeras.models.transformer import transformer_seq2seq
from fmkeras.tasks import translation

SAMPLE = os.path.join(REPO, "data", "translation", "en-es.tsv")
SERVE_TEXTS = ["", "¿Dónde está el archivo?", "Open the file", "out of memory"]


def write_corpus(path, lines=200):
    with open(SAMPLE, encoding="utf-8") as f:
        kept = [line for line in f if line.count("\t") == 1 and all(
            part.strip() for part in line.split("\t"))][:lines]
    path.write_text("".join(kept), encoding="utf-8")
    return str(path)


def tiny_config(data_path, run_dir):
    config = translation.TranslationConfig()
    config.data.path = data_path
    config.data.sequence_length = 10
    config.data.batch_size = 32
    config.model = translation.TranslationModelConfig(d_model=16, num_heads=2, ff_dim=32,
                                                      num_encoder_layers=1,
                                                      num_decoder_layers=1, dropout=0.0)
    config.train.epochs = 1
    config.train.verbose = 0
    config.train.label_smoothing = 0.1
    config.precision = "float32"
    config.jit_compile = False
    config.run_dir = str(run_dir)
    return config


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    config = tiny_config(write_corpus(root / "pairs.tsv"), root / "run")
    return translation.run(config)


def test_run_writes_metrics_report_vocab_and_plot(result):
    run_dir = result.run_dir
    for name in ("config.yaml", "manifest.json", "metrics.json", "report.md", "history.csv",
                 "plots/training_curves.png", "vocab/source.txt", "vocab/target.txt"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    for key in ("bleu", "chrf", "test_loss", "test_accuracy", "data_records"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["data_records"] == 200 and metrics["test_samples"] == 20
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100
    with open(os.path.join(run_dir, "report.md"), encoding="utf-8") as f:
        report = f.read()
    assert "## Sample translations" in report and "| source | reference | model |" in report
    target = text_data.load_vocabulary(os.path.join(run_dir, "vocab", "target.txt"))
    assert target[:2] == ["", "[UNK]"] and "[start]" in target and "[end]" in target


def test_checkpoint_loads_in_a_fresh_process_with_fmkeras_models_imported(result):
    # Its compiled loss (SmoothedSparseCrossentropy) was registered only by the task module.
    import subprocess
    import sys

    path = os.path.join(result.run_dir, "checkpoints", "best.keras")
    code = ("import sys, keras, fmkeras.models; "
            "m = keras.saving.load_model(sys.argv[1]); print(type(m.loss).__name__)")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("SmoothedSparseCrossentropy")


def test_export_serves_raw_strings_like_the_model(result):
    run_dir, seq = result.run_dir, 10
    assert result.export_path == os.path.join(run_dir, "export", "translator", "1")
    source = text_data.text_vectorizer(seq, vocabulary=os.path.join(run_dir, "vocab",
                                                                    "source.txt"))
    target = text_data.text_vectorizer(seq + 1, vocabulary=os.path.join(run_dir, "vocab",
                                                                        "target.txt"))
    translate = translator_fn(result.model, source, target)
    serve = tf.saved_model.load(result.export_path).signatures["serving_default"]
    for batch in (SERVE_TEXTS[:1], SERVE_TEXTS):
        got = serve(text=tf.constant(batch))["translation"]
        assert got.dtype == tf.string and got.shape == (len(batch),)
        assert got.numpy().tolist() == translate(tf.constant(batch)).numpy().tolist()


def test_translate_strips_special_tokens_and_detokenizes():
    vocab = ["", "[UNK]", "[start]", "[end]", "¿", "dónde", "está", "?", "pack", "-", "files"]
    target = text_data.text_vectorizer(5, vocabulary=vocab)
    ids = tf.constant([[4, 5, 6, 7, 3, 5], [8, 9, 10, 0, 0, 0], [3, 5, 0, 0, 0, 0]])
    assert ids_to_text(ids, target.get_vocabulary(), 3).numpy().tolist() == [
        "¿dónde está?".encode(), b"pack-files", b""]


def test_training_lowers_the_loss_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    pairs = text_data.ParallelText(["open the file", "close the window"] * 4,
                                   ["abrir el archivo", "cerrar la ventana"] * 4)
    src, tgt = text_data.translation_vectorizers(pairs, sequence_length=6)
    inputs, labels = next(iter(text_data.translation_dataset(pairs, src, tgt, batch_size=8)))
    model = transformer_seq2seq(src.vocabulary_size(), tgt.vocabulary_size(), 6, d_model=16,
                                num_heads=2, ff_dim=32, num_encoder_layers=1,
                                num_decoder_layers=1, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=translation.text_loss(0.1))
    losses = [float(model.train_on_batch(inputs, labels)) for _ in range(8)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_float16_model_gives_finite_probabilities():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = transformer_seq2seq(30, 30, 6, d_model=16, num_heads=2, ff_dim=32,
                                num_encoder_layers=1, num_decoder_layers=1)
    ids = tf.constant([[5, 6, 0, 0, 0, 0]])
    out = model({"encoder_inputs": ids, "decoder_inputs": ids})
    assert out.dtype == "float32" and np.all(np.isfinite(out.numpy()))


def test_cli_missing_corpus(capsys, tmp_path):
    code, _, err = run_main(capsys, "translation", "--set", "data.path=/no/such.tsv",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not found", "/no/such.tsv")


def test_cli_corpus_without_usable_lines(capsys, tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("no tab here\n\n\tonly target\n", encoding="utf-8")
    code, _, err = run_main(capsys, "translation", "--set", f"data.path={path}",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "Expected at least one source<TAB>target line",
                          "missing_tab=1")


def test_cli_unknown_decode_method(capsys, tmp_path):
    code, _, err = run_main(capsys, "translation", "--set", "decode.method=sampling",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "decode.method", "'sampling'")


@pytest.mark.parametrize("setting, fragment", [
    ("decode.beam_width=0", "decode.beam_width to be an integer >= 1. Received: 0"),
    ("decode.batch_size=0", "decode.batch_size"),
    ("decode.length_penalty=-1", "decode.length_penalty >= 0. Received: -1"),
    ("decode.max_length=99", "between 1 and data.sequence_length (24), or null. Received: 99"),
    ("decode.max_test_sentences=0", "decode.max_test_sentences >= 1"),
])
def test_cli_bad_decode_settings_fail_before_training(capsys, tmp_path, setting, fragment):
    run_dir = tmp_path / "r"
    code, _, err = run_main(capsys, "translation", "--set", "decode.method=beam", "--set",
                            setting, "--run-dir", str(run_dir))
    assert_one_line_error(code, err, fragment)
    assert not run_dir.exists()


def test_beam_of_width_one_matches_greedy(result):
    run_dir, seq = result.run_dir, 10
    source = text_data.text_vectorizer(seq, vocabulary=os.path.join(run_dir, "vocab",
                                                                    "source.txt"))
    target = text_data.text_vectorizer(seq + 1, vocabulary=os.path.join(run_dir, "vocab",
                                                                        "target.txt"))
    texts = tf.constant(SERVE_TEXTS)
    greedy = translator_fn(result.model, source, target)(texts)
    beam = translator_fn(result.model, source, target, method="beam", beam_width=1)(texts)
    assert beam.numpy().tolist() == greedy.numpy().tolist()
