"""The normalized stream's encoding (pure): grouping, order, chunking, the contract."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cloud_ingest import fleetstream
from cloud_ingest.store.base import Pod, Position, StopEvent
from firmware_agent.contract import schema
from firmware_agent.contract.errors import SchemaError
from firmware_agent.contract.records import Arrival, PodRecord, TelemetryPoint

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
KINDS = {"position": "fleetstream-position", "event": "fleetstream-event", "pod": "fleetstream-pod"}


def position(device_id: str, seq: int) -> Position:
    point = TelemetryPoint(
        time=T0 + timedelta(seconds=seq), lat=48.1, lon=11.5, alt_m=519.4, speed_mps=4.25,
        course_deg=90.5, mode=3, quality=1, hdop=1.1, sats_used=9,
    )  # fmt: skip
    return Position(device_id, seq, seq % 2 == 0, point)


def event(device_id: str, seq: int) -> StopEvent:
    record = Arrival(
        time=T0 + timedelta(minutes=1), stop_id="S001", detected_at=T0 + timedelta(seconds=90),
        lat=48.1, lon=11.5, visit=1, confirmed_by="dwell",
    )  # fmt: skip
    return StopEvent(device_id, seq, False, record)


def pod(device_id: str, seq: int, chain: str = "ok") -> Pod:
    jws = "eyJhbGciOiJFZERTQSJ9." + "eyJ2IjoxfQ." + "A" * 86
    return Pod(
        device_id=device_id,
        seq=seq,
        historical=False,
        record=PodRecord(
            time=T0, stop_id="S001", parcel="106141412345678908", seq=seq, verdict="inside",
            distance_m=0.0, jws=jws,
        ),
        prev="0" * 64,
        chain_status=chain,  # type: ignore[arg-type]
    )  # fmt: skip


def decoded(messages: list[tuple[str, bytes]]) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return [(topic, json.loads(payload)) for topic, payload in messages]


def test_one_message_per_device_and_kind_in_record_order() -> None:
    out = decoded(
        fleetstream.messages(
            [position("van-7", 3), position("van-8", 1), position("van-7", 2)],
            [event("van-7", 1)],
            [pod("van-7", 1), pod("van-7", 2, "pending")],
        )
    )
    assert [(t, [r["seq"] for r in m["records"]]) for t, m in out] == [
        ("fleetstream/v1/van-7/position", [3, 2]),
        ("fleetstream/v1/van-8/position", [1]),
        ("fleetstream/v1/van-7/event", [1]),
        ("fleetstream/v1/van-7/pod", [1, 2]),
    ]
    for topic, message in out:
        device_id, leaf = topic.split("/")[2:]
        schema.validate(KINDS[leaf], message)
        assert message["device_id"] == device_id
        assert {r["device_id"] for r in message["records"]} == {device_id}
    assert [r["chain"] for r in out[3][1]["records"]] == ["ok", "pending"]
    assert out[3][1]["records"][0] == {
        "device_id": "van-7",
        "seq": 1,
        "historical": False,
        "time": "2026-11-21T09:00:00.000Z",
        "stop_id": "S001",
        "parcel": "106141412345678908",
        "pod_seq": 1,
        "verdict": "inside",
        "outcome": "delivered",
        "distance_m": 0.0,
        "jws": pod("van-7", 1).jws,
        "signature_valid": True,
        "claims_match": True,
        "verified": True,
        "chain": "ok",
    }
    assert out[0][1]["records"][0] == {
        "device_id": "van-7",
        "seq": 3,
        "time": "2026-11-21T09:00:03.000Z",
        "lat": 48.1,
        "lon": 11.5,
        "alt_m": 519.4,
        "speed_mps": 4.25,
        "course_deg": 90.5,
        "mode": 3,
        "quality": 1,
        "hdop": 1.1,
        "sats_used": 9,
        "historical": False,
    }
    assert out[2][1]["records"][0] == {
        **event("van-7", 1).record.to_json(),
        "device_id": "van-7",
        "seq": 1,
        "historical": False,
    }


def test_a_pending_pod_is_not_said_verified_until_it_links() -> None:
    """Issue 13, finding 11: a POD whose predecessor has not arrived was published as
    ``"verified": true`` next to ``"chain": "pending"``. What ingest verified is said
    field by field, and ``verified`` means what the HTTP API's verification.verified
    means: signature, claims and chain all hold."""
    pending, linked = pod("van-7", 2, "pending"), pod("van-7", 2, "ok")
    [(_, first)] = decoded(fleetstream.messages(pods=[pending]))
    [(_, again)] = decoded(fleetstream.messages(pods=[linked]))
    for message in (first, again):
        schema.validate("fleetstream-pod", message)
    said = first["records"][0]
    assert (said["signature_valid"], said["claims_match"]) == (True, True)
    assert (said["chain"], said["verified"]) == ("pending", False)
    assert (again["records"][0]["chain"], again["records"][0]["verified"]) == ("ok", True)
    # The contract says so too: a pending POD said verified breaks the schema.
    lying = {**first, "records": [{**said, "verified": True}]}
    with pytest.raises(SchemaError):
        schema.validate("fleetstream-pod", lying)


def test_broken_pods_are_not_announced_and_nothing_gives_no_message() -> None:
    assert fleetstream.messages(pods=[pod("van-7", 1, "broken")]) == []
    assert fleetstream.messages() == []


def test_a_big_batch_is_cut_at_max_records() -> None:
    n = 2 * fleetstream.MAX_RECORDS + 5
    out = decoded(fleetstream.messages([position("van-7", s) for s in range(1, n + 1)]))
    assert [len(m["records"]) for _, m in out] == [
        fleetstream.MAX_RECORDS,
        fleetstream.MAX_RECORDS,
        5,
    ]
    assert [r["seq"] for _, m in out for r in m["records"]] == list(range(1, n + 1))
    for _, message in out:
        schema.validate("fleetstream-position", message)


def test_records_with_unknown_values_fit_the_contract() -> None:
    first = position("van-7", 1)
    bare = TelemetryPoint(time=first.time, lat=first.point.lat, lon=first.point.lon)
    p = replace(first, point=bare)
    unknown = replace(pod("van-7", 1), record=replace(pod("van-7", 1).record, distance_m=None))
    out = decoded(fleetstream.messages([p], pods=[unknown]))
    for topic, message in out:
        schema.validate(KINDS[topic.rsplit("/", 1)[1]], message)
    record = out[0][1]["records"][0]
    assert [record[k] for k in ("alt_m", "speed_mps", "quality", "sats_used")] == [None] * 4
    assert record["mode"] == 0
    assert out[1][1]["records"][0]["distance_m"] is None


def test_a_failed_attempt_and_the_later_delivery_carry_their_outcomes() -> None:
    failed = pod("van-7", 1)
    failed = replace(failed, record=replace(failed.record, outcome="not_home"))
    delivered = pod("van-7", 2)
    delivered = replace(delivered, record=replace(delivered.record, outcome="neighbour"))
    ((topic, message),) = decoded(fleetstream.messages([], [], [failed, delivered]))
    assert topic == "fleetstream/v1/van-7/pod"
    schema.validate("fleetstream-pod", message)
    assert [(r["parcel"], r["pod_seq"], r["outcome"]) for r in message["records"]] == [
        ("106141412345678908", 1, "not_home"),
        ("106141412345678908", 2, "neighbour"),
    ]
    # An outcome the contract does not know is refused by the schema.
    message["records"][0]["outcome"] = "lost"
    with pytest.raises(SchemaError, match="outcome"):
        schema.validate("fleetstream-pod", message)
