"""The storage layer: the same tests against SQLite and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import psycopg
import pytest
from blockbuster import blockbuster_ctx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from cloud_ingest import fleetstream
from cloud_ingest.errors import StorageError
from cloud_ingest.store import postgres as postgres_module
from cloud_ingest.store import sqlite as sqlite_module
from cloud_ingest.store.base import (
    Covered,
    Device,
    DeviceConflictError,
    Gap,
    Lost,
    MigrationError,
    Pod,
    Position,
    Quarantined,
    Released,
    StopEvent,
    Store,
    UnknownDeviceError,
    WriteBatch,
    WriteResult,
    event_from_json,
)
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.ranges import absorb, cumulative_ack, holes, merge_ranges
from cloud_ingest.store.sqlite import SqliteStore
from firmware_agent.contract.records import (
    Arrival,
    Departure,
    EventRecord,
    PodRecord,
    StopPassed,
    TelemetryPoint,
)
from firmware_agent.pod.chain import ChainState, PodChain
from tests.pg import fresh_database
from tests.pods import fields

T = TypeVar("T")
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


@dataclass
class Backend:
    """A store to test: ``make()`` builds an unopened store on the test's database;
    ``sql`` runs a statement with the backend's own driver, outside any event loop."""

    name: str
    make: Callable[[], Store]
    sql: Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "ingest.sqlite3"

        def sqlite_sql(statement: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(statement).fetchall()

        yield Backend("sqlite", lambda: SqliteStore(path), sqlite_sql)
        return
    with fresh_database() as dsn:

        def pg_sql(statement: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                cur = conn.execute(statement.encode())
                return cur.fetchall() if cur.description else []

        yield Backend("postgres", lambda: PostgresStore(dsn), pg_sql)


def play(backend: Backend, scenario: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``scenario`` on a migrated store, failing any blocking call on the loop."""

    async def main() -> T:
        with blockbuster_ctx(["cloud_ingest"]):
            async with backend.make() as store:
                await store.migrate()
                return await scenario(store)

    return asyncio.run(main())


def raw_key() -> bytes:
    return key_bytes(Ed25519PrivateKey.generate())


def key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def position(device_id: str, seq: int, *, minute: float | None = None) -> Position:
    return Position(
        device_id=device_id,
        seq=seq,
        historical=False,
        point=TelemetryPoint(
            time=T0 + timedelta(minutes=seq if minute is None else minute),
            lat=48.1 + seq * 1e-4,
            lon=11.5 + seq * 1e-4,
            alt_m=519.5 if seq % 3 else None,
            speed_mps=8.25 if seq % 2 else None,
            course_deg=90.5,
            mode=3 if seq % 2 else 2,
            quality=1 if seq % 3 else None,
            hdop=0.9,
            sats_used=11,
        ),
    )


def event(
    device_id: str, seq: int, *, kind: str = "arrival", route_id: str | None = "R-1"
) -> StopEvent:
    time = T0 + timedelta(minutes=seq)
    record: EventRecord
    if kind == "arrival":
        record = Arrival(
            time=time,
            stop_id=f"S{seq:03d}",
            detected_at=time + timedelta(seconds=10),
            lat=48.1371234,
            lon=11.5,
            visit=1,
            confirmed_by="dwell",
            route_id=route_id,
        )
    else:
        record = Departure(
            time=time,
            stop_id=f"S{seq:03d}",
            detected_at=time + timedelta(seconds=10),
            arrived_at=time - timedelta(minutes=2),
            dwell_s=120.0,
            visit=1,
            route_id=route_id,
        )
    return StopEvent(device_id=device_id, seq=seq, historical=False, record=record)


def telemetry(device_id: str, first: int, last: int, seqs: list[int]) -> WriteBatch:
    return WriteBatch(
        positions=[position(device_id, s) for s in seqs],
        covered=[Covered(device_id, "telemetry", first, last)],
    )


class Van:
    """A device with a real key and POD chain; ``pod(n)`` is the n-th POD it issued."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.key = Ed25519PrivateKey.generate()
        self.chain = PodChain(device_id, self.key)
        self.pods: list[Pod] = []

    @property
    def public_key(self) -> bytes:
        return key_bytes(self.key)

    def issue(self, n: int = 1, *, chain: PodChain | None = None, **changes: Any) -> list[Pod]:
        chain = chain or self.chain
        out = []
        for _ in range(n):
            issued = chain.issue({**fields(chain.state.seq + 1), **changes})
            claims = issued.claims
            pod = Pod(
                device_id=self.device_id,
                seq=claims["seq"],  # envelope seq = chain seq for a well-behaved van
                historical=False,
                record=PodRecord(
                    time=T0 + timedelta(minutes=claims["seq"]),
                    stop_id=claims["stop_id"],
                    parcel=claims["parcel"],
                    seq=claims["seq"],
                    verdict=claims["verdict"],
                    distance_m=claims["distance_m"],
                    jws=issued.token,
                ),
                prev=claims["prev"],
                chain_status="pending",
            )
            assert pod.digest == issued.digest
            out.append(pod)
            if chain is self.chain:
                self.pods.append(pod)
        return out


async def write(store: Store, batch: WriteBatch, **kwargs: Any) -> WriteResult:
    """``store.write`` announcing on the normalized stream as the worker does."""
    return await store.write(batch, announce=fleetstream.messages, **kwargs)


async def register(store: Store, *device_ids: str) -> list[Device]:
    return [await store.register_device(d, raw_key()) for d in device_ids]


# --- schema -------------------------------------------------------------------------------


def test_migrations_are_idempotent_and_recorded(backend: Backend) -> None:
    async def first(store: Store) -> tuple[list[int], list[int]]:
        return await store.migrate(), await store.migrate()

    async def scenario(store: Store) -> list[int]:
        return await store.migrate()

    # play() migrates first: the explicit calls find nothing left to do.
    assert play(backend, first) == ([], [])
    assert play(backend, scenario) == []
    rows = backend.sql("SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == [
        (1, "initial schema"),
        (2, "fleetstream outbox"),
        (3, "one shape per record: every field of a telemetry point, a POD's distance"),
        (4, "seqs lost with a restored database, released by their device"),
        (5, "quarantine: the length and SHA-256 of each payload, indexes for its retention"),
        (6, "the outcome of each POD's delivery attempt"),
        (7, "scoped API tokens, stored hashed (cloud_ingest.apitokens)"),
    ]
    tables = {
        "api_tokens",
        "stream_outbox",
        "devices",
        "positions",
        "stop_events",
        "pods",
        "quarantine",
        "stream_ranges",
        "stream_lost",
        "schema_migrations",
    }
    if backend.name == "sqlite":
        names = backend.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        pragmas = backend.sql("PRAGMA journal_mode")
        assert pragmas == [("wal",)]
    else:
        names = backend.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert tables <= {n for (n,) in names}


def test_fresh_store_applies_every_migration(backend: Backend) -> None:
    async def scenario() -> list[int]:
        async with backend.make() as store:
            return await store.migrate()

    assert asyncio.run(scenario()) == [1, 2, 3, 4, 5, 6, 7]


def test_a_version_1_database_is_upgraded_in_place(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database created before the stream outbox keeps its data and gains it."""
    module = sqlite_module if backend.name == "sqlite" else postgres_module
    everything = module.MIGRATIONS

    async def old(store: Store) -> None:
        await store.register_device("van-7", raw_key())

    monkeypatch.setattr(module, "MIGRATIONS", everything[:1])
    play(backend, old)
    monkeypatch.setattr(module, "MIGRATIONS", everything)

    async def upgraded() -> tuple[list[int], int, int]:
        async with backend.make() as store:
            applied = await store.migrate()
            result = await write(store, WriteBatch(positions=[position("van-7", 1)]))
            return applied, (await store.counts()).devices, len(result.stream)

    assert asyncio.run(upgraded()) == ([2, 3, 4, 5, 6, 7], 1, 1)


def test_a_version_2_database_keeps_its_rows_and_gains_every_field(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored before migration 3 read back with what they had: satellites used
    (the column renamed), no altitude or fix quality, mode unknown, a POD without its
    distance."""
    module = sqlite_module if backend.name == "sqlite" else postgres_module
    everything = module.MIGRATIONS
    van = Van("van-7")
    (pod,) = van.issue()

    async def old(store: Store) -> None:
        await store.register_device("van-7", van.public_key)

    monkeypatch.setattr(module, "MIGRATIONS", everything[:2])
    play(backend, old)
    if backend.name == "sqlite":
        at, no = str(int(T0.timestamp() * 1_000_000)), "0"
    else:
        at, no = f"'{T0.isoformat()}'", "false"
    backend.sql(
        "INSERT INTO positions (device_id, seq, time" + ("_us" if backend.name == "sqlite" else "")
        + f", lat, lon, speed_mps, course_deg, hdop, sats, historical) VALUES ('van-7', 1, {at}, "
        f"48.1, 11.5, 8.25, 90.5, 0.9, 11, {no})"
    )  # fmt: skip
    backend.sql(
        "INSERT INTO pods (device_id, seq, pod_seq, parcel, stop_id, time"
        + ("_us" if backend.name == "sqlite" else "")
        + ", verdict, jws, digest, prev, chain_status, historical) VALUES ('van-7', 1, 1, "
        f"'{pod.record.parcel}', '{pod.record.stop_id}', {at}, 'inside', '{pod.jws}', "
        f"'{pod.digest}', '{pod.prev}', 'ok', {no})"
    )  # fmt: skip
    monkeypatch.setattr(module, "MIGRATIONS", everything)

    async def upgraded() -> tuple[list[int], list[Position], Pod | None]:
        async with backend.make() as store:
            applied = await store.migrate()
            track = await store.track("van-7", T0, T0 + timedelta(seconds=1))
            return applied, track, await store.pod_by_pod_seq("van-7", 1)

    applied, track, stored = asyncio.run(upgraded())
    assert applied == [3, 4, 5, 6, 7]
    assert track == [
        Position(
            "van-7",
            1,
            False,
            TelemetryPoint(
                time=T0, lat=48.1, lon=11.5, speed_mps=8.25, course_deg=90.5, hdop=0.9,
                sats_used=11,
            ),
        )
    ]  # fmt: skip
    assert stored is not None
    assert stored.record == replace(pod.record, time=T0, distance_m=None)
    assert stored.record.outcome == "delivered"  # stored before outcomes: a delivery
    assert stored.chain_status == "ok"


def test_a_newer_schema_is_refused(backend: Backend) -> None:
    play(backend, lambda store: store.counts())
    backend.sql("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")

    async def scenario() -> None:
        async with backend.make() as store:
            await store.migrate()

    with pytest.raises(MigrationError, match="99"):
        asyncio.run(scenario())


# --- devices ------------------------------------------------------------------------------


def test_devices_register_enable_disable(backend: Backend) -> None:
    key, other = raw_key(), raw_key()

    async def scenario(store: Store) -> None:
        assert await store.get_device("van-7") is None
        dev = await store.register_device("van-7", key)
        assert (dev.device_id, dev.public_key, dev.enabled) == ("van-7", key, True)
        assert dev.registered_at.tzinfo is not None
        assert await store.get_device("van-7") == dev
        # Registering again with the same key changes nothing but ``enabled``.
        assert await store.register_device("van-7", key) == dev
        with pytest.raises(DeviceConflictError):
            await store.register_device("van-7", other)
        assert (await store.set_enabled("van-7", False)).enabled is False
        assert (await store.get_device("van-7")) == replace(dev, enabled=False)
        assert (await store.set_enabled("van-7", True)).enabled is True
        moved = await store.register_device("van-7", other, replace_key=True)
        assert moved.public_key == other
        assert moved.registered_at == dev.registered_at
        await store.register_device("van-3", key, enabled=False)
        listed = await store.list_devices()
        assert [(d.device_id, d.enabled) for d in listed] == [("van-3", False), ("van-7", True)]
        with pytest.raises(UnknownDeviceError):
            await store.set_enabled("ghost", True)
        with pytest.raises(ValueError, match="device_id"):
            await store.register_device("bad/id", key)
        with pytest.raises(ValueError, match="32 bytes"):
            await store.register_device("van-9", key[:31])

    play(backend, scenario)


# --- writing and acks ---------------------------------------------------------------------


def test_write_is_idempotent(backend: Backend) -> None:
    van = Van("van-7")
    pods = van.issue(2)
    batch = WriteBatch(
        positions=[position("van-7", 1), position("van-7", 3)],
        covered=[Covered("van-7", "telemetry", 1, 3)],
        events=[event("van-7", 1)],
        pods=pods,
    )

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        first = await write(store, batch)
        assert first.new_positions == tuple(batch.positions)
        assert first.new_events == tuple(batch.events)
        assert [p.pod_seq for p in first.new_pods] == [1, 2]
        assert {p.chain_status for p in first.new_pods} == {"ok"}
        assert first.duplicates == 0
        assert first.acks == {"van-7": {"telemetry": 3, "events": 1, "pod": 2}}
        counts = await store.counts()

        again = await write(store, batch)
        assert (again.new_positions, again.new_events, again.new_pods) == ((), (), ())
        assert again.duplicates == 2 + 1 + 2
        assert again.quarantined == ()
        assert again.acks == first.acks
        assert await store.counts() == counts
        assert (counts.positions, counts.stop_events, counts.pods) == (2, 1, 2)

        # A duplicate inside one batch counts once as new, once as duplicate.
        twice = WriteBatch(positions=[position("van-7", 5), position("van-7", 5)])
        result = await write(store, twice)
        assert (len(result.new_positions), result.duplicates) == (1, 1)

    play(backend, scenario)
    # telemetry 1..3 and 5, events 1, pod 1..2
    assert backend.sql("SELECT count(*) FROM stream_ranges") == [(4,)]


def stream_records(messages: Any) -> list[tuple[str, int, str | None]]:
    """(topic, seq, chain) of every record the stream messages carry, in order."""
    return [
        (m.topic, r["seq"], r.get("chain"))
        for m in messages
        for r in json.loads(m.payload)["records"]
    ]


def test_a_write_stores_its_stream_messages_in_the_same_transaction(backend: Backend) -> None:
    """The outbox rows are the write's: announced once, deleted by a later batch's
    ``streamed`` (or stream_done), and a duplicate write announces nothing."""
    van = Van("van-7")
    p1, p2, p3 = van.issue(3)
    batch = WriteBatch(
        positions=[position("van-7", 1), position("van-7", 2), position("van-8", 1)],
        events=[event("van-7", 1)],
        pods=[p1, p3],
    )

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        await store.register_device("van-8", raw_key())
        first = await write(store, batch)
        assert stream_records(first.stream) == [
            ("fleetstream/v1/van-7/position", 1, None),
            ("fleetstream/v1/van-7/position", 2, None),
            ("fleetstream/v1/van-8/position", 1, None),
            ("fleetstream/v1/van-7/event", 1, None),
            ("fleetstream/v1/van-7/pod", 1, "ok"),
            ("fleetstream/v1/van-7/pod", 3, "pending"),
        ]
        # One message per device and kind, ids increasing in publishing order.
        assert len(first.stream) == 4
        ids = [m.id for m in first.stream]
        assert ids == sorted(set(ids))
        assert await store.stream_pending() == 4

        again = await write(store, batch)
        assert again.stream == ()
        # The predecessor relinks p3: both said, p3 with its new status.
        linked = await write(store, WriteBatch(pods=[p2], streamed=ids[:2]))
        assert stream_records(linked.stream) == [
            ("fleetstream/v1/van-7/pod", 2, "ok"),
            ("fleetstream/v1/van-7/pod", 3, "ok"),
        ]
        assert await store.stream_pending() == 3
        await store.stream_done([*ids[2:], linked.stream[0].id, 10**9])
        assert await store.stream_pending() == 0
        # An id is never reused: a late stream_done cannot delete a newer message.
        newer = await write(store, WriteBatch(positions=[position("van-7", 3)]))
        assert newer.stream[0].id > linked.stream[0].id

    play(backend, scenario)


def test_a_stop_passed_event_is_stored_and_streamed_like_the_eta_events(backend: Backend) -> None:
    """The van's stop_passed (docs/eta.md, sequence deviations): a stop event like eta
    and late_risk, stored as sent (its stop and route columns filled) and announced."""
    record = StopPassed(
        time=T0,
        stop_id="S002",
        route_id="R-1",
        planned_index=1,
        reason="drive_past",
        closest_m=18.44,
        eta=T0 + timedelta(minutes=42),
        eta_baseline=T0 + timedelta(minutes=40),
        stops_before=2,
        model="baseline",
    )
    stored = StopEvent(device_id="van-7", seq=1, historical=False, record=record)

    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        result = await write(store, WriteBatch(events=[stored]))
        assert result.new_events == (stored,)
        assert stream_records(result.stream) == [("fleetstream/v1/van-7/event", 1, None)]
        [streamed] = json.loads(result.stream[0].payload)["records"]
        assert streamed["type"] == "stop_passed"
        assert streamed["reason"] == "drive_past"
        assert streamed["closest_m"] == 18.4
        assert (await store.counts()).stop_events == 1
        assert await store.arrivals() == []  # not an arrival
        again = await write(store, WriteBatch(events=[stored]))
        assert again.new_events == ()

    play(backend, scenario)
    [(kind, stop_id, route_id, raw)] = backend.sql(
        "SELECT type, stop_id, route_id, record FROM stop_events"
    )
    assert (kind, stop_id, route_id) == ("stop_passed", "S002", "R-1")
    assert event_from_json(raw) == record


def test_a_failed_write_leaves_no_stream_message(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.register_device("van-7", raw_key())
        with pytest.raises(UnknownDeviceError):
            await write(
                store, WriteBatch(positions=[position("van-7", 1), position("van-unknown", 1)])
            )
        assert await store.stream_pending() == 0

    play(backend, scenario)


def test_stream_messages_are_claimed_once_their_lease_ran_out(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.register_device("van-7", raw_key())
        leased = await write(
            store, WriteBatch(positions=[position("van-7", 1)]), stream_lease_s=60.0
        )
        orphan = await write(store, WriteBatch(positions=[position("van-7", 2)]), stream_lease_s=0)
        other = await write(store, WriteBatch(events=[event("van-7", 1)]), stream_lease_s=0)
        # Still leased to its writer: not claimable; the expired ones, oldest first.
        claimed = await store.claim_stream(stream_lease_s=60.0, limit=10)
        assert claimed == [*orphan.stream, *other.stream]
        assert leased.stream[0] not in claimed
        # Claimed means leased again: a second sweeper finds nothing.
        assert await store.claim_stream(stream_lease_s=60.0) == []
        await store.stream_done([m.id for m in claimed])
        assert await store.stream_pending() == 1

        more = [
            await write(store, WriteBatch(positions=[position("van-7", s)]), stream_lease_s=0)
            for s in range(3, 8)
        ]
        first = await store.claim_stream(stream_lease_s=0, limit=2)
        assert first == [more[0].stream[0], more[1].stream[0]]
        # A lease of 0 expires at once: claimed again, in id order.
        again = await store.claim_stream(stream_lease_s=0, limit=10)
        assert again == [m.stream[0] for m in more]

    play(backend, scenario)


def test_concurrent_sweepers_never_claim_the_same_message(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await store.register_device("van-7", raw_key())
        for s in range(1, 41):
            await write(store, WriteBatch(positions=[position("van-7", s)]), stream_lease_s=0)

    play(backend, scenario)

    async def sweepers() -> list[list[int]]:
        stores = [backend.make() for _ in range(4)]
        for st_ in stores:
            await st_.open()
        try:

            async def sweep(st_: Store) -> list[int]:
                got: list[int] = []
                while batch := await st_.claim_stream(stream_lease_s=60.0, limit=3):
                    got += [m.id for m in batch]
                return got

            return list(await asyncio.gather(*(sweep(st_) for st_ in stores)))
        finally:
            for st_ in stores:
                await st_.close()

    claimed = asyncio.run(sweepers())
    every = [i for ids in claimed for i in ids]
    assert len(every) == len(set(every)) == 40


def test_cumulative_ack_with_gaps_and_thinned_ranges(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        # Fixes 2, 3 and 5..9 were thinned away: the range covers them, not a gap.
        result = await write(store, telemetry("van-7", 1, 10, [1, 4, 10]))
        assert result.acks["van-7"]["telemetry"] == 10
        result = await write(store, telemetry("van-7", 15, 20, [15, 20]))
        assert result.acks["van-7"]["telemetry"] == 10
        assert await store.gaps("van-7") == [Gap("telemetry", 11, 14)]
        # An empty batch (everything thinned) still covers its range.
        result = await write(store, telemetry("van-7", 11, 14, []))
        assert result.acks["van-7"]["telemetry"] == 20
        assert await store.gaps("van-7") == []

        result = await write(store, WriteBatch(events=[event("van-7", s) for s in (1, 2, 4, 7)]))
        assert result.acks["van-7"] == {"telemetry": 20, "events": 2, "pod": 0}
        assert await store.gaps("van-7") == [Gap("events", 3, 3), Gap("events", 5, 6)]
        assert await store.acks("van-7") == {"telemetry": 20, "events": 2, "pod": 0}

    play(backend, scenario)
    # Contiguous seqs are one row, not one row per seq.
    rows = backend.sql(
        "SELECT stream, first_seq, last_seq FROM stream_ranges ORDER BY stream, first_seq"
    )
    assert rows == [("events", 1, 2), ("events", 4, 4), ("events", 7, 7), ("telemetry", 1, 20)]


def test_what_a_device_released_is_settled_and_listed_as_lost(backend: Backend) -> None:
    """Issue 13, finding 6: a database restored from an older backup holds events 1..3
    and 8..9, the van had applied acks up to 7 (it deleted 4..7). Its sequence report
    (Released) settles 4..7 as released; the ack moves on; a repeated or older
    report changes nothing."""

    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        result = await write(store, WriteBatch(events=[event("van-7", s) for s in (1, 2, 3, 8, 9)]))
        assert result.acks["van-7"]["events"] == 3
        result = await write(store, WriteBatch(released=[Released("van-7", "events", 7)]))
        assert result.acks["van-7"] == {"telemetry": 0, "events": 9, "pod": 0}
        assert result.lost == (Lost("van-7", "events", 4, 7),)
        assert await store.gaps("van-7") == [Gap("events", 4, 7, "released")]
        for seq in (7, 5, 0):
            again = await write(store, WriteBatch(released=[Released("van-7", "events", seq)]))
            assert (again.acks["van-7"]["events"], again.lost) == (9, ())
        # Beyond everything stored (nothing pending on the van): settled up to it; in
        # the same batch as a record above it and a hole of another stream.
        batch = WriteBatch(
            events=[event("van-7", 14)],
            positions=[position("van-7", 3)],
            released=[Released("van-7", "events", 12), Released("van-7", "telemetry", 2)],
        )
        result = await write(store, batch)
        assert result.acks["van-7"] == {"telemetry": 3, "events": 12, "pod": 0}
        assert result.lost == (Lost("van-7", "events", 10, 12), Lost("van-7", "telemetry", 1, 2))
        assert await store.gaps("van-7") == [
            Gap("telemetry", 1, 2, "released"),
            Gap("events", 4, 7, "released"),
            Gap("events", 10, 12, "released"),
            Gap("events", 13, 13),
        ]

    play(backend, scenario)
    rows = backend.sql(
        "SELECT stream, first_seq, last_seq FROM stream_ranges ORDER BY stream, first_seq"
    )
    assert rows == [("events", 1, 12), ("events", 14, 14), ("telemetry", 1, 3)]


def test_reordering_gives_the_right_acks(backend: Backend) -> None:
    async def scenario(store: Store) -> list[int]:
        await register(store, "van-7")
        acks = []
        for seq in (3, 1, 2, 5, 4):
            result = await write(store, WriteBatch(events=[event("van-7", seq)]))
            acks.append(result.acks["van-7"]["events"])
        return acks

    assert play(backend, scenario) == [0, 1, 3, 3, 5]
    assert backend.sql("SELECT first_seq, last_seq FROM stream_ranges") == [(1, 5)]


def test_acks_match_a_brute_force_count_under_random_arrival(backend: Backend) -> None:
    rng = random.Random(4)
    # Telemetry batches of random extent, each keeping a random subset of its fixes,
    # arriving in random order, some twice.
    batches: list[WriteBatch] = []
    first = 1
    while first <= 120:
        last = first + rng.randrange(0, 9)
        kept = sorted(rng.sample(range(first, last + 1), rng.randint(0, last - first + 1)))
        batches.append(telemetry("van-7", first, last, kept))
        first = last + 1
    arrivals = batches + rng.sample(batches, 5)
    rng.shuffle(arrivals)

    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        seen: set[int] = set()
        for batch in arrivals:
            result = await write(store, batch)
            c = batch.covered[0]
            seen.update(range(c.first_seq, c.last_seq + 1))
            expected = 0
            while expected + 1 in seen:
                expected += 1
            assert result.acks["van-7"]["telemetry"] == expected
        assert await store.gaps("van-7") == []

    play(backend, scenario)
    assert backend.sql("SELECT first_seq, last_seq FROM stream_ranges") == [(1, first - 1)]


def test_a_batch_for_an_unknown_device_stores_nothing(backend: Backend) -> None:
    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        batch = WriteBatch(positions=[position("van-7", 1)], events=[event("ghost", 1)])
        with pytest.raises(UnknownDeviceError, match="ghost"):
            await write(store, batch)
        counts = await store.counts()
        assert (counts.positions, counts.stop_events) == (0, 0)
        assert await store.acks("van-7") == {"telemetry": 0, "events": 0, "pod": 0}

    play(backend, scenario)


# --- quarantine ---------------------------------------------------------------------------


def test_quarantine_keeps_reason_and_payload(backend: Backend) -> None:
    payload = b"\x00\xff garbage \xc3\x28"
    refused = Quarantined(
        received_at=RECEIVED,
        topic="fleet/v1/van-7/pod",
        device_id="van-7",
        reason="bad_signature",
        detail="signature does not verify",
        payload=payload,
        covered=Covered("van-7", "pod", 1, 1),
    )
    stranger = Quarantined(
        received_at=RECEIVED + timedelta(seconds=1),
        topic="fleet/v1/ghost/events",
        device_id="ghost",
        reason="unknown_device",
        detail="NUL \x00 and a lone surrogate \udc80 in the detail",
        payload=b"{}",
    )

    async def scenario(store: Store) -> None:
        await register(store, "van-7")
        result = await write(store, WriteBatch(quarantined=[refused, stranger]))
        assert result.quarantined == (refused, stranger)
        # The refused POD settles its seq; the unknown device's message moves nothing.
        assert result.acks == {"van-7": {"telemetry": 0, "events": 0, "pod": 1}}
        newest_first = await store.quarantine()
        old = newest_first[1]
        assert (old.received_at, old.topic, old.device_id, old.reason, old.detail) == (
            refused.received_at,
            refused.topic,
            refused.device_id,
            refused.reason,
            refused.detail,
        )
        assert (old.payload, old.covered, old.payload_bytes, old.kept_bytes) == (
            payload,
            refused.covered,
            len(payload),
            len(payload),
        )
        assert old.payload_sha256 == hashlib.sha256(payload).digest()
        assert newest_first[0].id > old.id
        assert newest_first[0].detail == "NUL \\x00 and a lone surrogate \\udc80 in the detail"
        assert newest_first[0].covered is None
        assert await store.quarantine(limit=1) == newest_first[:1]
        assert (await store.counts()).quarantined == 2

    play(backend, scenario)


# --- PODs ---------------------------------------------------------------------------------


def test_pods_keep_the_jws_verbatim(backend: Backend) -> None:
    van = Van("van-7")
    (pod,) = van.issue()

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        await write(store, WriteBatch(pods=[pod]))
        (stored,) = await store.pods_by_parcel(pod.record.parcel)
        assert stored == replace(pod, chain_status="ok")
        assert stored.jws == pod.jws
        assert await store.pod_head("van-7") == stored
        assert await store.pod_by_pod_seq("van-7", 1) == stored
        assert await store.pod_by_pod_seq("van-7", 2) is None
        assert await store.pod_head("van-3") is None

    play(backend, scenario)
    assert backend.sql("SELECT jws FROM pods") == [(pod.jws,)]


def test_chain_pending_until_the_predecessor_arrives(backend: Backend) -> None:
    van = Van("van-7")
    p1, p2, p3, p4, p5 = van.issue(5)

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        result = await write(store, WriteBatch(pods=[p1, p3]))
        assert [(p.pod_seq, p.chain_status) for p in result.new_pods] == [(1, "ok"), (3, "pending")]
        assert result.acks["van-7"]["pod"] == 1
        assert (await store.counts()).pods_pending == 1

        result = await write(store, WriteBatch(pods=[p2]))
        assert [(p.pod_seq, p.chain_status) for p in result.new_pods] == [(2, "ok")]
        assert [(p.pod_seq, p.chain_status) for p in result.relinked] == [(3, "ok")]
        assert result.acks["van-7"]["pod"] == 3
        assert (await store.pod_by_pod_seq("van-7", 3)) == replace(p3, chain_status="ok")
        assert (await store.counts()).pods_pending == 0

        # A successor and its predecessor in one batch, successor first: both link.
        result = await write(store, WriteBatch(pods=[p5, p4]))
        assert [(p.pod_seq, p.chain_status) for p in result.new_pods] == [(4, "ok"), (5, "ok")]

    play(backend, scenario)


def test_a_late_predecessor_that_does_not_match_breaks_the_successor(backend: Backend) -> None:
    van = Van("van-7")
    p1, _p2, p3 = van.issue(3)
    # A forked chain: another POD 2 signed from the state after POD 1.
    fork = PodChain("van-7", van.key, ChainState(seq=1, prev=p1.digest))
    (forged2,) = van.issue(chain=fork, verdict="outside")

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        await write(store, WriteBatch(pods=[p1, p3]))
        result = await write(store, WriteBatch(pods=[forged2]))
        # POD 2 itself links to POD 1; POD 3's prev is the digest of the real POD 2.
        assert [p.chain_status for p in result.new_pods] == ["ok"]
        assert [(p.pod_seq, p.chain_status) for p in result.relinked] == [(3, "broken")]
        assert (await store.counts()).pods_broken == 1

    play(backend, scenario)


def test_the_store_refuses_replayed_and_unlinked_pods(backend: Backend) -> None:
    van = Van("van-7")
    p1, p2, p3 = van.issue(3)
    # POD 1 sent again as a new record (envelope seq 4), and a POD 3 whose prev is not
    # the digest of the stored POD 2 (another chain's POD 3 under this device).
    replayed = replace(p1, seq=4)
    stranger = Van("van-7").issue(3)[2]
    unlinked = replace(stranger, seq=5)

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        await write(store, WriteBatch(pods=[p1, p2]))
        result = await write(store, WriteBatch(pods=[replayed, unlinked]))
        assert result.new_pods == ()
        assert [q.reason for q in result.quarantined] == ["replayed_pod", "broken_chain"]
        assert result.quarantined[0].payload == p1.jws.encode()
        # Refused records settle their seqs: the device may delete them.
        assert result.acks["van-7"]["pod"] == 2
        assert await store.gaps("van-7") == [Gap("pod", 3, 3)]
        result = await write(store, WriteBatch(pods=[p3]))
        assert result.new_pods[0].chain_status == "ok"
        assert result.acks["van-7"]["pod"] == 5
        assert [q.reason for q in await store.quarantine()] == ["broken_chain", "replayed_pod"]

    play(backend, scenario)


def test_concurrent_writers_link_the_chain(backend: Backend) -> None:
    """Two stores (two workers' connections) write one device's PODs in opposite orders at
    once: whatever the interleaving, every link ends up checked."""
    van = Van("van-7")
    pods = van.issue(12)

    async def scenario() -> int:
        async with backend.make() as a, backend.make() as b:
            await a.migrate()
            await b.migrate()
            await a.register_device("van-7", van.public_key)

            async def feed(store: Store, order: list[Pod]) -> None:
                for pod in order:
                    await write(store, WriteBatch(pods=[pod]))

            await asyncio.gather(feed(a, pods[::2][::-1]), feed(b, pods[1::2]))
            return (await b.acks("van-7"))["pod"]

    assert asyncio.run(scenario()) == 12
    assert backend.sql("SELECT chain_status, count(*) FROM pods GROUP BY chain_status") == [
        ("ok", 12)
    ]


# --- queries ------------------------------------------------------------------------------


def test_queries_return_what_was_written(backend: Backend) -> None:
    van = Van("van-7")
    pods = van.issue(2)

    async def scenario(store: Store) -> None:
        await store.register_device("van-7", van.public_key)
        await register(store, "van-3", "van-9")
        await write(store, telemetry("van-7", 1, 10, list(range(1, 11))))
        await write(store, telemetry("van-3", 1, 3, [1, 2]))
        await write(
            store,
            WriteBatch(
                events=[
                    event("van-7", 1),
                    event("van-7", 2, kind="departure"),
                    event("van-7", 3, route_id="R-2"),
                    event("van-3", 1),
                ],
                pods=pods,
            ),
        )
        track = await store.track("van-7", T0 + timedelta(minutes=3), T0 + timedelta(minutes=6))
        assert [p.seq for p in track] == [3, 4, 5]
        assert track[0] == position("van-7", 3)
        assert await store.track("van-7", T0, T0) == []
        with pytest.raises(ValueError, match="start"):
            await store.track("van-7", T0.replace(tzinfo=None), T0)
        last = await store.last_positions()
        assert [(p.device_id, p.seq) for p in last] == [("van-3", 2), ("van-7", 10)]

        arrivals = await store.arrivals()
        assert [(e.device_id, e.seq) for e in arrivals] == [
            ("van-3", 1),
            ("van-7", 1),
            ("van-7", 3),
        ]
        assert arrivals[1] == event("van-7", 1)
        assert [e.seq for e in await store.arrivals(route_id="R-2")] == [3]
        assert [e.seq for e in await store.arrivals(device_id="van-7")] == [1, 3]
        assert [e.seq for e in await store.arrivals("R-1", "van-3")] == [1]
        assert len(await store.arrivals(limit=2)) == 2

        assert [p.pod_seq for p in await store.pods_by_parcel(pods[1].record.parcel)] == [2]
        assert await store.pods_by_parcel("nothing") == []
        counts = await store.counts()
        assert (counts.devices, counts.positions, counts.stop_events, counts.pods) == (3, 12, 4, 2)

    play(backend, scenario)


def test_times_round_trip_as_utc(backend: Backend) -> None:
    cet = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    first = position("van-7", 1)
    fix = replace(first, point=replace(first.point, time=cet))

    async def scenario(store: Store) -> list[Position]:
        await register(store, "van-7")
        await write(store, WriteBatch(positions=[fix]))
        return await store.last_positions()

    (stored,) = play(backend, scenario)
    assert stored.time == cet
    assert stored.time.utcoffset() == timedelta(0)


def test_a_closed_store_refuses_calls(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.make()
        await store.open()
        await store.migrate()
        await store.close()
        await store.close()  # twice is harmless
        with pytest.raises(StorageError, match="not open"):
            await store.counts()

    asyncio.run(scenario())


# --- range arithmetic ---------------------------------------------------------------------

ranges = st.lists(
    st.tuples(st.integers(1, 60), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


@given(existing=ranges, new=ranges)
def test_absorb_covers_exactly_the_union(
    existing: list[tuple[int, int]], new: list[tuple[int, int]]
) -> None:
    stored = merge_ranges(existing)
    remove, add = absorb(stored, new)
    after = sorted({r for r in stored if r[0] not in remove} | set(add))
    seqs = {s for a, b in [*existing, *new] for s in range(a, b + 1)}
    assert {s for a, b in after for s in range(a, b + 1)} == seqs
    assert after == merge_ranges(after)  # disjoint and not adjacent
    expected_ack = 0
    while expected_ack + 1 in seqs:
        expected_ack += 1
    assert cumulative_ack(after) == expected_ack
    missing = {s for a, b in holes(after) for s in range(a, b + 1)}
    assert missing == set(range(1, max(seqs, default=0) + 1)) - seqs
    if set(new) <= {(a, b) for a, b in stored} or not new:
        assert (remove, add) == ([], [])
