"""Exceptions a user can cause and fix.

Library code raises :class:`FmkerasError` (a ``ValueError``) for anything the
user controls: a bad path, a bad config key, an unreadable file. The CLI
prints these as one line and exits non-zero, without a traceback.
"""

import contextlib
import os


class FmkerasError(ValueError):
    """An error caused by user input; the message says what was received and expected.

    Example:

    >>> try:
    ...     raise FmkerasError("Expected a directory. Received: data.path='nope'")
    ... except ValueError as err:
    ...     print(err)
    Expected a directory. Received: data.path='nope'
    """


class DataError(FmkerasError):
    """Input data is missing, empty or malformed."""


class ConfigError(FmkerasError):
    """A config file, key or value is invalid."""


def cwd_note(path):
    """`` (looked in <cwd>)`` for a relative ``path``, for "not found" messages.

    Presets name the embedded data relative to the repository root
    (``data/digits``), so a run started elsewhere says where it looked.

    Example:

    >>> cwd_note("/abs/path")
    ''
    >>> cwd_note("data/digits") == f" (looked in {os.getcwd()})"
    True
    """
    path = os.fspath(path)
    return "" if os.path.isabs(path) else f" (looked in {os.getcwd()})"


@contextlib.contextmanager
def keras_download(what, local_option):
    """Turn a failed ``keras.utils.get_file`` download into a :class:`DataError`.

    Keras raises a bare ``Exception("URL fetch failure on <url>: ...")`` when
    it cannot fetch a file it does not have yet (ImageNet weights, ...).
    Inside this context that becomes a ``DataError`` that names the file,
    Keras' cache folder and the local alternative; other errors pass.

    Args:
        what: str. What was being downloaded, e.g. "the ImageNet weights of resnet50".
        local_option: str. How to pass a local file instead.

    Example:

    >>> try:
    ...     with keras_download("the ImageNet weights of resnet50", "weights=<file>"):
    ...         raise Exception("URL fetch failure on https://x/resnet50.h5: None -- offline")
    ... except DataError as err:
    ...     print(str(err)[:74])
    Cannot download the ImageNet weights of resnet50: URL fetch failure on htt
    """
    try:
        yield
    except Exception as err:
        if isinstance(err, FmkerasError) or not str(err).startswith("URL fetch failure"):
            raise
        cache = os.path.join(os.environ.get("KERAS_HOME") or "~/.keras", "models")
        raise DataError(
            f"Cannot download {what}: {err}. Expected network access on first use (Keras "
            f"keeps the file in {cache}); on a machine without one, copy that file into "
            f"{cache} or pass a local weights file as {local_option}.") from None
