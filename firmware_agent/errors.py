"""The agent's exception tree.

Every error the agent raises derives from :class:`AgentError`. Specific errors also
derive from the builtin they resemble, so callers may catch either (the gpiozero idiom).
Third-party errors are translated at the boundary with ``raise ... from err``. What the
contract raises (:mod:`firmware_agent.contract.errors`: a malformed payload, a model
file, a key file) keeps its own tree; errors of the van that are also contract
violations derive from both.
"""

from __future__ import annotations

from firmware_agent.contract.errors import CodecError


class AgentError(Exception):
    """Root of every error raised by :mod:`firmware_agent`."""


class ConfigError(AgentError, ValueError):
    """A setting is missing, malformed or out of range."""


class DeviceError(AgentError, OSError):
    """A hardware device (serial port, scanner, GPIO) could not be used."""


class DeviceUnavailableError(DeviceError):
    """The device is absent or stopped answering (unplugged, permission denied)."""


class OutboxError(AgentError):
    """The durable outbox refused an operation (unknown stream, bad argument, closed).

    Raised directly for a caller's mistake; storage failures raise the subclass
    :class:`OutboxStorageError`, so ``except OutboxError`` catches both.
    """


class OutboxStorageError(OutboxError, OSError):
    """SQLite could not complete the operation (disk full, I/O error, locked file).

    Nothing was changed: a record whose ``add`` raised this was *not* stored, and the
    caller keeps it in memory and retries. ``sqlite_errorname`` is SQLite's name for
    the failure (``"SQLITE_FULL"``, ``"SQLITE_IOERR_WRITE"``, ...) when it gave one.
    """

    def __init__(self, message: str, *, sqlite_errorname: str | None = None) -> None:
        super().__init__(message)
        self.sqlite_errorname = sqlite_errorname


class RemoteConfigError(AgentError, CodecError):
    """A ``config`` downlink (or the stored ``config.json``) is refused.

    It does not hold to ``config.schema.json`` (not JSON, a wrong ``v``, a setting of
    the wrong type or out of range), its revision is not above the running one, or the
    agent's settings refuse the combination it asks for. ``where`` names the field
    (``geofence.border_m``, ``revision``); the running config stays. A
    :class:`CodecError`, so the uplink counts it as a refused downlink.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


class ModelUnavailableError(AgentError, ImportError):
    """No TFLite interpreter is installed (neither ai-edge-litert nor tflite-runtime).

    Not a :class:`~firmware_agent.contract.errors.ModelError`: the model may be fine,
    this van just cannot run it. The agent publishes the baseline ETA and says why in
    its status, and keeps the model.
    """
