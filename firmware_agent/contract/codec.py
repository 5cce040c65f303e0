"""Payloads of the v1 MQTT contract, encoded and decoded with no I/O.

- Telemetry goes up as a compact binary batch of fixes (:func:`encode_batch`,
  :func:`decode_batch`; the layout is docs/telemetry-batch.md). A decoded batch's
  :meth:`TelemetryBatch.to_json` is what docs/schemas/telemetry-batch.schema.json
  describes.
- Events and PODs go up as one JSON record per message in an envelope
  (:func:`encode_record`, :func:`decode_record`); ``status`` (:func:`encode_status`)
  goes up retained; ``ack`` (:func:`encode_ack`) comes down.
- :func:`pack_fix` is the fixed-size storage form of one fix for the outbox.

Every value crosses the wire at one resolution: 1e-7 degree, 1 ms, 1 cm/s, 0.1 degree
of course and 0.1 of HDOP. Encoding quantizes to it (round half to even, as
:func:`round`); what decodes is exactly representable at it, so ``decode(encode(x))``
is ``x`` at wire resolution and ``encode(decode(payload)) == payload`` for every payload
that decodes (each value has one encoding: no overlong varints, no stray flag bits).

Every decoder raises :class:`~firmware_agent.errors.CodecError` for anything malformed,
whatever the bytes, and nothing else; every encoder raises it for values the contract
cannot carry. A consumer catches that one error per message and drops the message.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import STREAMS, check_device_id

VERSION: Final = 1
MAGIC: Final = b"FT"
FLAG_HISTORICAL: Final = 0x01

# A record is historical when it was created more than this long before it was first
# sent (replayed after an outage): downstream never raises live alerts for it.
HISTORICAL_AFTER_S: Final = 60.0

# Bounds a decoder enforces before it allocates anything, whoever sent the bytes.
MAX_FIXES: Final = 4096  # per batch; over an hour of 1 Hz driving
MAX_BATCH_BYTES: Final = 256 * 1024  # 4096 fixes of the largest encoding fit
MAX_JSON_BYTES: Final = 64 * 1024  # an event or POD is well under 2 KiB
MAX_JSON_DEPTH: Final = 32
MAX_SEQ: Final = 2**63 - 1  # a signed 64-bit column in SQLite and PostgreSQL

_MIN_FIX_BYTES = 9  # nine varints of at least one byte each
_MAX_VARINT_BYTES = 10  # 70 bits; every field is range-checked after reading
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last datetime
_MAX_LAT_E7 = 900_000_000
_MAX_LON_E7 = 1_800_000_000
_COURSE_TENTHS = 3600
# Optional small fields are stored as value + 1 with 0 meaning unknown, in the batch
# and in the packed form alike, so both carry exactly the same ranges.
_MAX_U16_FIELD = 0xFFFF
_MAX_SATS_FIELD = 0xFF
_MAX_MODE = 3

# The wire's integers of one fix: ms, lat, lon, speed, course, hdop, sats, mode.
_Wire = tuple[int, int, int, int, int, int, int, int]
# time ms, lat e-7, lon e-7, speed, course, hdop, sats (each + 1, 0 = unknown), mode
_PACKED = struct.Struct("<qiiHHHBB")
PACKED_FIX_SIZE: Final = _PACKED.size

# What decoders take: an MQTT client hands over bytes or a bytearray (paho: bytes).
Payload = bytes | bytearray | memoryview

EVENT_STREAMS: Final = ("events", "pod")
STATES: Final = ("online", "offline")
# What the events stream must not carry: PODs have their own stream, telemetry too.
_NOT_EVENTS = frozenset({"pod", "telemetry"})

# As docs/schemas/defs.schema.json's utc (a test holds them equal). [0-9], not \d, which
# matches any Unicode digit in Python's re and only ASCII ones in ECMA-262.
_UTC_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)
UTC_PATTERN: Final = _UTC_TEXT.pattern


@dataclass(frozen=True, slots=True, kw_only=True)
class FixRecord:
    """One fix as telemetry carries it: a UTC time and a position, the rest optional.

    ``mode`` is gpsd's (:class:`~firmware_agent.contract.fix.FixMode`): 0 unknown, 1 no fix,
    2 2D, 3 3D. ``sats`` is the number of satellites used.
    """

    time: datetime
    lat: float
    lon: float
    mode: int
    speed_mps: float | None = None
    course_deg: float | None = None
    hdop: float | None = None
    sats: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The fix's fields as JSON values (``time`` as ISO 8601 UTC, milliseconds)."""
        return {
            "time": format_utc(self.time),
            "lat": self.lat,
            "lon": self.lon,
            "speed_mps": self.speed_mps,
            "course_deg": self.course_deg,
            "hdop": self.hdop,
            "sats": self.sats,
            "mode": self.mode,
        }


def fix_record(fix: Fix) -> FixRecord | None:
    """The telemetry record of ``fix``; ``None`` when it has no time or no position.

    A field the contract cannot carry (speed over 655 m/s, HDOP over 6553, more than
    254 satellites, a non-finite value) becomes unknown rather than failing later, so
    every record this returns encodes. A position out of range, or a time before 1970,
    is no position: ``None``.
    """
    t, lat, lon = fix.time, fix.lat, fix.lon
    if t is None or lat is None or lon is None or t.tzinfo is None:
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return None
    if not 0 <= _time_ms(t) <= _MAX_TIME_MS:
        return None
    speed, course, hdop, sats = fix.speed_mps, fix.course_deg, fix.hdop, fix.sats_used
    return FixRecord(
        time=t,
        lat=lat,
        lon=lon,
        mode=int(fix.mode) if 0 <= fix.mode <= _MAX_MODE else 0,
        speed_mps=speed if _fits(speed, 100, _MAX_U16_FIELD - 1) else None,
        course_deg=course if course is not None and math.isfinite(course) else None,
        hdop=hdop if _fits(hdop, 10, _MAX_U16_FIELD - 1) else None,
        sats=sats if sats is not None and 0 <= sats < _MAX_SATS_FIELD else None,
    )


def is_historical(created_at: datetime, first_sent_at: datetime) -> bool:
    """Whether a record created at ``created_at`` and first sent at ``first_sent_at`` is
    historical (more than :data:`HISTORICAL_AFTER_S` late)."""
    return (first_sent_at - created_at).total_seconds() > HISTORICAL_AFTER_S


# --- The packed storage form -------------------------------------------------------------


def pack_fix(rec: FixRecord) -> bytes:
    """``rec`` at wire resolution in :data:`PACKED_FIX_SIZE` (24) bytes, for the outbox.

    Layout (little-endian): i64 ms since the Unix epoch, i32 lat and i32 lon in 1e-7
    degree, u16 speed in cm/s, u16 course in 0.1 degree, u16 HDOP in 0.1, u8 satellites
    (each of these four stored + 1, 0 = unknown), u8 mode. :class:`CodecError` for a
    value out of range.
    """
    return _PACKED.pack(*_quantize(rec))


def unpack_fix(data: bytes) -> FixRecord:
    """The record :func:`pack_fix` stored; :class:`CodecError` if ``data`` is not one."""
    if len(data) != PACKED_FIX_SIZE:
        raise CodecError(f"packed fix: {len(data)} bytes, want {PACKED_FIX_SIZE}")
    ms, lat, lon, speed, course, hdop, sats, mode = _PACKED.unpack(data)
    return _dequantize((ms, lat, lon, speed, course, hdop, sats, mode))


def at_wire_resolution(rec: FixRecord) -> FixRecord:
    """``rec`` as it comes out of a batch or the outbox (quantized, course in [0, 360))."""
    return _dequantize(_quantize(rec))


# --- The telemetry batch -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryBatch:
    """A decoded batch: fixes ``(seq, record)`` covering ``first_seq..last_seq``.

    Sequence numbers in the range without a fix were thinned away by the outbox: they
    are covered (acknowledged by this batch), not missing.
    """

    device_id: str
    first_seq: int
    last_seq: int
    historical: bool
    fixes: tuple[tuple[int, FixRecord], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form docs/schemas/telemetry-batch.schema.json describes."""
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "historical": self.historical,
            "fixes": [{"seq": seq, **rec.to_json()} for seq, rec in self.fixes],
        }


def encode_batch(
    device_id: str,
    first_seq: int,
    fixes: Sequence[tuple[int, FixRecord]],
    *,
    historical: bool,
    last_seq: int | None = None,
) -> bytes:
    """The binary telemetry payload of ``fixes`` (docs/telemetry-batch.md).

    ``fixes`` are ``(seq, record)`` with strictly increasing seqs in
    ``first_seq..last_seq``; ``last_seq`` defaults to the last fix's seq (an empty batch,
    which only acknowledges a thinned-out range, must give it). Records are quantized to
    wire resolution. :class:`CodecError` for anything the format cannot carry.
    """
    check_device_id(device_id)
    if len(fixes) > MAX_FIXES:
        raise CodecError(f"batch of {len(fixes)} fixes: at most {MAX_FIXES}")
    if last_seq is None:
        if not fixes:
            raise CodecError("an empty batch needs last_seq")
        last_seq = fixes[-1][0]
    _check_seq(first_seq, "first_seq")
    _check_seq(last_seq, "last_seq")
    if last_seq < first_seq:
        raise CodecError(f"last_seq {last_seq} < first_seq {first_seq}")
    out = bytearray(MAGIC)
    out.append(VERSION)
    out.append(FLAG_HISTORICAL if historical else 0)
    name = device_id.encode("ascii")
    _put(out, len(name))
    out += name
    _put(out, first_seq)
    _put(out, last_seq - first_seq)
    _put(out, len(fixes))
    prev_seq, prev_ms, prev_lat, prev_lon = first_seq, 0, 0, 0
    for i, (seq, rec) in enumerate(fixes):
        _check_seq(seq, "fix seq")
        if seq > last_seq or seq < prev_seq or (i and seq == prev_seq):
            raise CodecError(
                f"fix {i}: seq {seq} not strictly increasing within {first_seq}..{last_seq}"
            )
        ms, lat, lon, speed, course, hdop, sats, mode = _quantize(rec)
        _put(out, seq - prev_seq)
        _put(out, _zigzag(ms - prev_ms))
        _put(out, _zigzag(lat - prev_lat))
        _put(out, _zigzag(lon - prev_lon))
        for value in (speed, course, hdop, sats, mode):
            _put(out, value)
        prev_seq, prev_ms, prev_lat, prev_lon = seq, ms, lat, lon
    return bytes(out)


def decode_batch(payload: Payload) -> TelemetryBatch:
    """The batch in ``payload``; :class:`CodecError` for anything else (see module doc)."""
    buf = _as_bytes(payload, "telemetry batch")
    if len(buf) > MAX_BATCH_BYTES:
        raise CodecError(f"telemetry batch: {len(buf)} bytes, at most {MAX_BATCH_BYTES}")
    if len(buf) < 4:
        raise CodecError(f"telemetry batch: truncated header ({len(buf)} bytes)")
    if buf[:2] != MAGIC:
        raise CodecError(f"telemetry batch: bad magic {buf[:2]!r}, want {MAGIC!r}")
    if buf[2] != VERSION:
        raise CodecError(f"telemetry batch: version {buf[2]}, this decoder reads {VERSION}")
    flags = buf[3]
    if flags & ~FLAG_HISTORICAL:
        raise CodecError(f"telemetry batch: unknown flag bits 0x{flags:02x}")
    r = _Reader(buf, 4)
    name_len = r.varint("device_id length")
    if not 1 <= name_len <= 64:
        raise CodecError(f"telemetry batch: device_id length {name_len}, want 1..64")
    device_id = _device_id(r.take(name_len, "device_id"))
    first_seq = r.varint("first_seq")
    _check_seq(first_seq, "first_seq")
    last_seq = first_seq + r.varint("last_seq - first_seq")
    _check_seq(last_seq, "last_seq")
    n = r.varint("fix count")
    if n > MAX_FIXES or n * _MIN_FIX_BYTES > r.remaining:
        raise CodecError(
            f"telemetry batch: {n} fixes cannot fit in the {r.remaining} bytes left "
            f"(at most {MAX_FIXES}, each at least {_MIN_FIX_BYTES} bytes)"
        )
    fixes: list[tuple[int, FixRecord]] = []
    seq, ms, lat, lon = first_seq, 0, 0, 0
    for i in range(n):
        step = r.varint("seq delta")
        if i and step == 0:
            raise CodecError(f"telemetry batch: fix {i}: seq not strictly increasing")
        seq += step
        if seq > last_seq:
            raise CodecError(f"telemetry batch: fix {i}: seq {seq} beyond last_seq {last_seq}")
        ms += _unzigzag(r.varint("dt_ms"))
        lat += _unzigzag(r.varint("dlat"))
        lon += _unzigzag(r.varint("dlon"))
        speed, course, hdop = r.varint("speed"), r.varint("course"), r.varint("hdop")
        sats, mode = r.varint("sats"), r.varint("mode")
        try:
            rec = _dequantize((ms, lat, lon, speed, course, hdop, sats, mode))
        except CodecError as err:
            raise CodecError(f"telemetry batch: fix {i} (seq {seq}): {err}") from None
        fixes.append((seq, rec))
    if r.remaining:
        raise CodecError(f"telemetry batch: {r.remaining} trailing bytes after {n} fixes")
    return TelemetryBatch(
        device_id=device_id,
        first_seq=first_seq,
        last_seq=last_seq,
        historical=bool(flags & FLAG_HISTORICAL),
        fixes=tuple(fixes),
    )


# --- JSON envelopes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordEnvelope:
    """One event or POD as sent on ``fleet/v1/{device_id}/{stream}``."""

    device_id: str
    stream: str
    seq: int
    historical: bool
    sent_at: datetime
    record: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "stream": self.stream,
            "seq": self.seq,
            "historical": self.historical,
            "sent_at": format_utc(self.sent_at),
            "record": self.record,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Ingest's cumulative receipt: per stream, every seq up to the value is stored."""

    device_id: str
    acks: dict[str, int]
    time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "acks": dict(self.acks),
            "time": format_utc(self.time),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """The retained birth (``online``) or last will (``offline``, usually no time)."""

    device_id: str
    state: str
    time: datetime | None = None
    health: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "device_id": self.device_id, "state": self.state}
        if self.time is not None:
            out["time"] = format_utc(self.time)
        if self.health:
            out["health"] = dict(self.health)
        return out


def encode_record(
    device_id: str,
    stream: str,
    seq: int,
    record: Mapping[str, Any],
    *,
    historical: bool,
    sent_at: datetime,
) -> bytes:
    """The JSON envelope of one ``events`` or ``pod`` record (a message of van.py)."""
    if not isinstance(sent_at, datetime) or sent_at.tzinfo is None:
        raise CodecError(f"sent_at must be a UTC-aware datetime, not {sent_at!r}")
    obj = {
        "v": VERSION,
        "device_id": device_id,
        "stream": stream,
        "seq": seq,
        "historical": historical,
        "sent_at": format_utc(sent_at),
        "record": dict(record),
    }
    payload = _dumps(obj, "record envelope")
    _record_envelope(obj)  # the decoder's checks: what encodes always decodes
    return payload


def decode_record(payload: Payload, *, stream: str | None = None) -> RecordEnvelope:
    """The envelope in ``payload``; with ``stream`` (the topic's leaf) it must match."""
    env = _record_envelope(_loads(payload, "record envelope"))
    if stream is not None and env.stream != stream:
        raise CodecError(f"record envelope: stream {env.stream!r} sent on the {stream} topic")
    return env


def encode_ack(device_id: str, acks: Mapping[str, int], *, time: datetime) -> bytes:
    """The ``ack`` payload: ``acks`` maps streams to their highest contiguous stored seq."""
    if not isinstance(time, datetime) or time.tzinfo is None:
        raise CodecError(f"ack time must be a UTC-aware datetime, not {time!r}")
    obj = {"v": VERSION, "device_id": device_id, "acks": dict(acks), "time": format_utc(time)}
    _ack(obj)
    return _dumps(obj, "ack")


def decode_ack(payload: Payload) -> Ack:
    return _ack(_loads(payload, "ack"))


def encode_status(
    device_id: str,
    state: str,
    *,
    time: datetime | None = None,
    health: Mapping[str, Any] | None = None,
) -> bytes:
    """The retained ``status`` payload; the last will is ``encode_status(id, "offline")``."""
    obj: dict[str, Any] = {"v": VERSION, "device_id": device_id, "state": state}
    if time is not None:
        if not isinstance(time, datetime) or time.tzinfo is None:
            raise CodecError(f"status time must be a UTC-aware datetime, not {time!r}")
        obj["time"] = format_utc(time)
    if health:
        obj["health"] = dict(health)
    payload = _dumps(obj, "status")
    _status(obj)
    return payload


def decode_status(payload: Payload) -> Status:
    return _status(_loads(payload, "status"))


# --- Checks shared by encoders and decoders -------------------------------------------------


def _record_envelope(obj: dict[str, Any]) -> RecordEnvelope:
    what = "record envelope"
    _keys(obj, what, {"v", "device_id", "stream", "seq", "historical", "sent_at", "record"})
    _version(obj, what)
    stream = obj["stream"]
    if stream not in EVENT_STREAMS:
        raise CodecError(f"{what}: stream {stream!r:.40}, want one of {EVENT_STREAMS}")
    record = obj["record"]
    if not isinstance(record, dict):
        raise CodecError(f"{what}: record must be an object")
    kind = record.get("type")
    if not isinstance(kind, str) or not kind:
        raise CodecError(f"{what}: record has no type")
    belongs = kind == "pod" if stream == "pod" else kind not in _NOT_EVENTS
    if not belongs:
        raise CodecError(f"{what}: a {kind!r:.40} record does not belong on {stream}")
    _time(record.get("time"), "record time")
    return RecordEnvelope(
        device_id=_device_id(obj["device_id"]),
        stream=stream,
        seq=_seq(obj["seq"], f"{what} seq"),
        historical=_bool(obj["historical"], f"{what} historical"),
        sent_at=_time(obj["sent_at"], f"{what} sent_at"),
        record=record,
    )


def _ack(obj: dict[str, Any]) -> Ack:
    _keys(obj, "ack", {"v", "device_id", "acks", "time"})
    _version(obj, "ack")
    acks = obj["acks"]
    if not isinstance(acks, dict) or not acks:
        raise CodecError("ack: acks must be a non-empty object")
    out: dict[str, int] = {}
    for stream, seq in acks.items():
        if stream not in STREAMS:
            raise CodecError(f"ack: unknown stream {stream!r:.40}, want one of {STREAMS}")
        if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
            raise CodecError(f"ack: {stream} must be an integer 0..{MAX_SEQ}, not {seq!r:.40}")
        out[stream] = seq
    return Ack(device_id=_device_id(obj["device_id"]), acks=out, time=_time(obj["time"], "ack"))


def _status(obj: dict[str, Any]) -> Status:
    _keys(obj, "status", {"v", "device_id", "state"}, optional={"time", "health"})
    _version(obj, "status")
    state = obj["state"]
    if state not in STATES:
        raise CodecError(f"status: state {state!r:.40}, want one of {STATES}")
    health = obj.get("health", {})
    if not isinstance(health, dict):
        raise CodecError("status: health must be an object")
    return Status(
        device_id=_device_id(obj["device_id"]),
        state=state,
        time=_time(obj["time"], "status time") if "time" in obj else None,
        health=health,
    )


def _keys(
    obj: dict[str, Any],
    what: str,
    required: set[str],
    optional: frozenset[str] | set[str] = frozenset(),
) -> None:
    missing = required - obj.keys()
    if missing:
        raise CodecError(f"{what}: missing {sorted(missing)}")
    extra = obj.keys() - required - optional
    if extra:
        raise CodecError(f"{what}: unknown keys {sorted(extra)[:5]!r:.120}")


def _version(obj: dict[str, Any], what: str) -> None:
    if not _is_int(obj["v"]) or obj["v"] != VERSION:
        raise CodecError(f"{what}: version {obj['v']!r:.20}, this decoder reads {VERSION}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seq(value: object, what: str) -> int:
    if not _is_int(value):
        raise CodecError(f"{what} must be an integer, not {value!r:.40}")
    assert isinstance(value, int)
    _check_seq(value, what)
    return value


def _check_seq(value: int, what: str) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_SEQ:
        raise CodecError(f"{what} {value!r:.40} out of range 1..{MAX_SEQ}")


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"{what} must be true or false, not {value!r:.40}")
    return value


def _device_id(value: object) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise CodecError(f"bad device id {value!r:.80}: not ASCII") from None
    return check_device_id(value)


def _time(value: object, what: str) -> datetime:
    """A UTC time in ISO 8601 (``...Z`` or ``...+00:00``), as an aware datetime."""
    if not isinstance(value, str) or _UTC_TEXT.fullmatch(value) is None:
        raise CodecError(f"{what} must be an ISO 8601 UTC time, not {value!r:.40}")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise CodecError(f"{what}: no such time {value!r}") from None


# --- JSON ----------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any], what: str) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        payload = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as err:
        # TypeError: a value JSON has no form for; ValueError: NaN or infinity, or a
        # lone surrogate (UnicodeEncodeError) that no UTF-8 consumer could read.
        raise CodecError(f"{what}: cannot encode: {err}") from None
    if len(payload) > MAX_JSON_BYTES:
        raise CodecError(f"{what}: {len(payload)} bytes, at most {MAX_JSON_BYTES}")
    _check_tree(obj, what)
    return payload


def _loads(payload: Payload, what: str) -> dict[str, Any]:
    buf = _as_bytes(payload, what)
    if len(buf) > MAX_JSON_BYTES:
        raise CodecError(f"{what}: {len(buf)} bytes, at most {MAX_JSON_BYTES}")
    try:
        # Decoded here, not by json.loads: it would guess UTF-16/32 from the first bytes.
        text = buf.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CodecError(f"{what}: not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError) as err:
        # ValueError: bad JSON, duplicate keys, NaN, overlong integers; RecursionError:
        # nesting deeper than the parser's stack.
        raise CodecError(f"{what}: invalid JSON: {str(err)[:200]}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: not a JSON object")
    _check_tree(obj, what)
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a repeated key: refuse the ambiguity.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _check_tree(obj: object, what: str) -> None:
    """Bounded nesting, and strings that re-encode as UTF-8 (no lone surrogates, which
    JSON escapes allow and PostgreSQL, among others, refuses)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, what)
        elif isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise CodecError(f"{what}: nested deeper than {MAX_JSON_DEPTH}")
            if isinstance(node, dict):
                for key, value in node.items():
                    _check_text(key, what)
                    stack.append((value, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _check_text(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CodecError(f"{what}: a string holds a lone surrogate") from None


# --- Binary helpers --------------------------------------------------------------------------


def _as_bytes(payload: object, what: str) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    raise CodecError(f"{what}: payload must be bytes, not {type(payload).__name__}")


class _Reader:
    """A cursor over ``buf`` whose reads raise :class:`CodecError` past the end."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise CodecError(f"telemetry batch: truncated in {what}")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def varint(self, what: str) -> int:
        """An unsigned LEB128 value in its shortest form."""
        buf, pos = self.buf, self.pos
        value = shift = 0
        for i in range(pos, min(pos + _MAX_VARINT_BYTES, len(buf))):
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and i > pos:
                    raise CodecError(f"telemetry batch: overlong varint in {what}")
                self.pos = i + 1
                return value
            shift += 7
        if len(buf) - pos < _MAX_VARINT_BYTES:
            raise CodecError(f"telemetry batch: truncated in {what}")
        raise CodecError(f"telemetry batch: varint longer than {_MAX_VARINT_BYTES} in {what}")


def _put(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


# --- Quantization ---------------------------------------------------------------------------


def _time_ms(t: datetime) -> int:
    # Integer arithmetic: a float of microseconds since 1970 is already 0.25 us coarse.
    d = t - _EPOCH
    us = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    return (us + 500) // 1000


def _fits(value: float | None, scale: int, limit: int) -> bool:
    return value is not None and math.isfinite(value) and 0 <= round(value * scale) <= limit


def _optional(value: float | None, scale: int, limit: int, what: str) -> int:
    """``round(value * scale) + 1``, 0 for ``None``; CodecError beyond ``limit``."""
    if value is None:
        return 0
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"{what} {value!r} is not a finite number")
    q = round(value * scale)
    if not 0 <= q < limit:
        raise CodecError(f"{what} {value!r} out of range 0..{(limit - 1) / scale}")
    return q + 1


def _quantize(rec: FixRecord) -> _Wire:
    """``rec`` as the wire's integers: ms, lat, lon, speed, course, hdop, sats, mode."""
    t = rec.time
    if not isinstance(t, datetime) or t.tzinfo is None:
        raise CodecError(f"fix time must be a UTC-aware datetime, not {t!r}")
    ms = _time_ms(t)
    if not 0 <= ms <= _MAX_TIME_MS:
        raise CodecError(f"fix time {t.isoformat()} before 1970 or after 9999")
    lat, lon = _coord(rec.lat, _MAX_LAT_E7, "lat"), _coord(rec.lon, _MAX_LON_E7, "lon")
    course = 0
    if rec.course_deg is not None:
        if not isinstance(rec.course_deg, int | float) or not math.isfinite(rec.course_deg):
            raise CodecError(f"course {rec.course_deg!r} is not a finite number")
        # An angle: 359.96 rounds to 360.0, which is north, 0.
        course = round(rec.course_deg * 10) % _COURSE_TENTHS + 1
    sats = rec.sats
    if sats is not None and (not _is_int(sats) or not 0 <= sats < _MAX_SATS_FIELD):
        raise CodecError(f"sats {sats!r} out of range 0..{_MAX_SATS_FIELD - 1}")
    if not _is_int(rec.mode) or not 0 <= rec.mode <= _MAX_MODE:
        raise CodecError(f"mode {rec.mode!r} out of range 0..{_MAX_MODE}")
    return (
        ms,
        lat,
        lon,
        _optional(rec.speed_mps, 100, _MAX_U16_FIELD, "speed_mps"),
        course,
        _optional(rec.hdop, 10, _MAX_U16_FIELD, "hdop"),
        0 if sats is None else sats + 1,
        int(rec.mode),
    )


def _coord(value: float, limit: int, what: str) -> int:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"{what} {value!r} is not a finite number")
    q = round(value * 1e7)
    if not -limit <= q <= limit:
        raise CodecError(f"{what} {value!r} out of range ±{limit // 10_000_000}")
    return q


def _dequantize(q: _Wire) -> FixRecord:
    ms, lat, lon, speed, course, hdop, sats, mode = q
    if not 0 <= ms <= _MAX_TIME_MS:
        raise CodecError(f"time {ms} ms since 1970 out of range")
    if not -_MAX_LAT_E7 <= lat <= _MAX_LAT_E7:
        raise CodecError(f"lat {lat / 1e7} out of range")
    if not -_MAX_LON_E7 <= lon <= _MAX_LON_E7:
        raise CodecError(f"lon {lon / 1e7} out of range")
    if speed > _MAX_U16_FIELD or course > _COURSE_TENTHS or hdop > _MAX_U16_FIELD:
        raise CodecError(f"speed {speed}, course {course} or hdop {hdop} out of range")
    if sats > _MAX_SATS_FIELD or not 0 <= mode <= _MAX_MODE:
        raise CodecError(f"sats {sats} or mode {mode} out of range")
    return FixRecord(
        time=_EPOCH + timedelta(milliseconds=ms),
        lat=lat / 1e7,
        lon=lon / 1e7,
        mode=mode,
        speed_mps=None if speed == 0 else (speed - 1) / 100,
        course_deg=None if course == 0 else (course - 1) / 10,
        hdop=None if hdop == 0 else (hdop - 1) / 10,
        sats=None if sats == 0 else sats - 1,
    )
