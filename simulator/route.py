"""A route polyline to drive along, loaded from GeoJSON or GPX, with its stops.

A :class:`Route` is a WGS84 polyline with a speed limit per segment and the stops the
van serves along it, in visiting order, each projected onto the polyline (the van
parks at the projection). Loaded polylines are simplified (Douglas-Peucker, 2 m), so
the jitter of a recorded GPS track does not read as a string of sharp corners.

GeoJSON: a ``LineString`` (bare, as a ``Feature``, or the one ``LineString`` feature of
a ``FeatureCollection``), optional ``speed_limit_mps`` in its properties; ``Point``
features are stops with optional properties ``id`` and ``type``
(house/apartment/business/locker). GPX: track points (all segments, in order), else
route points; waypoints are stops, ``<name>`` the id and ``<type>`` the stop type.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import gpxpy
import gpxpy.gpx

from firmware_agent.contract.geo import LocalFrame
from simulator.errors import RouteFileError
from simulator.stops import StopSite, StopType, draw_stop_type, parse_stop_type, stop_id

DEFAULT_SPEED_LIMIT_MPS = 13.9  # urban 50 km/h where the file says nothing
SIMPLIFY_TOLERANCE_M = 2.0
MAX_STOP_OFFSET_M = 200.0  # a stop further from the route than this is a mistake in the file
GENERATED_SETBACK_M = (8.0, 25.0)
GENERATED_END_CLEARANCE_M = 30.0

XY = tuple[float, float]


class Polyline:
    """A polyline in a local east/north frame (metres), measured along its length."""

    def __init__(self, points: Sequence[XY]) -> None:
        if len(points) < 2:
            raise ValueError("a polyline needs at least two points")
        self.points: tuple[XY, ...] = tuple(points)
        cumulative = [0.0]
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:], strict=False):
            cumulative.append(cumulative[-1] + math.hypot(x1 - x0, y1 - y0))
        self.cumulative_m: tuple[float, ...] = tuple(cumulative)

    @property
    def length_m(self) -> float:
        return self.cumulative_m[-1]

    def segment_at(self, along_m: float) -> int:
        """Index of the segment holding the point ``along_m`` from the start."""
        index = bisect.bisect_right(self.cumulative_m, along_m) - 1
        return max(0, min(len(self.points) - 2, index))

    def point_at(self, along_m: float) -> XY:
        """The point ``along_m`` metres from the start (clamped to the ends)."""
        i = self.segment_at(along_m)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        length = self.cumulative_m[i + 1] - self.cumulative_m[i]
        f = 0.0 if length == 0 else min(1.0, max(0.0, (along_m - self.cumulative_m[i]) / length))
        return (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)

    def direction_at(self, along_m: float) -> XY:
        """Unit vector of the segment at ``along_m``."""
        i = self.segment_at(along_m)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        return ((x1 - x0) / length, (y1 - y0) / length)

    def project(self, x: float, y: float, *, from_m: float = 0.0) -> tuple[float, float]:
        """``(along_m, distance_m)`` of the nearest point at or after ``from_m``."""
        best = (math.inf, math.inf)
        first = self.segment_at(from_m)
        for i in range(first, len(self.points) - 1):
            (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
            s0 = self.cumulative_m[i]
            length = self.cumulative_m[i + 1] - s0
            if length == 0:
                continue
            # Parameter of the foot of the perpendicular, kept on the segment and, on the
            # first segment, not before ``from_m``.
            lowest = max(0.0, (from_m - s0) / length) if i == first else 0.0
            f = ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / (length * length)
            f = min(1.0, max(lowest, f))
            px, py = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
            distance_m = math.hypot(x - px, y - py)
            if distance_m < best[1]:
                best = (s0 + f * length, distance_m)
        return best

    def slice(self, start_m: float, end_m: float) -> tuple[list[XY], list[int], list[int]]:
        """The part between ``start_m`` and ``end_m``.

        Returns ``(points, segments, vertices)``: ``segments[i]`` is the index of the
        original segment the ``i``-th output segment lies on, ``vertices[i]`` the
        original vertex index of output point ``i`` (-1 for the two cut points).
        """
        points = [self.point_at(start_m)]
        vertices = [-1]
        segments: list[int] = []
        for i in range(1, len(self.points) - 1):
            if start_m < self.cumulative_m[i] < end_m:
                segments.append(i - 1)
                points.append(self.points[i])
                vertices.append(i)
        # The last piece runs on from the last vertex kept, or lies wholly on the start's segment.
        segments.append(vertices[-1] if len(vertices) > 1 else self.segment_at(start_m))
        points.append(self.point_at(end_m))
        vertices.append(-1)
        return points, segments, vertices


@dataclass(frozen=True, slots=True)
class RouteStop:
    """A stop on a route and how far along the route the van parks for it."""

    site: StopSite
    along_m: float


@dataclass(frozen=True, slots=True)
class Route:
    """A WGS84 polyline with per-segment speed limits and stops in visiting order.

    ``points`` are ``(lat, lon)``; ``speed_limits_mps[i]`` applies from ``points[i]``
    to ``points[i + 1]``; ``stops`` are sorted by ``along_m`` (metres along the
    polyline in :attr:`frame`).
    """

    points: tuple[tuple[float, float], ...]
    speed_limits_mps: tuple[float, ...]
    stops: tuple[RouteStop, ...]
    source: str

    @property
    def frame(self) -> LocalFrame:
        """The local frame the route is measured in, centred on its first point."""
        return LocalFrame(self.points[0][0], self.points[0][1])

    def polyline(self) -> Polyline:
        """The route in :attr:`frame`."""
        frame = self.frame
        return Polyline([frame.to_local(lat, lon) for lat, lon in self.points])

    @property
    def length_m(self) -> float:
        return self.polyline().length_m


@dataclass(frozen=True, slots=True)
class StopSpec:
    """A stop as a file declares it: where the door is, optionally an id and a type."""

    lat: float
    lon: float
    id: str | None = None
    type: StopType | None = None


def build_route(
    points: Sequence[tuple[float, float]],
    *,
    speed_limits_mps: Sequence[float] | None = None,
    stops: Sequence[StopSpec] = (),
    source: str = "route",
    simplify_m: float = SIMPLIFY_TOLERANCE_M,
) -> Route:
    """A :class:`Route` from ``(lat, lon)`` points, simplified, with stops projected.

    Stops are visited in the order given; each parks at the nearest point of the
    route after the previous stop's. Raises ``ValueError`` when the route has fewer
    than two distinct points or a stop lies more than 200 m from it.
    """
    limits = list(speed_limits_mps) if speed_limits_mps is not None else None
    if limits is not None and len(limits) != len(points) - 1:
        raise ValueError("one speed limit per segment is needed")
    frame = LocalFrame(points[0][0], points[0][1]) if points else LocalFrame(0.0, 0.0)
    local = [frame.to_local(lat, lon) for lat, lon in points]
    # Drop repeated points, and their zero-length segments with them.
    kept_xy: list[XY] = []
    kept_latlon: list[tuple[float, float]] = []
    kept_limits: list[float] = []
    for i, xy in enumerate(local):
        if kept_xy and math.hypot(xy[0] - kept_xy[-1][0], xy[1] - kept_xy[-1][1]) < 0.01:
            continue
        if kept_xy:
            kept_limits.append(limits[i - 1] if limits is not None else DEFAULT_SPEED_LIMIT_MPS)
        kept_xy.append(xy)
        kept_latlon.append(points[i])
    if len(kept_xy) < 2:
        raise ValueError("a route needs at least two distinct points")

    keep = douglas_peucker(kept_xy, simplify_m)
    simple_latlon = tuple(kept_latlon[k] for k in keep)
    simple_limits = tuple(min(kept_limits[a:b]) for a, b in pairwise(keep))
    line = Polyline([kept_xy[k] for k in keep])

    route_stops: list[RouteStop] = []
    along_m = 0.0
    for n, spec in enumerate(stops):
        x, y = frame.to_local(spec.lat, spec.lon)
        along_m, offset_m = line.project(x, y, from_m=along_m)
        name = spec.id or stop_id(n)
        if offset_m > MAX_STOP_OFFSET_M:
            raise ValueError(
                f"stop {name} is {offset_m:.0f} m from the route after the previous stop"
                f" (at most {MAX_STOP_OFFSET_M:.0f} m)"
            )
        park_lat, park_lon = frame.to_geodetic(*line.point_at(along_m))
        site = StopSite(name, spec.type or StopType.HOUSE, spec.lat, spec.lon, park_lat, park_lon)
        route_stops.append(RouteStop(site, along_m))
    ids = [s.site.id for s in route_stops]
    if len(set(ids)) != len(ids):
        raise ValueError(f"stop ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    return Route(simple_latlon, simple_limits, tuple(route_stops), source)


def with_generated_stops(route: Route, count: int, rng: random.Random) -> Route:
    """``route`` with ``count`` stops spread along it (for a file that lists none).

    Parking points are roughly evenly spaced, at least 30 m from either end; each door
    is 8-25 m to one side, square to the route.
    """
    line = route.polyline()
    frame = route.frame
    usable_m = line.length_m - 2 * GENERATED_END_CLEARANCE_M
    if usable_m <= 0:
        raise ValueError(f"route is too short ({line.length_m:.0f} m) to place stops on")
    spacing_m = usable_m / count
    stops: list[RouteStop] = []
    for i in range(count):
        along_m = GENERATED_END_CLEARANCE_M + spacing_m * (i + rng.uniform(0.2, 0.8))
        px, py = line.point_at(along_m)
        dx, dy = line.direction_at(along_m)
        side = rng.choice((-1.0, 1.0))
        setback_m = rng.uniform(*GENERATED_SETBACK_M)
        lat, lon = frame.to_geodetic(px - side * setback_m * dy, py + side * setback_m * dx)
        park_lat, park_lon = frame.to_geodetic(px, py)
        site = StopSite(stop_id(i), draw_stop_type(rng), lat, lon, park_lat, park_lon)
        stops.append(RouteStop(site, along_m))
    return Route(route.points, route.speed_limits_mps, tuple(stops), route.source)


def douglas_peucker(points: Sequence[XY], tolerance_m: float) -> list[int]:
    """Indices of the points kept by Douglas-Peucker simplification (ends always kept)."""
    keep = {0, len(points) - 1}
    pending = [(0, len(points) - 1)]  # an explicit stack: long tracks would overflow recursion
    while pending:
        first, last = pending.pop()
        (x0, y0), (x1, y1) = points[first], points[last]
        length = math.hypot(x1 - x0, y1 - y0)
        worst, worst_m = -1, tolerance_m
        for i in range(first + 1, last):
            x, y = points[i]
            if length == 0:
                distance_m = math.hypot(x - x0, y - y0)
            else:
                distance_m = abs((x1 - x0) * (y0 - y) - (x0 - x) * (y1 - y0)) / length
            if distance_m > worst_m:
                worst, worst_m = i, distance_m
        if worst >= 0:
            keep.add(worst)
            pending.extend(((first, worst), (worst, last)))
    return sorted(keep)


def load_route(path: Path) -> Route:
    """A route from a ``.geojson``/``.json`` or ``.gpx`` file.

    Raises :class:`RouteFileError` (a ``ValueError``) naming the file, and the line
    where known, for anything unusable.
    """
    suffix = path.suffix.lower()
    if suffix in {".geojson", ".json"}:
        return load_geojson_route(path)
    if suffix == ".gpx":
        return load_gpx_route(path)
    raise RouteFileError(path, "unknown route format (expected .geojson, .json or .gpx)")


def load_geojson_route(path: Path) -> Route:
    """A route from a GeoJSON file (see the module docstring for the accepted shapes)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RouteFileError(path, f"not valid JSON: {err.msg}", line=err.lineno) from err
    except (OSError, UnicodeDecodeError) as err:
        raise RouteFileError(path, f"cannot read: {err}") from err

    lines: list[tuple[list[tuple[float, float]], float | None]] = []
    stops: list[StopSpec] = []

    def take(geometry: Any, properties: Any, where: str) -> None:
        if not isinstance(geometry, dict):
            raise RouteFileError(path, f"{where}: missing geometry")
        kind = geometry.get("type")
        props = properties if isinstance(properties, dict) else {}
        if kind == "LineString":
            limit = props.get("speed_limit_mps")
            if limit is not None and not (_is_number(limit) and limit > 0):
                raise RouteFileError(path, f"{where}: speed_limit_mps must be a positive number")
            lines.append((_geojson_coordinates(path, geometry.get("coordinates"), where), limit))
        elif kind == "Point":
            (lat, lon), *_ = _geojson_coordinates(path, [geometry.get("coordinates")], where)
            raw_id = props.get("id")
            try:
                stop_type = parse_stop_type(props["type"]) if "type" in props else None
            except ValueError as err:
                raise RouteFileError(path, f"{where}: {err}") from err
            stops.append(StopSpec(lat, lon, None if raw_id is None else str(raw_id), stop_type))
        else:
            raise RouteFileError(path, f"{where}: geometry type {kind!r} is not supported")

    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise RouteFileError(path, "FeatureCollection without a features list")
        for n, feature in enumerate(features):
            if not isinstance(feature, dict):
                raise RouteFileError(path, f"feature {n}: not an object")
            take(feature.get("geometry"), feature.get("properties"), f"feature {n}")
    elif kind == "Feature":
        take(data.get("geometry"), data.get("properties"), "feature")
    elif kind == "LineString":
        take(data, {}, "geometry")
    else:
        raise RouteFileError(
            path, f"expected a FeatureCollection, Feature or LineString, got {kind!r}"
        )

    if len(lines) != 1:
        raise RouteFileError(path, f"expected exactly one LineString, found {len(lines)}")
    coordinates, limit = lines[0]
    limits = [float(limit)] * (len(coordinates) - 1) if limit is not None else None
    try:
        return build_route(coordinates, speed_limits_mps=limits, stops=stops, source=str(path))
    except ValueError as err:
        raise RouteFileError(path, str(err)) from err


def load_gpx_route(path: Path) -> Route:
    """A route from a GPX file: track (or route) points, waypoints as stops."""
    try:
        with path.open(encoding="utf-8") as f:
            gpx = gpxpy.parse(f)
    except gpxpy.gpx.GPXException as err:
        raise RouteFileError(path, f"not valid GPX: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RouteFileError(path, f"cannot read: {err}") from err

    points = [
        (float(p.latitude), float(p.longitude))
        for track in gpx.tracks
        for segment in track.segments
        for p in segment.points
    ]
    if not points:
        points = [(float(p.latitude), float(p.longitude)) for r in gpx.routes for p in r.points]
    stops: list[StopSpec] = []
    for n, waypoint in enumerate(gpx.waypoints):
        try:
            stop_type = parse_stop_type(waypoint.type) if waypoint.type else None
        except ValueError as err:
            raise RouteFileError(path, f"waypoint {n} ({waypoint.name}): {err}") from err
        name = str(waypoint.name).strip() if waypoint.name else None
        stops.append(StopSpec(float(waypoint.latitude), float(waypoint.longitude), name, stop_type))
    if not points:
        raise RouteFileError(path, "no track or route points")
    for lat, lon in points:
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise RouteFileError(path, f"point ({lat}, {lon}) is out of range")
    try:
        return build_route(points, stops=stops, source=str(path))
    except ValueError as err:
        raise RouteFileError(path, str(err)) from err


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _geojson_coordinates(path: Path, raw: object, where: str) -> list[tuple[float, float]]:
    """``(lat, lon)`` pairs from GeoJSON ``[lon, lat, ...]`` positions, validated."""
    if not isinstance(raw, list):
        raise RouteFileError(path, f"{where}: coordinates must be a list")
    out: list[tuple[float, float]] = []
    for position in raw:
        if not (
            isinstance(position, list)
            and len(position) >= 2
            and all(_is_number(v) for v in position[:2])
        ):
            raise RouteFileError(path, f"{where}: bad position {position!r} (expected [lon, lat])")
        lon, lat = float(position[0]), float(position[1])
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise RouteFileError(path, f"{where}: position {position!r} is out of range")
        out.append((lat, lon))
    return out
