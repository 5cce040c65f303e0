"""Finding 12 of issue 13: whatever a receiver sends, the GNSS path counts it and goes on.

``$GPZDA,120000.00,01,01,99999999999999999999,00,00*65`` (a valid checksum) raised
OverflowError out of ``parse_zda``, through the decoder and the reader's task group, and
``fleet-agent run`` exited 1. The date is now a counted ``bad_field``; and as belt and
braces, a sentence that raises inside the decoder is counted (``internal_error``) and
dropped, and an exception out of the decoder is counted by the reader
(``decode_errors``), logged, and survived.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from firmware_agent.contract.fix import Fix
from firmware_agent.gnss import sentences
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from firmware_agent.gnss.reader import GnssReader
from firmware_agent.gnss.sentences import BAD_FIELD, INTERNAL_ERROR, Spec, parse_zda
from simulator.receiver import PtyReceiver
from tests.nmea import line, lines, ublox_cycle
from tests.test_gnss_reader import Consumer, fast_config, send_cycles, wait_until

FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"
# The sentence of the finding, byte for byte.
OVERFLOW_ZDA = b"$GPZDA,120000.00,01,01,99999999999999999999,00,00*65\r\n"


def test_the_overflowing_zda_is_a_counted_bad_field() -> None:
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    fixes = decoder.feed(OVERFLOW_ZDA) + decoder.feed(lines(*ublox_cycle(23))) + decoder.flush()
    assert decoder.faults.counts == {BAD_FIELD: 1}
    assert len(fixes) == 1
    assert fixes[0].time == datetime(2010, 8, 21, 8, 37, 23, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("21,11,2026", date(2026, 11, 21)),
        (",,", None),  # no date yet: nothing wrong
        ("21,11,", None),
        ("01,01,99999999999999999999", BAD_FIELD),
        ("31,12,9999", BAD_FIELD),  # the midnight rollover would overflow
        ("01,01,0001", BAD_FIELD),
        ("31,02,2026", BAD_FIELD),
        ("00,01,2026", BAD_FIELD),
        ("1,1,26", BAD_FIELD),
        ("001,01,2026", BAD_FIELD),
        ("-1,01,2026", BAD_FIELD),
    ],
)
def test_zda_dates(fields: str, expected: date | str | None) -> None:
    data = ["120000.00", *fields.split(","), "00", "00"]
    if isinstance(expected, str):
        with pytest.raises(sentences.SentenceError) as err:
            parse_zda(data)
        assert err.value.reason == expected
    else:
        assert parse_zda(data) == expected
    decoder = GnssDecoder()
    decoder.feed(line(f"GPZDA,120000.00,{fields},00,00"))
    assert decoder.faults.counts == ({expected: 1} if isinstance(expected, str) else {})


def test_a_sentence_that_raises_inside_the_decoder_is_counted_and_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug in one sentence type's code: the sentence is lost, never the epoch or the van.
    def broken(d: list[str], n: int, talker: str, e: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(sentences.SPECS, "VTG", Spec(broken, 9, 4, -1))
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    fixes = decoder.feed(lines(*ublox_cycle(23), *ublox_cycle(24))) + decoder.flush()
    assert [f.tod_s for f in fixes] == [8 * 3600 + 37 * 60 + 23, 8 * 3600 + 37 * 60 + 24]
    assert decoder.faults.counts == {INTERNAL_ERROR: 2}
    assert isinstance(decoder.last_internal_error, RuntimeError)
    assert decoder.summary_counts()["fault.internal_error"] == 2


class _FlakyDecoder(GnssDecoder):
    """A decoder with a bug that raises out of ``feed`` on one kind of input."""

    def feed(self, data: bytes, now_s: float | None = None) -> list[Fix]:
        if b"BOOM" in data:
            raise OverflowError("a bug in the decoder")
        return super().feed(data, now_s)


def errors_reach(reader: GnssReader, n: int) -> bool:
    return reader.stats["decode_errors"] >= n


@pytest.mark.usefixtures("no_blocking")
def test_the_reader_survives_an_exception_out_of_the_decoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[Fix], GnssReader]:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            reader = GnssReader(fast_config(link), decoder=_FlakyDecoder())
            async with Consumer(reader) as c:
                await wait_until(lambda: reader.connected)
                await send_cycles(rx, range(3))
                await wait_until(lambda: len(c.fixes) == 3)
                for i in range(1, 4):
                    rx.write(b"$BOOM\r\n")
                    await wait_until(functools.partial(errors_reach, reader, i))
                await send_cycles(rx, range(10, 13))
                await wait_until(lambda: len(c.fixes) == 6)
                assert reader.connected
            return c.fixes, reader

    with caplog.at_level(logging.INFO, logger="firmware_agent.gnss.reader"):
        fixes, reader = asyncio.run(scenario())
    assert len(fixes) == 6
    assert reader.stats["decode_errors"] == 3
    assert reader.stats["opens"] == 1  # no reopen: the line was fine all along
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # The first with its traceback, the second at the doubling, the third not at all.
    assert [r.exc_info is not None for r in errors] == [True, True]
    assert "OverflowError" in errors[0].getMessage()
    stopped = [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()]
    assert len(stopped) == 1
    assert "decode_errors=3" in stopped[0]


@pytest.mark.usefixtures("no_blocking")
def test_the_reader_logs_a_sentence_that_raised_inside_the_decoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(d: list[str], n: int, talker: str, e: object) -> None:
        raise ZeroDivisionError("a bug in the VTG code")

    monkeypatch.setitem(sentences.SPECS, "VTG", Spec(broken, 9, 4, -1))

    async def scenario() -> tuple[list[Fix], GnssReader]:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            reader = GnssReader(fast_config(link))
            async with Consumer(reader) as c:
                await wait_until(lambda: reader.connected)
                await send_cycles(rx, range(4))
                await wait_until(lambda: len(c.fixes) == 4)
            return c.fixes, reader

    with caplog.at_level(logging.INFO, logger="firmware_agent.gnss.reader"):
        fixes, reader = asyncio.run(scenario())
    assert len(fixes) == 4  # every epoch, without its VTG
    assert reader.decoder.faults.counts == {INTERNAL_ERROR: 4}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # A line per doubling of the count (1, 2, 4; 1, 3 if two cycles came in one read),
    # each with its traceback.
    assert 2 <= len(errors) <= 3
    assert all(r.exc_info is not None for r in errors)
    assert "ZeroDivisionError" in errors[0].getMessage()
    assert any("first internal_error" in r.getMessage() for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _AgentLog:
    """``fleet-agent run``'s stderr, read line by line as it comes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._task = asyncio.create_task(self._read(stream), name="agent-log")

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in ln for ln in self.lines)

    def text(self) -> str:
        return "\n".join(self.lines)

    async def finish(self) -> None:
        await self._task


@pytest.mark.slow
def test_fleet_agent_run_reads_on_after_the_overflowing_zda(tmp_path: Path) -> None:
    """The real service on a pty receiver: fixes, the sentence of the finding, fixes.
    The agent keeps running, and its GNSS counters show the sentence."""

    async def scenario() -> tuple[int, _AgentLog]:
        link = tmp_path / "gnss"
        async with PtyReceiver(link) as rx:
            proc = await asyncio.create_subprocess_exec(
                str(FLEET_AGENT), "run", "--device-id", "van-0012",
                "--state-dir", str(tmp_path / "state"),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(_free_port()),  # no broker
                "--gnss-port", str(link), "--no-eta",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stderr is not None
            log = _AgentLog(proc.stderr)
            try:
                await wait_until(lambda: log.has("GNSS receiver open on"), timeout_s=30)
                for sec in range(20, 23):
                    rx.write(lines(*ublox_cycle(sec)))
                    await asyncio.sleep(0.4)  # each epoch out on the idle flush
                rx.write(OVERFLOW_ZDA)
                await wait_until(
                    lambda: log.has("first bad_field") or proc.returncode is not None, timeout_s=10
                )
                assert proc.returncode is None, f"the agent died:\n{log.text()}"
                for sec in range(23, 26):
                    rx.write(lines(*ublox_cycle(sec)))
                    await asyncio.sleep(0.4)
                await asyncio.sleep(0.5)
                assert proc.returncode is None, f"the agent died:\n{log.text()}"
                proc.send_signal(signal.SIGINT)
                async with asyncio.timeout(20):
                    rc = await proc.wait()
                await log.finish()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        return rc, log

    rc, log = asyncio.run(scenario())
    assert rc == 0, log.text()
    assert not log.has("Traceback"), log.text()
    # The reader's counters, logged as it stopped: the one bad field, nothing else wrong.
    stopped = [ln for ln in log.lines if "GNSS" in ln and "stopped:" in ln]
    assert len(stopped) == 1, log.text()
    assert "fault.bad_field=1" in stopped[0]
    assert "decode_errors" not in stopped[0]
    assert "internal_error" not in stopped[0]
    # All six epochs, before and after the sentence, reached the pipeline.
    summary = next(ln for ln in log.lines if ln.startswith("fleet-agent run: "))
    assert summary.startswith("fleet-agent run: 6 fixes"), summary
