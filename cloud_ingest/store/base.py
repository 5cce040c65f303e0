"""The storage interface of the ingest service and the records it stores.

Every backend (:mod:`cloud_ingest.store.sqlite`, :mod:`cloud_ingest.store.postgres`)
implements :class:`Store` and passes the same test suite. The contract, whatever the
backend:

- Records are stored idempotently on (device_id, stream, seq): a record delivered twice
  is stored once and the second copy counted as a duplicate, never an error. PODs are
  also unique per (device_id, pod_seq), the POD chain's own sequence.
- :meth:`Store.write` is ONE transaction: the positions, events, PODs, quarantined
  messages and received sequence ranges of a batch are all stored, or none.
- The cumulative ack of a stream is the highest S such that every seq 1..S of that
  stream has been stored, covered by a signed telemetry batch's range (fixes thinned away
  by the outbox leave holes that are not gaps), settled by a quarantined message (see
  :class:`Quarantined`), or released by the device's signed sequence report (see
  :class:`Released`: ingest lost them, and they are kept as lost ranges). Received seqs
  are kept as merged, disjoint ranges per device and stream, so an ack is one indexed
  lookup and a gap report is a short scan.
- PODs are linked as a hash chain when stored: a POD whose predecessor (pod_seq - 1) is
  not stored yet is kept with ``chain_status`` "pending" and upgraded to "ok" in the
  transaction that stores the predecessor (or marked "broken" if the predecessor's
  digest is not its ``prev``). See :func:`cloud_ingest.store.podlinks.plan_pods`.
- The normalized stream (:mod:`cloud_ingest.fleetstream`) has an outbox: the messages
  announcing a write's new records (built by the writer, ``announce``) are stored by
  that same transaction, leased to the writer for ``stream_lease_s``. The writer
  publishes them and names them in a later batch's ``streamed`` (or
  :meth:`Store.stream_done`), which deletes them; a message whose writer died before
  that is claimed again by any worker once its lease ran out (:meth:`Store.claim_stream`).
  So a record stored is announced at least once, even if the worker is killed between
  its commit and its publishes.
- Times are UTC-aware datetimes; naive ones are refused when a record is built.
- A row holds the contract's record as the van made it (:class:`Position`,
  :class:`StopEvent`, :class:`Pod`), so no field is lost between the wire and the row.

Backends open their connection in :meth:`Store.open` (or ``async with``), create or
upgrade their schema in :meth:`Store.migrate` (idempotent, recorded in a
``schema_migrations`` table), and never block the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, cast, get_args

from cloud_ingest.apitokens import ApiToken
from cloud_ingest.errors import IngestError, StorageError
from firmware_agent.contract.pod import pod_digest
from firmware_agent.contract.records import EventRecord, PodRecord, TelemetryPoint, decode_event
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream, valid_device_id

if TYPE_CHECKING:
    from cloud_ingest.store.plan import Announcer

ChainStatus = Literal["ok", "pending", "broken"]
CHAIN_STATUSES: tuple[ChainStatus, ...] = get_args(ChainStatus)

PUBLIC_KEY_BYTES = 32


class DeviceConflictError(IngestError, ValueError):
    """A device is registered again with another public key (and ``replace_key`` unset)."""


class UnknownDeviceError(IngestError, LookupError):
    """The device is not registered."""


class UnknownTokenError(IngestError, LookupError):
    """No API token has this id."""


class MigrationError(StorageError):
    """The database schema is newer than this code, or a migration failed."""


# The contract's rule, named as the store's callers know it.
is_device_id = valid_device_id


def require_utc(name: str, value: datetime) -> None:
    """:class:`ValueError` unless ``value`` is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")


def _require_seq(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ:
        raise ValueError(f"{name} must be an integer in 1..2**63-1, not {value!r}")


def _require_device_id(value: str) -> None:
    if not is_device_id(value):
        raise ValueError(f"invalid device_id {value!r}")


def storable_text(text: str) -> str:
    """``text`` as every backend can store it: NUL and lone surrogates escaped.

    For quarantined messages, whose topic and detail come from outside: PostgreSQL text
    refuses NUL, and no UTF-8 database takes a lone surrogate.
    """
    if text.isprintable() or ("\x00" not in text and text.isascii()):
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its statements run in one transaction with its record."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Device:
    """An enrolled device: its raw 32-byte Ed25519 public key, and whether it may send."""

    device_id: str
    public_key: bytes
    enabled: bool
    registered_at: datetime

    def __post_init__(self) -> None:
        _require_device_id(self.device_id)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ValueError("public_key must be the raw 32 bytes of an Ed25519 key")
        require_utc("registered_at", self.registered_at)


@dataclass(frozen=True, slots=True)
class Position:
    """One telemetry point as stored: the van's :class:`~firmware_agent.contract.records.
    TelemetryPoint` as it decoded, with its device, its seq on the telemetry stream and
    whether it came late (historical)."""

    device_id: str
    seq: int
    historical: bool
    point: TelemetryPoint

    def __post_init__(self) -> None:
        _require_seq("seq", self.seq)

    @property
    def time(self) -> datetime:
        return self.point.time


@dataclass(frozen=True, slots=True)
class StopEvent:
    """One record of the events stream as stored: the van's record, decoded."""

    device_id: str
    seq: int
    historical: bool
    record: EventRecord
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_seq("seq", self.seq)

    def record_json(self) -> dict[str, Any]:
        """The record's JSON (:meth:`~firmware_agent.contract.records.JsonRecord.to_json`),
        encoded once: the stored row, the stream and the API all say it. Read only."""
        if self._json is None:
            object.__setattr__(self, "_json", self.record.to_json())
        assert self._json is not None
        return self._json

    @property
    def type(self) -> str:
        return self.record.type

    @property
    def time(self) -> datetime:
        return self.record.time

    @property
    def stop_id(self) -> str | None:
        value = getattr(self.record, "stop_id", None)
        return value if isinstance(value, str) else None

    @property
    def route_id(self) -> str | None:
        value = getattr(self.record, "route_id", None)
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Pod:
    """A verified proof of delivery as stored: the van's :class:`~firmware_agent.contract.
    records.PodRecord` (``record.seq`` is the chain's seq, :attr:`pod_seq`; ``seq`` is
    the envelope's on the pod stream), its ``prev`` claim and its link in the chain.

    ``record.jws`` is the compact serialization exactly as received (it is the evidence,
    and its SHA-256, :attr:`digest`, is what the next POD's ``prev`` must be).
    ``chain_status``: "ok" when this POD's ``prev`` matched the digest of its stored
    predecessor (or it is the first POD, with the genesis ``prev``), "pending" while the
    predecessor is not stored, "broken" when the predecessor arrived after this POD and
    did not match.
    """

    device_id: str
    seq: int
    historical: bool
    record: PodRecord
    prev: str
    chain_status: ChainStatus
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        _require_seq("seq", self.seq)
        _require_seq("pod_seq", self.record.seq)
        if self.chain_status not in CHAIN_STATUSES:
            raise ValueError(f"chain_status must be one of {CHAIN_STATUSES}")
        object.__setattr__(self, "digest", pod_digest(self.record.jws))

    @property
    def pod_seq(self) -> int:
        return self.record.seq

    @property
    def jws(self) -> str:
        return self.record.jws

    @property
    def time(self) -> datetime:
        return self.record.time


def point_columns(point: TelemetryPoint) -> tuple[Any, ...]:
    """A point's columns after its time, as both backends store them: lat, lon, alt_m,
    speed_mps, course_deg, mode, quality, hdop, sats_used."""
    p = point
    return (
        p.lat,
        p.lon,
        p.alt_m,
        p.speed_mps,
        p.course_deg,
        p.mode,
        p.quality,
        p.hdop,
        p.sats_used,
    )


def point_from_columns(time: datetime, columns: Sequence[Any]) -> TelemetryPoint:
    """The point stored as ``time`` and :func:`point_columns`."""
    lat, lon, alt_m, speed_mps, course_deg, mode, quality, hdop, sats_used = columns
    return TelemetryPoint(
        time=time,
        lat=lat,
        lon=lon,
        alt_m=alt_m,
        speed_mps=speed_mps,
        course_deg=course_deg,
        mode=mode,
        quality=quality,
        hdop=hdop,
        sats_used=sats_used,
    )


def pod_from_columns(time: datetime, row: Sequence[Any]) -> Pod:
    """The POD stored as the columns both backends keep, in this order: device_id, seq,
    historical, time (converted by the backend: ``time``), stop_id, parcel, pod_seq,
    verdict, distance_m, jws, prev, chain_status, outcome."""
    return Pod(
        device_id=row[0],
        seq=row[1],
        historical=bool(row[2]),
        record=PodRecord(
            time=time,
            stop_id=row[4],
            parcel=row[5],
            seq=row[6],
            verdict=row[7],
            distance_m=row[8],
            jws=row[9],
            outcome=row[12],
        ),
        prev=row[10],
        chain_status=cast(ChainStatus, row[11]),
    )


def check_enrollment(device_id: str, public_key: bytes) -> None:
    """ValueError unless ``device_id`` may be enrolled with ``public_key`` (raw 32 bytes
    of an Ed25519 key): what :meth:`Store.register_device` refuses before any SQL."""
    if not is_device_id(device_id):
        raise ValueError(f"invalid device_id {device_id!r}")
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("public_key must be the raw 32 bytes of an Ed25519 key")


class StoreLifetime:
    """``async with store:`` opens it and closes it, whatever the backend."""

    __slots__ = ()

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def event_json(event: StopEvent) -> str:
    """An event's record as stored: its JSON, as the van sent it."""
    return json.dumps(event.record_json(), ensure_ascii=False, separators=(",", ":"))


def event_from_json(stored: str | Mapping[str, Any]) -> EventRecord:
    """The record :func:`event_json` stored (PostgreSQL's jsonb hands back an object)."""
    return decode_event(json.loads(stored) if isinstance(stored, str) else stored)


@dataclass(frozen=True, slots=True)
class Covered:
    """A range of one stream's seqs received as a whole: ``first_seq..last_seq``.

    A telemetry batch covers its declared range, including the seqs of fixes the outbox
    thinned away; a quarantined message that can never pass covers its own seq.
    """

    device_id: str
    stream: Stream
    first_seq: int
    last_seq: int

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {self.stream!r}")
        _require_seq("first_seq", self.first_seq)
        _require_seq("last_seq", self.last_seq)
        if self.first_seq > self.last_seq:
            raise ValueError(f"first_seq {self.first_seq} > last_seq {self.last_seq}")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message ingest refused, with why (``payload``: the message as received).

    ``covered``: the seqs the message stands for when retrying it can never succeed (a
    bad signature from a known, enabled device, a replayed POD, ...). The store counts
    them as received so that acks move past them and the device stops resending; the
    payload kept here is the evidence, so nothing is lost. ``None`` when the message
    must not move the ack (unknown or disabled device, unreadable envelope).

    What the store keeps of the payload: :func:`kept_payload` (all of it when it settled
    seqs; else its first bytes beyond a size), with its length and SHA-256 always.
    """

    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes
    covered: Covered | None = None

    def __post_init__(self) -> None:
        require_utc("received_at", self.received_at)


# What the quarantine keeps of a message that settled nothing (the sender still holds its
# records, or it is no record at all): its first bytes, and its length and SHA-256.
QUARANTINE_PAYLOAD_MAX_BYTES = 4096


def kept_payload(q: Quarantined, max_bytes: int = QUARANTINE_PAYLOAD_MAX_BYTES) -> bytes:
    """What a store keeps of ``q.payload``: all of it when the message settled seqs
    (``covered``: the quarantine holds the only copy of what it stood for, and it passed
    the message size check), else at most its first ``max_bytes`` bytes. A 60 MB message
    from a broker without a size limit, or anyone's junk, costs ``max_bytes``."""
    if q.covered is not None or len(q.payload) <= max_bytes:
        return q.payload
    return q.payload[:max_bytes]


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A stored quarantine row, as read back (:meth:`Store.quarantine`).

    ``id``: the row's, increasing with insertion (the key of the newest-first pages).
    ``payload``: the first bytes of what the store kept, at most as many as the read
    asked for. ``payload_bytes`` and ``payload_sha256``: the length and digest of the
    message as received; ``kept_bytes``: how many of its bytes the store keeps (all:
    ``payload_bytes``; see :func:`kept_payload`).
    """

    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes
    payload_bytes: int
    payload_sha256: bytes
    kept_bytes: int
    covered: Covered | None = None

    @property
    def whole(self) -> bool:
        """``payload`` is the whole message."""
        return len(self.payload) == self.payload_bytes


@dataclass(frozen=True, slots=True)
class Released:
    """The device's signed word (its sequence report, :mod:`firmware_agent.contract.
    seqreport`) that it holds no record of ``stream`` at or below ``seq``: it applied an
    ack that far, so it deleted them. The store settles every seq up to ``seq`` that it
    does not hold (the ack moves on) and records those ranges as lost
    (:class:`Gap` ``released``): they were stored once and are gone, with a
    database dropped or restored from an older backup, or the van skipped them when its
    outbox was lost or damaged (its numbering goes on above its high-water mark)."""

    device_id: str
    stream: Stream
    seq: int

    def __post_init__(self) -> None:
        if self.stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {self.stream!r}")
        if (
            not isinstance(self.seq, int)
            or isinstance(self.seq, bool)
            or not 0 <= self.seq <= MAX_SEQ
        ):
            raise ValueError(f"seq must be an integer in 0..2**63-1, not {self.seq!r}")


@dataclass(frozen=True, slots=True)
class Lost:
    """Seqs ``first_seq..last_seq`` of a device's stream that a :class:`Released`
    settled without ingest holding them: records lost with ingest's database."""

    device_id: str
    stream: Stream
    first_seq: int
    last_seq: int


Item = Position | StopEvent | Pod | Covered | Quarantined | Released

# Keyset page keys: a position's (time, seq); an arrival's (time, device_id, seq).
TrackKey = tuple[datetime, int]
ArrivalKey = tuple[datetime, str, int]

# How long a stream message stays its writer's to publish before any worker may claim it.
STREAM_LEASE_S = 30.0


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A normalized-stream message waiting in the store's outbox (``id``: its row)."""

    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What one :meth:`Store.write` stores, in one transaction."""

    positions: Sequence[Position] = ()
    events: Sequence[StopEvent] = ()
    pods: Sequence[Pod] = ()
    covered: Sequence[Covered] = ()
    quarantined: Sequence[Quarantined] = ()
    # Outbox ids of stream messages published (PUBACKed) since: deleted by this write.
    streamed: Sequence[int] = ()
    released: Sequence[Released] = ()

    @classmethod
    def of(cls, items: Iterable[Item], *, streamed: Sequence[int] = ()) -> WriteBatch:
        """A batch of ``items`` (what :func:`cloud_ingest.verify.check_message` accepts)."""
        positions: list[Position] = []
        events: list[StopEvent] = []
        pods: list[Pod] = []
        covered: list[Covered] = []
        quarantined: list[Quarantined] = []
        released: list[Released] = []
        for item in items:
            if isinstance(item, Position):
                positions.append(item)
            elif isinstance(item, StopEvent):
                events.append(item)
            elif isinstance(item, Pod):
                pods.append(item)
            elif isinstance(item, Covered):
                covered.append(item)
            elif isinstance(item, Quarantined):
                quarantined.append(item)
            elif isinstance(item, Released):
                released.append(item)
            else:
                raise TypeError(f"not a storable item: {type(item).__name__}")
        return cls(
            tuple(positions),
            tuple(events),
            tuple(pods),
            tuple(covered),
            tuple(quarantined),
            tuple(streamed),
            tuple(released),
        )

    def __bool__(self) -> bool:
        return bool(
            self.positions
            or self.events
            or self.pods
            or self.covered
            or self.quarantined
            or self.streamed
            or self.released
        )

    def device_ids(self) -> list[str]:
        """The devices whose streams this batch touches (quarantine without a range aside)."""
        ids = {p.device_id for p in self.positions}
        ids.update(e.device_id for e in self.events)
        ids.update(p.device_id for p in self.pods)
        ids.update(c.device_id for c in self.covered)
        ids.update(q.covered.device_id for q in self.quarantined if q.covered is not None)
        ids.update(r.device_id for r in self.released)
        return sorted(ids)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a :meth:`Store.write` changed.

    ``acks``: for every device the batch touched, the cumulative ack of each stream
    after the write (0: nothing contiguous from seq 1 yet). ``new_*``: the records that
    were not stored before, in input order (PODs with the chain status they were stored
    with): what to republish. ``duplicates``: records already stored (or twice in the
    batch). ``quarantined``: every quarantine row written, the batch's own plus PODs the
    store itself refused (``replayed_pod``, ``broken_chain``: see
    :func:`cloud_ingest.store.podlinks.plan_pods`). ``relinked``: PODs stored earlier whose
    chain status this write changed (pending to ok or broken), with the new status.
    ``stream``: the outbox messages this write stored, announcing the new and relinked
    records (:func:`cloud_ingest.fleetstream.messages`), leased to the caller.
    ``lost``: the ranges this write's :class:`Released` settled without holding them.
    """

    acks: dict[str, dict[str, int]] = field(default_factory=dict)
    new_positions: tuple[Position, ...] = ()
    new_events: tuple[StopEvent, ...] = ()
    new_pods: tuple[Pod, ...] = ()
    duplicates: int = 0
    quarantined: tuple[Quarantined, ...] = ()
    relinked: tuple[Pod, ...] = ()
    stream: tuple[StreamMessage, ...] = ()
    lost: tuple[Lost, ...] = ()


GapReason = Literal["missing", "released"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first_seq..last_seq`` of a stream that ingest does not hold.

    ``missing``: nothing received covers them yet (only holes below the highest received
    seq: what may still be in flight after it is unknowable); they may still come.
    ``released``: the device released them (:class:`Released`), so they will never
    come: stored once and lost with ingest's database, or numbers a van skipped after
    its outbox was reset. The ack has moved past them.
    """

    stream: Stream
    first_seq: int
    last_seq: int
    reason: GapReason = "missing"


@dataclass(frozen=True, slots=True)
class Counts:
    """Row counts, for metrics and health."""

    devices: int
    positions: int
    stop_events: int
    pods: int
    pods_pending: int
    pods_broken: int
    quarantined: int


class Store(Protocol):
    """The ingest service's storage. Every method is a coroutine that never blocks the loop.

    Lifecycle: ``async with Backend(...) as store`` (or :meth:`open` and :meth:`close`),
    then :meth:`migrate` once at start (idempotent; concurrent callers are serialized).
    One store object serves one event loop; its methods may be called concurrently from
    several tasks (a backend serializes what must be).
    """

    async def open(self) -> None:
        """Connect. Calling it on an open store does nothing."""

    async def close(self) -> None:
        """Disconnect. Calling it on a closed store does nothing."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def migrate(self) -> list[int]:
        """Apply the migrations not applied yet, in order; return their versions.

        :class:`MigrationError` if the database holds a version this code does not know.
        """

    async def register_device(
        self,
        device_id: str,
        public_key: bytes,
        *,
        enabled: bool = True,
        replace_key: bool = False,
    ) -> Device:
        """Enroll a device, or update an enrolled one (``enabled``), and return it.

        Registering again with the same key is harmless. Another key raises
        :class:`DeviceConflictError` unless ``replace_key`` (a re-provisioned device).
        :class:`ValueError` for an invalid device id or a key that is not 32 bytes.
        """

    async def set_enabled(self, device_id: str, enabled: bool) -> Device:
        """Allow or refuse a device's messages. :class:`UnknownDeviceError` if absent."""

    async def get_device(self, device_id: str) -> Device | None:
        """The device, or ``None`` when it is not registered."""

    async def list_devices(self) -> list[Device]:
        """Every registered device, by device id."""

    async def write(
        self,
        batch: WriteBatch,
        *,
        stream_lease_s: float = STREAM_LEASE_S,
        announce: Announcer | None = None,
    ) -> WriteResult:
        """Store ``batch`` in one transaction; see the module doc and :class:`WriteResult`.

        The same transaction stores the stream messages ``announce`` builds for the
        records it found new or relinked (``WriteResult.stream``, leased to the caller
        for ``stream_lease_s``; none without ``announce``) and deletes the outbox rows
        ``batch.streamed`` names. Every backend runs one plan
        (:func:`cloud_ingest.store.plan.write_plan`).

        The chain status of each POD is decided here, under a per-device lock, from
        what is stored (:func:`cloud_ingest.store.podlinks.plan_pods`): the status a
        POD carries in ``batch`` is ignored, and a POD that replays a stored one or
        does not link to its stored predecessor is quarantined instead of stored.

        Every device a record or range refers to must be registered
        (:class:`UnknownDeviceError` otherwise, and nothing is written).
        """

    async def stream_done(self, ids: Sequence[int]) -> None:
        """Delete these stream messages from the outbox (published); unknown ids are
        ignored (another worker may have published and deleted a reclaimed one)."""

    async def claim_stream(
        self, *, stream_lease_s: float = STREAM_LEASE_S, limit: int = 100
    ) -> list[StreamMessage]:
        """Up to ``limit`` outbox messages whose lease has run out, oldest first, leased
        to the caller for ``stream_lease_s`` (so no other worker claims them meanwhile)."""

    async def stream_pending(self) -> int:
        """How many stream messages wait in the outbox (published or not)."""

    async def acks(self, device_id: str) -> dict[str, int]:
        """The cumulative ack of each stream of ``device_id`` (0 for nothing yet)."""

    async def pod_head(self, device_id: str) -> Pod | None:
        """The device's stored POD with the highest ``pod_seq``, if any."""

    async def pod_by_pod_seq(self, device_id: str, pod_seq: int) -> Pod | None:
        """The device's stored POD with this chain seq, if any."""

    async def last_positions(self) -> list[Position]:
        """Each device's latest position (highest seq), by device id."""

    async def track(
        self,
        device_id: str,
        start: datetime,
        end: datetime,
        *,
        limit: int | None = None,
        after: TrackKey | None = None,
    ) -> list[Position]:
        """The device's positions with ``start <= time < end``, in (time, seq) order.

        At most ``limit`` (None: all; the database stops there, it never reads the rest
        of the range); with ``after``, only those after that (time, seq) (keyset pages:
        the last position of the page before). :class:`ValueError` for a naive time.
        """

    async def arrivals(
        self,
        route_id: str | None = None,
        device_id: str | None = None,
        *,
        limit: int = 1000,
        after: ArrivalKey | None = None,
    ) -> list[StopEvent]:
        """Arrival events, optionally of one route and/or device, in (time, device_id,
        seq) order, at most ``limit``; with ``after``, only those after that key (the
        last event of the page before)."""

    async def pods_by_parcel(self, parcel: str, *, limit: int | None = None) -> list[Pod]:
        """The PODs recorded for ``parcel`` (normally one), in time order; at most
        ``limit`` (None: all)."""

    async def quarantine(
        self,
        limit: int = 100,
        *,
        before_id: int | None = None,
        payload_max_bytes: int | None = None,
    ) -> list[QuarantineEntry]:
        """The latest quarantined messages, newest first (by id), at most ``limit``;
        with ``before_id``, only older rows (keyset pages: the last id of the page
        before). ``payload_max_bytes``: read at most this many bytes of each payload
        (None: all that is kept), so a page costs what it shows."""

    async def prune_quarantine(
        self,
        *,
        received_before: datetime | None = None,
        max_unsettled_rows: int | None = None,
        batch_rows: int = 1000,
    ) -> int:
        """Apply the quarantine's retention; return how many rows it deleted.

        Deletes every row received before ``received_before``, and the oldest rows that
        settled nothing (``covered`` None: their sender still holds the records, or they
        are no records) beyond the newest ``max_unsettled_rows``. A row that settled
        seqs holds the only copy of those records: only age removes it. Deletes in
        transactions of at most ``batch_rows`` rows, so ingest's writes are never held
        up long.
        """

    async def gaps(self, device_id: str) -> list[Gap]:
        """Missing seq ranges of each stream below its highest received seq, and the
        ranges lost with a restored database (:class:`Gap`), by stream and seq."""

    async def counts(self) -> Counts:
        """Row counts of every table."""

    # --- API tokens (cloud_ingest.apitokens) ------------------------------------------

    async def add_api_token(self, token: ApiToken) -> None:
        """Store a new token's row (its id is fresh: a clash is an IntegrityError)."""

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        """The token's row (revoked and expired ones too), or ``None``."""

    async def list_api_tokens(self) -> list[ApiToken]:
        """Every token's row, oldest first."""

    async def revoke_api_token(self, token_id: str, at: datetime) -> ApiToken:
        """Revoke a token (once: revoking again keeps the first time).
        :class:`UnknownTokenError` if there is none with this id."""

    async def touch_api_token(self, token_id: str, at: datetime) -> None:
        """Record that the token was used at ``at``."""
