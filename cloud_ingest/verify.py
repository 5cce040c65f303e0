"""Checking one received MQTT message, with no I/O: accepted records, or why not.

:func:`check_message` takes a topic, the payload bytes, the receipt time and the
topic's device as the store knows it, and returns :class:`Accepted` (the records to
store) or :class:`Rejected` (a stable reason, a human detail). It never raises for
anything a sender can put in a topic or payload. Two checks need stored PODs and are
separate so that the caller (the worker, and the store inside its write transaction)
can feed them: :func:`check_replay` and :func:`check_chain`.

Reasons, in the order they are checked (the first failure wins):

==================  ================================================================
bad_topic           not ``fleet/v1/{device_id}/{telemetry|events|pod|status}``
too_large           the payload is longer than ``max_bytes``
unknown_device      the topic's device is not registered
disabled_device     the topic's device is registered but disabled
malformed           the payload does not decode (docs/telemetry-batch.md, the JSON
                    envelopes); for a POD also a JWS that is not one, or a validly
                    signed payload that is not a POD
schema              decodes, but breaks its JSON Schema (docs/schemas/), lacks a field
                    ingest needs, or holds a NUL character (no PostgreSQL text takes it)
device_mismatch     the payload's device_id is not the topic's
bad_signature       the POD's JWS does not verify with the device's key (altered,
                    signed by another key, or an algorithm other than EdDSA/Ed25519)
wrong_device        a validly signed POD whose claims name another device
pod_mismatch        the envelope's record disagrees with the signed claims (parcel,
                    stop_id, the chain seq, verdict, scan time): the claims are the
                    authority, so the unsigned copy must not say something else
replayed_pod        (:func:`check_replay`) another envelope seq already holds this
                    POD's chain seq: a POD sent again as a new record, or a forked chain
broken_chain        (:func:`check_chain`) ``prev`` is not the digest of the stored
                    predecessor, or the first POD does not start from the genesis
==================  ================================================================

The store runs the same two checks again inside its write transaction, under a lock
on the device (:mod:`cloud_ingest.store.podlinks`): with N workers, a POD and its
predecessor may be checked at the same moment by two of them, neither seeing the other.

A :class:`Rejected` carries ``covered`` when the message came from a known, enabled
device on its own topic with a readable envelope, retrying it can never succeed, and
(for a POD) its signature verified with the device's key: the store counts those seqs
as received (the payload is quarantined, so nothing is lost) and the device's ack moves
on instead of it resending the message forever. A POD whose JWS does not verify
settles nothing: anyone able to publish on the van's topic could otherwise move its
pod ack past a genuine POD not yet delivered. A message from an unknown or disabled
device never moves an ack: it waits in the device's outbox until the device is
enrolled or enabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_ingest.store.base import (
    MAX_SEQ,
    Covered,
    Device,
    Pod,
    Position,
    Quarantined,
    StopEvent,
)
from firmware_agent.contract.codec import (
    VERSION,
    RecordEnvelope,
    TelemetryBatch,
    decode_batch,
    decode_record,
    decode_status,
)
from firmware_agent.contract.errors import CodecError, SchemaError
from firmware_agent.contract.jws import POD_TYP, JwsError, verify_compact
from firmware_agent.contract.pod import GENESIS_PREV, POD_VERSION, is_hex_digest, pod_digest
from firmware_agent.contract.schema import validate
from firmware_agent.contract.topics import ROOT, STATUS, parse_topic

Reason = Literal[
    "bad_topic",
    "too_large",
    "unknown_device",
    "disabled_device",
    "malformed",
    "schema",
    "device_mismatch",
    "bad_signature",
    "wrong_device",
    "pod_mismatch",
    "replayed_pod",
    "broken_chain",
]
Leaf = Literal["telemetry", "events", "pod", "status"]
MAX_MESSAGE_BYTES = 256 * 1024
_LEAVES: tuple[Leaf, ...] = ("telemetry", "events", "pod", "status")
# The fields of a POD the envelope's record repeats: claim name -> record name.
_MIRRORED = (("parcel", "parcel"), ("stop_id", "stop_id"), ("seq", "seq"), ("verdict", "verdict"))


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A device's retained status: ``time`` is the device's, or the receipt time when
    the message has none (the last will)."""

    device_id: str
    state: str
    time: datetime
    received_at: datetime
    health: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that passed every check, as the records to store.

    ``items``: a telemetry batch's :class:`Position` per fix and one :class:`Covered`
    for its declared range; one :class:`StopEvent`; one :class:`Pod` (chain status
    "pending" until :func:`check_chain` or the store decides); or one
    :class:`StatusUpdate`.
    """

    device_id: str
    leaf: Leaf
    items: tuple[Position | Covered | StopEvent | Pod | StatusUpdate, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message: ``reason`` (see the module doc), ``detail`` for humans.

    ``device_id``: the topic's device when the topic names one. ``covered``: the seqs
    the message settles (see the module doc), or ``None``.
    """

    reason: Reason
    detail: str
    device_id: str | None = None
    covered: Covered | None = None

    def quarantined(self, *, topic: str, payload: bytes, received_at: datetime) -> Quarantined:
        """The quarantine record of the refused message."""
        return Quarantined(
            received_at=received_at,
            topic=topic,
            device_id=self.device_id,
            reason=self.reason,
            detail=self.detail,
            payload=bytes(payload),
            covered=self.covered,
        )


Checked = Accepted | Rejected


def check_message(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    device: Device | None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Checked:
    """Check one uplink message; see the module doc for the reasons and their order.

    ``device``: the store's record of the topic's device (``None`` when unknown); a
    device with another id is a caller error (:class:`ValueError`). ``received_at``
    stands in for a status message's missing time. PODs are verified with the device's
    key; their chain links are checked separately (:func:`check_chain`).
    """
    try:
        parsed = parse_topic(topic)
    except CodecError as err:
        return Rejected("bad_topic", str(err))
    device_id, leaf = parsed.device_id, parsed.leaf
    if parsed.root != ROOT or leaf not in _LEAVES:
        return Rejected("bad_topic", f"{topic!r} is not an uplink topic", device_id)
    if device is not None and device.device_id != device_id:
        raise ValueError(f"device {device.device_id!r} given for a topic of {device_id!r}")
    if len(payload) > max_bytes:
        return Rejected("too_large", f"{len(payload)} bytes, at most {max_bytes}", device_id)
    if device is None:
        return Rejected("unknown_device", f"device {device_id!r} is not registered", device_id)
    if not device.enabled:
        return Rejected("disabled_device", f"device {device_id!r} is disabled", device_id)
    if leaf == "telemetry":
        return _check_telemetry(device_id, payload)
    if leaf == STATUS:
        return _check_status(device_id, payload, received_at)
    try:
        env = decode_record(payload, stream=leaf)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    rejected = _schema(leaf, env.to_json(), device_id)
    if rejected is not None:
        return rejected
    if _holds_nul(env.record):
        # Valid JSON (\u0000), but no PostgreSQL text or jsonb value can hold it.
        return Rejected("schema", "record holds a NUL character", device_id)
    if env.device_id != device_id:
        return _device_mismatch(env.device_id, device_id)
    if leaf == "events":
        return _check_event(env)
    return _check_pod(env, device)


def check_replay(pod: Pod, stored: Pod | None) -> Rejected | None:
    """``replayed_pod`` if ``stored`` (the device's stored POD with ``pod.pod_seq``, from
    :meth:`~cloud_ingest.store.base.Store.pod_by_pod_seq`) is another record; ``None``
    when there is none or it is this very record delivered again (a duplicate, which
    the store ignores)."""
    if stored is None or (stored.seq == pod.seq and stored.jws == pod.jws):
        return None
    same = "the same POD" if stored.jws == pod.jws else "another POD (a forked chain)"
    return Rejected(
        "replayed_pod",
        f"POD {pod.pod_seq} is stored already as envelope seq {stored.seq}; "
        f"envelope seq {pod.seq} carries {same}",
        pod.device_id,
        _settles(pod),
    )


def check_chain(pod: Pod, predecessor: Pod | None) -> Literal["ok", "pending"] | Rejected:
    """The link of ``pod`` to ``predecessor``, the device's stored POD with pod_seq - 1.

    "ok": ``prev`` is the predecessor's digest (the genesis for pod_seq 1); "pending":
    the predecessor is not stored (yet: reordering across workers, or never: a deleted
    POD, which stays visible as pending); ``broken_chain`` otherwise.
    """
    if pod.pod_seq == 1:
        if pod.prev == GENESIS_PREV:
            return "ok"
        return Rejected(
            "broken_chain", "POD 1 must have the genesis prev", pod.device_id, _settles(pod)
        )
    if predecessor is None:
        return "pending"
    if predecessor.device_id != pod.device_id or predecessor.pod_seq != pod.pod_seq - 1:
        raise ValueError(
            f"predecessor {predecessor.device_id}/{predecessor.pod_seq} given for "
            f"{pod.device_id}/{pod.pod_seq}"
        )
    if pod.prev == predecessor.digest:
        return "ok"
    return Rejected(
        "broken_chain",
        f"prev of POD {pod.pod_seq} is not the digest of POD {predecessor.pod_seq} "
        f"(envelope seq {predecessor.seq})",
        pod.device_id,
        _settles(pod),
    )


def _settles(pod: Pod) -> Covered:
    return Covered(pod.device_id, "pod", pod.seq, pod.seq)


def _schema(kind: str, message: dict[str, Any], device_id: str) -> Rejected | None:
    try:
        validate(kind, message)
    except SchemaError as err:
        return Rejected("schema", str(err), device_id)
    return None


def _holds_nul(value: object) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _device_mismatch(payload_device: str, topic_device: str) -> Rejected:
    return Rejected(
        "device_mismatch",
        f"payload of device {payload_device!r} on the topic of {topic_device!r}",
        topic_device,
    )


def _header(batch: TelemetryBatch) -> dict[str, Any]:
    return {
        "v": VERSION,
        "device_id": batch.device_id,
        "first_seq": batch.first_seq,
        "last_seq": batch.last_seq,
        "historical": batch.historical,
        "fixes": [],
    }


def _check_telemetry(device_id: str, payload: bytes) -> Checked:
    try:
        batch = decode_batch(payload)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    # The header only: every fix is what decode_batch rebuilt from range-checked wire
    # integers, inside the bounds the schema's fix states (a property test holds every
    # decodable batch valid), and validating each fix was most of ingest's CPU time.
    rejected = _schema("telemetry-batch", _header(batch), device_id)
    if rejected is not None:
        return rejected
    if batch.device_id != device_id:
        return _device_mismatch(batch.device_id, device_id)
    items: list[Position | Covered] = [
        Position(
            device_id=device_id,
            seq=seq,
            time=rec.time,
            lat=rec.lat,
            lon=rec.lon,
            speed_mps=rec.speed_mps,
            course_deg=rec.course_deg,
            hdop=rec.hdop,
            sats=rec.sats,
            historical=batch.historical,
        )
        for seq, rec in batch.fixes
    ]
    items.append(Covered(device_id, "telemetry", batch.first_seq, batch.last_seq))
    return Accepted(device_id, "telemetry", tuple(items))


def _check_status(device_id: str, payload: bytes, received_at: datetime) -> Checked:
    try:
        status = decode_status(payload)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    rejected = _schema("status", status.to_json(), device_id)
    if rejected is not None:
        return rejected
    if status.device_id != device_id:
        return _device_mismatch(status.device_id, device_id)
    update = StatusUpdate(
        device_id=device_id,
        state=status.state,
        time=status.time or received_at,
        received_at=received_at,
        health=status.health,
    )
    return Accepted(device_id, "status", (update,))


def _optional_text(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    return value if isinstance(value, str) else None


def _check_event(env: RecordEnvelope) -> Checked:
    record = env.record
    for name in ("stop_id", "route_id"):
        if record.get(name) is not None and not isinstance(record[name], str):
            return Rejected("schema", f"record {name} must be a string or null", env.device_id)
    event = StopEvent(
        device_id=env.device_id,
        seq=env.seq,
        type=record["type"],
        time=_record_time(env),
        stop_id=_optional_text(record, "stop_id"),
        route_id=_optional_text(record, "route_id"),
        historical=env.historical,
        record=record,
    )
    return Accepted(env.device_id, "events", (event,))


def _record_time(env: RecordEnvelope) -> datetime:
    # The codec accepted the envelope only with a valid UTC record time.
    return _utc_time(env.record["time"])


def _utc_time(text: str) -> datetime:
    """An ISO 8601 UTC time as an aware datetime; :class:`ValueError` if it is not one."""
    value = datetime.fromisoformat(text)
    if value.utcoffset() is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return value.astimezone(UTC)


def _check_pod(env: RecordEnvelope, device: Device) -> Checked:
    record, device_id = env.record, env.device_id
    settles = Covered(device_id, "pod", env.seq, env.seq)
    token = record.get("jws")
    if not isinstance(token, str):
        return Rejected("schema", "record jws must be a string", device_id)
    for _, record_name in _MIRRORED:
        if record_name not in record:
            return Rejected("schema", f"record lacks {record_name}", device_id)
    try:
        key = Ed25519PublicKey.from_public_bytes(device.public_key)
        claims = verify_compact(token, key, typ=POD_TYP)
    except JwsError as err:
        reason: Reason = (
            "malformed" if err.reason in ("malformed", "bad_payload") else "bad_signature"
        )
        # Unauthenticated: whoever could publish on the van's topic must not move the
        # van's pod ack (its next genuine POD would be acked before it was delivered).
        # The cost: a van whose POD is really corrupt stalls its pod ack there, visible
        # as a gap plus the quarantined payload, until an operator acts.
        return Rejected(reason, f"jws: {err}", device_id)
    except ValueError as err:  # a registered key that is no Ed25519 point
        return Rejected("bad_signature", f"device key unusable: {err}", device_id)
    pod_seq, prev = claims.get("seq"), claims.get("prev")
    faults = []
    if claims.get("v") != POD_VERSION:
        faults.append(f"v is {claims.get('v')!r:.20}, not {POD_VERSION}")
    if not isinstance(pod_seq, int) or isinstance(pod_seq, bool) or not 1 <= pod_seq <= MAX_SEQ:
        faults.append("seq is not an integer in 1..2**63-1")
    if not is_hex_digest(prev):
        faults.append("prev is not 64 lowercase hex digits")
    for name in ("device_id", "parcel", "stop_id", "verdict"):
        if not isinstance(claims.get(name), str):
            faults.append(f"{name} is not a string")
    if faults:
        return Rejected(
            "malformed", "signed, but not a POD: " + "; ".join(faults), device_id, settles
        )
    assert isinstance(pod_seq, int)
    assert isinstance(prev, str)
    if claims["device_id"] != device_id:
        return Rejected(
            "wrong_device",
            f"POD signed for device {claims['device_id']!r:.80}, sent by {device_id!r}",
            device_id,
            settles,
        )
    # type() too: True == 1 in Python, but a record saying true for seq 1 is not 1.
    differ = [
        r for c, r in _MIRRORED if type(claims[c]) is not type(record[r]) or claims[c] != record[r]
    ]
    time = _record_time(env)
    scan_time = claims.get("scan_time")
    if scan_time is not None and not _same_time(scan_time, time):
        differ.append("time (the claims' scan_time)")
    if differ:
        return Rejected(
            "pod_mismatch",
            f"record {', '.join(differ)} differ(s) from the signed claims",
            device_id,
            settles,
        )
    pod = Pod(
        device_id=device_id,
        seq=env.seq,
        pod_seq=pod_seq,
        parcel=claims["parcel"],
        stop_id=claims["stop_id"],
        time=time,
        verdict=claims["verdict"],
        jws=token,
        digest=pod_digest(token),
        prev=prev,
        chain_status="pending",
        historical=env.historical,
    )
    return Accepted(device_id, "pod", (pod,))


def _same_time(text: object, value: datetime) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return _utc_time(text) == value
    except (ValueError, OverflowError):  # OverflowError: a time beyond year 1..9999 in UTC
        return False
