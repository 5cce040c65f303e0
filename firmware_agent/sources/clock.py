"""The van's clock: what "now" is for the agent's records, scans and status.

A :class:`Clock` gives UTC-aware ``now()`` and is shown every good fix (``on_fix``), so
a clock may follow GNSS time. Three implementations, chosen by the agent's inputs (or
passed in by a test):

- :class:`GnssClock` (a receiver, serial or TCP): the system clock, unless GNSS time
  says it is off (a Pi has no RTC);
- :class:`SystemClock` (a file played back): the system clock, whatever the file's
  times (a day played as fast as possible must not make its records look hours old);
- :class:`SimClock`: simulated time at the playback speed from the first fix on, the
  clock end-to-end tests drive a van day with (fakes ship in the package).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from firmware_agent.contract.fix import Fix, FixMode


class Clock(Protocol):
    """What the agent asks of a clock."""

    def now(self) -> datetime:
        """UTC now (timezone-aware)."""
        ...

    def on_fix(self, fix: Fix) -> None:
        """A fix the agent handles (any: the clock picks the ones it trusts)."""
        ...


def utc_now() -> datetime:
    return datetime.now(UTC)


class SystemClock:
    """The system clock; fixes change nothing."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def on_fix(self, fix: Fix) -> None:
        pass


class GnssClock:
    """UTC now: the system clock, unless GNSS time says it is off by more than
    ``max_skew_s`` (a Pi has no RTC: after a power cut it boots at its last shutdown
    time until NTP answers, and NTP needs the cellular link). Then the latest GNSS time,
    carried forward by the monotonic clock."""

    def __init__(self, max_skew_s: float = 2.0) -> None:
        self._max_skew_s = max_skew_s
        self._offset = timedelta(0)

    def observe(self, gnss_time: datetime) -> None:
        offset = gnss_time - datetime.now(UTC)
        skewed = abs(offset.total_seconds()) > self._max_skew_s
        self._offset = offset if skewed else timedelta(0)

    def on_fix(self, fix: Fix) -> None:
        """A fix with a time and a position (not a no-fix epoch) corrects the clock."""
        if fix.time is not None and fix.mode != FixMode.NO_FIX:
            self.observe(fix.time)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


class SimClock:
    """The van's clock running at the playback speed from the first fix with a time
    on: at speed 100, one wall second is 100 simulated seconds, so a record's age
    (historical after 60 s) and batch ages are measured in simulated time, as on a real
    day. Before the first fix it is the system clock. ``monotonic`` is the wall clock
    it runs on (``time.monotonic``)."""

    def __init__(self, speed: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError(f"a simulated clock needs a speed > 0, got {speed}")
        self.speed = speed
        self._monotonic = monotonic
        self._anchor: tuple[datetime, float] | None = None

    def on_fix(self, fix: Fix) -> None:
        if fix.time is not None:
            self.anchor(fix.time)

    def anchor(self, gnss_time: datetime) -> None:
        """Simulated time is ``gnss_time`` now (only the first call counts)."""
        if self._anchor is None:
            self._anchor = (gnss_time, self._monotonic())

    @property
    def anchored(self) -> bool:
        return self._anchor is not None

    def now(self) -> datetime:
        if self._anchor is None:
            return datetime.now(UTC)
        return self.at(self._monotonic())

    def at(self, monotonic_s: float) -> datetime:
        """The simulated time at ``monotonic()`` = ``monotonic_s``."""
        if self._anchor is None:
            raise RuntimeError("the simulated clock has seen no fix yet")
        t0, mono = self._anchor
        return t0 + timedelta(seconds=(monotonic_s - mono) * self.speed)
