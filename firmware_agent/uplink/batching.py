"""When the uplink sends what the outbox holds for the ``events`` stream, with no I/O.

The events stream goes in batches (:mod:`firmware_agent.contract.eventbatch`): the
uplink sends one when it holds ``max_records`` records, when its first record is
``max_age_s`` old, or at once when it holds a record dispatch must see now: anything
but the records of :data:`DEFERRABLE` (ETA updates, departures and the ends of halts
and deviations, which only refine what the dispatcher already shows). A record type
this code does not know is sent at once. ``max_records`` 1 sends every record alone
in the JSON envelope of :func:`~firmware_agent.contract.envelope.frame_record`, as
before batches existed (an ingest not yet upgraded reads only those).

The same function decides for the live uplink (:class:`~firmware_agent.uplink.mqtt.
Uplink`) and for bench/uplink_bytes.py, so what the bench measures is what vans do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

DEFERRABLE: Final = frozenset({"eta", "departure", "halt_end", "deviation_end"})
# The records' JSON in one batch at most: deflate never grows data by more than a few
# bytes per 16 KiB, so the message stays well under ingest's 256 KiB limit whatever
# the records hold (a record is at most 64 KiB: one always fits).
MAX_BATCH_RECORD_BYTES: Final = 192 * 1024
_PREFIX: Final = b'{"type":"'


def record_type(stored: bytes) -> str:
    """The ``type`` of a stored record's JSON (:func:`~firmware_agent.contract.records.
    encode_record` writes it first), or ``""`` when the bytes do not start that way."""
    if not stored.startswith(_PREFIX):
        return ""
    end = stored.find(b'"', len(_PREFIX))
    return stored[len(_PREFIX) : end].decode("ascii", "replace") if end > 0 else ""


def fitting(sizes: Sequence[int], max_bytes: int = MAX_BATCH_RECORD_BYTES) -> int:
    """How many of the records of ``sizes`` (bytes of each one's JSON, oldest first) one
    batch carries: as many as fit in ``max_bytes``, and always the first."""
    total = 0
    for n, size in enumerate(sizes):
        total += size
        if total > max_bytes:
            return max(n, 1)
    return len(sizes)


def events_due(
    pending: Sequence[tuple[str, datetime]],
    now: datetime,
    *,
    max_records: int,
    max_age_s: float,
    flush: bool = False,
) -> bool:
    """Whether to send a batch of ``pending`` (``(type, created)`` of the records not
    sent yet, oldest first, at most ``max_records`` of them) now; see the module doc."""
    if not pending:
        return False
    if flush or len(pending) >= max_records:
        return True
    if (now - pending[0][1]).total_seconds() >= max_age_s:
        return True
    return any(kind not in DEFERRABLE for kind, _ in pending)
