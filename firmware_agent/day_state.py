"""The van's day: what the pipeline must remember across a crash, as bytes.

:class:`~firmware_agent.van.VanPipeline` keeps its day in memory: the parcels it
delivered (and the POD seq of each), the de-duplicator's recent acceptances, every
stop's geofence state (its phase, "inside the fence now", its visit count) and the
engine's halt and route-deviation runs. The ETA tracker's served stops are the stops
with a visit, so they follow from the stops' state. :class:`DayState` is that memory
as a small value with :meth:`~DayState.encode` / :meth:`~DayState.decode`; the agent
commits it in the same outbox transaction as the records that depend on it (issue 14)
and hands it back at start, so that after a power cut or a watchdog restart:

- a parcel delivered before is rejected ``already_delivered``, not signed again;
- a van still inside a stop's fence does not arrive there again, and the next real
  visit is visit 2;
- no ETA is published for a stop already reached;
- a stop passed stays passed and is not announced again (no second ``stop_passed``),
  a standing ``late_risk`` is not raised again, and the ETAs published before are not
  sent again as ``first`` (:class:`EtaDay`, optional: a state saved before it reads
  as nothing passed nor published).

A day is the manifest's ``route_id`` and ``date``: a state saved for another one is
not restored (a new day's manifest starts a new day). Times are POSIX seconds (UTC).
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from firmware_agent.errors import AgentError

FORMAT: Final = 1
_PHASES: Final = frozenset({"idle", "approach", "arrived"})


class DayStateError(AgentError, ValueError):
    """Stored day state that cannot be read (damaged, or from another format)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StopDay:
    """One stop's geofence state (:class:`~firmware_agent.geofence.fence.StopFence`)."""

    phase: str = "idle"
    visits: int = 0
    entered_s: float | None = None
    arrived_s: float | None = None
    departed_s: float | None = None
    outside_s: float | None = None
    beyond_s: float | None = None
    moved: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EtaDay:
    """What the ETA tracker must not forget (:class:`~firmware_agent.eta.tracker.
    EtaTracker`): the stops passed (announced by a ``stop_passed``; ``deferred``: driven
    past since the last arrival), the ETA last published per stop and when (POSIX s),
    and the stops with a standing ``late_risk``. Without it a restarted van announced
    every pass again, published a ``first`` ETA for every stop and alerted again."""

    passed: tuple[str, ...] = ()
    deferred: tuple[str, ...] = ()
    published: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    late: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.passed or self.published or self.late)


@dataclass(frozen=True, slots=True, kw_only=True)
class DayState:
    """The pipeline's day. ``delivered``: parcel code -> POD seq; ``accepted``: the
    de-duplicator's (code, accepted at) pairs, oldest first; ``stops``: stop id ->
    its state (only stops that left the initial state); ``has_moved``, ``halt_s``
    (an unscheduled halt under way since), ``off_s``, ``off_reported`` and
    ``off_max_m`` (a route deviation under way): the geofence engine's runs."""

    route_id: str
    date: str
    delivered: Mapping[str, int] = field(default_factory=dict)
    accepted: tuple[tuple[str, float], ...] = ()
    stops: Mapping[str, StopDay] = field(default_factory=dict)
    has_moved: bool = False
    halt_s: float | None = None
    off_s: float | None = None
    off_reported: bool = False
    off_max_m: float = 0.0
    # The reason-card pairing (firmware_agent.pod.pairing): the parcel attempt waiting
    # for a card (its POD claims without the chain's, as JSON, and when its window
    # ends) and the card waiting for a parcel (outcome, raw, source, scanned at, until).
    # Saved so that a crash in the window neither loses the attempt nor its card.
    pending: Mapping[str, Any] | None = None
    pending_until_s: float | None = None
    armed: tuple[str, str, str, float, float] | None = None
    # The ETA tracker's memory (optional in format 1: absent in states saved before it,
    # which restore with nothing passed nor published).
    eta: EtaDay = field(default_factory=EtaDay)

    def is_day(self, route_id: str, date: str) -> bool:
        """Whether this is the day of the manifest with ``route_id`` and ``date``."""
        return self.route_id == route_id and self.date == date

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "v": FORMAT,
            "route_id": self.route_id,
            "date": self.date,
            "delivered": dict(self.delivered),
            "accepted": [[code, t] for code, t in self.accepted],
            "stops": {
                stop_id: [
                    s.phase,
                    s.visits,
                    s.entered_s,
                    s.arrived_s,
                    s.departed_s,
                    s.outside_s,
                    s.beyond_s,
                    s.moved,
                ]
                for stop_id, s in self.stops.items()
            },
            "engine": [self.has_moved, self.halt_s, self.off_s, self.off_reported, self.off_max_m],
        }
        if self.pending is not None or self.armed is not None:
            obj["pairing"] = {
                "pending": dict(self.pending) if self.pending is not None else None,
                "pending_until_s": self.pending_until_s,
                "armed": list(self.armed) if self.armed is not None else None,
            }
        if self.eta:
            obj["eta"] = {
                "passed": list(self.eta.passed),
                "deferred": list(self.eta.deferred),
                "published": {k: list(v) for k, v in self.eta.published.items()},
                "late": list(self.eta.late),
            }
        try:
            text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError as err:  # a NaN or infinity: a bug upstream, said plainly
            raise DayStateError(f"day state cannot be encoded: {err}") from err
        return text.encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> DayState:
        """The state :meth:`encode` wrote; :class:`DayStateError` for anything else."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except ValueError as err:  # not UTF-8, not JSON
            raise DayStateError(f"day state unreadable: {err}") from err
        if not isinstance(obj, dict) or obj.get("v") != FORMAT:
            raise DayStateError(f"day state: not format {FORMAT}")
        try:
            has_moved, halt_s, off_s, off_reported, off_max_m = obj["engine"]
            pending, pending_until_s, armed = _pairing(obj.get("pairing"))
            return cls(
                route_id=_str(obj["route_id"]),
                date=_str(obj["date"]),
                delivered={_str(k): _int(v) for k, v in obj["delivered"].items()},
                accepted=tuple((_str(c), _float(t)) for c, t in obj["accepted"]),
                stops={_str(k): _stop(v) for k, v in obj["stops"].items()},
                has_moved=_bool(has_moved),
                halt_s=_opt_float(halt_s),
                off_s=_opt_float(off_s),
                off_reported=_bool(off_reported),
                off_max_m=_float(off_max_m),
                pending=pending,
                pending_until_s=pending_until_s,
                armed=armed,
                eta=_eta(obj.get("eta")),
            )
        except DayStateError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise DayStateError(f"day state unreadable: {err!r}") from err


def _pairing(
    value: object,
) -> tuple[dict[str, Any] | None, float | None, tuple[str, str, str, float, float] | None]:
    """The saved pairing state (absent: nothing waited). The attempt's claims are
    checked when the pipeline restores them."""
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        raise DayStateError(f"day state: pairing is not an object: {value!r:.80}")
    pending = value.get("pending")
    if pending is not None and not isinstance(pending, dict):
        raise DayStateError(f"day state: a pending attempt is not an object: {pending!r:.80}")
    until = _opt_float(value.get("pending_until_s"))
    if (pending is None) != (until is None):
        raise DayStateError("day state: a pending attempt without its window, or the reverse")
    armed = value.get("armed")
    if armed is None:
        return pending, until, None
    if not isinstance(armed, list) or len(armed) != 5:
        raise DayStateError(f"day state: an armed reason is not 5 fields: {armed!r:.80}")
    outcome, raw, source, time_s, until_s = armed
    return pending, until, (_str(outcome), _str(raw), _str(source), _float(time_s), _float(until_s))


def _eta(value: object) -> EtaDay:
    """The saved ETA tracker's memory (absent: a state saved before it, nothing)."""
    if value is None:
        return EtaDay()
    if not isinstance(value, dict):
        raise DayStateError(f"day state: eta is not an object: {value!r:.80}")
    published: dict[str, tuple[float, float]] = {}
    for stop_id, pair in value.get("published", {}).items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise DayStateError(f"day state: a published ETA is not 2 numbers: {pair!r:.80}")
        published[_str(stop_id)] = (_float(pair[0]), _float(pair[1]))
    return EtaDay(
        passed=tuple(_str(s) for s in value.get("passed", [])),
        deferred=tuple(_str(s) for s in value.get("deferred", [])),
        published=published,
        late=tuple(_str(s) for s in value.get("late", [])),
    )


def _stop(value: object) -> StopDay:
    if not isinstance(value, list) or len(value) != 8:
        raise DayStateError(f"day state: a stop is not 8 fields: {value!r:.80}")
    phase, visits, entered, arrived, departed, outside, beyond, moved = value
    if phase not in _PHASES:
        raise DayStateError(f"day state: unknown phase {phase!r:.40}")
    n = _int(visits)
    if n < 0 or (phase == "arrived" and (n < 1 or arrived is None)):
        raise DayStateError(f"day state: phase {phase} with {n} visits")
    return StopDay(
        phase=phase,
        visits=n,
        entered_s=_opt_float(entered),
        arrived_s=_opt_float(arrived),
        departed_s=_opt_float(departed),
        outside_s=_opt_float(outside),
        beyond_s=_opt_float(beyond),
        moved=_bool(moved),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise DayStateError(f"day state: {value!r:.40} is not a string")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DayStateError(f"day state: {value!r:.40} is not an integer")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise DayStateError(f"day state: {value!r:.40} is not a boolean")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DayStateError(f"day state: {value!r:.40} is not a finite number")
    return float(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else _float(value)
