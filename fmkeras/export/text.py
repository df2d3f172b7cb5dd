"""Text model export: translators and classifiers that serve raw strings.

Vectorisation (the same :func:`fmkeras.data.text.standardize_text` and
vocabulary the model was trained with) and, for translators, the whole
greedy or beam search run inside the SavedModel graph, so a client sends
``tf.string`` sentences and gets strings back.
"""

from __future__ import annotations

import shutil

import keras
import tensorflow as tf

from fmkeras.data.text import END_TOKEN, START_TOKEN
from fmkeras.export.core import (
    ExportError,
    check_class_names,
    check_export,
    check_tolerance,
    numpy_outputs,
    write_versioned,
)
from fmkeras.models.decoding import beam_search, greedy_search

DECODE_METHODS = ("greedy", "beam")
# Inputs every text export is checked on, besides the caller's samples.
CHECK_TEXTS = ("", "¿Dónde está el archivo?")

# Punctuation the standardisation spaced out, put back against its neighbours.
_DETOKENIZE_RULES = (
    (r" ([.,!?;:%)\]}»])", r"\1"),        # no space before closing punctuation
    (r"([¿¡(\[{«]) ", r"\1"),             # none after opening punctuation
    (r" ?([-'/_@]) ?", r"\1"),            # none around joiners: pack-files, it's
    (r"(\d)\. (\d)", r"\1.\2"),           # 1. 5 -> 1.5
    (r"^ +| +$", ""),
)


def detokenize(texts):
    """Joins standardised tokens back into readable text (string tensor in, out).

    Args:
        texts: string tensor of space-separated tokens, any shape.

    Returns:
        A string tensor of the same shape.

    Example:

    >>> print(detokenize(tf.constant(["¿ dónde está ? it ' s pack - files , 1 . 5"]))[0]
    ...       .numpy().decode())
    ¿dónde está? it's pack-files, 1.5
    """
    for pattern, rewrite in _DETOKENIZE_RULES:
        texts = tf.strings.regex_replace(texts, pattern, rewrite)
    return texts


def ids_to_text(ids, vocabulary, end_id):
    """Turns decoded ids ``(batch, length)`` into detokenised strings ``(batch,)``.

    Padding (0), ``[start]`` and everything from ``[end]`` on are dropped.

    Example:

    >>> vocab = ["", "[UNK]", "[start]", "[end]", "hola", "!"]
    >>> ids_to_text(tf.constant([[4, 5, 3, 4]]), vocab, end_id=3).numpy().tolist()
    [b'hola!']
    """
    ids = tf.cast(ids, tf.int32)
    before_end = tf.equal(tf.math.cumsum(tf.cast(tf.equal(ids, end_id), tf.int32), axis=1), 0)
    start_id = vocabulary.index(START_TOKEN) if START_TOKEN in vocabulary else -1
    keep = before_end & (ids > 0) & tf.not_equal(ids, start_id)
    words = tf.gather(tf.constant([str(t) for t in vocabulary]), ids)
    joined = tf.strings.reduce_join(tf.ragged.boolean_mask(words, keep), axis=-1, separator=" ")
    return detokenize(joined)


def check_vectorizer_fits(model, vectorizer, layer_name, role):
    """Raise :class:`ExportError` unless ``vectorizer``'s ids and length fit ``model``'s embedding.

    A vectorizer with more tokens, or longer outputs, than the embedding
    layer ``layer_name`` was built for fails deep inside a served graph (or,
    on a GPU, silently embeds zeros), and so does one without a fixed
    ``output_sequence_length``; a model without that layer is not checked.

    Example:

    >>> from fmkeras.data.text import text_vectorizer
    >>> from fmkeras.models import lstm_classifier
    >>> check_vectorizer_fits(lstm_classifier(3, 2), text_vectorizer(4, texts=["a b c"]),
    ...                       "embedding", "text")
    Traceback (most recent call last):
    ...
    fmkeras.export.core.ExportError: The text vectorizer has 5 tokens, more than the 3 ...
    """
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        return
    tokens = vectorizer.vocabulary_size()
    vocab = getattr(layer, "vocab_size", None) or getattr(layer, "input_dim", None)
    if vocab is not None and tokens > vocab:
        raise ExportError(f"The {role} vectorizer has {tokens} tokens, more than the {vocab} "
                          f"the model's {layer_name!r} layer embeds. Expected the vectorizer "
                          f"the model was trained with")
    length = vectorizer.get_config().get("output_sequence_length")
    limit = getattr(layer, "sequence_length", None)
    if length is None:
        size = limit or "N"
        raise ExportError(f"The {role} vectorizer has no output_sequence_length, so a served "
                          f"text longer than the model takes, or an empty one, fails in the "
                          f"graph. Expected a fixed length, e.g. TextVectorization("
                          f"output_sequence_length={size}) or "
                          f"fmkeras.data.text.text_vectorizer({size}, ...)")
    if length is not None and limit is not None and length > limit:
        raise ExportError(f"The {role} vectorizer makes sequences of {length} tokens, longer "
                          f"than the model's {limit}. Expected the vectorizer the model was "
                          f"trained with")


def translator_fn(model, source_vectorizer, target_vectorizer, method="greedy", beam_width=4,
                  length_penalty=0.6, max_length=None):
    """A function mapping a batch of raw source strings to translated strings.

    Args:
        model: a :func:`fmkeras.models.transformer_seq2seq` model.
        source_vectorizer: TextVectorization for the source side.
        target_vectorizer: TextVectorization for the target side (its
            vocabulary holds ``[start]`` and ``[end]``).
        method: str. ``"greedy"`` or ``"beam"``.
        beam_width: int. Beams for ``method="beam"``.
        length_penalty: float. GNMT length-penalty exponent for beam search.
        max_length: int or None. Most tokens generated; None uses the model's.

    Returns:
        A callable ``text -> translation`` on ``tf.string`` tensors ``(batch,)``,
        usable eagerly and inside a SavedModel signature.

    Example:

    >>> # translate = translator_fn(model, src, tgt); translate(tf.constant(["hello"]))
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"Unknown decode method. Expected one of {list(DECODE_METHODS)}. "
                         f"Received: method={method!r}")
    vocabulary = target_vectorizer.get_vocabulary()
    for token in (START_TOKEN, END_TOKEN):
        if token not in vocabulary:
            raise ValueError(f"Expected {token!r} in the target vocabulary. Received a "
                             f"vocabulary of {len(vocabulary)} tokens without it")
    start_id, end_id = vocabulary.index(START_TOKEN), vocabulary.index(END_TOKEN)
    check_vectorizer_fits(model, source_vectorizer, "encoder_embedding", "source")
    if model.output_shape[-1] > len(vocabulary):
        raise ExportError(f"The model predicts {model.output_shape[-1]} target tokens, more than "
                          f"the target vectorizer's {len(vocabulary)}. Expected the vectorizer "
                          f"the model was trained with")

    def translate(text):
        ids = tf.cast(source_vectorizer(text), tf.int32)
        if method == "beam":
            tokens = beam_search(model, ids, start_id, end_id, beam_width=beam_width,
                                 length_penalty=length_penalty, max_length=max_length)
        else:
            tokens = greedy_search(model, ids, start_id, end_id, max_length=max_length)
        return ids_to_text(tokens, vocabulary, end_id)

    return translate


def translator_archive(model, source_vectorizer, target_vectorizer, **decode):
    """An ``ExportArchive`` whose ``serving_default(text)`` returns ``translation``.

    Args:
        model: a :func:`fmkeras.models.transformer_seq2seq` model.
        source_vectorizer: TextVectorization for the source side.
        target_vectorizer: TextVectorization for the target side.
        **decode: ``method``, ``beam_width``, ``length_penalty``, ``max_length``
            as in :func:`translator_fn`.

    Returns:
        ``(archive, serve)``: the archive ready for ``write_out`` and the
        traced serving function, callable in memory on a ``tf.string`` batch.

    Example:

    >>> # archive, serve = translator_archive(model, src, tgt, method="beam")
    """
    translate = translator_fn(model, source_vectorizer, target_vectorizer, **decode)

    def serve(text):
        return {"translation": translate(text)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    source_vectorizer(tf.constant([""]))  # an adapted, never-called layer is not "built"
    archive.track(source_vectorizer)
    # The traced endpoint, not the eager function, is handed back: graph rewrites
    # change bfloat16 rounding, and a reloaded export runs the graph.
    serve = archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec((None,), tf.string, name="text")])
    return archive, serve


def text_classifier_archive(model, vectorizer, class_names):
    """An ``ExportArchive`` whose ``serving_default(text)`` returns ``probabilities``, ``label``.

    Args:
        model: a classifier of token ids returning probabilities.
        vectorizer: the TextVectorization it was trained with.
        class_names: list of str, returned as ``label``.

    Returns:
        ``(archive, serve)`` as in :func:`translator_archive`.

    Example:

    >>> from fmkeras.data.text import text_vectorizer
    >>> from fmkeras.models import lstm_classifier
    >>> vec = text_vectorizer(8, texts=["hola", "hello"])
    >>> archive, serve = text_classifier_archive(lstm_classifier(10, 2), vec, ["en", "es"])
    >>> serve(tf.constant(["hola"]))["label"].shape.as_list()
    [1]
    """
    check_class_names(model, class_names)
    check_vectorizer_fits(model, vectorizer, "embedding", "text")
    names = tf.constant([str(c) for c in class_names])

    def serve(text):
        ids = tf.cast(vectorizer(text), tf.int32)
        probabilities = tf.cast(model(ids, training=False), tf.float32)
        return {"probabilities": probabilities,
                "label": tf.gather(names, tf.argmax(probabilities, axis=-1))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    vectorizer(tf.constant([""]))  # an adapted, never-called layer is not "built"
    archive.track(vectorizer)
    # The traced endpoint, not the eager function, is handed back: graph rewrites
    # change bfloat16 rounding, and a reloaded export runs the graph.
    serve = archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec((None,), tf.string, name="text")])
    return archive, serve


def _write_and_check(model, archive, serve, export_root, name, samples, version, check):
    path = write_versioned(export_root, name, lambda p: archive.write_out(p, verbose=False),
                           version)
    if check:
        texts = [*CHECK_TEXTS, *(samples or [])]
        cases = []
        for batch in (texts[:1], texts[:4]):  # two batch sizes, empty and non-ASCII included
            cases.append({"signature": "serving_default", "input": "text",
                          "value": [t.encode("utf-8") for t in batch],
                          "expected": numpy_outputs(serve(tf.constant(batch)))})
        try:
            check_export(path, cases, atol=check_tolerance(model))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    return path


def export_translator(model, source_vectorizer, target_vectorizer, export_root, name,
                      sample_texts=None, version=None, check=True, **decode):
    """Export a translator serving raw strings, and check it after writing.

    Args:
        model: a :func:`fmkeras.models.transformer_seq2seq` model.
        source_vectorizer: TextVectorization for the source side.
        target_vectorizer: TextVectorization for the target side.
        export_root: str. E.g. ``<run_dir>/export``.
        name: str. Model name, the folder under ``export_root``.
        sample_texts: optional list of str used by the check, besides an
            empty string and a non-ASCII sentence.
        version: optional int. Defaults to the next free version.
        check: bool. Reload in a separate process (without fmkeras) and compare at two batch sizes.
        **decode: decoding settings, as in :func:`translator_fn`.

    Returns:
        str. The version folder written.

    Example:

    >>> # path = export_translator(model, src, tgt, "runs/x/export", "en_es")
    """
    archive, serve = translator_archive(model, source_vectorizer, target_vectorizer, **decode)
    return _write_and_check(model, archive, serve, export_root, name, sample_texts, version,
                            check)


def export_text_classifier(model, vectorizer, class_names, export_root, name,
                           sample_texts=None, version=None, check=True):
    """Export a text classifier serving raw strings, and check it after writing.

    Args:
        model: a classifier of token ids returning probabilities.
        vectorizer: the TextVectorization it was trained with.
        class_names: list of str, returned as ``label``.
        export_root: str. E.g. ``<run_dir>/export``.
        name: str. Model name, the folder under ``export_root``.
        sample_texts: optional list of str used by the check.
        version: optional int. Defaults to the next free version.
        check: bool. Reload in a separate process (without fmkeras) and compare at two batch sizes.

    Returns:
        str. The version folder written.

    Example:

    >>> # path = export_text_classifier(model, vec, ["en", "es"], "runs/x/export", "langid")
    """
    archive, serve = text_classifier_archive(model, vectorizer, class_names)
    return _write_and_check(model, archive, serve, export_root, name, sample_texts, version,
                            check)
