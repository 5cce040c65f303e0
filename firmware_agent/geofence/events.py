"""Events the geofence engine emits: the contract's records (:mod:`firmware_agent.contract.
records`), made here and published as they are.

``time`` is always when the thing happened (the first fix inside the fence for an
arrival), ``detected_at`` when the engine became sure of it. A stop's events name the
manifest's ``route_id``, so that a backend can ask for a route's arrivals.
"""

from __future__ import annotations

from firmware_agent.contract.records import (
    Arrival,
    Departure,
    Deviation,
    DeviationEnd,
    Halt,
    HaltEnd,
    WindowMiss,
)

GeofenceEvent = Arrival | Departure | WindowMiss | Halt | HaltEnd | Deviation | DeviationEnd

__all__ = [
    "Arrival",
    "Departure",
    "Deviation",
    "DeviationEnd",
    "GeofenceEvent",
    "Halt",
    "HaltEnd",
    "WindowMiss",
]
