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
``eta/``.

The van's day (:mod:`firmware_agent.day_state`: delivered parcels, the duplicate-scan
memory, every stop's geofence phase and visits, so the ETA's served stops) is kept by
the outbox too, committed in the same transaction as the records that changed it
(``van_day`` in its meta table); at start the pipeline carries on that day if it is the
stored manifest's (same ``route_id`` and ``date``), else starts a new one. So after a
power cut or a watchdog restart a delivered parcel scanned again is ``already_delivered``,
a van still inside a stop's fence does not arrive there again, and no ETA goes out for
a stop already reached. Status health: ``day_restored`` (true when the day was carried
on at start).

The POD chain state is saved after the POD is in the outbox, and kept by the outbox in
the POD's own transaction; at start the newest of the saved state, the outbox's copy
and the pending PODs wins (a crash between the two, a save a full disk refused), so
the chain never forks and no signed POD is lost.

A full disk does not stop the van (:mod:`firmware_agent.uplink.holdback`): what the
outbox refuses waits in memory, bounded, and is stored at the first retry once space
returns; once the PODs memory may hold are held, scans are refused before anything is
signed. An outbox that cannot even be opened is retried until it opens. Status health
says so (``outbox_degraded``, ``outbox_held``, ``scans_refused``, ...) and reports a
numbering reset of a damaged or lost outbox (``outbox_resets``, ``outbox_last_reset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.contract.manifest import Manifest, ManifestError, parse_manifest
from firmware_agent.contract.records import PodRecord, Record, encode_record
from firmware_agent.day_state import DayState, DayStateError
from firmware_agent.downlinks import Downlinks
from firmware_agent.errors import ConfigError, OutboxStorageError, RemoteConfigError
from firmware_agent.eta.manager import SHIPPED_MODEL, EtaManager, EtaSettings, load_eta_predictor
from firmware_agent.eta.model_store import RunningModel
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.feedback import Feedback, FeedbackSettings, open_feedback
from firmware_agent.geofence import GeofenceIndex, build_index
from firmware_agent.gnss.reader import ReaderConfig
from firmware_agent.manifest_store import (
    ManifestStore,
    check_device,
)
from firmware_agent.pod.chain import ChainState, PodChain
from firmware_agent.pod.state import (
    ChainStateError,
    ChainStateStore,
    encode_state,
    parse_state,
    recover_state,
)
from firmware_agent.remote_config import (
    RemoteConfig,
    RemoteConfigStore,
    apply_config,
    running_revision,
)
from firmware_agent.scan.serial_reader import ScannerConfig
from firmware_agent.scan.types import Scan
from firmware_agent.sources import (
    Clock,
    FixSource,
    GnssClock,
    GnssSource,
    NmeaFile,
    ScanLog,
    ScannerSource,
    ScanSource,
    SerialGnss,
    SerialScan,
    SimClock,
    default_clock,
    inputs,
)
from firmware_agent.uplink.holdback import Committer, Held, HoldLimits
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.outbox import META_POD_CHAIN, META_VAN_DAY
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.van import VanConfig, VanPipeline

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


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    state_dir: Path
    uplink: UplinkConfig
    # The pipeline's own settings; a remote config overrides them while it runs.
    van: VanConfig = field(default_factory=VanConfig)
    # Where fixes come from (firmware_agent.sources): a serial receiver, a receiver on
    # TCP, an NMEA file. A bare ReaderConfig is a serial receiver (the older form).
    gnss: GnssSource | ReaderConfig | None = None
    # Scanners, several at once (a ring scanner and a handheld): serial, HID, scan logs.
    scanners: tuple[ScannerSource, ...] = ()
    # What the driver sees and hears after a scan: GPIO LEDs and buzzer, log, none.
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    # The older forms, mapped onto the sources above (sources()): one serial scanner,
    # an NMEA file played at `speed` (1.0 real time, 0 as fast as possible) with a
    # scan log merged in.
    scanner: ScannerConfig | None = None
    nmea_file: Path | None = None
    scans_file: Path | None = None
    speed: float = 0.0
    outbox_budget_bytes: int = 100 * 1024 * 1024
    # What is held in memory while the outbox cannot store records (a full disk).
    hold: HoldLimits = field(default_factory=HoldLimits)
    # With file input: stop once the file is done and ingest acknowledged everything.
    exit_when_drained: bool = False
    # On-device ETAs; the model file, None for the one shipped in the package.
    eta: bool = True
    eta_model: Path | None = None
    # The fleet's public keys (PEM or JWK files) that sign models sent on the `model`
    # topic; none: every model downlink is refused.
    model_keys: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if (self.gnss is None) == (self.nmea_file is None):
            raise ConfigError("give exactly one GNSS input: a receiver or an NMEA file")
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0, got {self.speed}")

    def sources(self) -> tuple[GnssSource, tuple[ScannerSource, ...]]:
        """The fix source and the scan sources to run, the older fields mapped."""
        gnss = self.gnss
        if isinstance(gnss, ReaderConfig):
            gnss = SerialGnss(gnss)
        elif gnss is None:
            assert self.nmea_file is not None
            gnss = NmeaFile(self.nmea_file, speed=self.speed)
        scanners = self.scanners
        if self.scanner is not None:
            scanners += (SerialScan(self.scanner),)
        if self.scans_file is not None:
            scanners += (ScanLog(self.scans_file),)
        return inputs(gnss, scanners)


@dataclass
class AgentCounts:
    fixes: int = 0
    scans: int = 0
    records: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "events": 0, "pod": 0})
    manifests: int = 0
    # Manifest downlinks refused (invalid, another van's, geometry that cannot be built).
    manifests_refused: int = 0
    # Remote configs applied (a clear included), and refused (invalid or stale; the
    # stored one at start included).
    configs: int = 0
    configs_refused: int = 0
    # Model downlinks installed (a clear included), and refused.
    models: int = 0
    models_refused: int = 0


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
        self.chain_store = ChainStateStore(config.state_dir / "pod-chain.json")
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
        self._outbox: AsyncOutbox | None = None
        # Commits to the outbox, holding records in memory while it refuses them.
        self.committer: Committer | None = None
        self._chain_save_failures = 0
        # The outbox's figures and its last numbering reset, read at start.
        self._outbox_stats: dict[str, int] = {}
        self._outbox_reset: dict[str, object] | None = None
        # The device key (PODs, the uplink's sequence report and signed batches).
        self._device_key: Ed25519PrivateKey | None = None
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
        # The van's day as last handed to the outbox (encoded), and whether the day
        # was carried on from the outbox at start.
        self._day_saved: bytes | None = None
        self._day_restored = False

    # -- set-up ------------------------------------------------------------------

    async def _chain(self, outbox: AsyncOutbox, device_id: str) -> PodChain:
        key = await asyncio.to_thread(
            load_or_create_device_key, self.config.state_dir / "device.key"
        )
        self._device_key = key
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
            await self._save_chain(state)
        return PodChain(device_id, key, state)

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

    async def _restore_day(self, outbox: AsyncOutbox) -> None:
        """Carry on the day the outbox kept (committed with the last records that
        changed it) if it is the running manifest's day; else the pipeline starts a
        new one. A state that cannot be read is logged and ignored."""
        assert self.pipeline is not None
        saved = await outbox.meta(META_VAN_DAY)
        if saved is None:
            return
        try:
            day = DayState.decode(saved)
        except DayStateError as err:
            log.warning("outbox's day state ignored, starting a new day: %s", err)
            return
        manifest = self.pipeline.manifest
        if not self.pipeline.restore_day(day):
            log.info(
                "day %s %s not carried on: the manifest is %s %s, a new day",
                day.route_id,
                day.date,
                manifest.route_id,
                manifest.date,
            )
            return
        self._day_saved = saved
        self._day_restored = True
        log.warning(
            "day %s %s carried on after a restart: %d parcels delivered, %d stops visited",
            day.route_id,
            day.date,
            len(day.delivered),
            sum(1 for s in day.stops.values() if s.visits),
        )

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
            outbox = await self._open_outbox(stack)
            self._outbox = outbox
            self.committer = Committer(
                outbox, limits=c.hold, stored=self.counts.records, on_change=self._announce
            )
            self._outbox_stats = await outbox.stats()
            self._outbox_reset = await outbox.last_reset()
            chain = await self._chain(outbox, c.uplink.device_id)
            van, uplink = await self._stored_config()
            self.pipeline = await self._start_pipeline(chain, van)
            await self._restore_day(outbox)
            self.uplink = Uplink(
                uplink,
                outbox,
                on_downlink=self._downlink,
                health=self.health,
                clock=self.clock.now,
                key=self._device_key,
            )
            async with asyncio.TaskGroup() as tg:
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                retry_task = tg.create_task(self.committer.run(), name="outbox-retry")
                tg.create_task(self._inputs(), name="inputs")
                if c.exit_when_drained:
                    await self.input_done.wait()
                    await self.committer.flushed()
                    await self.uplink.drained()
                    uplink_task.cancel()
                    retry_task.cancel()

    async def _open_outbox(self, stack: contextlib.AsyncExitStack) -> AsyncOutbox:
        """The outbox, opened; while it cannot be (a full disk can refuse even that),
        the agent waits and tries again rather than exit into a restart loop. Logged
        when it starts and when it ends."""
        c = self.config
        delay_s, failed_at = 1.0, None
        while True:
            error: OutboxStorageError | None = None
            try:
                outbox = await stack.enter_async_context(
                    AsyncOutbox(c.state_dir / "outbox.db", budget_bytes=c.outbox_budget_bytes)
                )
            except OutboxStorageError as err:
                error = err
            if error is None:
                if failed_at is not None:
                    log.warning("outbox opened after %.1f s", time.monotonic() - failed_at)
                return outbox
            if failed_at is None:
                failed_at = time.monotonic()
                log.error("cannot open the outbox (%s): trying again until it opens", error)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)

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
        records = self._seen(self.pipeline.on_scan(scan))
        if records:
            await self._commit_signed(records)
        else:
            # Nothing to publish, but the pairing may have changed (a parcel now waits
            # for its reason card, a card for its parcel): the day goes to the outbox
            # alone, so that a crash in the window neither loses the attempt nor signs
            # it twice (it is signed with the day that no longer holds it).
            await self._save_day()

    async def _save_day(self) -> None:
        """The van's day into the outbox on its own, if it changed."""
        assert self.committer is not None
        day = self._day_changed()
        if day is not None:
            await self.committer.commit([], day=day)

    async def _commit_signed(self, records: list[Record]) -> None:
        """Commit ``records``; if they hold a POD, save the chain state after them."""
        if not records:
            return
        assert self.pipeline is not None
        await self._commit(records)
        if any(isinstance(r, PodRecord) for r in records):
            await self._save_chain(self.pipeline.pods.state)

    def _seen(self, records: list[Record]) -> list[Record]:
        if self._on_records is not None:
            self._on_records(records)
        return records

    async def _save_chain(self, state: ChainState) -> None:
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

    async def _commit(self, records: Iterable[Record]) -> None:
        """Every record into the outbox, in order, durably, before anything else: its
        stream's next seq, and its final bytes (the uplink frames them as they are). A
        POD goes with the chain state after it (a call signs at most one, just now).
        While the outbox refuses records, they wait in memory (:class:`Committer`)."""
        assert self.committer is not None
        assert self.pipeline is not None
        now = self.clock.now()
        records = list(records)
        if not records:
            return
        pods = any(isinstance(r, PodRecord) for r in records)
        chain = encode_state(self.pipeline.pods.state) if pods else None
        await self.committer.commit(
            [
                Held(
                    r.stream,
                    encode_record(r),
                    now,
                    chain if isinstance(r, PodRecord) else None,
                )
                for r in records
            ],
            day=self._day_changed(),
        )

    def _day_changed(self) -> bytes | None:
        """The van's day, encoded, if it changed since it last went to the outbox."""
        assert self.pipeline is not None
        try:
            day = self.pipeline.day_state().encode()
        except DayStateError as err:  # a bug: the records still go; logged every time
            log.error("the van's day cannot be saved: %s", err)  # noqa: TRY400 (no traceback)
            return None
        if day == self._day_saved:
            return None
        self._day_saved = day
        return day

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
        counts.update(self._outbox_health())
        counts.update(self._eta_health())
        counts["day_restored"] = self._day_restored
        return counts

    def _outbox_health(self) -> dict[str, Any]:
        """Where the van's records stand: held in memory (a full disk), and whether
        the outbox's numbering was ever reset (a damaged or lost file)."""
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
        return out

    def _eta_health(self) -> dict[str, Any]:
        tracker = self.pipeline.eta_tracker if self.pipeline is not None else None
        return self.eta.health(tracker.predictor if tracker is not None else None)


def _pod_tokens(payloads: Iterable[bytes]) -> Iterator[str]:
    """The JWS of each stored ``pod`` record that reads as one (the others are skipped:
    :func:`~firmware_agent.pod.state.recover_state` wants the readable ones)."""
    for payload in payloads:
        try:
            yield PodRecord.from_json(wirejson.loads(payload, "stored POD")).jws
        except CodecError:
            continue
