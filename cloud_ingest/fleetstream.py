"""The normalized stream ingest publishes: ``fleetstream/v1/{device_id}/{kind}``.

Pure encoding, no I/O. One message per device and kind per stored batch, carrying that
batch's new records in order (at most :data:`MAX_RECORDS` per message)::

    {"device_id": "van-7", "records": [{"device_id": "van-7", "seq": 41, ...}, ...]}

Each record is complete on its own (it repeats ``device_id``), so a consumer can flatten
``records`` and forget the envelope. Delivery is at least once: a record can be said
again (after a worker crash, or a POD whose chain status changed from ``pending`` to
``ok``), and the last message about a (device_id, seq) is the one that holds. The
schemas are ``fleetstream-position``, ``fleetstream-event`` and ``fleetstream-pod`` in
:mod:`firmware_agent.contract.schema`.

One message per record cost ingest about as much CPU as checking and storing it (an
MQTT publish and its PUBACK each): one per batch and device is what lets a worker keep
up with vans catching up after an outage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from cloud_ingest.store.base import Pod, Position, StopEvent
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import stream_topic

# Records per message: bounds a message at ~200 KB (a position is ~200 bytes, a POD's
# JWS ~600), far under any broker's limit, even when a van flushes a day at once.
MAX_RECORDS: Final = 1000

_R = TypeVar("_R", Position, StopEvent, Pod)


def messages(
    positions: Iterable[Position] = (),
    events: Iterable[StopEvent] = (),
    pods: Iterable[Pod] = (),
) -> list[tuple[str, bytes]]:
    """(topic, payload) of the stream messages for these records, positions first.

    Records keep their order within a device and kind. PODs whose chain is ``broken``
    are never published (they are quarantined).
    """
    out = _grouped("position", positions, position_record)
    out += _grouped("event", events, event_record)
    out += _grouped("pod", (p for p in pods if p.chain_status != "broken"), pod_record)
    return out


def _grouped(
    kind: str, records: Iterable[_R], encode: Callable[[_R], dict[str, Any]]
) -> list[tuple[str, bytes]]:
    by_device: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_device.setdefault(record.device_id, []).append(encode(record))
    out = []
    for device_id, encoded in by_device.items():
        topic = stream_topic(device_id, kind)
        for start in range(0, len(encoded), MAX_RECORDS):
            chunk = encoded[start : start + MAX_RECORDS]
            out.append((topic, _dumps({"device_id": device_id, "records": chunk})))
    return out


def position_record(p: Position) -> dict[str, Any]:
    """A stored point as the stream (and the HTTP track) say it: every field it has."""
    record = {"device_id": p.device_id, "seq": p.seq}
    record.update(p.point.to_json())
    record["historical"] = p.historical
    return record


def event_record(e: StopEvent) -> dict[str, Any]:
    return {
        **e.record_json(),
        "device_id": e.device_id,
        "seq": e.seq,
        "historical": e.historical,
    }


def pod_record(pod: Pod) -> dict[str, Any]:
    """A stored POD: its record's fields (the chain's seq as ``pod_seq``: ``seq`` is the
    envelope's), its JWS and what ingest verified, as the HTTP API's ``verification``
    says it: ``signature_valid`` (the JWS verifies with the device's registered key) and
    ``claims_match`` (the signed claims are the record's), both true for every stored
    POD (ingest quarantines it otherwise); ``chain``, its link in the device's hash
    chain; ``verified``: all three hold, so false while the chain is ``pending`` (the
    record is said again with ``verified`` true once it links)."""
    r = pod.record
    return {
        "device_id": pod.device_id,
        "seq": pod.seq,
        "historical": pod.historical,
        "time": format_utc(r.time),
        "stop_id": r.stop_id,
        "parcel": r.parcel,
        "pod_seq": r.seq,
        "verdict": r.verdict,
        "outcome": r.outcome,
        "distance_m": r.distance_m,
        "jws": r.jws,
        "signature_valid": True,
        "claims_match": True,
        "verified": pod.chain_status == "ok",
        "chain": pod.chain_status,
    }


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
