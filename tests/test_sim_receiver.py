"""The fake receivers (pty, TCP, file) and paced playback into them."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import time
from pathlib import Path

import pytest

from simulator.errors import NmeaLogError, ReceiverError
from simulator.playback import (
    PlayProgress,
    TimedChunk,
    attach_truth,
    epoch_chunks,
    nmea_log_chunks,
    play,
)
from simulator.receiver import FileSink, PtyReceiver, TcpReceiver
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import NMEA_LOG, write_scenario_dir
from simulator.truth import read_truth_csv

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
GGA = b"$GPGGA,080000.00,4808.22000,N,01134.50000,E,1,09,0.90,520.0,M,47.0,M,,*5C\r\n"


def _read(fd: int, timeout_s: float = 2.0) -> bytes | None:
    """What is there to read within ``timeout_s``; b"" at EOF, None if nothing came."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return None
    try:
        return os.read(fd, 65536)
    except OSError as err:
        if err.errno == errno.EIO:  # the other side hung up: Linux reports EIO
            return b""
        raise


def _open_reader(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)


def _small_day_chunks(seconds: float = 60.0) -> list[TimedChunk]:
    scenario = generate(ScenarioConfig(seed=2, n_stops=1, rate_hz=5, max_duration_s=seconds))
    return list(epoch_chunks(scenario.epochs(), "GP"))


def test_pty_reader_gets_bytes_then_a_hangup_then_a_new_device(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "fleet" / "gnss"

    async def session() -> None:
        async with PtyReceiver(link) as pty:
            assert link.is_symlink()
            assert Path(os.readlink(link)) == pty.device
            assert str(pty.device).startswith("/dev/")
            assert not pty.reader_attached
            fd = _open_reader(link)
            try:
                assert pty.reader_attached
                assert pty.write(GGA) == len(GGA)
                assert _read(fd) == GGA
                pty.unplug()
                assert not link.exists()
                assert not pty.plugged
                assert _read(fd) == b""  # EOF or EIO: the receiver is gone
                assert pty.write(GGA) == 0
            finally:
                os.close(fd)
            pty.replug()
            assert link.is_symlink()
            fd = _open_reader(link)
            try:
                assert pty.write(b"$GPTXT,again*00\r\n") > 0
                assert _read(fd) == b"$GPTXT,again*00\r\n"
            finally:
                os.close(fd)
            assert pty.plug_count == 2
        assert not link.is_symlink()
        assert not link.exists()

    asyncio.run(session())


def test_pty_drops_what_nobody_reads_like_a_uart(tmp_path: Path) -> None:
    async def session() -> None:
        async with PtyReceiver(tmp_path / "gnss") as pty:
            # Nobody has the port open: the bytes are lost, not kept for a later reader.
            assert pty.write(b"early bytes\r\n") == 0
            fd = _open_reader(pty.path)
            try:
                assert _read(fd, 0.2) is None
                # A reader that does not read: the kernel buffer fills, writes never block.
                started = time.perf_counter()
                accepted = sum(pty.write(b"x" * 4096) for _ in range(256))
                assert time.perf_counter() - started < 1.0
                assert 0 < accepted < 256 * 4096
                assert pty.dropped_bytes == len(b"early bytes\r\n") + 256 * 4096 - accepted
                assert pty.bytes_written == accepted
            finally:
                os.close(fd)

    asyncio.run(session())


def test_pty_will_not_replace_a_real_file(tmp_path: Path) -> None:
    occupied = tmp_path / "gnss"
    occupied.write_text("not a link", encoding="utf-8")

    async def session() -> None:
        async with PtyReceiver(occupied):
            pass

    with pytest.raises(ReceiverError, match="not a symlink") as caught:
        asyncio.run(session())
    assert isinstance(caught.value, OSError)
    assert occupied.read_text(encoding="utf-8") == "not a link"


def test_tcp_clients_each_get_the_stream() -> None:
    chunks = _small_day_chunks(10.0)
    expected = b"".join(c.data for c in chunks)

    async def session() -> None:
        async with TcpReceiver("127.0.0.1", 0) as tcp:
            assert tcp.port > 0
            assert tcp.write(b"nobody listens\r\n") == 0
            first = await asyncio.open_connection("127.0.0.1", tcp.port)
            second = await asyncio.open_connection("127.0.0.1", tcp.port)
            async with asyncio.timeout(2.0):
                await tcp.wait_for_client(2)
            assert tcp.clients == 2
            stats = await play(chunks, tcp, speedup=None)
            assert stats.bytes_written == len(expected)
            for reader, _ in (first, second):
                async with asyncio.timeout(5.0):
                    assert await reader.readexactly(len(expected)) == expected
        # Closing the receiver disconnects the clients.
        for reader, writer in (first, second):
            async with asyncio.timeout(2.0):
                assert await reader.read() == b""
            writer.close()
        assert tcp.dropped_bytes == len(b"nobody listens\r\n")

    asyncio.run(session())


def test_file_sink_and_as_fast_as_possible_play(tmp_path: Path) -> None:
    chunks = _small_day_chunks(30.0)
    seen: list[PlayProgress] = []

    async def session() -> None:
        async with FileSink(tmp_path / "out.nmea") as sink:
            stats = await play(chunks, sink, speedup=None, total=len(chunks), on_chunk=seen.append)
            assert stats.chunks == len(chunks)
            assert stats.dropped_bytes == 0

    asyncio.run(session())
    assert (tmp_path / "out.nmea").read_bytes() == b"".join(c.data for c in chunks)
    assert [p.index for p in seen] == list(range(len(chunks)))
    assert seen[-1].fraction == 1.0
    assert seen[-1].epoch is chunks[-1].epoch


def test_play_paces_at_real_time_times_the_speedup(tmp_path: Path) -> None:
    chunks = [TimedChunk(offset_s=k * 0.5, data=GGA) for k in range(5)]  # 2 s of receiver time

    async def session(speedup: float | None) -> float:
        async with FileSink(tmp_path / "paced.nmea") as sink:
            return (await play(chunks, sink, speedup=speedup)).wall_s

    paced = asyncio.run(session(10.0))
    assert 0.19 <= paced < 0.6
    assert asyncio.run(session(None)) < 0.1
    with pytest.raises(ValueError, match="speedup"):
        asyncio.run(session(0.0))


def test_play_does_not_block_the_event_loop(tmp_path: Path) -> None:
    chunks = _small_day_chunks(120.0)

    async def session() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        async with FileSink(tmp_path / "afap.nmea") as sink:
            await play(chunks, sink, speedup=None)
        task.cancel()
        return ticks

    assert asyncio.run(session()) >= len(chunks) // 2


def test_a_recorded_log_splits_into_the_epochs_it_came_from(tmp_path: Path) -> None:
    scenario = generate(
        ScenarioConfig(seed=3, n_stops=1, rate_hz=10, max_duration_s=20.0, talker="GN")
    )
    write_scenario_dir(scenario, tmp_path)
    log = tmp_path / NMEA_LOG
    chunks = list(nmea_log_chunks(log))
    epochs = list(scenario.epochs())
    assert len(chunks) == len(epochs)
    assert [c.offset_s for c in chunks] == pytest.approx(
        [(e.time - scenario.start).total_seconds() for e in epochs]
    )
    assert [c.time for c in chunks] == [e.time for e in epochs]
    assert b"".join(c.data for c in chunks) == log.read_bytes()
    # Truth rows attach by time, for the live view.
    attached = list(attach_truth(chunks, read_truth_csv(tmp_path / "truth.csv")))
    assert all(c.epoch is not None and c.epoch.time == c.time for c in attached)


def test_a_log_across_midnight_with_junk_and_comments(tmp_path: Path) -> None:
    log = tmp_path / "midnight.nmea"
    log.write_bytes(
        b"# recorded by hand\n"
        b"$GPGSV,1,1,00*79\r\n"
        b"$GPRMC,235959.50,A,4808.2200,N,01134.5000,E,0.0,,211126,,,A*00\r\n"
        b"garbage \xff\xfe\r\n"
        b"$GPGGA,235959.50,4808.2200,N,01134.5000,E,1,08,1.0,520.0,M,47.0,M,,*00\r\n"
        b"$GPRMC,000000.50,A,4808.2200,N,01134.5000,E,0.0,,221126,,,A*00\r\n"
        b"\r\n"
        b"$GPGGA,000001.50,4808.2200,N,01134.5000,E,1,08,1.0,520.0,M,47.0,M,,*00\r\n"
    )
    chunks = list(nmea_log_chunks(log))
    assert [c.offset_s for c in chunks] == [0.0, 1.0, 2.0]
    assert chunks[0].data.startswith(b"$GPGSV")  # lines before the first time go with it
    assert b"garbage" in chunks[0].data
    assert chunks[1].time is not None
    assert chunks[1].time.isoformat() == "2026-11-22T00:00:00.500000+00:00"
    assert all(not c.data.startswith(b"#") for c in chunks)


def test_a_log_without_time_cannot_be_paced(tmp_path: Path) -> None:
    log = tmp_path / "untimed.nmea"
    log.write_bytes(b"$GPGSV,1,1,00*79\r\n$GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99*30\r\n")
    with pytest.raises(NmeaLogError, match="no sentence with a time"):
        list(nmea_log_chunks(log))
    with pytest.raises(NmeaLogError, match="cannot read"):
        list(nmea_log_chunks(tmp_path / "absent.nmea"))


@pytest.mark.corpus
def test_real_receiver_logs_split_into_forward_moving_epochs() -> None:
    logs = sorted((CORPUS / "nmea" / "gpsd").glob("*.log"))
    if not logs:
        pytest.skip(
            f"real-world corpus not found at {CORPUS} (expected ../shared/corpus beside the repo)"
        )
    paced = 0
    for log in logs:
        try:
            chunks = list(nmea_log_chunks(log))
        except NmeaLogError:
            continue  # logs with no timed sentence (binary-only, proprietary) cannot be paced
        paced += 1
        offsets = [c.offset_s for c in chunks]
        assert offsets == sorted(offsets), log.name
        assert offsets[0] == 0.0
    assert paced > len(logs) // 2
