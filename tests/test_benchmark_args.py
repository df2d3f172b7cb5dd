"""Benchmark scripts refuse bad arguments with a one-line usage error (exit 2), not a traceback."""

import os

import pytest
from conftest import REPO, load_script


@pytest.mark.parametrize("script, argv, fragment", [
    ("cifar10_fast.py", ["--minutes", "-1"], "argument --minutes: expected a float above 0"),
    ("dcgan.py", ["--batch-size", "x"], "argument --batch-size: expected an int above 0, "
                                        "received 'x'"),
    ("gpu_jax.py", ["--epochs", "0"], "argument --epochs: expected an int above 0"),
    ("gpu_jax.py", ["--skip-cifar"], "needs Keras' JAX backend (KERAS_BACKEND=jax). "
                                     "Received: 'tensorflow'"),
    ("image_pipeline.py", ["--sizes", "32", "0"], "argument --sizes: expected an int above 0"),
    ("low_label.py", ["--epochs", "0"], "argument --epochs: expected an int above 0"),
    ("low_label_text.py", ["--corpus", "/no/such.tsv"], "Corpus not found"),
    ("precision.py", ["--steps", "0"], "argument --steps: expected an int above 0"),
    ("text_classification.py", ["--models", "xyz"], "unknown --models ['xyz']"),
    ("train_overhead.py", ["--data", "/no/such/folder"], "--data must be a folder"),
    ("translation.py", ["--max-test", "-3"], "argument --max-test: expected an int above 0"),
])
def test_bad_arguments_stop_with_a_usage_error(capsys, monkeypatch, script, argv, fragment):
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))  # as when run as a script
    module = load_script("benchmarks", script)
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize("content, fragment", [
    (b"not an archive", "is not a readable tar archive"),
    (None, "holds no <class>/<image>.jpg files"),
])
def test_gpu_script_refuses_an_unusable_archive(tmp_path, capsys, content, fragment):
    import tarfile

    path = tmp_path / "cifar.tar.gz"
    if content is None:
        (tmp_path / "notes.txt").write_text("no images")
        with tarfile.open(path, "w:gz") as tar:
            tar.add(tmp_path / "notes.txt", arcname="train/notes.txt")
    else:
        path.write_bytes(content)
    module = load_script("benchmarks", "gpu_jax.py")
    with pytest.raises(SystemExit) as info:
        module.main(["--archive", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err and "Traceback" not in err
