"""The durable outbox: every uplink record is committed to SQLite before it is sent.

Contract
--------
- :meth:`Outbox.add` returns only once the record is durable, on disk, with the next
  sequence number of its stream (``telemetry``, ``events``, ``pod``; each starts at 1).
  Sequence numbers never go backwards and are never reused, across deletions, restarts,
  ``kill -9`` and power cuts: the counters live in the database and move in the same
  transaction as the records; and, should the file be lost or damaged, a high-water
  mark beside it says where numbering must go on (see below). If ``add`` raises
  :class:`OutboxStorageError` (disk full, I/O error) nothing was stored and no number
  was used: the caller keeps the record in memory and retries.
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
(``corrupt_recovered``, ``salvaged``). Records are read through SQLite's b-tree first,
then every page of the file (and its write-ahead log) is parsed on its own
(:func:`~firmware_agent.uplink.sqlitefile.scan_pages`, what ``sqlite3 FILE .recover``
does), so a damaged interior page or header costs only the pages that are damaged.

Sequence numbers outlive the file
---------------------------------
The counters in the database cannot vouch for themselves once the file is lost. So
the outbox keeps a high-water mark outside it, ``<name>.seqmark``
(:mod:`firmware_agent.uplink.seqmark`): before it commits a seq above the mark's
reservation it reserves the next block of seqs there, durably. When the database is
rebuilt from a damaged file, found missing, or behind what it had committed (the
mark's ``committed``; or SQLite discarding committed transactions of a damaged
write-ahead log, which :func:`~firmware_agent.uplink.sqlitefile.inspect_wal` detects),
numbering continues *above the mark*, never from what the file still says. (The
commits SQLite drops from a damaged log are still in the log's later frames, whole
pages whose checksum chain broke: their records are read back from there, see
:func:`~firmware_agent.uplink.sqlitefile.wal_tail_pages`.) That is a reset: logged
as an error, counted (``seq_resets``, ``wal_discarded``) and described in
:meth:`Outbox.last_reset` for the status health. The seqs skipped are void: the
outbox treats them as settled (``acked`` moves over them once no record below them is
left), so the van's sequence report tells ingest they will never come. A clean close
shrinks the reservation to what was handed out, so a file lost after a clean shutdown
skips nothing. Only with neither the file's counters nor a mark (an outbox written by
an older agent, then damaged) can numbering restart low; that is logged as such.

A full disk
-----------
``add`` then raises :class:`OutboxStorageError` and stores nothing; the caller holds
the record and retries (the agent: :mod:`firmware_agent.uplink.holdback`). So that
events and PODs are still kept durably for a while, the outbox keeps a reserve file
(``<name>.reserve``, ``reserve_bytes``, 1 MiB): when an event or POD cannot be stored
for want of space, the reserve is deleted and the write tried again in the space it
freed. Telemetry never uses it: while the reserve is released, a telemetry write first
tries to re-create it, and is refused if there is no room (the caller thins it in
memory). Opening on a full disk (SQLite's -shm file needs room too) is tried once
more in the reserve's space. The reserve comes back by itself once space does.

Threads
-------
One :class:`Outbox` is one SQLite connection opened with ``check_same_thread=False``,
so it may be created in one thread and used from another (the asyncio uplink hands
every call to one worker thread). It is *not* for concurrent use from several threads:
calls must not overlap. Every call blocks on disk I/O, so never call it on the event
loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from firmware_agent.contract.keys import fsync_directory, make_private_dirs
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import STREAMS
from firmware_agent.errors import OutboxError, OutboxStorageError
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.uplink.seqmark import (
    SEQ_BLOCK,
    SeqMark,
    SeqMarkError,
    StreamMark,
    load_mark,
    remove_stale_temp_files,
    save_mark,
)
from firmware_agent.uplink.sqlitefile import (
    WAL_HEADER_BYTES,
    WalFrames,
    inspect_wal,
    read_wal,
    scan_pages,
    wal_tail_pages,
)

_LOG = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES: Final = 100 * 1024 * 1024
# Deleted to make room for events and PODs when the disk is full (see the docstring).
DEFAULT_RESERVE_BYTES: Final = 1024 * 1024
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
PERSISTENT_COUNTERS: Final = (
    "thinned",
    "evicted",
    "over_budget",
    "corrupt_recovered",
    "salvaged",
    "seq_resets",
    "wal_discarded",
)
# Names in the meta table: the POD chain state committed with the last POD, the van's
# day (firmware_agent.day_state) committed with the records that changed it, the last
# reset (JSON), and per stream the top of the seqs a reset left void.
META_POD_CHAIN: Final = "pod_chain"
META_VAN_DAY: Final = "van_day"
META_LAST_RESET: Final = "last_reset"
_META_VOID: Final = "void_upto."
# SQLite's names for a write that failed for want of space (ENOSPC can surface as an
# I/O error when the -wal or -shm file cannot grow).
_DISK_FULL_NAMES: Final = frozenset({"SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_SHMSIZE"})

# Added after version 1 without a version change: an older agent ignores the table.
_META_TABLE: Final = """CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID"""

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
    _META_TABLE,
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

    def __init__(
        self,
        path: Path | str,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        """Open (or create) the outbox at ``path``; its directory is created if missing.

        Runs a quick integrity check, which reads the whole file (about a second per
        100 MB on a Pi's SD card). A damaged file is moved aside and recovered from (see
        the module docstring), and numbering is checked against the high-water mark.
        :class:`OutboxStorageError` if the file cannot be opened at all;
        :class:`OutboxError` for a bad ``budget_bytes`` or ``reserve_bytes`` (0: no
        reserve) or a database written by a newer version of the agent (left untouched).
        """
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise OutboxError(f"budget_bytes must be an integer, not {budget_bytes!r}")
        if budget_bytes <= 0:
            raise OutboxError(f"budget_bytes must be positive, not {budget_bytes}")
        if isinstance(reserve_bytes, bool) or not isinstance(reserve_bytes, int):
            raise OutboxError(f"reserve_bytes must be an integer, not {reserve_bytes!r}")
        if reserve_bytes < 0:
            raise OutboxError(f"reserve_bytes must be >= 0, not {reserve_bytes}")
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        self.reserve_bytes = reserve_bytes
        self._faults = FaultCounter()
        self._thinned_before = False
        self._conn: sqlite3.Connection | None = None
        # The mark as it is on disk (the empty mark until one is written), and the top
        # of the seqs a reset left void, per stream id.
        self._mark = SeqMark.empty()
        self._void: dict[int, int] = {}
        self._reserve_released = False
        self._reserve_uses = 0
        try:
            self._conn = self._open_in_reserve()
        except OutboxError:
            raise
        except _CorruptDatabaseError as err:  # the fresh database itself: give up
            raise OutboxStorageError(f"outbox {self.path}: could not open it: {err}") from err
        except sqlite3.Error as err:
            raise _storage_error(f"outbox {self.path}: could not open it", err) from err
        except OSError as err:
            raise OutboxStorageError(f"outbox {self.path}: could not open it: {err}") from err
        self._restore_reserve()

    def _open_in_reserve(self) -> sqlite3.Connection:
        """:meth:`_open`; on a full disk (even opening needs room: SQLite's -shm file),
        once more in the space the reserve frees."""
        try:
            return self._open()
        except sqlite3.Error as err:
            if _error_name(err) not in _DISK_FULL_NAMES or not self._release_reserve():
                raise
        return self._open()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, budget_bytes={self.budget_bytes})"

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (checkpointing the WAL into it). Idempotent.

        First the high-water mark shrinks to the seqs handed out (best effort: a mark
        left ahead costs unused seqs after a reset, nothing else)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._shrink_mark(conn)
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

    def add_many(
        self,
        stream: str,
        items: Sequence[tuple[bytes, datetime]],
        *,
        meta: Mapping[str, bytes] | None = None,
    ) -> list[int]:
        """Store ``(payload, created)`` pairs in one transaction (one fsync); their seqs.

        All or nothing: on :class:`OutboxStorageError` none of them was stored. ``meta``
        (name -> bytes) is stored in the same transaction (the agent keeps the POD
        chain state with its POD: :data:`META_POD_CHAIN`); read it with :meth:`meta`.
        On a full disk an event or POD is tried once more in the space the reserve
        frees; telemetry is refused while the reserve cannot be re-created.
        """
        sid = _stream_id(stream)
        rows = [(_payload_bytes(payload), _created_ms(created)) for payload, created in items]
        extra = [(_meta_name(name), _payload_bytes(value)) for name, value in (meta or {}).items()]
        if not rows:
            return []
        if sid == _TELEMETRY and self._reserve_released and not self._restore_reserve():
            raise OutboxStorageError(
                f"outbox {self.path}: disk full: {len(rows)} telemetry record(s) not stored "
                "while the reserve for events and PODs is released",
                sqlite_errorname="SQLITE_FULL",
            )
        try:
            return self._add(sid, stream, rows, extra)
        except OutboxStorageError as err:
            if sid == _TELEMETRY or not _disk_full(err) or not self._release_reserve():
                raise
        return self._add(sid, stream, rows, extra)

    def add_batch(
        self,
        groups: Sequence[tuple[str, Sequence[tuple[bytes, datetime]]]],
        *,
        meta: Mapping[str, bytes] | None = None,
    ) -> list[list[int]]:
        """:meth:`add_many` for several streams at once: every ``(stream, items)``
        group, in order, and ``meta``, in one transaction; the seqs of each group.

        All or nothing, so what the records of one step depend on (the van's day) and
        the records themselves cannot disagree after a crash. A batch with telemetry is
        refused while the reserve for events and PODs is released, as :meth:`add_many`
        refuses telemetry; one without is tried once more in the space the reserve frees.
        """
        batch = [
            (_stream_id(stream), stream, [(_payload_bytes(p), _created_ms(c)) for p, c in items])
            for stream, items in groups
        ]
        batch = [(sid, stream, rows) for sid, stream, rows in batch if rows]
        extra = [(_meta_name(name), _payload_bytes(value)) for name, value in (meta or {}).items()]
        if not batch:
            if extra:  # meta alone (the van's day changed with no record): one transaction
                try:
                    self._add_groups([], extra)
                except OutboxStorageError as err:
                    if not _disk_full(err) or not self._release_reserve():
                        raise
                    self._add_groups([], extra)
            return [[] for _ in groups]
        telemetry = any(sid == _TELEMETRY for sid, _, _ in batch)
        if telemetry and self._reserve_released and not self._restore_reserve():
            raise OutboxStorageError(
                f"outbox {self.path}: disk full: a batch with telemetry not stored "
                "while the reserve for events and PODs is released",
                sqlite_errorname="SQLITE_FULL",
            )
        try:
            seqs = self._add_groups(batch, extra)
        except OutboxStorageError as err:
            if telemetry or not _disk_full(err) or not self._release_reserve():
                raise
            seqs = self._add_groups(batch, extra)
        by_stream = iter(seqs)
        return [next(by_stream) if items else [] for _, items in groups]

    def _add(
        self,
        sid: int,
        stream: str,
        rows: list[tuple[bytes, int]],
        extra: list[tuple[str, bytes]],
    ) -> list[int]:
        return self._add_groups([(sid, stream, rows)], extra)[0]

    def _add_groups(
        self,
        groups: Sequence[tuple[int, str, list[tuple[bytes, int]]]],
        extra: list[tuple[str, bytes]],
    ) -> list[list[int]]:
        what = " + ".join(f"{len(rows)} {stream}" for _, stream, rows in groups)
        out: list[list[int]] = []
        with self._write(f"could not add {what} record(s); not stored") as conn:
            for sid, stream, rows in groups:
                n = len(rows)
                (last,) = conn.execute(
                    "UPDATE stream SET last_seq = last_seq + ?, pending = pending + ? "
                    "WHERE id = ? RETURNING last_seq",
                    (n, n, sid),
                ).fetchall()[0]
                first = last - n + 1
                self._reserve_seqs(stream, last, first - 1)
                conn.executemany(
                    "INSERT INTO record (stream, seq, created_ms, payload) VALUES (?, ?, ?, ?)",
                    ((sid, first + i, ms, payload) for i, (payload, ms) in enumerate(rows)),
                )
                out.append(list(range(first, last + 1)))
            if extra:
                _put_meta(conn, extra)
            self._enforce_budget(conn)
        return out

    def ack(self, stream: object, seq: object) -> int:
        """Apply ingest's cumulative ack: delete every record of ``stream`` with seq <= ``seq``.

        Returns how many records were deleted. The ack comes off the network, so this
        never raises for what it says: an unknown stream, a seq that is not a
        non-negative integer, beyond the last seq handed out, or lower than an ack
        already applied, is ignored and counted in :meth:`stats` (the first of each
        kind is logged). A repeated ack is a no-op. After a reset (see the module
        docstring) acked moves on over the seqs the reset left void once no record
        below them is left, so it can be above the ack applied. Raises only
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
            if self._void.get(sid, 0) > seq:
                _settle_void(conn, sid, self._void[sid])
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
        and ``salvaged``, ``seq_resets`` (numbering moved above the high-water mark)
        and ``wal_discarded`` (committed transactions SQLite dropped from a damaged
        write-ahead log); ``ack_invalid``, ``ack_beyond``, ``ack_backwards``,
        ``reserve_released`` (times the disk-full reserve was used) since this process
        opened the outbox; ``used_bytes``, ``file_bytes`` (database + WAL on disk),
        ``budget_bytes`` and ``reserve_free`` (1 while the reserve is in place).
        """
        with self._read("could not read its counters") as conn:
            rows = conn.execute("SELECT name, value FROM counter").fetchall()
            used = _used_bytes(conn)
        out = dict.fromkeys(PERSISTENT_COUNTERS, 0)
        out.update({str(name): int(value) for name, value in rows})
        for kind in ("ack_invalid", "ack_beyond", "ack_backwards"):
            out[kind] = self._faults.counts.get(kind, 0)
        out["reserve_released"] = self._reserve_uses
        out["used_bytes"] = used
        out["file_bytes"] = sum(_file_size(self.path, suffix) for suffix in ("", "-wal"))
        out["budget_bytes"] = self.budget_bytes
        out["reserve_free"] = int(self.reserve_bytes > 0 and not self._reserve_released)
        return out

    def meta(self, name: str) -> bytes | None:
        """The value stored under ``name`` with :meth:`add_many`'s ``meta``, if any."""
        with self._read(f"could not read {name}") as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def last_reset(self) -> dict[str, object] | None:
        """The last time numbering was moved above the high-water mark: ``at`` (UTC),
        ``reason``, ``from`` and ``to`` (stream -> the last seq before and after);
        ``None`` if it never was. Kept in the database, so it outlives restarts."""
        value = self.meta(META_LAST_RESET)
        if value is None:
            return None
        try:
            found = json.loads(value)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    @property
    def reserve_path(self) -> Path:
        return self._sibling(".reserve")

    @property
    def mark_path(self) -> Path:
        return self._sibling(".seqmark")

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

    # -- the high-water mark and the reserve --------------------------------------------

    def _reserve_seqs(self, stream: str, last: int, committed: int) -> None:
        """Before seqs up to ``last`` are committed, have the mark reserve them (durably)
        unless it does already: a block ahead, so this writes once per block. Runs
        inside the caller's transaction; :class:`OutboxStorageError` rolls it back."""
        if last <= self._mark.reserved(stream):
            return
        mark = self._mark.with_stream(stream, reserved=last + SEQ_BLOCK, committed=committed)
        try:
            save_mark(self.mark_path, mark)
        except OSError as err:
            raise OutboxStorageError(
                f"outbox {self.path}: could not reserve {stream} seqs in "
                f"{self.mark_path.name}: {err.strerror or err}; not stored"
            ) from err
        self._mark = mark

    def _shrink_mark(self, conn: sqlite3.Connection) -> None:
        """At a clean close: the mark down to the seqs handed out, committed = reserved."""
        try:
            last = _last_seqs(conn)
        except sqlite3.Error:
            return
        mark = SeqMark({s: StreamMark(last[s], last[s]) for s in STREAMS})
        if mark == self._mark:
            return
        try:
            save_mark(self.mark_path, mark)
        except OSError as err:
            _LOG.info("outbox %s: mark left as it was at close: %s", self.path, err)
            return
        self._mark = mark

    def _restore_reserve(self) -> bool:
        """Make sure the reserve file is in place; False if there is no room for it."""
        if self.reserve_bytes == 0:
            return True
        path = self.reserve_path
        with suppress(OSError):
            if path.stat().st_size >= self.reserve_bytes:
                self._reserve_released = False
                return True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _allocate(fd, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with suppress(OSError):
                os.unlink(path)
            self._reserve_released = True
            return False
        if self._reserve_released:
            _LOG.warning(
                "outbox %s: space is back: the %d-byte reserve is in place again and "
                "telemetry is stored again",
                self.path,
                self.reserve_bytes,
            )
        self._reserve_released = False
        return True

    def _release_reserve(self) -> bool:
        """Delete the reserve file to make room; False if there was none to delete."""
        if self.reserve_bytes == 0 or self._reserve_released:
            return False
        try:
            os.unlink(self.reserve_path)
        except OSError:
            self._reserve_released = True
            return False
        self._reserve_released = True
        self._reserve_uses += 1
        _LOG.warning(
            "outbox %s: disk full: released the %d-byte reserve to store events and PODs; "
            "telemetry is not stored until space returns",
            self.path,
            self.reserve_bytes,
        )
        return True

    # -- opening and recovery -------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _open(self) -> sqlite3.Connection:
        make_private_dirs(self.path.parent)
        self._finish_recovery()
        remove_stale_temp_files(self.mark_path)
        mark = self._load_mark()
        existed = _file_size(self.path, "") > 0
        wal_bytes = _file_size(self.path, "-wal")
        # Before SQLite opens it: at open it replays the log and drops what it rejects
        # (and the next write overwrites the frames it dropped).
        wal = inspect_wal(self._sibling("-wal"))
        wal_image = read_wal(self._sibling("-wal")) if wal is not None else None
        recovered = False
        try:
            conn, kept = _connect(self.path)
        except _CorruptDatabaseError as corrupt:
            _LOG.error(
                "outbox %s is damaged (%s): moving it aside, salvaging what can be read "
                "into a new one",
                self.path,
                corrupt.reason,
            )
            conn, kept = self._recover()
            recovered, wal = True, None
        try:
            reasons, discarded = _reset_reasons(
                _last_seqs(conn), mark, existed=existed, recovered=recovered, wal=wal, kept=kept
            )
            if discarded and wal_image is not None:
                restored = self._restore_wal_tail(conn, wal_image, kept)
                reasons.append(f"{restored} records restored from the frames it discarded")
            if wal is not None and not wal.header_ok and wal_bytes > WAL_HEADER_BYTES:
                reasons.append(
                    f"the write-ahead log's header is damaged, so SQLite ignored all of it "
                    f"({wal_bytes} bytes)"
                )
            self._void = _load_void(conn)
            if reasons:
                self._reset(conn, mark, reasons, discarded)
            self._write_mark(conn, mark)
        except BaseException:
            conn.close()
            raise
        return conn

    def _restore_wal_tail(self, conn: sqlite3.Connection, image: bytes, kept: int) -> int:
        """Put back the records of the log frames SQLite discarded (their pages are
        whole; only the checksum chain through them broke): those not held and above
        their stream's acked seq. How many came back."""
        pages = wal_tail_pages(image, kept)
        if not pages:
            return 0
        acked = {int(i): int(a) for i, a in conn.execute("SELECT id, acked FROM stream")}
        restored = 0

        def keep(sid: int, seq: int, ms: int, payload: bytes) -> None:
            nonlocal restored
            if seq > acked.get(sid, _MAX_SQLITE_INT):
                restored += conn.execute(
                    "INSERT OR IGNORE INTO record (stream, seq, created_ms, payload) "
                    "VALUES (?, ?, ?, ?)",
                    (sid, seq, ms, payload),
                ).rowcount

        with self._write_txn(conn):
            scan_pages(self.path, keep, stream_names=STREAMS, only=pages)
            for sid in _STREAM_ID.values():
                n, top = conn.execute(
                    "SELECT count(*), max(seq) FROM record WHERE stream = ?", (sid,)
                ).fetchone()
                conn.execute(
                    "UPDATE stream SET pending = ?, last_seq = max(last_seq, ?) WHERE id = ?",
                    (n, top or 0, sid),
                )
        return restored

    def _load_mark(self) -> SeqMark | None:
        try:
            return load_mark(self.mark_path)
        except (SeqMarkError, OSError) as err:
            _LOG.error(
                "outbox %s: high-water mark %s unreadable (%s): rebuilt from the database",
                self.path,
                self.mark_path,
                err,
            )
            return None

    def _reset(
        self,
        conn: sqlite3.Connection,
        mark: SeqMark | None,
        reasons: list[str],
        discarded: int,
    ) -> None:
        """Numbering above the mark after a loss (see the module docstring), in one
        transaction: the seqs skipped become void, the reset is counted and kept."""
        last = _last_seqs(conn)
        reason = "; ".join(reasons)
        if mark is None:
            _LOG.error(
                "outbox %s: %s; there is no high-water mark (%s): numbering continues "
                "after the highest seq the file still holds (%s), which may reuse seqs "
                "ingest already has",
                self.path,
                reason,
                self.mark_path.name,
                ", ".join(f"{s} {last[s]}" for s in STREAMS),
            )
            with self._write_txn(conn):
                _bump(conn, wal_discarded=discarded)
            return
        to = {s: max(last[s], mark.reserved(s)) for s in STREAMS}
        info = {"at": format_utc(datetime.now(UTC)), "reason": reason, "from": last, "to": to}
        with self._write_txn(conn):
            for stream in STREAMS:
                sid = _STREAM_ID[stream]
                if to[stream] > last[stream]:
                    conn.execute("UPDATE stream SET last_seq = ? WHERE id = ?", (to[stream], sid))
                    _put_meta(conn, [(_META_VOID + stream, str(to[stream]).encode("ascii"))])
                    _settle_void(conn, sid, to[stream])
                    self._void[sid] = to[stream]
            _bump(conn, seq_resets=1, wal_discarded=discarded)
            _put_meta(conn, [(META_LAST_RESET, json.dumps(info).encode("ascii"))])
        _LOG.error(
            "outbox %s: %s: numbering continues above the high-water mark (%s); the seqs "
            "skipped are void and the van's sequence report settles them at ingest",
            self.path,
            reason,
            ", ".join(f"{s} {last[s]} -> {to[s]}" for s in STREAMS),
        )

    def _write_mark(self, conn: sqlite3.Connection, loaded: SeqMark | None) -> None:
        """At open: a mark that covers the file's counters, committed = what it holds."""
        last = _last_seqs(conn)
        base = loaded or SeqMark.empty()
        mark = SeqMark({s: StreamMark(max(base.reserved(s), last[s]), last[s]) for s in STREAMS})
        self._mark = base
        if mark == loaded:
            return
        try:
            save_mark(self.mark_path, mark)
        except OSError as err:
            _LOG.warning(
                "outbox %s: could not write the high-water mark %s (%s): records are "
                "refused until it can be",
                self.path,
                self.mark_path.name,
                err,
            )
            return
        self._mark = mark

    @contextmanager
    def _write_txn(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _recover(self) -> tuple[sqlite3.Connection, int]:
        """Build a new database from what the damaged one still holds, then swap them.

        Crash-safe: the new database is built under ``<name>.salvage`` and renamed to
        ``<name>.salvaged`` only once complete; the damaged files are then moved aside
        and the new one renamed into place. :meth:`_finish_recovery` completes that last
        step at the next open if a crash interrupts it, and a crash before it simply
        starts the recovery over, from the damaged file that is still in place.
        """
        build = self._sibling(".salvage")
        _remove_database_files(build)
        conn, _ = _connect(build)
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
        ``sqlite3 FILE .recover``). Two passes: through SQLite (the counters, then each
        stream's records in seq order, skipping past unreadable pages), then through
        every page of the file and the committed frames of its log
        (:func:`~firmware_agent.uplink.sqlitefile.scan_pages`), which finds the rows a
        damaged interior page, root page or header hides from SQLite. Records at or
        below a stream's acked seq (found either way) are left out: they were
        delivered. Each counter continues from the higher of its saved value and the
        highest record found; the caller then moves numbering above the mark.
        """
        notes: list[str] = []
        new.execute("BEGIN IMMEDIATE")
        try:
            states, counters, meta = self._salvage_through_sqlite(new, notes)

            def keep(sid: int, seq: int, ms: int, payload: bytes) -> None:
                new.execute(
                    "INSERT OR IGNORE INTO record (stream, seq, created_ms, payload) "
                    "VALUES (?, ?, ?, ?)",
                    (sid, seq, ms, payload),
                )

            scan = scan_pages(
                self.path,
                keep,
                stream_names=STREAMS,
                counter_names=PERSISTENT_COUNTERS,
            )
            copied = 0
            for name, sid in _STREAM_ID.items():
                last_seq, acked = states.get(sid, (0, 0))
                if name in scan.streams:
                    _, scan_last, scan_acked = scan.streams[name]
                    last_seq, acked = max(last_seq, scan_last), max(acked, scan_acked)
                new.execute("DELETE FROM record WHERE stream = ? AND seq <= ?", (sid, acked))
                n, top = new.execute(
                    "SELECT count(*), max(seq) FROM record WHERE stream = ?", (sid,)
                ).fetchone()
                last_seq = max(last_seq, top or 0)
                new.execute(
                    "UPDATE stream SET last_seq = ?, acked = ?, pending = ? WHERE id = ?",
                    (last_seq, acked, n, sid),
                )
                copied += n
                notes.append(f"{name}: {n} pending records, last seq {last_seq}, acked {acked}")
            notes.append(
                f"page scan: {scan.pages} pages ({scan.bad_pages} unreadable), "
                f"{scan.records} record copies found"
            )
            for name, count in scan.counters.items():
                counters.setdefault(name, count)
            for name, value in scan.meta.items():
                if name in (META_POD_CHAIN, META_VAN_DAY, META_LAST_RESET) or name.startswith(
                    _META_VOID
                ):
                    meta.setdefault(name, value)
            counters["corrupt_recovered"] = counters.get("corrupt_recovered", 0) + 1
            counters["salvaged"] = counters.get("salvaged", 0) + copied
            new.executemany("INSERT INTO counter (name, value) VALUES (?, ?)", counters.items())
            _put_meta(new, list(meta.items()))
            self._enforce_budget(new)
            new.execute("COMMIT")
        except BaseException:
            _rollback(new)
            raise
        _LOG.error("outbox %s salvage: %s", self.path, "; ".join(notes))
        return copied

    def _salvage_through_sqlite(
        self, new: sqlite3.Connection, notes: list[str]
    ) -> tuple[dict[int, tuple[int, int]], dict[str, int], dict[str, bytes]]:
        """The first pass of :meth:`_salvage_into`: what SQLite can still read of the
        damaged file (its counters, meta and records) into ``new``."""
        try:
            old = _connect_read_only(self.path)
        except sqlite3.Error as err:
            notes.append(f"SQLite cannot open it ({err})")
            return {}, {}, {}
        with closing(old):
            states = _saved_streams(old, notes)
            counters = _saved_counters(old, notes)
            meta = _saved_meta(old)
            for name, sid in _STREAM_ID.items():
                _, acked = states.get(sid, (0, 0))
                n, damaged = 0, list[int]()
                for batch in _readable_records(old, sid, acked, damaged):
                    new.executemany(
                        "INSERT INTO record (stream, seq, created_ms, payload) VALUES (?, ?, ?, ?)",
                        [(sid, seq, ms, payload) for seq, ms, payload in batch],
                    )
                    n += len(batch)
                notes.append(
                    f"{name}: {n} records read through SQLite"
                    + (f", unreadable after seqs {damaged[:5]}" if damaged else "")
                )
        return states, counters, meta


# -- module helpers ---------------------------------------------------------------------


def _reset_reasons(
    last: Mapping[str, int],
    mark: SeqMark | None,
    *,
    existed: bool,
    recovered: bool,
    wal: WalFrames | None,
    kept: int,
) -> tuple[list[str], int]:
    """Why numbering cannot go on from the file's counters (none: it can), and how
    many committed transactions SQLite discarded from the log."""
    reasons: list[str] = []
    if recovered:
        reasons.append("the file was damaged and rebuilt from what could be read")
    elif not existed and mark is not None and any(mark.reserved(s) for s in STREAMS):
        reasons.append("the file was missing")
    discarded = 0
    if wal is not None and wal.header_ok:
        discarded = wal.commits_after(kept)
        if discarded:
            reasons.append(
                f"SQLite discarded {discarded} committed transaction(s) from the damaged "
                f"write-ahead log (it kept {kept} frames)"
            )
    if mark is not None and (existed or recovered):
        behind = [
            f"{s} {last[s]} < {mark.committed(s)}" for s in STREAMS if last[s] < mark.committed(s)
        ]
        if behind:
            reasons.append(
                "its counters are behind what it had committed (" + ", ".join(behind) + ")"
            )
    return reasons, discarded


def _last_seqs(conn: sqlite3.Connection) -> dict[str, int]:
    found = {str(n): int(v) for n, v in conn.execute("SELECT name, last_seq FROM stream")}
    return {s: found.get(s, 0) for s in STREAMS}


def _load_void(conn: sqlite3.Connection) -> dict[int, int]:
    """Per stream id, the top of the seqs a reset left void, where that is above acked."""
    void: dict[int, int] = {}
    for name, value in conn.execute(
        "SELECT name, value FROM meta WHERE name >= ? AND name < ?", (_META_VOID, _META_VOID + "~")
    ):
        sid = _STREAM_ID.get(str(name)[len(_META_VOID) :])
        try:
            upto = int(bytes(value))
        except ValueError:
            continue
        if sid is not None:
            void[sid] = upto
    return void


def _settle_void(conn: sqlite3.Connection, sid: int, upto: int) -> None:
    """Move ``sid``'s acked over void seqs: up to ``upto``, or to just below its oldest
    pending record if that is lower. The van holds nothing there and never will."""
    (acked,) = conn.execute("SELECT acked FROM stream WHERE id = ?", (sid,)).fetchone()
    if acked >= upto:
        return
    (low,) = conn.execute("SELECT min(seq) FROM record WHERE stream = ?", (sid,)).fetchone()
    target = upto if low is None else min(upto, int(low) - 1)
    if target > acked:
        conn.execute("UPDATE stream SET acked = ? WHERE id = ?", (target, sid))


def _put_meta(conn: sqlite3.Connection, items: Sequence[tuple[str, bytes]]) -> None:
    conn.executemany(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        items,
    )


def _meta_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not name.isascii():
        raise OutboxError(f"a meta name must be 1..64 ASCII characters, not {name!r:.80}")
    return name


def _saved_meta(old: sqlite3.Connection) -> dict[str, bytes]:
    try:
        rows = old.execute("SELECT name, value FROM meta").fetchall()
    except sqlite3.DatabaseError:
        return {}
    return {n: bytes(v) for n, v in rows if isinstance(n, str) and isinstance(v, bytes)}


def _allocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of real blocks (not a sparse file)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        chunk = bytes(64 * 1024)
        for offset in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[: size - offset], offset)


def _disk_full(err: OutboxStorageError) -> bool:
    """Whether ``err`` says there was no room (SQLite's word for it, or ENOSPC)."""
    if err.sqlite_errorname in _DISK_FULL_NAMES:
        return True
    cause = err.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


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


def _connect(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open ``path`` with the outbox's settings, checked and with its schema in place;
    also how many frames of the write-ahead log SQLite replayed at open (before this
    function wrote anything).

    Raises :class:`_CorruptDatabaseError` if SQLite finds the file damaged, and
    :class:`OutboxError` if it was written by a newer schema version.
    """
    _create_private_file(path)
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    try:
        _configure(conn, path)
        kept = _check(conn)
        _migrate(conn, path)
    except sqlite3.DatabaseError as err:
        conn.close()
        if _primary_code(err) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise _CorruptDatabaseError(str(err)) from err
        raise
    except BaseException:
        conn.close()
        raise
    return conn, kept


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


def _check(conn: sqlite3.Connection) -> int:
    """Quick-check the file (its first read replays the log); the frames SQLite kept
    of the log (its ``mxFrame``), as a passive checkpoint reports them."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise _CorruptDatabaseError("quick_check: " + "; ".join(problems[:3]))
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return max(int(row[1]), 0) if row is not None else 0


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
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
        if "meta" not in tables:  # written by an agent before the table came
            conn.execute(_META_TABLE)
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
        notes.append(f"sequence counters unreadable through SQLite ({err})")
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


def _error_name(err: sqlite3.Error) -> str | None:
    name = getattr(err, "sqlite_errorname", None)
    return name if isinstance(name, str) else None


def _storage_error(message: str, err: sqlite3.Error) -> OutboxStorageError:
    name = getattr(err, "sqlite_errorname", None)
    return OutboxStorageError(
        f"{message}: {err}" + (f" ({name})" if name else ""),
        sqlite_errorname=name if isinstance(name, str) else None,
    )
