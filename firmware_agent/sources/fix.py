"""Where the agent's fixes come from: a serial receiver, a receiver on TCP, an NMEA file.

Each source is a small frozen settings object with one method, ``readings(clock)``: an
async iterator of what the agent handles, in order. A receiver's readings are fixes; a
file's are fixes with the scans of its scan logs merged in by time, exactly as
``fleet-agent replay`` merges them (:class:`firmware_agent.replay.ScanMerge`). A live
source never ends (its reader reconnects); a file's ends when the file does.

- :class:`SerialGnss`: the receiver on a serial port (:class:`~firmware_agent.gnss.
  reader.GnssReader`);
- :class:`TcpGnss`: the same reader on a TCP stream of NMEA lines, as gpsd's
  ``gpsfake`` and ``fleet-sim play --tcp`` serve (and network NMEA multiplexers);
  reconnected like a receiver that went away;
- :class:`NmeaFile`: a recorded log played at ``speed`` times real time (0: as fast as
  possible), for the simulator, the demo and tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from firmware_agent.contract.fix import Fix
from firmware_agent.errors import ConfigError
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.reader import GnssReader, ReaderConfig
from firmware_agent.replay import ScanMerge
from firmware_agent.scan.log import read_scan_log
from firmware_agent.scan.types import Scan
from firmware_agent.sources.clock import Clock

log = logging.getLogger(__name__)

_FILE_CHUNK = 64 * 1024


class FixSource(Protocol):
    """What the agent reads fixes from."""

    @property
    def live(self) -> bool:
        """A receiver (True: it never ends) or a recording (False: it ends)."""
        ...

    def describe(self) -> str: ...

    def readings(self, clock: Clock) -> AsyncIterator[Fix | Scan]:
        """Fixes (and, for a file, its scans merged in), in the order to handle them."""
        ...


@dataclass(frozen=True, slots=True)
class SerialGnss:
    """A receiver on a serial port."""

    reader: ReaderConfig

    @property
    def live(self) -> bool:
        return True

    def describe(self) -> str:
        return f"serial {self.reader.port} at {self.reader.baudrate} baud"

    async def readings(self, clock: Clock) -> AsyncIterator[Fix | Scan]:
        async for fix in GnssReader(self.reader).fixes():
            yield fix


@dataclass(frozen=True, slots=True)
class TcpGnss:
    """A receiver speaking raw NMEA on TCP (``host:port``), read like a serial one."""

    host: str
    port: int
    # The reader's patience (idle flush, silence, backoff); its port/baud are unused.
    idle_flush_s: float = 0.25
    silence_reopen_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("the GNSS TCP host is empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"the GNSS TCP port must be 1..65535, got {self.port}")

    @property
    def live(self) -> bool:
        return True

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"

    async def readings(self, clock: Clock) -> AsyncIterator[Fix | Scan]:
        config = ReaderConfig(
            port=f"tcp://{self.host}:{self.port}",
            idle_flush_s=self.idle_flush_s,
            silence_reopen_s=self.silence_reopen_s,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
        )

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(self.host, self.port)

        async for fix in GnssReader(config, open_stream=connect).fixes():
            yield fix


@dataclass(frozen=True, slots=True)
class NmeaFile:
    """An NMEA log played as the receiver, with scan logs merged in by time.

    ``speed``: 1.0 real time, 10 ten times faster, 0 as fast as possible (pacing
    follows the fixes' times). ``scans``: scan logs (docs/scan-log.md) whose scans are
    handled before the first fix at or after them, the rest at the end.
    """

    path: Path
    speed: float = 0.0
    scans: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0, got {self.speed}")

    @property
    def live(self) -> bool:
        return False

    def describe(self) -> str:
        return f"file {self.path}" + "".join(f" + scans {p}" for p in self.scans)

    async def readings(self, clock: Clock) -> AsyncIterator[Fix | Scan]:
        scans: list[Scan] = []
        for path in self.scans:
            scans += await asyncio.to_thread(load_scan_log, path)
        merge = ScanMerge(scans)
        decoder = GnssDecoder()
        first: tuple[float, float] | None = None  # (first fix's time, loop time) for pacing
        loop = asyncio.get_running_loop()
        fixes = 0
        async for chunk in _chunks(self.path):
            for fix in decoder.feed(chunk) if chunk else decoder.flush():
                if fix.time is not None and self.speed > 0:
                    if first is None:
                        first = (fix.time.timestamp(), loop.time())
                    due = first[1] + (fix.time.timestamp() - first[0]) / self.speed
                    await asyncio.sleep(max(0.0, due - loop.time()))
                for scan in merge.before(fix):
                    yield scan
                fixes += 1
                yield fix
        for scan in merge.rest():
            yield scan
        log.info("input file %s done: %d fixes, %d scans", self.path, fixes, len(merge))


def load_scan_log(path: Path) -> list[Scan]:
    """A scan log's scans sorted by time; bad lines counted and logged once per kind.
    Blocking (reads the file)."""
    faults = FaultCounter()
    with path.open(encoding="utf-8", errors="replace") as lines:
        scans = sorted(read_scan_log(lines, faults), key=lambda s: s.time)
    log_first_seen(log, faults, f"scan log {path}")
    return scans


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes, read off the event loop, then one empty chunk (flush)."""
    with path.open("rb") as source:
        while True:
            chunk = await asyncio.to_thread(source.read, _FILE_CHUNK)
            yield chunk
            if not chunk:
                return
