"""The durable outbox: every uplink record is committed to SQLite before it is sent.

Contract
--------
- :meth:`Outbox.add` returns only once the record is durable, on disk, with the next
  sequence number of its stream (``telemetry``, ``events``, ``pod``; each starts at 1).
  Sequence numbers never go backwards and are never reused, across deletions, restarts,
  ``kill -9`` and power cuts: the counters live in the database and move in the same
  transaction as the records. If ``add`` raises :class:`OutboxStorageError` (disk full,
  I/O error) nothing was stored and no number was used: the caller keeps the record in
  memory and retries.
- A record leaves only when ingest's cumulative ack covers it (:meth:`Outbox.ack`),
  never on the broker's PUBACK. :meth:`Outbox.pending` gives records oldest first, so a
  replay after an outage starts with the oldest; whether a record is historical is the
  sender's call at send time (:func:`firmware_agent.contract.telemetry.is_historical`).
- The database's used size is held near ``budget_bytes`` by thinning telemetry, oldest
  first (see :meth:`Outbox._enforce_budget` for the policy). Events and PODs are never
  dropped: past the budget they are still accepted, and counted (``over_budget``).

Durability
----------
The database runs in WAL mode with ``synchronous=FULL``. In WAL mode a commit appends
the transaction's pages to the -wal file; ``FULL`` fsyncs that file at every commit, so
once ``COMMIT`` returns the transaction survives a power cut. ``NORMAL`` (the usual WAL
setting) syncs only at checkpoints: it survives ``kill -9`` (the data is in the kernel's
page cache), but a power cut can roll back the last commits. The database stays
consistent, but the records the caller was told were stored are gone, and their
sequence numbers are handed out again, to different records, which ingest's
deduplication on (device, stream, seq) would then drop. One fsync per commit is the
price; :meth:`Outbox.add_many` amortises it. (Storage must honour fsync: an SD card
that acknowledges writes it only cached can still lose them; industrial cards with
power-loss protection do not.)

A file that SQLite reports as damaged when it is opened is never deleted: it is moved
aside as ``<name>.corrupt-<UTC time>``, the records that can still be read are copied,
with their sequence numbers, into a new database, and the event is logged and counted
(``corrupt_recovered``, ``salvaged``). Numbering continues from the saved counters, or
from the highest record found when they cannot be read; if nothing can be read at all
(a destroyed header), it restarts at 1, which ingest cannot tell from a replay of old
records: the only case where a number is reused, and it is logged as such.

Threads
-------
One :class:`Outbox` is one SQLite connection opened with ``check_same_thread=False``,
so it may be created in one thread and used from another (the asyncio uplink hands
every call to one worker thread). It is *not* for concurrent use from several threads:
calls must not overlap. Every call blocks on disk I/O, so never call it on the event
loop.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from firmware_agent.contract.keys import fsync_directory, make_private_dirs
from firmware_agent.contract.topics import STREAMS
from firmware_agent.errors import OutboxError, OutboxStorageError
from firmware_agent.faults import FaultCounter, log_first_seen

_LOG = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES: Final = 100 * 1024 * 1024
SCHEMA_VERSION: Final = 1

# Telemetry is thinned in windows of the oldest tenth of its pending fixes, and never
# fewer than this many: a smaller window spans less than one page of the table, so
# decimating it would free nothing.
THIN_WINDOW_DIVISOR: Final = 10
THIN_MIN_WINDOW: Final = 64

# After a checkpoint the -wal file is truncated back to this size, so one large
# transaction (a thinning pass, a salvage) does not keep its space on the card forever.
WAL_SIZE_LIMIT_BYTES: Final = 4 * 1024 * 1024
BUSY_TIMEOUT_S: Final = 5.0

# Stream ids in the record table. Telemetry, by far the most numerous, is 0: SQLite
# stores the integers 0 and 1 in no bytes at all.
_STREAM_ID: Final[dict[str, int]] = {name: i for i, name in enumerate(STREAMS)}
_TELEMETRY: Final = _STREAM_ID["telemetry"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_SQLITE_INT = 2**63 - 1

# Primary result codes (the low byte of an extended code) meaning "the file is damaged".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

# Counters kept in the database (they survive restarts); the ack faults are per process.
PERSISTENT_COUNTERS: Final = ("thinned", "evicted", "over_budget", "corrupt_recovered", "salvaged")

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS stream (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        last_seq INTEGER NOT NULL DEFAULT 0,  -- the last number handed out, ever
        acked INTEGER NOT NULL DEFAULT 0,     -- the highest cumulative ack applied
        pending INTEGER NOT NULL DEFAULT 0,   -- rows in record, kept in step
        thin_after INTEGER NOT NULL DEFAULT 0,  -- where the next thinning pass starts
        CHECK (0 <= acked AND acked <= last_seq AND pending >= 0)
    )""",
    # Keyed (stream, seq) without a rowid: the key is the b-tree's key, so a row costs
    # its columns plus a few bytes, and a stream's records are contiguous in seq order
    # (acks and thinning delete whole pages). About 53 bytes per 29-byte point on disk.
    """CREATE TABLE IF NOT EXISTS record (
        stream INTEGER NOT NULL REFERENCES stream (id),
        seq INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,          -- ms since the Unix epoch, UTC
        payload BLOB NOT NULL,
        PRIMARY KEY (stream, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS counter (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One stored record: its stream, sequence number, creation time (UTC) and bytes."""

    stream: str
    seq: int
    created: datetime
    payload: bytes


class _CorruptDatabaseError(Exception):
    """Internal: the file at hand is damaged; ``reason`` says how we know."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Outbox:
    """The agent's durable outbox in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path | str, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        """Open (or create) the outbox at ``path``; its directory is created if missing.

        Runs a quick integrity check, which reads the whole file (about a second per
        100 MB on a Pi's SD card). A damaged file is moved aside and recovered from (see
        the module docstring). :class:`OutboxStorageError` if the file cannot be opened
        at all; :class:`OutboxError` for a bad ``budget_bytes`` or a database written
        by a newer version of the agent (left untouched).
        """
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise OutboxError(f"budget_bytes must be an integer, not {budget_bytes!r}")
        if budget_bytes <= 0:
            raise OutboxError(f"budget_bytes must be positive, not {budget_bytes}")
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self._faults = FaultCounter()
        self._thinned_before = False
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open()
        except OutboxError:
            raise
        except _CorruptDatabaseError as err:  # the fresh database itself: give up
            raise OutboxStorageError(f"outbox {self.path}: could not open it: {err}") from err
        except sqlite3.Error as err:
            raise _storage_error(f"outbox {self.path}: could not open it", err) from err
        except OSError as err:
            raise OutboxStorageError(f"outbox {self.path}: could not open it: {err}") from err

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, budget_bytes={self.budget_bytes})"

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (checkpointing the WAL into it). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as err:
                raise _storage_error(f"outbox {self.path}: could not close it", err) from err

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------

    def add(self, stream: str, payload: bytes, *, created: datetime) -> int:
        """Store one record durably and return its sequence number in ``stream``.

        ``created`` must be timezone-aware; it is kept to the millisecond. When this
        returns, the record survives a crash or a power cut. May thin old telemetry to
        stay within the budget (see :meth:`_enforce_budget`), in the same transaction.
        """
        return self.add_many(stream, [(payload, created)])[0]

    def add_many(self, stream: str, items: Sequence[tuple[bytes, datetime]]) -> list[int]:
        """Store ``(payload, created)`` pairs in one transaction (one fsync); their seqs.

        All or nothing: on :class:`OutboxStorageError` none of them was stored.
        """
        sid = _stream_id(stream)
        rows = [(_payload_bytes(payload), _created_ms(created)) for payload, created in items]
        if not rows:
            return []
        n = len(rows)
        with self._write(f"could not add {n} {stream} record(s); not stored") as conn:
            (last,) = conn.execute(
                "UPDATE stream SET last_seq = last_seq + ?, pending = pending + ? "
                "WHERE id = ? RETURNING last_seq",
                (n, n, sid),
            ).fetchall()[0]
            first = last - n + 1
            conn.executemany(
                "INSERT INTO record (stream, seq, created_ms, payload) VALUES (?, ?, ?, ?)",
                ((sid, first + i, ms, payload) for i, (payload, ms) in enumerate(rows)),
            )
            self._enforce_budget(conn)
        return list(range(first, last + 1))

    def ack(self, stream: object, seq: object) -> int:
        """Apply ingest's cumulative ack: delete every record of ``stream`` with seq <= ``seq``.

        Returns how many records were deleted. The ack comes off the network, so this
        never raises for what it says: an unknown stream, a seq that is not a
        non-negative integer, beyond the last seq handed out, or lower than an ack
        already applied, is ignored and counted in :meth:`stats` (the first of each
        kind is logged). A repeated ack is a no-op. Raises only
        :class:`OutboxStorageError` when the database fails.
        """
        sid = _STREAM_ID.get(stream) if isinstance(stream, str) else None
        if sid is None:
            return self._ack_fault("ack_invalid", f"unknown stream {stream!r}")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            return self._ack_fault("ack_invalid", f"{stream} seq {seq!r}")
        last_seq, acked = self._stream_row(sid)
        if seq > last_seq:
            return self._ack_fault("ack_beyond", f"{stream} ack {seq} > last seq {last_seq}")
        if seq < acked:
            return self._ack_fault("ack_backwards", f"{stream} ack {seq} < acked {acked}")
        if seq == acked:
            return 0
        with self._write(f"could not apply the {stream} ack {seq}") as conn:
            deleted: int = conn.execute(
                "DELETE FROM record WHERE stream = ? AND seq <= ?", (sid, seq)
            ).rowcount
            conn.execute(
                "UPDATE stream SET acked = ?, pending = pending - ? WHERE id = ?",
                (seq, deleted, sid),
            )
        return deleted

    # -- reading ----------------------------------------------------------------------

    def pending(self, stream: str, *, after_seq: int = 0, limit: int = 100) -> list[OutboxRecord]:
        """Up to ``limit`` records of ``stream`` with seq > ``after_seq``, oldest first.

        Thinned telemetry leaves holes in the seqs; the batch format covers ranges.
        """
        sid = _stream_id(stream)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise OutboxError(f"limit must be a positive integer, not {limit!r}")
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise OutboxError(f"after_seq must be an integer, not {after_seq!r}")
        after = max(0, min(after_seq, _MAX_SQLITE_INT))
        with self._read(f"could not read pending {stream} records") as conn:
            rows = conn.execute(
                "SELECT seq, created_ms, payload FROM record "
                "WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (sid, after, min(limit, _MAX_SQLITE_INT)),
            ).fetchall()
        return [OutboxRecord(stream, seq, _EPOCH + ms * _MS, payload) for seq, ms, payload in rows]

    def last_seq(self, stream: str) -> int:
        """The last sequence number handed out in ``stream`` (0 before the first)."""
        return self._stream_row(_stream_id(stream))[0]

    def acked(self, stream: str) -> int:
        """The highest cumulative ack applied to ``stream`` (0 before the first)."""
        return self._stream_row(_stream_id(stream))[1]

    def counts(self) -> dict[str, int]:
        """How many records each stream has waiting for an ack."""
        with self._read("could not count pending records") as conn:
            rows = conn.execute("SELECT name, pending FROM stream").fetchall()
        found = {str(name): int(n) for name, n in rows}
        return {name: found.get(name, 0) for name in STREAMS}

    def size_bytes(self) -> int:
        """The database's used size, which the budget bounds: pages in use x page size.

        The file itself may be larger (free pages are reused, never returned) and the
        -wal file comes on top; :meth:`stats` reports both.
        """
        with self._read("could not read its size") as conn:
            return _used_bytes(conn)

    def stats(self) -> dict[str, int]:
        """Health figures: the persistent counters, this run's ack faults, and sizes.

        ``thinned`` (telemetry fixes decimated away), ``evicted`` (telemetry dropped
        whole, once too little was left to decimate), ``over_budget`` (commits that left
        the database over budget with no telemetry left to thin), ``corrupt_recovered``
        and ``salvaged``; ``ack_invalid``, ``ack_beyond``, ``ack_backwards`` since this
        process opened the outbox; ``used_bytes``, ``file_bytes`` (database + WAL on
        disk) and ``budget_bytes``.
        """
        with self._read("could not read its counters") as conn:
            rows = conn.execute("SELECT name, value FROM counter").fetchall()
            used = _used_bytes(conn)
        out = dict.fromkeys(PERSISTENT_COUNTERS, 0)
        out.update({str(name): int(value) for name, value in rows})
        for kind in ("ack_invalid", "ack_beyond", "ack_backwards"):
            out[kind] = self._faults.counts.get(kind, 0)
        out["used_bytes"] = used
        out["file_bytes"] = sum(_file_size(self.path, suffix) for suffix in ("", "-wal"))
        out["budget_bytes"] = self.budget_bytes
        return out

    def pragmas(self) -> dict[str, int | str]:
        """The connection's durability settings as SQLite reports them (doctor, tests)."""
        names = ("journal_mode", "synchronous", "foreign_keys", "secure_delete")
        with self._read("could not read its settings") as conn:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

    # -- the budget ---------------------------------------------------------------------

    def _enforce_budget(self, conn: sqlite3.Connection) -> None:
        """Thin telemetry until the used size is within budget, inside the caller's txn.

        Policy: decimate the older half of the track, sweeping oldest first. A pass
        takes a window of a tenth of the pending telemetry (at least
        :data:`THIN_MIN_WINDOW` fixes) and keeps every second fix of it, the first one
        included; passes repeat until the database is within budget. Each pass starts
        where the previous one stopped; a sweep ends at the median pending fix and the
        next one starts again from the oldest. So the newer half of the pending fixes
        is always kept at full rate, and the older half loses
        resolution evenly, a halving per sweep, while keeping its shape and its time
        span. (Under an overflow many times the budget, that becomes resolution
        decaying exponentially with age; the start of the outage is never erased.)
        Dropping the oldest fixes instead would erase the start of the outage
        (where the van went first); restarting every pass at the oldest fix would halve
        the same few fixes again and again until the first hours shrank to one point.

        The window is rewritten (deleted whole, the kept half put back) rather than
        punched full of holes, because SQLite frees a page only when it is empty:
        deleting every second row in place frees almost nothing.

        With fewer than :data:`THIN_MIN_WINDOW` telemetry fixes left, events and PODs
        hold the space: the remaining fixes are evicted, and if the database is still
        over budget the commit goes through anyway (a POD is never refused for space)
        and is counted in ``over_budget``.
        """
        if _used_bytes(conn) <= self.budget_bytes:
            return
        thinned = evicted = over = 0
        while _used_bytes(conn) > self.budget_bytes:
            (n,) = conn.execute("SELECT pending FROM stream WHERE id = ?", (_TELEMETRY,)).fetchone()
            if n >= THIN_MIN_WINDOW:
                thinned += _thin_pass(conn, n)
            elif n > 0:
                evicted += conn.execute(
                    "DELETE FROM record WHERE stream = ?", (_TELEMETRY,)
                ).rowcount
                conn.execute("UPDATE stream SET pending = 0 WHERE id = ?", (_TELEMETRY,))
            else:
                over = 1
                break
        _bump(conn, thinned=thinned, evicted=evicted, over_budget=over)
        if thinned or evicted:
            level = logging.INFO if self._thinned_before else logging.WARNING
            self._thinned_before = True
            _LOG.log(
                level,
                "outbox %s over its budget of %d bytes: thinned %d and evicted %d telemetry "
                "fixes, oldest first",
                self.path,
                self.budget_bytes,
                thinned,
                evicted,
            )
        if over:
            self._faults.add("over_budget", f"events and PODs alone exceed {self.budget_bytes} B")
            log_first_seen(_LOG, self._faults, f"outbox {self.path}")

    # -- plumbing -----------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite failure rolls it back whole."""
        conn = self._db
        try:
            # IMMEDIATE takes the write lock up front: a transaction never fails halfway
            # because another connection (an operator's sqlite3 shell) holds it.
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            _rollback(conn)
            raise _storage_error(f"outbox {self.path}: {what}", err) from err
        except BaseException:
            _rollback(conn)
            raise

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            yield self._db
        except sqlite3.Error as err:
            raise _storage_error(f"outbox {self.path}: {what}", err) from err

    def _stream_row(self, sid: int) -> tuple[int, int]:
        with self._read("could not read its sequence counters") as conn:
            last_seq, acked = conn.execute(
                "SELECT last_seq, acked FROM stream WHERE id = ?", (sid,)
            ).fetchone()
        return int(last_seq), int(acked)

    def _ack_fault(self, kind: str, example: str) -> int:
        self._faults.add(kind, example)
        log_first_seen(_LOG, self._faults, f"outbox {self.path}: ignored ack")
        return 0

    # -- opening and recovery -------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _open(self) -> sqlite3.Connection:
        make_private_dirs(self.path.parent)
        self._finish_recovery()
        try:
            return _connect(self.path)
        except _CorruptDatabaseError as corrupt:
            _LOG.error(
                "outbox %s is damaged (%s): moving it aside, salvaging what can be read "
                "into a new one",
                self.path,
                corrupt.reason,
            )
            return self._recover()

    def _recover(self) -> sqlite3.Connection:
        """Build a new database from what the damaged one still holds, then swap them.

        Crash-safe: the new database is built under ``<name>.salvage`` and renamed to
        ``<name>.salvaged`` only once complete; the damaged files are then moved aside
        and the new one renamed into place. :meth:`_finish_recovery` completes that last
        step at the next open if a crash interrupts it, and a crash before it simply
        starts the recovery over, from the damaged file that is still in place.
        """
        build = self._sibling(".salvage")
        _remove_database_files(build)
        conn = _connect(build)
        try:
            salvaged = self._salvage_into(conn)
            # A single self-contained file to rename: no -wal may be left behind.
            conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            conn.close()
        os.replace(build, self._sibling(".salvaged"))
        fsync_directory(self.path.parent)
        aside = self._finish_recovery()
        _LOG.error(
            "outbox %s: damaged file kept as %s; %d pending records salvaged into a new one",
            self.path,
            aside,
            salvaged,
        )
        return _connect(self.path)

    def _finish_recovery(self) -> Path | None:
        """Publish a completed salvage: move the damaged files aside, rename it into place.

        Returns the damaged file's new name (``None`` if there was nothing to finish).
        A half-built salvage (a crash while building it) is removed.
        """
        _remove_database_files(self._sibling(".salvage"))
        done = self._sibling(".salvaged")
        if not done.exists():
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self._sibling(f".corrupt-{stamp}")
        # The -wal goes too: left beside the new file, SQLite would replay it into it.
        for suffix in ("-wal", "-shm", ""):
            with suppress(FileNotFoundError):
                os.rename(self._sibling(suffix), aside.with_name(aside.name + suffix))
        os.replace(done, self.path)
        fsync_directory(self.path.parent)
        return aside

    def _salvage_into(self, new: sqlite3.Connection) -> int:
        """Copy what the damaged file still holds into ``new``; how many records came.

        Best effort and read-only (the damaged file stays as it was, for a human with
        ``sqlite3 FILE .recover``): the counters, then each stream's records in seq
        order, skipping past unreadable pages. Each sequence counter continues from the
        higher of its saved value and the highest record found, so numbers already
        sent are not handed out again, as far as the file still tells.
        """
        notes: list[str] = []
        copied = 0
        new.execute("BEGIN IMMEDIATE")
        try:
            with closing(_connect_read_only(self.path)) as old:
                states = _saved_streams(old, notes)
                counters = _saved_counters(old, notes)
                for name, sid in _STREAM_ID.items():
                    last_seq, acked = states.get(sid, (0, 0))
                    n, top, damaged = 0, acked, list[int]()
                    for batch in _readable_records(old, sid, acked, damaged):
                        new.executemany(
                            "INSERT INTO record (stream, seq, created_ms, payload) "
                            "VALUES (?, ?, ?, ?)",
                            [(sid, seq, ms, payload) for seq, ms, payload in batch],
                        )
                        n += len(batch)
                        top = batch[-1][0]
                    new.execute(
                        "UPDATE stream SET last_seq = ?, acked = ?, pending = ? WHERE id = ?",
                        (max(top, last_seq), acked, n, sid),
                    )
                    copied += n
                    notes.append(
                        f"{name}: {n} records, next seq {max(top, last_seq) + 1}"
                        + (f", unreadable after seqs {damaged[:5]}" if damaged else "")
                    )
            counters["corrupt_recovered"] = counters.get("corrupt_recovered", 0) + 1
            counters["salvaged"] = counters.get("salvaged", 0) + copied
            new.executemany("INSERT INTO counter (name, value) VALUES (?, ?)", counters.items())
            self._enforce_budget(new)
            new.execute("COMMIT")
        except BaseException:
            _rollback(new)
            raise
        _LOG.error("outbox %s salvage: %s", self.path, "; ".join(notes))
        return copied


# -- module helpers ---------------------------------------------------------------------


def _thin_pass(conn: sqlite3.Connection, n: int) -> int:
    """One thinning pass over the ``n`` pending telemetry fixes; how many went.

    The sweep's position is ``stream.thin_after`` (telemetry's row), kept in the same
    transaction, so it survives restarts like everything else.
    """
    window = max(n // THIN_WINDOW_DIVISOR, THIN_MIN_WINDOW)
    (after,) = conn.execute("SELECT thin_after FROM stream WHERE id = ?", (_TELEMETRY,)).fetchone()
    # The older half by count: the newest n/2 fixes are left at full rate.
    (middle,) = conn.execute(
        "SELECT seq FROM record WHERE stream = ? ORDER BY seq LIMIT 1 OFFSET ?",
        (_TELEMETRY, max(n // 2 - 1, 0)),
    ).fetchone()
    end = _window_end(conn, after, middle, window)
    if end is None:  # this sweep is done: start the next one from the oldest fix
        after = 0
        end = _window_end(conn, after, middle, window)
    if end is None:  # the older half is down to one fix: the newer half must give
        end = _window_end(conn, after, _MAX_SQLITE_INT, window)
    if end is None:  # unreachable while two or more fixes are pending
        return 0
    conn.execute("DELETE FROM temp.thin_keep")
    conn.execute(
        "INSERT INTO temp.thin_keep (seq, created_ms, payload) "
        "SELECT seq, created_ms, payload FROM ("
        "  SELECT seq, created_ms, payload, row_number() OVER (ORDER BY seq) AS rn"
        "  FROM record WHERE stream = ? AND seq > ? AND seq <= ?"
        ") WHERE rn % 2 = 1",
        (_TELEMETRY, after, end),
    )
    deleted: int = conn.execute(
        "DELETE FROM record WHERE stream = ? AND seq > ? AND seq <= ?", (_TELEMETRY, after, end)
    ).rowcount
    kept: int = conn.execute(
        "INSERT INTO record (stream, seq, created_ms, payload) "
        "SELECT ?, seq, created_ms, payload FROM temp.thin_keep ORDER BY seq",
        (_TELEMETRY,),
    ).rowcount
    conn.execute("DELETE FROM temp.thin_keep")
    conn.execute(
        "UPDATE stream SET pending = pending - ?, thin_after = ? WHERE id = ?",
        (deleted - kept, end, _TELEMETRY),
    )
    return deleted - kept


def _window_end(conn: sqlite3.Connection, after: int, upto: int, window: int) -> int | None:
    """The last seq of the next ``window`` telemetry fixes in (after, upto], if two or more."""
    end, n = conn.execute(
        "SELECT max(seq), count(*) FROM ("
        "  SELECT seq FROM record WHERE stream = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
        ")",
        (_TELEMETRY, after, upto, window),
    ).fetchone()
    return int(end) if n >= 2 else None


def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with the outbox's settings, checked and with its schema in place.

    Raises :class:`_CorruptDatabaseError` if SQLite finds the file damaged, and
    :class:`OutboxError` if it was written by a newer schema version.
    """
    _create_private_file(path)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    try:
        _configure(conn, path)
        _check_and_migrate(conn, path)
    except sqlite3.DatabaseError as err:
        conn.close()
        if _primary_code(err) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise _CorruptDatabaseError(str(err)) from err
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (an empty file is a new SQLite database).

    Positions are personal data, and SQLite gives the -wal and -shm files the main
    file's mode. The directory is fsynced so that the new name survives a power cut.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    fsync_directory(path.parent)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxStorageError(f"outbox {path}: SQLite refused WAL mode here ({mode})")
    # See the module docstring: FULL, not NORMAL, or a power cut can undo commits.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Zero deleted content when it costs no extra I/O: positions are personal data.
    conn.execute("PRAGMA secure_delete = FAST")
    # The thinning pass's scratch table never touches the card.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES:d}")
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS thin_keep ("
        "seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, payload BLOB NOT NULL)"
    )


def _check_and_migrate(conn: sqlite3.Connection, path: Path) -> None:
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise _CorruptDatabaseError("quick_check: " + "; ".join(problems[:3]))
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"outbox {path} has schema version {version}, newer than this agent's "
            f"{SCHEMA_VERSION}: left untouched; run the newer agent or move the file away"
        )
    if version == SCHEMA_VERSION:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        if not {"stream", "record", "counter"} <= tables:
            raise _CorruptDatabaseError(f"schema version {version} without its tables")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT OR IGNORE INTO stream (id, name) VALUES (?, ?)",
            [(sid, name) for name, sid in _STREAM_ID.items()],
        )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _connect_read_only(path: Path) -> sqlite3.Connection:
    # Read-only: the connection can neither replay nor checkpoint the WAL into the file.
    uri = path.resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)


def _saved_streams(old: sqlite3.Connection, notes: list[str]) -> dict[int, tuple[int, int]]:
    """The damaged file's sequence counters that can still be read: id -> (last, acked)."""
    try:
        rows = old.execute("SELECT id, last_seq, acked FROM stream").fetchall()
    except sqlite3.DatabaseError as err:
        notes.append(
            f"sequence counters unreadable ({err}): each stream continues after its highest "
            "record found, or restarts at 1 if none was (ingest may then take new records "
            "for duplicates of old ones)"
        )
        return {}
    # SQLite hands back int, float, str, bytes or None: check what came.
    return {
        sid: (last_seq, acked)
        for sid, last_seq, acked in rows
        if isinstance(sid, int)
        and isinstance(last_seq, int)
        and isinstance(acked, int)
        and 0 <= acked <= last_seq
    }


def _saved_counters(old: sqlite3.Connection, notes: list[str]) -> dict[str, int]:
    try:
        rows = old.execute("SELECT name, value FROM counter").fetchall()
    except sqlite3.DatabaseError as err:
        notes.append(f"counters unreadable ({err})")
        return {}
    return {
        name: value
        for name, value in rows
        if isinstance(name, str) and name in PERSISTENT_COUNTERS and isinstance(value, int)
    }


def _readable_records(
    old: sqlite3.Connection, sid: int, acked: int, damaged: list[int]
) -> Iterator[list[tuple[int, int, bytes]]]:
    """Stream ``sid``'s readable records above ``acked``, in seq order, in batches.

    When a read fails on a damaged page, the seq it failed after is appended to
    ``damaged`` and reading resumes past it, probing ever further (1, 2, 4, ... seqs
    on), so one bad page costs its own records and at most as many again, not the rest
    of the stream. Only reads of ``old`` are guarded: the caller's writes raise.
    """
    after, skip = acked, 1
    while after < _MAX_SQLITE_INT:
        batch: list[tuple[int, int, bytes]] = []
        progressed = finished = False
        try:
            for seq, ms, payload in old.execute(
                "SELECT seq, created_ms, payload FROM record "
                "WHERE stream = ? AND seq > ? ORDER BY seq",
                (sid, after),
            ):
                if (
                    isinstance(seq, int)
                    and isinstance(ms, int)
                    and isinstance(payload, bytes)
                    and seq > after
                ):
                    batch.append((seq, ms, payload))
                    after, progressed = seq, True
                if len(batch) >= 1000:
                    yield batch
                    batch = []
            finished = True
        except sqlite3.DatabaseError:
            pass  # the rows read before the damaged page are good: keep them
        if batch:
            yield batch
        if finished:
            return
        if progressed:
            skip = 1
        if skip == 1:
            damaged.append(after)
        after = min(after + skip, _MAX_SQLITE_INT)
        skip *= 2


def _remove_database_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with suppress(FileNotFoundError):
            os.remove(path.with_name(path.name + suffix))


def _stream_id(stream: str) -> int:
    sid = _STREAM_ID.get(stream) if isinstance(stream, str) else None
    if sid is None:
        raise OutboxError(f"unknown stream {stream!r}; the outbox holds {', '.join(STREAMS)}")
    return sid


def _payload_bytes(payload: object) -> bytes:
    if type(payload) is bytes:  # the usual case, and no copy
        return payload
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise OutboxError(f"a payload must be bytes, not {type(payload).__name__}")
    return bytes(payload)


def _created_ms(created: object) -> int:
    if not isinstance(created, datetime) or created.utcoffset() is None:
        raise OutboxError(f"created must be a timezone-aware datetime, not {created!r}")
    return (created - _EPOCH) // _MS


def _used_bytes(conn: sqlite3.Connection) -> int:
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return int((pages - free) * page_size)


def _file_size(path: Path, suffix: str) -> int:
    try:
        return path.with_name(path.name + suffix).stat().st_size
    except FileNotFoundError:
        return 0


def _bump(conn: sqlite3.Connection, **amounts: int) -> None:
    conn.executemany(
        "INSERT INTO counter (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        [(name, n) for name, n in amounts.items() if n],
    )


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failures back by itself (SQLITE_FULL may): then there is none.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _primary_code(err: sqlite3.Error) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _storage_error(message: str, err: sqlite3.Error) -> OutboxStorageError:
    name = getattr(err, "sqlite_errorname", None)
    return OutboxStorageError(
        f"{message}: {err}" + (f" ({name})" if name else ""),
        sqlite_errorname=name if isinstance(name, str) else None,
    )
