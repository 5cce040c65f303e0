"""The telemetry batch: points on ``fleet/v1/{device_id}/telemetry``, compact and binary.

:func:`frame_batch` frames the points the outbox stored (:func:`.records.encode_point`)
into one payload, delta-encoding their integers without turning them back into points;
:func:`decode_batch` reads a payload into :class:`TelemetryBatch`, whose points are
:class:`~.records.TelemetryPoint` as the van made them. The layout is
docs/telemetry-batch.md; :meth:`TelemetryBatch.to_json` is what
docs/schemas/telemetry-batch.schema.json describes.

The layout has a version byte: this code writes version 2 (altitude and fix quality
added to every point) and still reads version 1, what vans not yet upgraded send.
Each valid payload has exactly one encoding (no overlong varints, no stray flag bits):
``frame_batch`` of what ``decode_batch`` read gives back the same bytes.

A batch settles, in ingest's acks, the seqs of the fixes it carries. Seqs of its range
``first_seq..last_seq`` that it does not carry (fixes the outbox thinned away) are settled
only when the batch is *signed* (:data:`FLAG_SIGNED`): an Ed25519 signature by the
device key, the key that signs its PODs, over :data:`SIGNING_CONTEXT` and the payload
before it. Whoever can publish on the van's topic can make up fixes but not the van's
word that seqs it never carried are gone (issue 13, finding 7).

The decoder raises :class:`~.errors.CodecError` for anything malformed, whatever the
bytes, and nothing else; the framer raises it for values the contract cannot carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_agent.contract.binary import Reader, check_seq, device_id_from, put_varint
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.records import (
    NO_ALT,
    Quantized,
    TelemetryPoint,
    check_integers,
    encode_point,
    point_from_integers,
    stored_integers,
)
from firmware_agent.contract.topics import check_device_id
from firmware_agent.contract.wirejson import Payload, as_bytes

VERSION: Final = 1  # the contract's (JSON) version, as every payload's "v"
BATCH_VERSION: Final = 2  # the binary layout this code writes
READS: Final = (1, 2)  # the binary layouts it reads
MAGIC: Final = b"FT"
FLAG_HISTORICAL: Final = 0x01
# The payload ends with SIGNATURE_BYTES of Ed25519 signature by the device key over
# SIGNING_CONTEXT + every byte before the signature (this flag included).
FLAG_SIGNED: Final = 0x02
_FLAGS: Final = FLAG_HISTORICAL | FLAG_SIGNED
SIGNATURE_BYTES: Final = 64
# Domain separation: a batch signature can never pass for a POD's JWS signature (whose
# signing input is base64url text) nor the other way round.
SIGNING_CONTEXT: Final = b"fleet/v1 telemetry batch\x00"

# A record is historical when it was created more than this long before it was first
# sent (replayed after an outage): downstream never raises live alerts for it.
HISTORICAL_AFTER_S: Final = 60.0

# Bounds a decoder enforces before it allocates anything, whoever sent the bytes.
MAX_FIXES: Final = 4096  # per batch; over an hour of 1 Hz driving
MAX_BATCH_BYTES: Final = 256 * 1024  # 4096 fixes of the largest encoding fit

# Varints per point, each at least one byte: version 1 has nine, version 2 eleven.
_MIN_FIX_BYTES: Final = {1: 9, 2: 11}


def is_historical(created_at: datetime, first_sent_at: datetime) -> bool:
    """Whether a record created at ``created_at`` and first sent at ``first_sent_at`` is
    historical (more than :data:`HISTORICAL_AFTER_S` late)."""
    return (first_sent_at - created_at).total_seconds() > HISTORICAL_AFTER_S


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryBatch:
    """A decoded batch: points ``(seq, point)`` covering ``first_seq..last_seq``.

    Sequence numbers in the range without a point were thinned away by the outbox; ingest
    settles them only when the batch is signed (``signature``, the 64 bytes the payload
    ended with; verify with :func:`verify_batch`). ``version`` is the binary layout it
    came in.
    """

    device_id: str
    first_seq: int
    last_seq: int
    historical: bool
    points: tuple[tuple[int, TelemetryPoint], ...] = ()
    version: int = BATCH_VERSION
    signature: bytes | None = None

    @property
    def thinned(self) -> int:
        """How many seqs of ``first_seq..last_seq`` the batch does not carry."""
        return self.last_seq - self.first_seq + 1 - len(self.points)

    def header_json(self) -> dict[str, Any]:
        """The batch's JSON form without its points (what ingest checks per message)."""
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "historical": self.historical,
            "fixes": [],
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON form docs/schemas/telemetry-batch.schema.json describes."""
        out = self.header_json()
        out["fixes"] = [{"seq": seq, **point.to_json()} for seq, point in self.points]
        return out


def frame_batch(
    device_id: str,
    first_seq: int,
    stored: Sequence[tuple[int, bytes]],
    *,
    historical: bool,
    last_seq: int | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """The telemetry payload of ``stored`` points: ``(seq, bytes)`` as the outbox keeps
    them (:func:`~.records.encode_point`; version 1's form too), seqs strictly
    increasing in ``first_seq..last_seq``. ``last_seq`` defaults to the last point's
    seq (an empty batch must give it). ``sign``: the device key's Ed25519 ``sign``
    (``Ed25519PrivateKey.sign``), for a batch whose range holds seqs it does not carry:
    the payload is then flagged :data:`FLAG_SIGNED` and ends with the signature.
    :class:`CodecError` for anything the layout cannot carry."""
    check_device_id(device_id)
    if len(stored) > MAX_FIXES:
        raise CodecError(f"batch of {len(stored)} fixes: at most {MAX_FIXES}")
    if last_seq is None:
        if not stored:
            raise CodecError("an empty batch needs last_seq")
        last_seq = stored[-1][0]
    check_seq(first_seq, "first_seq")
    check_seq(last_seq, "last_seq")
    if last_seq < first_seq:
        raise CodecError(f"last_seq {last_seq} < first_seq {first_seq}")
    out = bytearray(MAGIC)
    out.append(BATCH_VERSION)
    out.append((FLAG_HISTORICAL if historical else 0) | (FLAG_SIGNED if sign else 0))
    name = device_id.encode("ascii")
    put_varint(out, len(name))
    out += name
    put_varint(out, first_seq)
    put_varint(out, last_seq - first_seq)
    put_varint(out, len(stored))
    prev_seq, prev_ms, prev_lat, prev_lon, prev_alt = first_seq, 0, 0, 0, 0
    for i, (seq, data) in enumerate(stored):
        check_seq(seq, "fix seq")
        if seq > last_seq or seq < prev_seq or (i and seq == prev_seq):
            raise CodecError(
                f"fix {i}: seq {seq} not strictly increasing within {first_seq}..{last_seq}"
            )
        ms, lat, lon, alt, speed, course, hdop, sats, mode, quality = stored_integers(data)
        put_varint(out, seq - prev_seq)
        put_varint(out, _zigzag(ms - prev_ms))
        put_varint(out, _zigzag(lat - prev_lat))
        put_varint(out, _zigzag(lon - prev_lon))
        for value in (speed, course, hdop, sats, mode, quality):
            put_varint(out, value)
        if alt == NO_ALT:
            put_varint(out, 0)
        else:
            put_varint(out, _zigzag(alt - prev_alt) + 1)
            prev_alt = alt
        prev_seq, prev_ms, prev_lat, prev_lon = seq, ms, lat, lon
    if sign is not None:
        signature = sign(SIGNING_CONTEXT + bytes(out))
        if len(signature) != SIGNATURE_BYTES:
            raise CodecError(f"signature of {len(signature)} bytes, want {SIGNATURE_BYTES}")
        out += signature
    return bytes(out)


def encode_batch(
    device_id: str,
    first_seq: int,
    points: Sequence[tuple[int, TelemetryPoint]],
    *,
    historical: bool,
    last_seq: int | None = None,
    sign: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """:func:`frame_batch` of points not stored yet (benchmarks, tests, simulators)."""
    stored = [(seq, encode_point(point)) for seq, point in points]
    return frame_batch(
        device_id, first_seq, stored, historical=historical, last_seq=last_seq, sign=sign
    )


def verify_batch(payload: bytes, key: Ed25519PublicKey) -> bool:
    """Whether ``payload`` (a batch :func:`decode_batch` read) is signed
    (:data:`FLAG_SIGNED`) and its signature verifies with ``key``."""
    if len(payload) < 4 + SIGNATURE_BYTES or not payload[3] & FLAG_SIGNED:
        return False
    body, signature = payload[:-SIGNATURE_BYTES], payload[-SIGNATURE_BYTES:]
    try:
        key.verify(bytes(signature), SIGNING_CONTEXT + bytes(body))
    except InvalidSignature:
        return False
    return True


def decode_batch(payload: Payload) -> TelemetryBatch:
    """The batch in ``payload``; :class:`CodecError` for anything else (see module doc)."""
    buf = as_bytes(payload, "telemetry batch")
    if len(buf) > MAX_BATCH_BYTES:
        raise CodecError(f"telemetry batch: {len(buf)} bytes, at most {MAX_BATCH_BYTES}")
    if len(buf) < 4:
        raise CodecError(f"telemetry batch: truncated header ({len(buf)} bytes)")
    if buf[:2] != MAGIC:
        raise CodecError(f"telemetry batch: bad magic {buf[:2]!r}, want {MAGIC!r}")
    version = buf[2]
    if version not in READS:
        raise CodecError(f"telemetry batch: version {version}, this decoder reads {READS}")
    flags = buf[3]
    if flags & ~_FLAGS:
        raise CodecError(f"telemetry batch: unknown flag bits 0x{flags:02x}")
    signature = None
    if flags & FLAG_SIGNED:
        if len(buf) < 4 + SIGNATURE_BYTES:
            raise CodecError(f"telemetry batch: signed, but {len(buf)} bytes in all")
        buf, signature = buf[:-SIGNATURE_BYTES], buf[-SIGNATURE_BYTES:]
    r = Reader(buf, 4, "telemetry batch")
    name_len = r.varint("device_id length")
    if not 1 <= name_len <= 64:
        raise CodecError(f"telemetry batch: device_id length {name_len}, want 1..64")
    device_id = device_id_from(r.take(name_len, "device_id"))
    first_seq = r.varint("first_seq")
    check_seq(first_seq, "first_seq")
    last_seq = first_seq + r.varint("last_seq - first_seq")
    check_seq(last_seq, "last_seq")
    n = r.varint("fix count")
    min_bytes = _MIN_FIX_BYTES[version]
    if n > MAX_FIXES or n * min_bytes > r.remaining:
        raise CodecError(
            f"telemetry batch: {n} fixes cannot fit in the {r.remaining} bytes left "
            f"(at most {MAX_FIXES}, each at least {min_bytes} bytes)"
        )
    points: list[tuple[int, TelemetryPoint]] = []
    seq, ms, lat, lon, alt = first_seq, 0, 0, 0, 0
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
        quality, point_alt = 0, NO_ALT
        if version >= 2:
            quality = r.varint("quality")
            alt_code = r.varint("alt")
            if alt_code:
                alt += _unzigzag(alt_code - 1)
                point_alt = alt
        q: Quantized = (ms, lat, lon, point_alt, speed, course, hdop, sats, mode, quality)
        try:
            check_integers(q)
        except CodecError as err:
            raise CodecError(f"telemetry batch: fix {i} (seq {seq}): {err}") from None
        points.append((seq, point_from_integers(q)))
    if r.remaining:
        raise CodecError(f"telemetry batch: {r.remaining} trailing bytes after {n} fixes")
    return TelemetryBatch(
        device_id=device_id,
        first_seq=first_seq,
        last_seq=last_seq,
        historical=bool(flags & FLAG_HISTORICAL),
        points=tuple(points),
        version=version,
        signature=signature,
    )


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)
