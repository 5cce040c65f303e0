"""The records a van publishes, typed: one class per kind, one encoder and one decoder.

Each record belongs to one stream (:data:`~.topics.STREAMS`) and keeps one shape from
the van's pipeline to ingest's stored row:

- ``telemetry``: :class:`TelemetryPoint`, one per fix the sampler selects.
- ``events``: :class:`Arrival`, :class:`Departure`, :class:`WindowMiss`,
  :class:`Halt`, :class:`HaltEnd`, :class:`Deviation`, :class:`DeviationEnd`,
  :class:`ScanRejected`, :class:`EtaUpdate`, :class:`LateRisk`, :class:`StopPassed`.
- ``pod``: :class:`PodRecord`, the signed POD (:mod:`.pod`) and the fields it mirrors.

The pipeline makes them; :func:`encode_record` turns one into the bytes the outbox
stores, which are its final bytes on the wire: the uplink frames them without parsing
them again (:func:`.telemetry.frame_batch`, :func:`.envelope.frame_record`); ingest
decodes a message back into the same classes (:func:`.telemetry.decode_batch`,
:func:`.envelope.decode_envelope`) and stores them as they are. ``to_json`` is the one
JSON encoder of a record and ``from_json`` its one decoder; the telemetry point's
binary form is :func:`encode_point` and :func:`decode_point`.

Values cross the wire at one resolution: times to the millisecond, coordinates to 1e-7
degree, metres and seconds of events to 0.1, the point's own resolutions below.
Encoding rounds to it, so ``from_json(r.to_json()).to_json() == r.to_json()``.

What a fix does not send
    A :class:`~.fix.Fix` has fields a point leaves behind, on purpose, said here only:
    ``pdop`` and ``vdop`` (HDOP is the accuracy figure a track needs; the others cost
    bytes on every fix for 3D work nobody downstream does), ``sats_view`` (satellites
    in view describe the sky, not the fix; ``sats_used`` does), ``talker`` (which
    constellation a receiver names is not a property of the position) and ``tod_s``
    (the decoder's time of day, which ``time`` contains). A fix without a time or a
    position is not sent at all: it places nothing.
"""

from __future__ import annotations

import math
import struct
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, Self, get_args, get_origin

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.outcomes import DELIVERED, Outcome
from firmware_agent.contract.times import format_utc, parse_utc
from firmware_agent.contract.topics import Stream

ScanSource = Literal["serial", "hid"]
SCAN_SOURCES: Final[tuple[ScanSource, ...]] = get_args(ScanSource)

# --- The field codec shared by every JSON record -----------------------------------------
#
# Written here rather than with a validation library: the van's base install stays
# small (pydantic is an ingest dependency), and the rules are few: a record's fields are
# times, text, integers, finite numbers (rounded to a field's resolution), booleans and
# a closed set of strings, any of them optional.

_Kind = Literal["time", "str", "int", "float", "bool", "choice"]
_REQUIRED: Final = object()


@dataclass(frozen=True, slots=True)
class _Spec:
    """One field's wire form: its kind, whether it may be None (and then whether the key
    is left out rather than written as null), its resolution, its allowed values."""

    name: str
    kind: _Kind
    optional: bool
    omit_none: bool
    ndigits: int | None
    choices: tuple[object, ...]
    # What a missing key decodes to (_REQUIRED: nothing, the key is required); a field
    # added to a record after v1 has one, so that records sent before still decode.
    absent: object


def _field_spec(name: str, hint: Any, metadata: Mapping[str, Any]) -> _Spec:
    optional = False
    if get_origin(hint) in (types.UnionType, typing.Union):
        members = [a for a in get_args(hint) if a is not type(None)]
        optional = len(members) < len(get_args(hint))
        if len(members) != 1:
            raise TypeError(f"{name}: one type (or None) per field")
        hint = members[0]
    choices: tuple[object, ...] = ()
    kind: _Kind
    if get_origin(hint) is Literal:
        kind, choices = "choice", get_args(hint)
    elif hint is datetime:
        kind = "time"
    elif hint in (str, int, float, bool):
        kind = hint.__name__
    else:
        raise TypeError(f"{name}: no wire form for {hint!r}")
    return _Spec(
        name,
        kind,
        optional,
        bool(metadata.get("omit_none", False)),
        metadata.get("ndigits"),
        choices,
        metadata.get("absent", _REQUIRED),
    )


# Per kind: encode a value (a CodecError names what is wrong), decode a JSON value, and
# bring a value to wire resolution (only times and rounded numbers have one; a value of
# the wrong type is left for the encoder to refuse). Chosen once per field, as a record
# is decoded at ingest for every message.


def _encode_time(spec: _Spec, value: Any, what: str) -> Any:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise CodecError(f"{what}.{spec.name} must be a UTC-aware datetime, not {value!r}")
    return format_utc(value)


def _encode_float(spec: _Spec, value: Any, what: str) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{what}.{spec.name} must be a number, not {value!r:.40}")
    if not wirejson.finite_number(value):
        raise CodecError(f"{what}.{spec.name} is not finite: {value!r:.40}")
    return float(value) if spec.ndigits is None else round(float(value), spec.ndigits)


def _encode_choice(spec: _Spec, value: Any, what: str) -> Any:
    if value not in spec.choices:
        raise CodecError(f"{what}.{spec.name} {value!r:.40} is not one of {spec.choices}")
    return int(value) if isinstance(value, int) else value


def _encode_as_is(spec: _Spec, value: Any, what: str) -> Any:
    return value


def _decode_time(spec: _Spec, value: object, what: str) -> Any:
    parsed = parse_utc(value)
    if parsed is None:
        raise CodecError(f"{what}.{spec.name} must be an ISO 8601 UTC time, not {value!r:.40}")
    return parsed


def _decode_choice(spec: _Spec, value: object, what: str) -> Any:
    if isinstance(value, bool) or value not in spec.choices:
        raise CodecError(f"{what}.{spec.name} {value!r:.40} is not one of {spec.choices}")
    return value


def _decode_float(spec: _Spec, value: object, what: str) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{what}.{spec.name} must be a number, not {value!r:.40}")
    if not wirejson.finite_number(value):
        raise CodecError(f"{what}.{spec.name} is not finite")
    return float(value)


def _decode_int(spec: _Spec, value: object, what: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{what}.{spec.name} must be an integer, not {value!r:.40}")
    return value


def _decode_bool(spec: _Spec, value: object, what: str) -> Any:
    if not isinstance(value, bool):
        raise CodecError(f"{what}.{spec.name} must be true or false, not {value!r:.40}")
    return value


def _decode_str(spec: _Spec, value: object, what: str) -> Any:
    if not isinstance(value, str):
        raise CodecError(f"{what}.{spec.name} must be a string, not {value!r:.40}")
    return value


def _normal_time(spec: _Spec, value: Any) -> Any:
    if not isinstance(value, datetime) or value.tzinfo is None:
        return value
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    cut = utc.microsecond % 1000
    return utc.replace(microsecond=utc.microsecond - cut) if cut else utc


def _normal_float(spec: _Spec, value: Any) -> Any:
    if wirejson.finite_number(value):
        assert spec.ndigits is not None
        rounded = round(float(value), spec.ndigits)
        return value if rounded == value and type(value) is float else rounded
    return value


_Coder = typing.Callable[[_Spec, Any, str], Any]
_ENCODERS: Final[dict[_Kind, _Coder]] = {
    "time": _encode_time,
    "float": _encode_float,
    "choice": _encode_choice,
    "int": _encode_as_is,
    "bool": _encode_as_is,
    "str": _encode_as_is,
}
_DECODERS: Final[dict[_Kind, _Coder]] = {
    "time": _decode_time,
    "float": _decode_float,
    "choice": _decode_choice,
    "int": _decode_int,
    "bool": _decode_bool,
    "str": _decode_str,
}


@dataclass(frozen=True, slots=True)
class _Codec:
    """A record class's field codec, built once from its type hints and metadata."""

    specs: tuple[_Spec, ...]
    names: frozenset[str]
    encoders: tuple[tuple[_Spec, _Coder], ...]
    decoders: tuple[tuple[_Spec, _Coder], ...]
    normalizers: tuple[tuple[_Spec, typing.Callable[[_Spec, Any], Any]], ...]


_CODECS: dict[type, _Codec] = {}


def _codec(cls: type) -> _Codec:
    codec = _CODECS.get(cls)
    if codec is None:
        hints = typing.get_type_hints(cls)
        specs = tuple(_field_spec(f.name, hints[f.name], f.metadata) for f in fields(cls))
        codec = _CODECS[cls] = _Codec(
            specs,
            frozenset(s.name for s in specs),
            tuple((s, _ENCODERS[s.kind]) for s in specs),
            tuple((s, _DECODERS[s.kind]) for s in specs),
            tuple(
                (s, _normal_time if s.kind == "time" else _normal_float)
                for s in specs
                if s.kind == "time" or (s.kind == "float" and s.ndigits is not None)
            ),
        )
    return codec


def at_resolution(record: object) -> None:
    """Bring ``record``'s times and rounded numbers to wire resolution, in place (a
    frozen dataclass's ``__post_init__`` calls it)."""
    for spec, normal in _codec(type(record)).normalizers:
        value = getattr(record, spec.name)
        fixed = normal(spec, value)  # ``value`` itself when it is at resolution
        if fixed is not value:
            object.__setattr__(record, spec.name, fixed)


def encode_fields(
    record: object, what: str, head: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``record``'s dataclass fields as JSON values, after ``head``."""
    out: dict[str, Any] = dict(head) if head else {}
    for spec, encode in _codec(type(record)).encoders:
        value = getattr(record, spec.name)
        if value is None:
            if not spec.optional:
                raise CodecError(f"{what}.{spec.name} is required")
            if not spec.omit_none:
                out[spec.name] = None
            continue
        out[spec.name] = encode(spec, value, what)
    return out


def decode_fields(
    cls: type, obj: Mapping[str, Any], what: str, *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` from a JSON object; :class:`CodecError` for
    a missing or mistyped field, or (unless it is in ``skip``) a key ``cls`` lacks."""
    codec = _codec(cls)
    if not codec.names.issuperset(obj.keys()):
        extra = obj.keys() - codec.names - skip
        if extra:
            raise CodecError(f"{what}: unknown keys {sorted(extra)[:5]!r:.120}")
    out: dict[str, Any] = {}
    for spec, decode in codec.decoders:
        value = obj.get(spec.name)
        if value is None:
            if spec.absent is not _REQUIRED and spec.name not in obj:
                out[spec.name] = spec.absent
                continue
            if not spec.optional:
                raise CodecError(f"{what}: {spec.name} is required")
            out[spec.name] = None
            continue
        out[spec.name] = decode(spec, value, what)
    return out


def wire(
    *, ndigits: int | None = None, omit_none: bool = False, absent: object = _REQUIRED
) -> dict[str, Any]:
    """A field's wire settings, as its dataclass metadata: ``ndigits`` its resolution (a
    number is rounded to that many decimals), ``omit_none`` whether None leaves the key
    out (else it is written as null), ``absent`` what a missing key decodes to (a field
    added after v1: what a record sent before it meant)."""
    return {"ndigits": ndigits, "omit_none": omit_none, "absent": absent}


_COORD: Final = wire(ndigits=7)
_TENTH: Final = wire(ndigits=1)
_OMITTED: Final = wire(omit_none=True)
_OMITTED_TENTH: Final = wire(ndigits=1, omit_none=True)
_OMITTED_HUNDREDTH: Final = wire(ndigits=2, omit_none=True)


# --- Event and POD records -----------------------------------------------------------------


class JsonRecord:
    """A record of the events or pod stream: ``type`` names its kind on the wire.

    A record holds its values at wire resolution from the moment it is made (times cut
    to the millisecond in UTC, numbers rounded to their field's resolution), so the
    record the van keeps is equal to the one ingest decodes. Values of the wrong type
    are left as they are, for the encoder to refuse by name.
    """

    __slots__ = ()
    type: ClassVar[str]
    stream: ClassVar[Stream]

    def __post_init__(self) -> None:
        at_resolution(self)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON object the wire carries (``type`` first)."""
        return encode_fields(self, self.type, {"type": self.type})

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        """The record a JSON object holds; :class:`CodecError` if it is not one."""
        if obj.get("type") != cls.type:
            raise CodecError(f"{cls.type} record: type is {obj.get('type')!r:.40}")
        return cls(**decode_fields(cls, obj, cls.type, skip=frozenset({"type"})))


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival(JsonRecord):
    """The van stopped at a stop: ``time`` is the first fix inside the fence on the
    approach that led to the stop, ``detected_at`` when the van became sure of it;
    ``visit`` 1 for the first visit; ``route_id`` the manifest's route."""

    type: ClassVar[str] = "arrival"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    detected_at: datetime
    lat: float = field(metadata=_COORD)
    lon: float = field(metadata=_COORD)
    visit: int
    confirmed_by: Literal["dwell", "scan"]
    route_id: str | None = field(default=None, metadata=_OMITTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Departure(JsonRecord):
    """The van left a stop: ``time`` is the first fix outside the radius."""

    type: ClassVar[str] = "departure"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    detected_at: datetime
    arrived_at: datetime
    dwell_s: float = field(metadata=_TENTH)
    visit: int
    route_id: str | None = field(default=None, metadata=_OMITTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowMiss(JsonRecord):
    """An arrival outside the stop's promised window (``kind`` early or late)."""

    type: ClassVar[str] = "window"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    kind: Literal["early", "late"]
    by_s: float = field(metadata=_TENTH)
    window_start: datetime
    window_end: datetime
    route_id: str | None = field(default=None, metadata=_OMITTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class Halt(JsonRecord):
    """Stopped longer than the threshold outside every stop (``time``: when it began)."""

    type: ClassVar[str] = "halt"
    stream: ClassVar[Stream] = "events"
    time: datetime
    detected_at: datetime
    lat: float = field(metadata=_COORD)
    lon: float = field(metadata=_COORD)


@dataclass(frozen=True, slots=True, kw_only=True)
class HaltEnd(JsonRecord):
    """Moving again after a halt."""

    type: ClassVar[str] = "halt_end"
    stream: ClassVar[Stream] = "events"
    time: datetime
    started_at: datetime
    duration_s: float = field(metadata=_TENTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deviation(JsonRecord):
    """Off the planned route (``time``: the first fix beyond the threshold)."""

    type: ClassVar[str] = "deviation"
    stream: ClassVar[Stream] = "events"
    time: datetime
    detected_at: datetime
    distance_m: float = field(metadata=_TENTH)
    lat: float = field(metadata=_COORD)
    lon: float = field(metadata=_COORD)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviationEnd(JsonRecord):
    """Back on the planned route."""

    type: ClassVar[str] = "deviation_end"
    stream: ClassVar[Stream] = "events"
    time: datetime
    started_at: datetime
    duration_s: float = field(metadata=_TENTH)
    max_distance_m: float = field(metadata=_TENTH)


ScanRejectReason = Literal[
    "unreadable", "not_on_manifest", "wrong_stop", "already_delivered", "reason_unpaired"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanRejected(JsonRecord):
    """A scan that made no POD. ``raw`` is what the scanner sent, cut to 128 characters
    with control characters escaped; ``error`` why an unreadable one is unreadable;
    ``parcel`` and ``stop_id`` the parcel read and its stop, ``at_stop_id`` (wrong_stop)
    the stop the van is at, ``pod_seq`` (already_delivered) the POD that delivered it.
    ``reason_unpaired``: a reason card no parcel attempt took (docs/outcomes.md), its
    outcome in ``outcome``."""

    type: ClassVar[str] = "scan_rejected"
    stream: ClassVar[Stream] = "events"
    time: datetime
    reason: ScanRejectReason
    raw: str
    source: ScanSource
    parcel: str | None = field(default=None, metadata=_OMITTED)
    stop_id: str | None = field(default=None, metadata=_OMITTED)
    at_stop_id: str | None = field(default=None, metadata=_OMITTED)
    error: str | None = field(default=None, metadata=_OMITTED)
    pod_seq: int | None = field(default=None, metadata=_OMITTED)
    route_id: str | None = field(default=None, metadata=_OMITTED)
    outcome: Outcome | None = field(default=None, metadata=_OMITTED)


EtaTrigger = Literal["first", "moved", "arrival", "heartbeat"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaUpdate(JsonRecord):
    """The van's predicted arrival at a stop it has not reached (``time``: when it was
    issued; ``eta`` the model's, ``eta_baseline`` the naive one; ``eta_p10``/``eta_p90``
    the model's calibrated interval, when it has one; ``model`` the model's version, or
    ``"baseline"``; ``trigger`` why it was sent)."""

    type: ClassVar[str] = "eta"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    route_id: str | None = field(default=None, metadata=_OMITTED)
    eta: datetime
    eta_baseline: datetime
    # The van always sends these two; v1's schema made them optional.
    horizon_s: float | None = field(default=None, metadata=_OMITTED_TENTH)
    model: str
    trigger: EtaTrigger | None = field(default=None, metadata=_OMITTED)
    eta_p10: datetime | None = field(default=None, metadata=_OMITTED)
    eta_p90: datetime | None = field(default=None, metadata=_OMITTED)


@dataclass(frozen=True, slots=True, kw_only=True)
class LateRisk(JsonRecord):
    """The predicted arrival at a stop has been after its window for long enough."""

    type: ClassVar[str] = "late_risk"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    route_id: str | None = field(default=None, metadata=_OMITTED)
    eta: datetime
    # Always sent; optional in v1's schema.
    eta_baseline: datetime | None = field(default=None, metadata=_OMITTED)
    window_end: datetime
    late_by_s: float = field(metadata=_TENTH)
    model: str
    # The probability (0-1) of arriving after window_end, from the model's calibrated
    # interval; absent when the point ETA decided (no interval: the baseline).
    probability: float | None = field(default=None, metadata=_OMITTED_HUNDREDTH)


PassReason = Literal["drive_past", "out_of_order"]
PASS_REASONS: Final[tuple[PassReason, ...]] = get_args(PassReason)


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPassed(JsonRecord):
    """The van passed a stop it has not reached: the driver is not taking the planned
    order. ``time``: when the van became sure of it; ``planned_index`` the stop's place
    in the manifest (0-based); ``reason`` ``drive_past`` (it came within ``closest_m``
    of the stop and left without an arrival) or ``out_of_order`` (it reached a stop
    planned after this one); ``closest_m`` the closest approach seen while the stop was
    among the next ones (absent if never measured). What the van now expects: ``eta``
    and ``eta_baseline`` the stop's new predicted arrival, served later, and
    ``stops_before`` how many stops it expects to serve first; all three absent when
    the van no longer schedules the stop. An arrival there later is a normal arrival."""

    type: ClassVar[str] = "stop_passed"
    stream: ClassVar[Stream] = "events"
    time: datetime
    stop_id: str
    route_id: str | None = field(default=None, metadata=_OMITTED)
    planned_index: int
    reason: PassReason
    closest_m: float | None = field(default=None, metadata=_OMITTED_TENTH)
    eta: datetime | None = field(default=None, metadata=_OMITTED)
    eta_baseline: datetime | None = field(default=None, metadata=_OMITTED)
    stops_before: int | None = field(default=None, metadata=_OMITTED)
    model: str


Verdict = Literal["inside", "outside", "no_fix"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRecord(JsonRecord):
    """A signed POD on the ``pod`` stream: ``jws`` is the evidence (:mod:`.pod`), and the
    other fields repeat its claims (``time`` its ``scan_time``, ``seq`` the chain's seq)
    for a reader that does not verify; ingest refuses a record that differs from them.
    ``outcome`` is the attempt's (:mod:`.outcomes`): a record without one (sent before
    outcomes existed) is ``delivered``."""

    type: ClassVar[str] = "pod"
    stream: ClassVar[Stream] = "pod"
    time: datetime
    stop_id: str
    parcel: str
    seq: int
    verdict: Verdict
    distance_m: float | None = field(metadata=_TENTH)
    jws: str
    outcome: Outcome = field(default=DELIVERED, metadata=wire(absent=DELIVERED))


EventRecord = (
    Arrival
    | Departure
    | WindowMiss
    | Halt
    | HaltEnd
    | Deviation
    | DeviationEnd
    | ScanRejected
    | EtaUpdate
    | LateRisk
    | StopPassed
)
EVENT_TYPES: Final[dict[str, type[EventRecord]]] = {
    cls.type: cls
    for cls in (
        Arrival,
        Departure,
        WindowMiss,
        Halt,
        HaltEnd,
        Deviation,
        DeviationEnd,
        ScanRejected,
        EtaUpdate,
        LateRisk,
        StopPassed,
    )
}


def decode_event(obj: Mapping[str, Any]) -> EventRecord:
    """The event a JSON object holds, by its ``type``; :class:`CodecError` otherwise."""
    kind = obj.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CodecError(f"event record: unknown type {kind!r:.40}")
    return cls.from_json(obj)


# --- The telemetry point ------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last datetime
MAX_LAT_E7: Final = 900_000_000
MAX_LON_E7: Final = 1_800_000_000
COURSE_TENTHS: Final = 3600
# Altitudes beyond 100 km are a receiver's garbage, not a van.
MAX_ALT_DM: Final = 1_000_000
# Optional small fields are carried as value + 1 with 0 meaning unknown, in the batch
# and in the stored form alike, so both carry exactly the same ranges.
MAX_U16_FIELD: Final = 0xFFFF
MAX_U8_FIELD: Final = 0xFF
MAX_MODE: Final = 3
NO_ALT: Final = -(2**31)  # the stored form's "unknown altitude"

# The wire's integers of one point: ms, lat, lon, alt (dm, NO_ALT unknown), speed,
# course, hdop, sats, mode, quality (each of those four + 1, 0 = unknown but mode).
Quantized = tuple[int, int, int, int, int, int, int, int, int, int]
# The stored form (little-endian); v1 (24 bytes, no altitude or quality) is still read:
# an outbox filled before an upgrade sends what it holds.
_STORED = struct.Struct("<qiiiHHHBBB")
_STORED_V1 = struct.Struct("<qiiHHHBB")
STORED_POINT_SIZE: Final = _STORED.size
STORED_POINT_SIZE_V1: Final = _STORED_V1.size


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryPoint:
    """One fix as telemetry carries it, at wire resolution: a UTC time to the
    millisecond, a position to 1e-7 degree, ``alt_m`` to 0.1 m, ``speed_mps`` to 1 cm/s,
    ``course_deg`` to 0.1 degree in [0, 360), ``hdop`` to 0.1; ``mode`` gpsd's
    (:class:`~.fix.FixMode`), ``quality`` GGA's fix quality, ``sats_used`` the
    satellites in the fix. Unknown values are None. Make one with :meth:`from_fix`."""

    type: ClassVar[str] = "telemetry"
    stream: ClassVar[Stream] = "telemetry"
    time: datetime
    lat: float
    lon: float
    alt_m: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    mode: int = int(FixMode.UNKNOWN)
    quality: int | None = None
    hdop: float | None = None
    sats_used: int | None = None

    @classmethod
    def from_fix(cls, fix: Fix) -> TelemetryPoint | None:
        """The point of ``fix`` at wire resolution; None when it has no time or no
        position (or a position out of range, or a time before 1970).

        A field the contract cannot carry (speed over 655 m/s, HDOP over 6553, altitude
        beyond 100 km, more than 254 satellites, a non-finite value) becomes unknown
        rather than failing later, so every point this returns encodes.
        """
        t, lat, lon = fix.time, fix.lat, fix.lon
        if t is None or lat is None or lon is None or t.tzinfo is None:
            return None
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            return None
        if not 0 <= _time_ms(t) <= MAX_TIME_MS:
            return None
        alt, speed, course, hdop = fix.alt_m, fix.speed_mps, fix.course_deg, fix.hdop
        sats, quality = fix.sats_used, fix.quality
        return _dequantize(
            _quantize(
                TelemetryPoint(
                    time=t,
                    lat=lat,
                    lon=lon,
                    alt_m=alt if _fits(alt, 10, -MAX_ALT_DM, MAX_ALT_DM) else None,
                    speed_mps=speed if _fits(speed, 100, 0, MAX_U16_FIELD - 1) else None,
                    course_deg=course if course is not None and math.isfinite(course) else None,
                    mode=int(fix.mode) if 0 <= fix.mode <= MAX_MODE else 0,
                    quality=quality
                    if quality is not None and 0 <= quality < MAX_U8_FIELD
                    else None,
                    hdop=hdop if _fits(hdop, 10, 0, MAX_U16_FIELD - 1) else None,
                    sats_used=sats if sats is not None and 0 <= sats < MAX_U8_FIELD else None,
                )
            )
        )

    def to_fix(self) -> Fix:
        """The fix this point stands for: what the van's decoder had, at wire resolution;
        the fields a point does not carry (module doc) unknown."""
        t = self.time.astimezone(UTC)
        midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return Fix(
            time=t,
            tod_s=(t - midnight).total_seconds(),
            lat=self.lat,
            lon=self.lon,
            speed_mps=self.speed_mps,
            course_deg=self.course_deg,
            alt_m=self.alt_m,
            mode=FixMode(self.mode),
            quality=self.quality,
            hdop=self.hdop,
            sats_used=self.sats_used,
        )

    def to_json(self) -> dict[str, Any]:
        """The point's fields as JSON values (``time`` as ISO 8601 UTC, milliseconds)."""
        return {
            "time": format_utc(self.time),
            "lat": self.lat,
            "lon": self.lon,
            "alt_m": self.alt_m,
            "speed_mps": self.speed_mps,
            "course_deg": self.course_deg,
            "mode": self.mode,
            "quality": self.quality,
            "hdop": self.hdop,
            "sats_used": self.sats_used,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TelemetryPoint:
        """The point a JSON object holds (:meth:`to_json`'s keys, others ignored), at
        wire resolution; :class:`CodecError` if it is not one."""
        try:
            point = cls(
                time=_json_time(obj.get("time")),
                lat=_json_number(obj.get("lat"), "lat"),
                lon=_json_number(obj.get("lon"), "lon"),
                alt_m=_json_optional(obj.get("alt_m"), "alt_m"),
                speed_mps=_json_optional(obj.get("speed_mps"), "speed_mps"),
                course_deg=_json_optional(obj.get("course_deg"), "course_deg"),
                mode=_json_int(obj.get("mode", 0), "mode"),
                quality=_json_optional_int(obj.get("quality"), "quality"),
                hdop=_json_optional(obj.get("hdop"), "hdop"),
                sats_used=_json_optional_int(obj.get("sats_used"), "sats_used"),
            )
        except CodecError as err:
            raise CodecError(f"telemetry point: {err}") from None
        return _dequantize(_quantize(point))


def encode_point(point: TelemetryPoint) -> bytes:
    """The stored form of ``point`` (:data:`STORED_POINT_SIZE` bytes, at wire resolution):
    little-endian i64 ms since the Unix epoch, i32 lat and lon in 1e-7 degree, i32
    altitude in dm (:data:`NO_ALT` unknown), u16 speed in cm/s, u16 course in 0.1
    degree, u16 HDOP in 0.1, u8 satellites, u8 mode, u8 quality (speed, course, HDOP,
    satellites and quality stored + 1, 0 = unknown). :class:`CodecError` for a value out
    of range. It is the outbox's record and what :func:`.telemetry.frame_batch` frames."""
    ms, lat, lon, alt, speed, course, hdop, sats, mode, quality = _quantize(point)
    return _STORED.pack(ms, lat, lon, alt, speed, course, hdop, sats, mode, quality)


def stored_integers(data: bytes) -> Quantized:
    """The wire integers of a stored point (this version's form or v1's);
    :class:`CodecError` if ``data`` is neither or holds a value out of range."""
    if len(data) == STORED_POINT_SIZE:
        q: Quantized = _STORED.unpack(data)
    elif len(data) == STORED_POINT_SIZE_V1:
        ms, lat, lon, speed, course, hdop, sats, mode = _STORED_V1.unpack(data)
        q = (ms, lat, lon, NO_ALT, speed, course, hdop, sats, mode, 0)
    else:
        raise CodecError(
            f"stored point: {len(data)} bytes, want {STORED_POINT_SIZE} "
            f"(or {STORED_POINT_SIZE_V1}, version 1)"
        )
    check_integers(q)
    return q


def decode_point(data: bytes) -> TelemetryPoint:
    """The point :func:`encode_point` stored; :class:`CodecError` if ``data`` is not one."""
    return _dequantize(stored_integers(data))


def check_integers(q: Quantized) -> None:
    """:class:`CodecError` unless every wire integer of a point is in its range."""
    ms, lat, lon, alt, speed, course, hdop, sats, mode, quality = q
    if not 0 <= ms <= MAX_TIME_MS:
        raise CodecError(f"time {ms} ms since 1970 out of range")
    if not -MAX_LAT_E7 <= lat <= MAX_LAT_E7:
        raise CodecError(f"lat {lat / 1e7} out of range")
    if not -MAX_LON_E7 <= lon <= MAX_LON_E7:
        raise CodecError(f"lon {lon / 1e7} out of range")
    if alt != NO_ALT and not -MAX_ALT_DM <= alt <= MAX_ALT_DM:
        raise CodecError(f"alt {alt / 10} m out of range")
    if not (
        0 <= speed <= MAX_U16_FIELD and 0 <= course <= COURSE_TENTHS and 0 <= hdop <= MAX_U16_FIELD
    ):
        raise CodecError(f"speed {speed}, course {course} or hdop {hdop} out of range")
    if not (0 <= sats <= MAX_U8_FIELD and 0 <= mode <= MAX_MODE and 0 <= quality <= MAX_U8_FIELD):
        raise CodecError(f"sats {sats}, mode {mode} or quality {quality} out of range")


def point_from_integers(q: Quantized) -> TelemetryPoint:
    """The point of checked wire integers (:func:`check_integers`)."""
    return _dequantize(q)


# --- Quantization ---------------------------------------------------------------------------


def _time_ms(t: datetime) -> int:
    """Milliseconds since 1970, cut as :func:`~.times.format_utc` cuts a time: a point
    and an event at the same fix say the same millisecond."""
    # Integer arithmetic: a float of microseconds since 1970 is already 0.25 us coarse.
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def _fits(value: float | None, scale: int, low: int, high: int) -> bool:
    return value is not None and math.isfinite(value) and low <= round(value * scale) <= high


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


def _small(value: int | None, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_U8_FIELD:
        raise CodecError(f"{what} {value!r} out of range 0..{MAX_U8_FIELD - 1}")
    return value + 1


def _coord_e7(value: float, limit: int, what: str) -> int:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"{what} {value!r} is not a finite number")
    q = round(value * 1e7)
    if not -limit <= q <= limit:
        raise CodecError(f"{what} {value!r} out of range ±{limit // 10_000_000}")
    return q


def _quantize(p: TelemetryPoint) -> Quantized:
    t = p.time
    if not isinstance(t, datetime) or t.tzinfo is None:
        raise CodecError(f"point time must be a UTC-aware datetime, not {t!r}")
    ms = _time_ms(t)
    if not 0 <= ms <= MAX_TIME_MS:
        raise CodecError(f"point time {t.isoformat()} before 1970 or after 9999")
    alt = NO_ALT
    if p.alt_m is not None:
        if not isinstance(p.alt_m, int | float) or not math.isfinite(p.alt_m):
            raise CodecError(f"alt_m {p.alt_m!r} is not a finite number")
        alt = round(p.alt_m * 10)
        if not -MAX_ALT_DM <= alt <= MAX_ALT_DM:
            raise CodecError(f"alt_m {p.alt_m!r} out of range ±{MAX_ALT_DM // 10}")
    course = 0
    if p.course_deg is not None:
        if not isinstance(p.course_deg, int | float) or not math.isfinite(p.course_deg):
            raise CodecError(f"course {p.course_deg!r} is not a finite number")
        # An angle: 359.96 rounds to 360.0, which is north, 0.
        course = round(p.course_deg * 10) % COURSE_TENTHS + 1
    mode = p.mode
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= MAX_MODE:
        raise CodecError(f"mode {mode!r} out of range 0..{MAX_MODE}")
    return (
        ms,
        _coord_e7(p.lat, MAX_LAT_E7, "lat"),
        _coord_e7(p.lon, MAX_LON_E7, "lon"),
        alt,
        _optional(p.speed_mps, 100, MAX_U16_FIELD, "speed_mps"),
        course,
        _optional(p.hdop, 10, MAX_U16_FIELD, "hdop"),
        _small(p.sats_used, "sats_used"),
        int(mode),
        _small(p.quality, "quality"),
    )


def _dequantize(q: Quantized) -> TelemetryPoint:
    ms, lat, lon, alt, speed, course, hdop, sats, mode, quality = q
    return TelemetryPoint(
        time=_EPOCH + timedelta(milliseconds=ms),
        lat=lat / 1e7,
        lon=lon / 1e7,
        alt_m=None if alt == NO_ALT else alt / 10,
        speed_mps=None if speed == 0 else (speed - 1) / 100,
        course_deg=None if course == 0 else (course - 1) / 10,
        mode=mode,
        quality=None if quality == 0 else quality - 1,
        hdop=None if hdop == 0 else (hdop - 1) / 10,
        sats_used=None if sats == 0 else sats - 1,
    )


def _json_time(value: object) -> datetime:
    parsed = parse_utc(value)
    if parsed is None:
        raise CodecError(f"time must be an ISO 8601 UTC time, not {value!r:.40}")
    return parsed


def _json_number(value: object, what: str) -> float:
    if not wirejson.finite_number(value):
        raise CodecError(f"{what} must be a finite number, not {value!r:.40}")
    return float(value)


def _json_optional(value: object, what: str) -> float | None:
    return None if value is None else _json_number(value, what)


def _json_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{what} must be an integer, not {value!r:.40}")
    return value


def _json_optional_int(value: object, what: str) -> int | None:
    return None if value is None else _json_int(value, what)


# --- Every record ---------------------------------------------------------------------------

Record = TelemetryPoint | EventRecord | PodRecord


def encode_record(record: Record) -> bytes:
    """The bytes the outbox stores for ``record``: a telemetry point's stored form
    (:func:`encode_point`), else the record's JSON (:func:`.wirejson.dumps`), which the
    envelope carries as they are. :class:`CodecError` for what the contract cannot carry."""
    if isinstance(record, TelemetryPoint):
        return encode_point(record)
    return wirejson.dumps(record.to_json(), f"{record.type} record")
