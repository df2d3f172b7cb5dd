"""Typed run configs: dataclasses filled from YAML presets and ``--set`` overrides.

Every task defines a nested dataclass config. This module turns YAML
(read with ``yaml.safe_load`` only) and ``key.path=value`` overrides into
such a dataclass, checking every key and value type, and writes the resolved
config back to YAML.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import numbers
import os
import re
import sys
import types
import typing
import warnings

import yaml

from fmkeras.errors import ConfigError

PRESET_DIR = os.path.join(os.path.dirname(__file__), "configs")


def list_presets():
    """Names of the presets shipped in ``fmkeras/configs``.

    Example:

    >>> "digits_cnn" in list_presets()
    True
    """
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def resolve_config_path(path_or_preset):
    """Return the YAML file for a path or a preset name, or raise ``ConfigError``.

    Example:

    >>> os.path.basename(resolve_config_path("digits_cnn"))
    'digits_cnn.yaml'
    """
    if os.path.isfile(path_or_preset):
        return path_or_preset
    preset = os.path.join(PRESET_DIR, f"{path_or_preset}.yaml")
    if os.path.isfile(preset):
        return preset
    hint = _closest(path_or_preset, list_presets())
    raise ConfigError(
        f"Config not found. Expected a YAML file or a preset name ({', '.join(list_presets())})"
        f"{hint}. Received: {path_or_preset!r}")


def read_yaml(path):
    """Read a YAML mapping with ``yaml.safe_load`` (no Python object tags).

    Example:

    >>> read_yaml(resolve_config_path("digits_cnn"))["task"]
    'image-classification'
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        # One line: PyYAML's message spans several (the CLI prints errors as one line).
        raise ConfigError(f"Config file {path!r} is not valid YAML: "
                          f"{' '.join(str(err).split())}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read config file {path!r}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Expected a YAML mapping of config sections in {path!r}. "
            f"Received: {type(data).__name__}")
    return data


def _closest(key, candidates):
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _field_names(cls, prefix=""):
    """Every dotted key of a (nested) config dataclass."""
    names = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            names.extend(_field_names(hint, f"{prefix}{field.name}."))
        else:
            names.append(f"{prefix}{field.name}")
    return names


def _type_name(hint):
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value, hint, key):
    """Check ``value`` against the type ``hint``; allow int -> float and list -> tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(
            f"Wrong type for {key}. Expected {_type_name(hint)}. "
            f"Received: {value!r} ({type(value).__name__})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"Wrong type for {key}. Expected a list. Received: {value!r} "
                f"({type(value).__name__})")
        args = typing.get_args(hint)
        item = args[0] if args else typing.Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                f"Wrong type for {key}. Expected a mapping. Received: {value!r}")
        return dict(value)
    if hint is typing.Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        pass
    elif isinstance(value, hint):
        return value
    elif hint is str and isinstance(value, (int, float, datetime.date)) \
            and not isinstance(value, bool):
        return str(value)  # YAML reads 2024 and 2024-11-22 as a number and a date
    raise ConfigError(
        f"Wrong type for {key}. Expected {_type_name(hint)}. "
        f"Received: {value!r} ({type(value).__name__})")


def _is_path_key(key):
    """Whether a config key names a file or folder (``~`` is expanded in those)."""
    return key == "path" or key.endswith(("_path", "_dir", "weights"))


def from_dict(cls, data, prefix=""):
    """Build the config dataclass ``cls`` from a nested dict, checking keys and types.

    Unknown keys raise :class:`ConfigError` naming the key and the closest
    valid one.

    Args:
        cls: a dataclass type whose fields may be dataclasses themselves.
        data: dict. Values for some or all fields.
        prefix: str. Dotted prefix used in error messages.

    Returns:
        An instance of ``cls``.

    Example:

    >>> @dataclasses.dataclass
    ... class Train:
    ...     epochs: int = 1
    >>> from_dict(Train, {"epochs": 3})
    Train(epochs=3)
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"Expected a mapping for section {prefix.rstrip('.') or 'config'!r}. "
            f"Received: {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            valid = _field_names(cls, prefix)
            raise ConfigError(f"Unknown config key {full!r}{_closest(full, valid)}.")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, hint, full)
            if _is_path_key(key) and isinstance(kwargs[key], str):
                kwargs[key] = os.path.expanduser(kwargs[key])  # the shell leaves --set a=~/x
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Invalid config section {prefix.rstrip('.') or 'config'}: {err}")
    return instance


@dataclasses.dataclass
class RunSettings:
    """The run-level settings a task config shares with the others (its last YAML keys).

    ``precision`` (``auto``, ``float32``, ``mixed_float16``,
    ``mixed_bfloat16``), ``jit_compile`` (``auto`` measures), ``strategy``
    (``auto``, ``none``, ``mirrored``, ``multi_worker``, ``tpu``), ``seed``,
    ``deterministic`` (op determinism, slower), ``run_dir`` (default
    ``runs/<task>-<time>``), ``force_resume`` (resume even though
    settings changed) and ``checkpoint_every_s`` (the backup and best
    checkpoint are written at most this often, in seconds; 0 = every epoch;
    an interrupted or failed run still writes its last completed epoch
    before it exits, so only a hard kill loses up to this much work) and
    ``max_minutes`` (a limit on training time, null for none: training stops
    at the first batch past it, ends that epoch and goes on to evaluation
    and export; the schedule is not shortened, so size ``epochs`` to the
    time; a resumed run gets the whole limit again;
    :class:`fmkeras.training.callbacks.TimeBudget`).

    Example:

    >>> RunSettings().strategy, RunSettings().seed
    ('auto', 42)
    """

    precision: str = "auto"
    jit_compile: bool | str = "auto"
    strategy: str = "auto"
    seed: int = 42
    deterministic: bool = False
    run_dir: str | None = None
    force_resume: bool = False
    checkpoint_every_s: float = 30.0
    max_minutes: float | None = None

    def __post_init__(self):
        check_checkpoint_interval(self.checkpoint_every_s)
        if self.run_dir and os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise ValueError(f"run_dir must be a folder (new, or a run to resume). Received: "
                             f"{self.run_dir!r}, which is a file")


EXPORT_NAME = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"


@dataclasses.dataclass
class ExportSettings:
    """SavedModel export settings: ``<run_dir>/export/<name>/<version>``.

    ``enabled`` (export at the end of the run), ``name`` (the model's
    folder, TensorFlow Serving's ``model_name``: letters, digits, ``_``,
    ``-`` and ``.``, not first) and ``check`` (reload the export and compare
    its outputs with the in-memory model's). The name is checked here, so a
    bad one stops the run before training, not at the export after it.

    Example:

    >>> ExportSettings(name="digits_cnn").name
    'digits_cnn'
    >>> ExportSettings(name="../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected export.name of letters, ... Received: '../x'
    """

    enabled: bool = True
    name: str = "model"
    check: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(EXPORT_NAME, self.name):
            raise ValueError(f"Expected export.name of letters, digits, '_', '-' or '.' "
                             f"(not first). Received: {self.name!r}")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value, low=0):
    """Whether ``value`` is an int (not a bool) >= ``low``.

    Example:

    >>> is_count(3, 1), is_count(0, 1), is_count(True), is_count(2.0)
    (True, False, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value):
    """Whether ``value`` is a real number (int or float, not a bool or a string).

    Example:

    >>> is_number(0.1), is_number(3), is_number("0.1"), is_number(True)
    (True, True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _count(low):
    return lambda v: is_count(v, low)


_FRACTION = (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)")
_POSITIVE = (lambda v: _number(v) and v > 0, "> 0")
# Keys that mean the same in every task's config, with the values that can work.
# Checked by name wherever they appear, before any data is read.
COMMON_KEY_RULES = {
    "batch_size": (_count(1), "an integer >= 1"),
    "image_size": (_count(1), "an integer >= 1"),
    "steps_per_execution": (_count(1), "an integer >= 1"),
    "sequence_length": (_count(1), "an integer >= 1"),
    "max_tokens": (_count(1), "an integer >= 1"),
    "d_model": (_count(1), "an integer >= 1"),
    "num_heads": (_count(1), "an integer >= 1"),
    "ff_dim": (_count(1), "an integer >= 1"),
    "num_layers": (_count(1), "an integer >= 1"),
    "num_encoder_layers": (_count(1), "an integer >= 1"),
    "num_decoder_layers": (_count(1), "an integer >= 1"),
    "jit_compile": (lambda v: v in (True, False, "auto"), "true, false or 'auto'"),
    "early_stopping_patience": (lambda v: v is None or _count(0)(v),
                                "an integer >= 0, or null for none"),
    "max_chars": (lambda v: v is None or _count(1)(v), "an integer >= 1, or null"),
    "verbose": (lambda v: v in ("auto", 0, 1, 2) and not isinstance(v, bool),
                "'auto', 0, 1 or 2 (as in model.fit)"),
    "learning_rate": _POSITIVE,
    "head_learning_rate": _POSITIVE,
    "d_learning_rate": _POSITIVE,
    "g_learning_rate": _POSITIVE,
    "rescale": (lambda v: _number(v) and v > 0, "> 0 (1.0 keeps [0, 255] pixels)"),
    "weight_decay": (lambda v: v is None or (_number(v) and v >= 0), ">= 0, or null"),
    "label_smoothing": _FRACTION,
    "momentum": _FRACTION,
    "beta_1": _FRACTION,
    "dropout": _FRACTION,
    "validation_split": _FRACTION,
    "test_split": _FRACTION,
    "max_minutes": (lambda v: v is None or (_number(v) and v > 0),
                    "> 0 (minutes of training), or null for no limit"),
    "max_bad_fraction": (lambda v: _number(v) and 0 <= v <= 1, "in [0, 1]"),
    # MobileNet's width multiplier (model.alpha) and LoRA's scale (lora.alpha).
    "alpha": (lambda v: v is None or (_number(v) and v > 0), "> 0, or null"),
}


def check_common_keys(config, prefix="", kind=None):
    """Raise :class:`ConfigError` for a shared key (``COMMON_KEY_RULES``) out of range.

    Tasks call it first thing in ``run``, so ``train.weight_decay=-1`` or
    ``data.batch_size=0`` stops before any data is read or model trained;
    with ``kind`` (the task's config class) anything else given as the
    config stops too.

    Example:

    >>> @dataclasses.dataclass
    ... class Train:
    ...     verbose: str = "auto"
    ...     label_smoothing: float = 1.5
    >>> check_common_keys(Train(), "train.")
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: Expected train.label_smoothing in [0, 1). Received: 1.5
    """
    if kind is not None and not isinstance(config, kind):
        raise ConfigError(f"Expected the config to be {kind.__name__} (from load_config("
                          f"{kind.__name__}, preset, overrides)). Received: "
                          f"{type(config).__name__}")
    for field in dataclasses.fields(config):
        value, key = getattr(config, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            check_common_keys(value, f"{key}.")
        elif field.name in COMMON_KEY_RULES:
            valid, expected = COMMON_KEY_RULES[field.name]
            if not valid(value):
                raise ConfigError(f"Expected {key} {expected}. Received: {value!r}")


def warn_unused(section, prefix, used, reason):
    """Warn about keys of ``section`` set away from their defaults that ``reason`` leaves unused.

    A value nobody reads is most often a mistake (``model.depth`` set for
    ``model.name: simple_cnn``); the run goes on, with a warning naming it.

    Args:
        section: a config dataclass instance.
        prefix: str. Its dotted prefix, e.g. ``"model."``.
        used: iterable of field names the chosen setting reads.
        reason: str. The chosen setting, e.g. ``"model.name=simple_cnn"``.

    Example:

    >>> import warnings
    >>> @dataclasses.dataclass
    ... class Model:
    ...     name: str = "simple_cnn"
    ...     depth: int = 20
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_unused(Model(depth=56), "model.", {"name"}, "model.name=simple_cnn")
    >>> print(caught[0].message)
    model.depth=56 is not used with model.name=simple_cnn; it has no effect
    """
    default = type(section)()
    unused = [f"{prefix}{f.name}={getattr(section, f.name)!r}" for f in dataclasses.fields(section)
              if f.name not in set(used) and getattr(section, f.name) != getattr(default, f.name)]
    if unused:
        warnings.warn(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with "
                      f"{reason}; {'it has' if len(unused) == 1 else 'they have'} no effect",
                      UserWarning, stacklevel=3)


def check_checkpoint_interval(seconds):
    """Raise ``ValueError`` unless ``seconds`` is a number >= 0.

    Example:

    >>> check_checkpoint_interval(0)
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ValueError(f"checkpoint_every_s must be a number of seconds >= 0 (0 writes "
                         f"every epoch). Received: {seconds!r}")


_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunSettings))


def to_dict(config):
    """The config as plain nested dicts, lists and scalars (tuples become lists).

    Example:

    >>> @dataclasses.dataclass
    ... class Train:
    ...     sizes: tuple = (1, 2)
    >>> to_dict(Train())
    {'sizes': [1, 2]}
    """
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    values = plain(dataclasses.asdict(config))
    if isinstance(config, RunSettings):  # the task's own sections first, as in the presets
        values = {**{k: v for k, v in values.items() if k not in _RUN_KEYS},
                  **{k: values[k] for k in _RUN_KEYS}}
    return values


def parse_override(text):
    """Split ``"a.b=value"`` into ``("a.b", value)``, parsing the value as YAML.

    Example:

    >>> parse_override("train.epochs=3")
    ('train.epochs', 3)
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"Expected --set KEY=VALUE (e.g. train.epochs=3). Received: {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; users mean a number.
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key, value


def apply_overrides(data, overrides):
    """Apply ``key.path=value`` strings to a nested dict (returns a new dict).

    Example:

    >>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=5"])
    {'train': {'epochs': 5}}
    """
    data = _deep_copy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:  # absent, or an empty section in YAML ("train:")
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"Cannot set {key!r}: {part!r} is a value, not a section. Received: {text!r}")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


def load_config(cls, path_or_preset=None, overrides=(), defaults=None):
    """Load a config of type ``cls`` from a YAML file or preset plus overrides.

    Args:
        cls: the config dataclass of a task.
        path_or_preset: optional str. YAML path or preset name; ``None``
            starts from the dataclass defaults.
        overrides: iterable of ``"key.path=value"`` strings.
        defaults: optional dict applied before the file (rarely needed).

    Returns:
        An instance of ``cls``. A top-level ``task`` key in the file is
        accepted and ignored (the CLI reads it).

    Example:

    >>> from fmkeras.tasks.image_classification import ImageClassificationConfig
    >>> config = load_config(ImageClassificationConfig, "digits_cnn", ["train.epochs=2"])
    >>> config.train.epochs
    2
    """
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"Expected overrides as a list of 'KEY=VALUE' strings. "
                          f"Received: one string {overrides!r}")
    data = dict(defaults or {})
    if path_or_preset is not None:
        data.update(read_yaml(resolve_config_path(path_or_preset)))
    task = data.pop("task", None)
    wanted = getattr(sys.modules.get(cls.__module__), "TASK", None)
    if task is not None and wanted is not None and task != wanted:
        raise ConfigError(f"{path_or_preset!r} configures the {task!r} task. Expected a config "
                          f"for {wanted!r} ({cls.__name__})")
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def save_config(config, path, task=None):
    """Write the resolved config as YAML (with the task name first, if given).

    Example:

    >>> @dataclasses.dataclass
    ... class Train:
    ...     epochs: int = 1
    >>> save_config(Train(), "/tmp/fmkeras-example-config.yaml")
    """
    data = {"task": task} if task else {}
    data.update(to_dict(config))
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
