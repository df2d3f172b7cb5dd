"""SavedModel export: layout, signatures, reload without fmkeras, atomic writes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from fmkeras import export
from fmkeras.models import simple_cnn


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export"))
    model = simple_cnn((8, 8, 1), 3, filters=(4, 8), dense_units=8)
    path = export.export_image_classifier(model, root, "tiny", ["zero", "one", "two"], (8, 8), 1)
    return model, root, path


def png(shape, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def test_layout_is_tf_serving_versioned(exported):
    _, root, path = exported
    assert path == os.path.join(root, "tiny", "1")
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert [d for d in os.listdir(os.path.join(root, "tiny")) if d.startswith(".tmp")] == []


def test_serving_default_takes_any_image_bytes_at_two_batch_sizes(exported):
    model, _, path = exported
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    colour_jpeg = tf.io.encode_jpeg(np.full((20, 30, 3), 128, np.uint8)).numpy()
    grey_png = png((8, 8, 1))
    for batch in ([grey_png], [grey_png, colour_jpeg, png((5, 9, 4), 2)]):
        out = serve(image_bytes=tf.constant(batch))
        assert out["probabilities"].shape == (len(batch), 3)
        assert out["label"].dtype == tf.string
        assert set(out["label"].numpy().astype(str)) <= {"zero", "one", "two"}
    # The same pixels through the in-memory model give the same probabilities.
    pixels = tf.io.decode_png(grey_png, channels=1)[None].numpy().astype("float32") / 255.0
    expected = model.predict(pixels, verbose=0)
    got = serve(image_bytes=tf.constant([grey_png]))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_float_signature_matches_bytes_signature(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    raw = png((8, 8, 1), 5)
    pixels = tf.cast(tf.io.decode_png(raw, channels=1), tf.float32)[None]
    a = loaded.signatures["serve_images"](images=pixels)["probabilities"]
    b = loaded.signatures["serving_default"](image_bytes=tf.constant([raw]))["probabilities"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_saved_model_cli_lists_both_signatures(exported):
    _, _, path = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True,
                         text=True, check=True).stdout
    assert "signature_def['serving_default']" in out
    assert "signature_def['serve_images']" in out
    assert "image_bytes" in out and "probabilities" in out and "label" in out


def test_second_export_gets_next_version(exported, tmp_path):
    model, root, _ = exported
    path = export.export_image_classifier(model, root, "tiny", ["zero", "one", "two"],
                                          (8, 8), 1, check=False)
    assert os.path.basename(path) == "2"


def test_failed_write_leaves_no_version(tmp_path):
    def boom(folder):
        open(os.path.join(folder, "partial"), "w").close()
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        export.write_versioned(str(tmp_path), "m", boom)
    assert os.listdir(tmp_path / "m") == []


def test_check_detects_a_mismatch(exported):
    _, _, path = exported
    images = np.zeros((1, 8, 8, 1), np.float32)
    case = {"signature": "serve_images", "input": "images", "value": images,
            "expected": {"probabilities": np.zeros((1, 3), np.float32)}}
    with pytest.raises(export.ExportError, match="differs from the in-memory model"):
        export.check_export(path, [case])


def _image_case(path):
    """A check case whose expected outputs are the export's own (so it passes)."""
    images = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    expected = tf.saved_model.load(path).signatures["serve_images"](
        images=tf.constant(images))["probabilities"].numpy()
    return {"signature": "serve_images", "input": "images", "value": images,
            "expected": {"probabilities": expected}}


def test_checks_share_one_checking_process_that_never_imports_fmkeras(exported):
    _, _, path = exported
    case = _image_case(path)
    export.check_export(path, [case])
    first = export.core._CHECKER.proc.pid
    export.check_export(path, [case])
    assert export.core._CHECKER.proc.pid == first
    # The checking script itself refuses to run with fmkeras imported.
    assert 'assert "fmkeras" not in sys.modules' in export.core._CHECK_SCRIPT


def test_a_dead_checking_process_is_replaced(exported):
    _, _, path = exported
    case = _image_case(path)
    export.check_export(path, [case])
    old = export.core._CHECKER.proc
    old.kill()
    old.wait()
    export.check_export(path, [case])  # starts a new one
    assert export.core._CHECKER.proc.pid != old.pid


def test_a_failed_reload_is_named_and_the_next_check_still_works(exported, tmp_path):
    _, _, path = exported
    case = _image_case(path)
    with pytest.raises(export.ExportError, match="in a separate process failed: .*"
                       "SavedModel file does not exist"):
        export.check_export(str(tmp_path), [case])
    bad = {**case, "signature": "no_such_signature"}
    with pytest.raises(export.ExportError, match="KeyError: 'no_such_signature'"):
        export.check_export(path, [bad])
    export.check_export(path, [case])


def test_the_checking_process_ends_with_its_parent_and_leaves_nothing(exported, tmp_path,
                                                                      monkeypatch):
    _, _, path = exported
    export.core._CHECKER.close()
    monkeypatch.setattr(export.core.tempfile, "tempdir", str(tmp_path))  # its working folder
    (tmp_path / "numpy.py").write_text("raise ImportError('the working folder was imported')")
    export.check_export(path, [_image_case(path)])  # the folder is not on its sys.path
    proc = export.core._CHECKER.proc
    proc.stdin.close()  # what it sees when this process ends without atexit (os._exit)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["numpy.py"]  # nothing written
    export.check_export(path, [_image_case(path)])  # and the next check starts a new one


def test_a_check_that_takes_too_long_is_stopped(exported):
    _, _, path = exported
    case = _image_case(path)
    export.check_export(path, [case])  # the checking process is up
    old = export.core._CHECKER.proc
    with pytest.raises(export.ExportError, match="no answer within 0.001 s"):
        export.check_export(path, [case], timeout=0.001)
    assert export.core._CHECKER.proc is None and old.poll() is not None
    export.check_export(path, [case])


def test_bad_export_name(tmp_path):
    with pytest.raises(export.ExportError, match="Received: 'a/b'"):
        export.write_versioned(str(tmp_path), "a/b", lambda p: None)


@pytest.mark.parametrize("args, match", [
    ((["a", "b"], (8, 8), 1), r"one class name per model output \(3\). Received: 2 class_names"),
    ((["a", "b", "c"], (16, 16), 1), r"model's input \(8, 8, 1\). Received: image_size=\(16, 16\)"),
    ((["a", "b", "c"], (8, 8), 3), "channels=3"),
])
def test_image_export_refuses_settings_that_do_not_fit_the_model(tmp_path, args, match):
    model = simple_cnn((8, 8, 1), 3, filters=(4,), dense_units=0)
    export.image_classifier_archive(model, ["a", "b", "c"], 8, 1)  # one int: a square
    with pytest.raises(export.ExportError, match=match):
        export.export_image_classifier(model, str(tmp_path), "m", *args, check=False)
    assert not os.path.exists(tmp_path / "m")


def test_text_export_refuses_a_class_name_count_other_than_the_outputs():
    from fmkeras.data.text import text_vectorizer
    from fmkeras.models import lstm_classifier

    vectorizer = text_vectorizer(8, texts=["hola", "hello"])
    with pytest.raises(export.ExportError, match=r"per model output \(2\). Received: 3"):
        export.text_classifier_archive(lstm_classifier(10, 2), vectorizer, ["en", "es", "fr"])
    # Without a fixed length, a long or empty request would fail inside the served graph.
    import keras

    free = keras.layers.TextVectorization()
    free.adapt(["hello there", "good morning"])
    with pytest.raises(export.ExportError, match=r"no output_sequence_length.*"
                                                 r"output_sequence_length=N\)"):
        export.text_classifier_archive(lstm_classifier(10, 2), free, ["en", "es"])


@pytest.mark.parametrize("sizes, match", [
    ((9, 16, 8), r"predicts 16 target tokens, more than the target vectorizer's 11"),
    ((6, 11, 8), r"source vectorizer has 9 tokens, more than the 6 the model's "
                 r"'encoder_embedding' layer embeds"),
    ((9, 11, 6), r"source vectorizer makes sequences of 8 tokens, longer than the model's 6"),
])
def test_translator_export_refuses_vectorizers_the_model_was_not_built_for(sizes, match):
    from fmkeras.data.text import ParallelText, translation_vectorizers
    from fmkeras.models import transformer_seq2seq

    pairs = ParallelText(["where is it?", "open the file"], ["¿dónde está?", "abre el archivo"])
    source, target = translation_vectorizers(pairs, sequence_length=8)
    assert (source.vocabulary_size(), target.vocabulary_size()) == (9, 11)
    model = transformer_seq2seq(*sizes, d_model=8, num_heads=2, ff_dim=8,
                                num_encoder_layers=1, num_decoder_layers=1)
    with pytest.raises(export.ExportError, match=match):
        export.translator_archive(model, source, target)


def test_serve_images_refuses_pixels_of_another_size(exported):
    _, _, path = exported
    serve = tf.saved_model.load(path).signatures["serve_images"]
    for shape in ((1, 16, 16, 1), (1, 8, 8, 3)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[\?,8,8,1\]"):
            serve(images=tf.zeros(shape))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_declared_pixels_are_read_from_the_header(fmt):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(buffer, format=fmt)
    assert int(export.image.declared_pixels(tf.constant(buffer.getvalue()))) == 30 * 41


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(exported):
    _, _, path = exported
    raw = bytearray(png((8, 8, 1)))
    raw[16:24] = (40_000).to_bytes(4, "big") * 2  # claims 40000 x 40000 in 1 kB
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 100,000,000 pixels"):
        serve(image_bytes=tf.constant([png((8, 8, 1)), bytes(raw)]))
    assert serve(image_bytes=tf.constant([png((8, 8, 1))]))["label"].shape == (1,)


def test_an_empty_request_gets_empty_answers(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([], tf.string))
    assert out["probabilities"].shape == (0, 3) and out["label"].shape == (0,)
    out = loaded.signatures["serve_images"](images=tf.zeros((0, 8, 8, 1)))
    assert out["probabilities"].shape == (0, 3)
