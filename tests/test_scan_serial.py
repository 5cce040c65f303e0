"""The serial scanner reader on a real pseudo-terminal, and its line framer.

The scanner is played by :class:`simulator.receiver.PtyReceiver`: a pty behind a
stable symlink (as udev's /dev/fleet/scanner) that can be unplugged (the reader gets
EIO, the link disappears) and plugged back, as a USB scanner in the cab is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_agent.contract.parcels import MAX_SCAN_BYTES, ScanParseError, parse_scan
from firmware_agent.errors import ConfigError
from firmware_agent.faults import FaultCounter
from firmware_agent.scan.cli import _cmd_watch, _watch, register
from firmware_agent.scan.log import read_scan_log
from firmware_agent.scan.serial_reader import LineFramer, ScannerConfig, SerialScanner
from firmware_agent.scan.types import Scan
from simulator.receiver import PtyReceiver

pytestmark = pytest.mark.usefixtures("no_blocking")

CODE = b"]C100106141412345678908"
SSCC = "106141412345678908"


# --- the framer, pure -----------------------------------------------------------------


def frame_all(chunks: list[bytes], max_line_bytes: int = 512) -> tuple[list[str], FaultCounter]:
    framer = LineFramer(max_line_bytes)
    lines = [line for chunk in chunks for line in framer.feed(chunk)]
    return lines, framer.faults


STREAM = CODE + b"\r\n" + b"JD0146000062812\r" + b"]C0ABC\n" + b"\x1d00" + b"\n\r\n"


def test_cr_lf_and_crlf_all_end_a_line() -> None:
    lines, faults = frame_all([STREAM])
    assert lines == [CODE.decode(), "JD0146000062812", "]C0ABC", "\x1d00"]
    assert faults.total() == 0


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_any_split_in_two_gives_the_same_lines(cut: int) -> None:
    lines, faults = frame_all([STREAM[:cut], STREAM[cut:]])
    assert lines == frame_all([STREAM])[0]
    assert faults.total() == 0


def test_one_byte_at_a_time_gives_the_same_lines() -> None:
    lines, _ = frame_all([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert lines == frame_all([STREAM])[0]


def test_a_character_split_across_reads_is_decoded_whole() -> None:
    data = "Paket-Nr. äöü €\r\n".encode()
    lines, faults = frame_all([data[i : i + 1] for i in range(len(data))])
    assert lines == ["Paket-Nr. äöü €"]
    assert faults.total() == 0


def test_bytes_that_are_not_utf8_are_kept_marked_and_counted() -> None:
    lines, faults = frame_all([b"AB\xff\xfeC\r\n", b"\xc3(\r\n"])
    assert lines == ["AB\ufffd\ufffdC", "\ufffd("]
    assert dict(faults.counts) == {"scan_bad_utf8": 2}
    with pytest.raises(ScanParseError) as info:
        parse_scan(lines[0])
    assert info.value.reason == "not_text"


def test_an_over_long_line_is_cut_counted_and_never_accepted() -> None:
    long_line = b"]C1" + b"0" * 1000
    lines, faults = frame_all([long_line[:300], long_line[300:] + b"\r\n" + CODE + b"\r\n"])
    assert [len(line) for line in lines] == [512, len(CODE)]
    assert lines[0] == long_line[:512].decode()
    assert dict(faults.counts) == {"scan_line_too_long": 1}
    with pytest.raises(ScanParseError) as info:
        parse_scan(lines[0])
    assert info.value.reason == "too_long"
    assert parse_scan(lines[1]).code == SSCC  # the next line is intact


def test_a_line_of_exactly_the_limit_is_not_cut() -> None:
    lines, faults = frame_all([b"A" * 512 + b"\n"])
    assert lines == ["A" * 512]
    assert faults.total() == 0


def test_discard_drops_a_partial_line() -> None:
    framer = LineFramer(512)
    assert framer.feed(b"]C10010614") == []
    framer.discard()
    assert framer.feed(CODE + b"\r\n") == [CODE.decode()]
    assert dict(framer.faults.counts) == {"scan_partial_line": 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": ""},
        {"port": "/dev/x", "baudrate": 0},
        {"port": "/dev/x", "max_line_chars": MAX_SCAN_BYTES},
        {"port": "/dev/x", "backoff_initial_s": 0.0},
        {"port": "/dev/x", "backoff_initial_s": 5.0, "backoff_max_s": 1.0},
    ],
)
def test_bad_scanner_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ScannerConfig(**kwargs)  # type: ignore[arg-type]


# --- the reader, on a pty ---------------------------------------------------------------


def fast_config(port: Path) -> ScannerConfig:
    return ScannerConfig(port=str(port), backoff_initial_s=0.02, backoff_max_s=0.1)


class Ticker:
    """A clock that moves 1 s per reading, so each scan's time says which reading."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


async def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    # Polling on purpose: the conditions are the reader's own state (connected, counts).
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)


class Consumer:
    """Runs ``scanner.scans()`` in a task and keeps what it yields."""

    def __init__(self, scanner: SerialScanner) -> None:
        self.scanner = scanner
        self.scans: list[Scan] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with contextlib.aclosing(self.scanner.scans()) as scans:
            async for scan in scans:
                self.scans.append(scan)

    async def __aenter__(self) -> Consumer:
        self._task = asyncio.create_task(self._run(), name="scan-consumer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        assert not self._task.done(), "the reader must never end by itself"
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def raws(self) -> list[str]:
        return [s.raw for s in self.scans]


def test_codes_with_every_terminator_and_split_arrive_as_scans(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Scan], SerialScanner]:
        link = tmp_path / "scanner"
        async with PtyReceiver(link) as rx:
            scanner = SerialScanner(fast_config(link), Ticker())
            async with Consumer(scanner) as c:
                await wait_until(lambda: scanner.connected)
                await rx.wait_for_reader()
                rx.write(CODE + b"\r\n")
                await wait_until(lambda: len(c.scans) == 1)
                for i in range(len(CODE)):  # one byte per write, each read on its own
                    rx.write(CODE[i : i + 1])
                    await asyncio.sleep(0.002)
                rx.write(b"\r")
                await asyncio.sleep(0.02)
                rx.write(b"\n")  # the LF of that CRLF, late: not an empty scan
                rx.write(b"JD0146000062812\r")
                rx.write(b"]C0ABC\n")
                await wait_until(lambda: len(c.scans) == 4)
                await asyncio.sleep(0.05)  # nothing more may come
                return c.scans, scanner

    scans, scanner = asyncio.run(scenario())
    assert [s.raw for s in scans] == [CODE.decode(), CODE.decode(), "JD0146000062812", "]C0ABC"]
    assert [parse_scan(s.raw).code for s in scans[:2]] == [SSCC, SSCC]
    assert {s.source for s in scans} == {"serial"}
    assert all(s.time.tzinfo is UTC for s in scans)
    assert scans[0].time < scans[1].time  # each scan is timed when its line ends
    assert scanner.faults.total() == 0
    assert scanner.stats["opens"] == 1


def test_garbage_is_reported_as_scans_and_logged_once_per_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[str], SerialScanner]:
        link = tmp_path / "scanner"
        async with PtyReceiver(link) as rx:
            scanner = SerialScanner(fast_config(link))
            async with Consumer(scanner) as c:
                await wait_until(lambda: scanner.connected)
                await rx.wait_for_reader()
                for _ in range(3):
                    rx.write(b"\xff\xfe\x01\x80garbage\r\n")
                    rx.write(b"X" * 700 + b"\r\n")
                    await asyncio.sleep(0.01)
                rx.write(CODE + b"\r\n")
                await wait_until(lambda: len(c.scans) == 7)
                return c.raws, scanner

    with caplog.at_level(logging.WARNING, logger="firmware_agent.scan.serial_reader"):
        raws, scanner = asyncio.run(scenario())
    assert raws[-1] == CODE.decode()  # the reader goes on after garbage
    assert raws[0] == "\ufffd\ufffd\x01\ufffdgarbage"
    assert raws[1] == "X" * 512
    for raw in raws[:-1]:
        with pytest.raises(ScanParseError):
            parse_scan(raw)
    assert dict(scanner.faults.counts) == {"scan_bad_utf8": 3, "scan_line_too_long": 3}
    firsts = [r.getMessage() for r in caplog.records if "first" in r.getMessage()]
    assert len([m for m in firsts if "scan_bad_utf8" in m]) == 1
    assert len([m for m in firsts if "scan_line_too_long" in m]) == 1


def test_unplug_mid_line_and_replug(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], SerialScanner, PtyReceiver]:
        link = tmp_path / "scanner"
        async with PtyReceiver(link) as rx:
            scanner = SerialScanner(fast_config(link))
            async with Consumer(scanner) as c:
                await wait_until(lambda: scanner.connected)
                await rx.wait_for_reader()
                rx.write(b"JD0146000062812\r\n")
                await wait_until(lambda: len(c.scans) == 1)
                rx.write(CODE[:10])  # the cable comes out in the middle of a code
                await asyncio.sleep(0.05)
                rx.unplug()
                await wait_until(lambda: scanner.stats["disconnects"] == 1)
                assert not link.exists()
                await wait_until(lambda: scanner.stats["open_failures"] >= 2)

                rx.replug()
                await wait_until(lambda: scanner.connected)
                await rx.wait_for_reader()
                rx.write(CODE[10:] + b"\r\n")  # the rest of it must not complete a code
                rx.write(CODE + b"\r\n")
                await wait_until(lambda: len(c.scans) == 3)
            return c.raws, scanner, rx

    raws, scanner, rx = asyncio.run(scenario())
    assert raws == ["JD0146000062812", CODE[10:].decode(), CODE.decode()]
    assert scanner.stats["opens"] == 2
    assert scanner.faults.counts["scan_partial_line"] == 1
    assert rx.plug_count == 2


def test_the_reader_waits_for_a_scanner_that_is_not_there_yet(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], SerialScanner]:
        link = tmp_path / "scanner"
        scanner = SerialScanner(fast_config(link))
        async with Consumer(scanner) as c:
            await wait_until(lambda: scanner.stats["open_failures"] >= 3)
            assert c.scans == []
            assert not scanner.connected
            async with PtyReceiver(link) as rx:
                await wait_until(lambda: scanner.connected)
                await rx.wait_for_reader()
                rx.write(CODE + b"\n")
                await wait_until(lambda: len(c.scans) == 1)
        return c.raws, scanner

    raws, scanner = asyncio.run(scenario())
    assert raws == [CODE.decode()]
    assert scanner.stats["opens"] == 1


def test_an_absent_scanner_is_logged_sparingly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> SerialScanner:
        scanner = SerialScanner(fast_config(tmp_path / "nowhere"))
        async with Consumer(scanner):
            await wait_until(lambda: scanner.stats["open_failures"] >= 9)
        return scanner

    with caplog.at_level(logging.WARNING, logger="firmware_agent.scan.serial_reader"):
        scanner = asyncio.run(scenario())
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    # Attempts 1, 2, 4, 8: powers of two only.
    assert len(warnings) <= 1 + scanner.stats["open_failures"].bit_length()
    assert len(warnings) < scanner.stats["open_failures"]


# --- fleet-agent scan watch ------------------------------------------------------------------


def test_cli_watch_prints_a_scan_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="fleet-agent")
    register(parser.add_subparsers(dest="command", required=True))
    link = tmp_path / "scanner"
    args = parser.parse_args(["scan", "watch", "--port", str(link), "--duration-s", "0.4"])
    assert args.func is _cmd_watch

    async def scenario() -> None:
        async with PtyReceiver(link) as rx:
            watching = asyncio.create_task(_watch(args))
            await rx.wait_for_reader()
            rx.write(CODE + b"\x1d4201234\r\n" + b"JD01\x01\r\n")
            await watching  # ends by itself after --duration-s

    asyncio.run(scenario())
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines()]
    assert [r.get("code") for r in records] == [SSCC, None]
    assert records[0]["kind"] == "sscc"
    assert records[1]["error"] == "control_chars"
    # What watch prints is a scan log: it reads back as the same scans.
    faults = FaultCounter()
    scans = list(read_scan_log(out.splitlines(), faults))
    assert [s.raw for s in scans] == [CODE.decode() + "\x1d4201234", "JD01\x01"]
    assert faults.total() == 0
