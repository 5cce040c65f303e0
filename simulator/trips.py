"""Real trips as replayable days: a recorded position CSV, its halts, and a manifest.

:func:`write_trip_dir` reads a ``timestamp_utc,lat,lon`` CSV (see
:mod:`simulator.trace`), finds where the vehicle really halted (:func:`find_dwells`)
and writes a directory the agent's offline replay and the benchmarks use like a
generated day:

- ``nmea.log``: the trip as a receiver would send it (:func:`~simulator.trace.trace_epochs`);
- ``manifest.json``: one stop per halt, at the halt's centroid, ``radius_m`` 30, type
  ``other``, a single carrier parcel code each (docs/manifest.schema.json);
- ``truth_stops.json``: per stop, ``stop_id``, ``arrival`` (first sample of the halt),
  ``departure`` (last sample), ``lat``/``lon`` (centroid), ``n_samples``, ``dwell_s``;
- ``trip.json``: the source CSV's name, its sampling interval statistics, the settings
  and the halt rule, and the limits of the data.

The halt rule (stay-point detection, as in Li et al. 2008, with a diameter rather than
a radius): a halt is a run of two or more consecutive samples, every two of which lie
within :data:`DWELL_SPREAD_M` (15 m) of each other, spanning at least
:data:`MIN_DWELL_S` (20 s) from its first sample to its last. Runs are grown greedily
from each sample and do not overlap. On 1 Hz data that is 21 or more samples standing
within 15 m; on sparse data (a bus reporting every 20-35 s) two samples 20 s or more
apart at the same place already make a halt. A halt is any standstill of that length,
a traffic light included, not only a bus stop or a delivery.

Limits of the data, written into ``trip.json`` too: the truth is only as precise as
the sampling (the vehicle may have halted up to one interval before the first sample
of a halt and left up to one interval after its last); and the NMEA log interpolates
linearly between samples, so on sparse data the vehicle seems to creep slowly between
two samples rather than stop and start.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from firmware_agent.contract.geo import LocalFrame
from firmware_agent.contract.times import format_utc
from simulator.epoch import Talker
from simulator.errors import ConfigError
from simulator.labels import random_carrier_code
from simulator.manifest import (
    DEFAULT_DEVICE_ID,
    MANIFEST_JSON,
    default_route_id,
    route_linestring,
    write_manifest,
)
from simulator.nmea_writer import epoch_bytes
from simulator.rng import stream as random_stream
from simulator.scenario_dir import NMEA_LOG
from simulator.stops import stop_id
from simulator.trace import DEFAULT_MAX_GAP_S, TracePoint, read_trace_csv, trace_epochs

DWELL_SPREAD_M = 15.0
MIN_DWELL_S = 20.0
TRIP_STOP_RADIUS_M = 30
TRUTH_STOPS_JSON = "truth_stops.json"
TRIP_JSON = "trip.json"
_TRIP_FORMAT = "fleet-sim-trip/1"


@dataclass(frozen=True, slots=True)
class Dwell:
    """A halt found in a trace: samples ``first``..``last`` (inclusive indices).

    ``arrival``/``departure`` are the first and last sample's times (UTC-aware);
    ``lat``/``lon`` the centroid of the halt's samples.
    """

    first: int
    last: int
    arrival: datetime
    departure: datetime
    lat: float
    lon: float

    @property
    def n_samples(self) -> int:
        return self.last - self.first + 1

    @property
    def dwell_s(self) -> float:
        return (self.departure - self.arrival).total_seconds()


def find_dwells(
    points: Sequence[TracePoint],
    *,
    max_spread_m: float = DWELL_SPREAD_M,
    min_duration_s: float = MIN_DWELL_S,
) -> list[Dwell]:
    """The halts of a time-sorted trace, in time order (the rule: see the module doc)."""
    if max_spread_m <= 0 or min_duration_s <= 0:
        raise ConfigError("max_spread_m and min_duration_s must be positive")
    if not points:
        return []
    frame = LocalFrame(points[0].lat, points[0].lon)
    xy = [frame.to_local(p.lat, p.lon) for p in points]
    dwells: list[Dwell] = []
    i = 0
    while i < len(points):
        last = i
        while last + 1 < len(points) and all(
            math.dist(xy[last + 1], xy[k]) <= max_spread_m for k in range(i, last + 1)
        ):
            last += 1
        span_s = (points[last].time - points[i].time).total_seconds()
        if last > i and span_s >= min_duration_s:
            n = last - i + 1
            east = sum(x for x, _ in xy[i : last + 1]) / n
            north = sum(y for _, y in xy[i : last + 1]) / n
            lat, lon = frame.to_geodetic(east, north)
            dwells.append(Dwell(i, last, points[i].time, points[last].time, lat, lon))
            i = last + 1
        else:
            i += 1
    return dwells


def sampling_stats(points: Sequence[TracePoint]) -> dict[str, float]:
    """Seconds between consecutive samples: min, median, mean, 90th percentile, max."""
    gaps = [(b.time - a.time).total_seconds() for a, b in itertools.pairwise(points)]
    if not gaps:
        return {}
    ordered = sorted(gaps)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {
        "min": round(ordered[0], 3),
        "median": round(statistics.median(ordered), 3),
        "mean": round(statistics.fmean(ordered), 3),
        "p90": round(p90, 3),
        "max": round(ordered[-1], 3),
    }


def trip_stop_order(
    dwells: Sequence[Dwell], passes: Sequence[TracePoint] = ()
) -> list[Dwell | TracePoint]:
    """The stops of a trip's manifest in the order the vehicle reached them: its halts
    (at their first sample) and the places it drove past (``passes``, at their time)."""
    timed: list[tuple[datetime, int, Dwell | TracePoint]] = [
        (d.arrival, n, d) for n, d in enumerate(dwells)
    ]
    timed += [(p.time, len(dwells) + n, p) for n, p in enumerate(passes)]
    return [place for _, _, place in sorted(timed, key=lambda item: (item[0], item[1]))]


def trip_manifest(
    points: Sequence[TracePoint],
    dwells: Sequence[Dwell],
    *,
    device_id: str = DEFAULT_DEVICE_ID,
    seed: int = 0,
    radius_m: int = TRIP_STOP_RADIUS_M,
    passes: Sequence[TracePoint] = (),
) -> dict[str, Any]:
    """The manifest of a real trip: a stop per halt (see the module doc) and the path.

    ``passes`` adds stops the vehicle drove past without halting (an evaluation's
    drive-pasts), each at its place in the order reached (:func:`trip_stop_order`);
    ``radius_m`` is every stop's geofence radius."""
    if radius_m < 1:
        raise ConfigError(f"radius_m must be >= 1, got {radius_m}")
    rng = random_stream("trip-parcels", seed)
    day = points[0].time.date()
    frame = LocalFrame(points[0].lat, points[0].lon)
    stops: list[dict[str, Any]] = []
    used: set[str] = set()
    for n, place in enumerate(trip_stop_order(dwells, passes)):
        code = random_carrier_code(rng)
        while code in used:
            code = random_carrier_code(rng)
        used.add(code)
        stops.append(
            {
                "id": stop_id(n),
                "lat": round(place.lat, 7),
                "lon": round(place.lon, 7),
                "radius_m": radius_m,
                "type": "other",
                "parcels": [code],
            }
        )
    return {
        "route_id": default_route_id(day, device_id),
        "device_id": device_id,
        "date": day.isoformat(),
        "stops": stops,
        "route": route_linestring(frame, [frame.to_local(p.lat, p.lon) for p in points]),
    }


@dataclass(frozen=True, slots=True)
class TripSummary:
    """What ``fleet-sim trip`` wrote."""

    out_dir: Path
    points: int
    stops: int
    epochs: int
    no_fix_epochs: int
    duration_s: float
    median_interval_s: float

    def line(self) -> str:
        return (
            f"{self.points} positions (median interval {self.median_interval_s:g} s), "
            f"{self.duration_s / 60:.1f} min, {self.stops} halts -> {self.epochs} epochs "
            f"({self.no_fix_epochs} without fix in gaps) -> {self.out_dir}"
        )


def write_trip_dir(
    csv_path: Path,
    out_dir: Path,
    *,
    rate_hz: int = 1,
    noise_m: float = 0.0,
    seed: int = 0,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    talker: Talker = "GP",
    device_id: str = DEFAULT_DEVICE_ID,
) -> TripSummary:
    """Turn the trace at ``csv_path`` into a replayable day in ``out_dir`` (module doc).

    Raises :class:`~simulator.errors.TraceFileError` for a bad CSV and
    :class:`~simulator.errors.ConfigError` for bad settings; nothing is written then.
    """
    points = read_trace_csv(csv_path)
    dwells = find_dwells(points)
    manifest = trip_manifest(points, dwells, device_id=device_id, seed=seed)
    epochs_iter = trace_epochs(
        points, rate_hz=rate_hz, noise_m=noise_m, seed=seed, max_gap_s=max_gap_s, talker=talker
    )
    # The first epoch is made before anything is written: bad settings raise there.
    first = next(epochs_iter)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = no_fix = 0
    with (out_dir / NMEA_LOG).open("wb") as log:
        for epoch in itertools.chain((first,), epochs_iter):
            log.write(epoch_bytes(epoch, talker))
            epochs += 1
            no_fix += not epoch.has_fix
    write_manifest(out_dir / MANIFEST_JSON, manifest)
    truth = [
        {
            "stop_id": stop["id"],
            "arrival": format_utc(dwell.arrival),
            "departure": format_utc(dwell.departure),
            "lat": stop["lat"],
            "lon": stop["lon"],
            "n_samples": dwell.n_samples,
            "dwell_s": round(dwell.dwell_s, 3),
        }
        for stop, dwell in zip(manifest["stops"], dwells, strict=True)
    ]
    (out_dir / TRUTH_STOPS_JSON).write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    intervals = sampling_stats(points)
    duration_s = (points[-1].time - points[0].time).total_seconds()
    info = {
        "format": _TRIP_FORMAT,
        "source": csv_path.name,
        "points": len(points),
        "start": format_utc(points[0].time),
        "end": format_utc(points[-1].time),
        "duration_s": round(duration_s, 3),
        "sampling_interval_s": intervals,
        "rate_hz": rate_hz,
        "noise_m": noise_m,
        "seed": seed,
        "max_gap_s": max_gap_s,
        "talker": talker,
        "device_id": device_id,
        "epochs": epochs,
        "no_fix_epochs": no_fix,
        "stops": len(dwells),
        "dwell_rule": {
            "max_spread_m": DWELL_SPREAD_M,
            "min_duration_s": MIN_DWELL_S,
            "text": (
                "a halt is a run of two or more consecutive samples, every two within "
                f"{DWELL_SPREAD_M:g} m of each other, spanning at least {MIN_DWELL_S:g} s "
                "from its first sample to its last; runs are grown greedily and do not overlap"
            ),
        },
        "notes": [
            "arrival and departure truth are only as precise as the sampling interval "
            f"(median {intervals.get('median', 0):g} s): the vehicle may have halted up to "
            "one interval before a halt's first sample and left up to one interval after "
            "its last",
            "the NMEA log interpolates linearly between samples, so on sparse data the "
            "vehicle seems to creep slowly from one sample to the next instead of stopping "
            "and starting: a limit of the data, not of the vehicle",
            "a halt is any standstill of that length (traffic lights included), not only a "
            "scheduled stop",
        ],
    }
    (out_dir / TRIP_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return TripSummary(
        out_dir=out_dir,
        points=len(points),
        stops=len(dwells),
        epochs=epochs,
        no_fix_epochs=no_fix,
        duration_s=duration_s,
        median_interval_s=intervals.get("median", 0.0),
    )
