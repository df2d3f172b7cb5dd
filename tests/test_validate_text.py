"""--validate-data on text corpora lists every problem the real run repairs or skips."""

import collections

import pytest

from fmkeras import train as cli
from fmkeras.tasks import pretrain_mlm, text_classification, translation

BAD_LINES = [
    b"\xef\xbb\xbfOpen the file\tAbrir el archivo\r\n",  # BOM and CRLF
    b"\n",                                                  # empty line
    b"no tab here\n",                                       # missing tab (translation)
    b"Caf\xe9 au lait\tcaf\xe9 con leche\n",                # Latin-1, not UTF-8
    b"nul\x00 byte\tnulo\n",                                # NUL byte
    b"x" * 10_000_000 + b"\tlong\n",                        # a 10 MB line
    b"Save\tGuardar\n",
    b"Close\tCerrar\n",
]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"".join(BAD_LINES * 3))
    return str(path)


@pytest.fixture()
def labelled(tmp_path):
    path = tmp_path / "labelled.tsv"
    path.write_bytes(b"text\tlabel\n" + b"".join(BAD_LINES * 3))
    return str(path)


def counts(problems):
    return dict(collections.Counter(problem for _, problem in problems))


def test_translation_dry_run_matches_the_run_report(corpus):
    config = translation.TranslationConfig()
    config.data.path = corpus
    problems = translation.validate_data(config)
    with pytest.warns(UserWarning):
        _, report = translation.load_corpus(config)
    assert counts(problems) == report.counts
    assert {"bom", "crlf", "empty_line", "missing_tab", "undecodable", "nul_bytes",
            "truncated"} <= set(report.counts)
    assert all(":" in where for where, _ in problems)  # path:line


def test_text_classification_dry_run_matches_the_run_report(labelled):
    config = text_classification.TextClassificationConfig()
    config.data.path = labelled
    problems = text_classification.validate_data(config)
    from fmkeras.data import text as text_data

    with pytest.warns(UserWarning):
        texts = text_data.read_labelled_text(labelled, max_chars=config.data.max_chars)
    assert counts(problems) == texts.report.counts
    assert texts.report.counts["truncated"] == 3


def test_mlm_reads_damaged_text_and_its_dry_run_matches(labelled):
    config = pretrain_mlm.PretrainMLMConfig()
    config.data.path = labelled
    problems = pretrain_mlm.validate_data(config)
    with pytest.warns(UserWarning):
        texts = pretrain_mlm.read_texts(config.data)
    assert max(len(t) for t in texts) <= config.data.max_chars  # the 10 MB line was cut
    assert "Open the file" in texts  # BOM and CRLF removed
    assert counts(problems)["truncated"] == 3


def test_cli_validate_data_lists_text_problems(corpus, capsys):
    code = cli.main(["translation", "--validate-data", "--set", f"data.path={corpus}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "undecodable" in out and "truncated" in out
    assert out.strip().splitlines()[-1].startswith(f"{len(out.strip().splitlines()) - 1} problem")
