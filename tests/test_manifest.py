"""The manifest contract: validation, the JSON Schema in docs/, storage on disk."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract.manifest import ManifestError, loads_manifest, parse_manifest
from firmware_agent.manifest_store import ManifestStore

SCHEMA = json.loads((Path(__file__).parents[1] / "docs/manifest.schema.json").read_text())
EXAMPLE: dict[str, Any] = SCHEMA["examples"][0]


def test_schema_is_valid_and_its_example_parses() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(EXAMPLE, SCHEMA)
    m = parse_manifest(EXAMPLE)
    assert m.route_id == "R-20261121-van-0007"
    assert m.device_id == "van-0007"
    assert [s.id for s in m.stops] == ["S001", "S002"]
    s1, s2 = m.stops
    assert s1.parcels == ("106141412345678908", "JD014600006281234567")
    assert s1.window_start is not None
    assert s1.window_start.isoformat() == "2026-11-21T09:00:00+00:00"
    assert s2.polygon is not None
    assert len(s2.polygon) == 4
    assert 10 < s2.radius_m < 25  # the polygon's bounding circle
    assert m.route == ((48.1370, 11.5750), (48.1380, 11.5770))  # GeoJSON [lon, lat] swapped
    assert m.parcel_index()["JD014600006281234567"] is s1


def test_extra_keys_are_kept_and_unknown_types_read_as_other() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["depot"] = {"name": "North"}
    doc["stops"][0]["address"] = "Marienplatz 1"
    doc["stops"][0]["type"] = "pharmacy"
    m = parse_manifest(doc)
    assert m.raw["depot"] == {"name": "North"}
    assert m.stops[0].extra == {"address": "Marienplatz 1"}
    assert m.stops[0].type == "other"


def test_sscc_in_any_form_is_one_parcel_code() -> None:
    doc = copy.deepcopy(EXAMPLE)
    doc["stops"][0]["parcels"] = ["(00)106141412345678908"]
    assert parse_manifest(doc).stops[0].parcels == ("106141412345678908",)
    doc["stops"][1]["parcels"] = ["00106141412345678908"]
    with pytest.raises(ManifestError, match=r"stops\[1\]\.parcels: parcel '106141412345678908'"):
        parse_manifest(doc)


def _broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    target: Any = doc
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()

BROKEN = [
    ("route_id", _DELETE, "route_id"),
    ("date", "21/11/2026", "date"),
    ("stops", {"S1": {}}, "stops"),
    ("stops.0.lat", 91.0, r"stops\[0\]\.lat"),
    ("stops.0.lat", "48.1", r"stops\[0\]\.lat"),
    ("stops.0.lon", True, r"stops\[0\]\.lon"),
    ("stops.0.radius_m", -5, r"stops\[0\]\.radius_m"),
    ("stops.0.radius_m", _DELETE, r"stops\[0\]\.radius_m"),
    ("stops.0.parcels", "JD01", r"stops\[0\]\.parcels"),
    ("stops.0.window_end", _DELETE, r"stops\[0\]\.window_start"),
    ("stops.0.window_end", "2026-11-21T08:00:00Z", r"stops\[0\]\.window_end"),
    ("stops.0.window_start", "2026-11-21T09:00:00+01:00", r"stops\[0\]\.window_start"),
    ("stops.0.window_start", "2026-11-21T09:00:00", r"stops\[0\]\.window_start"),
    ("stops.1.id", "S001", r"stops\[1\]\.id"),
    ("stops.1.polygon", [[48.1, 11.5], [48.1, 11.5], [48.1, 11.5]], r"stops\[1\]\.polygon"),
    ("route", {"type": "Point", "coordinates": [11.5, 48.1]}, "route"),
    ("route.coordinates", [[11.5, 148.1], [11.5, 48.1]], r"route\.coordinates\[0\]\[1\]"),
]


@pytest.mark.parametrize(("path", "value", "where"), BROKEN)
def test_malformed_manifest_names_the_field(path: str, value: Any, where: str) -> None:
    with pytest.raises(ManifestError, match=f"^{where}"):
        parse_manifest(_broken(path, value))


# JSON Schema cannot express unique ids, window order or a degenerate polygon: those
# checks are parse_manifest's alone.
SCHEMA_VISIBLE = [
    case
    for case in BROKEN
    if case[2] not in {r"stops\[1\]\.id", r"stops\[0\]\.window_end", r"stops\[1\]\.polygon"}
]


@pytest.mark.parametrize(("path", "value", "where"), SCHEMA_VISIBLE)
def test_schema_rejects_what_the_agent_rejects(path: str, value: Any, where: str) -> None:
    doc = _broken(path, value)
    checker = jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert not checker.is_valid(doc)


def test_loads_rejects_non_json_and_oversized() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        loads_manifest(b"\xff\xfe{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        loads_manifest(b"[" * 100_000)
    with pytest.raises(ManifestError, match="must be a JSON object"):
        loads_manifest(b"[]")


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    path=st.sampled_from(
        [
            "route_id",
            "date",
            "stops",
            "stops.0.lat",
            "stops.0.radius_m",
            "stops.0.parcels",
            "stops.0.window_start",
            "stops.1.polygon",
            "stops.0",
            "route",
            "route.coordinates",
        ]
    ),
    value=json_values,
)
def test_tampered_manifest_only_ever_raises_manifest_error(path: str, value: Any) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(_broken(path, value))


def test_store_replaces_atomically_and_keeps_the_old_one_on_refusal(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "state" / "manifest.json")
    assert store.load() is None
    good = json.dumps(EXAMPLE).encode()
    assert store.replace(good).route_id == "R-20261121-van-0007"
    with pytest.raises(ManifestError):
        store.replace(b'{"route_id": "x"}')
    loaded = store.load()
    assert loaded is not None
    assert loaded.route_id == "R-20261121-van-0007"
    assert [p.name for p in store.path.parent.iterdir()] == ["manifest.json"]
