"""The events batch (issue 15): its codec, when the uplink sends one, and ingest's checks
of each record inside it. The end-to-end path through a real broker is
tests/test_e2e_event_batch.py."""

from __future__ import annotations

import contextlib
import json
import random
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_ingest.store.base import Covered, Device, Quarantined, StopEvent
from cloud_ingest.verify import MAX_MESSAGE_BYTES, Accepted, Rejected, check_message
from firmware_agent.contract import schema, wirejson
from firmware_agent.contract.envelope import decode_envelope, frame_record
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.eventbatch import (
    DICTIONARY,
    MAGIC,
    MAX_INFLATED_BYTES,
    decode_event_message,
    decode_events,
    frame_events,
    is_event_batch,
)
from firmware_agent.contract.telemetry import HISTORICAL_AFTER_S, is_historical
from firmware_agent.settings import UplinkSettings
from firmware_agent.uplink.batching import (
    DEFERRABLE,
    MAX_BATCH_RECORD_BYTES,
    events_due,
    fitting,
    record_type,
)

ROOT = Path(__file__).resolve().parent.parent
RECEIVED = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
SENT = datetime(2026, 11, 21, 9, 29, 59, 250000, tzinfo=UTC)
VAN7 = Device("van-7", b"\0" * 32, True, RECEIVED - timedelta(days=30))
TOPIC = "fleet/v1/van-7/events"


def arrival(stop_id: str = "S001", **changes: Any) -> dict[str, Any]:
    return {
        "type": "arrival",
        "time": "2026-11-21T09:14:03.000Z",
        "stop_id": stop_id,
        "detected_at": "2026-11-21T09:14:31.000Z",
        "lat": 48.1372,
        "lon": 11.5756,
        "visit": 1,
        "confirmed_by": "dwell",
        **changes,
    }


def eta(stop_id: str, minute: int, **changes: Any) -> dict[str, Any]:
    return {
        "type": "eta",
        "time": f"2026-11-21T09:{minute:02d}:31.000Z",
        "stop_id": stop_id,
        "route_id": "R-20261121-van-7",
        "eta": f"2026-11-21T10:{minute:02d}:05.412Z",
        "eta_baseline": f"2026-11-21T10:{minute:02d}:40.118Z",
        "horizon_s": 1994.4,
        "model": "eta-20261120-ce893f5013",
        "trigger": "moved",
        **changes,
    }


def stored(record: dict[str, Any]) -> bytes:
    return wirejson.dumps(record, "record")


def batch(*records: tuple[int, dict[str, Any] | bytes], historical: bool = False) -> bytes:
    return frame_events(
        "van-7",
        [(seq, historical, r if isinstance(r, bytes) else stored(r)) for seq, r in records],
        sent_at=SENT,
    )


# --- the codec ---------------------------------------------------------------------------


def test_a_batch_carries_its_records_back_byte_for_byte() -> None:
    records = [(3, False, stored(arrival())), (4, True, stored(eta("S002", 15))), (9, False, b"{}")]
    records[2] = (9, False, stored(eta("S003", 16)))
    payload = frame_events("van-7", records, sent_at=SENT)
    assert is_event_batch(payload)
    assert payload.startswith(MAGIC)
    got = decode_events(payload)
    assert (got.device_id, got.sent_at, got.first_seq, got.last_seq) == ("van-7", SENT, 3, 9)
    assert [(r.seq, r.historical, r.record) for r in got.records] == records
    schema.validate("event-batch", got.to_json())


def test_each_record_is_the_envelope_it_would_have_been_alone() -> None:
    records = [(7, False, stored(arrival())), (8, True, stored(eta("S002", 15)))]
    payload = frame_events("van-7", records, sent_at=SENT)
    alone = [
        frame_record("van-7", "events", seq, data, historical=h, sent_at=SENT)
        for seq, h, data in records
    ]
    got = decode_events(payload)
    assert [got.envelope(r) for r in got.records] == alone
    assert decode_event_message(payload) == [decode_envelope(a) for a in alone]
    assert decode_event_message(alone[0]) == [decode_envelope(alone[0])]


@given(
    st.lists(
        st.tuples(st.integers(1, 1000), st.booleans(), st.sampled_from(["S1", "S22", "S333"])),
        min_size=1,
        max_size=40,
        unique_by=lambda t: t[0],
    ),
    st.integers(0, 2**62),
)
def test_any_batch_round_trips(items: list[tuple[int, bool, str]], base: int) -> None:
    items.sort()
    records = [
        (base + seq, historical, stored(eta(stop, seq % 60))) for seq, historical, stop in items
    ]
    got = decode_events(frame_events("van-7", records, sent_at=SENT))
    assert [(r.seq, r.historical, r.record) for r in got.records] == records


def test_a_batch_of_etas_costs_a_fraction_of_their_envelopes() -> None:
    """What the batch is for: 20 ETA records in one message against 20 envelopes."""
    records = [(i, False, stored(eta(f"S{i:03d}", i))) for i in range(1, 21)]
    alone = sum(
        len(frame_record("van-7", "events", s, d, historical=h, sent_at=SENT))
        for s, h, d in records
    )
    payload = frame_events("van-7", records, sent_at=SENT)
    assert len(payload) * 4 < alone, (len(payload), alone)
    # The preset dictionary is what makes even one record cheap.
    one = frame_events("van-7", records[:1], sent_at=SENT)
    plain = zlib.compressobj(9, zlib.DEFLATED, -15)
    without = len(plain.compress(records[0][2]) + plain.flush())
    assert len(one) - 20 < without


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([], "at least one record"),
        ([(2, False, b'{"type":"halt"}'), (2, False, b'{"type":"halt"}')], "strictly increasing"),
        ([(3, False, b'{"type":"halt"}'), (2, False, b'{"type":"halt"}')], "strictly increasing"),
        ([(0, False, b'{"type":"halt"}')], "out of range"),
        ([(1, False, b'["type"]')], "not a stored record"),
    ],
)
def test_the_framer_refuses_what_the_layout_cannot_carry(
    records: list[tuple[int, bool, bytes]], match: str
) -> None:
    with pytest.raises(CodecError, match=match):
        frame_events("van-7", records, sent_at=SENT)
    with pytest.raises(CodecError, match="device id"):
        frame_events("van 7", [(1, False, b'{"type":"halt"}')], sent_at=SENT)
    with pytest.raises(CodecError, match="UTC-aware"):
        frame_events("van-7", [(1, False, b'{"type":"halt"}')], sent_at=datetime(2026, 1, 1))


def _header(count: int = 1, first_seq: int = 1, device: str = "van-7") -> bytes:
    """A version 1 header (``first_seq`` and ``count`` under 128), sent_at 1 ms."""
    name = device.encode()
    return MAGIC + bytes((1, 0, len(name))) + name + bytes((first_seq, count, 1))


def _deflate(body: bytes) -> bytes:
    d = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return d.compress(body) + d.flush()


GOOD = batch((1, arrival()))


def forged(*records: tuple[int, dict[str, Any] | bytes]) -> bytes:
    """A batch framed by hand, as a forger could (the framer refuses non-records);
    seqs under 128."""
    body = b""
    prev = records[0][0]
    for seq, r in records:
        data = r if isinstance(r, bytes) else stored(r)
        body += _varint((seq - prev) << 1) + _varint(len(data)) + data
        prev = seq
    return _header(count=len(records), first_seq=records[0][0]) + _deflate(body)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "truncated header"),
        (b"FT\x01\x00", "bad magic"),
        (MAGIC + b"\x02\x00", "version 2"),
        (MAGIC + b"\x01\x04", "flag bits"),
        (GOOD[:-3], "truncated deflate|bad deflate"),
        (GOOD + b"\x00", "after the deflate data"),
        (_header(count=0) + _deflate(b""), "0 records"),
        (_header(count=2) + _deflate(b"\x00\x02{}"), "truncated in seq delta"),
        (_header() + _deflate(b"\x02\x02{}"), "not strictly increasing"),
        (_header(count=2) + _deflate(b"\x00\x02{}\x00\x02{}"), "not strictly increasing"),
        (_header() + _deflate(b"\x00\x05{}"), "truncated in record"),
        (_header() + _deflate(b"\x00\x02{}x"), "trailing bytes"),
        (_header() + _deflate(b"\x80\x00\x02{}"), "overlong varint"),
        (_header() + b"\xff" * 40, "bad deflate"),
        (_header() + _deflate(b"\x00" * (MAX_INFLATED_BYTES + 10)), "inflates to more"),
        (MAGIC + bytes((1, 0, 5)) + b"van 7" + bytes((1, 1, 1)), "bad device id"),
    ],
)
def test_the_decoder_refuses_every_malformed_batch_with_a_codec_error(
    payload: bytes, match: str
) -> None:
    with pytest.raises(CodecError, match=match):
        decode_events(payload)


@given(st.binary(max_size=300))
def test_the_decoder_raises_only_codec_errors_whatever_the_bytes(data: bytes) -> None:
    for payload in (data, MAGIC + b"\x01\x00" + data, GOOD[: len(data) % len(GOOD)] + data):
        with contextlib.suppress(CodecError):
            decode_events(payload)


def test_the_asyncapi_example_is_the_decoded_form_of_its_bytes() -> None:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text("utf-8"))
    message = doc["components"]["messages"]["eventBatch"]
    hexes = message["x-payload-hex"]
    assert set(hexes) == {e["name"] for e in message["examples"]}
    for example in message["examples"]:
        got = decode_events(bytes.fromhex(hexes[example["name"]]))
        assert json.loads(json.dumps(got.to_json())) == example["payload"]


# --- when the uplink sends ---------------------------------------------------------------

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def test_record_type_reads_the_stored_records_type() -> None:
    assert record_type(stored(arrival())) == "arrival"
    assert record_type(stored(eta("S1", 1))) == "eta"
    assert record_type(b'{"kind":"eta"}') == ""
    assert record_type(b'{"type":"eta') == ""


def test_deferrable_records_wait_for_count_or_age_and_others_go_at_once() -> None:
    def due(kinds: list[str], age_s: float, **kw: Any) -> bool:
        pending = [(k, T0) for k in kinds]
        opts: dict[str, Any] = {"max_records": 4, "max_age_s": 60.0, **kw}
        return events_due(pending, T0 + timedelta(seconds=age_s), **opts)

    assert not due([], 1000.0)
    assert not due(["eta", "departure", "eta"], 59.9)
    assert due(["eta", "departure", "eta"], 60.0)
    assert due(["eta"] * 4, 0.0)
    assert due(["eta"], 0.0, flush=True)
    for urgent in ("arrival", "late_risk", "window", "halt", "deviation", "scan_rejected"):
        assert due(["eta", urgent], 0.0), urgent
    assert due(["stop_passed"], 0.0)  # a type this code does not know goes at once
    assert due([""], 0.0)
    assert {"eta", "departure"} <= DEFERRABLE
    assert "arrival" not in DEFERRABLE


def test_a_record_waiting_for_its_batch_is_never_historical() -> None:
    """The longest wait the settings allow, plus the uplink's one-second look, stays
    under the 60 s after which a record is historical (no live alert for it)."""
    field = UplinkSettings.model_fields["events_batch_max_age_s"]
    longest_s = next(m.le for m in field.metadata if getattr(m, "le", None) is not None)
    assert not is_historical(T0, T0 + timedelta(seconds=longest_s + 1.0))
    assert UplinkSettings().events_batch_max_age_s <= longest_s
    with pytest.raises(ValidationError):
        UplinkSettings(events_batch_max_age_s=HISTORICAL_AFTER_S)


def test_a_batch_never_outgrows_what_ingest_takes() -> None:
    assert fitting([100] * 40) == 40
    assert fitting([60_000] * 5, 150_000) == 2
    assert fitting([200_000, 10], 150_000) == 1  # the first always goes
    assert fitting([]) == 0
    # The worst case: records of incompressible text, as many as fit.
    noise = [
        b'{"type":"halt","x":"'
        + bytes(random.Random(i).choices(b"0123456789abcdefghij", k=60_000))
        + b'"}'
        for i in range(5)
    ]
    n = fitting([len(r) for r in noise])
    payload = frame_events(
        "van-7", [(i + 1, False, r) for i, r in enumerate(noise[:n])], sent_at=SENT
    )
    assert n == 3
    assert sum(len(r) for r in noise[:n]) <= MAX_BATCH_RECORD_BYTES
    assert len(payload) < MAX_MESSAGE_BYTES


# --- ingest's checks of a batch ------------------------------------------------------------


def check(payload: bytes, device: Device = VAN7, topic: str = TOPIC) -> Accepted | Rejected:
    return check_message(topic, payload, received_at=RECEIVED, device=device)


def test_ingest_accepts_every_record_of_a_batch_with_its_own_seq() -> None:
    result = check(batch((5, arrival()), (6, eta("S002", 15)), (8, eta("S003", 16))))
    assert isinstance(result, Accepted), result
    assert result.leaf == "events"
    events = [i for i in result.items if isinstance(i, StopEvent)]
    assert [(e.seq, e.type, e.record.to_json()["stop_id"]) for e in events] == [
        (5, "arrival", "S001"),
        (6, "eta", "S002"),
        (8, "eta", "S003"),
    ]
    assert len(events) == len(result.items)


def test_historical_is_per_record() -> None:
    payload = frame_events(
        "van-7",
        [(1, True, stored(arrival())), (2, False, stored(eta("S002", 15)))],
        sent_at=SENT,
    )
    result = check(payload)
    assert isinstance(result, Accepted)
    assert [i.historical for i in result.items if isinstance(i, StopEvent)] == [True, False]


def test_one_bad_record_is_quarantined_alone_and_the_others_are_accepted() -> None:
    forged_pod = {"type": "pod", "time": "2026-11-21T09:14:03.000Z", "jws": "x"}
    result = check(
        forged(
            (1, arrival()),
            (2, arrival(visit="one")),  # breaks the schema
            (3, eta("S002", 15)),
            (4, forged_pod),  # a POD does not belong on the events stream
            (5, b'{"type":"halt","time":'),  # not JSON
            (6, b'["type"]'),  # not even a stored record
            (7, eta("S003", 16, time="2099-01-01T00:00:00.000Z")),  # implausibly dated
            (8, eta("S004", 17)),
        )
    )
    assert isinstance(result, Accepted), result
    events = [i for i in result.items if isinstance(i, StopEvent)]
    assert [e.seq for e in events] == [1, 3, 8]
    quarantined = [i for i in result.items if isinstance(i, Quarantined)]
    assert [(q.reason, q.detail.split(":")[0]) for q in quarantined] == [
        ("schema", "events batch 1..8, seq 2"),
        ("malformed", "events batch 1..8, seq 4"),
        ("malformed", "events batch 1..8, seq 5"),
        ("malformed", "events batch 1..8, seq 6"),
        ("implausible_time", "events batch 1..8, seq 7"),
    ]
    # Each settles what it would settle alone: only the implausible record its seq.
    assert [q.covered for q in quarantined] == [
        None,
        None,
        None,
        None,
        Covered("van-7", "events", 7, 7),
    ]
    # The quarantine keeps each as the envelope it would have been (what it checked).
    assert decode_envelope(quarantined[0].payload).seq == 2
    assert quarantined[3].payload == b'["type"]'
    assert len(events) + len(quarantined) == len(result.items)


def test_the_batch_as_a_whole_is_refused_for_what_concerns_it_all() -> None:
    payload = batch((1, arrival()))
    other = frame_events("van-3", [(1, False, stored(arrival()))], sent_at=SENT)
    assert check(other).reason == "device_mismatch"  # type: ignore[union-attr]
    assert check(payload[:-2]).reason == "malformed"  # type: ignore[union-attr]
    assert check(payload, topic="fleet/v1/van-7/pod").reason == "malformed"  # type: ignore[union-attr]
    unknown = check_message(TOPIC, payload, received_at=RECEIVED, device=None)
    assert isinstance(unknown, Rejected)
    assert unknown.reason == "unknown_device"
    disabled = Device("van-7", b"\0" * 32, False, RECEIVED)
    assert check(payload, disabled).reason == "disabled_device"  # type: ignore[union-attr]


def test_a_single_record_envelope_is_still_accepted() -> None:
    alone = frame_record("van-7", "events", 4, stored(arrival()), historical=False, sent_at=SENT)
    result = check(alone)
    assert isinstance(result, Accepted)
    [event] = result.items
    assert isinstance(event, StopEvent)
    assert event.seq == 4
