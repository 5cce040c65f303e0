"""The van's running ETAs: fixes and arrivals in, ``eta`` and ``late_risk`` records out.

Pure code, like :class:`~firmware_agent.van.VanPipeline` that feeds it: no I/O, and the
only clock is the fixes' GNSS time (an arrival confirmed by a scan brings its own). The
:class:`~firmware_agent.eta.predictor.EtaPredictor` it is given runs CPU-only inference.

:class:`EtaTracker` keeps the day's :class:`~firmware_agent.eta.features.RoutePlan`, the
van's :class:`~firmware_agent.eta.features.SpeedHistory` (fed every fix), its last
:class:`~firmware_agent.eta.features.PlanPosition` and the stops served (arrived at).

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
Per unserved stop, an ``eta`` record when, at a prediction:

- ``first``: the stop has no published ETA yet (the first prediction of the day, or a
  stop a new manifest added), so the backend has one for every stop at once;
- ``moved``: its predicted arrival moved by more than ``max(min_move_s, min_move_fraction
  x time remaining)`` (60 s, 10 %) since the ETA last published for it. The relative
  part keeps a stop two hours away from being republished on every minute of drift; the
  60 s floor keeps the next stop from being republished at every wobble;
- ``arrival``: a stop was just reached: every remaining stop whose predicted arrival
  moved at all (by at least ``arrival_min_move_s``, 1 s, below which it is float noise
  at the wire's resolution) since its last published ETA, and always the next stop, so
  the backend learns at once what the reached stop's dwell did to the rest of the day.
  The reached stop gets no final ``eta``: its ``arrival`` event is the final word;
- ``heartbeat``: every ``heartbeat_s`` (300 s, counted from the first prediction), the
  next ``heartbeat_stops`` (5) unserved stops in stop order, unless the same update
  already carries them. The heartbeat tells the backend the van still predicts (a
  stable ETA is otherwise silent); the next five stops are those a customer is waiting
  for, and leaving out the rest keeps cellular data small: 60 records an hour, not 1800.

A stop's trigger is the first of these that applies, in this order, and is on the
record.

``late_risk``: once, when a stop's predicted arrival passes its promised ``window_end``
(manifest); again only after it has recovered, i.e. after a prediction has put the
arrival at least ``max(late_clear_s, late_clear_fraction x time remaining)`` (60 s,
10 %) before the window's end, and then passes it again. The margin, scaled like the
``moved`` threshold, keeps a prediction wobbling around the window's end from alerting
the customer at every update. It does not stop a far-off stop's ETA swinging by more
than that (the baseline's does: a dwell lowers the 15-minute mean speed): on a
simulated 150-stop day the baseline raised 359 late_risks for the 34 of 90 windowed
stops it ever predicted late (5 were). A model's steadier ETAs are the remedy.

Records
-------
Every record has ``type``, ``time`` (when issued: the fix's time, ISO 8601 UTC with
milliseconds, :func:`~firmware_agent.gnss.fix.format_utc`), ``stop_id``, ``route_id``
(the manifest's, as on the other stop events) and ``model`` (the model's version, or
``"baseline"`` when the van has no model and ``eta`` is the baseline)::

    {"type": "eta", "time", "stop_id", "route_id", "eta", "eta_baseline", "horizon_s",
     "model", "trigger"}
    {"type": "late_risk", "time", "stop_id", "route_id", "eta", "eta_baseline",
     "window_end", "late_by_s", "model"}

``eta`` is the predicted arrival, ``eta_baseline`` the naive one (remaining distance /
recent average speed), ``horizon_s`` = ``eta`` - ``time`` in seconds, ``late_by_s`` =
``eta`` - ``window_end``. The JSON Schema is ``cloud_ingest/contract/schemas/
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
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from firmware_agent.errors import ConfigError, ModelError
from firmware_agent.eta.features import PlanPosition, RoutePlan, SpeedHistory, eta_features
from firmware_agent.eta.predictor import EtaPredictor, Prediction
from firmware_agent.gnss.fix import Fix, format_utc
from firmware_agent.manifest import Manifest

Record = dict[str, Any]
"""A JSON-ready message, as :data:`firmware_agent.van.Message`."""

BASELINE_MODEL: Final = "baseline"
TRIGGERS: Final = ("first", "moved", "arrival", "heartbeat")
_FIRST, _MOVED, _ARRIVAL, _HEARTBEAT = range(len(TRIGGERS))
_NONE: Final = len(TRIGGERS)


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaConfig:
    """When the tracker predicts and what it publishes (module doc): durations in
    seconds, fractions of the time remaining to the stop, a number of stops."""

    predict_every_s: float = 10.0
    min_move_s: float = 60.0
    min_move_fraction: float = 0.10
    arrival_min_move_s: float = 1.0
    heartbeat_s: float = 300.0
    heartbeat_stops: int = 5
    late_clear_s: float = 60.0
    late_clear_fraction: float = 0.10

    def __post_init__(self) -> None:
        for name in (
            "predict_every_s",
            "min_move_s",
            "min_move_fraction",
            "arrival_min_move_s",
            "heartbeat_s",
            "late_clear_s",
            "late_clear_fraction",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"eta {name} must be a finite number >= 0, got {value!r}")
        if self.heartbeat_s == 0:
            raise ConfigError("eta heartbeat_s must be > 0")
        if not isinstance(self.heartbeat_stops, int) or self.heartbeat_stops < 0:
            raise ConfigError(
                f"eta heartbeat_stops must be an integer >= 0, got {self.heartbeat_stops!r}"
            )


class EtaTracker:
    """One van's ETAs over one manifest. Feed it fixes in time order and arrivals.

    ``served`` names stops already reached (a tracker rebuilt for a new manifest, see
    :meth:`for_manifest`); ``history`` a speed history to carry on (a new one otherwise);
    ``day_start`` the start of the shift (default: the first fix the history saw).
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
    ) -> None:
        self.config = config or EtaConfig()
        self.predictor = predictor
        self.plan = RoutePlan.from_manifest(manifest)
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
        # Per stop: the predicted arrival last published (POSIX seconds; NaN: none yet),
        # and whether a late_risk stands (cleared once the stop recovers).
        self._published_s: npt.NDArray[np.float64] = np.full(n, np.nan)
        self._late = np.zeros(n, dtype=np.bool_)
        self._position: PlanPosition | None = None
        self._last_fix: tuple[datetime, float, float] | None = None
        self._last_predict: datetime | None = None
        self._last_heartbeat: datetime | None = None
        self._arrived = False  # a stop was reached since the last prediction
        self.counts: dict[str, int] = {
            "predictions": 0,
            "eta": 0,
            "late_risk": 0,
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
    def position(self) -> PlanPosition | None:
        """The van on the plan at the last prediction (None before the first)."""
        return self._position

    @property
    def model(self) -> str:
        """What the records' ``model`` says now: the model's version or ``"baseline"``."""
        return self.predictor.model_version or BASELINE_MODEL

    def for_manifest(self, manifest: Manifest, served: Iterable[str]) -> EtaTracker:
        """A tracker for a new manifest that carries on this one's day.

        The speed history, day start, predictor, config, the cadence and heartbeat
        clocks and the last fix carry over; so do, for stops kept by id, the published
        ETA and a standing late_risk (no burst of records for stops that did not
        change). ``served`` comes from the caller (the geofence engine keeps visits by
        stop id). The van is placed afresh on the new plan at the next prediction.
        """
        new = EtaTracker(
            manifest,
            self.predictor,
            self.config,
            served=served,
            history=self.history,
            day_start=self.day_start,
        )
        for stop_id, i in self.plan.index.items():
            j = new.plan.index.get(stop_id)
            if j is not None:
                new._published_s[j] = self._published_s[i]
                new._late[j] = self._late[i]
        new._last_fix = self._last_fix
        new._last_predict = self._last_predict
        new._last_heartbeat = self._last_heartbeat
        new.counts = self.counts
        return new

    # -- feeding --------------------------------------------------------------------

    def on_fix(self, fix: Fix, *, arrived: Iterable[str] = ()) -> list[Record]:
        """Feed one fix (time order); returns the records to publish, often none.

        ``arrived`` names stops reached at this fix (the geofence's arrivals): they are
        served before the prediction, which then happens at once under the arrival rule.
        A fix without time or position only updates the speed history (and keeps a
        pending arrival pending).
        """
        for stop_id in arrived:
            self._serve(stop_id)
        self.history.update(fix)
        if fix.time is None or fix.lat is None or fix.lon is None:
            return []
        now = fix.time
        if self._last_fix is not None and now <= self._last_fix[0]:
            return []  # out of order: the history ignored it too
        self._last_fix = (now, fix.lat, fix.lon)
        due = (
            self._last_predict is None
            or (now - self._last_predict).total_seconds() >= self.config.predict_every_s
        )
        if not (due or self._arrived):
            return []
        return self._update(now, fix.lat, fix.lon)

    def on_arrival(self, stop_id: str, now: datetime) -> list[Record]:
        """A stop was reached at ``now`` away from a fix (a scan confirmed it).

        Serves the stop and, once the van has had a position, predicts at once from the
        last one (the arrival rule). Before any position the update waits for the
        first fix. An unknown or already served stop changes nothing.
        """
        if not self._serve(stop_id) or self._last_fix is None:
            return []
        fix_time, lat, lon = self._last_fix
        return self._update(max(now, fix_time), lat, lon)

    def _serve(self, stop_id: str) -> bool:
        i = self.plan.index.get(stop_id)
        if i is None or self._served[i]:
            return False
        self._served[i] = True
        self._published_s[i] = np.nan
        self._late[i] = False
        self._arrived = True
        return True

    # -- predicting -----------------------------------------------------------------

    def predict(self, now: datetime, lat: float, lon: float) -> Prediction:
        """Place the van at (lat, lon) and predict every unserved stop; no records."""
        self._position = self.plan.project(lat, lon, now, self._served, since=self._position)
        features = eta_features(
            now, self.plan, self._position, self._served, self.history, day_start=self.day_start
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
            prediction = dataclasses.replace(prediction, eta_s=eta_s)
        return prediction

    def _update(self, now: datetime, lat: float, lon: float) -> list[Record]:
        arrival, self._arrived = self._arrived, False
        self._last_predict = now
        idx = np.flatnonzero(~self._served)
        if idx.size == 0:
            return []  # the day's stops are all served: nothing more to say
        prediction = self.predict(now, lat, lon)
        cfg = self.config
        eta_s = prediction.eta_s
        now_s = now.timestamp()
        arrive_s = now_s + eta_s
        previous = self._published_s[idx]
        never = np.isnan(previous)
        with np.errstate(invalid="ignore"):
            moved_s = np.abs(arrive_s - previous)  # NaN where never published
            threshold = np.maximum(cfg.min_move_s, cfg.min_move_fraction * eta_s)
            trigger = np.full(idx.size, _NONE, dtype=np.int8)
            if arrival:
                changed = moved_s >= cfg.arrival_min_move_s
                trigger[changed] = _ARRIVAL
                trigger[0] = _ARRIVAL  # the next stop, changed or not
            trigger[moved_s > threshold] = _MOVED
        trigger[never] = _FIRST
        heartbeat = (
            self._last_heartbeat is None
            or (now - self._last_heartbeat).total_seconds() >= cfg.heartbeat_s
        )
        if heartbeat:
            self._last_heartbeat = now
            head = trigger[: cfg.heartbeat_stops]
            head[head == _NONE] = _HEARTBEAT

        model = prediction.model_version or BASELINE_MODEL
        records: list[Record] = []
        issued = format_utc(now)
        for k in np.flatnonzero(trigger != _NONE):
            i = int(idx[k])
            self._published_s[i] = arrive_s[k]
            records.append(
                {
                    "type": "eta",
                    "time": issued,
                    "stop_id": self.plan.stop_ids[i],
                    "route_id": self._route_id,
                    "eta": self._at(now, eta_s[k]),
                    "eta_baseline": self._at(now, prediction.baseline_s[k]),
                    "horizon_s": round(float(eta_s[k]), 1),
                    "model": model,
                    "trigger": TRIGGERS[trigger[k]],
                }
            )
        self.counts["eta"] += len(records)
        records += self._late_risks(now, idx, prediction, arrive_s, model)
        return records

    def _late_risks(
        self,
        now: datetime,
        idx: npt.NDArray[np.intp],
        prediction: Prediction,
        arrive_s: npt.NDArray[np.float64],
        model: str,
    ) -> list[Record]:
        window_end_s = self.plan.window_end_s[idx]  # NaN without a window: never late
        with np.errstate(invalid="ignore"):
            late = arrive_s > window_end_s
            margin_s = np.maximum(
                self.config.late_clear_s, self.config.late_clear_fraction * prediction.eta_s
            )
            clear = arrive_s <= window_end_s - margin_s
        standing = self._late[idx]
        self._late[idx[clear]] = False
        records: list[Record] = []
        issued = format_utc(now)
        for k in np.flatnonzero(late & ~standing):
            i = int(idx[k])
            self._late[i] = True
            window_end = self._window_end[i]
            assert window_end is not None  # a finite window_end_s comes from one
            records.append(
                {
                    "type": "late_risk",
                    "time": issued,
                    "stop_id": self.plan.stop_ids[i],
                    "route_id": self._route_id,
                    "eta": self._at(now, prediction.eta_s[k]),
                    "eta_baseline": self._at(now, prediction.baseline_s[k]),
                    "window_end": format_utc(window_end),
                    "late_by_s": round(float(arrive_s[k] - window_end_s[k]), 1),
                    "model": model,
                }
            )
        self.counts["late_risk"] += len(records)
        return records

    @staticmethod
    def _at(now: datetime, seconds: float) -> str:
        return format_utc(now + timedelta(seconds=float(seconds)))
