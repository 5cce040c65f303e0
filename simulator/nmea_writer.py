"""Epochs to NMEA 0183 sentences, formatted as real receivers format them.

Per epoch, in a u-blox's order: RMC, VTG, GGA, GSA, and at whole seconds GSV. The
``GP`` talker writes NMEA 2.3 (GPS only); ``GN`` writes NMEA 4.10 (GPS + GLONASS):
combined ``GN`` navigation sentences, one ``GNGSA`` per constellation with the
system id field, RMC with the navigational status field, and ``GPGSV`` + ``GLGSV``.

Fields: time ``hhmmss.ss``, latitude ``ddmm.mmmmm``, longitude ``dddmm.mmmmm``
(1e-5 minute ≈ 2 cm), speed in knots (RMC, VTG) and km/h (VTG), RMC date ``ddmmyy``,
mode indicator ``A`` (autonomous) or ``N`` (no fix). Without a fix the sentences are
what a receiver sends then: RMC status ``V`` and GGA quality 0 with empty position
fields, GSA fix type 1, VTG all empty with mode ``N``, DOPs 99.99.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from pynmea2 import NMEASentence

from firmware_agent.contract.fix import FixMode
from simulator.epoch import Epoch, Satellite, Talker

KNOTS_PER_MPS = 3600.0 / 1852.0
KMH_PER_MPS = 3.6
NO_DOP = "99.99"
DEFAULT_GEOID_SEPARATION_M = 47.0  # central Europe; only informs GGA's separation field
_GSA_SYSTEM_ID = {"GP": "1", "GL": "2"}  # NMEA 4.10 GNSS system ids


def checksum(body: str) -> str:
    """The two-hex-digit checksum of a sentence body (between ``$`` and ``*``)."""
    return f"{NMEASentence.checksum(body):02X}"


def sentence(body: str) -> str:
    """``$body*HH\\r\\n``."""
    return f"${body}*{checksum(body)}\r\n"


def format_time(t: datetime) -> str:
    """``hhmmss.ss`` in UTC (hundredths truncated, as receivers do)."""
    t = t.astimezone(UTC)
    return f"{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond // 10_000:02d}"


def format_date(t: datetime) -> str:
    """``ddmmyy`` in UTC."""
    t = t.astimezone(UTC)
    return f"{t.day:02d}{t.month:02d}{t.year % 100:02d}"


def _degrees_minutes(value: float, degree_digits: int) -> str:
    magnitude = abs(value)
    degrees = int(magnitude)
    minutes = round((magnitude - degrees) * 60.0, 5)
    if minutes >= 60.0:  # 59.999996' rounds up into the next degree
        degrees += 1
        minutes -= 60.0
    return f"{degrees:0{degree_digits}d}{minutes:08.5f}"


def format_lat(lat: float) -> tuple[str, str]:
    """``("ddmm.mmmmm", "N"|"S")``."""
    return _degrees_minutes(lat, 2), "N" if lat >= 0 else "S"


def format_lon(lon: float) -> tuple[str, str]:
    """``("dddmm.mmmmm", "E"|"W")``."""
    return _degrees_minutes(lon, 3), "E" if lon >= 0 else "W"


def _num(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _snr(value: int | None) -> str:
    return "" if value is None else f"{value:02d}"


def _dop(value: float | None) -> str:
    return NO_DOP if value is None else f"{value:.2f}"


def render_epoch(
    epoch: Epoch, talker: Talker, *, geoid_separation_m: float = DEFAULT_GEOID_SEPARATION_M
) -> list[str]:
    """The sentences a receiver emits for ``epoch``, each ending ``\\r\\n``."""
    fix = epoch.mode in (FixMode.FIX_2D, FixMode.FIX_3D) and epoch.has_fix
    time = format_time(epoch.time)
    date = format_date(epoch.time)
    mode = "A" if fix else "N"
    if fix and epoch.reported_lat is not None and epoch.reported_lon is not None:
        lat, ns = format_lat(epoch.reported_lat)
        lon, ew = format_lon(epoch.reported_lon)
    else:
        lat = ns = lon = ew = ""
    speed = epoch.reported_speed_mps if fix else None
    course = epoch.reported_course_deg if fix else None
    speed_kn = _num(None if speed is None else speed * KNOTS_PER_MPS, 3)
    course_txt = _num(course, 2)

    status = "A" if fix else "V"
    rmc = (
        f"{talker}RMC,{time},{status},{lat},{ns},{lon},{ew},{speed_kn},{course_txt},{date},,,{mode}"
    )
    if talker == "GN":
        rmc += ",V"  # NMEA 4.10 navigational status: not provided (u-blox sends V)
    out = [sentence(rmc)]

    if fix:
        kmh = _num(None if speed is None else speed * KMH_PER_MPS, 3)
        out.append(sentence(f"{talker}VTG,{course_txt},T,,M,{speed_kn},N,{kmh},K,A"))
    else:
        out.append(sentence(f"{talker}VTG,,,,,,,,,N"))

    if fix:
        alt = _num(epoch.reported_alt_m, 1)
        hdop = _dop(epoch.hdop)
        out.append(
            sentence(
                f"{talker}GGA,{time},{lat},{ns},{lon},{ew},1,{epoch.sats_used:02d},{hdop},"
                f"{alt},M,{geoid_separation_m:.1f},M,,"
            )
        )
    else:
        out.append(sentence(f"{talker}GGA,{time},,,,,0,00,{NO_DOP},,,,,,"))

    out.extend(_gsa(epoch, talker, fix))
    if epoch.time.microsecond == 0:
        out.extend(_gsv(epoch.satellites, "GP"))
        if talker == "GN":
            out.extend(_gsv(epoch.satellites, "GL"))
    return out


def epoch_bytes(epoch: Epoch, talker: Talker) -> bytes:
    """:func:`render_epoch` joined and ASCII-encoded, ready for a serial line."""
    return "".join(render_epoch(epoch, talker)).encode("ascii")


def render_log(epochs: Iterable[Epoch], talker: Talker) -> Iterator[bytes]:
    """:func:`epoch_bytes` for each epoch."""
    for epoch in epochs:
        yield epoch_bytes(epoch, talker)


def _gsa(epoch: Epoch, talker: Talker, fix: bool) -> list[str]:
    fix_type = "3" if fix and epoch.mode is FixMode.FIX_3D else "2" if fix else "1"
    dops = (
        f"{_dop(epoch.pdop)},{_dop(epoch.hdop)},{_dop(epoch.vdop)}"
        if fix
        else f"{NO_DOP},{NO_DOP},{NO_DOP}"
    )
    systems = ("GP",) if talker == "GP" else ("GP", "GL")
    out = []
    for system in systems:
        ids = (
            [f"{s.prn:02d}" for s in epoch.satellites if s.used and s.system == system][:12]
            if fix
            else []
        )
        fields = ",".join(ids + [""] * (12 - len(ids)))
        body = f"{talker}GSA,A,{fix_type},{fields},{dops}"
        if talker == "GN":
            body += f",{_GSA_SYSTEM_ID[system]}"
        out.append(sentence(body))
    return out


def _gsv(satellites: tuple[Satellite, ...], system: str) -> list[str]:
    in_view = [s for s in satellites if s.system == system]
    if not in_view:
        return [sentence(f"{system}GSV,1,1,00")]
    total = (len(in_view) + 3) // 4
    out = []
    for n in range(total):
        group = in_view[4 * n : 4 * n + 4]
        blocks = ",".join(
            f"{s.prn:02d},{s.elevation_deg:02d},{s.azimuth_deg:03d},{_snr(s.snr_db)}" for s in group
        )
        out.append(sentence(f"{system}GSV,{total},{n + 1},{len(in_view):02d},{blocks}"))
    return out
