"""The ingest service's exception tree.

Every error :mod:`cloud_ingest` raises derives from :class:`IngestError`. Specific errors
also derive from the builtin they resemble, so callers may catch either (the gpiozero
idiom). The agent's codec raises :class:`firmware_agent.errors.CodecError`; ingest
translates it at its boundary (``raise PayloadError(...) from err``).
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error raised by :mod:`cloud_ingest`."""


class ConfigError(IngestError, ValueError):
    """A setting of the ingest service is missing, malformed or out of range."""


class PayloadError(IngestError, ValueError):
    """A received message is rejected: it cannot be decoded or breaks the contract."""


class SchemaError(PayloadError):
    """A message fails its JSON Schema (docs/schemas/).

    ``kind`` names the schema (``"events"``, ``"ack"``, ...), ``path`` the failing
    location as a JSON path (``"$.record.stop_id"``; ``"$"`` for the whole message) and
    ``reason`` what is wrong there.
    """

    def __init__(self, kind: str, path: str, reason: str) -> None:
        super().__init__(f"{kind}: {path}: {reason}")
        self.kind = kind
        self.path = path
        self.reason = reason


class VerificationError(PayloadError):
    """A message decodes and fits its schema but fails a check of its content (a POD's
    signature or hash chain, a device id that differs from the topic's, ...)."""


class UnknownSchemaError(IngestError, LookupError):
    """No schema of that kind exists (a programming error, not a bad message)."""


class StorageError(IngestError, OSError):
    """The store could not be used (database unreachable, disk full, failed migration)."""
