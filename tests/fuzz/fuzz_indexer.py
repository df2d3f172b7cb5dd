"""atheris harness: the image-folder indexer and file checks survive any folder.

Each input becomes a small folder of class folders with fuzzed names and
contents; indexing and checking may only fail with DataError.
Run: ``python tests/fuzz/fuzz_indexer.py -runs=2000`` (CI runs it briefly).
"""

import os
import shutil
import sys
import tempfile

import atheris
import tensorflow  # noqa: F401  (imported first so that only fmkeras is instrumented)

with atheris.instrument_imports(include=["fmkeras"]):
    from fmkeras.data.image_files import header_problem
    from fmkeras.data.images import index_directory
    from fmkeras.errors import DataError

ROOT = tempfile.mkdtemp(prefix="fmkeras-fuzz-")


def safe_name(text):
    name = "".join(c for c in text if c not in "/\0") or "x"
    return name[:40] if name not in (".", "..") else "x"


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    root = os.path.join(ROOT, "case")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        folder = os.path.join(root, safe_name(fdp.ConsumeUnicodeNoSurrogates(12)))
        os.makedirs(folder, exist_ok=True)
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            name = safe_name(fdp.ConsumeUnicodeNoSurrogates(12)) + fdp.PickValueInList(
                [".png", ".jpg", ".gif", ".bmp", ".txt", ""])
            try:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
            except OSError:
                pass
    try:
        index = index_directory(root, allow_empty_classes=fdp.ConsumeBool())
    except DataError:
        return
    for path in index.paths:
        header_problem(path)


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
