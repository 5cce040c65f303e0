"""Where the agent's scans come from: serial scanners, keyboard-mode (HID) scanners,
scan logs; several at once (a ring scanner on the driver's finger and a handheld).

Each source is a small frozen settings object with ``scans(clock)``: an async iterator
of :class:`~firmware_agent.scan.types.Scan`, timed by the agent's clock. A scanner's
never ends (its reader reopens an unplugged device); a log's ends when it is played.

- :class:`SerialScan`: a CDC-ACM / serial scanner (:class:`~firmware_agent.scan.
  serial_reader.SerialScanner`);
- :class:`HidScan`: a scanner in USB keyboard mode, read (and grabbed) through evdev
  (:class:`~firmware_agent.scan.hid_reader.HidScanner`). With ``event_stream`` the
  device is a FIFO or file of raw ``struct input_event`` records instead, exactly the
  bytes ``/dev/input/eventN`` gives (``cat /dev/input/event3 > scans.events`` records
  them): the documented hook through which tests and captured sessions drive the real
  HID path where there is no ``/dev/uinput`` (:class:`EventStreamDevice`);
- :class:`ScanLog`: a scan log (docs/scan-log.md). Beside a live receiver each scan is
  handled when the clock reaches its time (a log of the past plays at once); beside an
  NMEA file it is merged into the file by time instead, as replay does
  (:func:`firmware_agent.sources.inputs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from evdev import InputEvent

from firmware_agent.errors import ConfigError
from firmware_agent.scan.hid_reader import HidScanner
from firmware_agent.scan.serial_reader import ScannerConfig, SerialScanner
from firmware_agent.scan.types import Scan
from firmware_agent.sources.clock import Clock
from firmware_agent.sources.fix import load_scan_log

log = logging.getLogger(__name__)


class ScanSource(Protocol):
    """What the agent reads scans from."""

    def describe(self) -> str: ...

    def scans(self, clock: Clock) -> AsyncIterator[Scan]: ...


@dataclass(frozen=True, slots=True)
class SerialScan:
    """A scanner on a serial port (CDC-ACM)."""

    config: ScannerConfig

    def describe(self) -> str:
        return f"serial scanner {self.config.port}"

    async def scans(self, clock: Clock) -> AsyncIterator[Scan]:
        async for scan in SerialScanner(self.config, clock=clock.now).scans():
            yield scan


@dataclass(frozen=True, slots=True)
class HidScan:
    """A keyboard-mode scanner's evdev node (``/dev/fleet/scanner-hid``), grabbed so
    its keystrokes reach no console; ``event_stream``: a FIFO/file of raw input events
    instead (see the module doc)."""

    device: str
    grab: bool = True
    event_stream: bool = False

    def __post_init__(self) -> None:
        if not self.device:
            raise ConfigError("the HID scanner's device is empty")

    def describe(self) -> str:
        kind = "HID event stream" if self.event_stream else "HID scanner"
        return f"{kind} {self.device}"

    async def scans(self, clock: Clock) -> AsyncIterator[Scan]:
        if self.event_stream:
            reader = HidScanner(
                self.device, grab=False, clock=clock.now, open_device=EventStreamDevice
            )
        else:
            reader = HidScanner(self.device, grab=self.grab, clock=clock.now)
        async for scan in reader.scans():
            yield scan


@dataclass(frozen=True, slots=True)
class ScanLog:
    """A scan log played against the clock (or merged into an NMEA file's fixes)."""

    path: Path

    def describe(self) -> str:
        return f"scan log {self.path}"

    async def scans(self, clock: Clock) -> AsyncIterator[Scan]:
        for scan in await asyncio.to_thread(load_scan_log, self.path):
            wait_s = (scan.time - clock.now()).total_seconds()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            yield scan


# struct input_event on Linux: struct timeval (two longs), u16 type, u16 code, s32 value.
INPUT_EVENT: Final = struct.Struct("llHHi")


class EventStreamDevice:
    """A :class:`~firmware_agent.scan.hid_reader.HidDevice` reading raw ``struct
    input_event`` records from a FIFO or a file instead of an evdev node.

    The events are the kernel's own format, decoded into :class:`evdev.InputEvent` as
    evdev does, and go through the same :class:`~firmware_agent.scan.hid_reader.
    KeyDecoder` and reader loop as a real keyboard's. A FIFO whose writer closes is a
    scanner unplugged (the reader reopens it and waits for the next writer); a file
    played to its end stays silent. Opening never blocks (``O_NONBLOCK``); reads wait
    on the event loop, never in a thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._fifo = stat.S_ISFIFO(os.fstat(self._fd).st_mode)

    def grab(self) -> None:
        pass  # nothing else reads a stream: there is nothing to grab

    def ungrab(self) -> None:
        pass

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def async_read_loop(self) -> AsyncIterator[InputEvent]:
        loop = asyncio.get_running_loop()
        pending = b""
        # A FIFO read before any writer came reads as its end: wait for a writer once.
        waited = False
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                await _readable(loop, self._fd)
                waited = True
                continue
            if not data:
                if not self._fifo:
                    await asyncio.Event().wait()  # a recording played to its end
                if waited:
                    return  # the writer went away: unplugged
                await _readable(loop, self._fd)
                waited = True
                continue
            waited = True
            pending += data
            whole = len(pending) - len(pending) % INPUT_EVENT.size
            for sec, usec, kind, code, value in INPUT_EVENT.iter_unpack(pending[:whole]):
                yield InputEvent(sec, usec, kind, code, value)
            pending = pending[whole:]


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)


def write_events(events: list[tuple[int, int, int]], *, time_s: float = 0.0) -> bytes:
    """``(type, code, value)`` events as the raw bytes an evdev node gives: what to
    write into an :class:`EventStreamDevice`'s FIFO (the simulator and tests)."""
    sec, usec = int(time_s), int((time_s % 1) * 1e6)
    return b"".join(INPUT_EVENT.pack(sec, usec, t, c, v) for t, c, v in events)
