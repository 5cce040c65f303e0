"""The outbox's sequence high-water mark, kept in a small file beside the database.

The outbox's sequence counters live in its SQLite file, in the same transaction as the
records; that is what makes them exact. But a file can be lost while the van runs on:
a damaged header that no tool can open, garbage in the write-ahead log that makes
SQLite discard committed transactions, a state directory restored from an old copy.
Numbering would then start again below seqs ingest already holds, and ingest, which
stores idempotently on (device, stream, seq), would take every new record for a
duplicate of an old one and drop it (issue 13, finding 5).

The mark is the outbox's promise that no seq above ``reserved`` was ever handed out,
kept outside the database: the outbox writes it (durably: temp file, fsync, rename,
directory fsync) *before* it commits a record numbered above the current reservation,
reserving a block of seqs at a time so that a write costs one file update per block.
``committed`` is a seq the outbox is known to have committed (at the last reservation,
open or clean close), so a database whose counter is found below it has lost
committed transactions. At a clean close the reservation shrinks to what was handed
out, so a file lost after a clean shutdown costs no unused seqs at all.

The file: ``{"v": 1, "streams": {"telemetry": {"reserved": R, "committed": C}, ...}}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from firmware_agent.contract.keys import write_file_atomically
from firmware_agent.contract.topics import MAX_SEQ, STREAMS

VERSION: Final = 1
# Seqs reserved past the last one handed out at each update of the mark: one file
# update per this many records of a stream (a day of 1 Hz telemetry is about 86).
SEQ_BLOCK: Final = 1024
_MAX_FILE_BYTES: Final = 4096


class SeqMarkError(ValueError):
    """The mark file exists but cannot be understood (the message says why)."""


@dataclass(frozen=True, slots=True)
class StreamMark:
    reserved: int = 0
    committed: int = 0


@dataclass(frozen=True, slots=True)
class SeqMark:
    """Per stream: the highest seq ever reserved (none above it was handed out) and a
    seq known to have been committed."""

    streams: Mapping[str, StreamMark]

    @classmethod
    def empty(cls) -> SeqMark:
        return cls({s: StreamMark() for s in STREAMS})

    def reserved(self, stream: str) -> int:
        return self.streams[stream].reserved

    def committed(self, stream: str) -> int:
        return self.streams[stream].committed

    def with_stream(self, stream: str, *, reserved: int, committed: int) -> SeqMark:
        """A copy with ``stream`` set; ``reserved`` never goes down."""
        streams = dict(self.streams)
        streams[stream] = StreamMark(max(reserved, self.reserved(stream)), committed)
        return SeqMark(streams)

    def to_bytes(self) -> bytes:
        body = {
            "v": VERSION,
            "streams": {
                s: {"reserved": m.reserved, "committed": m.committed}
                for s, m in self.streams.items()
            },
        }
        return json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n"


def parse_mark(data: bytes) -> SeqMark:
    """The mark in a mark file's bytes; :class:`SeqMarkError` saying what is wrong."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise SeqMarkError(f"not JSON: {err}") from err
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise SeqMarkError(f"not a version {VERSION} mark")
    streams = obj.get("streams")
    if not isinstance(streams, dict) or set(streams) != set(STREAMS):
        raise SeqMarkError(f"streams must be an object with exactly {', '.join(STREAMS)}")
    out: dict[str, StreamMark] = {}
    for stream in STREAMS:
        entry = streams[stream]
        if not isinstance(entry, dict):
            raise SeqMarkError(f"{stream}: not an object")
        reserved, committed = (_seq(stream, entry.get(k)) for k in ("reserved", "committed"))
        out[stream] = StreamMark(reserved, committed)
    return SeqMark(out)


def _seq(stream: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEQ:
        raise SeqMarkError(f"{stream}: {value!r:.40} is not a seq")
    return value


def load_mark(path: Path) -> SeqMark | None:
    """The mark at ``path``, ``None`` if there is none.

    :class:`SeqMarkError` if it exists and cannot be understood; :class:`OSError` if it
    cannot be read.
    """
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > _MAX_FILE_BYTES:
        raise SeqMarkError(f"larger than {_MAX_FILE_BYTES} bytes")
    return parse_mark(data)


def save_mark(path: Path, mark: SeqMark) -> None:
    """Durably replace the mark at ``path`` (temp file, fsync, rename, directory fsync).

    :class:`OSError` (a full disk: ``ENOSPC``) if it cannot; the old mark stays whole.
    """
    write_file_atomically(path, mark.to_bytes(), overwrite=True)


def remove_stale_temp_files(path: Path) -> int:
    """Remove the temp files a crash in :func:`save_mark` left beside ``path``."""
    removed = 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed += 1
    return removed
