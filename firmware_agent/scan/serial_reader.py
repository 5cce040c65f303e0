"""Reading a barcode scanner in serial (CDC-ACM / UART) mode, for as long as the agent runs.

A serial scanner sends each code as one line ended by CR, LF or CRLF (scanners ship
with any of the three). The scanner hangs off a USB cable in a van cab: it is
unplugged, kicked and replugged, and comes back under the same udev name
(``/dev/fleet/scanner``). :class:`SerialScanner` reads it through pyserial-asyncio-fast
(non-blocking reads of whatever the kernel holds), frames lines with
:class:`LineFramer`, and on any failure closes, backs off (capped, jittered) and
reopens. Nothing a scanner sends or fails to send ends the iteration; only
cancelling the consumer does.

The reconnect loop follows :mod:`firmware_agent.gnss.reader` (which this module may
not change); what differs is that a scanner is silent for hours between deliveries,
so silence is never a reason to reopen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import serial
import serial_asyncio_fast

from firmware_agent.contract.backoff import Backoff
from firmware_agent.contract.parcels import MAX_SCAN_BYTES
from firmware_agent.errors import ConfigError, DeviceUnavailableError
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.scan.types import Scan, utc_now

_LOG = logging.getLogger(__name__)
_TERMINATOR: Final = re.compile(rb"[\r\n]")
_READ_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    """How to reach a serial scanner and how patient to be with it.

    ``max_line_chars`` is counted in bytes (a scanner sends ASCII, where the two are
    the same); longer lines are cut. It must exceed
    :data:`firmware_agent.contract.parcels.MAX_SCAN_BYTES`, so that a cut line is always
    rejected by the parser as too long instead of being recorded truncated.
    """

    port: str
    baudrate: int = 9600
    max_line_chars: int = 512
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.port:
            raise ConfigError("the scanner port is empty")
        if self.baudrate <= 0:
            raise ConfigError(f"baudrate must be > 0, got {self.baudrate}")
        if self.max_line_chars <= MAX_SCAN_BYTES:
            raise ConfigError(
                f"max_line_chars must exceed {MAX_SCAN_BYTES} (the longest scan the "
                f"parser accepts), got {self.max_line_chars}"
            )
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError("need 0 < backoff_initial_s <= backoff_max_s")


class LineFramer:
    """Bytes in, lines of text out; pure, no I/O.

    CR, LF and CRLF all end a line; empty lines are dropped (so a CRLF split across
    two reads is one terminator, not an extra empty scan). A line is decoded as
    UTF-8; undecodable bytes become U+FFFD and count as ``scan_bad_utf8`` (the line is
    still returned, so the driver gets a red signal rather than silence). A line
    longer than ``max_line_bytes`` is cut at that length, the rest of it dropped up to
    its terminator, and counted as ``scan_line_too_long``. :meth:`discard` drops a
    partial line (the device went away mid-line) and counts ``scan_partial_line``.
    """

    __slots__ = ("_buffer", "_cut", "_max", "faults")

    def __init__(self, max_line_bytes: int, faults: FaultCounter | None = None) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._cut = False
        self.faults = faults if faults is not None else FaultCounter()

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        for match in _TERMINATOR.finditer(data):
            self._append(data[start : match.start()])
            line = self._take()
            if line is not None:
                lines.append(line)
            start = match.end()
        self._append(data[start:])
        return lines

    def discard(self) -> None:
        if self._buffer:
            self.faults.add("scan_partial_line", bytes(self._buffer))
        self._buffer.clear()
        self._cut = False

    def _append(self, part: bytes) -> None:
        if self._cut or not part:
            return
        room = self._max - len(self._buffer)
        if len(part) > room:
            self._buffer += part[:room]
            self._cut = True
        else:
            self._buffer += part

    def _take(self) -> str | None:
        if not self._buffer:
            return None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._cut:
            self._cut = False
            self.faults.add("scan_line_too_long", data)
            # A cut may split a character; that is part of the same fault.
            return data.decode("utf-8", errors="replace")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.faults.add("scan_bad_utf8", data)
            return data.decode("utf-8", errors="replace")


class SerialScanner:
    """``async for scan in scanner.scans()``: every line a serial scanner sends.

    Lines are not parsed here: garbage is yielded too, for the pipeline's parser to
    reject (and signal). ``stats`` counts ``opens``, ``open_failures`` and
    ``disconnects``; ``faults`` the framing faults (each kind logged once);
    ``connected`` says whether the device is open right now. ``clock`` gives each
    scan's time (when its terminator arrived).
    """

    def __init__(self, config: ScannerConfig, clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self.stats: Counter[str] = Counter()
        self.faults = FaultCounter()
        self.connected = False
        self._clock = clock
        self._framer = LineFramer(config.max_line_chars, self.faults)
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)

    async def scans(self) -> AsyncGenerator[Scan, None]:
        cfg = self.config
        while True:
            try:
                # exclusive: a second opener (ModemManager probing a new ttyACM) would
                # silently steal half of the bytes; better to fail loudly and retry.
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=cfg.port, baudrate=cfg.baudrate, exclusive=True
                )
            except (serial.SerialException, OSError, ValueError) as err:
                self._open_failed(err)
                await asyncio.sleep(self._backoff.next_delay_s())
                continue
            self.stats["opens"] += 1
            self.connected = True
            _LOG.info("scanner open on %s", cfg.port)
            try:
                async with contextlib.aclosing(self._read(reader)) as scans:
                    async for scan in scans:
                        yield scan
            except (serial.SerialException, OSError, DeviceUnavailableError) as err:
                # One line per disconnection: an event, not a flood.
                self.stats["disconnects"] += 1
                _LOG.warning("scanner on %s lost: %s", cfg.port, err)
            finally:
                self.connected = False
                writer.close()
                # Half a code from before the cable came out must not be glued to the
                # first code after it goes back in.
                self._framer.discard()
                log_first_seen(_LOG, self.faults, f"scanner on {cfg.port}")
            await asyncio.sleep(self._backoff.next_delay_s())

    async def _read(self, reader: asyncio.StreamReader) -> AsyncGenerator[Scan, None]:
        first_data = True
        while True:
            data = await reader.read(_READ_BYTES)
            if not data:
                raise DeviceUnavailableError("end of file on the device")
            if first_data:
                # Only data proves the device works: a port that opens and then fails
                # at once must keep backing off, not retry in a tight loop.
                self._backoff.reset()
                first_data = False
            lines = self._framer.feed(data)
            if lines:
                now = self._clock()
                for line in lines:
                    yield Scan(time=now, raw=line, source="serial")
            log_first_seen(_LOG, self.faults, f"scanner on {self.config.port}")

    def _open_failed(self, err: Exception) -> None:
        self.stats["open_failures"] += 1
        n = self.stats["open_failures"]
        # The first failure, then one reminder per power of two: an absent scanner
        # costs a handful of log lines a day, not one per retry.
        if n & (n - 1) == 0:
            _LOG.warning(
                "scanner %s unavailable (%d attempts so far): %s", self.config.port, n, err
            )
