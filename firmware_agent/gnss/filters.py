"""Plausibility filters between the decoder and everything that consumes fixes.

Each filter is configurable and counts what it drops:

- duplicate: an epoch with the same time as the last one passed (a re-sent burst);
- out_of_order: an epoch older than the last one passed. A receiver whose clock really
  jumped back (a reset, a week-rollover correction) is followed after
  ``reorder_reset_after`` consecutive older epochs, counted as ``time_reset``;
- stale: an epoch that arrives much later than its GNSS time says it should, judged on
  the *receive* clock (monotonic, injected) rather than the system clock, which may be
  wrong on a Pi without RTC. Typically a buffer of old sentences dumped after a stall;
- jump: a position implying a speed no van reaches. After ``jump_reanchor_s`` of
  consecutive rejections the new place is believed (the anchor itself may have been
  the outlier), counted as ``jump_reanchor``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.geo import approx_distance_m
from firmware_agent.errors import ConfigError

DUPLICATE = "duplicate"
OUT_OF_ORDER = "out_of_order"
TIME_RESET = "time_reset"
STALE = "stale"
JUMP = "jump"
JUMP_REANCHOR = "jump_reanchor"


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """Settings of :class:`FixFilter`; ``None`` or ``False`` disables a filter."""

    drop_duplicates: bool = True
    drop_out_of_order: bool = True
    reorder_reset_after: int = 5
    max_lag_s: float | None = 5.0
    max_speed_mps: float | None = 70.0
    jump_slack_m: float = 50.0
    jump_reanchor_s: float = 10.0

    def __post_init__(self) -> None:
        if self.reorder_reset_after < 1:
            raise ConfigError("reorder_reset_after must be >= 1")
        if self.max_lag_s is not None and self.max_lag_s <= 0:
            raise ConfigError("max_lag_s must be > 0")
        if self.max_speed_mps is not None and self.max_speed_mps <= 0:
            raise ConfigError("max_speed_mps must be > 0")
        if self.jump_slack_m < 0 or self.jump_reanchor_s < 0:
            raise ConfigError("jump_slack_m and jump_reanchor_s must be >= 0")

    @classmethod
    def disabled(cls) -> FilterConfig:
        return cls(
            drop_duplicates=False, drop_out_of_order=False, max_lag_s=None, max_speed_mps=None
        )


def _order_key(fix: Fix) -> float:
    # Fixes before the date is known have only a time of day.
    return fix.time.timestamp() if fix.time is not None else fix.tod_s


class FixFilter:
    """Stateful filter: ``accept(fix, now_s)`` says whether a fix goes on.

    ``now_s`` is the monotonic receive time of the fix in seconds, or ``None`` when
    there is no real-time clock (decoding a file), which disables the stale check.
    Every drop and every recovery is counted in :attr:`counts` under its kind.
    """

    __slots__ = (
        "_anchor",
        "_anchor_key",
        "_backward_run",
        "_cfg",
        "_jump_since",
        "_last_key",
        "_last_recv",
        "_timed",
        "counts",
    )

    def __init__(self, config: FilterConfig | None = None) -> None:
        self._cfg = config or FilterConfig()
        self.counts: Counter[str] = Counter()
        self._last_key: float | None = None
        self._timed = False
        self._last_recv: float | None = None
        self._backward_run = 0
        self._anchor: tuple[float, float] | None = None  # last position that passed
        self._anchor_key = 0.0
        self._jump_since: float | None = None

    def accept(self, fix: Fix, now_s: float | None = None) -> bool:
        key = _order_key(fix)
        timed = fix.time is not None
        drop = self._time_check(key, timed, now_s)
        if drop is None and fix.lat is not None and fix.lon is not None:
            drop = self._jump_check(fix.lat, fix.lon, key)
        if drop is not None:
            self.counts[drop] += 1
            return False
        self._backward_run = 0
        self._last_key, self._timed, self._last_recv = key, timed, now_s
        return True

    def _time_check(self, key: float, timed: bool, now_s: float | None) -> str | None:
        cfg = self._cfg
        last = self._last_key
        if last is None or timed != self._timed:
            return None  # nothing comparable yet (or the date just became known)
        if key == last and cfg.drop_duplicates:
            return DUPLICATE
        if key < last and cfg.drop_out_of_order:
            self._backward_run += 1
            if self._backward_run < cfg.reorder_reset_after:
                return OUT_OF_ORDER
            self.counts[TIME_RESET] += 1
            self._anchor = None
            return None
        if cfg.max_lag_s is not None and now_s is not None and self._last_recv is not None:
            # Where this epoch's time should be, had it been sent when it was measured.
            expected = last + (now_s - self._last_recv)
            if expected - key > cfg.max_lag_s:
                return STALE
        return None

    def _jump_check(self, lat: float, lon: float, key: float) -> str | None:
        cfg = self._cfg
        if cfg.max_speed_mps is None:
            return None
        if self._anchor is not None:
            dt_s = max(0.0, key - self._anchor_key)
            allowed_m = cfg.max_speed_mps * dt_s + cfg.jump_slack_m
            if approx_distance_m(self._anchor[0], self._anchor[1], lat, lon) > allowed_m:
                if self._jump_since is None:
                    self._jump_since = key
                if key - self._jump_since < cfg.jump_reanchor_s:
                    return JUMP
                self.counts[JUMP_REANCHOR] += 1
        self._anchor, self._anchor_key, self._jump_since = (lat, lon), key, None
        return None
