"""Playing a day into a receiver: timed chunks of NMEA, paced or as fast as possible.

A :class:`TimedChunk` is one epoch's bytes and when, relative to the first, the
receiver sends it. Chunks come from a scenario (:func:`epoch_chunks`) or from a
recorded NMEA log (:func:`nmea_log_chunks`, which groups sentences into epochs by
their time field). :func:`play` writes them to a sink at real time times a speed-up,
or as fast as possible, yielding to the event loop between chunks. Other ports (a
barcode scanner) play in step through :class:`SideStream`: one pacing loop serves
every port, so their order holds at any speed, as fast as possible included.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from simulator.epoch import Epoch, EpochView, Talker
from simulator.errors import ConfigError, NmeaLogError
from simulator.nmea_writer import epoch_bytes
from simulator.receiver import Sink

MAX_LAG_S = 1.0  # further behind than this, pacing starts afresh rather than bursting
_TIMED_TYPES = {b"RMC": 1, b"GGA": 1, b"GNS": 1, b"ZDA": 1, b"GLL": 5}  # type -> time field


@dataclass(frozen=True, slots=True)
class TimedChunk:
    """Bytes a receiver sends together, ``offset_s`` after the first chunk.

    ``time`` is the receiver's UTC time when known; ``epoch`` what is known of the
    truth: the generating epoch of a simulated day, a ``truth.csv`` row attached by
    :func:`attach_truth`, or ``None`` for a bare recorded log.
    """

    offset_s: float
    data: bytes
    time: datetime | None = None
    epoch: EpochView | None = None


@dataclass(frozen=True, slots=True)
class PlayProgress:
    """Where a playback is, passed to the ``on_chunk`` hook after each write."""

    index: int
    total: int | None
    offset_s: float
    time: datetime | None
    epoch: EpochView | None
    bytes_written: int
    dropped_bytes: int

    @property
    def fraction(self) -> float | None:
        """Share of the chunks played, when the total is known."""
        return None if not self.total else (self.index + 1) / self.total


@dataclass(frozen=True, slots=True)
class PlayStats:
    """What a finished (or stopped) playback did; ``side_*`` count the side streams."""

    chunks: int
    bytes_written: int
    dropped_bytes: int
    wall_s: float
    side_chunks: int = 0
    side_bytes_written: int = 0
    side_dropped_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SideStream:
    """Chunks for another port, played in step with the main stream.

    Offsets share the main stream's clock (0 is the main stream's first chunk), so
    a chunk goes out after every main chunk of an earlier or equal offset.
    """

    chunks: Iterable[TimedChunk]
    sink: Sink


def epoch_chunks(epochs: Iterable[Epoch], talker: Talker) -> Iterator[TimedChunk]:
    """One chunk per epoch, rendered with the NMEA writer."""
    start: datetime | None = None
    for epoch in epochs:
        if start is None:
            start = epoch.time
        yield TimedChunk(
            (epoch.time - start).total_seconds(), epoch_bytes(epoch, talker), epoch.time, epoch
        )


def attach_truth(chunks: Iterable[TimedChunk], truth: Iterable[EpochView]) -> Iterator[TimedChunk]:
    """``chunks`` with the truth row of the same time attached, where there is one.

    Both are in time order; rows without a chunk are skipped, chunks without a row
    pass unchanged (an edited log still plays).
    """
    rows = iter(truth)
    row = next(rows, None)
    for chunk in chunks:
        while row is not None and chunk.time is not None and row.time < chunk.time:
            row = next(rows, None)
        if row is not None and chunk.time is not None and row.time == chunk.time:
            yield TimedChunk(chunk.offset_s, chunk.data, chunk.time, row)
        else:
            yield chunk


def nmea_log_chunks(path: Path) -> Iterator[TimedChunk]:
    """A recorded NMEA log as epochs: a new chunk begins when the time field changes.

    Lines are sent as recorded (bad ones too: a replay is faithful); ``#`` comment
    lines and blank lines are skipped, as gpsfake does. Offsets come from the time of
    day, across midnight; a time going backwards (a glitch in the log) does not make
    the offset go backwards. Raises :class:`NmeaLogError` for an unreadable file or a
    log without any timed sentence (RMC, GGA, GNS, GLL, ZDA).
    """
    try:
        f = path.open("rb")
    except OSError as err:
        raise NmeaLogError(path, f"cannot read: {err}") from err
    with f:
        pending: list[bytes] = []
        current_tod: float | None = None
        first_tod: float | None = None
        day_offset_s = 0.0
        last_offset_s = 0.0
        current_date: date | None = None
        chunk_date: date | None = None
        for raw in f:
            if not raw.strip() or raw.startswith(b"#"):
                continue
            tod, line_date = _sentence_time(raw)
            if line_date is not None:
                current_date = line_date
            if tod is not None and tod != current_tod:
                if pending and first_tod is not None and current_tod is not None:
                    yield _chunk(pending, last_offset_s, current_tod, chunk_date or current_date)
                    pending = []
                if first_tod is None:
                    first_tod = tod
                elif current_tod is not None and tod < current_tod - 43_200:
                    day_offset_s += 86_400.0  # midnight passed
                last_offset_s = max(last_offset_s, tod + day_offset_s - first_tod)
                current_tod = tod
                chunk_date = line_date or current_date
            pending.append(raw)
        if first_tod is None or current_tod is None:
            raise NmeaLogError(
                path, "no sentence with a time (RMC, GGA, GNS, GLL or ZDA): cannot pace it"
            )
        if pending:
            yield _chunk(pending, last_offset_s, current_tod, chunk_date or current_date)


def _chunk(lines: list[bytes], offset_s: float, tod: float, day: date | None) -> TimedChunk:
    when = None
    if day is not None:
        when = datetime.combine(day, time(tzinfo=UTC)) + timedelta(seconds=tod)
    return TimedChunk(offset_s, b"".join(lines), when)


def _sentence_time(raw: bytes) -> tuple[float | None, date | None]:
    """Time of day (s) and date carried by one sentence, where it has them."""
    line = raw.strip()
    if not line.startswith((b"$", b"!")) or len(line) < 6:
        return None, None
    body = line[1:].split(b"*", 1)[0]
    fields = body.split(b",")
    kind = fields[0][2:]
    index = _TIMED_TYPES.get(kind)
    if index is None or len(fields) <= index:
        return None, None
    tod = _time_of_day(fields[index])
    day: date | None = None
    try:
        if kind == b"RMC" and len(fields) > 9 and len(fields[9]) == 6:
            d = fields[9]
            day = date(2000 + int(d[4:6]), int(d[2:4]), int(d[0:2]))
        elif kind == b"ZDA" and len(fields) > 4 and fields[4]:
            day = date(int(fields[4]), int(fields[3]), int(fields[2]))
    except ValueError:
        day = None
    return tod, day


def _time_of_day(field: bytes) -> float | None:
    if len(field) < 6:
        return None
    try:
        hours, minutes = int(field[0:2]), int(field[2:4])
        seconds = float(field[4:])
    except ValueError:
        return None
    if hours > 23 or minutes > 59 or not 0 <= seconds < 61:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _tagged(chunks: Iterable[TimedChunk], port: int) -> Iterator[tuple[float, int, TimedChunk]]:
    for chunk in chunks:
        yield chunk.offset_s, port, chunk


async def play(
    chunks: Iterable[TimedChunk],
    sink: Sink,
    *,
    speedup: float | None = 1.0,
    total: int | None = None,
    on_chunk: Callable[[PlayProgress], None] | None = None,
    side: Sequence[SideStream] = (),
) -> PlayStats:
    """Write ``chunks`` to ``sink`` with pacing; return what was done.

    ``speedup`` 1.0 is real time, 10.0 ten times faster, ``None`` as fast as possible
    (still yielding to the loop after every chunk, so servers keep serving). The first
    chunk goes out at once. ``on_chunk`` is called after each write of a main chunk;
    keep it cheap. ``side`` streams are merged in by offset (each must be in offset
    order, as the main one) and written to their own sinks; at equal offsets the main
    chunk goes first. Cancel the task to stop; sinks are left to their owners to close.
    """
    if speedup is not None and speedup <= 0:
        raise ConfigError(f"speedup must be positive, got {speedup}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    anchor_wall = started
    anchor_offset_s = 0.0
    written = dropped = played = 0
    side_written = side_dropped = side_played = 0
    merged = heapq.merge(
        _tagged(chunks, 0),
        *(_tagged(stream.chunks, n + 1) for n, stream in enumerate(side)),
        key=lambda item: (item[0], item[1]),
    )
    for offset_s, port, chunk in merged:
        if speedup is None:
            await asyncio.sleep(0)
        else:
            due = anchor_wall + (offset_s - anchor_offset_s) / speedup
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > MAX_LAG_S:
                # Far behind (a stalled loop): re-anchor instead of firing a burst.
                anchor_wall, anchor_offset_s = loop.time(), offset_s
        if port:
            sent = side[port - 1].sink.write(chunk.data)
            side_written += sent
            side_dropped += len(chunk.data) - sent
            side_played += 1
            continue
        sent = sink.write(chunk.data)
        written += sent
        dropped += len(chunk.data) - sent
        if on_chunk is not None:
            on_chunk(
                PlayProgress(
                    played, total, chunk.offset_s, chunk.time, chunk.epoch, written, dropped
                )
            )
        played += 1
    return PlayStats(
        played,
        written,
        dropped,
        loop.time() - started,
        side_played,
        side_written,
        side_dropped,
    )
