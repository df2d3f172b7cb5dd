"""Translation: a parallel TSV corpus -> trained, BLEU-scored, exported Transformer.

``run(config)`` reads ``data.path`` (``source<TAB>target`` lines) with a
problem report, splits it with a fixed seed, learns the vocabularies on the
training split only, trains :func:`fmkeras.models.transformer_seq2seq` with
teacher forcing (loss and accuracy ignore padding), decodes the held-out test
split inside a graph (greedy or beam search) and scores it with sacrebleu's
corpus BLEU and chrF. The SavedModel translates raw strings.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from fmkeras import config as config_lib
from fmkeras.data import text as text_data
from fmkeras.errors import ConfigError, DataError, cwd_note
from fmkeras.evaluation import classification as cls_eval
from fmkeras.export import text as text_export
from fmkeras.models.losses import SmoothedSparseCrossentropy, text_loss  # noqa: F401 - also here
from fmkeras.models.transformer import transformer_seq2seq
from fmkeras.tasks import base
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import distribute, optimizers
from fmkeras.training import precision as precision_lib

TASK = "translation"
SAMPLE_TRANSLATIONS = 10  # Rows of the report's sample table.


@dataclasses.dataclass
class TranslationDataConfig:
    """The parallel corpus and how it is split, vectorised and batched.

    ``path`` holds ``source<TAB>target`` lines (extra columns are ignored).
    Sentences longer than ``max_chars`` characters are cut; token sequences
    longer than ``sequence_length`` are cut.
    """

    path: str = "data/translation/en-es.tsv"
    sequence_length: int = 24
    source_vocab_size: int = 5000
    target_vocab_size: int = 5000
    validation_split: float = 0.1
    test_split: float = 0.1
    batch_size: int = 64
    max_chars: int | None = 300


@dataclasses.dataclass
class TranslationModelConfig:
    """Hyper-parameters of :func:`fmkeras.models.transformer_seq2seq`."""

    d_model: int = 64
    num_heads: int = 4
    ff_dim: int = 128
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.1


@dataclasses.dataclass
class TextTrainConfig:
    """Optimisation settings shared by the text tasks.

    ``schedule`` is ``constant``, ``cosine`` (linear warm-up for
    ``warmup_epochs`` then cosine decay) or ``plateau``.
    """

    epochs: int = 20
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    verbose: int | str = "auto"


@dataclasses.dataclass
class DecodeConfig:
    """How test sentences and served requests are decoded.

    ``max_length`` None generates up to ``data.sequence_length`` tokens.
    ``max_test_sentences`` caps how many test sentences are scored (None: all).
    """

    method: str = "greedy"
    beam_width: int = 4
    length_penalty: float = 0.6
    max_length: int | None = None
    batch_size: int = 128
    max_test_sentences: int | None = None


@dataclasses.dataclass
class TextExportConfig(config_lib.ExportSettings):
    """SavedModel export settings (``<run_dir>/export/<name>/<version>``)."""

    name: str = "translator"


@dataclasses.dataclass
class TranslationConfig(config_lib.RunSettings):
    """The full config of the translation task.

    Example:

    >>> config = TranslationConfig()
    >>> config.data.path, config.decode.method
    ('data/translation/en-es.tsv', 'greedy')
    """

    data: TranslationDataConfig = dataclasses.field(default_factory=TranslationDataConfig)
    model: TranslationModelConfig = dataclasses.field(default_factory=TranslationModelConfig)
    train: TextTrainConfig = dataclasses.field(default_factory=TextTrainConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    export: TextExportConfig = dataclasses.field(default_factory=TextExportConfig)


def check_train_config(train):
    """Raise :class:`ConfigError` for ``train.epochs`` < 1.

    The ranges of the shared keys are checked by
    :func:`fmkeras.config.check_common_keys`.

    Example:

    >>> check_train_config(TextTrainConfig(epochs=0))
    Traceback (most recent call last):
    ...
    fmkeras.errors.ConfigError: Expected train.epochs >= 1. Received: 0
    """
    if train.epochs < 1:
        raise ConfigError(f"Expected train.epochs >= 1. Received: {train.epochs}")


def compile_text_model(model, config, train_samples, metrics=("accuracy",), dist=None):
    """Compile ``model`` with the optimizer, schedule and loss of ``config.train``.

    Call it under ``dist.scope()``; ``dist`` (a ``Distribution``) sets the
    global batch the schedule counts steps with.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> model = compile_text_model(model, TranslationConfig(), train_samples=128)
    >>> type(model.optimizer).__name__, type(model.loss).__name__
    ('Adam', 'SparseCategoricalCrossentropy')
    """
    train = config.train
    steps = (dist or distribute.Distribution("none")).steps_per_epoch(
        train_samples, config.data.batch_size)
    lr = optimizers.learning_rate_schedule(
        train.learning_rate, train.schedule, total_steps=steps * train.epochs,
        warmup_steps=optimizers.warmup_steps_for(steps, train.warmup_epochs, train.epochs,
                                                 train.schedule))
    model.compile(optimizer=optimizers.build_optimizer(train.optimizer, lr, train.weight_decay),
                  loss=text_loss(train.label_smoothing), metrics=list(metrics),
                  jit_compile=config.jit_compile)
    return model


def fit_text_model(model, config, run_dir, train_ds, val_ds, identity, callbacks=(),
                   dist=None, train_samples=None):
    """``model.fit`` (under ``dist``) with the standard callbacks; then reload the best weights.

    ``train_samples`` (the examples in ``train_ds``, batched by the global
    batch) tells Keras the epoch's length under a strategy of several
    replicas, where :meth:`Distribution.dataset` may drop the last batch.
    """
    dist = dist or distribute.Distribution("none")
    identity = {**identity, "replicas": dist.replicas}
    resume = callbacks_lib.prepare_resume(run_dir)
    monitor = "val_loss" if val_ds is not None else "loss"
    callbacks = callbacks_lib.standard_callbacks(
        run_dir, monitor=monitor, early_stopping_patience=config.train.early_stopping_patience,
        reduce_lr_patience=2 if config.train.schedule == "plateau" else None, resume=resume,
        extra=list(callbacks), seed=config.seed, identity=identity,
        force_resume=config.force_resume, every_s=config.checkpoint_every_s)
    steps = (dist.steps_per_epoch(train_samples, config.data.batch_size)
             if train_samples is not None else None)
    try:
        dist.fit(model, dist.dataset(train_ds, steps=steps),
                 validation_data=val_ds, epochs=config.train.epochs, callbacks=callbacks,
                 verbose=config.train.verbose, shuffle=False)
    finally:
        callbacks_lib.after_fit(callbacks)
    best = os.path.join(run_dir, "checkpoints", "best.keras")
    if os.path.exists(best):
        model.load_weights(best)


def corpus_scores(hypotheses, references):
    """Corpus BLEU and chrF (sacrebleu, case-insensitive) of detokenised text.

    The models see lowercased text, so both scores ignore case.

    Example:

    >>> corpus_scores(["hola mundo"], ["Hola mundo"])["chrf"]
    100.0
    """
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True)
    chrf = sacrebleu.CHRF(lowercase=True).corpus_score(hypotheses, [references])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def validate_data(config):
    """Every problem the run would repair or skip in ``data.path`` (``--validate-data``).

    Example:

    >>> [problem for _, problem in validate_data(TranslationConfig())]
    []
    """
    data = config.data
    if not os.path.isfile(data.path):
        raise DataError("Translation corpus not found. Expected a TSV file of "
                        f"source<TAB>target lines. "
                        f"Received: data.path={data.path!r}{cwd_note(data.path)}")
    with text_data.report_every_problem():
        corpus = text_data.read_parallel_tsv(data.path, max_chars=data.max_chars, warn=False)
    return text_data.report_problems(corpus.report)


def _check_config(config):
    config_lib.check_common_keys(config, kind=TranslationConfig)
    check_train_config(config.train)
    data, decode = config.data, config.decode
    for key in ("source_vocab_size", "target_vocab_size"):  # the rest: check_common_keys
        if getattr(data, key) < 1:
            raise ConfigError(f"Expected data.{key} >= 1. Received: {getattr(data, key)}")
    if decode.method not in text_export.DECODE_METHODS:
        raise ConfigError(f"Unknown decode.method. Expected one of "
                          f"{list(text_export.DECODE_METHODS)}. Received: {decode.method!r}")
    _check_decode_config(decode, data.sequence_length)


def _check_decode_config(decode, sequence_length):
    """The decoding settings, checked before training rather than after it."""
    if not config_lib.is_count(decode.beam_width, 1):  # decode.batch_size: check_common_keys
        raise ConfigError(f"Expected decode.beam_width to be an integer >= 1. "
                          f"Received: {decode.beam_width!r}")
    if not decode.length_penalty >= 0:
        raise ConfigError(f"Expected decode.length_penalty >= 0. "
                          f"Received: {decode.length_penalty!r}")
    if decode.max_length is not None and not (
            config_lib.is_count(decode.max_length, 1) and decode.max_length <= sequence_length):
        raise ConfigError(f"Expected decode.max_length between 1 and data.sequence_length "
                          f"({sequence_length}), or null. Received: {decode.max_length!r}")
    if decode.max_test_sentences is not None and not config_lib.is_count(
            decode.max_test_sentences, 1):
        raise ConfigError(f"Expected decode.max_test_sentences >= 1, or null for all. "
                          f"Received: {decode.max_test_sentences!r}")


def load_corpus(config):
    """Read ``data.path`` and split it: ``(splits, report)``.

    Example:

    >>> splits, report = load_corpus(TranslationConfig())
    >>> len(splits["train"]) + len(splits["validation"]) + len(splits["test"]) == report.records
    True
    """
    data = config.data
    if not os.path.isfile(data.path):
        raise DataError(f"Translation corpus not found. Expected a source<TAB>target TSV "
                          f"file. "
                        f"Received: data.path={data.path!r}{cwd_note(data.path)}")
    corpus = text_data.read_parallel_tsv(data.path, max_chars=data.max_chars)
    splits = corpus.split(data.validation_split, data.test_split, config.seed)
    if not len(splits["train"]) or not len(splits["test"]):
        raise ConfigError(f"Expected training and test sentences after splitting "
                          f"{corpus.report.records} pairs. Received: data.test_split="
                          f"{data.test_split}, data.validation_split={data.validation_split}")
    return splits, corpus.report


def translate_texts(translate, texts, batch_size):
    """Translate a list of str in batches with a function from ``translator_fn``.

    Example:

    >>> translate_texts(tf.strings.upper, ["one", "two", "three"], batch_size=2)  # a stand-in
    ['ONE', 'TWO', 'THREE']
    """
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tf.constant(texts[start:start + batch_size])
        out.extend(t.decode("utf-8") for t in translate(batch).numpy())
    return out


def sample_table(sources, references, hypotheses, rows=SAMPLE_TRANSLATIONS):
    """A markdown table of the first ``rows`` source / reference / model triples.

    Example:

    >>> print(sample_table(["yes or no"], ["sí o no"], ["sí | no"]))
    | source | reference | model |
    |---|---|---|
    | yes or no | sí o no | sí \\| no |
    """
    def cell(text):
        return text.replace("|", "\\|")
    lines = ["| source | reference | model |", "|---|---|---|"]
    lines += [f"| {cell(s)} | {cell(r)} | {cell(h)} |"
              for s, r, h in list(zip(sources, references, hypotheses))[:rows]]
    return "\n".join(lines)


def report_counts(report):
    """The read report's counts as flat ``data_<problem>`` metrics.

    Example:

    >>> report_counts(text_data.ReadReport(lines=3, records=2, counts={"empty_line": 1}))
    {'data_lines': 3, 'data_records': 2, 'data_empty_line': 1}
    """
    counts = {"data_lines": report.lines, "data_records": report.records}
    counts.update({f"data_{name}": n for name, n in sorted(report.counts.items())})
    return counts


@base.keeps_global_settings
def run(config, callbacks=()):
    """Train, score (BLEU, chrF) and export an English -> Spanish style translator.

    Args:
        config: :class:`TranslationConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult`.

    Example:

    >>> config = TranslationConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    >>> result.metrics["bleu"], result.metrics["chrf"]  # doctest: +SKIP
    """
    _check_config(config)
    budget = base.time_budget(config)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed, config.deterministic)
    splits, report = load_corpus(config)
    data, model_config = config.data, config.model
    source_vec, target_vec = text_data.translation_vectorizers(
        splits["train"], data.sequence_length, data.source_vocab_size, data.target_vocab_size)
    base.prepare_run_dir(run_dir, config, TASK)
    text_data.save_vocabulary(source_vec, os.path.join(run_dir, "vocab", "source.txt"))
    text_data.save_vocabulary(target_vec, os.path.join(run_dir, "vocab", "target.txt"))
    policy = precision_lib.set_precision(config.precision)

    def dataset(name, shuffle=False):
        if not len(splits[name]):
            return None
        return text_data.translation_dataset(splits[name], source_vec, target_vec,
                                             dist.global_batch(data.batch_size),
                                             shuffle=shuffle, seed=config.seed)

    with base.model_scope(dist):
        model = transformer_seq2seq(
            source_vec.vocabulary_size(), target_vec.vocabulary_size(), data.sequence_length,
            d_model=model_config.d_model, num_heads=model_config.num_heads,
            ff_dim=model_config.ff_dim, num_encoder_layers=model_config.num_encoder_layers,
            num_decoder_layers=model_config.num_decoder_layers, dropout=model_config.dropout)
        compile_text_model(model, config, len(splits["train"]), dist=dist)
    identity = {"model": config_lib.to_dict(model_config),
                "data": {"path": data.path, "sequence_length": data.sequence_length,
                         "batch_size": data.batch_size, "train_samples": len(splits["train"])}}
    fit_text_model(model, config, run_dir, dataset("train", shuffle=True),
                   dataset("validation"), identity, callbacks, dist=dist,
                   train_samples=len(splits["train"]))

    test_loss, test_accuracy = model.evaluate(dataset("test"), verbose=0)
    decode = config.decode
    settings = dict(method=decode.method, beam_width=decode.beam_width,
                    length_penalty=decode.length_penalty, max_length=decode.max_length)
    translate = text_export.translator_fn(model, source_vec, target_vec, **settings)
    test = splits["test"]
    count = len(test) if decode.max_test_sentences is None else decode.max_test_sentences
    sources, references = test.sources[:count], test.targets[:count]
    hypotheses = translate_texts(translate, sources, decode.batch_size)
    metrics = {**corpus_scores(hypotheses, references), "test_loss": float(test_loss),
               "test_accuracy": float(test_accuracy), "precision_policy": policy,
               "num_parameters": int(model.count_params()),
               "train_samples": len(splits["train"]), "test_samples": len(test),
               "scored_sentences": len(hypotheses),
               "source_vocab_size": source_vec.vocabulary_size(),
               "target_vocab_size": target_vec.vocabulary_size(), **report_counts(report),
               **dist.describe(), **base.budget_metrics(budget)}

    history = cls_eval.read_history(os.path.join(run_dir, "history.csv"))
    cls_eval.plot_training_curves(history, os.path.join(run_dir, "plots", "training_curves.png"))

    export_path = None
    if config.export.enabled:
        export_path = text_export.export_translator(
            model, source_vec, target_vec, os.path.join(run_dir, "export"), config.export.name,
            sample_texts=sources[:2], check=config.export.check, **settings)
        metrics["export_path"] = export_path
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    problems = "\n".join(f"- {name}: {n} (e.g. {report.examples[name][0]})"
                         for name, n in sorted(report.counts.items())) or "none"
    base.write_report(run_dir, "Translation", metrics, plots=["plots/training_curves.png"],
                      sections=[("Sample translations", sample_table(sources, references,
                                                                     hypotheses)),
                                ("Data problems", problems)])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model,
                          export_path=export_path)
