"""ETA features: the plan's geometry, the speed history, the feature rows, the baseline."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.contract import eta_features as features
from firmware_agent.contract.eta_features import (
    DEFAULT_HDOP,
    FEATURE_NAMES,
    FEATURES_VERSION,
    MIN_BASELINE_SPEED_MPS,
    N_FEATURES,
    NOMINAL_SPEED_MPS,
    STOP_TYPE_ORDER,
    FeatureError,
    PlanPosition,
    RoutePlan,
    SpeedHistory,
    eta_features,
    naive_eta_s,
)
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.geo import LocalFrame, haversine_m
from firmware_agent.contract.manifest import STOP_TYPES, Manifest, parse_manifest
from simulator.manifest import build_manifest
from simulator.scenario import ScenarioConfig, generate

FRAME = LocalFrame(48.137, 11.575)
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)  # a Saturday

StopSpec = tuple[str, float, float, str, int]  # id, east_m, north_m, type, parcels


def make_manifest(
    stops: list[StopSpec],
    route_en: list[tuple[float, float]] | None,
    *,
    windows: dict[str, tuple[datetime, datetime]] | None = None,
) -> Manifest:
    """A manifest in FRAME's local metres (east, north)."""
    raw_stops: list[dict[str, Any]] = []
    for stop_id, east, north, stop_type, n_parcels in stops:
        lat, lon = FRAME.to_geodetic(east, north)
        entry: dict[str, Any] = {
            "id": stop_id,
            "lat": lat,
            "lon": lon,
            "radius_m": 25,
            "type": stop_type,
            "parcels": [f"{stop_id}-P{i}" for i in range(n_parcels)],
        }
        if windows and stop_id in windows:
            start, end = windows[stop_id]
            entry["window_start"] = start.isoformat()
            entry["window_end"] = end.isoformat()
        raw_stops.append(entry)
    doc: dict[str, Any] = {
        "route_id": "R-1",
        "device_id": "van-1",
        "date": "2026-11-21",
        "stops": raw_stops,
    }
    if route_en is not None:
        coords = [FRAME.to_geodetic(e, n) for e, n in route_en]
        doc["route"] = {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in coords]}
    return parse_manifest(doc)


def fix_at(
    t: datetime,
    east: float | None,
    north: float = 0.0,
    *,
    speed_mps: float | None = None,
    hdop: float | None = 0.9,
    sats: int | None = 9,
) -> Fix:
    if east is None:
        return Fix(time=t, tod_s=0.0, mode=FixMode.NO_FIX)
    lat, lon = FRAME.to_geodetic(east, north)
    return Fix(
        time=t,
        tod_s=0.0,
        lat=lat,
        lon=lon,
        speed_mps=speed_mps,
        mode=FixMode.FIX_3D,
        hdop=hdop,
        sats_used=sats,
    )


def geodetic(east: float, north: float = 0.0) -> tuple[float, float]:
    return FRAME.to_geodetic(east, north)


# -- the contract -------------------------------------------------------------------------


def test_feature_names_are_a_stable_ordered_contract() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES))
    assert FEATURE_NAMES[0] == "remaining_m"
    # eta-features/2 appended its columns: /1's keep their places.
    assert FEATURE_NAMES[34] == "naive_eta_s"
    assert FEATURE_NAMES[35:] == ("chain_m", "chain_naive_s", "dwell_s", "parcels_here")
    assert FEATURES_VERSION == "eta-features/2"
    assert set(STOP_TYPE_ORDER) == STOP_TYPES  # a new manifest type needs a new version
    assert FEATURES_VERSION.startswith("eta-features/")


# -- the plan's geometry ------------------------------------------------------------------

STRAIGHT_STOPS: list[StopSpec] = [
    ("S1", 500.0, 10.0, "house", 1),
    ("S2", 1200.0, -12.0, "business", 2),
    ("S3", 2600.0, 8.0, "locker", 1),
]
STRAIGHT_ROUTE = [(0.0, 0.0), (1000.0, 0.0), (3000.0, 0.0)]


def test_straight_route_cumulative_distances_within_a_metre() -> None:
    plan = RoutePlan.from_manifest(make_manifest(STRAIGHT_STOPS, STRAIGHT_ROUTE))
    start = geodetic(0.0)
    expected = [haversine_m(*start, *geodetic(e)) for _, e, _, _, _ in STRAIGHT_STOPS]
    assert plan.on_route.all()
    np.testing.assert_allclose(plan.plan_m, expected, atol=1.0)
    np.testing.assert_allclose(plan.route_m, expected, atol=1.0)
    np.testing.assert_allclose(plan.route_offset_m, [10.0, 12.0, 8.0], atol=0.1)

    # The van at 800 m east, S1 served: 400 m to S2, 1800 m to S3, along the route.
    van = geodetic(800.0, 3.0)
    pos = plan.project(*van, T0, {"S1"})
    assert pos.on_route
    assert pos.next_index == 1
    assert pos.route_m == pytest.approx(800.0, abs=1.0)
    rows = eta_features(T0, plan, pos, {"S1"}, SpeedHistory())
    assert rows.stop_ids == ("S2", "S3")
    np.testing.assert_allclose(rows.column("remaining_m"), [400.0, 1800.0], atol=1.0)
    np.testing.assert_allclose(rows.column("straight_m"), [400.4, 1800.0], atol=1.0)


def test_a_stop_far_from_the_route_is_reached_along_the_chain() -> None:
    stops: list[StopSpec] = [
        STRAIGHT_STOPS[0],
        ("X", 900.0, 1000.0, "other", 1),  # 1 km north of the road
        *STRAIGHT_STOPS[1:],
    ]
    plan = RoutePlan.from_manifest(make_manifest(stops, STRAIGHT_ROUTE))
    assert plan.on_route.tolist() == [True, False, True, True]
    s1, x, s2 = plan.stop_xy[0], plan.stop_xy[1], plan.stop_xy[2]
    into_x = math.dist(s1, x)
    out_of_x = math.dist(x, s2)
    assert plan.plan_m[1] == pytest.approx(plan.plan_m[0] + into_x)
    assert plan.plan_m[2] == pytest.approx(plan.plan_m[1] + out_of_x)
    # Between two on-route stops the leg is along the route again.
    assert plan.plan_m[3] - plan.plan_m[2] == pytest.approx(1400.0, abs=1.0)

    # Heading for X: the straight line to it, then the chain on to S2.
    van = geodetic(600.0)
    pos = plan.project(*van, T0, {"S1"})
    rows = eta_features(T0, plan, pos, {"S1"}, SpeedHistory())
    to_x = math.dist(plan.frame.to_local(*van), x)
    np.testing.assert_allclose(
        rows.column("remaining_m")[:2], [to_x, to_x + out_of_x], rtol=1e-6, atol=0.01
    )


def test_without_a_route_the_plan_is_the_chain_of_stops() -> None:
    plan = RoutePlan.from_manifest(make_manifest(STRAIGHT_STOPS, None))
    assert not plan.has_route
    assert not plan.on_route.any()
    legs = [math.dist(a, b) for a, b in zip(plan.stop_xy[:-1], plan.stop_xy[1:], strict=True)]
    np.testing.assert_allclose(plan.plan_m, np.concatenate(([0.0], np.cumsum(legs))))
    van = geodetic(300.0, 40.0)
    pos = plan.project(*van, T0, set())
    assert pos.route_m is None
    assert not pos.on_route
    rows = eta_features(T0, plan, pos, set(), SpeedHistory())
    to_s1 = math.dist(plan.frame.to_local(*van), plan.stop_xy[0])
    np.testing.assert_allclose(
        rows.column("remaining_m"), to_s1 + plan.plan_m, rtol=1e-6, atol=0.01
    )


# Out 2 km east along y=0, across 8 m, and back west along y=8 (the other lane).
OUT_AND_BACK = [(0.0, 0.0), (2000.0, 0.0), (2000.0, 8.0), (0.0, 8.0)]
OB_STOPS: list[StopSpec] = [
    ("A", 500.0, -10.0, "house", 1),
    ("B", 1500.0, -10.0, "house", 1),
    ("C", 1000.0, 18.0, "house", 1),  # served on the way back
    ("D", 300.0, 18.0, "house", 1),
]


def ob_along(east: float, back: bool) -> float:
    return 2008.0 + (2000.0 - east) if back else east


@pytest.mark.parametrize("method", ["dp", "greedy"])
def test_out_and_back_route_stops_are_placed_in_order(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if method == "greedy":  # what a plan too big for the dynamic programme gets
        monkeypatch.setattr(features, "DP_MAX_CELLS", 0)
    plan = RoutePlan.from_manifest(make_manifest(OB_STOPS, OUT_AND_BACK))
    assert plan.on_route.all()
    np.testing.assert_allclose(
        plan.route_m,
        [ob_along(500, False), ob_along(1500, False), ob_along(1000, True), ob_along(300, True)],
        atol=1.0,
    )


@pytest.mark.parametrize("noise_m", [0.0, 4.0])
def test_out_and_back_van_projection_never_jumps_to_the_other_leg(noise_m: float) -> None:
    plan = RoutePlan.from_manifest(make_manifest(OB_STOPS, OUT_AND_BACK))
    rng = random.Random(5)
    served: set[str] = set()
    pos: PlanPosition | None = None
    worst = 0.0
    # 10 m/s at 1 Hz: out along y=0, then back along y=8.
    path = [(float(e), 0.0, False) for e in range(0, 2001, 10)]
    path += [(float(e), 8.0, True) for e in range(2000, -1, -10)]
    for i, (east, north, back) in enumerate(path):
        t = T0 + timedelta(seconds=i)
        lat, lon = geodetic(east + rng.gauss(0, noise_m), north + rng.gauss(0, noise_m))
        pos = plan.project(lat, lon, t, served, since=pos)
        assert pos.on_route
        assert pos.route_m is not None
        true_m = ob_along(east, back) if not (back and east == 2000.0) else 2008.0
        worst = max(worst, abs(pos.route_m - true_m))
        for k, stop_id in enumerate(plan.stop_ids):
            if stop_id not in served and abs(plan.route_m[k] - true_m) < 10.0:
                served.add(stop_id)
    assert served == {"A", "B", "C", "D"}
    assert worst < 8.0 + 3.0 * noise_m


def test_first_projection_starts_from_the_last_served_stop() -> None:
    plan = RoutePlan.from_manifest(make_manifest(OB_STOPS, OUT_AND_BACK))
    # At x=1000 on the outbound lane, with A and B served: the van is on the way back.
    lat, lon = geodetic(1000.0, 4.0)
    pos = plan.project(lat, lon, T0, {"A", "B"})
    assert pos.route_m == pytest.approx(ob_along(1000.0, True), abs=5.0)
    pos = plan.project(lat, lon, T0, {"A"})
    assert pos.route_m == pytest.approx(1000.0, abs=5.0)


def test_projection_after_an_outage_and_a_detour() -> None:
    plan = RoutePlan.from_manifest(make_manifest(STRAIGHT_STOPS, STRAIGHT_ROUTE))
    pos = plan.project(*geodetic(100.0, 2.0), T0, set())
    # A minute without a fix at 10 m/s: the window reaches as far as the van can have gone.
    pos = plan.project(*geodetic(700.0, -3.0), T0 + timedelta(seconds=60), {"S1"}, since=pos)
    assert pos.on_route
    assert pos.route_m == pytest.approx(700.0, abs=1.0)
    # A detour 500 m north: off the route, the last match is kept, S2 is straight ahead.
    detour = geodetic(900.0, 500.0)
    pos = plan.project(*detour, T0 + timedelta(seconds=120), {"S1"}, since=pos)
    assert not pos.on_route
    assert pos.route_m == pytest.approx(700.0, abs=1.0)
    to_s2 = math.dist(plan.frame.to_local(*detour), plan.stop_xy[1])
    assert plan.plan_m[1] - pos.along_m == pytest.approx(to_s2)
    # Back on the road further on: matched again, ahead of the detour's start.
    pos = plan.project(*geodetic(1100.0), T0 + timedelta(seconds=180), {"S1"}, since=pos)
    assert pos.on_route
    assert pos.route_m == pytest.approx(1100.0, abs=1.0)


# -- speed history -----------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [1, 10])
def test_speed_history_a_delivery_stop_drags_the_overall_mean_not_the_moving_mean(
    rate_hz: int,
) -> None:
    history = SpeedHistory()
    step = 1.0 / rate_hz
    east = 0.0
    n_drive = 900 * rate_hz
    for i in range(n_drive + 1):
        history.update(fix_at(T0 + timedelta(seconds=i * step), east, speed_mps=10.0))
        east += 10.0 * step
    driving = history.stats(T0 + timedelta(seconds=900))
    assert driving.mean_15m_mps == pytest.approx(10.0)
    assert driving.mean_60s_mps == pytest.approx(10.0)
    assert driving.moving_15m_mps == pytest.approx(10.0)
    assert driving.coverage_15m == pytest.approx(1.0)
    assert driving.speed_mps == 10.0
    assert driving.speed_known

    for i in range(1, 120 * rate_hz + 1):  # 120 s parked at a delivery
        history.update(fix_at(T0 + timedelta(seconds=900 + i * step), east, speed_mps=0.0))
    now = T0 + timedelta(seconds=1020)
    parked = history.stats(now)
    assert parked.speed_mps == 0.0
    assert parked.mean_60s_mps == pytest.approx(0.0, abs=1e-9)
    assert parked.mean_5m_mps == pytest.approx(180 * 10.0 / 300, abs=0.05)
    assert parked.mean_15m_mps == pytest.approx(780 * 10.0 / 900, abs=0.05)
    assert parked.moving_15m_mps == pytest.approx(10.0)
    assert parked.coverage_15m == pytest.approx(1.0)
    assert parked.fix_fraction_60s == pytest.approx(1.0)
    assert parked.hdop == pytest.approx(0.9)
    assert parked.hdop_known
    assert parked.sats == pytest.approx(9.0)
    assert parked.first_fix == T0


def test_speed_history_without_doppler_speed_uses_positions() -> None:
    # A GGA-only receiver at 10 Hz, 2 m of position noise, driving 8 m/s.
    history = SpeedHistory()
    rng = random.Random(2)
    for i in range(3000):
        t = T0 + timedelta(seconds=i / 10)
        history.update(fix_at(t, 0.8 * i + rng.gauss(0, 2.0), rng.gauss(0, 2.0), hdop=None))
    stats = history.stats(T0 + timedelta(seconds=300))
    assert stats.mean_5m_mps == pytest.approx(8.0, abs=0.3)
    assert stats.moving_15m_mps == pytest.approx(8.0, abs=0.3)
    assert stats.speed_known
    assert stats.speed_mps == pytest.approx(8.0, abs=1.5)
    assert not stats.hdop_known
    assert stats.hdop == DEFAULT_HDOP


def test_speed_history_covers_an_outage_with_distance_over_time() -> None:
    history = SpeedHistory()
    seen = {}
    for i in range(301):
        t = T0 + timedelta(seconds=i)
        if 100 < i < 160:  # a tunnel: no fix for a minute
            history.update(fix_at(t, None))
        else:
            history.update(fix_at(t, 10.0 * i, speed_mps=10.0))
        seen[i] = history.stats(t)
    assert seen[105].speed_known  # the last speed is 5 s old
    assert not seen[150].speed_known  # ... 50 s old
    assert seen[150].fix_fraction_60s == pytest.approx(11 / 60)  # seconds 90-100
    assert seen[150].mean_60s_mps == pytest.approx(10.0)  # 90-100, before the tunnel
    stats = seen[300]
    assert stats.mean_5m_mps == pytest.approx(10.0)  # the tunnel minute at 600 m / 60 s
    assert stats.coverage_15m == pytest.approx(300 / 900)
    assert stats.fix_fraction_60s == pytest.approx(1.0)


def test_speed_history_drops_undated_and_out_of_order_fixes() -> None:
    history = SpeedHistory()
    history.update(fix_at(T0, 0.0, speed_mps=5.0))
    history.update(Fix(time=None, tod_s=1.0))
    history.update(fix_at(T0, 0.0, speed_mps=5.0))
    history.update(fix_at(T0 - timedelta(seconds=1), 0.0, speed_mps=5.0))
    assert history.ignored == 3
    empty = SpeedHistory().stats(T0)
    assert empty.mean_15m_mps == NOMINAL_SPEED_MPS
    assert empty.coverage_15m == 0.0
    assert empty.fix_fraction_60s == 0.0
    assert not empty.speed_known
    assert empty.first_fix is None


# -- the feature rows ---------------------------------------------------------------------

FIVE_STOPS: list[StopSpec] = [
    ("S001", 200.0, 10.0, "house", 1),
    ("S002", 600.0, 10.0, "apartment", 2),
    ("S003", 1000.0, 10.0, "business", 3),
    ("S004", 1500.0, 10.0, "locker", 4),
    ("S005", 2100.0, 10.0, "house", 5),
]
FIVE_ROUTE = [(0.0, 0.0), (2500.0, 0.0)]


def driven_history(speed_mps: float, seconds: int = 600) -> SpeedHistory:
    history = SpeedHistory()
    for i in range(seconds + 1):
        history.update(fix_at(T0 + timedelta(seconds=i), speed_mps * i, speed_mps=speed_mps))
    return history


@pytest.mark.parametrize(
    "served",
    [{"S001", "S002"}, [True, True, False, False, False], np.array([1, 1, 0, 0, 0], bool)],
    ids=["ids", "flags", "mask"],
)
def test_five_stop_manifest_after_serving_two(served: Any) -> None:
    plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE))
    history = driven_history(7.0)
    now = T0 + timedelta(seconds=600)
    pos = plan.project(*geodetic(700.0), now, served)
    rows = eta_features(now, plan, pos, served, history, day_start=T0)
    assert rows.values.shape == (3, N_FEATURES)
    assert rows.values.dtype == np.float32
    assert rows.names == FEATURE_NAMES
    assert rows.stop_ids == ("S003", "S004", "S005")
    np.testing.assert_allclose(rows.column("remaining_m"), [300.0, 800.0, 1400.0], atol=1.0)
    assert rows.column("stops_before").tolist() == [0, 1, 2]
    assert rows.column("parcels_before").tolist() == [0, 3, 7]
    assert rows.column("parcels").tolist() == [3, 4, 5]
    assert rows.column("before_business").tolist() == [0, 1, 1]
    assert rows.column("before_locker").tolist() == [0, 0, 1]
    assert rows.column("before_house").tolist() == [0, 0, 0]  # S001 is served
    assert rows.column("type_business").tolist() == [1, 0, 0]
    assert rows.column("type_locker").tolist() == [0, 1, 0]
    assert rows.column("type_house").tolist() == [0, 0, 1]
    for name in ("mean_speed_60s_mps", "mean_speed_15m_mps", "moving_speed_15m_mps"):
        np.testing.assert_allclose(rows.column(name), 7.0, rtol=1e-6)
    np.testing.assert_allclose(rows.column("speed_mps"), 7.0)
    # The baseline is distance / the 15-minute mean speed, exactly (to float32).
    remaining = plan.plan_m[2:] - pos.along_m
    np.testing.assert_allclose(rows.column("naive_eta_s"), remaining / 7.0, rtol=1e-6)
    # The customer's naive: straight lines van (700, 0) -> S003 (1000, 10) -> S004 ->
    # S005, over the 5-minute mean speed; no dwell given, none counted.
    first = math.hypot(300.0, 10.0)
    np.testing.assert_allclose(
        rows.column("chain_m"), [first, first + 500.0, first + 1100.0], atol=1.0
    )
    np.testing.assert_allclose(
        rows.column("chain_naive_s"), rows.column("chain_m") / 7.0, rtol=1e-5
    )
    assert rows.column("dwell_s").tolist() == [0.0] * 3
    assert rows.column("parcels_here").tolist() == [0.0] * 3
    assert rows.column("day_elapsed_s")[0] == 600.0
    assert rows.column("pace_s_per_stop")[0] == 300.0
    assert rows.column("late_known")[0] == 0.0
    # 08:10 UTC; Saturday 21 November 2026.
    tod = 2 * math.pi * (8 * 3600 + 600) / 86400
    assert rows.column("tod_sin")[0] == pytest.approx(math.sin(tod), abs=1e-6)
    assert rows.column("dow_cos")[0] == pytest.approx(math.cos(2 * math.pi * 5 / 7), abs=1e-6)


def test_lateness_is_the_naive_arrival_against_the_next_window() -> None:
    now = T0 + timedelta(seconds=600)
    # S004 is 800 m away at 8 m/s: naive arrival at now + 100 s.
    late = {"S004": (now - timedelta(hours=1), now + timedelta(seconds=40))}
    early = {"S004": (now + timedelta(seconds=400), now + timedelta(hours=1))}
    inside = {"S004": (now, now + timedelta(hours=1))}
    history = driven_history(8.0)
    for windows, expected in ((late, 60.0), (early, -300.0), (inside, 0.0)):
        plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE, windows=windows))
        pos = plan.project(*geodetic(700.0), now, {"S001", "S002"})
        rows = eta_features(now, plan, pos, {"S001", "S002"}, history)
        assert rows.column("late_known").tolist() == [1.0] * 3
        assert rows.column("late_s")[0] == pytest.approx(expected, abs=0.5)


def test_a_parked_van_gets_the_floor_speed_and_features_stay_finite() -> None:
    plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE))
    history = driven_history(0.0)
    now = T0 + timedelta(seconds=600)
    pos = plan.project(*geodetic(100.0), now, set())
    rows = eta_features(now, plan, pos, set(), history)
    np.testing.assert_allclose(
        rows.column("naive_eta_s"), rows.column("remaining_m") / MIN_BASELINE_SPEED_MPS, rtol=1e-6
    )
    np.testing.assert_allclose(
        rows.column("chain_naive_s"), rows.column("chain_m") / MIN_BASELINE_SPEED_MPS, rtol=1e-6
    )
    assert np.isfinite(rows.values).all()


def test_the_dwell_inputs_reach_every_row_and_bad_values_read_as_zero() -> None:
    plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE))
    history = driven_history(0.0)
    now = T0 + timedelta(seconds=600)
    pos = plan.project(*geodetic(600.0), now, {"S001", "S002"})
    rows = eta_features(now, plan, pos, {"S001", "S002"}, history, dwell_s=95.0, parcels_here=2)
    assert rows.column("dwell_s").tolist() == [95.0] * 3
    assert rows.column("parcels_here").tolist() == [2.0] * 3
    for bad in (math.nan, -5.0, math.inf):
        rows = eta_features(now, plan, pos, set(), history, dwell_s=bad, parcels_here=bad)
        assert rows.column("dwell_s").tolist() == [0.0] * 5
        assert rows.column("parcels_here").tolist() == [0.0] * 5


def test_features_are_finite_with_missing_speed_hdop_and_no_history() -> None:
    plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE))
    history = SpeedHistory()
    for i in range(30):  # position-only fixes, no HDOP or satellites, standing still
        history.update(fix_at(T0 + timedelta(seconds=i), 50.0, hdop=None, sats=None))
    now = T0 + timedelta(seconds=30)
    pos = plan.project(*geodetic(50.0), now, set())
    for hist, speed_known in ((history, 1.0), (SpeedHistory(), 0.0)):
        rows = eta_features(now, plan, pos, set(), hist)
        assert np.isfinite(rows.values).all()
        assert rows.column("hdop").tolist() == [DEFAULT_HDOP] * 5
        assert rows.column("hdop_known").tolist() == [0.0] * 5
        # Standing still: a speed of 0 from positions 5 s apart, or nothing at all.
        assert rows.column("speed_known").tolist() == [speed_known] * 5
        assert rows.column("speed_mps").tolist() == [0.0] * 5
    rows = eta_features(now, plan, pos, set(), SpeedHistory())
    assert rows.column("mean_speed_15m_mps")[0] == NOMINAL_SPEED_MPS
    assert rows.column("day_elapsed_s")[0] == 0.0
    # A NaN position from a caller does not leak into the rows.
    nan_pos = PlanPosition(now, math.nan, math.nan, math.nan, 0, None, on_route=False)
    assert np.isfinite(eta_features(now, plan, nan_pos, set(), history).values).all()


def test_all_served_gives_no_rows_and_bad_inputs_raise() -> None:
    plan = RoutePlan.from_manifest(make_manifest(FIVE_STOPS, FIVE_ROUTE))
    served = {s[0] for s in FIVE_STOPS}
    pos = plan.project(*geodetic(2100.0), T0, served)
    rows = eta_features(T0, plan, pos, served, SpeedHistory())
    assert rows.values.shape == (0, N_FEATURES)
    assert len(rows) == 0
    with pytest.raises(FeatureError):
        eta_features(T0.replace(tzinfo=None), plan, pos, served, SpeedHistory())
    with pytest.raises(FeatureError):
        plan.project(*geodetic(0.0), T0, [True, False])
    with pytest.raises(ValueError, match="served flags"):
        eta_features(T0, plan, pos, np.zeros(3, bool), SpeedHistory())


def test_naive_eta() -> None:
    assert naive_eta_s(1000.0, 10.0) == 100.0
    assert naive_eta_s(1000.0, 0.0) == 1000.0 / MIN_BASELINE_SPEED_MPS
    assert naive_eta_s(1000.0, math.nan) == 1000.0 / MIN_BASELINE_SPEED_MPS
    assert naive_eta_s(-5.0, 10.0) == 0.0
    assert naive_eta_s(math.inf, 10.0) == 0.0
    np.testing.assert_allclose(naive_eta_s(np.array([0.0, 50.0, np.nan]), 5.0), [0.0, 10.0, 0.0])


# -- properties ---------------------------------------------------------------------------

TYPES = st.sampled_from(sorted(STOP_TYPES))
maybe_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    n = draw(st.integers(1, 8))
    coord = st.floats(-3000.0, 3000.0)
    stops: list[StopSpec] = [
        (f"S{i}", draw(coord), draw(coord), draw(TYPES), draw(st.integers(0, 6))) for i in range(n)
    ]
    route = draw(st.one_of(st.none(), st.lists(st.tuples(coord, coord), min_size=2, max_size=12)))
    return make_manifest(stops, route)


@settings(max_examples=150)
@given(
    manifest=manifests(),
    fixes=st.lists(
        st.tuples(
            st.floats(0.05, 30.0),  # seconds since the previous fix
            st.one_of(st.none(), st.tuples(st.floats(-4000, 4000), st.floats(-4000, 4000))),
            maybe_float,  # speed
            maybe_float,  # hdop
            st.one_of(st.none(), st.integers(0, 40)),
        ),
        min_size=1,
        max_size=25,
    ),
    served_bits=st.integers(0, 2**8 - 1),
)
def test_features_are_finite_and_remaining_distance_grows_along_the_stop_order(
    manifest: Manifest, fixes: list[Any], served_bits: int
) -> None:
    plan = RoutePlan.from_manifest(manifest)
    served = {s.id for s in manifest.stops if served_bits >> s.index & 1}
    history = SpeedHistory()
    pos: PlanPosition | None = None
    t = T0
    for dt_s, en, speed, hdop, sats in fixes:
        t += timedelta(seconds=dt_s)
        if en is None:
            history.update(Fix(time=t, tod_s=0.0, mode=FixMode.NO_FIX))
            continue
        lat, lon = geodetic(*en)
        history.update(
            Fix(t, 0.0, lat, lon, speed_mps=speed, hdop=hdop, sats_used=sats, mode=FixMode.FIX_3D)
        )
        pos = plan.project(lat, lon, t, served, since=pos)
        rows = eta_features(t, plan, pos, served, history)
        assert rows.values.shape == (plan.n_stops - len(served), N_FEATURES)
        assert np.isfinite(rows.values).all()
        remaining = rows.column("remaining_m")
        assert (np.diff(remaining) >= 0).all()
        assert (remaining >= 0).all()
        assert (rows.column("naive_eta_s") >= 0).all()
    assert (np.diff(plan.plan_m) >= 0).all()
    on = plan.on_route
    assert (np.diff(plan.route_m[on]) >= 0).all()


# -- a simulated day ----------------------------------------------------------------------


@pytest.mark.parametrize("with_route", [True, False])
@pytest.mark.parametrize("seed", [3, 11])
def test_simulated_day_remaining_distance_is_small_at_each_true_arrival(
    seed: int, *, with_route: bool
) -> None:
    scenario = generate(ScenarioConfig(seed=seed, n_stops=12))
    doc = build_manifest(scenario, seed=seed)
    if not with_route:
        doc["route"] = None
    manifest = parse_manifest(doc)
    plan = RoutePlan.from_manifest(manifest)
    if with_route:
        assert plan.on_route.all()
    radius = {s.id: s.radius_m for s in manifest.stops}
    truth = list(scenario.stops)
    served: set[str] = set()
    history = SpeedHistory()
    pos: PlanPosition | None = None
    checked = 0
    odometer_at_arrival: dict[str, float] = {}
    for epoch in scenario.epochs():
        fix = Fix(
            time=epoch.time,
            tod_s=0.0,
            lat=epoch.reported_lat,
            lon=epoch.reported_lon,
            speed_mps=epoch.reported_speed_mps,
            mode=epoch.mode,
            hdop=epoch.hdop,
            sats_used=epoch.sats_used,
        )
        history.update(fix)
        if fix.lat is None or fix.lon is None:
            continue
        pos = plan.project(fix.lat, fix.lon, epoch.time, served, since=pos)
        arriving = [s for s in truth if s.id not in served and s.arrival <= epoch.time]
        if arriving:
            stop = arriving[0]
            rows = eta_features(epoch.time, plan, pos, served, history)
            assert np.isfinite(rows.values).all()
            assert rows.stop_ids[0] == stop.id
            assert rows.column("remaining_m")[0] < 2 * radius[stop.id], stop.id
            odometer_at_arrival[stop.id] = epoch.odometer_m
            served.add(stop.id)  # the geofence engine's arrival
            checked += 1
    assert checked == len(truth)
    if with_route:
        # The plan's distances follow the van's odometer (the route is its simplified path).
        odo = np.array([odometer_at_arrival[s] for s in plan.stop_ids])
        np.testing.assert_allclose(plan.plan_m, odo, rtol=0.02, atol=60.0)
