"""The fmkeras command line: ``python -m fmkeras.train [TASK] [options]``.

With no arguments it trains the default CNN on the embedded digits
(``image-classification`` with the ``digits_cnn`` preset) and prints where
the run went. Errors a user can cause are printed as one line on stderr with
a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import signal
import sys
import threading
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out

# task name -> (module, config class, default preset)
TASKS = {
    "image-classification": ("fmkeras.tasks.image_classification",
                             "ImageClassificationConfig", "digits_cnn"),
    "translation": ("fmkeras.tasks.translation", "TranslationConfig", "en_es_transformer"),
    "text-classification": ("fmkeras.tasks.text_classification", "TextClassificationConfig",
                            "langid_transformer"),
    "image-generation": ("fmkeras.tasks.image_generation", "ImageGenerationConfig",
                         "digits_dcgan"),
    "fine-tune": ("fmkeras.tasks.fine_tune", "FineTuneConfig", "digits_finetune"),
    "pretrain-simclr": ("fmkeras.tasks.pretrain_simclr", "PretrainSimCLRConfig",
                        "digits_simclr"),
    "pretrain-mlm": ("fmkeras.tasks.pretrain_mlm", "PretrainMLMConfig", "langid_mlm"),
}
DEFAULT_TASK = "image-classification"
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15, as shells report it


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame):
    raise Terminated()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@contextlib.contextmanager
def _plain_warnings():
    """fmkeras' own warnings as ``warning: <message>`` lines, without file and source line.

    They are meant for the person at the terminal (skipped files, a shortened
    warm-up); other libraries' warnings keep Python's format.
    """
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = default


def positive(kind=int):
    """An ``argparse`` type for numbers of ``kind`` above 0 (budgets, counts).

    A bad value stops the parser with a one-line usage error naming it.

    Example:

    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--minutes", type=positive(float))
    >>> parser.parse_args(["--minutes", "2.5"]).minutes
    2.5
    >>> positive(int)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an int above 0, received '0'
    """
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(
                f"expected {'an' if kind is int else 'a'} {kind.__name__} above 0, "
                f"received {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line, like fmkeras' own."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser():
    """The argument parser (its ``--help`` lists tasks and presets).

    Example:

    >>> args = build_parser().parse_args(["translation", "--set", "train.epochs=2"])
    >>> args.task, args.overrides, args.validate_data
    ('translation', ['train.epochs=2'], False)
    """
    from fmkeras.config import list_presets

    epilog = ["tasks (default preset):"]
    epilog += [f"  {name:24s} {preset}" for name, (_, _, preset) in TASKS.items()]
    epilog += ["", f"presets: {', '.join(list_presets())}", "",
               "examples:",
               "  python -m fmkeras.train",
               "  python -m fmkeras.train image-classification --config digits_cnn "
               "--set train.epochs=3 --set data.image_size=32 --run-dir runs/demo"]
    parser = _Parser(
        prog="python -m fmkeras.train",
        description="Train, evaluate and export an fmkeras model.",
        epilog="\n".join(epilog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default=DEFAULT_TASK,
                        help=f"what to train (default: {DEFAULT_TASK})")
    parser.add_argument("--config", "-c", help="YAML file or preset name (default: the "
                        "task's preset)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "train.epochs=3 (repeatable)")
    parser.add_argument("--run-dir", help="where the run goes (default: runs/<task>-<time>); "
                        "rerunning with the same folder resumes an interrupted run")
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_float16",
                                                "mixed_bfloat16"],
                        help="dtype policy (overrides the config)")
    parser.add_argument("--strategy", choices=["auto", "none", "mirrored", "multi_worker",
                                               "tpu"],
                        help="tf.distribute strategy (overrides the config); multi_worker "
                        "reads TF_CONFIG")
    parser.add_argument("--max-minutes", type=positive(float), metavar="MINUTES",
                        help="stop training at the first batch past this many minutes, then "
                        "evaluate and export as usual (overrides max_minutes)")
    parser.add_argument("--force-resume", action="store_true",
                        help="resume an interrupted run even if its model, optimizer, batch "
                        "size or data changed")
    parser.add_argument("--validate-data", action="store_true",
                        help="dry run: list every data problem the run would skip, then exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _task_entry(task):
    from fmkeras.errors import ConfigError

    if task not in TASKS:
        match = difflib.get_close_matches(task, TASKS, n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"Unknown task {task!r}{hint}. Expected one of {sorted(TASKS)}.")
    module_name, config_name, preset = TASKS[task]
    module = importlib.import_module(module_name)
    return module, getattr(module, config_name), preset


def load_task_config(task, config_path=None, overrides=(), run_dir=None, precision=None,
                     force_resume=False, strategy=None, max_minutes=None):
    """Resolve the task's module and config from the CLI arguments.

    Example:

    >>> _, config = load_task_config("image-classification", overrides=["train.epochs=2"])
    >>> config.train.epochs
    2
    """
    from fmkeras import config as config_lib
    from fmkeras.errors import ConfigError

    module, config_cls, preset = _task_entry(task)
    source = config_path or preset
    file_task = config_lib.read_yaml(config_lib.resolve_config_path(source)).get("task")
    if file_task and file_task != task:
        raise ConfigError(f"Config {source!r} is for task {file_task!r}, not {task!r}. "
                          f"Run: python -m fmkeras.train {file_task} --config {source}")
    overrides = list(overrides)
    if run_dir:  # quoted: a folder named 2024-11-22, 1 or yes stays a string
        overrides.append(f"run_dir={json.dumps(run_dir)}")
    if precision:
        overrides.append(f"precision={precision}")
    if force_resume:
        overrides.append("force_resume=true")
    if strategy:
        overrides.append(f"strategy={strategy}")
    if max_minutes:
        overrides.append(f"max_minutes={max_minutes!r}")
    return module, config_lib.load_config(config_cls, source, overrides)


def _validate_data(task, module, config):
    from fmkeras.errors import ConfigError

    if not hasattr(module, "validate_data"):
        raise ConfigError(f"--validate-data is not available for task {task!r}.")
    problems = module.validate_data(config)
    for path, reason in problems:
        print(f"{path}: {reason}")
    print(f"{len(problems)} problem(s) found in {config.data.path}"
          + (" (these files would be skipped)" if problems else ""))
    return 0


def cpu_replicas_without_onednn(environ=os.environ):
    """Turn TensorFlow's oneDNN kernels off for a run on several logical CPUs.

    With ``FMKERAS_CPU_REPLICAS`` above 1 (a mirrored run tried on a machine
    without GPUs), the replicas run oneDNN's kernels at the same time, which
    crashes TensorFlow now and then on Intel CPUs with AVX-512 (a
    segmentation fault or an aborted process, half of the runs of a small
    ResNet on 2 replicas here; none with oneDNN off). Only sets
    ``TF_ENABLE_ONEDNN_OPTS=0`` when it is not set already, and only helps
    before TensorFlow is imported.

    Example:

    >>> env = {"FMKERAS_CPU_REPLICAS": "2"}
    >>> cpu_replicas_without_onednn(env)
    >>> env["TF_ENABLE_ONEDNN_OPTS"]
    '0'
    """
    try:
        replicas = int(environ.get("FMKERAS_CPU_REPLICAS", "1"))
    except ValueError:
        return  # named by the strategy's own check
    if replicas > 1:
        environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv=None):
    """Entry point; returns the process exit code.

    Example:

    >>> import signal
    >>> handler = signal.getsignal(signal.SIGTERM)  # main() installs its own
    >>> main(["translation", "--validate-data"])  # checks the data, trains nothing
    0 problem(s) found in data/translation/en-es.tsv
    0
    >>> _ = signal.signal(signal.SIGTERM, handler)
    """
    cpu_replicas_without_onednn()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        return _main(args)
    with _plain_warnings():
        return _main(args)


def _main(args):
    if threading.current_thread() is threading.main_thread():
        # A scheduler's SIGTERM stops at the next step; the last completed epoch is
        # already backed up, so rerunning the same command resumes from there.
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        module, config = load_task_config(args.task, args.config, args.overrides,
                                          args.run_dir, args.precision, args.force_resume,
                                          args.strategy, args.max_minutes)
        # The policy must be in force before the task builds any model.
        if args.validate_data:
            return _validate_data(args.task, module, config)
        from fmkeras.training.precision import set_precision
        set_precision(config.precision)
        result = module.run(config)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command with --run-dir to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("terminated (SIGTERM); training stopped after the last completed epoch, which is "
              "saved; rerun the same command with --run-dir to resume", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - the CLI turns every error into one line
        if args.debug:
            raise
        from fmkeras.errors import FmkerasError
        if isinstance(err, FmkerasError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"\nRun directory: {result.run_dir}")
    for key, value in result.metrics.items():
        if isinstance(value, float):
            print(f"  {key}: {value:.4f}")
    if result.metrics.get("stopped_by_time_budget"):
        print(f"  training stopped at the time budget (max_minutes: "
              f"{result.metrics['max_minutes']:g})")
    if result.export_path:
        print(f"  export: {result.export_path}")
    print(f"  report: {os.path.join(result.run_dir, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
