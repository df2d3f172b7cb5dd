"""Extracting archives without letting an entry escape the target folder."""

from __future__ import annotations

import os
import tarfile
import zipfile

from fmkeras.errors import DataError


def _check_member(target, name, is_link=False, link_target=None):
    root = os.path.realpath(target)
    dest = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, dest]) != root:
        raise DataError(f"Archive entry {name!r} would be written outside {target!r}; "
                        "refusing to extract. Expected relative paths inside the archive.")
    if is_link and link_target is not None:
        linked = os.path.realpath(os.path.join(os.path.dirname(dest), link_target))
        if os.path.commonpath([root, linked]) != root:
            raise DataError(f"Archive link {name!r} points outside {target!r} "
                            f"({link_target!r}); refusing to extract.")


def safe_extract(archive, target):
    """Extract a ``.tar``, ``.tar.gz`` or ``.zip`` into ``target``, checking every entry.

    Entries with absolute paths, ``..`` components, or links pointing outside
    ``target`` make the whole extraction fail before anything is written;
    device files and other special members are refused too (tar ``data``
    filter).

    Args:
        archive: str. The archive file.
        target: str. Folder to extract into (created if needed).

    Returns:
        str. ``target``.

    Example:

    >>> import io, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "a.tar")
    >>> with tarfile.open(path, "w") as tar:
    ...     info = tarfile.TarInfo("hello.txt"); info.size = 2
    ...     tar.addfile(info, io.BytesIO(b"hi"))
    >>> sorted(os.listdir(safe_extract(path, os.path.join(folder, "out"))))
    ['hello.txt']
    """
    if not os.path.isfile(archive):
        raise DataError(f"Archive not found. Received: {archive!r}")
    os.makedirs(target, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(target, name)
            zf.extractall(target)
        return target
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(target, member.name, member.issym() or member.islnk(),
                              member.linkname)
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as err:
        raise DataError(f"Cannot read archive {archive!r}: {err}. Expected a tar or zip "
                        "file.") from None
    return target
