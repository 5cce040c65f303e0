"""Training rows for the ETA model: simulator days, real trips and ingest's history.

Every source becomes a :class:`Day` (the contract's :class:`~firmware_agent.contract.
eta_days.EtaDay`: the manifest the van drove, the fixes it saw in time order, and when
each stop was really reached) and every day goes through the same
pure core, :func:`day_rows`, which plays the fixes the way the agent does: each fix
into :class:`~firmware_agent.contract.eta_features.SpeedHistory`, each position through
:meth:`~firmware_agent.contract.eta_features.RoutePlan.project`, and every ``sample_every_s``
the :func:`~firmware_agent.contract.eta_features.eta_features` of the remaining stops. So the
model learns from the very numbers the van will compute.

A row is one (sample time, unserved stop) pair: ``x`` its feature row, ``actual_s`` the
seconds from the sample time to the stop's real arrival, ``naive_s`` the model's anchor,
the customer's naive ETA (the ``chain_naive_s`` column), and ``y_target`` the model's target,
:func:`~firmware_agent.eta.predictor.log_ratio_target`. ``groups`` names the day of each
row, so that validation and evaluation hold out whole days (rows of one day are highly
correlated; a random row split would flatter the model).

Which stops are served at a sample time
    The agent knows from its geofence which stops it has reached. Here the served stops
    are those whose real arrival is at or before the sample time: the truth stands in
    for the geofence, which is fine for training (the geofence confirms an arrival
    within seconds, see bench/arrivals.py) and keeps detection errors out of the labels.

The dwell
    While the van stands at a served stop (from its arrival to its departure), the
    features get ``dwell_s`` (seconds since that arrival) and ``parcels_here`` (that
    stop's parcels in the manifest: the van's tracker does not know the scans, so
    neither do the rows). The departure is the day's own where it has one
    (``departures.json``), else the first fix outside the stop's radius after the
    arrival, the van's geofence rule.

Sources
    - :func:`read_days`: day directories the simulator wrote (``fleet-sim eta-days``:
      generated days, with their noisy receiver output, jumps and outages, and real
      trips, with their stops where the vehicle really halted), in the contract's
      format (:mod:`firmware_agent.contract.eta_days`). The labels are the simulator's
      true arrivals, or the first sample of each real halt. Ingest reads what the
      simulator wrote; it never runs the simulator or the van's NMEA decoder.
    - :func:`store_days`: ingest's stored history (:mod:`cloud_ingest.store`). The store
      keeps no manifests, so each route's stop list is rebuilt from its arrival events
      (first visit of each ``stop_id``, in arrival order, at the ``lat``/``lon`` where
      the van stood), every stop typed ``other`` with no parcels (neither is stored),
      and the route is the stored track itself. The positions are the telemetry points
      the van sent (smart-sampled: every 5 s moving, 60 s parked), every field of
      them, fed as they are; the labels are the arrival events' ``time``. See
      :func:`store_days` for the limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from cloud_ingest.errors import ConfigError
from firmware_agent.contract.eta_days import EtaDay, EtaDayError, day_directories, read_day
from firmware_agent.contract.eta_features import (
    N_FEATURES,
    PlanPosition,
    RoutePlan,
    SpeedHistory,
    eta_features,
)
from firmware_agent.contract.eta_model import ANCHOR_COLUMN, log_ratio_target
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.records import Arrival

if TYPE_CHECKING:
    from cloud_ingest.store.base import Position, StopEvent, Store

SAMPLE_EVERY_S: Final = 30.0
"""How often a day is sampled: the agent's ETA update rate is higher, but rows 30 s
apart are already strongly correlated; more would only cost time."""

DEFAULT_SIM_STOPS: Final = 25

# Store history: how far before a route's first arrival its track may start, and the
# silence (agent off) that marks the start of the day within that window.
STORE_DAY_LEAD_S: Final = 4 * 3600.0
STORE_DAY_GAP_S: Final = 30 * 60.0
STORE_STOP_RADIUS_M: Final = 30.0
STORE_MAX_ARRIVALS: Final = 1_000_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)

FloatArray = npt.NDArray[np.float64]


def _us(t: datetime) -> int:
    """Microseconds since the epoch: integer labels are exact to the microsecond."""
    return (t - _EPOCH) // _ONE_US


Day = EtaDay
"""One day to learn from (:class:`~firmware_agent.contract.eta_days.EtaDay`)."""


@dataclass(frozen=True, slots=True)
class EtaDataset:
    """Rows of (sample time, unserved stop), every source in one format.

    ``x`` float32 ``(n, N_FEATURES)`` in :data:`~firmware_agent.contract.eta_features.FEATURE_NAMES`
    order; ``y_target``, ``actual_s``, ``naive_s`` float64 ``(n,)``; ``groups`` int64
    ``(n,)``, the index in ``day_names`` of each row's day. For checks and per-stop
    analysis, int64 ``(n,)``: ``issued_us``, the sample time (microseconds since the
    epoch, UTC), and ``stop_index``, the stop's index in its day's manifest.
    """

    x: npt.NDArray[np.float32]
    y_target: FloatArray
    actual_s: FloatArray
    naive_s: FloatArray
    groups: npt.NDArray[np.int64]
    day_names: tuple[str, ...]
    issued_us: npt.NDArray[np.int64]
    stop_index: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def empty(cls) -> EtaDataset:
        none = np.zeros(0, dtype=np.int64)
        return cls(
            np.zeros((0, N_FEATURES), dtype=np.float32),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
            none,
            (),
            none,
            none,
        )

    @classmethod
    def concat(cls, parts: Iterable[EtaDataset]) -> EtaDataset:
        """The rows of ``parts`` in order; their days renumbered one after another."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        offsets = np.cumsum([0] + [len(p.day_names) for p in parts[:-1]])
        return cls(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y_target for p in parts]),
            np.concatenate([p.actual_s for p in parts]),
            np.concatenate([p.naive_s for p in parts]),
            np.concatenate([p.groups + off for p, off in zip(parts, offsets, strict=True)]),
            tuple(name for p in parts for name in p.day_names),
            np.concatenate([p.issued_us for p in parts]),
            np.concatenate([p.stop_index for p in parts]),
        )

    def select(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> EtaDataset:
        """The rows picked by a mask or index array (``day_names`` unchanged)."""
        return EtaDataset(
            self.x[rows],
            self.y_target[rows],
            self.actual_s[rows],
            self.naive_s[rows],
            self.groups[rows],
            self.day_names,
            self.issued_us[rows],
            self.stop_index[rows],
        )

    def days(self, names: Iterable[str]) -> EtaDataset:
        """The rows of the named days."""
        keep = set(names)
        wanted = [i for i, name in enumerate(self.day_names) if name in keep]
        return self.select(np.isin(self.groups, wanted))


# =====================================================================================
# The core: one day's fixes to rows
# =====================================================================================


def day_rows(day: Day, *, sample_every_s: float = SAMPLE_EVERY_S) -> EtaDataset:
    """Play ``day`` as the agent would and sample it (module doc); pure.

    Samples fall on a grid every ``sample_every_s`` from the first timed fix, each at
    the first fix at or after its grid time (with 1 Hz fixes: on the grid). A sample
    needs the van placed on the plan at least once. At a sample, the served stops are
    those with a real arrival at or before it; every unserved stop with a known arrival
    gives a row, labelled with its arrival minus the sample time, so labels are > 0.
    """
    if sample_every_s <= 0:
        raise ConfigError(f"sample_every_s must be > 0, got {sample_every_s}")
    plan = RoutePlan.from_manifest(day.manifest)
    arrival_us = np.array(
        [_us(day.arrivals[s]) if s in day.arrivals else 0 for s in plan.stop_ids],
        dtype=np.int64,
    ).reshape(plan.n_stops)
    known = np.array([s in day.arrivals for s in plan.stop_ids], dtype=np.bool_).reshape(
        plan.n_stops
    )
    departure_us = _departures_us(day, plan, arrival_us, known)
    step_us = round(sample_every_s * 1e6)
    history = SpeedHistory()
    position: PlanPosition | None = None
    next_sample_us: int | None = None
    blocks: list[npt.NDArray[np.float32]] = []
    labels: list[FloatArray] = []
    issued: list[npt.NDArray[np.int64]] = []
    stops: list[npt.NDArray[np.intp]] = []
    for fix in day.fixes:
        if fix.time is None:
            continue
        history.update(fix)
        now = fix.time
        now_us = _us(now)
        served = known & (arrival_us <= now_us)
        if fix.lat is not None and fix.lon is not None:
            position = plan.project(fix.lat, fix.lon, now, served, since=position)
        if next_sample_us is None:
            next_sample_us = now_us
        if position is None or now_us < next_sample_us:
            continue
        next_sample_us += step_us * ((now_us - next_sample_us) // step_us + 1)
        dwell_s = parcels_here = 0.0
        if served.any():
            last = int(np.argmax(np.where(served, arrival_us, np.iinfo(np.int64).min)))
            if departure_us[last] > now_us:
                dwell_s = (now_us - arrival_us[last]) / 1e6
                parcels_here = float(plan.parcels[last])
        features = eta_features(
            now, plan, position, served, history, dwell_s=dwell_s, parcels_here=parcels_here
        )
        idx = np.array([plan.index[s] for s in features.stop_ids], dtype=np.intp)
        keep = known[idx]
        if not keep.any():
            continue
        blocks.append(features.values[keep])
        labels.append((arrival_us[idx[keep]] - now_us) / 1e6)
        issued.append(np.full(int(keep.sum()), now_us, dtype=np.int64))
        stops.append(idx[keep])
    if not blocks:
        return dataclasses.replace(EtaDataset.empty(), day_names=(day.name,))
    x = np.concatenate(blocks)
    actual_s = np.concatenate(labels)
    naive_s = x[:, ANCHOR_COLUMN].astype(np.float64)
    return EtaDataset(
        x,
        log_ratio_target(actual_s, naive_s),
        actual_s,
        naive_s,
        np.zeros(len(x), dtype=np.int64),
        (day.name,),
        np.concatenate(issued),
        np.concatenate(stops).astype(np.int64),
    )


def _departures_us(
    day: Day, plan: RoutePlan, arrival_us: npt.NDArray[np.int64], known: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Per stop, when the vehicle left it (microseconds; 0 without an arrival): the day's
    departure, else the first fix after the arrival outside the stop's radius (the last
    fix's time if it never left)."""
    out = np.zeros(plan.n_stops, dtype=np.int64)
    timed = [f for f in day.fixes if f.time is not None and f.lat is not None]
    times = np.array([_us(f.time) for f in timed if f.time is not None], dtype=np.int64)
    xy = np.array(
        [
            plan.frame.to_local(f.lat, f.lon)
            for f in timed
            if f.lat is not None and f.lon is not None
        ]
    ).reshape(-1, 2)
    radius_m = np.array([s.radius_m for s in day.manifest.stops], dtype=np.float64)
    for i in np.flatnonzero(known):
        stop_id = plan.stop_ids[i]
        if stop_id in day.departures:
            out[i] = max(_us(day.departures[stop_id]), int(arrival_us[i]))
            continue
        first = int(np.searchsorted(times, arrival_us[i], side="left"))
        dist = np.hypot(*(xy[first:] - plan.stop_xy[i]).T) if first < len(times) else np.zeros(0)
        away = np.flatnonzero(dist > radius_m[i])
        if away.size:
            out[i] = times[first + int(away[0])]
        else:
            out[i] = times[-1] if len(times) else arrival_us[i]
    return out


def build_dataset(days: Iterable[Day], *, sample_every_s: float = SAMPLE_EVERY_S) -> EtaDataset:
    """The rows of every day, in order (:func:`day_rows`)."""
    return EtaDataset.concat(day_rows(d, sample_every_s=sample_every_s) for d in days)


def read_days(paths: Iterable[Path]) -> list[Day]:
    """The days in ``paths`` (day directories, or directories of them; see
    :func:`~firmware_agent.contract.eta_days.day_directories`), in order.
    :class:`~cloud_ingest.errors.ConfigError` naming the first that cannot be read."""
    try:
        return [read_day(d) for d in day_directories(paths)]
    except (EtaDayError, OSError) as err:
        raise ConfigError(f"training days: {err}") from err


# =====================================================================================
# Ingest's stored history
# =====================================================================================


def store_route_day(
    device_id: str,
    route_id: str,
    arrivals: Sequence[StopEvent],
    positions: Sequence[Position],
) -> Day | None:
    """One stored route as a day; pure. ``None`` when it cannot make one (no arrival
    with a position, or fewer than two positions at or before its last arrival).

    Stops: the first visit of each ``stop_id`` in arrival order, at the arrival's
    ``lat``/``lon``, type ``other``, no parcels, radius :data:`STORE_STOP_RADIUS_M`.
    The track starts after the last silence of :data:`STORE_DAY_GAP_S` before the first
    arrival (the agent was off: the day had not begun); it is the route as well. The
    manifest's date is the first position's UTC date (a stored route has no service day).
    """
    first_visit: dict[str, Arrival] = {}
    for event in sorted(arrivals, key=lambda e: e.time):
        record = event.record
        if not isinstance(record, Arrival) or record.stop_id in first_visit:
            continue
        first_visit[record.stop_id] = record
    if not first_visit:
        return None
    events = list(first_visit.values())
    first_us, last_us = _us(events[0].time), _us(events[-1].time)
    track = sorted((p for p in positions if _us(p.time) <= last_us), key=lambda p: p.time)
    start = 0
    for i in range(1, len(track)):
        gap_us = _us(track[i].time) - _us(track[i - 1].time)
        if _us(track[i].time) <= first_us and gap_us > STORE_DAY_GAP_S * 1e6:
            start = i
    track = track[start:]
    if len(track) < 2:
        return None
    doc: dict[str, Any] = {
        "route_id": route_id,
        "device_id": device_id,
        "date": track[0].time.astimezone(UTC).date().isoformat(),
        "stops": [
            {
                "id": e.stop_id,
                "lat": e.lat,
                "lon": e.lon,
                "radius_m": STORE_STOP_RADIUS_M,
                "type": "other",
                "parcels": [],
            }
            for e in events
        ],
        "route": {
            "type": "LineString",
            "coordinates": [[p.point.lon, p.point.lat] for p in track],
        },
    }
    return Day(
        f"store-{device_id}-{route_id}",
        parse_manifest(doc),
        # A point carries every field the ETA features read.
        [p.point.to_fix() for p in track],
        {e.stop_id: e.time for e in events},
    )


async def store_days(store: Store, *, max_arrivals: int = STORE_MAX_ARRIVALS) -> list[Day]:
    """Every stored route of every device as a day (:func:`store_route_day`).

    A route is the arrival events of one device with one ``route_id`` (events without
    one are grouped by UTC date). Its track is read from :data:`STORE_DAY_LEAD_S` before
    its first arrival (not before the device's previous route ended) to its last.
    Limits, because the store keeps no manifests: stop types and parcels are unknown,
    the stop is where the van stood (not the door), the planned route is the driven
    track, and the labels are geofence arrivals (the first fix inside the fence), not
    a simulator's truth.
    """
    days: list[Day] = []
    for device in await store.list_devices():
        events = await store.arrivals(device_id=device.device_id, limit=max_arrivals)
        routes: dict[str, list[StopEvent]] = {}
        for event in sorted(events, key=lambda e: e.time):
            key = event.route_id or f"{event.time.astimezone(UTC).date().isoformat()}"
            routes.setdefault(key, []).append(event)
        previous_end: datetime | None = None
        for route_id, route_events in sorted(routes.items(), key=lambda kv: kv[1][0].time):
            first, last = route_events[0].time, route_events[-1].time
            start = first - timedelta(seconds=STORE_DAY_LEAD_S)
            if previous_end is not None and previous_end > start:
                start = previous_end
            positions = await store.track(device.device_id, start, last + _ONE_US)
            day = store_route_day(device.device_id, route_id, route_events, positions)
            if day is not None:
                days.append(day)
            previous_end = last + _ONE_US
    return days
