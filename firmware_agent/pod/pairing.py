"""Pairing reason cards with parcel scans: which outcome each POD is signed with.

Pure logic, fed with scans' times; no clock of its own. The rule (docs/outcomes.md):

- **Reason, then parcel.** A reason card scanned with no attempt waiting is *armed* for
  ``reason_wait_s``. The next parcel attempt scanned before it expires takes its outcome
  and is signed at once. A scan that makes no attempt (wrong stop, unknown parcel,
  unreadable, already delivered, a duplicate) leaves the reason armed.
- **Parcel, then reason.** A parcel attempt with no reason armed *waits*
  ``parcel_wait_s`` before it is signed: a reason card scanned in that time amends its
  outcome and it is signed at once. Otherwise it is signed as ``delivered`` when the
  window ends (the next fix, scan or tick at or after its end), when the next parcel
  attempt is scanned, or when the input ends (:meth:`OutcomePairing.flush`).
- **Two reasons.** A reason with an attempt waiting amends that attempt; the next
  reason arms. A reason scanned while another is armed replaces it: the first is
  reported unpaired (``scan_rejected``, ``reason_unpaired``), as is an armed reason
  that expires.

So no POD is ever signed twice (an attempt is signed once, with the outcome it has
then), and none waits longer than ``parcel_wait_s`` after its scan, as long as the
pipeline is given the time (the agent ticks it every second). ``parcel_wait_s`` 0 turns
the waiting off: every parcel is signed at its scan, and only a reason scanned first
gives an outcome.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from firmware_agent.contract.outcomes import Outcome
from firmware_agent.contract.pod import PodFields
from firmware_agent.contract.records import ScanSource


@dataclass(frozen=True, slots=True)
class ArmedReason:
    """A reason card waiting for its parcel: scanned at ``time``, good until ``until``."""

    outcome: Outcome
    raw: str
    source: ScanSource
    time: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class PendingAttempt:
    """A parcel attempt waiting for a reason until ``until``; then signed as it is."""

    fields: PodFields
    until: datetime


@dataclass(frozen=True, slots=True)
class Unpaired:
    """A reason card no attempt took: it expired, or another reason replaced it."""

    reason: ArmedReason
    why: str


@dataclass(slots=True)
class Step:
    """What one input decided: the attempts to sign now, in order, and the reasons that
    went unpaired. ``paired`` is set when the input itself was paired (a reason that
    amended the waiting attempt, or a parcel that took an armed reason)."""

    sign: list[PodFields] = dataclasses.field(default_factory=list)
    unpaired: list[Unpaired] = dataclasses.field(default_factory=list)
    paired: bool = False

    def extend(self, other: Step) -> None:
        self.sign += other.sign
        self.unpaired += other.unpaired


class OutcomePairing:
    """The reason card armed and the attempt waiting, at most one of each."""

    __slots__ = ("armed", "parcel_wait_s", "pending", "reason_wait_s")

    def __init__(self, *, reason_wait_s: float = 8.0, parcel_wait_s: float = 8.0) -> None:
        self.reason_wait_s = reason_wait_s
        self.parcel_wait_s = parcel_wait_s
        self.configure(reason_wait_s=reason_wait_s, parcel_wait_s=parcel_wait_s)
        self.armed: ArmedReason | None = None
        self.pending: PendingAttempt | None = None

    def configure(self, *, reason_wait_s: float, parcel_wait_s: float) -> None:
        """New windows, from the next input on (what waits keeps its end)."""
        if not reason_wait_s > 0:
            raise ValueError(f"reason_wait_s must be > 0, not {reason_wait_s!r}")
        if not parcel_wait_s >= 0:
            raise ValueError(f"parcel_wait_s must be >= 0, not {parcel_wait_s!r}")
        self.reason_wait_s = reason_wait_s
        self.parcel_wait_s = parcel_wait_s

    def due(self, now: datetime) -> Step:
        """What the passing of time to ``now`` settles: a waiting attempt whose window
        has ended is signed as it is; an armed reason that has expired goes unpaired."""
        step = Step()
        if self.pending is not None and now >= self.pending.until:
            step.sign.append(self.pending.fields)
            self.pending = None
        if self.armed is not None and now >= self.armed.until:
            wait_s = (self.armed.until - self.armed.time).total_seconds()
            step.unpaired.append(Unpaired(self.armed, f"no parcel within {wait_s:g} s"))
            self.armed = None
        return step

    def on_reason(self, outcome: Outcome, *, raw: str, source: ScanSource, time: datetime) -> Step:
        """A reason card scanned at ``time``."""
        step = self.due(time)
        if self.pending is not None:
            step.sign.append(dataclasses.replace(self.pending.fields, outcome=outcome))
            self.pending = None
            step.paired = True
            return step
        if self.armed is not None:
            step.unpaired.append(Unpaired(self.armed, f"replaced by {outcome}"))
        until = time + timedelta(seconds=self.reason_wait_s)
        self.armed = ArmedReason(outcome, raw, source, time, until)
        return step

    def on_attempt(self, fields: PodFields) -> Step:
        """A parcel attempt (a scan the pipeline accepted as one), at ``scan_time``.

        The attempt waiting before it, if any, is signed first, as it is.
        """
        time = fields.scan_time
        step = self.due(time)
        if self.pending is not None:
            step.sign.append(self.pending.fields)
            self.pending = None
        if self.armed is not None:
            step.sign.append(dataclasses.replace(fields, outcome=self.armed.outcome))
            self.armed = None
            step.paired = True
        elif self.parcel_wait_s == 0:
            step.sign.append(fields)
        else:
            until = time + timedelta(seconds=self.parcel_wait_s)
            self.pending = PendingAttempt(fields, until)
        return step

    def restore(self, *, pending: PendingAttempt | None, armed: ArmedReason | None) -> None:
        """Carry on what waited before a restart (the van's day); what has expired
        since is settled by the next :meth:`due`."""
        self.pending = pending
        self.armed = armed

    def waiting(self, parcel: str) -> bool:
        """Whether an attempt at ``parcel`` is waiting to be signed."""
        return self.pending is not None and self.pending.fields.parcel == parcel

    def flush(self) -> Step:
        """The input has ended: the waiting attempt is signed as it is, an armed reason
        goes unpaired."""
        step = Step()
        if self.pending is not None:
            step.sign.append(self.pending.fields)
            self.pending = None
        if self.armed is not None:
            step.unpaired.append(Unpaired(self.armed, "the input ended"))
            self.armed = None
        return step
