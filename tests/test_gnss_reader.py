"""The serial reader on a real pseudo-terminal, played by the simulator's receiver.

The receiver is :class:`simulator.receiver.PtyReceiver`, the same hardware fake testers
run: a pty with a stable symlink (as udev's /dev/fleet/gnss), which can be unplugged
(the reader's open file gets EIO, the link disappears) and plugged back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_agent.contract.fix import Fix
from firmware_agent.errors import ConfigError
from firmware_agent.gnss.reader import GnssReader, ReaderConfig
from simulator.receiver import PtyReceiver
from tests.nmea import lines, ublox_cycle

pytestmark = pytest.mark.usefixtures("no_blocking")

T_0837 = 8 * 3600 + 37 * 60


def fast_config(port: Path, **overrides: float) -> ReaderConfig:
    settings: dict[str, float] = {
        "idle_flush_s": 0.1,
        "silence_reopen_s": 5.0,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.1,
    }
    settings.update(overrides)
    return ReaderConfig(port=str(port), **settings)  # type: ignore[arg-type]


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    # Polling on purpose: the conditions are the reader's own state (connected, counts),
    # which a test must observe without adding hooks to the code under test.
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)


class Consumer:
    """Runs ``reader.fixes()`` in a task and keeps what it yields."""

    def __init__(self, reader: GnssReader) -> None:
        self.reader = reader
        self.fixes: list[Fix] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with contextlib.aclosing(self.reader.fixes()) as fixes:
            async for fix in fixes:
                self.fixes.append(fix)

    async def __aenter__(self) -> Consumer:
        self._task = asyncio.create_task(self._run(), name="gnss-consumer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        assert not self._task.done(), "the reader must never end by itself"
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def send_cycles(rx: PtyReceiver, seconds: range) -> None:
    for sec in seconds:
        rx.write(lines(*ublox_cycle(sec)))
        await asyncio.sleep(0.02)


def test_reader_follows_the_receiver_through_unplug_and_replug(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[float], GnssReader]:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            reader = GnssReader(fast_config(link))
            async with Consumer(reader) as c:
                await wait_until(lambda: reader.connected)
                await send_cycles(rx, range(5))
                await wait_until(lambda: len(c.fixes) == 5)

                rx.unplug()
                await wait_until(lambda: reader.stats["disconnects"] == 1)
                assert not link.exists()
                await wait_until(lambda: reader.stats["open_failures"] >= 2)

                rx.replug()
                await wait_until(lambda: reader.connected)
                await send_cycles(rx, range(10, 15))
                await wait_until(lambda: len(c.fixes) == 10)
            return [f.tod_s for f in c.fixes], reader

    tods, reader = asyncio.run(scenario())
    assert tods == [T_0837 + s for s in [*range(5), *range(10, 15)]]
    assert reader.stats["opens"] == 2
    assert reader.decoder.faults.total() == 0


def test_reader_waits_for_a_receiver_that_is_not_there_yet(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Fix], GnssReader]:
        link = tmp_path / "gnss"
        reader = GnssReader(fast_config(link))
        async with Consumer(reader) as c:
            await wait_until(lambda: reader.stats["open_failures"] >= 3)
            assert c.fixes == []
            async with PtyReceiver(link) as rx:
                await wait_until(lambda: reader.connected)
                await send_cycles(rx, range(3))
                await wait_until(lambda: len(c.fixes) == 3)
        return c.fixes, reader

    fixes, reader = asyncio.run(scenario())
    assert [f.tod_s for f in fixes] == [T_0837, T_0837 + 1, T_0837 + 2]
    assert reader.stats["opens"] == 1


def test_a_quiet_line_closes_the_epoch_without_waiting_for_the_next(tmp_path: Path) -> None:
    async def scenario() -> float:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            reader = GnssReader(fast_config(link, idle_flush_s=0.1))
            async with Consumer(reader) as c:
                await wait_until(lambda: reader.connected)
                loop = asyncio.get_running_loop()
                sent = loop.time()
                rx.write(lines(*ublox_cycle(0)))  # one burst, cycle end not yet learned
                await wait_until(lambda: len(c.fixes) == 1, timeout_s=2.0)
                return loop.time() - sent

    latency_s = asyncio.run(scenario())
    assert latency_s < 1.0


def test_a_silent_receiver_is_reopened(tmp_path: Path) -> None:
    async def scenario() -> GnssReader:
        link = tmp_path / "gnss"
        async with PtyReceiver(link):
            reader = GnssReader(fast_config(link, idle_flush_s=0.05, silence_reopen_s=0.2))
            async with Consumer(reader):
                await wait_until(lambda: reader.stats["silent_reopens"] >= 2)
                await wait_until(lambda: reader.stats["opens"] >= 3)
        return reader

    reader = asyncio.run(scenario())
    assert reader.stats["disconnects"] >= 2  # each silence is one logged disconnection


def test_hostile_bytes_are_logged_once_per_kind_and_decoding_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[Fix]:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            reader = GnssReader(fast_config(link))
            async with Consumer(reader) as c:
                await wait_until(lambda: reader.connected)
                for sec in range(6):
                    rx.write(b"\xb5b\x01\x07\x00garbage$GPGGA,1*00\r\n" + lines(*ublox_cycle(sec)))
                    await asyncio.sleep(0.02)
                await wait_until(lambda: len(c.fixes) == 6)
                return c.fixes

    with caplog.at_level(logging.WARNING, logger="firmware_agent.gnss.reader"):
        fixes = asyncio.run(scenario())
    assert len(fixes) == 6
    firsts = [r.getMessage() for r in caplog.records if "first" in r.getMessage()]
    assert len([m for m in firsts if "bad_checksum" in m]) == 1
    assert len([m for m in firsts if "noise_bytes" in m]) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": ""},
        {"port": "/dev/x", "baudrate": 0},
        {"port": "/dev/x", "idle_flush_s": 1.0, "silence_reopen_s": 0.5},
    ],
)
def test_bad_reader_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ReaderConfig(**kwargs)  # type: ignore[arg-type]
