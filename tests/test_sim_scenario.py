"""A generated day: determinism, stops, motion limits, rates, configuration."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.geo import haversine_m
from simulator.epoch import Epoch
from simulator.errors import ConfigError, SimulatorError
from simulator.gnss_errors import OutageConfig, OutageWindow
from simulator.kinematics import ACCEL_MPS2, DECEL_MPS2
from simulator.nmea_writer import epoch_bytes
from simulator.scenario import Scenario, ScenarioConfig, generate
from simulator.stops import DWELL_RANGE_S
from simulator.town import ARTERIAL_SPEED_LIMIT_MPS


@pytest.fixture(scope="module")
def day() -> tuple[Scenario, list[Epoch]]:
    scenario = generate(ScenarioConfig(seed=21, n_stops=10))
    return scenario, list(scenario.epochs())


@pytest.fixture(scope="module")
def fast_day() -> tuple[Scenario, list[Epoch]]:
    scenario = generate(ScenarioConfig(seed=8, n_stops=5, rate_hz=10))
    return scenario, list(scenario.epochs())


def _nmea(scenario: Scenario) -> bytes:
    return b"".join(epoch_bytes(e, scenario.config.talker) for e in scenario.epochs())


def test_same_config_gives_identical_epochs_and_bytes() -> None:
    config = ScenarioConfig(seed=5, n_stops=2, rate_hz=5, talker="GN")
    first, second = generate(config), generate(config)
    assert first.stops == second.stops
    assert list(first.epochs()) == list(second.epochs())
    assert _nmea(first) == _nmea(second)
    # epochs() is a fresh pass each time, not a half-consumed stream.
    assert _nmea(first) == _nmea(first)


def test_another_seed_gives_another_day() -> None:
    a = generate(ScenarioConfig(seed=5, n_stops=4))
    b = generate(ScenarioConfig(seed=6, n_stops=4))
    assert [s.park_lat for s in a.stops] != [s.park_lat for s in b.stops]
    assert _nmea(a) != _nmea(b)


def test_stops_are_served_in_order_with_dwell_by_type(day: tuple[Scenario, list[Epoch]]) -> None:
    scenario, _ = day
    assert [s.id for s in scenario.stops] == [f"S{i:03d}" for i in range(1, 11)]
    for stop in scenario.stops:
        assert stop.arrival.tzinfo is not None
        assert stop.arrival < stop.departure
        low, high = DWELL_RANGE_S[stop.type]
        assert low <= stop.dwell_s <= high
        assert (
            8.0 - 0.01
            <= haversine_m(stop.lat, stop.lon, stop.park_lat, stop.park_lon)
            <= 25.0 + 0.01
        )
    for previous, following in pairwise(scenario.stops):
        assert previous.departure < following.arrival


def test_at_each_stop_the_van_stands_at_the_parking_point(
    day: tuple[Scenario, list[Epoch]],
) -> None:
    scenario, epochs = day
    for stop in scenario.stops:
        during = [e for e in epochs if stop.arrival <= e.time <= stop.departure]
        assert len(during) >= int(stop.dwell_s) - 1
        for epoch in during:
            assert epoch.speed_mps == 0.0
            assert haversine_m(epoch.lat, epoch.lon, stop.park_lat, stop.park_lon) < 1.0
            assert epoch.stop_id == stop.id
    at_stops = {e.time for e in epochs if e.stop_id is not None}
    assert at_stops == {
        e.time for e in epochs if any(s.arrival <= e.time <= s.departure for s in scenario.stops)
    }
    # Between stops the van moves: arrival is when it comes to rest, not before.
    for stop in scenario.stops:
        just_before = [
            e for e in epochs if stop.arrival - timedelta(seconds=5) <= e.time < stop.arrival
        ]
        assert any(e.speed_mps > 0 for e in just_before)


def test_speed_never_exceeds_the_limit(day: tuple[Scenario, list[Epoch]]) -> None:
    scenario, epochs = day
    assert max(e.speed_mps for e in epochs) > 3.0
    for epoch in epochs:
        assert epoch.speed_mps <= scenario.trajectory.speed_limit_at(epoch.odometer_m) + 1e-9
        assert epoch.speed_mps <= ARTERIAL_SPEED_LIMIT_MPS + 1e-9


def test_acceleration_from_finite_differences_stays_in_bounds(
    fast_day: tuple[Scenario, list[Epoch]],
) -> None:
    _, epochs = fast_day
    dt = 0.1
    # Along the path (odometer): exactly within the limits.
    along = [(b.odometer_m - a.odometer_m) / dt for a, b in pairwise(epochs)]
    accel = [(b - a) / dt for a, b in pairwise(along)]
    assert max(accel) <= ACCEL_MPS2 + 0.05
    assert min(accel) >= -DECEL_MPS2 - 0.05
    assert max(accel) > 1.0  # the van does accelerate briskly
    # From positions: chords cut corners, so allow a little more.
    speeds = [haversine_m(a.lat, a.lon, b.lat, b.lon) / dt for a, b in pairwise(epochs)]
    accel = [(b - a) / dt for a, b in pairwise(speeds)]
    assert max(accel) <= ACCEL_MPS2 + 0.4
    assert min(accel) >= -DECEL_MPS2 - 0.4
    assert max(speeds) <= ARTERIAL_SPEED_LIMIT_MPS + 0.05


@pytest.mark.parametrize("rate_hz", [1, 5, 10])
def test_epochs_come_at_the_chosen_rate(rate_hz: int) -> None:
    scenario = generate(ScenarioConfig(seed=3, n_stops=1, rate_hz=rate_hz, max_duration_s=120.0))
    epochs = list(scenario.epochs())
    assert len(epochs) == scenario.n_epochs == 120 * rate_hz + 1
    step = timedelta(seconds=1) / rate_hz
    assert all(b.time - a.time == step for a, b in pairwise(epochs))
    assert epochs[0].time == scenario.start
    assert epochs[-1].time == scenario.end == scenario.start + timedelta(seconds=120)


def test_a_duration_cap_keeps_only_completed_stops() -> None:
    full = generate(ScenarioConfig(seed=9, n_stops=8))
    cap_s = (full.stops[3].departure - full.start).total_seconds() + 30.0
    capped = generate(ScenarioConfig(seed=9, n_stops=8, max_duration_s=cap_s))
    assert capped.stops == full.stops[:4]
    assert capped.duration_s == cap_s


def test_rush_hour_takes_longer_than_the_night() -> None:
    # Same seed: the same town, stops and dwell draws; only the traffic differs.
    rush = generate(
        ScenarioConfig(seed=4, n_stops=6, start=datetime(2026, 11, 21, 7, 0, tzinfo=UTC))
    )
    night = generate(
        ScenarioConfig(seed=4, n_stops=6, start=datetime(2026, 11, 21, 1, 0, tzinfo=UTC))
    )
    assert [s.id for s in rush.stops] == [s.id for s in night.stops]
    assert rush.trajectory.length_m == pytest.approx(night.trajectory.length_m)
    driving_rush = rush.duration_s - sum(s.dwell_s for s in rush.stops)
    driving_night = night.duration_s - sum(s.dwell_s for s in night.stops)
    assert driving_rush > 1.2 * driving_night


def test_no_noise_no_multipath_no_outages_reports_the_truth() -> None:
    config = ScenarioConfig(seed=2, n_stops=3)
    clean = dataclasses.replace(
        config,
        noise=dataclasses.replace(config.noise, enabled=False),
        multipath=dataclasses.replace(config.multipath, enabled=False),
        outages=dataclasses.replace(config.outages, enabled=False),
    )
    for epoch in generate(clean).epochs():
        assert epoch.mode is FixMode.FIX_3D
        assert not epoch.outage
        assert not epoch.multipath
        assert (epoch.reported_lat, epoch.reported_lon) == (epoch.lat, epoch.lon)


def test_tunnels_lie_on_the_route_and_hide_the_sky() -> None:
    scenario = generate(
        ScenarioConfig(seed=21, n_stops=10, outages=OutageConfig(tunnels=2, startup_no_fix_s=0))
    )
    assert len(scenario.tunnels) == 2
    in_tunnel = 0
    for epoch in scenario.epochs():
        east, north = scenario.frame.to_local(epoch.lat, epoch.lon)
        if any(t.contains(east, north) for t in scenario.tunnels):
            in_tunnel += 1
            assert epoch.outage
            assert epoch.mode is FixMode.NO_FIX
            assert epoch.reported_lat is None
    assert in_tunnel > 0
    for stop in scenario.stops:
        east, north = scenario.frame.to_local(stop.park_lat, stop.park_lon)
        assert not any(t.contains(east, north) for t in scenario.tunnels)


def test_ten_stops_at_1_hz_generate_quickly() -> None:
    # CPU time, not wall time: a guard against an order-of-magnitude slowdown that
    # other processes on a loaded machine (pytest-xdist's other worker) cannot trip.
    started = time.process_time()
    scenario = generate(ScenarioConfig(seed=1, n_stops=10))
    epochs = sum(1 for _ in scenario.epochs())
    elapsed = time.process_time() - started
    assert epochs > 1000
    assert elapsed < 2.0


@pytest.mark.slow
def test_an_hour_at_10_hz_with_nmea_generates_well_within_30_s() -> None:
    started = time.process_time()  # CPU time, as above
    scenario = generate(ScenarioConfig(seed=1, n_stops=20, rate_hz=10, max_duration_s=3600.0))
    total = 0
    count = 0
    for epoch in scenario.epochs():
        total += len(epoch_bytes(epoch, "GN"))
        count += 1
    elapsed = time.process_time() - started
    assert count == 36_001
    assert total > 10_000_000
    assert elapsed < 30.0


@pytest.mark.parametrize(
    "changes",
    [
        {"rate_hz": 2},
        {"talker": "GL"},
        {"n_stops": 0},
        {"start": datetime(2026, 11, 21, 8, 0)},
        {"start": datetime(2026, 11, 21, 8, 0, 0, 5, tzinfo=UTC)},
        {"max_duration_s": 0.0},
        {"seed": "seven"},
    ],
)
def test_bad_configs_are_refused_with_a_config_error(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        ScenarioConfig(**changes)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, SimulatorError)


def test_config_round_trips_through_json() -> None:
    config = ScenarioConfig(
        seed=12,
        n_stops=7,
        rate_hz=10,
        talker="GN",
        max_duration_s=1800.0,
        outages=OutageConfig(windows=(OutageWindow(100.0, 20.0),), tunnels=0),
    )
    assert ScenarioConfig.from_json_dict(config.to_json_dict()) == config
    data = config.to_json_dict()
    data["config"]["noise"]["loudness"] = 3
    with pytest.raises(ConfigError, match="loudness"):
        ScenarioConfig.from_json_dict(data)
