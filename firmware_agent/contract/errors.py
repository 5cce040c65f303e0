"""The contract's exception tree.

Everything the contract raises derives from :class:`ContractError`; specific errors
also derive from the builtin they resemble, so callers may catch either (the gpiozero
idiom). Both sides catch these at their boundary: the van (:mod:`firmware_agent.errors`
builds on them) and ingest, which turns a refused message into a quarantine reason.
"""

from __future__ import annotations


class ContractError(Exception):
    """Root of every error raised by :mod:`firmware_agent.contract`."""


class CodecError(ContractError, ValueError):
    """An MQTT payload or topic does not hold to the v1 contract (docs/asyncapi.yaml).

    Raised by the codecs (:mod:`.telemetry`, :mod:`.envelope`, :mod:`.records`) and
    :mod:`.topics` for anything malformed: truncated or trailing bytes, a wrong magic or
    version, bad UTF-8 or JSON, a field of the wrong type or out of range, a sequence
    range that does not hold, and for values that cannot be encoded. Decoders never
    raise anything else, so a consumer catches this one error per message and drops
    the message.
    """


class SchemaError(CodecError):
    """A message fails its JSON Schema (:mod:`.schema`).

    ``kind`` names the schema (``"events"``, ``"ack"``, ...), ``path`` the failing
    location as a JSON path (``"$.record.stop_id"``; ``"$"`` for the whole message) and
    ``reason`` what is wrong there.
    """

    def __init__(self, kind: str, path: str, reason: str) -> None:
        super().__init__(f"{kind}: {path}: {reason}")
        self.kind = kind
        self.path = path
        self.reason = reason


class UnknownSchemaError(ContractError, LookupError):
    """No schema of that kind exists (a programming error, not a bad message)."""


class ModelUpdateError(CodecError):
    """A ``model`` downlink (or the stored copy of one) is refused; the running model stays.

    :attr:`reason` names the check that failed (:mod:`.model`): ``malformed`` (not a JWS,
    a newline and a model), ``no_key`` (no fleet model key configured), ``unknown_key``
    (signed by a key that is not one of them), ``bad_signature``, ``bad_claims`` (signed
    claims missing or out of range), ``mismatch`` (the file is not the one signed: size,
    SHA-256, version), ``not_for_device`` (its ``devices`` leave this van out),
    ``not_a_model`` (signed, but not a model this agent can run), ``stale`` (issued no
    later than the running downlinked model: a replay), ``storage`` (verified but could
    not be stored). A :class:`CodecError`, so the uplink counts it as a refused downlink.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(ContractError, ValueError):
    """A model file cannot be used: not a TFLite flatbuffer, truncated, or not the shape
    the agent expects (one float32 ``[batch, n]`` input and output, readable metadata).

    The file is at fault, not the van: the agent keeps (or rolls back to) the previous
    model. Raised by :mod:`.model_file` and by the van's interpreter wrapper, with the
    interpreter's own ``ValueError``/``RuntimeError`` as ``__cause__`` when it was the
    one to refuse.
    """


class FeatureError(ContractError, ValueError):
    """Inputs the ETA features cannot use: a naive datetime, a served mask of the wrong size."""
