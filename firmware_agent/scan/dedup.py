"""Dropping the second read of a parcel the driver scanned twice.

Drivers re-scan when they miss the beep, and a scanner in continuous mode reads the
same label several times while it stays in the beam. Within a short window the
second read is the same delivery, not a new one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from firmware_agent.errors import ConfigError

# Far more distinct parcels than a van scans within any sane window; reached only if
# the clock misbehaves (see ``seen``), where it keeps memory bounded regardless.
DEFAULT_MAX_ENTRIES: Final = 4096


class ScanDeduplicator:
    """``seen(code, now_s)``: was ``code`` accepted less than ``window_s`` ago?

    The window runs from the *accepted* scan: duplicates do not extend it, so a label
    left in front of a continuous-mode scanner is accepted again every ``window_s``
    rather than never. ``window_s = 0`` disables deduplication.

    ``now_s`` is a monotonic time in seconds (``time.monotonic()``, or scan times in
    an offline replay). A time earlier than the recorded acceptance counts as within
    the window. Memory is bounded: entries older than the window are evicted as time
    passes, and at most ``max_entries`` are kept whatever the clock does.
    """

    __slots__ = ("_accepted", "_max_entries", "window_s")

    def __init__(self, window_s: float = 10.0, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if not (math.isfinite(window_s) and window_s >= 0):
            raise ConfigError(f"window_s must be finite and >= 0, got {window_s!r}")
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries!r}")
        self.window_s = window_s
        self._max_entries = max_entries
        # Canonical code -> when it was accepted, oldest first (insertion order).
        self._accepted: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._accepted)

    def accepted(self) -> tuple[tuple[str, float], ...]:
        """The (code, accepted at) pairs remembered, oldest first (to save)."""
        return tuple(self._accepted.items())

    def restore(self, accepted: Iterable[tuple[str, float]]) -> None:
        """Remember ``accepted`` (code, accepted at) pairs, oldest first, as saved."""
        self._accepted.clear()
        for code, accepted_s in accepted:
            self._accepted.pop(code, None)
            self._accepted[code] = accepted_s
        while len(self._accepted) > self._max_entries:
            self._accepted.popitem(last=False)

    def seen(self, code: str, now_s: float) -> bool:
        """True if ``code`` is a duplicate; otherwise record it as accepted at ``now_s``."""
        self._evict(now_s)
        accepted_s = self._accepted.get(code)
        if accepted_s is not None and now_s - accepted_s < self.window_s:
            return True
        # Re-insert at the end so that the dict stays ordered by acceptance time.
        self._accepted.pop(code, None)
        self._accepted[code] = now_s
        if len(self._accepted) > self._max_entries:
            self._accepted.popitem(last=False)
        return False

    def _evict(self, now_s: float) -> None:
        accepted = self._accepted
        while accepted:
            code, accepted_s = next(iter(accepted.items()))
            if now_s - accepted_s < self.window_s:
                break
            del accepted[code]
