"""The events batch: several ``events`` records in one message, deflated.

An event used to travel alone, in the JSON envelope of :func:`.envelope.frame_record`
(about 110 bytes of envelope around a record of 150 to 250 bytes): an ETA day of 150
stops cost over 40 kB per van-hour on the ``events`` stream alone (issue 15). A batch
carries the records the outbox stored (their JSON bytes, :func:`.records.encode_record`,
untouched), each with its seq and historical flag, compressed together with raw deflate
and a preset dictionary (:data:`DICTIONARY`) of the keys and values events repeat, on
the same topic ``fleet/v1/{device_id}/events``. Ingest tells the two forms apart by the
first byte (``{`` for an envelope, ``F`` for a batch) and accepts both: vans not yet
upgraded keep sending envelopes. The layout (docs/event-batch.md)::

    "FE" | version (1) | flags (0) | varint len(device_id) | device_id
    | varint first_seq | varint count | varint sent_at (ms since the epoch)
    | deflate(raw, zdict=DICTIONARY) of, per record:
        varint (seq - previous seq) << 1 | historical   (the first: seq - first_seq = 0)
        | varint len(json) | json

Seqs are strictly increasing; they need not be contiguous (records the outbox thinned
or that another batch carries). :meth:`EventBatch.to_json` is the JSON form that
docs/schemas/event-batch.schema.json describes. Each record is checked by ingest
exactly as if it had come alone (:meth:`EventBatch.envelopes`): one bad record is
quarantined, the others are stored.

The dictionary is part of the layout: version 1 always inflates with this one, so it
must never change; a new dictionary is a new version (and decoders keep the old one).

:func:`decode_events` raises :class:`~.errors.CodecError` for anything malformed,
whatever the bytes, and nothing else; it inflates at most :data:`MAX_INFLATED_BYTES`
(a deflate bomb stops there). A record's own JSON is not parsed here: that is the
per-record check's business, so a malformed record spoils only itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from firmware_agent.contract import wirejson
from firmware_agent.contract.binary import Reader, check_seq, device_id_from, put_varint
from firmware_agent.contract.envelope import RecordEnvelope, decode_envelope, frame_record
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import check_device_id
from firmware_agent.contract.wirejson import MAX_JSON_BYTES, Payload, as_bytes

VERSION: Final = 1  # the contract's (JSON) version, as every payload's "v"
BATCH_VERSION: Final = 1
READS: Final = (1,)
MAGIC: Final = b"FE"
MAX_RECORDS: Final = 1024
# The records' JSON together, inflated: 1024 records of 1 KiB, far above any real batch.
MAX_INFLATED_BYTES: Final = 1024 * 1024
MAX_BATCH_BYTES: Final = 256 * 1024
_MAX_SENT_AT_MS: Final = 253402300799999  # 9999-12-31T23:59:59.999Z

# Version 1's preset dictionary: what events repeat, the commonest last (deflate's
# matches reach the end of the dictionary cheapest). Never change it (module doc).
DICTIONARY: Final = (
    b'{"type":"halt_end","type":"deviation_end","type":"scan_rejected","reason":'
    b'"not_on_manifest","wrong_stop","already_delivered","unreadable","reason_unpaired",'
    b'"raw":"","source":"serial","hid","parcel":"","type":"deviation","off_route_m":'
    b'"type":"halt","duration_s":"type":"stop_passed","passed_at":"closest_m":"served_later":'
    b'false,"unscheduled":true,"type":"window","kind":"early","kind":"late","by_s":'
    b'"window_start":"window_end":"type":"late_risk","late_by_s":"eta_baseline":'
    b'"type":"departure","arrived_at":"dwell_s":.0,"visit":1,'
    b'"type":"arrival","confirmed_by":"dwell","confirmed_by":"scan","lat":4'
    b'"lon":1'
    b',"detected_at":"2026-11-21T12:'
    b'"model":"baseline","trigger":"heartbeat"}'
    b'"eta_p10":"2026-11-21T12:'
    b'"eta_p90":"2026-11-21T12:'
    b',"route_id":"R-20261121-van-0001","model":"eta-20261121-'
    b'","trigger":"first"}","trigger":"arrival"}","trigger":"moved"}'
    b'{"type":"eta","time":"2026-11-21T12:29:03.000Z","stop_id":"S001",'
    b'"route_id":"R-20261121-van-0001","eta":"2026-11-21T12:33:55.492Z",'
    b'"eta_baseline":"2026-11-21T12:31:15.792Z","horizon_s":2'
)


@dataclass(frozen=True, slots=True)
class BatchedRecord:
    """One record of a batch: its seq, whether it is historical, and its JSON bytes as
    the van stored them (not parsed: see the module doc)."""

    seq: int
    historical: bool
    record: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBatch:
    """A decoded batch of ``events`` records, seqs strictly increasing."""

    device_id: str
    sent_at: datetime
    records: tuple[BatchedRecord, ...]
    version: int = BATCH_VERSION

    @property
    def first_seq(self) -> int:
        return self.records[0].seq

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq

    def header_json(self) -> dict[str, Any]:
        """The batch's JSON form without its records (what ingest checks per message)."""
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "stream": "events",
            "sent_at": format_utc(self.sent_at),
            "records": [],
        }

    def envelope(self, record: BatchedRecord) -> bytes:
        """``record`` (one of :attr:`records`) as the JSON envelope it would have been
        alone (:func:`.envelope.frame_record`, with this batch's ``sent_at``): what
        ingest checks it as. :class:`CodecError` when it is not a stored record's JSON."""
        return frame_record(
            self.device_id,
            "events",
            record.seq,
            record.record,
            historical=record.historical,
            sent_at=self.sent_at,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form docs/schemas/event-batch.schema.json describes;
        :class:`CodecError` when a record is not a JSON object."""
        out = self.header_json()
        out["records"] = [
            {
                "seq": r.seq,
                "historical": r.historical,
                "record": wirejson.loads(r.record, f"batched record {r.seq}"),
            }
            for r in self.records
        ]
        return out


def frame_events(
    device_id: str,
    records: Sequence[tuple[int, bool, bytes]],
    *,
    sent_at: datetime,
    level: int = 9,
) -> bytes:
    """The ``events`` payload of ``records``: ``(seq, historical, json)`` as the outbox
    keeps them (:func:`.records.encode_record`), seqs strictly increasing.
    :class:`CodecError` for anything the layout cannot carry."""
    check_device_id(device_id)
    if not records:
        raise CodecError("an events batch needs at least one record")
    if len(records) > MAX_RECORDS:
        raise CodecError(f"events batch of {len(records)} records: at most {MAX_RECORDS}")
    if not isinstance(sent_at, datetime) or sent_at.tzinfo is None:
        raise CodecError(f"sent_at must be a UTC-aware datetime, not {sent_at!r}")
    sent_at_ms = round(sent_at.timestamp() * 1000)
    if not 0 <= sent_at_ms <= _MAX_SENT_AT_MS:
        raise CodecError(f"sent_at {sent_at!r} out of range")
    first_seq = records[0][0]
    body = bytearray()
    prev = first_seq
    for i, (seq, historical, data) in enumerate(records):
        check_seq(seq, "record seq")
        if i and seq <= prev:
            raise CodecError(f"record {i}: seq {seq} not strictly increasing")
        if not data.startswith(b'{"type":') or len(data) > MAX_JSON_BYTES:
            raise CodecError(f"record {i} (seq {seq}): not a stored record's JSON")
        put_varint(body, (seq - prev) << 1 | bool(historical))
        put_varint(body, len(data))
        body += data
        prev = seq
    if len(body) > MAX_INFLATED_BYTES:
        raise CodecError(
            f"events batch: {len(body)} bytes of records, at most {MAX_INFLATED_BYTES}"
        )
    out = bytearray(MAGIC)
    out += bytes((BATCH_VERSION, 0))
    name = device_id.encode("ascii")
    put_varint(out, len(name))
    out += name
    put_varint(out, first_seq)
    put_varint(out, len(records))
    put_varint(out, sent_at_ms)
    deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    out += deflate.compress(bytes(body))
    out += deflate.flush()
    if len(out) > MAX_BATCH_BYTES:
        raise CodecError(f"events batch: {len(out)} bytes, at most {MAX_BATCH_BYTES}")
    return bytes(out)


def is_event_batch(payload: Payload) -> bool:
    """Whether ``payload`` on an ``events`` topic is a batch (else: an envelope)."""
    return bytes(payload[:2]) == MAGIC


def decode_events(payload: Payload) -> EventBatch:
    """The batch in ``payload``; :class:`CodecError` for anything else (module doc)."""
    buf = as_bytes(payload, "events batch")
    if len(buf) > MAX_BATCH_BYTES:
        raise CodecError(f"events batch: {len(buf)} bytes, at most {MAX_BATCH_BYTES}")
    if len(buf) < 4:
        raise CodecError(f"events batch: truncated header ({len(buf)} bytes)")
    if buf[:2] != MAGIC:
        raise CodecError(f"events batch: bad magic {buf[:2]!r}, want {MAGIC!r}")
    version = buf[2]
    if version not in READS:
        raise CodecError(f"events batch: version {version}, this decoder reads {READS}")
    if buf[3]:
        raise CodecError(f"events batch: unknown flag bits 0x{buf[3]:02x}")
    head = Reader(buf, 4, "events batch")
    name_len = head.varint("device_id length")
    if not 1 <= name_len <= 64:
        raise CodecError(f"events batch: device_id length {name_len}, want 1..64")
    device_id = device_id_from(head.take(name_len, "device_id"))
    first_seq = head.varint("first_seq")
    check_seq(first_seq, "first_seq")
    n = head.varint("record count")
    if not 1 <= n <= MAX_RECORDS:
        raise CodecError(f"events batch: {n} records, want 1..{MAX_RECORDS}")
    sent_at_ms = head.varint("sent_at")
    if sent_at_ms > _MAX_SENT_AT_MS:
        raise CodecError(f"events batch: sent_at {sent_at_ms} ms out of range")
    sent_at = datetime.fromtimestamp(sent_at_ms / 1000, UTC)
    body = _inflate(buf[head.pos :])
    r = Reader(body, 0, "events batch")
    records: list[BatchedRecord] = []
    seq = first_seq
    for i in range(n):
        code = r.varint("seq delta")
        step, historical = code >> 1, bool(code & 1)
        if (i == 0) != (step == 0):
            raise CodecError(f"events batch: record {i}: seq not strictly increasing")
        seq += step
        check_seq(seq, f"record {i} seq")
        size = r.varint("record length")
        if size > MAX_JSON_BYTES:
            raise CodecError(f"events batch: record {i}: {size} bytes, at most {MAX_JSON_BYTES}")
        records.append(BatchedRecord(seq, historical, r.take(size, "record")))
    if r.remaining:
        raise CodecError(f"events batch: {r.remaining} trailing bytes after {n} records")
    return EventBatch(device_id=device_id, sent_at=sent_at, records=tuple(records), version=version)


def decode_event_message(payload: Payload) -> list[RecordEnvelope]:
    """The records of one message on an ``events`` topic, batch or single envelope,
    each as its envelope (:func:`.envelope.decode_envelope`): for consumers that watch
    the van's topic (monitoring, tests). :class:`CodecError` if any record is bad."""
    if not is_event_batch(payload):
        return [decode_envelope(payload, stream="events")]
    batch = decode_events(payload)
    return [decode_envelope(batch.envelope(r), stream="events") for r in batch.records]


def _inflate(data: bytes) -> bytes:
    inflate = zlib.decompressobj(-15, zdict=DICTIONARY)
    try:
        body = inflate.decompress(data, MAX_INFLATED_BYTES + 1)
    except zlib.error as err:
        raise CodecError(f"events batch: bad deflate data: {err}") from None
    if len(body) > MAX_INFLATED_BYTES:
        raise CodecError(f"events batch: inflates to more than {MAX_INFLATED_BYTES} bytes")
    if not inflate.eof:
        raise CodecError("events batch: truncated deflate data")
    if inflate.unused_data:
        raise CodecError(f"events batch: {len(inflate.unused_data)} bytes after the deflate data")
    return body
