"""What every task shares: the run directory, its files and the result object."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys

from fmkeras import config as config_lib
from fmkeras.errors import ConfigError, FmkerasError
from fmkeras.training import precision as precision_lib


@dataclasses.dataclass
class RunResult:
    """What ``tasks.<task>.run(config)`` returns.

    Attributes:
        run_dir: str. The run directory.
        metrics: dict. The contents of ``metrics.json``.
        model: the trained ``keras.Model`` (best weights).
        export_path: optional str. The SavedModel version folder.
    """

    run_dir: str
    metrics: dict
    model: object = None
    export_path: str | None = None


def keeps_global_settings(run):
    """Decorate a task's ``run`` so it leaves the process' global settings as it found them.

    A run sets Keras' dtype policy and may turn on TensorFlow op determinism;
    see :func:`fmkeras.training.precision.global_settings_kept`.

    Example:

    >>> import keras
    >>> @keeps_global_settings
    ... def run(config):
    ...     return precision_lib.set_precision(config)
    >>> run("mixed_bfloat16"), keras.mixed_precision.global_policy().name
    ('mixed_bfloat16', 'float32')
    """
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with precision_lib.global_settings_kept():
            return run(*args, **kwargs)
    return wrapper


def with_global_batch(config, dist):
    """A copy of ``config`` whose ``data.batch_size`` is the global batch of ``dist``.

    Configs give the batch per replica; pipelines must be batched with the
    global batch, which the strategy splits across its replicas.

    Example:

    >>> from fmkeras.training.distribute import Distribution
    >>> @dataclasses.dataclass
    ... class D:
    ...     batch_size: int = 8
    >>> @dataclasses.dataclass
    ... class C:
    ...     data: D = dataclasses.field(default_factory=D)
    >>> with_global_batch(C(), Distribution("none")).data.batch_size
    8
    """
    if dist.replicas == 1:
        return config
    data = dataclasses.replace(config.data, batch_size=dist.global_batch(config.data.batch_size))
    return dataclasses.replace(config, data=data)


def optimizer_identity(train_config):
    """The training settings that must not change for a run to resume (not epochs, verbosity).

    Example:

    >>> @dataclasses.dataclass
    ... class T:
    ...     epochs: int = 3
    ...     learning_rate: float = 0.1
    >>> optimizer_identity(T())
    {'learning_rate': 0.1}
    """
    return {key: value for key, value in config_lib.to_dict(train_config).items()
            if key not in ("epochs", "verbose")}


def time_budget(config, per_fit=True):
    """The :class:`fmkeras.training.callbacks.TimeBudget` for ``config.max_minutes``.

    ``None`` when the config sets no limit. Refused (:class:`ConfigError`)
    when ``TF_CONFIG`` names several hosts, where each worker would stop by
    its own clock, a batch apart, and leave the others waiting in a
    collective; tasks call it before they start the strategy, so the error
    comes at once rather than after every worker has joined.

    Example:

    >>> from fmkeras.config import RunSettings
    >>> time_budget(RunSettings(max_minutes=15)).seconds
    900.0
    >>> time_budget(RunSettings()) is None
    True
    """
    from fmkeras.training import distribute
    from fmkeras.training.callbacks import TimeBudget

    if config.max_minutes is None:
        return None
    workers = distribute.num_workers()
    if workers > 1:
        raise ConfigError(f"max_minutes works on one machine (strategy none, mirrored or tpu): "
                          f"{workers} workers would each stop by their own clock. Set epochs "
                          f"instead. Received: max_minutes={config.max_minutes!r} with "
                          f"{workers} workers in TF_CONFIG")
    return TimeBudget(config.max_minutes * 60, per_fit=per_fit)


def budget_metrics(budget):
    """``metrics.json`` entries for a run's time budget (none without one).

    Example:

    >>> from fmkeras.training.callbacks import TimeBudget
    >>> budget_metrics(TimeBudget(90))
    {'max_minutes': 1.5, 'stopped_by_time_budget': False}
    >>> budget_metrics(None)
    {}
    """
    if budget is None:
        return {}
    return {"max_minutes": budget.seconds / 60, "stopped_by_time_budget": budget.stopped_early}


def default_run_dir(task):
    """``runs/<task>-<UTC timestamp>`` under the current directory.

    Example:

    >>> default_run_dir("image-classification").startswith("runs/image-classification-")
    True
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{task}-{stamp}")


@contextlib.contextmanager
def model_scope(dist):
    """``dist.scope()`` in which a builder's ``ValueError`` becomes a :class:`ConfigError`.

    Models, optimizers and metrics are built from the config here, so a
    value a builder refuses (``model.dense_units=-1``, ``model.num_heads=0``)
    is a mistake in the config: one line and exit code 2 from the CLI.

    Example:

    >>> import keras
    >>> from fmkeras.training.distribute import Distribution
    >>> with model_scope(Distribution("none")):  # doctest: +ELLIPSIS
    ...     keras.layers.Dense(-1)
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: Invalid model or training settings: ... units=-1
    """
    with dist.scope():
        try:
            yield
        except FmkerasError:
            raise
        except ValueError as err:
            raise ConfigError(f"Invalid model or training settings: {err}") from err


def prepare_run_dir(run_dir, config, task):
    """Create the run directory and write ``config.yaml`` before training starts.

    Args:
        run_dir: str. Folder to create (or reuse, to resume a run).
        config: the task's config dataclass.
        task: str. Task name, recorded in ``config.yaml``.

    Returns:
        str. The run directory.

    Example:

    >>> @dataclasses.dataclass
    ... class C:
    ...     seed: int = 1
    >>> path = prepare_run_dir("/tmp/fmkeras-example-run", C(), "demo")
    """
    try:
        os.makedirs(os.path.join(run_dir, "plots"), exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot create the run directory {run_dir!r}: {err.strerror} "
                          f"({err.filename}). Expected a folder fmkeras can write to "
                          f"(--run-dir or run_dir).") from err
    config_lib.save_config(config, os.path.join(run_dir, "config.yaml"), task=task)
    write_json(os.path.join(run_dir, "manifest.json"), manifest(config, task))
    return run_dir


def config_hash(config):
    """SHA-256 of the resolved config (canonical JSON), the same for equal configs.

    Example:

    >>> @dataclasses.dataclass
    ... class C:
    ...     seed: int = 1
    >>> config_hash(C()) == config_hash(C()) != config_hash(C(seed=2))
    True
    """
    text = json.dumps(config_lib.to_dict(config), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_revision():
    """The git commit of the fmkeras checkout in use (``-dirty`` if modified), or ``None``.

    Example:

    >>> git_revision() is None or len(git_revision()) >= 40
    True
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty else "")


def manifest(config, task):
    """What identifies a run: task, seed, config hash, versions, platform, git revision.

    Example:

    >>> @dataclasses.dataclass
    ... class C:
    ...     seed: int = 7
    >>> manifest(C(), "demo")["seed"]
    7
    """
    return {
        "task": task,
        "seed": getattr(config, "seed", None),
        "deterministic": getattr(config, "deterministic", None),
        "config_sha256": config_hash(config),
        "versions": package_versions(),
        "git_revision": git_revision(),
        "command": sys.argv,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def finish_run(run_dir):
    """Mark a run complete: remove its backups, so a rerun in ``run_dir`` starts afresh.

    Tasks call it last, after the metrics, report and export are written.
    Until then the backup of the last epoch stays, so a run interrupted while
    evaluating or exporting resumes there without training again.

    Example:

    >>> finish_run("/nonexistent/run")
    """
    from fmkeras.training import checkpoints

    checkpoints.remove_backups(run_dir)


def write_json(path, data):
    """Write ``data`` as indented JSON (atomically: temporary file then rename).

    Example:

    >>> write_json("/tmp/fmkeras-example.json", {"a": 1})
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def package_versions():
    """Versions of Python, the platform and the packages a run depends on.

    Example:

    >>> "tensorflow" in package_versions()
    True
    """
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("fmkeras", "tensorflow", "keras", "numpy", "scikit-learn"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_report(run_dir, title, metrics, per_class=None, plots=(), sections=()):
    """Write ``report.md``: metrics, per-class table, plots, config and versions.

    Args:
        run_dir: str. The run directory (holding ``config.yaml``).
        title: str. Report title.
        metrics: dict. Flat metrics, as in ``metrics.json``.
        per_class: optional list of per-class dicts (see
            :func:`fmkeras.evaluation.classification.per_class_table`).
        plots: iterable of image paths relative to ``run_dir``.
        sections: iterable of ``(heading, markdown)`` pairs added before the config.

    Example:

    >>> write_report("/tmp/fmkeras-example-run", "Demo", {"test_accuracy": 0.5})
    """
    from fmkeras.evaluation.classification import per_class_table

    lines = [f"# {title}", "", "## Metrics", "", "| metric | value |", "|---|---|"]
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    if per_class:
        lines += ["", "## Per-class results", "", per_class_table(per_class)]
    for plot in plots:
        name = os.path.splitext(os.path.basename(plot))[0].replace("_", " ")
        lines += ["", f"## {name.capitalize()}", "", f"![{name}]({plot})"]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body]
    config_path = os.path.join(run_dir, "config.yaml")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            lines += ["", "## Config", "", "```yaml", f.read().rstrip(), "```"]
    lines += ["", "## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in package_versions().items()]
    with open(os.path.join(run_dir, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
