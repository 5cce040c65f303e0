"""Planar geometry and spatial indexes for per-fix geofence queries.

Everything works in a local east/north plane in metres (equirectangular around the
manifest's first stop: < 1 cm/km of error within a city, and two multiplications per
fix). :class:`StopGrid` is a uniform grid hash: each cell lists the stops whose fence
plus border reaches into it, so a query costs one dict lookup and a handful of distance
computations whatever the manifest's size. :class:`RouteGrid` does the same for the
planned route's segments.

Both grids bound their work by their geometry, never by a number a downlink chose: the
cells a grid lists are counted first (arithmetic, one step per fence or segment), and
while they would exceed :data:`MAX_GRID_ENTRIES` (or 4 per fence or segment, the least
any cell size gives) the cell size doubles. A coarser cell only makes a query look at
more candidates; the answers stay exact. A route segment lists the cells its reach
crosses, column by column, not its bounding box: a 100 km segment costs a few thousand
cells, not the box's millions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from firmware_agent.contract.geo import EARTH_RADIUS_M

_M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0

# The most (cell, fence) or (cell, segment) entries one grid lists, unless its fences or
# segments are so many that 4 each is more (the least any cell size gives): ~60 MB of
# Python objects at worst, built in well under a second. A city's 10,000 stops at the
# default 250 m cells list ~40,000 entries; a route ~3 per 75 m of its length, and a
# dense one (a vertex every 10 m) ~10 per vertex.
MAX_GRID_ENTRIES: Final = 250_000
# And fences list at most this many cells each on average: a cell much smaller than
# the fences selects no better, it only costs memory (one 30 m fence at 0.001 m cells
# would list billions).
FENCE_ENTRIES: Final = 64
# The route grid's cell is the deviation threshold, but never below this: a cell smaller
# than a GNSS error selects no better, and a 1 m cell along a 100 km segment would list
# 300,000 cells (half a second per build) for nothing.
MIN_ROUTE_CELL_M: Final = 10.0


@dataclass(frozen=True, slots=True)
class Plane:
    """A local tangent plane; :meth:`xy` is the hot path, so its factors are stored."""

    origin_lat: float
    origin_lon: float
    kx: float
    ky: float

    @classmethod
    def at(cls, lat: float, lon: float) -> Plane:
        return cls(lat, lon, _M_PER_DEG * math.cos(math.radians(lat)), _M_PER_DEG)

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.origin_lon) * self.kx, (lat - self.origin_lat) * self.ky

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        return self.origin_lat + y / self.ky, self.origin_lon + x / self.kx


def _segment_distance(  # noqa: PLR0917 (a point and a segment: six coordinates)
    px: float, py: float, ax: float, ay: float, bx: float, by: float
) -> float:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        return math.hypot(px - ax, py - ay)
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)


class Shape:
    """A stop's fence: a circle, or a polygon (with its bounding circle for indexing)."""

    __slots__ = ("cx", "cy", "polygon", "radius_m")

    def __init__(
        self, cx: float, cy: float, radius_m: float, polygon: Sequence[tuple[float, float]] | None
    ) -> None:
        self.cx = cx
        self.cy = cy
        self.radius_m = radius_m
        self.polygon = tuple(polygon) if polygon else None

    def center_distance(self, x: float, y: float) -> float:
        return math.hypot(x - self.cx, y - self.cy)

    def outside_m(self, x: float, y: float) -> float:
        """0 inside the fence, else the distance to it in metres."""
        if self.polygon is None:
            return max(0.0, math.hypot(x - self.cx, y - self.cy) - self.radius_m)
        if self._contains(x, y):
            return 0.0
        ring = self.polygon
        return min(_segment_distance(x, y, *ring[i - 1], *ring[i]) for i in range(len(ring)))

    def _contains(self, x: float, y: float) -> bool:
        # Even-odd ray casting.
        inside = False
        ring = self.polygon or ()
        x0, y0 = ring[-1]
        for x1, y1 in ring:
            if (y1 > y) != (y0 > y) and x < (x0 - x1) * (y - y1) / (y0 - y1) + x1:
                inside = not inside
            x0, y0 = x1, y1
        return inside


def _span(lo: float, hi: float, cell_m: float) -> int:
    """How many cells of size ``cell_m`` the interval [lo, hi] touches along one axis."""
    return math.floor(hi / cell_m) - math.floor(lo / cell_m) + 1


def _fit_cell(
    entries: Callable[[float], int], cell_m: float, items: int, max_entries: int
) -> tuple[float, int]:
    """``cell_m``, or the first larger cell found whose grid lists at most
    ``max(max_entries, 4 * items)`` entries (``entries(cell)`` counts them without
    listing them, in one step per item), and that count.

    Each step grows the cell by at least 2 and by the square root of the excess (the
    count falls with the cell like 1/c for segments, 1/c^2 for fences), so a handful
    of counts settle it. Any grid whose cell exceeds its largest fence or segment lists
    at most 4 entries per item: the search ends."""
    if not (math.isfinite(cell_m) and cell_m > 0):
        raise ValueError(f"grid cell must be a finite size > 0 m, got {cell_m!r}")
    limit = max(max_entries, 4 * items)
    count = entries(cell_m)
    while count > limit:
        cell_m *= max(2.0, math.sqrt(count / limit))
        count = entries(cell_m)
    return cell_m, count


class StopGrid:
    """Which stops' fences (plus ``reach_m``) may contain a point.

    ``cell_m`` is the configured cell size; :attr:`cell_m` the one used, larger when the
    fences would list more than :data:`FENCE_ENTRIES` cells each on average, or more
    than ``max_entries`` in all, at the configured one.
    """

    def __init__(
        self,
        shapes: Sequence[Shape],
        *,
        cell_m: float,
        reach_m: float,
        max_entries: int = MAX_GRID_ENTRIES,
    ) -> None:
        if not (math.isfinite(reach_m) and reach_m >= 0):
            raise ValueError(f"grid reach must be a finite distance >= 0 m, got {reach_m!r}")
        boxes = [
            (s.cx - r, s.cy - r, s.cx + r, s.cy + r)
            for s in shapes
            for r in (s.radius_m + reach_m,)
        ]

        def entries(c: float) -> int:
            return sum(_span(x0, x1, c) * _span(y0, y1, c) for x0, y0, x1, y1 in boxes)

        self.cell_m, self.entries_bound = _fit_cell(
            entries, cell_m, len(boxes), min(max_entries, FENCE_ENTRIES * len(boxes))
        )
        c = self.cell_m
        cells: dict[tuple[int, int], list[int]] = {}
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            for ix in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
                for iy in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                    cells.setdefault((ix, iy), []).append(i)
        self._cells = {key: tuple(ids) for key, ids in cells.items()}
        self.entries = sum(map(len, self._cells.values()))  # as listed: <= entries_bound

    def near(self, x: float, y: float) -> tuple[int, ...]:
        c = self.cell_m
        return self._cells.get((math.floor(x / c), math.floor(y / c)), ())


def _major(
    a: tuple[float, float], b: tuple[float, float]
) -> tuple[bool, float, float, float, float]:
    """A segment along its major axis u (x unless it is steeper than 45 degrees), in
    increasing u: (swapped, u0, v0, u1, v1)."""
    (ax, ay), (bx, by) = a, b
    swapped = abs(by - ay) > abs(bx - ax)
    if swapped:
        ax, ay, bx, by = ay, ax, by, bx
    if bx < ax:
        ax, ay, bx, by = bx, by, ax, ay
    return swapped, ax, ay, bx, by


def _segments_bound(
    segments: Sequence[tuple[bool, float, float, float, float]], reach_m: float, cell_m: float
) -> int:
    """At most how many cells :func:`segment_cells` lists for these segments (each as
    :func:`_major` gives it), in O(1) each."""
    r, c = reach_m, cell_m
    total = 0
    for _, u0, v0, u1, v1 in segments:
        du = u1 - u0
        slope = abs(v1 - v0) / du if du > 0 else 0.0
        columns = math.floor((u1 + r) / c) - math.floor((u0 - r) / c) + 1
        # In one column the segment moves at most slope * (c + 2r) (and at most its
        # whole length) along v; grown by r each side, it touches at most this many rows.
        rows = math.floor((slope * min(c + 2 * r, du) + 2 * r) / c) + 2
        total += columns * rows
    return total


def segment_cells(
    a: tuple[float, float], b: tuple[float, float], *, reach_m: float, cell_m: float
) -> Iterator[tuple[int, int]]:
    """Every cell (ix, iy) of size ``cell_m`` holding a point within ``reach_m`` of the
    segment ``a``-``b`` (and a few more near it)."""
    return _segment_cells(_major(a, b), reach_m, cell_m)


def _segment_cells(
    segment: tuple[bool, float, float, float, float], reach_m: float, cell_m: float
) -> Iterator[tuple[int, int]]:
    """:func:`segment_cells` of a segment as :func:`_major` gives it.

    Column by column along the major axis: column i holds a point within r of the
    segment only if the segment's part over [i c - r, (i + 1) c + r] comes within r of
    it, so the rows listed are those of that part grown by r. Its cost is the cells the
    segment's reach crosses (~ (length / c + 3) * 3 at c = r), not its bounding box.
    """
    swapped, u0, v0, u1, v1 = segment
    du = u1 - u0
    slope = (v1 - v0) / du if du > 0 else 0.0
    r, c = reach_m, cell_m
    for i in range(math.floor((u0 - r) / c), math.floor((u1 + r) / c) + 1):
        ua = max(u0, i * c - r)
        ub = min(u1, (i + 1) * c + r)
        va = v0 + slope * (ua - u0)
        vb = v0 + slope * (ub - u0)
        for j in range(math.floor((min(va, vb) - r) / c), math.floor((max(va, vb) + r) / c) + 1):
            yield (j, i) if swapped else (i, j)


class RouteGrid:
    """Distance from a point to a polyline, answered only up to ``reach_m``.

    Beyond ``reach_m`` :meth:`distance_within` returns None: route deviation only needs
    to know "farther than the threshold", and that answer costs one dict lookup.
    :attr:`cell_m` is ``reach_m`` (at least :data:`MIN_ROUTE_CELL_M`), or larger when the
    route's segments would list more than ``max_entries`` cells.
    """

    def __init__(
        self,
        points: Sequence[tuple[float, float]],
        *,
        reach_m: float,
        max_entries: int = MAX_GRID_ENTRIES,
    ) -> None:
        if not (math.isfinite(reach_m) and reach_m >= 0):
            raise ValueError(f"route reach must be a finite distance >= 0 m, got {reach_m!r}")
        self._points = tuple(points)
        self._reach_m = reach_m
        pts = self._points
        segments = [_major(pts[i - 1], pts[i]) for i in range(1, len(pts))]
        self.cell_m, self.entries_bound = _fit_cell(
            lambda c: _segments_bound(segments, reach_m, c),
            max(reach_m, MIN_ROUTE_CELL_M),
            len(segments),
            max_entries,
        )
        cells: dict[tuple[int, int], list[int]] = {}
        for i, segment in enumerate(segments, start=1):
            for key in _segment_cells(segment, reach_m, self.cell_m):
                cells.setdefault(key, []).append(i)
        self._cells = {key: tuple(ids) for key, ids in cells.items()}
        self.entries = sum(map(len, self._cells.values()))  # as listed: <= entries_bound

    def distance_within(self, x: float, y: float) -> float | None:
        c = self.cell_m
        best: float | None = None
        pts = self._points
        for i in self._cells.get((math.floor(x / c), math.floor(y / c)), ()):
            d = _segment_distance(x, y, *pts[i - 1], *pts[i])
            if d <= self._reach_m and (best is None or d < best):
                best = d
        return best

    def distance(self, x: float, y: float) -> float:
        """Exact distance to the whole polyline (linear; for reports, not per fix)."""
        pts = self._points
        return min(_segment_distance(x, y, *pts[i - 1], *pts[i]) for i in range(1, len(pts)))
