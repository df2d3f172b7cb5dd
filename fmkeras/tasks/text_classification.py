"""Text classification: labelled texts -> trained, evaluated, exported classifier.

``run(config)`` reads ``data.path`` (a TSV/CSV file with a header naming the
text and label columns, or a folder of label folders of ``.txt`` files) with
a problem report, splits it with a fixed seed, learns the vocabulary on the
training split only, trains a Transformer, LSTM or GRU classifier and
reports accuracy, macro F1, a per-class table and a confusion matrix. The
SavedModel classifies raw strings.

``model.encoder_path`` (a ``pretrain-mlm`` run directory or its
``mlm.keras``) starts the Transformer from that run: its ``vocabulary.txt``
replaces the learned one and its embedding and encoder blocks are copied in
(``model.d_model``, ``num_heads``, ``ff_dim``, ``num_layers`` and
``data.sequence_length`` must match it). ``lora.rank > 0`` trains low-rank
adapters instead of every weight; they are merged into the kernels before
export. ``metrics.json`` always has ``trainable_parameters`` and
``total_parameters``.
"""

from __future__ import annotations

import dataclasses
import os

from fmkeras import config as config_lib
from fmkeras.data import text as text_data
from fmkeras.errors import ConfigError, DataError, cwd_note
from fmkeras.evaluation import classification as cls_eval
from fmkeras.export import text as text_export
from fmkeras.models.recurrent import gru_classifier, lstm_classifier
from fmkeras.models.transformer import transformer_classifier
from fmkeras.tasks import base, transfer
from fmkeras.tasks.translation import (
    TextExportConfig,
    TextTrainConfig,
    check_train_config,
    compile_text_model,
    fit_text_model,
    report_counts,
)
from fmkeras.training import distribute
from fmkeras.training import lora as lora_lib
from fmkeras.training import precision as precision_lib

TASK = "text-classification"
MODEL_NAMES = ("transformer", "lstm", "gru")
# The model keys each builder reads besides name, encoder_path, num_layers and dropout.
MODEL_KEYS = {"transformer": ("d_model", "num_heads", "ff_dim", "pooling"),
              "lstm": ("embedding_dim", "units", "bidirectional"),
              "gru": ("embedding_dim", "units", "bidirectional")}


@dataclasses.dataclass
class TextDataConfig:
    """The labelled texts and how they are split, vectorised and batched."""

    path: str = "data/langid/langid.tsv"
    text_column: str = "text"
    label_column: str = "label"
    sequence_length: int = 32
    max_tokens: int = 10000
    validation_split: float = 0.1
    test_split: float = 0.2
    batch_size: int = 64
    max_chars: int | None = 500


@dataclasses.dataclass
class TextModelConfig:
    """Which classifier and its hyper-parameters.

    ``name`` is ``transformer`` (uses ``d_model``, ``num_heads``, ``ff_dim``,
    ``num_layers``, ``pooling``), ``lstm`` or ``gru`` (use ``embedding_dim``,
    ``units``, ``num_layers``, ``bidirectional``). ``encoder_path`` (a
    ``pretrain-mlm`` run directory or its ``mlm.keras``) starts the
    transformer from that run, with its vocabulary (``data.max_tokens`` is
    then unused).
    """

    name: str = "transformer"
    d_model: int = 64
    num_heads: int = 4
    ff_dim: int = 128
    num_layers: int = 1
    pooling: str = "cls"
    embedding_dim: int = 64
    units: int = 64
    bidirectional: bool = False
    dropout: float = 0.1
    encoder_path: str | None = None


@dataclasses.dataclass
class TextClassificationConfig(config_lib.RunSettings):
    """The full config of the text-classification task.

    Example:

    >>> config = TextClassificationConfig()
    >>> config.data.path, config.model.name
    ('data/langid/langid.tsv', 'transformer')
    """

    data: TextDataConfig = dataclasses.field(default_factory=TextDataConfig)
    model: TextModelConfig = dataclasses.field(default_factory=TextModelConfig)
    train: TextTrainConfig = dataclasses.field(default_factory=TextTrainConfig)
    export: TextExportConfig = dataclasses.field(
        default_factory=lambda: TextExportConfig(name="text_classifier"))
    lora: transfer.LoRAConfig = dataclasses.field(default_factory=transfer.LoRAConfig)


def build_model(model_config, vocab_size, sequence_length, num_classes):
    """Build the configured classifier (uncompiled).

    Example:

    >>> build_model(TextModelConfig(name="gru"), 100, 16, 3).name
    'gru_classifier'
    """
    m = model_config
    if m.name == "transformer":
        return transformer_classifier(vocab_size, sequence_length, num_classes,
                                      d_model=m.d_model, num_heads=m.num_heads, ff_dim=m.ff_dim,
                                      num_layers=m.num_layers, pooling=m.pooling,
                                      dropout=m.dropout)
    builders = {"lstm": lstm_classifier, "gru": gru_classifier}
    if m.name not in builders:
        raise ConfigError(f"Unknown model.name. Expected one of {list(MODEL_NAMES)}. "
                          f"Received: {m.name!r}")
    return builders[m.name](vocab_size, num_classes, embedding_dim=m.embedding_dim,
                            units=m.units, num_layers=m.num_layers,
                            bidirectional=m.bidirectional, dropout=m.dropout)


def load_texts(config):
    """Read ``data.path`` and split it: ``(splits, class_names, report)``.

    Example:

    >>> splits, names, _ = load_texts(TextClassificationConfig())
    >>> "es" in names and len(splits["test"]) > 0
    True
    """
    data = config.data
    if not os.path.exists(data.path):
        raise DataError("Text classification data not found. Expected a TSV/CSV file or a "
                        "folder of label folders. "
                        f"Received: data.path={data.path!r}{cwd_note(data.path)}")
    texts = text_data.read_labelled_text(data.path, data.text_column, data.label_column,
                                         max_chars=data.max_chars)
    if len(texts.class_names) < 2:
        raise DataError(f"Expected at least 2 labels in {data.path}. "
                        f"Received: {texts.class_names}")
    splits = texts.split(data.validation_split, data.test_split, config.seed)
    if not len(splits["train"]) or not len(splits["test"]):
        raise ConfigError(f"Expected training and test texts after splitting {len(texts)} "
                          f"texts. Received: data.test_split={data.test_split}, "
                          f"data.validation_split={data.validation_split}")
    return splits, texts.class_names, texts.report


def validate_data(config):
    """Every problem the run would repair or skip in ``data.path`` (``--validate-data``).

    Example:

    >>> validate_data(TextClassificationConfig())
    []
    """
    data = config.data
    if not os.path.exists(data.path):
        raise DataError("Text classification data not found. Expected a TSV/CSV file or a "
                        "folder of label folders. "
                        f"Received: data.path={data.path!r}{cwd_note(data.path)}")
    with text_data.report_every_problem():
        texts = text_data.read_labelled_text(data.path, data.text_column, data.label_column,
                                             max_chars=data.max_chars, warn=False)
    return text_data.report_problems(texts.report)


def _check_config(config):
    config_lib.check_common_keys(config, kind=TextClassificationConfig)
    check_train_config(config.train)
    if config.model.name not in MODEL_NAMES:
        raise ConfigError(f"Unknown model.name. Expected one of {list(MODEL_NAMES)}. "
                          f"Received: {config.model.name!r}")
    for key in ("sequence_length", "batch_size", "max_tokens"):
        if getattr(config.data, key) < 1:
            raise ConfigError(f"Expected data.{key} >= 1. Received: {getattr(config.data, key)}")
    transfer.check_lora_config(config.lora)
    if not config.model.encoder_path:  # (the encoder's own checks name what does not fit)
        config_lib.warn_unused(config.model, "model.", ("name", "encoder_path", "num_layers",
                                                        "dropout", *MODEL_KEYS[config.model.name]),
                               f"model.name={config.model.name}")


@base.keeps_global_settings
def run(config, callbacks=()):
    """Train, evaluate and export a text classifier as configured.

    Args:
        config: :class:`TextClassificationConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult`; with LoRA its ``model`` is the
        merged model (no adapters), the one exported.

    Example:

    >>> config = TextClassificationConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["test_accuracy"], result.metrics["macro_f1"]  # doctest: +SKIP
    """
    _check_config(config)
    budget = base.time_budget(config)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed, config.deterministic)
    splits, class_names, report = load_texts(config)
    data = config.data
    mlm = None
    if config.model.encoder_path:
        mlm = transfer.load_mlm_run(config.model.encoder_path)
        mlm.check_fits(config.model, data.sequence_length)
        vectorizer = text_data.text_vectorizer(data.sequence_length, vocabulary=mlm.vocabulary,
                                               name="text_vectorizer")
    else:
        vectorizer = text_data.text_vectorizer(data.sequence_length, data.max_tokens,
                                               texts=splits["train"].texts,
                                               name="text_vectorizer")
    base.prepare_run_dir(run_dir, config, TASK)
    text_data.save_vocabulary(vectorizer, os.path.join(run_dir, "vocab", "tokens.txt"))
    base.write_json(os.path.join(run_dir, "vocab", "labels.json"), list(class_names))
    policy = precision_lib.set_precision(config.precision)

    def dataset(name, shuffle=False):
        if not len(splits[name]):
            return None
        return text_data.classification_dataset(splits[name], vectorizer,
                                                dist.global_batch(data.batch_size),
                                                shuffle=shuffle, seed=config.seed)

    with base.model_scope(dist):
        model = build_model(config.model, vectorizer.vocabulary_size(), data.sequence_length,
                            len(class_names))
        if mlm is not None:
            mlm.copy_encoder(model)
        transfer.apply_lora(model, config.lora)
        compile_text_model(model, config, len(splits["train"]), dist=dist)
    identity = {"model": config_lib.to_dict(config.model),
                **({"lora": config_lib.to_dict(config.lora)} if config.lora.rank else {}),
                "data": {"path": data.path, "sequence_length": data.sequence_length,
                         "batch_size": data.batch_size, "classes": list(class_names),
                         "train_samples": len(splits["train"])}}
    fit_text_model(model, config, run_dir, dataset("train", shuffle=True),
                   dataset("validation"), identity, callbacks, dist=dist,
                   train_samples=len(splits["train"]))

    test = dataset("test")
    test_loss, _ = model.evaluate(test, verbose=0)
    probabilities = model.predict(test, verbose=0)
    scores = cls_eval.classification_metrics(splits["test"].labels, probabilities, class_names)
    metrics = {"test_accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
               "test_loss": float(test_loss), "precision_policy": policy,
               "model_name": config.model.name, "num_parameters": int(model.count_params()),
               "train_samples": len(splits["train"]), "test_samples": len(splits["test"]),
               "vocab_size": vectorizer.vocabulary_size(), **report_counts(report),
               **transfer.parameter_metrics(model), "lora_rank": config.lora.rank,
               **dist.describe(), **base.budget_metrics(budget)}
    if mlm is not None:
        metrics["encoder_path"] = mlm.model_path
    # The adapters are folded into the kernels: the export serves a plain model.
    if lora_lib.lora_layers(model):
        model = lora_lib.merge_lora(model)

    plots = os.path.join(run_dir, "plots")
    history = cls_eval.read_history(os.path.join(run_dir, "history.csv"))
    cls_eval.plot_training_curves(history, os.path.join(plots, "training_curves.png"))
    cls_eval.plot_confusion_matrix(scores["confusion_matrix"], class_names,
                                   os.path.join(plots, "confusion_matrix.png"))

    export_path = None
    if config.export.enabled:
        export_path = text_export.export_text_classifier(
            model, vectorizer, class_names, os.path.join(run_dir, "export"), config.export.name,
            sample_texts=splits["test"].texts[:2], check=config.export.check)
        metrics["export_path"] = export_path
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    problems = "\n".join(f"- {name}: {n} (e.g. {report.examples[name][0]})"
                         for name, n in sorted(report.counts.items())) or "none"
    base.write_report(run_dir, "Text classification", metrics, scores["per_class"],
                      ["plots/training_curves.png", "plots/confusion_matrix.png"],
                      sections=[("Data problems", problems)])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model,
                          export_path=export_path)

