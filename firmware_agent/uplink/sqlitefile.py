"""Reading an outbox's SQLite files without SQLite: its write-ahead log, and its pages.

Two things SQLite itself will not tell us, both for files that went wrong:

- :func:`inspect_wal`: how many committed transactions a write-ahead log holds. At
  open SQLite replays the log up to the first frame that fails its checksum and
  silently discards the rest, committed transactions included (by design: it cannot
  tell garbage from a torn write). Comparing the commit frames of the log's current
  generation (its salts) with the frames SQLite kept says whether committed data went.
- :func:`scan_pages`: the outbox's rows read straight from the database pages (and
  the log's committed frames), the way ``sqlite3 FILE .recover`` does: every b-tree
  page is parsed on its own, so a damaged page costs its own rows, not the rows a
  damaged interior page or header makes unreachable through the b-tree. Given the
  frames SQLite discarded (:func:`wal_tail_pages`: whole page images, only their
  checksum chain broken), it reads the records of the dropped commits back.

Both follow the documented file format (https://sqlite.org/fileformat2.html) and read
only. Neither raises for what a file holds: damage is skipped and counted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

WAL_HEADER_BYTES: Final = 32
WAL_FRAME_HEADER_BYTES: Final = 24
_WAL_MAGIC: Final = (0x377F0682, 0x377F0683)  # checksums little- / big-endian
_DB_MAGIC: Final = b"SQLite format 3\x00"
_DEFAULT_PAGE_SIZE: Final = 4096

# b-tree page types
_INDEX_INTERIOR: Final = 2
_TABLE_INTERIOR: Final = 5
_INDEX_LEAF: Final = 10
_TABLE_LEAF: Final = 13

# A row's creation time must fall in this window (ms since the Unix epoch): the test
# that tells a real record from bytes that only look like a cell. 2000-01-01 .. 2200.
_MIN_CREATED_MS: Final = 946_684_800_000
_MAX_CREATED_MS: Final = 7_258_118_400_000
_MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024

Value = int | float | bytes | str | None


# -- the write-ahead log -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalFrames:
    """What a log file holds: ``header_ok`` (magic, version and header checksum),
    its ``page_size``, and per frame of the current generation (salts matching the
    header), in file order: ``(index, page number, is a commit frame)``; ``stray``
    counts the frames after the header that do not carry those salts."""

    header_ok: bool
    page_size: int
    frames: tuple[tuple[int, int, bool], ...] = ()
    stray: int = 0

    def commits_after(self, kept_frames: int) -> int:
        """How many commit frames of this generation lie beyond the first ``kept_frames``
        frames (the frames SQLite replayed): committed transactions it discarded."""
        return sum(1 for index, _, commit in self.frames if commit and index >= kept_frames)


def inspect_wal(path: Path) -> WalFrames | None:
    """The frames of the log at ``path`` (``None`` if there is none, or it is empty).

    Reads frame headers only (salts and commit flags, not the checksums of the pages):
    cheap enough for every open after a crash.
    """
    try:
        with path.open("rb") as f:
            header = f.read(WAL_HEADER_BYTES)
            if len(header) < WAL_HEADER_BYTES:
                return None
            ok, page_size, salts, _ = _wal_header(header)
            if not ok:
                return WalFrames(header_ok=False, page_size=page_size)
            frames: list[tuple[int, int, bool]] = []
            stray = index = 0
            while True:
                head = f.read(WAL_FRAME_HEADER_BYTES)
                if len(head) < WAL_FRAME_HEADER_BYTES:
                    break
                pgno, size, salt1, salt2 = struct.unpack(">IIII", head[:16])
                if (salt1, salt2) == salts and pgno > 0:
                    frames.append((index, pgno, size > 0))
                else:
                    stray += 1
                index += 1
                f.seek(page_size, 1)
    except OSError:
        return None
    return WalFrames(True, page_size, tuple(frames), stray)


def _wal_header(header: bytes) -> tuple[bool, int, tuple[int, int], tuple[int, int]]:
    """(valid, page size, salts, checksum) of a log header."""
    magic, version, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", header)
    if page_size == 1:
        page_size = 65536
    ok = (
        magic in _WAL_MAGIC
        and version == 3007000
        and _is_page_size(page_size)
        and _wal_checksum(header[:24], magic == _WAL_MAGIC[1], (0, 0)) == (c1, c2)
    )
    return ok, page_size if _is_page_size(page_size) else 0, (salt1, salt2), (c1, c2)


def _wal_checksum(data: bytes, big_endian: bool, start: tuple[int, int]) -> tuple[int, int]:
    """SQLite's log checksum of ``data`` (a multiple of 8 bytes), continuing ``start``."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s1, s2 = start
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def committed_wal_pages(path: Path, page_size: int | None = None) -> dict[int, bytes]:
    """The pages the log at ``path`` holds in committed transactions, as SQLite would
    replay them: frames of the header's generation whose cumulative checksum holds, up
    to the last commit frame before the first frame that fails. Page number -> the
    newest committed version. Empty for no log, or one whose header is damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if len(data) < WAL_HEADER_BYTES:
        return {}
    ok, size, salts, checksum = _wal_header(data[:WAL_HEADER_BYTES])
    if not ok or (page_size is not None and size != page_size):
        return {}
    big_endian = struct.unpack(">I", data[:4])[0] == _WAL_MAGIC[1]
    pages: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    offset = WAL_HEADER_BYTES
    frame_bytes = WAL_FRAME_HEADER_BYTES + size
    while offset + frame_bytes <= len(data):
        head = data[offset : offset + WAL_FRAME_HEADER_BYTES]
        page = data[offset + WAL_FRAME_HEADER_BYTES : offset + frame_bytes]
        pgno, commit, salt1, salt2, c1, c2 = struct.unpack(">6I", head)
        if (salt1, salt2) != salts:
            break
        checksum = _wal_checksum(head[:8], big_endian, checksum)
        checksum = _wal_checksum(page, big_endian, checksum)
        if checksum != (c1, c2):
            break
        pending[pgno] = page
        if commit:
            pages.update(pending)
            pending.clear()
        offset += frame_bytes
    return pages


# -- the database pages --------------------------------------------------------------------


RecordSink = Callable[[int, int, int, bytes], None]
"""Receives each row of the ``record`` table found: (stream id, seq, created_ms, payload)."""


@dataclass(slots=True)
class PageScan:
    """What :func:`scan_pages` found besides the records it handed on.

    ``records``: how many rows of the ``record`` table (copies included); ``streams``:
    stream name -> (id, last_seq, acked), rows of ``stream`` (the highest where a stale
    copy of a row was found too); ``meta``: name -> value, rows of ``meta``;
    ``counters``: name -> value; ``pages``: pages read; ``bad_pages``: b-tree pages that
    could not be parsed whole.
    """

    page_size: int
    records: int = 0
    streams: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    bad_pages: int = 0


def scan_pages(
    path: Path,
    on_record: RecordSink,
    *,
    stream_names: tuple[str, ...],
    counter_names: tuple[str, ...] = (),
    only: dict[int, bytes] | None = None,
) -> PageScan:
    """Read the outbox's rows from every b-tree page of the database at ``path`` and
    the committed frames of its log (``<path>-wal``), whatever state the b-tree is in;
    each record goes to ``on_record`` as it is found (memory stays bounded).
    ``only``: scan just these page images (page number -> bytes), such as the frames
    SQLite discarded from a log (:func:`wal_tail_pages`), the file serving only the
    overflow pages they point to.

    A row is taken as a record only if it has the ``record`` table's shape exactly
    (stream id, seq >= 1, a creation time in 2000..2200, a payload); a ``stream`` row
    only with a name of ``stream_names``. A record may come more than once (an interior
    page holds copies of keys), and pages freed by deletions may still hold records
    that were acknowledged: the caller ignores repeats and filters by the acked seqs.
    The page size comes from the header, else from the log, else SQLite's default.
    """
    try:
        f = path.open("rb")
    except OSError:
        return PageScan(_DEFAULT_PAGE_SIZE)
    with f:
        header = f.read(100)
        page_size, reserved = _db_page_size(header)
        wal = path.with_name(path.name + "-wal")
        if page_size is None:
            wal_frames = inspect_wal(wal)
            page_size = wal_frames.page_size if wal_frames and wal_frames.page_size else None
        page_size = page_size or _DEFAULT_PAGE_SIZE
        overlay = committed_wal_pages(wal, page_size) if only is None else only
        scan = PageScan(page_size)
        reader = _Pages(f, page_size, overlay)
        for pgno in reader.numbers() if only is None else iter(sorted(only)):
            page = reader.page(pgno)
            if page is None or len(page) != page_size:
                continue
            scan.pages += 1
            try:
                for kind, rowid, values in _cells(page, pgno, page_size - reserved, reader):
                    _classify(scan, on_record, kind, rowid, values, stream_names, counter_names)
            except (_DamagedError, struct.error, IndexError, ValueError):
                scan.bad_pages += 1
    return scan


def read_wal(path: Path, max_bytes: int = 256 * 1024 * 1024) -> bytes | None:
    """The log file's bytes (``None``: none, unreadable, or larger than ``max_bytes``),
    read before SQLite opens the database and overwrites what it discards."""
    try:
        if path.stat().st_size > max_bytes:
            return None
        return path.read_bytes()
    except OSError:
        return None


def wal_tail_pages(wal: bytes, kept_frames: int) -> dict[int, bytes]:
    """The page images of the frames SQLite discarded: those at index ``kept_frames``
    and on that carry the header's salts (the log's current generation), the newest
    per page. Frames the garbage itself covers fail the salt test and are skipped."""
    if len(wal) < WAL_HEADER_BYTES:
        return {}
    ok, size, salts, _ = _wal_header(wal[:WAL_HEADER_BYTES])
    if not ok:
        return {}
    pages: dict[int, bytes] = {}
    frame_bytes = WAL_FRAME_HEADER_BYTES + size
    offset = WAL_HEADER_BYTES + kept_frames * frame_bytes
    while offset + frame_bytes <= len(wal):
        pgno, _, salt1, salt2 = struct.unpack(">IIII", wal[offset : offset + 16])
        if (salt1, salt2) == salts and pgno > 0:
            pages[pgno] = wal[offset + WAL_FRAME_HEADER_BYTES : offset + frame_bytes]
        offset += frame_bytes
    return pages


class _DamagedError(Exception):
    """A page, cell or record that does not parse (internal)."""


class _Pages:
    """Page access over the database file, the log's committed pages laid over it."""

    def __init__(self, f: BinaryIO, page_size: int, overlay: dict[int, bytes]) -> None:
        self._f = f
        self._page_size = page_size
        self._overlay = overlay
        f.seek(0, 2)
        self._count = f.tell() // page_size

    def numbers(self) -> Iterator[int]:
        top = max([self._count, *self._overlay])
        return iter(range(1, top + 1))

    def page(self, pgno: int) -> bytes | None:
        if pgno in self._overlay:
            return self._overlay[pgno]
        if not 1 <= pgno <= self._count:
            return None
        self._f.seek((pgno - 1) * self._page_size)
        data = self._f.read(self._page_size)
        return data if len(data) == self._page_size else None


def _db_page_size(header: bytes) -> tuple[int | None, int]:
    """(page size, reserved bytes per page) from a database header; (None, 0) if it is
    unreadable."""
    if len(header) < 100 or not header.startswith(_DB_MAGIC):
        return None, 0
    (size,) = struct.unpack(">H", header[16:18])
    size = 65536 if size == 1 else size
    reserved = header[20]
    if not _is_page_size(size) or reserved >= size // 2:
        return None, 0
    return size, reserved


def _is_page_size(n: int) -> bool:
    return 512 <= n <= 65536 and n & (n - 1) == 0


def _cells(
    page: bytes, pgno: int, usable: int, pages: _Pages
) -> Iterator[tuple[int, int | None, list[Value]]]:
    """(page type, rowid or None, the record's values) of each cell of a b-tree page."""
    start = 100 if pgno == 1 else 0
    kind = page[start]
    if kind not in (_INDEX_INTERIOR, _INDEX_LEAF, _TABLE_LEAF):
        return  # table interior pages hold no rows; anything else is no b-tree page
    interior = kind == _INDEX_INTERIOR
    (n_cells,) = struct.unpack(">H", page[start + 3 : start + 5])
    pointers = start + (12 if interior else 8)
    if pointers + 2 * n_cells > len(page):
        raise _DamagedError
    max_local = usable - 35 if kind == _TABLE_LEAF else (usable - 12) * 64 // 255 - 23
    min_local = (usable - 12) * 32 // 255 - 23
    for i in range(n_cells):
        (at,) = struct.unpack(">H", page[pointers + 2 * i : pointers + 2 * i + 2])
        if not pointers + 2 * n_cells <= at < usable:
            raise _DamagedError
        if interior:
            at += 4
        size, at = _varint(page, at)
        rowid = None
        if kind == _TABLE_LEAF:
            rowid, at = _varint(page, at)
        if size > _MAX_PAYLOAD_BYTES:
            raise _DamagedError
        payload = _payload(page, at, size, usable, max_local, min_local, pages)
        yield kind, rowid, _record(payload)


def _payload(  # noqa: PLR0917 (the format's own parameters)
    page: bytes, at: int, size: int, usable: int, max_local: int, min_local: int, pages: _Pages
) -> bytes:
    if size <= max_local:
        if at + size > usable:
            raise _DamagedError
        return page[at : at + size]
    local = min_local + (size - min_local) % (usable - 4)
    if local > max_local:
        local = min_local
    if at + local + 4 > usable:
        raise _DamagedError
    parts = [page[at : at + local]]
    (next_page,) = struct.unpack(">I", page[at + local : at + local + 4])
    remaining = size - local
    hops = 0
    while remaining > 0:
        hops += 1
        overflow = pages.page(next_page) if next_page else None
        if overflow is None or hops > size // (usable - 4) + 1:
            raise _DamagedError
        (next_page,) = struct.unpack(">I", overflow[:4])
        chunk = overflow[4 : min(usable, 4 + remaining)]
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if at + i >= len(data):
            raise _DamagedError
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    raise _DamagedError  # unreachable


_INT_BYTES: Final = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> list[Value]:
    """The values of an SQLite record (its header of serial types, then the values)."""
    header_size, at = _varint(payload, 0)
    if not 1 <= header_size <= len(payload):
        raise _DamagedError
    types: list[int] = []
    while at < header_size:
        serial, at = _varint(payload, at)
        types.append(serial)
    if at != header_size:
        raise _DamagedError
    values: list[Value] = []
    for serial in types:
        if serial == 0:
            values.append(None)
        elif serial in _INT_BYTES:
            n = _INT_BYTES[serial]
            if at + n > len(payload):
                raise _DamagedError
            values.append(int.from_bytes(payload[at : at + n], "big", signed=True))
            at += n
        elif serial == 7:
            if at + 8 > len(payload):
                raise _DamagedError
            values.append(struct.unpack(">d", payload[at : at + 8])[0])
            at += 8
        elif serial in (8, 9):
            values.append(serial - 8)
        elif serial >= 12:
            n = (serial - 12) // 2
            if at + n > len(payload):
                raise _DamagedError
            raw = payload[at : at + n]
            if serial % 2:
                try:
                    values.append(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    raise _DamagedError from err
            else:
                values.append(raw)
            at += n
        else:
            raise _DamagedError
    if at != len(payload):
        raise _DamagedError
    return values


def _classify(  # noqa: PLR0917
    scan: PageScan,
    on_record: RecordSink,
    kind: int,
    rowid: int | None,
    values: list[Value],
    stream_names: tuple[str, ...],
    counter_names: tuple[str, ...],
) -> None:
    """File one row under what its shape says it is; ignore anything else."""
    n_streams = len(stream_names)
    if kind == _TABLE_LEAF:
        # stream (id INTEGER PRIMARY KEY, name, last_seq, acked, pending, thin_after):
        # the id is the rowid, stored as NULL.
        if (
            len(values) == 6
            and values[0] is None
            and rowid is not None
            and 0 <= rowid < n_streams
            and values[1] == stream_names[rowid]
            and all(isinstance(v, int) and v >= 0 for v in values[2:4])
        ):
            name, last, acked = values[1], values[2], values[3]
            assert isinstance(name, str)
            assert isinstance(last, int)
            assert isinstance(acked, int)
            if acked <= last:
                old = scan.streams.get(name)
                if old is None or (last, acked) > old[1:]:
                    scan.streams[name] = (rowid, last, acked)
        return
    if len(values) == 4:
        sid, seq, ms, payload = values
        if (
            isinstance(sid, int)
            and 0 <= sid < n_streams
            and isinstance(seq, int)
            and seq >= 1
            and isinstance(ms, int)
            and _MIN_CREATED_MS <= ms <= _MAX_CREATED_MS
            and isinstance(payload, bytes)
        ):
            scan.records += 1
            on_record(sid, seq, ms, payload)
        return
    if len(values) == 2 and isinstance(values[0], str):
        key, value = values[0], values[1]
        if isinstance(value, bytes) and key.isascii() and len(key) <= 64:
            scan.meta[key] = value
        elif isinstance(value, int) and key in counter_names:
            scan.counters[key] = max(value, scan.counters.get(key, 0))
