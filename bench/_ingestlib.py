"""Shared helpers of the ingest benchmarks (``ingest_throughput.py``, ``ingest_latency.py``).

- :class:`Broker`: a private Mosquitto on a free port, no persistence, queues without a
  limit (``max_queued_messages 0``: a slow worker must see every message, not lose the
  ones over Mosquitto's default queue of 1000), otherwise Mosquitto's defaults
  (``nodelay=True``: ``set_tcp_nodelay true``).
- :func:`fresh_store`: an empty SQLite file, or a new PostgreSQL database
  (:func:`fresh_pg_database`: 127.0.0.1:5432, user postgres; ``FLEET_BENCH_PG_DSN``
  overrides the maintenance DSN) dropped afterwards; :func:`prepare_store` migrates it
  and registers the vans' keys; :func:`check_stored` says what differs from the stream
  stored exactly once.
- :func:`make_fleet`: the traffic of a fleet, built by the agent's own code. A few
  simulator days (``simulator.scenario``: 1 Hz NMEA, stops, dwells, scans) are replayed
  through :class:`~firmware_agent.van.VanPipeline` once; every van then drives some of
  those days back to back with its own Ed25519 key, its PODs re-signed by its own
  :class:`~firmware_agent.pod.chain.PodChain`, its telemetry (the fixes the sampler
  selected) cut into batches of a seeded random 20..60 fixes (``encode_batch``), and
  each event and POD in its own envelope (``frame_record``). The vans' messages are
  merged in the order their days would produce them.
- :class:`WorkerPool`: N ingest workers, each a process (``spawn``) running the real
  :class:`~cloud_ingest.worker.IngestWorker` with its own store connection, with timing
  counters (check, store write, ack/stream publish) and optionally cProfile.
- :func:`blast` (:class:`PublisherProcess`): the stream as pre-encoded QoS 1 packets on
  a raw socket, as fast as the broker takes them; :func:`publish`: an agent-like
  paho-mqtt QoS 1 publisher, paced at a rate, that can also subscribe (to acks).
- :class:`MosquittoSub`: ``mosquitto_sub`` on the workers' shared subscriptions, the
  baseline; :class:`CpuMeter`: the machine's and the broker's CPU over a run.

Nothing here is imported by the product; the benches run it as ``_ingestlib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import logging
import multiprocessing as mp
import os
import pstats
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import paho.mqtt.client as paho
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cloud_ingest.store.base import Store, WriteBatch, WriteResult
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.contract import wirejson
from firmware_agent.contract.envelope import frame_record
from firmware_agent.contract.jws import peek_claims
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.pod import RESERVED_CLAIMS
from firmware_agent.contract.records import Record, TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from firmware_agent.contract.topics import shared_subscriptions, uplink_topic
from firmware_agent.faults import FaultCounter
from firmware_agent.pod.chain import PodChain
from firmware_agent.replay import replay
from firmware_agent.scan.log import read_scan_log
from firmware_agent.van import VanPipeline
from simulator.broker import MOSQUITTO, Mosquitto
from simulator.manifest import build_manifest
from simulator.nmea_writer import epoch_bytes
from simulator.scans import build_scan_log
from simulator.scenario import DEFAULT_START, ScenarioConfig, generate

MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
PG_ADMIN_DSN = os.environ.get(
    "FLEET_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
Backend = Literal["sqlite", "postgres"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
BATCH_FIXES = (20, 60)
SENT_AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
_TEMPLATE = "template"  # the device id template days are simulated for


def machine() -> str:
    """One line about where the figures come from."""
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"Python {sys.version.split()[0]}; {_mosquitto_version()}; {_pg_version()}"
    )


def _mosquitto_version() -> str:
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "mosquitto ?"


def _pg_version() -> str:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return "no PostgreSQL"
    return f"PostgreSQL {row[0] if row else '?'}"


# --- CPU accounting (Linux /proc) -------------------------------------------------------------

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already in user
    return (total - idle) * _TICK_S, total * _TICK_S


class CpuMeter:
    """Machine and broker CPU over an interval: ``meter = CpuMeter(broker)`` ...
    ``meter.stop()``."""

    def __init__(self, broker: Broker | None = None) -> None:
        self._broker = broker
        self._machine = machine_cpu()
        self._broker_s = broker.cpu_s() if broker is not None else 0.0
        self._wall = time.monotonic()
        self.machine_cores = 0.0  # CPUs busy on average, anything on the machine
        self.broker_s = 0.0

    def stop(self) -> CpuMeter:
        busy, _ = machine_cpu()
        wall = time.monotonic() - self._wall
        self.machine_cores = (busy - self._machine[0]) / wall if wall > 0 else 0.0
        if self._broker is not None:
            self.broker_s = self._broker.cpu_s() - self._broker_s
        return self


# --- Mosquitto ------------------------------------------------------------------------------


class Broker(Mosquitto):
    """A private Mosquitto for one measurement (:class:`simulator.broker.Mosquitto`):
    no persistence, no limit on a subscriber's queue (a worker behind by more than the
    default 1000 would silently lose QoS 1 messages), Nagle's algorithm as Mosquitto's
    default unless ``nodelay``; plus the broker's CPU time."""

    def __init__(self, directory: Path, *, nodelay: bool = False) -> None:
        super().__init__(directory, persistence=False, max_queued_messages=0, nodelay=nodelay)

    def cpu_s(self) -> float:
        """The broker's user + system CPU time so far."""
        assert self.process is not None
        return process_cpu_s(self.process.pid)


# --- PostgreSQL -----------------------------------------------------------------------------


def pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` when it can."""
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as err:
        return f"no PostgreSQL at {PG_ADMIN_DSN!r}: {str(err).strip()}"
    return None


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "fleet_bench") -> Iterator[str]:
    """Create a uniquely named database; yield its DSN; drop it (``FORCE``) afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(PG_ADMIN_DSN, dbname=name)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- Stores ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where a store lives: a SQLite file path or a PostgreSQL DSN (picklable)."""

    backend: Backend
    target: str

    def open(self) -> Store:
        if self.backend == "sqlite":
            return SqliteStore(self.target)
        return PostgresStore(self.target)


@contextlib.contextmanager
def fresh_store(backend: Backend, directory: Path) -> Iterator[StoreSpec]:
    """An empty store of ``backend``: a new SQLite file in ``directory``, or a new
    PostgreSQL database (dropped on the way out)."""
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield StoreSpec("sqlite", str(directory / f"ingest-{secrets.token_hex(4)}.db"))
    else:
        with fresh_pg_database() as dsn:
            yield StoreSpec("postgres", dsn)


async def prepare_store(spec: StoreSpec, fleet: Fleet) -> None:
    """Create the schema and register every van's public key."""
    async with spec.open() as store:
        await store.migrate()
        for van in fleet.vans:
            await store.register_device(van.device_id, van.public_key)


async def check_stored(store: Store, fleet: Fleet) -> list[str]:
    """What differs from the fleet's traffic stored exactly once (empty: all good).

    Counts of positions, events and PODs equal the messages' records (the primary keys
    make a second copy impossible, so equal counts mean every record once); nothing
    quarantined; every POD chain linked ("ok"); every device's acks at its last seqs.
    """
    problems = []
    counts = await store.counts()
    want = fleet.records_by_stream
    got = {"telemetry": counts.positions, "events": counts.stop_events, "pod": counts.pods}
    for stream, n in want.items():
        if got[stream] != n:
            problems.append(f"{stream}: stored {got[stream]}, sent {n}")
    if counts.quarantined:
        problems.append(f"{counts.quarantined} messages quarantined")
    if counts.pods_pending or counts.pods_broken:
        problems.append(f"PODs pending {counts.pods_pending}, broken {counts.pods_broken}")
    for van in fleet.vans:
        acks = await store.acks(van.device_id)
        if acks != van.last_seqs:
            problems.append(f"{van.device_id}: acks {acks}, want {van.last_seqs}")
            break
    return problems


# --- The fleet's traffic --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One uplink message: ``records`` fixes, or one event or POD; the stream's seqs up
    to ``last_seq`` are covered by it."""

    topic: str
    payload: bytes
    device_id: str
    stream: str
    last_seq: int
    records: int


@dataclass
class Van:
    device_id: str
    public_key: bytes
    last_seqs: dict[str, int] = field(
        default_factory=lambda: {"telemetry": 0, "events": 0, "pod": 0}
    )


@dataclass
class Fleet:
    vans: list[Van]
    messages: list[Message]

    @property
    def records(self) -> int:
        return sum(m.records for m in self.messages)

    @property
    def records_by_stream(self) -> dict[str, int]:
        out = dict.fromkeys(("telemetry", "events", "pod"), 0)
        for m in self.messages:
            out[m.stream] += m.records
        return out

    @property
    def payload_bytes(self) -> int:
        return sum(len(m.payload) for m in self.messages)

    def head(self, n: int) -> Fleet:
        """The first ``n`` messages, with every van's last seqs as they leave them."""
        messages = self.messages[:n]
        vans = {v.device_id: Van(v.device_id, v.public_key) for v in self.vans}
        for m in messages:
            vans[m.device_id].last_seqs[m.stream] = m.last_seq
        return Fleet(list(vans.values()), messages)

    def describe(self) -> str:
        by_stream = Counter(m.stream for m in self.messages)
        fixes = [m.records for m in self.messages if m.stream == "telemetry"]
        r = self.records_by_stream
        return (
            f"{len(self.vans)} vans, {len(self.messages):,} messages "
            f"({by_stream['telemetry']:,} telemetry batches of {min(fixes)}..{max(fixes)} "
            f"fixes, mean {sum(fixes) / len(fixes):.1f}; {by_stream['events']:,} events; "
            f"{by_stream['pod']:,} PODs), {self.records:,} records ({r['telemetry']:,} fixes, "
            f"{r['events']:,} events, {r['pod']:,} PODs), {self.payload_bytes / 1e6:.1f} MB"
        )


@dataclass(frozen=True, slots=True)
class _DayItem:
    t_s: float  # seconds since the day's start, nondecreasing
    record: Record


def _template_day(seed: int, stops: int, start: datetime) -> list[_DayItem]:
    """The messages of one simulated day, as the van pipeline emits them."""
    config = ScenarioConfig(seed=seed, n_stops=stops, rate_hz=1, start=start)
    scenario = generate(config)
    doc = build_manifest(scenario, device_id=_TEMPLATE, seed=seed)
    manifest = parse_manifest(doc)
    scan_lines = [json.dumps(s) for s in build_scan_log(scenario, doc, seed=seed)]
    scans = list(read_scan_log(scan_lines, FaultCounter()))
    nmea = b"".join(epoch_bytes(e, config.talker) for e in scenario.epochs())
    pipeline = VanPipeline(manifest, pods=PodChain(_TEMPLATE, Ed25519PrivateKey.generate()))
    emitted: list[Record] = []
    replay(io.BytesIO(nmea), scans, pipeline, emitted.append)
    items = []
    clock = start
    for record in emitted:
        clock = max(clock, record.time)
        items.append(_DayItem((clock - start).total_seconds(), record))
    return items


def template_days(n: int, stops: int, *, first_seed: int = 1) -> list[list[_DayItem]]:
    """``n`` simulated days (seeds first_seed.., one calendar day apart)."""
    return [
        _template_day(first_seed + k, stops, DEFAULT_START + timedelta(days=k)) for k in range(n)
    ]


def _van_route(route_id: str, device_id: str) -> str:
    """The template day's route (``R-YYYYMMDD-template``) as this van's."""
    return route_id.removesuffix(_TEMPLATE) + device_id


def _van_day(
    van: Van,
    chain: PodChain,
    day: list[_DayItem],
    rng: random.Random,
) -> list[tuple[float, Message]]:
    """The messages of ``van`` driving ``day``: (seconds since the day's start, message)."""
    out: list[tuple[float, Message]] = []
    seqs = van.last_seqs
    batch: list[tuple[int, TelemetryPoint]] = []
    cut = rng.randint(*BATCH_FIXES)
    device_id = van.device_id

    def flush(t_s: float) -> None:
        nonlocal batch, cut
        if batch:
            payload = encode_batch(device_id, batch[0][0], batch, historical=False)
            out.append(
                (
                    t_s,
                    Message(
                        uplink_topic(device_id, "telemetry"),
                        payload,
                        device_id,
                        "telemetry",
                        batch[-1][0],
                        len(batch),
                    ),
                )
            )
        batch, cut = [], rng.randint(*BATCH_FIXES)

    t_s = 0.0
    for item in day:
        t_s = item.t_s
        if isinstance(item.record, TelemetryPoint):
            seqs["telemetry"] += 1
            batch.append((seqs["telemetry"], item.record))
            if len(batch) >= cut:
                flush(t_s)
            continue
        stream = item.record.stream
        record = item.record.to_json()
        if "route_id" in record:
            record["route_id"] = _van_route(record["route_id"], device_id)
        if stream == "pod":
            claims = peek_claims(record["jws"])
            fields = {k: v for k, v in claims.items() if k not in RESERVED_CLAIMS}
            fields["route_id"] = _van_route(fields["route_id"], device_id)
            pod = chain.issue(fields)
            record["seq"], record["jws"] = pod.seq, pod.token
        seqs[stream] += 1
        payload = frame_record(
            device_id,
            stream,
            seqs[stream],
            wirejson.dumps(record, "record"),
            historical=False,
            sent_at=SENT_AT,
        )
        topic = uplink_topic(device_id, stream)
        out.append((t_s, Message(topic, payload, device_id, stream, seqs[stream], 1)))
    flush(t_s)
    return out


def make_fleet(
    vans: int,
    days_per_van: int,
    *,
    templates: int = 4,
    stops: int = 15,
    seed: int = 1,
    log: bool = True,
) -> Fleet:
    """The traffic of ``vans`` vans driving ``days_per_van`` days each (see module doc).

    Van v drives template days v, v+1, ... (mod ``templates``), so neighbours differ.
    Messages of all vans are merged by (day, time in the day, van): a fleet sending
    live, compressed in time.
    """
    started = time.perf_counter()
    days = template_days(templates, stops, first_seed=seed)
    if log:
        print(
            f"  {templates} template days simulated in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    rng = random.Random(seed)
    fleet_vans: list[Van] = []
    timed: list[tuple[int, float, int, int, Message]] = []
    for v in range(vans):
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        van = Van(f"van-{v + 1:04d}", public)
        fleet_vans.append(van)
        chain = PodChain(van.device_id, key)
        for d in range(days_per_van):
            for i, (t_s, m) in enumerate(_van_day(van, chain, days[(v + d) % templates], rng)):
                timed.append((d, t_s, v, i, m))
    timed.sort(key=lambda x: x[:4])
    return Fleet(fleet_vans, [x[4] for x in timed])


# --- Ingest workers in processes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    store: StoreSpec
    port: int
    client_id: str
    profile: str | None = None  # write cProfile stats here (a .prof path)


@dataclass
class WorkerReport:
    """What one worker did between ready and stop, and where its time went."""

    client_id: str
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    process_s: float = 0.0  # in IngestWorker.process: check + write + publish
    write_s: float = 0.0  # awaiting Store.write
    publish_s: float = 0.0  # awaiting the acks' and the stream's PUBACKs
    stream_messages: int = 0  # fleetstream/v1 messages published
    cpu_s: float = 0.0  # the process's user + system CPU time while measuring
    profile: str | None = None

    @property
    def check_s(self) -> float:
        """In process but neither writing nor publishing: decoding, checks, bookkeeping."""
        return self.process_s - self.write_s - self.publish_s


class _TimedStore:
    """Delegates to a store, timing :meth:`write` (the worker only writes and reads
    devices)."""

    def __init__(self, store: Store, report: WorkerReport) -> None:
        self._store = store
        self._report = report

    async def write(self, batch: WriteBatch, **kwargs: Any) -> WriteResult:
        started = time.perf_counter()
        try:
            return await self._store.write(batch, **kwargs)
        finally:
            self._report.write_s += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _TimedWorker(IngestWorker):
    """The real worker; only counts time around its own steps."""

    report: WorkerReport

    async def process(self, client: Any, received: list[Any]) -> WriteResult:
        started = time.perf_counter()
        try:
            return await super().process(client, received)
        finally:
            self.report.process_s += time.perf_counter() - started

    async def _publish(self, client: Any, result: WriteResult) -> None:
        started = time.perf_counter()
        self.report.stream_messages += len(result.stream)
        try:
            await super()._publish(client, result)
        finally:
            self.report.publish_s += time.perf_counter() - started


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _run_worker(spec: WorkerSpec, ready: MpEvent, go: MpEvent, reports: Any) -> None:
    report = WorkerReport(spec.client_id)
    store = spec.store.open()
    await store.open()
    worker = _TimedWorker(
        cast(Store, _TimedStore(store, report)),
        WorkerConfig(port=spec.port, client_id=spec.client_id, backoff_max_s=1.0),
    )
    worker.report = report
    task = asyncio.create_task(worker.run(), name="ingest")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    connected = asyncio.create_task(worker.connected.wait())
    await asyncio.wait([task, connected], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
    ready.set()
    # Counters start when the measurement does (after every worker is subscribed).
    await loop.run_in_executor(None, go.wait)
    profiler = cProfile.Profile() if spec.profile else None
    base = worker.counts.received, worker.counts.stored, worker.counts.batches
    cpu0 = _cpu_s()
    if profiler is not None:
        profiler.enable()
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(cast(str, spec.profile))
            report.profile = spec.profile
        report.cpu_s = _cpu_s() - cpu0
        c = worker.counts
        report.received = c.received - base[0]
        report.stored = c.stored - base[1]
        report.batches = c.batches - base[2]
        report.duplicates = c.duplicates
        report.quarantined = sum(c.quarantined.values())
        await store.close()
        reports.put(report)


def _worker_main(spec: WorkerSpec, ready: MpEvent, go: MpEvent, reports: Any) -> None:
    # aiomqtt warns on every publish while more than 10 x max_inflight are pending,
    # which each batch's republication exceeds (see docs/benchmarks.md): silenced, so
    # that stderr is not what we measure.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    asyncio.run(_run_worker(spec, ready, go, reports))


class WorkerPool:
    """``n`` worker processes on ``store``; ``with WorkerPool(...) as pool: pool.go()``.

    Entering returns once every worker is subscribed; :meth:`go` starts their counters
    (and profilers); :meth:`stop` (or leaving) ends them and collects their reports.
    """

    def __init__(
        self, n: int, store: StoreSpec, port: int, *, profile_dir: Path | None = None
    ) -> None:
        ctx = mp.get_context("spawn")
        self._ctx = ctx
        self._reports: Any = ctx.Queue()
        self._go = ctx.Event()
        self._ready: list[MpEvent] = []
        self.processes: list[Any] = []
        self.reports: list[WorkerReport] = []
        for i in range(n):
            profile = None
            if profile_dir is not None:
                profile = str(profile_dir / f"{store.backend}-w{n}-{i + 1}.prof")
            spec = WorkerSpec(store, port, f"ingest-{i + 1}", profile)
            ready = ctx.Event()
            self._ready.append(ready)
            self.processes.append(
                ctx.Process(
                    target=_worker_main,
                    args=(spec, ready, self._go, self._reports),
                    name=spec.client_id,
                    daemon=True,
                )
            )

    def __enter__(self) -> WorkerPool:
        for p in self.processes:
            p.start()
        deadline = time.monotonic() + 60.0
        for p, ready in zip(self.processes, self._ready, strict=True):
            while not ready.wait(0.1):
                if not p.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"worker {p.name} did not start (exit {p.exitcode})")
        return self

    def go(self) -> None:
        self._go.set()

    def stop(self) -> list[WorkerReport]:
        self._go.set()
        for p in self.processes:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for _ in self.processes:
            with contextlib.suppress(Exception):
                self.reports.append(self._reports.get(timeout=30))
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        self.processes = []
        return self.reports

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.processes:
            self.stop()


def print_profiles(runs: Iterable[tuple[str, Sequence[WorkerReport]]]) -> None:
    """For each ``(name, reports)`` run whose workers were profiled, its
    :func:`profile_summary` under a heading."""
    for name, reports in runs:
        paths = [w.profile for w in reports if w.profile]
        if paths:
            print(f"\n=== cProfile, {name} ===")
            print(profile_summary(paths))


def profile_summary(paths: Sequence[str], top: int = 25) -> str:
    """The ``top`` functions by cumulative and by own time over the profiles."""
    stats = pstats.Stats(paths[0], stream=io.StringIO())
    for p in paths[1:]:
        stats.add(p)
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --- Publishing -----------------------------------------------------------------------------


@dataclass
class PublishResult:
    """Wall-clock (``time.time()``) marks of one publisher run: comparable with other
    processes' (mosquitto_sub's ``%U``) on one machine."""

    first_send: float
    last_send: float
    all_acked: float
    sent: int
    send_times: list[float] = field(default_factory=list)  # paced runs only
    received: list[tuple[float, str, bytes]] = field(default_factory=list)  # (time, topic, ..)


def _paho_client(client_id: str, window: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    return client


def publish(
    port: int,
    items: Sequence[tuple[str, bytes]],
    *,
    window: int = 100,
    rate: float | None = None,
    subscribe: str | None = None,
    drain_s: float = 0.0,
    drain_until: Any = None,
    nodelay: bool = False,
) -> PublishResult:
    """Publish ``items`` (topic, payload) at QoS 1 on one connection.

    ``rate``: messages per second, paced on a schedule (``None``: as fast as paho goes,
    at most ``window`` awaiting PUBACK). ``subscribe``: a topic filter whose messages are
    kept with their arrival time (the latency bench's acks); after the last PUBACK the
    client stays ``drain_s`` longer, or less once ``drain_until(received)`` is true.
    ``nodelay``: TCP_NODELAY on the connection (paho leaves Nagle's algorithm on).
    """
    acked = 0
    acked_all = threading.Event()
    connected = threading.Event()
    received: list[tuple[float, str, bytes]] = []
    n = len(items)

    def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if subscribe is not None:
            client.subscribe(subscribe, qos=1)
        else:
            connected.set()

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        connected.set()

    def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            acked_all.set()

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received.append((time.time(), message.topic, bytes(message.payload)))

    client = _paho_client(f"bench-pub-{os.getpid()}", window)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=60)
    sock = client.socket()
    if nodelay and isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("publisher: no CONNACK/SUBACK within 10 s")
        send_times: list[float] = []
        first_send = time.time()
        if rate is None:
            pub = client.publish
            for topic, payload in items:
                pub(topic, payload, qos=1)
        else:
            start = time.monotonic()
            interval = 1.0 / rate
            for i, (topic, payload) in enumerate(items):
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                send_times.append(time.time())
                client.publish(topic, payload, qos=1)
        last_send = time.time()
        if not acked_all.wait(600):
            raise RuntimeError(f"publisher: {acked} of {n} PUBACKs after 600 s")
        all_acked = time.time()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if drain_until is not None and drain_until(received):
                break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return PublishResult(first_send, last_send, all_acked, n, send_times, received)


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varlen(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


_PACKET_IDS = [struct.pack(">H", i) for i in range(1, 65536)]


def blast(
    port: int, items: Sequence[tuple[str, bytes]], *, repeat: int = 1, window: int = 10_000
) -> PublishResult:
    """Send ``items`` ``repeat`` times as QoS 1 PUBLISH packets on one MQTT 3.1.1
    connection, at most ``window`` awaiting PUBACK; return once every PUBACK is in.

    The fastest one connection can offer the stream (``mosquitto_pub -l`` cannot send
    binary payloads): the packets are built before the clock starts and the publisher
    spends little CPU, so what is measured is the broker and its subscribers. Packet
    ids follow the global index, so none is reused while in flight (``window`` <
    65535).
    """
    heads = []
    for topic, payload in items:
        name = _utf8(topic)
        heads.append(b"\x32" + _varlen(len(name) + 2 + len(payload)) + name)
    payloads = [payload for _, payload in items]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + _utf8(f"bench-blast-{os.getpid()}")
    sock.sendall(_packet(0x10, connect))
    connack = sock.recv(4)
    if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"publisher: bad CONNACK {connack!r}")
    n = len(items)
    total = n * repeat
    acked = 0
    done = threading.Condition()

    def read_pubacks() -> None:
        nonlocal acked
        pending = b""
        while acked < total:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("publisher: broker closed the connection")
            pending += data
            # Only PUBACKs come back (nothing subscribed): 4 bytes each, 0x40 0x02 id.
            count, rest = divmod(len(pending), 4)
            if count:
                if any(pending[4 * i] != 0x40 for i in range(count)):
                    raise RuntimeError("publisher: unexpected packet from the broker")
                pending = pending[len(pending) - rest :]
                with done:
                    acked += count
                    done.notify_all()

    reader = threading.Thread(target=read_pubacks, name="pubacks", daemon=True)
    reader.start()
    first_send = time.time()
    sent = 0
    chunk = 256

    def room(sent: int) -> Callable[[], bool]:
        return lambda: sent - acked <= window - chunk

    while sent < total:
        with done:
            done.wait_for(room(sent), timeout=60)
        end = min(total, sent + chunk)
        parts: list[bytes] = []
        for i in range(sent, end):
            k = i % n
            parts += (heads[k], _PACKET_IDS[i % 65535], payloads[k])
        sock.sendall(b"".join(parts))
        sent = end
    last_send = time.time()
    with done:
        if not done.wait_for(lambda: acked >= total, timeout=600):
            raise RuntimeError(f"publisher: {acked} of {total} PUBACKs after 600 s")
    all_acked = time.time()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    reader.join(1)
    return PublishResult(first_send, last_send, all_acked, total)


def _publisher_main(port: int, items: list[tuple[str, bytes]], repeat: int, out: Any) -> None:
    out.put(blast(port, items, repeat=repeat))


class PublisherProcess:
    """:func:`blast` in its own process: ``start()``, then ``result()``."""

    def __init__(self, port: int, items: list[tuple[str, bytes]], *, repeat: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._process = ctx.Process(
            target=_publisher_main, args=(port, items, repeat, self._out), daemon=True
        )

    def start(self) -> None:
        self._process.start()

    def result(self, timeout_s: float = 900.0) -> PublishResult:
        result = cast(PublishResult, self._out.get(timeout=timeout_s))
        self._process.join(10)
        return result


# --- mosquitto_sub, the baseline ------------------------------------------------------------


PROBE_TOPIC = "bench/probe"


def retain_probe(port: int) -> None:
    """A retained message on :data:`PROBE_TOPIC`: a subscriber gets it right after its
    SUBACK, which tells us it is subscribed."""
    client = _paho_client(f"bench-probe-{os.getpid()}", 10)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(PROBE_TOPIC, b"probe", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


class MosquittoSub:
    """``mosquitto_sub`` on the workers' shared subscriptions (group ``baseline``), QoS 1,
    exiting after ``count`` messages; it prints each message's arrival time (``%U``)."""

    def __init__(self, port: int, count: int, out: Path) -> None:
        if not Path(MOSQUITTO_SUB).exists():
            raise SystemExit(f"mosquitto_sub is not installed ({MOSQUITTO_SUB})")
        self.out = out
        topics = [*shared_subscriptions("baseline"), PROBE_TOPIC]
        self.argv = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5"]
        self.argv += ["-q", "1", "-i", "bench-baseline", "-C", str(count + 1), "-F", "%t %U"]
        for t in topics:
            self.argv += ["-t", t]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and return once subscribed (the retained probe has arrived)."""
        with self.out.open("wb") as f:
            self.process = subprocess.Popen(self.argv, stdout=f)
        deadline = time.monotonic() + 10.0
        while PROBE_TOPIC not in self.out.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto_sub did not subscribe: {self.argv}")
            time.sleep(0.02)

    def wait(self, timeout_s: float) -> list[tuple[str, float]]:
        """(topic, arrival time) of each message but the probe, in arrival order."""
        assert self.process is not None
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        arrivals = []
        for line in self.out.read_text().splitlines():
            topic, _, stamp = line.rpartition(" ")
            if topic != PROBE_TOPIC and stamp:
                arrivals.append((topic, float(stamp)))
        return arrivals


# --- Figures --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p`` percentile (0 < p <= 100) of ascending values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]
