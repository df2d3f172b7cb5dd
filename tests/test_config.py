"""Config loading: presets, --set overrides, unknown keys, wrong types, safe YAML."""

import dataclasses

import pytest

from fmkeras import config as config_lib
from fmkeras.errors import ConfigError
from fmkeras.tasks.image_classification import ImageClassificationConfig


def load(*overrides, source="digits_cnn"):
    return config_lib.load_config(ImageClassificationConfig, source, list(overrides))


def test_preset_by_name_and_overrides():
    config = load("train.epochs=3", "data.image_size=32", "model.filters=[8, 16]")
    assert config.train.epochs == 3
    assert config.data.image_size == 32
    assert config.model.filters == (8, 16)
    assert config.data.path == "data/digits"


def test_int_is_accepted_for_float_and_union_types():
    config = load("train.learning_rate=1", "jit_compile=false", "train.early_stopping_patience=3")
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.jit_compile is False
    assert config.train.early_stopping_patience == 3


def test_names_yaml_reads_as_numbers_or_dates_stay_strings():
    config = load("data.path=2024-11-22", "export.name=2024", "run_dir=1")
    assert (config.data.path, config.export.name, config.run_dir) == ("2024-11-22", "2024", "1")
    with pytest.raises(ConfigError, match="Wrong type for export.name"):
        load("export.name=true")  # yes/no/true stay refused: ambiguous
    from fmkeras.train import load_task_config

    for folder in ("2024-11-22", "1", "yes", "runs/a b"):  # --run-dir is always a folder name
        _, config = load_task_config("image-classification", run_dir=folder)
        assert config.run_dir == folder


@dataclasses.dataclass
class Named:
    name: str = ""


def test_a_home_folder_tilde_is_expanded_in_paths_only():
    import os

    config = load("data.path=~/images", "model.encoder_path=~/runs/e.keras")
    assert config.data.path == os.path.expanduser("~/images") != "~/images"
    assert config.model.encoder_path == os.path.expanduser("~/runs/e.keras")
    assert config_lib.from_dict(Named, {"name": "~x"}).name == "~x"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"Unknown config key 'train\.epoch'.*'train\.epochs'"):
        load("train.epoch=3")
    with pytest.raises(ConfigError, match=r"'data\.image_size'"):
        load("data.imagesize=3")


def test_wrong_type_names_key_expected_and_received():
    with pytest.raises(ConfigError) as info:
        load("train.epochs=three")
    message = str(info.value)
    assert "train.epochs" in message and "int" in message and "'three'" in message
    with pytest.raises(ConfigError, match="data.image_size"):
        load("data.image_size=true")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load("train.epochs")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load("seed.x=1")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'digits_cnn'"):
        load(source="digits_cn")


def test_yaml_python_tags_are_rejected_without_running(tmp_path):
    canary = tmp_path / "canary"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"seed: !!python/object/apply:os.system ['touch {canary}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load_config(ImageClassificationConfig, str(bad))
    assert not canary.exists()


def test_malformed_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        config_lib.load_config(ImageClassificationConfig, str(bad))
    assert "\n" not in str(caught.value)


def test_an_empty_section_takes_overrides(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("task: image-classification\ntrain:\n")
    config = config_lib.load_config(ImageClassificationConfig, str(path), ["train.epochs=3"])
    assert config.train.epochs == 3


def test_non_mapping_yaml(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_lib.load_config(ImageClassificationConfig, str(bad))


def test_save_and_reload_round_trip(tmp_path):
    config = load("train.epochs=4", "model.name=resnet")
    path = tmp_path / "config.yaml"
    config_lib.save_config(config, path, task="image-classification")
    again = config_lib.load_config(ImageClassificationConfig, str(path))
    assert again == config
    assert dataclasses.asdict(again)["model"]["name"] == "resnet"


def test_every_preset_loads():
    for name in config_lib.list_presets():
        data = config_lib.read_yaml(config_lib.resolve_config_path(name))
        assert "task" in data, name


def test_python_api_mistakes_are_named():
    with pytest.raises(ConfigError, match="'en_es_transformer' configures the 'translation' "
                                          "task. Expected a config for 'image-classification'"):
        config_lib.load_config(ImageClassificationConfig, "en_es_transformer")
    with pytest.raises(ConfigError, match="list of 'KEY=VALUE' strings. Received: one string "
                                          "'train.epochs=3'"):
        config_lib.load_config(ImageClassificationConfig, "digits_cnn", "train.epochs=3")


@pytest.mark.parametrize("task", ["image_classification", "translation", "text_classification",
                                  "image_generation", "pretrain_simclr", "pretrain_mlm",
                                  "fine_tune"])
def test_every_task_run_names_a_config_of_another_kind(task):
    import importlib

    module = importlib.import_module(f"fmkeras.tasks.{task}")
    with pytest.raises(ConfigError, match=r"Expected the config to be \w+Config .* Received: "
                                          r"dict"):
        module.run({"data": {"path": "data/digits"}})


@pytest.mark.parametrize("task, overrides, expected", [
    ("image_classification", ["model.depth=56"],
     r"model.depth=56 is not used with model.name=simple_cnn"),
    ("image_classification", ["train.muon_scale=0.1"],
     r"train.muon_scale=0.1 is not used with train.optimizer=adam"),
    ("image_classification", ["model.encoder_path=enc.keras", "data.rescale=1.0",
                              "model.filters=[8]"],
     r"model.filters=\(8,\) is not used with model.encoder_path"),
    ("text_classification", ["model.name=gru", "model.d_model=32", "model.ff_dim=64"],
     r"model.d_model=32, model.ff_dim=64 are not used with model.name=gru; they have"),
])
def test_keys_the_chosen_model_does_not_read_are_named(task, overrides, expected):
    import importlib

    module = importlib.import_module(f"fmkeras.tasks.{task}")
    cls = next(getattr(module, n) for n in dir(module)
               if n.endswith("Config") and n.startswith(("ImageClassification", "TextClass")))
    with pytest.warns(UserWarning, match=expected):
        module._check_config(config_lib.load_config(cls, None, overrides))


def test_presets_set_no_key_their_model_ignores():
    import importlib

    from fmkeras.train import TASKS

    checked = 0
    for name in config_lib.list_presets():
        task = config_lib.read_yaml(config_lib.resolve_config_path(name))["task"]
        module_name, class_name, _ = TASKS[task]
        module = importlib.import_module(module_name)
        config = config_lib.load_config(getattr(module, class_name), name)
        if task in ("image-classification", "text-classification") \
                and not config.model.encoder_path:  # (its checks read the encoder's files)
            module._check_config(config)  # a warning is an error in the test suite
            checked += 1
    assert checked >= 5


def test_lora_settings_without_a_rank_are_named():
    from fmkeras.tasks import transfer

    with pytest.warns(UserWarning, match=r"lora.patterns=\['\*query\*'\] is not used with "
                                         r"lora.rank=0 \(LoRA off\)"):
        transfer.check_lora_config(transfer.LoRAConfig(rank=0, patterns=["*query*"]))
