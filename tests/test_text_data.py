"""Text readers, tokenisation, vocabularies and teacher-forcing batches."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from fmkeras.data.text import (
    END_TOKEN,
    START_TOKEN,
    LabelledText,
    ParallelText,
    classification_dataset,
    compose_marks,
    load_vocabulary,
    read_labelled_text,
    read_parallel_tsv,
    read_text_column,
    save_vocabulary,
    split_indices,
    standardize_text,
    text_vectorizer,
    translation_dataset,
    translation_vectorizers,
)
from fmkeras.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EN_ES = os.path.join(REPO, "data", "translation", "en-es.tsv")
LANGID = os.path.join(REPO, "data", "langid", "langid.tsv")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "datasets")


def write(path, data):
    path.write_bytes(data)
    return str(path)


def test_parallel_reader_counts_every_problem(tmp_path):
    path = write(tmp_path / "pairs.tsv", b"".join([
        b"\xef\xbb\xbfHello\tHola\r\n",             # 1: BOM and CRLF
        b"\n",                                       # 2: empty
        b"no tab here\n",                            # 3: missing tab
        b"caf\xe9\tcaf\xe9\n",                       # 4: Latin-1, not UTF-8
        b"Where is it?\t\xc2\xbfD\xc3\xb3nde est\xc3\xa1?\tnote\n",  # 5: third column kept out
        b"nul\x00 byte\tnulo\n",                     # 6: NUL removed
        "Ünïcödé source\tdestino largo\n".encode(),  # 7: cut to 5 characters
        b"\tonly target\n",                          # 8: empty source
    ]))
    with pytest.warns(UserWarning, match="undecodable=1") as caught:
        corpus = read_parallel_tsv(path, max_chars=10)
    assert len(caught) == 1
    report = corpus.report
    assert corpus.sources == ["Hello", "Where is i", "nul byte", "Ünïcödé so"]
    assert corpus.targets == ["Hola", "¿Dónde est", "nulo", "destino la"]
    assert report.counts == {"bom": 1, "crlf": 1, "empty_line": 1, "missing_tab": 1,
                             "undecodable": 1, "nul_bytes": 1, "truncated": 4,
                             "missing_field": 1}
    assert report.lines == 8 and report.records == 4
    assert report.examples["undecodable"] == [
        f"{path}:4: byte 0xe9 at column 4 is not UTF-8; line skipped"]
    assert report.examples["missing_tab"][0].startswith(f"{path}:3")
    assert report.as_dict()["counts"]["empty_line"] == 1


def test_truncation_never_splits_a_character(tmp_path):
    text = "cafe\u0301 ñandú"  # "é" written as e + combining accent
    path = write(tmp_path / "p.tsv", f"{text}\t{text}\n".encode())
    with pytest.warns(UserWarning, match="truncated=2"):
        corpus = read_parallel_tsv(path, max_chars=4)
    assert corpus.sources == ["caf"]  # not "cafe" without its accent
    with pytest.warns(UserWarning):
        corpus = read_parallel_tsv(path, max_chars=9)
    assert corpus.sources == ["cafe\u0301 ñan"]
    assert corpus.sources[0].encode("utf-8").decode("utf-8") == corpus.sources[0]


def test_clean_file_reads_silently(tmp_path):
    path = write(tmp_path / "p.tsv", "a\tb\nc\td\n".encode())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = read_parallel_tsv(path)
    assert len(corpus) == 2 and corpus.report.counts == {}


def test_missing_files_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="nope.tsv"):
        read_parallel_tsv(missing)
    with pytest.raises(DataError, match="nope.tsv"):
        read_labelled_text(missing)
    with pytest.raises(DataError, match="vocab.txt"):
        load_vocabulary(str(tmp_path / "vocab.txt"))
    empty = write(tmp_path / "empty.tsv", b"\n\nno tab\n")
    with pytest.raises(DataError, match="at least one.*empty.tsv.*missing_tab=1"):
        read_parallel_tsv(empty)
    broken = write(tmp_path / "broken.csv", b'text,label\nhola,es\nbad\rfield,en\n')
    with pytest.raises(DataError, match="valid CSV in .*broken.csv. Received at line 3"):
        read_labelled_text(broken)


def test_labelled_tsv_and_csv(tmp_path):
    tsv = write(tmp_path / "t.tsv", "label\ttext\nes\thola\nen\thello\n\nfr\n".encode())
    with pytest.warns(UserWarning, match="missing_field=1"):
        data = read_labelled_text(tsv)
    assert data.texts == ["hola", "hello"] and data.class_names == ["en", "es"]
    np.testing.assert_array_equal(data.labels, [1, 0])
    csv = write(tmp_path / "t.csv",
                b'text,label\n"hola, amigo",es\r\n"two\r\nlines",en\r\nhello,en\r\n')
    with pytest.warns(UserWarning, match="crlf=4"):
        data = read_labelled_text(csv, class_names=["es", "en"])
    assert data.texts == ["hola, amigo", "two\nlines", "hello"]
    assert list(data.labels) == [0, 1, 1]
    bad = write(tmp_path / "b.tsv", b"sentence\tlang\nhola\tes\n")
    with pytest.raises(DataError, match=r"columns 'text' and 'label'.*data.text_column, "
                                        r"data.label_column.*Received: \['sentence'"):
        read_labelled_text(bad)
    assert read_labelled_text(bad, "sentence", "lang").class_names == ["es"]
    # A tab inside a text would shift the label: the row is skipped and counted.
    tab = write(tmp_path / "tab.tsv", b"text\tlabel\nhola\tmundo\tes\nhello\ten\nhi\ten\n")
    with pytest.warns(UserWarning, match=r"extra_field=1 \(e.g. .*tab.tsv:2: 3 fields, the "
                                         r"header has 2"):
        data = read_labelled_text(tab)
    assert data.texts == ["hello", "hi"] and data.class_names == ["en"]
    with pytest.warns(UserWarning, match="extra_field=1"):
        assert read_text_column(tab)[0] == ["hello", "hi"]
    three = write(tmp_path / "three.tsv", b"text\tlabel\tsource\nhola\tes\tweb\n")
    assert read_labelled_text(three).texts == ["hola"]  # a third column is fine


def test_readers_take_pathlib_paths(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("text\tlabel\nhola\tes\nhello\ten\n", encoding="utf-8")
    assert read_labelled_text(tsv).texts == ["hola", "hello"]
    pairs = tmp_path / "p.tsv"
    pairs.write_bytes(b"\xef\xbb\xbfgo\tve\r\n")  # a BOM and CRLF: the report path runs
    with pytest.warns(UserWarning, match="bom=1"):
        assert read_parallel_tsv(pairs).sources == ["go"]
    save_vocabulary(["", "[UNK]", "hola"], tmp_path / "v.txt")
    assert load_vocabulary(tmp_path / "v.txt") == ["", "[UNK]", "hola"]
    with pytest.raises(DataError, match="Expected a TSV/CSV file or folder path"):
        read_labelled_text(None)


def test_label_selection_that_keeps_nothing_is_refused(tmp_path):
    tsv = write(tmp_path / "t.tsv", b"text\tlabel\nhola\tes\nhello\ten\n")
    with pytest.raises(DataError, match=r"class_names=\['fr'\].*Received: only the labels "
                                        r"\['en', 'es'\]"):
        read_labelled_text(tsv, class_names=["fr"], warn=False)
    with pytest.raises(DataError, match="a list of label strings"):
        read_labelled_text(tsv, class_names="en")
    for bad in (0, -1, 2.5):
        with pytest.raises(DataError, match=f"max_chars={bad!r}"):
            read_labelled_text(tsv, max_chars=bad)


def test_hand_written_vocabulary_files_keep_every_token(tmp_path):
    plain = write(tmp_path / "v.txt", b"\n[UNK]\nhola")  # no newline after the last token
    assert load_vocabulary(plain) == ["", "[UNK]", "hola"]
    bom = write(tmp_path / "b.txt", b"\xef\xbb\xbf\r\n[UNK]\r\nhola\r\n")  # an editor's
    assert load_vocabulary(bom) == ["", "[UNK]", "hola"]


def test_labelled_text_folder(tmp_path):
    for label, name, data in [("en", "1.txt", b"hello\r\nworld"), ("es", "1.txt", b"hola"),
                              ("es", "2.txt", b"\xef\xbb\xbf\xc2\xbfqu\xc3\xa9?"),
                              ("es", "3.txt", b"ok\nlinea dos caf\xe9"), ("es", "4.txt", b" "),
                              ("es", "notes.md", b"ignored")]:
        os.makedirs(tmp_path / label, exist_ok=True)
        write(tmp_path / label / name, data)
    with pytest.warns(UserWarning) as caught:
        data = read_labelled_text(str(tmp_path))
    assert data.texts == ["hello\nworld", "hola", "¿qué?"]
    assert list(data.labels) == [0, 1, 1] and data.class_names == ["en", "es"]
    counts = data.report.counts
    assert counts == {"crlf": 1, "bom": 1, "undecodable": 1, "empty_line": 1}
    assert data.report.examples["undecodable"][0].startswith(
        os.path.join(str(tmp_path), "es", "3.txt") + ":2:")
    assert "3.txt:2" in str(caught[0].message)


def test_labelled_split_is_stratified():
    labels = np.array([0] * 90 + [1] * 7 + [2] * 2 + [3])  # one frequent label, three rare
    parts = split_indices(100, 0.1, 0.2, seed=3, labels=labels)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(100))
    count = {name: np.bincount(labels[rows], minlength=4).tolist()
             for name, rows in parts.items()}
    assert count["test"] == [18, 1, 1, 0] and count["validation"] == [9, 1, 0, 0]
    assert count["train"] == [63, 5, 1, 1]  # every label trains
    texts = LabelledText([f"t{i}" for i in range(100)], labels.astype(np.int32),
                         ["a", "b", "c", "d"])
    split = texts.split(0.1, 0.2, seed=3)
    assert [len(split[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    assert all(labels[int(t[1:])] == y for t, y in zip(split["test"].texts, split["test"].labels))
    with pytest.raises(DataError, match=r"labels of shape \(3,\)"):
        split_indices(4, 0.1, 0.1, labels=[0, 1, 0])


def test_splits_are_fixed_by_seed():
    parts = split_indices(100, 0.2, 0.1, seed=5)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [70, 20, 10]
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(100))
    again = split_indices(100, 0.2, 0.1, seed=5)
    assert all((parts[k] == again[k]).all() for k in parts)
    assert not (split_indices(100, 0.2, 0.1, seed=6)["test"] == parts["test"]).all()
    corpus = ParallelText([str(i) for i in range(10)], [f"t{i}" for i in range(10)])
    split = corpus.split(0.2, 0.2, seed=1)
    assert all(t == "t" + s for s, t in zip(split["test"].sources, split["test"].targets))
    assert len(split["test"]) == len(split["validation"]) == 2
    labels = np.arange(10) % 2
    labelled = LabelledText(corpus.sources, labels, ["x", "y"]).split(0.2, 0.2, seed=1)
    assert [len(labelled[k]) for k in ("train", "validation", "test")] == [6, 2, 2]
    assert [int(t) % 2 for t in labelled["train"].texts] == labelled["train"].labels.tolist()
    assert sorted(labelled["test"].labels.tolist()) == [0, 1]
    with pytest.raises(DataError, match="Received: validation_split=0.6, test_split=0.5"):
        split_indices(10, 0.6, 0.5)


def test_decomposed_accents_and_unicode_spaces_tokenize_as_their_usual_forms():
    import unicodedata

    composed = "café déjà vu, tiếng việt, がぎ"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    out = standardize_text(tf.constant([[decomposed], [composed]])).numpy()
    assert out.shape == (2, 1) and out[0, 0] == out[1, 0]
    assert out[0, 0].decode() == unicodedata.normalize("NFC", out[0, 0].decode())
    assert compose_marks(tf.constant(["", "e\u0301", "\u0301"])).numpy().tolist() == [
        b"", "\u00e9".encode(), "\u0301".encode()]  # a lone mark stays
    layer = text_vectorizer(4, texts=[composed])
    np.testing.assert_array_equal(layer([decomposed]), layer([composed]))
    spaced = standardize_text(tf.constant(["oui\u202f! non\u00a0merci\u3000x"])).numpy()[0]
    assert spaced.decode().split() == ["oui", "!", "non", "merci", "x"]


def test_tokenizer_keeps_accents_and_punctuation():
    out = standardize_text(tf.constant(["¿Dónde ESTÁ? [start] Él, [end]"])).numpy()[0]
    assert out.decode().split() == ["¿", "dónde", "está", "?", "[start]", "él", ",", "[end]"]
    layer = text_vectorizer(6, texts=["¿Dónde está?", "dónde"])
    vocab = layer.get_vocabulary()
    assert {"dónde", "está", "¿", "?"} <= set(vocab)
    ids = layer(["¿DÓNDE está?"]).numpy()[0]
    assert [vocab[i] for i in ids] == ["¿", "dónde", "está", "?", "", ""]


@pytest.mark.parametrize("name", ["vocab.txt", "vocab.json"])
def test_vocabulary_round_trip(tmp_path, name):
    layer = text_vectorizer(5, texts=["¿Dónde está?", "año \"x\" y"])
    path = str(tmp_path / "run" / name)
    save_vocabulary(layer, path)
    assert load_vocabulary(path) == layer.get_vocabulary()
    reloaded = text_vectorizer(5, vocabulary=path)
    texts = ["¿dónde está el año?"]
    np.testing.assert_array_equal(reloaded(texts).numpy(), layer(texts).numpy())


def test_vectorizer_saves_inside_a_keras_file(tmp_path):
    inputs = keras.Input((), dtype="string", name="text")
    model = keras.Model(inputs, text_vectorizer(6, texts=["¿Dónde está? Dónde."])(inputs))
    model.save(str(tmp_path / "v.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "v.keras"), safe_mode=True)
    texts = tf.constant(["¿DÓNDE está?"])
    np.testing.assert_array_equal(loaded(texts).numpy(), model(texts).numpy())


def test_translation_batches_for_teacher_forcing():
    corpus = ParallelText(["Where is it?", "Hello", "A very long source sentence indeed"],
                          ["¿Dónde está?", "Hola", "Una frase"])
    src, tgt = translation_vectorizers(corpus, sequence_length=4)
    vocab = tgt.get_vocabulary()
    assert START_TOKEN in vocab and END_TOKEN in vocab
    inputs, labels = next(iter(translation_dataset(corpus, src, tgt, batch_size=2)))
    enc, dec = inputs["encoder_inputs"].numpy(), inputs["decoder_inputs"].numpy()
    labels = labels.numpy()
    assert enc.shape == dec.shape == labels.shape == (2, 4)
    assert enc.dtype == dec.dtype == labels.dtype == np.int32
    assert (dec[:, 0] == vocab.index(START_TOKEN)).all()
    np.testing.assert_array_equal(dec[:, 1:], labels[:, :-1])
    assert [vocab[i] for i in labels[1]] == ["hola", END_TOKEN, "", ""]


def test_classification_batches():
    data = LabelledText(["hola amigo", "hello"], np.array([1, 0]), ["en", "es"])
    ids, labels = next(iter(classification_dataset(data, text_vectorizer(8, texts=data.texts))))
    assert ids.shape == (2, 8) and ids.dtype == tf.int32 and labels.dtype == tf.int32
    assert (ids.numpy()[1, 1:] == 0).all()


def _epochs(dataset, n=2):
    return [[tuple(np.asarray(x).tolist() for x in tf.nest.flatten(batch)) for batch in dataset]
            for _ in range(n)]


def test_fixed_length_text_batches_are_cached_and_match_per_batch_vectorizing():
    texts = [f"word{i} and more words {i % 3}" for i in range(11)]
    data = LabelledText(texts, np.arange(11) % 2, ["a", "b"])
    vectorizer = text_vectorizer(6, texts=texts)
    batches = lambda layer: classification_dataset(  # noqa: E731
        data, layer, batch_size=4, shuffle=True, seed=3)
    cached = batches(vectorizer)
    assert any("Cache" in type(d).__name__ for d in _inputs(cached))
    assert int(cached.cardinality()) == 3  # known, as fit and len() expect
    first, second = _epochs(cached)
    assert first != second  # reshuffled each epoch ...
    rows = [sorted((tuple(r), label) for ids, labels in epoch for r, label in zip(ids, labels))
            for epoch in (first, second)]
    assert rows[0] == rows[1] and len(rows[0]) == 11  # ... over the same rows
    # The same batches as vectorizing each batch as it is read (what a callable
    # that is not a TextVectorization gets).
    assert _epochs(batches(vectorizer)) == _epochs(batches(lambda t: vectorizer(t)))

    corpus = ParallelText(texts, texts[::-1])
    src, tgt = translation_vectorizers(corpus, sequence_length=5)
    pairs = lambda target: translation_dataset(  # noqa: E731
        corpus, src, target, batch_size=4, shuffle=True, seed=3)
    assert int(pairs(tgt).cardinality()) == 3
    assert any("Cache" in type(d).__name__ for d in _inputs(pairs(tgt)))
    assert _epochs(pairs(tgt)) == _epochs(pairs(lambda t: tgt(t)))


def _inputs(dataset):
    """``dataset`` and every dataset upstream of it."""
    found, todo = [], [dataset]
    while todo:
        found.append(todo.pop())
        todo.extend(found[-1]._inputs())
    return found


def test_builders_name_what_they_received():
    with pytest.raises(DataError, match="Received: sequence_length=0"):
        text_vectorizer(0, texts=["hola"])
    with pytest.raises(DataError, match="list of strings. Received: one string 'hola amigo'"):
        text_vectorizer(8, texts="hola amigo")
    vectorizer = text_vectorizer(8, texts=["hola"])
    with pytest.raises(DataError, match="Expected a LabelledText .* Received: list"):
        classification_dataset(["hola"], vectorizer)
    data = LabelledText(["hola", "hello"], np.array([0, 1]), ["es", "en"])
    with pytest.raises(DataError, match="Received: batch_size=0"):
        classification_dataset(data, vectorizer, batch_size=0)
    with pytest.raises(DataError, match="Expected a ParallelText .* Received: tuple"):
        translation_dataset((["hola"], ["hello"]), vectorizer, vectorizer)
    with pytest.raises(DataError, match="Expected vectorizer to be a TextVectorization layer "
                                        r"\(from text_vectorizer\). Received: vectorizer=None"):
        classification_dataset(data, None)
    corpus = ParallelText(["hola"], ["hello"])
    with pytest.raises(DataError, match="Received: target_vectorizer=8"):
        translation_dataset(corpus, vectorizer, 8)


def test_embedded_samples_read_cleanly():
    for path in (EN_ES, LANGID):
        assert os.path.getsize(path) < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = read_parallel_tsv(EN_ES)
        langid = read_labelled_text(LANGID)
    assert len(corpus) == 3000 and len(langid) == 3000
    assert langid.class_names == ["de", "en", "es", "fr", "it", "nl", "pl", "pt", "sv"]
    assert np.bincount(langid.labels).min() >= 333


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="shared datasets folder not present")
def test_samples_regenerate_identically(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "data", "make_text_samples.py"),
                    "--datasets", SHARED, "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for rel in ("translation/en-es.tsv", "langid/langid.tsv"):
        with open(os.path.join(REPO, "data", rel), "rb") as a, open(tmp_path / rel, "rb") as b:
            assert a.read() == b.read()
