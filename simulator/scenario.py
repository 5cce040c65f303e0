"""A van's delivery day: the plan, the drive, the stops, and the receiver's epochs.

:func:`generate` turns a :class:`ScenarioConfig` into a :class:`Scenario`: a route
(a generated town, or a GeoJSON/GPX file), ordered stops with true arrival and
departure times, and :meth:`Scenario.epochs`, the receiver's view of the day at the
configured rate. Everything is seeded: the same config gives the same stops, the
same epochs and therefore the same NMEA bytes. No I/O happens here apart from reading
the route file named in the config.

The day: the van idles a minute at the depot (the receiver acquires), drives to each
stop in turn, stands there for a dwell drawn by stop type, and returns to the depot
(on a loaded route: drives on to the route's end), where it idles another minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar, cast

from firmware_agent.contract.fix import FixMode
from firmware_agent.contract.geo import LocalFrame
from firmware_agent.contract.times import format_utc
from simulator.epoch import RATES_HZ, TALKERS, Constellation, Epoch, Talker
from simulator.errors import ConfigError
from simulator.gnss_errors import (
    DegradedZone,
    MultipathConfig,
    NoiseConfig,
    OutageConfig,
    OutageWindow,
    ReceiverErrorModel,
    Tunnel,
)
from simulator.kinematics import (
    DrivingLimits,
    LegGeometry,
    Trajectory,
    TrajectoryBuilder,
    heading_deg,
    traffic_factor,
)
from simulator.rng import stream as random_stream
from simulator.route import Polyline, Route, load_route, with_generated_stops
from simulator.sky import Sky
from simulator.stops import Stop, StopSite, draw_dwell_ms, draw_stop_type, stop_id
from simulator.town import Town, TownPath, generate_town, grid_size_for, sample_addresses

DEFAULT_START = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
DEFAULT_ORIGIN = (48.137, 11.575)  # a generated town is placed in Munich unless told otherwise
DEPOT_IDLE_S = 60.0  # standing at the depot before leaving and after returning
MAX_STOPS = 500

RED_PROBABILITY = 0.45  # a signal met at a random moment is red a bit under half the time
RED_WAIT_S = (5.0, 45.0)
TRAFFIC_JITTER = (0.93, 1.07)  # one leg's traffic is a little better or worse than the hour's
ROUTE_JUNCTION_TURN_DEG = 60.0  # on a loaded route a bend this sharp is taken for a junction
ROUTE_SIGNAL_PROBABILITY = 0.3

TUNNEL_PORTAL_INSET_M = 15.0  # tunnels end short of junctions so cross streets keep the sky
TUNNEL_MIN_LENGTH_M = 30.0
ROUTE_TUNNEL_LENGTH_M = (100.0, 300.0)
TUNNEL_STOP_CLEARANCE_M = 100.0

ZONE_RADIUS_M = (120.0, 250.0)
ZONE_HDOP_FACTOR = (1.5, 2.5)
ZONE_MULTIPATH_FACTOR = 4.0

_CONFIG_FORMAT = "fleet-sim-scenario/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioConfig:
    """Everything that decides a scenario; equal configs give identical scenarios.

    ``start`` is timezone-aware (held in UTC) and a whole number of centiseconds
    (NMEA time has two decimals). ``route_file`` ``None`` means a generated town centred on
    ``origin_lat``/``origin_lon``; with a file that lists stops, ``n_stops`` is not
    used. ``max_duration_s`` cuts the day short; stops not completed by then are left
    out of :attr:`Scenario.stops`. ``utc_offset_h`` gives local time for traffic.
    """

    seed: int = 1
    start: datetime = DEFAULT_START
    n_stops: int = 10
    rate_hz: int = 1
    talker: Talker = "GP"
    utc_offset_h: float = 1.0
    max_duration_s: float | None = None
    route_file: Path | None = None
    origin_lat: float = DEFAULT_ORIGIN[0]
    origin_lon: float = DEFAULT_ORIGIN[1]
    base_alt_m: float = 520.0
    traffic_lights: bool = True
    driving: DrivingLimits = field(default_factory=DrivingLimits)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    multipath: MultipathConfig = field(default_factory=MultipathConfig)
    outages: OutageConfig = field(default_factory=OutageConfig)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.start, datetime) or self.start.tzinfo is None:
            raise ConfigError("start must be a timezone-aware datetime")
        # Held in UTC whatever zone it was given in, so every epoch time is UTC.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.start.microsecond % 10_000:
            raise ConfigError("start must be a whole number of centiseconds (NMEA time resolution)")
        if not 1 <= self.n_stops <= MAX_STOPS:
            raise ConfigError(f"n_stops must be 1..{MAX_STOPS}, got {self.n_stops}")
        if self.rate_hz not in RATES_HZ:
            raise ConfigError(f"rate_hz must be one of {RATES_HZ}, got {self.rate_hz}")
        if self.talker not in TALKERS:
            raise ConfigError(f"talker must be one of {TALKERS}, got {self.talker!r}")
        if not -14.0 <= self.utc_offset_h <= 14.0:
            raise ConfigError(f"utc_offset_h must be within ±14, got {self.utc_offset_h}")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise ConfigError("max_duration_s must be positive")
        if not (-85.0 <= self.origin_lat <= 85.0 and -180.0 <= self.origin_lon <= 180.0):
            raise ConfigError("origin is out of range")

    @property
    def constellations(self) -> tuple[Constellation, ...]:
        """What the receiver tracks: GPS alone for ``GP``, GPS and GLONASS for ``GN``."""
        return ("GP",) if self.talker == "GP" else ("GP", "GL")

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready form that :meth:`from_json_dict` turns back into an equal config."""
        data = asdict(self)
        data["start"] = format_utc(self.start)
        data["route_file"] = None if self.route_file is None else str(self.route_file)
        return {"format": _CONFIG_FORMAT, "config": _jsonable(data)}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> ScenarioConfig:
        """The config stored by :meth:`to_json_dict`; :class:`ConfigError` if malformed."""
        if data.get("format") != _CONFIG_FORMAT or not isinstance(data.get("config"), dict):
            raise ConfigError(f"not a scenario config (expected format {_CONFIG_FORMAT!r})")
        raw = dict(data["config"])
        try:
            raw["start"] = datetime.fromisoformat(str(raw["start"]))
            if raw.get("route_file") is not None:
                raw["route_file"] = Path(raw["route_file"])
            raw["driving"] = _build(DrivingLimits, raw.get("driving", {}))
            raw["noise"] = _build(NoiseConfig, raw.get("noise", {}))
            raw["multipath"] = _build(MultipathConfig, raw.get("multipath", {}))
            outages = dict(raw.get("outages", {}))
            outages["windows"] = tuple(_build(OutageWindow, w) for w in outages.get("windows", ()))
            raw["outages"] = _build(OutageConfig, outages)
            return _build(cls, raw)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"bad scenario config: {err}") from err


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_T = TypeVar("_T")


def _build(cls: type[_T], raw: Any) -> _T:
    """``cls(**raw)`` with JSON lists turned back into the tuples dataclasses hold."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__}: expected an object")
    names = {f.name for f in fields(cast(Any, cls))}
    unknown = set(raw) - names
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where the day goes, before any timing: legs in order, each ending at a stop."""

    frame: LocalFrame
    start_xy: tuple[float, float]
    legs: tuple[tuple[LegGeometry, StopSite | None], ...]
    tunnels: tuple[Tunnel, ...]
    zones: tuple[DegradedZone, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A generated day. Build with :func:`generate`; iterate :meth:`epochs`.

    ``stops`` are in visiting order with their true times; ``trajectory`` is the true
    motion in ``frame`` (east/north metres); ``tunnels`` and ``zones`` are where the
    sky is hidden or degraded; ``duration_s`` is the length of the day (after any cap).
    """

    config: ScenarioConfig
    frame: LocalFrame
    stops: tuple[Stop, ...]
    trajectory: Trajectory
    tunnels: tuple[Tunnel, ...]
    zones: tuple[DegradedZone, ...]
    duration_s: float

    @property
    def start(self) -> datetime:
        return self.config.start

    @property
    def end(self) -> datetime:
        """Time of the last epoch."""
        return self.epoch_time(self.n_epochs - 1)

    @property
    def step_us(self) -> int:
        """Microseconds between epochs."""
        return 1_000_000 // self.config.rate_hz

    @property
    def n_epochs(self) -> int:
        return math.floor(self.duration_s * 1_000_000 / self.step_us + 1e-9) + 1

    def epoch_time(self, index: int) -> datetime:
        return self.config.start + timedelta(microseconds=index * self.step_us)

    def altitude_m(self, east_m: float, north_m: float) -> float:
        """Terrain height (above mean sea level) at a point: a gentle, smooth undulation."""
        return (
            self.config.base_alt_m
            + 6.0 * math.sin(east_m / 650.0)
            + 4.0 * math.cos(north_m / 830.0 + 0.7)
        )

    def epochs(self) -> Iterator[Epoch]:
        """The receiver's epochs for the whole day, in time order at ``rate_hz``.

        A fresh, deterministic pass each call: the error model is rebuilt from the seed.
        """
        config = self.config
        model = ReceiverErrorModel(
            seed=config.seed,
            rate_hz=config.rate_hz,
            talker=config.talker,
            noise=config.noise,
            multipath=config.multipath,
            outages=config.outages,
            tunnels=self.tunnels,
            zones=self.zones,
        )
        sky = Sky(config.seed, config.constellations)
        frame = self.frame
        step_us = self.step_us
        stop_spans = [
            (
                _offset_us(stop.arrival, config.start),
                _offset_us(stop.departure, config.start),
                stop.id,
            )
            for stop in self.stops
        ]
        next_stop = 0
        for index in range(self.n_epochs):
            t_us = index * step_us
            t_s = t_us / 1_000_000
            state = self.trajectory.state_at(t_s)
            lat, lon = frame.to_geodetic(state.east_m, state.north_m)
            alt_m = self.altitude_m(state.east_m, state.north_m)
            obs = model.observe(
                t_s,
                east_m=state.east_m,
                north_m=state.north_m,
                alt_m=alt_m,
                speed_mps=state.speed_mps,
                course_deg=state.course_deg,
            )
            if obs.mode is FixMode.NO_FIX:
                reported_lat: float | None = None
                reported_lon: float | None = None
                satellites = sky.view(t_s, used=0, tracking=False)
            else:
                reported_lat, reported_lon = frame.to_geodetic(
                    state.east_m + obs.east_error_m, state.north_m + obs.north_error_m
                )
                satellites = sky.view(
                    t_s, used=obs.sats_wanted, tracking=True, snr_penalty_db=obs.snr_penalty_db
                )
            while next_stop < len(stop_spans) and stop_spans[next_stop][1] < t_us:
                next_stop += 1
            at_stop = None
            if next_stop < len(stop_spans) and stop_spans[next_stop][0] <= t_us:
                at_stop = stop_spans[next_stop][2]
            yield Epoch(
                time=config.start + timedelta(microseconds=t_us),
                lat=lat,
                lon=lon,
                alt_m=alt_m,
                speed_mps=state.speed_mps,
                course_deg=state.course_deg,
                odometer_m=state.odometer_m,
                reported_lat=reported_lat,
                reported_lon=reported_lon,
                reported_alt_m=obs.alt_m,
                reported_speed_mps=obs.speed_mps,
                reported_course_deg=obs.course_deg,
                mode=obs.mode,
                hdop=obs.hdop,
                pdop=obs.pdop,
                vdop=obs.vdop,
                sats_used=sum(1 for s in satellites if s.used),
                satellites=satellites,
                outage=obs.outage,
                multipath=obs.multipath,
                stop_id=at_stop,
            )


def generate(config: ScenarioConfig) -> Scenario:
    """The scenario ``config`` describes. Pure apart from reading ``config.route_file``.

    Raises :class:`~simulator.errors.RouteFileError` for an unusable route file and
    :class:`~simulator.errors.ConfigError` when the config cannot be realised.
    """
    if config.route_file is None:
        plan = _town_plan(config)
    else:
        plan = _route_plan(config, load_route(config.route_file))

    lights_rng = random_stream("lights", config.seed)
    dwell_rng = random_stream("dwell", config.seed)
    traffic_rng = random_stream("traffic", config.seed)
    builder = TrajectoryBuilder(plan.start_xy, config.driving)
    builder.hold_until(DEPOT_IDLE_S)
    stops: list[Stop] = []
    for leg, site in plan.legs:
        now = config.start + timedelta(seconds=builder.t_s)
        local_hour = (
            now.hour + now.minute / 60.0 + now.second / 3600.0 + config.utc_offset_h
        ) % 24.0
        factor = min(1.0, traffic_factor(local_hour) * traffic_rng.uniform(*TRAFFIC_JITTER))
        waits = {
            i: lights_rng.uniform(*RED_WAIT_S)
            for i in sorted(leg.signals)
            if lights_rng.random() < RED_PROBABILITY and config.traffic_lights
        }
        builder.drive(leg, speed_factor=factor, red_waits_s=waits)
        if site is not None:
            # Truth is kept to the millisecond; the van is at rest from the exact
            # moment it stops, so rounding the arrival up keeps it at rest throughout.
            arrival_ms = math.ceil(builder.t_s * 1000.0)
            if arrival_ms / 1000.0 < builder.t_s:
                arrival_ms += 1
            departure_ms = arrival_ms + draw_dwell_ms(dwell_rng, site.type)
            builder.hold_until(departure_ms / 1000.0)
            stops.append(
                Stop.at_site(
                    site,
                    arrival=config.start + timedelta(milliseconds=arrival_ms),
                    departure=config.start + timedelta(milliseconds=departure_ms),
                )
            )
    builder.hold_until(builder.t_s + DEPOT_IDLE_S)
    trajectory = builder.build()

    duration_s = trajectory.duration_s
    if config.max_duration_s is not None:
        duration_s = min(duration_s, config.max_duration_s)
    cutoff = config.start + timedelta(seconds=duration_s)
    return Scenario(
        config=config,
        frame=plan.frame,
        stops=tuple(s for s in stops if s.departure <= cutoff),
        trajectory=trajectory,
        tunnels=plan.tunnels,
        zones=plan.zones,
        duration_s=duration_s,
    )


def _offset_us(t: datetime, start: datetime) -> int:
    return (t - start) // timedelta(microseconds=1)


def _town_plan(config: ScenarioConfig) -> _Plan:
    size = grid_size_for(config.n_stops)
    town = generate_town(
        seed=config.seed,
        origin_lat=config.origin_lat,
        origin_lon=config.origin_lon,
        n_cols=size,
        n_rows=size,
    )
    rng = random_stream("stops", config.seed)
    try:
        addresses = sample_addresses(town, config.n_stops, rng, avoid=[town.depot])
    except ValueError as err:
        raise ConfigError(str(err)) from err
    types = [draw_stop_type(rng) for _ in addresses]

    # Visit in nearest-neighbour order from the depot, as a dispatcher's sequence would
    # roughly be; the ids follow the visiting order.
    remaining = list(range(len(addresses)))
    order: list[int] = []
    here = town.point_xy(town.depot)
    while remaining:
        nearest = min(
            remaining,
            key=lambda i: math.dist(here, town.point_xy(addresses[i].park)),
        )
        order.append(nearest)
        remaining.remove(nearest)
        here = town.point_xy(addresses[nearest].park)

    sites: list[StopSite] = []
    for n, i in enumerate(order):
        park_lat, park_lon = town.to_geodetic(town.point_xy(addresses[i].park))
        sites.append(
            StopSite(stop_id(n), types[i], addresses[i].lat, addresses[i].lon, park_lat, park_lon)
        )
    waypoints = [town.depot, *(addresses[i].park for i in order), town.depot]
    paths = [town.shortest_path(a, b) for a, b in pairwise(waypoints)]
    legs = tuple(
        (LegGeometry(p.points, p.speed_limits_mps, p.signals), site)
        for p, site in zip(paths, [*sites, None], strict=True)
    )
    parked_roads = {p.road for p in waypoints}
    tunnels = _town_tunnels(config, town, paths, parked_roads)
    path_points = [xy for p in paths for xy in p.points]
    zones = _zones(config, path_points)
    return _Plan(town.frame, town.point_xy(town.depot), legs, tunnels, zones)


def _town_tunnels(
    config: ScenarioConfig, town: Town, paths: Sequence[TownPath], parked_roads: set[int]
) -> tuple[Tunnel, ...]:
    """Underpasses on roads the day uses (arterials first), never where the van parks."""
    if not config.outages.enabled or config.outages.tunnels == 0:
        return ()
    used = sorted({r for p in paths for r in p.roads[1:-1]} - parked_roads)
    candidates = [
        r for r in used if town.roads[r].length_m >= 2 * TUNNEL_PORTAL_INSET_M + TUNNEL_MIN_LENGTH_M
    ]
    rng = random_stream("tunnels", config.seed)
    rng.shuffle(candidates)
    candidates.sort(key=lambda r: not town.roads[r].arterial)  # stable: arterials first
    tunnels: list[Tunnel] = []
    for r in candidates[: config.outages.tunnels]:
        road = town.roads[r]
        (ux, uy), (vx, vy) = town.nodes[road.u], town.nodes[road.v]
        f = TUNNEL_PORTAL_INSET_M / road.length_m
        tunnels.append(
            Tunnel(
                ((ux + (vx - ux) * f, uy + (vy - uy) * f), (vx + (ux - vx) * f, vy + (uy - vy) * f))
            )
        )
    return tuple(tunnels)


def _route_plan(config: ScenarioConfig, route: Route) -> _Plan:
    if not route.stops:
        try:
            route = with_generated_stops(route, config.n_stops, random_stream("stops", config.seed))
        except ValueError as err:
            raise ConfigError(f"{route.source}: {err}") from err
    line = route.polyline()
    signal_rng = random_stream("signals", config.seed)
    signals: set[int] = set()
    for i in range(1, len(line.points) - 1):
        (x0, y0), (x1, y1), (x2, y2) = line.points[i - 1], line.points[i], line.points[i + 1]
        turn = abs(
            (heading_deg(x2 - x1, y2 - y1) - heading_deg(x1 - x0, y1 - y0) + 180.0) % 360.0 - 180.0
        )
        if turn >= ROUTE_JUNCTION_TURN_DEG and signal_rng.random() < ROUTE_SIGNAL_PROBABILITY:
            signals.add(i)

    cuts = [0.0, *(s.along_m for s in route.stops), line.length_m]
    sites: list[StopSite | None] = [*(s.site for s in route.stops), None]
    legs: list[tuple[LegGeometry, StopSite | None]] = []
    for (a, b), site in zip(pairwise(cuts), sites, strict=True):
        points, segments, vertices = line.slice(a, b)
        leg = LegGeometry(
            tuple(points),
            tuple(route.speed_limits_mps[s] for s in segments),
            frozenset(i for i, v in enumerate(vertices) if v in signals),
        )
        legs.append((leg, site))
    tunnels = _route_tunnels(config, line, [s.along_m for s in route.stops])
    zones = _zones(config, list(line.points))
    return _Plan(route.frame, line.points[0], tuple(legs), tunnels, zones)


def _route_tunnels(
    config: ScenarioConfig, line: Polyline, stops_along_m: Sequence[float]
) -> tuple[Tunnel, ...]:
    """Covered spans of the route, clear of the stops and of both ends."""
    if not config.outages.enabled or config.outages.tunnels == 0:
        return ()
    rng = random_stream("tunnels", config.seed)
    taken: list[tuple[float, float]] = []
    keep_clear = [
        (s - TUNNEL_STOP_CLEARANCE_M, s + TUNNEL_STOP_CLEARANCE_M)
        for s in (0.0, *stops_along_m, line.length_m)
    ]
    tunnels: list[Tunnel] = []
    for _ in range(50 * config.outages.tunnels):
        if len(tunnels) == config.outages.tunnels:
            break
        length_m = rng.uniform(*ROUTE_TUNNEL_LENGTH_M)
        if line.length_m <= length_m:
            break
        start_m = rng.uniform(0.0, line.length_m - length_m)
        span = (start_m, start_m + length_m)
        if any(span[0] < b and a < span[1] for a, b in (*keep_clear, *taken)):
            continue
        points, _, _ = line.slice(*span)
        tunnels.append(Tunnel(tuple(points)))
        taken.append(span)
    return tuple(tunnels)


def _zones(
    config: ScenarioConfig, path_points: Sequence[tuple[float, float]]
) -> tuple[DegradedZone, ...]:
    """Degraded-sky zones centred on points the van drives past."""
    rng = random_stream("zones", config.seed)
    if not path_points:
        return ()
    zones = []
    for _ in range(config.noise.degraded_zones):
        x, y = rng.choice(list(path_points))
        zones.append(
            DegradedZone(
                x,
                y,
                rng.uniform(*ZONE_RADIUS_M),
                rng.uniform(*ZONE_HDOP_FACTOR),
                ZONE_MULTIPATH_FACTOR,
            )
        )
    return tuple(zones)
