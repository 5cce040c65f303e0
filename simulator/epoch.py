"""One receiver epoch: the truth about the van and what the receiver reports.

Both the scenario generator and the trace converter produce :class:`Epoch` records;
the NMEA writer renders them and the truth writer stores them. Keeping truth and
report side by side in one record is what lets a test score the agent per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.geo import haversine_m

Talker = Literal["GP", "GN"]
"""NMEA talker of the navigation sentences: GPS only, or combined GPS + GLONASS."""

TALKERS: tuple[Talker, ...] = ("GP", "GN")

RATES_HZ: tuple[int, ...] = (1, 5, 10)
"""Output rates a receiver can be set to; each divides a second into whole 10 ms steps."""

Constellation = Literal["GP", "GL"]
"""A satellite's system, named by its GSV talker: GPS or GLONASS."""


@dataclass(frozen=True, slots=True)
class Satellite:
    """A satellite in view, as GSV describes it, and whether the fix used it (GSA).

    ``prn`` is the NMEA satellite id: 1-32 for GPS, 65-96 for GLONASS. ``snr_db`` is
    ``None`` when the receiver sees the satellite in its almanac but does not track it
    (in a tunnel, for instance).
    """

    system: Constellation
    prn: int
    elevation_deg: int
    azimuth_deg: int
    snr_db: int | None
    used: bool


@dataclass(frozen=True, slots=True)
class Epoch:
    """The van's true state and the receiver's report at one instant.

    Truth (always set): ``lat``/``lon``/``alt_m`` of the antenna, ``speed_mps``,
    ``course_deg`` (the heading the van points along, kept while it stands still)
    and ``odometer_m``, the distance driven since the start of the day.

    Report: ``reported_*`` are what the receiver outputs; position and altitude are
    ``None`` without a fix (``mode`` is then :attr:`FixMode.NO_FIX`), and
    ``reported_course_deg`` is ``None`` when the receiver has no fix or moves too
    slowly for a meaningful course. ``hdop``/``pdop``/``vdop`` are ``None`` without a
    fix. ``sats_used`` equals the number of ``satellites`` flagged ``used``.

    Flags: ``outage`` is true while the receiver has no fix because the sky is hidden
    (tunnel, outage window, start-up acquisition); ``multipath`` while a reflected
    signal has pulled the reported position 30 m or more away from the truth.
    ``stop_id`` names the stop the van stands at (arrival <= time <= departure).
    """

    time: datetime
    lat: float
    lon: float
    alt_m: float
    speed_mps: float
    course_deg: float
    odometer_m: float
    reported_lat: float | None
    reported_lon: float | None
    reported_alt_m: float | None
    reported_speed_mps: float | None
    reported_course_deg: float | None
    mode: FixMode
    hdop: float | None
    pdop: float | None
    vdop: float | None
    sats_used: int
    satellites: tuple[Satellite, ...]
    outage: bool
    multipath: bool
    stop_id: str | None

    @property
    def has_fix(self) -> bool:
        """Whether the receiver reports a position this epoch."""
        return self.reported_lat is not None and self.reported_lon is not None

    def fix(self, talker: Talker) -> Fix:
        """What the receiver reports this epoch, as the van's decoder makes it of the
        NMEA (:mod:`simulator.nmea_writer`): the reported position, speed, course and
        altitude, the mode, GGA's quality (1 with a fix, else 0), the DOPs, the
        satellites used and in view, at full resolution (the NMEA rounds them)."""
        t = self.time
        midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return Fix(
            time=t,
            tod_s=(t - midnight).total_seconds(),
            lat=self.reported_lat,
            lon=self.reported_lon,
            speed_mps=self.reported_speed_mps,
            course_deg=self.reported_course_deg,
            alt_m=self.reported_alt_m,
            mode=self.mode,
            quality=1 if self.has_fix else 0,
            hdop=self.hdop,
            pdop=self.pdop,
            vdop=self.vdop,
            sats_used=self.sats_used,
            sats_view=len(self.satellites),
            talker=talker if self.has_fix else "",  # the talker of the position
        )

    @property
    def horizontal_error_m(self) -> float:
        """Distance between reported and true position; NaN without a fix."""
        if self.reported_lat is None or self.reported_lon is None:
            return math.nan
        return haversine_m(self.lat, self.lon, self.reported_lat, self.reported_lon)


class EpochView(Protocol):
    """The per-epoch fields both :class:`Epoch` and a ground-truth row carry.

    What a live view or a scorer needs, whether the epoch was just generated or read
    back from ``truth.csv``.
    """

    @property
    def time(self) -> datetime: ...
    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def speed_mps(self) -> float: ...
    @property
    def course_deg(self) -> float: ...
    @property
    def reported_lat(self) -> float | None: ...
    @property
    def reported_lon(self) -> float | None: ...
    @property
    def hdop(self) -> float | None: ...
    @property
    def sats_used(self) -> int: ...
    @property
    def mode(self) -> FixMode: ...
    @property
    def outage(self) -> bool: ...
    @property
    def multipath(self) -> bool: ...
    @property
    def stop_id(self) -> str | None: ...
