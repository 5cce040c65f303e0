"""Reading a GNSS receiver from a serial device, for as long as the agent runs.

The receiver is a USB or UART device that can vanish at any moment (a loose USB plug,
a brown-out, a receiver reset) and come back under the same name (udev's
``/dev/fleet/gnss`` symlink). :class:`GnssReader` opens it with pyserial through
pyserial-asyncio-fast (non-blocking reads of whatever the kernel holds, never a
per-byte ``readline``), feeds the bytes to a :class:`GnssDecoder`, and on any failure
closes, backs off (capped, jittered) and reopens. Nothing a receiver sends or fails to
send ends the iteration; only cancelling the consumer does. That holds even against a
bug in decoding: an exception out of the decoder (which should never raise) is counted
in ``stats["decode_errors"]``, logged with its traceback the first time and then at
every doubling of the count, and the reader reads on (the decoder likewise survives a
sentence that raises inside it: the fault ``internal_error``).

The same loop reads a receiver on TCP (gpsd's ``gpsfake``, ``fleet-sim play --tcp``,
a network NMEA server): ``open_stream`` opens a connection instead of the port
(:class:`firmware_agent.sources.fix.TcpGnss`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import serial
import serial_asyncio_fast

from firmware_agent.contract.backoff import Backoff
from firmware_agent.contract.fix import Fix
from firmware_agent.errors import ConfigError, DeviceUnavailableError
from firmware_agent.faults import format_counts, log_first_seen
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.sentences import INTERNAL_ERROR

_LOG = logging.getLogger(__name__)

# Opens the byte stream the receiver talks on (the serial port by default; a TCP
# connection for a gpsd-style NMEA server: firmware_agent.sources.fix).
StreamOpener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """How to reach the receiver and how patient to be with it."""

    port: str
    baudrate: int = 9600
    # Close the open epoch when the line is quiet this long. Receivers send each epoch
    # as one burst; at 1-5 Hz the quiet gap is what tells a trailing GSA from a leading
    # one. Kept well above scheduling jitter so a burst is never cut in two.
    idle_flush_s: float = 0.25
    # Nothing at all for this long: the receiver is wedged or the port is wrong; reopen.
    silence_reopen_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # Period of the INFO summary of decoder counters (faults are logged once per kind).
    summary_interval_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.port:
            raise ConfigError("the GNSS port is empty")
        if self.baudrate <= 0 or self.idle_flush_s <= 0:
            raise ConfigError("baudrate and idle_flush_s must be > 0")
        if self.silence_reopen_s <= self.idle_flush_s:
            raise ConfigError("silence_reopen_s must exceed idle_flush_s")


class GnssReader:
    """``async for fix in reader.fixes()``: validated fixes from a serial receiver.

    ``stats`` counts ``opens``, ``open_failures``, ``disconnects``,
    ``silent_reopens`` and ``decode_errors`` (exceptions out of the decoder, survived);
    ``decoder`` holds the decoding counters. ``connected`` says whether the device is
    open right now. The counters are logged every ``summary_interval_s`` and when the
    reader stops.
    """

    def __init__(
        self,
        config: ReaderConfig,
        *,
        decoder: GnssDecoder | None = None,
        clock: Callable[[], float] = time.monotonic,
        open_stream: StreamOpener | None = None,
    ) -> None:
        self.config = config
        self._open_stream = open_stream if open_stream is not None else self._open_serial
        self.decoder = decoder if decoder is not None else GnssDecoder()
        self.stats: Counter[str] = Counter()
        self.connected = False
        self._clock = clock
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._last_summary_s = clock()
        # The counts of errors (reader-level, decoder-internal) at their last log line.
        self._errors_logged: dict[str, int] = {}

    async def fixes(self) -> AsyncGenerator[Fix, None]:
        try:
            async with contextlib.aclosing(self._fixes()) as fixes:
                async for fix in fixes:
                    yield fix
        finally:
            _LOG.info(
                "GNSS %s stopped: %s %s",
                self.config.port,
                self.decoder.summary(),
                format_counts(self.stats),
            )

    async def _fixes(self) -> AsyncGenerator[Fix, None]:
        cfg = self.config
        while True:
            try:
                reader, writer = await self._open_stream()
            except (serial.SerialException, OSError, ValueError) as err:
                self._open_failed(err)
                await asyncio.sleep(self._backoff.next_delay_s())
                continue
            self.stats["opens"] += 1
            self.connected = True
            _LOG.info("GNSS receiver open on %s", cfg.port)
            try:
                async with contextlib.aclosing(self._read(reader)) as fixes:
                    async for fix in fixes:
                        yield fix
            except (serial.SerialException, OSError, DeviceUnavailableError) as err:
                # One line per disconnection: an event, not a flood.
                self.stats["disconnects"] += 1
                _LOG.warning("GNSS receiver on %s lost: %s", cfg.port, err)
            finally:
                self.connected = False
                writer.close()
            # Whatever was complete before the line died is still a fix.
            for fix in self._decode(self.decoder.flush, self._clock()):
                yield fix
            await asyncio.sleep(self._backoff.next_delay_s())

    async def _open_serial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # exclusive: a second opener (gpsd, ModemManager probing ports) would
        # silently steal half of the bytes; better to fail loudly and retry.
        return await serial_asyncio_fast.open_serial_connection(
            url=self.config.port, baudrate=self.config.baudrate, exclusive=True
        )

    async def _read(self, reader: asyncio.StreamReader) -> AsyncGenerator[Fix, None]:
        cfg = self.config
        decoder = self.decoder
        quiet_s = 0.0
        first_data = True
        while True:
            try:
                async with asyncio.timeout(cfg.idle_flush_s):
                    data = await reader.read(4096)
            except TimeoutError:
                for fix in self._decode(decoder.close_epoch, self._clock()):
                    yield fix
                quiet_s += cfg.idle_flush_s
                if quiet_s >= cfg.silence_reopen_s:
                    self.stats["silent_reopens"] += 1
                    raise DeviceUnavailableError(
                        f"no data for {cfg.silence_reopen_s:g} s"
                    ) from None
                continue
            if not data:
                raise DeviceUnavailableError("end of file on the device")
            if first_data:
                # Only data proves the device works: a port that opens and then fails
                # at once must keep backing off, not retry in a tight loop.
                self._backoff.reset()
                first_data = False
            quiet_s = 0.0
            now_s = self._clock()
            try:
                fixes = decoder.feed(data, now_s)
            except Exception as err:  # a bug; the receiver goes on being read
                self._decode_failed(err)
                fixes = []
            for fix in fixes:
                yield fix
            self._log_faults(now_s)

    def _decode(self, step: Callable[[float], list[Fix]], now_s: float) -> list[Fix]:
        try:
            return step(now_s)
        except Exception as err:  # as in _read
            self._decode_failed(err)
            return []

    def _decode_failed(self, err: Exception) -> None:
        self.stats["decode_errors"] += 1
        self._log_error("decode_errors", self.stats["decode_errors"], err)

    def _log_error(self, kind: str, n: int, err: BaseException) -> None:
        # A bug, never the receiver's fault: its traceback the first time, then again
        # each time the count has doubled (a flood costs a log line per doubling).
        if n < 2 * self._errors_logged.get(kind, 0):
            return
        self._errors_logged[kind] = n
        _LOG.error(
            "GNSS input on %s: decoding raised %s (%s %d so far); reading on",
            self.config.port,
            type(err).__name__,
            kind,
            n,
            exc_info=err,
        )

    def _open_failed(self, err: Exception) -> None:
        self.stats["open_failures"] += 1
        n = self.stats["open_failures"]
        # The first failure, then one reminder per power of two: an absent receiver
        # costs a handful of log lines a day, not one per retry.
        if n & (n - 1) == 0:
            _LOG.warning(
                "GNSS receiver %s unavailable (%d attempts so far): %s", self.config.port, n, err
            )

    def _log_faults(self, now_s: float) -> None:
        decoder = self.decoder
        log_first_seen(_LOG, decoder.faults, f"GNSS input on {self.config.port}")
        if (err := decoder.last_internal_error) is not None:
            decoder.last_internal_error = None
            self._log_error(INTERNAL_ERROR, decoder.faults.counts[INTERNAL_ERROR], err)
        if now_s - self._last_summary_s >= self.config.summary_interval_s:
            self._last_summary_s = now_s
            _LOG.info(
                "GNSS %s: %s %s",
                self.config.port,
                self.decoder.summary(),
                format_counts(self.stats),
            )
