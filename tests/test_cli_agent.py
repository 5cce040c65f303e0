"""``fleet-agent`` as users run it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import GPSD_DIR, require
from tests.nmea import lines, ublox_cycle

FLEET_AGENT = shutil.which("fleet-agent") or str(Path(sys.executable).parent / "fleet-agent")


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [FLEET_AGENT, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_decode_stdin_writes_one_json_object_per_fix() -> None:
    log = b"# recorded 2010-08-21\n" + b"".join(lines(*ublox_cycle(s)) for s in range(3))
    proc = run("gnss", "decode", "-", stdin=log)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["time"] for r in records] == [
        "2010-08-21T08:37:00.000Z",
        "2010-08-21T08:37:01.000Z",
        "2010-08-21T08:37:02.000Z",
    ]
    first = records[0]
    assert first["lat"] == pytest.approx(51.925907, abs=1e-9)
    assert first["mode"] == 3
    assert first["sats_used"] == 6
    assert first["course_deg"] == 12.5
    summary = proc.stderr.decode().strip().splitlines()
    assert len(summary) == 1
    assert summary[0].startswith("sentences=15 decoded=15 fixes=3 ")
    assert "ignored.comment=1" in summary[0]


def test_unknown_fields_are_null() -> None:
    proc = run("gnss", "decode", "-", stdin=lines("GPGGA,120000,,,,,0,00,,,,,,,"))
    record = json.loads(proc.stdout)
    assert record["time"] is None  # GGA alone never tells the date
    assert record["lat"] is None
    assert record["lon"] is None
    assert record["mode"] == 1
    assert record["speed_mps"] is None


def test_decode_a_real_log_file() -> None:
    log = require(GPSD_DIR / "ublox-neo-m9n-nmea.log")
    proc = run("gnss", "decode", str(log))
    assert proc.returncode == 0
    ours = [json.loads(line)["time"] for line in proc.stdout.splitlines()]
    # One fix per epoch: exactly the epochs gpsd reported for the same capture.
    chk = log.with_suffix(".log.chk").read_text(encoding="ascii", errors="replace")
    gpsd = {
        json.loads(line)["time"]
        for line in chk.splitlines()
        if line.startswith('{"class":"TPV"') and '"time"' in line
    }
    assert len(ours) == len(set(ours)) == len(gpsd) == 61
    assert set(ours) == gpsd
    summary = proc.stderr.decode()
    assert "emitted=61 " in summary
    assert "fault." not in summary  # a clean u-blox capture: nothing damaged


def test_missing_file_is_a_clear_error() -> None:
    proc = run("gnss", "decode", "/nonexistent/nmea.log")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        "fleet-agent: cannot read /nonexistent/nmea.log: No such file or directory"
    )


def test_filters_can_be_switched_off() -> None:
    # Cycles 0-2 teach the decoder where a cycle ends; then a re-sent cycle 2 and a
    # late cycle 1 come out as epochs of their own.
    log = b"".join(lines(*ublox_cycle(s)) for s in (0, 1, 2, 2, 1, 3))
    kept = run("gnss", "decode", "-", stdin=log)
    everything = run("gnss", "decode", "--no-filters", "-", stdin=log)
    assert [json.loads(r)["time"][17:19] for r in kept.stdout.splitlines()] == [
        "00",
        "01",
        "02",
        "03",
    ]
    assert b"filter.duplicate=1" in kept.stderr
    assert b"filter.out_of_order=1" in kept.stderr
    assert len(everything.stdout.splitlines()) == 6
