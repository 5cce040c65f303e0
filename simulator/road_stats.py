"""How a vehicle moves, from its positions alone: the figures bench/sim_vs_real.py compares
between the simulator's days and real trips.

Everything is computed from timestamped positions, never from a speed column (most real
sets have none, and the simulator's receiver speed is not what a phone or a bus feed
records), and the same way for both sides:

- A *segment* joins two consecutive positions; its speed is distance / time. Every
  figure weights a segment by its duration, so a 25 s segment counts as much as 25
  segments of 1 s: sampling changes how much detail is seen, not how much time counts.
- Sampling still smooths what is seen (a 25 s segment averages a halt and a start), so
  the bench compares a real set with the simulator *thinned to that set's interval*
  (:func:`thin`), never with its 1 Hz trace.
- Every trace is first thinned to one sample per :data:`MIN_SPAN_S` (5 s) at most: at
  1 Hz a metre or two of receiver noise per second reads as more than 1 m/s on a vehicle
  standing still and cuts one long halt into short ones (the simulator's 1 Hz days
  showed halts of 30 s median at 1 s, 55 s at 5 s); 5 s is also the enviroCar sets'
  own interval.
- Bad positions: a sample whose segments in and out both exceed :data:`MAX_SPEED_MPS`
  is a spike and is dropped; a segment still faster than that (a step in the positions)
  or longer than :data:`MAX_GAP_S` (a gap in the recording) counts for nothing.
- Stopped: a segment slower than :data:`STOP_SPEED_MPS`. A *halt* is a run of stopped
  segments lasting at least :data:`MIN_HALT_S`, the same 20 s that ``fleet-sim trip``
  requires of a halt (:data:`simulator.trips.MIN_DWELL_S`): the halts counted here are
  the kind of stops the real trips' manifests are made of. Its dwell is the run's span.
- Stop-and-go: a *slowdown* is the speed falling below :data:`SLOW_MPS` after having
  been at least :data:`FAST_MPS` (hysteresis, so jitter around one threshold is not
  counted twice); it counts halts and crawls alike. Short halts (< :data:`SHORT_HALT_S`)
  are traffic-light-like halts.
- Speed persistence: the trace cut into windows of :data:`WINDOW_S` (5 min) from its
  start, each window's mean speed (stops included, as the naive ETA's) against the next
  window's, as the factor ``max(v1, v2) / min(v1, v2)`` (speeds floored at
  :data:`FLOOR_MPS`, windows with less than 80 % of their time recorded left out): how
  far the recent pace is from the coming one, which is what the naive ETA assumes away.
- Halts off the plan: the halts farther than :data:`OFF_STOP_M` from every planned stop
  given (a simulated day's manifest): traffic halts rather than deliveries. A real trip
  has no plan, so all its halts count (bus stops included).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.geo import haversine_m
from simulator.trace import DEFAULT_MAX_GAP_S, TracePoint
from simulator.trips import MIN_DWELL_S

STOP_SPEED_MPS = 1.0
MIN_HALT_S = MIN_DWELL_S
SHORT_HALT_S = 60.0
FAST_MPS = 5.0
SLOW_MPS = 2.0
MAX_SPEED_MPS = 60.0
MAX_GAP_S = DEFAULT_MAX_GAP_S
MIN_SPAN_S = 5.0
OFF_STOP_M = 50.0
WINDOW_S = 300.0
FLOOR_MPS = 0.5


@dataclass(frozen=True, slots=True)
class Sample:
    """A position at ``t_s`` seconds (any fixed origin)."""

    t_s: float
    lat: float
    lon: float


def samples_from_trace(points: Sequence[TracePoint]) -> list[Sample]:
    """The rows of a trip CSV (:func:`simulator.trace.read_trace_csv`)."""
    if not points:
        return []
    t0 = points[0].time
    return [Sample((p.time - t0).total_seconds(), p.lat, p.lon) for p in points]


def samples_from_fixes(fixes: Iterable[Fix]) -> list[Sample]:
    """The fixes with a time and a position, as the receiver reported them."""
    out: list[Sample] = []
    t0 = None
    for fix in fixes:
        if fix.time is None or fix.lat is None or fix.lon is None:
            continue
        if t0 is None:
            t0 = fix.time
        out.append(Sample((fix.time - t0).total_seconds(), fix.lat, fix.lon))
    return out


def thin(samples: Sequence[Sample], interval_s: float) -> list[Sample]:
    """Every sample at least ``interval_s`` after the last one kept (a 1 Hz trace as a
    feed that reports every ``interval_s``)."""
    out: list[Sample] = []
    for s in samples:
        if not out or s.t_s - out[-1].t_s >= interval_s - 1e-6:
            out.append(s)
    return out


def _speed(a: Sample, b: Sample) -> float:
    dt_s = b.t_s - a.t_s
    return haversine_m(a.lat, a.lon, b.lat, b.lon) / dt_s if dt_s > 0 else float("inf")


def drop_spikes(samples: Sequence[Sample]) -> list[Sample]:
    """Without the samples whose segments in and out are both faster than MAX_SPEED_MPS."""
    out: list[Sample] = []
    for i, s in enumerate(samples):
        if (
            0 < i < len(samples) - 1
            and out
            and _speed(out[-1], s) > MAX_SPEED_MPS
            and _speed(s, samples[i + 1]) > MAX_SPEED_MPS
        ):
            continue
        out.append(s)
    return out


@dataclass(slots=True)
class TripStats:
    """What one trace contributes (module doc); :func:`pooled` sums several."""

    duration_s: float = 0.0
    distance_m: float = 0.0
    stopped_s: float = 0.0
    moving: list[tuple[float, float]] = field(default_factory=list)  # (speed m/s, weight s)
    dwells_s: list[float] = field(default_factory=list)
    halt_at: list[tuple[float, float]] = field(default_factory=list)  # (lat, lon) per dwell
    off_stop_halts: int = 0
    pace_changes: list[float] = field(default_factory=list)  # next / last window, >= 1
    slowdowns: int = 0


def trip_stats(samples: Sequence[Sample], stops: Sequence[tuple[float, float]] = ()) -> TripStats:
    """The figures of one time-sorted trace; ``stops``: the planned stops' (lat, lon)."""
    stats = TripStats()
    windows: dict[int, list[float]] = {}  # window index -> [seconds, metres]
    run: list[Sample] = []  # the samples of the current run of stopped segments
    fast = False

    def end_run() -> None:
        if run and run[-1].t_s - run[0].t_s >= MIN_HALT_S:
            stats.dwells_s.append(run[-1].t_s - run[0].t_s)
            n = len(run)
            stats.halt_at.append((sum(s.lat for s in run) / n, sum(s.lon for s in run) / n))
        run.clear()

    for a, b in itertools.pairwise(drop_spikes(thin(samples, MIN_SPAN_S))):
        dt_s = b.t_s - a.t_s
        speed = _speed(a, b)
        if dt_s <= 0 or dt_s > MAX_GAP_S or speed > MAX_SPEED_MPS:
            end_run()
            continue
        stats.duration_s += dt_s
        stats.distance_m += speed * dt_s
        window = windows.setdefault(int(a.t_s // WINDOW_S), [0.0, 0.0])
        window[0] += dt_s
        window[1] += speed * dt_s
        if speed < STOP_SPEED_MPS:
            stats.stopped_s += dt_s
            if not run:
                run.append(a)
            run.append(b)
        else:
            end_run()
            stats.moving.append((speed, dt_s))
        if speed >= FAST_MPS:
            fast = True
        elif speed < SLOW_MPS and fast:
            stats.slowdowns += 1
            fast = False
    end_run()
    for n, (secs, metres) in sorted(windows.items()):
        nxt = windows.get(n + 1)
        if nxt is None or min(secs, nxt[0]) < 0.8 * WINDOW_S:
            continue
        v1, v2 = max(FLOOR_MPS, metres / secs), max(FLOOR_MPS, nxt[1] / nxt[0])
        stats.pace_changes.append(max(v1, v2) / min(v1, v2))
    stats.off_stop_halts = sum(
        1
        for lat, lon in stats.halt_at
        if all(haversine_m(lat, lon, s_lat, s_lon) > OFF_STOP_M for s_lat, s_lon in stops)
    )
    return stats


def pooled(trips: Iterable[TripStats]) -> TripStats:
    """Several trips as one: times, distances and counts summed, distributions merged."""
    out = TripStats()
    for t in trips:
        out.duration_s += t.duration_s
        out.distance_m += t.distance_m
        out.stopped_s += t.stopped_s
        out.moving.extend(t.moving)
        out.dwells_s.extend(t.dwells_s)
        out.halt_at.extend(t.halt_at)
        out.slowdowns += t.slowdowns
        out.off_stop_halts += t.off_stop_halts
        out.pace_changes.extend(t.pace_changes)
    return out


def weighted_percentile(values: Iterable[tuple[float, float]], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` (0..1) of the total;
    NaN for no weight."""
    ordered = sorted(v for v in values if v[1] > 0)
    total = sum(w for _, w in ordered)
    if total <= 0:
        return float("nan")
    acc = 0.0
    for value, weight in ordered:
        acc += weight
        if acc >= q * total - 1e-9:
            return value
    return ordered[-1][0]


def figures(stats: TripStats) -> dict[str, float]:
    """The compared figures of (pooled) stats, by name; NaN where undefined."""
    km = stats.distance_m / 1000.0
    nan = float("nan")
    dwells = [(d, 1.0) for d in stats.dwells_s]

    def per_km(n: float) -> float:
        return n / km if km > 0 else nan

    return {
        "hours": stats.duration_s / 3600.0,
        "km": km,
        "move_p10_mps": weighted_percentile(stats.moving, 0.1),
        "move_p50_mps": weighted_percentile(stats.moving, 0.5),
        "move_p90_mps": weighted_percentile(stats.moving, 0.9),
        "stopped_pct": 100.0 * stats.stopped_s / stats.duration_s if stats.duration_s else nan,
        "halts_per_km": per_km(len(stats.dwells_s)),
        "dwell_p10_s": weighted_percentile(dwells, 0.1),
        "dwell_p50_s": weighted_percentile(dwells, 0.5),
        "dwell_p90_s": weighted_percentile(dwells, 0.9),
        "off_stop_halts_per_km": per_km(stats.off_stop_halts),
        "short_halts_per_km": per_km(sum(1 for d in stats.dwells_s if d < SHORT_HALT_S)),
        "slowdowns_per_km": per_km(stats.slowdowns),
        "pace_change_p50": weighted_percentile([(c, 1.0) for c in stats.pace_changes], 0.5),
        "pace_change_p90": weighted_percentile([(c, 1.0) for c in stats.pace_changes], 0.9),
        "mean_speed_mps": stats.distance_m / stats.duration_s if stats.duration_s else nan,
    }
