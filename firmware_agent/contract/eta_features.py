"""ETA features: what the on-device model sees for each remaining stop, and the naive baseline.

Pure code: no I/O, no clock. Times come in as arguments (UTC-aware datetimes), the day's
plan from the manifest, the van's recent motion from the fixes it is fed.

- :class:`RoutePlan` is built once per manifest: every stop's cumulative distance along
  the plan (``plan_m``), and :meth:`RoutePlan.project` places the van on that same axis.
- :class:`SpeedHistory` is fed every fix and keeps, in bounded memory, the speeds and
  GNSS quality of the last 15 minutes.
- :func:`eta_features` turns (now, plan, the van's position, served stops, history) into
  one float32 row per remaining stop, columns as :data:`FEATURE_NAMES` (the model's input
  contract, versioned by :data:`FEATURES_VERSION`).
- :func:`naive_eta_s` is the naive ETA (distance / recent average speed): over the route
  and the 15-minute mean (``naive_eta_s``, a feature), and over the straight lines
  through the remaining stops and the 5-minute mean (``chain_naive_s``, the customer's
  naive: the model's anchor, published beside its answer).

Where the van is on the plan
----------------------------
Every stop gets a plan coordinate ``plan_m`` (metres, non-decreasing in stop order); the
van gets ``along_m`` on the same axis; the remaining distance to stop ``k`` is
``plan_m[k] - along_m``.

With a planned route, each stop is projected onto the polyline *monotonically in stop
order*: of all assignments of stops to points along the route that never go backwards,
the one with the smallest total stop-to-route distance (a dynamic programme over stops x
segments, each stop's cost capped at ``far_m``). A greedy "nearest point ahead" would
latch onto the first street that passes near a stop and starve the stops after it; the
global optimum puts an out-and-back route's return-leg stops on the return leg (plans
beyond :data:`DP_MAX_CELLS` stops x segments, 800 stops on a 10,000-vertex route, fall
back to that greedy search to bound memory; 150 x 5,000 takes ~40 ms on a PC). A stop
farther than ``far_m`` (300 m) from its route point is *off the route*: the legs into and
out of it are the straight lines between stops (the chain). Without a route, every stop
is on the chain: ``plan_m`` is the cumulative straight-line distance between stops.

The van is projected onto the route within a window ahead of its previous projection:
as far as it can have driven since (40 m/s, plus 30 m), and 50 m back for GNSS noise;
the window cuts segments, so one long segment cannot offer its far end. Within it the
van takes the point minimising ``offset + 0.1 / max(1, dt_s) * metres ahead + 1.0 *
metres behind``: a metre ahead is cheap but not free (one second after the last match),
cheaper after an outage (the van may be anywhere it could have driven), and a metre
backwards costs a metre of offset (vans do not reverse along their route). So a loop or
an out-and-back route does not make the projection jump to the other leg, which passes
just as close; where the two legs lie closer together than the GNSS noise, a jump stays
within one window. Nothing within ``far_m`` in the window (a detour, a long outage)
widens the search to the rest of the route ahead; nothing there either means the van
is off the route, and its last match is kept. Without a previous projection the search
starts at the last served on-route stop before the next unserved one.
The remaining distance to the next
unserved stop is along the route when both the van and that stop are on it and the stop
is still ahead, and the straight line otherwise; the stops after it add their plan legs.
Stops served out of order stay on the chain (the van may still drive past them).
When the driver is not taking the planned order, the caller says which stop the van
heads for (``next_stop``) and the order it expects (:func:`eta_features`' ``order``):
the remaining distance and the stops "before" each stop then follow that order
(firmware_agent/eta/sequence.py); the columns keep their meaning.

Time zone
---------
The manifest carries no time zone (docs/manifest.schema.json has none, and neither the
simulator's manifests nor their extra keys add one), so time of day is the *UTC* hour
(sin/cos). That is exact for a fleet in one zone; a model for fleets across zones needs
a ``timezone`` in the manifest and a new :data:`FEATURES_VERSION`. The day of week is the
manifest's ``date``, the local service day, so a shift never changes weekday at UTC
midnight.

Lateness against the plan
-------------------------
The manifest has no planned arrival times, only promised windows on some stops. The
lateness features are therefore:

- ``late_s``: at the first remaining stop (in stop order) with a promised window, the
  naive arrival (now + its :func:`naive_eta_s`) against that window: seconds after
  ``window_end`` (positive), before ``window_start`` (negative), 0 inside. It answers "on
  the current pace, does the next promise hold?". ``late_known`` is 0 (and ``late_s`` 0)
  when no remaining stop has a window.
- ``day_elapsed_s``: seconds since ``day_start`` (the caller's start of the shift; by
  default the first fix the history saw), and ``pace_s_per_stop``: elapsed seconds per
  stop served so far (:data:`NOMINAL_STOP_INTERVAL_S` before the first), which the model
  compares with what a stop usually takes.

Cost
----
:func:`eta_features` runs at every ETA update: 150 remaining stops at 1 Hz on a
Raspberry Pi 4 (up to 10 Hz fixes). Everything per stop is a numpy vector operation (no
Python loop over stops); :meth:`SpeedHistory.update` is O(1) amortised per fix, and
:meth:`SpeedHistory.stats` reduces fixed 902-slot arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, overload

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import FeatureError
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.geo import LocalFrame, approx_distance_m
from firmware_agent.contract.manifest import Manifest

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Served = AbstractSet[str] | Sequence[bool] | BoolArray
"""Which stops are served: a set of stop ids (unknown ids are ignored) or one flag per stop."""

FEATURES_VERSION: Final = "eta-features/2"

STOP_TYPE_ORDER: Final = ("house", "apartment", "business", "locker", "other")
"""The manifest's stop types in feature order (the one-hot and per-type count columns)."""

FEATURE_NAMES: Final[tuple[str, ...]] = (
    # Per stop: where it is on the plan, and what must happen before it.
    "remaining_m",  # distance along the plan from the van (m)
    "straight_m",  # straight-line distance from the van (m)
    "stops_before",  # remaining stops before it, in stop order
    "parcels_before",  # parcels at those stops (dwell work before it)
    *(f"before_{t}" for t in STOP_TYPE_ORDER),  # those stops by type
    *(f"type_{t}" for t in STOP_TYPE_ORDER),  # its own type, one-hot
    "parcels",  # its own parcels
    # Per van: motion (m/s).
    "speed_mps",  # current speed; 0 when unknown
    "speed_known",  # 1 if a speed at most 10 s old is known
    "mean_speed_60s_mps",  # time-weighted means, stops included
    "mean_speed_5m_mps",
    "mean_speed_15m_mps",
    "moving_speed_15m_mps",  # the mean while moving (>= 1 m/s) over 15 min
    "speed_coverage_15m",  # share of the last 15 min with a speed estimate (0..1)
    # Per van: when.
    "tod_sin",  # UTC time of day on the unit circle
    "tod_cos",
    "dow_sin",  # the manifest's service day (Monday = 0) on the unit circle
    "dow_cos",
    # Per van: against the plan.
    "late_s",  # naive arrival at the next windowed stop vs its window (s, + late)
    "late_known",  # 1 if a remaining stop has a window
    "day_elapsed_s",  # since day_start (s)
    "pace_s_per_stop",  # day_elapsed_s per stop served
    # Per van: GNSS quality over the last 60 s.
    "hdop",  # mean HDOP; DEFAULT_HDOP when unknown
    "hdop_known",
    "sats",  # mean satellites used; 0 when unknown
    "fix_fraction_60s",  # share of the seconds with a position fix (0..1)
    # The baseline, also the model's natural reference.
    "naive_eta_s",  # naive_eta_s(remaining_m, mean_speed_15m_mps)
    # eta-features/2: the customer's naive ETA (the model's anchor) and the dwell.
    "chain_m",  # straight lines from the van through the remaining stops, in stop order (m)
    "chain_naive_s",  # naive_eta_s(chain_m, mean_speed_5m_mps): the customer's naive
    "dwell_s",  # time at the stop the van stands at (since its arrival; 0 while driving)
    "parcels_here",  # parcels left to hand over at that stop (0 while driving)
)
N_FEATURES: Final = len(FEATURE_NAMES)
_COL: Final = {name: i for i, name in enumerate(FEATURE_NAMES)}

# --- plan geometry -------------------------------------------------------------------
FAR_FROM_ROUTE_M: Final = 300.0  # a stop or van farther than this from the route is off it
PROJECTION_BACK_M: Final = 50.0  # how far behind its last projection the van may be matched
PROJECTION_MARGIN_M: Final = 30.0  # slack ahead, beyond what the van can have driven
MAX_VAN_SPEED_MPS: Final = 40.0  # 144 km/h: the projection window's reach per second
AHEAD_COST: Final = 0.1  # metres of offset one metre ahead costs, 1 s after the last match
BEHIND_COST: Final = 1.0  # ... and one metre behind it: vans do not drive backwards
DP_MAX_CELLS: Final = 8_000_000  # stops x segments (int32 backtrack: 32 MB, once a day)

# --- speeds ----------------------------------------------------------------------------
HISTORY_S: Final = 900  # the longest window: 15 minutes of one-second slots
# Two spare slots: the fix at ``now`` (and one a second later) must not evict the oldest
# second the 15-minute window still reads.
_RING: Final = HISTORY_S + 2
MOVING_THRESHOLD_MPS: Final = 1.0
"""Doppler speed noise at rest is 0.05-0.3 m/s; a van crawling at walking pace is moving."""
MAX_SPEED_GAP_S: Final = 5.0  # a fix's own speed stands for at most this much time before it
DERIVED_SPEED_BASELINE_S: Final = 5.0  # speed from positions over at least this (noise / dt)
CURRENT_SPEED_MAX_AGE_S: Final = 10.0
MAX_PLAUSIBLE_SPEED_MPS: Final = 70.0  # beyond this a speed is a glitch, not a van
NOMINAL_SPEED_MPS: Final = 5.0  # 18 km/h: an urban delivery day's average, stops included
NOMINAL_MOVING_SPEED_MPS: Final = 8.0  # 29 km/h: urban driving between stops
MIN_BASELINE_SPEED_MPS: Final = 2.0  # the naive ETA's floor: a parked van is not infinitely far

# --- GNSS and the plan ----------------------------------------------------------------
QUALITY_WINDOW_S: Final = 60
DEFAULT_HDOP: Final = 10.0  # unknown HDOP reads as poor, with hdop_known = 0
NOMINAL_STOP_INTERVAL_S: Final = 360.0  # pace before the first stop is served (drive + dwell)
MAX_ABS_LATE_S: Final = 12 * 3600.0
MAX_PACE_S: Final = 4 * 3600.0
_FEATURE_BOUND: Final = 1e9  # every feature is clipped to +-this: finite in float32

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_US: Final = 1_000_000


def _utc_us(t: datetime, what: str) -> int:
    """Microseconds since the epoch; integers keep one-second binning exact at 10 Hz."""
    if t.tzinfo is None:
        raise FeatureError(f"{what} is a naive datetime: times in the agent are UTC-aware")
    return (t - _EPOCH) // _ONE_US


# =====================================================================================
# The naive baseline
# =====================================================================================


@overload
def naive_eta_s(remaining_distance_m: float, recent_speed_mps: float) -> float: ...
@overload
def naive_eta_s(remaining_distance_m: FloatArray, recent_speed_mps: float) -> FloatArray: ...
def naive_eta_s(
    remaining_distance_m: float | FloatArray, recent_speed_mps: float
) -> float | FloatArray:
    """The naive ETA in seconds: remaining distance / recent average speed.

    ``recent_speed_mps`` is meant to be the 15-minute time-weighted mean speed, stops
    included (:attr:`SpeedStats.mean_15m_mps`): what "average speed" means to the
    dispatch tools this replaces. It is floored at :data:`MIN_BASELINE_SPEED_MPS` (2 m/s),
    so a van parked for 15 minutes gives a long but finite ETA; a non-finite speed reads
    as the floor. A negative or non-finite distance reads as 0. Works elementwise on an
    array of distances.
    """
    speed = recent_speed_mps if math.isfinite(recent_speed_mps) else 0.0
    speed = max(speed, MIN_BASELINE_SPEED_MPS)
    if isinstance(remaining_distance_m, np.ndarray):
        distance = np.nan_to_num(remaining_distance_m, nan=0.0, posinf=0.0, neginf=0.0)
        return np.maximum(distance, 0.0) / speed
    if not math.isfinite(remaining_distance_m) or remaining_distance_m < 0.0:
        return 0.0
    return remaining_distance_m / speed


# =====================================================================================
# Speed history
# =====================================================================================


@dataclass(frozen=True, slots=True)
class SpeedStats:
    """What :class:`SpeedHistory` knows at one instant; every number is finite.

    Means are time-weighted over the last 60 s / 5 min / 15 min (to the second). A window
    without speed data takes the next longer window's mean, and the 15-minute mean
    :data:`NOMINAL_SPEED_MPS`; ``moving_15m_mps`` is :data:`NOMINAL_MOVING_SPEED_MPS`
    when the van has not moved in 15 minutes. ``coverage_15m`` says how much of the 15
    minutes had a speed estimate, so a model can tell a default from a measurement.
    """

    speed_mps: float
    speed_known: bool
    mean_60s_mps: float
    mean_5m_mps: float
    mean_15m_mps: float
    moving_15m_mps: float
    coverage_15m: float
    hdop: float
    hdop_known: bool
    sats: float
    fix_fraction_60s: float
    first_fix: datetime | None


class SpeedHistory:
    """The van's recent speed and GNSS quality, fed one fix at a time, in time order.

    Memory is fixed: 902 one-second slots (15 minutes and two), reused in a ring. A fix's speed
    covers the interval since the previous speed (time-weighted means are right at 1 Hz
    and at 10 Hz alike), split at second boundaries. A gap longer than
    :data:`MAX_SPEED_GAP_S` (a tunnel) is covered by the straight-line distance over the
    gap instead, when both ends have a position. Fixes without a speed (a GGA-only
    receiver) get one from positions at least :data:`DERIVED_SPEED_BASELINE_S` apart,
    because position noise over 0.1 s would read as tens of m/s. Speeds outside
    [0, :data:`MAX_PLAUSIBLE_SPEED_MPS`] are ignored.

    Undated fixes and fixes not after the previous one are counted in ``ignored`` and
    otherwise dropped. :meth:`update` is O(1) amortised (a gap touches at most 900 slots).
    """

    __slots__ = (
        "_anchor",
        "_covered_until_us",
        "_current",
        "_dist_m",
        "_first_us",
        "_fix",
        "_hdop_n",
        "_hdop_sum",
        "_last_us",
        "_moving_dist_m",
        "_moving_s",
        "_sats_n",
        "_sats_sum",
        "_sec",
        "_speed_s",
        "ignored",
        "moving_threshold_mps",
    )

    def __init__(self, *, moving_threshold_mps: float = MOVING_THRESHOLD_MPS) -> None:
        self.moving_threshold_mps = moving_threshold_mps
        n = _RING
        self._sec = np.full(n, -1, dtype=np.int64)  # which second each slot holds
        self._speed_s = np.zeros(n)  # seconds covered by a speed estimate
        self._dist_m = np.zeros(n)  # sum of speed x seconds
        self._moving_s = np.zeros(n)
        self._moving_dist_m = np.zeros(n)
        self._fix = np.zeros(n, dtype=np.bool_)  # a position fix in that second
        self._hdop_sum = np.zeros(n)
        self._hdop_n = np.zeros(n)
        self._sats_sum = np.zeros(n)
        self._sats_n = np.zeros(n)
        self._first_us: int | None = None
        self._last_us: int | None = None
        self._covered_until_us: int | None = None  # end of the last interval with a speed
        self._anchor: tuple[int, float, float] | None = None  # (t_us, lat, lon)
        self._current: tuple[int, float] | None = None  # (t_us, speed_mps)
        self.ignored = 0

    def _slot(self, sec: int) -> int:
        i = sec % _RING
        if self._sec[i] != sec:
            self._sec[i] = sec
            self._speed_s[i] = self._dist_m[i] = 0.0
            self._moving_s[i] = self._moving_dist_m[i] = 0.0
            self._fix[i] = False
            self._hdop_sum[i] = self._hdop_n[i] = 0.0
            self._sats_sum[i] = self._sats_n[i] = 0.0
        return i

    def _add_speed(self, t0_us: int, t1_us: int, speed_mps: float) -> None:
        moving = speed_mps >= self.moving_threshold_mps
        t0_us = max(t0_us, t1_us - HISTORY_S * _US)  # older than 15 min is never read
        while t0_us < t1_us:
            sec = t0_us // _US
            end_us = min(t1_us, (sec + 1) * _US)
            dt_s = (end_us - t0_us) / _US
            i = self._slot(sec)
            self._speed_s[i] += dt_s
            self._dist_m[i] += speed_mps * dt_s
            if moving:
                self._moving_s[i] += dt_s
                self._moving_dist_m[i] += speed_mps * dt_s
            t0_us = end_us

    def _speed_from(self, t_us: int, lat: float, lon: float) -> float | None:
        """Straight-line speed from the anchor position; None if implausible or no anchor."""
        if self._anchor is None:
            return None
        a_us, a_lat, a_lon = self._anchor
        span_s = (t_us - a_us) / _US
        if span_s <= 0.0 or span_s > HISTORY_S:
            return None
        speed = approx_distance_m(a_lat, a_lon, lat, lon) / span_s
        return speed if speed <= MAX_PLAUSIBLE_SPEED_MPS else None

    def update(self, fix: Fix) -> None:
        """Take one fix into the history (see the class doc for what counts)."""
        if fix.time is None:
            self.ignored += 1
            return
        t_us = _utc_us(fix.time, "fix.time")
        if self._last_us is not None and t_us <= self._last_us:
            self.ignored += 1
            return
        if self._first_us is None:
            self._first_us = t_us
        self._last_us = t_us
        sec = t_us // _US
        lat, lon = fix.lat, fix.lon
        has_pos = lat is not None and lon is not None
        if has_pos:
            self._fix[self._slot(sec)] = True
        if fix.hdop is not None and math.isfinite(fix.hdop) and fix.hdop > 0.0:
            i = self._slot(sec)
            self._hdop_sum[i] += fix.hdop
            self._hdop_n[i] += 1.0
        if fix.sats_used is not None and fix.sats_used >= 0:
            i = self._slot(sec)
            self._sats_sum[i] += fix.sats_used
            self._sats_n[i] += 1.0

        speed = fix.speed_mps
        if speed is not None and not (0.0 <= speed <= MAX_PLAUSIBLE_SPEED_MPS):
            speed = None  # NaN fails the comparison too
        covered = self._covered_until_us
        if speed is not None:
            if covered is not None and t_us > covered:
                if (t_us - covered) / _US <= MAX_SPEED_GAP_S:
                    self._add_speed(covered, t_us, speed)
                elif lat is not None and lon is not None:
                    gap_speed = self._speed_from(t_us, lat, lon)
                    if gap_speed is not None:
                        self._add_speed(covered, t_us, gap_speed)
            self._covered_until_us = t_us
            self._current = (t_us, speed)
            if lat is not None and lon is not None:
                self._anchor = (t_us, lat, lon)
        elif lat is not None and lon is not None:
            anchor = self._anchor
            if anchor is None or (t_us - anchor[0]) / _US > HISTORY_S:
                self._anchor = (t_us, lat, lon)
            elif (t_us - anchor[0]) / _US >= DERIVED_SPEED_BASELINE_S:
                derived = self._speed_from(t_us, lat, lon)
                if derived is not None:
                    start = anchor[0] if covered is None else max(covered, anchor[0])
                    self._add_speed(start, t_us, derived)
                    self._covered_until_us = t_us
                    self._current = (t_us, derived)
                self._anchor = (t_us, lat, lon)

    def stats(self, now: datetime) -> SpeedStats:
        """The figures at ``now``: windows end at ``now`` (rounded up to the second)."""
        now_us = _utc_us(now, "now")
        end_sec = -(-now_us // _US)  # slots [end_sec - w, end_sec) make the last w seconds
        age = end_sec - 1 - self._sec
        live = (self._sec >= 0) & (age >= 0)

        def window(seconds: int) -> BoolArray:
            return live & (age < seconds)

        def mean(mask: BoolArray, dist: FloatArray, time_s: FloatArray) -> float | None:
            covered_s = float(time_s[mask].sum())
            return float(dist[mask].sum()) / covered_s if covered_s > 1e-9 else None

        w60, w5m, w15m = window(60), window(300), window(HISTORY_S)
        m15 = mean(w15m, self._dist_m, self._speed_s)
        m15_f = NOMINAL_SPEED_MPS if m15 is None else m15
        m5 = mean(w5m, self._dist_m, self._speed_s)
        m5_f = m15_f if m5 is None else m5
        m60 = mean(w60, self._dist_m, self._speed_s)
        moving = mean(w15m, self._moving_dist_m, self._moving_s)
        coverage = min(1.0, float(self._speed_s[w15m].sum()) / HISTORY_S)

        q = window(QUALITY_WINDOW_S)
        hdop_n = float(self._hdop_n[q].sum())
        sats_n = float(self._sats_n[q].sum())
        fix_fraction = 0.0
        if self._first_us is not None:
            seen_s = min(QUALITY_WINDOW_S, max(1, end_sec - self._first_us // _US))
            fix_fraction = min(1.0, float(self._fix[q].sum()) / seen_s)

        current = self._current
        fresh = current is not None and 0 <= now_us - current[0] <= CURRENT_SPEED_MAX_AGE_S * _US
        return SpeedStats(
            speed_mps=current[1] if fresh and current is not None else 0.0,
            speed_known=fresh,
            mean_60s_mps=m5_f if m60 is None else m60,
            mean_5m_mps=m5_f,
            mean_15m_mps=m15_f,
            moving_15m_mps=NOMINAL_MOVING_SPEED_MPS if moving is None else moving,
            coverage_15m=coverage,
            hdop=float(self._hdop_sum[q].sum()) / hdop_n if hdop_n else DEFAULT_HDOP,
            hdop_known=bool(hdop_n),
            sats=float(self._sats_sum[q].sum()) / sats_n if sats_n else 0.0,
            fix_fraction_60s=fix_fraction,
            first_fix=None if self._first_us is None else _EPOCH + self._first_us * _ONE_US,
        )


# =====================================================================================
# The plan
# =====================================================================================


@dataclass(frozen=True, slots=True)
class PlanPosition:
    """The van placed on a :class:`RoutePlan` at ``time``.

    ``along_m`` is on the plan's axis: the remaining distance to stop ``k`` is
    ``plan.plan_m[k] - along_m``. ``next_index`` is the stop the van heads for: the
    first unserved stop in stop order unless :meth:`RoutePlan.project` was told another
    (the number of stops when all are served). ``route_m`` is the last matched
    point along the route polyline, kept while the van is off the route so the next
    projection searches from there (None without a route, or before any match);
    ``on_route`` says whether this fix matched it. Pass the previous position as
    ``since`` to :meth:`RoutePlan.project`.
    """

    time: datetime
    lat: float
    lon: float
    along_m: float
    next_index: int
    route_m: float | None
    on_route: bool


def _prefix_min(cost: FloatArray) -> tuple[FloatArray, npt.NDArray[np.int32]]:
    """Running minimum of ``cost`` and the earliest index attaining it."""
    running = np.minimum.accumulate(cost)
    before = np.concatenate(([np.inf], running[:-1]))
    new_min = cost < before  # strict: ties keep the earlier index
    where = np.where(new_min, np.arange(cost.size, dtype=np.int32), np.int32(0))
    return running, np.maximum.accumulate(where).astype(np.int32)


class RoutePlan:
    """A manifest's stops on one distance axis (see the module doc for the choices).

    Built once per manifest with :meth:`from_manifest`; immutable afterwards (its arrays
    are read-only). Per stop, in stop order: ``plan_m`` (cumulative metres, non-
    decreasing), ``on_route`` and ``route_m`` (where on the route polyline; 0 when off
    it), ``route_offset_m`` (stop to that point; ``inf`` when off the route or without
    one), plus what the features need (local coordinates, types, parcels, windows).
    """

    def __init__(self, manifest: Manifest, *, far_m: float = FAR_FROM_ROUTE_M) -> None:
        stops = manifest.stops
        n = len(stops)
        self.far_m = far_m
        self.date: date = manifest.date
        self.stop_ids: tuple[str, ...] = tuple(s.id for s in stops)
        self.index: dict[str, int] = {s.id: i for i, s in enumerate(stops)}
        if stops:
            origin = (stops[0].lat, stops[0].lon)
        elif manifest.route:
            origin = manifest.route[0]
        else:
            origin = (0.0, 0.0)
        self.frame = LocalFrame(*origin)
        to_local = self.frame.to_local
        self.stop_xy: FloatArray = np.array(
            [to_local(s.lat, s.lon) for s in stops], dtype=np.float64
        ).reshape(n, 2)
        self.parcels: FloatArray = np.array([len(s.parcels) for s in stops], dtype=np.float64)
        codes = np.array([STOP_TYPE_ORDER.index(s.type) for s in stops], dtype=np.intp)
        self.type_onehot: FloatArray = np.eye(len(STOP_TYPE_ORDER))[codes].reshape(
            n, len(STOP_TYPE_ORDER)
        )
        self.window_start_s: FloatArray = np.array(
            [s.window_start.timestamp() if s.window_start else np.nan for s in stops]
        ).reshape(n)
        self.window_end_s: FloatArray = np.array(
            [s.window_end.timestamp() if s.window_end else np.nan for s in stops]
        ).reshape(n)
        self.has_window: BoolArray = np.isfinite(self.window_end_s)

        route = manifest.route or ()
        xy = np.array([to_local(lat, lon) for lat, lon in route], dtype=np.float64)
        xy = xy.reshape(len(route), 2)
        self.seg_a: FloatArray = xy[:-1]
        self.seg_d: FloatArray = np.diff(xy, axis=0)
        self.seg_len: FloatArray = np.hypot(self.seg_d[:, 0], self.seg_d[:, 1])
        self.route_cum_m: FloatArray = np.concatenate(([0.0], np.cumsum(self.seg_len)))
        self.has_route = len(self.seg_len) > 0

        if self.has_route and n:
            route_m, offset_m = self._stops_on_route()
            on_route = offset_m <= far_m
        else:
            route_m, offset_m = np.zeros(n), np.full(n, np.inf)
            on_route = np.zeros(n, dtype=np.bool_)
        route_m = np.where(on_route, route_m, 0.0)
        self.on_route: BoolArray = on_route
        self.route_m: FloatArray = route_m
        self.route_offset_m: FloatArray = np.where(on_route, offset_m, np.inf)

        # Legs between consecutive stops: along the route where both ends are on it,
        # the straight line otherwise (the chain).
        step = np.diff(self.stop_xy, axis=0)
        chain = np.hypot(step[:, 0], step[:, 1])
        both = on_route[1:] & on_route[:-1]
        legs = np.where(both, np.diff(route_m), chain)
        first = route_m[0] if n and on_route[0] else 0.0
        self.plan_m: FloatArray = np.concatenate(([first], first + np.cumsum(legs)))[:n]

        for array in (
            self.stop_xy,
            self.parcels,
            self.type_onehot,
            self.window_start_s,
            self.window_end_s,
            self.has_window,
            self.seg_a,
            self.seg_d,
            self.seg_len,
            self.route_cum_m,
            self.on_route,
            self.route_m,
            self.route_offset_m,
            self.plan_m,
        ):
            array.setflags(write=False)

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, far_m: float = FAR_FROM_ROUTE_M) -> RoutePlan:
        """The plan of ``manifest``; ``far_m`` is how far off the route a stop may lie."""
        return cls(manifest, far_m=far_m)

    @property
    def n_stops(self) -> int:
        return len(self.stop_ids)

    # -- geometry ---------------------------------------------------------------------

    def _on_segments(
        self,
        x: float,
        y: float,
        lo: int,
        hi: int,
        *,
        from_m: float = -math.inf,
        to_m: float = math.inf,
    ) -> tuple[FloatArray, FloatArray]:
        """(along-route metres, distance) of the nearest point on each segment lo..hi-1.

        Only points between ``from_m`` and ``to_m`` along the route count: a window
        must cut a long segment, or an out-and-back road of one segment each way would
        offer its whole return leg to a van on the way out.
        """
        a, d, length = self.seg_a[lo:hi], self.seg_d[lo:hi], self.seg_len[lo:hi]
        start = self.route_cum_m[lo:hi]
        rx, ry = x - a[:, 0], y - a[:, 1]
        positive = length > 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(positive, (rx * d[:, 0] + ry * d[:, 1]) / (length * length), 0.0)
            t_lo = np.where(positive, (from_m - start) / length, 0.0)
            t_hi = np.where(positive, (to_m - start) / length, 1.0)
        t = np.minimum(np.maximum(t, np.clip(t_lo, 0.0, 1.0)), np.clip(t_hi, 0.0, 1.0))
        dist = np.hypot(rx - t * d[:, 0], ry - t * d[:, 1])
        return start + t * length, dist

    def _point_at(self, along_m: FloatArray) -> FloatArray:
        """Local (x, y) of points at the given along-route distances."""
        j = np.clip(np.searchsorted(self.route_cum_m, along_m, side="right") - 1, 0, None)
        j = np.minimum(j, self.seg_len.size - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(
                self.seg_len[j] > 0.0, (along_m - self.route_cum_m[j]) / self.seg_len[j], 0.0
            )
        t = np.clip(t, 0.0, 1.0)
        return self.seg_a[j] + t[:, None] * self.seg_d[j]

    def _stops_on_route(self) -> tuple[FloatArray, FloatArray]:
        """Each stop's along-route metres and offset, monotone in stop order."""
        n, m = self.n_stops, self.seg_len.size
        if n * m > DP_MAX_CELLS:
            return self._stops_on_route_greedy()
        back = np.zeros((n, m), dtype=np.int32)
        x0, y0 = self.stop_xy[0]
        # Capped: an off-route stop costs the same anywhere, so it constrains nothing.
        cost = np.minimum(self._on_segments(float(x0), float(y0), 0, m)[1], self.far_m)
        for k in range(1, n):
            x, y = self.stop_xy[k]
            row = np.minimum(self._on_segments(float(x), float(y), 0, m)[1], self.far_m)
            running, arg = _prefix_min(cost)
            cost = row + running
            back[k] = arg
        chosen = np.zeros(n, dtype=np.intp)
        j = int(np.argmin(cost))  # the earliest of equals
        for k in range(n - 1, -1, -1):
            chosen[k] = j
            j = int(back[k, j])
        along = np.empty(n)
        for k, seg in enumerate(chosen):
            x, y = self.stop_xy[k]
            along[k] = self._on_segments(float(x), float(y), int(seg), int(seg) + 1)[0][0]
        return self._finish_stops(along)

    def _stops_on_route_greedy(self) -> tuple[FloatArray, FloatArray]:
        """Fallback for huge plans: each stop at its nearest point ahead of the last one."""
        m = self.seg_len.size
        along = np.zeros(self.n_stops)
        from_m = 0.0
        for k in range(self.n_stops):
            lo = int(np.searchsorted(self.route_cum_m, from_m, side="right")) - 1
            lo = min(max(lo, 0), m - 1)
            x, y = self.stop_xy[k]
            s, dist = self._on_segments(float(x), float(y), lo, m, from_m=from_m)
            best = int(np.argmin(dist))
            along[k] = float(s[best])
            if dist[best] <= self.far_m:
                from_m = along[k]
        return self._finish_stops(along)

    def _finish_stops(self, along: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Offsets of the stops at ``along``; on-route stops made monotone in stop order."""
        offset = self._offset_at(along)
        on = offset <= self.far_m
        # Two stops on one segment may come out in the wrong order: the later one is
        # pulled forward to the earlier one's point, and its offset measured from there.
        # Off-route stops sit anywhere between their neighbours and do not take part.
        along = along.copy()
        along[on] = np.maximum.accumulate(along[on])
        offset[on] = self._offset_at(along)[on]
        return along, offset

    def _offset_at(self, along: FloatArray) -> FloatArray:
        point = self._point_at(along)
        return np.hypot(self.stop_xy[:, 0] - point[:, 0], self.stop_xy[:, 1] - point[:, 1])

    # -- queries ------------------------------------------------------------------------

    def served_mask(self, served: Served) -> BoolArray:
        """One flag per stop from a set of stop ids (unknown ids ignored) or per-stop flags."""
        n = self.n_stops
        if isinstance(served, np.ndarray):
            if served.shape != (n,):
                raise FeatureError(f"served flags have shape {served.shape}, expected ({n},)")
            return served.astype(np.bool_)
        if isinstance(served, AbstractSet):
            mask = np.zeros(n, dtype=np.bool_)
            for stop_id in served:
                i = self.index.get(stop_id)
                if i is not None:
                    mask[i] = True
            return mask
        if len(served) != n:
            raise FeatureError(f"{len(served)} served flags for {n} stops")
        return np.array(served, dtype=np.bool_).reshape(n)

    def project(
        self,
        lat: float,
        lon: float,
        now: datetime,
        served: Served,
        since: PlanPosition | None = None,
        *,
        next_stop: int | None = None,
    ) -> PlanPosition:
        """Place the van at (lat, lon) on the plan at ``now``; pure.

        ``since`` is the previous position (None for the first fix, or after a new
        manifest): the route is searched in a window ahead of it (module doc). Without
        it, the search starts at the last served on-route stop before the next unserved
        one (the route's start if none) and takes in the whole route ahead.
        ``next_stop`` is the stop the van heads for (its index), when the caller knows
        the driver is not taking the planned order (``eta_features``' ``order[0]``);
        default the first unserved stop in stop order. :class:`FeatureError` if it is
        not an unserved stop.
        """
        now_us = _utc_us(now, "now")
        mask = self.served_mask(served)
        unserved = np.flatnonzero(~mask)
        nxt = int(unserved[0]) if unserved.size else self.n_stops
        if next_stop is not None:
            if not (0 <= next_stop < self.n_stops) or mask[next_stop]:
                raise FeatureError(f"next_stop {next_stop!r} is not an unserved stop")
            nxt = int(next_stop)
        x, y = self.frame.to_local(lat, lon)

        route_m: float | None = None
        on_route = False
        if self.has_route:
            route_m, on_route = self._match(x, y, now_us=now_us, mask=mask, nxt=nxt, since=since)

        if nxt == self.n_stops:
            along = float(self.plan_m[-1]) if self.n_stops else 0.0
        else:
            stop_x, stop_y = self.stop_xy[nxt]
            to_next = math.hypot(stop_x - x, stop_y - y)
            if (
                on_route
                and route_m is not None
                and self.on_route[nxt]
                and self.route_m[nxt] >= route_m
            ):
                to_next = float(self.route_m[nxt]) - route_m
            along = float(self.plan_m[nxt]) - to_next
        return PlanPosition(now, lat, lon, along, nxt, route_m, on_route)

    def _match(
        self,
        x: float,
        y: float,
        *,
        now_us: int,
        mask: BoolArray,
        nxt: int,
        since: PlanPosition | None,
    ) -> tuple[float | None, bool]:
        total_m = float(self.route_cum_m[-1])
        if since is not None and since.route_m is not None:
            anchor = since.route_m
            dt_s = max(0.0, (now_us - _utc_us(since.time, "since.time")) / _US)
            reach_m = anchor + MAX_VAN_SPEED_MPS * dt_s + PROJECTION_MARGIN_M
            # After an outage the van may be anywhere it could have driven: a metre
            # ahead says less about a wrong match the longer it has been.
            ahead_cost = AHEAD_COST / max(1.0, dt_s)
        else:
            before = np.flatnonzero(mask[:nxt] & self.on_route[:nxt])
            anchor = float(self.route_m[before[-1]]) if before.size else 0.0
            reach_m = total_m
            ahead_cost = AHEAD_COST
        lo_m = anchor - PROJECTION_BACK_M
        for hi_m in (reach_m, total_m):
            lo = int(np.searchsorted(self.route_cum_m, lo_m, side="right")) - 1
            lo = min(max(lo, 0), self.seg_len.size - 1)
            hi = int(np.searchsorted(self.route_cum_m, hi_m, side="left"))
            hi = min(max(hi, lo + 1), self.seg_len.size)
            s, dist = self._on_segments(x, y, lo, hi, from_m=lo_m, to_m=hi_m)
            ahead = s - anchor
            cost = dist + np.where(ahead >= 0.0, ahead_cost * ahead, -BEHIND_COST * ahead)
            cost = np.where(dist <= self.far_m, cost, np.inf)
            best = int(np.argmin(cost))
            if math.isfinite(cost[best]):
                return float(s[best]), True
            if hi_m >= total_m:
                break
        return (since.route_m if since is not None else None), False


# =====================================================================================
# The features
# =====================================================================================


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    """One row per remaining stop, in stop order; columns as :data:`FEATURE_NAMES`.

    ``values`` is float32 ``(len(stop_ids), N_FEATURES)`` and always finite.
    """

    values: npt.NDArray[np.float32]
    stop_ids: tuple[str, ...]
    version: str = FEATURES_VERSION

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def column(self, name: str) -> npt.NDArray[np.float32]:
        """The column ``name`` (a view); KeyError for a name not in :data:`FEATURE_NAMES`."""
        return self.values[:, _COL[name]]

    def __len__(self) -> int:
        return len(self.stop_ids)


def _non_negative(value: float) -> float:
    return value if math.isfinite(value) and value > 0.0 else 0.0


def _on_circle(fraction: float) -> tuple[float, float]:
    angle = 2.0 * math.pi * fraction
    return math.sin(angle), math.cos(angle)


def _check_order(
    order: Sequence[int] | npt.NDArray[np.intp], unserved: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """``order`` as an index array, checked to be the unserved stops, each once."""
    try:
        seq = np.asarray(order, dtype=np.intp).reshape(-1)
    except (TypeError, ValueError) as err:
        raise FeatureError(f"order is not a sequence of stop indexes: {err}") from err
    if seq.size != unserved.size or not np.array_equal(np.sort(seq), unserved):
        raise FeatureError("order must list every unserved stop's index exactly once")
    return seq


def eta_features(
    now: datetime,
    plan: RoutePlan,
    position: PlanPosition,
    served: Served,
    history: SpeedHistory | SpeedStats,
    *,
    day_start: datetime | None = None,
    order: Sequence[int] | npt.NDArray[np.intp] | None = None,
    dwell_s: float = 0.0,
    parcels_here: float = 0.0,
) -> FeatureMatrix:
    """The model's input at ``now``: one row per unserved stop, in stop order.

    ``dwell_s``: seconds since the van arrived at the stop it still stands at (0 while
    driving, or once it has left); ``parcels_here``: the parcels still to hand over
    there (0 while driving). Negative or non-finite values read as 0.

    ``position`` is the van on ``plan`` (:meth:`RoutePlan.project`, with the same
    ``served``); ``history`` the van's :class:`SpeedHistory` (or its stats at ``now``);
    ``day_start`` the start of the shift for ``day_elapsed_s``/``pace_s_per_stop``
    (default: the first fix the history saw; 0 elapsed if neither). The columns, their
    units and defaults are :data:`FEATURE_NAMES` and the module doc; unknowns take
    documented defaults, so every value is finite.

    ``order`` is the order the van is expected to serve the unserved stops in (their
    indexes, each once; default stop order): the stops, parcels and types "before" a
    stop are those ahead of it in that order, and its remaining distance runs from the
    van to ``order[0]`` (``position`` projected with ``next_stop=order[0]``) and then
    stop to stop: along the plan (``plan_m``) where a leg goes forward in stop order,
    the straight line where it goes back (a stop the driver passed, served later). The
    rows stay in stop order. Raises :class:`FeatureError` for a naive ``now``, served
    flags of the wrong length or an ``order`` that is not the unserved stops.
    """
    now_us = _utc_us(now, "now")
    now_s = now_us / _US
    mask = plan.served_mask(served)
    idx = np.flatnonzero(~mask)
    n = idx.size
    ids = tuple(plan.stop_ids[i] for i in idx)
    if n == 0:
        return FeatureMatrix(np.zeros((0, N_FEATURES), dtype=np.float32), ids)
    stats = history.stats(now) if isinstance(history, SpeedHistory) else history

    out = np.empty((n, N_FEATURES), dtype=np.float64)
    col = _COL
    x, y = plan.frame.to_local(position.lat, position.lon)
    stop_xy = plan.stop_xy[idx]
    parcels = plan.parcels[idx]
    onehot = plan.type_onehot[idx]
    if order is None:
        remaining = np.maximum(plan.plan_m[idx] - position.along_m, 0.0)
        rank = np.arange(n)
        parcels_before = np.cumsum(parcels) - parcels
        types_before = np.cumsum(onehot, axis=0) - onehot
    else:
        seq = _check_order(order, idx)
        rank = np.empty(n, dtype=np.intp)
        rank[np.searchsorted(idx, seq)] = np.arange(n)  # row (stop order) -> place in seq
        plan_m = plan.plan_m[seq]
        xy = plan.stop_xy[seq]
        forward = seq[1:] > seq[:-1]
        chain = np.hypot(*(xy[1:] - xy[:-1]).T)
        legs = np.where(forward, np.diff(plan_m), chain)
        first_m = max(float(plan_m[0]) - position.along_m, 0.0)
        in_seq = first_m + np.concatenate(([0.0], np.cumsum(legs)))
        remaining = in_seq[rank]
        p_seq, t_seq = plan.parcels[seq], plan.type_onehot[seq]
        parcels_before = (np.cumsum(p_seq) - p_seq)[rank]
        types_before = (np.cumsum(t_seq, axis=0) - t_seq)[rank]
    out[:, col["remaining_m"]] = remaining
    out[:, col["straight_m"]] = np.hypot(stop_xy[:, 0] - x, stop_xy[:, 1] - y)
    out[:, col["stops_before"]] = rank
    out[:, col["parcels_before"]] = parcels_before
    first_before = col[f"before_{STOP_TYPE_ORDER[0]}"]
    first_type = col[f"type_{STOP_TYPE_ORDER[0]}"]
    n_types = len(STOP_TYPE_ORDER)
    out[:, first_before : first_before + n_types] = types_before
    out[:, first_type : first_type + n_types] = onehot
    out[:, col["parcels"]] = parcels

    out[:, col["speed_mps"]] = stats.speed_mps
    out[:, col["speed_known"]] = float(stats.speed_known)
    out[:, col["mean_speed_60s_mps"]] = stats.mean_60s_mps
    out[:, col["mean_speed_5m_mps"]] = stats.mean_5m_mps
    out[:, col["mean_speed_15m_mps"]] = stats.mean_15m_mps
    out[:, col["moving_speed_15m_mps"]] = stats.moving_15m_mps
    out[:, col["speed_coverage_15m"]] = stats.coverage_15m

    utc = now.astimezone(UTC)
    second_of_day = utc.hour * 3600 + utc.minute * 60 + utc.second + utc.microsecond / _US
    out[:, col["tod_sin"]], out[:, col["tod_cos"]] = _on_circle(second_of_day / 86400.0)
    out[:, col["dow_sin"]], out[:, col["dow_cos"]] = _on_circle(plan.date.weekday() / 7.0)

    naive = naive_eta_s(remaining, stats.mean_15m_mps)
    late_s, late_known = 0.0, 0.0
    # The next promise: the first windowed stop in the order the van is expected to take.
    windowed = np.flatnonzero(plan.has_window[idx])
    if windowed.size:
        w = int(windowed[np.argmin(rank[windowed])])
        arrive_s = now_s + float(naive[w])
        start_s, end_s = float(plan.window_start_s[idx[w]]), float(plan.window_end_s[idx[w]])
        if arrive_s > end_s:
            late_s = arrive_s - end_s
        elif arrive_s < start_s:
            late_s = arrive_s - start_s
        late_s, late_known = min(max(late_s, -MAX_ABS_LATE_S), MAX_ABS_LATE_S), 1.0
    out[:, col["late_s"]] = late_s
    out[:, col["late_known"]] = late_known
    start = day_start if day_start is not None else stats.first_fix
    elapsed_s = 0.0
    if start is not None:
        elapsed_s = max(0.0, now_s - _utc_us(start, "day_start") / _US)
    n_served = int(mask.sum())
    pace_s = elapsed_s / n_served if n_served else NOMINAL_STOP_INTERVAL_S
    out[:, col["day_elapsed_s"]] = elapsed_s
    out[:, col["pace_s_per_stop"]] = min(pace_s, MAX_PACE_S)

    out[:, col["hdop"]] = stats.hdop
    out[:, col["hdop_known"]] = float(stats.hdop_known)
    out[:, col["sats"]] = stats.sats
    out[:, col["fix_fraction_60s"]] = stats.fix_fraction_60s
    out[:, col["naive_eta_s"]] = naive
    # The customer's naive: straight lines from the van to the next remaining stop and
    # on through the remaining stops (in the expected order, stop order by default),
    # over the last 5 minutes' mean speed.
    seq_xy = stop_xy[np.argsort(rank, kind="stable")]
    legs = np.hypot(*np.diff(seq_xy, axis=0).T) if n > 1 else np.zeros(0)
    first_leg = math.hypot(float(seq_xy[0, 0]) - x, float(seq_xy[0, 1]) - y)
    chain = (first_leg + np.concatenate(([0.0], np.cumsum(legs))))[rank]
    out[:, col["chain_m"]] = chain
    out[:, col["chain_naive_s"]] = naive_eta_s(chain, stats.mean_5m_mps)
    out[:, col["dwell_s"]] = _non_negative(dwell_s)
    out[:, col["parcels_here"]] = _non_negative(parcels_here)

    # Defence in depth: one NaN reaching the model would poison every ETA it publishes
    # (a NaN position from a caller, say); the contract is "always finite".
    np.nan_to_num(out, copy=False, nan=0.0, posinf=_FEATURE_BOUND, neginf=-_FEATURE_BOUND)
    np.clip(out, -_FEATURE_BOUND, _FEATURE_BOUND, out=out)
    return FeatureMatrix(out.astype(np.float32), ids)
