"""Geofence tuning, with the reasoning behind each default."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from firmware_agent.errors import ConfigError

# The range of each setting: (lowest, highest), both allowed; None: anything > 0. Past
# these a value is a typo or a unit mistake, not a tuning (index_cell_m 0.001 for 250, a
# border_m of 1e12), and the geometric ones bound what building the geofence indexes
# may cost. A stop's radius is at most 5,000 m (the manifest's limit); the longest
# confirmations are a day.
_DAY_S: Final = 86_400.0
LIMITS: Final[Mapping[str, tuple[float | None, float]]] = {
    "max_hdop": (None, 100.0),  # NMEA's HDOP field goes to 99.99
    "border_m": (None, 1_000.0),
    "depart_confirm_s": (None, 3_600.0),
    "slow_speed_mps": (None, 10.0),
    "confirm_dwell_s": (None, 3_600.0),
    "confirm_min_fixes": (1, 3_600),
    "revisit_dwell_s": (None, _DAY_S),
    "max_gap_s": (None, 3_600.0),
    "order_slack_m": (None, 5_000.0),
    "halt_after_s": (None, _DAY_S),
    "moving_speed_mps": (None, 50.0),
    "deviation_m": (None, 5_000.0),
    "deviation_after_s": (None, _DAY_S),
    "deviation_clear_m": (None, 5_000.0),
    # Smaller than a GNSS error a cell tells nothing more and costs memory; larger than
    # a town it is no index.
    "index_cell_m": (10.0, 10_000.0),
}


def limit_text(name: str) -> str:
    """The allowed range of setting ``name``, for messages: ``within [10, 10000]``."""
    low, high = LIMITS[name]
    return f"within [{low:g}, {high:g}]" if low is not None else f"> 0 and <= {high:g}"


def within_limits(name: str, value: float) -> bool:
    """Whether ``value`` is finite and within :data:`LIMITS` for setting ``name``."""
    low, high = LIMITS[name]
    if not math.isfinite(value) or value > high:
        return False
    return value >= low if low is not None else value > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GeofenceConfig:
    """Thresholds of the geofence engine. Every field is a unit-suffixed number within
    its range (:data:`LIMITS`); :class:`ConfigError` names the first that is not."""

    # A fix worse than this neither enters nor leaves a fence: at HDOP 5 a u-blox class
    # receiver's 1-sigma error is ~12 m, a third of a typical stop radius.
    max_hdop: float = 5.0
    # Hysteresis: a departure needs the van beyond radius_m + border_m ...
    border_m: float = 20.0
    # ... for this long. Longer than a multipath excursion (1-8 s in the field); the
    # departure time reported is still the first fix outside radius_m, so only the
    # event's emission waits, not its accuracy.
    depart_confirm_s: float = 10.0
    # "Stopped": at or below walking pace, which GNSS speed noise stays under.
    slow_speed_mps: float = 1.5
    # Arrival confirmation: stopped inside the fence this long, over this many fixes.
    # A trade-off measured by bench/arrivals.py: 20 s missed real bus stops of 20-33 s
    # (6 -> 9 of 93 missed on the real trips) and gained nothing on the synthetic suite;
    # a red light inside a stop's fence longer than this would count, which the
    # manifest's radius (25-30 m) makes rare. The arrival time does not depend on it.
    confirm_dwell_s: float = 10.0
    confirm_min_fixes: int = 3
    # A stop already visited (arrived and departed) is confirmed again only by a scan or
    # by a stop this long: longer than a red light (the simulator's reds last 5-45 s)
    # met on the way back past it. Found by the synthetic bench: 2 of 3 false arrivals
    # were red lights inside a served stop's fence on the return to the depot.
    revisit_dwell_s: float = 60.0
    # Good fixes further apart than this are an outage: time across it is not dwell.
    max_gap_s: float = 5.0
    # Two stops inside each other's radius: the next stop in the manifest's order wins
    # unless another is nearer by more than this.
    order_slack_m: float = 15.0
    # Unscheduled halt: stopped this long outside every stop, after the van has moved.
    halt_after_s: float = 180.0
    moving_speed_mps: float = 3.0
    # Route deviation: farther than deviation_m from the planned route for
    # deviation_after_s; over when back within deviation_clear_m (hysteresis).
    deviation_m: float = 75.0
    deviation_after_s: float = 45.0
    deviation_clear_m: float = 50.0
    # Spatial index cell size; a cell holds the stops whose fence reaches into it.
    index_cell_m: float = 250.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not within_limits(f.name, value):
                raise ConfigError(f"geofence {f.name} must be {limit_text(f.name)}, got {value!r}")
        if self.deviation_clear_m > self.deviation_m:
            raise ConfigError("geofence deviation_clear_m must not exceed deviation_m")
