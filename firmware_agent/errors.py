"""The agent's exception tree.

Every error the agent raises derives from :class:`AgentError`. Specific errors also
derive from the builtin they resemble, so callers may catch either (the gpiozero idiom).
Third-party errors are translated at the boundary with ``raise ... from err``.
"""


class AgentError(Exception):
    """Root of every error raised by :mod:`firmware_agent`."""


class ConfigError(AgentError, ValueError):
    """A setting is missing, malformed or out of range."""


class DeviceError(AgentError, OSError):
    """A hardware device (serial port, scanner, GPIO) could not be used."""


class DeviceUnavailableError(DeviceError):
    """The device is absent or stopped answering (unplugged, permission denied)."""


class CodecError(AgentError, ValueError):
    """An MQTT payload or topic does not hold to the v1 contract (docs/asyncapi.yaml).

    Raised by :mod:`firmware_agent.uplink.codec` and :mod:`firmware_agent.uplink.topics`
    for anything malformed: truncated or trailing bytes, a wrong magic or version, bad
    UTF-8 or JSON, a field of the wrong type or out of range, a sequence range that does
    not hold, and for values that cannot be encoded. Decoders never raise anything else,
    so a consumer catches this one error per message and drops the message.
    """


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


class RemoteConfigError(CodecError):
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


class ModelUpdateError(CodecError):
    """A ``model`` downlink (or the stored copy of one) is refused; the running model stays.

    :attr:`reason` names the check that failed (:mod:`firmware_agent.eta.model_update`):
    ``malformed`` (not a JWS, a newline and a model), ``no_key`` (no fleet model key
    configured), ``unknown_key`` (signed by a key that is not one of them),
    ``bad_signature``, ``bad_claims`` (signed claims missing or out of range),
    ``mismatch`` (the file is not the one signed: size, SHA-256, version),
    ``not_for_device`` (its ``devices`` leave this van out), ``not_a_model`` (signed,
    but not a model this agent can run), ``stale`` (issued no later than the running
    downlinked model: a replay), ``storage`` (verified but could not be stored). A
    :class:`CodecError`, so the uplink counts it as a refused downlink.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(AgentError, ValueError):
    """A model file cannot be used: not a TFLite flatbuffer, truncated, or not the shape
    the agent expects (one float32 ``[batch, n]`` input and output, readable metadata).

    The file is at fault, not the van: the agent keeps (or rolls back to) the previous
    model. Raised by :mod:`firmware_agent.eta.interpreter`, with the interpreter's own
    ``ValueError``/``RuntimeError`` as ``__cause__`` when it was the one to refuse.
    """


class ModelUnavailableError(AgentError, ImportError):
    """No TFLite interpreter is installed (neither ai-edge-litert nor tflite-runtime).

    Not a :class:`ModelError`: the model may be fine, this van just cannot run it. The
    agent publishes the baseline ETA and says why in its status, and keeps the model.
    """


class FeatureError(AgentError, ValueError):
    """Inputs the ETA features cannot use: a naive datetime, a served mask of the wrong size."""
