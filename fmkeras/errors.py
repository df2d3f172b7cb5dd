"""Exceptions a user can cause and fix.

Library code raises :class:`FmkerasError` (a ``ValueError``) for anything the
user controls: a bad path, a bad config key, an unreadable file. The CLI
prints these as one line and exits non-zero, without a traceback.
"""


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
