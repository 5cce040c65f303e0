"""The receiver's error model: what a real GNSS receiver gets wrong, and when.

- HDOP drifts slowly around an open-sky value (0.9: 0.7-1.2 most of the time) and
  rises in degraded zones (urban canyons), during multipath and after reacquisition.
- The horizontal error is a first-order Gauss-Markov process per axis (correlation
  time 45 s) with ``sigma = HDOP * UERE`` (UERE 2.5 m): errors wander, they do not
  jump from one epoch to the next. Altitude error likewise with VDOP.
- Multipath: Poisson events (6 per hour in the open, more in degraded zones) pull the
  solution 30-300 m aside for 1-8 s with elevated HDOP.
- Outages (tunnels, time windows, start-up): no fix at all; when the sky returns the
  receiver needs 1-4 s more, then gives a few 2D fixes (3 satellites, HDOP >= 2)
  before 3D, with HDOP decaying back to normal over ~20 s.

Every process is seeded and advanced once per epoch whatever happens, so the same
inputs give the same observations, and switching one effect off does not reshuffle
the random draws of the others.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_agent.contract.fix import FixMode
from simulator.epoch import Talker
from simulator.rng import stream as random_stream

XY = tuple[float, float]

VDOP_PER_HDOP = 1.6  # typical ratio for a receiver with an open sky; vertical is worse
MIN_HDOP = 0.5
MAX_HDOP = 20.0
HDOP_2D_MIN = 2.0
SATS_PER_UNIT_HDOP = {"GP": 9.0, "GN": 14.0}  # used satellites ~ K / HDOP
MAX_SATS = {"GP": 12, "GN": 24}
MIN_COURSE_SPEED_MPS = 0.5  # below this a receiver's course is noise; it reports none
RECOVERY_HDOP_BOOST = 3.0  # HDOP x (1 + boost) at reacquisition, decaying
RECOVERY_TIME_S = 8.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NoiseConfig:
    """Ordinary receiver noise. ``enabled=False`` reports the true position exactly.

    HDOP is still modelled (and reported) with noise off: it describes the sky, not
    the error.
    """

    enabled: bool = True
    uere_m: float = 2.5
    correlation_time_s: float = 45.0
    hdop_open_sky: float = 0.9
    hdop_log_sigma: float = 0.15
    hdop_correlation_time_s: float = 300.0
    degraded_zones: int = 2
    speed_sigma_mps: float = 0.05

    def __post_init__(self) -> None:
        if (
            min(
                self.uere_m,
                self.correlation_time_s,
                self.hdop_open_sky,
                self.hdop_correlation_time_s,
            )
            <= 0
        ):
            raise ValueError("noise figures must be positive")
        if self.degraded_zones < 0 or self.hdop_log_sigma < 0 or self.speed_sigma_mps < 0:
            raise ValueError("noise figures must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class MultipathConfig:
    """Multipath jumps: Poisson events with a random offset, duration and HDOP rise."""

    enabled: bool = True
    rate_per_h: float = 6.0
    offset_m: tuple[float, float] = (30.0, 300.0)
    duration_s: tuple[float, float] = (1.0, 8.0)
    hdop_factor: tuple[float, float] = (1.5, 3.0)

    def __post_init__(self) -> None:
        if self.rate_per_h < 0:
            raise ValueError("multipath rate must not be negative")
        for name, (low, high) in (
            ("offset_m", self.offset_m),
            ("duration_s", self.duration_s),
            ("hdop_factor", self.hdop_factor),
        ):
            if not 0 < low <= high:
                raise ValueError(f"multipath {name} must be a range 0 < low <= high")


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """A stretch of time, from the start of the day, with no sky at all."""

    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("an outage window needs start_s >= 0 and duration_s > 0")

    def contains(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True, kw_only=True)
class OutageConfig:
    """Outages: tunnels on the route, explicit windows, start-up acquisition."""

    enabled: bool = True
    tunnels: int = 1
    windows: tuple[OutageWindow, ...] = ()
    startup_no_fix_s: float = 3.0
    reacquire_no_fix_s: tuple[float, float] = (1.0, 4.0)
    reacquire_2d_s: tuple[float, float] = (2.0, 5.0)

    def __post_init__(self) -> None:
        if self.tunnels < 0 or self.startup_no_fix_s < 0:
            raise ValueError("tunnels and startup_no_fix_s must not be negative")
        for name, (low, high) in (
            ("reacquire_no_fix_s", self.reacquire_no_fix_s),
            ("reacquire_2d_s", self.reacquire_2d_s),
        ):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range 0 <= low <= high")


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A covered stretch of road: a corridor ``half_width_m`` either side of ``points``."""

    points: tuple[XY, ...]
    half_width_m: float = 6.0

    def contains(self, x: float, y: float) -> bool:
        """Whether the point is inside the corridor (the portals cut square)."""
        w = self.half_width_m
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:], strict=False):
            if not (
                min(x0, x1) - w <= x <= max(x0, x1) + w and min(y0, y1) - w <= y <= max(y0, y1) + w
            ):
                continue
            dx, dy = x1 - x0, y1 - y0
            length_sq = dx * dx + dy * dy
            if length_sq == 0:
                continue
            f = ((x - x0) * dx + (y - y0) * dy) / length_sq
            if 0.0 <= f <= 1.0 and abs((x - x0) * dy - (y - y0) * dx) / math.sqrt(length_sq) <= w:
                return True
        return False


@dataclass(frozen=True, slots=True)
class DegradedZone:
    """A place with a worse sky (tall buildings): more HDOP, more multipath.

    The effect is full at the centre and fades smoothly to nothing at ``radius_m``.
    """

    east_m: float
    north_m: float
    radius_m: float
    hdop_factor: float
    multipath_factor: float

    def weight(self, x: float, y: float) -> float:
        d = math.hypot(x - self.east_m, y - self.north_m) / self.radius_m
        if d >= 1.0:
            return 0.0
        u = 1.0 - d
        return u * u * (3.0 - 2.0 * u)  # smoothstep: no kink in HDOP at the edge


class GaussMarkov:
    """A unit-variance first-order Gauss-Markov process sampled every ``dt_s``.

    ``x[k+1] = phi x[k] + sqrt(1 - phi²) w``, ``phi = exp(-dt / tau)``: stationary,
    variance 1, autocorrelation ``exp(-lag / tau)``. Scale it by the sigma you need.
    """

    def __init__(self, rng: random.Random, correlation_time_s: float, dt_s: float) -> None:
        self._rng = rng
        self._phi = math.exp(-dt_s / correlation_time_s)
        self._drive = math.sqrt(1.0 - self._phi * self._phi)
        self.value = rng.gauss(0.0, 1.0)

    def step(self) -> float:
        self.value = self._phi * self.value + self._drive * self._rng.gauss(0.0, 1.0)
        return self.value

    def restart(self) -> None:
        """Forget the past: a fresh draw, as a receiver's new solution after an outage."""
        self.value = self._rng.gauss(0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Observation:
    """The receiver's view of one epoch, relative to the truth it was given.

    Without a fix (``mode`` NO_FIX) the errors are 0 and every reported figure is
    ``None``. ``sats_wanted`` is how many satellites the fix would use; the sky may
    offer fewer. ``snr_penalty_db`` weakens every signal (degraded sky).
    """

    mode: FixMode
    east_error_m: float
    north_error_m: float
    alt_m: float | None
    speed_mps: float | None
    course_deg: float | None
    hdop: float | None
    pdop: float | None
    vdop: float | None
    sats_wanted: int
    snr_penalty_db: int
    outage: bool
    multipath: bool


@dataclass(slots=True)
class _MultipathEvent:
    end_s: float
    dx: float
    dy: float
    offset_m: float
    hdop_factor: float


class ReceiverErrorModel:
    """Turns true states into receiver observations, epoch by epoch.

    Call :meth:`observe` once per epoch, in time order, at the configured rate; the
    model is stateful (errors are correlated in time). Build a new model to replay.
    """

    def __init__(
        self,
        *,
        seed: int | str,
        rate_hz: int,
        talker: Talker,
        noise: NoiseConfig,
        multipath: MultipathConfig,
        outages: OutageConfig,
        tunnels: Sequence[Tunnel] = (),
        zones: Sequence[DegradedZone] = (),
    ) -> None:
        self._dt = 1.0 / rate_hz
        self._talker = talker
        self._noise = noise
        self._multipath = multipath
        self._outages = outages
        self._tunnels = tuple(tunnels) if outages.enabled else ()
        self._windows = outages.windows if outages.enabled else ()
        self._zones = tuple(zones)
        # One stream per effect: switching one off leaves the others' draws unchanged.
        self._noise_rng = random_stream("noise", seed)
        self._mp_rng = random_stream("multipath", seed)
        self._outage_rng = random_stream("outage", seed)
        hdop_rng = random_stream("hdop", seed)
        self._hdop = GaussMarkov(hdop_rng, noise.hdop_correlation_time_s, self._dt)
        self._east = GaussMarkov(self._noise_rng, noise.correlation_time_s, self._dt)
        self._north = GaussMarkov(self._noise_rng, noise.correlation_time_s, self._dt)
        self._up = GaussMarkov(self._noise_rng, noise.correlation_time_s, self._dt)

        self._blocked = outages.enabled and outages.startup_no_fix_s > 0
        self._first_acquisition = self._blocked
        self._no_fix_until = -math.inf
        self._fix_2d_until = -math.inf
        self._recovering_from: float | None = None
        self._restart_pending = False
        self._event: _MultipathEvent | None = None
        self._last_alt_m: float | None = None

    def observe(
        self,
        t_s: float,
        *,
        east_m: float,
        north_m: float,
        alt_m: float,
        speed_mps: float,
        course_deg: float,
    ) -> Observation:
        """The receiver's observation of the true state at ``t_s`` seconds into the day."""
        noise = self._noise
        log_hdop = self._hdop.step() * noise.hdop_log_sigma
        e_z, n_z, u_z = self._east.step(), self._north.step(), self._up.step()
        speed_z, course_z = self._noise_rng.gauss(0.0, 1.0), self._noise_rng.gauss(0.0, 1.0)
        mp_draw = self._mp_rng.random()

        if self._in_outage(t_s, east_m, north_m):
            self._blocked = True
            self._event = None
            return _NO_FIX
        if self._blocked:
            self._emerge(t_s)
        if t_s < self._no_fix_until:
            return _NO_FIX
        if self._restart_pending:
            self._restart_pending = False
            self._east.restart()
            self._north.restart()
            self._up.restart()
            e_z, n_z, u_z = self._east.value, self._north.value, self._up.value
        mode = FixMode.FIX_2D if t_s < self._fix_2d_until else FixMode.FIX_3D

        hdop_zone = 1.0
        mp_zone = 1.0
        for zone in self._zones:
            w = zone.weight(east_m, north_m)
            if w > 0:
                hdop_zone = max(hdop_zone, 1.0 + (zone.hdop_factor - 1.0) * w)
                mp_zone = max(mp_zone, 1.0 + (zone.multipath_factor - 1.0) * w)
        hdop = noise.hdop_open_sky * math.exp(log_hdop) * hdop_zone
        if self._recovering_from is not None:
            hdop *= 1.0 + RECOVERY_HDOP_BOOST * math.exp(
                -(t_s - self._recovering_from) / RECOVERY_TIME_S
            )

        event = self._multipath_event(t_s, mode, mp_draw, mp_zone)
        if event is not None:
            hdop *= event.hdop_factor
        if mode is FixMode.FIX_2D:
            hdop = max(hdop, HDOP_2D_MIN)
        hdop = min(MAX_HDOP, max(MIN_HDOP, hdop))
        vdop = VDOP_PER_HDOP * hdop
        pdop = math.hypot(hdop, vdop)

        east_err = north_err = 0.0
        reported_alt: float | None = alt_m
        reported_speed = speed_mps
        reported_course: float | None = course_deg
        if noise.enabled:
            sigma_m = hdop * noise.uere_m
            east_err, north_err = sigma_m * e_z, sigma_m * n_z
            reported_alt = alt_m + vdop * noise.uere_m * u_z
            reported_speed = abs(speed_mps + noise.speed_sigma_mps * speed_z)
            # Course noise shrinks as speed grows: it comes from the velocity's direction.
            reported_course = course_deg + min(10.0, 2.0 / max(reported_speed, 0.2)) * course_z
        if event is not None:
            # The jump replaces the error along its direction and keeps the ordinary
            # noise across it, so the solution is always at least offset_m away.
            along = east_err * event.dx + north_err * event.dy
            east_err += (event.offset_m - along) * event.dx
            north_err += (event.offset_m - along) * event.dy
        if reported_speed < MIN_COURSE_SPEED_MPS:
            reported_course = None
        elif reported_course is not None:
            reported_course %= 360.0

        if mode is FixMode.FIX_3D:
            self._last_alt_m = reported_alt
        else:
            reported_alt = self._last_alt_m  # a 2D fix holds the last known altitude

        if mode is FixMode.FIX_2D:
            sats = 3
        else:
            sats = round(SATS_PER_UNIT_HDOP[self._talker] / hdop)
            sats = max(4, min(MAX_SATS[self._talker], sats))
        penalty = max(0, min(10, round(4.0 * math.log2(hdop / noise.hdop_open_sky))))
        return Observation(
            mode=mode,
            east_error_m=east_err,
            north_error_m=north_err,
            alt_m=reported_alt,
            speed_mps=reported_speed,
            course_deg=reported_course,
            hdop=round(hdop, 2),
            pdop=round(pdop, 2),
            vdop=round(vdop, 2),
            sats_wanted=sats,
            snr_penalty_db=penalty,
            outage=False,
            multipath=event is not None,
        )

    def _in_outage(self, t_s: float, east_m: float, north_m: float) -> bool:
        return any(w.contains(t_s) for w in self._windows) or any(
            t.contains(east_m, north_m) for t in self._tunnels
        )

    def _emerge(self, t_s: float) -> None:
        """The sky is back: schedule the time to fix, the 2D fixes, the recovery."""
        self._blocked = False
        rng = self._outage_rng
        if self._first_acquisition:
            no_fix_s = self._outages.startup_no_fix_s
        else:
            no_fix_s = rng.uniform(*self._outages.reacquire_no_fix_s)
        self._first_acquisition = False
        self._no_fix_until = t_s + no_fix_s
        self._fix_2d_until = self._no_fix_until + rng.uniform(*self._outages.reacquire_2d_s)
        self._recovering_from = self._no_fix_until
        self._restart_pending = True

    def _multipath_event(
        self, t_s: float, mode: FixMode, draw: float, zone_factor: float
    ) -> _MultipathEvent | None:
        if self._event is not None and t_s >= self._event.end_s:
            self._event = None
        config = self._multipath
        if self._event is None and config.enabled and mode is FixMode.FIX_3D:
            probability = config.rate_per_h / 3600.0 * self._dt * zone_factor
            if draw < probability:
                rng = self._mp_rng
                angle = rng.uniform(0.0, 2.0 * math.pi)
                self._event = _MultipathEvent(
                    end_s=t_s + rng.uniform(*config.duration_s),
                    dx=math.cos(angle),
                    dy=math.sin(angle),
                    offset_m=rng.uniform(*config.offset_m),
                    hdop_factor=rng.uniform(*config.hdop_factor),
                )
        return self._event


_NO_FIX = Observation(
    mode=FixMode.NO_FIX,
    east_error_m=0.0,
    north_error_m=0.0,
    alt_m=None,
    speed_mps=None,
    course_deg=None,
    hdop=None,
    pdop=None,
    vdop=None,
    sats_wanted=0,
    snr_penalty_db=0,
    outage=True,
    multipath=False,
)
