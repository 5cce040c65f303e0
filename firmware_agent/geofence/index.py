"""Planar geometry and spatial indexes for per-fix geofence queries.

Everything works in a local east/north plane in metres (equirectangular around the
manifest's first stop: < 1 cm/km of error within a city, and two multiplications per
fix). :class:`StopGrid` is a uniform grid hash: each cell lists the stops whose fence
plus border reaches into it, so a query costs one dict lookup and a handful of distance
computations whatever the manifest's size. :class:`RouteGrid` does the same for the
planned route's segments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from firmware_agent.contract.geo import EARTH_RADIUS_M

_M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0


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


class StopGrid:
    """Which stops' fences (plus ``reach_m``) may contain a point."""

    def __init__(self, shapes: Sequence[Shape], *, cell_m: float, reach_m: float) -> None:
        self._cell_m = cell_m
        self._cells: dict[tuple[int, int], tuple[int, ...]] = {}
        cells: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(shapes):
            r = shape.radius_m + reach_m
            for key in self._covering(shape.cx - r, shape.cy - r, shape.cx + r, shape.cy + r):
                cells.setdefault(key, []).append(i)
        self._cells = {key: tuple(ids) for key, ids in cells.items()}

    def _covering(self, x0: float, y0: float, x1: float, y1: float) -> Iterable[tuple[int, int]]:
        c = self._cell_m
        for ix in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
            for iy in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                yield ix, iy

    def near(self, x: float, y: float) -> tuple[int, ...]:
        c = self._cell_m
        return self._cells.get((math.floor(x / c), math.floor(y / c)), ())


class RouteGrid:
    """Distance from a point to a polyline, answered only up to ``reach_m``.

    Beyond ``reach_m`` :meth:`distance_within` returns None: route deviation only needs
    to know "farther than the threshold", and that answer costs one dict lookup.
    """

    def __init__(self, points: Sequence[tuple[float, float]], *, reach_m: float) -> None:
        self._points = tuple(points)
        self._cell_m = max(reach_m, 1.0)
        self._reach_m = reach_m
        cells: dict[tuple[int, int], list[int]] = {}
        c = self._cell_m
        for i in range(1, len(self._points)):
            (ax, ay), (bx, by) = self._points[i - 1], self._points[i]
            # Cells of the segment's bounding box grown by reach: a long segment lists
            # many cells, which the simulator's and planners' dense routes never have.
            x0, x1 = min(ax, bx) - reach_m, max(ax, bx) + reach_m
            y0, y1 = min(ay, by) - reach_m, max(ay, by) + reach_m
            for ix in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
                for iy in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                    cells.setdefault((ix, iy), []).append(i)
        self._cells = {key: tuple(ids) for key, ids in cells.items()}

    def distance_within(self, x: float, y: float) -> float | None:
        c = self._cell_m
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
