"""Ingest's message checks: real PODs from a real PodChain, and hostile input."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from cloud_ingest.store.base import Covered, Device, Pod, Position, Released, StopEvent
from cloud_ingest.verify import (
    Accepted,
    Checked,
    Reason,
    Rejected,
    StatusUpdate,
    check_chain,
    check_message,
    check_replay,
)
from firmware_agent.contract.envelope import encode_status
from firmware_agent.contract.jws import b64url_decode, b64url_encode, sign_compact
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.pod import GENESIS_PREV, pod_digest
from firmware_agent.contract.records import Arrival, PodRecord, TelemetryPoint
from firmware_agent.contract.seqreport import SeqReport, sign_report
from firmware_agent.contract.telemetry import encode_batch
from firmware_agent.contract.topics import STREAMS, Stream
from firmware_agent.pod import chain as podchain
from firmware_agent.pod.chain import PodChain
from tests.pods import fields, pod_record
from tests.wire import envelope

RECEIVED = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
SENT = datetime(2026, 11, 21, 9, 29, 59, tzinfo=UTC)
REASONS = set(get_args(Reason))

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device(device_id: str = "van-7", *, enabled: bool = True, key: bytes | None = None) -> Device:
    return Device(device_id, key or raw(KEY), enabled, RECEIVED - timedelta(days=30))


VAN7 = device()


def issue(n: int = 1, *, device_id: str = "van-7", key: Ed25519PrivateKey = KEY) -> list[Any]:
    chain = PodChain(device_id, key)
    return [chain.issue(fields(i)) for i in range(1, n + 1)]


def pod_payload(
    pod: podchain.Pod,
    *,
    envelope_seq: int | None = None,
    device_id: str = "van-7",
    **changes: Any,
) -> bytes:
    return envelope(
        device_id,
        "pod",
        pod.seq if envelope_seq is None else envelope_seq,
        pod_record(pod, **changes),
        historical=False,
        sent_at=SENT,
    )


def arrival(stop_id: str = "S001", **changes: Any) -> dict[str, Any]:
    record = {
        "type": "arrival",
        "time": "2026-11-21T09:14:02.000Z",
        "stop_id": stop_id,
        "detected_at": "2026-11-21T09:14:32.000Z",
        "lat": 48.137,
        "lon": 11.575,
        "visit": 1,
        "confirmed_by": "dwell",
    }
    return record | changes


def event_payload(record: dict[str, Any], *, seq: int = 17, device_id: str = "van-7") -> bytes:
    return envelope(device_id, "events", seq, record, historical=True, sent_at=SENT)


def check(topic: str, payload: bytes, dev: Device | None = VAN7, **kwargs: Any) -> Checked:
    return check_message(topic, payload, received_at=RECEIVED, device=dev, **kwargs)


def rejected(result: Checked, reason: str) -> Rejected:
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result.detail
    return result


def accepted(result: Checked) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


def with_segment(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


# --- accepted messages --------------------------------------------------------------------


def test_a_signed_pod_is_accepted_with_its_jws_verbatim() -> None:
    (issued,) = issue()
    result = accepted(check("fleet/v1/van-7/pod", pod_payload(issued, envelope_seq=41)))
    assert (result.device_id, result.leaf) == ("van-7", "pod")
    (pod,) = result.items
    assert pod == Pod(
        device_id="van-7",
        seq=41,
        historical=False,
        record=PodRecord(
            time=datetime(2026, 11, 21, 9, 14, 3, 250000, tzinfo=UTC),
            stop_id=issued.claims["stop_id"],
            parcel=issued.claims["parcel"],
            seq=1,
            verdict="inside",
            distance_m=0.0,
            jws=issued.token,
        ),
        prev=GENESIS_PREV,
        chain_status="pending",
    )
    assert pod.digest == pod_digest(issued.token)
    assert check_chain(pod, None) == "ok"


def _thinned_fixes() -> list[tuple[int, TelemetryPoint]]:
    t0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    return [
        (
            5,
            TelemetryPoint(
                time=t0,
                lat=48.1,
                lon=11.5,
                alt_m=519.2,
                speed_mps=8.5,
                mode=3,
                quality=2,
                hdop=0.9,
                sats_used=9,
            ),
        ),
        (9, TelemetryPoint(time=t0 + timedelta(seconds=4), lat=48.1001, lon=11.5002, mode=2)),
    ]


def test_a_signed_telemetry_batch_gives_positions_and_its_range() -> None:
    fixes = _thinned_fixes()
    payload = encode_batch("van-7", 3, fixes, historical=True, last_seq=12, sign=KEY.sign)
    result = accepted(check("fleet/v1/van-7/telemetry", payload))
    first, second, covered = result.items
    assert first == Position("van-7", 5, True, fixes[0][1])
    assert isinstance(second, Position)
    assert second == Position("van-7", 9, True, fixes[1][1])
    assert covered == Covered("van-7", "telemetry", 3, 12)


def test_an_unsigned_batch_settles_only_the_fixes_it_carries() -> None:
    """Issue 13, finding 7: the seqs of a range a batch does not carry are settled only
    on the device's signature; its fixes are stored either way."""
    fixes = _thinned_fixes()
    payload = encode_batch("van-7", 3, fixes, historical=True, last_seq=12)
    result = accepted(check("fleet/v1/van-7/telemetry", payload))
    assert result.items == (
        Position("van-7", 5, True, fixes[0][1]),
        Position("van-7", 9, True, fixes[1][1]),
    )


def test_an_unsigned_empty_batch_is_refused_and_settles_nothing() -> None:
    """The batch of finding 7 (24 bytes for van-0001): 1..2**63-1, no fix. It claimed
    every seq the van would ever send; now it is quarantined and settles nothing."""
    payload = encode_batch("van-7", 1, [], historical=False, last_seq=2**63 - 1)
    result = check("fleet/v1/van-7/telemetry", payload)
    assert isinstance(result, Rejected)
    assert (result.reason, result.covered) == ("unproven_range", None)


@pytest.mark.parametrize("signer", [OTHER_KEY.sign, lambda data: bytes(64)])
def test_a_batch_signed_by_another_key_is_refused(signer: Any) -> None:
    payload = encode_batch("van-7", 1, [], historical=False, last_seq=2**63 - 1, sign=signer)
    result = check("fleet/v1/van-7/telemetry", payload)
    assert isinstance(result, Rejected)
    assert (result.reason, result.covered) == ("bad_signature", None)
    # Flipping a bit under the signature (the range) breaks it too.
    good = bytearray(encode_batch("van-7", 3, _thinned_fixes(), historical=True, sign=KEY.sign))
    good[good.index(b"van-7") + 5] ^= 1  # first_seq 3 -> 2
    altered = check("fleet/v1/van-7/telemetry", bytes(good))
    assert isinstance(altered, Rejected)
    assert altered.reason == "bad_signature"


def test_an_event_is_accepted_as_a_stop_event() -> None:
    record = arrival()
    result = accepted(check("fleet/v1/van-7/events", event_payload(record)))
    assert result.items == (
        StopEvent(device_id="van-7", seq=17, historical=True, record=Arrival.from_json(record)),
    )
    (event,) = result.items
    assert isinstance(event, StopEvent)
    assert (event.type, event.time, event.stop_id, event.route_id) == (
        "arrival",
        datetime(2026, 11, 21, 9, 14, 2, tzinfo=UTC),
        "S001",
        None,
    )


def _report(key: Ed25519PrivateKey = KEY, device_id: str = "van-7", **acked: int) -> str:
    streams: dict[Stream, int] = {s: acked.get(s, 0) for s in STREAMS}
    report = SeqReport(
        device_id=device_id, time=SENT, acked=streams, last={s: n + 5 for s, n in streams.items()}
    )
    return sign_report(report, key)


def test_a_status_with_a_sequence_report_releases_what_the_van_applied() -> None:
    birth = encode_status("van-7", "online", time=SENT, seqs=_report(events=40, pod=7))
    result = accepted(check("fleet/v1/van-7/status", birth))
    assert result.items == (
        StatusUpdate("van-7", "online", SENT, RECEIVED, {}),
        Released("van-7", "events", 40),
        Released("van-7", "pod", 7),
    )


@pytest.mark.parametrize(
    ("seqs", "reason"),
    [
        (_report(OTHER_KEY, events=40), "bad_signature"),
        (_report(device_id="van-8", events=40), "device_mismatch"),
        (sign_compact({"v": 1, "acked": {}}, KEY, kid="k", typ="seqs+jwt"), "malformed"),
        (sign_compact({"v": 1}, KEY, kid="k"), "bad_signature"),  # a POD's typ
    ],
)
def test_a_bad_sequence_report_refuses_the_status(seqs: str, reason: str) -> None:
    result = check("fleet/v1/van-7/status", encode_status("van-7", "online", seqs=seqs))
    assert isinstance(result, Rejected)
    assert (result.reason, result.covered) == (reason, None)


def test_status_takes_the_receipt_time_when_it_has_none() -> None:
    birth = encode_status("van-7", "online", time=SENT, health={"outbox": 3})
    result = accepted(check("fleet/v1/van-7/status", birth))
    assert result.items == (StatusUpdate("van-7", "online", SENT, RECEIVED, {"outbox": 3}),)
    will = accepted(check("fleet/v1/van-7/status", encode_status("van-7", "offline")))
    assert will.items == (StatusUpdate("van-7", "offline", RECEIVED, RECEIVED, {}),)


# --- refused PODs -------------------------------------------------------------------------


def test_a_forged_signature_is_refused_and_settles_nothing() -> None:
    (issued,) = issue()
    signature = b64url_decode(issued.token.split(".")[2])
    forged = with_segment(issued.token, 2, b64url_encode(bytes([signature[0] ^ 1]) + signature[1:]))
    result = rejected(check("fleet/v1/van-7/pod", pod_payload(issued, jws=forged)), "bad_signature")
    # Unauthenticated: it must not move the van's pod ack (the seq may be the van's
    # next genuine POD, not delivered yet).
    assert result.covered is None
    assert result.device_id == "van-7"


def test_altered_claims_are_refused() -> None:
    (issued,) = issue()
    claims = issued.claims | {"parcel": "001061414199999999"}
    altered = with_segment(
        issued.token, 1, b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    payload = pod_payload(issued, jws=altered, parcel="001061414199999999")
    rejected(check("fleet/v1/van-7/pod", payload), "bad_signature")


def test_a_pod_signed_with_another_devices_key_is_refused() -> None:
    (issued,) = issue(key=OTHER_KEY)
    result = rejected(check("fleet/v1/van-7/pod", pod_payload(issued)), "bad_signature")
    assert "jws" in result.detail


def test_algorithm_none_is_refused() -> None:
    (issued,) = issue()
    header = b64url_encode(b'{"alg":"none","typ":"pod+jwt"}')
    unsigned = with_segment(issued.token, 0, header)
    rejected(check("fleet/v1/van-7/pod", pod_payload(issued, jws=unsigned)), "bad_signature")


def test_a_pod_signed_for_another_device_is_refused() -> None:
    # The right key, but the claims name van-3: a copy of another van's POD.
    (issued,) = issue(device_id="van-3")
    result = rejected(check("fleet/v1/van-7/pod", pod_payload(issued)), "wrong_device")
    assert "van-3" in result.detail


def test_a_payload_for_another_devices_topic_is_refused() -> None:
    (issued,) = issue()
    van3 = device("van-3")
    result = rejected(check("fleet/v1/van-3/pod", pod_payload(issued), van3), "device_mismatch")
    assert result.covered is None  # whose seq would it be? nothing moves
    payload = event_payload(arrival(), device_id="van-7")
    rejected(check("fleet/v1/van-3/events", payload, van3), "device_mismatch")
    batch = encode_batch(
        "van-7", 1, [(1, TelemetryPoint(time=SENT, lat=1.0, lon=2.0, mode=3))], historical=False
    )
    rejected(check("fleet/v1/van-3/telemetry", batch, van3), "device_mismatch")
    status = encode_status("van-7", "online", time=SENT)
    rejected(check("fleet/v1/van-3/status", status, van3), "device_mismatch")


@pytest.mark.parametrize(
    "changes",
    [
        {"parcel": "001061414100000099"},
        {"stop_id": "S999"},
        {"seq": 2},
        {"verdict": "outside"},
        {"time": "2026-11-21T09:14:04.000Z"},
        {"distance_m": 12.5},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_record_that_disagrees_with_its_claims_is_refused(changes: dict[str, Any]) -> None:
    (issued,) = issue()
    result = rejected(check("fleet/v1/van-7/pod", pod_payload(issued, **changes)), "pod_mismatch")
    assert result.covered == Covered("van-7", "pod", 1, 1)


@pytest.mark.parametrize(
    "scan_time", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "yesterday", 17]
)
def test_a_signed_scan_time_that_is_no_utc_time_is_not_a_pod(scan_time: object) -> None:
    chain = PodChain("van-7", KEY)
    issued = chain.issue(fields(1) | {"scan_time": scan_time})
    payload = pod_payload(issued, time="2026-11-21T09:14:03.250Z")
    result = rejected(check("fleet/v1/van-7/pod", payload), "malformed")
    assert "signed, but not a POD" in result.detail
    assert result.covered == Covered("van-7", "pod", 1, 1)


def test_a_signed_payload_that_is_not_a_pod_is_malformed() -> None:
    token = sign_compact(
        {"parcel": "x", "stop_id": "S1", "device_id": "van-7", "verdict": "inside"},
        KEY,
        kid=key_thumbprint(KEY.public_key()),
    )
    (issued,) = issue()
    result = rejected(check("fleet/v1/van-7/pod", pod_payload(issued, jws=token)), "malformed")
    assert "not a POD" in result.detail


# --- refused for who sent it, or how ------------------------------------------------------


def test_unknown_and_disabled_devices_are_refused_without_moving_acks() -> None:
    (issued,) = issue()
    payload = pod_payload(issued)
    unknown = rejected(check("fleet/v1/van-7/pod", payload, None), "unknown_device")
    disabled = rejected(
        check("fleet/v1/van-7/pod", payload, device(enabled=False)), "disabled_device"
    )
    # The records wait in the van's outbox until the device is enrolled or enabled.
    assert unknown.covered is None
    assert disabled.covered is None
    assert unknown.device_id == disabled.device_id == "van-7"


def test_an_oversized_payload_is_refused_before_decoding() -> None:
    rejected(check("fleet/v1/van-7/events", b"{" * 1025, max_bytes=1024), "too_large")
    rejected(check("fleet/v1/van-7/telemetry", b"\xff" * (256 * 1024 + 1)), "too_large")


@pytest.mark.parametrize("leaf", ["telemetry", "events", "pod", "status"])
@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe\x00", b"[]", b'{"v":1}', b"FT\x01\x00\x05van-7"]
)
def test_malformed_bytes_are_refused(leaf: str, payload: bytes) -> None:
    result = rejected(check(f"fleet/v1/van-7/{leaf}", payload), "malformed")
    assert result.covered is None


def test_schema_violations_are_refused() -> None:
    # The codec reads the envelope; the JSON Schema says an arrival has a stop_id.
    no_stop = {k: v for k, v in arrival().items() if k != "stop_id"}
    result = rejected(check("fleet/v1/van-7/events", event_payload(no_stop)), "schema")
    assert "stop_id" in result.detail
    rejected(check("fleet/v1/van-7/events", event_payload(arrival(visit="one"))), "schema")
    rejected(check("fleet/v1/van-7/events", event_payload(arrival(stop_id="S\x001"))), "schema")
    (issued,) = issue()
    rejected(check("fleet/v1/van-7/pod", pod_payload(issued, verdict="maybe")), "schema")
    rejected(check("fleet/v1/van-7/pod", pod_payload(issued, jws="not-a-jws")), "schema")


def test_a_nul_anywhere_in_a_record_is_refused_and_its_spelling_is_not() -> None:
    # No PostgreSQL text or jsonb value holds a NUL; a string spelling "\\u0000" is text.
    base = {"type": "scan_rejected", "time": "2026-11-21T09:00:00.000Z", "reason": "unreadable"}
    nul = {**base, "raw": "junk\x00", "source": "hid", "error": "not_printable"}
    result = rejected(check("fleet/v1/van-7/events", event_payload(nul)), "schema")
    assert "NUL" in result.detail
    spelt = {**base, "raw": "junk\\u0000", "source": "hid", "error": "not_printable"}
    assert b"\\\\u0000" in event_payload(spelt)
    accepted(check("fleet/v1/van-7/events", event_payload(spelt)))


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/v1/van-7/ack",
        "fleet/v1/van-7/manifest",
        "fleetstream/v1/van-7/pod",
        "fleet/v2/van-7/pod",
        "fleet/v1/van 7/pod",
        "fleet/v1/+/pod",
        "$share/ingest/fleet/v1/van-7/pod",
        "fleet/v1/van-7/pod/",
        "",
    ],
)
def test_topics_outside_the_uplink_contract_are_refused(topic: str) -> None:
    (issued,) = issue()
    result = rejected(
        check_message(topic, pod_payload(issued), received_at=RECEIVED, device=None), "bad_topic"
    )
    assert result.covered is None


def test_a_device_record_for_another_id_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="van-3"):
        check("fleet/v1/van-7/events", b"{}", device("van-3"))


# --- chain and replay checks --------------------------------------------------------------


def _pods(n: int, *, key: Ed25519PrivateKey = KEY) -> list[Pod]:
    out = []
    for issued in issue(n, key=key):
        payload = pod_payload(issued, envelope_seq=issued.seq + 100)
        result = accepted(check("fleet/v1/van-7/pod", payload, device(key=raw(key))))
        (pod,) = result.items
        assert isinstance(pod, Pod)
        out.append(pod)
    return out


def test_check_chain_links_to_the_stored_predecessor() -> None:
    p1, p2, p3 = _pods(3)
    assert check_chain(p1, None) == "ok"
    assert check_chain(p2, None) == "pending"
    assert check_chain(p2, p1) == "ok"
    assert check_chain(p3, p2) == "ok"
    # POD 3 of another chain of this device (a rolled-back state) does not link to p2.
    (_, _, forked3) = _pods(3, key=OTHER_KEY)
    broken = check_chain(forked3, p2)
    assert isinstance(broken, Rejected)
    assert broken.reason == "broken_chain"
    assert broken.covered == Covered("van-7", "pod", 103, 103)
    not_genesis = check_chain(replace(p1, prev="1" * 64), None)
    assert isinstance(not_genesis, Rejected)
    assert not_genesis.reason == "broken_chain"
    with pytest.raises(ValueError, match="predecessor"):
        check_chain(p3, p1)


def test_check_replay_tells_duplicates_from_replays() -> None:
    p1, p2 = _pods(2)
    assert check_replay(p1, None) is None
    assert check_replay(p1, p1) is None  # the same record delivered again
    again = check_replay(replace(p1, seq=999), p1)
    assert isinstance(again, Rejected)
    assert again.reason == "replayed_pod"
    assert again.covered == Covered("van-7", "pod", 999, 999)
    forked = check_replay(replace(p2, record=replace(p2.record, seq=1), seq=998), p1)
    assert isinstance(forked, Rejected)
    assert "forked" in forked.detail


def test_a_rejection_becomes_a_quarantine_record() -> None:
    (issued,) = issue(key=OTHER_KEY)
    payload = pod_payload(issued)
    result = rejected(check("fleet/v1/van-7/pod", payload), "bad_signature")
    q = result.quarantined(topic="fleet/v1/van-7/pod", payload=payload, received_at=RECEIVED)
    assert (q.topic, q.device_id, q.reason, q.payload) == (
        "fleet/v1/van-7/pod",
        "van-7",
        "bad_signature",
        payload,
    )
    assert q.covered == result.covered


# --- hostile input ------------------------------------------------------------------------

LEAVES = ["telemetry", "events", "pod", "status"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def assert_never_raises(topic: str, payload: bytes) -> None:
    result = check_message(
        topic, payload, received_at=RECEIVED, device=VAN7 if "van-7" in topic else None
    )
    assert isinstance(result, Accepted | Rejected)
    if isinstance(result, Rejected):
        assert result.reason in REASONS


@given(leaf=st.sampled_from(LEAVES), payload=st.binary(max_size=300))
def test_garbage_bytes_are_rejected_never_raised(leaf: str, payload: bytes) -> None:
    assert_never_raises(f"fleet/v1/van-7/{leaf}", payload)


@given(topic=st.text(max_size=80), payload=st.binary(max_size=40))
def test_garbage_topics_are_rejected_never_raised(topic: str, payload: bytes) -> None:
    assert_never_raises(topic, payload)


(_ISSUED,) = issue()


@given(
    leaf=st.sampled_from(["events", "pod"]),
    name=st.sampled_from(["record", "seq", "device_id", "historical", "sent_at", "v", "stream"]),
    field_name=st.sampled_from(["jws", "parcel", "seq", "time", "stop_id", "type", "extra"]),
    value=json_values,
)
def test_hostile_json_fields_are_rejected_never_raised(
    leaf: str, name: str, field_name: str, value: Any
) -> None:
    envelope = json.loads(pod_payload(_ISSUED))
    envelope["stream"] = leaf
    envelope["record"][field_name] = value
    if name != "record":
        envelope[name] = value
    assert_never_raises(f"fleet/v1/van-7/{leaf}", json.dumps(envelope).encode())


@given(
    claims=st.dictionaries(
        st.sampled_from(
            sorted(podchain.RESERVED_CLAIMS | {"parcel", "stop_id", "verdict", "scan_time"})
        ),
        json_values,
    )
)
def test_hostile_signed_claims_are_rejected_never_raised(claims: dict[str, Any]) -> None:
    token = sign_compact(claims, KEY, kid="k")
    assert_never_raises("fleet/v1/van-7/pod", pod_payload(_ISSUED, jws=token))
