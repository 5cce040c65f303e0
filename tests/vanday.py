"""Small physical scenarios for the geofence and van tests: a van on a straight street.

The street runs east along latitude 48.0 through ORIGIN; positions are metres east (x)
and north (y) of it. :func:`drive` turns a list of legs (duration, speed) into 1 Hz
fixes, so a test reads like the day it describes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.manifest import Manifest, parse_manifest
from firmware_agent.contract.records import Record
from firmware_agent.geofence.index import Plane
from firmware_agent.replay import json_line
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanPipeline

ORIGIN = (48.0, 11.0)
PLANE = Plane.at(*ORIGIN)
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def latlon(x: float, y: float = 0.0) -> tuple[float, float]:
    return PLANE.latlon(x, y)


def fix_at(
    t: datetime,
    x: float,
    y: float = 0.0,
    *,
    speed_mps: float | None = 0.0,
    hdop: float | None = 1.0,
    course_deg: float | None = 90.0,
    valid: bool = True,
) -> Fix:
    lat, lon = latlon(x, y)
    return Fix(
        time=t,
        tod_s=(t - t.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds(),
        lat=lat if valid else None,
        lon=lon if valid else None,
        speed_mps=speed_mps,
        course_deg=course_deg,
        mode=FixMode.FIX_3D if valid else FixMode.NO_FIX,
        hdop=hdop,
        sats_used=9,
    )


def drive(
    legs: Sequence[tuple[float, float]], *, x0: float = -400.0, t0: datetime = T0
) -> list[Fix]:
    """1 Hz fixes along the street: each leg is (duration_s, speed_mps), east positive."""
    fixes = []
    x, t = x0, t0
    for duration_s, speed in legs:
        for _ in range(round(duration_s)):
            fixes.append(fix_at(t, x, speed_mps=abs(speed)))
            x += speed
            t += timedelta(seconds=1)
    return fixes


def stop(stop_id: str, x: float, y: float = 0.0, **extra: Any) -> dict[str, Any]:
    lat, lon = latlon(x, y)
    return {
        "id": stop_id,
        "lat": lat,
        "lon": lon,
        "radius_m": 35,
        "type": "house",
        "parcels": [],
        **extra,
    }


def manifest(stops: Iterable[dict[str, Any]], **extra: Any) -> Manifest:
    return parse_manifest(
        {
            "route_id": "R1",
            "device_id": "van-1",
            "date": "2026-11-21",
            "stops": list(stops),
            **extra,
        }
    )


def route_line(xs: Sequence[float], y: float = 0.0) -> dict[str, Any]:
    return {
        "type": "LineString",
        "coordinates": [[latlon(x, y)[1], latlon(x, y)[0]] for x in xs],
    }


def at(fixes: Sequence[Fix], x: float) -> datetime:
    """Time of the first fix at or east of ``x`` (within 1e-6 m)."""
    for f in fixes:
        assert f.lat is not None
        assert f.lon is not None
        fx, _ = PLANE.xy(f.lat, f.lon)
        if fx >= x - 1e-6:
            assert f.time is not None
            return f.time
    raise AssertionError(f"no fix reaches x={x}")


def hypot_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.dist(PLANE.xy(*a), PLANE.xy(*b))


def js(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Records as the JSON they are published as: ``fleet-agent replay``'s lines."""
    return [json.loads(json_line(r)) for r in records]


class JsonVan:
    """A :class:`VanPipeline` whose records come out as their published JSON, for tests
    that read what a backend would read; everything else is the pipeline's."""

    def __init__(self, van: VanPipeline) -> None:
        self.van = van

    def on_fix(self, fix: Fix) -> list[dict[str, Any]]:
        return js(self.van.on_fix(fix))

    def on_scan(self, scan: Scan) -> list[dict[str, Any]]:
        return js(self.van.on_scan(scan))

    def on_tick(self, now: datetime) -> list[dict[str, Any]]:
        return js(self.van.on_tick(now))

    def flush(self) -> list[dict[str, Any]]:
        return js(self.van.flush())

    @property
    def counts(self) -> dict[str, int]:
        return self.van.counts
