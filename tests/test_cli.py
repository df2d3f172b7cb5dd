"""``python -m fmkeras.train``: help, bad inputs as one line with a non-zero exit."""

import os
import subprocess
import sys
import warnings

import pytest
from conftest import REPO, write_image_folder

from fmkeras import train


def run_main(capsys, *argv):
    code = train.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == train.EXIT_USER_ERROR
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--strategy", "gpus"], "argument --strategy: invalid choice: 'gpus'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors_are_one_line_not_a_usage_block(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == train.EXIT_USER_ERROR and err.count("\n") == 1, err
    assert err.startswith("error: ") and fragment in err and "--help" in err


def test_help_lists_tasks_and_presets(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "image-classification" in out and "digits_cnn" in out and "--set" in out


def test_missing_data_directory(capsys, tmp_path):
    code, _, err = run_main(capsys, "--set", "data.path=/no/such/folder",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "not found", "/no/such/folder")


@pytest.mark.parametrize("task", ["image-classification", "translation", "pretrain-mlm"])
def test_default_data_from_another_folder_says_where_it_looked(capsys, tmp_path, monkeypatch,
                                                               task):
    monkeypatch.chdir(tmp_path)  # presets name data/... relative to the repository root
    code, _, err = run_main(capsys, task)
    assert_one_line_error(code, err, "not found", "data.path='data/", f"(looked in {tmp_path})")


def test_directory_without_images(capsys, tmp_path):
    os.makedirs(tmp_path / "data" / "cats")
    (tmp_path / "data" / "cats" / "readme.txt").write_text("no images here")
    code, _, err = run_main(capsys, "--set", f"data.path={tmp_path / 'data'}",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "without images", "cats")


def test_empty_class_folder(capsys, tmp_path):
    root = write_image_folder(tmp_path / "data")
    os.makedirs(os.path.join(root, "zebra"))
    code, _, err = run_main(capsys, "--set", f"data.path={root}", "--run-dir",
                            str(tmp_path / "r"))
    assert_one_line_error(code, err, "'zebra'")


@pytest.mark.parametrize("pipeline", ["tfdata", "image_data_generator"])
def test_one_class_folder_is_not_a_classification_dataset(capsys, tmp_path, pipeline):
    root = write_image_folder(tmp_path / "data" / "train", classes=("cat",))
    write_image_folder(tmp_path / "data" / "test", classes=("cat",))
    code, _, err = run_main(capsys, "--set", f"data.path={tmp_path / 'data'}", "--set",
                            f"data.pipeline={pipeline}", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "at least 2 class folders", "['cat']")
    assert root and not (tmp_path / "r").exists()
    code, _, err = run_main(capsys, "--set", f"data.path={tmp_path / 'data'}",
                            "--validate-data")  # the dry run says what the run would
    assert_one_line_error(code, err, "at least 2 class folders", "['cat']")


def test_run_dir_that_is_a_file_or_lies_under_one(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    code, _, err = run_main(capsys, "--run-dir", str(afile))
    assert_one_line_error(code, err, "run_dir must be a folder", "which is a file")
    code, _, err = run_main(capsys, "translation", "--run-dir", str(afile / "run"))
    assert_one_line_error(code, err, "Cannot create the run directory", "Not a directory")
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("task", ["image-classification", "translation", "image-generation",
                                  "fine-tune", "text-classification"])
def test_bad_export_name_fails_before_training(capsys, tmp_path, task):
    code, _, err = run_main(capsys, task, "--set", "export.name=../x", "--run-dir",
                            str(tmp_path / "r"))
    assert_one_line_error(code, err, "export.name", "Received: '../x'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("task, setting, fragment", [
    ("image-classification", "train.weight_decay=-1", "train.weight_decay >= 0, or null"),
    ("image-classification", "data.max_bad_fraction=2", "data.max_bad_fraction in [0, 1]"),
    ("image-classification", "train.steps_per_execution=0", "train.steps_per_execution"),
    ("image-classification", "train.label_smoothing=1", "train.label_smoothing in [0, 1)"),
    ("image-classification", "data.rescale=0", "data.rescale > 0 (1.0 keeps [0, 255] pixels)"),
    ("image-classification", "model.dense_units=-1", "Invalid model or training settings"),
    ("translation", "data.max_chars=0", "data.max_chars an integer >= 1, or null"),
    ("translation", "model.num_heads=0", "num_heads"),
    ("text-classification", "train.verbose=loud", "train.verbose 'auto', 0, 1 or 2"),
    ("text-classification", "train.early_stopping_patience=-1", "early_stopping_patience"),
    ("image-generation", "train.beta_1=1", "train.beta_1 in [0, 1)"),
    ("image-generation", "train.g_learning_rate=0", "train.g_learning_rate > 0"),
    ("fine-tune", "data.image_size=-1", "data.image_size an integer >= 1"),
    ("fine-tune", "train.head_learning_rate=-1", "train.head_learning_rate > 0"),
    ("fine-tune", "train.unfreeze_layers=-1", "train.unfreeze_layers >= 0"),
    ("fine-tune", "model.alpha=-1", "model.alpha > 0, or null"),
    ("text-classification", "lora.alpha=0", "lora.alpha > 0, or null"),
    ("pretrain-simclr", "data.batch_size=0", "data.batch_size an integer >= 1"),
    ("pretrain-simclr", "data.pipeline=image_data_generator", "data.pipeline='tfdata'"),
    ("pretrain-mlm", "model.dropout=1.5", "model.dropout in [0, 1)"),
    ("pretrain-mlm", "model.num_layers=-1", "model.num_layers an integer >= 1"),
    ("pretrain-mlm", "jit_compile=fast", "jit_compile true, false or 'auto'"),
])
def test_out_of_range_settings_fail_before_training(capsys, tmp_path, monkeypatch, task,
                                                    setting, fragment):
    import keras

    def no_fit(*args, **kwargs):
        raise AssertionError("reached model.fit")

    monkeypatch.setattr(keras.Model, "fit", no_fit)
    code, _, err = run_main(capsys, task, "--set", setting, "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, fragment)


def test_unknown_config_key_suggests(capsys):
    code, _, err = run_main(capsys, "--set", "train.epoch=3")
    assert_one_line_error(code, err, "train.epoch", "did you mean 'train.epochs'")


def test_wrong_value_type(capsys):
    code, _, err = run_main(capsys, "--set", "data.batch_size=big")
    assert_one_line_error(code, err, "data.batch_size", "int", "'big'")


def test_bad_muon_settings_fail_before_any_data_is_read(capsys, tmp_path):
    code, _, err = run_main(capsys, "--set", "train.optimizer=muon", "--set",
                            "train.muon_momentum=1.5", "--set", "data.path=/no/such/folder",
                            "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "train.muon_momentum < 1", "1.5")
    code, _, err = run_main(capsys, "--set", "train.optimizer=muon", "--set",
                            "train.muon_scale=0", "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, err, "train.muon_scale > 0", "0")


def test_unknown_task(capsys):
    code, _, err = run_main(capsys, "image-clasification")
    assert_one_line_error(code, err, "Unknown task", "did you mean 'image-classification'")


def test_config_for_another_task(capsys, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("task: translation\n")
    code, _, err = run_main(capsys, "--config", str(other))
    assert_one_line_error(code, err, "is for task 'translation'")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "fmkeras.train", "image-classification", "--set",
         "data.path=/no/such/folder", "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == train.EXIT_USER_ERROR
    assert "Traceback" not in proc.stderr
    assert "error: Image data folder not found" in proc.stderr


def test_real_process_prints_fmkeras_warnings_as_plain_lines(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=4)
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"not an image")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "fmkeras.train", "--set", f"data.path={root}", "--set",
         "train.epochs=1", "--set", "data.image_size=8", "--set", "model.filters=[4]",
         "--set", "export.enabled=false", "--set", "train.verbose=0", "--set",
         "data.max_bad_fraction=0.2",
         "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("warning: Skipping 1 of 9 image files") for line in lines)
    assert any(line.startswith("warning: train.warmup_epochs=1 is not below") for line in lines)
    assert "UserWarning" not in proc.stderr and "make_datasets(" not in proc.stderr


def test_plain_warning_format_is_only_for_fmkeras_and_only_inside_main():
    default = warnings.formatwarning
    with train._plain_warnings():
        own = warnings.formatwarning("Skipping 1", UserWarning, train.__file__, 3)
        other = warnings.formatwarning("careful", UserWarning, "/elsewhere/lib.py", 7)
    assert own == "warning: Skipping 1\n"
    assert other.startswith("/elsewhere/lib.py:7: UserWarning: careful")
    assert warnings.formatwarning is default


def test_cli_trains_and_prints_where_the_run_went(capsys, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=5)
    run_dir = tmp_path / "run"
    # The preset warms up for one epoch: a one-epoch run trains without warm-up.
    with pytest.warns(UserWarning, match="warmup_epochs=1 is not below train.epochs=1"):
        code, out, _ = run_main(
            capsys, "image-classification", "--config", "digits_cnn", "--set",
            f"data.path={root}", "--set", "train.epochs=1", "--set", "data.image_size=8",
            "--set", "data.color_mode=rgb", "--set", "export.check=false",
            "--run-dir", str(run_dir))
    assert code == 0
    assert f"Run directory: {run_dir}" in out
    assert "test_accuracy" in out
    assert (run_dir / "export" / "digits_cnn" / "1" / "saved_model.pb").exists()


def test_validate_data_lists_what_the_run_would_skip(capsys, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3)
    (tmp_path / "data" / "a" / "zero.png").write_bytes(b"")
    (tmp_path / "data" / "b" / "text.jpg").write_text("hello")
    code, out, _ = run_main(capsys, "--set", f"data.path={root}", "--validate-data")
    assert code == 0
    assert "zero.png: empty file" in out and "text.jpg: not a PNG" in out
    assert "2 problem(s) found" in out
    assert not (tmp_path / "runs").exists()
