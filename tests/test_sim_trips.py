"""Real trips as replayable days: halts found in real CSVs, a manifest, the truth."""

from __future__ import annotations

import csv
import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.contract.geo import haversine_m
from simulator.cli import main
from simulator.errors import ConfigError, TraceFileError
from simulator.playback import nmea_log_chunks
from simulator.trace import TracePoint, read_trace_csv
from simulator.trips import find_dwells, sampling_stats, trip_manifest, write_trip_dir
from tests.corpus import TRAJECTORIES, require
from tests.test_sim_manifest import check_manifest

T0 = datetime(2026, 1, 26, 16, 30, tzinfo=UTC)
LAT0, LON0 = 53.4074, -2.9824
M_PER_DEG_LAT = 111_195.0


def _trace(samples: list[tuple[float, float]]) -> list[TracePoint]:
    """Points at (seconds from T0, metres north of the origin)."""
    return [
        TracePoint(T0 + timedelta(seconds=t), LAT0 + north / M_PER_DEG_LAT, LON0, n + 2)
        for n, (t, north) in enumerate(samples)
    ]


def test_a_1hz_halt_needs_twenty_seconds_within_fifteen_metres() -> None:
    drive = [(float(t), 10.0 * t) for t in range(10)]  # 10 m/s
    halt = [(10.0 + t, 100.0 + (t % 3)) for t in range(25)]  # 24 s, jitter of 2 m
    away = [(35.0 + t, 110.0 + 10.0 * t) for t in range(10)]
    dwells = find_dwells(_trace(drive + halt + away))
    assert len(dwells) == 1
    dwell = dwells[0]
    # The last driving sample (90 m) is 10 m from the halt: within reach, so it joins.
    assert dwell.arrival == T0 + timedelta(seconds=9)
    assert dwell.departure == T0 + timedelta(seconds=34)
    assert dwell.n_samples == 26
    short = [(10.0 + t, 100.0) for t in range(15)]
    away_sooner = [(t - 10.0, n) for t, n in away]
    assert find_dwells(_trace(drive + short + away_sooner)) == []


def test_sparse_data_two_samples_twenty_seconds_apart_make_a_halt() -> None:
    points = _trace([(0, 0), (25, 300), (55, 305), (80, 600), (90, 602), (120, 900)])
    dwells = find_dwells(points)
    assert [(d.first, d.last) for d in dwells] == [(1, 2)]  # 10 s apart is too short
    assert dwells[0].dwell_s == 30.0
    assert haversine_m(dwells[0].lat, dwells[0].lon, LAT0 + 302.5 / M_PER_DEG_LAT, LON0) < 0.1
    assert find_dwells(_trace([(0, 0), (30, 16)])) == []  # 16 m apart: moving
    with pytest.raises(ConfigError):
        find_dwells(points, max_spread_m=0)


def test_sampling_stats() -> None:
    stats = sampling_stats(_trace([(0, 0), (1, 0), (3, 0), (33, 0)]))
    assert stats == {"min": 1.0, "median": 2.0, "mean": 11.0, "p90": 30.0, "max": 30.0}
    assert sampling_stats(_trace([(0, 0)])) == {}


def _read_csv(path: Path) -> list[tuple[datetime, float, float]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [
            (
                datetime.fromisoformat(row["timestamp_utc"]),
                float(row["lat"]),
                float(row["lon"]),
            )
            for row in csv.DictReader(f)
        ]


def _check_trip_dir(csv_path: Path, out: Path, rate_hz: int) -> list[dict[str, Any]]:
    """The written day matches the CSV, checked without the simulator's own helpers."""
    assert {p.name for p in out.iterdir()} == {
        "nmea.log",
        "manifest.json",
        "truth_stops.json",
        "trip.json",
    }
    rows = _read_csv(csv_path)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    check_manifest(manifest)
    truth: list[dict[str, Any]] = json.loads((out / "truth_stops.json").read_text(encoding="utf-8"))
    info = json.loads((out / "trip.json").read_text(encoding="utf-8"))
    assert info["source"] == csv_path.name
    assert info["points"] == len(rows)
    assert "only as precise as the sampling interval" in info["notes"][0]
    assert "creep" in info["notes"][1]
    assert manifest["date"] == rows[0][0].date().isoformat()
    assert len(manifest["stops"]) == len(truth) == info["stops"] > 0
    codes = [p for s in manifest["stops"] for p in s["parcels"]]
    assert len(codes) == len(set(codes)) == len(truth)
    last_departure = None
    for stop, halt in zip(manifest["stops"], truth, strict=True):
        assert stop["id"] == halt["stop_id"]
        assert stop["radius_m"] == 30
        assert stop["type"] == "other"
        assert len(stop["parcels"]) == 1
        arrival = datetime.fromisoformat(str(halt["arrival"]))
        departure = datetime.fromisoformat(str(halt["departure"]))
        assert last_departure is None or arrival > last_departure
        last_departure = departure
        inside = [(t, la, lo) for t, la, lo in rows if arrival <= t <= departure]
        assert inside[0][0] == arrival  # arrival and departure are sample times
        assert inside[-1][0] == departure
        assert len(inside) == halt["n_samples"]
        assert len(inside) >= 2
        assert (departure - arrival).total_seconds() >= 20
        for _, la, lo in inside:
            assert all(haversine_m(la, lo, la2, lo2) <= 15.0 for _, la2, lo2 in inside)
        lat = sum(la for _, la, _ in inside) / len(inside)
        lon = sum(lo for _, _, lo in inside) / len(inside)
        assert haversine_m(lat, lon, stop["lat"], stop["lon"]) < 0.5
    chunks = list(nmea_log_chunks(out / "nmea.log"))
    duration_s = (rows[-1][0] - rows[0][0]).total_seconds()
    assert len(chunks) == math.floor(duration_s * rate_hz) + 1
    assert chunks[0].time == rows[0][0]
    return truth


@pytest.mark.corpus
def test_a_real_bus_trip(tmp_path: Path) -> None:
    csv_path = require(TRAJECTORIES / "liverpool_bus" / "bods_liverpool_r14out_v4841_t1101.csv")
    summary = write_trip_dir(csv_path, tmp_path, seed=2)
    truth = _check_trip_dir(csv_path, tmp_path, rate_hz=1)
    assert summary.stops == len(truth)
    info = json.loads((tmp_path / "trip.json").read_text(encoding="utf-8"))
    assert 15 <= info["sampling_interval_s"]["median"] <= 35
    # The bus waits at its first stop for over four minutes (21 reports).
    assert truth[0]["n_samples"] == 21


@pytest.mark.corpus
def test_every_bus_trip_has_halts_and_a_valid_manifest() -> None:
    for csv_path in sorted(require(TRAJECTORIES / "liverpool_bus").glob("*.csv")):
        points = read_trace_csv(csv_path)
        dwells = find_dwells(points)
        assert dwells, csv_path.name
        assert all(d.dwell_s >= 20 and d.n_samples >= 2 for d in dwells)
        assert all(a.last < b.first for a, b in itertools.pairwise(dwells))
        check_manifest(trip_manifest(points, dwells))


@pytest.mark.corpus
def test_a_real_car_trip_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = require(TRAJECTORIES / "munich_car" / "barefoot_x0001-001.csv")
    out = tmp_path / "munich"
    argv = ["trip", str(csv_path), "--out", str(out), "--rate-hz", "5", "--noise-m", "1.5",
            "--seed", "4", "--device-id", "van-0009"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1194 positions (median interval 1 s)" in printed
    truth = _check_trip_dir(csv_path, out, rate_hz=5)
    assert all(int(str(h["n_samples"])) >= 21 for h in truth)  # 1 Hz: 20 s is 21 samples
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["device_id"] == "van-0009"
    assert manifest["route_id"] == "R-20140910-van-0009"
    assert (out / "nmea.log").read_bytes().startswith(b"$GPRMC,045407.00,A,")
    again = tmp_path / "again"
    assert main([*argv[:3], str(again), *argv[4:]]) == 0
    for name in ("nmea.log", "manifest.json", "truth_stops.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_bad_csvs_are_reported_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_utc,lat\n2026-01-01T00:00:00Z,1\n", encoding="utf-8")
    with pytest.raises(TraceFileError, match="missing column"):
        write_trip_dir(bad, tmp_path / "out")
    good = tmp_path / "good.csv"
    good.write_text(
        "timestamp_utc,lat,lon\n2026-01-01T00:00:00Z,1,1\n2026-01-01T00:00:30Z,1,1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="rate_hz"):
        write_trip_dir(good, tmp_path / "out", rate_hz=3)
    assert not (tmp_path / "out").exists()
    assert main(["trip", str(bad), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleet-sim: error: ")
    assert err.count("\n") == 1
    # Two samples at one place 30 s apart: a halt, even in a two-line file.
    write_trip_dir(good, tmp_path / "tiny")
    truth = json.loads((tmp_path / "tiny" / "truth_stops.json").read_text(encoding="utf-8"))
    assert [h["n_samples"] for h in truth] == [2]
