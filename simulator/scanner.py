"""A fake barcode scanner: a serial (CDC-ACM) scanner on a pseudo-terminal.

:class:`PtyScanner` is the scanner's side of the wire, as
:class:`~simulator.receiver.PtyReceiver` is the GNSS receiver's: the agent opens the
pty's link path (udev's ``/dev/fleet/scanner``) like the real device, and
:meth:`PtyScanner.scan` sends one read, the way a scanner in serial mode does: the
symbol's text followed by a terminator (CR LF by default, the usual factory setting).
Like a UART it never waits for its reader; what nobody reads is dropped and counted.

:func:`scan_chunks` turns a scan log into timed chunks that
:func:`~simulator.playback.play` sends beside the NMEA stream
(:class:`~simulator.playback.SideStream`), so scans reach the agent at the right
moment of the drive, at any speed-up or as fast as possible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from simulator.labels import raw_bytes
from simulator.playback import TimedChunk
from simulator.receiver import PtyReceiver
from simulator.scans import parse_scan_time

DEFAULT_TERMINATOR = "\r\n"


def scan_bytes(raw: str, terminator: str = DEFAULT_TERMINATOR) -> bytes:
    """The bytes a scanner sends for one read: ``raw`` (see :func:`raw_bytes`) + terminator."""
    return raw_bytes(raw) + terminator.encode("ascii")


class PtyScanner:
    """A serial barcode scanner on a pty, reached through ``link_path``.

    An async context manager around a :class:`PtyReceiver` (same link handling, same
    :meth:`unplug`/:meth:`replug` to act out a USB scanner pulled and put back).
    ``scans`` counts the reads sent, delivered or not; ``dropped_bytes`` what nobody read.
    """

    def __init__(self, link_path: Path) -> None:
        self._port = PtyReceiver(link_path)
        self.scans = 0

    async def __aenter__(self) -> Self:
        await self._port.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._port.__aexit__(exc_type, exc, tb)

    @property
    def path(self) -> Path:
        """The link path the agent opens."""
        return self._port.path

    @property
    def device(self) -> Path:
        """The pty's slave device (``/dev/pts/N``)."""
        return self._port.device

    @property
    def plugged(self) -> bool:
        return self._port.plugged

    @property
    def reader_attached(self) -> bool:
        """Whether someone holds the port open."""
        return self._port.reader_attached

    @property
    def bytes_written(self) -> int:
        return self._port.bytes_written

    @property
    def dropped_bytes(self) -> int:
        return self._port.dropped_bytes

    @property
    def plug_count(self) -> int:
        return self._port.plug_count

    async def wait_for_reader(self, *, poll_s: float = 0.05) -> None:
        """Return once someone holds the port open."""
        await self._port.wait_for_reader(poll_s=poll_s)

    def scan(self, raw: str, terminator: str = DEFAULT_TERMINATOR) -> None:
        """Send one read: ``raw`` as UTF-8 (non-UTF-8 bytes held as surrogates go out
        as the raw bytes) and ``terminator``. Never blocks; undelivered bytes are dropped.
        """
        self.scans += 1
        self._port.write(scan_bytes(raw, terminator))

    def write(self, data: bytes) -> int:
        """Send bytes as they are (a :class:`~simulator.receiver.Sink`, for playback)."""
        return self._port.write(data)

    def unplug(self) -> None:
        """Pull the scanner out: the reader gets EOF/EIO, the link goes away."""
        self._port.unplug()

    def replug(self) -> None:
        """Plug a scanner back in: a fresh pty behind the same link."""
        self._port.replug()

    def close(self) -> None:
        """Unplug for good. Safe to call more than once."""
        self._port.close()


def scan_chunks(
    lines: Iterable[Mapping[str, Any]],
    start: datetime,
    *,
    terminator: str = DEFAULT_TERMINATOR,
) -> Iterator[TimedChunk]:
    """One chunk per scan-log line, ``offset_s`` after ``start`` (clamped at 0), in time order.

    ``start`` is the time of the first chunk of the stream the scans play beside (a
    scenario's first epoch), so both share one clock. Lines need ``time`` and ``raw``
    as in a scan log (:func:`~simulator.scans.read_scan_log` checks them).
    """
    timed = sorted(
        ((parse_scan_time(str(line["time"])), str(line["raw"])) for line in lines),
        key=lambda item: item[0],
    )
    for when, raw in timed:
        offset_s = max(0.0, (when - start).total_seconds())
        yield TimedChunk(offset_s, scan_bytes(raw, terminator), when)
