"""Times on the wire: ISO 8601 UTC with milliseconds and a ``Z``, in one place.

Every time the contract carries is written by :func:`format_utc` and read back by
:func:`parse_utc`, which takes exactly what :data:`UTC_PATTERN` (the ``utc`` definition
of docs/schemas/defs.schema.json; a test holds them equal) allows.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

# [0-9], not \d, which matches any Unicode digit in Python's re and only ASCII ones in
# ECMA-262.
_UTC_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)
UTC_PATTERN: Final = _UTC_TEXT.pattern


def format_utc(t: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z`` suffix: ``2026-11-21T08:00:01.000Z``."""
    if t.tzinfo is None:
        raise ValueError("naive datetime: times in the contract are UTC-aware")
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    # %-formatting, not isoformat(timespec="milliseconds") and a slice: the same text for
    # every year datetime has (tests/test_contract_wire.py), in half the time; ingest
    # formats a time for every record it republishes.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        t.microsecond // 1000,
    )


def parse_utc(text: object) -> datetime | None:
    """The aware UTC datetime ``text`` spells (``...Z`` or ``...+00:00``, at most
    microseconds), or ``None`` when it is not such a time."""
    if not isinstance(text, str) or _UTC_TEXT.fullmatch(text) is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
