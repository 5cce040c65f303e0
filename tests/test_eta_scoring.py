"""Scoring ETAs as a customer sees them, and drive-past stops (simulator.eta_scoring).

Small hand-built cases whose answers are worked out in the comments: positions on one
meridian (north of the origin, so distances add up along the line), times in seconds.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest

from firmware_agent.contract.geo import EARTH_RADIUS_M, haversine_m
from simulator.errors import ConfigError
from simulator.eta_days import trip_day
from simulator.eta_scoring import (
    NAIVE_MIN_SPEED_MPS,
    Published,
    Score,
    Track,
    bucket,
    choose_drive_pasts,
    drive_past_candidates,
    instants,
    latest,
    naive_arrival_s,
    remaining_chain,
    score_day,
    score_stop,
)
from simulator.stops import stop_id
from simulator.trace import TracePoint, read_trace_csv
from simulator.trips import find_dwells, trip_manifest
from tests.corpus import TRAJECTORIES, require

LAT0, LON0 = 52.0, 13.0
M_PER_DEG_LAT = math.pi * EARTH_RADIUS_M / 180.0  # exact along a meridian for haversine
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def north(metres: float) -> tuple[float, float]:
    return LAT0 + metres / M_PER_DEG_LAT, LON0


def track_north(samples: list[tuple[float, float]], **kw: float) -> Track:
    """A track of (seconds, metres north of the origin)."""
    return Track(((t, *north(m)) for t, m in samples), **kw)


# ------------------------------------------------------------------- the pieces


def test_latest_is_the_last_record_at_or_before_the_instant() -> None:
    records = [Published(100.0, 1000.0), Published(200.0, 900.0)]
    assert latest(records, 99.9) is None  # before any record: no ETA shown
    assert latest(records, 100.0) is records[0]
    assert latest(records, 199.0) is records[0]  # stale, still what the customer sees
    assert latest(records, 5000.0) is records[1]
    assert latest([], 100.0) is None


def test_instants_go_back_every_30_s_to_the_start_and_below_an_hour() -> None:
    assert instants(1000.0, 880.0) == [970.0, 940.0, 910.0, 880.0]
    assert instants(1000.0, 990.0) == []
    long = instants(10_000.0, 0.0)
    assert len(long) == 119  # 30, 60, ... 3570 s before: 3600 is outside the buckets
    assert long[0] == 9970.0
    assert long[-1] == 10_000.0 - 3570.0
    with pytest.raises(ConfigError):
        instants(1000.0, 0.0, every_s=0.0)


def test_buckets_are_closed_below_and_open_above() -> None:
    assert bucket(0.0) == 0
    assert bucket(299.9) == 0
    assert bucket(300.0) == 1
    assert bucket(899.0) == 1
    assert bucket(900.0) == 2
    assert bucket(1800.0) == 3
    assert bucket(3599.0) == 3
    assert bucket(3600.0) is None


def test_remaining_chain_follows_the_backend_s_view() -> None:
    order = ["A", "B", "C", "D"]
    arrivals = {"A": 100.0, "C": 200.0, "B": 300.0, "D": 400.0}  # C served before B
    assert remaining_chain(order, arrivals, 50.0, "D") == ["A", "B", "C", "D"]
    assert remaining_chain(order, arrivals, 150.0, "D") == ["B", "C", "D"]
    # C reached: the backend expects D next, B (behind C in the plan) is not in the chain.
    assert remaining_chain(order, arrivals, 250.0, "D") == ["D"]
    assert remaining_chain(order, arrivals, 250.0, "B") == ["B"]
    # A drive-past X has no arrival: it stays in the chain of the stops behind it.
    order = ["A", "X", "B"]
    arrivals = {"A": 100.0, "B": 300.0}
    assert remaining_chain(order, arrivals, 150.0, "B") == ["X", "B"]


def test_mean_speed_is_path_length_over_the_last_five_minutes() -> None:
    # 10 m/s for 600 s, positions every 10 s.
    track = track_north([(float(t), 10.0 * t) for t in range(0, 610, 10)])
    assert track.mean_speed_mps(600.0) == pytest.approx(10.0, rel=1e-6)
    # Stopped for the last 300 s: 0 m/s, and the naive uses the 2 m/s floor.
    stop = track_north([(float(t), min(10.0 * t, 3000.0)) for t in range(0, 610, 10)])
    assert stop.mean_speed_mps(600.0) == pytest.approx(0.0, abs=1e-6)
    # Halfway: the window 150..450 s holds 150 s at 10 m/s over 300 s.
    assert stop.mean_speed_mps(450.0) == pytest.approx(5.0, rel=1e-6)
    assert track.mean_speed_mps(-1.0) == 0.0  # before the first position
    assert track.mean_speed_mps(0.0) == 0.0  # a single position


def test_track_thins_positions_and_refuses_bad_ones() -> None:
    track = track_north([(0.0, 0.0), (1.0, 10.0), (5.0, 50.0), (6.0, 60.0)], min_step_s=5.0)
    assert track.times_s == [0.0, 5.0]
    with pytest.raises(ConfigError):
        track_north([(10.0, 0.0), (5.0, 1.0)])
    with pytest.raises(ConfigError):
        Track([(0.0, 95.0, 0.0)])


def test_naive_chains_the_remaining_stops_and_floors_the_speed() -> None:
    track = track_north([(float(t), 10.0 * t) for t in range(0, 310, 10)])  # 3000 m at 300 s
    # From 3000 m north: to 5000 m, then back to 4000 m: 2000 + 1000 m at 10 m/s.
    chain = [north(5000.0), north(4000.0)]
    assert naive_arrival_s(track, 300.0, chain) == pytest.approx(300.0 + 300.0, rel=1e-6)
    # Standing still since: the same 3000 m at the 2 m/s floor.
    still = track_north([(0.0, 3000.0), (300.0, 3000.0)])
    expected = 300.0 + 3000.0 / NAIVE_MIN_SPEED_MPS
    assert naive_arrival_s(still, 300.0, chain) == pytest.approx(expected, rel=1e-6)
    assert naive_arrival_s(track, -5.0, chain) is None


# ------------------------------------------------------------------- scoring a stop


def _straight_day() -> tuple[Track, dict[str, tuple[float, float]]]:
    """A van at 10 m/s from 0 m (t = 0) to the stop S at 10 000 m (t = 1000)."""
    track = track_north([(float(t), 10.0 * t) for t in range(0, 1010, 10)])
    return track, {"S": north(10_000.0)}


def test_a_stale_record_is_scored_at_every_later_instant() -> None:
    track, places = _straight_day()
    # Published at 500 s (1100: 100 s late) and at 900 s (exact).
    published = [Published(500.0, 1100.0, 900.0, 1200.0), Published(900.0, 1000.0, 1010.0, 1100.0)]
    score = Score()
    score_stop(
        score,
        target="S",
        order=["S"],
        places=places,
        arrivals_s={"S": 1000.0},
        published=published,
        track=track,
    )
    # Instants 970, 940, ... 10 (33); shown from 500 on: 970 ... 520 (16). Errors: 0
    # at 970, 940, 910 (the record of 900), 100 at the 13 others (the stale one).
    b0, b1, b2, b3 = score.buckets
    assert score.stops == 1
    # Horizons 30..270 s (9), 300..870 s (20), 900..990 s (4).
    assert (b0.instants, b1.instants, b2.instants, b3.instants) == (9, 20, 4, 0)
    assert (b0.shown, b1.shown, b2.shown) == (9, 7, 0)  # shown: horizons 30..480 s
    assert b0.model_abs_s == pytest.approx(6 * 100.0)
    assert b1.model_abs_s == pytest.approx(7 * 100.0)
    # The van drives straight at constant speed: the naive is exact.
    assert b0.naive_abs_shown_s + b1.naive_abs_all_s == pytest.approx(0.0, abs=1e-3)
    total = score.total()
    assert (total.instants, total.shown) == (33, 16)
    # Intervals: [900, 1200] holds T (13 instants); [1010, 1100] is above it (3).
    assert total.with_interval == 16
    assert total.inside == 13
    assert total.above_p10 == 13
    assert total.below_p90 == 16


def test_records_without_an_interval_are_not_counted_for_coverage() -> None:
    track, places = _straight_day()
    score = score_day(
        order=["S"],
        places=places,
        arrivals_s={"S": 1000.0},
        published={"S": [Published(0.0, 1000.0)]},
        track=track,
    )
    total = score.total()
    assert total.shown == total.instants == 33
    assert score.stops == 1
    # A stop reached at the first position has no instant: not counted as scored.
    early = score_day(order=["S"], places=places, arrivals_s={"S": 0.0}, published={}, track=track)
    assert early.stops == 0
    assert early.total().instants == 0
    assert total.with_interval == 0
    assert total.inside == 0


def test_stops_without_arrival_or_record_and_the_naive_chain_in_a_day() -> None:
    # Plan A (at 2000 m), X (a drive-past at 1000 m east), B (10 000 m). A reached at
    # 200 s, B at 1000 s, X never. B has no record before 700 s.
    track, places = _straight_day()
    east_lon = LON0 + 1000.0 / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))
    places = {"A": north(2000.0), "X": (LAT0, east_lon), "B": north(10_000.0)}
    score = score_day(
        order=["A", "X", "B"],
        places=places,
        arrivals_s={"A": 200.0, "B": 1000.0},
        published={"B": [Published(700.0, 1000.0)]},
        track=track,
    )
    assert score.stops == 2  # X has no arrival: not scored
    total = score.total()
    # A: 170..20 (6 instants), none shown. B: 970..10 (33), shown from 700 (10).
    assert total.instants == 6 + 33
    assert total.shown == 10
    assert total.model_abs_s == pytest.approx(0.0)

    # After A (t >= 200) the naive for B goes through X: at t, from 10 t m north, to X
    # then to B, at 10 m/s; the detour is its whole error.
    def detour(t: float) -> float:
        here = north(10.0 * t)
        via = haversine_m(*here, *places["X"]) + haversine_m(*places["X"], *places["B"])
        return via / 10.0 - (1000.0 - t)

    shown = [1000.0 - 30.0 * k for k in range(1, 11)]
    assert total.naive_abs_shown_s == pytest.approx(sum(detour(t) for t in shown), rel=1e-6)


# ------------------------------------------------------------------- drive-pasts


def _points(samples: list[tuple[float, float]]) -> list[TracePoint]:
    return [
        TracePoint(T0 + timedelta(seconds=t), *north(m), n + 2) for n, (t, m) in enumerate(samples)
    ]


def _route() -> list[TracePoint]:
    """Halt 100 s at 0 m; 10 m/s to 1000 m; 3 m/s to 1300 m; 10 m/s to 2500 m; halt."""
    samples = [(float(t), 0.0) for t in range(101)]
    samples += [(100.0 + t, 10.0 * t) for t in range(1, 101)]  # to 1000 m at 200 s
    samples += [(200.0 + t, 1000.0 + 3.0 * t) for t in range(1, 101)]  # to 1300 m at 300 s
    samples += [(300.0 + t, 1300.0 + 10.0 * t) for t in range(1, 121)]  # to 2500 m at 420 s
    samples += [(420.0 + t, 2500.0) for t in range(1, 101)]
    return _points(samples)


def test_drive_past_candidates_are_fast_far_and_before_the_last_halt() -> None:
    points = _route()
    dwells = find_dwells(points, min_duration_s=60.0)
    assert [round(haversine_m(*north(0), d.lat, d.lon)) for d in dwells] == [0, 2500]
    picked = drive_past_candidates(points, dwells)
    metres = sorted(round(haversine_m(*north(0), points[i].lat, points[i].lon)) for i in picked)
    # From 200 m (210 m: the first halt's centroid includes the sample at 10 m, and
    # the last's the one at 2490 m) to 2300 m, every 10 m sample at 10 m/s; none at 3
    # m/s (1000 m, whose centred speed is 6.5 m/s, is in, 1003..1297 m are out).
    assert metres[0] == 210
    assert metres[-1] == 2290
    assert not [m for m in metres if 1000 < m < 1300]
    assert len(metres) == len(range(210, 1010, 10)) + len(range(1300, 2300, 10))
    assert not drive_past_candidates(points, [])


def test_drive_pasts_follow_the_rule_and_the_seed() -> None:
    points = _route()
    dwells = find_dwells(points, min_duration_s=60.0)
    counts = set()
    for seed in range(20):
        chosen = choose_drive_pasts(points, dwells, seed)
        assert chosen == choose_drive_pasts(points, dwells, seed)  # deterministic
        assert 1 <= len(chosen) <= 3
        counts.add(len(chosen))
        assert [p.time for p in chosen] == sorted(p.time for p in chosen)
        for p in chosen:
            assert all(haversine_m(p.lat, p.lon, d.lat, d.lon) >= 200.0 for d in dwells)
            i = points.index(p)
            a, b = points[i - 1], points[i + 1]
            speed_mps = haversine_m(a.lat, a.lon, b.lat, b.lon) / (b.time - a.time).total_seconds()
            assert speed_mps > 6.0
        for p, q in itertools.combinations(chosen, 2):
            assert haversine_m(p.lat, p.lon, q.lat, q.lon) >= 200.0
    assert counts == {1, 2, 3}
    assert choose_drive_pasts(points, [], 0) == []
    with pytest.raises(ConfigError):
        choose_drive_pasts(points, dwells, 0, count=(3, 1))


def test_drive_pasts_take_their_place_in_the_manifest() -> None:
    points = _route()
    dwells = find_dwells(points, min_duration_s=60.0)
    passed = [points[150]]  # at 150 s, between the two halts
    doc = trip_manifest(points, dwells, radius_m=50, passes=passed)
    stops = doc["stops"]
    assert [s["id"] for s in stops] == [stop_id(0), stop_id(1), stop_id(2)]
    assert (stops[1]["lat"], stops[1]["lon"]) == (round(passed[0].lat, 7), round(passed[0].lon, 7))
    assert {s["radius_m"] for s in stops} == {50}
    with pytest.raises(ConfigError):
        trip_manifest(points, dwells, radius_m=0)
    # Without passes the manifest is what it always was.
    assert trip_manifest(points, dwells) == trip_manifest(points, dwells, passes=())


def _speed_at(points: list[TracePoint], p: TracePoint) -> float:
    i = points.index(p)
    a, b = points[max(0, i - 1)], points[min(len(points) - 1, i + 1)]
    return haversine_m(a.lat, a.lon, b.lat, b.lon) / (b.time - a.time).total_seconds()


@pytest.mark.corpus
def test_drive_pasts_of_a_real_trip() -> None:
    csv_path = require(TRAJECTORIES / "omaha_car" / "driveplotr_drive08.csv")
    points = read_trace_csv(csv_path)
    dwells = find_dwells(points, min_duration_s=60.0)
    assert dwells, "the trip must have a halt of 60 s for this test"
    chosen = choose_drive_pasts(points, dwells, f"0:{csv_path.stem}")
    assert 1 <= len(chosen) <= 3
    for p in chosen:
        assert all(haversine_m(p.lat, p.lon, d.lat, d.lon) >= 200.0 for d in dwells)
        assert _speed_at(points, p) > 6.0
        assert p.time < dwells[-1].arrival
    passes = lambda pts, dws: choose_drive_pasts(pts, dws, f"0:{csv_path.stem}")  # noqa: E731
    day = trip_day(csv_path, min_halt_s=60.0, radius_m=50, passes=passes)
    again = trip_day(csv_path, min_halt_s=60.0, radius_m=50, passes=passes)
    assert day.manifest.raw == again.manifest.raw
    ids = [s.id for s in day.manifest.stops]
    assert len(ids) == len(dwells) + len(chosen)
    assert sorted(day.about["drive_pasts"]) == sorted(set(ids) - set(day.arrivals))
    assert len(day.arrivals) == len(dwells)
    assert all(s.radius_m == 50 for s in day.manifest.stops)
    # In the order reached: every drive-past sits between the halts around it in time.
    when = dict(day.arrivals)
    for sid, p in zip(day.about["drive_pasts"], chosen, strict=True):
        when[sid] = p.time
    assert [when[s] for s in ids] == sorted(when[s] for s in ids)
