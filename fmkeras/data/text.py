"""Text corpora as tf.data pipelines: parallel TSV files and labelled text.

Files are read once in Python so that every problem in them can be counted
and named (file and line), then vectorised by ``keras.layers.TextVectorization``
with a standardisation that lowercases, keeps accented letters and splits off
punctuation. A damaged line is skipped or repaired and reported, never fatal:
the reader returns a :class:`ReadReport` and warns once with its summary.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import functools
import json
import os
import unicodedata
import warnings

import keras
import numpy as np
import tensorflow as tf

from fmkeras._scalars import accepts_numpy_scalars
from fmkeras.config import is_count
from fmkeras.errors import DataError

START_TOKEN = "[start]"
END_TOKEN = "[end]"
TEXT_EXTENSIONS = (".txt",)
_BOM = b"\xef\xbb\xbf"
_MAX_EXAMPLES = 5  # Examples kept per kind of problem in a report.
# ``None`` while listing every problem (``--validate-data``).
_EXAMPLE_LIMIT = contextvars.ContextVar("fmkeras_text_example_limit", default=_MAX_EXAMPLES)


@contextlib.contextmanager
def report_every_problem():
    """Within this block, reports keep every problem's location, not a few examples.

    Example:

    >>> with report_every_problem():
    ...     report = ReadReport()
    ...     for i in range(9):
    ...         report.add("empty_line", f"x.tsv:{i}")
    >>> len(report.examples["empty_line"])
    9
    """
    token = _EXAMPLE_LIMIT.set(None)
    try:
        yield
    finally:
        _EXAMPLE_LIMIT.reset(token)


@dataclasses.dataclass
class ReadReport:
    """What a reader met in its input: counts and a few examples per problem.

    Attributes:
        paths: list of str. Files read.
        lines: int. Lines (or files, for text folders) read.
        records: int. Records kept.
        counts: dict of str to int. Problem name to count: ``empty_line``,
            ``missing_tab``, ``missing_field``, ``extra_field``, ``unknown_label``,
            ``undecodable``, ``nul_bytes``, ``bom``, ``crlf``, ``truncated``.
        examples: dict of str to list of str. Up to five
            ``"path:line: detail"`` strings per problem.

    Example:

    >>> report = ReadReport(paths=["a.tsv"], lines=3, records=2)
    >>> report.add("empty_line", "a.tsv:2")
    >>> report.summary()
    'read 2 records from 3 lines of a.tsv; empty_line=1 (e.g. a.tsv:2)'
    """

    paths: list = dataclasses.field(default_factory=list)
    lines: int = 0
    records: int = 0
    counts: dict = dataclasses.field(default_factory=dict)
    examples: dict = dataclasses.field(default_factory=dict)

    def add(self, problem, where, detail=""):
        """Counts one ``problem`` found at ``where`` (``"path:line"``)."""
        self.counts[problem] = self.counts.get(problem, 0) + 1
        kept = self.examples.setdefault(problem, [])
        limit = _EXAMPLE_LIMIT.get()
        if limit is None or len(kept) < limit:
            kept.append(f"{where}: {detail}" if detail else where)

    def summary(self):
        """One line: records kept and each problem's count with a first example."""
        text = f"read {self.records} records from {self.lines} lines of {', '.join(self.paths)}"
        problems = [f"{name}={count} (e.g. {self.examples[name][0]})"
                    for name, count in sorted(self.counts.items())]
        return text + ("; " + "; ".join(problems) if problems else "")

    def as_dict(self):
        """The report as plain JSON-ready data."""
        return dataclasses.asdict(self)

    def warn(self):
        """Warns once with :meth:`summary` when any problem was counted."""
        if self.counts:
            warnings.warn(self.summary(), UserWarning, stacklevel=3)


def truncate_text(text, max_chars):
    """Cut ``text`` to ``max_chars`` code points, never between a letter and its accent.

    Returns ``(text, was_cut)``; never splits a character (it works on code
    points, not bytes) nor a base letter from its combining marks.

    Example:

    >>> truncate_text("cafe\u0301 noir", 4)
    ('caf', True)
    """
    if max_chars is None or len(text) <= max_chars:
        return text, False
    end = max_chars
    while end > 0 and unicodedata.combining(text[end]):
        end -= 1
    return text[:end], True


def _file_path(path, what="file"):
    """``path`` (a str or ``os.PathLike``) as a str; a clear error for anything else."""
    try:
        return os.fspath(path)
    except TypeError:
        raise DataError(f"Expected a {what} path (str or os.PathLike). Received: "
                        f"{path!r}") from None


def _check_max_chars(max_chars):
    if max_chars is not None and not is_count(max_chars, 1):
        raise DataError(f"Expected max_chars an integer >= 1, or None. Received: "
                        f"max_chars={max_chars!r}")


def _clean(raw, where, report):
    """``raw`` without a leading BOM, CR before LF, and NUL bytes, each counted."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
        report.add("bom", where, "UTF-8 byte order mark removed")
    if b"\r\n" in raw:
        raw = raw.replace(b"\r\n", b"\n")
        report.add("crlf", where)
    if bytes(1) in raw:
        report.add("nul_bytes", where, f"{raw.count(bytes(1))} NUL bytes removed")
        raw = raw.replace(bytes(1), b"")
    return raw


def _decode(raw, path, first_line, report, what):
    """``raw`` as UTF-8 text, or None (counted, with line and column) if it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        column = err.start - raw.rfind(b"\n", 0, err.start)
        report.add("undecodable", f"{path}:{line}", f"byte 0x{raw[err.start]:02x} at column "
                   f"{column} is not UTF-8; {what} skipped")
        return None


def _decoded_lines(path, report):
    """Yields ``(line_number, text)`` for each decodable line of ``path``."""
    if not os.path.isfile(path):
        raise DataError(f"Expected an existing text file. Received: path={path!r}")
    report.paths.append(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            report.lines += 1
            where = f"{path}:{number}"
            text = _decode(_clean(raw, where, report).rstrip(b"\n"), path, number, report,
                           "line")
            if text is not None:
                yield number, text


@dataclasses.dataclass
class ParallelText:
    """Aligned source and target sentences.

    Attributes:
        sources: list of str. Source sentences.
        targets: list of str. Target sentences, same length as ``sources``.
        report: ReadReport. What the reader met.

    Example:

    >>> pairs = ParallelText(["hi", "bye", "yes", "no"], ["hola", "adiós", "sí", "no"])
    >>> parts = pairs.split(validation_split=0.25, test_split=0.25, seed=0)
    >>> len(pairs), [len(parts[k]) for k in ("train", "validation", "test")]
    (4, [2, 1, 1])
    """

    sources: list
    targets: list
    report: ReadReport = dataclasses.field(default_factory=ReadReport)

    def __len__(self):
        return len(self.sources)

    def split(self, validation_split=0.1, test_split=0.1, seed=1337):
        """Splits into ``{"train", "validation", "test"}`` by :func:`split_indices`."""
        return {name: ParallelText([self.sources[i] for i in index],
                                   [self.targets[i] for i in index], self.report)
                for name, index in split_indices(len(self), validation_split, test_split,
                                                 seed).items()}


@dataclasses.dataclass
class LabelledText:
    """Texts with integer labels.

    Attributes:
        texts: list of str. The texts.
        labels: np.ndarray of int32. Index into ``class_names`` per text.
        class_names: list of str. Sorted label names.
        report: ReadReport. What the reader met.

    Example:

    >>> data = LabelledText(["hello", "hola", "bye", "adiós"], np.array([0, 1, 0, 1]),
    ...                     ["en", "es"])
    >>> test = data.split(validation_split=0.0, test_split=0.5, seed=0)["test"]
    >>> [data.class_names[i] for i in sorted(test.labels)]  # stratified: one of each label
    ['en', 'es']
    """

    texts: list
    labels: np.ndarray
    class_names: list
    report: ReadReport = dataclasses.field(default_factory=ReadReport)

    def __len__(self):
        return len(self.texts)

    def split(self, validation_split=0.1, test_split=0.1, seed=1337):
        """Stratified ``{"train", "validation", "test"}`` by :func:`split_indices`.

        Each label gives the same fractions, so a rare label is in every part
        it has texts enough for (training first).
        """
        return {name: LabelledText([self.texts[i] for i in index], self.labels[index],
                                   self.class_names, self.report)
                for name, index in split_indices(len(self), validation_split, test_split,
                                                 seed, labels=self.labels).items()}


@accepts_numpy_scalars
def split_indices(num_examples, validation_split=0.1, test_split=0.1, seed=1337, labels=None):
    """Shuffles ``range(num_examples)`` with ``seed`` and cuts it in three.

    With ``labels`` the cut is stratified: each label is cut in the same
    fractions, and a label with a few examples keeps one for training first,
    then gives one to test, then to validation (where the fraction asks for any).

    Args:
        num_examples: int. How many examples there are.
        validation_split: float. Fraction for validation, in ``[0, 1)``.
        test_split: float. Fraction for test, in ``[0, 1)``.
        seed: int. Shuffle seed; the same seed gives the same split.
        labels: optional int array of ``num_examples`` labels to stratify by.

    Returns:
        A dict with ``"train"``, ``"validation"`` and ``"test"`` int arrays.

    Example:

    >>> parts = split_indices(10, 0.2, 0.1, seed=0)
    >>> [len(parts[k]) for k in ("train", "validation", "test")]
    [7, 2, 1]
    """
    for key, value in (("validation_split", validation_split), ("test_split", test_split)):
        if not 0 <= value < 1:
            raise DataError(f"Expected `{key}` in [0, 1). Received: {key}={value!r}")
    if validation_split + test_split >= 1:
        raise DataError("Expected validation_split + test_split < 1. Received: "
                        f"validation_split={validation_split}, test_split={test_split}")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(num_examples)
        num_val = int(round(num_examples * validation_split))
        num_test = int(round(num_examples * test_split))
        return {"train": order[num_val + num_test:], "validation": order[:num_val],
                "test": order[num_val:num_val + num_test]}
    labels = np.asarray(labels)
    if labels.shape != (num_examples,):
        raise DataError(f"Expected one label per example ({num_examples}). "
                        f"Received: labels of shape {labels.shape}")
    parts = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        left = len(rows) - 1  # one for training
        num_test = min(_at_least_one(len(rows) * test_split), left)
        num_val = min(_at_least_one(len(rows) * validation_split), left - num_test)
        parts["test"].append(rows[:num_test])
        parts["validation"].append(rows[num_test:num_test + num_val])
        parts["train"].append(rows[num_test + num_val:])
    return {name: rng.permutation(np.concatenate(rows)).astype(np.int64)
            for name, rows in parts.items()}


def _at_least_one(count):
    """``round(count)``, but 1 for any positive count below 0.5."""
    return max(int(round(count)), 1) if count > 0 else 0


def read_parallel_tsv(path, max_chars=None, warn=True):
    """Reads ``source<TAB>target[<TAB>anything]`` lines into a :class:`ParallelText`.

    Empty lines, lines without a tab or with an empty side, undecodable bytes,
    NUL bytes, a BOM and CRLF line ends are counted in the report; sentences
    longer than ``max_chars`` code points are cut there (never inside a
    character).

    Args:
        path: str. The TSV file.
        max_chars: int or None. Longest sentence kept, in characters.
        warn: bool. Warn once with the report's summary if it found problems.

    Returns:
        A :class:`ParallelText`.

    Example:

    >>> corpus = read_parallel_tsv("data/translation/en-es.tsv")
    >>> len(corpus.sources) == len(corpus.targets)
    True
    """
    path = _file_path(path, "TSV file")
    _check_max_chars(max_chars)
    report = ReadReport()
    sources, targets = [], []
    for number, line in _decoded_lines(path, report):
        where = f"{path}:{number}"
        if not line.strip():
            report.add("empty_line", where)
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            report.add("missing_tab", where, "expected source<TAB>target; line skipped")
            continue
        if not fields[0].strip() or not fields[1].strip():
            report.add("missing_field", where, "empty source or target; line skipped")
            continue
        pair = []
        for text in fields[:2]:
            text, cut = truncate_text(text.strip(), max_chars)
            if cut:
                report.add("truncated", where, f"cut to {max_chars} characters")
            pair.append(text)
        sources.append(pair[0])
        targets.append(pair[1])
    report.records = len(sources)
    if not sources:
        raise DataError(f"Expected at least one source<TAB>target line in {path}. "
                        f"Received: none ({report.summary()})")
    if warn:
        report.warn()
    return ParallelText(sources, targets, report)


def _rows(path, report):
    """Yields ``(line_number, fields)``: CSV for ``.csv`` paths, else tab-separated."""
    lines = _decoded_lines(path, report)
    if not path.lower().endswith(".csv"):
        for number, text in lines:
            yield number, text.split("\t")
        return
    numbers = [0]

    def texts():
        for number, text in lines:
            numbers.append(number)
            yield text + "\n"  # keeps newlines inside quoted fields
    reader = csv.reader(texts())
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"Expected valid CSV in {path}. Received at line {numbers[-1]}: "
                            f"{err}") from None
        yield numbers[-1], row


def _extra_fields(row, header, where, report):
    """Count and report a row with more fields than the header (a tab inside a text)."""
    if len(row) <= len(header):
        return False
    report.add("extra_field", where, f"{len(row)} fields, the header has {len(header)} (a "
               f"tab or an unquoted comma inside a text?); line skipped")
    return True


def _read_labelled_table(path, text_column, label_column, max_chars, report):
    texts, labels, columns = [], [], None
    for number, row in _rows(path, report):
        where = f"{path}:{number}"
        if not any(field.strip() for field in row):
            report.add("empty_line", where)
            continue
        if columns is None:
            header = [field.strip() for field in row]
            if text_column not in header or label_column not in header:
                raise DataError(
                    f"Expected a header with columns {text_column!r} and {label_column!r} in "
                    f"{path} (other names: data.text_column, data.label_column; a .csv is "
                    f"comma-separated, a .tsv tab-separated). Received: {header}")
            columns = header.index(text_column), header.index(label_column)
            continue
        if _extra_fields(row, header, where, report):
            continue
        if len(row) <= max(columns) or not row[columns[0]].strip() \
                or not row[columns[1]].strip():
            report.add("missing_field", where, f"expected {text_column} and {label_column}; "
                       "line skipped")
            continue
        text, cut = truncate_text(row[columns[0]].strip(), max_chars)
        if cut:
            report.add("truncated", where, f"cut to {max_chars} characters")
        texts.append(text)
        labels.append(row[columns[1]].strip())
    return texts, labels


def read_text_column(path, text_column="text", max_chars=None, warn=True):
    """Unlabelled texts: the lines of a ``.txt`` file, or one column of a TSV/CSV file.

    Damaged input is repaired or skipped and counted as in
    :func:`read_parallel_tsv` (BOM, CRLF, NUL bytes, undecodable bytes,
    empty lines, over-long texts cut at ``max_chars``).

    Returns:
        ``(texts, report)``: list of str and a :class:`ReadReport`.

    Example:

    >>> texts, report = read_text_column("data/langid/langid.tsv")
    >>> len(texts) == report.records > 100
    True
    """
    report = ReadReport()
    texts = []
    path = _file_path(path, "text file")
    _check_max_chars(max_chars)
    header = None
    if path.lower().endswith(".txt"):
        rows = ((number, [text]) for number, text in _decoded_lines(path, report))
        column = 0
    else:
        rows, column = _rows(path, report), None
    for number, row in rows:
        where = f"{path}:{number}"
        if not any(field.strip() for field in row):
            report.add("empty_line", where)
            continue
        if column is None:
            header = [field.strip() for field in row]
            if text_column not in header:
                raise DataError(f"Expected a header with a {text_column!r} column in {path}. "
                                f"Received: {header}")
            column = header.index(text_column)
            continue
        if header is not None and _extra_fields(row, header, where, report):
            continue
        if len(row) <= column or not row[column].strip():
            report.add("missing_field", where, f"expected {text_column}; line skipped")
            continue
        text, cut = truncate_text(row[column].strip(), max_chars)
        if cut:
            report.add("truncated", where, f"cut to {max_chars} characters")
        texts.append(text)
    report.records = len(texts)
    if warn:
        report.warn()
    return texts, report


def report_problems(report):
    """``(location, problem)`` pairs of a :class:`ReadReport`, for ``--validate-data``.

    Example:

    >>> report = ReadReport()
    >>> report.add("empty_line", "a.tsv:3")
    >>> report_problems(report)
    [('a.tsv:3', 'empty_line')]
    """
    return [(where, problem) for problem, places in sorted(report.examples.items())
            for where in places]


def _read_text_folder(root, max_chars, report):
    texts, labels = [], []
    report.paths.append(root)
    for label in sorted(os.listdir(root)):
        folder = os.path.join(root, label)
        if label.startswith(".") or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or not name.lower().endswith(TEXT_EXTENSIONS):
                continue
            path = os.path.join(folder, name)
            report.lines += 1
            with open(path, "rb") as handle:
                text = _decode(_clean(handle.read(), path, report), path, 1, report, "file")
            if text is None:
                continue
            text = text.strip()
            if not text:
                report.add("empty_line", path, "empty file skipped")
                continue
            text, cut = truncate_text(text, max_chars)
            if cut:
                report.add("truncated", path, f"cut to {max_chars} characters")
            texts.append(text)
            labels.append(label)
    return texts, labels


def read_labelled_text(path, text_column="text", label_column="label", max_chars=None,
                       class_names=None, warn=True):
    """Reads labelled texts from a TSV/CSV file or a ``root/<label>/*.txt`` folder.

    A table needs a header naming ``text_column`` and ``label_column``
    (``.csv`` files are parsed as CSV, anything else as TSV). In a folder
    each ``.txt`` file is one text and its folder name is the label.
    Problems are counted in the report as in :func:`read_parallel_tsv`.

    Args:
        path: str. A ``.tsv``/``.csv`` file or a folder of label folders.
        text_column: str. Header of the text column.
        label_column: str. Header of the label column.
        max_chars: int or None. Longest text kept, in characters.
        class_names: list of str or None. Label order; None sorts the labels
            found. Texts whose label is not listed are counted as
            ``unknown_label`` and skipped.
        warn: bool. Warn once with the report's summary if it found problems.

    Returns:
        A :class:`LabelledText`.

    Example:

    >>> data = read_labelled_text("data/langid/langid.tsv")
    >>> "es" in data.class_names
    True
    """
    path = _file_path(path, "TSV/CSV file or folder")
    _check_max_chars(max_chars)
    if class_names is not None and (isinstance(class_names, (str, bytes))
                                    or not all(isinstance(c, str) for c in class_names)):
        raise DataError(f"Expected class_names a list of label strings, or None. Received: "
                        f"class_names={class_names!r}")
    report = ReadReport()
    if os.path.isdir(path):
        texts, labels = _read_text_folder(path, max_chars, report)
    elif os.path.isfile(path):
        texts, labels = _read_labelled_table(path, text_column, label_column, max_chars, report)
    else:
        raise DataError("Expected a TSV/CSV file or a folder of label folders. "
                        f"Received: path={path!r}, which does not exist")
    if not texts:
        raise DataError(f"Expected at least one labelled text in {path}. Received: none "
                        f"({report.summary()})")
    names = sorted(set(labels)) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(names)}
    kept = [i for i, label in enumerate(labels) if label in index]
    for i in sorted(set(range(len(labels))) - set(kept)):
        report.add("unknown_label", path, f"label {labels[i]!r} not in class_names")
    if not kept:
        raise DataError(f"Expected texts labelled with one of class_names={names!r} in {path}. "
                        f"Received: only the labels {sorted(set(labels))!r}")
    report.records = len(kept)
    if warn:
        report.warn()
    return LabelledText([texts[i] for i in kept],
                        np.array([index[labels[i]] for i in kept], dtype=np.int32),
                        names, report)


@functools.cache
def _compositions():
    """Unicode's canonical (base, mark) -> composed pairs of the BMP, Hangul left out.

    Returns sorted int64 keys ``base * 0x110000 + mark`` and the composed code points.
    """
    pairs = {}
    for code in range(0x10000):
        parts = unicodedata.decomposition(chr(code)).split()
        if (0xAC00 <= code <= 0xD7A3 or len(parts) != 2 or parts[0].startswith("<")):
            continue
        base, mark = (int(part, 16) for part in parts)
        if unicodedata.normalize("NFC", chr(base) + chr(mark)) == chr(code):  # not excluded
            pairs[base * 0x110000 + mark] = code
    keys = np.array(sorted(pairs), np.int64)
    return keys, np.array([pairs[k] for k in keys], np.int32)


def compose_marks(texts):
    """Joins a letter and a following combining mark into one code point, as NFC does.

    Text copied from macOS or some PDFs spells ``é`` as ``e`` + U+0301; without
    this, both spellings become different tokens (or ``[UNK]``). Runs in the
    graph, so exported models do the same; two passes join up to two marks
    (Vietnamese ``ệ``). Hangul jamo are left as they are.

    Args:
        texts: tf.Tensor of dtype string (UTF-8), any shape.

    Returns:
        A string tensor of the same shape.

    Example:

    >>> compose_marks(tf.constant(["cafe\u0301"])).numpy()[0].decode() == "caf\u00e9"
    True
    """
    texts = tf.convert_to_tensor(texts, tf.string)
    return tf.reshape(_compose_flat(tf.reshape(texts, [-1])), tf.shape(texts))


# Traced once per process: a pipeline or export that calls standardize_text
# gets a call to this graph instead of building it again (0.6 s each time).
@tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
def _compose_flat(texts):
    keys, values = _compositions()
    codes = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
    for _ in range(2):
        flat = tf.cast(codes.flat_values, tf.int64)
        rows = codes.value_rowids()
        size = tf.size(flat)
        following = tf.concat([flat[1:], [0]], 0)[:size]
        same_row = tf.equal(rows, tf.concat([rows[1:], [-1]], 0)[:size])
        key = flat * 0x110000 + following
        at = tf.minimum(tf.searchsorted(keys, key), len(keys) - 1)
        joins = tf.logical_and(tf.equal(tf.gather(keys, at), key), same_row)
        joins = tf.logical_and(joins, tf.logical_not(_shifted(joins)))  # no chains
        merged = tf.where(joins, tf.cast(tf.gather(values, at), tf.int64), flat)
        keep = tf.logical_not(_shifted(joins))
        codes = tf.RaggedTensor.from_value_rowids(
            tf.cast(tf.boolean_mask(merged, keep), tf.int32), tf.boolean_mask(rows, keep),
            nrows=codes.nrows())
    return tf.strings.unicode_encode(codes, "UTF-8")


def _shifted(flags):
    """``flags`` moved one place on: whether the previous position was set."""
    return tf.concat([[False], flags[:-1]], 0)[:tf.size(flags)]


@keras.saving.register_keras_serializable(package="fmkeras")
def standardize_text(texts):
    """Lowercases and spaces out punctuation, keeping accents and other scripts.

    ``[start]`` and ``[end]`` survive as single tokens. A letter followed by
    combining marks is joined as NFC spells it (:func:`compose_marks`), and
    every Unicode space (no-break, narrow, ideographic) separates words as a
    plain space does.

    Args:
        texts: tf.Tensor of dtype string. Raw texts, any shape.

    Returns:
        A string tensor of the same shape.

    Example:

    >>> standardize_text(tf.constant(["¿Dónde está?"])).numpy()[0].decode()
    ' ¿ dónde está ? '
    """
    texts = tf.cond(tf.reduce_any(tf.strings.regex_full_match(texts, r"(?s).*\p{M}.*")),
                    lambda: compose_marks(texts), lambda: texts)
    texts = tf.strings.regex_replace(texts, r"\p{Z}", " ")
    texts = tf.strings.lower(texts, encoding="utf-8")
    texts = tf.strings.regex_replace(texts, r"[^\p{L}\p{M}\p{N}\s]", r" \0 ")
    return tf.strings.regex_replace(texts, r"\[\s+(start|end)\s+\]", r"[\1]")


def add_start_end(texts):
    """Wraps each text in the ``[start]`` and ``[end]`` tokens.

    Args:
        texts: iterable of str. Target sentences.

    Returns:
        A list of str.

    Example:

    >>> add_start_end(["hola"])
    ['[start] hola [end]']
    """
    return [f"{START_TOKEN} {text} {END_TOKEN}" for text in texts]


@accepts_numpy_scalars
def text_vectorizer(sequence_length, max_tokens=None, vocabulary=None, texts=None,
                    name="text_vectorizer"):
    """Builds a ``TextVectorization`` layer with :func:`standardize_text`.

    Args:
        sequence_length: int. Output length; longer texts are cut, shorter
            ones padded with 0.
        max_tokens: int or None. Vocabulary size cap, padding and ``[UNK]``
            included.
        vocabulary: list of str, str or None. Tokens, or a file saved by
            :func:`save_vocabulary`.
        texts: list of str or None. Texts to learn the vocabulary from
            when ``vocabulary`` is None.
        name: str. Layer name.

    Returns:
        A ready ``keras.layers.TextVectorization``.

    Example:

    >>> layer = text_vectorizer(4, texts=["¿Dónde está? Dónde."])
    >>> print(layer.get_vocabulary()[2])
    dónde
    >>> layer(["DÓNDE"]).numpy().tolist()
    [[2, 0, 0, 0]]
    """
    if not is_count(sequence_length, 1):
        raise DataError(f"Expected sequence_length to be a positive integer. "
                        f"Received: sequence_length={sequence_length!r}")
    if isinstance(texts, (str, bytes)):
        raise DataError(f"Expected texts to be a list of strings. Received: one string "
                        f"{texts[:40]!r}")
    if isinstance(vocabulary, str):
        vocabulary = load_vocabulary(vocabulary)
    layer = keras.layers.TextVectorization(
        max_tokens=max_tokens, standardize=standardize_text, split="whitespace",
        output_mode="int", output_sequence_length=sequence_length,
        vocabulary=vocabulary, name=name)
    if vocabulary is None:
        if texts is None:
            raise DataError("Expected `vocabulary` or `texts` to build a vectorizer. "
                            "Received: neither")
        layer.adapt(tf.data.Dataset.from_tensor_slices(list(texts)).batch(256))
    return layer


def save_vocabulary(vocabulary, path):
    """Writes a vocabulary (a list, or a vectorizer's) as JSON or one token a line.

    ``.json`` paths get a JSON list; anything else plain UTF-8 text, one token
    a line (the padding token ``""`` is the empty first line). Tokens never
    hold whitespace, since the vectorizers split on it.

    Args:
        vocabulary: list of str or TextVectorization. The tokens, in id order.
        path: str. Where to write; missing folders are created.

    Example:

    >>> save_vocabulary(["", "[UNK]", "hola"], "/tmp/vocab.txt")
    >>> load_vocabulary("/tmp/vocab.txt")
    ['', '[UNK]', 'hola']
    """
    if hasattr(vocabulary, "get_vocabulary"):
        vocabulary = vocabulary.get_vocabulary()
    path = _file_path(path, "vocabulary file")
    tokens = [str(token) for token in vocabulary]
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        if path.lower().endswith(".json"):
            json.dump(tokens, handle, ensure_ascii=False, indent=0)
        else:
            handle.write("\n".join(tokens) + "\n")


def load_vocabulary(path):
    """Reads a vocabulary written by :func:`save_vocabulary`.

    Args:
        path: str. A ``.json`` list or a text file, one token a line.

    Returns:
        The list of tokens.

    Example:

    >>> save_vocabulary(["", "[UNK]", "hola"], "/tmp/vocab.json")
    >>> load_vocabulary("/tmp/vocab.json")
    ['', '[UNK]', 'hola']
    """
    path = _file_path(path, "vocabulary file")
    if not os.path.isfile(path):
        raise DataError(f"Expected a saved vocabulary file. Received: path={path!r}")
    # utf-8-sig: a byte-order mark from an editor is not part of the first token.
    with open(path, encoding="utf-8-sig") as handle:
        if path.lower().endswith(".json"):
            tokens = json.load(handle)
        else:
            tokens = handle.read().split("\n")
            if tokens[-1] == "":  # the newline that ends the last token
                tokens.pop()
            tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not isinstance(tokens, list) or not tokens:
        raise DataError(f"Expected a non-empty list of tokens in {path}. "
                        f"Received: {type(tokens).__name__} of length {len(tokens)}")
    return tokens


def translation_vectorizers(corpus, sequence_length, source_vocab_size=None,
                            target_vocab_size=None):
    """Learns source and target vectorizers from a :class:`ParallelText`.

    The target vectorizer sees texts wrapped in ``[start]``/``[end]`` and
    outputs ``sequence_length + 1`` ids, so the decoder input and the label
    are each ``sequence_length`` long.

    Args:
        corpus: ParallelText. Training sentences.
        sequence_length: int. Source length and decoder length.
        source_vocab_size: int or None. Source vocabulary cap.
        target_vocab_size: int or None. Target vocabulary cap.

    Returns:
        ``(source_vectorizer, target_vectorizer)``.

    Example:

    >>> pairs = ParallelText(["where is it?"], ["¿dónde está?"])
    >>> src, tgt = translation_vectorizers(pairs, sequence_length=8)
    >>> "[start]" in tgt.get_vocabulary()
    True
    """
    source = text_vectorizer(sequence_length, source_vocab_size, texts=corpus.sources,
                             name="source_vectorizer")
    target = text_vectorizer(sequence_length + 1, target_vocab_size,
                             texts=add_start_end(corpus.targets), name="target_vectorizer")
    return source, target


def _check_batches(data, kind, reader, batch_size, **vectorizers):
    """Raise :class:`DataError` unless ``data`` is a ``kind``, ``batch_size`` a count and
    each of ``vectorizers`` (name: layer) callable."""
    for name, layer in vectorizers.items():
        if not callable(layer):
            raise DataError(f"Expected {name} to be a TextVectorization layer (from "
                            f"text_vectorizer). Received: {name}={layer!r}")
    if not isinstance(data, kind):
        raise DataError(f"Expected a {kind.__name__} (from {reader}). "
                        f"Received: {type(data).__name__}")
    if not is_count(batch_size, 1):
        raise DataError(f"Expected a positive batch_size. Received: batch_size={batch_size!r}")


def translation_dataset(corpus, source_vectorizer, target_vectorizer, batch_size=64,
                        shuffle=False, seed=1337):
    """Batches a :class:`ParallelText` for teacher forcing.

    Each element is ``({"encoder_inputs": src, "decoder_inputs": tgt[:, :-1]},
    tgt[:, 1:])`` with int32 ids padded with 0, ``tgt`` being the target
    wrapped in ``[start]``/``[end]``.

    Args:
        corpus: ParallelText. Sentences to batch.
        source_vectorizer: TextVectorization. From :func:`translation_vectorizers`.
        target_vectorizer: TextVectorization. From :func:`translation_vectorizers`.
        batch_size: int. Pairs per batch.
        shuffle: bool. Shuffle the pairs each epoch (with ``seed``).
        seed: int. Shuffle seed.

    Returns:
        A ``tf.data.Dataset``.

    Example:

    >>> pairs = ParallelText(["where is it?"], ["¿dónde está?"])
    >>> src, tgt = translation_vectorizers(pairs, sequence_length=8)
    >>> inputs, labels = next(iter(translation_dataset(pairs, src, tgt)))
    >>> tuple(labels.shape)
    (1, 8)
    """
    _check_batches(corpus, ParallelText, "read_parallel_tsv", batch_size,
                   source_vectorizer=source_vectorizer, target_vectorizer=target_vectorizer)
    data = tf.data.Dataset.from_tensor_slices(
        (list(corpus.sources), add_start_end(corpus.targets)))

    def vectorize(sources, targets):
        src = tf.cast(source_vectorizer(sources), tf.int32)
        tgt = tf.cast(target_vectorizer(targets), tf.int32)
        return {"encoder_inputs": src, "decoder_inputs": tgt[:, :-1]}, tgt[:, 1:]

    return _id_batches(data, vectorize, len(corpus), batch_size, shuffle, seed,
                       source_vectorizer, target_vectorizer)


def classification_dataset(data, vectorizer, batch_size=64, shuffle=False, seed=1337):
    """Batches a :class:`LabelledText` as ``(int32 token ids, int32 labels)``.

    Args:
        data: LabelledText. Texts and labels.
        vectorizer: TextVectorization. From :func:`text_vectorizer`.
        batch_size: int. Texts per batch.
        shuffle: bool. Shuffle each epoch (with ``seed``).
        seed: int. Shuffle seed.

    Returns:
        A ``tf.data.Dataset``.

    Example:

    >>> data = LabelledText(["hola", "hello"], np.array([0, 1]), ["es", "en"])
    >>> ids, labels = next(iter(classification_dataset(data, text_vectorizer(8, texts=data.texts))))
    >>> tuple(ids.shape)
    (2, 8)
    """
    _check_batches(data, LabelledText, "read_labelled_text", batch_size, vectorizer=vectorizer)
    ds = tf.data.Dataset.from_tensor_slices(
        (list(data.texts), np.asarray(data.labels, dtype=np.int32)))
    return _id_batches(ds, lambda texts, labels: (tf.cast(vectorizer(texts), tf.int32), labels),
                       len(data), batch_size, shuffle, seed, vectorizer)


def _id_batches(data, vectorize, size, batch_size, shuffle, seed, *vectorizers):
    """Batches of ``data`` (``size`` texts) through ``vectorize``, shuffled each epoch if asked.

    When every vectorizer pads to a fixed length, the texts are vectorized
    once and their ids kept in memory (``cache``): later epochs skip the
    standardization and vocabulary lookup, and TensorFlow's set-up of that
    graph for each new iterator (about 0.3 s per epoch). Otherwise each batch
    is vectorized as it is read, padded to its own longest text. The shuffle
    comes after the cache with the same seed and buffer, so the batches are
    the same either way.
    """
    fixed = all(isinstance(layer, keras.layers.TextVectorization)
                and layer.get_config().get("output_sequence_length") is not None
                for layer in vectorizers)
    if fixed:
        data = data.batch(256).map(vectorize, num_parallel_calls=tf.data.AUTOTUNE) \
            .unbatch().cache().apply(tf.data.experimental.assert_cardinality(size))
    if shuffle:
        data = data.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if not fixed:
        data = data.map(vectorize, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
