"""The contract on the wire: telemetry points and batches, envelopes, acks, status, topics.

Exact round trips at wire resolution, and hostile input: every decoder must answer a
payload with a value or a CodecError, whatever the bytes: truncated, trailing, garbage,
deeply nested, non-UTF-8. A decoded batch re-frames to the very same bytes (one encoding
per value), which the mutation test leans on. The typed records themselves are
tests/test_contract_records.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract import telemetry, wirejson
from firmware_agent.contract.envelope import (
    decode_ack,
    decode_envelope,
    decode_status,
    encode_ack,
    encode_status,
    frame_record,
)
from firmware_agent.contract.errors import CodecError, ContractError
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.records import (
    STORED_POINT_SIZE,
    STORED_POINT_SIZE_V1,
    Arrival,
    TelemetryPoint,
    decode_point,
    encode_point,
    encode_record,
)
from firmware_agent.contract.telemetry import (
    MAX_FIXES,
    TelemetryBatch,
    decode_batch,
    encode_batch,
    frame_batch,
    is_historical,
)
from firmware_agent.contract.times import format_utc, parse_utc
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
from firmware_agent.contract.wirejson import MAX_JSON_BYTES

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def rec(
    t: datetime = T0,
    lat: float = 48.1372081,
    lon: float = 11.5756033,
    *,
    alt_m: float | None = 519.4,
    speed_mps: float | None = 8.42,
    course_deg: float | None = 87.3,
    mode: int = 3,
    quality: int | None = 1,
    hdop: float | None = 0.9,
    sats_used: int | None = 11,
) -> TelemetryPoint:
    return TelemetryPoint(
        time=t,
        lat=lat,
        lon=lon,
        alt_m=alt_m,
        speed_mps=speed_mps,
        course_deg=course_deg,
        mode=mode,
        quality=quality,
        hdop=hdop,
        sats_used=sats_used,
    )


def at_wire_resolution(point: TelemetryPoint) -> TelemetryPoint:
    return decode_point(encode_point(point))


def drive(n: int, *, first_seq: int = 100, step_s: float = 5.0) -> list[tuple[int, TelemetryPoint]]:
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


def header(
    device: bytes = b"van-7", first: int = 10, span: int = 5, n: int = 1, version: int = 2
) -> bytes:
    return (
        b"FT" + bytes([version, 0]) + varint(len(device)) + device
        + varint(first) + varint(span) + varint(n)
    )  # fmt: skip


def fix_bytes(dseq: int = 0, dt: int = 1_795_000_000_000, dlat: int = 0, dlon: int = 0) -> bytes:
    # speed, course, hdop, sats 0 (stored + 1); mode 3; quality and altitude unknown (0)
    return varint(dseq) + zz(dt) + zz(dlat) + zz(dlon) + b"\x01\x01\x01\x01\x03\x00\x00"


def fix_bytes_v1(dseq: int = 0, dt: int = 1_795_000_000_000, dlat: int = 0, dlon: int = 0) -> bytes:
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
    TelemetryPoint,
    time=times,
    lat=finite(-90, 90),
    lon=finite(-180, 180),
    alt_m=st.none() | finite(-100_000, 100_000),
    speed_mps=st.none() | finite(0, 655.34),
    course_deg=st.none() | finite(-1000, 1000),
    mode=st.integers(0, 3),
    quality=st.none() | st.integers(0, 254),
    hdop=st.none() | finite(0, 6553.4),
    sats_used=st.none() | st.integers(0, 254),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[tuple[int, TelemetryPoint]], int, bool]:
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


# --- Telemetry points and their stored form --------------------------------------------------


def test_the_point_of_a_fix_and_of_fixes_without_time_or_position() -> None:
    fix = Fix(
        time=T0,
        tod_s=32400.0,
        lat=-33.8688,
        lon=151.2093,
        speed_mps=3.2,
        course_deg=271.5,
        alt_m=58.3,
        mode=FixMode.FIX_3D,
        quality=2,
        hdop=1.3,
        pdop=2.1,
        vdop=1.7,
        sats_used=8,
        sats_view=14,
        talker="GN",
    )
    assert TelemetryPoint.from_fix(fix) == rec(
        T0, -33.8688, 151.2093, alt_m=58.3, speed_mps=3.2, course_deg=271.5, quality=2,
        hdop=1.3, sats_used=8,
    )  # fmt: skip
    assert TelemetryPoint.from_fix(fix._replace(time=None)) is None
    assert TelemetryPoint.from_fix(fix._replace(lat=None, lon=None)) is None
    assert TelemetryPoint.from_fix(fix._replace(lat=91.0)) is None
    assert TelemetryPoint.from_fix(fix._replace(time=datetime(1969, 12, 31, tzinfo=UTC))) is None
    # What the contract cannot carry becomes unknown instead of failing to encode later.
    odd = TelemetryPoint.from_fix(
        fix._replace(speed_mps=900.0, hdop=99_999.0, sats_used=300, alt_m=1e6, quality=999)
    )
    assert odd is not None
    assert (odd.speed_mps, odd.hdop, odd.sats_used, odd.alt_m, odd.quality) == (None,) * 5
    bare = TelemetryPoint.from_fix(Fix(time=T0, tod_s=0.0, lat=1.0, lon=2.0))
    assert bare == TelemetryPoint(time=T0, lat=1.0, lon=2.0, mode=0)
    assert bare is not None
    assert decode_point(encode_point(bare)) == bare
    # A point is at wire resolution from the start: what the van stores is what decodes.
    # Its time is cut to the millisecond as every time of the contract is (format_utc):
    # a point and an event made from the same fix say the same millisecond.
    fine = TelemetryPoint.from_fix(fix._replace(time=T0 + timedelta(microseconds=1999)))
    assert fine is not None
    assert fine.time == T0 + timedelta(milliseconds=1)
    assert format_utc(fine.time) == format_utc(T0 + timedelta(microseconds=1999))
    assert decode_point(encode_point(fine)) == fine


@given(records)
def test_the_stored_point_is_lossless_at_wire_resolution(r: TelemetryPoint) -> None:
    stored = encode_point(r)
    assert len(stored) == STORED_POINT_SIZE == 29
    q = decode_point(stored)
    assert q == at_wire_resolution(r)
    assert encode_point(q) == stored
    assert at_wire_resolution(q) == q
    assert TelemetryPoint.from_json(q.to_json()) == q
    # The fix a point stands for makes that point again (ingest trains on stored points).
    assert TelemetryPoint.from_fix(q.to_fix()) == q
    # Within half a unit of the wire resolution of what went in; the time cut to the
    # millisecond below it, as format_utc cuts every time of the contract.
    assert timedelta(0) <= r.time - q.time < timedelta(milliseconds=1)
    assert abs(q.lat - r.lat) <= 0.5e-7 + 1e-12
    assert abs(q.lon - r.lon) <= 0.5e-7 + 1e-12
    assert q.time.tzinfo is UTC
    for got, want, unit in (
        (q.speed_mps, r.speed_mps, 0.01),
        (q.hdop, r.hdop, 0.1),
        (q.alt_m, r.alt_m, 0.1),
    ):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert abs(got - want) <= unit / 2 + 1e-9
    assert (q.mode, q.quality, q.sats_used) == (r.mode, r.quality, r.sats_used)
    if r.course_deg is None:
        assert q.course_deg is None
    else:
        assert q.course_deg is not None
        assert 0 <= q.course_deg < 360
        assert abs((q.course_deg - r.course_deg + 180) % 360 - 180) <= 0.05 + 1e-9


def test_a_version_1_stored_point_still_reads() -> None:
    """An outbox filled before the upgrade holds 24-byte points: they are sent as they
    are, with altitude and quality unknown."""
    v1 = struct.Struct("<qiiHHHBB").pack(
        int(T0.timestamp() * 1000), 481_372_081, 115_756_033, 843, 874, 10, 12, 3
    )
    assert len(v1) == STORED_POINT_SIZE_V1
    assert decode_point(v1) == rec(alt_m=None, quality=None)
    framed = decode_batch(
        frame_batch("van-7", 5, [(5, v1), (6, encode_point(rec()))], historical=False)
    )
    assert [p for _, p in framed.points] == [rec(alt_m=None, quality=None), rec()]


def test_stored_points_of_wrong_sizes_or_out_of_range_values_are_refused() -> None:
    good = encode_point(rec())
    for data in (b"", good[:-1], good + b"\x00"):
        with pytest.raises(CodecError, match="stored point"):
            decode_point(data)
    layout = struct.Struct("<qiiiHHHBBB")
    no_alt = -(2**31)
    bad = [
        (-1, 0, 0, no_alt, 0, 0, 0, 0, 3, 0),  # before 1970
        (0, 900_000_001, 0, no_alt, 0, 0, 0, 0, 3, 0),
        (0, 0, -1_800_000_001, no_alt, 0, 0, 0, 0, 3, 0),
        (0, 0, 0, 1_000_001, 0, 0, 0, 0, 3, 0),  # 100 km up
        (0, 0, 0, no_alt, 0, 3601, 0, 0, 3, 0),  # course 360.0
        (0, 0, 0, no_alt, 0, 0, 0, 0, 4, 0),  # mode
    ]
    for values in bad:
        with pytest.raises(CodecError):
            decode_point(layout.pack(*values))
        with pytest.raises(CodecError):
            frame_batch("van-7", 1, [(1, layout.pack(*values))], historical=False)


def test_encoders_refuse_values_the_contract_cannot_carry() -> None:
    bad = [
        rec(datetime(2026, 11, 21, 9, 0)),  # naive
        rec(datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
        rec(lat=90.1),
        rec(lon=-180.5),
        rec(lat=math.nan),
        rec(alt_m=100_000.1),
        rec(alt_m=math.inf),
        rec(speed_mps=-1.0),
        rec(speed_mps=655.36),
        rec(course_deg=math.inf),
        rec(hdop=7000.0),
        rec(sats_used=255),
        rec(sats_used=-1),
        rec(quality=255),
        rec(mode=4),
    ]
    for r in bad:
        with pytest.raises(CodecError):
            encode_point(r)
        with pytest.raises(CodecError):
            encode_record(r)
        with pytest.raises(CodecError):
            encode_batch("van-7", 1, [(1, r)], historical=False)


def test_negative_coordinates_date_line_course_wrap_and_unknowns() -> None:
    fixes = [
        (1, rec(T0, -33.8688, -70.6693, course_deg=359.96)),  # rounds to 360.0: north, 0.0
        (
            2,
            rec(
                T0 + timedelta(seconds=1), -89.9999999, 179.9999999, course_deg=-0.06, alt_m=-430.5
            ),
        ),
        (3, rec(T0 + timedelta(seconds=2), -89.9999998, -179.9999999, course_deg=720.0)),
        (
            4,
            TelemetryPoint(time=T0 + timedelta(seconds=3), lat=0.0, lon=-180.0, mode=0),
        ),
        (5, rec(T0 - timedelta(seconds=30), 90.0, 180.0, alt_m=8848.9)),  # a clock step back
    ]
    batch = decode_batch(encode_batch("van-7", 1, fixes, historical=True))
    got = [r for _, r in batch.points]
    assert [r.course_deg for r in got] == [0.0, 359.9, 0.0, None, 87.3]
    assert [r.alt_m for r in got] == [519.4, -430.5, 519.4, None, 8848.9]
    assert [(r.lat, r.lon) for r in got] == [
        (-33.8688, -70.6693),
        (-89.9999999, 179.9999999),
        (-89.9999998, -179.9999999),
        (0.0, -180.0),
        (90.0, 180.0),
    ]
    assert got[3] == TelemetryPoint(time=T0 + timedelta(seconds=3), lat=0.0, lon=-180.0, mode=0)
    assert got[4].time == T0 - timedelta(seconds=30)
    assert batch.historical is True


# --- Telemetry batches ----------------------------------------------------------------------


@given(device_ids, batches())
def test_batch_round_trip_at_wire_resolution(
    device_id: str, b: tuple[int, list[tuple[int, TelemetryPoint]], int, bool]
) -> None:
    first_seq, fixes, last_seq, historical = b
    payload = encode_batch(device_id, first_seq, fixes, historical=historical, last_seq=last_seq)
    batch = decode_batch(payload)
    assert batch == TelemetryBatch(
        device_id=device_id,
        first_seq=first_seq,
        last_seq=last_seq,
        historical=historical,
        points=tuple((seq, at_wire_resolution(r)) for seq, r in fixes),
    )
    again = encode_batch(
        batch.device_id, batch.first_seq, batch.points, historical=historical, last_seq=last_seq
    )
    assert again == payload
    doc = batch.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert [f["seq"] for f in doc["fixes"]] == [seq for seq, _ in fixes]


def test_batch_layout_is_the_documented_one() -> None:
    # docs/telemetry-batch.md walks through exactly this payload.
    kw: dict[str, Any] = {"speed_mps": 10.0, "course_deg": 90.0, "hdop": 0.9, "sats_used": 9}
    fixes = [
        (11, rec(T0, 48.1372, 11.5756, alt_m=519.4, quality=1, **kw)),
        (12, rec(T0 + timedelta(seconds=5), 48.1372, 11.5763, alt_m=519.6, quality=1, **kw)),
    ]
    payload = encode_batch("van-7", 10, fixes, historical=False)
    t0_ms = int(T0.timestamp() * 1000)
    expected = (
        header(first=10, span=2, n=2)
        + varint(1) + zz(t0_ms) + zz(481_372_000) + zz(115_756_000)
        + varint(1001) + varint(901) + varint(10) + varint(10) + varint(3)
        + varint(2) + varint(2 * 5194 + 1)
        + varint(1) + zz(5000) + zz(0) + zz(7000)
        + varint(1001) + varint(901) + varint(10) + varint(10) + varint(3)
        + varint(2) + varint(2 * 2 + 1)
    )  # fmt: skip
    assert payload == expected
    assert payload.hex() == (
        "465402000576616e2d370a020201"
        "80eaabd5bf68c09d89cb03c0afb26ee90785070a0a03029551"
        "01904e00b06de90785070a0a030205"
    )


def test_a_version_1_batch_still_decodes() -> None:
    """Vans not yet upgraded send version 1: no altitude, no fix quality."""
    t0_ms = int(T0.timestamp() * 1000)
    payload = header(first=10, span=1, n=1, version=1) + fix_bytes_v1(
        dseq=1, dt=t0_ms, dlat=481_372_000, dlon=115_756_000
    )
    batch = decode_batch(payload)
    assert batch.version == 1
    zeros: dict[str, Any] = {"speed_mps": 0.0, "course_deg": 0.0, "hdop": 0.0, "sats_used": 0}
    point = TelemetryPoint(time=T0, lat=48.1372, lon=11.5756, mode=3, **zeros)
    assert batch.points == ((11, point),)
    # What ingest stores of it re-frames in this version's layout, the same point.
    again = decode_batch(encode_batch("van-7", 10, batch.points, historical=False))
    assert (again.version, again.points) == (2, batch.points)
    with pytest.raises(CodecError, match="trailing"):
        decode_batch(payload + b"\x00\x00")


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
    for payload in (data, b"FT\x02\x00" + data, b"FT\x01\x00" + data, header(n=1) + data):
        if payload[:3] == b"FT\x01":
            with contextlib.suppress(CodecError):
                decode_batch(payload)  # version 1 decodes or fails, and frames as version 2
            continue
        try:
            batch = decode_batch(payload)
        except CodecError:
            continue
        assert encode_batch(
            batch.device_id,
            batch.first_seq,
            batch.points,
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
        batch.points,
        historical=batch.historical,
        last_seq=batch.last_seq,
    )
    assert again == bytes(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated header"),
        (b"XT\x01\x00", "bad magic"),
        (b"FT\x03\x00", "version 3"),
        (b"FT\x00\x00", "version 0"),
        (b"FT\x02\x04", "unknown flag"),
        (b"FT\x02\x02", "signed, but 4 bytes"),
        (b"FT\x02\x00\x00", "device_id length 0"),
        (b"FT\x02\x00" + varint(65) + b"a" * 65, "device_id length 65"),
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
        (header() + fix_bytes()[:-7] + b"\x01\xa2\x1c\x01\x01\x03\x00\x00", "course"),  # 3618
        (header() + fix_bytes()[:-3] + b"\x04\x00\x00", "mode"),
        (header() + fix_bytes()[:-2] + b"\x80\x02\x00", "quality"),  # 256
        (header() + fix_bytes()[:-1] + varint(2 * 1_000_001 + 1), "alt"),
        (header(version=1) + fix_bytes(), "trailing"),
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
        decode_batch(b"FT\x02\x00" + bytes(telemetry.MAX_BATCH_BYTES))


def test_seq_rules_when_encoding() -> None:
    fixes = drive(3, first_seq=10)
    assert decode_batch(encode_batch("van-7", 8, fixes, historical=False)).last_seq == 12
    cases: list[tuple[int, list[tuple[int, TelemetryPoint]], int | None, str]] = [
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
    assert (empty.first_seq, empty.last_seq, empty.points) == (10, 20, ())


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
                "alt_m": 519.4,
                "speed_mps": 8.42,
                "course_deg": 87.3,
                "mode": 3,
                "quality": 1,
                "hdop": 0.9,
                "sats_used": 11,
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


def stored(record: dict[str, Any]) -> bytes:
    """A record's stored bytes, as the outbox holds them."""
    return wirejson.dumps(record, "record")


def test_record_envelope_round_trip_and_exact_form() -> None:
    payload = frame_record("van-7", "events", 17, stored(ARRIVAL), historical=False, sent_at=T0)
    expected = {
        "v": 1,
        "device_id": "van-7",
        "stream": "events",
        "seq": 17,
        "historical": False,
        "sent_at": "2026-11-21T09:00:00.000Z",
        "record": ARRIVAL,
    }
    assert json.loads(payload) == expected
    # Framed around the stored bytes: the same bytes as encoding the whole object.
    assert payload == wirejson.dumps(expected, "envelope")
    env = decode_envelope(payload, stream="events")
    assert (env.device_id, env.stream, env.seq, env.historical) == ("van-7", "events", 17, False)
    assert env.sent_at == T0
    assert env.record == ARRIVAL
    assert env.to_json() == json.loads(payload)
    assert env.typed() == Arrival.from_json(ARRIVAL)
    with pytest.raises(CodecError, match="sent on the pod topic"):
        decode_envelope(payload, stream="pod")


def test_a_typed_record_frames_and_decodes_to_itself() -> None:
    arrival = Arrival.from_json(ARRIVAL)
    payload = frame_record(
        "van-7", "events", 3, encode_record(arrival), historical=True, sent_at=T0
    )
    env = decode_envelope(payload)
    assert env.historical is True
    assert env.typed() == arrival
    assert env.record == arrival.to_json()


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
    try:
        body = stored(record)
    except CodecError:
        return  # a value JSON cannot carry: the outbox never holds it
    payload = frame_record(device_id, stream, seq, body, historical=historical, sent_at=sent_at)
    env = decode_envelope(payload)
    assert env.record == json.loads(body)
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
        (envelope(sent_at="2026-02-30T09:00:03Z"), "ISO 8601 UTC"),
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
        decode_envelope(payload)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_garbage_only_raises_codec_error(payload: bytes) -> None:
    for decode in (decode_envelope, decode_ack, decode_status):
        with contextlib.suppress(CodecError):
            decode(payload)


def test_framing_refuses_what_would_not_decode() -> None:
    good: dict[str, Any] = {"historical": False, "sent_at": T0}
    body = stored(ARRIVAL)
    with pytest.raises(CodecError, match="stream"):
        frame_record("van-7", "telemetry", 1, body, **good)
    with pytest.raises(CodecError, match="seq"):
        frame_record("van-7", "events", 0, body, **good)
    with pytest.raises(CodecError, match="device id"):
        frame_record("van 7", "events", 1, body, **good)
    with pytest.raises(CodecError, match="UTC-aware"):
        frame_record("van-7", "events", 1, body, historical=False, sent_at=T0.replace(tzinfo=None))
    with pytest.raises(CodecError, match="not a stored record"):
        frame_record("van-7", "events", 1, b'{"time":"x"}', **good)
    with pytest.raises(CodecError, match="at most"):
        frame_record(
            "van-7", "events", 1, stored({**ARRIVAL, "raw": "x" * (MAX_JSON_BYTES - 250)}), **good
        )
    with pytest.raises(CodecError, match="cannot encode"):
        stored({**ARRIVAL, "x": math.inf})
    with pytest.raises(CodecError, match=r"lone surrogate|cannot encode"):
        stored({**ARRIVAL, "raw": "\ud800"})


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
    device_id: str, b: tuple[int, list[tuple[int, TelemetryPoint]], int, bool]
) -> None:
    # Ingest validates only a batch's header against the schema (cloud_ingest/verify.py):
    # this is the premise that makes that safe. Every fix a decoder rebuilds from the
    # range-checked wire integers lies inside the schema's bounds, edges included.
    from firmware_agent.contract import schema  # noqa: PLC0415 (the ingest side's contract)

    first_seq, fixes, last_seq, historical = b
    payload = encode_batch(device_id, first_seq, fixes, historical=historical, last_seq=last_seq)
    schema.validate("telemetry-batch", decode_batch(payload).to_json())


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_times_are_written_as_iso_8601_utc_to_the_millisecond(naive: datetime, offset: int) -> None:
    zone = timezone(timedelta(minutes=offset))
    try:
        t = naive.replace(tzinfo=zone)
        utc = t.astimezone(UTC)
    except OverflowError:  # an offset that moves the instant out of datetime's years
        return
    text = format_utc(t)
    assert text == utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert parse_utc(text) == utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    assert parse_utc(text.replace("Z", "+00:00")) == parse_utc(text)
    assert parse_utc(text).tzinfo is UTC  # type: ignore[union-attr]
