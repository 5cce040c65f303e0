"""Routes from GeoJSON and GPX: loading, validation, stop projection, driving them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.contract.geo import LocalFrame, destination, haversine_m
from simulator.errors import RouteFileError, SimulatorError
from simulator.route import Polyline, build_route, douglas_peucker, load_route
from simulator.scenario import ScenarioConfig, generate
from simulator.stops import DWELL_RANGE_S, StopType

ORIGIN = (53.40, -2.98)


def _l_shaped_route() -> list[tuple[float, float]]:
    """(lat, lon): 600 m east, then 400 m north, a point every 50 m."""
    points = [ORIGIN]
    for _ in range(12):
        points.append(destination(*points[-1], 90.0, 50.0))
    for _ in range(8):
        points.append(destination(*points[-1], 0.0, 50.0))
    return points


def _beside(along_index: int, offset_m: float) -> tuple[float, float]:
    """A door ``offset_m`` north of the ``along_index``-th point of the eastward leg."""
    return destination(*_l_shaped_route()[along_index], 0.0, offset_m)


def _geojson(stops: list[dict[str, Any]], **line_properties: Any) -> dict[str, Any]:
    line = {
        "type": "Feature",
        "properties": line_properties,
        "geometry": {
            "type": "LineString",
            "coordinates": [[lon, lat] for lat, lon in _l_shaped_route()],
        },
    }
    return {"type": "FeatureCollection", "features": [line, *stops]}


def _stop(lat_lon: tuple[float, float], **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": properties,
        "geometry": {"type": "Point", "coordinates": [lat_lon[1], lat_lon[0]]},
    }


def _write(tmp_path: Path, name: str, content: str | dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_geojson_route_with_stops_projected_onto_the_line(tmp_path: Path) -> None:
    doc = _geojson(
        [
            _stop(_beside(3, 15.0), id="A1", type="locker"),
            _stop(_beside(9, -12.0), id="B2", type="apartment"),
            _stop(destination(*_l_shaped_route()[16], 90.0, 20.0), id="C3"),
        ],
        speed_limit_mps=8.3,
    )
    route = load_route(_write(tmp_path, "route.geojson", doc))
    assert [s.site.id for s in route.stops] == ["A1", "B2", "C3"]
    assert [s.site.type for s in route.stops] == [
        StopType.LOCKER,
        StopType.APARTMENT,
        StopType.HOUSE,
    ]
    assert set(route.speed_limits_mps) == {8.3}
    # Straight runs collapse to their ends; the corner stays.
    assert len(route.points) == 3
    expected_along = [150.0, 450.0, 800.0]
    for stop, along, offset in zip(route.stops, expected_along, [15.0, 12.0, 20.0], strict=True):
        assert stop.along_m == pytest.approx(along, abs=1.0)
        door_to_park = haversine_m(
            stop.site.lat, stop.site.lon, stop.site.park_lat, stop.site.park_lon
        )
        assert door_to_park == pytest.approx(offset, abs=0.5)


def test_bare_linestring_and_single_feature(tmp_path: Path) -> None:
    coordinates = [[lon, lat] for lat, lon in _l_shaped_route()]
    bare = load_route(
        _write(tmp_path, "bare.json", {"type": "LineString", "coordinates": coordinates})
    )
    feature = load_route(
        _write(
            tmp_path,
            "feature.geojson",
            {
                "type": "Feature",
                "properties": None,
                "geometry": {"type": "LineString", "coordinates": coordinates},
            },
        )
    )
    assert bare.points == feature.points
    assert bare.stops == ()
    assert bare.length_m == pytest.approx(1000.0, rel=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "FeatureCollection", "features": []}, "exactly one LineString"),
        ({"type": "Polygon", "coordinates": []}, "got 'Polygon'"),
        ({"type": "LineString", "coordinates": [[2.0, 91.0], [2.0, 50.0]]}, "out of range"),
        ({"type": "LineString", "coordinates": [[2.0, 50.0]]}, "two distinct points"),
        ({"type": "LineString", "coordinates": [[2.0, "50"], [2.0, 50.1]]}, "bad position"),
    ],
)
def test_bad_geojson_is_a_route_file_error(
    tmp_path: Path, content: str | dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, "bad.geojson", content)
    with pytest.raises(RouteFileError, match=message) as caught:
        load_route(path)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, SimulatorError)
    assert str(path) in str(caught.value)


def test_geojson_stop_problems_are_named(tmp_path: Path) -> None:
    far = _geojson([_stop(_beside(3, 500.0), id="FAR")])
    with pytest.raises(RouteFileError, match=r"stop FAR is \d+ m from the route"):
        load_route(_write(tmp_path, "far.geojson", far))
    typo = _geojson([_stop(_beside(3, 10.0), type="castle")])
    with pytest.raises(RouteFileError, match="unknown stop type 'castle'"):
        load_route(_write(tmp_path, "typo.geojson", typo))
    twice = _geojson([_stop(_beside(3, 10.0), id="X"), _stop(_beside(5, 10.0), id="X")])
    with pytest.raises(RouteFileError, match="not unique"):
        load_route(_write(tmp_path, "twice.geojson", twice))


def _gpx(track: bool = True) -> str:
    points = "".join(
        f'<{"trkpt" if track else "rtept"} lat="{lat}" lon="{lon}"/>'
        for lat, lon in _l_shaped_route()
    )
    body = f"<trk><trkseg>{points}</trkseg></trk>" if track else f"<rte>{points}</rte>"
    a, b = _beside(4, 18.0), destination(*_l_shaped_route()[14], 270.0, 10.0)
    waypoints = (
        f'<wpt lat="{a[0]}" lon="{a[1]}"><name>W1</name><type>business</type></wpt>'
        f'<wpt lat="{b[0]}" lon="{b[1]}"><name>W2</name></wpt>'
    )
    return f'<?xml version="1.0"?><gpx version="1.1" creator="test">{waypoints}{body}</gpx>'


@pytest.mark.parametrize("track", [True, False], ids=["trk", "rte"])
def test_gpx_track_or_route_with_waypoints_as_stops(tmp_path: Path, track: bool) -> None:
    route = load_route(_write(tmp_path, "day.gpx", _gpx(track)))
    assert [(s.site.id, s.site.type) for s in route.stops] == [
        ("W1", StopType.BUSINESS),
        ("W2", StopType.HOUSE),
    ]
    assert route.stops[0].along_m == pytest.approx(200.0, abs=1.0)
    assert route.stops[1].along_m == pytest.approx(700.0, abs=1.0)


def test_bad_gpx_is_a_route_file_error(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError, match="not valid GPX"):
        load_route(_write(tmp_path, "broken.gpx", "<gpx><trk>"))
    with pytest.raises(RouteFileError, match="no track or route points"):
        load_route(_write(tmp_path, "empty.gpx", '<gpx version="1.1" creator="t"></gpx>'))
    with pytest.raises(RouteFileError, match="unknown route format"):
        load_route(_write(tmp_path, "route.kml", "<kml/>"))
    with pytest.raises(RouteFileError, match="cannot read"):
        load_route(tmp_path / "missing.gpx")


def test_douglas_peucker_keeps_corners_and_drops_jitter() -> None:
    points = [(float(x), 0.3 * (-1) ** x) for x in range(0, 105, 5)] + [
        (100.0, float(y)) for y in range(10, 60, 10)
    ]
    kept = douglas_peucker(points, 2.0)
    assert kept[0] == 0
    assert kept[-1] == len(points) - 1
    assert len(kept) == 3


def test_polyline_projection_respects_the_order_of_travel() -> None:
    # Out and back along the same street: a point on it projects onto the later pass
    # when asked to look after the first.
    line = Polyline([(0.0, 0.0), (100.0, 0.0), (0.0, 1.0)])
    along_first, _ = line.project(30.0, 0.1)
    along_second, distance = line.project(30.0, 0.1, from_m=100.0)
    assert along_first == pytest.approx(30.0, abs=0.1)
    assert along_second == pytest.approx(170.0, abs=0.1)
    assert distance < 1.0


def test_a_scenario_drives_a_loaded_route_and_parks_at_its_stops(tmp_path: Path) -> None:
    doc = _geojson(
        [_stop(_beside(3, 15.0), id="A1", type="locker"), _stop(_beside(10, 10.0), id="B2")]
    )
    path = _write(tmp_path, "route.geojson", doc)
    scenario = generate(ScenarioConfig(seed=3, route_file=path))
    assert [s.id for s in scenario.stops] == ["A1", "B2"]
    assert scenario.trajectory.length_m == pytest.approx(1000.0, rel=0.01)
    epochs = list(scenario.epochs())
    for stop in scenario.stops:
        low, high = DWELL_RANGE_S[stop.type]
        assert low <= stop.dwell_s <= high
        during = [e for e in epochs if stop.arrival <= e.time <= stop.departure]
        assert during
        assert all(e.speed_mps == 0.0 and e.stop_id == stop.id for e in during)
        assert all(haversine_m(e.lat, e.lon, stop.park_lat, stop.park_lon) < 1.0 for e in during)
    # The day ends at the route's end.
    end = LocalFrame(*ORIGIN).to_local(epochs[-1].lat, epochs[-1].lon)
    assert end == pytest.approx(LocalFrame(*ORIGIN).to_local(*_l_shaped_route()[-1]), abs=0.5)


def test_a_route_without_stops_gets_generated_ones(tmp_path: Path) -> None:
    coordinates = [[lon, lat] for lat, lon in _l_shaped_route()]
    path = _write(tmp_path, "plain.geojson", {"type": "LineString", "coordinates": coordinates})
    scenario = generate(ScenarioConfig(seed=3, n_stops=4, route_file=path))
    assert [s.id for s in scenario.stops] == ["S001", "S002", "S003", "S004"]
    for stop in scenario.stops:
        assert (
            8.0 - 0.01
            <= haversine_m(stop.lat, stop.lon, stop.park_lat, stop.park_lon)
            <= 25.0 + 0.01
        )


def test_build_route_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="one speed limit per segment"):
        build_route([ORIGIN, _l_shaped_route()[1]], speed_limits_mps=[8.3, 8.3])
