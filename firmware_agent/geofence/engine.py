"""The geofence engine: fixes in, stop events and exceptions out.

Per good fix (position, HDOP within limit, GNSS time known) the engine:

1. tracks whether the van is stopped (speed at most ``slow_speed_mps``; the receiver's
   speed, else speed from consecutive positions), restarting the count after an outage;
2. feeds every stop fence near the fix (spatial grid) and every fence already entered;
3. confirms an arrival when the van has been stopped ``confirm_dwell_s`` with the
   stopped positions' median and the current fix inside a fence (``revisit_dwell_s``
   at a stop already visited, longer than a red light on the way back past it). If
   several fences qualify (stops closer than their radii) it picks one: not yet
   visited first, then the next stop in the manifest's order unless another is nearer
   by more than ``order_slack_m``. One dwell confirms one stop; a scan of another
   stop's parcel confirms that stop too (:meth:`confirm_by_scan`), as in an apartment
   block with several addresses.
4. reports an unscheduled halt (stopped ``halt_after_s`` outside every stop, once the
   van has moved) and a route deviation (beyond ``deviation_m`` of the planned route for
   ``deviation_after_s``), each with its end.

Poor fixes are ignored entirely: they neither enter nor leave a fence.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.manifest import Manifest, Stop
from firmware_agent.day_state import StopDay
from firmware_agent.geofence.config import GeofenceConfig
from firmware_agent.geofence.events import (
    Arrival,
    Departure,
    Deviation,
    DeviationEnd,
    GeofenceEvent,
    Halt,
    HaltEnd,
    WindowMiss,
)
from firmware_agent.geofence.fence import Phase, StopFence
from firmware_agent.geofence.index import Plane, RouteGrid, Shape, StopGrid

# Speed from positions only between fixes this close in time (seconds).
_DERIVED_SPEED_MAX_DT_S = 10.0
# While off the route, the exact (linear-cost) distance is recomputed this often.
_DEVIATION_MEASURE_EVERY_S = 5.0
# Where a stopped van stands is the median of its positions, sampled at most once per
# this many seconds (so 10 Hz costs no more than 1 Hz) over the last _STOPPED_KEEP
# samples: a median ignores multipath jumps that hold for under half the stop, which a
# centroid does not (a 30 s, 250 m jump moved a 60 s stop's centroid out of its fence).
_STOPPED_SAMPLE_S = 1.0
_STOPPED_KEEP = 180


def _by_order(fence: StopFence) -> int:
    return fence.index


def _utc(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, UTC)


@dataclass(frozen=True, slots=True)
class Position:
    """The last good fix, as the engine saw it."""

    time: datetime
    lat: float
    lon: float
    hacc_m: float | None
    speed_mps: float


@dataclass(frozen=True, slots=True, eq=False)
class GeofenceIndex:
    """A manifest's geometry for the engine: its plane, fence shapes and spatial grids.

    Immutable, and the only part of adopting a manifest (or new geofence settings) whose
    cost grows with the geometry: the agent builds it off the event loop
    (:func:`build_index`) and hands it to :meth:`GeofenceEngine.load_manifest`.
    """

    manifest: Manifest
    index_cell_m: float
    border_m: float
    deviation_m: float
    plane: Plane
    shapes: tuple[Shape, ...]
    grid: StopGrid
    route: RouteGrid | None

    def fits(self, manifest: Manifest, config: GeofenceConfig) -> bool:
        """Whether this index is the one ``manifest`` and ``config`` need."""
        return (
            manifest is self.manifest
            and config.index_cell_m == self.index_cell_m
            and config.border_m == self.border_m
            and config.deviation_m == self.deviation_m
        )

    @property
    def entries_bound(self) -> int:
        """At most how many (cell, fence or segment) entries its grids hold."""
        return self.grid.entries_bound + (0 if self.route is None else self.route.entries_bound)


def build_index(manifest: Manifest, config: GeofenceConfig) -> GeofenceIndex:
    """The geometry :class:`GeofenceEngine` needs for ``manifest`` under ``config``.

    Pure and bounded (:mod:`.index`: at most :data:`~.index.MAX_GRID_ENTRIES` entries
    per grid, or 4 per fence or segment), but linear in the manifest's stops and route
    vertices: call it off the event loop for a manifest from the downlink.
    """
    first = manifest.stops[0] if manifest.stops else None
    if first is not None:
        plane = Plane.at(first.lat, first.lon)
    elif manifest.route:
        plane = Plane.at(*manifest.route[0])
    else:
        plane = Plane.at(0.0, 0.0)
    shapes = tuple(_shape(plane, stop) for stop in manifest.stops)
    grid = StopGrid(shapes, cell_m=config.index_cell_m, reach_m=config.border_m)
    route = (
        RouteGrid([plane.xy(lat, lon) for lat, lon in manifest.route], reach_m=config.deviation_m)
        if manifest.route
        else None
    )
    return GeofenceIndex(
        manifest=manifest,
        index_cell_m=config.index_cell_m,
        border_m=config.border_m,
        deviation_m=config.deviation_m,
        plane=plane,
        shapes=shapes,
        grid=grid,
        route=route,
    )


def _shape(plane: Plane, stop: Stop) -> Shape:
    cx, cy = plane.xy(stop.lat, stop.lon)
    polygon = [plane.xy(lat, lon) for lat, lon in stop.polygon] if stop.polygon else None
    return Shape(cx, cy, stop.radius_m, polygon)


class GeofenceEngine:
    """Stop arrivals/departures and exceptions for one van and its current manifest."""

    def __init__(
        self,
        manifest: Manifest,
        config: GeofenceConfig | None = None,
        *,
        index: GeofenceIndex | None = None,
    ) -> None:
        self.config = config or GeofenceConfig()
        self._fences: dict[str, StopFence] = {}
        self._active: set[StopFence] = set()
        self._last: tuple[float, float, float] | None = None  # t_s, x, y of last good fix
        self.last_position: Position | None = None
        # Stopped-van tracking: start, fix count and sampled positions of the current stop.
        self._slow_s: float | None = None
        self._slow_n = 0
        self._slow_xy: deque[tuple[float, float]] = deque(maxlen=_STOPPED_KEEP)
        self._slow_sampled_s = -math.inf
        self._slow_at: tuple[float, float] | None = None  # cached median of _slow_xy
        self._confirmed_dwell: float | None = None  # _slow_s of the dwell that last arrived
        self._has_moved = False
        self._halt_s: float | None = None
        # Route deviation.
        self._off_s: float | None = None
        self._off_reported = False
        self._off_max_m = 0.0
        self._off_measured_s = 0.0
        self.counts = {"fixes": 0, "poor": 0, "undated": 0, "departures_before_arrival": 0}
        self.load_manifest(manifest, index)

    # -- manifest ----------------------------------------------------------------

    def load_manifest(self, manifest: Manifest, index: GeofenceIndex | None = None) -> None:
        """Adopt a new manifest; stops kept by id keep their state (visits, phase).

        ``index`` is the manifest's geometry built beforehand (:func:`build_index`, off
        the event loop) for this manifest and this engine's config; without it (or with
        one built for another manifest or other settings) it is built here.
        """
        if index is None or not index.fits(manifest, self.config):
            index = build_index(manifest, self.config)
        self.manifest = manifest
        self._stops = manifest.stops
        self.plane = index.plane
        old = self._fences
        self._fences = {}
        for stop, shape in zip(manifest.stops, index.shapes, strict=True):
            fence = old.get(stop.id)
            if fence is None:
                fence = StopFence(stop.id, stop.index, shape)
            else:
                fence.shape, fence.index = shape, stop.index
            self._fences[stop.id] = fence
        self._by_index = [self._fences[stop.id] for stop in manifest.stops]
        self._active = {f for f in self._by_index if f.phase is not Phase.IDLE}
        self._grid = index.grid
        self._route = index.route
        self.index = index

    # -- the day, saved and restored ----------------------------------------------

    def stop_days(self) -> dict[str, StopDay]:
        """Per stop that left its initial state (entered, visited): its state, to save."""
        return {
            f.stop_id: StopDay(
                phase=str(f.phase),
                visits=f.visits,
                entered_s=f.entered_s,
                arrived_s=f.arrived_s,
                departed_s=f.departed_s,
                outside_s=f.outside_s,
                beyond_s=f.beyond_s,
                moved=f.moved,
            )
            for f in self._by_index
            if f.phase is not Phase.IDLE or f.visits or f.departed_s is not None
        }

    def runs(self) -> tuple[bool, float | None, float | None, bool, float]:
        """The engine's runs to save: moved yet, halt since, off route since, that
        deviation reported, its largest distance."""
        return self._has_moved, self._halt_s, self._off_s, self._off_reported, self._off_max_m

    def restore(
        self,
        stops: Mapping[str, StopDay],
        *,
        has_moved: bool = False,
        halt_s: float | None = None,
        off_s: float | None = None,
        off_reported: bool = False,
        off_max_m: float = 0.0,
    ) -> None:
        """Take back a saved day: each stop of the manifest found in ``stops`` gets
        its phase, visits and times (stops not in the manifest are ignored), and the
        runs their state. The stopped-van tracking starts afresh."""
        for stop_id, day in stops.items():
            fence = self._fences.get(stop_id)
            if fence is None:
                continue
            fence.phase = Phase(day.phase)
            fence.visits = day.visits
            fence.entered_s = day.entered_s
            fence.arrived_s = day.arrived_s
            fence.departed_s = day.departed_s
            fence.outside_s = day.outside_s
            fence.beyond_s = day.beyond_s
            fence.moved = day.moved
        self._active = {f for f in self._by_index if f.phase is not Phase.IDLE}
        self._has_moved, self._halt_s = has_moved, halt_s
        self._off_s, self._off_reported, self._off_max_m = off_s, off_reported, off_max_m
        self._off_measured_s = -math.inf

    # -- queries -----------------------------------------------------------------

    def phase(self, stop_id: str) -> Phase | None:
        fence = self._fences.get(stop_id)
        return None if fence is None else fence.phase

    def visits(self, stop_id: str) -> int:
        fence = self._fences.get(stop_id)
        return 0 if fence is None else fence.visits

    @property
    def current_stop(self) -> str | None:
        """The stop the van is confirmed at (the latest, if several), or None."""
        arrived = [f for f in self._active if f.phase is Phase.ARRIVED]
        if not arrived:
            return None
        return max(arrived, key=lambda f: f.arrived_s or 0.0).stop_id

    def outside_m(self, stop_id: str, lat: float, lon: float) -> float | None:
        """Distance from a point to a stop's fence (0 inside); None for an unknown stop."""
        fence = self._fences.get(stop_id)
        if fence is None:
            return None
        return fence.shape.outside_m(*self.plane.xy(lat, lon))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per stop: phase, visits and the last arrival/departure (for status reports)."""
        return {
            f.stop_id: {
                "phase": str(f.phase),
                "visits": f.visits,
                "arrived_at": None if f.arrived_s is None else _utc(f.arrived_s),
                "departed_at": None if f.departed_s is None else _utc(f.departed_s),
            }
            for f in self._by_index
        }

    # -- feeding -----------------------------------------------------------------

    def is_good(self, fix: Fix) -> bool:
        return (
            fix.lat is not None
            and fix.lon is not None
            and fix.mode != FixMode.NO_FIX
            and (fix.hdop is None or fix.hdop <= self.config.max_hdop)
        )

    def update(self, fix: Fix) -> list[GeofenceEvent]:
        """Feed one fix (in time order); returns the events it completes."""
        if fix.time is None:
            self.counts["undated"] += 1
            return []
        if not self.is_good(fix):
            self.counts["poor"] += 1
            return []
        self.counts["fixes"] += 1
        assert fix.lat is not None
        assert fix.lon is not None
        c = self.config
        t_s = fix.time.timestamp()
        x, y = self.plane.xy(fix.lat, fix.lon)
        events: list[GeofenceEvent] = []

        speed = fix.speed_mps
        last = self._last
        if last is not None and t_s - last[0] > c.max_gap_s:
            self._slow_s = None  # an outage: stopped time does not carry across it
        if speed is None:
            dt = t_s - last[0] if last is not None else 0.0
            speed = (
                math.hypot(x - last[1], y - last[2]) / dt
                if last is not None and 0.0 < dt <= _DERIVED_SPEED_MAX_DT_S
                else 0.0
            )
        self._last = (t_s, x, y)
        hacc_m = None if fix.hdop is None else fix.hdop * 2.5
        self.last_position = Position(fix.time, fix.lat, fix.lon, hacc_m, speed)

        slow = speed <= c.slow_speed_mps
        if slow:
            if self._slow_s is None:
                self._slow_s, self._slow_n = t_s, 0
                self._slow_xy.clear()
                self._slow_sampled_s = -math.inf
            self._slow_n += 1
            if t_s - self._slow_sampled_s >= _STOPPED_SAMPLE_S:
                self._slow_sampled_s = t_s
                self._slow_xy.append((x, y))
                self._slow_at = None
        else:
            self._slow_s = None
            if speed >= c.moving_speed_mps:
                self._has_moved = True
            if self._halt_s is not None:
                started = _utc(self._halt_s)
                events.append(
                    HaltEnd(
                        time=fix.time,
                        started_at=started,
                        duration_s=(fix.time - started).total_seconds(),
                    )
                )
                self._halt_s = None

        self._observe_fences(t_s, x, y, speed > c.slow_speed_mps, events)
        if slow:
            self._maybe_confirm(t_s, x, y, fix.time, events)
            self._maybe_halt(t_s, fix.time, events)
        if self._route is not None:
            self._check_route(t_s, x, y, fix.time, events)
        return events

    def _observe_fences(
        self, t_s: float, x: float, y: float, moving: bool, events: list[GeofenceEvent]
    ) -> None:
        c = self.config
        by_index = self._by_index
        near = [by_index[i] for i in self._grid.near(x, y)]
        fences = sorted(self._active.union(near), key=_by_order) if self._active else near
        for fence in fences:
            departed = fence.observe(
                t_s,
                fence.shape.outside_m(x, y),
                moving=moving,
                border_m=c.border_m,
                depart_confirm_s=c.depart_confirm_s,
            )
            if fence.phase is Phase.IDLE:
                self._active.discard(fence)
            else:
                self._active.add(fence)
            if departed is not None:
                self._departure(fence, departed, t_s, events)

    def _departure(
        self,
        fence: StopFence,
        departed: tuple[float, float],
        t_s: float,
        events: list[GeofenceEvent],
    ) -> None:
        departed_s, arrived_s = departed
        self._active.discard(fence)
        if departed_s < arrived_s:
            # The clock went back past the arrival (a restart replaying older positions
            # over the saved day, a receiver's time jump): a departure before its own
            # arrival is no fact, and its negative dwell would break the contract and
            # stall the events ack for good. Counted, not sent.
            self.counts["departures_before_arrival"] += 1
            return
        events.append(
            Departure(
                time=_utc(departed_s),
                stop_id=fence.stop_id,
                detected_at=_utc(t_s),
                arrived_at=_utc(arrived_s),
                dwell_s=departed_s - arrived_s,
                visit=fence.visits,
                route_id=self.manifest.route_id,
            )
        )

    def _stopped_at(self) -> tuple[float, float]:
        """Where the van stands: the median of the current stop's sampled positions."""
        if self._slow_at is None:
            xy = self._slow_xy
            self._slow_at = (
                statistics.median(p[0] for p in xy),
                statistics.median(p[1] for p in xy),
            )
        return self._slow_at

    def _maybe_confirm(
        self, t_s: float, x: float, y: float, now: datetime, events: list[GeofenceEvent]
    ) -> None:
        c = self.config
        slow_s = self._slow_s
        if (
            slow_s is None
            or t_s - slow_s < c.confirm_dwell_s
            or self._slow_n < c.confirm_min_fixes
            or not any(f.phase is Phase.APPROACH for f in self._active)
        ):
            return
        cx, cy = self._stopped_at()
        holding = [
            f for f in self._active if f.phase is Phase.ARRIVED and f.shape.outside_m(cx, cy) == 0
        ]
        if holding and self._confirmed_dwell == slow_s:
            return  # one dwell, one stop (others confirm by scan)
        # A new dwell (the van moved, then stopped) inside the fence of the stop it is
        # at: it moved on to a neighbour whose fence overlaps if it stands nearer the
        # neighbour's centre, else it only repositioned. (A bus crawling from one stop
        # to the next below slow_speed_mps is one long "dwell"; its median leaves the
        # first fence before the second can confirm.)
        holding_m = min((f.shape.center_distance(cx, cy) for f in holding), default=math.inf)
        dwell_s = t_s - slow_s
        candidates = [
            f
            for f in self._active
            if f.phase is Phase.APPROACH
            and (f.visits == 0 or dwell_s >= c.revisit_dwell_s)
            and f.shape.outside_m(cx, cy) == 0
            # ... and the van is there now: when a multipath jump fills the first
            # seconds of a stop, the median may still sit at the jump's end.
            and f.shape.outside_m(x, y) == 0
            and f.shape.center_distance(cx, cy) < holding_m
        ]
        if not candidates:
            return
        # Standing at another stop: the van has left the one it was at, even if that
        # stop is too close for its border to have been crossed (neighbouring houses).
        arrived = [f for f in self._active if f.phase is Phase.ARRIVED]
        for fence in sorted(arrived, key=_by_order):
            self._departure(fence, fence.depart(t_s), t_s, events)
        fence = self._choose(candidates, cx, cy)
        self._arrive(fence, now, cx, cy, "dwell", events)

    def _choose(self, candidates: Iterable[StopFence], x: float, y: float) -> StopFence:
        pool = list(candidates)
        unvisited = [f for f in pool if f.visits == 0]
        pool = unvisited or pool
        nearest = min(pool, key=lambda f: f.shape.center_distance(x, y))
        in_order = min(pool, key=lambda f: f.index)
        slack = self.config.order_slack_m
        if in_order.shape.center_distance(x, y) <= nearest.shape.center_distance(x, y) + slack:
            return in_order
        return nearest

    def _arrive(  # noqa: PLR0917 (private; the call sites read in order)
        self,
        fence: StopFence,
        now: datetime,
        x: float,
        y: float,
        by: Literal["dwell", "scan"],
        events: list[GeofenceEvent],
    ) -> None:
        arrived = _utc(fence.confirm())
        self._confirmed_dwell = self._slow_s
        lat, lon = self.plane.latlon(x, y)
        events.append(
            Arrival(
                time=arrived,
                stop_id=fence.stop_id,
                detected_at=now,
                lat=lat,
                lon=lon,
                visit=fence.visits,
                confirmed_by=by,
                route_id=self.manifest.route_id,
            )
        )
        stop = self._stops[fence.index]
        if stop.window_start is not None and stop.window_end is not None:
            kind: Literal["early", "late"]
            if arrived < stop.window_start:
                by_s = (stop.window_start - arrived).total_seconds()
                kind = "early"
            elif arrived > stop.window_end:
                by_s = (arrived - stop.window_end).total_seconds()
                kind = "late"
            else:
                return
            events.append(
                WindowMiss(
                    time=arrived,
                    stop_id=stop.id,
                    kind=kind,
                    by_s=by_s,
                    window_start=stop.window_start,
                    window_end=stop.window_end,
                    route_id=self.manifest.route_id,
                )
            )

    def _maybe_halt(self, t_s: float, now: datetime, events: list[GeofenceEvent]) -> None:
        slow_s = self._slow_s
        if (
            slow_s is None
            or self._halt_s is not None
            or not self._has_moved
            or t_s - slow_s < self.config.halt_after_s
            or self._active  # at (or entering) a stop: not unscheduled
        ):
            return
        self._halt_s = slow_s
        lat, lon = self.plane.latlon(*self._stopped_at())
        events.append(Halt(time=_utc(slow_s), detected_at=now, lat=lat, lon=lon))

    def _check_route(
        self, t_s: float, x: float, y: float, now: datetime, events: list[GeofenceEvent]
    ) -> None:
        assert self._route is not None
        c = self.config
        near_m = self._route.distance_within(x, y)
        if near_m is None:  # beyond deviation_m
            if self._off_s is None:
                self._off_s, self._off_reported, self._off_max_m = t_s, False, 0.0
                self._off_measured_s = -math.inf
            if t_s - self._off_measured_s >= _DEVIATION_MEASURE_EVERY_S:
                self._off_measured_s = t_s
                self._off_max_m = max(self._off_max_m, self._route.distance(x, y))
            if not self._off_reported and t_s - self._off_s >= c.deviation_after_s:
                self._off_reported = True
                lat, lon = self.plane.latlon(x, y)
                distance_m = self._route.distance(x, y)
                self._off_max_m = max(self._off_max_m, distance_m)
                events.append(
                    Deviation(
                        time=_utc(self._off_s),
                        detected_at=now,
                        distance_m=distance_m,
                        lat=lat,
                        lon=lon,
                    )
                )
        elif self._off_s is not None:
            if near_m <= c.deviation_clear_m:
                if self._off_reported:
                    started = _utc(self._off_s)
                    events.append(
                        DeviationEnd(
                            time=now,
                            started_at=started,
                            duration_s=(now - started).total_seconds(),
                            max_distance_m=self._off_max_m,
                        )
                    )
                self._off_s = None
            elif not self._off_reported:
                self._off_s = None  # back within the threshold before it counted

    def confirm_by_scan(self, stop_id: str, now: datetime) -> list[GeofenceEvent]:
        """A parcel of ``stop_id`` was scanned: confirms the stop if the van is at its fence.

        Confirms only a stop in APPROACH (the van entered the fence on this approach and
        has not left it); returns the arrival (and a window miss), or nothing.
        """
        fence = self._fences.get(stop_id)
        if fence is None or fence.phase is not Phase.APPROACH or self._last is None:
            return []
        events: list[GeofenceEvent] = []
        _, x, y = self._last
        self._arrive(fence, now, x, y, "scan", events)
        return events
