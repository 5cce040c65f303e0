"""simulator.road_stats: the figures bench/sim_vs_real.py compares, on synthetic traces
of known shape, a slice of a real trip and a simulated day."""

from __future__ import annotations

import csv
import statistics

import pytest

from firmware_agent.contract.geo import haversine_m
from simulator.eta_days import simulator_day
from simulator.road_stats import (
    OFF_STOP_M,
    Sample,
    figures,
    pooled,
    samples_from_fixes,
    samples_from_trace,
    thin,
    trip_stats,
    weighted_percentile,
)
from simulator.trace import read_trace_csv
from tests.corpus import TRAJECTORIES, require

LAT0, LON0 = 53.4074, -2.9824
M_PER_DEG_LAT = 111_195.0


def _north(samples: list[tuple[float, float]]) -> list[Sample]:
    """Samples at (seconds, metres north of the origin)."""
    return [Sample(t, LAT0 + north / M_PER_DEG_LAT, LON0) for t, north in samples]


def _drive_halt_drive(halt_s: float, rate_s: float = 1.0) -> list[Sample]:
    """60 s at 10 m/s, ``halt_s`` standing (jitter of 0.3 m), 60 s at 10 m/s."""
    out: list[tuple[float, float]] = []
    t = 0.0
    while t <= 60.0 + halt_s + 60.0 + 1e-9:
        if t <= 60.0:
            north = 10.0 * t
        elif t <= 60.0 + halt_s:
            north = 600.0 + 0.3 * ((t // rate_s) % 2)
        else:
            north = 600.0 + 10.0 * (t - 60.0 - halt_s)
        out.append((t, north))
        t += rate_s
    return _north(out)


@pytest.mark.parametrize("rate_s", [1.0, 5.0, 25.0])
def test_a_constant_speed_is_every_speed_percentile_and_the_mean(rate_s: float) -> None:
    trace = _north([(t * rate_s, 12.5 * t * rate_s) for t in range(int(600 / rate_s) + 1)])
    figs = figures(trip_stats(trace))
    for key in ("move_p10_mps", "move_p50_mps", "move_p90_mps", "mean_speed_mps"):
        assert figs[key] == pytest.approx(12.5, rel=2e-3), key
    assert figs["stopped_pct"] == 0.0
    assert figs["halts_per_km"] == 0.0
    assert figs["hours"] == pytest.approx(600 / 3600)


def test_a_halt_is_found_with_its_dwell_and_place_at_1_and_5_hz() -> None:
    for rate_s in (1.0, 5.0):
        stats = trip_stats(_drive_halt_drive(45.0, rate_s))
        assert stats.dwells_s == [pytest.approx(45.0)], rate_s
        assert stats.stopped_s == pytest.approx(45.0)
        assert stats.slowdowns == 1
        (lat, lon), stop = stats.halt_at[0], (LAT0 + 600.0 / M_PER_DEG_LAT, LON0)
        assert haversine_m(lat, lon, *stop) < 1.0
        assert stats.off_stop_halts == 1  # no plan: every halt is off it
        assert trip_stats(_drive_halt_drive(45.0, rate_s), [stop]).off_stop_halts == 0
    # shorter than 20 s: stopped time, but no halt
    short = trip_stats(_drive_halt_drive(15.0))
    assert short.dwells_s == []
    assert short.stopped_s == pytest.approx(15.0)


def test_a_spike_and_a_gap_count_for_nothing() -> None:
    clean = _north([(float(t), 10.0 * t) for t in range(121)])
    spiked = list(clean)
    spiked[60] = Sample(60.0, LAT0 + 7000.0 / M_PER_DEG_LAT, LON0)  # a fix 7 km off
    a, b = trip_stats(clean), trip_stats(spiked)
    assert b.distance_m == pytest.approx(a.distance_m, rel=1e-3)
    assert b.duration_s == pytest.approx(a.duration_s)
    gapped = _north([(0.0, 0.0), (10.0, 100.0), (200.0, 100.0), (210.0, 200.0)])
    assert trip_stats(gapped).duration_s == pytest.approx(20.0)  # the 190 s gap is out


def test_percentiles_weigh_by_time_not_by_sample() -> None:
    values = [(2.0, 25.0), (10.0, 1.0), (10.0, 1.0), (10.0, 1.0), (10.0, 1.0), (10.0, 1.0)]
    assert weighted_percentile(values, 0.5) == 2.0  # one 25 s segment outweighs five of 1 s
    assert weighted_percentile(values, 0.9) == 10.0
    assert weighted_percentile([], 0.5) != weighted_percentile([], 0.5)  # NaN
    dwells = pooled([trip_stats(_drive_halt_drive(30.0)), trip_stats(_drive_halt_drive(90.0))])
    assert sorted(dwells.dwells_s) == [pytest.approx(30.0), pytest.approx(90.0)]


def test_thin_keeps_one_sample_per_interval() -> None:
    trace = _north([(float(t), float(t)) for t in range(61)])
    assert [s.t_s for s in thin(trace, 25.0)] == [0.0, 25.0, 50.0]


def test_positions_give_the_speed_the_real_car_logged() -> None:
    """Omaha drive 5, its first 400 s: the speed from positions against the logger's own
    speed column, while moving."""
    path = require(TRAJECTORIES / "omaha_car" / "driveplotr_drive05.csv")
    points = read_trace_csv(path)[:400]
    with path.open(encoding="utf-8", newline="") as f:
        logged = [float(r["speed_mps"]) for r in list(csv.DictReader(f))[:400]]
    figs = figures(trip_stats(samples_from_trace(points)))
    moving = [v for v in logged if v >= 1.0]
    assert figs["move_p50_mps"] == pytest.approx(statistics.median(moving), rel=0.15)
    assert figs["stopped_pct"] == pytest.approx(
        100.0 * (len(logged) - len(moving)) / len(logged), abs=8.0
    )


def test_a_simulated_day_halts_at_its_stops() -> None:
    day = simulator_day(3, n_stops=6)
    stops = [(s.lat, s.lon) for s in day.manifest.stops]
    stats = trip_stats(samples_from_fixes(day.fixes), stops)
    halts_near = [s for s in stops if any(haversine_m(*s, *h) <= OFF_STOP_M for h in stats.halt_at)]
    assert len(halts_near) == len(stops)  # every delivery is a halt (dwells >= 40 s)
    assert len(stats.dwells_s) >= len(stops)
    reported = [f.speed_mps for f in day.fixes if f.speed_mps is not None and f.speed_mps >= 1]
    assert figures(stats)["move_p50_mps"] == pytest.approx(statistics.median(reported), rel=0.2)


def test_the_pace_change_compares_consecutive_five_minute_windows() -> None:
    # 10 min at 10 m/s, then 10 min at 2.5 m/s: windows 10, 10, 2.5, 2.5 m/s
    trace = _north(
        [(float(t), 10.0 * t) for t in range(600)]
        + [(600.0 + t, 6000.0 + 2.5 * t) for t in range(601)]
    )
    changes = sorted(trip_stats(trace).pace_changes)
    assert changes == [
        pytest.approx(1.0),
        pytest.approx(1.0, abs=0.02),
        pytest.approx(4.0, rel=0.02),
    ]
    assert figures(trip_stats(trace))["pace_change_p90"] == pytest.approx(4.0, rel=0.02)
