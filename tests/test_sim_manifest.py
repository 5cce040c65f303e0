"""Manifests for generated days: valid by docs/manifest.schema.json, and true to the day."""

from __future__ import annotations

import itertools
import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import biip
import jsonschema
import pytest

from firmware_agent.contract.geo import LocalFrame, haversine_m
from simulator.manifest import (
    DEFAULT_RADIUS_M,
    PARK_MARGIN_M,
    build_manifest,
    route_linestring,
)
from simulator.scenario import Scenario, ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir
from simulator.stops import StopType

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
STOP_TYPES = {"house", "apartment", "business", "locker", "other"}
WINDOW_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:(00|30):00Z$")
ISO_DATE = re.compile(r"^\d{4}-\d\d-\d\d$")


@cache
def _schema_validator() -> jsonschema.protocols.Validator | None:
    if not SCHEMA.exists():
        return None
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def check_manifest(manifest: Any) -> None:
    """Structural checks of the contract, and docs/manifest.schema.json where it exists."""
    validator = _schema_validator()
    if validator is not None:
        validator.validate(manifest)
    assert isinstance(manifest, dict)
    for key in ("route_id", "device_id", "date"):
        assert isinstance(manifest[key], str)
        assert manifest[key]
    assert ISO_DATE.match(manifest["date"])
    date.fromisoformat(manifest["date"])
    stops = manifest["stops"]
    assert isinstance(stops, list)
    ids = [s["id"] for s in stops]
    assert all(isinstance(i, str) for i in ids)
    assert len(set(ids)) == len(ids)
    for stop in stops:
        assert isinstance(stop["lat"], float | int)
        assert isinstance(stop["lon"], float | int)
        assert -90 <= stop["lat"] <= 90
        assert -180 <= stop["lon"] <= 180
        if "polygon" in stop:
            assert len(stop["polygon"]) >= 3
        else:
            assert isinstance(stop["radius_m"], int | float)
            assert stop["radius_m"] > 0
        assert stop["type"] in STOP_TYPES
        assert isinstance(stop["parcels"], list)
        assert all(isinstance(p, str) and p for p in stop["parcels"])
        assert ("window_start" in stop) == ("window_end" in stop)
        if "window_start" in stop:
            start = datetime.fromisoformat(stop["window_start"])
            end = datetime.fromisoformat(stop["window_end"])
            assert start.utcoffset() == timedelta(0)
            assert end.utcoffset() == timedelta(0)
            assert start < end
    route = manifest.get("route")
    if route is not None:
        assert route["type"] == "LineString"
        coordinates = route["coordinates"]
        assert len(coordinates) >= 2
        for lon, lat in coordinates:
            assert -180 <= lon <= 180
            assert -90 <= lat <= 90
    json.dumps(manifest)  # JSON-ready as it is


@cache
def _day(seed: int, n_stops: int) -> Scenario:
    return generate(ScenarioConfig(seed=seed, n_stops=n_stops))


def _all_parcels(manifest: dict[str, Any]) -> list[str]:
    return [p for stop in manifest["stops"] for p in stop["parcels"]]


def test_a_manifest_follows_the_contract_and_the_day() -> None:
    scenario = _day(4, 12)
    manifest = build_manifest(scenario, seed=4)
    check_manifest(manifest)
    assert manifest["device_id"] == "van-0001"
    assert manifest["route_id"] == "R-20261121-van-0001"
    assert manifest["date"] == "2026-11-21"
    # Planned order is the order the van serves them; positions are the doors.
    assert [s["id"] for s in manifest["stops"]] == [s.id for s in scenario.stops]
    for entry, stop in zip(manifest["stops"], scenario.stops, strict=True):
        assert entry["type"] == stop.type.value
        assert haversine_m(entry["lat"], entry["lon"], stop.lat, stop.lon) < 0.05
        park_m = haversine_m(stop.lat, stop.lon, stop.park_lat, stop.park_lon)
        assert entry["radius_m"] == max(
            DEFAULT_RADIUS_M[stop.type], math.ceil(park_m + PARK_MARGIN_M)
        )
        # The parked van is well inside its geofence.
        assert haversine_m(entry["lat"], entry["lon"], stop.park_lat, stop.park_lon) <= (
            entry["radius_m"] - PARK_MARGIN_M + 0.1
        )


def test_custom_ids_and_the_local_service_day() -> None:
    scenario = generate(
        ScenarioConfig(
            seed=2,
            n_stops=2,
            start=datetime(2026, 11, 21, 23, 30, tzinfo=UTC),
            utc_offset_h=1.0,
        )
    )
    manifest = build_manifest(scenario, device_id="van-0042", seed=2)
    assert manifest["date"] == "2026-11-22"  # 00:30 local
    assert manifest["route_id"] == "R-20261122-van-0042"
    assert build_manifest(scenario, route_id="R-custom", seed=2)["route_id"] == "R-custom"


def test_parcels_are_unique_valid_and_mixed_over_a_long_day() -> None:
    scenario = _day(11, 150)
    manifest = build_manifest(scenario, seed=11)
    check_manifest(manifest)
    parcels = _all_parcels(manifest)
    assert len(parcels) == len(set(parcels))
    for stop in manifest["stops"]:
        most = 8 if stop["type"] in ("apartment", "business") else 4
        assert 1 <= len(stop["parcels"]) <= most
    ssccs = [p for p in parcels if p.isdigit()]
    others = [p for p in parcels if not p.isdigit()]
    assert 0.6 <= len(ssccs) / len(parcels) <= 0.8
    assert any(len(s["parcels"]) > 4 for s in manifest["stops"])
    for code in ssccs:
        assert len(code) == 18
        result = biip.parse(code)  # independent check digit and prefix validation
        assert result.sscc is not None, result.sscc_error
        assert result.sscc.value == code
    for code in others:
        assert re.fullmatch(r"JD\d{16}|1Z[0-9A-Z]{16}", code), code


def test_windows_are_utc_half_hours_mostly_kept_and_sometimes_missed() -> None:
    scenario = _day(11, 150)
    manifest = build_manifest(scenario, seed=11)
    arrivals = {s.id: s.arrival for s in scenario.stops}
    windowed = [s for s in manifest["stops"] if "window_start" in s]
    assert 0.55 <= len(windowed) / len(manifest["stops"]) <= 0.65
    missed = 0
    for stop in windowed:
        assert WINDOW_TIME.match(stop["window_start"])
        assert WINDOW_TIME.match(stop["window_end"])
        start = datetime.fromisoformat(stop["window_start"])
        end = datetime.fromisoformat(stop["window_end"])
        assert end - start in (timedelta(hours=1), timedelta(hours=1.5), timedelta(hours=2))
        arrival = arrivals[stop["id"]]
        if not start <= arrival <= end:
            missed += 1
            # A miss is clear, not a matter of rounding.
            assert min(abs(arrival - start), abs(arrival - end)) >= timedelta(minutes=5)
        # No window closes before the van has left the depot.
        assert end > scenario.start
    assert 0.05 <= missed / len(windowed) <= 0.15


def test_short_days_still_have_a_missed_window() -> None:
    scenario = _day(3, 10)
    manifest = build_manifest(scenario, seed=3)
    arrivals = {s.id: s.arrival for s in scenario.stops}
    windowed = [s for s in manifest["stops"] if "window_start" in s]
    assert len(windowed) == 6
    missed = [
        s
        for s in windowed
        if not (
            datetime.fromisoformat(s["window_start"])
            <= arrivals[s["id"]]
            <= datetime.fromisoformat(s["window_end"])
        )
    ]
    assert len(missed) == 1


def _distance_to_polyline_m(frame: LocalFrame, lat: float, lon: float, line: list[Any]) -> float:
    px, py = frame.to_local(lat, lon)
    best = math.inf
    xy = [frame.to_local(la, lo) for lo, la in line]
    for (ax, ay), (bx, by) in itertools.pairwise(xy):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        f = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
        best = min(best, math.hypot(px - ax - f * dx, py - ay - f * dy))
    return best


def test_the_route_follows_the_van_and_stays_small() -> None:
    scenario = _day(11, 150)  # a full day: about nine hours of driving
    assert scenario.duration_s > 8 * 3600
    manifest = build_manifest(scenario, seed=11)
    coordinates = manifest["route"]["coordinates"]
    assert len(coordinates) < 5000
    assert len(coordinates) < len(scenario.trajectory.path)
    frame = scenario.frame
    # Every parking point lies on the simplified route (Douglas-Peucker at 3 m).
    for stop in scenario.stops:
        assert _distance_to_polyline_m(frame, stop.park_lat, stop.park_lon, coordinates) <= 3.01
    # GeoJSON order: longitude first (Munich: lon ~11.5, lat ~48.1).
    assert all(11 < lon < 12 and 48 < lat < 49 for lon, lat in coordinates)


def test_a_dense_path_is_capped() -> None:
    frame = LocalFrame(48.1, 11.5)
    # A winding road sampled every metre: Douglas-Peucker at 3 m keeps a few dozen
    # vertices; a cap below that makes the tolerance grow until it fits.
    road = [(float(i), 40.0 * math.sin(i / 30.0)) for i in range(3000)]
    full = route_linestring(frame, road)
    assert 30 < len(full["coordinates"]) < 300
    capped = route_linestring(frame, road, max_vertices=20)
    assert 2 <= len(capped["coordinates"]) <= 20
    assert capped["coordinates"][0] == full["coordinates"][0]
    assert capped["coordinates"][-1] == full["coordinates"][-1]
    assert len(route_linestring(frame, [(0.0, 0.0)])["coordinates"]) == 2


def test_deterministic_per_seed() -> None:
    scenario = _day(4, 12)
    first = build_manifest(scenario, seed=4)
    assert build_manifest(scenario, seed=4) == first
    other = build_manifest(scenario, seed=5)
    assert _all_parcels(other) != _all_parcels(first)
    assert other["route"] == first["route"]  # the drive is the scenario's, not the seed's


def test_the_scenario_dir_holds_the_manifest(tmp_path: Path) -> None:
    scenario = generate(ScenarioConfig(seed=6, n_stops=2, max_duration_s=900))
    write_scenario_dir(scenario, tmp_path, device_id="van-0007")
    stored = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    check_manifest(stored)
    assert stored == build_manifest(scenario, device_id="van-0007", seed=6)
    # A day cut short lists only the stops the van served.
    assert [s["id"] for s in stored["stops"]] == [s.id for s in scenario.stops]


@pytest.mark.parametrize("stop_type", list(StopType))
def test_every_stop_type_has_a_default_radius(stop_type: StopType) -> None:
    assert 10 <= DEFAULT_RADIUS_M[stop_type] <= 100
    assert PARK_MARGIN_M > 0
