"""Which fixes go out as telemetry: "smart" sampling, as commercial trackers do.

A fix is sent when the van has turned, sped up or slowed down markedly, moved far, or
when a period has passed (shorter while moving than when parked), so a straight road
costs a point every ``moving_period_s`` while a corner is drawn with the points that
shape it. Pure: fed fixes, answers yes or no. What it selects becomes a
:class:`~firmware_agent.contract.records.TelemetryPoint`, which the uplink batches and
delta-encodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_agent.contract.fix import Fix


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    moving_period_s: float = 5.0
    parked_period_s: float = 60.0
    min_period_s: float = 1.0
    distance_m: float = 100.0
    heading_change_deg: float = 30.0
    speed_change_mps: float = 5.0
    moving_speed_mps: float = 2.0


class TelemetrySampler:
    """``select(fix)`` says whether a fix is worth sending."""

    def __init__(self, config: TelemetryConfig | None = None) -> None:
        self.config = config or TelemetryConfig()
        self._last: Fix | None = None
        self._last_s = 0.0

    def select(self, fix: Fix) -> bool:
        if fix.time is None or fix.lat is None or fix.lon is None:
            return False
        t_s = fix.time.timestamp()
        last = self._last
        if last is None or self._due(fix, t_s, last):
            self._last, self._last_s = fix, t_s
            return True
        return False

    def _due(self, fix: Fix, t_s: float, last: Fix) -> bool:
        c = self.config
        elapsed_s = t_s - self._last_s
        if elapsed_s < c.min_period_s:
            return elapsed_s < 0  # a clock step back restarts the sampler
        speed = fix.speed_mps or 0.0
        moving = speed >= c.moving_speed_mps
        if elapsed_s >= (c.moving_period_s if moving else c.parked_period_s):
            return True
        if abs(speed - (last.speed_mps or 0.0)) >= c.speed_change_mps:
            return True
        if moving and fix.course_deg is not None and last.course_deg is not None:
            turn = abs((fix.course_deg - last.course_deg + 180.0) % 360.0 - 180.0)
            if turn >= c.heading_change_deg:
                return True
        assert last.lat is not None
        assert last.lon is not None
        assert fix.lat is not None
        assert fix.lon is not None
        dy = (fix.lat - last.lat) * 111_195.0
        dx = (fix.lon - last.lon) * 111_195.0 * math.cos(math.radians(fix.lat))
        return dx * dx + dy * dy >= c.distance_m * c.distance_m
