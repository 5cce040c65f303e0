"""Ground truth beside every scenario, and its loader.

- ``truth.csv``: one row per epoch, ``time_utc,lat,lon,speed_mps,course_deg,
  reported_lat,reported_lon,hdop,sats_used,mode,outage,multipath,stop_id``. Times are
  ISO 8601 UTC with milliseconds (``2026-11-21T08:00:01.000Z``); ``mode`` is the
  :class:`FixMode` number (gpsd's: 1 no fix, 2 2D, 3 3D); flags are 0/1; empty fields
  are unknown (no reported position, no HDOP without a fix, no stop).
- ``stops.json``: the stops in visiting order, each with ``id``, ``type``, ``lat``,
  ``lon`` (the address), ``park_lat``, ``park_lon``, ``arrival``, ``departure`` (ISO
  8601 UTC, milliseconds) and ``dwell_s``.
- ``scenario.json``: the :class:`ScenarioConfig`, to regenerate the day exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.times import format_utc
from simulator.epoch import Epoch
from simulator.errors import ConfigError, TruthFileError
from simulator.scenario import ScenarioConfig
from simulator.stops import Stop, parse_stop_type

TRUTH_CSV = "truth.csv"
STOPS_JSON = "stops.json"
SCENARIO_JSON = "scenario.json"
TRUTH_COLUMNS = (
    "time_utc",
    "lat",
    "lon",
    "speed_mps",
    "course_deg",
    "reported_lat",
    "reported_lon",
    "hdop",
    "sats_used",
    "mode",
    "outage",
    "multipath",
    "stop_id",
)


@dataclass(frozen=True, slots=True)
class TruthRow:
    """One epoch of ``truth.csv``; field names match :class:`~simulator.epoch.Epoch`."""

    time: datetime
    lat: float
    lon: float
    speed_mps: float
    course_deg: float
    reported_lat: float | None
    reported_lon: float | None
    hdop: float | None
    sats_used: int
    mode: FixMode
    outage: bool
    multipath: bool
    stop_id: str | None


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Everything written beside a scenario, read back."""

    config: ScenarioConfig
    stops: tuple[Stop, ...]
    rows: tuple[TruthRow, ...]


def _opt(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


class TruthWriter:
    """Writes ``truth.csv`` row by row, so a day is never held in memory.

    Use as a context manager; :meth:`write` takes epochs in time order.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._writer: Any = None
        self.rows = 0

    def __enter__(self) -> TruthWriter:
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(TRUTH_COLUMNS)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, epoch: Epoch) -> None:
        if self._writer is None:
            raise RuntimeError("TruthWriter used outside its context")
        self._writer.writerow(
            (
                format_utc(epoch.time),
                f"{epoch.lat:.8f}",
                f"{epoch.lon:.8f}",
                f"{epoch.speed_mps:.3f}",
                f"{epoch.course_deg:.2f}",
                _opt(epoch.reported_lat, 8),
                _opt(epoch.reported_lon, 8),
                _opt(epoch.hdop, 2),
                epoch.sats_used,
                int(epoch.mode),
                int(epoch.outage),
                int(epoch.multipath),
                epoch.stop_id or "",
            )
        )
        self.rows += 1


def stop_to_json(stop: Stop) -> dict[str, Any]:
    """A ``stops.json`` entry."""
    return {
        "id": stop.id,
        "type": stop.type.value,
        "lat": round(stop.lat, 8),
        "lon": round(stop.lon, 8),
        "park_lat": round(stop.park_lat, 8),
        "park_lon": round(stop.park_lon, 8),
        "arrival": format_utc(stop.arrival),
        "departure": format_utc(stop.departure),
        "dwell_s": round(stop.dwell_s, 3),
    }


def write_stops_json(path: Path, stops: tuple[Stop, ...] | list[Stop]) -> None:
    path.write_text(json.dumps([stop_to_json(s) for s in stops], indent=2) + "\n", encoding="utf-8")


def write_scenario_json(path: Path, config: ScenarioConfig) -> None:
    path.write_text(json.dumps(config.to_json_dict(), indent=2) + "\n", encoding="utf-8")


def _parse_time(value: str) -> datetime:
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    return t.astimezone(UTC)


def read_truth_csv(path: Path) -> Iterator[TruthRow]:
    """The rows of a ``truth.csv``; :class:`TruthFileError` names the bad line."""
    try:
        f = path.open(encoding="utf-8", newline="")
    except OSError as err:
        raise TruthFileError(path, f"cannot read: {err}") from err
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != TRUTH_COLUMNS:
            raise TruthFileError(path, f"header must be {','.join(TRUTH_COLUMNS)}", line=1)
        for fields in reader:
            line = reader.line_num
            if not fields:
                continue
            if len(fields) != len(TRUTH_COLUMNS):
                raise TruthFileError(
                    path, f"{len(fields)} fields, expected {len(TRUTH_COLUMNS)}", line=line
                )
            try:
                yield TruthRow(
                    time=_parse_time(fields[0]),
                    lat=float(fields[1]),
                    lon=float(fields[2]),
                    speed_mps=float(fields[3]),
                    course_deg=float(fields[4]),
                    reported_lat=float(fields[5]) if fields[5] else None,
                    reported_lon=float(fields[6]) if fields[6] else None,
                    hdop=float(fields[7]) if fields[7] else None,
                    sats_used=int(fields[8]),
                    mode=FixMode(int(fields[9])),
                    outage=fields[10] == "1",
                    multipath=fields[11] == "1",
                    stop_id=fields[12] or None,
                )
            except ValueError as err:
                raise TruthFileError(path, str(err), line=line) from err


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TruthFileError(path, f"not valid JSON: {err.msg}", line=err.lineno) from err
    except OSError as err:
        raise TruthFileError(path, f"cannot read: {err}") from err


def read_stops_json(path: Path) -> tuple[Stop, ...]:
    """The stops of a ``stops.json``."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise TruthFileError(path, "expected a list of stops")
    stops = []
    for n, item in enumerate(data):
        try:
            stops.append(
                Stop(
                    id=str(item["id"]),
                    type=parse_stop_type(item["type"]),
                    lat=float(item["lat"]),
                    lon=float(item["lon"]),
                    park_lat=float(item["park_lat"]),
                    park_lon=float(item["park_lon"]),
                    arrival=_parse_time(str(item["arrival"])),
                    departure=_parse_time(str(item["departure"])),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise TruthFileError(path, f"stop {n}: {err!r}") from err
    return tuple(stops)


def read_scenario_json(path: Path) -> ScenarioConfig:
    """The config stored in a ``scenario.json``."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TruthFileError(path, "expected an object")
    try:
        return ScenarioConfig.from_json_dict(data)
    except ConfigError as err:
        raise TruthFileError(path, str(err)) from err


def load_truth(directory: Path) -> GroundTruth:
    """``scenario.json``, ``stops.json`` and ``truth.csv`` of a scenario directory."""
    return GroundTruth(
        config=read_scenario_json(directory / SCENARIO_JSON),
        stops=read_stops_json(directory / STOPS_JSON),
        rows=tuple(read_truth_csv(directory / TRUTH_CSV)),
    )
