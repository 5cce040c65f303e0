"""``fleet-sim`` end to end: scenario, trace, play; errors as one line, no traceback."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.cli import main
from simulator.truth import load_truth

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
MUNICH = CORPUS / "trajectories" / "munich_car" / "barefoot_x0001-001.csv"
REPO = Path(__file__).resolve().parents[1]


def test_scenario_writes_log_and_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "day"
    argv = [
        "scenario",
        "--seed",
        "3",
        "--stops",
        "3",
        "--rate-hz",
        "5",
        "--talker",
        "GN",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert summary.count("\n") == 1
    assert "3 stops" in summary
    assert "5 Hz (GN)" in summary
    assert {p.name for p in out.iterdir()} == {
        "nmea.log",
        "truth.csv",
        "stops.json",
        "scenario.json",
        "manifest.json",
        "scans.jsonl",
    }
    truth = load_truth(out)
    assert truth.config.talker == "GN"
    assert truth.config.rate_hz == 5
    assert len(truth.stops) == 3
    assert (out / "nmea.log").read_bytes().startswith(b"$GNRMC,")

    again = tmp_path / "again"
    other = tmp_path / "other"
    assert main([*argv[:-1], str(again)]) == 0
    assert (
        main(
            [
                "scenario",
                "--seed",
                "4",
                "--stops",
                "3",
                "--rate-hz",
                "5",
                "--talker",
                "GN",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert (again / "nmea.log").read_bytes() == (out / "nmea.log").read_bytes()
    assert (other / "nmea.log").read_bytes() != (out / "nmea.log").read_bytes()


def test_scenario_manifest_and_scan_options(tmp_path: Path) -> None:
    out = tmp_path / "day"
    argv = ["scenario", "--seed", "2", "--stops", "4", "--device-id", "van-0042",
            "--wrong-stop-rate", "0", "--garbage-rate", "0", "--duplicate-rate", "1",
            "--outcome-rate", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["device_id"] == "van-0042"
    assert manifest["route_id"] == "R-20261121-van-0042"
    kinds = [
        json.loads(line)["truth"]["kind"]
        for line in (out / "scans.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    parcels = sum(len(stop["parcels"]) for stop in manifest["stops"])
    assert kinds.count("ok") == kinds.count("duplicate") == parcels
    assert len(kinds) == 2 * parcels
    # Every stop with a reason card: one card per parcel.
    assert main([*argv[:-2], "--outcome-rate", "1", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "scans.jsonl").read_text("utf-8").splitlines()]
    cards = [line for line in lines if line["truth"]["kind"] == "reason"]
    assert len(cards) == parcels
    assert {line["truth"]["outcome"] for line in cards} != {"delivered"}


def test_bytes_do_not_depend_on_the_interpreter_run(tmp_path: Path) -> None:
    # Seeds are strings hashed with SHA-512 and sets are sorted before use, so the
    # salted hash() of a new interpreter changes nothing.
    logs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        subprocess.run(
            [sys.executable, "-m", "simulator", "scenario", "--seed", "9", "--stops", "2",
             "--rate-hz", "5", "--out", str(out)],
            cwd=REPO, env={**os.environ, "PYTHONHASHSEED": hash_seed},
            check=True, capture_output=True,
        )  # fmt: skip
        logs.append((out / "nmea.log").read_bytes())
    assert logs[0] == logs[1]


def test_scenario_switches_and_windows(tmp_path: Path) -> None:
    out = tmp_path / "clean"
    argv = [
        "scenario", "--stops", "2", "--no-noise", "--no-multipath", "--tunnels", "0",
        "--outage", "100:20", "--start", "2026-11-21T09:30:00+01:00", "--duration-h", "0.1",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    truth = load_truth(out)
    assert truth.config.start.isoformat() == "2026-11-21T08:30:00+00:00"
    assert truth.config.max_duration_s == pytest.approx(360.0)
    assert len(truth.rows) == 361
    outage_s = [(r.time - truth.config.start).total_seconds() for r in truth.rows if r.outage]
    # Start-up acquisition (3 s), then the window and the time to fix after it (1-4 s).
    assert [t for t in outage_s if t < 100] == [0.0, 1.0, 2.0]
    assert [t for t in outage_s if t >= 100][:20] == [float(t) for t in range(100, 120)]
    assert max(outage_s) <= 124.0
    assert not any(r.multipath for r in truth.rows)
    noiseless = [r for r in truth.rows if r.reported_lat is not None]
    assert all(abs(r.reported_lat - r.lat) < 1e-8 for r in noiseless if r.reported_lat is not None)


@pytest.mark.corpus
def test_trace_command_on_a_real_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not MUNICH.exists():
        pytest.skip(
            f"real-world corpus not found at {MUNICH} (expected ../shared/corpus beside the repo)"
        )
    out = tmp_path / "munich.nmea"
    assert (
        main(
            [
                "trace",
                str(MUNICH),
                "--rate-hz",
                "5",
                "--noise-m",
                "1.5",
                "--seed",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "1194 positions" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"$GPRMC,045407.00,A,")


def test_play_a_scenario_dir_and_a_log_into_files(tmp_path: Path) -> None:
    day = tmp_path / "day"
    assert (
        main(["scenario", "--seed", "5", "--stops", "1", "--duration-h", "0.05", "--out", str(day)])
        == 0
    )
    copy = tmp_path / "copy.nmea"
    assert main(["play", "--scenario-dir", str(day), "--file", str(copy), "--afap", "--live"]) == 0
    assert copy.read_bytes() == (day / "nmea.log").read_bytes()
    second = tmp_path / "second.nmea"
    assert main(["play", "--nmea", str(copy), "--file", str(second), "--afap"]) == 0
    assert second.read_bytes() == copy.read_bytes()
    generated = tmp_path / "generated.nmea"
    assert (
        main(
            [
                "play",
                "--seed",
                "5",
                "--stops",
                "1",
                "--duration-h",
                "0.05",
                "--file",
                str(generated),
                "--afap",
            ]
        )
        == 0
    )
    assert generated.read_bytes() == copy.read_bytes()


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["scenario", "--out"], 2, "expected one argument"),
        (["scenario", "--rate-hz", "3", "--out", "x"], 2, "invalid choice"),
        (["scenario", "--start", "2026-11-21T08:00:00", "--out", "x"], 2, "no timezone"),
        (["play", "--seed", "1"], 2, "one of the arguments --pty --tcp --file is required"),
        (["scenario", "--route", "missing.gpx", "--out", "x"], 1, "missing.gpx: cannot read"),
        (["scenario", "--stops", "0", "--out", "x"], 1, "n_stops must be"),
        (["scenario", "--garbage-rate", "2", "--out", "x"], 2, "must be within 0..1"),
        (["scenario", "--duplicate-rate", "x", "--out", "x"], 2, "not a number"),
        (
            ["play", "--nmea", "log.nmea", "--seed", "3", "--file", "x"],
            1,
            "--seed only apply to a generated",
        ),
        (["play", "--seed", "1", "--file", "x", "--unplug-after-s", "5"], 1, "go together"),
        (
            ["play", "--seed", "1", "--file", "x", "--unplug-after-s", "5", "--unplug-for-s", "2"],
            1,
            "needs --pty",
        ),
    ],
)
def test_errors_are_one_line_and_a_status(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_trace_errors_name_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "timestamp_utc,lat,lon\n2026-01-01T00:00:05Z,1,1\n2026-01-01T00:00:01Z,1,1\n",
        encoding="utf-8",
    )
    assert main(["trace", str(csv), "--out", str(tmp_path / "x.nmea")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleet-sim: error: ")
    assert "line 3" in err
    assert err.count("\n") == 1


def _wait_for_line(process: subprocess.Popen[str], timeout_s: float = 10.0) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, "fleet-sim play printed nothing"
    return process.stdout.readline()


def _read_some(fd: int, timeout_s: float = 5.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    assert ready
    return os.read(fd, 65536)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_play_on_a_pty_prints_its_path_streams_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    link = tmp_path / "gnss"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "play", "--seed", "2", "--stops", "2", "--rate-hz", "5",
         "--pty", str(link), "--speedup", "4"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _wait_for_line(process)
        assert line.startswith("pty: /dev/")
        assert line.rstrip().endswith(f"linked at {link}")
        fd = os.open(link, os.O_RDONLY | os.O_NOCTTY)
        try:
            data = b""
            deadline = time.monotonic() + 5.0
            while b"RMC" not in data and time.monotonic() < deadline:
                data += _read_some(fd)
            assert b"$GPRMC," in data
        finally:
            os.close(fd)
        process.send_signal(stop_signal)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"stopped by {stop_signal.name}" in err
    assert not link.is_symlink()


def test_play_on_tcp_announces_the_port_and_waits_for_a_client() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "play", "--seed", "2", "--stops", "1",
         "--duration-h", "0.01", "--tcp", "127.0.0.1:0", "--afap", "--wait-reader"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _wait_for_line(process)
        assert line.startswith("tcp: 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        received = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            while chunk := client.recv(65536):
                received += chunk
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    # --wait-reader: nothing was lost before the client came; 36 s at 1 Hz.
    assert received.startswith(b"$GPRMC,080000.00,")
    assert received.count(b"$GPRMC") == 37


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "scenario" in capsys.readouterr().out
