"""``fleet-agent run``: the van's service, its parts wired together.

The parts (each behind a small interface, chosen by :class:`AgentConfig` or given by a
test): a fix source (:mod:`firmware_agent.sources.fix`: a serial receiver, a receiver
on TCP, an NMEA file played at a chosen speed with its scan logs merged in), scan
sources, several at once (:mod:`firmware_agent.sources.scans`: serial, HID/evdev, scan
logs), the driver's feedback (:mod:`firmware_agent.feedback`: GPIO LEDs and buzzer, a
log, none; each scan's outcome plays its pattern), a clock
(:mod:`firmware_agent.sources.clock`) and the ETA model
(:mod:`firmware_agent.eta.manager`). Every fix and scan goes through the
pure :class:`~firmware_agent.van.VanPipeline`; every record it returns is committed
to the durable outbox (its stream: ``telemetry``, ``events`` or ``pod``), encoded once
into the bytes the wire will carry, before anything else happens to it; the
:class:`~firmware_agent.uplink.mqtt.Uplink` drains the outbox to the broker and
deletes what ingest acknowledges. Downlink: a new manifest (retained)
replaces the stored one and the pipeline's, keeping visited stops' state; a config
(retained, :mod:`firmware_agent.remote_config`) of a higher revision overrides the
sampling, batching, geofence and scan settings of the running pipeline and uplink, and
an empty one returns them to the agent's own. Status health reports the running
config's revision (``config_revision``, 0 on defaults) at every connect and at once
when it changes.

No downlink can brick the van (:mod:`firmware_agent.downlinks`): what is refused is
logged and reported in status health: ``manifest_route_id`` and ``manifest_stops``
(what runs), ``manifests_refused`` and ``configs_refused`` (counts since start) and
``manifest_refused`` / ``config_refused`` (the last refusal). A stored manifest or
config the agent refuses at start (stored by an older version, say) is reported the
same way and the agent starts without it; the broker delivers the retained ones again.

ETAs: the model to run and the signed models the fleet sends are
:class:`~firmware_agent.eta.manager.EtaManager`'s (status health: ``eta_model``,
``eta_backend``, ``eta_unavailable``, ``eta_model_source``, ``models_refused``).

State directory (``/var/lib/fleet-agent`` on a van): ``device.key`` (Ed25519, 0600),
``pod-chain.json``, ``manifest.json``, ``config.json``, ``outbox.db`` with its
high-water mark ``outbox.db.seqmark`` and disk-full reserve ``outbox.db.reserve``,
``eta/``. What the van keeps there, and how each record gets there durably with what
it depends on (the POD chain state, the van's day), is
:class:`~firmware_agent.van_store.VanStore`'s; so is a full disk, which never stops
the van (status health: ``outbox_degraded``, ``outbox_held``, ``scans_refused``,
``outbox_resets``, ``day_restored``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from firmware_agent.agent_config import AgentConfig, AgentCounts
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest, ManifestError, parse_manifest
from firmware_agent.contract.records import Record
from firmware_agent.downlinks import Downlinks
from firmware_agent.errors import RemoteConfigError
from firmware_agent.eta.manager import SHIPPED_MODEL, EtaManager, EtaSettings, load_eta_predictor
from firmware_agent.eta.model_store import RunningModel
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.feedback import Feedback, open_feedback
from firmware_agent.geofence import GeofenceIndex, build_index
from firmware_agent.manifest_store import (
    ManifestStore,
    check_device,
)
from firmware_agent.pod.chain import PodChain
from firmware_agent.pod.state import ChainStateStore
from firmware_agent.remote_config import (
    RemoteConfig,
    RemoteConfigStore,
    apply_config,
    running_revision,
)
from firmware_agent.scan.types import Scan
from firmware_agent.sources import (
    Clock,
    FixSource,
    GnssClock,
    ScanSource,
    SimClock,
    default_clock,
)
from firmware_agent.uplink.holdback import Committer
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.van import VanConfig, VanPipeline
from firmware_agent.van_store import VanStore

log = logging.getLogger(__name__)

# Kept importable from here: they lived in this module before issue 14.
__all__ = [
    "SHIPPED_MODEL",
    "Agent",
    "AgentConfig",
    "AgentCounts",
    "GnssClock",
    "SimClock",
    "load_eta_predictor",
]


class Agent:
    """One van. ``await Agent(config).run()``; cancel it to stop.

    Its parts, built from ``config`` unless given (tests give them: a
    :class:`~firmware_agent.sources.clock.SimClock`, a source they control, a
    feedback whose signals they read): ``clock``, the fix source ``gnss``, the
    ``scanners``, the driver ``feedback`` (the agent opens and closes the one it builds,
    not one given). ``on_records`` sees every record the pipeline returns, in order,
    before it is committed.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        gnss: FixSource | None = None,
        scanners: Sequence[ScanSource] | None = None,
        feedback: Feedback | None = None,
        on_records: Callable[[list[Record]], None] | None = None,
    ) -> None:
        self.config = config
        configured_gnss, configured_scanners = config.sources()
        self.gnss: FixSource = gnss if gnss is not None else configured_gnss
        self.scanners: tuple[ScanSource, ...] = (
            tuple(scanners) if scanners is not None else configured_scanners
        )
        self.clock: Clock = clock if clock is not None else default_clock(configured_gnss)
        self.feedback: Feedback | None = feedback
        self._own_feedback = feedback is None
        self._on_records = on_records
        self.counts = AgentCounts()
        self.manifests = ManifestStore(config.state_dir / "manifest.json")
        self.config_store = RemoteConfigStore(config.state_dir / "config.json")
        self.pipeline: VanPipeline | None = None
        self.uplink: Uplink | None = None
        # The ETA model: loaded at start, replaced by model downlinks.
        self.eta = EtaManager(
            EtaSettings(
                eta=config.eta,
                eta_model=config.eta_model,
                model_keys=config.model_keys,
                device_id=config.uplink.device_id,
            ),
            state_dir=config.state_dir,
            counts=self.counts,
            announce=self._announce,
        )
        self.input_done = asyncio.Event()
        # Records still waiting for ingest's ack when the outbox closed (None: running).
        self.pending_at_stop: int | None = None
        # Set once the outbox is open and the uplink runs: the service is ready
        # (systemd's READY=1, :mod:`firmware_agent.service_state`).
        self.started = asyncio.Event()
        # The last fix read and when (the clock's time), for the service status.
        self.last_fix: Fix | None = None
        self.last_fix_at: datetime | None = None
        # The outbox, the POD chain state and the van's day (the state directory).
        self.store = VanStore(
            config.state_dir,
            budget_bytes=config.outbox_budget_bytes,
            hold=config.hold,
            stored=self.counts.records,
            on_change=self._announce,
            clock=self.clock.now,
        )
        # Manifest and config downlinks; the running remote config and the refusals.
        self.downlinks = Downlinks(
            van=config.van,
            uplink=config.uplink,
            manifests=self.manifests,
            config_store=self.config_store,
            counts=self.counts,
            clock=self.clock.now,
            announce=self._announce,
        )

    # -- set-up ------------------------------------------------------------------

    async def _manifest(self) -> Manifest:
        """The stored manifest, or an empty one when there is none or it is refused
        (reported as a refusal: the agent starts, and the broker delivers the retained
        manifest again)."""
        try:
            manifest = await asyncio.to_thread(self.manifests.load)
            if manifest is not None:
                check_device(manifest, self.config.uplink.device_id)
        except ManifestError as err:
            self._refuse(
                "manifest",
                None,
                f"stored manifest {self.manifests.path}: {err}; starting without it",
            )
            manifest = None
        if manifest is None:
            return self._no_manifest()
        return manifest

    def _no_manifest(self) -> Manifest:
        # No route yet: an empty one until the downlink brings the day's manifest.
        return parse_manifest(
            {
                "route_id": "none",
                "device_id": self.config.uplink.device_id,
                "date": self.clock.now().date().isoformat(),
                "stops": [],
            }
        )

    async def _start_pipeline(self, chain: PodChain, van: VanConfig) -> VanPipeline:
        """The pipeline to start on, its geofence geometry built off the event loop; a
        stored manifest whose geometry cannot be built is refused (the agent starts on
        an empty one)."""
        manifest = await self._manifest()
        try:
            index: GeofenceIndex | None = await asyncio.to_thread(
                build_index, manifest, van.geofence
            )
        except Exception as err:  # MemoryError, a bug: never a dead van
            self._refuse(
                "manifest",
                manifest.route_id,
                f"stored manifest: cannot index: {err!r}; starting without it",
            )
            manifest, index = self._no_manifest(), None
        return VanPipeline(manifest, pods=chain, config=van, eta=await self.load_eta(), index=index)

    async def _stored_config(self) -> tuple[VanConfig, UplinkConfig]:
        """The settings to start on: the stored remote config over the agent's own.

        A stored config that no longer validates (say, after a downgrade) is logged and
        left alone, and the agent starts on its own settings: they work, and the broker
        delivers the retained config again on connect.
        """
        c = self.config
        try:
            stored = await asyncio.to_thread(self.config_store.load)
            van, uplink = apply_config(stored, van=c.van, uplink=c.uplink)
        except RemoteConfigError as err:
            self._refuse(
                "config", None, f"stored config {self.config_store.path}: {err}; on defaults"
            )
            return c.van, c.uplink
        self.remote_config = stored
        if stored is not None:
            log.info("config revision %d loaded from %s", stored.revision, self.config_store.path)
        return van, uplink

    async def load_eta(self) -> EtaPredictor | None:
        """The ETA model to start on (:meth:`EtaManager.load_eta`)."""
        return await self.eta.load_eta()

    @property
    def eta_model(self) -> RunningModel | None:
        return self.eta.eta_model

    @property
    def eta_predictor(self) -> EtaPredictor | None:
        return self.eta.eta_predictor

    # -- running -----------------------------------------------------------------

    async def run(self) -> None:
        c = self.config
        await asyncio.to_thread(c.state_dir.mkdir, parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            outbox = await self.store.open(stack)
            stack.push_async_callback(self._count_left, outbox)
            chain = await self.store.chain(outbox, c.uplink.device_id)
            van, uplink = await self._stored_config()
            self.pipeline = await self._start_pipeline(chain, van)
            await self.store.restore_day(self.pipeline)
            self.uplink = Uplink(
                uplink,
                outbox,
                on_downlink=self._downlink,
                health=self.health,
                clock=self.clock.now,
                key=self.store.device_key,
            )
            async with asyncio.TaskGroup() as tg:
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                committer = self.committer
                assert committer is not None
                retry_task = tg.create_task(committer.run(), name="outbox-retry")
                inputs_task = tg.create_task(self._inputs(), name="inputs")
                self.started.set()
                if c.exit_when_drained:
                    await self.input_done.wait()
                    # The file is the input: live sources beside it (a wired scanner)
                    # never end on their own. Stopped, their last attempt committed.
                    inputs_task.cancel()
                    await asyncio.wait([inputs_task])
                    await committer.flushed()
                    await self.uplink.drained()
                    uplink_task.cancel()
                    retry_task.cancel()

    async def _count_left(self, outbox: AsyncOutbox) -> None:
        """What the agent leaves unacknowledged, counted as the outbox closes (the
        service's last state says it: doctor after a stop)."""
        with contextlib.suppress(Exception):  # a failing outbox: unknown, not a crash
            self.pending_at_stop = sum((await outbox.counts()).values())

    def _announce(self) -> None:
        if self.uplink is not None:
            self.uplink.announce()

    async def _inputs(self) -> None:
        """Every source read into the pipeline, the driver feedback playing each scan's
        outcome (VanPipeline's result -> Signal mapping) while they run. When they
        stop (the agent stopped: SIGTERM, Ctrl-C), the attempt still waiting for a reason
        card is signed as it is, before the outbox closes."""
        try:
            async with self._driver_feedback() as feedback, asyncio.TaskGroup() as tg:
                assert self.pipeline is not None
                self.pipeline.feedback = feedback
                for n, scanner in enumerate(self.scanners):
                    tg.create_task(self._scans(scanner), name=f"scanner-{n}")
                tg.create_task(self._fixes(self.gnss), name="gnss")
                if self.gnss.live:
                    # A live receiver's clock: a file's fixes carry their own time.
                    tg.create_task(self._pairing_ticks(), name="pairing-ticks")
        finally:
            if self.pipeline is not None and self.committer is not None:
                await self._commit_signed(self.pipeline.flush())

    @contextlib.asynccontextmanager
    async def _driver_feedback(self) -> AsyncIterator[Feedback]:
        """The feedback given, else the one the settings ask for, opened off the event
        loop and closed at the end (a pattern playing is cut, every output off)."""
        if self.feedback is not None and not self._own_feedback:
            yield self.feedback
            return
        feedback = await asyncio.to_thread(open_feedback, self.config.feedback)
        self.feedback = feedback
        log.info("driver feedback: %s", type(feedback).__name__)
        try:
            yield feedback
        finally:
            feedback.close()  # quick: wakes the pattern thread and joins it

    async def _fixes(self, source: FixSource) -> None:
        """The fix source's readings into the pipeline (a file's merged scans too);
        a file's end is the end of the input (:attr:`input_done`)."""
        log.info("GNSS input: %s", source.describe())
        async for reading in source.readings(self.clock):
            if isinstance(reading, Scan):
                await self.on_scan(reading)
            else:
                self.clock.on_fix(reading)
                await self.on_fix(reading)
        assert self.pipeline is not None
        await self._commit_signed(self.pipeline.flush())  # the attempt waiting for a reason
        log.info("GNSS input %s done", source.describe())
        self.input_done.set()

    async def _scans(self, source: ScanSource) -> None:
        log.info("scan input: %s", source.describe())
        async for scan in source.scans(self.clock):
            await self.on_scan(scan)
        log.info("scan input %s done", source.describe())

    # -- the pipeline ------------------------------------------------------------

    async def _pairing_ticks(self) -> None:
        """Give the pipeline the time every second, so that a POD waiting for a reason
        card is signed when its window ends even while the receiver is silent (a live
        receiver's clock only: a file's fixes carry their own time)."""
        assert self.pipeline is not None
        while True:
            await asyncio.sleep(1.0)
            await self._commit_signed(self.pipeline.on_tick(self.clock.now()))

    async def on_fix(self, fix: Fix) -> None:
        assert self.pipeline is not None
        self.counts.fixes += 1
        self.last_fix, self.last_fix_at = fix, self.clock.now()
        # A fix may end a POD's wait for a reason card: it is signed with the fix's records.
        await self._commit_signed(self._seen(self.pipeline.on_fix(fix)))

    async def on_scan(self, scan: Scan) -> None:
        assert self.pipeline is not None
        self.counts.scans += 1
        if self.committer is not None and not self.committer.can_sign():
            # The outbox refuses records and memory holds all the PODs it may: a POD
            # signed now could not be kept. Nothing is signed; the scan is refused.
            self.committer.refuse_scan(repr(scan.raw[:40]))
            return
        # A scan may change the day without a record (the reason-card pairing): the day
        # is saved alone then.
        await self._commit_signed(self._seen(self.pipeline.on_scan(scan)), day_alone=True)

    async def _commit_signed(self, records: list[Record], *, day_alone: bool = False) -> None:
        """A step's records into the outbox (:meth:`VanStore.commit_signed`)."""
        assert self.pipeline is not None
        await self.store.commit_signed(self.pipeline, records, day_alone=day_alone)

    @property
    def committer(self) -> Committer | None:
        """What commits records to the outbox (None before the outbox opened)."""
        return self.store.committer

    @property
    def chain_store(self) -> ChainStateStore:
        return self.store.chain_store

    def _seen(self, records: list[Record]) -> list[Record]:
        if self._on_records is not None:
            self._on_records(records)
        return records

    async def _downlink(self, kind: str, payload: bytes) -> None:
        if kind == "config":
            await self._config(payload)
            return
        if kind == "model":
            await self._model(payload)
            return
        if kind != "manifest":
            log.info("downlink %s (%d bytes): not handled yet", kind, len(payload))
            return
        await self._manifest_downlink(payload)

    async def _manifest_downlink(self, payload: bytes) -> None:
        """A manifest downlink (:meth:`Downlinks.manifest`)."""
        assert self.pipeline is not None
        await self.downlinks.manifest(payload, self.pipeline)

    async def _config(self, payload: bytes) -> None:
        """A config downlink (:meth:`Downlinks.config`)."""
        assert self.pipeline is not None
        assert self.uplink is not None
        await self.downlinks.config(payload, self.pipeline, self.uplink)

    def _refuse(self, kind: str, what: str | int | None, reason: str) -> None:
        """A refused manifest or config (:meth:`Downlinks.refuse`)."""
        self.downlinks.refuse(kind, what, reason)

    @property
    def remote_config(self) -> RemoteConfig | None:
        """The remote config running, None on the agent's own settings."""
        return self.downlinks.remote_config

    @remote_config.setter
    def remote_config(self, config: RemoteConfig | None) -> None:
        self.downlinks.remote_config = config

    @property
    def refused(self) -> dict[str, dict[str, Any]]:
        """The last refused manifest and config, for status health."""
        return self.downlinks.refused

    async def _model(self, payload: bytes) -> None:
        """A model downlink (:meth:`EtaManager.downlink`)."""
        assert self.pipeline is not None
        await self.eta.downlink(payload, self.pipeline)

    def health(self) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "fixes": self.counts.fixes,
            "scans": self.counts.scans,
            **{f"records_{k}": v for k, v in self.counts.records.items()},
            "config_revision": running_revision(self.remote_config),
            "configs_refused": self.counts.configs_refused,
            "manifests_refused": self.counts.manifests_refused,
        }
        for kind, refusal in self.refused.items():
            counts[f"{kind}_refused"] = dict(refusal)
        if self.pipeline is not None:
            counts["pods"] = self.pipeline.counts["pods"]
            counts["manifest_route_id"] = self.pipeline.manifest.route_id
            counts["manifest_stops"] = len(self.pipeline.manifest.stops)
        counts.update(self.store.health())
        counts.update(self._eta_health())
        return counts

    def _eta_health(self) -> dict[str, Any]:
        tracker = self.pipeline.eta_tracker if self.pipeline is not None else None
        return self.eta.health(tracker.predictor if tracker is not None else None)
