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
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_ingest.store.base import (
    Covered,
    Device,
    Pod,
    Position,
    Quarantined,
    StopEvent,
)
from firmware_agent.contract.envelope import RecordEnvelope, decode_envelope, decode_status
from firmware_agent.contract.errors import CodecError, SchemaError
from firmware_agent.contract.jws import POD_TYP, JwsError, verify_compact
from firmware_agent.contract.pod import GENESIS_PREV, PodClaims
from firmware_agent.contract.records import PodRecord
from firmware_agent.contract.schema import validate
from firmware_agent.contract.telemetry import decode_batch
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
# The claims a POD record repeats, by name.
_MIRRORED = ("parcel", "stop_id", "seq", "verdict", "distance_m")


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
        env = decode_envelope(payload, stream=leaf)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    rejected = _schema(leaf, env.to_json(), device_id)
    if rejected is not None:
        return rejected
    # A NUL reaches a decoded string only through a \u0000 escape: walk only then.
    if b"\\u0000" in payload and _holds_nul(env.record):
        # Valid JSON (\u0000), but no PostgreSQL text or jsonb value can hold it.
        return Rejected("schema", "record holds a NUL character", device_id)
    if env.device_id != device_id:
        return _device_mismatch(env.device_id, device_id)
    try:
        record = env.typed()
    except CodecError as err:  # what the schema lets through and the record's class not
        return Rejected("schema", f"{leaf} record: {err}", device_id)
    if isinstance(record, PodRecord):
        return _check_pod(env, record, device)
    event = StopEvent(device_id, env.seq, env.historical, record)
    return Accepted(env.device_id, "events", (event,))


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


def _check_telemetry(device_id: str, payload: bytes) -> Checked:
    try:
        batch = decode_batch(payload)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    # The header only: every point is what decode_batch rebuilt from range-checked wire
    # integers, inside the bounds the schema's fix states (a property test holds every
    # decodable batch valid), and validating each fix was most of ingest's CPU time.
    rejected = _schema("telemetry-batch", batch.header_json(), device_id)
    if rejected is not None:
        return rejected
    if batch.device_id != device_id:
        return _device_mismatch(batch.device_id, device_id)
    items: list[Position | Covered] = [
        Position(device_id, seq, batch.historical, point) for seq, point in batch.points
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


def _check_pod(env: RecordEnvelope, record: PodRecord, device: Device) -> Checked:
    device_id = env.device_id
    settles = Covered(device_id, "pod", env.seq, env.seq)
    try:
        key = Ed25519PublicKey.from_public_bytes(device.public_key)
        signed = verify_compact(record.jws, key, typ=POD_TYP)
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
    try:
        claims = PodClaims.from_json(signed)
    except CodecError as err:
        return Rejected("malformed", f"signed, but not a POD: {err}", device_id, settles)
    if claims.device_id != device_id:
        return Rejected(
            "wrong_device",
            f"POD signed for device {claims.device_id!r:.80}, sent by {device_id!r}",
            device_id,
            settles,
        )
    differ = [name for name in _MIRRORED if getattr(claims, name) != getattr(record, name)]
    if claims.scan_time != record.time:
        differ.append("time (the claims' scan_time)")
    if differ:
        return Rejected(
            "pod_mismatch",
            f"record {', '.join(differ)} differ(s) from the signed claims",
            device_id,
            settles,
        )
    pod = Pod(device_id, env.seq, env.historical, record, claims.prev, "pending")
    return Accepted(device_id, "pod", (pod,))
