"""The day's manifest for a scenario: what dispatch sends the van before it leaves.

:func:`build_manifest` turns a :class:`~simulator.scenario.Scenario` into a manifest
dict in the format of docs/manifest.schema.json (``route_id``, ``device_id``, ``date``,
ordered ``stops`` with geofence radius, type, parcels and an optional promised window,
and the planned ``route`` as a GeoJSON LineString). It is deterministic for a seed;
each effect draws from its own random stream, so changing how parcels are drawn does
not move the windows.

What the manifest holds, and why:

- stops in the order the van serves them (the scenario's visiting order), at the
  delivery address (the door), not where the van parks: dispatch knows addresses;
- ``radius_m``: the type's default (:data:`DEFAULT_RADIUS_M`), widened where the
  parking point is far from the door so that the parked van is always inside
  (``ceil(distance + PARK_MARGIN_M)``);
- 1-4 parcels a stop (apartments and businesses up to 8), about 70 % SSCCs and 30 %
  carrier codes, unique across the day;
- a promised 1-2 h window (whole or half hours, UTC) on about 60 % of the stops; on
  about 10 % of those the van's true arrival falls outside it (late more often than
  early), so "arrival outside window" has cases to score;
- ``route``: the van's true path, simplified (Douglas-Peucker, 3 m) and capped below
  :data:`MAX_ROUTE_VERTICES`.

Extra keys (allowed by the contract): each stop has a ``postcode`` (the ship-to
postcode GS1 labels carry in AI 420).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_agent.contract.geo import LocalFrame, haversine_m
from simulator.labels import random_carrier_code, random_sscc
from simulator.rng import stream as random_stream
from simulator.route import douglas_peucker
from simulator.scenario import Scenario
from simulator.stops import Stop, StopType

MANIFEST_JSON = "manifest.json"
DEFAULT_DEVICE_ID = "van-0001"

DEFAULT_RADIUS_M: dict[StopType, int] = {
    StopType.HOUSE: 25,
    StopType.APARTMENT: 30,
    StopType.BUSINESS: 30,
    StopType.LOCKER: 25,
}
"""Geofence radius by stop type: bigger where the driver may park further from the door."""

PARK_MARGIN_M = 10.0  # the parked van must sit this far inside the geofence at least
SSCC_SHARE = 0.7
PARCEL_COUNT_WEIGHTS: dict[StopType, tuple[float, ...]] = {
    # Weights for 1, 2, 3, ... parcels: most houses get one parcel, businesses several.
    StopType.HOUSE: (0.55, 0.25, 0.13, 0.07),
    StopType.LOCKER: (0.45, 0.3, 0.15, 0.1),
    StopType.APARTMENT: (0.25, 0.22, 0.17, 0.12, 0.09, 0.07, 0.05, 0.03),
    StopType.BUSINESS: (0.25, 0.22, 0.17, 0.12, 0.09, 0.07, 0.05, 0.03),
}
WINDOW_SHARE = 0.6  # stops with a promised window
WINDOW_MISS_SHARE = 0.1  # windowed stops where the van's true arrival is outside it
WINDOW_LENGTHS_MIN = (60, 90, 120)
WINDOW_GRID_MIN = 30
WINDOW_MISS_MARGIN_MIN = 5  # a missed window misses by at least this much
LATE_SHARE = 0.7  # a missed window is missed by arriving late more often than early
ROUTE_TOLERANCE_M = 3.0
MAX_ROUTE_VERTICES = 4999
POSTCODES = ("80331", "80333", "80335", "80336", "80337", "80469", "80538", "80539")


def default_route_id(day: date, device_id: str) -> str:
    """``R-YYYYMMDD-{device_id}``: one route per van per day."""
    return f"R-{day:%Y%m%d}-{device_id}"


def service_day(scenario: Scenario) -> date:
    """The local calendar day of the scenario's start (``utc_offset_h`` applied)."""
    local = scenario.start + timedelta(hours=scenario.config.utc_offset_h)
    return local.date()


def radius_for(stop: Stop) -> int:
    """The stop's geofence radius: the type's default, or wider so the parked van fits."""
    park_m = haversine_m(stop.lat, stop.lon, stop.park_lat, stop.park_lon)
    return max(DEFAULT_RADIUS_M[stop.type], math.ceil(park_m + PARK_MARGIN_M))


def format_window_time(t: datetime) -> str:
    """A window bound as the contract writes it: ``2026-11-21T09:00:00Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(
    scenario: Scenario,
    *,
    device_id: str = DEFAULT_DEVICE_ID,
    route_id: str | None = None,
    seed: int,
) -> dict[str, Any]:
    """The manifest of ``scenario``'s day, as a JSON-ready dict (see the module doc).

    ``route_id`` defaults to :func:`default_route_id` of the service day and device.
    The same scenario, device and seed give the same manifest. Only the stops the
    scenario served are listed (a day cut short by ``max_duration_s`` lists fewer).
    """
    day = service_day(scenario)
    parcel_rng = random_stream("manifest-parcels", seed)
    window_rng = random_stream("manifest-windows", seed)
    postcode_rng = random_stream("manifest-postcodes", seed)

    windows = _draw_windows(scenario.stops, scenario.start, window_rng)
    used: set[str] = set()
    stops_json: list[dict[str, Any]] = []
    for stop in scenario.stops:
        entry: dict[str, Any] = {
            "id": stop.id,
            "lat": round(stop.lat, 7),
            "lon": round(stop.lon, 7),
            "radius_m": radius_for(stop),
            "type": stop.type.value,
            "parcels": _draw_parcels(parcel_rng, stop.type, used),
        }
        window = windows.get(stop.id)
        if window is not None:
            entry["window_start"] = format_window_time(window[0])
            entry["window_end"] = format_window_time(window[1])
        entry["postcode"] = postcode_rng.choice(POSTCODES)
        stops_json.append(entry)

    return {
        "route_id": route_id if route_id is not None else default_route_id(day, device_id),
        "device_id": device_id,
        "date": day.isoformat(),
        "stops": stops_json,
        "route": route_linestring(scenario.frame, scenario.trajectory.path),
    }


def _draw_parcels(rng: random.Random, stop_type: StopType, used: set[str]) -> list[str]:
    weights = PARCEL_COUNT_WEIGHTS[stop_type]
    count = rng.choices(range(1, len(weights) + 1), weights=weights)[0]
    parcels: list[str] = []
    while len(parcels) < count:
        code = random_sscc(rng) if rng.random() < SSCC_SHARE else random_carrier_code(rng)
        if code in used:  # astronomically rare, but a manifest's codes must be unique
            continue
        used.add(code)
        parcels.append(code)
    return parcels


def _draw_windows(
    stops: tuple[Stop, ...], day_start: datetime, rng: random.Random
) -> dict[str, tuple[datetime, datetime]]:
    """Windows for a share of the stops; a few are missed by the van's true arrival.

    The counts are exact (rounded shares) rather than coin flips, so that every day of
    five or more windowed stops has at least one missed window to score.
    """
    n_windowed = round(WINDOW_SHARE * len(stops))
    windowed = sorted(rng.sample(range(len(stops)), n_windowed))
    n_missed = round(WINDOW_MISS_SHARE * n_windowed)
    if n_missed == 0 and n_windowed >= 5:
        n_missed = 1
    missed = set(rng.sample(windowed, n_missed))
    windows: dict[str, tuple[datetime, datetime]] = {}
    day_start = _floor_grid(day_start)
    for i in windowed:
        arrival = stops[i].arrival
        length = timedelta(minutes=rng.choice(WINDOW_LENGTHS_MIN))
        if i in missed:
            margin = timedelta(minutes=WINDOW_MISS_MARGIN_MIN)
            late = rng.random() < LATE_SHARE
            end = _floor_grid(arrival - margin)
            # Nobody promises a window that closes before the van leaves the depot:
            # early in the day a missed window is one the van comes too early for.
            if late and end - length >= day_start:
                windows[stops[i].id] = (end - length, end)
            else:
                start = _ceil_grid(arrival + margin)
                windows[stops[i].id] = (start, start + length)
        else:
            # Any grid start that keeps the arrival inside, so arrivals fall anywhere
            # in their windows, not always near the start.
            latest = _floor_grid(arrival)
            steps = length // timedelta(minutes=WINDOW_GRID_MIN)
            start = latest - timedelta(minutes=WINDOW_GRID_MIN * rng.randrange(steps))
            windows[stops[i].id] = (start, start + length)
    return windows


def _floor_grid(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    minute = t.minute - t.minute % WINDOW_GRID_MIN
    return t.replace(minute=minute, second=0, microsecond=0)


def _ceil_grid(t: datetime) -> datetime:
    floor = _floor_grid(t)
    return floor if floor == t else floor + timedelta(minutes=WINDOW_GRID_MIN)


def route_linestring(
    frame: LocalFrame,
    path_xy: list[tuple[float, float]],
    *,
    tolerance_m: float = ROUTE_TOLERANCE_M,
    max_vertices: int = MAX_ROUTE_VERTICES,
) -> dict[str, Any]:
    """A GeoJSON LineString (``[lon, lat]``, 7 decimals) of a path in ``frame``.

    Simplified with Douglas-Peucker at ``tolerance_m``; where that still leaves more
    than ``max_vertices``, the tolerance is doubled until it does not (a planned route
    is a guide for deviation checks, not a survey). Consecutive repeated vertices are
    dropped; a path of one point is doubled so the LineString stays valid.
    """
    points: list[tuple[float, float]] = []
    for xy in path_xy:
        if not points or math.dist(points[-1], xy) > 1e-6:
            points.append(xy)
    if len(points) == 1:
        points.append(points[0])
    kept = douglas_peucker(points, tolerance_m)
    while len(kept) > max_vertices:
        tolerance_m *= 2.0
        kept = douglas_peucker(points, tolerance_m)
    coordinates = []
    for i in kept:
        lat, lon = frame.to_geodetic(*points[i])
        coordinates.append([round(lon, 7), round(lat, 7)])
    return {"type": "LineString", "coordinates": coordinates}


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as indented JSON (UTF-8, trailing newline)."""
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
