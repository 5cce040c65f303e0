"""The JSON envelopes: events and PODs up, ``status`` up (retained), ``ack`` down.

An event or a POD travels as one record per message on ``fleet/v1/{device_id}/events``
or ``.../pod``::

    {"v":1,"device_id":"van-7","stream":"events","seq":41,"historical":false,
     "sent_at":"2026-11-21T09:14:05.000Z","record":{"type":"arrival",...}}

:func:`frame_record` writes it around the record's stored bytes (the record's JSON,
:func:`.records.encode_record`) without parsing them; :func:`decode_envelope` reads it
back, the record still as JSON (:attr:`RecordEnvelope.record`) so that a consumer can
check it against its schema, and :meth:`RecordEnvelope.typed` decodes that into the
record's class (:mod:`.records`). ``ack`` (:func:`encode_ack`) and ``status``
(:func:`encode_status`) are small JSON objects of their own.

Every decoder raises :class:`~.errors.CodecError` for anything malformed and nothing
else; every encoder raises it for values the contract cannot carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.records import EventRecord, PodRecord, decode_event
from firmware_agent.contract.times import format_utc, parse_utc
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, check_device_id
from firmware_agent.contract.wirejson import MAX_JSON_BYTES, Payload

VERSION: Final = 1
EVENT_STREAMS: Final = ("events", "pod")
STATES: Final = ("online", "offline")
# The signed sequence report in a status (:mod:`.seqreport`): about 400 characters.
MAX_SEQS_CHARS: Final = 2048
# What the events stream must not carry: PODs have their own stream, telemetry too.
_NOT_EVENTS = frozenset({"pod", "telemetry"})
_ENVELOPE_KEYS = frozenset({"v", "device_id", "stream", "seq", "historical", "sent_at", "record"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordEnvelope:
    """One event or POD as sent on ``fleet/v1/{device_id}/{stream}``; ``record`` is its
    JSON object (``type`` and a valid ``time`` checked), :meth:`typed` its record."""

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

    def typed(self) -> EventRecord | PodRecord:
        """The record as its class; :class:`CodecError` if it is not one of them."""
        if self.stream == "pod":
            return PodRecord.from_json(self.record)
        return decode_event(self.record)


def frame_record(
    device_id: str,
    stream: str,
    seq: int,
    record: bytes,
    *,
    historical: bool,
    sent_at: datetime,
) -> bytes:
    """The envelope of one stored ``events`` or ``pod`` record (``record``: its JSON
    bytes as :func:`.records.encode_record` wrote them), the same bytes as encoding the
    whole object as JSON: written around ``record`` without parsing it."""
    check_device_id(device_id)
    if stream not in EVENT_STREAMS:
        raise CodecError(f"record envelope: stream {stream!r:.40}, want one of {EVENT_STREAMS}")
    _check_seq(seq, "record envelope seq")
    if not isinstance(sent_at, datetime) or sent_at.tzinfo is None:
        raise CodecError(f"sent_at must be a UTC-aware datetime, not {sent_at!r}")
    if not record.startswith(b'{"type":'):
        raise CodecError("record envelope: the record is not a stored record's JSON")
    # device_id and stream match patterns without quotes or escapes: no JSON escaping.
    payload = b"".join(
        (
            f'{{"v":{VERSION},"device_id":"{device_id}","stream":"{stream}","seq":{seq},'
            f'"historical":{"true" if historical else "false"},'
            f'"sent_at":"{format_utc(sent_at)}","record":'.encode("ascii"),
            record,
            b"}",
        )
    )
    if len(payload) > MAX_JSON_BYTES:
        raise CodecError(f"record envelope: {len(payload)} bytes, at most {MAX_JSON_BYTES}")
    return payload


def decode_envelope(payload: Payload, *, stream: str | None = None) -> RecordEnvelope:
    """The envelope in ``payload``; with ``stream`` (the topic's leaf) it must match."""
    what = "record envelope"
    obj = wirejson.loads(payload, what)
    _keys(obj, what, _ENVELOPE_KEYS)
    _version(obj, what)
    env_stream = obj["stream"]
    if env_stream not in EVENT_STREAMS:
        raise CodecError(f"{what}: stream {env_stream!r:.40}, want one of {EVENT_STREAMS}")
    record = obj["record"]
    if not isinstance(record, dict):
        raise CodecError(f"{what}: record must be an object")
    kind = record.get("type")
    if not isinstance(kind, str) or not kind:
        raise CodecError(f"{what}: record has no type")
    belongs = kind == "pod" if env_stream == "pod" else kind not in _NOT_EVENTS
    if not belongs:
        raise CodecError(f"{what}: a {kind!r:.40} record does not belong on {env_stream}")
    _time(record.get("time"), "record time")
    if stream is not None and env_stream != stream:
        raise CodecError(f"{what}: stream {env_stream!r} sent on the {stream} topic")
    return RecordEnvelope(
        device_id=_device_id(obj["device_id"]),
        stream=env_stream,
        seq=_seq(obj["seq"], f"{what} seq"),
        historical=_bool(obj["historical"], f"{what} historical"),
        sent_at=_time(obj["sent_at"], f"{what} sent_at"),
        record=record,
    )


# --- ack and status -------------------------------------------------------------------------


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
    """The retained birth (``online``) or last will (``offline``, usually no time).

    ``seqs``: the van's signed sequence report (:mod:`.seqreport`), a compact JWS, as
    sent: verifying it needs the device's key, which is ingest's business."""

    device_id: str
    state: str
    time: datetime | None = None
    health: dict[str, Any] = field(default_factory=dict)
    seqs: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "device_id": self.device_id, "state": self.state}
        if self.time is not None:
            out["time"] = format_utc(self.time)
        if self.health:
            out["health"] = dict(self.health)
        if self.seqs is not None:
            out["seqs"] = self.seqs
        return out


def encode_ack(device_id: str, acks: Mapping[str, int], *, time: datetime) -> bytes:
    """The ``ack`` payload: ``acks`` maps streams to their highest contiguous stored seq."""
    if not isinstance(time, datetime) or time.tzinfo is None:
        raise CodecError(f"ack time must be a UTC-aware datetime, not {time!r}")
    obj = {"v": VERSION, "device_id": device_id, "acks": dict(acks), "time": format_utc(time)}
    _ack(obj)
    return wirejson.dumps(obj, "ack")


def decode_ack(payload: Payload) -> Ack:
    return _ack(wirejson.loads(payload, "ack"))


def encode_status(
    device_id: str,
    state: str,
    *,
    time: datetime | None = None,
    health: Mapping[str, Any] | None = None,
    seqs: str | None = None,
) -> bytes:
    """The retained ``status`` payload; the last will is ``encode_status(id, "offline")``.
    ``seqs``: the van's signed sequence report (:func:`.seqreport.sign_report`)."""
    obj: dict[str, Any] = {"v": VERSION, "device_id": device_id, "state": state}
    if time is not None:
        if not isinstance(time, datetime) or time.tzinfo is None:
            raise CodecError(f"status time must be a UTC-aware datetime, not {time!r}")
        obj["time"] = format_utc(time)
    if health:
        obj["health"] = dict(health)
    if seqs is not None:
        obj["seqs"] = seqs
    payload = wirejson.dumps(obj, "status")
    _status(obj)
    return payload


def decode_status(payload: Payload) -> Status:
    return _status(wirejson.loads(payload, "status"))


# --- Checks shared by encoders and decoders -------------------------------------------------


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
    _keys(obj, "status", {"v", "device_id", "state"}, optional={"time", "health", "seqs"})
    _version(obj, "status")
    state = obj["state"]
    if state not in STATES:
        raise CodecError(f"status: state {state!r:.40}, want one of {STATES}")
    health = obj.get("health", {})
    if not isinstance(health, dict):
        raise CodecError("status: health must be an object")
    seqs = obj.get("seqs")
    if seqs is not None and (not isinstance(seqs, str) or len(seqs) > MAX_SEQS_CHARS):
        raise CodecError(f"status: seqs must be a string of at most {MAX_SEQS_CHARS} characters")
    return Status(
        device_id=_device_id(obj["device_id"]),
        state=state,
        time=_time(obj["time"], "status time") if "time" in obj else None,
        health=health,
        seqs=seqs,
    )


def _keys(
    obj: dict[str, Any],
    what: str,
    required: frozenset[str] | set[str],
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
    return check_device_id(value)


def _time(value: object, what: str) -> datetime:
    parsed = parse_utc(value)
    if parsed is None:
        raise CodecError(f"{what} must be an ISO 8601 UTC time, not {value!r:.40}")
    return parsed
