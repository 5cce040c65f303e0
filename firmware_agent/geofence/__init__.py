"""Where the van is relative to its stops: geofence arrivals, departures and exceptions.

Pure code, fed fixes with their GNSS time; no I/O, no wall clock. :class:`GeofenceEngine`
is the entry point; :mod:`.fence` holds the per-stop state machine, :mod:`.index` the
spatial indexes, :mod:`.exceptions` the halt and route-deviation detectors.
"""

from firmware_agent.geofence.config import GeofenceConfig
from firmware_agent.geofence.engine import GeofenceEngine, GeofenceIndex, build_index
from firmware_agent.geofence.events import (
    Arrival,
    Departure,
    Deviation,
    DeviationEnd,
    GeofenceEvent,
    Halt,
    HaltEnd,
    WindowMiss,
)

__all__ = [
    "Arrival",
    "Departure",
    "Deviation",
    "DeviationEnd",
    "GeofenceConfig",
    "GeofenceEngine",
    "GeofenceEvent",
    "GeofenceIndex",
    "Halt",
    "HaltEnd",
    "WindowMiss",
    "build_index",
]
