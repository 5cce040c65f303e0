"""The van's running ETAs: fixes and arrivals in, ``eta`` and ``late_risk`` records out.

Pure code, like :class:`~firmware_agent.van.VanPipeline` that feeds it: no I/O, and the
only clock is the fixes' GNSS time (an arrival confirmed by a scan brings its own). The
:class:`~firmware_agent.eta.predictor.EtaPredictor` it is given runs CPU-only inference.

:class:`EtaTracker` keeps the day's :class:`~firmware_agent.contract.eta_features.RoutePlan`, the
van's :class:`~firmware_agent.contract.eta_features.SpeedHistory` (fed every fix), its last
:class:`~firmware_agent.contract.eta_features.PlanPosition` and the stops served (arrived at).

When it predicts
----------------
At most once per ``predict_every_s`` (10 s) of GNSS time, on the first fix with a
position after that, and at once when a stop is reached. At 10 Hz fixes that is one
prediction in 100 fixes; every other fix costs one :meth:`SpeedHistory.update` (~6 us
on an x86 core). Ten seconds is far below what an ETA can honestly resolve. An update
for all 150 stops of a route took 0.3-0.4 ms on an x86 core (the features are most of
it; a 31-32-32-1 MLP invoke 0.04 ms); a Pi 4, several times slower, spends a few ms
every 10 s. A prediction covers every unserved stop in one model invoke.

What it publishes (``EtaConfig`` holds every number)
----------------------------------------------------
Every record costs cellular data: an ``eta`` was about 370 bytes on the wire as one
JSON envelope (bench/eta_events.py); in the uplink's deflated events batches it is
about 60 (docs/event-batch.md), and the van's whole telemetry costs about 7 kB an hour.
Predicted times go out to the whole second (finer means nothing at one prediction per
10 s, and milliseconds do not compress). Publishing every change (as a first
version did: every stop that moved at all at each arrival, 5 stops every 5 minutes)
cost 130-880 kB per van-hour on simulated days. The rules below keep what the backend
needs: an ETA for every stop from the start, a fresh one for the next stop at every
arrival, every lasting move of a near stop within half a minute, far stops corrected
when the day really shifts, and one ``late_risk`` a customer can be told about. As
envelopes, with the ``eta-features/1`` model, they cost about 19 kB per van-hour on
25-stop days and 31-33 kB on 150-stop days (the baseline: 44-68 kB), at some 15 stops
an hour (batched, the whole uplink of a 150-stop day is 16.1 kB with the near rule):
the first ETAs and the arrival rule alone are about 11 kB of that, and most of the
rest is the model's ETAs of the next stops sliding while the van dwells (it does not
know how long the dwell will last) and catching up at the next arrival.

The settings can change while the tracker runs (the remote config's ``eta`` section,
:meth:`~firmware_agent.van.VanPipeline.reconfigure`): the next prediction applies them
to what the tracker remembers (published ETAs, runs, standing late_risks).

Per unserved stop, an ``eta`` record when, at a prediction:

- ``first``: the stop has no published ETA yet (the first prediction of the day, or a
  stop a new manifest added), so the backend has one for every stop at once;
- ``moved``: its predicted arrival has been more than a threshold away from the ETA
  last published for it at every prediction for a while. For a stop predicted at most
  ``far_horizon_s`` (1 h) away the threshold is ``max(min_move_s, min_move_fraction x
  time remaining)`` (120 s, 20 %: 2 min up to 10 min away, 6 min at 30 min) and the
  while is ``move_confirm_s`` (30 s): what a customer waiting for a van half an hour
  away notices, and still about the model's own error (bench, 25- and 150-stop days:
  the published ETAs of stops 0-15 min away are 1-12 % worse than the van's latest
  prediction). Waiting 30 s skips a spike of a few predictions (a red light, a GNSS
  jump). Beyond the far horizon the floor is ``far_min_move_s`` (30 min) and the
  while ``far_move_confirm_s`` (30 min): the model's ETAs for stops hours away swing
  by tens of minutes with every stop-and-drive cycle (so does the baseline's
  15-minute mean speed), which is noise to a backend, while a day that has really
  slipped by half an hour shows as a lasting move. A far stop that comes within the
  hour is judged by the near rule from then on, so a stop whose ETA has drifted is
  refreshed about an hour ahead. Within ``near_horizon_s`` (5 min) the floor is
  ``near_min_move_s`` (45 s) and the while ``near_move_confirm_s`` (10 s): there the
  customer watches a countdown, and a backend's naive (straight lines over the
  5-minute speed, computed afresh) is good to about a minute, so a published ETA up to
  2 minutes stale was worse than it (docs/eta.md, "As a customer sees it"). It costs
  about 1.4x the ``eta`` records of the real trips and 1.3x on a 150-stop simulated day;

- ``arrival``: a stop was just reached: the next stop (the first in the order the van
  is expected to take, below), moved or not, so the backend has a fresh ETA for the
  stop the van now heads for. Other stops are republished only under the ``moved``
  rule: an arrival alone does not make their ETAs news. The reached stop gets no final ``eta``: its
  ``arrival`` event is the final word;
- ``heartbeat``: any of the next ``heartbeat_stops`` (1) stops whose ETA was last
  published ``heartbeat_s`` (15 min) ago or more. A stable ETA is otherwise silent;
  this bounds the age of the next stop's ETA, so a backend can tell a van that stopped
  predicting (no ETA for the next stop for more than 15 min while the van reports)
  from a steady one. At a stop every few minutes it seldom fires: the arrival rule
  refreshes the next stop first.

A stop's trigger is the first of these that applies, in this order, and is on the
record. A move "lasts" from the first prediction beyond the threshold to the first
back within it; a published record ends it.

``late_risk``: with the model's calibrated interval, when the probability of arriving
after the window's end (:func:`~firmware_agent.eta.late.late_probability`) has been above
``late_probability`` (0.7) for ``late_confirm_s``, cleared like the point rule with the
probability against a window ending the margin sooner; the record says ``probability``.
Without an interval (the baseline) or with ``late_probability`` 0, the point rule: when
a stop's predicted arrival has been after its promised
``window_end`` (manifest) at every prediction for ``late_confirm_s`` (60 s) while the
stop is predicted at most ``late_horizon_s`` (1 h) away: the time a customer can still
rearrange their day, and as far ahead as the model is accurate enough to be believed
(farther out its ETAs swing across the window's end: a 90-minute horizon doubled the
false alerts on the bench's 150-stop days). Once raised it stands until a prediction
puts the arrival at least ``max(late_clear_s, late_clear_fraction x time remaining)``
(120 s, 10 %) before the window's end; only then can it be raised again. On the bench's
simulated days the model raised a late_risk for every stop that really arrived late,
a median 31-40 min before the window's end; one windowed stop in 28-44 that came on
time had a false alert, and a stop alerted had 1.0-1.25 late_risks (docs/eta.md, "ETA
events on the wire").

The dwell
---------
While the van stands at a stop (from its arrival to the geofence's departure) the
ETAs of the next ``dwell_hold_stops`` (1) stops are held at what the first prediction
of the dwell said, moved only by the change of the expected departure (the stop's
expected dwell, ``dwell_base_s`` + ``dwell_per_parcel_s`` x parcels, or later by the
parcels left to scan: :meth:`EtaTracker.on_parcel`, fed by the pipeline's PODs), so they
do not slide minute by minute (firmware_agent/eta/dwell.py; docs/eta.md, "How an ETA
is computed", for the figures). The model's features are unchanged: ``parcels_here``
is the stop's manifest parcels, as in training.

Sequence deviations
-------------------
The planned order is a prior, not a certainty (docs/eta.md, "Sequence deviations"). A
pending stop is *passed* when the van came within ``passed_near_m`` (100 m) of it since
the last arrival and then stayed beyond ``passed_leave_m`` (300 m) for
``passed_confirm_s`` (20 s) without an arrival there (``drive_past``; only the next
``passed_watch_stops`` (2) stops are watched, a few ``hypot`` per fix), or when a stop
planned after it is reached (``out_of_order``). Each pass gives one ``stop_passed``
record, at a prediction made at once, with the stop's new ETA; the stops' ETAs follow
:func:`~firmware_agent.eta.sequence.expected_order` (the stops not passed in planned
order, each passed one re-inserted where it costs the least extra distance; one the van
came within ``passed_near_m`` of, never before the stop the van heads for and only
where the route comes back within ``passed_leave_m`` of it, else at the end, until it
is served), and at the prediction after a pass a move beyond the ``moved`` threshold
is published without waiting ``move_confirm_s``. An arrival at a passed stop is a normal arrival.

Records
-------
The tracker returns the contract's :class:`~firmware_agent.contract.records.EtaUpdate`
and :class:`~firmware_agent.contract.records.LateRisk`. Each has ``time`` (when issued:
the fix's time), ``stop_id``, ``route_id`` (the manifest's, as on the other stop
events) and ``model`` (the model's version, or ``"baseline"`` when the van has no model
and ``eta`` is the baseline)::

    {"type": "eta", "time", "stop_id", "route_id", "eta", "eta_baseline", "horizon_s",
     "model", "trigger", "eta_p10", "eta_p90"}
    {"type": "late_risk", "time", "stop_id", "route_id", "eta", "eta_baseline",
     "window_end", "late_by_s", "model", "probability"}
    {"type": "stop_passed", "time", "stop_id", "route_id", "planned_index", "reason",
     "closest_m", "eta", "eta_baseline", "stops_before", "model"}

``eta`` is the predicted arrival, ``eta_baseline`` the customer's naive one (straight
lines through the remaining stops / the 5-minute average speed), ``eta_p10``/``eta_p90``
the model's calibrated interval (absent without one), ``horizon_s`` = ``eta`` - ``time``
in seconds, ``late_by_s`` =
``eta`` - ``window_end``. The JSON Schema is ``firmware_agent/contract/schemas/
events.schema.json``.

A model that fails at run time (:class:`~firmware_agent.errors.ModelError`, which the
trial invoke at load makes unlikely) is replaced by the baseline, and
:attr:`EtaTracker.predictor` says why in ``unavailable``: ETAs never stop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.eta_features import PlanPosition, RoutePlan, SpeedHistory, eta_features
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest
from firmware_agent.contract.records import (
    EtaTrigger,
    EtaUpdate,
    LateRisk,
    PassReason,
    StopPassed,
)
from firmware_agent.day_state import EtaDay
from firmware_agent.errors import ConfigError
from firmware_agent.eta.dwell import DwellHold, expected_departure_s
from firmware_agent.eta.late import late_probability
from firmware_agent.eta.predictor import EtaPredictor, Prediction
from firmware_agent.eta.sequence import expected_order

Record = EtaUpdate | LateRisk | StopPassed
"""What the tracker publishes."""

BASELINE_MODEL: Final = "baseline"
_ONE_S: Final = timedelta(seconds=1)
TRIGGERS: Final[tuple[EtaTrigger, ...]] = ("first", "moved", "arrival", "heartbeat")
_FIRST, _MOVED, _ARRIVAL, _HEARTBEAT = range(len(TRIGGERS))
_NONE: Final = len(TRIGGERS)
# What EtaTracker remembers per stop (arrays indexed like the plan's stops).
_PER_STOP: Final = (
    "_published_s",
    "_published_at_s",
    "_move_since_s",
    "_late_since_s",
    "_late",
    "_passed",
    "_deferred",
    "_closest_m",
    "_far_since_s",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaConfig:
    """When the tracker predicts and what it publishes (module doc): durations in
    seconds, fractions of the time remaining to the stop, a number of stops."""

    predict_every_s: float = 10.0
    min_move_s: float = 120.0
    min_move_fraction: float = 0.20
    move_confirm_s: float = 30.0
    far_horizon_s: float = 3600.0
    far_min_move_s: float = 1800.0
    far_move_confirm_s: float = 1800.0
    near_horizon_s: float = 300.0
    near_min_move_s: float = 45.0
    near_move_confirm_s: float = 10.0
    heartbeat_s: float = 900.0
    heartbeat_stops: int = 1
    late_horizon_s: float = 3600.0
    late_confirm_s: float = 60.0
    late_clear_s: float = 120.0
    late_clear_fraction: float = 0.10
    # With the model's interval: late_risk when the probability of arriving after the
    # window's end exceeds this (0: the point rule above, as without an interval).
    late_probability: float = 0.7
    passed_near_m: float = 100.0
    passed_leave_m: float = 300.0
    passed_confirm_s: float = 20.0
    passed_watch_stops: int = 2
    # The dwell (docs/eta.md, "Dwell"): a stop's expected dwell is dwell_base_s +
    # dwell_per_parcel_s x its parcels (the median line through the training days'
    # dwells, bench/eta_dwell.py); the ETAs of the next dwell_hold_stops stops are held
    # meanwhile (0: none).
    dwell_base_s: float = 83.0
    dwell_per_parcel_s: float = 15.0
    dwell_hold_stops: int = 1

    def __post_init__(self) -> None:
        for name in (
            "predict_every_s",
            "min_move_s",
            "min_move_fraction",
            "move_confirm_s",
            "far_horizon_s",
            "far_min_move_s",
            "far_move_confirm_s",
            "near_horizon_s",
            "near_min_move_s",
            "near_move_confirm_s",
            "heartbeat_s",
            "late_horizon_s",
            "late_confirm_s",
            "late_clear_s",
            "late_clear_fraction",
            "late_probability",
            "passed_near_m",
            "passed_leave_m",
            "passed_confirm_s",
            "dwell_base_s",
            "dwell_per_parcel_s",
        ):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0
            ):
                raise ConfigError(f"eta {name} must be a finite number >= 0, got {value!r}")
        if self.late_probability > 0.99:
            raise ConfigError(
                f"eta late_probability must be at most 0.99, got {self.late_probability!r}"
            )
        if self.heartbeat_s == 0:
            raise ConfigError("eta heartbeat_s must be > 0")
        for name in ("heartbeat_stops", "passed_watch_stops", "dwell_hold_stops"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"eta {name} must be an integer >= 0, got {value!r}")
        if self.passed_leave_m <= self.passed_near_m:
            raise ConfigError(
                f"eta passed_leave_m ({self.passed_leave_m!r}) must be more than "
                f"passed_near_m ({self.passed_near_m!r})"
            )


class EtaTracker:
    """One van's ETAs over one manifest. Feed it fixes in time order and arrivals.

    ``served`` names stops already reached (a tracker rebuilt for a new manifest, see
    :meth:`for_manifest`); ``history`` a speed history to carry on (a new one otherwise);
    ``day_start`` the start of the shift (default: the first fix the history saw);
    ``plan`` the manifest's :class:`RoutePlan` if it was built beforehand (off the
    event loop: its cost grows with the stops and the route), else it is built here.
    ``counts`` holds ``predictions``, ``eta``, ``late_risk`` and ``model_errors``.
    """

    def __init__(
        self,
        manifest: Manifest,
        predictor: EtaPredictor,
        config: EtaConfig | None = None,
        *,
        served: Iterable[str] = (),
        history: SpeedHistory | None = None,
        day_start: datetime | None = None,
        plan: RoutePlan | None = None,
    ) -> None:
        self.config = config or EtaConfig()
        self.predictor = predictor
        self.plan = plan if plan is not None else RoutePlan.from_manifest(manifest)
        self.history = history if history is not None else SpeedHistory()
        self.day_start = day_start
        self._route_id = manifest.route_id
        n = self.plan.n_stops
        self._window_end: list[datetime | None] = [s.window_end for s in manifest.stops]
        self._served = np.zeros(n, dtype=np.bool_)
        for stop_id in served:
            i = self.plan.index.get(stop_id)
            if i is not None:
                self._served[i] = True
        # Per stop, in POSIX seconds (NaN: none): the predicted arrival last published
        # and when it was published; since when its prediction has been beyond the move
        # threshold, and since when past its window's end within the late horizon; and
        # whether a late_risk stands (until the stop recovers).
        self._published_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._published_at_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._move_since_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._late_since_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._late = np.zeros(n, dtype=np.bool_)
        # Sequence deviations: whether the stop was passed (drive-past or out of order;
        # an arrival there later serves it as usual), its closest approach while among
        # the next stops, and since when the van has been beyond passed_leave_m of it.
        self._passed = np.zeros(n, dtype=np.bool_)
        self._deferred = np.zeros(n, dtype=np.bool_)  # passed near it: never next (_pass)
        self._closest_m: npt.NDArray[np.float64] = np.full(n, np.inf)
        self._far_since_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._new_passes: list[tuple[int, PassReason]] = []  # to announce at the next update
        # Cache: the stops watched for a pass, (index, x, y); the plan's local frame.
        self._watched: tuple[tuple[int, float, float], ...] | None = None
        # LocalFrame.to_local is linear in lat and lon: its metres per degree, once.
        lat0, lon0 = self.plan.frame.origin_lat, self.plan.frame.origin_lon
        east_per_deg = self.plan.frame.to_local(lat0, lon0 + 1.0)[0]
        north_per_deg = self.plan.frame.to_local(lat0 + 1.0, lon0)[1]
        self._frame: tuple[float, float, float, float] = (
            lat0,
            lon0,
            east_per_deg,
            north_per_deg,
        )
        self._watched_k = 0
        self._position: PlanPosition | None = None
        # The unserved stops in the order the last prediction expected (stop indexes).
        self.order: npt.NDArray[np.intp] = np.flatnonzero(~self._served)
        self._last_fix: tuple[datetime, float, float] | None = None
        self._last_predict: datetime | None = None
        self._arrived = False  # a stop was reached since the last prediction
        # The stop the van stands at (reached, not yet left) and since when: the
        # features' dwell_s and parcels_here.
        self._dwell: tuple[int, datetime] | None = None
        # The parcels of that stop scanned since (their codes), and the ETAs held
        # during it (firmware_agent/eta/dwell.py; dwell_hold_stops 0: none held).
        self._scanned: set[str] = set()
        self._hold: DwellHold | None = None
        self.last_prediction: Prediction | None = None  # after the hold: what was judged
        self.counts: dict[str, int] = {
            "predictions": 0,
            "eta": 0,
            "late_risk": 0,
            "stop_passed": 0,
            "model_errors": 0,
        }

    # -- state ----------------------------------------------------------------------

    @property
    def route_id(self) -> str:
        return self._route_id

    @property
    def served(self) -> frozenset[str]:
        return frozenset(self.plan.stop_ids[i] for i in np.flatnonzero(self._served))

    @property
    def passed(self) -> frozenset[str]:
        """Stops the van passed and has not served (yet)."""
        pending = self._passed & ~self._served
        return frozenset(self.plan.stop_ids[i] for i in np.flatnonzero(pending))

    @property
    def position(self) -> PlanPosition | None:
        """The van on the plan at the last prediction (None before the first)."""
        return self._position

    @property
    def model(self) -> str:
        """What the records' ``model`` says now: the model's version or ``"baseline"``."""
        return self.predictor.model_version or BASELINE_MODEL

    def for_manifest(
        self, manifest: Manifest, served: Iterable[str], plan: RoutePlan | None = None
    ) -> EtaTracker:
        """A tracker for a new manifest that carries on this one's day.

        The speed history, day start, predictor, config, the prediction cadence and the
        last fix carry over; so does, for stops kept by id, what the rules remember (the
        ETA published and when, the runs of predictions beyond the move threshold and
        past the window, a standing late_risk, the stops passed and their approach): no
        burst of records for stops that did not change. ``served`` comes from the caller
        (the geofence engine keeps visits by stop id). The van is placed afresh on the
        new plan at the next prediction. ``plan``: ``manifest``'s, built beforehand (see
        the class).
        """
        new = EtaTracker(
            manifest,
            self.predictor,
            self.config,
            served=served,
            history=self.history,
            day_start=self.day_start,
            plan=plan,
        )
        for stop_id, i in self.plan.index.items():
            j = new.plan.index.get(stop_id)
            if j is not None:
                for name in _PER_STOP:
                    getattr(new, name)[j] = getattr(self, name)[i]
        for i, reason in self._new_passes:  # passes not announced yet: still to announce
            j = new.plan.index.get(self.plan.stop_ids[i])
            if j is not None and not new._served[j]:
                new._new_passes.append((j, reason))
        new._last_fix = self._last_fix
        new._last_predict = self._last_predict
        if self._dwell is not None:
            j = new.plan.index.get(self.plan.stop_ids[self._dwell[0]])
            new._dwell = None if j is None else (j, self._dwell[1])
            new._scanned = set(self._scanned)
        new.counts = self.counts
        return new

    def saved(self) -> EtaDay:
        """What must survive a restart (:class:`~firmware_agent.day_state.EtaDay`):
        the stops passed and not served, the ETAs published (to the whole second, as
        sent) and the standing late_risks of the stops not served."""
        ids = self.plan.stop_ids
        pending = ~self._served
        published = np.flatnonzero(pending & np.isfinite(self._published_s))
        return EtaDay(
            passed=tuple(ids[i] for i in np.flatnonzero(pending & self._passed)),
            deferred=tuple(ids[i] for i in np.flatnonzero(pending & self._deferred)),
            published={
                ids[i]: (round(float(self._published_s[i])), round(float(self._published_at_s[i])))
                for i in published
            },
            late=tuple(ids[i] for i in np.flatnonzero(pending & self._late)),
        )

    def restore(self, day: EtaDay) -> None:
        """Take back what :meth:`saved` kept before a restart (stops unknown to this
        plan, or served, are skipped): passed stops stay passed and are not announced
        again, published ETAs are judged by the ``moved`` rule, not sent as ``first``."""
        index = self.plan.index
        for names, flags in ((day.passed, self._passed), (day.deferred, self._deferred)):
            for stop_id in names:
                i = index.get(stop_id)
                if i is not None and not self._served[i]:
                    flags[i] = True
        for stop_id, (eta_s, at_s) in day.published.items():
            i = index.get(stop_id)
            if i is not None and not self._served[i]:
                self._published_s[i], self._published_at_s[i] = eta_s, at_s
        for stop_id in day.late:
            i = index.get(stop_id)
            if i is not None and not self._served[i]:
                self._late[i] = True
        self._watched = None

    # -- feeding --------------------------------------------------------------------

    def on_fix(self, fix: Fix, *, arrived: Iterable[str] = ()) -> list[Record]:
        """Feed one fix (time order); returns the records to publish, often none.

        ``arrived`` names stops reached at this fix (the geofence's arrivals): they are
        served before the prediction, which then happens at once under the arrival rule.
        A fix without time or position only updates the speed history (and keeps a
        pending arrival pending).
        """
        for stop_id in arrived:
            self._serve(stop_id, fix.time)
        self.history.update(fix)
        if fix.time is None or fix.lat is None or fix.lon is None:
            return []
        now = fix.time
        if self._last_fix is not None and now <= self._last_fix[0]:
            return []  # out of order: the history ignored it too
        self._last_fix = (now, fix.lat, fix.lon)
        self._watch(now.timestamp(), fix.lat, fix.lon)
        due = (
            self._last_predict is None
            or (now - self._last_predict).total_seconds() >= self.config.predict_every_s
        )
        if not (due or self._arrived or self._new_passes):
            return []
        return self._update(now, fix.lat, fix.lon)

    def on_arrival(self, stop_id: str, now: datetime) -> list[Record]:
        """A stop was reached at ``now`` away from a fix (a scan confirmed it).

        Serves the stop and, once the van has had a position, predicts at once from the
        last one (the arrival rule). Before any position the update waits for the
        first fix. An unknown or already served stop changes nothing.
        """
        if not self._serve(stop_id, now) or self._last_fix is None:
            return []
        fix_time, lat, lon = self._last_fix
        return self._update(max(now, fix_time), lat, lon)

    def on_departure(self, stop_id: str, now: datetime) -> None:
        """The van left ``stop_id`` at ``now`` (the geofence's departure): the dwell there
        ends, and the next prediction sees the van driving. Publishes nothing itself."""
        i = self.plan.index.get(stop_id)
        if self._dwell is not None and self._dwell[0] == i:
            self._dwell = None
            self._hold = None

    def on_parcel(self, stop_id: str, parcel: str) -> None:
        """An attempt at ``parcel`` of ``stop_id`` was recorded (a POD, delivered or
        failed: the parcel was dealt with). Counts toward the parcels left to scan at the
        stop the van stands at; a parcel of another stop, or again, changes nothing."""
        i = self.plan.index.get(stop_id)
        if self._dwell is not None and self._dwell[0] == i:
            self._scanned.add(parcel)

    def dwell(self, now: datetime) -> tuple[float, float]:
        """(seconds at the stop the van stands at, its manifest parcels), (0, 0) while
        driving: the features' ``dwell_s`` and ``parcels_here``, as the training rows
        compute them (cloud_ingest/eta/dataset.py: the stop's parcels, whatever was
        scanned). The parcels left to scan serve the hold (:meth:`parcels_left`)."""
        if self._dwell is None:
            return 0.0, 0.0
        i, since = self._dwell
        return max(0.0, (now - since).total_seconds()), float(self.plan.parcels[i])

    def parcels_left(self) -> float:
        """Parcels of the stop the van stands at not scanned yet (0 while driving)."""
        if self._dwell is None:
            return 0.0
        return max(0.0, float(self.plan.parcels[self._dwell[0]]) - len(self._scanned))

    def _serve(self, stop_id: str, at: datetime | None = None) -> bool:
        i = self.plan.index.get(stop_id)
        if i is None or self._served[i]:
            return False
        # Out of order: the stops planned before this one, neither served nor already
        # passed, were skipped. A passed stop served later is a normal arrival.
        skipped = np.flatnonzero(~self._served[:i] & ~self._passed[:i])
        for j in skipped:
            self._pass(int(j), "out_of_order")
        self._served[i] = True
        # The approach to the stops after it counts from here: a street to this stop
        # that runs by the next one is not a drive-past of the next one.
        ahead = ~self._served & ~self._passed
        self._closest_m[ahead] = np.inf
        self._far_since_s[ahead] = np.nan
        self._watched = None
        if at is not None:
            self._dwell = (i, at)
            self._scanned = set()
        self._hold = None
        self._published_s[i] = self._published_at_s[i] = np.nan
        self._move_since_s[i] = self._late_since_s[i] = np.nan
        self._late[i] = False
        self._arrived = True
        return True

    def _pass(self, i: int, reason: PassReason) -> None:
        self._hold = None  # the order changed: the hold starts again
        self._passed[i] = True
        # Deferred until served: the driver was at or by the stop and did not stop (a
        # drive-past, or a stop skipped out of order that the van had come near, often
        # a halt the geofence did not confirm), so it is not where the van heads next,
        # not even after the next arrival: turning back for it would put the detour into
        # every later stop's ETA. A stop skipped while the van was never near it may come
        # next (the driver took another stop first).
        near = self._closest_m[i] <= self.config.passed_near_m
        self._deferred[i] = reason == "drive_past" or bool(near)
        self._far_since_s[i] = np.nan
        self._new_passes.append((i, reason))
        self._watched = None

    def _watch(self, now_s: float, lat: float, lon: float) -> None:
        """Drive-pasts: per fix, the next ``passed_watch_stops`` stops not served nor
        passed (stop order) keep their closest approach; the first of them is passed
        once the van, having come within ``passed_near_m`` of it since the last arrival,
        has been farther than ``passed_leave_m`` for ``passed_confirm_s`` without an
        arrival there. Then the next one is judged at once (two stops driven past
        together). O(watched) per fix."""
        cfg = self.config
        k = cfg.passed_watch_stops
        if k == 0:
            return
        if self._watched is None or self._watched_k != k:
            pending = np.flatnonzero(~self._served & ~self._passed)[:k]
            xy = self.plan.stop_xy
            self._watched = tuple((int(i), float(xy[i, 0]), float(xy[i, 1])) for i in pending)
            self._watched_k = k
        lat0, lon0, east_per_deg, north_per_deg = self._frame
        x, y = (lon - lon0) * east_per_deg, (lat - lat0) * north_per_deg
        closest = self._closest_m
        first = True
        for i, sx, sy in self._watched:
            d = math.hypot(sx - x, sy - y)
            closest[i] = min(closest[i], d)
            if not first:
                continue
            # The first one not passed is judged (the next one, once it is passed).
            if closest[i] > cfg.passed_near_m or d < cfg.passed_leave_m:
                self._far_since_s[i] = np.nan
                first = False
                continue
            since = float(self._far_since_s[i])
            if math.isnan(since):  # the van just went beyond passed_leave_m
                self._far_since_s[i] = since = now_s
            if now_s - since < cfg.passed_confirm_s:
                first = False
                continue
            self._pass(i, "drive_past")

    # -- predicting -----------------------------------------------------------------

    def predict(self, now: datetime, lat: float, lon: float) -> Prediction:
        """Place the van at (lat, lon) and predict every unserved stop; no records.

        The stops follow the order the driver is expected to take
        (:func:`~firmware_agent.eta.sequence.expected_order`, in :attr:`order`)."""
        x, y = self.plan.frame.to_local(lat, lon)
        order = self.order = expected_order(
            self.plan,
            self._served,
            self._passed,
            x,
            y,
            deferred=self._deferred,
            max_detour_m=2.0 * self.config.passed_leave_m,
        )
        nxt = int(order[0]) if order.size else None
        self._position = self.plan.project(
            lat, lon, now, self._served, since=self._position, next_stop=nxt
        )
        dwell_s, parcels_here = self.dwell(now)
        features = eta_features(
            now,
            self.plan,
            self._position,
            self._served,
            self.history,
            day_start=self.day_start,
            order=order,
            dwell_s=dwell_s,
            parcels_here=parcels_here,
        )
        self.counts["predictions"] += 1
        try:
            prediction = self.predictor.predict(features)
        except ModelError as err:
            # The trial invoke at load makes this unlikely; if it happens, the van goes
            # on with the baseline rather than going silent, and says so in its status.
            self.counts["model_errors"] += 1
            self.predictor = EtaPredictor.baseline(f"model {self.model} failed: {err}")
            return self.predictor.predict(features)
        finite = np.isfinite(prediction.eta_s)
        if not finite.all():
            # A NaN out of the model (finite features, odd weights) would poison the
            # records: those stops fall back to their baseline for this prediction.
            self.counts["model_errors"] += 1
            eta_s = np.where(finite, prediction.eta_s, prediction.baseline_s)
            prediction = dataclasses.replace(prediction, eta_s=eta_s, p10_s=None, p90_s=None)
        return prediction

    def _update(self, now: datetime, lat: float, lon: float) -> list[Record]:
        arrival, self._arrived = self._arrived, False
        passes, self._new_passes = self._new_passes, []
        self._last_predict = now
        idx = np.flatnonzero(~self._served)
        if idx.size == 0:
            return []  # the day's stops are all served: nothing more to say
        now_s = now.timestamp()
        prediction = self.last_prediction = self._held(now_s, idx, self.predict(now, lat, lon))
        eta_s = prediction.eta_s
        arrive_s = now_s + eta_s
        # Where each stop of the expected order is among idx (stop order).
        head = np.searchsorted(idx, self.order)
        trigger = self._triggers(
            now_s, idx, eta_s, arrive_s, head, arrival=arrival, resequenced=bool(passes)
        )

        model = prediction.model_version or BASELINE_MODEL
        records: list[Record] = []
        for k in np.flatnonzero(trigger != _NONE):
            i = int(idx[k])
            self._published_s[i] = arrive_s[k]
            self._published_at_s[i] = now_s
            self._move_since_s[i] = np.nan
            records.append(
                EtaUpdate(
                    time=now,
                    stop_id=self.plan.stop_ids[i],
                    route_id=self._route_id,
                    eta=(eta := self._at(now, eta_s[k])),
                    eta_baseline=self._at(now, prediction.baseline_s[k]),
                    horizon_s=(eta - now).total_seconds(),
                    model=model,
                    trigger=TRIGGERS[trigger[k]],
                    eta_p10=self._maybe_at(now, prediction.p10_s, int(k)),
                    eta_p90=self._maybe_at(now, prediction.p90_s, int(k)),
                )
            )
        self.counts["eta"] += len(records)
        records += self._late_risks(now, idx, prediction, arrive_s, model)
        passed_records = self._stop_passed(now, idx, head, prediction, passes=passes, model=model)
        return passed_records + records

    def _held(self, now_s: float, idx: npt.NDArray[np.intp], prediction: Prediction) -> Prediction:
        """``prediction`` with the next stops held while the van dwells
        (firmware_agent/eta/dwell.py); as it is while driving."""
        if self._dwell is None or self.config.dwell_hold_stops == 0:
            self._hold = None
            return prediction
        i, since = self._dwell
        departure_s = expected_departure_s(
            since.timestamp(),
            now_s,
            parcels=float(self.plan.parcels[i]),
            parcels_left=self.parcels_left(),
            base_s=self.config.dwell_base_s,
            per_parcel_s=self.config.dwell_per_parcel_s,
        )
        if self._hold is None or self._hold.stop != i:
            self._hold = DwellHold.start(
                i,
                self.plan.n_stops,
                idx,
                now_s,
                prediction,
                departure_s,
                only=self.order[: self.config.dwell_hold_stops],
            )
            return prediction
        return self._hold.apply(idx, now_s, prediction, departure_s)

    def _stop_passed(
        self,
        now: datetime,
        idx: npt.NDArray[np.intp],
        head: npt.NDArray[np.intp],
        prediction: Prediction,
        *,
        passes: list[tuple[int, PassReason]],
        model: str,
    ) -> list[Record]:
        """One ``stop_passed`` per stop newly passed, with what the van now expects."""
        records: list[Record] = []
        place = {int(k): rank for rank, k in enumerate(head)}  # row -> place in order
        for i, reason in passes:
            if self._served[i]:
                continue  # passed and served within one update: nothing to announce
            k = int(np.searchsorted(idx, i))
            closest = float(self._closest_m[i])
            records.append(
                StopPassed(
                    time=now,
                    stop_id=self.plan.stop_ids[i],
                    route_id=self._route_id,
                    planned_index=i,
                    reason=reason,
                    closest_m=closest if math.isfinite(closest) else None,
                    eta=self._at(now, prediction.eta_s[k]),
                    eta_baseline=self._at(now, prediction.baseline_s[k]),
                    stops_before=place[k],
                    model=model,
                )
            )
        self.counts["stop_passed"] += len(records)
        return records

    def _triggers(
        self,
        now_s: float,
        idx: npt.NDArray[np.intp],
        eta_s: npt.NDArray[np.float64],
        arrive_s: npt.NDArray[np.float64],
        head: npt.NDArray[np.intp],
        *,
        arrival: bool,
        resequenced: bool = False,
    ) -> npt.NDArray[np.int8]:
        """Per unserved stop (``idx``, in stop order), the index in :data:`TRIGGERS` of
        why its ETA is sent now, or ``_NONE``; keeps each stop's move run up to date.
        ``head``: the positions in ``idx`` of the stops in the expected order (the next
        stop first). ``resequenced``: a stop was just passed, so a move beyond the
        threshold is a known change of order, not noise, and goes out at once."""
        cfg = self.config
        previous = self._published_s[idx]
        far = eta_s > cfg.far_horizon_s
        near = eta_s <= cfg.near_horizon_s
        floor_s = np.where(near, cfg.near_min_move_s, cfg.min_move_s)
        floor_s = np.where(far, cfg.far_min_move_s, floor_s)
        threshold_s = np.maximum(floor_s, cfg.min_move_fraction * eta_s)
        with np.errstate(invalid="ignore"):  # NaN, never published: not beyond
            beyond = np.abs(arrive_s - previous) > threshold_s
        # A run starts at the first prediction beyond the threshold and ends at the
        # first one back within it (NaN: no run): a move counts once it has lasted.
        since_s = np.where(beyond, np.fmin(self._move_since_s[idx], now_s), np.nan)
        self._move_since_s[idx] = since_s
        with np.errstate(invalid="ignore"):
            confirm_s = np.where(near, cfg.near_move_confirm_s, cfg.move_confirm_s)
            confirm_s = np.where(far, cfg.far_move_confirm_s, confirm_s)
            moved = now_s - since_s >= confirm_s
        if resequenced:
            moved |= beyond
        # Lowest priority first: a later rule's trigger replaces an earlier one's.
        trigger = np.full(idx.size, _NONE, dtype=np.int8)
        nearest = head[: cfg.heartbeat_stops]
        with np.errstate(invalid="ignore"):
            stale = now_s - self._published_at_s[idx[nearest]] >= cfg.heartbeat_s
        trigger[nearest[stale]] = _HEARTBEAT
        if arrival:
            trigger[head[0]] = _ARRIVAL  # the next stop, moved or not
        trigger[moved] = _MOVED
        trigger[np.isnan(previous)] = _FIRST
        return trigger

    def _late_risks(
        self,
        now: datetime,
        idx: npt.NDArray[np.intp],
        prediction: Prediction,
        arrive_s: npt.NDArray[np.float64],
        model: str,
    ) -> list[Record]:
        cfg = self.config
        window_end_s = self.plan.window_end_s[idx]  # NaN without a window: never late
        now_s = now.timestamp()
        with np.errstate(invalid="ignore"):
            margin_s = np.maximum(cfg.late_clear_s, cfg.late_clear_fraction * prediction.eta_s)
            near = prediction.eta_s <= cfg.late_horizon_s
            late = (arrive_s > window_end_s) & near
            clear = arrive_s <= window_end_s - margin_s
        # With an interval, by the probability of missing the window (firmware_agent/
        # eta/late.py): raised above late_probability, cleared once the arrival is that
        # unlikely even after a window ending margin_s sooner; else the point rule.
        probability = None
        if (
            cfg.late_probability > 0
            and prediction.p10_s is not None
            and prediction.p90_s is not None
        ):
            to_end_s = window_end_s - now_s
            probability = late_probability(prediction.p10_s, prediction.p90_s, to_end_s)
            has = np.isfinite(probability)
            with np.errstate(invalid="ignore"):
                late = np.where(has, (probability > cfg.late_probability) & near, late)
                sooner = late_probability(prediction.p10_s, prediction.p90_s, to_end_s - margin_s)
                clear = np.where(has, sooner <= cfg.late_probability, clear)
        # As for moves: late counts once it has lasted late_confirm_s, within the horizon.
        since_s = np.where(late, np.fmin(self._late_since_s[idx], now_s), np.nan)
        self._late_since_s[idx] = since_s
        with np.errstate(invalid="ignore"):
            confirmed = now_s - since_s >= cfg.late_confirm_s
        standing = self._late[idx]
        self._late[idx[clear]] = False
        records: list[Record] = []
        for k in np.flatnonzero(confirmed & ~standing):
            i = int(idx[k])
            self._late[i] = True
            window_end = self._window_end[i]
            assert window_end is not None  # a finite window_end_s comes from one
            records.append(
                LateRisk(
                    time=now,
                    stop_id=self.plan.stop_ids[i],
                    route_id=self._route_id,
                    eta=self._at(now, prediction.eta_s[k]),
                    eta_baseline=self._at(now, prediction.baseline_s[k]),
                    window_end=window_end,
                    late_by_s=float(arrive_s[k] - window_end_s[k]),
                    model=model,
                    probability=(
                        None
                        if probability is None or not math.isfinite(probability[k])
                        else round(float(probability[k]), 2)
                    ),
                )
            )
        self.counts["late_risk"] += len(records)
        return records

    @staticmethod
    def _at(now: datetime, seconds: float) -> datetime:
        """``now`` + ``seconds``, to the whole second: a prediction made every 10 s
        means nothing finer, and the milliseconds of four times per record were the
        part of an ``eta`` that deflate cannot shrink (bench/uplink_bytes.py)."""
        t = now + timedelta(seconds=float(seconds))
        whole = t.replace(microsecond=0)
        return whole + _ONE_S if t.microsecond >= 500_000 else whole

    @staticmethod
    def _maybe_at(
        now: datetime, seconds: npt.NDArray[np.float64] | None, k: int
    ) -> datetime | None:
        if seconds is None or not math.isfinite(float(seconds[k])):
            return None
        return EtaTracker._at(now, float(seconds[k]))
