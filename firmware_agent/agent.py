"""``fleet-agent run``: the van's service, everything wired together.

Inputs: a GNSS receiver (serial) or, for the simulator and tests, an NMEA file played
at a chosen speed; a serial scanner or a scan log. Every fix and scan goes through the
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

No downlink can brick the van: a manifest or config is validated (a manifest for
another device is refused), its geofence geometry built off the event loop (bounded:
:mod:`firmware_agent.geofence.index`), and only then stored and switched to. Anything
refused leaves the running manifest and config as they are, is logged with its reason
every time, and is reported in status health: ``manifest_route_id`` and
``manifest_stops`` (what runs), ``manifests_refused`` and ``configs_refused`` (counts
since start) and ``manifest_refused`` / ``config_refused`` (the last refusal: its
``route_id`` or ``revision`` when known, ``reason``, ``at``). A stored manifest or
config the agent refuses at start (stored by an older version, say) is reported the
same way and the agent starts without it; the broker delivers the retained ones again.

ETAs: at start, off the event loop, the agent loads the ETA model (``AgentConfig.
eta_model``, else the default shipped in the package, ``firmware_agent/eta/models/
default.tflite``) and hands it to the pipeline, which then publishes ``eta`` and
``late_risk`` events. Without a model, an interpreter, or with a file the agent refuses,
it publishes the baseline ETA and says why; it never fails to start over a model.
Status health says what runs: ``eta_model`` (the model's version, ``"baseline"``, or
``"off"`` with ``AgentConfig.eta`` false), ``eta_backend`` (the interpreter, or null),
on the baseline ``eta_unavailable`` (why), ``eta_model_source`` (``"shipped"``,
``"file"`` or ``"downlink"``) and ``models_refused`` (model downlinks refused since
start).

New models come down the retained ``model`` topic, signed with the fleet's model key
(:mod:`firmware_agent.contract.model`; the public keys are ``AgentConfig.
model_keys``). Off the event loop, the agent verifies one, loads it (contract, trial
invoke), stores it (:mod:`firmware_agent.eta.model_store`: ``eta/current.model``, the
model it replaces as ``eta/previous.model``) and only then hands it to the pipeline and
re-publishes its status. Anything refused is counted and the running model stays. At
start it runs ``eta/current.model`` if that verifies and loads, else the previous one
(a rollback), else the shipped or configured model; an empty ``model`` payload returns
it to that one and removes both files.

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
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_agent.contract import wirejson
from firmware_agent.contract.errors import CodecError, ModelError, ModelUpdateError
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.contract.manifest import Manifest, ManifestError, parse_manifest
from firmware_agent.contract.records import PodRecord, Record, encode_record
from firmware_agent.contract.times import format_utc
from firmware_agent.day_state import DayState, DayStateError
from firmware_agent.errors import (
    ConfigError,
    ModelUnavailableError,
    OutboxStorageError,
    RemoteConfigError,
)
from firmware_agent.eta.model_store import (
    ModelStore,
    RunningModel,
    install_model,
    load_model_keys,
    start_model,
)
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.geofence import GeofenceIndex, build_index
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.reader import GnssReader, ReaderConfig
from firmware_agent.manifest_store import (
    ManifestRefusedError,
    ManifestStore,
    check_device,
    prepare_manifest,
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
    admit,
    apply_config,
    offered_revision,
    parse_config,
    running_revision,
)
from firmware_agent.scan.log import read_scan_log
from firmware_agent.scan.serial_reader import ScannerConfig, SerialScanner
from firmware_agent.scan.types import Scan
from firmware_agent.uplink.holdback import Committer, Held, HoldLimits
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.outbox import META_POD_CHAIN, META_VAN_DAY
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.van import VanConfig, VanPipeline

log = logging.getLogger(__name__)

_FILE_CHUNK = 64 * 1024
# The default ETA model, package data of firmware_agent.eta (trained by fleet-ingest
# train-eta); a build without it runs on the baseline.
SHIPPED_MODEL: tuple[str, str, str] = ("firmware_agent.eta", "models", "default.tflite")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    state_dir: Path
    uplink: UplinkConfig
    # The pipeline's own settings; a remote config overrides them while it runs.
    van: VanConfig = field(default_factory=VanConfig)
    gnss: ReaderConfig | None = None
    scanner: ScannerConfig | None = None
    # Simulator / test inputs instead of hardware.
    nmea_file: Path | None = None
    scans_file: Path | None = None
    # Playback speed of nmea_file: 1.0 real time, 0 as fast as possible.
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
            raise ConfigError("give exactly one GNSS input: a serial port or an NMEA file")
        if self.speed < 0:
            raise ConfigError(f"speed must be >= 0, got {self.speed}")


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


class GnssClock:
    """UTC now: the system clock, unless GNSS time says it is off by more than
    ``max_skew_s`` (a Pi has no RTC: after a power cut it boots at its last shutdown
    time until NTP answers, and NTP needs the cellular link). Then the latest GNSS time,
    carried forward by the monotonic clock."""

    def __init__(self, max_skew_s: float = 2.0) -> None:
        self._max_skew_s = max_skew_s
        self._offset = timedelta(0)

    def observe(self, gnss_time: datetime) -> None:
        offset = gnss_time - datetime.now(UTC)
        skewed = abs(offset.total_seconds()) > self._max_skew_s
        self._offset = offset if skewed else timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


def load_eta_predictor(model: Path | None = None) -> EtaPredictor:
    """The ETA predictor to run: ``model``, else the shipped default.

    Blocking (reads the file, builds the interpreter, one trial invoke): call it with
    :func:`asyncio.to_thread`. Raises nothing for what can go wrong with a model on a
    van: no shipped model, a file that cannot be read or that breaks the model contract
    (:class:`ModelError`), no interpreter here; each gives the baseline predictor with
    the reason in ``unavailable`` (logged as a warning, but for no shipped model).
    """
    started = time.perf_counter()
    if model is None:
        package, *parts = SHIPPED_MODEL
        resource = files(package).joinpath(*parts)
        name = f"shipped model {'/'.join(parts)}"
        try:
            if not resource.is_file():
                # A build without the model is a choice, not a fault: INFO, not WARNING.
                log.info("ETA on the baseline: no model shipped")
                return EtaPredictor.baseline("no model shipped")
            data = resource.read_bytes()
        except OSError as err:
            return _baseline(f"cannot read the {name}: {err}")
    else:
        name = f"model {model}"
        try:
            data = model.read_bytes()
        except OSError as err:
            return _baseline(f"cannot read {name}: {err.strerror or err}")
    try:
        predictor = EtaPredictor.load(data)
    except (ModelError, ModelUnavailableError) as err:
        return _baseline(f"{name} refused: {err}")
    if predictor.model_version is None:
        log.warning("ETA on the baseline: %s", predictor.unavailable)
    else:
        log.info(
            "ETA model %s loaded on %s in %.1f ms (%d bytes)",
            predictor.model_version,
            predictor.backend,
            (time.perf_counter() - started) * 1e3,
            len(data),
        )
    return predictor


def _baseline(reason: str) -> EtaPredictor:
    log.warning("ETA on the baseline: %s", reason)
    return EtaPredictor.baseline(reason)


class Agent:
    """One van. ``await Agent(config).run()``; cancel it to stop."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.clock = GnssClock()
        self.counts = AgentCounts()
        self.manifests = ManifestStore(config.state_dir / "manifest.json")
        self.chain_store = ChainStateStore(config.state_dir / "pod-chain.json")
        self.config_store = RemoteConfigStore(config.state_dir / "config.json")
        # The remote config running, None on the agent's own settings.
        self.remote_config: RemoteConfig | None = None
        self.pipeline: VanPipeline | None = None
        self.uplink: Uplink | None = None
        # The ETA model handed to the pipeline (None before start, or with ETAs off):
        # its predictor, its source and, when downlinked, the signed update.
        self.eta_model: RunningModel | None = None
        self.model_store = ModelStore(config.state_dir / "eta")
        self._model_keys: tuple[Ed25519PublicKey, ...] = ()
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
        # The last refused manifest and config, for status health.
        self.refused: dict[str, dict[str, Any]] = {}
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
        """Load the fleet's model keys and the ETA predictor off the event loop (None
        with ETAs off): the stored downlinked model, else the previous one, else the
        configured or shipped model (:func:`~firmware_agent.eta.model_store.
        start_model`). A model problem gives the baseline, never an error; a model key
        file that cannot be used is a :class:`ConfigError`."""
        c = self.config
        if c.eta:
            self._model_keys = await asyncio.to_thread(load_model_keys, c.model_keys)
            running = await asyncio.to_thread(
                start_model,
                self.model_store,
                self._model_keys,
                device_id=c.uplink.device_id,
                fallback=self._own_model,
            )
            self.eta_model = running
        return self.eta_predictor

    @property
    def eta_predictor(self) -> EtaPredictor | None:
        """The predictor of :attr:`eta_model` (None before start, or with ETAs off)."""
        return self.eta_model.predictor if self.eta_model is not None else None

    def _own_model(self) -> RunningModel:
        """The agent's own model: ``eta_model``, else the shipped one. Blocking."""
        model = self.config.eta_model
        return RunningModel(
            predictor=load_eta_predictor(model), source="shipped" if model is None else "file"
        )

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
        c = self.config
        async with asyncio.TaskGroup() as tg:
            if c.scanner is not None:
                tg.create_task(self._serial_scans(c.scanner), name="scanner")
            if c.gnss is not None:
                tg.create_task(self._serial_gnss(c.gnss), name="gnss")
            else:
                assert c.nmea_file is not None
                scans = self._scan_log(c.scans_file) if c.scans_file is not None else []
                tg.create_task(self._file_gnss(c.nmea_file, scans), name="gnss-file")

    async def _serial_gnss(self, config: ReaderConfig) -> None:
        reader = GnssReader(config)
        async for fix in reader.fixes():
            if fix.time is not None and fix.mode != FixMode.NO_FIX:
                self.clock.observe(fix.time)
            await self.on_fix(fix)

    async def _serial_scans(self, config: ScannerConfig) -> None:
        scanner = SerialScanner(config, clock=self.clock.now)
        async for scan in scanner.scans():
            await self.on_scan(scan)

    def _scan_log(self, path: Path) -> list[Scan]:
        faults = FaultCounter()
        with path.open(encoding="utf-8", errors="replace") as lines:
            scans = sorted(read_scan_log(lines, faults), key=lambda s: s.time)
        log_first_seen(log, faults, f"scan log {path}")
        return scans

    async def _file_gnss(self, path: Path, scans: list[Scan]) -> None:
        """Play an NMEA file: scans merged by time, paced by ``speed`` (0: no pacing)."""
        decoder = GnssDecoder()
        next_scan = 0
        first: tuple[datetime, float] | None = None
        loop = asyncio.get_running_loop()
        async for chunk in _chunks(path):
            for fix in decoder.feed(chunk) if chunk else decoder.flush():
                if fix.time is not None:
                    if self.config.speed > 0:
                        if first is None:
                            first = (fix.time, loop.time())
                        due = first[1] + (fix.time - first[0]).total_seconds() / self.config.speed
                        await asyncio.sleep(max(0.0, due - loop.time()))
                    while next_scan < len(scans) and scans[next_scan].time <= fix.time:
                        await self.on_scan(scans[next_scan])
                        next_scan += 1
                await self.on_fix(fix)
        for scan in scans[next_scan:]:
            await self.on_scan(scan)
        log.info("input file %s done: %d fixes, %d scans", path, self.counts.fixes, len(scans))
        self.input_done.set()

    # -- the pipeline ------------------------------------------------------------

    async def on_fix(self, fix: Fix) -> None:
        assert self.pipeline is not None
        self.counts.fixes += 1
        await self._commit(self.pipeline.on_fix(fix))

    async def on_scan(self, scan: Scan) -> None:
        assert self.pipeline is not None
        self.counts.scans += 1
        if self.committer is not None and not self.committer.can_sign():
            # The outbox refuses records and memory holds all the PODs it may: a POD
            # signed now could not be kept. Nothing is signed; the scan is refused.
            self.committer.refuse_scan(repr(scan.raw[:40]))
            return
        records = self.pipeline.on_scan(scan)
        await self._commit(records)
        if any(isinstance(r, PodRecord) for r in records):
            await self._save_chain(self.pipeline.pods.state)

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
        POD goes with the chain state after it (a scan signs at most one, just now).
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
        """Adopt a manifest downlink: validate it, refuse another device's, build its
        geofence geometry off the event loop, store it, and only then switch the
        pipeline to it. Refused (:class:`CodecError`, which the uplink counts), keeping
        the running manifest, when any step fails; logged and in status health."""
        assert self.pipeline is not None
        device_id = self.config.uplink.device_id
        try:
            prepared = await asyncio.to_thread(
                prepare_manifest,
                payload,
                device_id=device_id,
                geofence=self.pipeline.config.geofence,
                eta=self.pipeline.eta_tracker is not None,
            )
        except ManifestRefusedError as err:
            self._refuse("manifest", err.route_id, err.reason)
            raise CodecError(f"manifest refused, keeping the current one: {err}") from err
        manifest = prepared.manifest
        try:
            await asyncio.to_thread(self.manifests.save, prepared.data)
        except OSError as err:
            reason = f"cannot store it: {err.strerror or err}"
            self._refuse("manifest", manifest.route_id, reason)
            raise CodecError(f"manifest refused, keeping the current one: {reason}") from err
        self.pipeline.load_manifest(manifest, prepared.index, prepared.plan)
        self.counts.manifests += 1
        log.info("manifest %s adopted: %d stops", manifest.route_id, len(manifest.stops))
        if self.uplink is not None:
            self.uplink.announce()  # manifest_route_id is in the status health

    async def _config(self, payload: bytes) -> None:
        """Apply a config downlink to the running pipeline and uplink, and store it.

        Refused (:class:`RemoteConfigError`, which the uplink counts and logs once per
        kind), keeping the running config: an invalid payload, a revision not above the
        running one, settings the agent cannot take. The running config offered again
        (the retained copy, at every reconnect) is no error and changes nothing. The
        new settings replace the running ones only once stored, so a restart runs what
        the van last reported.
        """
        assert self.pipeline is not None
        assert self.uplink is not None
        running = self.remote_config
        offered: RemoteConfig | None = None
        try:
            offered = parse_config(payload)
            if not admit(running, offered):
                log.debug("config revision %d again: already running", running_revision(running))
                return
            van, uplink = apply_config(offered, van=self.config.van, uplink=self.config.uplink)
            # The geofence geometry under the new settings, off the event loop: only a
            # config the van can run is stored.
            index = await self._config_index(van)
        except RemoteConfigError as err:
            revision = offered_revision(payload) if offered is None else offered.revision
            self._refuse("config", revision, str(err))
            raise
        if offered is None:
            await asyncio.to_thread(self.config_store.clear)
        else:
            await asyncio.to_thread(self.config_store.save, offered)
        self.pipeline.reconfigure(van, index)
        # The uplink reads its batching settings per batch; nothing else of it changes.
        self.uplink.config = uplink
        self.remote_config = offered
        self.counts.configs += 1
        self.uplink.announce()  # the dispatcher sees the revision now, not at reconnect
        if offered is None:
            log.info("config cleared: running on defaults")
        else:
            log.info(
                "config revision %d applied%s",
                offered.revision,
                f" (ignored: {', '.join(offered.ignored)})" if offered.ignored else "",
            )

    async def _config_index(self, van: VanConfig) -> GeofenceIndex:
        """The running manifest's geofence geometry under ``van``'s settings, built off
        the event loop; :class:`RemoteConfigError` (``geofence``) if it cannot be."""
        assert self.pipeline is not None
        try:
            return await asyncio.to_thread(build_index, self.pipeline.manifest, van.geofence)
        except Exception as err:  # MemoryError, a bug: the van keeps its settings
            raise RemoteConfigError(
                "geofence", f"cannot index the running manifest: {err!r}"
            ) from err

    def _refuse(self, kind: str, what: str | int | None, reason: str) -> None:
        """A refused ``manifest`` or ``config`` (``what``: its route_id or revision, if
        known): logged with its reason every time, kept for status health, announced."""
        if kind == "manifest":
            self.counts.manifests_refused += 1
            key, name = "route_id", f"manifest {what!r}"
        else:
            self.counts.configs_refused += 1
            key, name = "revision", f"config revision {what}"
        log.warning("%s refused: %s", kind if what is None else name, reason)
        self.refused[kind] = {key: what, "reason": reason[:500], "at": format_utc(self.clock.now())}
        if self.uplink is not None:
            self.uplink.announce()

    async def _model(self, payload: bytes) -> None:
        """Install a model downlink, or go back to the agent's own model on an empty one.

        Refused (:class:`ModelUpdateError`, which the uplink counts and logs once per
        kind), keeping the running model: a payload that does not verify against the
        fleet keys, a model issued no later than the running downlinked one, a model
        that does not load, a model that cannot be stored. The running model offered
        again (the retained copy, at every reconnect) changes nothing. The new model
        runs only once stored, so a restart runs what the van last reported. Every
        step that reads or writes files or builds an interpreter runs off the loop.
        """
        assert self.pipeline is not None
        assert self.uplink is not None
        if not self.config.eta:
            log.info("ETAs are off: model downlink (%d bytes) ignored", len(payload))
            return
        running = self.eta_model
        assert running is not None
        new: RunningModel | None
        try:
            if payload:
                new = await asyncio.to_thread(
                    install_model,
                    self.model_store,
                    payload,
                    self._model_keys,
                    device_id=self.config.uplink.device_id,
                    running=running,
                )
            else:
                new = await self._clear_model(running)
        except ModelUpdateError:
            self.counts.models_refused += 1
            self.uplink.announce()  # models_refused is in the status health
            raise
        if new is None:
            log.debug("ETA model offered again: already running")
            return
        self.eta_model = new
        if new.predictor is not running.predictor:  # not so for a model signed again
            self.pipeline.use_predictor(new.predictor)
        self.counts.models += 1
        self.uplink.announce()  # the dispatcher sees the model now, not at reconnect
        if new.signed is not None and new.predictor is running.predictor:
            log.info(
                "ETA model %s signed again (issued %s, key %s): signature stored",
                new.signed.model_version,
                format_utc(new.signed.issued),
                new.signed.kid,
            )
        elif new.signed is not None:
            log.info(
                "ETA model %s installed (issued %s, key %s), replacing %s",
                new.signed.model_version,
                format_utc(new.signed.issued),
                new.signed.kid,
                running.predictor.model_version or "the baseline",
            )
        else:
            log.info(
                "ETA model cleared: back to the %s model %s",
                new.source,
                new.predictor.model_version or "(baseline)",
            )

    async def _clear_model(self, running: RunningModel) -> RunningModel | None:
        """Remove the stored models; the agent's own model to run, None if it runs it."""
        try:
            await asyncio.to_thread(self.model_store.clear)
        except OSError as err:
            raise ModelUpdateError(
                "storage", f"model clear: cannot remove the stored models: {err}"
            ) from err
        if running.source != "downlink":
            return None
        return await asyncio.to_thread(self._own_model)

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
        if not self.config.eta:
            return {"eta_model": "off"}
        tracker = self.pipeline.eta_tracker if self.pipeline is not None else None
        # The tracker's predictor, once running: it falls back to the baseline if the
        # model fails at run time.
        predictor = tracker.predictor if tracker is not None else self.eta_predictor
        if predictor is None:
            return {}  # not loaded yet
        health: dict[str, Any] = {
            "eta_model": predictor.model_version or "baseline",
            "eta_backend": predictor.backend,
        }
        if predictor.model_version is None:
            health["eta_unavailable"] = predictor.unavailable
        if self.eta_model is not None:
            health["eta_model_source"] = self.eta_model.source
        health["models_refused"] = self.counts.models_refused
        return health


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while True:
            chunk = await asyncio.to_thread(source.read, _FILE_CHUNK)
            yield chunk
            if not chunk:
                return


def _pod_tokens(payloads: Iterable[bytes]) -> Iterator[str]:
    """The JWS of each stored ``pod`` record that reads as one (the others are skipped:
    :func:`~firmware_agent.pod.state.recover_state` wants the readable ones)."""
    for payload in payloads:
        try:
            yield PodRecord.from_json(wirejson.loads(payload, "stored POD")).jws
        except CodecError:
            continue
