"""Scan logs: the contract's line format, inside the dwells, true to their truth."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import biip
import pytest

from simulator.errors import ConfigError, ScanLogError
from simulator.labels import raw_bytes
from simulator.manifest import build_manifest
from simulator.scans import (
    SCAN_LOG,
    build_scan_log,
    read_scan_log,
    write_scan_log,
)
from simulator.scenario import Scenario, ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir

SCAN_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TRUTH_KEYS = {"kind", "stop_id", "parcel", "parcel_stop_id", "detail", "outcome"}


@cache
def _day(seed: int, n_stops: int) -> tuple[Scenario, dict[str, Any]]:
    scenario = generate(ScenarioConfig(seed=seed, n_stops=n_stops))
    return scenario, build_manifest(scenario, seed=seed)


def _decode(raw: str) -> str | None:
    """The canonical parcel code of a scanner's text, decoded independently.

    GS1 symbols (``]C1``, ``]d2``) with biip; Code 128 (``]C0``) and bare text as is.
    """
    if raw.startswith(("]C1", "]d2")):
        try:
            message = biip.parse(raw).gs1_message
        except biip.ParseError:
            return None
        if message is None:
            return None
        sscc = next((e.sscc for e in message.element_strings if e.ai.ai == "00"), None)
        return sscc.value if sscc is not None else None
    return raw.removeprefix("]C0")


def check_scan_line(line: dict[str, Any]) -> None:
    assert set(line) == {"time", "raw", "source", "truth"}
    assert SCAN_TIME.match(line["time"])
    assert isinstance(line["raw"], str)
    assert line["source"] == "serial"
    assert set(line["truth"]) == TRUTH_KEYS
    assert line["truth"]["kind"] in {"ok", "wrong_stop", "garbage", "duplicate", "reason"}


def _time(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(line["time"])


def test_every_parcel_is_scanned_once_at_its_stop_inside_the_dwell() -> None:
    scenario, manifest = _day(5, 40)
    lines = build_scan_log(scenario, manifest, seed=5)
    stops = {s.id: s for s in scenario.stops}
    owner = {p: s["id"] for s in manifest["stops"] for p in s["parcels"]}
    times = [_time(line) for line in lines]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
    ok: Counter[str] = Counter()
    first_scan: dict[str, datetime] = {}
    for line in lines:
        check_scan_line(line)
        truth = line["truth"]
        stop = stops[truth["stop_id"]]
        t = _time(line)
        assert stop.arrival <= t <= stop.departure - timedelta(seconds=1)
        first_scan.setdefault(stop.id, t)
        if truth["kind"] == "ok":
            ok[truth["parcel"]] += 1
            assert owner[truth["parcel"]] == stop.id == truth["parcel_stop_id"]
            assert _decode(line["raw"]) == truth["parcel"]
    assert ok == Counter(set(owner))  # every parcel exactly once
    for stop_id, t in first_scan.items():
        assert t - stops[stop_id].arrival >= timedelta(seconds=10)  # the walk from the cab
        assert t - stops[stop_id].arrival <= timedelta(seconds=40)


def test_mistakes_are_what_their_truth_says() -> None:
    scenario, manifest = _day(5, 40)
    lines = build_scan_log(
        scenario, manifest, seed=5, wrong_stop_rate=0.2, garbage_rate=0.2, duplicate_rate=0.2
    )
    order = [s["id"] for s in manifest["stops"]]
    owner = {p: s["id"] for s in manifest["stops"] for p in s["parcels"]}
    all_codes = set(owner)
    ok_time = {
        line["truth"]["parcel"]: _time(line) for line in lines if line["truth"]["kind"] == "ok"
    }
    kinds = Counter(line["truth"]["kind"] for line in lines)
    assert all(kinds[k] > 0 for k in ("ok", "wrong_stop", "garbage", "duplicate"))
    garbage_details = set()
    for n, line in enumerate(lines):
        truth = line["truth"]
        if truth["kind"] == "duplicate":
            before = lines[n - 1]
            assert before["truth"]["kind"] == "ok"
            assert before["raw"] == line["raw"]
            assert before["truth"]["parcel"] == truth["parcel"]
            assert _time(line) - _time(before) < timedelta(seconds=2)
        elif truth["kind"] == "wrong_stop":
            parcel = truth["parcel"]
            assert _decode(line["raw"]) == parcel
            assert owner[parcel] == truth["parcel_stop_id"] != truth["stop_id"]
            assert order.index(owner[parcel]) > order.index(truth["stop_id"])  # a later stop
            assert ok_time[parcel] > _time(line)  # scanned again at its own stop
        elif truth["kind"] == "garbage":
            assert truth["parcel"] is None
            assert truth["parcel_stop_id"] is None
            garbage_details.add(truth["detail"])
            assert _decode(line["raw"]) not in all_codes
        else:
            assert truth["detail"] is None
    assert garbage_details == {"truncated", "bad_check", "junk", "binary"}


def test_rates_hold_over_a_long_day() -> None:
    scenario, manifest = _day(8, 150)
    rates = {"wrong_stop": 0.08, "garbage": 0.06, "duplicate": 0.1}
    lines = build_scan_log(
        scenario,
        manifest,
        seed=8,
        wrong_stop_rate=rates["wrong_stop"],
        garbage_rate=rates["garbage"],
        duplicate_rate=rates["duplicate"],
    )
    kinds = Counter(line["truth"]["kind"] for line in lines)
    assert kinds["ok"] > 300
    for kind, rate in rates.items():
        assert 0.6 * rate <= kinds[kind] / kinds["ok"] <= 1.4 * rate, (kind, kinds)
    clean = build_scan_log(
        scenario,
        manifest,
        seed=8,
        wrong_stop_rate=0,
        garbage_rate=0,
        duplicate_rate=0,
        outcome_rate=0,
    )
    assert {line["truth"]["kind"] for line in clean} == {"ok"}
    assert len(clean) == kinds["ok"]


def test_deterministic_per_seed() -> None:
    scenario, manifest = _day(5, 40)
    first = build_scan_log(scenario, manifest, seed=5)
    assert build_scan_log(scenario, manifest, seed=5) == first
    assert build_scan_log(scenario, manifest, seed=6) != first


def test_stops_the_day_did_not_reach_get_no_scans() -> None:
    scenario, manifest = _day(5, 40)
    edited = {**manifest, "stops": [*manifest["stops"][:3], {"id": "S999", "parcels": ["X1"]}]}
    lines = build_scan_log(scenario, edited, seed=5, wrong_stop_rate=1.0)
    assert {line["truth"]["stop_id"] for line in lines} == {"S001", "S002", "S003"}
    assert "X1" not in {line["truth"]["parcel"] for line in lines}


@pytest.mark.parametrize(
    ("manifest", "rates", "message"),
    [
        ({"stops": []}, {"garbage_rate": 1.5}, "garbage_rate"),
        ({"stops": []}, {"duplicate_rate": -0.1}, "duplicate_rate"),
        ({}, {}, "no 'stops'"),
        ({"stops": [{"parcels": []}]}, {}, "no string 'id'"),
        ({"stops": [{"id": "S1", "parcels": [1]}]}, {}, "list of strings"),
    ],
)
def test_bad_input_is_a_config_error(
    manifest: dict[str, Any], rates: dict[str, float], message: str
) -> None:
    scenario, _ = _day(5, 40)
    with pytest.raises(ConfigError, match=message):
        build_scan_log(scenario, manifest, seed=1, **rates)


def test_the_log_round_trips_through_jsonl_bytes_included(tmp_path: Path) -> None:
    scenario, manifest = _day(5, 40)
    lines = build_scan_log(scenario, manifest, seed=5, garbage_rate=0.5)
    path = tmp_path / SCAN_LOG
    write_scan_log(path, lines)
    text = path.read_text(encoding="ascii")
    assert "\\u001d" in text  # GS travels as a JSON escape
    assert read_scan_log(path) == lines
    binary = [line for line in lines if line["truth"]["detail"] == "binary"]
    assert binary
    for line in binary:
        assert raw_bytes(line["raw"]) == line["raw"].encode("utf-8", "surrogateescape")


def test_read_scan_log_skips_comments_and_names_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "scans.jsonl"
    good = '{"time": "2026-11-21T09:14:03.250Z", "raw": "]C0JD1", "source": "serial"}'
    path.write_text(f"# a comment\n\n{good}\n", encoding="utf-8")
    assert read_scan_log(path) == [json.loads(good)]
    for bad, message in (
        ("{not json", "line 2: not valid JSON"),
        ('{"time": "2026-11-21T09:14:03", "raw": "x"}', "line 2: bad 'time'"),
        ('{"time": "2026-11-21T09:14:03Z"}', "line 2: expected an object"),
    ):
        path.write_text(f"{good}\n{bad}\n", encoding="utf-8")
        with pytest.raises(ScanLogError, match=message):
            read_scan_log(path)
    with pytest.raises(ScanLogError, match="cannot read"):
        read_scan_log(tmp_path / "missing.jsonl")


def test_the_scenario_dir_holds_the_scans(tmp_path: Path) -> None:
    scenario = generate(ScenarioConfig(seed=6, n_stops=3))
    summary = write_scenario_dir(scenario, tmp_path, duplicate_rate=1.0)
    lines = read_scan_log(tmp_path / SCAN_LOG)
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert lines == build_scan_log(scenario, manifest, seed=6, duplicate_rate=1.0)
    assert summary.scans == len(lines)
    assert summary.parcels == sum(len(s["parcels"]) for s in manifest["stops"])
    assert Counter(line["truth"]["kind"] for line in lines)["duplicate"] == summary.parcels
