"""The van's decisions, with no I/O: fixes and scans in, records to publish out.

:class:`VanPipeline` wires the pure parts together: the geofence engine, telemetry
sampling, the scan parser and de-duplicator, the manifest's parcel index and the POD
chain. It is what ``fleet-agent replay`` runs over recorded input and what the live
agent runs between its readers and its outbox, so both produce the same records.

Every record is one of the contract's typed records (:mod:`firmware_agent.contract.
records`), tagged with its stream: a :class:`TelemetryPoint`, an event, or a
:class:`PodRecord`. They keep that shape to ingest's stored row (docs/replay-output.md
lists them all).

What a scan leads to (the feedback is :func:`~firmware_agent.feedback.signal_for` of
the result named in brackets):

- unreadable (garbage, bad check digit, a reason card naming no known outcome):
  ``scan_rejected`` (reason ``unreadable``) [unreadable];
- a reason card (:mod:`firmware_agent.contract.outcomes`): paired with a parcel
  attempt by :class:`~firmware_agent.pod.pairing.OutcomePairing` (the rule is there
  and in docs/outcomes.md) [failed attempt, or delivered for safe place and neighbour;
  reason noted when it waits for its parcel]; one no attempt takes is reported as
  ``scan_rejected`` (``reason_unpaired``);
- readable but not on the manifest: ``scan_rejected`` (``not_on_manifest``) [unknown
  parcel];
- the same parcel again within ``dedup_window_s``: nothing new [duplicate];
- a parcel of another stop while the van is confirmed at a stop and outside the
  parcel's own fence: ``scan_rejected`` (``wrong_stop``) [wrong stop], no POD;
- a parcel already delivered, later: ``scan_rejected`` (``already_delivered``)
  [already delivered];
- otherwise an attempt: a signed ``pod``, with verdict ``inside``, ``outside`` (and
  the distance) or ``no_fix`` (no good fix within ``max_fix_age_s``) [delivered, or
  delivered without a fix], and the outcome its reason card gave (``delivered``
  without one). An attempt with no reason armed is signed up to ``parcel_wait_s``
  later (a reason may still follow it), with the records of the fix, scan or tick
  that ends its window (:meth:`VanPipeline.on_tick`, :meth:`VanPipeline.flush`). A
  scan of a parcel of a stop whose fence the van has entered confirms that stop's
  arrival first.

Only a successful outcome delivers a parcel (:meth:`VanPipeline._signed`, the one
place that decides it): after a failed attempt the parcel stays deliverable, and its
next attempt is a new POD.

Given a predictor (``eta=``), the pipeline also keeps the day's ETAs
(:class:`~firmware_agent.eta.tracker.EtaTracker`, built from the manifest and rebuilt
with it): every fix feeds it, every arrival serves a stop, every POD tells it a parcel
of the stop the van stands at was dealt with (the hold of the next stops' ETAs during
a dwell, firmware_agent/eta/dwell.py), and its ``eta`` and
``late_risk`` records go out among the events, after the arrival that caused them.
Without one (the default) the pipeline publishes no ETAs.

The day (:class:`~firmware_agent.day_state.DayState`: delivered parcels, the
de-duplicator's memory, every stop's geofence state and visits, hence the ETA
tracker's served stops, and the tracker's passed stops, published ETAs and standing
late_risks) is :meth:`VanPipeline.day_state`, to save with the records,
and :meth:`VanPipeline.restore_day` takes it back at start; it is the day of the
manifest's ``route_id`` and ``date``: another day's state is not restored, and a
manifest of another day starts a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.eta_features import RoutePlan
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest, Stop
from firmware_agent.contract.outcomes import (
    OUTCOMES,
    Outcome,
    ReasonCardError,
    card_outcome,
    is_delivery,
)
from firmware_agent.contract.parcels import CodeKind, ScanParseError, parse_scan
from firmware_agent.contract.pod import PodFields
from firmware_agent.contract.records import (
    SCAN_SOURCES,
    Arrival,
    Departure,
    Record,
    ScanRejected,
    ScanRejectReason,
    TelemetryPoint,
    Verdict,
    decode_fields,
    encode_fields,
)
from firmware_agent.day_state import DayState, EtaDay, StopDay
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig, EtaTracker
from firmware_agent.faults import FaultCounter
from firmware_agent.feedback import ScanResult, Signal, signal_for
from firmware_agent.geofence import GeofenceConfig, GeofenceEngine, GeofenceIndex
from firmware_agent.pod.chain import PodChain
from firmware_agent.pod.pairing import ArmedReason, OutcomePairing, PendingAttempt, Step
from firmware_agent.scan.dedup import ScanDeduplicator
from firmware_agent.scan.types import Scan
from firmware_agent.telemetry import TelemetryConfig, TelemetrySampler

log = logging.getLogger(__name__)

_RAW_MAX_CHARS = 128
# The same reason card read again this soon is the scanner's double read, not the
# driver's second card (which would arm the next parcel as a failed attempt).
CARD_REPEAT_S = 2.0


class FeedbackSink(Protocol):
    def signal(self, s: Signal) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class VanConfig:
    geofence: GeofenceConfig = field(default_factory=GeofenceConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    dedup_window_s: float = 10.0
    # A POD takes the last good fix if it is at most this old; else its verdict is no_fix.
    max_fix_age_s: float = 10.0
    # When ETAs are predicted and published (used only with a predictor).
    eta: EtaConfig = field(default_factory=EtaConfig)
    # How long a reason card waits for its parcel (> 0), and a parcel for its reason
    # card before its POD is signed (0: a reason card must come first); the pairing
    # rule is in firmware_agent/pod/pairing.py.
    reason_wait_s: float = 10.0
    parcel_wait_s: float = 8.0


def printable(raw: str) -> str:
    """``raw`` cut to a bounded length with control characters escaped, for reports."""
    cut = raw[:_RAW_MAX_CHARS]
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in cut)


class VanPipeline:
    """One van's pure decision core. Feed it in time order; it returns messages.

    ``eta`` is the predictor for on-device ETAs (None: no ETA records); ``eta_tracker``
    is the tracker built from it, None without one.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        pods: PodChain,
        config: VanConfig | None = None,
        feedback: FeedbackSink | None = None,
        telemetry: bool = True,
        eta: EtaPredictor | None = None,
        index: GeofenceIndex | None = None,
    ) -> None:
        self.config = config or VanConfig()
        self.engine = GeofenceEngine(manifest, self.config.geofence, index=index)
        self.pods = pods
        self.feedback = feedback
        self._telemetry = TelemetrySampler(self.config.telemetry) if telemetry else None
        self._dedup = ScanDeduplicator(self.config.dedup_window_s)
        self._card_dedup = ScanDeduplicator(CARD_REPEAT_S)
        self._pairing = OutcomePairing(
            reason_wait_s=self.config.reason_wait_s, parcel_wait_s=self.config.parcel_wait_s
        )
        self._delivered: dict[str, int] = {}  # parcel code -> POD seq
        self._manifest = manifest
        self._parcels = manifest.parcel_index()
        self.eta_tracker = EtaTracker(manifest, eta, self.config.eta) if eta is not None else None
        self.faults = FaultCounter()
        self.counts: dict[str, int] = {
            "fixes": 0,
            "scans": 0,
            "pods": 0,
            "duplicates": 0,
            "rejected": 0,
            "failed_attempts": 0,
        }

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def load_manifest(
        self,
        manifest: Manifest,
        index: GeofenceIndex | None = None,
        plan: RoutePlan | None = None,
    ) -> None:
        """Adopt a new manifest; stops kept by id keep their geofence state.

        The ETA tracker is rebuilt on the new plan, carrying on the day (speed history,
        published ETAs of stops kept by id); a stop the van has visited stays served.
        What costs in proportion to the manifest's size may be built beforehand, off
        the event loop: ``index``, its geofence geometry (:func:`~firmware_agent.
        geofence.build_index` with this pipeline's geofence settings), and ``plan``, its
        ETA route plan (:meth:`RoutePlan.from_manifest`); what is not given is built
        here.
        """
        new_day = not self._is_day(manifest)
        self._manifest = manifest
        self._parcels = manifest.parcel_index()
        self.engine.load_manifest(manifest, index)
        if new_day:  # another route or date: nothing of the last day carries over
            self._delivered.clear()
            self._dedup.restore(())
            self.engine.restore({s.id: StopDay() for s in manifest.stops})
        if self.eta_tracker is not None:
            served = [s.id for s in manifest.stops if self.engine.visits(s.id) > 0]
            self.eta_tracker = self.eta_tracker.for_manifest(manifest, served, plan)

    # -- the day, saved and restored ---------------------------------------------

    def _is_day(self, manifest: Manifest) -> bool:
        return (manifest.route_id, manifest.date) == (self._manifest.route_id, self._manifest.date)

    def day_state(self) -> DayState:
        """The day so far, to save with the records it produced (pure, cheap: the
        size of the stops entered and the parcels delivered)."""
        has_moved, halt_s, off_s, off_reported, off_max_m = self.engine.runs()
        return DayState(
            route_id=self._manifest.route_id,
            date=self._manifest.date.isoformat(),
            delivered=dict(self._delivered),
            accepted=self._dedup.accepted(),
            stops=self.engine.stop_days(),
            has_moved=has_moved,
            halt_s=halt_s,
            off_s=off_s,
            off_reported=off_reported,
            off_max_m=off_max_m,
            **self._pairing_state(),
            eta=self.eta_tracker.saved() if self.eta_tracker is not None else EtaDay(),
        )

    def _pairing_state(self) -> dict[str, Any]:
        pending, armed = self._pairing.pending, self._pairing.armed
        return {
            "pending": (
                encode_fields(pending.fields, "pending attempt") if pending is not None else None
            ),
            "pending_until_s": pending.until.timestamp() if pending is not None else None,
            "armed": (
                (
                    armed.outcome,
                    armed.raw,
                    armed.source,
                    armed.time.timestamp(),
                    armed.until.timestamp(),
                )
                if armed is not None
                else None
            ),
        }

    def _restore_pairing(self, day: DayState) -> None:
        """The attempt and the reason card that waited when the day was saved; one that
        cannot be read is dropped with a log line (the parcel can be scanned again)."""
        pending = armed = None
        try:
            if day.pending is not None and day.pending_until_s is not None:
                fields = PodFields(**decode_fields(PodFields, day.pending, "pending attempt"))
                pending = PendingAttempt(fields, _utc(day.pending_until_s))
            if day.armed is not None:
                armed = _armed(*day.armed)
        except (CodecError, TypeError, ValueError, OverflowError) as err:
            log.warning("the saved reason-card pairing is dropped: %s", err)
            return
        self._pairing.restore(pending=pending, armed=armed)

    def restore_day(self, day: DayState) -> bool:
        """Carry on ``day`` (saved by :meth:`day_state` before a restart) if it is the
        running manifest's day; False (and nothing changed) if it is another one.

        Delivered parcels stay delivered, recent scans stay duplicates, every stop gets
        back its phase and visits (a van still in a fence does not arrive again), and
        the ETA tracker has the visited stops served, and its passed stops, published
        ETAs and standing late_risks back (no second ``stop_passed``)."""
        if not day.is_day(self._manifest.route_id, self._manifest.date.isoformat()):
            return False
        self._delivered = dict(day.delivered)
        self._dedup.restore(day.accepted)
        self._restore_pairing(day)
        self.engine.restore(
            day.stops,
            has_moved=day.has_moved,
            halt_s=day.halt_s,
            off_s=day.off_s,
            off_reported=day.off_reported,
            off_max_m=day.off_max_m,
        )
        if self.eta_tracker is not None:
            self.eta_tracker = EtaTracker(
                self._manifest,
                self.eta_tracker.predictor,
                self.config.eta,
                served=[s.id for s in self._manifest.stops if self.engine.visits(s.id) > 0],
                plan=self.eta_tracker.plan,
            )
            self.eta_tracker.restore(day.eta)
        return True

    def use_predictor(self, predictor: EtaPredictor | None) -> None:
        """Predict with ``predictor`` from now on (None: stop publishing ETAs).

        A tracker already running keeps its day (served stops, published ETAs) and
        only changes model; a new one starts from the current manifest.
        """
        if predictor is None:
            self.eta_tracker = None
        elif self.eta_tracker is not None:
            self.eta_tracker.predictor = predictor
        else:
            served = [s.id for s in self._manifest.stops if self.engine.visits(s.id) > 0]
            self.eta_tracker = EtaTracker(self._manifest, predictor, self.config.eta, served=served)

    def reconfigure(self, config: VanConfig, index: GeofenceIndex | None = None) -> None:
        """Run on ``config`` from the next fix or scan on, keeping every state.

        Stops keep their geofence phase and visits, the sampler its last sent fix, the
        de-duplicator the parcels it accepted (judged against the new window), the ETA
        tracker its day (published ETAs, runs, standing late_risks: its next prediction
        judges them on ``config.eta``). The geofence's indexes are rebuilt, as their
        cell size and reach are settings (``index``: built beforehand, off the event
        loop, for the current manifest and ``config.geofence``).
        """
        self.config = config
        self.engine.config = config.geofence
        self.engine.load_manifest(self._manifest, index)
        if self._telemetry is not None:
            self._telemetry.config = config.telemetry
        self._dedup.window_s = config.dedup_window_s
        self._pairing.configure(
            reason_wait_s=config.reason_wait_s, parcel_wait_s=config.parcel_wait_s
        )
        if self.eta_tracker is not None:
            self.eta_tracker.config = config.eta

    def on_fix(self, fix: Fix) -> list[Record]:
        self.counts["fixes"] += 1
        records: list[Record] = list(self.engine.update(fix))
        if fix.time is not None:
            records += self.on_tick(fix.time)
        if self.eta_tracker is not None:
            for event in records:
                if isinstance(event, Departure):
                    self.eta_tracker.on_departure(event.stop_id, event.time)
            arrived = [e.stop_id for e in records if isinstance(e, Arrival)]
            records += self.eta_tracker.on_fix(fix, arrived=arrived)
        if self._telemetry is not None and self._telemetry.select(fix):
            point = TelemetryPoint.from_fix(fix)
            if point is not None:
                records.append(point)
        return records

    def on_tick(self, now: datetime) -> list[Record]:
        """The time is ``now``: the records of what it settles (an attempt whose reason
        window has ended, signed; an armed reason card that expired, reported). The live
        agent calls it every second, so that no POD waits on a silent receiver."""
        return self._apply(self._pairing.due(now))

    def flush(self) -> list[Record]:
        """The input has ended: the attempt waiting for a reason is signed now."""
        return self._apply(self._pairing.flush())

    def on_scan(self, scan: Scan) -> list[Record]:
        self.counts["scans"] += 1
        records = self.on_tick(scan.time)
        now_s = scan.time.timestamp()
        try:
            parcel = parse_scan(scan.raw)
            outcome = card_outcome(parcel.code) if parcel.kind == CodeKind.PLAIN else None
        except ScanParseError as err:
            self.faults.add(f"scan_{err.reason}", printable(scan.raw))
            return records + self._reject(
                scan, "unreadable", ScanResult.UNREADABLE, error=err.reason
            )
        except ReasonCardError:
            self.faults.add("scan_unknown_reason_card", printable(scan.raw))
            return records + self._reject(
                scan, "unreadable", ScanResult.UNREADABLE, error="unknown_reason_card"
            )
        code = parcel.code
        if outcome is not None:
            return records + self._reason(scan, code, outcome)
        if self._dedup.seen(code, now_s) or self._pairing.waiting(code):
            self.counts["duplicates"] += 1
            self._result(ScanResult.DUPLICATE)
            return records
        stop = self._parcels.get(code)
        if stop is None:
            return records + self._reject(
                scan, "not_on_manifest", ScanResult.UNKNOWN_PARCEL, parcel=code
            )
        if code in self._delivered:
            return records + self._reject(
                scan,
                "already_delivered",
                ScanResult.ALREADY_DELIVERED,
                parcel=code,
                stop_id=stop.id,
                pod_seq=self._delivered[code],
            )
        return records + self._deliver(scan, code, stop)

    def _reason(self, scan: Scan, code: str, outcome: Outcome) -> list[Record]:
        """A reason card: it amends the attempt waiting, or waits for the next one."""
        if self._card_dedup.seen(code, scan.time.timestamp()):
            self.counts["duplicates"] += 1
            self._result(ScanResult.DUPLICATE)
            return []
        step = self._pairing.on_reason(outcome, raw=scan.raw, source=scan.source, time=scan.time)
        records = self._apply(step)
        if not step.paired:
            self._result(ScanResult.REASON_NOTED)
        elif is_delivery(outcome):
            self._result(ScanResult.DELIVERED)
        else:
            self._result(ScanResult.FAILED_ATTEMPT)
        return records

    def _deliver(self, scan: Scan, code: str, stop: Stop) -> list[Record]:
        engine = self.engine
        position = engine.last_position
        if position is not None and (
            abs((scan.time - position.time).total_seconds()) > self.config.max_fix_age_s
        ):
            position = None  # not fresh: the POD has no fix
        records = self._confirmed(stop.id, scan) if position is not None else []
        outside_m: float | None = None
        if position is not None:
            outside_m = engine.outside_m(stop.id, position.lat, position.lon)
            current = engine.current_stop
            if current is not None and current != stop.id and outside_m:
                records += self._reject(
                    scan,
                    "wrong_stop",
                    ScanResult.WRONG_STOP,
                    parcel=code,
                    stop_id=stop.id,
                    at_stop_id=current,
                )
                return records
        verdict: Verdict = (
            "no_fix" if outside_m is None else ("inside" if outside_m == 0 else "outside")
        )
        step = self._pairing.on_attempt(
            PodFields(
                parcel=code,
                raw=scan.raw,
                stop_id=stop.id,
                route_id=self._manifest.route_id,
                time=None if position is None else position.time,
                scan_time=scan.time,
                lat=None if position is None else position.lat,
                lon=None if position is None else position.lon,
                hacc_m=None if position is None else position.hacc_m,
                verdict=verdict,
                distance_m=outside_m,
                source=scan.source,
            )
        )
        records += self._apply(step)
        if step.paired and not is_delivery(step.sign[-1].outcome):
            self._result(ScanResult.FAILED_ATTEMPT)
        elif verdict == "no_fix":
            self._result(ScanResult.DELIVERED_NO_FIX)
        else:
            self._result(ScanResult.DELIVERED)
        return records

    def _apply(self, step: Step) -> list[Record]:
        """Sign the attempts ``step`` settled, in order; report its unpaired reasons."""
        records: list[Record] = []
        for fields in step.sign:
            records.append(self._signed(fields))
        for unpaired in step.unpaired:
            reason = unpaired.reason
            self.counts["rejected"] += 1
            records.append(
                ScanRejected(
                    time=reason.time,
                    reason="reason_unpaired",
                    raw=printable(reason.raw),
                    source=reason.source,
                    error=unpaired.why,
                    outcome=reason.outcome,
                )
            )
        return records

    def _signed(self, fields: PodFields) -> Record:
        """Sign one attempt as the next POD; a successful one delivers its parcel."""
        pod, claims = self.pods.deliver(fields)
        self.counts["pods"] += 1
        if self.eta_tracker is not None and fields.stop_id is not None:
            # A parcel dealt with: one less left to scan at its stop.
            self.eta_tracker.on_parcel(fields.stop_id, fields.parcel)
        if is_delivery(fields.outcome):
            self._delivered[fields.parcel] = pod.seq
        else:
            self.counts["failed_attempts"] += 1
        return claims.record(pod.token)

    def _confirmed(self, stop_id: str, scan: Scan) -> list[Record]:
        """The records of a scan's confirming ``stop_id``: its arrival, and the ETAs
        that follow it."""
        records: list[Record] = []
        for event in self.engine.confirm_by_scan(stop_id, scan.time):
            records.append(event)
            if isinstance(event, Arrival) and self.eta_tracker is not None:
                records += self.eta_tracker.on_arrival(event.stop_id, event.detected_at)
        return records

    def _reject(
        self,
        scan: Scan,
        reason: ScanRejectReason,
        result: ScanResult,
        *,
        parcel: str | None = None,
        stop_id: str | None = None,
        at_stop_id: str | None = None,
        error: str | None = None,
        pod_seq: int | None = None,
    ) -> list[Record]:
        self.counts["rejected"] += 1
        self._result(result)
        return [
            ScanRejected(
                time=scan.time,
                reason=reason,
                raw=printable(scan.raw),
                source=scan.source,
                parcel=parcel,
                stop_id=stop_id,
                at_stop_id=at_stop_id,
                error=error,
                pod_seq=pod_seq,
            )
        ]

    def _result(self, result: ScanResult) -> None:
        if self.feedback is not None:
            self.feedback.signal(signal_for(result))


def _utc(posix_s: float) -> datetime:
    return datetime.fromtimestamp(posix_s, UTC)


def _armed(outcome: str, raw: str, source: str, time_s: float, until_s: float) -> ArmedReason:
    if outcome not in OUTCOMES or source not in SCAN_SOURCES:
        raise CodecError(f"armed reason {outcome!r:.40} from {source!r:.20}")
    return ArmedReason(outcome, raw, source, _utc(time_s), _utc(until_s))
