"""The typed records of the contract: one encoder and one decoder per kind, and POD claims.

Every kind round-trips through its JSON at wire resolution, fits its JSON Schema inside
its envelope, and refuses what it cannot carry, on the way out (the van's bug) and on
the way in (a sender's): a missing or unknown field, a value of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract import schema, wirejson
from firmware_agent.contract.envelope import decode_envelope, frame_record
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.pod import GENESIS_PREV, PodClaims, PodFields
from firmware_agent.contract.records import (
    EVENT_TYPES,
    Arrival,
    Departure,
    Deviation,
    DeviationEnd,
    EtaUpdate,
    Halt,
    HaltEnd,
    JsonRecord,
    LateRisk,
    PodRecord,
    ScanRejected,
    StopPassed,
    WindowMiss,
    decode_event,
    encode_record,
)

T0 = datetime(2026, 11, 21, 9, 14, 2, 123456, tzinfo=UTC)
T1 = T0 + timedelta(seconds=31.5)

EXAMPLES: list[JsonRecord] = [
    Arrival(
        time=T0, stop_id="S001", detected_at=T1, lat=48.137212345, lon=11.57561234, visit=1,
        confirmed_by="dwell", route_id="R-1",
    ),
    Departure(
        time=T1, stop_id="S001", detected_at=T1, arrived_at=T0, dwell_s=31.46, visit=2,
        route_id="R-1",
    ),
    WindowMiss(
        time=T0, stop_id="S002", kind="late", by_s=612.04, window_start=T0 - timedelta(hours=1),
        window_end=T0 - timedelta(minutes=10), route_id="R-1",
    ),
    Halt(time=T0, detected_at=T1, lat=-33.8688, lon=151.2093),
    HaltEnd(time=T1, started_at=T0, duration_s=31.5),
    Deviation(time=T0, detected_at=T1, distance_m=260.26, lat=48.1, lon=11.5),
    DeviationEnd(time=T1, started_at=T0, duration_s=31.5, max_distance_m=301.04),
    ScanRejected(
        time=T0, reason="unreadable", raw="\\x00junk", source="hid", error="not_printable"
    ),
    ScanRejected(
        time=T0, reason="wrong_stop", raw="]C1001", source="serial", parcel="106141412345678908",
        stop_id="S004", at_stop_id="S002",
    ),
    ScanRejected(
        time=T0, reason="already_delivered", raw="x", source="serial", parcel="P1",
        stop_id="S001", pod_seq=7,
    ),
    EtaUpdate(
        time=T0, stop_id="S003", route_id="R-1", eta=T1, eta_baseline=T1 + timedelta(minutes=2),
        horizon_s=31.46, model="eta-20261121-ce893f5013", trigger="first",
    ),
    LateRisk(
        time=T0, stop_id="S003", route_id="R-1", eta=T1, eta_baseline=T1,
        window_end=T0 + timedelta(seconds=10), late_by_s=21.5, model="baseline",
    ),
    StopPassed(
        time=T0, stop_id="S002", route_id="R-1", planned_index=1, reason="drive_past",
        closest_m=12.34, eta=T1, eta_baseline=T1, stops_before=3, model="baseline",
    ),
    StopPassed(
        time=T0, stop_id="S005", planned_index=4, reason="out_of_order", model="eta-1",
    ),
    PodRecord(
        time=T0, stop_id="S001", parcel="106141412345678908", seq=12, verdict="no_fix",
        distance_m=None, jws="aaa.bbb.ccc",
    ),
]  # fmt: skip


def test_every_event_kind_has_a_class_and_every_class_a_kind_of_the_schema() -> None:
    enum = schema.schema("events")["$defs"]["record"]["properties"]["type"]["enum"]
    assert set(EVENT_TYPES) == set(enum)
    assert {type(r).type for r in EXAMPLES} == {*enum, "pod"}
    assert all(cls.stream == "events" for cls in EVENT_TYPES.values())
    assert PodRecord.stream == "pod"


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_each_record_round_trips_and_fits_its_envelope_schema(record: JsonRecord) -> None:
    doc = record.to_json()
    assert next(iter(doc)) == "type"
    assert doc["type"] == record.type
    decoded = type(record).from_json(doc)
    assert decoded.to_json() == doc
    # Made at wire resolution: the van's record is the one ingest decodes.
    assert decoded == record
    if not isinstance(record, PodRecord):
        assert decode_event(doc) == decoded
    # Its stored bytes are its JSON; framed, they fit the schema of its stream.
    body = encode_record(record)  # type: ignore[arg-type]
    assert wirejson.loads(body, "record") == doc
    payload = frame_record(record.stream, record.stream, 5, body, historical=False, sent_at=T1)
    env = decode_envelope(payload, stream=record.stream)
    schema.validate(record.stream, env.to_json())
    assert env.typed() == decoded


def test_values_cross_at_wire_resolution() -> None:
    arrival = EXAMPLES[0].to_json()
    assert arrival["time"] == "2026-11-21T09:14:02.123Z"
    assert (arrival["lat"], arrival["lon"]) == (48.1372123, 11.5756123)
    assert EXAMPLES[1].to_json()["dwell_s"] == 31.5
    decoded = Arrival.from_json(arrival)
    assert decoded.time == T0.replace(microsecond=123000)
    # A record holds its values so from the start; a time in another zone becomes UTC.
    assert EXAMPLES[0].time == decoded.time
    assert (EXAMPLES[0].lat, EXAMPLES[1].dwell_s) == (48.1372123, 31.5)  # type: ignore[attr-defined]
    paris = Halt(time=T0.astimezone(ZoneInfo("Europe/Paris")), detected_at=T1, lat=1.0, lon=2.0)
    assert paris.time.tzinfo is UTC
    assert paris == Halt(time=T0, detected_at=T1, lat=1.0, lon=2.0)
    # Optional fields the van has no value for are left out, not null ...
    unreadable = EXAMPLES[7].to_json()
    assert set(unreadable) == {"type", "time", "reason", "raw", "source", "error"}
    # ... except where the contract says null (a POD without a fix has no distance).
    assert EXAMPLES[-1].to_json()["distance_m"] is None
    assert "route_id" not in Halt.from_json(EXAMPLES[3].to_json()).to_json()


BAD_EVENTS: list[tuple[dict[str, Any], str]] = [
    ({"type": "arrival"}, "time is required"),
    ({**EXAMPLES[0].to_json(), "visit": True}, "visit must be an integer"),
    ({**EXAMPLES[0].to_json(), "visit": 1.0}, "visit must be an integer"),
    ({**EXAMPLES[0].to_json(), "lat": "48.1"}, "lat must be a number"),
    ({**EXAMPLES[0].to_json(), "lat": True}, "lat must be a number"),
    ({**EXAMPLES[0].to_json(), "confirmed_by": "magic"}, "not one of"),
    ({**EXAMPLES[0].to_json(), "stop_id": 7}, "stop_id must be a string"),
    ({**EXAMPLES[0].to_json(), "time": "2026-11-21T09:14:02"}, "ISO 8601 UTC"),
    ({**EXAMPLES[0].to_json(), "extra": 1}, "unknown keys"),
    ({**EXAMPLES[0].to_json(), "type": "teleport"}, "unknown type"),
    ({"time": "2026-11-21T09:14:02Z"}, "unknown type"),
    ({**EXAMPLES[0].to_json(), "detected_at": None}, "detected_at is required"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_EVENTS)
def test_decoders_name_what_is_wrong(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_event(doc)


def test_a_record_of_another_kind_is_not_this_kind() -> None:
    with pytest.raises(CodecError, match="type is 'halt'"):
        Arrival.from_json(EXAMPLES[3].to_json())


def test_encoders_refuse_what_the_contract_cannot_carry() -> None:
    with pytest.raises(CodecError, match="UTC-aware"):
        Halt(time=T0.replace(tzinfo=None), detected_at=T1, lat=1.0, lon=2.0).to_json()
    with pytest.raises(CodecError, match="not finite"):
        Halt(time=T0, detected_at=T1, lat=math.nan, lon=2.0).to_json()
    with pytest.raises(CodecError, match="not one of"):
        WindowMiss(
            time=T0, stop_id="S", kind="never", by_s=1.0,  # type: ignore[arg-type]
            window_start=T0, window_end=T1,
        ).to_json()  # fmt: skip
    with pytest.raises(CodecError, match=r"cannot encode|lone surrogate"):
        encode_record(ScanRejected(time=T0, reason="unreadable", raw="\ud800", source="hid"))


@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(), max_size=8))
def test_any_object_decodes_to_a_record_or_a_codec_error(doc: dict[str, Any]) -> None:
    for kind in (None, "arrival", "scan_rejected", "eta"):
        candidate = doc if kind is None else {**doc, "type": kind}
        try:
            record = decode_event(candidate)
        except CodecError:
            continue
        assert record.to_json()["type"] == kind


# --- POD claims --------------------------------------------------------------------------------

FIELDS = PodFields(
    parcel="106141412345678908",
    raw="]C100106141412345678908",
    stop_id="S001",
    route_id="R-1",
    time=T0,
    scan_time=T1,
    lat=48.137212345,
    lon=11.5756,
    hacc_m=3.46,
    verdict="inside",
    distance_m=0.0,
    source="serial",
)


def claims(**changes: Any) -> PodClaims:
    base = PodClaims.of(FIELDS, device_id="van-7", seq=1, prev=GENESIS_PREV)
    return PodClaims.from_json({**base.to_json(), **changes})


def test_claims_are_every_documented_claim_and_read_back() -> None:
    c = PodClaims.of(FIELDS, device_id="van-7", seq=1, prev=GENESIS_PREV)
    doc = c.to_json()
    assert set(doc) == {
        "v", "device_id", "seq", "prev", "parcel", "raw", "stop_id", "route_id", "time",
        "scan_time", "lat", "lon", "hacc_m", "verdict", "distance_m", "source", "outcome",
    }  # fmt: skip
    assert (doc["v"], doc["lat"], doc["hacc_m"]) == (1, 48.1372123, 3.5)
    again = PodClaims.from_json(doc)
    assert again.to_json() == doc
    # A POD without a fix says so with nulls.
    no_fix = dataclasses.replace(
        FIELDS, time=None, lat=None, lon=None, hacc_m=None, distance_m=None, verdict="no_fix"
    )
    bare = PodClaims.of(no_fix, device_id="van-7", seq=2, prev="a" * 64)
    assert PodClaims.from_json(bare.to_json()).to_json() == bare.to_json()
    assert bare.to_json()["time"] is None


def test_claims_checks_name_every_fault() -> None:
    base = PodClaims.of(FIELDS, device_id="van-7", seq=1, prev=GENESIS_PREV).to_json()
    with pytest.raises(CodecError, match="v is 2") as info:
        PodClaims.from_json({**base, "v": 2, "seq": 0, "prev": "X"})
    assert "seq is not an integer" in str(info.value)
    assert "prev is not 64 lowercase hex digits" in str(info.value)
    for name, value, message in [
        ("seq", True, "seq is not an integer"),
        ("seq", 2**63, "seq is not an integer"),
        ("parcel", 7, "parcel must be a string"),
        ("verdict", "maybe", "not one of"),
        ("source", "radio", "not one of"),
        ("scan_time", None, "scan_time is required"),
        ("device_id", None, "device_id is required"),
        ("lat", "north", "lat must be a number"),
    ]:
        with pytest.raises(CodecError, match=message):
            PodClaims.from_json({**base, name: value})
    # Claims it does not know are ignored, as RFC 7519 asks of JWT claims.
    assert claims(note="hello") == claims()


def test_the_pod_record_mirrors_the_claims() -> None:
    c = claims()
    record = c.record("aaa.bbb.ccc")
    assert record == PodRecord(
        time=c.scan_time, stop_id="S001", parcel=c.parcel, seq=1, verdict="inside",
        distance_m=0.0, jws="aaa.bbb.ccc",
    )  # fmt: skip
    with pytest.raises(CodecError, match="stop_id is null"):
        claims(stop_id=None).record("a.b.c")
