"""The ingest service's exception tree.

Every error :mod:`cloud_ingest` raises derives from :class:`IngestError`. Specific errors
also derive from the builtin they resemble, so callers may catch either (the gpiozero
idiom). What the contract raises (:mod:`firmware_agent.contract.errors`) is caught at
the boundary: a message that breaks it is quarantined with a reason, never raised.
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error raised by :mod:`cloud_ingest`."""


class ConfigError(IngestError, ValueError):
    """A setting of the ingest service is missing, malformed or out of range."""


class StorageError(IngestError, OSError):
    """The store could not be used (database unreachable, disk full, failed migration)."""
