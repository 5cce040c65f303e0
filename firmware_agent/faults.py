"""Counting faults in hostile input without flooding the log.

Pure parsers count what they reject in a :class:`FaultCounter`; the I/O edge that owns a
logger drains the *first* occurrence of each kind (logged once, at WARNING, with an
example) and logs periodic summaries of the totals. A flood of bad NMEA therefore costs
one log line per kind plus a summary, never one line per bad sentence: on a Pi's SD
card that difference is the card's life.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

EXAMPLE_MAX_CHARS = 80


class FaultCounter:
    """Counts faults by kind and remembers one example of each kind's first occurrence."""

    __slots__ = ("_counts", "_fresh")

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._fresh: list[tuple[str, str]] = []

    def add(self, kind: str, example: str | bytes = "", n: int = 1) -> None:
        """Count ``n`` faults of ``kind``; ``example`` is kept only for the first one."""
        if kind not in self._counts:
            if isinstance(example, bytes):
                example = repr(example[:EXAMPLE_MAX_CHARS])
            self._fresh.append((kind, example[:EXAMPLE_MAX_CHARS]))
        self._counts[kind] += n

    @property
    def counts(self) -> Mapping[str, int]:
        return self._counts

    def total(self) -> int:
        return sum(self._counts.values())

    def drain_first_seen(self) -> list[tuple[str, str]]:
        """Kinds seen for the first time since the last drain, with their example."""
        fresh, self._fresh = self._fresh, []
        return fresh


def format_counts(counts: Mapping[str, int], keys: Iterable[str] | None = None) -> str:
    """``a=1 b=2`` in a stable order (given ``keys`` first, then the rest sorted)."""
    order = list(keys) if keys is not None else []
    order += sorted(k for k in counts if k not in order)
    return " ".join(f"{k}={counts[k]}" for k in order if k in counts)


def log_first_seen(logger: logging.Logger, faults: FaultCounter, what: str) -> None:
    """Log each fault kind once, the first time it appears."""
    for kind, example in faults.drain_first_seen():
        logger.warning(
            "%s: first %s (counted from now on, summarised periodically): %s",
            what,
            kind,
            example,
        )
