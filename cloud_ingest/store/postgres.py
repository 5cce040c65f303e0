"""The PostgreSQL backend: for fleets, with N ingest workers on one database.

One :class:`psycopg.AsyncConnection` per store, in autocommit mode, used by one
operation at a time (an :class:`asyncio.Lock`: a connection runs one transaction, and
two tasks' statements must not interleave in it); scale out with more workers, each
with its own store. A connection found broken (server restart, network) is replaced
on the next call; the failed call raises :class:`~cloud_ingest.errors.StorageError`.

Writes are batched: each table gets one statement per :meth:`PostgresStore.write`,
``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING RETURNING`` (one round
trip for any number of rows, and the returned keys say which rows were new). Each write
first locks the rows of the devices it touches (``SELECT ... ORDER BY device_id FOR NO
KEY UPDATE``, always in the same order, so two workers cannot deadlock): a device's
ranges and POD chain are then read and changed by one transaction at a time, whichever
worker its messages reached. ``FOR NO KEY UPDATE`` does not conflict with the key-share
locks the foreign keys take, so other devices' writes never wait.

:meth:`PostgresStore.migrate` holds a transaction-level advisory lock, so workers
starting together apply each migration once; PostgreSQL's DDL is transactional, so a
migration and its ``schema_migrations`` row commit together or not at all.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg

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
    run_plan_async,
    write_plan,
)
from cloud_ingest.store.ranges import SeqRange, gap_report
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream

_Conn = psycopg.AsyncConnection[tuple[Any, ...]]
_Cursor = psycopg.AsyncCursor[tuple[Any, ...]]

# Any constant will do: it names this application's lock among advisory locks.
_MIGRATION_LOCK = 7_364_001

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            """CREATE TABLE devices (
                device_id text PRIMARY KEY,
                public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
                enabled boolean NOT NULL,
                registered_at timestamptz NOT NULL
            )""",
            """CREATE TABLE positions (
                device_id text NOT NULL REFERENCES devices (device_id),
                seq bigint NOT NULL CHECK (seq >= 1),
                time timestamptz NOT NULL,
                lat double precision NOT NULL,
                lon double precision NOT NULL,
                speed_mps double precision,
                course_deg double precision,
                hdop double precision,
                sats integer,
                historical boolean NOT NULL,
                PRIMARY KEY (device_id, seq)
            )""",
            "CREATE INDEX positions_by_time ON positions (device_id, time)",
            """CREATE TABLE stop_events (
                device_id text NOT NULL REFERENCES devices (device_id),
                seq bigint NOT NULL CHECK (seq >= 1),
                type text NOT NULL,
                time timestamptz NOT NULL,
                stop_id text,
                route_id text,
                historical boolean NOT NULL,
                record jsonb NOT NULL,
                PRIMARY KEY (device_id, seq)
            )""",
            "CREATE INDEX stop_events_by_type ON stop_events (type, time)",
            "CREATE INDEX stop_events_by_route ON stop_events (route_id, type, time)",
            """CREATE TABLE pods (
                device_id text NOT NULL REFERENCES devices (device_id),
                seq bigint NOT NULL CHECK (seq >= 1),
                pod_seq bigint NOT NULL CHECK (pod_seq >= 1),
                parcel text NOT NULL,
                stop_id text NOT NULL,
                time timestamptz NOT NULL,
                verdict text NOT NULL,
                jws text NOT NULL,
                digest text NOT NULL,
                prev text NOT NULL,
                chain_status text NOT NULL CHECK (chain_status IN ('ok', 'pending', 'broken')),
                historical boolean NOT NULL,
                PRIMARY KEY (device_id, seq),
                UNIQUE (device_id, pod_seq)
            )""",
            "CREATE INDEX pods_by_parcel ON pods (parcel, time)",
            """CREATE TABLE quarantine (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                received_at timestamptz NOT NULL,
                topic text NOT NULL,
                device_id text,
                reason text NOT NULL,
                detail text NOT NULL,
                payload bytea NOT NULL,
                stream text,
                first_seq bigint,
                last_seq bigint
            )""",
            "CREATE INDEX quarantine_by_device ON quarantine (device_id, id)",
            """CREATE TABLE stream_ranges (
                device_id text NOT NULL REFERENCES devices (device_id),
                stream text NOT NULL CHECK (stream IN ('telemetry', 'events', 'pod')),
                first_seq bigint NOT NULL CHECK (first_seq >= 1),
                last_seq bigint NOT NULL CHECK (last_seq >= first_seq),
                PRIMARY KEY (device_id, stream, first_seq)
            )""",
        ),
    ),
    Migration(
        2,
        "fleetstream outbox",
        (
            """CREATE TABLE stream_outbox (
                id bigserial PRIMARY KEY,
                topic text NOT NULL,
                payload bytea NOT NULL,
                leased_until timestamptz NOT NULL
            )""",
            "CREATE INDEX stream_outbox_by_lease ON stream_outbox (leased_until, id)",
        ),
    ),
    Migration(
        3,
        "one shape per record: every field of a telemetry point, a POD's distance",
        (
            # Rows stored before have no altitude or fix quality (NULL: unknown) and
            # mode 0 (unknown): the van sent its mode, ingest did not keep it.
            "ALTER TABLE positions ADD COLUMN alt_m double precision, "
            "ADD COLUMN mode integer NOT NULL DEFAULT 0 CHECK (mode BETWEEN 0 AND 3), "
            "ADD COLUMN quality integer",
            "ALTER TABLE positions RENAME COLUMN sats TO sats_used",
            "ALTER TABLE pods ADD COLUMN distance_m double precision",
        ),
    ),
    Migration(
        4,
        "seqs lost with a restored database, released by their device",
        (
            """CREATE TABLE stream_lost (
                device_id text NOT NULL REFERENCES devices (device_id),
                stream text NOT NULL CHECK (stream IN ('telemetry', 'events', 'pod')),
                first_seq bigint NOT NULL CHECK (first_seq >= 1),
                last_seq bigint NOT NULL CHECK (last_seq >= first_seq),
                recorded_at timestamptz NOT NULL,
                PRIMARY KEY (device_id, stream, first_seq)
            )""",
        ),
    ),
    Migration(
        5,
        "quarantine: the length and SHA-256 of each payload, indexes for its retention",
        (
            # A payload may be kept in part from now on (kept_payload); rows stored
            # before hold theirs whole.
            "ALTER TABLE quarantine ADD COLUMN payload_bytes bigint, "
            "ADD COLUMN payload_sha256 bytea",
            "UPDATE quarantine SET payload_bytes = octet_length(payload), "
            "payload_sha256 = sha256(payload)",
            "CREATE INDEX quarantine_by_time ON quarantine (received_at)",
            "CREATE INDEX quarantine_unsettled ON quarantine (id) WHERE stream IS NULL",
        ),
    ),
    Migration(
        6,
        "the outcome of each POD's delivery attempt",
        (
            # PODs stored before were all deliveries: their claims have no outcome.
            "ALTER TABLE pods ADD COLUMN outcome text NOT NULL DEFAULT 'delivered'",
        ),
    ),
    Migration(
        7,
        "scoped API tokens, stored hashed (cloud_ingest.apitokens)",
        (
            """CREATE TABLE api_tokens (
                id text PRIMARY KEY,
                name text NOT NULL,
                scopes text NOT NULL,
                sha256 bytea NOT NULL CHECK (length(sha256) = 32),
                created_at timestamptz NOT NULL,
                expires_at timestamptz,
                revoked_at timestamptz,
                last_used_at timestamptz
            )""",
        ),
    ),
)
_ACCESS_COLUMNS = "id, name, scopes, sha256, created_at, expires_at, revoked_at, last_used_at"
_REVOKE_TOKEN = (
    "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s "  # noqa: S608
    f"RETURNING {_ACCESS_COLUMNS}"
)
_SELECT_TOKENS = f"SELECT {_ACCESS_COLUMNS} FROM api_tokens"  # noqa: S608 (constant columns)

_POSITION_COLUMNS = (
    "device_id, seq, historical, time, lat, lon, alt_m, speed_mps, course_deg, mode, quality, "
    "hdop, sats_used"
)
_EVENT_COLUMNS = "device_id, seq, historical, record"
_POD_COLUMNS = (
    "device_id, seq, historical, time, stop_id, parcel, pod_seq, verdict, distance_m, jws, "
    "prev, chain_status, outcome"
)
_QUARANTINE_COLUMNS = (
    "received_at, topic, device_id, reason, detail, payload, stream, first_seq, last_seq, "
    "payload_bytes, payload_sha256"
)
# Statements assembled from the column lists above, never from input.
_SELECT_POSITIONS = f"SELECT {_POSITION_COLUMNS} FROM positions"  # noqa: S608
_SELECT_EVENTS = f"SELECT {_EVENT_COLUMNS} FROM stop_events"  # noqa: S608
_SELECT_PODS = f"SELECT {_POD_COLUMNS} FROM pods"  # noqa: S608
_INSERT_POSITIONS = (
    f"INSERT INTO positions ({_POSITION_COLUMNS}) "  # noqa: S608
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bool[], %s::timestamptz[], "
    "%s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::int[], "
    "%s::int[], %s::float8[], %s::int[]) "
    "ON CONFLICT DO NOTHING RETURNING device_id, seq"
)
# type, time, stop_id and route_id are the record's, in columns for the indexes.
_INSERT_EVENTS = (
    "INSERT INTO stop_events (device_id, seq, historical, record, type, time, stop_id, "
    "route_id) SELECT d, s, h, rec::jsonb, t, at, st, r FROM unnest(%s::text[], %s::bigint[], "
    "%s::bool[], %s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[]) "
    "AS u(d, s, h, rec, t, at, st, r) "
    "ON CONFLICT DO NOTHING RETURNING device_id, seq"
)
_INSERT_PODS = (
    f"INSERT INTO pods ({_POD_COLUMNS}, digest) "  # noqa: S608
    "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bool[], %s::timestamptz[], "
    "%s::text[], %s::text[], %s::bigint[], %s::text[], %s::float8[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[])"
)
# %b: the payloads travel as binary (as text, a bytea array costs twice its size in hex
# and its encoding: 1,000 settled payloads of 250 KB took 9 s instead of 2.4 s).
_INSERT_QUARANTINE = (
    f"INSERT INTO quarantine ({_QUARANTINE_COLUMNS}) "  # noqa: S608
    "SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%b::bytea[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %b::bytea[])"
)
# A row as read: ``{payload}`` is the payload or its first bytes (substring of a bytea
# reads only the slices it needs). Rows from before migration 5 have a length and digest.
_SELECT_QUARANTINE = (
    "SELECT id, received_at, topic, device_id, reason, detail, {payload}, "
    "coalesce(payload_bytes, octet_length(payload)), coalesce(payload_sha256, sha256(payload)), "
    "octet_length(payload), stream, first_seq, last_seq FROM quarantine"
)
_STORED_NEIGHBOURS = (
    _SELECT_PODS  # noqa: S608
    + " WHERE (device_id, seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
    " OR (device_id, pod_seq) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))"
)
# For each new range: the last stored range starting before it (it may reach into it)
# and those starting inside it or right after; two index probes per range.
_TOUCHING_RANGES = """
    SELECT DISTINCT s.device_id, s.stream, s.first_seq, s.last_seq
    FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS n(device_id, stream, a, b)
    CROSS JOIN LATERAL (
        (SELECT * FROM stream_ranges r
         WHERE r.device_id = n.device_id AND r.stream = n.stream AND r.first_seq < n.a
         ORDER BY r.first_seq DESC LIMIT 1)
        UNION ALL
        (SELECT * FROM stream_ranges r
         WHERE r.device_id = n.device_id AND r.stream = n.stream
           AND r.first_seq BETWEEN n.a AND n.b)
    ) AS s
    WHERE s.last_seq >= n.a - 1
"""
_DELETE_RANGES = """
    DELETE FROM stream_ranges r
    USING unnest(%s::text[], %s::text[], %s::bigint[]) AS d(device_id, stream, first_seq)
    WHERE r.device_id = d.device_id AND r.stream = d.stream AND r.first_seq = d.first_seq
"""
_INSERT_LOST = """
    INSERT INTO stream_lost (device_id, stream, first_seq, last_seq, recorded_at)
    SELECT d, s, a, b, %s FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
        AS u(d, s, a, b)
    ON CONFLICT (device_id, stream, first_seq)
    DO UPDATE SET last_seq = GREATEST(stream_lost.last_seq, EXCLUDED.last_seq)
"""
_INSERT_RANGES = """
    INSERT INTO stream_ranges (device_id, stream, first_seq, last_seq)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])
"""
# Ids drawn first (in order) so that each message knows its row without relying on the
# order of RETURNING.
_STREAM_IDS = "SELECT nextval('stream_outbox_id_seq') FROM generate_series(1, %s)"
_INSERT_STREAM = """
    INSERT INTO stream_outbox (id, topic, payload, leased_until)
    SELECT i, t, p, %s FROM unnest(%s::bigint[], %s::text[], %s::bytea[]) AS u(i, t, p)
"""
_DELETE_STREAMED = "DELETE FROM stream_outbox WHERE id = ANY(%s)"
# SKIP LOCKED: two workers sweeping at once take different messages instead of waiting.
_CLAIM_STREAM = """
    UPDATE stream_outbox SET leased_until = %s
    WHERE id IN (SELECT id FROM stream_outbox WHERE leased_until <= %s
                 ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
    RETURNING id, topic, payload
"""
_RELINK_PODS = """
    UPDATE pods AS p SET chain_status = u.status
    FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS u(device_id, seq, status)
    WHERE p.device_id = u.device_id AND p.seq = u.seq
"""


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _api_token(row: Sequence[Any]) -> ApiToken:
    return ApiToken.from_row(row, _utc)


def _device(row: Sequence[Any]) -> Device:
    return Device(row[0], bytes(row[1]), row[2], _utc(row[3]))


def _position(row: Sequence[Any]) -> Position:
    return Position(row[0], row[1], row[2], point_from_columns(_utc(row[3]), row[4:]))


def _event(row: Sequence[Any]) -> StopEvent:
    return StopEvent(row[0], row[1], row[2], event_from_json(row[3]))


def _pod(row: Sequence[Any]) -> Pod:
    return pod_from_columns(_utc(row[3]), row)


def _quarantined(row: Sequence[Any]) -> QuarantineEntry:
    covered = None
    if row[10] is not None and row[11] is not None and row[12] is not None:
        covered = Covered(row[3], cast(Stream, row[10]), row[11], row[12])
    return QuarantineEntry(
        row[0], _utc(row[1]), row[2], row[3], row[4], row[5], bytes(row[6]), row[7],
        bytes(row[8]), row[9], covered,
    )  # fmt: skip


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """``rows`` turned into ``width`` column lists: the arrays ``unnest`` takes."""
    return [[row[i] for row in rows] for i in range(width)]


class PostgresStore(StoreLifetime):
    """:class:`~cloud_ingest.store.base.Store` on a PostgreSQL database (``dsn``: a
    libpq connection string or URI; the database must exist).
    ``quarantine_payload_max_bytes``: what the quarantine keeps of a payload that settled
    nothing (:func:`~cloud_ingest.store.base.kept_payload`)."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: float = 10.0,
        quarantine_payload_max_bytes: int = QUARANTINE_PAYLOAD_MAX_BYTES,
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._keep_bytes = quarantine_payload_max_bytes
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        self._closed = True

    def __repr__(self) -> str:
        # The DSN may hold a password: show only where it points.
        return f"PostgresStore(<{len(self._dsn)}-character DSN>)"

    async def open(self) -> None:
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            self._closed = False

    async def _connect(self) -> _Conn:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                options="-c TimeZone=UTC",
            )
        except psycopg.Error as err:
            raise StorageError(f"cannot connect to PostgreSQL: {err}") from err

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn, self._closed = self._conn, None, True
            if conn is not None:
                await conn.close()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[_Conn]:
        """The connection, for one operation at a time; reconnects a broken one."""
        async with self._lock:
            if self._closed:
                raise StorageError(f"{self!r} is not open")
            if self._conn is None or self._conn.broken or self._conn.closed:
                self._conn = await self._connect()
            try:
                yield self._conn
            except psycopg.OperationalError as err:
                raise StorageError(f"PostgreSQL: {err}") from err

    # --- schema -----------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        async with self._session() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            applied = {v for (v,) in await cur.fetchall()}
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
                    await cur.execute(statement)
                await cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                done.append(migration.version)
            return done

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
        async with self._session() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO devices VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (device_id, public_key, enabled, datetime.now(UTC)),
            )
            await cur.execute(
                "SELECT public_key FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)
            )
            row = await cur.fetchone()
            assert row is not None  # inserted, or there already
            if bytes(row[0]) != public_key and not replace_key:
                raise DeviceConflictError(
                    f"device {device_id!r} is registered with another key "
                    "(replace_key=True to re-provision it)"
                )
            await cur.execute(
                "UPDATE devices SET public_key = %s, enabled = %s WHERE device_id = %s RETURNING *",
                (public_key, enabled, device_id),
            )
            updated = await cur.fetchone()
            assert updated is not None
            return _device(updated)

    async def set_enabled(self, device_id: str, enabled: bool) -> Device:
        async with self._session() as conn:
            cur = await conn.execute(
                "UPDATE devices SET enabled = %s WHERE device_id = %s RETURNING *",
                (enabled, device_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise UnknownDeviceError(f"device {device_id!r} is not registered")
        return _device(row)

    async def get_device(self, device_id: str) -> Device | None:
        async with self._session() as conn:
            cur = await conn.execute("SELECT * FROM devices WHERE device_id = %s", (device_id,))
            row = await cur.fetchone()
        return None if row is None else _device(row)

    async def list_devices(self) -> list[Device]:
        async with self._session() as conn:
            cur = await conn.execute("SELECT * FROM devices ORDER BY device_id")
            return [_device(r) for r in await cur.fetchall()]

    # --- API tokens -------------------------------------------------------------------

    async def add_api_token(self, token: ApiToken) -> None:
        row = (
            token.id,
            token.name,
            scopes_text(token.scopes),
            token.sha256,
            token.created_at,
            token.expires_at,
            token.revoked_at,
            token.last_used_at,
        )
        async with self._session() as conn:
            await conn.execute(
                f"INSERT INTO api_tokens ({_ACCESS_COLUMNS}) "  # noqa: S608 (constant columns)
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                row,
            )

    async def get_api_token(self, token_id: str) -> ApiToken | None:
        async with self._session() as conn:
            cur = await conn.execute(_SELECT_TOKENS + " WHERE id = %s", (token_id,))
            row = await cur.fetchone()
        return None if row is None else _api_token(row)

    async def list_api_tokens(self) -> list[ApiToken]:
        async with self._session() as conn:
            cur = await conn.execute(_SELECT_TOKENS + " ORDER BY created_at, id")
            return [_api_token(r) for r in await cur.fetchall()]

    async def revoke_api_token(self, token_id: str, at: datetime) -> ApiToken:
        require_utc("at", at)
        async with self._session() as conn:
            cur = await conn.execute(
                _REVOKE_TOKEN,
                (at, token_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise UnknownTokenError(f"no API token {token_id!r}")
        return _api_token(row)

    async def touch_api_token(self, token_id: str, at: datetime) -> None:
        require_utc("at", at)
        async with self._session() as conn:
            await conn.execute(
                "UPDATE api_tokens SET last_used_at = %s WHERE id = %s", (at, token_id)
            )

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
        async with self._session() as conn, conn.transaction(), conn.cursor() as cur:
            return await run_plan_async(plan, lambda op: _execute(cur, op, self._keep_bytes))

    async def stream_done(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._session() as conn, conn.transaction():
            await conn.execute(_DELETE_STREAMED, (list(ids),))

    async def claim_stream(
        self, *, stream_lease_s: float = STREAM_LEASE_S, limit: int = 100
    ) -> list[StreamMessage]:
        now = datetime.now(UTC)
        until = now + timedelta(seconds=max(0.0, stream_lease_s))
        async with self._session() as conn, conn.transaction():
            cur = await conn.execute(_CLAIM_STREAM, (until, now, limit))
            rows = await cur.fetchall()
        return sorted((StreamMessage(r[0], r[1], bytes(r[2])) for r in rows), key=lambda m: m.id)

    async def stream_pending(self) -> int:
        async with self._session() as conn:
            cur = await conn.execute("SELECT count(*) FROM stream_outbox")
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def acks(self, device_id: str) -> dict[str, int]:
        async with self._session() as conn, conn.cursor() as cur:
            return (await _acks(cur, [device_id]))[device_id]

    # --- reading ----------------------------------------------------------------------

    async def _pod(self, query: str, params: Sequence[Any]) -> Pod | None:
        async with self._session() as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
        return None if row is None else _pod(row)

    async def pod_head(self, device_id: str) -> Pod | None:
        return await self._pod(
            _SELECT_PODS + " WHERE device_id = %s ORDER BY pod_seq DESC LIMIT 1", (device_id,)
        )

    async def pod_by_pod_seq(self, device_id: str, pod_seq: int) -> Pod | None:
        if not 1 <= pod_seq <= MAX_SEQ:
            return None
        return await self._pod(
            _SELECT_PODS + " WHERE device_id = %s AND pod_seq = %s", (device_id, pod_seq)
        )

    async def last_positions(self) -> list[Position]:
        async with self._session() as conn:
            # Per device, the highest seq through the primary key: one probe per device.
            cur = await conn.execute(
                "SELECT p.* FROM devices AS d CROSS JOIN LATERAL ("  # noqa: S608
                + _SELECT_POSITIONS
                + " AS p WHERE p.device_id = d.device_id ORDER BY p.seq DESC LIMIT 1"
                ") AS p ORDER BY d.device_id"
            )
            return [_position(r) for r in await cur.fetchall()]

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
        # positions_by_time gives the rows in time order (an incremental sort orders a
        # time's few rows by seq), so the LIMIT stops the scan.
        query = _SELECT_POSITIONS + " WHERE device_id = %s AND time >= %s AND time < %s"
        params: list[Any] = [device_id, start, end]
        if after is not None:
            require_utc("after", after[0])
            query += " AND time >= %s AND (time > %s OR seq > %s)"
            params += [after[0], after[0], after[1]]
        query += " ORDER BY time, seq"
        if limit is not None:
            query += " LIMIT %s"
            params.append(limit)
        async with self._session() as conn:
            cur = await conn.execute(query, params)
            return [_position(r) for r in await cur.fetchall()]

    async def arrivals(
        self,
        route_id: str | None = None,
        device_id: str | None = None,
        *,
        limit: int = 1000,
        after: ArrivalKey | None = None,
    ) -> list[StopEvent]:
        query = (
            _SELECT_EVENTS + " WHERE type = 'arrival'"
            " AND (%(route)s::text IS NULL OR route_id = %(route)s)"
            " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
        )
        params: dict[str, Any] = {"route": route_id, "device": device_id, "limit": limit}
        if after is not None:
            require_utc("after", after[0])
            # time >= t: the index range starts at the page's first time.
            query += " AND time >= %(t)s AND (time, device_id, seq) > (%(t)s, %(d)s, %(s)s)"
            params.update(t=after[0], d=after[1], s=after[2])
        async with self._session() as conn:
            cur = await conn.execute(
                query + " ORDER BY time, device_id, seq LIMIT %(limit)s", params
            )
            return [_event(r) for r in await cur.fetchall()]

    async def pods_by_parcel(self, parcel: str, *, limit: int | None = None) -> list[Pod]:
        async with self._session() as conn:
            cur = await conn.execute(
                _SELECT_PODS + " WHERE parcel = %s ORDER BY time, device_id, pod_seq LIMIT %s",
                (parcel, limit),
            )
            return [_pod(r) for r in await cur.fetchall()]

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
            payload = "substring(payload from 1 for %s)"
            params.append(max(0, payload_max_bytes))
        query = (
            _SELECT_QUARANTINE.format(payload=payload) + " WHERE id < %s ORDER BY id DESC LIMIT %s"
        )
        params += [MAX_SEQ if before_id is None else before_id, limit]
        async with self._session() as conn:
            cur = await conn.execute(query, params)
            return [_quarantined(r) for r in await cur.fetchall()]

    async def prune_quarantine(
        self,
        *,
        received_before: datetime | None = None,
        max_unsettled_rows: int | None = None,
        batch_rows: int = 1000,
    ) -> int:
        batch_rows = max(1, batch_rows)
        deleted = 0
        if received_before is not None:
            require_utc("received_before", received_before)
            while n := await self._delete(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine "
                "WHERE received_at < %s LIMIT %s)",
                (received_before, batch_rows),
            ):
                deleted += n
        if max_unsettled_rows is not None:
            async with self._session() as conn:
                cur = await conn.execute(
                    "SELECT id FROM quarantine WHERE stream IS NULL ORDER BY id DESC "
                    "LIMIT 1 OFFSET %s",
                    (max(0, max_unsettled_rows),),
                )
                row = await cur.fetchone()
            if row is not None:
                while n := await self._delete(
                    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine "
                    "WHERE stream IS NULL AND id <= %s LIMIT %s)",
                    (row[0], batch_rows),
                ):
                    deleted += n
        return deleted

    async def _delete(self, query: str, params: Sequence[Any]) -> int:
        async with self._session() as conn, conn.transaction():
            cur = await conn.execute(query, params)
            return cur.rowcount

    async def gaps(self, device_id: str) -> list[Gap]:
        async with self._session() as conn:
            cur = await conn.execute(
                "SELECT stream, first_seq, last_seq FROM stream_ranges WHERE device_id = %s",
                (device_id,),
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT stream, first_seq, last_seq FROM stream_lost WHERE device_id = %s",
                (device_id,),
            )
            lost = await cur.fetchall()
        ranges: dict[str, list[SeqRange]] = defaultdict(list)
        for stream, first, last in rows:
            ranges[stream].append((first, last))
        return gap_report(ranges, lost)

    async def counts(self) -> Counts:
        async with self._session() as conn:
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM positions), "
                "(SELECT count(*) FROM stop_events), (SELECT count(*) FROM pods), "
                "(SELECT count(*) FROM pods WHERE chain_status = 'pending'), "
                "(SELECT count(*) FROM pods WHERE chain_status = 'broken'), "
                "(SELECT count(*) FROM quarantine)"
            )
            row = await cur.fetchone()
        assert row is not None
        return Counts(*(int(n) for n in row))


async def _acks(cur: _Cursor, device_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    acks: dict[str, dict[str, int]] = {d: dict.fromkeys(STREAMS, 0) for d in device_ids}
    if device_ids:
        await cur.execute(
            "SELECT device_id, stream, last_seq FROM stream_ranges "
            "WHERE device_id = ANY(%s) AND first_seq = 1",
            (list(device_ids),),
        )
        for device_id, stream, last in await cur.fetchall():
            acks[device_id][stream] = last
    return acks


async def _execute(cur: _Cursor, op: Op, keep_bytes: int) -> Any:
    """One op of the write plan (:mod:`.plan`), in SQL, inside its transaction: each a
    single statement over arrays (``unnest``), one round trip for any number of rows
    (``keep_bytes``: see :func:`~cloud_ingest.store.base.kept_payload`)."""
    match op:
        case DeleteStreamed(ids):
            await cur.execute(_DELETE_STREAMED, (list(ids),))
            return None
        case LockDevices(device_ids):
            await cur.execute(
                "SELECT device_id FROM devices WHERE device_id = ANY(%s) "
                "ORDER BY device_id FOR NO KEY UPDATE",
                (list(device_ids),),
            )
            return {d for (d,) in await cur.fetchall()}
        case InsertPositions(positions):
            rows = [
                (p.device_id, p.seq, p.historical, p.time, *point_columns(p.point))
                for p in positions
            ]
            return await _inserted(cur, _INSERT_POSITIONS, _columns(rows, 13))
        case InsertEvents(events):
            rows = [
                (e.device_id, e.seq, e.historical, event_json(e), e.type, e.time, e.stop_id,
                 e.route_id)
                for e in events
            ]  # fmt: skip
            return await _inserted(cur, _INSERT_EVENTS, _columns(rows, 8))
        case StoredPods(seq_keys, pod_seq_keys):
            await cur.execute(
                _STORED_NEIGHBOURS, (*_columns(seq_keys, 2), *_columns(pod_seq_keys, 2))
            )
            return [_pod(row) for row in await cur.fetchall()]
        case InsertPods(pods):
            rows = [
                (p.device_id, p.seq, p.historical, p.time, p.record.stop_id, p.record.parcel,
                 p.pod_seq, p.record.verdict, p.record.distance_m, p.jws, p.prev,
                 p.chain_status, p.record.outcome, p.digest)
                for p in pods
            ]  # fmt: skip
            await cur.execute(_INSERT_PODS, _columns(rows, 14))
            return None
        case RelinkPods(pods):
            links = [(p.device_id, p.seq, p.chain_status) for p in pods]
            await cur.execute(_RELINK_PODS, _columns(links, 3))
            return None
        case InsertQuarantine(quarantined):
            rows = [
                (q.received_at, storable_text(q.topic),
                 None if q.device_id is None else storable_text(q.device_id),
                 storable_text(q.reason), storable_text(q.detail), kept_payload(q, keep_bytes),
                 None if q.covered is None else q.covered.stream,
                 None if q.covered is None else q.covered.first_seq,
                 None if q.covered is None else q.covered.last_seq,
                 len(q.payload), hashlib.sha256(q.payload).digest())
                for q in quarantined
            ]  # fmt: skip
            await cur.execute(_INSERT_QUARANTINE, _columns(rows, 11))
            return None
        case TouchingRanges(probes):
            await cur.execute(_TOUCHING_RANGES, _columns(probes, 4))
            return list(await cur.fetchall())
        case ReplaceRanges(removals, additions):
            if removals:
                await cur.execute(_DELETE_RANGES, _columns(removals, 3))
            if additions:
                await cur.execute(_INSERT_RANGES, _columns(additions, 4))
            return None
        case InsertLost(lost, at):
            rows = [(x.device_id, x.stream, x.first_seq, x.last_seq) for x in lost]
            await cur.execute(_INSERT_LOST, (at, *_columns(rows, 4)))
            return None
        case InsertStream(messages, leased_until):
            await cur.execute(_STREAM_IDS, (len(messages),))
            ids = [i for (i,) in await cur.fetchall()]
            stream = [StreamMessage(i, t, p) for i, (t, p) in zip(ids, messages, strict=True)]
            await cur.execute(
                _INSERT_STREAM,
                (leased_until, *_columns([(m.id, m.topic, m.payload) for m in stream], 3)),
            )
            return stream
        case ReadAcks(device_ids):
            return await _acks(cur, device_ids)
    raise TypeError(f"not a write op: {op!r}")


async def _inserted(cur: _Cursor, query: str, columns: list[list[Any]]) -> set[tuple[str, int]]:
    """Run a batched ``INSERT ... RETURNING device_id, seq``; the keys it inserted."""
    await cur.execute(query, columns)
    return {(d, s) for d, s in await cur.fetchall()}
