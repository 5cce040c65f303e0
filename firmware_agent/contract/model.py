"""A new ETA model for the vans: the signed payload of the retained ``model`` topic.

Wire format of ``fleet/v1/{device_id}/model`` (QoS 1, retained)::

    <JWS compact serialization, ASCII> b"\\n" <the .tflite file's bytes>

The JWS (Ed25519, ``alg`` ``EdDSA``, ``typ`` :data:`MODEL_TYP`, ``kid`` the RFC 7638
thumbprint of the fleet's model key; :mod:`firmware_agent.contract.jws`) signs the claims
(:class:`ModelClaims`)::

    {"model_version", "features_version", "sha256", "size_bytes", "issued",
     "devices" (optional: the device ids it is for; absent: every van)}

``sha256`` and ``size_bytes`` bind the signature to the model's bytes, which travel raw
after the newline: a 37 KB model costs ~37 KB on the cellular link, not the ~49 KB of
base64. A JWS holds no newline (three base64url segments and two dots), so the first
newline ends it. An empty payload (a retained-message delete) is not a model: it tells
the van to go back to the model shipped in its package, which the agent handles.

:func:`verify_model` checks, in this order, and raises :class:`ModelUpdateError` with
the failed check as ``reason``: the framing (``malformed``); a fleet key configured
(``no_key``); the ``kid`` names one of them (``unknown_key``; several keys are allowed,
for a key rotation); the signature and ``typ`` (``bad_signature``, ``malformed``); the
claims (``bad_claims``); the bytes' size and SHA-256 (``mismatch``); this van among
``devices`` (``not_for_device``); a file that :func:`~firmware_agent.eta.interpreter.
read_metadata`, the bounds-checked reader, accepts (``not_a_model``), whose own
``model_version`` and ``features_version`` are the signed ones (``mismatch``). Whether
the model runs (the model contract, a trial invoke) is :meth:`~firmware_agent.eta.
predictor.EtaPredictor.load`'s to say, after this.

:func:`admit_model` is the ordering rule (as the config downlink's
:func:`~firmware_agent.remote_config.admit`): a model must be issued later than the
downlinked model running, so a replayed older signed model is refused; the running
model offered again (the retained copy, at every reconnect) is a silent no-op, and the
running model's file signed again later (a key rotation) replaces its signature.

Pure: no I/O, no clock (``issued`` is given). The cloud signs with :func:`sign_model`
(``fleet-ingest sign-model``); the van verifies with :func:`verify_model`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_agent.contract.errors import ModelError, ModelUpdateError
from firmware_agent.contract.jws import (
    MAX_TOKEN_CHARS,
    JwsError,
    peek_claims,
    read_header,
    sign_compact,
    verify_compact,
)
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.model_file import MAX_MODEL_BYTES, read_metadata
from firmware_agent.contract.times import UTC_PATTERN, format_utc
from firmware_agent.contract.topics import valid_device_id

MODEL_TYP: Final = "fleet-eta-model"
SEPARATOR: Final = b"\n"
#: The longest payload a van reads: the longest token, the newline, the largest model.
MAX_PAYLOAD_BYTES: Final = MAX_TOKEN_CHARS + 1 + MAX_MODEL_BYTES
# As the events schema's "model": every ETA record carries the version.
MAX_VERSION_CHARS: Final = 100

_REQUIRED: Final = frozenset(
    {"model_version", "features_version", "sha256", "size_bytes", "issued"}
)
_OPTIONAL: Final = frozenset({"devices"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UTC = re.compile(UTC_PATTERN)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelClaims:
    """What the fleet's key signs about one model file.

    ``issued`` is UTC-aware (millisecond resolution on the wire); ``devices`` is None
    for a model meant for every van, else the sorted device ids it is for.
    """

    model_version: str
    features_version: str
    sha256: str
    size_bytes: int
    issued: datetime
    devices: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The claims as signed (``issued`` as ISO 8601 UTC with milliseconds)."""
        doc: dict[str, Any] = {
            "model_version": self.model_version,
            "features_version": self.features_version,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "issued": format_utc(self.issued),
        }
        if self.devices is not None:
            doc["devices"] = list(self.devices)
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedModel:
    """A verified model update: its claims, the signing key's ``kid``, the .tflite
    bytes (``model``) and the whole payload as received (``payload``, to store it and
    verify it again at the next start)."""

    claims: ModelClaims
    kid: str
    model: bytes = field(repr=False)
    payload: bytes = field(repr=False)

    @property
    def model_version(self) -> str:
        return self.claims.model_version

    @property
    def sha256(self) -> str:
        return self.claims.sha256

    @property
    def issued(self) -> datetime:
        return self.claims.issued


def _shown(value: Any) -> str:
    # Bounded: what a hostile publisher signs nothing of can still reach the log.
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _check_devices(devices: Iterable[str]) -> tuple[str, ...]:
    listed = tuple(devices)
    bad = [d for d in listed if not valid_device_id(d)]
    if bad:
        raise ModelUpdateError("bad_claims", f"devices: not a device id: {_shown(bad[0])}")
    if not listed:
        raise ModelUpdateError("bad_claims", "devices: empty (leave it out for every van)")
    if len(set(listed)) != len(listed):
        raise ModelUpdateError("bad_claims", "devices: a device is listed twice")
    return tuple(sorted(listed))


def _metadata(model: bytes) -> dict[str, str]:
    try:
        return read_metadata(model)
    except ModelError as err:
        raise ModelUpdateError("not_a_model", f"not a model this agent reads: {err}") from err


def sign_model(
    tflite_bytes: bytes,
    key: Ed25519PrivateKey,
    *,
    issued: datetime,
    model_version: str | None = None,
    devices: Sequence[str] | None = None,
) -> bytes:
    """The ``model`` payload for ``tflite_bytes``, signed with the fleet key ``key``.

    ``model_version`` and ``features_version`` are read from the file's metadata;
    ``model_version``, when given, must equal it (a van would refuse anything else).
    ``issued`` (timezone-aware) orders updates: a van refuses a model issued no later
    than the one it runs. ``devices`` restricts the model to those vans. Raises
    :class:`ModelUpdateError`: ``not_a_model`` for a file without the model contract's
    metadata, ``mismatch`` for another ``model_version``, ``bad_claims`` for a naive
    ``issued`` or a bad device id.
    """
    metadata = _metadata(tflite_bytes)
    file_version = metadata.get("model_version", "")
    features_version = metadata.get("features_version", "")
    if not file_version or not features_version:
        raise ModelUpdateError(
            "not_a_model", "the model's metadata lacks model_version or features_version"
        )
    if model_version is not None and model_version != file_version:
        raise ModelUpdateError(
            "mismatch",
            f"model_version {model_version!r} given, the file says {file_version!r}",
        )
    if issued.tzinfo is None:
        raise ModelUpdateError("bad_claims", "issued must be timezone-aware (UTC)")
    claims = ModelClaims(
        model_version=file_version,
        features_version=features_version,
        sha256=hashlib.sha256(tflite_bytes).hexdigest(),
        size_bytes=len(tflite_bytes),
        issued=issued.astimezone(UTC),
        devices=None if devices is None else _check_devices(dict.fromkeys(devices)),
    )
    _check_claims(claims.to_json())  # the van's checks: a model it would refuse is not made
    token = sign_compact(claims.to_json(), key, kid=key_thumbprint(key.public_key()), typ=MODEL_TYP)
    return token.encode("ascii") + SEPARATOR + tflite_bytes


def _split(payload: bytes) -> tuple[str, bytes]:
    """The token and the model bytes; ``malformed`` for anything else."""
    if not payload:
        raise ModelUpdateError("malformed", "empty payload (that clears the model)")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ModelUpdateError(
            "malformed", f"payload of {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
        )
    end = payload.find(SEPARATOR, 0, MAX_TOKEN_CHARS + 1)
    if end < 0:
        raise ModelUpdateError(
            "malformed", f"no newline after a signature within {MAX_TOKEN_CHARS} bytes"
        )
    try:
        token = payload[:end].decode("ascii")
    except UnicodeDecodeError as err:
        raise ModelUpdateError("malformed", "the signature is not ASCII") from err
    return token, payload[end + 1 :]


def _string(doc: dict[str, Any], name: str) -> str:
    value = doc[name]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_VERSION_CHARS:
        raise ModelUpdateError(
            "bad_claims",
            f"{name}: a string of 1 to {MAX_VERSION_CHARS} characters, got {_shown(value)}",
        )
    return value


def _check_claims(doc: dict[str, Any]) -> ModelClaims:
    """The claims of a signed token, every one checked; ``bad_claims`` otherwise.

    A claim this agent does not know is refused rather than ignored: it may be a
    restriction (a newer ``not_before``, say) that an older van would otherwise skip.
    """
    missing = sorted(_REQUIRED - doc.keys())
    if missing:
        raise ModelUpdateError("bad_claims", f"missing claim(s): {', '.join(missing)}")
    unknown = sorted(doc.keys() - _REQUIRED - _OPTIONAL)
    if unknown:
        raise ModelUpdateError(
            "bad_claims", f"unknown claim(s) {_shown(unknown)}: this agent cannot honour them"
        )
    sha256 = doc["sha256"]
    if not isinstance(sha256, str) or _SHA256_HEX.fullmatch(sha256) is None:
        raise ModelUpdateError(
            "bad_claims", f"sha256: 64 lowercase hex digits, got {_shown(sha256)}"
        )
    size = doc["size_bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_MODEL_BYTES:
        raise ModelUpdateError(
            "bad_claims",
            f"size_bytes: an integer within [1, {MAX_MODEL_BYTES}], got {_shown(size)}",
        )
    issued_text = doc["issued"]
    if not isinstance(issued_text, str) or _UTC.fullmatch(issued_text) is None:
        raise ModelUpdateError(
            "bad_claims",
            f"issued: ISO 8601 UTC (2026-11-21T09:00:00.000Z), got {_shown(issued_text)}",
        )
    try:
        issued = datetime.fromisoformat(issued_text).astimezone(UTC)
    except ValueError as err:  # matches the pattern, yet 2026-02-30
        raise ModelUpdateError("bad_claims", f"issued: not a time: {_shown(issued_text)}") from err
    devices: tuple[str, ...] | None = None
    if "devices" in doc:
        listed = doc["devices"]
        if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
            raise ModelUpdateError(
                "bad_claims", f"devices: a list of device ids, got {_shown(listed)}"
            )
        devices = _check_devices(listed)
    return ModelClaims(
        model_version=_string(doc, "model_version"),
        features_version=_string(doc, "features_version"),
        sha256=sha256,
        size_bytes=size,
        issued=issued,
        devices=devices,
    )


def _check_bytes(claims: ModelClaims, model: bytes) -> None:
    if len(model) != claims.size_bytes:
        raise ModelUpdateError(
            "mismatch", f"the model is {len(model)} bytes, the signature says {claims.size_bytes}"
        )
    digest = hashlib.sha256(model).hexdigest()
    if not hmac.compare_digest(digest, claims.sha256):
        raise ModelUpdateError("mismatch", "the model's SHA-256 is not the signed one")


def _check_metadata(claims: ModelClaims, model: bytes) -> None:
    metadata = _metadata(model)
    for name in ("model_version", "features_version"):
        if metadata.get(name) != getattr(claims, name):
            raise ModelUpdateError(
                "mismatch",
                f"the file's {name} {_shown(metadata.get(name))} is not the signed "
                f"{_shown(getattr(claims, name))}",
            )


def verify_model(
    payload: bytes, keys: Sequence[Ed25519PublicKey], *, device_id: str
) -> SignedModel:
    """Verify a ``model`` payload for the van ``device_id`` against the fleet ``keys``.

    Returns the :class:`SignedModel`; raises :class:`ModelUpdateError` at the first
    check that fails (module doc for the order and the reasons). The claims are read
    only once the signature verified.
    """
    token, model = _split(payload)
    if not keys:
        raise ModelUpdateError("no_key", "no fleet model key configured ([eta] model_keys)")
    try:
        kid = read_header(token).get("kid")
    except JwsError as err:
        raise ModelUpdateError("malformed", f"not a signed model: {err}") from err
    candidates = [key for key in keys if key_thumbprint(key) == kid]
    if not candidates:
        raise ModelUpdateError(
            "unknown_key",
            f"signed by key {_shown(kid)}, not one of the {len(keys)} fleet model key(s)",
        )
    failure: JwsError | None = None
    doc: dict[str, Any] | None = None
    for key in candidates:
        try:
            doc = verify_compact(token, key, typ=MODEL_TYP)
            break
        except JwsError as err:
            failure = err
    if doc is None:
        assert failure is not None
        reason = "bad_signature" if failure.reason == "bad_signature" else "malformed"
        raise ModelUpdateError(reason, f"signature refused: {failure}") from failure
    assert isinstance(kid, str)
    claims = _check_claims(doc)
    _check_bytes(claims, model)
    if claims.devices is not None and device_id not in claims.devices:
        raise ModelUpdateError(
            "not_for_device",
            f"model {claims.model_version} is signed for {len(claims.devices)} other "
            f"device(s), not {device_id}",
        )
    _check_metadata(claims, model)
    return SignedModel(claims=claims, kid=kid, model=model, payload=bytes(payload))


def read_unverified(payload: bytes) -> tuple[ModelClaims, str]:
    """The claims and ``kid`` of a signed model WITHOUT verifying the signature: for
    tools that report on or route a signed file (``fleet-ingest publish-model``),
    never for trust. Checks the framing, the claims and that the bytes are the ones
    the claims name; :class:`ModelUpdateError` otherwise."""
    token, model = _split(payload)
    try:
        kid = read_header(token).get("kid")
        doc = peek_claims(token)
    except JwsError as err:
        raise ModelUpdateError("malformed", f"not a signed model: {err}") from err
    claims = _check_claims(doc)
    _check_bytes(claims, model)
    return claims, kid if isinstance(kid, str) else ""


def admit_model(running: SignedModel | None, offered: SignedModel) -> bool:
    """Whether the verified ``offered`` replaces ``running`` (the downlinked model the
    van runs; None when it runs the shipped or configured one).

    True when nothing downlinked runs, or ``offered`` was issued later: a new model, or
    the running model's file signed again (a key rotation, another device list), whose
    new signature is then the one to keep. False for the running model's file (same
    SHA-256) issued no later: the broker re-sends the retained model at every
    reconnect, which is nothing to do and nothing wrong. :class:`ModelUpdateError`
    (``stale``) for another model issued no later than the running one: an older
    signed model replayed, or a publisher's clock gone back; either way the van cannot
    tell it is wanted.
    """
    if running is None or offered.issued > running.issued:
        return True
    if offered.sha256 == running.sha256:
        return False
    raise ModelUpdateError(
        "stale",
        f"model {offered.model_version} issued {format_utc(offered.issued)}, not later than "
        f"the running {running.model_version} (issued {format_utc(running.issued)}); keeping it",
    )
