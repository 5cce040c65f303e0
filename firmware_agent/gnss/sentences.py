"""What each NMEA sentence type says, merged into the draft of its epoch.

pynmea2 does the grammar: the sentence pattern, the checksum (verified whenever one is
present) and the talker/type dispatch. The field values are converted here, strictly,
because pynmea2's conversions are unsafe for a position source: an empty latitude
becomes ``0.0`` (a van in the Gulf of Guinea), and a field that fails to convert is
returned as the raw string instead of raising. Converting ourselves also keeps the hot
path free of pynmea2's per-attribute ``__getattr__`` lookups.

Each ``merge`` function reads one sentence's field list into an :class:`EpochDraft`
under the epoch's merge rules (validity gating, most precise position wins, last value
wins otherwise). It parses everything that can reject the sentence before it changes
the draft, so a rejected sentence leaves no trace.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import date
from typing import NamedTuple

from firmware_agent.errors import AgentError

KNOT_MPS = 1852.0 / 3600.0
KMH_MPS = 1000.0 / 3600.0

# Fault kinds counted by the decoder.
BAD_CHECKSUM = "bad_checksum"
MALFORMED = "malformed"
TRUNCATED = "truncated"
BAD_FIELD = "bad_field"
PROPRIETARY = "proprietary"
UNUSED_TYPE = "unused_type"
NO_CHECKSUM = "no_checksum"
# A sentence that raised out of the decoding code: a bug, counted and survived.
INTERNAL_ERROR = "internal_error"


class SentenceError(AgentError, ValueError):
    """A sentence was rejected; ``reason`` is the fault kind it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def nmea_checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    x = 0
    for b in body.encode("ascii"):
        x ^= b
    return x


_TOD = re.compile(r"(\d\d)(\d\d)(\d\d)(\.\d*)?")
_COORD = re.compile(r"(\d{1,3})(\d\d(?:\.\d*)?)")
# Resolution a time was printed with, by its length: hhmmss 1 s, .s 100 ms, .ss 10 ms.
_TOD_RESOLUTION_MS = {6: 1000, 7: 1000, 8: 100, 9: 10}


def parse_tod_ms(s: str) -> int:
    """``hhmmss[.s…]`` to milliseconds since 00:00 UTC. Second 60 (leap) is allowed."""
    m = _TOD.fullmatch(s)
    if m is None:
        raise ValueError(s)
    h, mi, sec = int(m[1]), int(m[2]), int(m[3])
    if h > 23 or mi > 59 or sec > 60:
        raise ValueError(s)
    frac = m[4]
    ms = round(float(frac) * 1000.0) if frac and len(frac) > 1 else 0
    return ((h * 60 + mi) * 60 + sec) * 1000 + ms


def tod_resolution_ms(s: str) -> int:
    return _TOD_RESOLUTION_MS.get(len(s), 1)


def parse_coord(value: str, hemi: str, max_deg: int, positive: str, negative: str) -> float:
    """``(d)ddmm.mmmm`` plus hemisphere letter to signed degrees."""
    m = _COORD.fullmatch(value)
    if m is None:
        raise ValueError(value)
    deg = int(m[1])
    minutes = float(m[2])
    if minutes >= 60.0 or deg > max_deg or (deg == max_deg and minutes > 0.0):
        raise ValueError(value)
    if hemi == positive:
        return deg + minutes / 60.0
    if hemi == negative:
        return -(deg + minutes / 60.0)
    raise ValueError(hemi)


@functools.lru_cache(maxsize=4)  # the same string every epoch: parse it once a day
def parse_ddmmyy(s: str) -> date:
    """RMC date. Two-digit years: 80-99 are 19xx, 00-79 are 20xx (as gpsd does)."""
    if len(s) != 6 or not s.isdigit():
        raise ValueError(s)
    yy = int(s[4:6])
    return date(1900 + yy if yy >= 80 else 2000 + yy, int(s[2:4]), int(s[0:2]))


class EpochDraft:
    """What the sentences of one epoch have stated so far. ``None``: nobody said."""

    __slots__ = (
        "alt_m",
        "bad_fields",
        "course_deg",
        "date",
        "fix_type",
        "gga_sats",
        "gsa_used",
        "hdop",
        "in_view",
        "last_key",
        "last_n",
        "lat",
        "lon",
        "nav_seen",
        "occurrences",
        "pdop",
        "pos_digits",
        "quality",
        "speed_mps",
        "talker",
        "tod_ms",
        "tod_res_ms",
        "vdop",
        "velocity_invalid",
    )

    def __init__(self) -> None:
        self.tod_ms: int | None = None
        self.tod_res_ms = 1000
        self.date: date | None = None
        self.nav_seen = False  # a position sentence (valid or not) was part of the epoch
        self.lat: float | None = None
        self.lon: float | None = None
        self.pos_digits = -1  # decimals of minutes of the position kept
        self.talker = ""
        self.speed_mps: float | None = None
        self.course_deg: float | None = None
        self.velocity_invalid = False
        self.alt_m: float | None = None
        self.quality: int | None = None
        self.hdop: float | None = None
        self.pdop: float | None = None
        self.vdop: float | None = None
        self.gga_sats: int | None = None
        self.fix_type: int | None = None
        self.gsa_used: dict[tuple[str, str, str], int] = {}  # one entry per GSA list
        self.in_view: dict[str, int] = {}  # GSV group -> satellites in view
        self.occurrences: dict[str, int] = {}  # talker+type -> sentences so far
        self.last_key = ""  # the latest sentence: talker+type ...
        self.last_n = 0  # ... and how many of that key the epoch holds with it
        self.bad_fields = 0  # auxiliary fields dropped (counted by the decoder)


def _float(v: str, e: EpochDraft) -> float | None:
    """An auxiliary number (DOP, speed, altitude); a bad one is dropped and counted."""
    if not v:
        return None
    try:
        f = float(v)
    except ValueError:
        e.bad_fields += 1
        return None
    if not math.isfinite(f):
        e.bad_fields += 1
        return None
    return f


def _int(v: str, e: EpochDraft) -> int | None:
    if not v:
        return None
    if not v.isdigit():
        e.bad_fields += 1
        return None
    return int(v)


def _position(d: list[str], i: int) -> tuple[float, float, int] | None:
    """Lat, lon and decimals of minutes from fields i..i+3; None when they are empty.

    Called only for sentences that declare a valid fix: a sentence without a fix often
    still fills these fields (the last fix, zeros, or MediaTek's 8960.000000,N
    placeholder), and those must neither become a position nor count as malformed.
    """
    lat_s, lon_s = d[i], d[i + 2]
    if not (lat_s or lon_s):
        return None
    try:
        lat = parse_coord(lat_s, d[i + 1], 90, "N", "S")
        lon = parse_coord(lon_s, d[i + 3], 180, "E", "W")
    except ValueError as err:
        detail = f"position {lat_s!r},{d[i + 1]!r},{lon_s!r},{d[i + 3]!r}"
        raise SentenceError(MALFORMED, detail) from err
    lat_dot, lon_dot = lat_s.find("."), lon_s.find(".")
    digits = min(len(lat_s) - lat_dot, len(lon_s) - lon_dot) - 1 if lat_dot >= 0 <= lon_dot else 0
    return lat, lon, digits


def _keep_position(e: EpochDraft, pos: tuple[float, float, int] | None, talker: str) -> None:
    # Receivers often print RMC with fewer decimals than GGA: the most precise wins.
    if pos is not None and pos[2] >= e.pos_digits:
        e.lat, e.lon, e.pos_digits = pos
        e.talker = talker


def _mode_valid(mode: str) -> bool:
    # FAA mode: N = data not valid. A/D/P/R/F/E (autonomous ... dead reckoning) carry a fix.
    return mode[:1] not in ("N", "")


# Merge functions read a field list padded to the type's full length (Spec.width), so
# a short sentence reads as empty fields rather than raising; ``n`` is the real count.


def _gga_gns(d: list[str], valid: bool, talker: str, e: EpochDraft) -> None:
    # GGA and GNS share their layout but for field 5 (fix quality / mode letters).
    pos = _position(d, 1) if valid else None
    e.nav_seen = True
    _keep_position(e, pos, talker)
    if (sats := _int(d[6], e)) is not None:
        e.gga_sats = sats
    if (hdop := _float(d[7], e)) is not None:
        e.hdop = hdop
    if valid and (alt := _float(d[8], e)) is not None:
        e.alt_m = alt


def _gga(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    quality = _int(d[5], e)
    _gga_gns(d, quality is not None and 1 <= quality <= 6, talker, e)  # 7 manual, 8 simulator
    if quality is not None:
        e.quality = quality


def _gns(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    # One mode letter per constellation; any constellation with a fix makes it valid.
    _gga_gns(d, any(c != "N" for c in d[5]), talker, e)


def _rmc(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    # d[12], the NMEA 4.1 navigational status, is not a fix flag: "V" there means
    # "equipment does not provide one" (Quectel always sends it).
    mode = d[11]
    valid = d[1] == "A" and (mode == "" or _mode_valid(mode))
    pos = _position(d, 2) if valid else None
    e.nav_seen = True
    _keep_position(e, pos, talker)
    if valid:
        if (knots := _float(d[6], e)) is not None:
            e.speed_mps = knots * KNOT_MPS
        if (course := _float(d[7], e)) is not None:
            e.course_deg = course
    if d[8]:
        try:
            e.date = parse_ddmmyy(d[8])
        except ValueError:
            e.bad_fields += 1


def _gll(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    mode = d[6]
    valid = d[5] == "A" and (mode == "" or _mode_valid(mode))
    pos = _position(d, 0) if valid else None
    e.nav_seen = True
    _keep_position(e, pos, talker)


def _vtg(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    if d[1] in ("T", "") and n >= 8:
        # NMEA 2.x: course,T,course,M,knots,N,km/h,K[,mode]
        if d[8] and not _mode_valid(d[8]):
            e.velocity_invalid = True
            return
        course, knots, kmh = _float(d[0], e), _float(d[4], e), _float(d[6], e)
    else:
        # NMEA 1.5: course true, course magnetic, knots, km/h (no unit letters)
        course, knots, kmh = _float(d[0], e), _float(d[2], e), _float(d[3], e)
    if course is not None:
        e.course_deg = course
    if knots is not None:
        e.speed_mps = knots * KNOT_MPS
    elif kmh is not None:
        e.speed_mps = kmh * KMH_MPS


def _gsa(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    # 17 fields (NMEA <= 4.0) or 18 (4.1 adds a system id); some receivers list more
    # than 12 satellites, so the DOPs are found from the end in that case.
    dop = 14 if n in (17, 18) else n - 3
    if (fix_type := _int(d[1], e)) is not None:
        e.fix_type = fix_type
    # One entry per list: a multi-GNSS receiver sends one GSA per constellation (its
    # system id, or its first PRN before NMEA 4.1, tells them apart); a list re-sent
    # within the epoch replaces itself.
    used = dop - 2 - d[2:dop].count("")
    if used:
        e.gsa_used[(talker, d[17] if n == 18 else "", d[2])] = used
    if (pdop := _float(d[dop], e)) is not None:
        e.pdop = pdop
    if (hdop := _float(d[dop + 1], e)) is not None:
        e.hdop = hdop
    if (vdop := _float(d[dop + 2], e)) is not None:
        e.vdop = vdop


def _gsv(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    # Every message of a group repeats the count; reading it from message 1 only keeps
    # one count per group. NMEA 4.1 appends a signal id after the satellite blocks
    # (3 + 4k fields, +1): GPS L1 and L5 are two groups listing the same satellites.
    if d[1] == "1" and (in_view := _int(d[2], e)) is not None:
        e.in_view[talker + (d[n - 1] if (n - 3) % 4 == 1 else "")] = in_view


def _zda(d: list[str], n: int, talker: str, e: EpochDraft) -> None:
    # A ZDA whose time is empty says nothing usable; one with a time never gets here.
    return


class Spec(NamedTuple):
    """How a sentence type is read."""

    merge: Callable[[list[str], int, str, EpochDraft], None]
    width: int  # fields the merge function may read (the list is padded to this)
    # Fields demanded when the sentence has no checksum: a line cut short by a lost
    # byte still matches the grammar, so every field up to and including the one after
    # the last number read must be there; a truncated number cannot pass as a shorter one.
    required: int
    time_field: int  # index of hhmmss, -1 for untimed types


SPECS: dict[str, Spec] = {
    "GGA": Spec(_gga, 14, 10, 0),
    "RMC": Spec(_rmc, 13, 10, 0),
    "GLL": Spec(_gll, 7, 6, 4),
    "GNS": Spec(_gns, 13, 10, 0),
    "VTG": Spec(_vtg, 9, 4, -1),
    "GSA": Spec(_gsa, 18, 17, -1),
    "GSV": Spec(_gsv, 3, 3, -1),
    # ZDA states the date; the decoder hands it to EpochAssembler.note_date.
    "ZDA": Spec(_zda, 6, 4, 0),
}


# The years a ZDA may state: GPS time starts in 1980, and two centuries on a date is a
# corrupted field, not a receiver's clock (9999-12-31 would also overflow the epoch
# assembler's midnight rollover).
ZDA_YEARS = range(1980, 2200)


def parse_zda(d: list[str]) -> date | None:
    """The date of a ZDA field list (padded); None while the receiver has no date yet
    (a day, month or year field empty). :class:`SentenceError` (``bad_field``) for
    fields that are there but are no date: not ``dd,mm,yyyy`` digits, a day that does
    not exist, a year outside :data:`ZDA_YEARS`.
    """
    day, month, year = d[1], d[2], d[3]
    if not (day and month and year):
        return None
    if not (
        len(day) <= 2
        and len(month) <= 2
        and len(year) == 4
        and day.isdigit()
        and month.isdigit()
        and year.isdigit()
        and int(year) in ZDA_YEARS
    ):
        raise SentenceError(BAD_FIELD, f"ZDA date {day!r:.8},{month!r:.8},{year!r:.24}")
    try:
        return date(int(year), int(month), int(day))
    except ValueError as err:
        raise SentenceError(BAD_FIELD, f"ZDA date {day},{month},{year}: {err}") from None
