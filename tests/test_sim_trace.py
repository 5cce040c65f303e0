"""Real traces to NMEA: interpolation, noise, gaps and validation of the CSV."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pynmea2
import pytest

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.geo import LocalFrame, destination
from simulator.errors import SimulatorError, TraceFileError
from simulator.nmea_writer import render_epoch
from simulator.trace import TracePoint, read_trace_csv, trace_epochs, write_trace_nmea

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
MUNICH = CORPUS / "trajectories" / "munich_car" / "barefoot_x0001-001.csv"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def munich() -> list[TracePoint]:
    if not MUNICH.exists():
        pytest.skip(
            f"real-world corpus not found at {MUNICH} (expected ../shared/corpus beside the repo)"
        )
    return read_trace_csv(MUNICH)


def _write_csv(tmp_path: Path, rows: list[str], header: str = "timestamp_utc,lat,lon") -> Path:
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _straight_track(seconds: list[int], speed_mps: float = 10.0) -> list[TracePoint]:
    return [
        TracePoint(
            T0 + timedelta(seconds=s), *destination(48.0, 11.0, 90.0, speed_mps * s), line=i + 2
        )
        for i, s in enumerate(seconds)
    ]


@pytest.mark.corpus
def test_munich_trace_hits_the_csv_points_at_their_timestamps(munich: list[TracePoint]) -> None:
    epochs = list(trace_epochs(munich, rate_hz=10))
    duration_s = (munich[-1].time - munich[0].time).total_seconds()
    assert len(epochs) == round(duration_s * 10) + 1
    by_time = {e.time: e for e in epochs}
    for point in munich:
        epoch = by_time[point.time]
        assert epoch.reported_lat == pytest.approx(point.lat, abs=1e-9)
        assert epoch.reported_lon == pytest.approx(point.lon, abs=1e-9)
        assert (epoch.lat, epoch.lon) == (epoch.reported_lat, epoch.reported_lon)
    # Through NMEA too, to the writer's 1e-5 minute.
    for point in munich[::50]:
        rmc = pynmea2.parse(render_epoch(by_time[point.time], "GP")[0].strip(), check=True)
        assert abs(rmc.latitude - point.lat) < 1e-6
        assert abs(rmc.longitude - point.lon) < 1e-6


@pytest.mark.corpus
def test_munich_trace_speed_and_course_follow_the_track(munich: list[TracePoint]) -> None:
    epochs = list(trace_epochs(munich, rate_hz=1))
    assert all(e.mode is FixMode.FIX_3D for e in epochs)
    frame = LocalFrame(munich[0].lat, munich[0].lon)
    # 1 Hz CSV at 1 Hz: each epoch's speed is the distance to the next point per second.
    for epoch, here, there in list(zip(epochs, munich, munich[1:], strict=False))[:200]:
        (x0, y0), (x1, y1) = (
            frame.to_local(here.lat, here.lon),
            frame.to_local(there.lat, there.lon),
        )
        assert epoch.speed_mps == pytest.approx(math.hypot(x1 - x0, y1 - y0), rel=1e-6, abs=1e-9)
        if epoch.speed_mps > 1.0:
            expected = math.degrees(math.atan2(x1 - x0, y1 - y0)) % 360
            assert epoch.course_deg == pytest.approx(expected, abs=1e-6)


@pytest.mark.corpus
def test_munich_trace_converts_to_a_parsable_gn_log(
    munich: list[TracePoint], tmp_path: Path
) -> None:
    out = tmp_path / "munich.nmea"
    summary = write_trace_nmea(MUNICH, out, rate_hz=5, noise_m=2.0, seed=4, talker="GN")
    lines = out.read_text(encoding="ascii").splitlines()
    assert summary.epochs == sum(1 for line in lines if line.startswith("$GNRMC"))
    assert summary.points == len(munich)
    for line in lines[:3000]:
        pynmea2.parse(line, check=True)


def test_noise_is_seeded_correlated_and_of_the_asked_size() -> None:
    track = _straight_track(list(range(0, 3600, 10)))
    a = list(trace_epochs(track, rate_hz=1, noise_m=3.0, seed=1))
    b = list(trace_epochs(track, rate_hz=1, noise_m=3.0, seed=1))
    c = list(trace_epochs(track, rate_hz=1, noise_m=3.0, seed=2))
    assert a == b
    assert a != c
    frame = LocalFrame(48.0, 11.0)
    errors = []
    for epoch in a:
        assert epoch.reported_lat is not None
        assert epoch.reported_lon is not None
        (x, y), (rx, ry) = (
            frame.to_local(epoch.lat, epoch.lon),
            frame.to_local(epoch.reported_lat, epoch.reported_lon),
        )
        errors.append((rx - x, ry - y))
    rms = math.sqrt(statistics.fmean(dx * dx for dx, _ in errors))
    assert rms == pytest.approx(3.0, rel=0.35)
    east = [dx for dx, _ in errors]
    assert statistics.correlation(east[:-1], east[1:]) > 0.9
    assert a[0].hdop == pytest.approx(1.2)  # 3 m / 2.5 m UERE


def test_gaps_longer_than_the_limit_have_no_fix() -> None:
    track = _straight_track([0, 10, 20, 320, 330])
    epochs = list(trace_epochs(track, rate_hz=1, max_gap_s=120.0))
    assert len(epochs) == 331
    for epoch in epochs:
        offset = (epoch.time - T0).total_seconds()
        inside_gap = 20 < offset < 320
        assert (epoch.mode is FixMode.NO_FIX) == inside_gap
        assert (epoch.reported_lat is None) == inside_gap
        assert epoch.outage == inside_gap
    lines = render_epoch(epochs[100], "GP")
    assert pynmea2.parse(lines[0].strip(), check=True).status == "V"
    # A shorter limit than the 10 s spacing makes every segment a gap, but the
    # recorded points themselves always have a fix.
    sparse = list(trace_epochs(track, rate_hz=1, max_gap_s=5.0))
    assert [
        e.has_fix for e in sparse if (e.time - T0).total_seconds() in {0, 10, 20, 320, 330}
    ] == [True] * 5


HEADER = "timestamp_utc,lat,lon"
ROW = "2026-03-02T09:00:00Z,48.0,11.0"


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([ROW, "2026-03-02T09:00:01Z,48.0,11.0001", ROW], HEADER,
         "line 4: timestamp 2026-03-02T09:00:00Z is not after"),
        ([ROW, "yesterday,48.0,11.0"], HEADER, "line 3: unparsable timestamp"),
        (["2026-03-02T09:00:00,48.0,11.0"], HEADER, "line 2: .* has no timezone"),
        (["2026-03-02T09:00:00Z,north,11.0"], HEADER, "line 2: unparsable coordinates"),
        (["2026-03-02T09:00:00Z,98.0,11.0"], HEADER, "line 2: coordinates .* out of range"),
        (["2026-03-02T09:00:00Z,48.0"], HEADER, "line 2: 2 fields"),
        ([ROW], "time,lat,lon", "line 1: missing column"),
        ([ROW], HEADER, "at least two positions"),
    ],
)  # fmt: skip
def test_bad_csv_rows_are_reported_with_their_line(
    tmp_path: Path, rows: list[str], header: str, message: str
) -> None:
    with pytest.raises(TraceFileError, match=message) as caught:
        read_trace_csv(_write_csv(tmp_path, rows, header))
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, SimulatorError)


def test_other_columns_are_ignored_and_rows_may_have_offsets(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path,
        [
            "2026-03-02T10:00:00+01:00,53.44,-2.92,53,4716,1091",
            "2026-03-02T09:00:25Z,53.441,-2.921,,4716,1091",
        ],
        header="timestamp_utc,lat,lon,bearing_deg,vehicle_id,trip_id",
    )
    points = read_trace_csv(path)
    assert [p.time for p in points] == [T0, T0 + timedelta(seconds=25)]
    assert [p.line for p in points] == [2, 3]
