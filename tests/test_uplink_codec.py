"""The uplink codec and topics: exact round trips at wire resolution, and hostile input.

Every decoder must answer a payload with a value or a CodecError, whatever the bytes:
truncated, trailing, garbage, deeply nested, non-UTF-8. A decoded batch re-encodes to
the very same bytes (one encoding per value), which the mutation test leans on.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract import codec
from firmware_agent.contract.codec import (
    MAX_FIXES,
    MAX_JSON_BYTES,
    PACKED_FIX_SIZE,
    FixRecord,
    TelemetryBatch,
    at_wire_resolution,
    decode_ack,
    decode_batch,
    decode_record,
    decode_status,
    encode_ack,
    encode_batch,
    encode_record,
    encode_status,
    fix_record,
    is_historical,
    pack_fix,
    unpack_fix,
)
from firmware_agent.contract.errors import CodecError, ContractError
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.topics import (
    DOWNLINK_KINDS,
    STREAM_KINDS,
    STREAMS,
    Topic,
    downlink_topic,
    parse_topic,
    shared_subscriptions,
    status_topic,
    stream_topic,
    uplink_topic,
    valid_device_id,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def rec(
    t: datetime = T0,
    lat: float = 48.1372081,
    lon: float = 11.5756033,
    *,
    speed_mps: float | None = 8.42,
    course_deg: float | None = 87.3,
    hdop: float | None = 0.9,
    sats: int | None = 11,
    mode: int = 3,
) -> FixRecord:
    return FixRecord(
        time=t,
        lat=lat,
        lon=lon,
        mode=mode,
        speed_mps=speed_mps,
        course_deg=course_deg,
        hdop=hdop,
        sats=sats,
    )


def drive(n: int, *, first_seq: int = 100, step_s: float = 5.0) -> list[tuple[int, FixRecord]]:
    return [
        (
            first_seq + i,
            rec(T0 + timedelta(seconds=step_s * i), 48.1372 + 0.0004 * i, 11.5756 - 0.0003 * i),
        )
        for i in range(n)
    ]


def varint(n: int) -> bytes:
    """An independent LEB128 writer, to craft payloads by hand."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def zz(n: int) -> bytes:
    return varint(2 * n if n >= 0 else -2 * n - 1)


def header(device: bytes = b"van-7", first: int = 10, span: int = 5, n: int = 1) -> bytes:
    return b"FT\x01\x00" + varint(len(device)) + device + varint(first) + varint(span) + varint(n)


def fix_bytes(dseq: int = 0, dt: int = 1_795_000_000_000, dlat: int = 0, dlon: int = 0) -> bytes:
    # speed, course, hdop, sats stored + 1; mode 3
    return varint(dseq) + zz(dt) + zz(dlat) + zz(dlon) + b"\x01\x01\x01\x01\x03"


# --- Strategies -----------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59, 999_000),
    timezones=st.just(UTC),
)


def finite(lo: float | None = None, hi: float | None = None) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


records = st.builds(
    FixRecord,
    time=times,
    lat=finite(-90, 90),
    lon=finite(-180, 180),
    mode=st.integers(0, 3),
    speed_mps=st.none() | finite(0, 655.34),
    course_deg=st.none() | finite(-1000, 1000),
    hdop=st.none() | finite(0, 6553.4),
    sats=st.none() | st.integers(0, 254),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[tuple[int, FixRecord]], int, bool]:
    first_seq = draw(st.integers(1, 2**40))
    recs = draw(st.lists(records, max_size=20))
    gaps = draw(st.lists(st.integers(1, 1000), min_size=len(recs), max_size=len(recs)))
    seq = first_seq + draw(st.integers(0, 3))
    fixes = []
    for r, gap in zip(recs, gaps, strict=True):
        fixes.append((seq, r))
        seq += gap
    last_seq = (fixes[-1][0] if fixes else first_seq) + draw(st.integers(0, 5))
    return first_seq, fixes, last_seq, draw(st.booleans())


device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | finite() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


# --- Fix records and the packed form --------------------------------------------------------


def test_fix_record_of_a_fix_and_of_fixes_without_time_or_position() -> None:
    fix = Fix(
        time=T0,
        tod_s=32400.0,
        lat=-33.8688,
        lon=151.2093,
        speed_mps=3.2,
        course_deg=271.5,
        mode=FixMode.FIX_3D,
        hdop=1.3,
        sats_used=8,
    )
    assert fix_record(fix) == rec(T0, -33.8688, 151.2093, speed_mps=3.2, course_deg=271.5,
                                  hdop=1.3, sats=8)  # fmt: skip
    assert fix_record(fix._replace(time=None)) is None
    assert fix_record(fix._replace(lat=None, lon=None)) is None
    assert fix_record(fix._replace(lat=91.0)) is None
    assert fix_record(fix._replace(time=datetime(1969, 12, 31, tzinfo=UTC))) is None
    # What the contract cannot carry becomes unknown instead of failing to encode later.
    odd = fix_record(fix._replace(speed_mps=900.0, hdop=99_999.0, sats_used=300))
    assert odd is not None
    assert (odd.speed_mps, odd.hdop, odd.sats) == (None, None, None)
    bare = fix_record(Fix(time=T0, tod_s=0.0, lat=1.0, lon=2.0))
    assert bare == FixRecord(time=T0, lat=1.0, lon=2.0, mode=0)
    assert bare is not None
    assert unpack_fix(pack_fix(bare)) == bare


@given(records)
def test_packed_fix_is_24_bytes_and_lossless_at_wire_resolution(r: FixRecord) -> None:
    packed = pack_fix(r)
    assert len(packed) == PACKED_FIX_SIZE <= 24
    q = unpack_fix(packed)
    assert q == at_wire_resolution(r)
    assert pack_fix(q) == packed
    assert at_wire_resolution(q) == q
    # Within half a unit of the wire resolution of what went in.
    assert abs((q.time - r.time).total_seconds()) <= 0.0005
    assert abs(q.lat - r.lat) <= 0.5e-7 + 1e-12
    assert abs(q.lon - r.lon) <= 0.5e-7 + 1e-12
    assert q.time.tzinfo is UTC
    for got, want, unit in ((q.speed_mps, r.speed_mps, 0.01), (q.hdop, r.hdop, 0.1)):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert abs(got - want) <= unit / 2 + 1e-9
    if r.course_deg is None:
        assert q.course_deg is None
    else:
        assert q.course_deg is not None
        assert 0 <= q.course_deg < 360
        assert abs((q.course_deg - r.course_deg + 180) % 360 - 180) <= 0.05 + 1e-9


def test_unpack_rejects_wrong_sizes_and_out_of_range_values() -> None:
    good = pack_fix(rec())
    for data in (b"", good[:-1], good + b"\x00"):
        with pytest.raises(CodecError, match="packed fix"):
            unpack_fix(data)
    layout = struct.Struct("<qiiHHHBB")
    bad = [
        (-1, 0, 0, 0, 0, 0, 0, 3),  # before 1970
        (0, 900_000_001, 0, 0, 0, 0, 0, 3),
        (0, 0, -1_800_000_001, 0, 0, 0, 0, 3),
        (0, 0, 0, 0, 3601, 0, 0, 3),  # course 360.0
        (0, 0, 0, 0, 0, 0, 0, 4),  # mode
    ]
    for values in bad:
        with pytest.raises(CodecError):
            unpack_fix(layout.pack(*values))


def test_encoders_refuse_values_the_contract_cannot_carry() -> None:
    bad = [
        rec(datetime(2026, 11, 21, 9, 0)),  # naive
        rec(datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
        rec(lat=90.1),
        rec(lon=-180.5),
        rec(lat=math.nan),
        rec(speed_mps=-1.0),
        rec(speed_mps=655.36),
        rec(course_deg=math.inf),
        rec(hdop=7000.0),
        rec(sats=255),
        rec(sats=-1),
        rec(mode=4),
    ]
    for r in bad:
        with pytest.raises(CodecError):
            pack_fix(r)
        with pytest.raises(CodecError):
            encode_batch("van-7", 1, [(1, r)], historical=False)


def test_negative_coordinates_date_line_course_wrap_and_unknowns() -> None:
    fixes = [
        (1, rec(T0, -33.8688, -70.6693, course_deg=359.96)),  # rounds to 360.0: north, 0.0
        (2, rec(T0 + timedelta(seconds=1), -89.9999999, 179.9999999, course_deg=-0.06)),
        (3, rec(T0 + timedelta(seconds=2), -89.9999998, -179.9999999, course_deg=720.0)),
        (
            4,
            rec(
                T0 + timedelta(seconds=3),
                0.0,
                -180.0,
                speed_mps=None,
                course_deg=None,
                hdop=None,
                sats=None,
                mode=0,
            ),
        ),
        (5, rec(T0 - timedelta(seconds=30), 90.0, 180.0)),  # a clock step back
    ]
    batch = decode_batch(encode_batch("van-7", 1, fixes, historical=True))
    got = [r for _, r in batch.fixes]
    assert [r.course_deg for r in got] == [0.0, 359.9, 0.0, None, 87.3]
    assert [(r.lat, r.lon) for r in got] == [
        (-33.8688, -70.6693),
        (-89.9999999, 179.9999999),
        (-89.9999998, -179.9999999),
        (0.0, -180.0),
        (90.0, 180.0),
    ]
    assert got[3] == FixRecord(time=T0 + timedelta(seconds=3), lat=0.0, lon=-180.0, mode=0)
    assert got[4].time == T0 - timedelta(seconds=30)
    assert batch.historical is True


# --- Telemetry batches ----------------------------------------------------------------------


@given(device_ids, batches())
def test_batch_round_trip_at_wire_resolution(
    device_id: str, b: tuple[int, list[tuple[int, FixRecord]], int, bool]
) -> None:
    first_seq, fixes, last_seq, historical = b
    payload = encode_batch(device_id, first_seq, fixes, historical=historical, last_seq=last_seq)
    batch = decode_batch(payload)
    assert batch == TelemetryBatch(
        device_id=device_id,
        first_seq=first_seq,
        last_seq=last_seq,
        historical=historical,
        fixes=tuple((seq, at_wire_resolution(r)) for seq, r in fixes),
    )
    again = encode_batch(
        batch.device_id, batch.first_seq, batch.fixes, historical=historical, last_seq=last_seq
    )
    assert again == payload
    doc = batch.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert [f["seq"] for f in doc["fixes"]] == [seq for seq, _ in fixes]


def test_batch_layout_is_the_documented_one() -> None:
    # docs/telemetry-batch.md walks through exactly this payload.
    fixes = [
        (11, rec(T0, 48.1372, 11.5756, speed_mps=10.0, course_deg=90.0, hdop=0.9, sats=9)),
        (
            12,
            rec(
                T0 + timedelta(seconds=5),
                48.1372,
                11.5763,
                speed_mps=10.0,
                course_deg=90.0,
                hdop=0.9,
                sats=9,
            ),
        ),
    ]
    payload = encode_batch("van-7", 10, fixes, historical=False)
    t0_ms = int(T0.timestamp() * 1000)
    expected = (
        header(first=10, span=2, n=2)
        + varint(1) + zz(t0_ms) + zz(481_372_000) + zz(115_756_000)
        + varint(1001) + varint(901) + varint(10) + varint(10) + varint(3)
        + varint(1) + zz(5000) + zz(0) + zz(7000)
        + varint(1001) + varint(901) + varint(10) + varint(10) + varint(3)
    )  # fmt: skip
    assert payload == expected
    assert payload.hex() == (
        "465401000576616e2d370a020201"
        "80eaabd5bf68c09d89cb03c0afb26ee90785070a0a03"
        "01904e00b06de90785070a0a03"
    )


def test_typical_driving_batch_is_compact() -> None:
    payload = encode_batch("van-0007", 1_000_000, drive(60, first_seq=1_000_000), historical=False)
    assert len(payload) / 60 < 20


def test_every_truncation_and_any_trailing_byte_is_an_error() -> None:
    payload = encode_batch("van-7", 100, drive(6), historical=False)
    decode_batch(payload)
    for n in range(len(payload)):
        with pytest.raises(CodecError):
            decode_batch(payload[:n])
    for extra in (b"\x00", b"\x01", payload):
        with pytest.raises(CodecError, match="trailing"):
            decode_batch(payload + extra)


@given(st.binary(max_size=300))
def test_garbage_only_raises_codec_error(data: bytes) -> None:
    for payload in (data, b"FT\x01\x00" + data, header(n=1) + data):
        try:
            batch = decode_batch(payload)
        except CodecError:
            continue
        assert encode_batch(
            batch.device_id,
            batch.first_seq,
            batch.fixes,
            historical=batch.historical,
            last_seq=batch.last_seq,
        ) == bytes(payload)


@given(st.data())
def test_any_mutation_of_a_valid_batch_is_an_error_or_its_own_encoding(data: st.DataObject) -> None:
    payload = bytearray(encode_batch("van-7", 100, drive(4), historical=False, last_seq=110))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        batch = decode_batch(bytes(payload))
    except CodecError:
        return
    # Decoded: then it is exactly the canonical encoding of what it says.
    again = encode_batch(
        batch.device_id,
        batch.first_seq,
        batch.fixes,
        historical=batch.historical,
        last_seq=batch.last_seq,
    )
    assert again == bytes(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated header"),
        (b"XT\x01\x00", "bad magic"),
        (b"FT\x02\x00", "version 2"),
        (b"FT\x01\x02", "unknown flag"),
        (b"FT\x01\x00\x00", "device_id length 0"),
        (b"FT\x01\x00" + varint(65) + b"a" * 65, "device_id length 65"),
        (header(device=b"van 7"), "bad device id"),
        (header(device=b"-van"), "bad device id"),
        (header(device=b"v\xc3\xa4n"), "not ASCII"),
        (header(first=0), "first_seq 0"),
        (header(first=2**63 - 1, span=1), "last_seq"),
        (header(n=MAX_FIXES + 1), "fixes cannot fit"),
        (header(n=2) + fix_bytes(), "cannot fit"),
        (header(n=1) + b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10"),
        (header(n=1) + b"\x80\x00" + fix_bytes()[1:], "overlong"),
        (header(span=5) + fix_bytes(dseq=6), "beyond last_seq"),
        (header(n=2) + fix_bytes() + fix_bytes(dseq=0, dt=1000), "not strictly increasing"),
        (header() + fix_bytes(dt=-1), "time"),
        (header() + fix_bytes(dt=253_402_300_800_000), "time"),
        (header() + fix_bytes(dlat=900_000_001), "lat"),
        (header() + fix_bytes(dlon=-1_800_000_001), "lon"),
        (header() + fix_bytes()[:-5] + b"\x01\xa2\x1c\x01\x01\x03", "course"),  # 3618
        (header() + fix_bytes()[:-1] + b"\x04", "mode"),
    ],
)
def test_malformed_batches_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_batch(payload)


def test_decode_accepts_bytes_likes_and_refuses_text() -> None:
    payload = encode_batch("van-7", 100, drive(2), historical=False)
    assert decode_batch(bytearray(payload)) == decode_batch(memoryview(payload)) is not None
    with pytest.raises(CodecError, match="must be bytes"):
        decode_batch(payload.hex())  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="at most"):
        decode_batch(b"FT\x01\x00" + bytes(codec.MAX_BATCH_BYTES))


def test_seq_rules_when_encoding() -> None:
    fixes = drive(3, first_seq=10)
    assert decode_batch(encode_batch("van-7", 8, fixes, historical=False)).last_seq == 12
    cases: list[tuple[int, list[tuple[int, FixRecord]], int | None, str]] = [
        (11, fixes, None, "not strictly increasing"),  # first fix before first_seq
        (10, fixes, 11, "not strictly increasing"),  # last fix after last_seq
        (10, [fixes[0], fixes[0]], None, "not strictly increasing"),
        (10, [fixes[1], fixes[0]], 20, "not strictly increasing"),
        (10, [], None, "needs last_seq"),
        (10, fixes, 9, "last_seq 9 < first_seq"),
        (0, fixes, None, "first_seq 0"),
        (2**63, fixes, None, "first_seq"),
    ]
    for first_seq, fx, last_seq, message in cases:
        with pytest.raises(CodecError, match=message):
            encode_batch("van-7", first_seq, fx, historical=False, last_seq=last_seq)
    with pytest.raises(CodecError, match="bad device id"):
        encode_batch("van/7", 10, fixes, historical=False)
    with pytest.raises(CodecError, match="at most"):
        encode_batch("van-7", 1, drive(MAX_FIXES + 1, first_seq=1, step_s=1), historical=False)
    # An empty batch acknowledges a thinned-out range.
    empty = decode_batch(encode_batch("van-7", 10, [], historical=False, last_seq=20))
    assert (empty.first_seq, empty.last_seq, empty.fixes) == (10, 20, ())


def test_to_json_is_the_documented_form() -> None:
    batch = decode_batch(encode_batch("van-7", 99, drive(1), historical=False))
    assert batch.to_json() == {
        "v": 1,
        "device_id": "van-7",
        "first_seq": 99,
        "last_seq": 100,
        "historical": False,
        "fixes": [
            {
                "seq": 100,
                "time": "2026-11-21T09:00:00.000Z",
                "lat": 48.1372,
                "lon": 11.5756,
                "speed_mps": 8.42,
                "course_deg": 87.3,
                "hdop": 0.9,
                "sats": 11,
                "mode": 3,
            }
        ],
    }


# --- JSON envelopes -------------------------------------------------------------------------

ARRIVAL = {
    "type": "arrival",
    "time": "2026-11-21T08:14:03.000Z",
    "stop_id": "S001",
    "detected_at": "2026-11-21T08:14:31.000Z",
    "lat": 48.1372,
    "lon": 11.5756,
    "visit": 1,
    "confirmed_by": "dwell",
}


def envelope(**changes: Any) -> bytes:
    obj: dict[str, Any] = {
        "v": 1,
        "device_id": "van-7",
        "stream": "events",
        "seq": 17,
        "historical": False,
        "sent_at": "2026-11-21T09:00:03.000Z",
        "record": ARRIVAL,
    }
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_record_envelope_round_trip_and_exact_form() -> None:
    payload = encode_record("van-7", "events", 17, ARRIVAL, historical=False, sent_at=T0)
    assert json.loads(payload) == {
        "v": 1,
        "device_id": "van-7",
        "stream": "events",
        "seq": 17,
        "historical": False,
        "sent_at": "2026-11-21T09:00:00.000Z",
        "record": ARRIVAL,
    }
    env = decode_record(payload, stream="events")
    assert (env.device_id, env.stream, env.seq, env.historical) == ("van-7", "events", 17, False)
    assert env.sent_at == T0
    assert env.record == ARRIVAL
    assert env.to_json() == json.loads(payload)
    with pytest.raises(CodecError, match="sent on the pod topic"):
        decode_record(payload, stream="pod")


@given(
    device_ids,
    st.integers(1, 2**63 - 1),
    st.booleans(),
    st.dictionaries(st.text().filter(lambda k: k not in {"type", "time"}), json_values, max_size=5),
    st.sampled_from(["arrival", "halt", "scan_rejected", "eta", "pod"]),
)
def test_record_envelopes_round_trip(
    device_id: str, seq: int, historical: bool, extra: dict[str, Any], kind: str
) -> None:
    record = {"type": kind, "time": "2026-11-21T08:14:03.000Z", **extra}
    stream = "pod" if kind == "pod" else "events"
    sent_at = T0 + timedelta(microseconds=seq % 1_000_000)
    payload = encode_record(device_id, stream, seq, record, historical=historical, sent_at=sent_at)
    env = decode_record(payload)
    assert env.record == json.loads(json.dumps(record))
    assert env.seq == seq
    assert env.sent_at == sent_at.replace(microsecond=sent_at.microsecond // 1000 * 1000)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "invalid JSON"),
        (b"[]", "not a JSON object"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8"),
        ("{}".encode("utf-16"), "not UTF-8"),
        (b'{"a":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "invalid JSON"),  # busts the stack
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),
        (b'{"v":1,"v":1}', "duplicate key"),
        (envelope(v=2), "version 2"),
        (envelope(v=True), "version True"),
        (envelope(v=1.0), "version 1.0"),
        (envelope(seq=0), "seq 0"),
        (envelope(seq=True), "seq must be an integer"),
        (envelope(seq=2**63), "out of range"),
        (envelope(seq=...), "missing \\['seq'\\]"),
        (envelope(extra=1), "unknown keys"),
        (envelope(device_id="van 7"), "bad device id"),
        (envelope(device_id=7), "bad device id"),
        (envelope(historical=0), "true or false"),
        (envelope(stream="telemetry"), "stream"),
        (envelope(sent_at="2026-11-21T09:00:03"), "ISO 8601 UTC"),
        (envelope(sent_at="2026-11-21T09:00:03+01:00"), "ISO 8601 UTC"),
        (envelope(sent_at="2026-02-30T09:00:03Z"), "no such time"),
        (envelope(sent_at="\uff12026-11-21T09:00:03Z"), "ISO 8601 UTC"),  # a wide digit
        (envelope(record=[]), "must be an object"),
        (envelope(record={"time": "2026-11-21T09:00:03Z"}), "no type"),
        (envelope(record={**ARRIVAL, "time": None}), "record time"),
        (envelope(record={**ARRIVAL, "type": "pod"}), "does not belong on events"),
        (envelope(record={**ARRIVAL, "type": "telemetry"}), "does not belong"),
        (envelope(stream="pod"), "does not belong on pod"),
        (envelope(record={**ARRIVAL, "raw": "\ud800"}), "lone surrogate"),
        (envelope(record={**ARRIVAL, "x": float("nan")}).replace(b"NaN", b"NaN"), "NaN"),
        (envelope(record={**ARRIVAL, "x": 1}).replace(b'"x": 1', b'"x": 1e400'), "out of range"),
        (envelope(record={**ARRIVAL, "x": 1}).replace(b'"x": 1', b'"x": ' + b"1" * 5000), "JSON"),
        (b'{"pad":"' + b"x" * MAX_JSON_BYTES + b'"}', "at most"),
    ],
)
def test_malformed_envelopes_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_record(payload)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_garbage_only_raises_codec_error(payload: bytes) -> None:
    for decode in (decode_record, decode_ack, decode_status):
        with contextlib.suppress(CodecError):
            decode(payload)


def test_encode_record_refuses_what_would_not_decode() -> None:
    good: dict[str, Any] = {"historical": False, "sent_at": T0}
    with pytest.raises(CodecError, match="cannot encode"):
        encode_record("van-7", "events", 1, {**ARRIVAL, "at": T0}, **good)
    with pytest.raises(CodecError, match="cannot encode"):
        encode_record("van-7", "events", 1, {**ARRIVAL, "x": math.inf}, **good)
    with pytest.raises(CodecError, match="does not belong"):
        encode_record("van-7", "pod", 1, ARRIVAL, **good)
    with pytest.raises(CodecError, match="seq"):
        encode_record("van-7", "events", 0, ARRIVAL, **good)
    with pytest.raises(CodecError, match="UTC-aware"):
        encode_record(
            "van-7", "events", 1, ARRIVAL, historical=False, sent_at=T0.replace(tzinfo=None)
        )
    with pytest.raises(CodecError, match="at most"):
        encode_record("van-7", "events", 1, {**ARRIVAL, "raw": "x" * MAX_JSON_BYTES}, **good)


def test_ack_round_trip_and_errors() -> None:
    payload = encode_ack("van-7", {"telemetry": 1200, "events": 17, "pod": 0}, time=T0)
    assert json.loads(payload) == {
        "v": 1,
        "device_id": "van-7",
        "acks": {"telemetry": 1200, "events": 17, "pod": 0},
        "time": "2026-11-21T09:00:00.000Z",
    }
    ack = decode_ack(payload)
    assert ack.acks == {"telemetry": 1200, "events": 17, "pod": 0}
    assert ack.time == T0
    assert ack.to_json() == json.loads(payload)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "non-empty"),
        ({"status": 1}, "unknown stream"),
        ({"pod": -1}, "integer"),
        ({"pod": 1.5}, "integer"),
        ({"pod": True}, "integer"),
    ]
    for acks, message in cases:
        with pytest.raises(CodecError, match=message):
            encode_ack("van-7", acks, time=T0)
        with pytest.raises(CodecError, match=message):
            decode_ack(json.dumps({**json.loads(payload), "acks": acks}).encode())
    with pytest.raises(CodecError, match="missing"):
        decode_ack(b'{"v":1,"device_id":"van-7","acks":{"pod":1}}')


def test_status_birth_and_will() -> None:
    will = encode_status("van-7", "offline")
    assert json.loads(will) == {"v": 1, "device_id": "van-7", "state": "offline"}
    status = decode_status(will)
    assert (status.state, status.time, status.health) == ("offline", None, {})
    birth = encode_status("van-7", "online", time=T0, health={"outbox_records": 3})
    status = decode_status(birth)
    assert (status.state, status.time, status.health) == ("online", T0, {"outbox_records": 3})
    assert status.to_json() == json.loads(birth)
    with pytest.raises(CodecError, match="state"):
        encode_status("van-7", "sleeping")
    with pytest.raises(CodecError, match="status time"):
        decode_status(b'{"v":1,"device_id":"van-7","state":"online","time":null}')
    with pytest.raises(CodecError, match="health"):
        decode_status(b'{"v":1,"device_id":"van-7","state":"online","health":[]}')


def test_historical_means_more_than_60_s_late() -> None:
    assert not is_historical(T0, T0 + timedelta(seconds=60))
    assert is_historical(T0, T0 + timedelta(seconds=60, milliseconds=1))


def test_codec_error_is_a_contract_error_and_a_value_error() -> None:
    assert issubclass(CodecError, ContractError)
    assert issubclass(CodecError, ValueError)


# --- Topics ---------------------------------------------------------------------------------


def test_topics_are_built_and_parsed_back() -> None:
    assert uplink_topic("van-7", "telemetry") == "fleet/v1/van-7/telemetry"
    assert status_topic("van-7") == "fleet/v1/van-7/status"
    assert downlink_topic("van-7", "manifest") == "fleet/v1/van-7/manifest"
    assert stream_topic("van-7", "position") == "fleetstream/v1/van-7/position"
    built = (
        [uplink_topic("V.1_a-b", s) for s in STREAMS]
        + [status_topic("V.1_a-b")]
        + [downlink_topic("V.1_a-b", k) for k in DOWNLINK_KINDS]
        + [stream_topic("V.1_a-b", k) for k in STREAM_KINDS]
    )
    assert len(set(built)) == 3 + 1 + 4 + 3
    for topic in built:
        root, device_id, leaf = parse_topic(topic)
        assert f"{root}/{device_id}/{leaf}" == topic
        assert device_id == "V.1_a-b"
    assert parse_topic("fleet/v1/van-7/events") == Topic("fleet/v1", "van-7", "events")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fleet/v1/van-7",
        "fleet/v1/van-7/events/extra",
        "fleet/v1/van-7/events/",
        "/fleet/v1/van-7/events",
        "fleet/v2/van-7/events",
        "fleet/v1/+/events",
        "fleet/v1/#",
        "fleet/v1/van-7/#",
        "fleet/v1//events",
        "fleet/v1/van 7/events",
        "fleet/v1/-van/events",
        "fleet/v1/vän/events",
        "fleet/v1/" + "a" * 65 + "/events",
        "fleet/v1/van-7/position",
        "fleetstream/v1/van-7/events",
        "fleet/v1/van-7/Events",
        "$share/ingest/fleet/v1/+/events",
        "fleet/v1/van-7/events" + "x" * 200,
    ],
)
def test_malformed_topics_are_rejected(topic: str) -> None:
    with pytest.raises(CodecError, match=r"topic|device id"):
        parse_topic(topic)


def test_builders_refuse_bad_ids_and_leaves() -> None:
    with pytest.raises(CodecError, match="device id"):
        uplink_topic("van/7", "events")
    with pytest.raises(CodecError, match="device id"):
        status_topic("")
    with pytest.raises(CodecError, match="leaf"):
        uplink_topic("van-7", "status")
    with pytest.raises(CodecError, match="leaf"):
        downlink_topic("van-7", "telemetry")
    with pytest.raises(CodecError, match="leaf"):
        stream_topic("van-7", "events")
    with pytest.raises(CodecError, match="group"):
        shared_subscriptions("a/b")


@given(st.text(max_size=70) | device_ids)
def test_device_id_rule(text: str) -> None:
    expected = (
        0 < len(text) <= 64
        and text.isascii()
        and text[0].isalnum()
        and all(c.isalnum() or c in "_.-" for c in text)
    )
    assert valid_device_id(text) is expected
    if expected:
        assert parse_topic(uplink_topic(text, "pod")).device_id == text
    else:
        with pytest.raises(CodecError):
            uplink_topic(text, "pod")


def test_device_id_edge_cases() -> None:
    assert valid_device_id("a" * 64)
    assert not valid_device_id("a" * 65)
    assert not valid_device_id("van-7\n")
    assert not valid_device_id(7)
    assert not valid_device_id(None)


def test_shared_subscriptions() -> None:
    assert shared_subscriptions() == [
        "$share/ingest/fleet/v1/+/telemetry",
        "$share/ingest/fleet/v1/+/events",
        "$share/ingest/fleet/v1/+/pod",
        "$share/ingest/fleet/v1/+/status",
    ]
    assert shared_subscriptions("g2")[0] == "$share/g2/fleet/v1/+/telemetry"


@given(device_ids, batches())
def test_every_decodable_batch_fits_the_telemetry_schema(
    device_id: str, b: tuple[int, list[tuple[int, FixRecord]], int, bool]
) -> None:
    # Ingest validates only a batch's header against the schema (cloud_ingest/verify.py):
    # this is the premise that makes that safe. Every fix a decoder rebuilds from the
    # range-checked wire integers lies inside the schema's bounds, edges included.
    from firmware_agent.contract import schema  # noqa: PLC0415 (the ingest side's contract)

    first_seq, fixes, last_seq, historical = b
    payload = encode_batch(device_id, first_seq, fixes, historical=historical, last_seq=last_seq)
    schema.validate("telemetry-batch", decode_batch(payload).to_json())
