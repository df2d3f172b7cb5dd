"""Archive extraction refuses entries that escape the target folder."""

import io
import os
import tarfile
import zipfile

import pytest

from fmkeras.data.archives import safe_extract
from fmkeras.errors import DataError


def make_tar(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 2
                tar.addfile(info, io.BytesIO(b"hi"))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = target
                tar.addfile(info)
    return str(path)


def test_normal_archive_extracts(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [("train/a/1.txt", "file", None)])
    out = safe_extract(archive, str(tmp_path / "out"))
    assert (tmp_path / "out" / "train" / "a" / "1.txt").read_text() == "hi"
    assert out == str(tmp_path / "out")


@pytest.mark.parametrize("entries", [
    [("../escape.txt", "file", None)],
    [("/tmp/absolute-escape.txt", "file", None)],
    [("inside/link", "link", "../../../etc/passwd")],
])
def test_escaping_entries_are_refused_before_writing(tmp_path, entries):
    archive = make_tar(tmp_path / "bad.tar.gz", [("fine.txt", "file", None)] + entries)
    with pytest.raises(DataError, match="outside"):
        safe_extract(archive, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []
    assert not (tmp_path / "escape.txt").exists()


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(DataError, match="outside"):
        safe_extract(str(archive), str(tmp_path / "out"))


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"nope")
    with pytest.raises(DataError, match="Cannot read archive"):
        safe_extract(str(junk), str(tmp_path / "out"))
