"""Scoring ETAs as a customer sees them, and drive-past stops for real trips.

The pure half of ``bench/eta_eval.py``: no I/O, no model, stdlib only (the simulator
drives the contract alone, see tests/test_imports.py), fed with plain numbers (times
in seconds since the epoch, positions in degrees).

What a customer sees (:func:`score_stop`): for a stop really reached at ``T``, at every
instant ``t = T - 30 s, T - 60 s, ...`` back to the first position of the day and less
than 60 minutes before ``T``, the latest ETA the van had published for that stop at or
before ``t`` (:func:`latest`): a record published long ago still counts at ``t``, with
its staleness; an instant before any record for the stop counts as "no ETA shown". It
is scored against the naive estimate a backend can compute at ``t`` from positions
alone (:func:`naive_arrival_s`): the straight-line distance from the position at ``t``
through the stops still to serve up to the target (:func:`remaining_chain`), divided by
the mean speed of the last 5 minutes of positions (:meth:`Track.mean_speed_mps`, the
path length over the time it spans), floored at :data:`NAIVE_MIN_SPEED_MPS` (2 m/s: a
van that stood still for 5 minutes would otherwise be given an infinite ETA).

Every instant falls in one of :data:`BUCKETS_MIN` by its horizon ``T - t``
(``lo <= horizon < hi``); :class:`Score` sums per bucket, so days and trips add up.
MAE model and MAE naive are over the same instants, those where an ETA was shown;
the naive over every instant is kept too. Interval coverage is over the instants
whose latest record has both ``eta_p10`` and ``eta_p90``.

Drive-pasts (:func:`choose_drive_pasts`): places on a real trip's path that the vehicle
passed at more than 6 m/s, at least 200 m from every served stop (and from each other),
before its last halt (so that served stops lie behind them), 1 to 3 per trip drawn by
a random stream seeded per trip: the same trip and seed give the same places.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from firmware_agent.contract.geo import haversine_m
from simulator.errors import ConfigError
from simulator.rng import stream as random_stream
from simulator.trace import TracePoint
from simulator.trips import Dwell

SCORE_EVERY_S: Final = 30.0
MAX_HORIZON_S: Final = 3600.0
NAIVE_WINDOW_S: Final = 300.0
NAIVE_MIN_SPEED_MPS: Final = 2.0
BUCKETS_MIN: Final = ((0, 5), (5, 15), (15, 30), (30, 60))
BUCKET_LABELS: Final = tuple(f"{lo}-{hi} min" for lo, hi in BUCKETS_MIN)

DRIVE_PAST_MIN_GAP_M: Final = 200.0
DRIVE_PAST_MIN_SPEED_MPS: Final = 6.0
DRIVE_PASTS_PER_TRIP: Final = (1, 3)


@dataclass(frozen=True, slots=True)
class Published:
    """One ETA record for one stop as the backend received it (seconds since the
    epoch): when it was issued, the point estimate, and the interval if it had one."""

    time_s: float
    eta_s: float
    p10_s: float | None = None
    p90_s: float | None = None


def latest(records: Sequence[Published], t_s: float) -> Published | None:
    """The last of ``records`` (in time order) issued at or before ``t_s``; ``None``
    before the first."""
    i = bisect.bisect_right([r.time_s for r in records], t_s)
    return records[i - 1] if i else None


def bucket(horizon_s: float) -> int | None:
    """The index in :data:`BUCKETS_MIN` of a horizon in seconds, ``None`` outside."""
    for n, (lo, hi) in enumerate(BUCKETS_MIN):
        if lo * 60.0 <= horizon_s < hi * 60.0:
            return n
    return None


def instants(
    arrival_s: float,
    first_s: float,
    *,
    every_s: float = SCORE_EVERY_S,
    max_horizon_s: float = MAX_HORIZON_S,
) -> list[float]:
    """``arrival - every, arrival - 2 every, ...`` while at or after ``first_s`` and
    less than ``max_horizon_s`` before the arrival, latest first."""
    if every_s <= 0:
        raise ConfigError(f"every_s must be positive, got {every_s}")
    out: list[float] = []
    k = 1
    while k * every_s < max_horizon_s and arrival_s - k * every_s >= first_s:
        out.append(arrival_s - k * every_s)
        k += 1
    return out


class Track:
    """Positions in time order (seconds since the epoch, degrees), for the naive.

    Positions closer than ``min_step_s`` to the last one kept are dropped: the path
    length over 5 minutes of 1 Hz fixes would otherwise add up the receiver's jitter
    while the van stands still."""

    def __init__(
        self, points: Iterable[tuple[float, float, float]], *, min_step_s: float = 0.0
    ) -> None:
        self.times_s: list[float] = []
        self.lats: list[float] = []
        self.lons: list[float] = []
        self.path_m: list[float] = []  # cumulative path length up to each position
        for t_s, lat, lon in points:
            if not (math.isfinite(t_s) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise ConfigError(f"bad position ({t_s}, {lat}, {lon})")
            if self.times_s and t_s <= self.times_s[-1]:
                raise ConfigError(f"positions out of time order at {t_s}")
            if self.times_s and t_s - self.times_s[-1] < min_step_s:
                continue
            hop_m = haversine_m(self.lats[-1], self.lons[-1], lat, lon) if self.lats else 0.0
            self.path_m.append((self.path_m[-1] if self.path_m else 0.0) + hop_m)
            self.times_s.append(t_s)
            self.lats.append(lat)
            self.lons.append(lon)

    def __len__(self) -> int:
        return len(self.times_s)

    def index_at(self, t_s: float) -> int | None:
        """The last position at or before ``t_s``."""
        i = bisect.bisect_right(self.times_s, t_s)
        return i - 1 if i else None

    def mean_speed_mps(self, t_s: float, window_s: float = NAIVE_WINDOW_S) -> float:
        """Path length over the positions of ``(t_s - window_s, t_s]`` divided by the
        time they span; 0 with fewer than two positions there."""
        last = self.index_at(t_s)
        if last is None:
            return 0.0
        first = bisect.bisect_left(self.times_s, t_s - window_s)
        span_s = self.times_s[last] - self.times_s[first]
        if first >= last or span_s <= 0:
            return 0.0
        return (self.path_m[last] - self.path_m[first]) / span_s


def remaining_chain(
    order: Sequence[str], arrivals_s: Mapping[str, float], t_s: float, target: str
) -> list[str]:
    """The stops a backend would still expect before ``target`` at ``t_s``, then the
    target: those in planned ``order`` after the last stop (in planned order) with a
    true arrival at or before ``t_s``, up to the target, without those served by then.
    A stop with no arrival (a drive-past) is never served."""
    served = {s for s in order if s in arrivals_s and arrivals_s[s] <= t_s}
    last = max((n for n, s in enumerate(order) if s in served), default=-1)
    at = order.index(target)
    return [s for s in order[last + 1 : at] if s not in served] + [target]


def naive_arrival_s(
    track: Track,
    t_s: float,
    chain: Sequence[tuple[float, float]],
    *,
    window_s: float = NAIVE_WINDOW_S,
    min_speed_mps: float = NAIVE_MIN_SPEED_MPS,
) -> float | None:
    """The naive arrival at the last place of ``chain`` (seconds since the epoch): ``t_s``
    plus the straight-line distance from the position at ``t_s`` through ``chain``, over
    the mean speed of the last ``window_s`` floored at ``min_speed_mps``. ``None`` before
    the first position."""
    i = track.index_at(t_s)
    if i is None:
        return None
    lat, lon = track.lats[i], track.lons[i]
    distance_m = 0.0
    for next_lat, next_lon in chain:
        distance_m += haversine_m(lat, lon, next_lat, next_lon)
        lat, lon = next_lat, next_lon
    speed_mps = max(min_speed_mps, track.mean_speed_mps(t_s, window_s))
    return t_s + distance_m / speed_mps


@dataclass
class BucketScore:
    """Sums over the instants of one horizon bucket."""

    instants: int = 0
    shown: int = 0
    model_abs_s: float = 0.0  # sum |latest published - T| over shown instants
    naive_abs_shown_s: float = 0.0  # sum |naive - T| over the same instants
    naive_abs_all_s: float = 0.0  # sum |naive - T| over every instant
    with_interval: int = 0
    inside: int = 0  # p10 <= T <= p90
    above_p10: int = 0  # T >= p10
    below_p90: int = 0  # T <= p90

    def add(self, other: BucketScore) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Score:
    """Per bucket of :data:`BUCKETS_MIN`, and how many stops had an instant scored."""

    buckets: list[BucketScore] = field(default_factory=lambda: [BucketScore() for _ in BUCKETS_MIN])
    stops: int = 0

    def add(self, other: Score) -> None:
        self.stops += other.stops
        for mine, theirs in zip(self.buckets, other.buckets, strict=True):
            mine.add(theirs)

    def total(self) -> BucketScore:
        """The four buckets together (every instant within 60 minutes)."""
        out = BucketScore()
        for b in self.buckets:
            out.add(b)
        return out


def score_stop(
    score: Score,
    *,
    target: str,
    order: Sequence[str],
    places: Mapping[str, tuple[float, float]],
    arrivals_s: Mapping[str, float],
    published: Sequence[Published],
    track: Track,
) -> None:
    """Add the instants of stop ``target`` (really reached at ``arrivals_s[target]``) to
    ``score`` (module doc). ``order`` is the planned order, ``places`` every stop's
    (lat, lon), ``published`` the records for ``target`` in time order."""
    arrival_s = arrivals_s[target]
    if not len(track):
        return
    scored = instants(arrival_s, track.times_s[0])
    score.stops += bool(scored)  # a stop reached before the first instant is not scored
    for t_s in scored:
        n = bucket(arrival_s - t_s)
        if n is None:  # pragma: no cover - instants() stays within the buckets
            continue
        chain = [places[s] for s in remaining_chain(order, arrivals_s, t_s, target)]
        naive_s = naive_arrival_s(track, t_s, chain)
        if naive_s is None:  # pragma: no cover - instants start at the first position
            continue
        b = score.buckets[n]
        b.instants += 1
        b.naive_abs_all_s += abs(naive_s - arrival_s)
        record = latest(published, t_s)
        if record is None:
            continue
        b.shown += 1
        b.model_abs_s += abs(record.eta_s - arrival_s)
        b.naive_abs_shown_s += abs(naive_s - arrival_s)
        if record.p10_s is not None and record.p90_s is not None:
            b.with_interval += 1
            b.above_p10 += arrival_s >= record.p10_s
            b.below_p90 += arrival_s <= record.p90_s
            b.inside += record.p10_s <= arrival_s <= record.p90_s


def score_day(
    *,
    order: Sequence[str],
    places: Mapping[str, tuple[float, float]],
    arrivals_s: Mapping[str, float],
    published: Mapping[str, Sequence[Published]],
    track: Track,
) -> Score:
    """Every stop of ``order`` with a true arrival, scored (:func:`score_stop`)."""
    score = Score()
    for target in order:
        if target in arrivals_s:
            score_stop(
                score,
                target=target,
                order=order,
                places=places,
                arrivals_s=arrivals_s,
                published=published.get(target, ()),
                track=track,
            )
    return score


def point_speeds_mps(points: Sequence[TracePoint]) -> list[float]:
    """The speed at each sample: distance between its neighbours over the time between
    them (one-sided at the ends); 0 for a single sample."""
    out: list[float] = []
    for i in range(len(points)):
        a, b = points[max(0, i - 1)], points[min(len(points) - 1, i + 1)]
        dt_s = (b.time - a.time).total_seconds()
        out.append(haversine_m(a.lat, a.lon, b.lat, b.lon) / dt_s if dt_s > 0 else 0.0)
    return out


def drive_past_candidates(
    points: Sequence[TracePoint],
    dwells: Sequence[Dwell],
    *,
    min_gap_m: float = DRIVE_PAST_MIN_GAP_M,
    min_speed_mps: float = DRIVE_PAST_MIN_SPEED_MPS,
) -> list[int]:
    """Indices of the samples that may be a drive-past: passed at more than
    ``min_speed_mps``, at least ``min_gap_m`` from every halt, before the last halt's
    arrival. None without a halt."""
    if not dwells:
        return []
    speeds = point_speeds_mps(points)
    until = dwells[-1].arrival
    return [
        i
        for i, p in enumerate(points)
        if p.time < until
        and speeds[i] > min_speed_mps
        and all(haversine_m(p.lat, p.lon, d.lat, d.lon) >= min_gap_m for d in dwells)
    ]


def choose_drive_pasts(
    points: Sequence[TracePoint],
    dwells: Sequence[Dwell],
    seed: int | str,
    *,
    count: tuple[int, int] = DRIVE_PASTS_PER_TRIP,
    min_gap_m: float = DRIVE_PAST_MIN_GAP_M,
    min_speed_mps: float = DRIVE_PAST_MIN_SPEED_MPS,
) -> list[TracePoint]:
    """1 to 3 drive-past places of a trip (module doc), in time order, drawn by the
    random stream ``drive-past`` of ``seed``; fewer if the trip has fewer places far
    enough apart, none if it has no candidate."""
    lo, hi = count
    if not 0 <= lo <= hi:
        raise ConfigError(f"count must be (lo, hi) with 0 <= lo <= hi, got {count}")
    rng = random_stream("drive-past", seed)
    wanted = rng.randint(lo, hi)
    candidates = drive_past_candidates(
        points, dwells, min_gap_m=min_gap_m, min_speed_mps=min_speed_mps
    )
    rng.shuffle(candidates)
    chosen: list[TracePoint] = []
    for i in candidates:
        if len(chosen) >= wanted:
            break
        p = points[i]
        if all(haversine_m(p.lat, p.lon, c.lat, c.lon) >= min_gap_m for c in chosen):
            chosen.append(p)
    return sorted(chosen, key=lambda p: p.time)
