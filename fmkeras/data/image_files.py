"""Finding unusable image files before training: one warning lists them all.

Every image pipeline checks its files once, up front: a cheap header check
(magic bytes) in threads, then a parallel decode with tf.data. Bad files are
skipped with one warning naming each path and why; above
``max_bad_fraction`` the run stops with the same list, so it never crashes
midway on a file it could have rejected.
"""

from __future__ import annotations

import concurrent.futures
import warnings

import numpy as np
import tensorflow as tf

from fmkeras.errors import DataError

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"BM", "BMP"))

# What a complete file ends with; TF's decoders accept some truncated files.
_TRAILERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}


# Larger images are refused before decoding (a decompression bomb needs gigabytes).
# The limit at which Pillow, and so legacy Keras, refuses an image: 108 M pixel
# phone photos pass.
MAX_PIXELS = 178_956_970


def _jpeg_size(data):
    """(width, height) from a JPEG's first start-of-frame segment, or None."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    return None


def declared_size(kind, head):
    """(width, height) an image header declares, read without decoding; or None.

    Example:

    >>> with open("data/digits/train/0/0000.png", "rb") as f:
    ...     declared_size("PNG", f.read(64))
    (8, 8)
    """
    if kind == "PNG" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if kind == "GIF" and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if kind == "BMP" and len(head) >= 26:
        width = int.from_bytes(head[18:22], "little", signed=True)
        height = int.from_bytes(head[22:26], "little", signed=True)
        return abs(width), abs(height)
    if kind == "JPEG":
        return _jpeg_size(head)
    return None


def header_problem(path, max_pixels=MAX_PIXELS):
    """Why ``path`` is not a usable image, judged from its first and last bytes; or None.

    Checks: readable, not empty, a PNG/JPEG/GIF/BMP signature, an end marker
    (PNG, JPEG) and a declared size of at most ``max_pixels``.

    Example:

    >>> header_problem("data/digits/train/0/0000.png") is None
    True
    """
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64))
            tail = f.read()
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head:
        return "empty file (0 bytes)"
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        return f"not a PNG, JPEG, GIF or BMP image (starts with {head[:8]!r})"
    dims = declared_size(kind, head)
    if dims and dims[0] * dims[1] > max_pixels:
        return (f"declares {dims[0]}x{dims[1]} pixels, more than the {max_pixels:,} allowed "
                "(refused before decoding)")
    trailer = _TRAILERS.get(kind)
    if trailer and trailer not in tail and not _ends(kind, path):
        return f"truncated {kind} ({size} bytes, no end marker)"
    return None


def _ends(kind, path):
    """Whether a PNG or JPEG has its end marker somewhere, data after it allowed.

    Phones and editors append bytes after the end (Samsung's trailer, a second
    image), which the decoders ignore, so the marker is looked for by walking
    the file's structure: embedded thumbnails have their own JPEG end marker.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if kind == "PNG":
        i = 8
        while i + 8 <= len(data):
            if data[i + 4:i + 8] == b"IEND":
                return i + 12 <= len(data)
            i += 12 + int.from_bytes(data[i:i + 4], "big")
        return False
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif marker == 0xDA:  # start of scan: only the image end marks FF D9 from here
            return data.find(b"\xff\xd9", i + 2) >= 0
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def decode_all(paths, load, keep):
    """Decode every file in parallel; return (indices that decoded, their images or None).

    Files that ``load`` fails on are left out; ``keep=False`` skips holding
    the images.

    Example:

    >>> load = lambda path: tf.io.decode_png(tf.io.read_file(path), channels=1)
    >>> ok, images = decode_all(["data/digits/train/0/0000.png", "/no/file.png"], load, keep=True)
    >>> ok.tolist(), images.shape
    ([0], (1, 8, 8, 1))
    """
    def decode(index, path):
        image = load(path)
        # An unused decode is pruned from the graph (and so is one feeding only
        # a static size), so a corrupt file would pass: without ``keep`` a value
        # computed from the pixels still needs the decode.
        return index, image if keep else tf.reduce_max(image)

    ds = (tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .ignore_errors().batch(512).prefetch(2))
    indices, images = [], []
    for index, image in ds:
        indices.append(index.numpy())
        if keep:
            images.append(image.numpy())
    ok = np.concatenate(indices) if indices else np.zeros([0], np.int64)
    return ok, (np.concatenate(images) if keep and images else None)


def decode_error(load, path):
    """Why ``load`` cannot decode ``path``, as one line for the list of bad files.

    Example:

    >>> import tempfile
    >>> load = lambda path: tf.io.decode_png(tf.io.read_file(path))
    >>> with tempfile.NamedTemporaryFile(suffix=".png") as f:
    ...     _ = f.write(b"not an image")
    ...     f.flush()
    ...     print(decode_error(load, f.name))  # doctest: +ELLIPSIS
    cannot be decoded: Unknown image file format...
    """
    try:
        load(tf.constant(path))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        return "cannot be decoded: " + err.message.split("[Op:")[0].split("}}")[-1].strip()
    return "cannot be decoded"


def scan_images(paths, load, decode=True, keep=False):
    """Find unusable files; return ``(good positions, decoded images or None, bad)``.

    ``bad`` is a list of ``(path, reason)``; nothing is raised or warned.

    Args:
        paths: list of str.
        load: graph function ``path -> image`` used for the decode check.
        decode: bool. Decode every file that passes the header check.
        keep: bool. Return the decoded images too.

    Example:

    >>> good, _, bad = scan_images(["data/digits/train/0/0000.png", "/no/file.png"],
    ...                            load=None, decode=False)
    >>> good.tolist(), bad[0][1]
    ([0], 'file not found')
    """
    bad, good = [], []
    # Opening many small files is I/O bound: threads overlap the waits.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(header_problem, paths, chunksize=256))
    for i, (path, problem) in enumerate(zip(paths, problems)):
        if problem:
            bad.append((path, problem))
        else:
            good.append(i)
    images = None
    if decode and good:
        good_paths = [paths[i] for i in good]
        ok, images = decode_all(good_paths, load, keep=keep)
        failed = sorted(set(range(len(good_paths))) - set(ok.tolist()))
        bad.extend((good_paths[i], decode_error(load, good_paths[i])) for i in failed)
        good = [good[i] for i in ok]
    return np.asarray(good, np.int64), images, bad


def read_images(paths, load, cache, validate, max_bad_fraction, bad=()):
    """Check the files, report the bad ones once; return (good positions, cache array).

    Bad files are skipped with one warning listing each and why; above
    ``max_bad_fraction`` a :class:`DataError` carries the same list.

    Example:

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     good, _ = read_images(["data/digits/train/0/0000.png", "/no/file.png"], load=None,
    ...                           cache=False, validate=False, max_bad_fraction=0.5)
    >>> good.tolist(), str(caught[0].message).splitlines()[0]
    ([0], 'Skipping 1 of 2 image files that cannot be used:')
    """
    good, images, found = scan_images(paths, load, decode=validate, keep=cache)
    bad = list(bad) + found
    total = len(paths) + len(bad) - len(found)
    if bad:
        listing = "\n".join(f"  {path}: {why}" for path, why in bad)
        if len(bad) > max_bad_fraction * total:
            raise DataError(
                f"{len(bad)} of {total} image files are unreadable, more than "
                f"max_bad_fraction={max_bad_fraction}. Expected readable PNG, JPEG, GIF or "
                f"BMP files. Received:\n{listing}")
        warnings.warn(f"Skipping {len(bad)} of {total} image files that cannot be used:\n"
                      f"{listing}", stacklevel=5)
    return good, images
