"""No downlink bricks a van (issue 13, findings 1-3), in pure code: the geofence grids'
work is bounded by the geometry and a fixed budget, configs and manifests that would
cost without end are refused naming the key, another van's manifest is refused, a
revision is a number every JSON parser reads exactly, and the documented maximum
manifest fits the shipped broker. The real service's side is tests/test_e2e_downlinks.py.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import tracemalloc
from pathlib import Path
from typing import Any, cast

import pytest

from firmware_agent.contract.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_PAYLOAD_BYTES,
    MAX_ROUTE_VERTICES,
    MAX_STOPS,
    ManifestError,
    encode_manifest_payload,
    loads_manifest,
    parse_manifest,
)
from firmware_agent.errors import ConfigError, RemoteConfigError
from firmware_agent.geofence import GeofenceConfig, GeofenceEngine, build_index
from firmware_agent.geofence.index import (
    FENCE_ENTRIES,
    MAX_GRID_ENTRIES,
    RouteGrid,
    Shape,
    StopGrid,
    segment_cells,
)
from firmware_agent.manifest_store import ManifestRefusedError, prepare_manifest
from firmware_agent.remote_config import MAX_REVISION, parse_config
from tests.bigday import day_doc
from tests.vanday import PLANE, T0, drive, latlon, route_line, stop

ROOT = Path(__file__).resolve().parent.parent
FLEET_CONF = ROOT / "docs" / "mosquitto" / "fleet.conf"
SCHEMAS = ROOT / "docs" / "schemas"
DEVICE = "van-0001"

Point = tuple[float, float]


def manifest_doc(stops: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"route_id": "R1", "device_id": DEVICE, "date": "2026-11-21", "stops": stops, **extra}


# -- finding 1: configs whose values cost without end are refused, naming the key ------


@pytest.mark.parametrize(
    ("section", "doc_value", "where", "expected"),
    [
        ({"index_cell_m": 0.001}, 0.001, "geofence.index_cell_m", "within [10, 10000]"),
        ({"border_m": 1e12}, 1e12, "geofence.border_m", "> 0 and <= 1000"),
        ({"deviation_m": 1e9}, 1e9, "geofence.deviation_m", "> 0 and <= 5000"),
        ({"confirm_min_fixes": 10**9}, 10**9, "geofence.confirm_min_fixes", "within [1, 3600]"),
    ],
)
def test_a_geofence_setting_out_of_its_range_is_refused_naming_the_key(
    section: dict[str, Any], doc_value: float, where: str, expected: str
) -> None:
    payload = json.dumps({"v": 1, "revision": 7, "geofence": section}).encode()
    with pytest.raises(RemoteConfigError) as caught:
        parse_config(payload)
    assert caught.value.where == where
    assert expected in caught.value.problem
    # The agent's own settings refuse the same values.
    key = where.split(".")[1]
    with pytest.raises(ConfigError, match=f"geofence {key} must be"):
        GeofenceConfig(**cast("dict[str, Any]", {key: doc_value}))


def test_the_62_byte_config_of_the_report_is_refused() -> None:
    payload = b'{"v":1,"revision":2,"geofence":{"index_cell_m":0.001}}'
    with pytest.raises(RemoteConfigError, match=r"geofence\.index_cell_m: must be within"):
        parse_config(payload)


def test_settings_at_their_limits_are_taken() -> None:
    config = parse_config(
        b'{"v":1,"revision":2,"geofence":{"index_cell_m":10,"border_m":1000,"deviation_m":5000,'
        b'"deviation_clear_m":5000}}'
    )
    assert config is not None
    assert dict(config.geofence) == {
        "index_cell_m": 10.0,
        "border_m": 1000.0,
        "deviation_m": 5000.0,
        "deviation_clear_m": 5000.0,
    }


# -- finding 3: a revision every JSON parser reads exactly ---------------------------------


@pytest.mark.parametrize("revision", [10**30, 2**53, 2**63])
def test_a_revision_past_javascripts_safe_integers_is_refused(revision: int) -> None:
    payload = f'{{"v":1,"revision":{revision}}}'.encode()
    with pytest.raises(RemoteConfigError) as caught:
        parse_config(payload)
    assert caught.value.where == "revision"
    assert "within [1, 9007199254740991]" in caught.value.problem


def test_the_largest_safe_revision_is_taken() -> None:
    config = parse_config(f'{{"v":1,"revision":{2**53 - 1}}}'.encode())
    assert config is not None
    assert config.revision == MAX_REVISION == 9007199254740991


def test_the_schema_bounds_the_revision_and_the_geofence_settings() -> None:
    schema = json.loads((SCHEMAS / "config.schema.json").read_text("utf-8"))
    assert schema["properties"]["revision"]["maximum"] == MAX_REVISION
    cell = schema["properties"]["geofence"]["properties"]["index_cell_m"]
    assert (cell["minimum"], cell["maximum"]) == (10, 10_000)


# -- finding 3: another van's manifest ----------------------------------------------------


def test_a_manifest_for_another_device_is_refused() -> None:
    payload = json.dumps(manifest_doc([stop("S1", 0.0)]) | {"device_id": "van-9999"}).encode()
    with pytest.raises(ManifestRefusedError) as caught:
        prepare_manifest(payload, device_id=DEVICE, geofence=GeofenceConfig())
    assert caught.value.route_id == "R1"
    assert caught.value.reason == "device_id: is 'van-9999', not this van's 'van-0001'"


# -- finding 1: geometry --------------------------------------------------------------------


def test_a_manifest_spanning_the_planet_is_refused() -> None:
    # The report's 257-byte manifest: one stop, a route from one corner of the map to
    # the other.
    doc = manifest_doc(
        [stop("S1", 0.0)],
        route={"type": "LineString", "coordinates": [[-180, -90], [180, 90]]},
    )
    with pytest.raises(ManifestError) as caught:
        loads_manifest(json.dumps(doc).encode())
    assert caught.value.where == "route.coordinates[0]"
    assert "must lie within 500 km of it" in caught.value.problem
    # A stop far away, likewise.
    with pytest.raises(ManifestError, match=r"^stops\[1\]: is 1,112 km"):
        parse_manifest(manifest_doc([stop("S1", 0.0), {**stop("S2", 0.0), "lat": 58.0}]))


def test_a_100_km_segment_costs_the_cells_it_crosses_not_its_box() -> None:
    # An ordinary planner's output: one stop, a straight 100 km diagonal route. The
    # bounding box of that segment holds 0.9 million 75 m cells (300 MB, 1 s).
    (alat, alon), (blat, blon) = latlon(0.0, 0.0), latlon(70_711.0, 70_711.0)
    doc = manifest_doc(
        [stop("S1", 0.0)],
        route={"type": "LineString", "coordinates": [[alon, alat], [blon, blat]]},
    )
    manifest = parse_manifest(doc)
    tracemalloc.start()
    try:
        engine = GeofenceEngine(manifest)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 * 1024 * 1024
    route = engine.index.route
    assert route is not None
    # ~1,900 columns of 75 m along the major axis, 3-4 rows each.
    assert route.entries <= route.entries_bound <= 9_000
    # And it is still the route: on it, beside it, beyond the deviation threshold.
    for x, y, expected in [(35_000, 35_000, 0.0), (35_000, 35_070, 49.5)]:
        got = route.distance_within(*PLANE.xy(*latlon(x, y)))
        assert got == pytest.approx(expected, abs=0.5), (x, y)
    assert route.distance_within(*PLANE.xy(*latlon(35_000, 35_200))) is None


def _segment_point_m(px: float, py: float, a: Point, b: Point) -> float:
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)


def _meets(a: Point, b: Point, box: tuple[float, float, float, float]) -> bool:
    """Whether segment a-b meets the box (Liang-Barsky clipping)."""
    (ax, ay), (bx, by) = a, b
    x0, y0, x1, y1 = box
    t0, t1 = 0.0, 1.0
    for p, q in (
        (-(bx - ax), ax - x0),
        (bx - ax, x1 - ax),
        (-(by - ay), ay - y0),
        (by - ay, y1 - ay),
    ):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            t0 = max(t0, q / p)
        else:
            t1 = min(t1, q / p)
    return t0 <= t1


def _cell_distance_m(a: Point, b: Point, ix: int, iy: int, cell_m: float) -> float:
    """Exact distance between segment a-b and cell (ix, iy)."""
    box = (ix * cell_m, iy * cell_m, (ix + 1) * cell_m, (iy + 1) * cell_m)
    if _meets(a, b, box):
        return 0.0
    x0, y0, x1, y1 = box
    corners = min(_segment_point_m(x, y, a, b) for x in (x0, x1) for y in (y0, y1))
    ends = min(math.hypot(max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)) for x, y in (a, b))
    return min(corners, ends)


def test_a_segment_lists_exactly_the_cells_near_it() -> None:
    """Every cell within reach of the segment is listed, and none farther than
    reach * sqrt(2): checked cell by cell around random segments, steep, flat, short,
    zero-length, with cells larger and smaller than the reach."""
    rng = random.Random(13)
    cases: list[tuple[Point, Point, float, float]] = [
        ((0.0, 0.0), (0.0, 0.0), 75.0, 75.0),
        ((5.0, 5.0), (5.0, 900.0), 75.0, 75.0),
        ((0.0, 0.0), (-3000.0, 2999.0), 75.0, 75.0),
        ((37.5, 37.5), (1537.5, 37.5), 75.0, 75.0),  # along cell borders
    ]
    for _ in range(40):
        reach_m, cell_m, span = rng.choice(
            [(75.0, 75.0, 3000), (75.0, 300.0, 3000), (20.0, 7.0, 300)]
        )
        a = (rng.uniform(-span, span), rng.uniform(-span, span))
        b = (a[0] + rng.uniform(-span, span), a[1] + rng.uniform(-span, span))
        cases.append((a, b, reach_m, cell_m))
    for a, b, reach_m, cell_m in cases:
        listed = list(segment_cells(a, b, reach_m=reach_m, cell_m=cell_m))
        assert len(listed) == len(set(listed))
        margin = reach_m * 1.5
        xs = range(
            math.floor((min(a[0], b[0]) - margin) / cell_m),
            math.floor((max(a[0], b[0]) + margin) / cell_m) + 1,
        )
        ys = range(
            math.floor((min(a[1], b[1]) - margin) / cell_m),
            math.floor((max(a[1], b[1]) + margin) / cell_m) + 1,
        )
        near = {
            (ix, iy)
            for ix in xs
            for iy in ys
            if _cell_distance_m(a, b, ix, iy, cell_m) < reach_m - 1e-9
        }
        assert near <= set(listed), (a, b, reach_m, cell_m, sorted(near - set(listed))[:5])
        far = [
            key
            for key in listed
            if _cell_distance_m(a, b, *key, cell_m) > reach_m * math.sqrt(2) + 1e-6
        ]
        assert not far, (a, b, reach_m, cell_m, far[:5])


def test_route_distances_are_exact_whatever_the_cell_the_budget_forces() -> None:
    rng = random.Random(7)
    points = [(0.0, 0.0)]
    for _ in range(300):
        x, y = points[-1]
        points.append((x + rng.uniform(-400, 400), y + rng.uniform(-400, 400)))
    fine = RouteGrid(points, reach_m=75.0)
    coarse = RouteGrid(points, reach_m=75.0, max_entries=200)
    assert fine.cell_m == 75.0
    assert coarse.cell_m > fine.cell_m
    assert coarse.entries <= coarse.entries_bound <= max(200, 4 * 300)
    for _ in range(2000):
        x, y = rng.uniform(-6000, 6000), rng.uniform(-6000, 6000)
        d = fine.distance(x, y)
        expected = d if d <= 75.0 else None
        assert fine.distance_within(x, y) == pytest.approx(expected)
        assert coarse.distance_within(x, y) == pytest.approx(expected)


def test_a_millimetre_cell_lists_a_handful_of_cells_per_fence() -> None:
    # What the report's config asked for: 250 m cells became 1 mm cells, and one 30 m
    # fence listed 2.4 GB of them. The grid's own budget holds without the config check.
    shapes = [Shape(0.0, 0.0, 30.0, None), Shape(500.0, 0.0, 30.0, None)]
    for cell_m, reach_m in [(0.001, 20.0), (250.0, 1e12)]:
        grid = StopGrid(shapes, cell_m=cell_m, reach_m=reach_m)
        assert grid.entries <= grid.entries_bound <= FENCE_ENTRIES * len(shapes)
        assert set(grid.near(10.0, 0.0)) >= {0}
        assert set(grid.near(540.0, 0.0)) >= {1}


def test_a_stop_grid_over_budget_coarsens_and_still_finds_every_fence() -> None:
    rng = random.Random(5)
    shapes = [
        Shape(rng.uniform(-5000, 5000), rng.uniform(-5000, 5000), rng.uniform(10, 300), None)
        for _ in range(500)
    ]
    grid = StopGrid(shapes, cell_m=10.0, reach_m=20.0, max_entries=4000)
    assert grid.cell_m > 10.0
    assert grid.entries <= grid.entries_bound <= 4000
    for _ in range(400):
        x, y = rng.uniform(-5500, 5500), rng.uniform(-5500, 5500)
        expected = {i for i, s in enumerate(shapes) if s.outside_m(x, y) <= 20.0}
        assert expected <= set(grid.near(x, y))


def test_the_budget_is_a_fixed_cap() -> None:
    assert MAX_GRID_ENTRIES == 250_000
    # A zigzag of the longest segments a manifest allows (within 500 km of the first
    # stop): 20 of them would list ~1.5 million 75 m cells; the grid lists at most the cap.
    points = [(0.0, 0.0) if i % 2 == 0 else (450_000.0, 450_000.0 - i) for i in range(21)]
    grid = RouteGrid(points, reach_m=75.0)
    assert grid.entries <= grid.entries_bound <= MAX_GRID_ENTRIES
    assert grid.distance_within(225_000.0, 225_000.0) is not None


def test_an_index_built_beforehand_is_what_the_engine_runs() -> None:
    manifest = parse_manifest(
        manifest_doc([stop("S1", 0.0), stop("S2", 1000.0)], route=route_line([-500.0, 0.0, 1500.0]))
    )
    config = GeofenceConfig(border_m=30.0)
    index = build_index(manifest, config)
    engine = GeofenceEngine(manifest, config, index=index)
    assert engine.index is index
    # Built for other settings: not used, built again for these.
    other = GeofenceEngine(manifest, GeofenceConfig(), index=index)
    assert other.index is not index
    assert other.index.border_m == GeofenceConfig().border_m
    # Same events either way.
    fixes = drive([(36, 10.0), (4, 1.0), (60, 0.0), (40, 8.0)], x0=-364, t0=T0)
    plain = GeofenceEngine(manifest, config)
    assert [e for f in fixes for e in engine.update(f)] == [
        e for f in fixes for e in plain.update(f)
    ]


# -- finding 2: the documented maximum is deliverable ------------------------------------


def _broker_limit_bytes() -> int:
    match = re.search(r"^message_size_limit (\d+)$", FLEET_CONF.read_text(), re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def test_the_schema_states_the_limits_the_van_holds() -> None:
    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text("utf-8"))
    assert schema["properties"]["stops"]["maxItems"] == MAX_STOPS == 10_000
    route = schema["properties"]["route"]["properties"]["coordinates"]
    assert route["maxItems"] == MAX_ROUTE_VERTICES
    assert "1,000,000 bytes" in schema["description"]
    assert _broker_limit_bytes() >= MAX_MANIFEST_PAYLOAD_BYTES


@pytest.mark.slow
def test_the_documented_maximum_manifest_fits_the_shipped_broker() -> None:
    """10,000 stops (the schema's maximum) with a 50,000-vertex route: ~3.1 MB of JSON,
    ~630 KB gzipped, under the payload limit and the shipped broker's message size
    limit with room to spare; the van reads it back as it was."""
    doc = day_doc(MAX_STOPS, MAX_ROUTE_VERTICES)
    manifest = parse_manifest(doc)
    payload = encode_manifest_payload(manifest)
    assert payload[:2] == b"\x1f\x8b"  # the JSON alone is over the limit: gzipped
    assert len(payload) < 0.7 * MAX_MANIFEST_PAYLOAD_BYTES
    prepared = prepare_manifest(payload, device_id=DEVICE, geofence=GeofenceConfig())
    assert prepared.manifest == manifest
    assert json.loads(prepared.data) == doc
    assert prepared.index.entries_bound <= 2 * MAX_GRID_ENTRIES


def test_a_2000_stop_manifest_goes_as_plain_json_under_the_limit() -> None:
    manifest = parse_manifest(day_doc(2000, 5000))
    payload = encode_manifest_payload(manifest)
    assert payload[:1] == b"{"  # plain JSON: readable by agents older than gzip
    assert 256 * 1024 < len(payload) < MAX_MANIFEST_PAYLOAD_BYTES
    assert loads_manifest(payload) == manifest
    assert loads_manifest(encode_manifest_payload(manifest, compress=True)) == manifest


def test_a_payload_over_the_limit_is_refused_before_it_is_sent() -> None:
    manifest = parse_manifest(day_doc(300, 2))
    with pytest.raises(ManifestError) as caught:
        encode_manifest_payload(manifest, compress=True, limit=1000)
    assert re.fullmatch(
        r"the payload is [\d,]+ bytes gzipped \([\d,]+ as JSON\), over the 1,000-byte limit "
        r"of a manifest payload \(300 stops, 2 route vertices\): send fewer stops or a "
        r"simpler route",
        str(caught.value),
    ), caught.value
    with pytest.raises(ManifestError, match=r"is [\d,]+ bytes of JSON, over the 1,000-byte"):
        encode_manifest_payload(manifest, compress=False, limit=1000)


def test_a_gzip_payload_reads_as_its_json() -> None:
    doc = manifest_doc([stop("S1", 0.0)])
    data = json.dumps(doc).encode()
    assert loads_manifest(gzip.compress(data)) == loads_manifest(data)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (gzip.compress(b" " * (MAX_MANIFEST_BYTES + 1), mtime=0), "inflates to more than"),
        (gzip.compress(b'{"route_id": "R1"}', mtime=0)[:-4], "truncated"),
        (gzip.compress(b"{}", mtime=0) + b"{}", "data after the end"),
        (b"\x1f\x8b\x08\x00garbage", "not valid gzip"),
    ],
    # Fixed gzip times and ids: pytest-xdist's workers must collect the same ids.
    ids=["too-big", "truncated", "trailing-data", "not-gzip"],
)
def test_a_bad_gzip_payload_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        loads_manifest(payload)


def test_switching_to_a_prepared_manifest_builds_nothing_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What grows with a manifest (geofence grids, the ETA route plan) is built by
    prepare_manifest, off the event loop; the switch itself only carries state over."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    from firmware_agent.contract.eta_features import RoutePlan  # noqa: PLC0415
    from firmware_agent.eta.predictor import EtaPredictor  # noqa: PLC0415
    from firmware_agent.geofence import engine  # noqa: PLC0415
    from firmware_agent.pod.chain import ChainState, PodChain  # noqa: PLC0415
    from firmware_agent.van import VanPipeline  # noqa: PLC0415

    first = parse_manifest(manifest_doc([stop("S1", 0.0)], route=route_line([-500.0, 500.0])))
    van = VanPipeline(
        first,
        pods=PodChain(DEVICE, Ed25519PrivateKey.generate(), ChainState()),
        eta=EtaPredictor.baseline("test"),
    )
    doc = manifest_doc([stop("S1", 0.0), stop("S2", 900.0)], route=route_line([-500.0, 1500.0]))
    prepared = prepare_manifest(
        json.dumps(doc).encode(), device_id=DEVICE, geofence=van.config.geofence, eta=True
    )

    def on_the_loop(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("built on the event loop")

    monkeypatch.setattr(engine, "build_index", on_the_loop)
    monkeypatch.setattr(RoutePlan, "from_manifest", on_the_loop)
    van.load_manifest(prepared.manifest, prepared.index, prepared.plan)
    assert van.engine.index is prepared.index
    assert van.eta_tracker is not None
    assert van.eta_tracker.plan is prepared.plan
