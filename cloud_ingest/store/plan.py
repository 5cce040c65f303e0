"""One write plan for every backend: what a batch stores, in which order, and what it means.

:meth:`~cloud_ingest.store.base.Store.write` is the same transaction whatever the
database: lock the devices, insert what is new (telling duplicates apart), link the PODs
into their chains, quarantine, merge the received seq ranges, settle what the devices
released (recording what ingest lost), store the normalized stream's messages, read
the acks. :func:`write_plan` is that transaction as a generator
with no I/O (the sans-I/O pattern): it yields one :data:`Op` at a time, a small request
for SQL, and is sent back its answer; it returns the :class:`~.base.WriteResult`. A
backend is then only the SQL of each op (:mod:`.sqlite` runs the whole plan on its
database thread with :func:`run_plan`, :mod:`.postgres` awaits each op with
:func:`run_plan_async`), and both backends decide duplicates, chains, ranges and acks
by the same code.

The messages a write announces on the normalized stream are built by the caller
(``announce``, the worker's :func:`cloud_ingest.fleetstream.messages`), inside the
transaction, from the records the plan found new: the store stores them, opaque.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cloud_ingest.store.base import (
    Lost,
    Pod,
    Position,
    Quarantined,
    StopEvent,
    StreamMessage,
    UnknownDeviceError,
    WriteBatch,
    WriteResult,
)
from cloud_ingest.store.podlinks import neighbour_pod_seqs, plan_pods
from cloud_ingest.store.ranges import SeqRange, absorb, received_ranges, uncovered
from cloud_ingest.verify import Rejected
from firmware_agent.contract.topics import MAX_SEQ, Stream, uplink_topic

Announcer = Callable[
    [Sequence[Position], Sequence[StopEvent], Sequence[Pod]], list[tuple[str, bytes]]
]
"""Builds the stream messages (topic, payload) of a write's new and relinked records."""

Key = tuple[str, int]  # (device_id, seq)


# --- The ops: what a backend answers, in SQL ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeleteStreamed:
    """Delete these stream-outbox rows (published). Answer: None."""

    ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class LockDevices:
    """Lock these devices' rows for the transaction, in device order (so that two
    writers never deadlock). Answer: the set of those that are registered."""

    device_ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class InsertPositions:
    """Insert each position unless its (device_id, seq) is stored. Answer: the set of
    keys inserted (a key twice in the batch is inserted once)."""

    positions: Sequence[Position]


@dataclass(frozen=True, slots=True)
class InsertEvents:
    """As :class:`InsertPositions`, for events."""

    events: Sequence[StopEvent]


@dataclass(frozen=True, slots=True)
class StoredPods:
    """The stored PODs with one of these (device_id, seq) or (device_id, pod_seq)
    keys. Answer: a list of :class:`~.base.Pod`."""

    seq_keys: Sequence[Key]
    pod_seq_keys: Sequence[Key]


@dataclass(frozen=True, slots=True)
class InsertPods:
    """Insert these PODs (new by :func:`~.podlinks.plan_pods`). Answer: None."""

    pods: Sequence[Pod]


@dataclass(frozen=True, slots=True)
class RelinkPods:
    """Set the chain status of these stored PODs to theirs. Answer: None."""

    pods: Sequence[Pod]


@dataclass(frozen=True, slots=True)
class InsertQuarantine:
    """Insert these quarantine rows. Answer: None."""

    rows: Sequence[Quarantined]


@dataclass(frozen=True, slots=True)
class TouchingRanges:
    """For each probe (device_id, stream, first, last): the stored range of that device
    and stream starting last before ``first`` if it reaches ``first - 1``, and those
    starting within ``first..last``. Answer: a list of (device_id, stream, first_seq,
    last_seq)."""

    probes: Sequence[tuple[str, str, int, int]]


@dataclass(frozen=True, slots=True)
class ReplaceRanges:
    """Delete the ranges (device_id, stream, first_seq), then insert (device_id, stream,
    first_seq, last_seq). Answer: None."""

    removals: Sequence[tuple[str, str, int]]
    additions: Sequence[tuple[str, str, int, int]]


@dataclass(frozen=True, slots=True)
class InsertLost:
    """Record these ranges as lost (``Gap`` reason ``released``), at ``at``.
    Answer: None."""

    lost: Sequence[Lost]
    at: datetime


@dataclass(frozen=True, slots=True)
class InsertStream:
    """Store these stream messages (topic, payload) leased until ``leased_until``, in
    order. Answer: their :class:`~.base.StreamMessage` rows, in the same order."""

    messages: Sequence[tuple[str, bytes]]
    leased_until: datetime


@dataclass(frozen=True, slots=True)
class ReadAcks:
    """The cumulative ack of every stream of these devices. Answer: device_id ->
    stream -> seq (0 for nothing contiguous from 1)."""

    device_ids: Sequence[str]


Op = (
    DeleteStreamed
    | LockDevices
    | InsertPositions
    | InsertEvents
    | StoredPods
    | InsertPods
    | RelinkPods
    | InsertQuarantine
    | TouchingRanges
    | ReplaceRanges
    | InsertLost
    | InsertStream
    | ReadAcks
)
WritePlan = Generator[Op, Any, WriteResult]


# --- The plan ---------------------------------------------------------------------------


def write_plan(
    batch: WriteBatch,
    *,
    now: datetime,
    stream_lease_s: float,
    announce: Announcer | None = None,
) -> WritePlan:
    """The transaction that stores ``batch`` (see :meth:`~.base.Store.write`)."""
    if batch.streamed:
        yield DeleteStreamed(batch.streamed)
    device_ids = batch.device_ids()
    if device_ids:
        found: set[str] = yield LockDevices(device_ids)
        missing = sorted(set(device_ids) - found)
        if missing:
            raise UnknownDeviceError(f"not registered: {', '.join(missing)}")

    new_positions: list[Position] = []
    if batch.positions:
        new_positions = _first_new(batch.positions, (yield InsertPositions(batch.positions)))
    new_events: list[StopEvent] = []
    if batch.events:
        new_events = _first_new(batch.events, (yield InsertEvents(batch.events)))

    new_pods: list[Pod] = []
    relinked: list[Pod] = []
    refused: list[tuple[Pod, Rejected]] = []
    pod_duplicates = 0
    if batch.pods:
        by_device: dict[str, list[Pod]] = defaultdict(list)
        for pod in batch.pods:
            by_device[pod.device_id].append(pod)
        seq_keys = sorted({(p.device_id, p.seq) for p in batch.pods})
        pod_seq_keys = [
            (d, n) for d, incoming in by_device.items() for n in neighbour_pod_seqs(incoming)
        ]
        stored: dict[str, list[Pod]] = defaultdict(list)
        for pod in (yield StoredPods(seq_keys, pod_seq_keys)):
            stored[pod.device_id].append(pod)
        for device_id, incoming in by_device.items():
            plan = plan_pods(incoming, stored[device_id])
            new_pods += plan.insert
            relinked += plan.relinked
            refused += plan.refused
            pod_duplicates += plan.duplicates
        if new_pods:
            yield InsertPods(new_pods)
        if relinked:
            yield RelinkPods(relinked)

    # The store refuses a POD only in a race the worker's own check could not see; the
    # original envelope is gone by now, the JWS (the evidence) is kept.
    quarantined = [
        *batch.quarantined,
        *(
            r.quarantined(
                topic=uplink_topic(p.device_id, "pod"),
                payload=p.jws.encode("ascii"),
                received_at=now,
            )
            for p, r in refused
        ),
    ]
    if quarantined:
        yield InsertQuarantine(quarantined)

    received = received_ranges(batch)
    if received:
        probes = [
            (d, s, first, min(last + 1, MAX_SEQ))
            for (d, s), new in received.items()
            for first, last in new
        ]
        touching: dict[tuple[str, str], set[SeqRange]] = defaultdict(set)
        for d, s, first, last in (yield TouchingRanges(probes)):
            touching[d, s].add((first, last))
        removals: list[tuple[str, str, int]] = []
        additions: list[tuple[str, str, int, int]] = []
        for (d, s), new in received.items():
            remove, add = absorb(sorted(touching[d, s]), new)
            removals += [(d, s, first) for first in remove]
            additions += [(d, s, first, last) for first, last in add]
        if removals or additions:
            yield ReplaceRanges(removals, additions)

    lost: list[Lost] = []
    if batch.released:
        lost = yield from _release(batch, now)

    stream: list[StreamMessage] = []
    messages = announce(new_positions, new_events, [*new_pods, *relinked]) if announce else []
    if messages:
        leased_until = now + timedelta(seconds=max(0.0, stream_lease_s))
        stream = yield InsertStream(messages, leased_until)

    acks: dict[str, dict[str, int]] = {}
    if device_ids:
        acks = yield ReadAcks(device_ids)
    duplicates = (
        len(batch.positions) - len(new_positions) + len(batch.events) - len(new_events)
    ) + pod_duplicates
    return WriteResult(
        acks=acks,
        new_positions=tuple(new_positions),
        new_events=tuple(new_events),
        new_pods=tuple(new_pods),
        duplicates=duplicates,
        quarantined=tuple(quarantined),
        relinked=tuple(relinked),
        stream=tuple(stream),
        lost=tuple(lost),
    )


def _release(batch: WriteBatch, now: datetime) -> Generator[Op, Any, list[Lost]]:
    """Settle every seq a device released (its signed report: it holds nothing at or
    below ``seq``) that no stored range covers, recording those as lost; after the
    batch's own ranges, so that what it brought is not taken for lost."""
    floors: dict[tuple[str, Stream], int] = {}
    for r in batch.released:
        if r.seq > 0:
            floors[r.device_id, r.stream] = max(r.seq, floors.get((r.device_id, r.stream), 0))
    if not floors:
        return []
    # Every stored range starting in 1..seq+1: after a restore, a handful.
    probes = [(d, s, 1, min(seq + 1, MAX_SEQ)) for (d, s), seq in floors.items()]
    touching: dict[tuple[str, str], set[SeqRange]] = defaultdict(set)
    for d, s, first, last in (yield TouchingRanges(probes)):
        touching[d, s].add((first, last))
    lost: list[Lost] = []
    removals: list[tuple[str, str, int]] = []
    additions: list[tuple[str, str, int, int]] = []
    for (d, s), seq in sorted(floors.items()):
        existing = sorted(touching[d, s])
        missing = uncovered(existing, seq)
        if not missing:
            continue
        lost += [Lost(d, s, first, last) for first, last in missing]
        remove, add = absorb(existing, [(1, seq)])
        removals += [(d, s, first) for first in remove]
        additions += [(d, s, first, last) for first, last in add]
    if removals or additions:
        yield ReplaceRanges(removals, additions)
    if lost:
        yield InsertLost(lost, now)
    return lost


_R = TypeVar("_R", Position, StopEvent)


def _first_new(items: Sequence[_R], inserted: set[Key]) -> list[_R]:
    """The items whose key was inserted, in input order; a key twice in the batch counts
    once (the first), like a key stored before."""
    remaining = set(inserted)
    new = []
    for item in items:
        key = (item.device_id, item.seq)
        if key in remaining:
            remaining.discard(key)
            new.append(item)
    return new


# --- Running a plan -----------------------------------------------------------------------


def run_plan(plan: WritePlan, execute: Callable[[Op], Any]) -> WriteResult:
    """Run ``plan`` with a blocking ``execute`` (one database thread, one transaction)."""
    try:
        op = next(plan)
        while True:
            op = plan.send(execute(op))
    except StopIteration as done:
        result: WriteResult = done.value
        return result


async def run_plan_async(plan: WritePlan, execute: Callable[[Op], Awaitable[Any]]) -> WriteResult:
    """Run ``plan`` with a coroutine ``execute`` (one connection, one transaction)."""
    try:
        op = next(plan)
        while True:
            op = plan.send(await execute(op))
    except StopIteration as done:
        result: WriteResult = done.value
        return result
