"""What a GNSS receiver said about one epoch: :class:`Fix`, and gpsd's :class:`FixMode`.

The van's decoder makes one :class:`Fix` per receiver epoch; the telemetry point
(:mod:`.records`) is made from it, and the ETA features (:mod:`.eta_features`), which
training shares with the van, read it. Its JSON form (:meth:`Fix.to_json`) is what
``fleet-agent gnss decode`` prints and what :meth:`Fix.from_json` reads back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from typing import Any, NamedTuple

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.times import format_utc, parse_utc


class FixMode(IntEnum):
    """Navigation mode, numbered as gpsd's TPV ``mode``."""

    UNKNOWN = 0
    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


# A NamedTuple rather than a frozen dataclass: just as immutable, and four times
# cheaper to build (0.5 against 2.1 us), which counts at 10 fixes a second on a Pi.
class Fix(NamedTuple):
    """What the receiver said about one epoch, merged across its sentences.

    Invariants, upheld by the decoder:
    - ``lat``/``lon`` are both set or both ``None``, and set only when a sentence of the
      epoch declared the position valid (RMC status A, GGA quality > 0, ...). A receiver
      without a fix never yields a position, whatever its empty fields decode to; the
      same holds for ``speed_mps``, ``course_deg`` and ``alt_m``.
    - ``time`` is UTC-aware, or ``None`` while no date is known yet (a receiver that
      sends only GGA/GLL never tells the date); ``tod_s`` is then still the time of day.
    - Every other field is ``None`` when no sentence of the epoch carried it.
    """

    time: datetime | None
    tod_s: float
    lat: float | None = None
    lon: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    alt_m: float | None = None
    mode: FixMode = FixMode.UNKNOWN
    quality: int | None = None  # GGA fix quality: 1 GPS, 2 DGPS, 4 RTK fixed, 6 estimated
    hdop: float | None = None
    pdop: float | None = None
    vdop: float | None = None
    sats_used: int | None = None
    sats_view: int | None = None
    talker: str = ""

    @property
    def has_position(self) -> bool:
        return self.lat is not None

    def to_json_dict(self) -> dict[str, Any]:
        """The ``fleet-agent gnss decode`` record; unknown fields are ``None`` (null)."""
        lat, lon, speed = self.lat, self.lon, self.speed_mps
        return {
            "time": format_utc(self.time) if self.time is not None else None,
            # 1e-9 deg is 0.1 mm: every digit a receiver prints survives, float noise not.
            "lat": round(lat, 9) if lat is not None else None,
            "lon": round(lon, 9) if lon is not None else None,
            "speed_mps": round(speed, 3) if speed is not None else None,
            "course_deg": self.course_deg,
            "alt_m": self.alt_m,
            "mode": int(self.mode),
            "quality": self.quality,
            "hdop": self.hdop,
            "pdop": self.pdop,
            "vdop": self.vdop,
            "sats_used": self.sats_used,
            "sats_view": self.sats_view,
            "talker": self.talker or None,
        }

    def to_json(self) -> str:
        """:meth:`to_json_dict` as compact JSON, written without the intermediate dict.

        Equal to ``json.dumps(fix.to_json_dict(), separators=(",", ":"))`` (a test holds
        it to that), and several times faster: this is most of ``gnss decode``'s output
        cost.
        """
        t = self.time
        lat, lon, speed = self.lat, self.lon, self.speed_mps
        return (
            f'{{"time":{chr(34) + format_utc(t) + chr(34) if t is not None else "null"},'
            f'"lat":{_num(round(lat, 9) if lat is not None else None)},'
            f'"lon":{_num(round(lon, 9) if lon is not None else None)},'
            f'"speed_mps":{_num(round(speed, 3) if speed is not None else None)},'
            f'"course_deg":{_num(self.course_deg)},"alt_m":{_num(self.alt_m)},'
            f'"mode":{int(self.mode)},"quality":{_num(self.quality)},'
            f'"hdop":{_num(self.hdop)},"pdop":{_num(self.pdop)},"vdop":{_num(self.vdop)},'
            f'"sats_used":{_num(self.sats_used)},"sats_view":{_num(self.sats_view)},'
            # The talker is two ASCII word characters (pynmea2's grammar): no escaping.
            f'"talker":{chr(34) + self.talker + chr(34) if self.talker else "null"}}}'
        )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Fix:
        """The fix of a :meth:`to_json_dict` object (a ``gnss decode`` line);
        :class:`~.errors.CodecError` naming the field that is not one. ``tod_s``, which
        the JSON leaves out, is the time of day of ``time`` (0 without a time)."""
        time = None if obj.get("time") is None else parse_utc(obj["time"])
        if obj.get("time") is not None and time is None:
            raise CodecError(f"fix time must be an ISO 8601 UTC time, not {obj['time']!r:.40}")
        mode = obj.get("mode", 0)
        if not _is_int(mode) or not FixMode.UNKNOWN <= mode <= FixMode.FIX_3D:
            raise CodecError(f"fix mode must be 0..3, not {mode!r:.20}")
        talker = obj.get("talker")
        if talker is not None and not (isinstance(talker, str) and _TALKER.fullmatch(talker)):
            raise CodecError(f"fix talker must be two letters or digits, not {talker!r:.20}")
        lat, lon = _float(obj, "lat"), _float(obj, "lon")
        if (lat is None) != (lon is None):
            raise CodecError("fix lat and lon go together")
        tod_s = 0.0
        if time is not None:
            midnight = time.replace(hour=0, minute=0, second=0, microsecond=0)
            tod_s = (time - midnight).total_seconds()
        return cls(
            time=time,
            tod_s=tod_s,
            lat=lat,
            lon=lon,
            speed_mps=_float(obj, "speed_mps"),
            course_deg=_float(obj, "course_deg"),
            alt_m=_float(obj, "alt_m"),
            mode=FixMode(mode),
            quality=_int(obj, "quality"),
            hdop=_float(obj, "hdop"),
            pdop=_float(obj, "pdop"),
            vdop=_float(obj, "vdop"),
            sats_used=_int(obj, "sats_used"),
            sats_view=_int(obj, "sats_view"),
            talker=talker or "",
        )


_TALKER = re.compile(r"[A-Z0-9]{2}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _float(obj: Mapping[str, Any], name: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if not wirejson.finite_number(value):
        raise CodecError(f"fix {name} must be a finite number or null, not {value!r:.40}")
    return float(value)


def _int(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise CodecError(f"fix {name} must be an integer or null, not {value!r:.40}")
    assert isinstance(value, int)
    return value


def _num(v: float | None) -> str:
    # float.__repr__ is what json.dumps writes for finite floats; the decoder never
    # produces NaN or infinity (non-finite fields are dropped as bad_field).
    return "null" if v is None else repr(v)
