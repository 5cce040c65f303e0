"""The generated town: a connected grid-ish street network with correct routing."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from firmware_agent.contract.geo import haversine_m
from simulator.town import (
    ARTERIAL_SPEED_LIMIT_MPS,
    BLOCK_MAX_M,
    BLOCK_MIN_M,
    JUNCTION_JITTER_MAX_M,
    RESIDENTIAL_SPEED_LIMIT_MPS,
    RoadPoint,
    Town,
    TownPath,
    generate_town,
    sample_addresses,
)


@pytest.fixture(scope="module")
def town() -> Town:
    return generate_town(seed=11, origin_lat=52.52, origin_lon=13.405, n_cols=8, n_rows=8)


def _path_cost_s(path: TownPath) -> float:
    return sum(
        math.dist(a, b) / limit
        for a, b, limit in zip(path.points, path.points[1:], path.speed_limits_mps, strict=False)
    )


def test_same_seed_same_town_different_seed_different_town() -> None:
    a = generate_town(seed=3, origin_lat=48.1, origin_lon=11.5)
    b = generate_town(seed=3, origin_lat=48.1, origin_lon=11.5)
    c = generate_town(seed=4, origin_lat=48.1, origin_lon=11.5)
    assert a.nodes == b.nodes
    assert a.roads == b.roads
    assert a.signals == b.signals
    assert a.nodes != c.nodes


def test_town_is_connected_with_blocks_of_city_size(town: Town) -> None:
    assert town.is_connected()
    slack_m = 2 * JUNCTION_JITTER_MAX_M * math.sqrt(2)
    for road in town.roads:
        assert BLOCK_MIN_M - slack_m <= road.length_m <= BLOCK_MAX_M + slack_m
    # A few residential roads are missing: the grid is not perfect.
    full_grid = 2 * 8 * 7
    assert len(town.roads) < full_grid


def test_arterials_are_faster_than_residential_streets(town: Town) -> None:
    limits = {(r.arterial, r.speed_limit_mps) for r in town.roads}
    assert limits == {(True, ARTERIAL_SPEED_LIMIT_MPS), (False, RESIDENTIAL_SPEED_LIMIT_MPS)}
    assert pytest.approx(13.9) == ARTERIAL_SPEED_LIMIT_MPS
    assert pytest.approx(8.3) == RESIDENTIAL_SPEED_LIMIT_MPS


def test_signals_stand_at_junctions_on_arterials(town: Town) -> None:
    assert town.signals
    for node in town.signals:
        assert town.degree(node) >= 3
        assert any(town.roads[r].arterial for _, r in town.neighbours(node))


def test_shortest_path_is_a_drivable_path_between_the_points(town: Town) -> None:
    rng = random.Random(1)
    for _ in range(20):
        a = _random_point(town, rng)
        b = _random_point(town, rng)
        path = town.shortest_path(a, b)
        assert path.points[0] == pytest.approx(town.point_xy(a))
        assert path.points[-1] == pytest.approx(town.point_xy(b))
        assert len(path.speed_limits_mps) == len(path.points) - 1 == len(path.roads)
        # Interior points are junctions joined by the road named for each segment.
        for i in range(1, len(path.points) - 1):
            road_in, road_out = town.roads[path.roads[i - 1]], town.roads[path.roads[i]]
            shared = {road_in.u, road_in.v} & {road_out.u, road_out.v}
            assert len(shared) == 1
            assert town.nodes[shared.pop()] == path.points[i]
        for i in path.signals:
            assert 0 < i < len(path.points) - 1


def test_shortest_path_is_optimal_against_floyd_warshall(town: Town) -> None:
    n = len(town.nodes)
    inf = math.inf
    cost = [[0.0 if i == j else inf for j in range(n)] for i in range(n)]
    for road in town.roads:
        t = road.length_m / road.speed_limit_mps
        cost[road.u][road.v] = min(cost[road.u][road.v], t)
        cost[road.v][road.u] = min(cost[road.v][road.u], t)
    for k in range(n):
        ck = cost[k]
        for i in range(n):
            cik = cost[i][k]
            if cik == inf:
                continue
            ci = cost[i]
            for j in range(n):
                if cik + ck[j] < ci[j]:
                    ci[j] = cik + ck[j]

    rng = random.Random(2)
    for _ in range(30):
        a, b = _random_point(town, rng), _random_point(town, rng)
        ra, rb = town.roads[a.road], town.roads[b.road]
        if a.road == b.road:
            best = abs(a.offset_m - b.offset_m) / ra.speed_limit_mps
        else:
            ends_a = (
                (ra.u, a.offset_m / ra.speed_limit_mps),
                (ra.v, (ra.length_m - a.offset_m) / ra.speed_limit_mps),
            )
            ends_b = (
                (rb.u, b.offset_m / rb.speed_limit_mps),
                (rb.v, (rb.length_m - b.offset_m) / rb.speed_limit_mps),
            )
            best = min(
                ca + cost[na][nb] + cb for (na, ca), (nb, cb) in itertools.product(ends_a, ends_b)
            )
        assert _path_cost_s(town.shortest_path(a, b)) == pytest.approx(best, rel=1e-9)


def test_addresses_sit_beside_the_street_and_apart(town: Town) -> None:
    addresses = sample_addresses(town, 25, random.Random(5), avoid=[town.depot])
    parks = [town.point_xy(a.park) for a in addresses]
    for address, park in zip(addresses, parks, strict=True):
        road = town.roads[address.park.road]
        (ux, uy), (vx, vy) = town.nodes[road.u], town.nodes[road.v]
        door_x, door_y = town.frame.to_local(address.lat, address.lon)
        # Distance from the door to the street's line, and along it from the parking point.
        across = abs((vx - ux) * (uy - door_y) - (ux - door_x) * (vy - uy)) / road.length_m
        assert 8.0 - 1e-6 <= across <= 25.0 + 1e-6
        park_lat, park_lon = town.to_geodetic(park)
        assert haversine_m(address.lat, address.lon, park_lat, park_lon) == pytest.approx(
            across, abs=0.01
        )
        assert 20.0 <= address.park.offset_m <= road.length_m - 20.0
    for p, q in itertools.combinations([*parks, town.point_xy(town.depot)], 2):
        assert math.dist(p, q) >= 40.0


def test_too_many_addresses_for_the_town_is_an_error() -> None:
    small = generate_town(seed=1, origin_lat=0.0, origin_lon=0.0, n_cols=3, n_rows=3)
    with pytest.raises(ValueError, match="no room"):
        sample_addresses(small, 500, random.Random(0))


def _random_point(town: Town, rng: random.Random) -> RoadPoint:
    index = rng.randrange(len(town.roads))
    return RoadPoint(index, rng.uniform(0.0, town.roads[index].length_m))
