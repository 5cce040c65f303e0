"""The SQLite backend: one file, zero set-up, the default for one machine.

One connection, used only by one dedicated thread: every call runs there
(``run_in_executor`` on a single-thread executor), so the event loop never waits on
the disk and calls are serialized in the order they were made. (``asyncio.to_thread``
would hand calls to whichever pool thread is free, so a cancelled caller could let the
next call start a transaction on the connection while the previous one still runs.)
The file is in WAL mode with ``synchronous=FULL``: a write that returned survives a
power cut, and readers (the HTTP API in another process) do not block the writer.

Write transactions start with ``BEGIN IMMEDIATE``: the database's write lock is taken
first, so two processes on one file serialize instead of failing on a lock upgrade;
``busy_timeout_s`` is how long one waits for the other. Times are stored as integer
microseconds since the Unix epoch (exact, and ordered as numbers).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from cloud_ingest import fleetstream
from cloud_ingest.errors import StorageError
from cloud_ingest.store.base import (
    MAX_SEQ,
    PUBLIC_KEY_BYTES,
    STREAM_LEASE_S,
    STREAMS,
    ChainStatus,
    Counts,
    Covered,
    Device,
    DeviceConflictError,
    Gap,
    Migration,
    MigrationError,
    Pod,
    Position,
    Quarantined,
    StopEvent,
    Stream,
    StreamMessage,
    UnknownDeviceError,
    WriteBatch,
    WriteResult,
    is_device_id,
    require_utc,
    storable_text,
)
from cloud_ingest.store.podlinks import neighbour_pod_seqs, plan_pods
from cloud_ingest.store.ranges import SeqRange, absorb, holes, received_ranges
from cloud_ingest.verify import Rejected

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            """CREATE TABLE devices (
                device_id TEXT PRIMARY KEY,
                public_key BLOB NOT NULL CHECK (length(public_key) = 32),
                enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
                registered_at_us INTEGER NOT NULL
            ) STRICT""",
            """CREATE TABLE positions (
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                seq INTEGER NOT NULL CHECK (seq >= 1),
                time_us INTEGER NOT NULL,
                lat REAL NOT NULL,
                lon REAL NOT NULL,
                speed_mps REAL,
                course_deg REAL,
                hdop REAL,
                sats INTEGER,
                historical INTEGER NOT NULL CHECK (historical IN (0, 1)),
                PRIMARY KEY (device_id, seq)
            ) STRICT, WITHOUT ROWID""",
            "CREATE INDEX positions_by_time ON positions (device_id, time_us)",
            """CREATE TABLE stop_events (
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                seq INTEGER NOT NULL CHECK (seq >= 1),
                type TEXT NOT NULL,
                time_us INTEGER NOT NULL,
                stop_id TEXT,
                route_id TEXT,
                historical INTEGER NOT NULL CHECK (historical IN (0, 1)),
                record TEXT NOT NULL,
                PRIMARY KEY (device_id, seq)
            ) STRICT""",
            "CREATE INDEX stop_events_by_type ON stop_events (type, time_us)",
            "CREATE INDEX stop_events_by_route ON stop_events (route_id, type, time_us)",
            """CREATE TABLE pods (
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                seq INTEGER NOT NULL CHECK (seq >= 1),
                pod_seq INTEGER NOT NULL CHECK (pod_seq >= 1),
                parcel TEXT NOT NULL,
                stop_id TEXT NOT NULL,
                time_us INTEGER NOT NULL,
                verdict TEXT NOT NULL,
                jws TEXT NOT NULL,
                digest TEXT NOT NULL,
                prev TEXT NOT NULL,
                chain_status TEXT NOT NULL CHECK (chain_status IN ('ok', 'pending', 'broken')),
                historical INTEGER NOT NULL CHECK (historical IN (0, 1)),
                PRIMARY KEY (device_id, seq),
                UNIQUE (device_id, pod_seq)
            ) STRICT""",
            "CREATE INDEX pods_by_parcel ON pods (parcel, time_us)",
            """CREATE TABLE quarantine (
                id INTEGER PRIMARY KEY,
                received_at_us INTEGER NOT NULL,
                topic TEXT NOT NULL,
                device_id TEXT,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                payload BLOB NOT NULL,
                stream TEXT,
                first_seq INTEGER,
                last_seq INTEGER
            ) STRICT""",
            "CREATE INDEX quarantine_by_device ON quarantine (device_id, id)",
            """CREATE TABLE stream_ranges (
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                stream TEXT NOT NULL CHECK (stream IN ('telemetry', 'events', 'pod')),
                first_seq INTEGER NOT NULL CHECK (first_seq >= 1),
                last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq),
                PRIMARY KEY (device_id, stream, first_seq)
            ) STRICT, WITHOUT ROWID""",
        ),
    ),
    Migration(
        2,
        "fleetstream outbox",
        (
            # AUTOINCREMENT: an id is never reused, so a late stream_done of a deleted
            # row can never delete a newer message.
            """CREATE TABLE stream_outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                leased_until_us INTEGER NOT NULL
            ) STRICT""",
            "CREATE INDEX stream_outbox_by_lease ON stream_outbox (leased_until_us, id)",
        ),
    ),
)

_POSITION_COLUMNS = (
    "device_id, seq, time_us, lat, lon, speed_mps, course_deg, hdop, sats, historical"
)
_EVENT_COLUMNS = "device_id, seq, type, time_us, stop_id, route_id, historical, record"
_POD_COLUMNS = (
    "device_id, seq, pod_seq, parcel, stop_id, time_us, verdict, jws, digest, prev, "
    "chain_status, historical"
)
_QUARANTINE_COLUMNS = (
    "received_at_us, topic, device_id, reason, detail, payload, stream, first_seq, last_seq"
)
# Statements assembled from the column lists above, never from input.
_SELECT_POSITIONS = f"SELECT {_POSITION_COLUMNS} FROM positions"  # noqa: S608
_SELECT_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM stop_events"  # noqa: S608
_SELECT_PODS = f"SELECT {_POD_COLUMNS} FROM pods"  # noqa: S608
_SELECT_QUARANTINE = f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine"  # noqa: S608
_INSERT_POSITION = (
    f"INSERT INTO positions ({_POSITION_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_EVENT = (
    f"INSERT INTO stop_events ({_EVENT_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_POD = (
    f"INSERT INTO pods ({_POD_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_QUARANTINE = (
    f"INSERT INTO quarantine ({_QUARANTINE_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _device(row: Sequence[Any]) -> Device:
    return Device(row[0], bytes(row[1]), bool(row[2]), _time(row[3]))


def _position(row: Sequence[Any]) -> Position:
    return Position(
        row[0], row[1], _time(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], bool(row[9])
    )


def _event(row: Sequence[Any]) -> StopEvent:
    return StopEvent(
        row[0], row[1], row[2], _time(row[3]), row[4], row[5], bool(row[6]), json.loads(row[7])
    )


def _pod(row: Sequence[Any]) -> Pod:
    return Pod(
        device_id=row[0],
        seq=row[1],
        pod_seq=row[2],
        parcel=row[3],
        stop_id=row[4],
        time=_time(row[5]),
        verdict=row[6],
        jws=row[7],
        digest=row[8],
        prev=row[9],
        chain_status=cast(ChainStatus, row[10]),
        historical=bool(row[11]),
    )


def _quarantined(row: Sequence[Any]) -> Quarantined:
    covered = None
    if row[6] is not None and row[7] is not None and row[8] is not None:
        covered = Covered(row[2], cast(Stream, row[6]), row[7], row[8])
    return Quarantined(_time(row[0]), row[1], row[2], row[3], row[4], bytes(row[5]), covered)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore:
    """:class:`~cloud_ingest.store.base.Store` on one SQLite file (created if absent)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 10.0) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_ms = round(busy_timeout_s * 1000)
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

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

    async def open(self) -> None:
        if self._conn is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except sqlite3.Error as err:
            executor.shutdown(wait=False)
            raise StorageError(f"cannot open SQLite database {self._path}: {err}") from err
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we BEGIN and COMMIT ourselves.
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        if str(mode).lower() != "wal" and self._path != ":memory:":
            conn.close()
            raise StorageError(f"{self._path}: cannot switch to WAL (journal mode {mode})")
        return conn

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            return
        self._conn = self._executor = None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            # The thread is idle now (its queue held only the close): let it end alone.
            executor.shutdown(wait=False)

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise StorageError(f"{self!r} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, conn)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # our bug, not the database's state: let it show as what it is
        except sqlite3.Error as err:
            raise StorageError(f"SQLite {self._path}: {err}") from err

    # --- schema -----------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        return await self._call(_migrate)

    # --- devices ----------------------------------------------------------------------

    async def register_device(
        self,
        device_id: str,
        public_key: bytes,
        *,
        enabled: bool = True,
        replace_key: bool = False,
    ) -> Device:
        if not is_device_id(device_id):
            raise ValueError(f"invalid device_id {device_id!r}")
        if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
            raise ValueError("public_key must be the raw 32 bytes of an Ed25519 key")
        now = datetime.now(UTC)

        def run(conn: sqlite3.Connection) -> Device:
            with _transaction(conn):
                row = conn.execute(
                    "SELECT public_key FROM devices WHERE device_id = ?", (device_id,)
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO devices VALUES (?, ?, ?, ?)",
                        (device_id, public_key, int(enabled), _us(now)),
                    )
                elif bytes(row[0]) != public_key and not replace_key:
                    raise DeviceConflictError(
                        f"device {device_id!r} is registered with another key "
                        "(replace_key=True to re-provision it)"
                    )
                else:
                    conn.execute(
                        "UPDATE devices SET public_key = ?, enabled = ? WHERE device_id = ?",
                        (public_key, int(enabled), device_id),
                    )
                return _get_device(conn, device_id)

        return await self._call(run)

    async def set_enabled(self, device_id: str, enabled: bool) -> Device:
        def run(conn: sqlite3.Connection) -> Device:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE devices SET enabled = ? WHERE device_id = ?", (int(enabled), device_id)
                )
                if cur.rowcount != 1:
                    raise UnknownDeviceError(f"device {device_id!r} is not registered")
                return _get_device(conn, device_id)

        return await self._call(run)

    async def get_device(self, device_id: str) -> Device | None:
        def run(conn: sqlite3.Connection) -> Device | None:
            row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            return None if row is None else _device(row)

        return await self._call(run)

    async def list_devices(self) -> list[Device]:
        def run(conn: sqlite3.Connection) -> list[Device]:
            return [_device(r) for r in conn.execute("SELECT * FROM devices ORDER BY device_id")]

        return await self._call(run)

    # --- writing ----------------------------------------------------------------------

    async def write(
        self, batch: WriteBatch, *, stream_lease_s: float = STREAM_LEASE_S
    ) -> WriteResult:
        now = datetime.now(UTC)
        return await self._call(lambda conn: _write(conn, batch, now, stream_lease_s))

    async def stream_done(self, ids: Sequence[int]) -> None:
        if not ids:
            return

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _delete_streamed(conn, ids)

        await self._call(run)

    async def claim_stream(
        self, *, stream_lease_s: float = STREAM_LEASE_S, limit: int = 100
    ) -> list[StreamMessage]:
        now_us = _us(datetime.now(UTC))

        def run(conn: sqlite3.Connection) -> list[StreamMessage]:
            # Looked at first without the write lock: a sweep finds nothing nearly always.
            if not conn.execute(
                "SELECT 1 FROM stream_outbox WHERE leased_until_us <= ? LIMIT 1", (now_us,)
            ).fetchone():
                return []
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT id, topic, payload FROM stream_outbox WHERE leased_until_us <= ? "
                    "ORDER BY id LIMIT ?",
                    (now_us, limit),
                ).fetchall()
                conn.executemany(
                    "UPDATE stream_outbox SET leased_until_us = ? WHERE id = ?",
                    [(now_us + _lease_us(stream_lease_s), r[0]) for r in rows],
                )
            return [StreamMessage(r[0], r[1], bytes(r[2])) for r in rows]

        return await self._call(run)

    async def stream_pending(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT count(*) FROM stream_outbox").fetchone()
            return int(n)

        return await self._call(run)

    async def acks(self, device_id: str) -> dict[str, int]:
        return (await self._call(lambda conn: _acks(conn, [device_id])))[device_id]

    # --- reading ----------------------------------------------------------------------

    async def pod_head(self, device_id: str) -> Pod | None:
        def run(conn: sqlite3.Connection) -> Pod | None:
            row = conn.execute(
                _SELECT_PODS + " WHERE device_id = ? ORDER BY pod_seq DESC LIMIT 1",
                (device_id,),
            ).fetchone()
            return None if row is None else _pod(row)

        return await self._call(run)

    async def pod_by_pod_seq(self, device_id: str, pod_seq: int) -> Pod | None:
        if not 1 <= pod_seq <= MAX_SEQ:
            return None

        def run(conn: sqlite3.Connection) -> Pod | None:
            row = conn.execute(
                _SELECT_PODS + " WHERE device_id = ? AND pod_seq = ?",
                (device_id, pod_seq),
            ).fetchone()
            return None if row is None else _pod(row)

        return await self._call(run)

    async def last_positions(self) -> list[Position]:
        def run(conn: sqlite3.Connection) -> list[Position]:
            # Per device, the highest seq through the primary key: one probe per device.
            rows = conn.execute(
                _SELECT_POSITIONS  # noqa: S608
                + " AS p WHERE p.seq = (SELECT max(seq) FROM positions AS q"
                " WHERE q.device_id = p.device_id) ORDER BY p.device_id"
            )
            return [_position(r) for r in rows]

        return await self._call(run)

    async def track(self, device_id: str, start: datetime, end: datetime) -> list[Position]:
        require_utc("start", start)
        require_utc("end", end)
        lo, hi = _us(start), _us(end)

        def run(conn: sqlite3.Connection) -> list[Position]:
            rows = conn.execute(
                _SELECT_POSITIONS
                + " WHERE device_id = ? AND time_us >= ? AND time_us < ? ORDER BY time_us, seq",
                (device_id, lo, hi),
            )
            return [_position(r) for r in rows]

        return await self._call(run)

    async def arrivals(
        self, route_id: str | None = None, device_id: str | None = None, *, limit: int = 1000
    ) -> list[StopEvent]:
        def run(conn: sqlite3.Connection) -> list[StopEvent]:
            where, params = ["type = 'arrival'"], []
            if route_id is not None:
                where.append("route_id = ?")
                params.append(route_id)
            if device_id is not None:
                where.append("device_id = ?")
                params.append(device_id)
            rows = conn.execute(
                _SELECT_EVENTS
                + " WHERE "
                + " AND ".join(where)
                + " ORDER BY time_us, device_id, seq LIMIT ?",
                (*params, limit),
            )
            return [_event(r) for r in rows]

        return await self._call(run)

    async def pods_by_parcel(self, parcel: str) -> list[Pod]:
        def run(conn: sqlite3.Connection) -> list[Pod]:
            rows = conn.execute(
                _SELECT_PODS + " WHERE parcel = ? ORDER BY time_us, device_id, pod_seq",
                (parcel,),
            )
            return [_pod(r) for r in rows]

        return await self._call(run)

    async def quarantine(self, limit: int = 100) -> list[Quarantined]:
        def run(conn: sqlite3.Connection) -> list[Quarantined]:
            rows = conn.execute(_SELECT_QUARANTINE + " ORDER BY id DESC LIMIT ?", (limit,))
            return [_quarantined(r) for r in rows]

        return await self._call(run)

    async def gaps(self, device_id: str) -> list[Gap]:
        def run(conn: sqlite3.Connection) -> list[Gap]:
            ranges: dict[str, list[SeqRange]] = defaultdict(list)
            for stream, first, last in conn.execute(
                "SELECT stream, first_seq, last_seq FROM stream_ranges WHERE device_id = ?",
                (device_id,),
            ):
                ranges[stream].append((first, last))
            return [Gap(s, a, b) for s in STREAMS for a, b in holes(ranges[s])]

        return await self._call(run)

    async def counts(self) -> Counts:
        def run(conn: sqlite3.Connection) -> Counts:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM positions), "
                "(SELECT count(*) FROM stop_events), (SELECT count(*) FROM pods), "
                "(SELECT count(*) FROM pods WHERE chain_status = 'pending'), "
                "(SELECT count(*) FROM pods WHERE chain_status = 'broken'), "
                "(SELECT count(*) FROM quarantine)"
            ).fetchone()
            return Counts(*row)

        return await self._call(run)


def _get_device(conn: sqlite3.Connection, device_id: str) -> Device:
    row = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return _device(row)


def _migrate(conn: sqlite3.Connection) -> list[int]:
    with _transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            ") STRICT"
        )
        applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        known = {m.version for m in MIGRATIONS}
        if applied - known:
            raise MigrationError(
                f"database schema version {max(applied - known)} is newer than this code "
                f"(knows up to {max(known)})"
            )
        done: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
            done.append(migration.version)
        return done


def _acks(conn: sqlite3.Connection, device_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    acks: dict[str, dict[str, int]] = {d: dict.fromkeys(STREAMS, 0) for d in device_ids}
    for device_id in device_ids:
        for stream, last in conn.execute(
            "SELECT stream, last_seq FROM stream_ranges WHERE device_id = ? AND first_seq = 1",
            (device_id,),
        ):
            acks[device_id][stream] = last
    return acks


def _touching(
    conn: sqlite3.Connection, device_id: str, stream: str, new: Sequence[SeqRange]
) -> list[SeqRange]:
    """The stored ranges that overlap or adjoin one of ``new``, by two index probes each:
    the last range starting before it, and those starting inside it or right after."""
    found: set[SeqRange] = set()
    for first, last in new:
        before = conn.execute(
            "SELECT first_seq, last_seq FROM stream_ranges WHERE device_id = ? AND stream = ? "
            "AND first_seq < ? ORDER BY first_seq DESC LIMIT 1",
            (device_id, stream, first),
        ).fetchone()
        if before is not None and before[1] >= first - 1:
            found.add((before[0], before[1]))
        found.update(
            conn.execute(
                "SELECT first_seq, last_seq FROM stream_ranges WHERE device_id = ? AND stream = ? "
                "AND first_seq BETWEEN ? AND ?",
                (device_id, stream, first, min(last + 1, MAX_SEQ)),
            )
        )
    return sorted(found)


def _write_pods(
    conn: sqlite3.Connection, pods: Sequence[Pod]
) -> tuple[list[Pod], list[Pod], list[tuple[Pod, Rejected]], int]:
    """Store ``pods`` linked into their chains (:func:`plan_pods`): the new PODs, the
    relinked ones, the refused ones and the number of duplicates."""
    by_device: dict[str, list[Pod]] = defaultdict(list)
    for pod in pods:
        by_device[pod.device_id].append(pod)
    new: list[Pod] = []
    relinked: list[Pod] = []
    refused: list[tuple[Pod, Rejected]] = []
    duplicates = 0
    for device_id, incoming in by_device.items():
        # json_each: any number of values in one parameter (SQLite caps parameters).
        stored = [
            _pod(row)
            for row in conn.execute(
                _SELECT_PODS  # noqa: S608
                + " WHERE device_id = ? AND (seq IN (SELECT value FROM json_each(?))"
                " OR pod_seq IN (SELECT value FROM json_each(?)))",
                (
                    device_id,
                    json.dumps(sorted({p.seq for p in incoming})),
                    json.dumps(neighbour_pod_seqs(incoming)),
                ),
            )
        ]
        plan = plan_pods(incoming, stored)
        conn.executemany(
            _INSERT_POD,
            [
                (
                    p.device_id,
                    p.seq,
                    p.pod_seq,
                    p.parcel,
                    p.stop_id,
                    _us(p.time),
                    p.verdict,
                    p.jws,
                    p.digest,
                    p.prev,
                    p.chain_status,
                    int(p.historical),
                )
                for p in plan.insert
            ],
        )
        conn.executemany(
            "UPDATE pods SET chain_status = ? WHERE device_id = ? AND seq = ?",
            [(p.chain_status, p.device_id, p.seq) for p in plan.relinked],
        )
        new += plan.insert
        relinked += plan.relinked
        refused += plan.refused
        duplicates += plan.duplicates
    return new, relinked, refused, duplicates


def _lease_us(stream_lease_s: float) -> int:
    return max(0, round(stream_lease_s * 1_000_000))


def _delete_streamed(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    conn.execute(
        "DELETE FROM stream_outbox WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids)),),
    )


def _write(
    conn: sqlite3.Connection, batch: WriteBatch, now: datetime, stream_lease_s: float
) -> WriteResult:
    with _transaction(conn):
        if batch.streamed:
            _delete_streamed(conn, batch.streamed)
        device_ids = batch.device_ids()
        if device_ids:
            found = {
                d
                for (d,) in conn.execute(
                    "SELECT device_id FROM devices "
                    "WHERE device_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(device_ids),),
                )
            }
            missing = sorted(set(device_ids) - found)
            if missing:
                raise UnknownDeviceError(f"not registered: {', '.join(missing)}")

        new_positions = [
            p
            for p in batch.positions
            if conn.execute(
                _INSERT_POSITION,
                (
                    p.device_id,
                    p.seq,
                    _us(p.time),
                    p.lat,
                    p.lon,
                    p.speed_mps,
                    p.course_deg,
                    p.hdop,
                    p.sats,
                    int(p.historical),
                ),
            ).rowcount
            == 1
        ]
        new_events = [
            e
            for e in batch.events
            if conn.execute(
                _INSERT_EVENT,
                (
                    e.device_id,
                    e.seq,
                    e.type,
                    _us(e.time),
                    e.stop_id,
                    e.route_id,
                    int(e.historical),
                    json.dumps(e.record, ensure_ascii=False, separators=(",", ":")),
                ),
            ).rowcount
            == 1
        ]

        new_pods, relinked, refused, pod_duplicates = _write_pods(conn, batch.pods)
        # The store refuses a POD only in a race the worker's own check could not see;
        # the original envelope is gone by now, the JWS (the evidence) is kept.
        quarantined = [
            *batch.quarantined,
            *(
                r.quarantined(
                    topic=f"fleet/v1/{p.device_id}/pod",
                    payload=p.jws.encode("ascii"),
                    received_at=now,
                )
                for p, r in refused
            ),
        ]
        for q in quarantined:
            c = q.covered
            conn.execute(
                _INSERT_QUARANTINE,
                (
                    _us(q.received_at),
                    storable_text(q.topic),
                    None if q.device_id is None else storable_text(q.device_id),
                    storable_text(q.reason),
                    storable_text(q.detail),
                    q.payload,
                    None if c is None else c.stream,
                    None if c is None else c.first_seq,
                    None if c is None else c.last_seq,
                ),
            )

        for (device_id, stream), new in received_ranges(batch).items():
            remove, add = absorb(_touching(conn, device_id, stream, new), new)
            conn.executemany(
                "DELETE FROM stream_ranges WHERE device_id = ? AND stream = ? AND first_seq = ?",
                [(device_id, stream, first) for first in remove],
            )
            conn.executemany(
                "INSERT INTO stream_ranges VALUES (?, ?, ?, ?)",
                [(device_id, stream, first, last) for first, last in add],
            )

        leased_until_us = _us(now) + _lease_us(stream_lease_s)
        announced = [
            StreamMessage(
                conn.execute(
                    "INSERT INTO stream_outbox (topic, payload, leased_until_us) VALUES (?, ?, ?)",
                    (topic, payload, leased_until_us),
                ).lastrowid
                or 0,
                topic,
                payload,
            )
            for topic, payload in fleetstream.messages(
                new_positions, new_events, (*new_pods, *relinked)
            )
        ]

        duplicates = (
            len(batch.positions)
            - len(new_positions)
            + len(batch.events)
            - len(new_events)
            + pod_duplicates
        )
        return WriteResult(
            acks=_acks(conn, device_ids),
            new_positions=tuple(new_positions),
            new_events=tuple(new_events),
            new_pods=tuple(new_pods),
            duplicates=duplicates,
            quarantined=tuple(quarantined),
            relinked=tuple(relinked),
            stream=tuple(announced),
        )
