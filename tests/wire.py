"""Payloads for tests: envelopes around any record, hostile ones included.

The van frames the stored bytes of its typed records (:func:`firmware_agent.contract.
envelope.frame_record`); ingest's tests must also send records no van would make (an
unknown field, a forged mirror of a POD's claims), so these helpers frame a plain JSON
object as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from firmware_agent.contract import wirejson
from firmware_agent.contract.envelope import frame_record
from firmware_agent.contract.records import JsonRecord


def envelope(
    device_id: str,
    stream: str,
    seq: int,
    record: Mapping[str, Any] | JsonRecord,
    *,
    historical: bool,
    sent_at: datetime,
) -> bytes:
    """The ``events`` or ``pod`` message of ``record`` (a typed record or any JSON object
    with ``type`` first), as the uplink frames it."""
    body = record.to_json() if isinstance(record, JsonRecord) else dict(record)
    stored = wirejson.dumps(body, "record")
    return frame_record(device_id, stream, seq, stored, historical=historical, sent_at=sent_at)
