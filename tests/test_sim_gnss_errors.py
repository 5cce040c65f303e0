"""The receiver error model: noise statistics, multipath, outages and reacquisition."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import statistics
from itertools import pairwise

import pytest

from firmware_agent.contract.fix import FixMode
from simulator.epoch import Constellation, Epoch
from simulator.gnss_errors import (
    DegradedZone,
    GaussMarkov,
    MultipathConfig,
    NoiseConfig,
    Observation,
    OutageConfig,
    OutageWindow,
    ReceiverErrorModel,
    Tunnel,
)
from simulator.scenario import ScenarioConfig, generate
from simulator.sky import Sky

UERE_M = NoiseConfig().uere_m
QUIET_MULTIPATH = MultipathConfig(enabled=False)
NO_OUTAGES = OutageConfig(enabled=False)


def _observe(
    model: ReceiverErrorModel, seconds: float, rate_hz: int = 1, east_m: float = 0.0
) -> list[tuple[float, Observation]]:
    out = []
    for k in range(round(seconds * rate_hz)):
        t = k / rate_hz
        obs = model.observe(
            t, east_m=east_m, north_m=0.0, alt_m=100.0, speed_mps=10.0, course_deg=90.0
        )
        out.append((t, obs))
    return out


def _autocorrelation(values: list[float], lag: int) -> float:
    mean = statistics.fmean(values)
    centred = [v - mean for v in values]
    variance = sum(c * c for c in centred)
    return sum(a * b for a, b in zip(centred, centred[lag:], strict=False)) / variance


def _model(**overrides: object) -> ReceiverErrorModel:
    settings: dict[str, object] = {
        "seed": 1,
        "rate_hz": 1,
        "talker": "GP",
        "noise": NoiseConfig(),
        "multipath": QUIET_MULTIPATH,
        "outages": NO_OUTAGES,
    }
    settings.update(overrides)
    return ReceiverErrorModel(**settings)  # type: ignore[arg-type]


def test_gauss_markov_has_unit_variance_and_the_right_correlation_time() -> None:
    process = GaussMarkov(random.Random(3), correlation_time_s=30.0, dt_s=1.0)
    values = [process.step() for _ in range(60_000)]
    assert statistics.pstdev(values) == pytest.approx(1.0, rel=0.08)
    assert _autocorrelation(values, 30) == pytest.approx(math.exp(-1.0), abs=0.06)
    assert _autocorrelation(values, 1) == pytest.approx(math.exp(-1 / 30), abs=0.02)


def test_error_rms_matches_hdop_times_uere_and_is_autocorrelated() -> None:
    observations = [obs for _, obs in _observe(_model(), 4 * 3600)]
    assert all(o.mode is FixMode.FIX_3D for o in observations)
    hdops = [o.hdop for o in observations if o.hdop is not None]
    assert 0.75 <= statistics.fmean(hdops) <= 1.1
    assert min(hdops) >= 0.5
    # Per axis, error / HDOP has the UERE as its RMS.
    for axis in ("east_error_m", "north_error_m"):
        normalised = [getattr(o, axis) / o.hdop for o in observations if o.hdop]
        rms = math.sqrt(statistics.fmean(v * v for v in normalised))
        assert rms == pytest.approx(UERE_M, rel=0.3)
    east = [o.east_error_m for o in observations]
    assert _autocorrelation(east, 1) > 0.9  # a wandering error, not white noise
    assert abs(_autocorrelation(east, 600)) < 0.35  # ... that forgets within minutes


def test_hdop_drifts_slowly() -> None:
    hdops = [o.hdop for _, o in _observe(_model(), 3600) if o.hdop is not None]
    steps = [abs(b - a) for a, b in pairwise(hdops)]
    assert max(steps) < 0.1
    assert max(hdops) - min(hdops) > 0.2


def test_degraded_zone_raises_hdop_and_satellites_follow() -> None:
    zone = DegradedZone(0.0, 0.0, 200.0, hdop_factor=2.5, multipath_factor=1.0)
    inside = [o for _, o in _observe(_model(zones=(zone,)), 1800)]
    outside = [o for _, o in _observe(_model(zones=(zone,)), 1800, east_m=500.0)]
    hdop_in = statistics.fmean(o.hdop for o in inside if o.hdop)
    hdop_out = statistics.fmean(o.hdop for o in outside if o.hdop)
    assert hdop_in > 2.0 * hdop_out
    assert statistics.fmean(o.sats_wanted for o in inside) < statistics.fmean(
        o.sats_wanted for o in outside
    )
    assert statistics.fmean(o.snr_penalty_db for o in inside) > 2


def test_no_noise_reports_the_truth_but_still_models_hdop() -> None:
    observations = [o for _, o in _observe(_model(noise=NoiseConfig(enabled=False)), 600)]
    assert all(o.east_error_m == 0.0 and o.north_error_m == 0.0 for o in observations)
    assert all(
        o.alt_m == 100.0 and o.speed_mps == 10.0 and o.course_deg == 90.0 for o in observations
    )
    assert len({o.hdop for o in observations}) > 10


def test_multipath_jumps_are_flagged_displaced_and_brief() -> None:
    multipath = MultipathConfig(rate_per_h=240.0)
    run = _observe(_model(multipath=multipath, rate_hz=5), 3600, rate_hz=5)
    flagged = [o for _, o in run if o.multipath]
    assert flagged
    for obs in flagged:
        assert math.hypot(obs.east_error_m, obs.north_error_m) >= 30.0
        assert math.hypot(obs.east_error_m, obs.north_error_m) <= 300.0 + 6 * 5 * UERE_M
    clean = [o for _, o in run if not o.multipath]
    assert max(math.hypot(o.east_error_m, o.north_error_m) for o in clean) < 30.0
    # Events last 1-8 s (5-40 epochs at 5 Hz) and raise HDOP while they last.
    lengths = [
        len(m.group())
        for m in re.finditer("M+", "".join("M" if o.multipath else "." for _, o in run))
    ]
    assert 3600 / 3600 * 240 * 0.6 < len(lengths) < 240 * 1.4
    assert min(lengths) >= 5
    assert max(lengths) <= 41
    assert statistics.fmean(o.hdop for o in flagged if o.hdop) > 1.4 * statistics.fmean(
        o.hdop for o in clean if o.hdop
    )


def test_an_outage_window_gives_no_fix_then_2d_then_3d() -> None:
    outages = OutageConfig(windows=(OutageWindow(100.0, 30.0),), startup_no_fix_s=0.0)
    run = _observe(_model(outages=outages, rate_hz=5), 200, rate_hz=5)
    for t, obs in run:
        if 100.0 <= t < 130.0:
            assert obs.mode is FixMode.NO_FIX
            assert obs.outage
            assert obs.hdop is None
            assert obs.sats_wanted == 0
    modes = "".join(
        {FixMode.NO_FIX: "N", FixMode.FIX_2D: "2", FixMode.FIX_3D: "3"}[o.mode]
        for t, o in run
        if t >= 100.0
    )
    match = re.fullmatch("(N+)(2+)(3+)", modes)
    assert match is not None, modes
    extra_no_fix_s = (len(match.group(1)) - 150) / 5
    assert 1.0 <= extra_no_fix_s <= 4.2  # time to fix after the sky returns
    assert 2.0 <= len(match.group(2)) / 5 <= 5.2  # a few 2D fixes
    after = [o for t, o in run if t >= 100.0 and o.mode is not FixMode.NO_FIX]
    assert all(
        o.hdop is not None and o.hdop >= 2.0 and o.sats_wanted == 3
        for o in after
        if o.mode is FixMode.FIX_2D
    )
    # The first 3D fixes are still worse than the open sky, and recover.
    first_3d = next(o for o in after if o.mode is FixMode.FIX_3D)
    assert first_3d.hdop is not None
    assert first_3d.hdop > 1.5
    assert after[-1].hdop is not None
    assert after[-1].hdop < 1.5
    before = [o for t, o in run if t < 100.0]
    assert all(o.mode is FixMode.FIX_3D for o in before)


def test_start_up_acquisition_then_fixes() -> None:
    run = _observe(_model(outages=OutageConfig(startup_no_fix_s=3.0)), 30)
    modes = [o.mode for _, o in run]
    assert modes[:3] == [FixMode.NO_FIX] * 3
    assert all(o.outage for _, o in run[:3])
    assert FixMode.FIX_2D in modes[3:8]
    assert modes[-1] is FixMode.FIX_3D


def test_tunnel_corridor_contains_only_points_inside_it() -> None:
    tunnel = Tunnel(((0.0, 0.0), (100.0, 0.0), (100.0, 100.0)), half_width_m=6.0)
    assert tunnel.contains(50.0, 0.0)
    assert tunnel.contains(50.0, 5.9)
    assert tunnel.contains(103.0, 50.0)
    assert not tunnel.contains(50.0, 6.5)
    assert not tunnel.contains(-3.0, 0.0)  # beyond the portal
    assert not tunnel.contains(50.0, 50.0)


def test_scenario_satellites_match_the_reported_count_and_hdop() -> None:
    config = ScenarioConfig(seed=3, n_stops=4, talker="GN")
    epochs: list[Epoch] = list(generate(config).epochs())
    for epoch in epochs:
        assert epoch.sats_used == sum(s.used for s in epoch.satellites)
        if epoch.mode is FixMode.FIX_3D:
            assert epoch.sats_used >= 4
        if epoch.mode is FixMode.FIX_2D:
            assert epoch.sats_used == 3
        if epoch.mode is FixMode.NO_FIX:
            assert epoch.sats_used == 0
            assert all(s.snr_db is None for s in epoch.satellites)
    pairs = [(e.hdop, float(e.sats_used)) for e in epochs if e.hdop is not None]
    correlation = statistics.correlation([h for h, _ in pairs], [n for _, n in pairs])
    assert correlation < -0.3


def test_scenario_noise_rms_is_hdop_times_uere() -> None:
    base = ScenarioConfig(seed=31, n_stops=12)
    config = dataclasses.replace(base, multipath=QUIET_MULTIPATH, outages=NO_OUTAGES)
    scenario = generate(config)
    squares = []
    for epoch in scenario.epochs():
        assert epoch.reported_lat is not None
        assert epoch.reported_lon is not None
        assert epoch.hdop
        true_e, true_n = scenario.frame.to_local(epoch.lat, epoch.lon)
        rep_e, rep_n = scenario.frame.to_local(epoch.reported_lat, epoch.reported_lon)
        squares.append(((rep_e - true_e) ** 2 + (rep_n - true_n) ** 2) / epoch.hdop**2)
    assert len(squares) > 2000
    horizontal_rms_per_hdop = math.sqrt(statistics.fmean(squares))
    assert horizontal_rms_per_hdop == pytest.approx(math.sqrt(2) * UERE_M, rel=0.3)


@pytest.mark.parametrize("systems", [("GP",), ("GP", "GL")], ids=["GPS", "GPS+GLONASS"])
def test_the_sky_always_offers_enough_satellites(systems: tuple[Constellation, ...]) -> None:
    for seed in range(10):
        sky = Sky(seed, systems)
        for minute in range(0, 24 * 60, 7):
            view = sky.view(minute * 60.0, used=40, tracking=True)
            used = [s for s in view if s.used]
            assert len(used) >= (6 if systems == ("GP",) else 12)
            assert all(s.elevation_deg >= 10 for s in used)
            assert all(5 <= s.elevation_deg <= 90 for s in view)
            assert len({(s.system, s.prn) for s in view}) == len(view)
            assert sum(s.system == "GP" and s.used for s in view) <= 12
