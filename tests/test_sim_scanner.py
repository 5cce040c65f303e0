"""The scanner on a real pty, and scans played in step with the NMEA stream."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.manifest import build_manifest
from simulator.playback import SideStream, TimedChunk, epoch_chunks, play
from simulator.scanner import PtyScanner, scan_bytes, scan_chunks
from simulator.scans import build_scan_log, read_scan_log
from simulator.scenario import ScenarioConfig, generate

REPO = Path(__file__).resolve().parents[1]
SSCC_LABEL = "]C100106141412345678908\x1d42080331"


def _open_reader(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)


def _read_until(fd: int, want: int, timeout_s: float = 5.0) -> bytes:
    """Read until ``want`` bytes came, EOF/EIO, or the timeout."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < want and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError as err:
            if err.errno == errno.EIO:  # the scanner was pulled out
                break
            raise
        if not chunk:
            break
        data += chunk
    return data


def test_scans_arrive_as_lines_on_the_pty(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "fleet" / "scanner"
    binary = b"\x00\x1b\xff\xfe".decode("utf-8", "surrogateescape")

    async def session() -> None:
        async with PtyScanner(link) as scanner:
            assert link.is_symlink()
            assert Path(os.readlink(link)) == scanner.device
            scanner.scan("]C0JD0146000062812345")  # nobody reading: lost, like a UART
            assert scanner.dropped_bytes == len("]C0JD0146000062812345\r\n")
            fd = _open_reader(link)
            try:
                assert scanner.reader_attached
                scanner.scan(SSCC_LABEL)
                scanner.scan("JD0146000062812345", terminator="\r")
                scanner.scan(binary)
                expected = (
                    SSCC_LABEL.encode()
                    + b"\r\n"
                    + b"JD0146000062812345\r"
                    + b"\x00\x1b\xff\xfe\r\n"
                )
                assert _read_until(fd, len(expected)) == expected
                scanner.unplug()
                assert not link.exists()
                assert _read_until(fd, 1, timeout_s=1.0) == b""
            finally:
                os.close(fd)
            scanner.replug()
            assert scanner.plug_count == 2
            fd = _open_reader(link)
            try:
                scanner.scan("again")
                assert _read_until(fd, 7) == b"again\r\n"
            finally:
                os.close(fd)
            assert scanner.scans == 5
        assert not link.exists()

    asyncio.run(session())


def test_scan_chunks_share_the_clock_of_the_day() -> None:
    start = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    lines = [
        {"time": "2026-11-21T08:00:10.500Z", "raw": "b"},
        {"time": "2026-11-21T07:59:59.000Z", "raw": "a"},  # before the day: sent at once
        {"time": "2026-11-21T09:00:00+01:00", "raw": "c"},
    ]
    chunks = list(scan_chunks(lines, start))
    assert [c.data for c in chunks] == [b"a\r\n", b"c\r\n", b"b\r\n"]
    assert [c.offset_s for c in chunks] == [0.0, 0.0, 10.5]
    assert chunks[2].time == start + timedelta(seconds=10.5)
    assert scan_bytes("x", "\n") == b"x\n"


class _Recorder:
    """A sink that notes, for every write, which port it was and what had gone before."""

    def __init__(self, port: str, log: list[tuple[str, bytes]]) -> None:
        self._port = port
        self._log = log

    def write(self, data: bytes) -> int:
        self._log.append((self._port, data))
        return len(data)


def test_scans_play_in_step_with_the_epochs_as_fast_as_possible() -> None:
    scenario = generate(ScenarioConfig(seed=3, n_stops=2, rate_hz=5))
    manifest = build_manifest(scenario, seed=3)
    lines = build_scan_log(scenario, manifest, seed=3, duplicate_rate=0.5)
    log: list[tuple[str, bytes]] = []
    epochs = list(epoch_chunks(scenario.epochs(), "GP"))

    async def run() -> None:
        stats = await play(
            epochs,
            _Recorder("gnss", log),
            speedup=None,
            side=[SideStream(scan_chunks(lines, scenario.start), _Recorder("scanner", log))],
        )
        assert stats.chunks == len(epochs)
        assert stats.side_chunks == len(lines)
        assert stats.side_bytes_written == sum(len(scan_bytes(line["raw"])) for line in lines)

    asyncio.run(run())
    # Each scan goes out after the last epoch at or before its time and before the next.
    epoch_time = {chunk.data: chunk.time for chunk in epochs}
    last_epoch = None
    scans_seen = 0
    for port, data in log:
        if port == "gnss":
            last_epoch = epoch_time[data]
            continue
        line = lines[scans_seen]
        scans_seen += 1
        assert data == scan_bytes(line["raw"])
        t = datetime.fromisoformat(line["time"])
        assert last_epoch is not None
        assert last_epoch <= t < last_epoch + timedelta(seconds=0.2)
    assert scans_seen == len(lines)


def test_paced_playback_keeps_the_scans_on_time() -> None:
    base = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    main_chunks = [
        TimedChunk(i * 0.5, b"e%d" % i, base + timedelta(seconds=i * 0.5)) for i in range(9)
    ]
    scans = [TimedChunk(1.25, b"s1"), TimedChunk(3.0, b"s2")]
    log: list[tuple[str, bytes]] = []
    written_at: dict[bytes, float] = {}

    class Timed(_Recorder):
        def write(self, data: bytes) -> int:
            written_at[data] = time.monotonic()
            return super().write(data)

    async def run() -> float:
        started = time.monotonic()
        await play(
            main_chunks,
            Timed("gnss", log),
            speedup=10.0,
            side=[SideStream(scans, Timed("scanner", log))],
        )
        return started

    started = asyncio.run(run())
    order = [data for _, data in log]
    assert order.index(b"s1") == order.index(b"e2") + 1
    assert order.index(b"s2") == order.index(b"e6") + 1  # equal offsets: the epoch first
    # 10 times real time: due at 0.125 s and 0.3 s (late by a loaded machine's jitter only).
    assert 0.12 <= written_at[b"s1"] - started < 0.125 + 0.2
    assert 0.29 <= written_at[b"s2"] - started < 0.3 + 0.2


def _first_lines(
    process: subprocess.Popen[bytes], count: int, timeout_s: float = 10.0
) -> list[str]:
    """The first ``count`` lines the process prints, read unbuffered (select-safe)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout_s
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"fleet-sim play printed only {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"fleet-sim play ended after {data!r}"
        data += chunk
    return data.decode().splitlines()[:count]


def test_fleet_sim_plays_a_days_scans_on_a_scanner_pty(tmp_path: Path) -> None:
    day = tmp_path / "day"
    assert main(["scenario", "--seed", "3", "--stops", "2", "--garbage-rate", "0.5",
                 "--out", str(day)]) == 0  # fmt: skip
    lines = read_scan_log(day / "scans.jsonl")
    expected = b"".join(scan_bytes(line["raw"]) for line in lines)
    link = tmp_path / "scanner"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "play", "--scenario-dir", str(day),
         "--file", str(tmp_path / "copy.nmea"), "--scanner-pty", str(link),
         "--afap", "--wait-reader"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        first, line = _first_lines(process, 2)
        assert first.startswith("file: ")
        assert line.startswith("scanner: /dev/")
        assert line.rstrip().endswith(f"linked at {link}")
        fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
        try:
            received = _read_until(fd, len(expected), timeout_s=10.0)
        finally:
            os.close(fd)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert received == expected
    assert f"{len(lines)} scans, 0 scanner bytes dropped" in err.decode()
    assert (tmp_path / "copy.nmea").read_bytes() == (day / "nmea.log").read_bytes()
    assert not link.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nmea", "NMEA", "--file", "x"], "--scanner-pty needs --scenario-dir"),
        (["--scenario-dir", "DAY", "--pty", "scanner"], "must be different paths"),
        (["--scenario-dir", "BARE", "--file", "x"], "scans.jsonl not found"),
    ],
)
def test_scanner_errors_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    day = tmp_path / "day"
    assert main(["scenario", "--seed", "1", "--stops", "1", "--duration-h", "0.02",
                 "--out", str(day)]) == 0  # fmt: skip
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "nmea.log").write_bytes((day / "nmea.log").read_bytes())
    paths = {"NMEA": str(day / "nmea.log"), "DAY": str(day), "BARE": str(bare)}
    argv = ["play", *(paths.get(a, a) for a in extra), "--scanner-pty", "scanner", "--afap"]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_generated_days_play_their_scans_too(tmp_path: Path) -> None:
    # No --scenario-dir: the manifest and scans are drawn from the generated day.
    link = tmp_path / "scanner"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "play", "--seed", "3", "--stops", "2",
         "--file", str(tmp_path / "out.nmea"), "--scanner-pty", str(link), "--afap",
         "--wait-reader"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert _first_lines(process, 2)[1].startswith("scanner: ")
        fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
        try:
            received = _read_until(fd, 1 << 20, timeout_s=10.0)
        finally:
            os.close(fd)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    scenario = generate(ScenarioConfig(seed=3, n_stops=2))
    lines = build_scan_log(scenario, build_manifest(scenario, seed=3), seed=3)
    assert received == b"".join(scan_bytes(line["raw"]) for line in lines)
    json.dumps(lines)
