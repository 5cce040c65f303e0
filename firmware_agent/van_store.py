"""What the van keeps on its own disk, and how a record gets there.

:class:`VanStore` owns the state directory's durable parts: the outbox (with its
high-water mark and disk-full reserve, :mod:`firmware_agent.uplink.outbox`), the POD
chain state (``pod-chain.json``, and its copy committed with each POD) and the van's
day (:mod:`firmware_agent.day_state`, committed with the records that changed it).
The agent hands it each step's records; it commits them, in order, durably, before
anything else sees them, with what they depend on in the same transaction, and holds
them in memory while the disk refuses them (:class:`~firmware_agent.uplink.holdback.
Committer`).

At start it opens the outbox (waiting while a full disk refuses even that), recovers
the POD chain (the newest of the saved state, the outbox's copy and the pending PODs:
a crash between the two, or a save a full disk refused, never forks the chain and
loses no signed POD) and carries on the day the outbox kept if it is the running
manifest's (same ``route_id`` and ``date``; ``van_day`` in the outbox's meta table).
So after a power cut or a watchdog restart a delivered parcel scanned again is
``already_delivered``, a van still inside a stop's fence does not arrive there again,
no ETA goes out for a stop already reached, and a parcel that waited for its reason
card is signed once.

A full disk does not stop the van (:mod:`firmware_agent.uplink.holdback`): what the
outbox refuses waits in memory, bounded, and is stored at the first retry once space
returns; once the PODs memory may hold are held, scans are refused before anything is
signed. Status health (:meth:`VanStore.health`): ``outbox_degraded``, ``outbox_held``,
``scans_refused``, ..., a numbering reset of a damaged or lost outbox
(``outbox_resets``, ``outbox_last_reset``) and ``day_restored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.contract.records import PodRecord, Record, encode_record
from firmware_agent.day_state import DayState, DayStateError
from firmware_agent.errors import OutboxStorageError
from firmware_agent.pod.chain import ChainState, PodChain
from firmware_agent.pod.state import (
    ChainStateError,
    ChainStateStore,
    encode_state,
    parse_state,
    recover_state,
)
from firmware_agent.uplink.holdback import Committer, Held, HoldLimits
from firmware_agent.uplink.outbox import META_POD_CHAIN, META_VAN_DAY
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.van import VanPipeline

log = logging.getLogger(__name__)


class VanStore:
    """The outbox, the POD chain state and the van's day of ``state_dir``.

    ``stored``: stream -> records stored (the agent's counts, incremented as they are);
    ``on_change``: called when the outbox starts or stops refusing records (to publish
    the status again); ``clock``: when a record was made.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        budget_bytes: int,
        hold: HoldLimits,
        stored: MutableMapping[str, int],
        on_change: Callable[[], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.state_dir = state_dir
        self.budget_bytes = budget_bytes
        self.hold = hold
        self.stored = stored
        self.on_change = on_change
        self.clock = clock
        self.chain_store = ChainStateStore(state_dir / "pod-chain.json")
        self.outbox: AsyncOutbox | None = None
        # Commits to the outbox, holding records in memory while it refuses them.
        self.committer: Committer | None = None
        # The device key (PODs, the uplink's sequence report and signed batches).
        self.device_key: Ed25519PrivateKey | None = None
        self._chain_save_failures = 0
        # The outbox's figures and its last numbering reset, read at start.
        self._outbox_stats: dict[str, int] = {}
        self._outbox_reset: dict[str, object] | None = None
        # The van's day as last handed to the outbox (encoded), and whether the day
        # was carried on from the outbox at start.
        self._day_saved: bytes | None = None
        self.day_restored = False

    # -- start ---------------------------------------------------------------------

    async def open(self, stack: contextlib.AsyncExitStack) -> AsyncOutbox:
        """The outbox, opened (closed with ``stack``); while it cannot be (a full disk
        can refuse even that), wait and try again rather than exit into a restart loop.
        Logged when it starts and when it ends."""
        delay_s, failed_at = 1.0, None
        while True:
            error: OutboxStorageError | None = None
            try:
                outbox = await stack.enter_async_context(
                    AsyncOutbox(self.state_dir / "outbox.db", budget_bytes=self.budget_bytes)
                )
            except OutboxStorageError as err:
                error = err
            if error is None:
                if failed_at is not None:
                    log.warning("outbox opened after %.1f s", time.monotonic() - failed_at)
                break
            if failed_at is None:
                failed_at = time.monotonic()
                log.error("cannot open the outbox (%s): trying again until it opens", error)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)
        self.outbox = outbox
        self.committer = Committer(
            outbox, limits=self.hold, stored=self.stored, on_change=self.on_change
        )
        self._outbox_stats = await outbox.stats()
        self._outbox_reset = await outbox.last_reset()
        return outbox

    async def chain(self, outbox: AsyncOutbox, device_id: str) -> PodChain:
        """The POD chain to sign with: the device key (made on first start) and the
        newest of the saved state, the outbox's copy and the pending PODs."""
        key = await asyncio.to_thread(load_or_create_device_key, self.state_dir / "device.key")
        self.device_key = key
        state = await asyncio.to_thread(self.chain_store.load)
        pending = await outbox.pending("pod", limit=1_000_000)
        recovered = recover_state(_pod_tokens(r.payload for r in pending), key=key.public_key())
        # The state committed with the last POD stored: ahead of the file when the
        # file could not be saved (a full disk) and that POD is acknowledged since.
        kept = await outbox.meta(META_POD_CHAIN)
        if kept is not None:
            try:
                committed = parse_state(kept)
            except ChainStateError as err:
                log.warning("outbox's POD chain state ignored: %s", err)
            else:
                recovered = max(recovered, committed, key=lambda s: s.seq)
        if recovered.seq > state.seq:
            log.warning(
                "POD chain state %d behind the outbox's POD %d: recovered",
                state.seq,
                recovered.seq,
            )
            state = recovered
            await self.save_chain(state)
        return PodChain(device_id, key, state)

    async def restore_day(self, pipeline: VanPipeline) -> None:
        """Carry on the day the outbox kept (committed with the last records that
        changed it) if it is the running manifest's day; else the pipeline starts a
        new one. A state that cannot be read is logged and ignored."""
        assert self.outbox is not None
        saved = await self.outbox.meta(META_VAN_DAY)
        if saved is None:
            return
        try:
            day = DayState.decode(saved)
        except DayStateError as err:
            log.warning("outbox's day state ignored, starting a new day: %s", err)
            return
        manifest = pipeline.manifest
        if not pipeline.restore_day(day):
            log.info(
                "day %s %s not carried on: the manifest is %s %s, a new day",
                day.route_id,
                day.date,
                manifest.route_id,
                manifest.date,
            )
            return
        self._day_saved = saved
        self.day_restored = True
        log.warning(
            "day %s %s carried on after a restart: %d parcels delivered, %d stops visited",
            day.route_id,
            day.date,
            len(day.delivered),
            sum(1 for s in day.stops.values() if s.visits),
        )

    # -- records -------------------------------------------------------------------

    async def commit_signed(
        self, pipeline: VanPipeline, records: list[Record], *, day_alone: bool = False
    ) -> None:
        """Commit a step's ``records``; if they hold a POD, save the chain state after
        them. ``day_alone`` (a scan): a step with no record may still have changed the
        day (a parcel now waits for its reason card, a card for its parcel), so the day
        goes alone, and a crash in the window neither loses the attempt nor signs it
        twice (it is signed with the day that no longer holds it). A fix's changes to
        the day go with the next records instead: no write per fix."""
        if not records:
            if day_alone:
                await self.save_day(pipeline)
            return
        await self.commit(pipeline, records)
        if any(isinstance(r, PodRecord) for r in records):
            await self.save_chain(pipeline.pods.state)

    async def commit(self, pipeline: VanPipeline, records: Iterable[Record]) -> None:
        """Every record into the outbox, in order, durably, before anything else: its
        stream's next seq, and its final bytes (the uplink frames them as they are). A
        POD goes with the chain state after it (a call signs at most one, just now), and
        the day with them when it changed. While the outbox refuses records, they wait
        in memory (:class:`Committer`)."""
        assert self.committer is not None
        now = self.clock()
        records = list(records)
        if not records:
            return
        pods = any(isinstance(r, PodRecord) for r in records)
        chain = encode_state(pipeline.pods.state) if pods else None
        await self.committer.commit(
            [
                Held(r.stream, encode_record(r), now, chain if isinstance(r, PodRecord) else None)
                for r in records
            ],
            day=self._day_changed(pipeline),
        )

    async def save_day(self, pipeline: VanPipeline) -> None:
        """The van's day into the outbox on its own, if it changed."""
        assert self.committer is not None
        day = self._day_changed(pipeline)
        if day is not None:
            await self.committer.commit([], day=day)

    def _day_changed(self, pipeline: VanPipeline) -> bytes | None:
        """The van's day, encoded, if it changed since it last went to the outbox."""
        try:
            day = pipeline.day_state().encode()
        except DayStateError as err:  # a bug: the records still go; logged every time
            log.error("the van's day cannot be saved: %s", err)  # noqa: TRY400 (no traceback)
            return None
        if day == self._day_saved:
            return None
        self._day_saved = day
        return day

    async def save_chain(self, state: ChainState) -> None:
        """Save the POD chain state; a failure (a full disk) is logged once and
        harmless: the outbox keeps the state with the POD, and the next save catches up."""
        try:
            await asyncio.to_thread(self.chain_store.save, state)
        except OSError as err:
            failure = err
        else:
            return
        self._chain_save_failures += 1
        if self._chain_save_failures == 1:
            log.error(
                "cannot save the POD chain state to %s (%s): the outbox keeps it with the "
                "POD; counted from now on (chain_save_failures)",
                self.chain_store.path,
                failure,
            )

    def health(self) -> dict[str, Any]:
        """Where the van's records stand: held in memory (a full disk), whether the
        outbox's numbering was ever reset (a damaged or lost file), whether the day was
        carried on at start."""
        out: dict[str, Any] = {}
        if self.committer is not None:
            out.update(self.committer.health())
        out["chain_save_failures"] = self._chain_save_failures
        stats = self._outbox_stats
        out["outbox_resets"] = stats.get("seq_resets", 0)
        out["outbox_corrupt_recovered"] = stats.get("corrupt_recovered", 0)
        out["outbox_wal_discarded"] = stats.get("wal_discarded", 0)
        if self._outbox_reset is not None:
            out["outbox_last_reset"] = self._outbox_reset
        out["day_restored"] = self.day_restored
        return out


def _pod_tokens(payloads: Iterable[bytes]) -> Iterator[str]:
    """The JWS of each stored ``pod`` record that reads as one (the others are skipped:
    :func:`~firmware_agent.pod.state.recover_state` wants the readable ones)."""
    for payload in payloads:
        try:
            yield PodRecord.from_json(wirejson.loads(payload, "stored POD")).jws
        except CodecError:
            continue
