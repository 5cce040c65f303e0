"""The ingest service's HTTP API (FastAPI): enrollment, positions, tracks, arrivals, PODs.

:func:`create_app` builds the application around one open, migrated
:class:`~cloud_ingest.store.base.Store` and the service's workers (for health and
metrics). Every handler is a coroutine over the store's coroutines: nothing blocks the
event loop the workers share. The OpenAPI document is at ``/openapi.json`` (``/docs``
renders it).

Conventions: JSON in and out; times are ISO 8601 UTC with milliseconds and a ``Z``
(``2026-11-21T09:14:03.250Z``); query times must carry an offset (``Z`` or
``+01:00``, written ``%2B01:00`` in a URL). Errors are ``{"detail": ...}``: 404 for
an unknown device or parcel, 409 for an enrollment conflict, 400 for a bad time range
or cursor, 422 for input that breaks the declared schema, 503 when the database cannot
be used.

Who may call what (:mod:`cloud_ingest.access`, docs/ingest.md): every endpoint but
``/health`` needs ``Authorization: Bearer <token>`` with its scope (``READ``,
``ADMIN``, ... below): 401 without a valid one, 403 without the scope.

Lists that can grow with what the vans send are pages read with a keyset: the database
reads one page (``LIMIT`` in SQL, never a range loaded and sliced), and a response says
how to ask for the next one (``next_cursor``, or a ``Link: <...>; rel="next"`` header
where the body is a bare list). A cursor is opaque: pass it back as it came.

A POD is served with its JWS verbatim and a verification made at request time with
the key the device is registered with now (plus the chain status the store recorded
when it linked the POD), so a dispute can be settled from one response: anyone can
check the same JWS with the returned JWK in any JOSE library.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from cloud_ingest import __version__
from cloud_ingest.access import PUBLIC, Access, denied, install, require_scope
from cloud_ingest.errors import StorageError
from cloud_ingest.fleetstream import position_record
from cloud_ingest.store.base import (
    CHAIN_STATUSES,
    ChainStatus,
    Counts,
    Device,
    DeviceConflictError,
    Pod,
    Position,
    QuarantineEntry,
    StopEvent,
    Store,
    UnknownDeviceError,
)
from cloud_ingest.verify import Reason
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.jws import POD_TYP, JwsError, peek_claims, read_header, verify_compact
from firmware_agent.contract.keys import key_thumbprint, public_jwk, public_key_pem
from firmware_agent.contract.outcomes import Outcome, is_delivery
from firmware_agent.contract.pod import PodClaims
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import STREAMS, Stream

if TYPE_CHECKING:
    from cloud_ingest.enroll import Enrollment
    from cloud_ingest.worker import IngestWorker

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Parcel codes and route ids come from labels and manifests: any printable text, no
# control characters (PostgreSQL text refuses NUL).
_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MAX_TRACK_RANGE = timedelta(hours=24)
MAX_TRACK_POSITIONS = 100_000
DEFAULT_TRACK_POSITIONS = 20_000
MAX_ARRIVALS = 10_000
MAX_QUARANTINE = 1_000
# Of each quarantined payload a page shows its first bytes (a page of 1,000 costs a few
# MB whatever the messages were); GET /v1/quarantine/{id}/payload gives what is kept.
QUARANTINE_PREVIEW_BYTES = 4096
# PODs of one parcel per response: normally one; a van that signs thousands for one
# parcel code must not make a request verify them all.
MAX_PARCEL_PODS = 100
_MAX_PEM_CHARS = 4096
# Any id will do: a primary-key lookup that finds nothing is the cheapest round trip
# through the store's connection (a count would scan the tables).
_HEALTH_PROBE_ID = "health-probe"
_REASONS: tuple[str, ...] = get_args(Reason)

UtcTime = Annotated[
    datetime,
    PlainSerializer(format_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]
ArrivalsLimit = Annotated[int, Query(ge=1, le=MAX_ARRIVALS, description="Oldest first")]
ArrivalsCursor = Annotated[
    str | None, Query(max_length=400, description='From the Link header (rel="next")')
]
DeviceIdPath = Annotated[
    str,
    Path(pattern=DEVICE_ID_PATTERN, description="Device id (the MQTT client certificate's CN)"),
]


# --- response and request bodies ------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class ErrorOut(_Out):
    detail: str


class Jwk(_Out):
    """RFC 8037 public JWK of an Ed25519 key."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str


class DeviceIn(BaseModel):
    """Enrollment: the public key the van prints with ``fleet-agent pod pubkey``.

    ``enabled``: omitted, a new device is enabled and an enrolled one keeps its state.
    """

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    public_key_pem: str = Field(max_length=_MAX_PEM_CHARS, description="SubjectPublicKeyInfo PEM")
    enabled: bool | None = None

    @field_validator("public_key_pem")
    @classmethod
    def _ed25519_pem(cls, pem: str) -> str:
        parse_public_key_pem(pem)
        return pem


class DeviceOut(_Out):
    device_id: str
    enabled: bool
    registered_at: UtcTime
    kid: str = Field(description="RFC 7638 thumbprint of the key: the kid of its PODs")
    public_key_pem: str
    public_jwk: Jwk


class PositionOut(_Out):
    """A telemetry point as stored: every field the van sent (null when unknown), as the
    normalized stream's position record (fleetstream-position.schema.json)."""

    device_id: str
    seq: int
    time: UtcTime
    lat: float
    lon: float
    alt_m: float | None = Field(description="Altitude above mean sea level, m")
    speed_mps: float | None
    course_deg: float | None
    mode: int = Field(description="gpsd's mode: 0 unknown, 1 no fix, 2 2D, 3 3D")
    quality: int | None = Field(description="GGA fix quality (1 GPS, 2 DGPS, 4 RTK, ...)")
    hdop: float | None
    sats_used: int | None = Field(description="Satellites used in the fix")
    historical: bool


class TrackOut(_Out):
    """Positions with ``start <= time < end`` in (time, seq) order. ``truncated``: there
    are more; ask again with ``cursor=next_cursor`` (and the same start and end), or
    from ``next_start`` (the time of the next position: one exactly at it may come
    twice)."""

    device_id: str
    start: UtcTime
    end: UtcTime
    positions: list[PositionOut]
    truncated: bool
    next_start: UtcTime | None
    next_cursor: str | None = Field(description="The next page: pass it as cursor")


class ArrivalOut(_Out):
    device_id: str
    seq: int
    type: str
    time: UtcTime
    stop_id: str | None
    route_id: str | None
    historical: bool
    record: dict[str, Any] = Field(description="The van's event message as sent")


class PodVerificationOut(_Out):
    """``verified``: the signature holds with the device's registered key, the signed
    claims are the stored ones, and the store linked the POD into the device's hash
    chain ("ok"). "pending": its predecessor has not arrived (or was deleted);
    "broken": the predecessor that arrived does not match its ``prev``."""

    verified: bool
    signature_valid: bool
    claims_match: bool
    chain_status: ChainStatus
    detail: str | None
    kid: str | None = Field(description="Thumbprint of the registered key used")
    signed_kid: str | None = Field(description="The kid in the JWS header")
    public_jwk: Jwk | None = Field(description="The registered key: verify the JWS with it")
    verified_at: UtcTime


class PodOut(_Out):
    device_id: str
    seq: int = Field(description="The envelope's seq on the pod stream")
    pod_seq: int = Field(description="The POD chain's own seq")
    parcel: str
    stop_id: str
    time: UtcTime
    verdict: str
    outcome: Outcome = Field(
        description="The attempt's outcome (docs/outcomes.md): delivered, safe_place and "
        "neighbour are deliveries, the others failed attempts; delivered for PODs signed "
        "before outcomes existed"
    )
    distance_m: float | None = Field(description="To the stop's geofence, m (null: no fix)")
    historical: bool
    jws: str = Field(description="Compact JWS exactly as the van signed it")
    digest: str = Field(description="SHA-256 of the JWS: the next POD's prev")
    prev: str
    claims: dict[str, Any] | None = Field(
        description="The JWS payload (trust it only when signature_valid)"
    )
    verification: PodVerificationOut


class ParcelPodsOut(_Out):
    parcel: str
    pods: list[PodOut] = Field(description="One per delivery attempt, in scan time order")
    delivered: bool = Field(
        description="Whether one of these attempts delivered the parcel (an outcome of "
        "delivered, safe_place or neighbour)"
    )
    truncated: bool = Field(
        default=False, description=f"More than {MAX_PARCEL_PODS} PODs name this parcel"
    )


class CoveredOut(_Out):
    stream: Stream
    first_seq: int
    last_seq: int


class QuarantinedOut(_Out):
    id: int = Field(description="The row: GET /v1/quarantine/{id}/payload for its payload")
    received_at: UtcTime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload_bytes: int = Field(description="Length of the message as received")
    payload_sha256: str = Field(description="SHA-256 of the message as received (hex)")
    kept_bytes: int = Field(
        description="How much of the message the quarantine keeps: all of it (payload_bytes) "
        "when it settled seqs, else at most its first quarantine.payload_max_bytes"
    )
    payload_base64: str = Field(
        description=f"The message's first bytes, at most {QUARANTINE_PREVIEW_BYTES}: all of "
        "it unless payload_truncated"
    )
    payload_text: str | None = Field(
        description="The same bytes as text when they are UTF-8 (a character cut at the "
        "end of a truncated payload left out)"
    )
    payload_truncated: bool = Field(description="payload_base64 holds less than the message")
    covered: CoveredOut | None = Field(description="Seqs this message settled in the acks")


class QuarantinePageOut(_Out):
    """Refused messages, newest first. ``next_cursor``: older ones remain; pass it as
    ``cursor``."""

    messages: list[QuarantinedOut]
    next_cursor: str | None


class GapOut(_Out):
    stream: Stream
    first_seq: int
    last_seq: int
    reason: Literal["missing", "released"] = Field(
        description="missing: not received (yet); released: they will never come: the "
        "device released them in its signed sequence report (it holds none of them any "
        "more) and the store does not hold them: lost with a dropped or restored database, "
        "or numbers the van skipped after its outbox was lost or damaged (the ack moved "
        "past them)"
    )


class GapsOut(_Out):
    device_id: str
    acks: dict[Stream, int] = Field(description="Cumulative ack per stream")
    gaps: list[GapOut]


class StoreHealthOut(_Out):
    ok: bool
    detail: str | None


class WorkerHealthOut(_Out):
    client_id: str
    connected: bool


class HealthOut(_Out):
    status: Literal["ok", "unavailable"]
    store: StoreHealthOut
    workers: list[WorkerHealthOut]


# --- helpers ----------------------------------------------------------------------------


def parse_public_key_pem(pem: str) -> Ed25519PublicKey:
    """An Ed25519 public key from a SubjectPublicKeyInfo PEM; :class:`ValueError` with
    a message for a person otherwise (a private key, another algorithm, garbage)."""
    text = pem.strip()
    first = text.split("\n", 1)[0]
    if "PRIVATE KEY" in first:
        raise ValueError(
            "this is a PRIVATE key: send the public one (fleet-agent pod pubkey --key ...)"
        )
    if not first.startswith("-----BEGIN PUBLIC KEY-----"):
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)")
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        raise ValueError("not a valid PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"a {type(key).__name__}, not an Ed25519 key")  # noqa: TRY004 (pydantic: ValueError is a 422)
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key(device: Device) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(device.public_key)


def device_out(device: Device) -> DeviceOut:
    key = _key(device)
    return DeviceOut(
        device_id=device.device_id,
        enabled=device.enabled,
        registered_at=device.registered_at,
        kid=key_thumbprint(key),
        public_key_pem=public_key_pem(key).decode("ascii"),
        public_jwk=Jwk.model_validate(public_jwk(key)),
    )


def _position_out(p: Position) -> PositionOut:
    return PositionOut.model_validate(position_record(p))


def _arrival_out(e: StopEvent) -> ArrivalOut:
    return ArrivalOut.model_validate(
        {
            "device_id": e.device_id,
            "seq": e.seq,
            "type": e.type,
            "time": e.time,
            "stop_id": e.stop_id,
            "route_id": e.route_id,
            "historical": e.historical,
            "record": e.record_json(),
        }
    )


def verify_pod(pod: Pod, device: Device | None, now: datetime) -> PodOut:
    """``pod`` with its verification against ``device``'s registered key (see
    :class:`PodVerificationOut`)."""
    try:
        claims: dict[str, Any] | None = peek_claims(pod.jws)
    except JwsError:
        claims = None
    try:
        signed_kid = read_header(pod.jws).get("kid")
    except JwsError:
        signed_kid = None
    signed_kid = signed_kid if isinstance(signed_kid, str) else None
    kid: str | None = None
    jwk: Jwk | None = None
    signature_valid = claims_match = False
    detail: str | None = None
    if device is None:
        detail = f"device {pod.device_id!r} is not registered: no key to verify with"
    else:
        key = _key(device)
        kid, jwk = key_thumbprint(key), Jwk.model_validate(public_jwk(key))
        try:
            verified = verify_compact(pod.jws, key, typ=POD_TYP)
        except JwsError as err:
            if err.reason == "bad_signature" and signed_kid is not None and signed_kid != kid:
                detail = f"signed by another key (kid {signed_kid}; the registered key is {kid})"
            else:
                detail = f"jws: {err}"
        else:
            signature_valid = True
            try:
                signed = PodClaims.from_json(verified)
            except CodecError as err:
                detail = f"signed, but not a POD: {err}"
            else:
                record = pod.record
                expected = {
                    "device_id": (signed.device_id, pod.device_id),
                    "seq": (signed.seq, pod.pod_seq),
                    "parcel": (signed.parcel, record.parcel),
                    "stop_id": (signed.stop_id, record.stop_id),
                    "verdict": (signed.verdict, record.verdict),
                    "outcome": (signed.outcome, record.outcome),
                    "distance_m": (signed.distance_m, record.distance_m),
                    "scan_time": (signed.scan_time, record.time),
                    "prev": (signed.prev, pod.prev),
                }
                differ = [k for k, (claim, stored) in expected.items() if claim != stored]
                claims_match = not differ
                if differ:
                    detail = f"stored {', '.join(differ)} differ(s) from the signed claims"
    if detail is None and pod.chain_status != "ok":
        detail = {
            "pending": f"POD {pod.pod_seq - 1} of this device (its predecessor) is not stored",
            "broken": f"POD {pod.pod_seq - 1} of this device does not match this POD's prev",
        }.get(pod.chain_status)
    return PodOut(
        device_id=pod.device_id,
        seq=pod.seq,
        pod_seq=pod.pod_seq,
        parcel=pod.record.parcel,
        stop_id=pod.record.stop_id,
        time=pod.time,
        verdict=pod.record.verdict,
        outcome=pod.record.outcome,
        distance_m=pod.record.distance_m,
        historical=pod.historical,
        jws=pod.jws,
        digest=pod.digest,
        prev=pod.prev,
        claims=claims,
        verification=PodVerificationOut(
            verified=signature_valid and claims_match and pod.chain_status == "ok",
            signature_valid=signature_valid,
            claims_match=claims_match,
            chain_status=pod.chain_status,
            detail=detail,
            kid=kid,
            signed_kid=signed_kid,
            public_jwk=jwk,
            verified_at=now,
        ),
    )


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 time with an offset, as UTC; :class:`HTTPException` 400 otherwise."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        hint = " (in a URL, write + as %2B)" if " " in text else ""
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{name}: {text!r} is not an ISO 8601 time such as 2026-11-21T09:00:00Z{hint}",
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"{name}: {text!r} has no UTC offset; add Z or +HH:MM",
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{name}: {text!r} is out of range"
        ) from None


# --- keyset cursors -------------------------------------------------------------------
# Opaque to clients (base64url of "kind:fields"), so their shape can change; each
# endpoint takes back only its own kind.


def _cursor(kind: str, *fields: object) -> str:
    text = ":".join([kind, *(str(f) for f in fields)])
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def _uncursor(kind: str, cursor: str, count: int) -> list[str]:
    """The ``count`` fields of a cursor of ``kind``; :class:`HTTPException` 400 otherwise."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        text = ""
    parts = text.split(":", count)
    if len(parts) != count + 1 or parts[0] != kind:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "cursor: not one this endpoint gave (pass next_cursor)"
        )
    return parts[1:]


def _cursor_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > 2**63 - 1:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor: out of range")
    return int(text)


def _cursor_time(text: str) -> datetime:
    us = _cursor_int(text)
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor: out of range") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def _time_us(t: datetime) -> int:
    return (t - _EPOCH) // _ONE_US


def track_cursor(p: Position) -> str:
    """The cursor of the track page that starts after ``p``."""
    return _cursor("t", _time_us(p.time), p.seq)


def arrivals_cursor(e: StopEvent) -> str:
    """The cursor of the arrivals page that starts after ``e``."""
    return _cursor("a", _time_us(e.time), e.seq, e.device_id)


def _quarantined_out(q: QuarantineEntry) -> QuarantinedOut:
    shown = q.payload[:QUARANTINE_PREVIEW_BYTES]
    truncated = len(shown) < q.payload_bytes
    try:
        # A truncated payload may end inside a character: leave that one out.
        text: str | None = codecs.getincrementaldecoder("utf-8")().decode(
            shown, final=not truncated
        )
    except UnicodeDecodeError:
        text = None
    c = q.covered
    return QuarantinedOut(
        id=q.id,
        received_at=q.received_at,
        topic=q.topic,
        device_id=q.device_id,
        reason=q.reason,
        detail=q.detail,
        payload_bytes=q.payload_bytes,
        payload_sha256=q.payload_sha256.hex(),
        kept_bytes=q.kept_bytes,
        payload_base64=base64.b64encode(shown).decode("ascii"),
        payload_text=text,
        payload_truncated=truncated,
        covered=None
        if c is None
        else CoveredOut(stream=c.stream, first_seq=c.first_seq, last_seq=c.last_seq),
    )


# Positions serialized per chunk: a day at 1 Hz (86,400) would hold the event loop for
# over a second in one piece; a chunk takes a few milliseconds, and the response is
# sent chunk by chunk, so the workers sharing the loop keep running. Each position is
# its stream record (the JSON PositionOut declares), written by json rather than
# pydantic: it is JSON already, and making models of it only to dump them is waste.
_TRACK_CHUNK = 1000


async def _track_json(head: TrackOut, positions: Sequence[Position]) -> AsyncIterator[bytes]:
    """``head`` (its ``positions`` empty) as JSON with ``positions`` filled in, in pieces."""
    before, after = head.model_dump_json().encode().split(b'"positions":[]', 1)
    yield before + b'"positions":['
    for i in range(0, len(positions), _TRACK_CHUNK):
        chunk = [position_record(p) for p in positions[i : i + _TRACK_CHUNK]]
        text = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
        yield (b"," if i else b"") + text[1:-1].encode()
        await asyncio.sleep(0)
    yield b"]" + after


# Quarantine rows serialized per chunk (each up to ~20 KB of JSON: a 4 KiB preview as
# base64 and as escaped text).
_QUARANTINE_CHUNK = 50


async def _quarantine_json(
    head: QuarantinePageOut, rows: Sequence[QuarantineEntry]
) -> AsyncIterator[bytes]:
    """``head`` (its ``messages`` empty) as JSON with ``rows`` filled in, in pieces: the
    page's JSON is never one buffer, and the loop the workers share is never held long."""
    before, after = head.model_dump_json().encode().split(b'"messages":[]', 1)
    yield before + b'"messages":['
    for i in range(0, len(rows), _QUARANTINE_CHUNK):
        chunk = rows[i : i + _QUARANTINE_CHUNK]
        text = b",".join(_quarantined_out(q).model_dump_json().encode() for q in chunk)
        yield (b"," if i else b"") + text
        await asyncio.sleep(0)
    yield b"]" + after


# --- metrics ----------------------------------------------------------------------------


class IngestCollector(Collector):
    """Prometheus metrics read live from the workers' counters at each scrape, and the
    store's row counts (refreshed by the ``/metrics`` handler, at most every
    ``counts_max_age_s``: counting rows of large tables is not free)."""

    def __init__(self, workers: Sequence[IngestWorker]) -> None:
        self._workers = tuple(workers)
        self.counts: Counts | None = None
        self.counts_at = float("-inf")
        self.store_up = False

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check for clashes: this registry holds only us

    def collect(self) -> Iterable[Metric]:
        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"fleet_ingest_{name}", doc, labels=["worker", *labels])

        received = counter("messages_received", "Uplink messages taken from the broker")
        stored = counter("records_stored", "Positions, events and PODs stored for the first time")
        duplicates = counter("records_duplicate", "Records received again and ignored")
        quarantined = counter(
            "messages_quarantined", "Messages refused and kept in quarantine", "reason"
        )
        batches = counter("batches", "Store transactions (one per batch of messages)")
        connects = counter("broker_connects", "Successful connections to the broker")
        store_errors = counter("store_errors", "Batches the store failed to write")
        published = counter(
            "stream_messages_published", "fleetstream/v1 messages published and PUBACKed"
        )
        reclaimed = counter(
            "stream_messages_reclaimed",
            "fleetstream/v1 messages taken over from the outbox after their writer's lease",
        )
        lost = counter(
            "seqs_lost",
            "Seqs a device released that the store did not hold (lost with a dropped or "
            "restored database, or skipped by a van whose outbox was reset; listed as "
            "released in /gaps)",
        )
        connected = GaugeMetricFamily(
            "fleet_ingest_worker_connected", "1 while the worker is subscribed", labels=["worker"]
        )
        for w in self._workers:
            name, c = w.config.client_id, w.counts
            received.add_metric([name], c.received)
            stored.add_metric([name], c.stored)
            duplicates.add_metric([name], c.duplicates)
            for reason in sorted(set(_REASONS) | c.quarantined.keys()):
                quarantined.add_metric([name, reason], c.quarantined.get(reason, 0))
            batches.add_metric([name], c.batches)
            connects.add_metric([name], c.connects)
            store_errors.add_metric([name], c.store_errors)
            published.add_metric([name], c.stream_published)
            reclaimed.add_metric([name], c.stream_reclaimed)
            lost.add_metric([name], c.lost)
            connected.add_metric([name], 1 if w.connected.is_set() else 0)
        yield from (received, stored, duplicates, quarantined, batches, connects, store_errors)
        yield from (published, reclaimed, lost)
        yield connected
        yield GaugeMetricFamily(
            "fleet_ingest_store_up", "1 when the last row count succeeded", value=self.store_up
        )
        counts = self.counts
        if counts is None:
            return
        rows = GaugeMetricFamily("fleet_ingest_rows", "Rows per table", labels=["table"])
        for table, n in (
            ("devices", counts.devices),
            ("positions", counts.positions),
            ("stop_events", counts.stop_events),
            ("pods", counts.pods),
            ("quarantine", counts.quarantined),
        ):
            rows.add_metric([table], n)
        yield rows
        pods = GaugeMetricFamily(
            "fleet_ingest_pods", "Stored PODs by hash-chain status", labels=["chain_status"]
        )
        by_status = {
            "ok": counts.pods - counts.pods_pending - counts.pods_broken,
            "pending": counts.pods_pending,
            "broken": counts.pods_broken,
        }
        for chain_status in CHAIN_STATUSES:
            pods.add_metric([chain_status], by_status[chain_status])
        yield pods


# --- the application ----------------------------------------------------------------------


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status_code)


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}
_BAD_RANGE: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut}, 404: {"model": ErrorOut}}
# Each endpoint's scope (docs/ingest.md, "Who may call the API"): reads need read;
# enrolling and re-keying a device need enroll or admin (POST /v1/enroll takes either
# scope too, when no one-time token comes in its body); enabling and disabling need
# admin; dispatch (publishing manifests, configs, models over HTTP) has no endpoint yet.
READ = require_scope("read")
ADMIN = require_scope("admin")
DISPATCH = require_scope("dispatch")
ENROLL = require_scope("admin", "enroll")


def create_app(
    store: Store,
    *,
    workers: Sequence[IngestWorker] = (),
    counts_max_age_s: float = 10.0,
    health_timeout_s: float = 5.0,
    enrollment: Enrollment | None = None,
    access: Access | None = None,
) -> FastAPI:
    """The API over ``store`` (open and migrated; the caller owns its lifetime).

    ``workers``: the service's MQTT workers, for ``/health`` (each must be connected)
    and ``/metrics`` (their counters). ``counts_max_age_s``: how long ``/metrics`` may
    reuse the store's row counts. ``health_timeout_s``: how long ``/health`` waits for
    the store before calling it unavailable. ``enrollment``: the fleet CA for
    ``POST /v1/enroll`` (:mod:`cloud_ingest.enroll`); ``None``: no such endpoint.
    ``access``: who may call what
    (:mod:`cloud_ingest.access`); by default API tokens from ``store``, ``/metrics``
    closed. Every route declares its scope (``dependencies=[READ]``, ...) or
    ``openapi_extra=PUBLIC``; one that declares neither stops the app from building.
    """
    access = Access(store) if access is None else access
    app = FastAPI(
        title="fleet-ingest",
        version=__version__,
        summary="What the fleet's vans sent: devices, positions, tracks, arrivals, PODs.",
        responses={503: {"model": ErrorOut, "description": "The database cannot be used"}},
    )
    collector = IngestCollector(workers)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (refusal := await denied(request)) is not None:
            return refusal
        # FastAPI's own answer, less the ``input`` it echoes: a private key pasted by
        # mistake must not travel back through proxies and their logs.
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE, f"storage unavailable: {exc}")

    @app.exception_handler(UnknownDeviceError)
    async def _unknown_device(request: Request, exc: UnknownDeviceError) -> JSONResponse:
        return _error(status.HTTP_404_NOT_FOUND, str(exc))

    @app.exception_handler(DeviceConflictError)
    async def _conflict(request: Request, exc: DeviceConflictError) -> JSONResponse:
        return _error(status.HTTP_409_CONFLICT, f"{exc}; POST again with ?replace_key=true")

    async def known_device(device_id: str) -> Device:
        device = await store.get_device(device_id)
        if device is None:
            raise UnknownDeviceError(f"device {device_id!r} is not registered")
        return device

    if enrollment is not None:
        from cloud_ingest.enroll import enroll_router  # noqa: PLC0415

        app.include_router(enroll_router(enrollment, store))

    # --- devices --------------------------------------------------------------------

    @app.post(
        "/v1/devices",
        status_code=status.HTTP_201_CREATED,
        tags=["devices"],
        dependencies=[ENROLL],
        responses={
            200: {"model": DeviceOut, "description": "Already enrolled (same or replaced key)"},
            409: {"model": ErrorOut, "description": "Enrolled with another key"},
        },
    )
    async def register_device(
        body: DeviceIn,
        response: Response,
        replace_key: Annotated[
            bool, Query(description="Allow a new key for an enrolled (re-provisioned) device")
        ] = False,
    ) -> DeviceOut:
        """Enroll a device with its public key (idempotent with the same key)."""
        key = raw_public_key(parse_public_key_pem(body.public_key_pem))
        existing = await store.get_device(body.device_id)
        enabled = body.enabled
        if enabled is None:
            enabled = True if existing is None else existing.enabled
        device = await store.register_device(
            body.device_id, key, enabled=enabled, replace_key=replace_key
        )
        if existing is not None:
            response.status_code = status.HTTP_200_OK
        response.headers["Location"] = f"/v1/devices/{device.device_id}"
        return device_out(device)

    @app.get("/v1/devices", tags=["devices"], dependencies=[READ])
    async def list_devices() -> list[DeviceOut]:
        """Every enrolled device, by id."""
        return [device_out(d) for d in await store.list_devices()]

    @app.get("/v1/devices/{device_id}", tags=["devices"], responses=_NOT_FOUND, dependencies=[READ])
    async def get_device(device_id: DeviceIdPath) -> DeviceOut:
        """One enrolled device."""
        return device_out(await known_device(device_id))

    @app.post(
        "/v1/devices/{device_id}/enable",
        tags=["devices"],
        responses=_NOT_FOUND,
        dependencies=[ADMIN],
    )
    async def enable_device(device_id: DeviceIdPath) -> DeviceOut:
        """Accept the device's messages again (workers notice within seconds)."""
        return device_out(await store.set_enabled(device_id, True))

    @app.post(
        "/v1/devices/{device_id}/disable",
        tags=["devices"],
        responses=_NOT_FOUND,
        dependencies=[ADMIN],
    )
    async def disable_device(device_id: DeviceIdPath) -> DeviceOut:
        """Refuse the device's messages: they wait in its outbox, unacknowledged."""
        return device_out(await store.set_enabled(device_id, False))

    # --- positions ------------------------------------------------------------------

    @app.get("/v1/positions/latest", tags=["positions"], dependencies=[READ])
    async def latest_positions() -> list[PositionOut]:
        """Each device's latest position (its highest telemetry seq), by device id."""
        return [_position_out(p) for p in await store.last_positions()]

    @app.get(
        "/v1/devices/{device_id}/track",
        tags=["positions"],
        dependencies=[READ],
        response_model=TrackOut,
        responses=_BAD_RANGE,
    )
    async def track(
        device_id: DeviceIdPath,
        start: Annotated[str, Query(description="ISO 8601 with offset; inclusive")],
        end: Annotated[str, Query(description="ISO 8601 with offset; exclusive")],
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_POSITIONS)] = DEFAULT_TRACK_POSITIONS,
        cursor: Annotated[
            str | None, Query(max_length=200, description="next_cursor of the page before")
        ] = None,
    ) -> StreamingResponse:
        """The device's positions in ``[start, end)``, at most 24 h per request, at most
        ``limit`` per page (read with LIMIT: a page costs its size, not its range's)."""
        after = None
        if cursor is not None:
            t, seq = _uncursor("t", cursor, 2)
            after = (_cursor_time(t), _cursor_int(seq))
        t0, t1 = parse_time("start", start), parse_time("end", end)
        if t1 <= t0:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "end must be after start")
        if t1 - t0 > MAX_TRACK_RANGE:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"the range is {t1 - t0}; at most {MAX_TRACK_RANGE} per request "
                "(ask for consecutive ranges)",
            )
        await known_device(device_id)
        positions = await store.track(device_id, t0, t1, limit=limit + 1, after=after)
        truncated = len(positions) > limit
        head = TrackOut(
            device_id=device_id,
            start=t0,
            end=t1,
            positions=[],
            truncated=truncated,
            next_start=positions[limit].time if truncated else None,
            next_cursor=track_cursor(positions[limit - 1]) if truncated else None,
        )
        return StreamingResponse(
            _track_json(head, positions[:limit]), media_type="application/json"
        )

    # --- arrivals -------------------------------------------------------------------

    async def arrivals_page(
        request: Request,
        response: Response,
        limit: int,
        cursor: str | None,
        *,
        route_id: str | None = None,
        device_id: str | None = None,
    ) -> list[ArrivalOut]:
        after = None
        if cursor is not None:
            t, seq, device = _uncursor("a", cursor, 3)
            after = (_cursor_time(t), device, _cursor_int(seq))
        events = await store.arrivals(
            route_id=route_id, device_id=device_id, limit=limit + 1, after=after
        )
        if len(events) > limit:
            events = events[:limit]
            url = request.url.include_query_params(cursor=arrivals_cursor(events[-1]))
            response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return [_arrival_out(e) for e in events]

    @app.get(
        "/v1/routes/{route_id}/arrivals",
        tags=["arrivals"],
        responses={400: {"model": ErrorOut}},
        dependencies=[READ],
    )
    async def route_arrivals(
        request: Request,
        response: Response,
        route_id: Annotated[str, Path(max_length=200, pattern=_TEXT_PATTERN)],
        limit: ArrivalsLimit = 1000,
        cursor: ArrivalsCursor = None,
    ) -> list[ArrivalOut]:
        """Arrival events recorded for a route, in time order (empty: none yet); more
        than ``limit``: a ``Link`` header (rel="next") names the next page."""
        return await arrivals_page(request, response, limit, cursor, route_id=route_id)

    @app.get(
        "/v1/devices/{device_id}/arrivals",
        tags=["arrivals"],
        responses=_BAD_RANGE,
        dependencies=[READ],
    )
    async def device_arrivals(
        request: Request,
        response: Response,
        device_id: DeviceIdPath,
        limit: ArrivalsLimit = 1000,
        cursor: ArrivalsCursor = None,
    ) -> list[ArrivalOut]:
        """The device's arrival events, in time order; more than ``limit``: a ``Link``
        header (rel="next") names the next page."""
        await known_device(device_id)
        return await arrivals_page(request, response, limit, cursor, device_id=device_id)

    # --- PODs -----------------------------------------------------------------------

    @app.get("/v1/pods/{parcel}", tags=["pods"], responses=_NOT_FOUND, dependencies=[READ])
    async def pods_by_parcel(
        parcel: Annotated[str, Path(max_length=200, pattern=_TEXT_PATTERN)],
    ) -> ParcelPodsOut:
        """Every POD of a parcel, one per delivery attempt (normally one; a failed attempt
        and a later delivery are two; at most 100), each verified now."""
        pods = await store.pods_by_parcel(parcel, limit=MAX_PARCEL_PODS + 1)
        if not pods:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no POD for parcel {parcel!r}")
        truncated = len(pods) > MAX_PARCEL_PODS
        pods = pods[:MAX_PARCEL_PODS]
        devices: dict[str, Device | None] = {}
        for device_id in sorted({p.device_id for p in pods}):
            devices[device_id] = await store.get_device(device_id)
        now = datetime.now(UTC)
        return ParcelPodsOut(
            parcel=parcel,
            delivered=any(is_delivery(p.record.outcome) for p in pods),
            pods=[verify_pod(p, devices[p.device_id], now) for p in pods],
            truncated=truncated,
        )

    # --- operations -----------------------------------------------------------------

    @app.get(
        "/v1/quarantine",
        tags=["operations"],
        dependencies=[READ],
        response_model=QuarantinePageOut,
        responses={400: {"model": ErrorOut}},
    )
    async def quarantine(
        limit: Annotated[int, Query(ge=1, le=MAX_QUARANTINE)] = 100,
        cursor: Annotated[
            str | None, Query(max_length=200, description="next_cursor of the page before")
        ] = None,
    ) -> StreamingResponse:
        """The latest refused messages, newest first, with why: per message its length,
        SHA-256 and first bytes (``GET /v1/quarantine/{id}/payload``: all that is kept).
        A page holds at most ``limit``; ``next_cursor`` asks for the older ones."""
        before_id = None if cursor is None else _cursor_int(_uncursor("q", cursor, 1)[0])
        rows = await store.quarantine(
            limit + 1, before_id=before_id, payload_max_bytes=QUARANTINE_PREVIEW_BYTES
        )
        more = len(rows) > limit
        rows = rows[:limit]
        head = QuarantinePageOut(
            messages=[], next_cursor=_cursor("q", rows[-1].id) if more else None
        )
        return StreamingResponse(_quarantine_json(head, rows), media_type="application/json")

    @app.get(
        "/v1/quarantine/{row_id}/payload",
        tags=["operations"],
        dependencies=[READ],
        response_class=Response,
        responses={
            200: {
                "content": {"application/octet-stream": {}},
                "description": "What the quarantine kept of the message (X-Payload-Bytes: "
                "the message's length; X-Payload-SHA256: its digest, hex)",
            },
            404: {"model": ErrorOut},
        },
    )
    async def quarantine_payload(
        row_id: Annotated[int, Path(ge=1, le=2**63 - 2, description="The message's id")],
    ) -> Response:
        """The bytes the quarantine kept of one message: all of it when it settled seqs,
        else its first ``quarantine.payload_max_bytes`` (``X-Payload-Bytes`` says how long
        the message was)."""
        rows = await store.quarantine(1, before_id=row_id + 1)
        if not rows or rows[0].id != row_id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no quarantined message {row_id}")
        q = rows[0]
        return Response(
            q.payload,
            media_type="application/octet-stream",
            headers={
                "X-Payload-Bytes": str(q.payload_bytes),
                "X-Payload-SHA256": q.payload_sha256.hex(),
            },
        )

    @app.get(
        "/v1/devices/{device_id}/gaps",
        tags=["operations"],
        responses=_NOT_FOUND,
        dependencies=[READ],
    )
    async def gaps(device_id: DeviceIdPath) -> GapsOut:
        """Each stream's cumulative ack, the seq ranges missing below its highest seq, and
        those the device released that the store does not hold (``released``: lost with a
        dropped or restored database, or skipped by a van whose outbox was reset)."""
        await known_device(device_id)
        acks = await store.acks(device_id)
        return GapsOut(
            device_id=device_id,
            acks={s: acks.get(s, 0) for s in STREAMS},
            gaps=[GapOut.model_validate(g) for g in await store.gaps(device_id)],
        )

    @app.get(
        "/health",
        tags=["operations"],
        openapi_extra=PUBLIC,
        responses={503: {"model": HealthOut, "description": "Store or a worker unavailable"}},
    )
    async def health(response: Response) -> HealthOut:
        """200 when the store answers and every MQTT worker is connected, else 503."""
        try:
            async with asyncio.timeout(health_timeout_s):
                await store.get_device(_HEALTH_PROBE_ID)
        except TimeoutError:
            store_health = StoreHealthOut(ok=False, detail=f"no answer in {health_timeout_s} s")
        except StorageError as err:
            store_health = StoreHealthOut(ok=False, detail=str(err))
        else:
            store_health = StoreHealthOut(ok=True, detail=None)
        worker_health = [
            WorkerHealthOut(client_id=w.config.client_id, connected=w.connected.is_set())
            for w in workers
        ]
        ok = store_health.ok and all(w.connected for w in worker_health)
        if not ok:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthOut(
            status="ok" if ok else "unavailable", store=store_health, workers=worker_health
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        **({"openapi_extra": PUBLIC} if access.metrics_public else {"dependencies": [READ]}),
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}, "description": "Metrics"}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition: worker counters and table row counts."""
        now = time.monotonic()
        if now - collector.counts_at >= counts_max_age_s:
            try:
                async with asyncio.timeout(health_timeout_s):
                    collector.counts = await store.counts()
            except (StorageError, TimeoutError):
                collector.counts, collector.store_up = None, False
            else:
                collector.store_up = True
            collector.counts_at = now
        # The text format Prometheus asks for (OpenMetrics when it says so), as
        # prometheus_client's own exporters negotiate it.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type})

    install(app, access)
    return app
