"""Delivery stops: where the van parks, what kind of place it serves, how long it stays.

A :class:`StopSite` is a place on the plan (an address and the road point where the
van parks); a :class:`Stop` is a site the simulated van actually served, with the true
arrival and departure times that the agent's arrival detection is scored against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class StopType(StrEnum):
    """The kind of place a stop serves; it decides how long the driver stays."""

    HOUSE = "house"
    APARTMENT = "apartment"
    BUSINESS = "business"
    LOCKER = "locker"


DWELL_RANGE_S: dict[StopType, tuple[float, float]] = {
    StopType.HOUSE: (60.0, 150.0),
    StopType.APARTMENT: (150.0, 360.0),
    StopType.BUSINESS: (90.0, 240.0),
    StopType.LOCKER: (40.0, 90.0),
}
"""Inclusive dwell-time bounds per stop type, in seconds."""

STOP_TYPE_WEIGHTS: dict[StopType, float] = {
    StopType.HOUSE: 0.5,
    StopType.APARTMENT: 0.2,
    StopType.BUSINESS: 0.2,
    StopType.LOCKER: 0.1,
}
"""How often each type appears on a generated route (a typical urban parcel mix)."""


def draw_stop_type(rng: random.Random) -> StopType:
    """A stop type drawn with :data:`STOP_TYPE_WEIGHTS`."""
    types = list(STOP_TYPE_WEIGHTS)
    return rng.choices(types, weights=[STOP_TYPE_WEIGHTS[t] for t in types])[0]


def draw_dwell_ms(rng: random.Random, stop_type: StopType) -> int:
    """A dwell time in whole milliseconds, within the type's :data:`DWELL_RANGE_S`.

    Triangular with its mode a third of the way up the range: most stops are quick,
    a few drag on (a signature, a neighbour taking the parcel). Milliseconds keep the
    truth files exact: ``stops.json`` stores times to the millisecond.
    """
    low_s, high_s = DWELL_RANGE_S[stop_type]
    dwell_s = rng.triangular(low_s, high_s, low_s + (high_s - low_s) / 3.0)
    return min(round(high_s * 1000), max(round(low_s * 1000), round(dwell_s * 1000)))


def parse_stop_type(value: object) -> StopType:
    """The :class:`StopType` named by ``value``; ``ValueError`` naming the choices if none."""
    try:
        return StopType(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(t.value for t in StopType)
        raise ValueError(f"unknown stop type {value!r} (expected one of {choices})") from None


def stop_id(index: int) -> str:
    """The id of the ``index``-th stop of a day (0-based): ``S001``, ``S002``, ..."""
    return f"S{index + 1:03d}"


@dataclass(frozen=True, slots=True)
class StopSite:
    """A place to deliver to: the address and the road point where the van parks.

    ``lat``/``lon`` is the address (the door); ``park_lat``/``park_lon`` lies on the
    driven path, 8-25 m away on a generated town, where the van comes to rest.
    """

    id: str
    type: StopType
    lat: float
    lon: float
    park_lat: float
    park_lon: float


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop the van served, with the ground truth of when.

    ``arrival`` is when the van came to rest at the parking point, ``departure`` when
    it started moving again; both are UTC-aware and ``arrival < departure``. Between
    them (inclusive) the van's true speed is exactly 0 at the parking point.
    """

    id: str
    type: StopType
    lat: float
    lon: float
    park_lat: float
    park_lon: float
    arrival: datetime
    departure: datetime

    @property
    def dwell_s(self) -> float:
        """How long the van stood at the stop."""
        return (self.departure - self.arrival).total_seconds()

    @classmethod
    def at_site(cls, site: StopSite, *, arrival: datetime, departure: datetime) -> Stop:
        """The stop served at ``site`` between ``arrival`` and ``departure``."""
        return cls(
            id=site.id,
            type=site.type,
            lat=site.lat,
            lon=site.lon,
            park_lat=site.park_lat,
            park_lon=site.park_lon,
            arrival=arrival,
            departure=departure,
        )
