"""How the van moves along a path: speed caps, acceleration limits, time.

Each leg (depot to stop, stop to stop) starts and ends at rest. Along it the speed is
capped per point by the speed limit times a traffic factor (by time of day) and, at
corners, by the speed a van takes a turn of that angle at (2 m/s² lateral). Corners
are rounded with a short curve (8 m tangents at most) so the course turns over a
couple of seconds instead of jumping; a turn sharper than 150° is a U-turn, taken at
a standstill. Signals are red for the waits the caller draws: the van stops at the
stop line before the junction.

The profile is the classic two-pass one on knots a few metres apart: a forward pass
limits acceleration (1.5 m/s²), a backward pass deceleration (2.5 m/s²). Between
knots the acceleration is constant, so ``v²`` is linear in distance and the time of
a piece is ``2 ds / (v0 + v1)``. Sampling the resulting trajectory at any time is
exact, with no numerical integration drift.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

XY = tuple[float, float]

ACCEL_MPS2 = 1.5
DECEL_MPS2 = 2.5
LATERAL_ACCEL_MPS2 = 2.0
CORNER_TANGENT_M = 8.0
STRAIGHT_DEG = 5.0  # bends below this are not rounded: the speed limit caps first
CURVE_STEP_DEG = 15.0  # one curve point per 15° of turn
MIN_WAIT_S = 0.001

# (local hour, factor): rush hours 07-09 and 16-18 at 0.55, midday 0.8, night 1.0,
# linear in between.
_TRAFFIC_KNOTS: tuple[tuple[float, float], ...] = (
    (0.0, 1.0),
    (5.5, 1.0),
    (6.5, 0.8),
    (7.0, 0.55),
    (9.0, 0.55),
    (9.5, 0.8),
    (15.5, 0.8),
    (16.0, 0.55),
    (18.0, 0.55),
    (18.5, 0.8),
    (20.0, 0.8),
    (22.0, 1.0),
    (24.0, 1.0),
)


def traffic_factor(local_hour: float) -> float:
    """Share of the speed limit that traffic allows at ``local_hour`` (0-24, wraps)."""
    hour = local_hour % 24.0
    for (h0, f0), (h1, f1) in pairwise(_TRAFFIC_KNOTS):
        if h0 <= hour <= h1:
            return f0 + (f1 - f0) * (hour - h0) / (h1 - h0)
    return 1.0


def corner_speed_mps(
    turn_deg: float, tangent_m: float, lateral_accel_mps2: float = LATERAL_ACCEL_MPS2
) -> float:
    """Speed through a corner turning ``turn_deg`` rounded with tangents of ``tangent_m``.

    The rounding arc has radius ``tangent / tan(turn / 2)``; the van keeps its lateral
    acceleration below ``lateral_accel_mps2``, so ``v = sqrt(a * r)``. A 90° junction
    turn with 8 m tangents gives 4 m/s.
    """
    if turn_deg <= 0.0:
        return math.inf
    radius_m = tangent_m / math.tan(math.radians(min(turn_deg, 179.0)) / 2.0)
    return math.sqrt(lateral_accel_mps2 * radius_m)


def heading_deg(dx: float, dy: float) -> float:
    """Bearing of an east/north vector, clockwise from north, in [0, 360)."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


@dataclass(frozen=True, slots=True)
class DrivingLimits:
    """The driver and vehicle: acceleration bounds and how corners are taken."""

    accel_mps2: float = ACCEL_MPS2
    decel_mps2: float = DECEL_MPS2
    lateral_accel_mps2: float = LATERAL_ACCEL_MPS2
    corner_tangent_m: float = CORNER_TANGENT_M
    u_turn_deg: float = 150.0
    u_turn_hold_s: float = 4.0
    knot_spacing_m: float = 5.0

    def __post_init__(self) -> None:
        if min(self.accel_mps2, self.decel_mps2, self.lateral_accel_mps2, self.knot_spacing_m) <= 0:
            raise ValueError("acceleration limits and knot spacing must be positive")


@dataclass(frozen=True, slots=True)
class LegGeometry:
    """A leg to drive: east/north ``points``, one speed limit per segment, signals.

    ``signals`` holds indices of interior points that are junctions with traffic
    lights; the caller decides which are red by passing waits to
    :meth:`TrajectoryBuilder.drive`.
    """

    points: tuple[XY, ...]
    speed_limits_mps: tuple[float, ...]
    signals: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if len(self.points) < 1 or len(self.speed_limits_mps) != max(0, len(self.points) - 1):
            raise ValueError("a leg needs one speed limit per segment")
        if any(limit <= 0 for limit in self.speed_limits_mps):
            raise ValueError("speed limits must be positive")


@dataclass(frozen=True, slots=True)
class MotionState:
    """Where the van is at one instant, in the trajectory's local frame."""

    east_m: float
    north_m: float
    speed_mps: float
    course_deg: float
    odometer_m: float


class Trajectory:
    """A whole day's motion: a path and a speed-over-time profile along it.

    Built by :class:`TrajectoryBuilder`; sample it with :meth:`state_at`. Times are
    seconds from the start of the day, distances metres along the path.
    """

    def __init__(
        self,
        *,
        knot_t: list[float],
        knot_s: list[float],
        knot_v: list[float],
        path_x: list[float],
        path_y: list[float],
        path_s: list[float],
        segment_limits_mps: list[float],
    ) -> None:
        self._kt = knot_t
        self._ks = knot_s
        self._kv = knot_v
        self._px = path_x
        self._py = path_y
        self._ps = path_s
        self._limits = segment_limits_mps
        self._course = [
            heading_deg(x1 - x0, y1 - y0)
            for x0, y0, x1, y1 in zip(path_x, path_y, path_x[1:], path_y[1:], strict=False)
        ]

    @property
    def duration_s(self) -> float:
        return self._kt[-1]

    @property
    def length_m(self) -> float:
        return self._ps[-1]

    @property
    def path(self) -> list[XY]:
        """The driven path's vertices, east/north metres."""
        return list(zip(self._px, self._py, strict=True))

    @property
    def knots(self) -> list[tuple[float, float, float]]:
        """``(t_s, odometer_m, speed_mps)`` of each profile knot, in time order."""
        return list(zip(self._kt, self._ks, self._kv, strict=True))

    def speed_limit_at(self, odometer_m: float) -> float:
        """The legal speed limit where the van is after ``odometer_m`` metres."""
        if not self._limits:
            return 0.0
        j = max(0, min(len(self._limits) - 1, bisect.bisect_left(self._ps, odometer_m) - 1))
        return self._limits[j]

    def state_at(self, t_s: float) -> MotionState:
        """Position, speed and course at ``t_s`` seconds (clamped to the day)."""
        kt, ks, kv = self._kt, self._ks, self._kv
        if t_s >= kt[-1]:
            s_m, v_mps = ks[-1], kv[-1]
        elif t_s <= kt[0]:
            s_m, v_mps = ks[0], kv[0]
        else:
            i = bisect.bisect_right(kt, t_s) - 1
            tau = t_s - kt[i]
            dt = kt[i + 1] - kt[i]
            v0 = kv[i]
            accel = (kv[i + 1] - v0) / dt
            s_m = min(ks[i + 1], ks[i] + v0 * tau + 0.5 * accel * tau * tau)
            v_mps = max(0.0, v0 + accel * tau)
        return self._state_on_path(s_m, v_mps)

    def _state_on_path(self, s_m: float, v_mps: float) -> MotionState:
        px, py, ps = self._px, self._py, self._ps
        if len(ps) < 2:
            return MotionState(px[0], py[0], v_mps, 0.0, 0.0)
        # bisect_left: at a vertex the segment behind it counts, so a van standing at
        # the end of a leg keeps the course it arrived on.
        j = max(0, min(len(ps) - 2, bisect.bisect_left(ps, s_m) - 1))
        length = ps[j + 1] - ps[j]
        f = (s_m - ps[j]) / length if length > 0 else 0.0
        return MotionState(
            px[j] + (px[j + 1] - px[j]) * f,
            py[j] + (py[j + 1] - py[j]) * f,
            v_mps,
            self._course[j],
            s_m,
        )


@dataclass(slots=True)
class _Shape:
    """A leg as driven: points, per segment the legal limit and a cap from geometry
    (the corner speed along a rounding curve), per point a cap (0 at the ends, at red
    lights and U-turns) and a wait."""

    points: list[XY]
    segment_limits: list[float]
    segment_caps: list[float]
    caps: list[float]
    waits: list[float]

    def add(
        self,
        point: XY,
        segment_limit: float,
        cap: float,
        wait: float = 0.0,
        *,
        segment_cap: float = math.inf,
    ) -> None:
        """Extend by a segment to ``point``; ``cap``/``wait`` belong to the point."""
        self.points.append(point)
        self.segment_limits.append(segment_limit)
        self.segment_caps.append(segment_cap)
        self.caps.append(cap)
        self.waits.append(wait)


class TrajectoryBuilder:
    """Builds a :class:`Trajectory` leg by leg, with holds (stops, dwell) in between.

    The van starts at rest at ``start`` at time 0. Each :meth:`drive` starts where the
    previous one ended and ends at rest; :meth:`hold_until` keeps the van standing.
    """

    def __init__(self, start: XY, limits: DrivingLimits | None = None) -> None:
        self.limits = limits or DrivingLimits()
        self._kt = [0.0]
        self._ks = [0.0]
        self._kv = [0.0]
        self._px = [start[0]]
        self._py = [start[1]]
        self._ps = [0.0]
        self._seg_limits: list[float] = []

    @property
    def t_s(self) -> float:
        """Time at the end of what has been built so far."""
        return self._kt[-1]

    @property
    def position(self) -> XY:
        return (self._px[-1], self._py[-1])

    def hold_until(self, t_s: float) -> None:
        """Stand still until ``t_s`` (no-op if that is not later than now)."""
        if t_s > self._kt[-1]:
            self._kt.append(t_s)
            self._ks.append(self._ks[-1])
            self._kv.append(0.0)

    def drive(
        self,
        leg: LegGeometry,
        *,
        speed_factor: float = 1.0,
        red_waits_s: Mapping[int, float] | None = None,
    ) -> None:
        """Drive ``leg`` from rest to rest.

        ``speed_factor`` scales every speed limit (traffic); ``red_waits_s`` maps a
        signal's point index to how long it stays red for this van (absent or 0:
        green). The leg must start where the van is.
        """
        if not 0.0 < speed_factor <= 1.0:
            raise ValueError(f"speed factor {speed_factor} is not in (0, 1]")
        x0, y0 = leg.points[0]
        if math.hypot(x0 - self._px[-1], y0 - self._py[-1]) > 0.01:
            raise ValueError("a leg must start where the van is")
        shape = self._shape(leg, red_waits_s or {})
        if len(shape.points) >= 2:
            self._profile(shape, speed_factor)

    def build(self) -> Trajectory:
        return Trajectory(
            knot_t=list(self._kt),
            knot_s=list(self._ks),
            knot_v=list(self._kv),
            path_x=list(self._px),
            path_y=list(self._py),
            path_s=list(self._ps),
            segment_limits_mps=list(self._seg_limits),
        )

    def _shape(self, leg: LegGeometry, red_waits_s: Mapping[int, float]) -> _Shape:
        """The leg's driven geometry: corners rounded, stop lines inserted."""
        limits = self.limits
        # Points closer than 1 cm are one point: the first of them stays, except that
        # the leg's last point does, so the leg ends exactly where it should.
        pts: list[XY] = [leg.points[0]]
        lims: list[float] = []
        index_map: dict[int, int] = {0: 0}
        for i in range(1, len(leg.points)):
            (xa, ya), (xb, yb) = pts[-1], leg.points[i]
            if math.hypot(xb - xa, yb - ya) >= 0.01:
                pts.append(leg.points[i])
                lims.append(leg.speed_limits_mps[i - 1])
            elif i == len(leg.points) - 1 and len(pts) > 1:
                pts[-1] = leg.points[i]
            index_map[i] = len(pts) - 1
        # A red shorter than a millisecond is a green: it would not move the clock.
        waits_at = {
            index_map[i]: w
            for i, w in red_waits_s.items()
            if i in index_map and i in leg.signals and w >= MIN_WAIT_S
        }
        shape = _Shape(points=[pts[0]], segment_limits=[], segment_caps=[], caps=[0.0], waits=[0.0])
        if len(pts) < 2:
            return shape

        lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in pairwise(pts)]
        units = [
            ((b[0] - a[0]) / n, (b[1] - a[1]) / n)
            for a, b, n in zip(pts, pts[1:], lengths, strict=False)
        ]
        add = shape.add

        for k in range(1, len(pts) - 1):
            (px, py), (ux, uy), (wx, wy) = pts[k], units[k - 1], units[k]
            limit_in, limit_out = lims[k - 1], lims[k]
            cos_turn = max(-1.0, min(1.0, ux * wx + uy * wy))
            turn_deg = math.degrees(math.acos(cos_turn))
            tangent_m = min(limits.corner_tangent_m, 0.45 * lengths[k - 1], 0.45 * lengths[k])
            wait_s = waits_at.get(k, 0.0)
            if turn_deg >= limits.u_turn_deg:
                add(pts[k], limit_in, 0.0, wait_s + limits.u_turn_hold_s)
            elif turn_deg >= STRAIGHT_DEG:
                corner = corner_speed_mps(turn_deg, tangent_m, limits.lateral_accel_mps2)
                a = (px - ux * tangent_m, py - uy * tangent_m)
                b = (px + wx * tangent_m, py + wy * tangent_m)
                add(a, limit_in, 0.0 if wait_s > 0 else corner, wait_s)
                # The rounding curve: a quadratic Bezier from a via the corner to b,
                # driven at no more than the corner speed all along.
                steps = max(2, math.ceil(turn_deg / CURVE_STEP_DEG))
                curve_limit = min(limit_in, limit_out)
                for j in range(1, steps):
                    f = j / steps
                    c0, c1, c2 = (1 - f) ** 2, 2 * (1 - f) * f, f * f
                    add(
                        (c0 * a[0] + c1 * px + c2 * b[0], c0 * a[1] + c1 * py + c2 * b[1]),
                        curve_limit,
                        corner,
                        segment_cap=corner,
                    )
                add(b, curve_limit, corner, segment_cap=corner)
            elif wait_s > 0:
                # Straight over a red light: stop at the line, then cross.
                add((px - ux * tangent_m, py - uy * tangent_m), limit_in, 0.0, wait_s)
                add(pts[k], limit_in, math.inf)
            else:
                add(pts[k], limit_in, math.inf)
        add(pts[-1], lims[-1], 0.0)
        return shape

    def _profile(self, shape: _Shape, speed_factor: float) -> None:
        """Two-pass velocity profile over knots, integrated to time and appended."""
        limits = self.limits
        points, seg_limits = shape.points, shape.segment_limits
        # Knots: every point of the shape, plus at least one inside each segment so
        # two standstill points are never adjacent (the piece would take forever).
        s0 = self._ks[-1]
        cumulative = [0.0]
        for (xa, ya), (xb, yb) in pairwise(points):
            cumulative.append(cumulative[-1] + math.hypot(xb - xa, yb - ya))
        knot_s = [0.0]
        knot_cap = [0.0]
        knot_wait = [0.0]
        segment_caps = [
            min(limit * speed_factor, cap)
            for limit, cap in zip(seg_limits, shape.segment_caps, strict=True)
        ]
        for i, segment_cap in enumerate(segment_caps):
            length = cumulative[i + 1] - cumulative[i]
            pieces = max(2, math.ceil(length / limits.knot_spacing_m))
            for j in range(1, pieces):
                knot_s.append(cumulative[i] + length * j / pieces)
                knot_cap.append(segment_cap)
                knot_wait.append(0.0)
            next_cap = segment_caps[i + 1] if i + 1 < len(segment_caps) else segment_cap
            knot_s.append(cumulative[i + 1])
            knot_cap.append(min(shape.caps[i + 1], segment_cap, next_cap))
            knot_wait.append(shape.waits[i + 1])

        n = len(knot_s)
        v = list(knot_cap)
        v[0] = 0.0
        v[-1] = 0.0
        two_a, two_d = 2.0 * limits.accel_mps2, 2.0 * limits.decel_mps2
        for i in range(1, n):
            v[i] = min(v[i], math.sqrt(v[i - 1] ** 2 + two_a * (knot_s[i] - knot_s[i - 1])))
        for i in range(n - 2, -1, -1):
            v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + two_d * (knot_s[i + 1] - knot_s[i])))

        t = self._kt[-1]
        for i in range(1, n):
            t += 2.0 * (knot_s[i] - knot_s[i - 1]) / (v[i - 1] + v[i])
            self._kt.append(t)
            self._ks.append(s0 + knot_s[i])
            self._kv.append(v[i])
            if knot_wait[i] > 0:
                t += knot_wait[i]
                self._kt.append(t)
                self._ks.append(s0 + knot_s[i])
                self._kv.append(0.0)

        # Path vertices get exactly the knots' distances, so a van at rest on a vertex
        # is found on the segment it arrived by.
        for i in range(1, len(points)):
            self._px.append(points[i][0])
            self._py.append(points[i][1])
            self._ps.append(s0 + cumulative[i])
            self._seg_limits.append(seg_limits[i - 1])
