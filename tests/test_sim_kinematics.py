"""The van's motion: caps, acceleration limits, corners, red lights, exact sampling."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.kinematics import (
    ACCEL_MPS2,
    DECEL_MPS2,
    DrivingLimits,
    LegGeometry,
    Trajectory,
    TrajectoryBuilder,
    corner_speed_mps,
    traffic_factor,
)

EPS = 1e-9


def _drive(
    leg: LegGeometry, *, factor: float = 1.0, waits: dict[int, float] | None = None
) -> Trajectory:
    builder = TrajectoryBuilder(leg.points[0])
    builder.drive(leg, speed_factor=factor, red_waits_s=waits)
    return builder.build()


def _check_profile(trajectory: Trajectory, max_speed_mps: float) -> None:
    knots = trajectory.knots
    assert knots[0][2] == 0.0
    assert knots[-1][2] == 0.0
    for (t0, s0, v0), (t1, s1, v1) in pairwise(knots):
        assert t1 > t0
        assert s1 >= s0
        assert 0.0 <= v1 <= max_speed_mps + EPS
        if s1 > s0:
            accel = (v1 * v1 - v0 * v0) / (2 * (s1 - s0))
            assert -DECEL_MPS2 - 1e-6 <= accel <= ACCEL_MPS2 + 1e-6
            # Constant acceleration: the time of a piece agrees with its speeds.
            assert t1 - t0 == pytest.approx(2 * (s1 - s0) / (v0 + v1), rel=1e-9)
        else:
            assert v0 == v1 == 0.0  # standing still (a red light, a U-turn)


@pytest.mark.parametrize(
    ("hour", "factor"),
    [(2.0, 1.0), (8.0, 0.55), (12.0, 0.8), (17.0, 0.55), (23.5, 1.0), (26.0, 1.0), (-16.0, 0.55)],
)
def test_traffic_factor_by_time_of_day(hour: float, factor: float) -> None:
    assert traffic_factor(hour) == pytest.approx(factor)


def test_traffic_factor_is_continuous() -> None:
    values = [traffic_factor(h / 60.0) for h in range(24 * 60 + 1)]
    assert max(abs(b - a) for a, b in pairwise(values)) < 0.03


def test_corner_speed_falls_with_the_angle() -> None:
    assert corner_speed_mps(90.0, 8.0, 2.0) == pytest.approx(4.0)
    speeds = [corner_speed_mps(angle, 8.0) for angle in range(10, 180, 10)]
    assert speeds == sorted(speeds, reverse=True)
    assert corner_speed_mps(0.0, 8.0) == math.inf


def test_straight_leg_reaches_the_limit_and_stops_at_the_end() -> None:
    leg = LegGeometry(((0.0, 0.0), (500.0, 0.0)), (13.9,))
    trajectory = _drive(leg, factor=0.8)
    _check_profile(trajectory, 13.9 * 0.8)
    assert max(v for _, _, v in trajectory.knots) == pytest.approx(13.9 * 0.8)
    end = trajectory.state_at(trajectory.duration_s)
    assert (end.east_m, end.north_m, end.speed_mps) == pytest.approx((500.0, 0.0, 0.0))
    # Trapezoid: accelerate, cruise, brake; it cannot be quicker than that.
    v = 13.9 * 0.8
    cruise_m = 500 - v * v / 2 / ACCEL_MPS2 - v * v / 2 / DECEL_MPS2
    ideal_s = v / ACCEL_MPS2 + v / DECEL_MPS2 + cruise_m / v
    assert ideal_s - 1e-6 <= trajectory.duration_s < ideal_s * 1.01


def test_a_right_angle_is_taken_at_corner_speed_with_a_gradual_course() -> None:
    leg = LegGeometry(((0.0, 0.0), (200.0, 0.0), (200.0, 200.0)), (13.9, 13.9))
    trajectory = _drive(leg)
    _check_profile(trajectory, 13.9)
    # Around the corner the speed is held to the 90° corner speed (4 m/s with 8 m tangents).
    near_corner = [v for _, s, v in trajectory.knots if 193.0 <= s <= 205.0]
    assert near_corner
    assert max(near_corner) <= corner_speed_mps(90.0, 8.0) + EPS
    # The course swings from east to north through intermediate headings, not in one jump.
    courses = {
        round(trajectory.state_at(t / 10).course_deg)
        for t in range(int(trajectory.duration_s * 10))
    }
    assert {90, 0} <= courses
    assert any(5 < c < 85 for c in courses)


def test_a_red_light_stops_the_van_before_the_junction() -> None:
    leg = LegGeometry(((0.0, 0.0), (150.0, 0.0), (300.0, 0.0)), (13.9, 13.9), frozenset({1}))
    green = _drive(leg)
    red = _drive(leg, waits={1: 30.0})
    _check_profile(red, 13.9)
    assert red.duration_s > green.duration_s + 30.0
    halts = [
        (t1 - t0, s0)
        for (t0, s0, v0), (t1, s1, v1) in pairwise(red.knots)
        if s0 == s1 and v0 == v1 == 0.0
    ]
    assert len(halts) == 1
    wait_s, where_m = halts[0]
    assert wait_s == pytest.approx(30.0)
    assert 140.0 <= where_m < 150.0  # at the stop line, short of the junction
    # Waits offered for points that are not signals are ignored.
    assert _drive(leg, waits={2: 30.0}).duration_s == pytest.approx(green.duration_s)


def test_a_u_turn_is_made_at_a_standstill() -> None:
    leg = LegGeometry(((0.0, 0.0), (100.0, 0.0), (0.0, 0.5)), (8.3, 8.3))
    trajectory = _drive(leg)
    _check_profile(trajectory, 8.3)
    at_turn = [v for _, s, v in trajectory.knots if s == pytest.approx(100.0)]
    assert at_turn
    assert set(at_turn) == {0.0}


def test_legs_chain_with_holds_and_sampling_is_monotonic() -> None:
    builder = TrajectoryBuilder((0.0, 0.0))
    builder.hold_until(10.0)
    builder.drive(LegGeometry(((0.0, 0.0), (120.0, 50.0)), (8.3,)))
    arrived = builder.t_s
    builder.hold_until(arrived + 60.0)
    builder.drive(LegGeometry(((120.0, 50.0), (120.0, 250.0), (-30.0, 260.0)), (13.9, 8.3)))
    trajectory = builder.build()
    assert trajectory.state_at(5.0).speed_mps == 0.0
    assert trajectory.state_at(arrived + 30.0).speed_mps == 0.0
    assert (
        trajectory.state_at(arrived + 30.0).east_m,
        trajectory.state_at(arrived + 30.0).north_m,
    ) == pytest.approx((120.0, 50.0))
    previous = -1.0
    for k in range(int(trajectory.duration_s * 10) + 5):
        state = trajectory.state_at(k / 10)
        assert state.odometer_m >= previous
        assert state.speed_mps <= trajectory.speed_limit_at(state.odometer_m) + EPS
        previous = state.odometer_m
    assert trajectory.length_m == pytest.approx(previous)


def test_a_leg_must_start_where_the_van_is() -> None:
    builder = TrajectoryBuilder((0.0, 0.0))
    with pytest.raises(ValueError, match="start where the van is"):
        builder.drive(LegGeometry(((5.0, 0.0), (50.0, 0.0)), (8.3,)))
    with pytest.raises(ValueError, match="speed factor"):
        builder.drive(LegGeometry(((0.0, 0.0), (50.0, 0.0)), (8.3,)), speed_factor=0.0)
    with pytest.raises(ValueError, match="positive"):
        DrivingLimits(accel_mps2=0.0)


_points = st.lists(st.tuples(st.floats(-400, 400), st.floats(-400, 400)), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(
    points=_points,
    limits=st.lists(st.sampled_from([8.3, 13.9, 5.0]), min_size=7, max_size=7),
    factor=st.floats(0.3, 1.0),
    signal_waits=st.dictionaries(st.integers(1, 6), st.floats(0.0, 60.0), max_size=3),
)
def test_any_leg_respects_caps_and_acceleration_bounds(
    points: list[tuple[float, float]],
    limits: list[float],
    factor: float,
    signal_waits: dict[int, float],
) -> None:
    leg = LegGeometry(tuple(points), tuple(limits[: len(points) - 1]), frozenset(signal_waits))
    trajectory = _drive(leg, factor=factor, waits=signal_waits)
    _check_profile(trajectory, max(limits) * factor)
    end = trajectory.state_at(trajectory.duration_s + 1.0)
    # Legs shorter than 1 cm are not driven; otherwise the van ends exactly at the end.
    assert (end.east_m, end.north_m) == pytest.approx(points[-1], abs=0.01)
    for k in range(int(trajectory.duration_s) + 1):
        state = trajectory.state_at(float(k))
        assert state.speed_mps <= trajectory.speed_limit_at(state.odometer_m) * factor + EPS
