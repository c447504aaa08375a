"""The project's own exceptions for untrusted input: the only ones its parsers let out.

Everything that reads bytes a stranger or a storage provider could have written (keys,
grants, identity files, model files, keystore rows, public-store metadata) raises one of
these, with a message that names the input; never a ``KeyError``, ``struct.error`` or a
third-party parser's exception. They are ``ValueError`` subclasses, so callers that
already treat bad input as a ``ValueError`` (the command line: one line, exit 2) keep
doing so.
"""

from __future__ import annotations


class ImambigError(ValueError):
    """Bad input or a failed check, with a message naming what and where."""


class TamperedError(ImambigError):
    """Sealed or signed data failed authentication: modified, truncated, misplaced,
    substituted, or checked with the wrong key."""


class FormatError(ImambigError):
    """Bytes that do not parse as what they claim to be (wrong version, truncated,
    oversized, out-of-range fields)."""


class KeyFormatError(FormatError):
    """A per-image key is malformed."""


class StoreFormatError(FormatError):
    """A store's metadata or layout is malformed, foreign or out of bounds."""


class ModelFormatError(FormatError):
    """A model or training-state file is malformed, foreign or refused (pickles)."""


class StorageUnavailableError(Exception):
    """The object store did not answer an operation (errors, resets, timeouts, cut
    replies) within its retry budget. A statement about the storage, not about the data:
    deliberately neither a ``ValueError`` nor an ``OSError``, so that code treating
    unreadable or missing bytes as malformed, foreign or absent never mistakes an outage
    for them (and, say, recreates a store it could not read)."""
