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
import hashlib
import json
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar, cast

from cloud_ingest.apitokens import ApiToken, scopes_text
from cloud_ingest.errors import StorageError
from cloud_ingest.store.base import (
    QUARANTINE_PAYLOAD_MAX_BYTES,
    STREAM_LEASE_S,
    ArrivalKey,
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
    QuarantineEntry,
    StopEvent,
    StoreLifetime,
    StreamMessage,
    TrackKey,
    UnknownDeviceError,
    UnknownTokenError,
    WriteBatch,
    WriteResult,
    check_enrollment,
    event_from_json,
    event_json,
    kept_payload,
    pod_from_columns,
    point_columns,
    point_from_columns,
    require_utc,
    storable_text,
)
from cloud_ingest.store.plan import (
    Announcer,
    DeleteStreamed,
    InsertEvents,
    InsertLost,
    InsertPods,
    InsertPositions,
    InsertQuarantine,
    InsertStream,
    LockDevices,
    Op,
    ReadAcks,
    RelinkPods,
    ReplaceRanges,
    StoredPods,
    TouchingRanges,
    run_plan,
    write_plan,
)
from cloud_ingest.store.ranges import SeqRange, gap_report
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream

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
    Migration(
        3,
        "one shape per record: every field of a telemetry point, a POD's distance",
        (
            # Rows stored before have no altitude or fix quality (NULL: unknown) and
            # mode 0 (unknown): the van sent its mode, ingest did not keep it.
            "ALTER TABLE positions ADD COLUMN alt_m REAL",
            "ALTER TABLE positions ADD COLUMN mode INTEGER NOT NULL DEFAULT 0 "
            "CHECK (mode BETWEEN 0 AND 3)",
            "ALTER TABLE positions ADD COLUMN quality INTEGER",
            "ALTER TABLE positions RENAME COLUMN sats TO sats_used",
            "ALTER TABLE pods ADD COLUMN distance_m REAL",
        ),
    ),
    Migration(
        4,
        "seqs lost with a restored database, released by their device",
        (
            """CREATE TABLE stream_lost (
                device_id TEXT NOT NULL REFERENCES devices (device_id),
                stream TEXT NOT NULL CHECK (stream IN ('telemetry', 'events', 'pod')),
                first_seq INTEGER NOT NULL CHECK (first_seq >= 1),
                last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq),
                recorded_at_us INTEGER NOT NULL,
                PRIMARY KEY (device_id, stream, first_seq)
            ) STRICT, WITHOUT ROWID""",
        ),
    ),
    Migration(
        5,
        "quarantine: the length and SHA-256 of each payload, indexes for its retention",
        (
            # A payload may be kept in part from now on (kept_payload); rows stored
            # before hold theirs whole.
            "ALTER TABLE quarantine ADD COLUMN payload_bytes INTEGER",
            "ALTER TABLE quarantine ADD COLUMN payload_sha256 BLOB",
            "UPDATE quarantine SET payload_bytes = length(payload), "
            "payload_sha256 = fleet_sha256(payload)",
            "CREATE INDEX quarantine_by_time ON quarantine (received_at_us)",
            "CREATE INDEX quarantine_unsettled ON quarantine (id) WHERE stream IS NULL",
        ),
    ),
    Migration(
        6,
        "the outcome of each POD's delivery attempt",
        (
            # PODs stored before were all deliveries: their claims have no outcome.
            "ALTER TABLE pods ADD COLUMN outcome TEXT NOT NULL DEFAULT 'delivered'",
        ),
    ),
    Migration(
        7,
        "scoped API tokens, stored hashed (cloud_ingest.apitokens)",
        (
            """CREATE TABLE api_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                scopes TEXT NOT NULL,
                sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
                created_at_us INTEGER NOT NULL,
                expires_at_us INTEGER,
                revoked_at_us INTEGER,
                last_used_at_us INTEGER
            ) STRICT""",
        ),
    ),
)
_ACCESS_COLUMNS = (
    "id, name, scopes, sha256, created_at_us, expires_at_us, revoked_at_us, last_used_at_us"
)

_POSITION_COLUMNS = (
    "device_id, seq, historical, time_us, lat, lon, alt_m, speed_mps, course_deg, mode, "
    "quality, hdop, sats_used"
)
_EVENT_COLUMNS = "device_id, seq, historical, record"
_POD_COLUMNS = (
    "device_id, seq, historical, time_us, stop_id, parcel, pod_seq, verdict, distance_m, jws, "
    "prev, chain_status, outcome"
)
_QUARANTINE_COLUMNS = (
    "received_at_us, topic, device_id, reason, detail, payload, stream, first_seq, last_seq, "
    "payload_bytes, payload_sha256"
)
# Statements assembled from the column lists above, never from input.
_SELECT_POSITIONS = f"SELECT {_POSITION_COLUMNS} FROM positions"  # noqa: S608
_SELECT_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM stop_events"  # noqa: S608
_SELECT_PODS = f"SELECT {_POD_COLUMNS} FROM pods"  # noqa: S608
# A row as read: ``{payload}`` is the payload or its first ``?`` bytes; length() of a
# blob does not read it. Rows from before migration 5 all have their length and digest.
_SELECT_QUARANTINE = (
    "SELECT id, received_at_us, topic, device_id, reason, detail, {payload}, "
    "coalesce(payload_bytes, length(payload)), coalesce(payload_sha256, fleet_sha256(payload)), "
    "length(payload), stream, first_seq, last_seq FROM quarantine"
)
_INSERT_POSITION = (
    f"INSERT INTO positions ({_POSITION_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# type, time, stop_id and route_id are the record's, in columns for the indexes.
_INSERT_EVENT = (
    "INSERT INTO stop_events (device_id, seq, historical, record, type, time_us, stop_id, "
    "route_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_POD = (
    f"INSERT INTO pods ({_POD_COLUMNS}, digest) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_QUARANTINE = (
    f"INSERT INTO quarantine ({_QUARANTINE_COLUMNS}) "  # noqa: S608
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_ONE_US: Final = timedelta(microseconds=1)  # made once: a timedelta per call cost 0.4 us


def _us(t: datetime) -> int:
    return (t - _EPOCH) // _ONE_US


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _device(row: Sequence[Any]) -> Device:
    return Device(row[0], bytes(row[1]), bool(row[2]), _time(row[3]))


def _position(row: Sequence[Any]) -> Position:
    return Position(row[0], row[1], bool(row[2]), point_from_columns(_time(row[3]), row[4:]))


def _position_row(p: Position) -> tuple[Any, ...]:
    return (p.device_id, p.seq, int(p.historical), _us(p.time), *point_columns(p.point))


def _event(row: Sequence[Any]) -> StopEvent:
    return StopEvent(row[0], row[1], bool(row[2]), event_from_json(row[3]))


def _event_row(e: StopEvent) -> tuple[Any, ...]:
    return (
        e.device_id,
        e.seq,
        int(e.historical),
        event_json(e),
        e.type,
        _us(e.time),
        e.stop_id,
        e.route_id,
    )


def _pod(row: Sequence[Any]) -> Pod:
    return pod_from_columns(_time(row[3]), row)


def _pod_row(p: Pod) -> tuple[Any, ...]:
    r = p.record
    return (
        p.device_id,
        p.seq,
        int(p.historical),
        _us(r.time),
        r.stop_id,
        r.parcel,
        r.seq,
        r.verdict,
        r.distance_m,
        r.jws,
        p.prev,
        p.chain_status,
        r.outcome,
        p.digest,
    )


def _quarantined(row: Sequence[Any]) -> QuarantineEntry:
    covered = None
    if row[10] is not None and row[11] is not None and row[12] is not None:
        covered = Covered(row[3], cast(Stream, row[10]), row[11], row[12])
    return QuarantineEntry(
        row[0], _time(row[1]), row[2], row[3], row[4], row[5], bytes(row[6]), row[7],
        bytes(row[8]), row[9], covered,
    )  # fmt: skip


def _sha256(data: bytes | None) -> bytes | None:
    return None if data is None else hashlib.sha256(data).digest()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore(StoreLifetime):
    """:class:`~cloud_ingest.store.base.Store` on one SQLite file (created if absent).

    ``quarantine_payload_max_bytes``: what the quarantine keeps of a payload that settled
    nothing (:func:`~cloud_ingest.store.base.kept_payload`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        quarantine_payload_max_bytes: int = QUARANTINE_PAYLOAD_MAX_BYTES,
    ) -> None:
        self._path = os.fspath(path)
        self._busy_timeout_ms = round(busy_timeout_s * 1000)
        self._keep_bytes = quarantine_payload_max_bytes
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

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
            # Migration 5 and reads of rows without a stored digest.
            conn.create_function("fleet_sha256", 1, _sha256, deterministic=True)
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
        check_enrollment(device_id, public_key)
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

    # --- API tokens -------------------------------------------------------------------

    async def add_api_token(self, token: ApiToken) -> None:
        row = (
            token.id,
            token.name,
            scopes_text(token.scopes),
            token.sha256,
            _us(token.created_at),
            None if token.expires_at is None else _us(token.expires_at),
            None if token.revoked_at is None else _us(token.revoked_at),
            None if token.last_used_at is None else _us(token.last_used_at),
        )

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    f"INSERT INTO api_tokens ({_ACCESS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    row,
                )

        await self._call(run)

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        return await self._call(lambda conn: _get_api_token(conn, token_id))

    async def list_api_tokens(self) -> list[ApiToken]:
        def run(conn: sqlite3.Connection) -> list[ApiToken]:
            query = f"SELECT {_ACCESS_COLUMNS} FROM api_tokens ORDER BY created_at_us, id"  # noqa: S608
            return [_api_token(r) for r in conn.execute(query)]

        return await self._call(run)

    async def revoke_api_token(self, token_id: str, at: datetime) -> ApiToken:
        require_utc("at", at)

        def run(conn: sqlite3.Connection) -> ApiToken:
            with _transaction(conn):
                conn.execute(
                    "UPDATE api_tokens SET revoked_at_us = coalesce(revoked_at_us, ?) WHERE id = ?",
                    (_us(at), token_id),
                )
                token = _get_api_token(conn, token_id)
            if token is None:
                raise UnknownTokenError(f"no API token {token_id!r}")
            return token

        return await self._call(run)

    async def touch_api_token(self, token_id: str, at: datetime) -> None:
        require_utc("at", at)

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE api_tokens SET last_used_at_us = ? WHERE id = ?", (_us(at), token_id)
                )

        await self._call(run)

    # --- writing ----------------------------------------------------------------------

    async def write(
        self,
        batch: WriteBatch,
        *,
        stream_lease_s: float = STREAM_LEASE_S,
        announce: Announcer | None = None,
    ) -> WriteResult:
        plan = write_plan(
            batch, now=datetime.now(UTC), stream_lease_s=stream_lease_s, announce=announce
        )

        def run(conn: sqlite3.Connection) -> WriteResult:
            with _transaction(conn):
                return run_plan(plan, lambda op: _execute(conn, op, self._keep_bytes))

        return await self._call(run)

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

    async def track(
        self,
        device_id: str,
        start: datetime,
        end: datetime,
        *,
        limit: int | None = None,
        after: TrackKey | None = None,
    ) -> list[Position]:
        require_utc("start", start)
        require_utc("end", end)
        # positions_by_time holds (device_id, time_us) and the key (seq): it gives the
        # rows in (time, seq) order, so the LIMIT stops the scan.
        query = _SELECT_POSITIONS + " WHERE device_id = ? AND time_us >= ? AND time_us < ?"
        params: list[Any] = [device_id, _us(start), _us(end)]
        if after is not None:
            require_utc("after", after[0])
            query += " AND time_us >= ? AND (time_us > ? OR seq > ?)"
            params += [_us(after[0]), _us(after[0]), after[1]]
        query += " ORDER BY time_us, seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)

        def run(conn: sqlite3.Connection) -> list[Position]:
            return [_position(r) for r in conn.execute(query, params)]

        return await self._call(run)

    async def arrivals(
        self,
        route_id: str | None = None,
        device_id: str | None = None,
        *,
        limit: int = 1000,
        after: ArrivalKey | None = None,
    ) -> list[StopEvent]:
        def run(conn: sqlite3.Connection) -> list[StopEvent]:
            where: list[str] = ["type = 'arrival'"]
            params: list[Any] = []
            if route_id is not None:
                where.append("route_id = ?")
                params.append(route_id)
            if device_id is not None:
                where.append("device_id = ?")
                params.append(device_id)
            if after is not None:
                require_utc("after", after[0])
                # time_us >= ?: the index range starts at the page's first time.
                where.append("time_us >= ? AND (time_us, device_id, seq) > (?, ?, ?)")
                params += [_us(after[0]), _us(after[0]), after[1], after[2]]
            rows = conn.execute(
                _SELECT_EVENTS
                + " WHERE "
                + " AND ".join(where)
                + " ORDER BY time_us, device_id, seq LIMIT ?",
                (*params, limit),
            )
            return [_event(r) for r in rows]

        return await self._call(run)

    async def pods_by_parcel(self, parcel: str, *, limit: int | None = None) -> list[Pod]:
        def run(conn: sqlite3.Connection) -> list[Pod]:
            rows = conn.execute(
                _SELECT_PODS + " WHERE parcel = ? ORDER BY time_us, device_id, pod_seq LIMIT ?",
                (parcel, -1 if limit is None else limit),
            )
            return [_pod(r) for r in rows]

        return await self._call(run)

    async def quarantine(
        self,
        limit: int = 100,
        *,
        before_id: int | None = None,
        payload_max_bytes: int | None = None,
    ) -> list[QuarantineEntry]:
        params: list[Any] = []
        payload = "payload"
        if payload_max_bytes is not None:
            payload = "substr(payload, 1, ?)"
            params.append(max(0, payload_max_bytes))
        query = (
            _SELECT_QUARANTINE.format(payload=payload) + " WHERE id < ? ORDER BY id DESC LIMIT ?"
        )
        params += [MAX_SEQ if before_id is None else before_id, limit]

        def run(conn: sqlite3.Connection) -> list[QuarantineEntry]:
            return [_quarantined(r) for r in conn.execute(query, params)]

        return await self._call(run)

    async def prune_quarantine(
        self,
        *,
        received_before: datetime | None = None,
        max_unsettled_rows: int | None = None,
        batch_rows: int = 1000,
    ) -> int:
        batch_rows = max(1, batch_rows)

        def delete(query: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
            def run(conn: sqlite3.Connection) -> int:
                with _transaction(conn):
                    return conn.execute(query, params).rowcount

            return run

        deleted = 0
        if received_before is not None:
            require_utc("received_before", received_before)
            old = delete(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine "
                "WHERE received_at_us < ? LIMIT ?)",
                (_us(received_before), batch_rows),
            )
            while (n := await self._call(old)) > 0:
                deleted += n
        if max_unsettled_rows is not None:

            def newest_over(conn: sqlite3.Connection) -> int | None:
                row = conn.execute(
                    "SELECT id FROM quarantine WHERE stream IS NULL ORDER BY id DESC "
                    "LIMIT 1 OFFSET ?",
                    (max(0, max_unsettled_rows),),
                ).fetchone()
                return None if row is None else int(row[0])

            last = await self._call(newest_over)
            if last is not None:
                over = delete(
                    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine "
                    "WHERE stream IS NULL AND id <= ? LIMIT ?)",
                    (last, batch_rows),
                )
                while (n := await self._call(over)) > 0:
                    deleted += n
        return deleted

    async def gaps(self, device_id: str) -> list[Gap]:
        def run(conn: sqlite3.Connection) -> list[Gap]:
            ranges: dict[str, list[SeqRange]] = defaultdict(list)
            for stream, first, last in conn.execute(
                "SELECT stream, first_seq, last_seq FROM stream_ranges WHERE device_id = ?",
                (device_id,),
            ):
                ranges[stream].append((first, last))
            lost = conn.execute(
                "SELECT stream, first_seq, last_seq FROM stream_lost WHERE device_id = ?",
                (device_id,),
            ).fetchall()
            return gap_report(ranges, lost)

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


def _api_token(row: Sequence[Any]) -> ApiToken:
    return ApiToken.from_row(row, _time)


def _get_api_token(conn: sqlite3.Connection, token_id: str) -> ApiToken | None:
    row = conn.execute(
        f"SELECT {_ACCESS_COLUMNS} FROM api_tokens WHERE id = ?",  # noqa: S608 (constant columns)
        (token_id,),
    ).fetchone()
    return None if row is None else _api_token(row)


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


def _execute(conn: sqlite3.Connection, op: Op, keep_bytes: int) -> Any:
    """One op of the write plan (:mod:`.plan`), in SQL, inside its transaction
    (``keep_bytes``: see :func:`~cloud_ingest.store.base.kept_payload`)."""
    match op:
        case DeleteStreamed(ids):
            _delete_streamed(conn, ids)
            return None
        case LockDevices(device_ids):
            # BEGIN IMMEDIATE holds the database's write lock already: finding them is all.
            return {
                d
                for (d,) in conn.execute(
                    "SELECT device_id FROM devices "
                    "WHERE device_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(device_ids)),),
                )
            }
        case InsertPositions(positions):
            return {
                (p.device_id, p.seq)
                for p in positions
                if conn.execute(_INSERT_POSITION, _position_row(p)).rowcount == 1
            }
        case InsertEvents(events):
            return {
                (e.device_id, e.seq)
                for e in events
                if conn.execute(_INSERT_EVENT, _event_row(e)).rowcount == 1
            }
        case StoredPods(seq_keys, pod_seq_keys):
            # json_each: any number of values in one parameter (SQLite caps parameters).
            rows = conn.execute(
                _SELECT_PODS  # noqa: S608
                + " WHERE (device_id, seq) IN (SELECT json_extract(value, '$[0]'),"
                " json_extract(value, '$[1]') FROM json_each(?)) OR (device_id, pod_seq) IN"
                " (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')"
                " FROM json_each(?))",
                (json.dumps(seq_keys), json.dumps(pod_seq_keys)),
            )
            return [_pod(row) for row in rows]
        case InsertPods(pods):
            conn.executemany(_INSERT_POD, [_pod_row(p) for p in pods])
            return None
        case RelinkPods(pods):
            conn.executemany(
                "UPDATE pods SET chain_status = ? WHERE device_id = ? AND seq = ?",
                [(p.chain_status, p.device_id, p.seq) for p in pods],
            )
            return None
        case InsertQuarantine(rows):
            conn.executemany(_INSERT_QUARANTINE, [_quarantine_row(q, keep_bytes) for q in rows])
            return None
        case TouchingRanges(probes):
            return [r for probe in probes for r in _touching(conn, *probe)]
        case ReplaceRanges(removals, additions):
            conn.executemany(
                "DELETE FROM stream_ranges WHERE device_id = ? AND stream = ? AND first_seq = ?",
                removals,
            )
            conn.executemany("INSERT INTO stream_ranges VALUES (?, ?, ?, ?)", additions)
            return None
        case InsertLost(lost, at):
            # A row there already (a database restored from a copy that was not one
            # snapshot) is widened, never a reason to fail the batch.
            conn.executemany(
                "INSERT INTO stream_lost VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, stream, first_seq) "
                "DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                [(x.device_id, x.stream, x.first_seq, x.last_seq, _us(at)) for x in lost],
            )
            return None
        case InsertStream(messages, leased_until):
            until_us = _us(leased_until)
            return [
                StreamMessage(
                    conn.execute(
                        "INSERT INTO stream_outbox (topic, payload, leased_until_us) "
                        "VALUES (?, ?, ?)",
                        (topic, payload, until_us),
                    ).lastrowid
                    or 0,
                    topic,
                    payload,
                )
                for topic, payload in messages
            ]
        case ReadAcks(device_ids):
            return _acks(conn, device_ids)
    raise TypeError(f"not a write op: {op!r}")


def _touching(
    conn: sqlite3.Connection, device_id: str, stream: str, first: int, last: int
) -> list[tuple[str, str, int, int]]:
    """The stored ranges :class:`~.plan.TouchingRanges` asks for, by two index probes:
    the last range starting before ``first``, and those starting within ``first..last``."""
    found: list[tuple[str, str, int, int]] = []
    before = conn.execute(
        "SELECT first_seq, last_seq FROM stream_ranges WHERE device_id = ? AND stream = ? "
        "AND first_seq < ? ORDER BY first_seq DESC LIMIT 1",
        (device_id, stream, first),
    ).fetchone()
    if before is not None and before[1] >= first - 1:
        found.append((device_id, stream, before[0], before[1]))
    found.extend(
        (device_id, stream, a, b)
        for a, b in conn.execute(
            "SELECT first_seq, last_seq FROM stream_ranges WHERE device_id = ? AND stream = ? "
            "AND first_seq BETWEEN ? AND ?",
            (device_id, stream, first, last),
        )
    )
    return found


def _quarantine_row(q: Quarantined, keep_bytes: int) -> tuple[Any, ...]:
    c = q.covered
    return (
        _us(q.received_at),
        storable_text(q.topic),
        None if q.device_id is None else storable_text(q.device_id),
        storable_text(q.reason),
        storable_text(q.detail),
        kept_payload(q, keep_bytes),
        None if c is None else c.stream,
        None if c is None else c.first_seq,
        None if c is None else c.last_seq,
        len(q.payload),
        hashlib.sha256(q.payload).digest(),
    )


def _lease_us(stream_lease_s: float) -> int:
    return max(0, round(stream_lease_s * 1_000_000))


def _delete_streamed(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    conn.execute(
        "DELETE FROM stream_outbox WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids)),),
    )
