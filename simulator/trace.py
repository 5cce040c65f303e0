"""Real traces to NMEA: a timestamped position CSV replayed as a receiver would send it.

The CSV needs ``timestamp_utc,lat,lon`` (other columns are ignored), timestamps ISO
8601 with a zone (``2014-09-10T04:54:07Z``) and strictly increasing. Epochs are laid
on a grid at ``rate_hz`` from the first timestamp and placed by linear interpolation
in a local frame, so at the CSV's own timestamps (when they fall on the grid) the
positions are the CSV's. Speed and course are those of the segment being travelled.
A segment longer than ``max_gap_s`` is a gap in the recording: the epochs inside it
have no fix. Optional noise is Gauss-Markov, as in the scenario, with ``noise_m`` the
per-axis sigma. Then the scenario's NMEA writer renders the epochs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.geo import LocalFrame
from simulator.epoch import RATES_HZ, TALKERS, Constellation, Epoch, Talker
from simulator.errors import ConfigError, TraceFileError
from simulator.gnss_errors import MAX_SATS, SATS_PER_UNIT_HDOP, VDOP_PER_HDOP, GaussMarkov
from simulator.kinematics import heading_deg
from simulator.nmea_writer import epoch_bytes
from simulator.rng import stream as random_stream
from simulator.sky import Sky

DEFAULT_MAX_GAP_S = 120.0
OPEN_SKY_HDOP = 0.9
UERE_M = 2.5
MIN_COURSE_SPEED_MPS = 0.5
REQUIRED_COLUMNS = ("timestamp_utc", "lat", "lon")


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One CSV row: a UTC-aware time and a position; ``line`` is its 1-based line number."""

    time: datetime
    lat: float
    lon: float
    line: int


def read_trace_csv(path: Path) -> list[TracePoint]:
    """The rows of a position CSV, validated.

    Raises :class:`TraceFileError` (a ``ValueError``) naming the line for a missing
    column, an unparsable or zone-less timestamp, a bad coordinate, a timestamp not
    after the previous row's, or fewer than two rows.
    """
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as err:
        raise TraceFileError(path, f"cannot read: {err}") from err
    points: list[TracePoint] = []
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise TraceFileError(
                    path, f"missing column(s) {', '.join(missing)} in the header", line=1
                )
            i_time, i_lat, i_lon = (header.index(c) for c in REQUIRED_COLUMNS)
            for fields in reader:
                line = reader.line_num
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) < len(header):
                    raise TraceFileError(
                        path, f"{len(fields)} fields, expected {len(header)}", line=line
                    )
                point = _parse_row(path, line, fields[i_time], fields[i_lat], fields[i_lon])
                if points and point.time <= points[-1].time:
                    raise TraceFileError(
                        path,
                        f"timestamp {fields[i_time].strip()} is not after the previous row's"
                        f" ({points[-1].time.isoformat()}, line {points[-1].line}):"
                        " rows must be sorted by time",
                        line=line,
                    )
                points.append(point)
        except csv.Error as err:
            raise TraceFileError(path, f"malformed CSV: {err}", line=reader.line_num) from err
        except UnicodeDecodeError as err:
            raise TraceFileError(path, f"not UTF-8 text: {err}") from err
    if len(points) < 2:
        raise TraceFileError(path, f"needs at least two positions, found {len(points)}")
    return points


def _parse_row(path: Path, line: int, raw_time: str, raw_lat: str, raw_lon: str) -> TracePoint:
    try:
        t = datetime.fromisoformat(raw_time.strip())
    except ValueError:
        raise TraceFileError(path, f"unparsable timestamp {raw_time!r}", line=line) from None
    if t.tzinfo is None:
        raise TraceFileError(
            path, f"timestamp {raw_time!r} has no timezone (expected e.g. ...Z)", line=line
        )
    try:
        lat, lon = float(raw_lat), float(raw_lon)
    except ValueError:
        raise TraceFileError(
            path, f"unparsable coordinates {raw_lat!r}, {raw_lon!r}", line=line
        ) from None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise TraceFileError(path, f"coordinates {raw_lat}, {raw_lon} are out of range", line=line)
    return TracePoint(t, lat, lon, line)


def trace_epochs(
    points: Sequence[TracePoint],
    *,
    rate_hz: int,
    noise_m: float = 0.0,
    seed: int = 0,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    talker: Talker = "GP",
    alt_m: float = 0.0,
    correlation_time_s: float = 45.0,
) -> Iterator[Epoch]:
    """Epochs at ``rate_hz`` along ``points`` (time-sorted, at least two).

    Deterministic for a ``seed``. With ``noise_m`` 0 the reported position is the
    interpolated one exactly. The reported HDOP is what a receiver with that noise
    would show (``noise_m / 2.5 m``), never better than an open sky's 0.9.
    """
    if rate_hz not in RATES_HZ:
        raise ConfigError(f"rate_hz must be one of {RATES_HZ}, got {rate_hz}")
    if talker not in TALKERS:
        raise ConfigError(f"talker must be one of {TALKERS}, got {talker!r}")
    if noise_m < 0 or max_gap_s <= 0:
        raise ConfigError("noise_m must not be negative and max_gap_s must be positive")
    if len(points) < 2:
        raise ConfigError("a trace needs at least two points")

    frame = LocalFrame(points[0].lat, points[0].lon)
    xy = [frame.to_local(p.lat, p.lon) for p in points]
    t0 = points[0].time
    offsets_us = [(p.time - t0) // timedelta(microseconds=1) for p in points]
    cumulative = [0.0]
    for (x0, y0), (x1, y1) in pairwise(xy):
        cumulative.append(cumulative[-1] + math.hypot(x1 - x0, y1 - y0))

    dt_s = 1.0 / rate_hz
    rng = random_stream("trace", seed)
    east, north, up = (GaussMarkov(rng, correlation_time_s, dt_s) for _ in range(3))
    systems: tuple[Constellation, ...] = ("GP",) if talker == "GP" else ("GP", "GL")
    sky = Sky(seed, systems)
    hdop = round(max(OPEN_SKY_HDOP, noise_m / UERE_M), 2)
    vdop = round(VDOP_PER_HDOP * hdop, 2)
    pdop = round(math.hypot(hdop, vdop), 2)
    sats_wanted = max(4, min(MAX_SATS[talker], round(SATS_PER_UNIT_HDOP[talker] / hdop)))

    step_us = 1_000_000 // rate_hz
    segment = 0
    course = 0.0
    in_gap = False
    for index in range(offsets_us[-1] // step_us + 1):
        t_us = index * step_us
        while segment < len(points) - 2 and offsets_us[segment + 1] <= t_us:
            segment += 1
        span_us = offsets_us[segment + 1] - offsets_us[segment]
        f = (t_us - offsets_us[segment]) / span_us
        (x0, y0), (x1, y1) = xy[segment], xy[segment + 1]
        length_m = cumulative[segment + 1] - cumulative[segment]
        speed = length_m / (span_us / 1_000_000)
        if length_m > 0.01:
            course = heading_deg(x1 - x0, y1 - y0)
        x, y = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
        lat, lon = frame.to_geodetic(x, y)
        e_z, n_z, u_z = east.step(), north.step(), up.step()
        gap = span_us > max_gap_s * 1_000_000 and 0.0 < f < 1.0
        if gap:
            in_gap = True
            satellites = sky.view(t_us / 1e6, used=0, tracking=False)
            yield Epoch(
                time=t0 + timedelta(microseconds=t_us),
                lat=lat,
                lon=lon,
                alt_m=alt_m,
                speed_mps=speed,
                course_deg=course,
                odometer_m=cumulative[segment] + f * length_m,
                reported_lat=None,
                reported_lon=None,
                reported_alt_m=None,
                reported_speed_mps=None,
                reported_course_deg=None,
                mode=FixMode.NO_FIX,
                hdop=None,
                pdop=None,
                vdop=None,
                sats_used=0,
                satellites=satellites,
                outage=True,
                multipath=False,
                stop_id=None,
            )
            continue
        if in_gap:
            # A new solution after the gap: its error owes nothing to the old one.
            in_gap = False
            for process in (east, north, up):
                process.restart()
            e_z, n_z, u_z = east.value, north.value, up.value
        rep_lat, rep_lon = frame.to_geodetic(x + noise_m * e_z, y + noise_m * n_z)
        satellites = sky.view(t_us / 1e6, used=sats_wanted, tracking=True)
        yield Epoch(
            time=t0 + timedelta(microseconds=t_us),
            lat=lat,
            lon=lon,
            alt_m=alt_m,
            speed_mps=speed,
            course_deg=course,
            odometer_m=cumulative[segment] + f * length_m,
            reported_lat=rep_lat if noise_m > 0 else lat,
            reported_lon=rep_lon if noise_m > 0 else lon,
            reported_alt_m=alt_m + VDOP_PER_HDOP * noise_m * u_z,
            reported_speed_mps=speed,
            reported_course_deg=course if speed >= MIN_COURSE_SPEED_MPS else None,
            mode=FixMode.FIX_3D,
            hdop=hdop,
            pdop=pdop,
            vdop=vdop,
            sats_used=sum(1 for s in satellites if s.used),
            satellites=satellites,
            outage=False,
            multipath=False,
            stop_id=None,
        )


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What ``fleet-sim trace`` wrote."""

    points: int
    epochs: int
    no_fix_epochs: int
    duration_s: float
    distance_m: float
    nmea_bytes: int

    def line(self, out: Path, rate_hz: int) -> str:
        return (
            f"{self.points} positions, {self.duration_s / 60:.1f} min, "
            f"{self.distance_m / 1000:.2f} km "
            f"-> {self.epochs} epochs at {rate_hz} Hz ({self.no_fix_epochs} without fix in gaps), "
            f"{self.nmea_bytes} NMEA bytes -> {out}"
        )


def write_trace_nmea(
    csv_path: Path,
    out_path: Path,
    *,
    rate_hz: int,
    noise_m: float = 0.0,
    seed: int = 0,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    talker: Talker = "GP",
) -> TraceSummary:
    """Convert ``csv_path`` to an NMEA log at ``out_path``."""
    points = read_trace_csv(csv_path)
    epochs = no_fix = written = 0
    distance_m = 0.0
    with out_path.open("wb") as out:
        for epoch in trace_epochs(
            points, rate_hz=rate_hz, noise_m=noise_m, seed=seed, max_gap_s=max_gap_s, talker=talker
        ):
            data = epoch_bytes(epoch, talker)
            out.write(data)
            written += len(data)
            epochs += 1
            no_fix += not epoch.has_fix
            distance_m = epoch.odometer_m
    return TraceSummary(
        points=len(points),
        epochs=epochs,
        no_fix_epochs=no_fix,
        duration_s=(points[-1].time - points[0].time).total_seconds(),
        distance_m=distance_m,
        nmea_bytes=written,
    )
