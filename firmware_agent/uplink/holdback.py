"""Committing records to the outbox, and holding them in memory when it cannot take them.

A full disk (or a failing card) makes :meth:`~firmware_agent.uplink.outbox.Outbox.
add_many` raise :class:`~firmware_agent.errors.OutboxStorageError`, having stored
nothing. The agent must not die of it (issue 13, finding 4: it crash-looped, and every
fix and scan of the outage was lost). :class:`Committer` instead:

- holds the records the outbox refused in memory, in order, per stream, and every
  later record behind them (a stream's seqs follow the order its records were made);
- retries in the background (:meth:`Committer.run`), backing off from
  ``retry_initial_s`` to ``retry_max_s``, PODs first, then events, then telemetry,
  and is back to normal, by itself, at the first retry after space returns;
- keeps memory bounded (:class:`HoldLimits`): held telemetry is thinned (every second
  fix of the older half goes, as the outbox thins its own), events past their limit
  drop the oldest (counted and logged), and PODs are never dropped: once ``pods`` are
  held, :meth:`Committer.can_sign` is false and the agent refuses further scans
  *before* signing anything (a POD is signed only if it can be kept);
- logs each outage once when it starts and once when it ends (how long, how many
  records were held, thinned, dropped, how many scans refused), and reports all of it
  in :meth:`Committer.health` for the status.

The van's day (:mod:`firmware_agent.day_state`) comes with a commit's records and goes
into the outbox in the same transaction (:meth:`~firmware_agent.uplink.outbox.Outbox.
add_batch`, :data:`META_VAN_DAY`): a crash leaves the day and the records agreeing.
While records are held, the newest day waits with them and is stored with the last
chunk of the flush that empties memory.

What memory cannot do is survive a crash or a power cut: records held when the agent
dies are lost (and logged at shutdown when it stops cleanly). The outbox's reserve
file makes that rare for events and PODs, which it stores in the space the reserve
frees; telemetry waits in memory until space returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from firmware_agent.contract.topics import STREAMS
from firmware_agent.errors import OutboxStorageError
from firmware_agent.uplink.outbox import META_POD_CHAIN, META_VAN_DAY
from firmware_agent.uplink.queue import AsyncOutbox

log = logging.getLogger(__name__)

# The order held records go back to the outbox: what a dispute needs first.
_FLUSH_ORDER: Final = ("pod", "events", "telemetry")
_CHUNK: Final = 500  # records per outbox transaction when flushing


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldLimits:
    """How much the agent holds in memory while the outbox cannot take records."""

    # Signed PODs (about 1 KB each); at the limit scans are refused before signing.
    pods: int = 500
    # Events (a few hundred bytes each); past it the oldest held event is dropped.
    events: int = 20_000
    # Telemetry fixes (29 bytes each); past it the older half is decimated.
    telemetry: int = 3_600
    retry_initial_s: float = 0.5
    retry_max_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Held:
    """One record for the outbox: its stream, its bytes, when it was made, and for a
    POD the chain state after it (stored with it, :data:`META_POD_CHAIN`)."""

    stream: str
    payload: bytes
    created: datetime
    chain: bytes | None = None


@dataclass
class HoldCounts:
    outages: int = 0  # times the outbox started refusing records
    write_failures: int = 0  # failed attempts (the first of an outage and its retries)
    held: int = 0  # records that went through memory (stored later, or dropped)
    thinned: int = 0  # held fixes decimated away
    dropped: int = 0  # held events dropped past the limit
    scans_refused: int = 0  # scans refused because no more PODs could be held
    last_outage_s: float = 0.0  # how long the last finished outage lasted


class Committer:
    """Puts records into the outbox, holding them in memory while it refuses them.

    ``stored``: stream -> records stored, incremented as they are (the agent's
    counts); ``on_change`` is called when an outage starts or ends (to publish the
    status again).
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        *,
        limits: HoldLimits | None = None,
        stored: MutableMapping[str, int] | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.limits = limits or HoldLimits()
        self.stored: MutableMapping[str, int] = (
            stored if stored is not None else dict.fromkeys(STREAMS, 0)
        )
        self.counts = HoldCounts()
        self._on_change = on_change
        self._clock = clock
        self._held: dict[str, deque[Held]] = {s: deque() for s in STREAMS}
        self._in_flight = 0
        self._since: float | None = None
        self._last_error = ""
        self._refused_logged = False
        # The counts when the current outage began, for its summary.
        self._at_start = HoldCounts()
        # The newest day handed in with records that are held: stored with the last of them.
        self._held_day: bytes | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    # -- state ------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while records (or the van's day) wait in memory for the outbox."""
        return self._in_flight > 0 or any(self._held.values()) or self._held_day is not None

    def held(self) -> dict[str, int]:
        return {s: len(q) for s, q in self._held.items()}

    def can_sign(self) -> bool:
        """Whether one more POD could be kept (stored, or held within the limit)."""
        return len(self._held["pod"]) + self._in_flight < self.limits.pods

    def refuse_scan(self, what: str) -> None:
        """Count a scan refused because :meth:`can_sign` is false (logged once per outage)."""
        self.counts.scans_refused += 1
        if not self._refused_logged:
            self._refused_logged = True
            log.error(
                "outbox refusing records and %d PODs already held in memory: scan %s "
                "refused, nothing signed (further refusals are counted: scans_refused)",
                len(self._held["pod"]),
                what,
            )

    def health(self) -> dict[str, Any]:
        """Figures for the status health (prefixed ``outbox_``)."""
        out: dict[str, Any] = {
            "outbox_degraded": self.degraded,
            "outbox_held": sum(self.held().values()),
            "outbox_outages": self.counts.outages,
            "outbox_write_failures": self.counts.write_failures,
            "outbox_held_thinned": self.counts.thinned,
            "outbox_held_dropped": self.counts.dropped,
            "scans_refused": self.counts.scans_refused,
            "outbox_last_outage_s": round(self.counts.last_outage_s, 1),
        }
        if self._since is not None:
            out["outbox_degraded_s"] = round(self._clock() - self._since, 1)
            out["outbox_error"] = self._last_error[:200]
        return out

    async def flushed(self) -> None:
        """Return once nothing is held (at once if nothing is)."""
        await self._empty.wait()

    # -- committing -------------------------------------------------------------------

    async def commit(self, items: Sequence[Held], *, day: bytes | None = None) -> None:
        """Store ``items`` in order, durably, and ``day`` (the van's day after them,
        None: unchanged) in the same transaction; or hold them (and say so) if the
        outbox refuses. Never raises :class:`OutboxStorageError`."""
        if self.degraded:
            self._hold(items, day)
            return
        groups: list[Sequence[Held]] = []
        start = 0
        while start < len(items):
            stream = items[start].stream
            end = start
            while end < len(items) and items[end].stream == stream:
                end += 1
            groups.append(items[start:end])
            start = end
        if not groups:
            if day is not None:  # the day alone (a reason card or a parcel now waiting)
                try:
                    await self._store_batch([], day)
                except OutboxStorageError as err:
                    self._hold([], day)
                    self._outage(err)
            return
        try:
            await self._store_batch(groups, day)
        except OutboxStorageError:
            pass  # a full disk: stream by stream, events and PODs into the reserve
        else:
            return
        for i, group in enumerate(groups):
            last = i == len(groups) - 1
            try:
                await self._store(group, day if last else None)
            except OutboxStorageError as err:
                self._hold([h for g in groups[i:] for h in g], day)
                self._outage(err)
                return

    async def _store_batch(self, groups: Sequence[Sequence[Held]], day: bytes | None) -> None:
        """Every group, the last POD's chain state and ``day``, in one transaction."""
        chains = [h.chain for g in groups for h in g if h.chain is not None]
        await self.outbox.add_batch(
            [(g[0].stream, [(h.payload, h.created) for h in g]) for g in groups],
            meta=_meta(chains[-1] if chains else None, day),
        )
        for g in groups:
            self.stored[g[0].stream] += len(g)

    async def _store(self, group: Sequence[Held], day: bytes | None = None) -> None:
        """One stream's records in one transaction, a POD's chain state with it."""
        stream = group[0].stream
        chains = [h.chain for h in group if h.chain is not None]
        await self.outbox.add_many(
            stream,
            [(h.payload, h.created) for h in group],
            meta=_meta(chains[-1] if chains else None, day),
        )
        self.stored[stream] += len(group)

    def _outage(self, err: OutboxStorageError) -> None:
        self.counts.write_failures += 1
        self._last_error = str(err)
        if self._since is not None:
            return
        self._since = self._clock()
        self.counts.outages += 1
        self._at_start = replace(self.counts)
        self._refused_logged = False
        self._empty.clear()
        self._wake.set()
        lim = self.limits
        log.error(
            "outbox cannot store records (%s): holding them in memory and retrying "
            "every %.1f-%.1f s (at most %d PODs, then scans are refused; %d events; "
            "telemetry thinned past %d fixes)",
            err,
            lim.retry_initial_s,
            lim.retry_max_s,
            lim.pods,
            lim.events,
            lim.telemetry,
        )
        if self._on_change is not None:
            self._on_change()

    def _hold(self, items: Sequence[Held], day: bytes | None = None) -> None:
        if day is not None:
            self._held_day = day
        for item in items:
            self._held[item.stream].append(item)
        self.counts.held += len(items)
        self._bound()

    def _bound(self) -> None:
        fixes = self._held["telemetry"]
        if len(fixes) > self.limits.telemetry:
            older = len(fixes) // 2
            kept = [fixes[i] for i in range(0, older, 2)]
            self.counts.thinned += older - len(kept)
            rest = list(fixes)[older:]
            fixes.clear()
            fixes.extend(kept + rest)
        events = self._held["events"]
        while len(events) > self.limits.events:
            events.popleft()
            self.counts.dropped += 1
            if self.counts.dropped == 1:
                log.error(
                    "outbox still refusing records: more than %d events held in memory, "
                    "dropping the oldest (counted: outbox_held_dropped)",
                    self.limits.events,
                )

    # -- retrying ---------------------------------------------------------------------

    async def run(self) -> None:
        """Retry held records until they are stored; forever (cancel to stop)."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                delay_s = self.limits.retry_initial_s
                while self.degraded:
                    await asyncio.sleep(delay_s)
                    if await self._flush():
                        break
                    delay_s = min(delay_s * 2, self.limits.retry_max_s)
        finally:
            held = sum(self.held().values())
            if held:
                log.error("stopping with %d records held in memory: they are lost", held)

    async def _flush(self) -> bool:
        """Store what is held, PODs first; True once nothing is left."""
        for stream in _FLUSH_ORDER:
            queue = self._held[stream]
            while queue:
                chunk = [queue.popleft() for _ in range(min(_CHUNK, len(queue)))]
                self._in_flight = len(chunk)
                # The day goes with the last of the records held: memory is empty after.
                last = not any(self._held.values())
                day = self._held_day if last else None
                try:
                    await self._store(chunk, day)
                    if day is not None and self._held_day is day:
                        self._held_day = None  # not a newer one held meanwhile
                except OutboxStorageError as err:
                    queue.extendleft(reversed(chunk))
                    self._outage(err)
                    return False
                finally:
                    self._in_flight = 0
        day = self._held_day
        if day is not None:  # a day held with no record after it: stored alone
            try:
                await self._store_batch([], day)
            except OutboxStorageError as err:
                self._outage(err)
                return False
            if self._held_day is day:
                self._held_day = None
        self._recovered()
        return True

    def _recovered(self) -> None:
        assert self._since is not None
        self.counts.last_outage_s = self._clock() - self._since
        self._since = None
        self._empty.set()
        c, b = self.counts, self._at_start
        thinned, dropped = c.thinned - b.thinned, c.dropped - b.dropped
        log.warning(
            "outbox storing records again after %.1f s: %d records held in memory were "
            "stored (%d fixes thinned, %d events dropped, %d scans refused meanwhile)",
            c.last_outage_s,
            c.held - b.held - thinned - dropped,
            thinned,
            dropped,
            c.scans_refused - b.scans_refused,
        )
        if self._on_change is not None:
            self._on_change()


def _meta(chain: bytes | None, day: bytes | None) -> dict[str, bytes] | None:
    meta = {}
    if chain is not None:
        meta[META_POD_CHAIN] = chain
    if day is not None:
        meta[META_VAN_DAY] = day
    return meta or None
