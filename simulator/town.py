"""A generated town: a seeded, grid-ish street network to drive delivery days on.

The town is a graph of junctions (nodes, in a local east/north frame in metres) and
roads (edges). Blocks are 80-200 m, junctions are jittered by a few metres so no two
towns look alike, every fourth street is an arterial (50 km/h) and the rest are
residential (30 km/h); a few residential roads are missing so the grid is not
perfect. Arterial crossings have traffic lights, as do some arterial/residential
junctions.

Routing is Dijkstra on travel time (length over speed limit) from a point on one
road to a point on another, which is how a van's navigation picks arterials.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_agent.contract.geo import LocalFrame
from simulator.rng import stream as random_stream

ARTERIAL_SPEED_LIMIT_MPS = 13.9  # 50 km/h
RESIDENTIAL_SPEED_LIMIT_MPS = 8.3  # 30 km/h

BLOCK_MIN_M = 80.0
BLOCK_MAX_M = 200.0
JUNCTION_JITTER_SIGMA_M = 5.0
JUNCTION_JITTER_MAX_M = 12.0
ARTERIAL_EVERY = 4  # every fourth street (columns and rows) is an arterial
MISSING_ROAD_PROBABILITY = 0.1  # residential roads left out to break the perfect grid
SIGNAL_PROBABILITY_ARTERIAL_RESIDENTIAL = 0.25

ADDRESS_SETBACK_M = (8.0, 25.0)  # door to kerb, measured square to the street
ADDRESS_END_CLEARANCE_M = 20.0  # nobody parks inside a junction
ADDRESS_MIN_SPACING_M = 40.0  # distinct stops are distinct places
ARTERIAL_ADDRESS_WEIGHT = 0.35  # fewer deliveries front onto arterials

XY = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Road:
    """A street between junctions ``u`` and ``v``, drivable both ways."""

    u: int
    v: int
    length_m: float
    speed_limit_mps: float
    arterial: bool


@dataclass(frozen=True, slots=True)
class RoadPoint:
    """A point on road ``road`` (an index into :attr:`Town.roads`), ``offset_m`` from its ``u``."""

    road: int
    offset_m: float


@dataclass(frozen=True, slots=True)
class Address:
    """A delivery address: the door and the road point in front of it where the van parks."""

    lat: float
    lon: float
    park: RoadPoint


@dataclass(frozen=True, slots=True)
class TownPath:
    """A drivable path between two road points.

    ``points`` are east/north metres, ``speed_limits_mps[i]`` and ``roads[i]`` belong to
    the segment from ``points[i]`` to ``points[i + 1]``; ``signals`` holds the indices
    of interior points that are junctions with traffic lights.
    """

    points: tuple[XY, ...]
    speed_limits_mps: tuple[float, ...]
    roads: tuple[int, ...]
    signals: frozenset[int]


class Town:
    """A street network in a local frame; build one with :func:`generate_town`."""

    def __init__(
        self,
        *,
        frame: LocalFrame,
        nodes: Sequence[XY],
        roads: Sequence[Road],
        signals: frozenset[int],
        depot: RoadPoint,
    ) -> None:
        self.frame = frame
        self.nodes: tuple[XY, ...] = tuple(nodes)
        self.roads: tuple[Road, ...] = tuple(roads)
        self.signals = signals
        self.depot = depot
        self._adjacency: list[list[tuple[int, int]]] = [[] for _ in self.nodes]
        for index, road in enumerate(self.roads):
            self._adjacency[road.u].append((road.v, index))
            self._adjacency[road.v].append((road.u, index))

    def degree(self, node: int) -> int:
        """How many roads meet at ``node``."""
        return len(self._adjacency[node])

    def neighbours(self, node: int) -> list[tuple[int, int]]:
        """``(neighbour node, road index)`` for each road at ``node``."""
        return list(self._adjacency[node])

    def point_xy(self, point: RoadPoint) -> XY:
        """East/north metres of a road point."""
        road = self.roads[point.road]
        (ux, uy), (vx, vy) = self.nodes[road.u], self.nodes[road.v]
        f = point.offset_m / road.length_m
        return (ux + (vx - ux) * f, uy + (vy - uy) * f)

    def to_geodetic(self, xy: XY) -> tuple[float, float]:
        """(lat, lon) of a point of the town."""
        return self.frame.to_geodetic(xy[0], xy[1])

    def is_connected(self) -> bool:
        """Whether every junction can reach every other."""
        return _connected(len(self.nodes), self.roads)

    def shortest_path(self, start: RoadPoint, end: RoadPoint) -> TownPath:
        """The quickest path (by speed limits) from ``start`` to ``end``.

        Starting and ending points lie inside roads, so the search starts from both
        ends of the start road, with the cost of reaching each, and finishes through
        either end of the end road. Two points on one road are joined directly, which
        is never slower than leaving the road and coming back.
        """
        a_road, b_road = self.roads[start.road], self.roads[end.road]
        a_xy, b_xy = self.point_xy(start), self.point_xy(end)
        if start.road == end.road:
            return TownPath((a_xy, b_xy), (a_road.speed_limit_mps,), (start.road,), frozenset())

        cost: dict[int, float] = {}
        previous: dict[int, tuple[int, int] | None] = {}
        heap: list[tuple[float, int, int, int]] = []
        # (cost, node, previous node or -1 for the start point, road taken)
        for node, distance_m in (
            (a_road.u, start.offset_m),
            (a_road.v, a_road.length_m - start.offset_m),
        ):
            heapq.heappush(heap, (distance_m / a_road.speed_limit_mps, node, -1, start.road))
        targets = {b_road.u, b_road.v}
        while heap and targets:
            c, node, prev, via = heapq.heappop(heap)
            if node in cost:
                continue
            cost[node] = c
            previous[node] = None if prev < 0 else (prev, via)
            targets.discard(node)
            for neighbour, road_index in self._adjacency[node]:
                if neighbour not in cost:
                    road = self.roads[road_index]
                    heapq.heappush(
                        heap,
                        (c + road.length_m / road.speed_limit_mps, neighbour, node, road_index),
                    )
        via_u = cost[b_road.u] + end.offset_m / b_road.speed_limit_mps
        via_v = cost[b_road.v] + (b_road.length_m - end.offset_m) / b_road.speed_limit_mps
        last = b_road.u if via_u <= via_v else b_road.v

        nodes = [last]
        roads: list[int] = []
        step = previous[last]
        while step is not None:
            node, road_index = step
            nodes.append(node)
            roads.append(road_index)
            step = previous[node]
        nodes.reverse()
        roads.reverse()

        points = (a_xy, *(self.nodes[n] for n in nodes), b_xy)
        segment_roads = (start.road, *roads, end.road)
        limits = tuple(self.roads[r].speed_limit_mps for r in segment_roads)
        signals = frozenset(i + 1 for i, n in enumerate(nodes) if n in self.signals)
        return TownPath(points, limits, segment_roads, signals)


def grid_size_for(n_stops: int) -> int:
    """Junctions per side of a town that spreads ``n_stops`` deliveries sensibly."""
    return max(8, min(40, math.ceil(3.0 * math.sqrt(max(1, n_stops)))))


def generate_town(
    *,
    seed: int | str,
    origin_lat: float,
    origin_lon: float,
    n_cols: int = 10,
    n_rows: int = 10,
) -> Town:
    """A grid-ish town of ``n_cols`` x ``n_rows`` junctions centred on the origin.

    Deterministic: the same arguments give the same town.
    """
    if n_cols < 3 or n_rows < 3:
        raise ValueError("a town needs at least 3 x 3 junctions")
    rng = random_stream("town", seed)
    xs = _street_positions(rng, n_cols)
    ys = _street_positions(rng, n_rows)

    def jitter() -> float:
        return max(
            -JUNCTION_JITTER_MAX_M,
            min(JUNCTION_JITTER_MAX_M, rng.gauss(0.0, JUNCTION_JITTER_SIGMA_M)),
        )

    nodes = [(x + jitter(), y + jitter()) for y in ys for x in xs]
    arterial_cols = {i for i in range(n_cols) if i % ARTERIAL_EVERY == ARTERIAL_EVERY // 2}
    arterial_rows = {j for j in range(n_rows) if j % ARTERIAL_EVERY == ARTERIAL_EVERY // 2}

    def node(i: int, j: int) -> int:
        return j * n_cols + i

    def road(u: int, v: int, arterial: bool) -> Road:
        (ux, uy), (vx, vy) = nodes[u], nodes[v]
        limit = ARTERIAL_SPEED_LIMIT_MPS if arterial else RESIDENTIAL_SPEED_LIMIT_MPS
        return Road(u, v, math.hypot(vx - ux, vy - uy), limit, arterial)

    roads: list[Road] = []
    for j in range(n_rows):
        for i in range(n_cols - 1):
            roads.append(road(node(i, j), node(i + 1, j), j in arterial_rows))
    for i in range(n_cols):
        for j in range(n_rows - 1):
            roads.append(road(node(i, j), node(i, j + 1), i in arterial_cols))

    # The depot sits on the first arterial row at the west edge of town.
    depot_row = min(arterial_rows)
    depot_road = next(
        r for r in roads if r.arterial and {r.u, r.v} == {node(0, depot_row), node(1, depot_row)}
    )
    # Thin the residential grid, but never so that a junction becomes unreachable.
    for candidate in [r for r in roads if not r.arterial]:
        if rng.random() < MISSING_ROAD_PROBABILITY:
            remaining = [r for r in roads if r is not candidate]
            if _connected(len(nodes), remaining):
                roads = remaining

    degree = [0] * len(nodes)
    arterial_degree = [0] * len(nodes)
    for r in roads:
        for n in (r.u, r.v):
            degree[n] += 1
            arterial_degree[n] += r.arterial
    crossings = {node(i, j) for i in arterial_cols for j in arterial_rows}
    signals = frozenset(
        n
        for n in range(len(nodes))
        if n in crossings
        or (
            degree[n] >= 3
            and arterial_degree[n] >= 1
            and rng.random() < SIGNAL_PROBABILITY_ARTERIAL_RESIDENTIAL
        )
    )
    depot = RoadPoint(roads.index(depot_road), depot_road.length_m / 2.0)
    return Town(
        frame=LocalFrame(origin_lat, origin_lon),
        nodes=nodes,
        roads=roads,
        signals=signals,
        depot=depot,
    )


def sample_addresses(
    town: Town,
    count: int,
    rng: random.Random,
    *,
    avoid: Sequence[RoadPoint] = (),
    min_spacing_m: float = ADDRESS_MIN_SPACING_M,
) -> list[Address]:
    """``count`` distinct addresses, their parking points ``min_spacing_m`` apart.

    Each door is 8-25 m from the kerb, square to the street, on either side; parking
    points keep clear of junctions and of the ``avoid`` points (the depot).
    """
    weights = [
        r.length_m * (ARTERIAL_ADDRESS_WEIGHT if r.arterial else 1.0)
        if r.length_m > 2 * ADDRESS_END_CLEARANCE_M
        else 0.0
        for r in town.roads
    ]
    taken = [town.point_xy(p) for p in avoid]
    addresses: list[Address] = []
    attempts = 0
    while len(addresses) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"the town has no room for {count} addresses {min_spacing_m} m apart")
        road_index = rng.choices(range(len(town.roads)), weights=weights)[0]
        road = town.roads[road_index]
        offset_m = rng.uniform(ADDRESS_END_CLEARANCE_M, road.length_m - ADDRESS_END_CLEARANCE_M)
        park = RoadPoint(road_index, offset_m)
        px, py = town.point_xy(park)
        if any(math.hypot(px - x, py - y) < min_spacing_m for x, y in taken):
            continue
        (ux, uy), (vx, vy) = town.nodes[road.u], town.nodes[road.v]
        side = rng.choice((-1.0, 1.0))
        setback_m = rng.uniform(*ADDRESS_SETBACK_M)
        # The unit normal of the road, turned to the chosen side.
        nx, ny = -(vy - uy) / road.length_m, (vx - ux) / road.length_m
        lat, lon = town.to_geodetic((px + side * setback_m * nx, py + side * setback_m * ny))
        addresses.append(Address(lat, lon, park))
        taken.append((px, py))
    return addresses


def _street_positions(rng: random.Random, count: int) -> list[float]:
    """Positions of ``count`` parallel streets, blocks 80-200 m apart, centred on 0."""
    positions = [0.0]
    for _ in range(count - 1):
        positions.append(positions[-1] + rng.uniform(BLOCK_MIN_M, BLOCK_MAX_M))
    middle = positions[-1] / 2.0
    return [p - middle for p in positions]


def _connected(n_nodes: int, roads: Sequence[Road]) -> bool:
    adjacency: list[list[int]] = [[] for _ in range(n_nodes)]
    for r in roads:
        adjacency[r.u].append(r.v)
        adjacency[r.v].append(r.u)
    seen = {0}
    frontier = [0]
    while frontier:
        for neighbour in adjacency[frontier.pop()]:
            if neighbour not in seen:
                seen.add(neighbour)
                frontier.append(neighbour)
    return len(seen) == n_nodes
