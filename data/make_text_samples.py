"""Regenerate ``data/translation/en-es.tsv`` and ``data/langid/langid.tsv``.

Both are fixed-seed random samples of the gettext corpora described in
``../shared/datasets/README.md`` (human translations of free-software
messages from Debian packages' gettext catalogs):

- ``en-es.tsv``: 3,000 ``english<TAB>spanish`` pairs, no header;
- ``langid.tsv``: header ``text<TAB>label``, then 3,000 messages, an equal
  share for each of the 9 languages.

Lines with an empty field, control characters or more than two fields are
left out, so the samples are clean; the readers' handling of damaged lines is
tested on small files written by the tests. The same inputs and seed give
byte-identical outputs.

Usage: ``python data/make_text_samples.py [--datasets ../shared/datasets] [--out data]``
"""

import argparse
import os
import random
import unicodedata

SEED = 1234
NUM_PAIRS = 3000
NUM_MESSAGES = 3000
HERE = os.path.dirname(os.path.abspath(__file__))


def clean_rows(path, skip_header=False):
    """Rows of a UTF-8 TSV file with exactly two non-empty, printable fields."""
    rows = []
    with open(path, encoding="utf-8", newline="\n") as handle:
        if skip_header:
            next(handle)
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not all(field.strip() for field in fields):
                continue
            if any(unicodedata.category(ch) == "Cc" for field in fields for ch in field):
                continue
            rows.append([field.strip() for field in fields])
    return rows


def write_tsv(path, rows, header=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        if header:
            handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(row) + "\n")


def sample_pairs(rows, rng):
    return rng.sample(rows, NUM_PAIRS)


def sample_balanced(rows, rng):
    by_label = {}
    for text, label in rows:
        by_label.setdefault(label, []).append([text, label])
    labels = sorted(by_label)
    share, extra = divmod(NUM_MESSAGES, len(labels))
    chosen = []
    for i, label in enumerate(labels):
        chosen += rng.sample(by_label[label], share + (1 if i < extra else 0))
    rng.shuffle(chosen)
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=os.path.join(HERE, "..", "..", "shared",
                                                           "datasets"))
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    pairs = sample_pairs(clean_rows(os.path.join(args.datasets, "gettext-en-es-train.tsv")),
                         random.Random(SEED))
    write_tsv(os.path.join(args.out, "translation", "en-es.tsv"), pairs)
    messages = sample_balanced(
        clean_rows(os.path.join(args.datasets, "gettext-langid-train.tsv"), skip_header=True),
        random.Random(SEED))
    write_tsv(os.path.join(args.out, "langid", "langid.tsv"), messages, header=("text", "label"))
    print(f"wrote {len(pairs)} pairs and {len(messages)} messages under {args.out}")


if __name__ == "__main__":
    main()
