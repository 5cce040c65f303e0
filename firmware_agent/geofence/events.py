"""Events the geofence engine emits; each knows its published message form.

``time`` is always when the thing happened (the first fix inside the fence for an
arrival), ``detected_at`` when the engine became sure of it. Messages follow the
replay/uplink contract: ``type``, ``time`` (ISO 8601 UTC) and, for stop events,
``stop_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from firmware_agent.contract.times import format_utc


def _r(value: float | None, ndigits: int = 1) -> float | None:
    return None if value is None else round(value, ndigits)


@dataclass(frozen=True, slots=True)
class Arrival:
    stop_id: str
    time: datetime
    detected_at: datetime
    lat: float
    lon: float
    visit: int
    confirmed_by: str  # "dwell" | "scan"

    def message(self) -> dict[str, Any]:
        return {
            "type": "arrival",
            "time": format_utc(self.time),
            "stop_id": self.stop_id,
            "detected_at": format_utc(self.detected_at),
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
            "visit": self.visit,
            "confirmed_by": self.confirmed_by,
        }


@dataclass(frozen=True, slots=True)
class Departure:
    stop_id: str
    time: datetime
    detected_at: datetime
    arrived_at: datetime
    visit: int

    @property
    def dwell_s(self) -> float:
        return (self.time - self.arrived_at).total_seconds()

    def message(self) -> dict[str, Any]:
        return {
            "type": "departure",
            "time": format_utc(self.time),
            "stop_id": self.stop_id,
            "detected_at": format_utc(self.detected_at),
            "arrived_at": format_utc(self.arrived_at),
            "dwell_s": round(self.dwell_s, 1),
            "visit": self.visit,
        }


@dataclass(frozen=True, slots=True)
class WindowMiss:
    """An arrival outside the stop's promised window (``kind`` early or late)."""

    stop_id: str
    time: datetime
    window_start: datetime
    window_end: datetime
    kind: str
    by_s: float

    def message(self) -> dict[str, Any]:
        return {
            "type": "window",
            "time": format_utc(self.time),
            "stop_id": self.stop_id,
            "kind": self.kind,
            "by_s": round(self.by_s, 1),
            "window_start": format_utc(self.window_start),
            "window_end": format_utc(self.window_end),
        }


@dataclass(frozen=True, slots=True)
class Halt:
    """Stopped longer than the threshold outside every stop (``time`` = when it began)."""

    time: datetime
    detected_at: datetime
    lat: float
    lon: float

    def message(self) -> dict[str, Any]:
        return {
            "type": "halt",
            "time": format_utc(self.time),
            "detected_at": format_utc(self.detected_at),
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
        }


@dataclass(frozen=True, slots=True)
class HaltEnd:
    time: datetime
    started_at: datetime

    def message(self) -> dict[str, Any]:
        return {
            "type": "halt_end",
            "time": format_utc(self.time),
            "started_at": format_utc(self.started_at),
            "duration_s": round((self.time - self.started_at).total_seconds(), 1),
        }


@dataclass(frozen=True, slots=True)
class Deviation:
    """Off the planned route (``time`` = the first fix beyond the threshold)."""

    time: datetime
    detected_at: datetime
    distance_m: float
    lat: float
    lon: float

    def message(self) -> dict[str, Any]:
        return {
            "type": "deviation",
            "time": format_utc(self.time),
            "detected_at": format_utc(self.detected_at),
            "distance_m": _r(self.distance_m),
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
        }


@dataclass(frozen=True, slots=True)
class DeviationEnd:
    time: datetime
    started_at: datetime
    max_distance_m: float

    def message(self) -> dict[str, Any]:
        return {
            "type": "deviation_end",
            "time": format_utc(self.time),
            "started_at": format_utc(self.started_at),
            "duration_s": round((self.time - self.started_at).total_seconds(), 1),
            "max_distance_m": _r(self.max_distance_m),
        }


GeofenceEvent = Arrival | Departure | WindowMiss | Halt | HaltEnd | Deviation | DeviationEnd
