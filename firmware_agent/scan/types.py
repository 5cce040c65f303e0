"""The agent's unit of scanning: one :class:`Scan` per code the scanner sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from firmware_agent.contract.records import SCAN_SOURCES, ScanSource

SOURCES: Final = SCAN_SOURCES


def utc_now() -> datetime:
    """The scanners' default clock: wall time, UTC-aware."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Scan:
    """What a scanner sent for one code, unparsed.

    - ``time``: when the code's terminator arrived, UTC-aware (any other offset is
      converted to UTC on construction; a naive time is a ``ValueError``).
    - ``raw``: the exact text, without the line terminator; it may be garbage (a
      scanner in the wrong mode, line noise): parsing is
      :func:`firmware_agent.contract.parcels.parse_scan`'s job, not the reader's.
    - ``source``: ``"serial"`` or ``"hid"``.
    """

    time: datetime
    raw: str
    source: ScanSource

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("naive datetime: scan times are UTC-aware")
        if self.time.tzinfo is not UTC:
            # Frozen: the one sanctioned way to normalise a field on construction.
            object.__setattr__(self, "time", self.time.astimezone(UTC))
        if self.source not in SOURCES:
            raise ValueError(f"scan source must be one of {SOURCES}, got {self.source!r}")
