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
                    signed by another key, or an algorithm other than EdDSA/Ed25519);
                    or a signed telemetry batch, or a status's sequence report
                    (``seqs``), whose signature does not verify
unproven_range      an unsigned telemetry batch without a fix: it could only settle
                    seqs it does not carry, which takes the device's signature
wrong_device        a validly signed POD whose claims name another device
pod_mismatch        the envelope's record disagrees with the signed claims (parcel,
                    stop_id, the chain seq, verdict, scan time): the claims are the
                    authority, so the unsigned copy must not say something else
replayed_pod        (:func:`check_replay`) another envelope seq already holds this
                    POD's chain seq: a POD sent again as a new record, or a forked chain
broken_chain        (:func:`check_chain`) ``prev`` is not the digest of the stored
                    predecessor, or the first POD does not start from the genesis
implausible_time    a record dated later than its receipt plus a clock skew, or before
                    the earliest plausible time (:class:`RecordTimes`); checked last,
                    on records that passed everything else
==================  ================================================================

Record times (issue 13, finding 10): a fix, event or POD dated in 2099 or 0001 would
show as a device's latest position, sort first or last in every list, and break
consumers' date types. A record is plausible from :attr:`RecordTimes.earliest` (2020,
before any van of this fleet: an unset clock says 1970, a GNSS week-number rollover
about 2006) or, when :attr:`RecordTimes.max_age` is set, its receipt minus that age,
up to its receipt plus :attr:`RecordTimes.max_ahead` (5 min of clock skew). A replay of
a long outage is therefore accepted, however old, unless ``max_age`` says otherwise.
An implausible record is quarantined whole and settles its seq (it came from its own,
enrolled device, signed when it is a POD, and resending it can never make it
plausible): the quarantine keeps it, so it is not lost, and the device moves on. A
telemetry batch keeps its plausible fixes: they are stored, and the batch goes to the
quarantine as well, settling the seqs of the fixes it refused. A quarantined POD's
successor stays chain ``pending``: its predecessor is in the quarantine, not the chain.

The store runs the same two checks again inside its write transaction, under a lock
on the device (:mod:`cloud_ingest.store.podlinks`): with N workers, a POD and its
predecessor may be checked at the same moment by two of them, neither seeing the other.

What a message settles in the acks (docs/ingest.md, "Acks"): a record its own seq; a
telemetry batch the seqs of the fixes it carries and, only when it is signed with the
device key (:data:`~firmware_agent.contract.telemetry.FLAG_SIGNED`), the seqs of its
range it does not carry (thinned away by the van's outbox); a status the seqs its
device released (the signed sequence report, ``seqs``: :class:`~cloud_ingest.store.
base.Released`). No message settles a seq by merely naming it: a batch claiming
``1..2**63-1`` with no fix, from whoever can publish on the van's topic, settled every
seq the van would ever send (issue 13, finding 7).

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

import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_ingest.store.base import (
    Covered,
    Device,
    Pod,
    Position,
    Quarantined,
    Released,
    StopEvent,
)
from firmware_agent.contract.envelope import RecordEnvelope, decode_envelope, decode_status
from firmware_agent.contract.errors import CodecError, SchemaError
from firmware_agent.contract.eventbatch import decode_events, is_event_batch
from firmware_agent.contract.jws import POD_TYP, JwsError, verify_compact
from firmware_agent.contract.pod import GENESIS_PREV, PodClaims
from firmware_agent.contract.records import PodRecord
from firmware_agent.contract.schema import validate
from firmware_agent.contract.seqreport import verify_report
from firmware_agent.contract.telemetry import decode_batch, verify_batch
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import ROOT, STATUS, STREAMS, parse_topic

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
    "unproven_range",
    "implausible_time",
]
Leaf = Literal["telemetry", "events", "pod", "status"]
MAX_MESSAGE_BYTES = 256 * 1024
_LEAVES: tuple[Leaf, ...] = ("telemetry", "events", "pod", "status")
# The claims a POD record repeats, by name.
_MIRRORED = ("parcel", "stop_id", "seq", "verdict", "distance_m", "outcome")


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

    ``items``: a telemetry batch's :class:`Position` per fix, and when it is signed one
    :class:`Covered` for its declared range; one :class:`StopEvent`; one :class:`Pod`
    (chain status "pending" until :func:`check_chain` or the store decides); or one
    :class:`StatusUpdate` and, when it carries a sequence report, a :class:`Released`
    per stream with something released. A telemetry batch some of whose fixes are
    dated implausibly also holds its :class:`Quarantined` and what it settles
    (:class:`RecordTimes`).
    """

    device_id: str
    leaf: Leaf
    items: tuple[Position | Covered | StopEvent | Pod | StatusUpdate | Released | Quarantined, ...]


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

EARLIEST_RECORD_TIME = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RecordTimes:
    """The record times ingest takes as plausible, against the message's receipt time:
    from ``earliest`` (and, when ``max_age`` is set, from the receipt minus it) to the
    receipt plus ``max_ahead``. See the module doc."""

    max_ahead: timedelta = timedelta(minutes=5)
    earliest: datetime = EARLIEST_RECORD_TIME
    max_age: timedelta | None = None

    def bounds(self, received_at: datetime) -> tuple[datetime, datetime]:
        """The first and the last plausible time of a record received at ``received_at``."""
        try:
            last = received_at + self.max_ahead
        except OverflowError:
            last = datetime.max.replace(tzinfo=UTC)
        first = self.earliest
        if self.max_age is not None:
            with contextlib.suppress(OverflowError):  # a max_age beyond year 1: none
                first = max(first, received_at - self.max_age)
        return first, last

    def why(self, t: datetime, received_at: datetime) -> str:
        """Why ``t`` is implausible for a record received at ``received_at``."""
        last = self.bounds(received_at)[1]
        when = f"dated {format_utc(t)}, received {format_utc(received_at)}"
        if t > last:
            return f"{when}: more than {self.max_ahead} ahead of its receipt"
        if t < self.earliest:
            return f"{when}: before {format_utc(self.earliest)}, the earliest plausible time"
        return f"{when}: older than {self.max_age} (record_time.max_age_days)"


RECORD_TIMES = RecordTimes()


def check_message(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    device: Device | None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    times: RecordTimes | None = RECORD_TIMES,
) -> Checked:
    """Check one uplink message; see the module doc for the reasons and their order.

    ``device``: the store's record of the topic's device (``None`` when unknown); a
    device with another id is a caller error (:class:`ValueError`). ``received_at``
    stands in for a status message's missing time, and is what record times are held
    to (``times``; None: any time). PODs are verified with the device's key; their
    chain links are checked separately (:func:`check_chain`).
    """
    checked = _check_message(
        topic, payload, received_at=received_at, device=device, max_bytes=max_bytes, times=times
    )
    if times is None or not isinstance(checked, Accepted) or checked.leaf == STATUS:
        return checked
    if checked.leaf == "events" and is_event_batch(payload):
        return checked  # each record's time was checked as the record was
    return _check_times(checked, times, topic=topic, payload=payload, received_at=received_at)


def _check_times(
    checked: Accepted,
    times: RecordTimes,
    *,
    topic: str,
    payload: bytes,
    received_at: datetime,
) -> Checked:
    """``checked`` less its implausibly dated records (see the module doc)."""
    first, last = times.bounds(received_at)
    device_id = checked.device_id
    if checked.leaf != "telemetry":
        for item in checked.items:
            if isinstance(item, StopEvent | Pod) and not first <= item.time <= last:
                stream: Literal["events", "pod"] = "pod" if isinstance(item, Pod) else "events"
                return Rejected(
                    "implausible_time",
                    f"{stream} seq {item.seq}: {times.why(item.time, received_at)}",
                    device_id,
                    Covered(device_id, stream, item.seq, item.seq),
                )
        return checked
    kept: list[Position | Covered | StopEvent | Pod | StatusUpdate | Released | Quarantined] = []
    refused: list[Position] = []
    for item in checked.items:
        if isinstance(item, Position) and not first <= item.point.time <= last:
            refused.append(item)
        else:
            kept.append(item)
    if not refused:
        return checked
    runs = _runs(sorted({p.seq for p in refused}))
    shown = ", ".join(f"{a}..{b}" if a < b else str(a) for a, b in runs[:10])
    detail = (
        f"{len(refused)} of {len(refused) + sum(isinstance(i, Position) for i in kept)} "
        f"fixes refused, settled here (seqs {shown}{', ...' if len(runs) > 10 else ''}); "
        f"the others are stored. Seq {refused[0].seq}: "
        f"{times.why(refused[0].point.time, received_at)}"
    )
    settled = [Covered(device_id, "telemetry", a, b) for a, b in runs]
    quarantined = Quarantined(
        received_at, topic, device_id, "implausible_time", detail, payload, settled[0]
    )
    return Accepted(device_id, "telemetry", (*kept, *settled[1:], quarantined))


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct ``seqs`` as runs of consecutive seqs."""
    runs: list[tuple[int, int]] = []
    for seq in seqs:
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _check_message(
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    device: Device | None,
    max_bytes: int,
    times: RecordTimes | None,
) -> Checked:
    """:func:`check_message` but for record times (which only an events batch, whose
    records are checked one by one, uses here)."""
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
        return _check_telemetry(device, payload)
    if leaf == STATUS:
        return _check_status(device, payload, received_at)
    if leaf == "events" and is_event_batch(payload):
        return _check_event_batch(
            device, topic, payload, received_at=received_at, max_bytes=max_bytes, times=times
        )
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


def _check_telemetry(device: Device, payload: bytes) -> Checked:
    device_id = device.device_id
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
    if batch.signature is not None:
        # The van's word that the seqs of its range it does not carry are gone.
        key = _public_key(device)
        if key is None or not verify_batch(payload, key):
            return Rejected(
                "bad_signature", "telemetry batch: signature does not verify", device_id
            )
        items.append(Covered(device_id, "telemetry", batch.first_seq, batch.last_seq))
    elif not items:
        return Rejected(
            "unproven_range",
            f"unsigned telemetry batch {batch.first_seq}..{batch.last_seq} without a fix: "
            "settling seqs it does not carry needs the device's signature",
            device_id,
        )
    # Unsigned, with fixes: each settles its own seq, and a thinned seq of its range
    # stays a hole until a signed batch covers it.
    return Accepted(device_id, "telemetry", tuple(items))


def _check_event_batch(
    device: Device,
    topic: str,
    payload: bytes,
    *,
    received_at: datetime,
    max_bytes: int,
    times: RecordTimes | None,
) -> Checked:
    """An events batch (:mod:`firmware_agent.contract.eventbatch`): the batch as a whole
    (it decodes, its header fits its schema, its device is the topic's), then each record
    exactly as the envelope it would have been alone (:func:`check_message` of
    :func:`~firmware_agent.contract.envelope.frame_record` with the batch's device and
    ``sent_at``). The records that pass are accepted; each one refused is quarantined
    on its own, as that envelope (what it settles, ``covered``, is what it would settle
    alone), and the others are stored."""
    device_id = device.device_id
    try:
        batch = decode_events(payload)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    rejected = _schema("event-batch", batch.header_json(), device_id)
    if rejected is not None:
        return rejected
    if batch.device_id != device_id:
        return _device_mismatch(batch.device_id, device_id)
    items: list[Position | Covered | StopEvent | Pod | StatusUpdate | Released | Quarantined] = []
    for r in batch.records:
        where = f"events batch {batch.first_seq}..{batch.last_seq}, seq {r.seq}"
        try:
            alone = batch.envelope(r)
        except CodecError as err:
            detail = f"{where}: {err}"
            items.append(
                Quarantined(received_at, topic, device_id, "malformed", detail, r.record, None)
            )
            continue
        checked = check_message(
            topic, alone, received_at=received_at, device=device, max_bytes=max_bytes, times=times
        )
        if isinstance(checked, Rejected):
            q = checked.quarantined(topic=topic, payload=alone, received_at=received_at)
            items.append(dataclasses.replace(q, detail=f"{where}: {q.detail}"))
        else:
            items.extend(checked.items)
    return Accepted(device_id, "events", tuple(items))


def _public_key(device: Device) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(device.public_key)
    except ValueError:  # a registered key that is no Ed25519 point
        return None


def _check_status(device: Device, payload: bytes, received_at: datetime) -> Checked:
    device_id = device.device_id
    try:
        status = decode_status(payload)
    except CodecError as err:
        return Rejected("malformed", str(err), device_id)
    rejected = _schema("status", status.to_json(), device_id)
    if rejected is not None:
        return rejected
    if status.device_id != device_id:
        return _device_mismatch(status.device_id, device_id)
    released: list[Released] = []
    if status.seqs is not None:
        key = _public_key(device)
        if key is None:
            return Rejected("bad_signature", "status seqs: device key unusable", device_id)
        try:
            report = verify_report(status.seqs, key)
        except JwsError as err:
            return Rejected("bad_signature", f"status seqs: {err}", device_id)
        except CodecError as err:
            return Rejected("malformed", f"status seqs: {err}", device_id)
        if report.device_id != device_id:
            return _device_mismatch(report.device_id, device_id)
        released = [Released(device_id, s, report.acked[s]) for s in STREAMS if report.acked[s]]
    update = StatusUpdate(
        device_id=device_id,
        state=status.state,
        time=status.time or received_at,
        received_at=received_at,
        health=status.health,
    )
    return Accepted(device_id, "status", (update, *released))


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
