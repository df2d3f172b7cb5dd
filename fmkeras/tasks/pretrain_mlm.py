"""Masked-language-model pretraining: unlabelled texts -> Transformer encoder + vocabulary.

``run(config)`` reads the texts of ``data.path`` (a TSV/CSV with a
``data.text_column``, or a ``.txt`` file, one text a line), learns a
vocabulary (plus a ``[mask]`` token), and trains
:func:`fmkeras.models.mlm.mlm_model` to restore masked tokens. The run
directory gets ``mlm.keras`` (the whole model), ``vocabulary.txt`` and
``metrics.json`` (``masked_accuracy`` on held-out texts).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from fmkeras import config as config_lib
from fmkeras.data import text as text_data
from fmkeras.errors import ConfigError, DataError, cwd_note
from fmkeras.evaluation import classification as cls_eval
from fmkeras.models.mlm import mask_tokens, mlm_model
from fmkeras.tasks import base
from fmkeras.training import callbacks as callbacks_lib
from fmkeras.training import distribute, optimizers
from fmkeras.training import precision as precision_lib

TASK = "pretrain-mlm"
MASK_TOKEN = "[mask]"


@dataclasses.dataclass
class MLMDataConfig:
    """Where the texts are and how they become token ids."""

    path: str = "data/langid/langid.tsv"
    text_column: str = "text"
    sequence_length: int = 32
    max_tokens: int = 5000
    batch_size: int = 64
    validation_split: float = 0.1
    mask_rate: float = 0.15
    max_chars: int | None = 500


@dataclasses.dataclass
class MLMModelConfig:
    """Encoder size (the names match ``transformer_classifier``'s)."""

    d_model: int = 64
    num_heads: int = 4
    ff_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.1


@dataclasses.dataclass
class MLMTrainConfig:
    """Optimisation settings."""

    epochs: int = 5
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    verbose: int | str = "auto"


@dataclasses.dataclass
class PretrainMLMConfig(config_lib.RunSettings):
    """The full config of the pretrain-mlm task.

    Example:

    >>> PretrainMLMConfig().data.mask_rate
    0.15
    """

    data: MLMDataConfig = dataclasses.field(default_factory=MLMDataConfig)
    model: MLMModelConfig = dataclasses.field(default_factory=MLMModelConfig)
    train: MLMTrainConfig = dataclasses.field(default_factory=MLMTrainConfig)


def read_texts(data_config):
    """The texts of ``data.path``: a ``.txt`` file (one a line) or a TSV/CSV column.

    Damaged lines are repaired or skipped and counted (see
    :func:`fmkeras.data.text.read_text_column`).

    Example:

    >>> len(read_texts(MLMDataConfig())) > 100
    True
    """
    path = data_config.path
    if not os.path.isfile(path):
        raise DataError(f"Text file not found. Expected a .txt, .tsv or .csv file. "
                        f"Received: data.path={path!r}{cwd_note(path)}")
    texts, _ = text_data.read_text_column(path, data_config.text_column,
                                          max_chars=data_config.max_chars)
    if len(texts) < 2:
        raise DataError(f"Expected at least 2 texts in {path!r}. Received: {len(texts)}")
    return texts


def validate_data(config):
    """Every problem the run would repair or skip in ``data.path`` (``--validate-data``).

    Example:

    >>> validate_data(PretrainMLMConfig())
    []
    """
    path = config.data.path
    if not os.path.isfile(path):
        raise DataError(f"Text file not found. Expected a .txt, .tsv or .csv file. "
                        f"Received: data.path={path!r}{cwd_note(path)}")
    with text_data.report_every_problem():
        _, report = text_data.read_text_column(path, config.data.text_column,
                                               max_chars=config.data.max_chars, warn=False)
    return text_data.report_problems(report)


BUCKET_WIDTH = 8


def _batch_count(ids, batch_size, min_batch=1):
    """Batches of :func:`_dataset`: every length bucket's full batches, and its
    last, partial one if it has ``min_batch`` texts or more."""
    lengths = np.count_nonzero(np.asarray(ids) > 0, axis=1)
    sizes = np.bincount(np.maximum(lengths - 1, 0) // BUCKET_WIDTH)
    return int(np.sum(sizes // batch_size + (sizes % batch_size >= min_batch)))


def _dataset(ids, config, mask_id, vocab_size, shuffle, seed_offset, batch_size):
    """Batches of ``(inputs, labels, weights)``, grouped by length and cut to it.

    Texts are short next to ``sequence_length`` (mostly padding), so each
    batch holds texts of one length bucket (``BUCKET_WIDTH`` tokens wide)
    and is cut to the bucket's width: the encoder and the vocabulary softmax
    then skip most padded positions (a few fixed widths keep XLA's compiles
    few). Padding never changes what real positions compute, so the model
    learns the same thing, only faster.
    """
    data = config.data
    ds = tf.data.Dataset.from_tensor_slices(ids)
    if shuffle:
        ds = ds.shuffle(len(ids), seed=config.seed, reshuffle_each_iteration=True)
    length = lambda row: tf.reduce_sum(tf.cast(row > 0, tf.int64))  # noqa: E731
    ds = ds.group_by_window(
        lambda row: tf.maximum(length(row) - 1, 0) // BUCKET_WIDTH,
        lambda _, window: window.batch(batch_size), window_size=batch_size)
    # Known in advance (each bucket's size is): Keras then sees the epoch's length.
    ds = ds.apply(tf.data.experimental.assert_cardinality(
        _batch_count(ids, batch_size))).enumerate()

    def corrupt(step, batch):
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(batch > 0, tf.int32), axis=1))
        width = tf.minimum(-(-tf.maximum(longest, 1) // BUCKET_WIDTH) * BUCKET_WIDTH,
                           tf.shape(batch)[1])
        seed = tf.stack([tf.cast(config.seed + seed_offset, tf.int64), step])
        return mask_tokens(batch[:, :width], mask_id, vocab_size, data.mask_rate, seed)

    return ds.map(corrupt, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@base.keeps_global_settings
def run(config, callbacks=()):
    """Pretrain a Transformer encoder by masked-token prediction.

    Args:
        config: :class:`PretrainMLMConfig`.
        callbacks: iterable of extra ``keras.callbacks.Callback`` for ``fit``.

    Returns:
        :class:`fmkeras.tasks.base.RunResult`; ``metrics["model_path"]`` is
        the saved ``mlm.keras``.

    Example:

    >>> config = PretrainMLMConfig()
    >>> config.train.epochs = 1
    >>> result = run(config)  # doctest: +SKIP
    """
    config_lib.check_common_keys(config, kind=PretrainMLMConfig)
    data, train = config.data, config.train
    if train.epochs < 1:
        raise ConfigError(f"Expected train.epochs >= 1. Received: {train.epochs}")
    if not 0.0 < data.mask_rate <= 1.0:
        raise ConfigError(f"Expected 0 < data.mask_rate <= 1. Received: {data.mask_rate}")
    budget = base.time_budget(config)
    dist = distribute.Distribution(config.strategy)  # first: before TensorFlow starts
    callbacks = [budget, *callbacks] if budget is not None else list(callbacks)
    run_dir = dist.write_dir(config.run_dir or base.default_run_dir(TASK))
    precision_lib.set_seed(config.seed, config.deterministic)
    texts = read_texts(data)
    split = text_data.split_indices(len(texts), data.validation_split, 0.0, config.seed)
    train_texts = [texts[i] for i in split["train"]]
    val_texts = [texts[i] for i in split["validation"]]
    if not val_texts:  # masked accuracy and the best checkpoint are measured on them
        raise DataError(f"Expected held-out texts to score the masked-language model. "
                        f"Received: none of {len(texts)} with data.validation_split="
                        f"{data.validation_split}; raise it (e.g. 0.1) or add texts")
    base.prepare_run_dir(run_dir, config, TASK)
    policy = precision_lib.set_precision(config.precision)

    learned = text_data.text_vectorizer(data.sequence_length, max(3, data.max_tokens - 1),
                                        texts=train_texts)
    vocabulary = [*learned.get_vocabulary(), MASK_TOKEN]
    vectorizer = text_data.text_vectorizer(data.sequence_length, vocabulary=vocabulary)
    mask_id, vocab_size = len(vocabulary) - 1, len(vocabulary)
    to_ids = lambda items: vectorizer(tf.constant(items)).numpy()  # noqa: E731
    batch = dist.global_batch(data.batch_size)
    train_ids = to_ids(train_texts)
    train_ds = _dataset(train_ids, config, mask_id, vocab_size, True, 0, batch)
    steps = _batch_count(train_ids, batch, dist.smallest_batch())
    val_ds = _dataset(to_ids(val_texts), config, mask_id, vocab_size, False, 1, batch)

    m = config.model
    with base.model_scope(dist):
        model = mlm_model(vocab_size, data.sequence_length, m.d_model, m.num_heads, m.ff_dim,
                          m.num_layers, m.dropout)
        model.compile(optimizer=optimizers.build_optimizer(train.optimizer, train.learning_rate,
                                                           train.weight_decay),
                      loss="sparse_categorical_crossentropy",
                      weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(
                          name="masked_accuracy")], jit_compile=config.jit_compile)
    history_path = os.path.join(run_dir, "history.csv")
    identity = {"model": config_lib.to_dict(m), "optimizer": base.optimizer_identity(train),
                "data": {"path": data.path, "batch_size": data.batch_size,
                         "sequence_length": data.sequence_length, "mask_rate": data.mask_rate,
                         "train_texts": len(train_texts), "vocab_size": vocab_size},
                "replicas": dist.replicas}
    fit_callbacks = [*callbacks_lib.resumable_callbacks(run_dir, identity, config.force_resume,
                                                        every_s=config.checkpoint_every_s),
                     *callbacks]
    try:
        dist.fit(model, dist.dataset(train_ds, steps=steps),
                 validation_data=val_ds,
                 epochs=train.epochs, callbacks=fit_callbacks, verbose=train.verbose,
                 shuffle=False)
    finally:
        callbacks_lib.after_fit(fit_callbacks)

    val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    model_path = os.path.join(run_dir, "mlm.keras")
    model.save(model_path)
    text_data.save_vocabulary(vocabulary, os.path.join(run_dir, "vocabulary.txt"))
    history = cls_eval.read_history(history_path)
    cls_eval.plot_training_curves(history, os.path.join(run_dir, "plots", "training_curves.png"))
    metrics = {"first_loss": history["loss"][0], "final_loss": history["loss"][-1],
               "val_loss": float(val_loss), "masked_accuracy": float(val_accuracy),
               "vocab_size": vocab_size, "mask_id": mask_id, "precision_policy": policy,
               "num_parameters": int(model.count_params()), "train_texts": len(train_texts),
               "model_path": model_path, **dist.describe(), **base.budget_metrics(budget)}
    base.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    base.write_report(run_dir, "Masked-language-model pretraining", metrics, None,
                      ["plots/training_curves.png"])
    base.finish_run(run_dir)
    return base.RunResult(run_dir=run_dir, metrics=metrics, model=model)
