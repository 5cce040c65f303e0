"""A simulated van day through the real agent, a real Mosquitto and a real ingest worker.

:func:`run_day` runs, in one event loop, an ingest worker on ``store`` and an agent
playing the day's NMEA file (as fast as possible) with its scans, until ingest has
acknowledged every record the agent committed. ``during`` is an optional coroutine run
beside them (to kill the broker, cut the network, ...). Returns the agent (its counts,
its outbox) and the worker. :func:`run_agent` is the same without the worker, for a
test that runs ingest elsewhere (another process).

The checks shared by the end-to-end tests live here too:

- :class:`Watcher` subscribes to what ingest publishes (``fleetstream/v1/#`` and the
  acks) and, optionally, to the vans' uplink, and validates every message against the
  contract's JSON Schemas.
- :func:`assert_exactly_once` compares the store with the sequence numbers the agent's
  outbox handed out, stream by stream, and the stored PODs with the agent's chain.
- :func:`day_messages` runs the van pipeline over a day without an agent, for tests
  that publish real envelopes themselves (duplicated, reordered, tampered with).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloud_ingest.store.base import Pod, Store, WriteResult
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.envelope import decode_envelope, decode_status, frame_record
from firmware_agent.contract.errors import CodecError, SchemaError
from firmware_agent.contract.eventbatch import decode_events, is_event_batch
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.records import (
    EventRecord,
    PodRecord,
    Record,
    TelemetryPoint,
    encode_record,
)
from firmware_agent.contract.schema import validate
from firmware_agent.contract.telemetry import decode_batch, encode_batch
from firmware_agent.contract.topics import STREAMS
from firmware_agent.faults import FaultCounter
from firmware_agent.pod.chain import ChainState, PodChain
from firmware_agent.pod.state import ChainStateStore
from firmware_agent.pod.verify import verify_chain
from firmware_agent.replay import replay
from firmware_agent.scan.log import read_scan_log
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.uplink.outbox import Outbox
from firmware_agent.van import VanPipeline

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
DEVICE = "van-0001"
FLEET_AGENT = BIN / "fleet-agent"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Day:
    nmea: Path
    scans: Path
    manifest: Path


def make_day(directory: Path, *, seed: int = 11, stops: int = 8, hours: float = 0.75) -> Day:
    sim = shutil.which("fleet-sim", path=str(BIN))
    assert sim is not None
    subprocess.run(
        [sim, "scenario", "--seed", str(seed), "--stops", str(stops), "--rate-hz", "1",
         "--duration-h", str(hours), "--device-id", DEVICE, "--out", str(directory)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return Day(directory / "nmea.log", directory / "scans.jsonl", directory / "manifest.json")


def first_fix_time(day: Day) -> datetime:
    """GNSS time of the day's first epoch (the simulator's ground truth says it)."""
    truth = day.nmea.with_name("truth.csv")
    with truth.open(encoding="utf-8") as lines:
        next(lines)
        return datetime.fromisoformat(next(lines).split(",", 1)[0])


def dense_scans(day: Day, directory: Path, *, start_s: float = 30.0, step_s: float = 6.0) -> Day:
    """``day`` with every good parcel scanned once, early: from ``start_s`` after the
    first fix, one every ``step_s``, while the van drives to its first stop. Every run
    of an agent playing the file from the start then signs PODs within seconds, so
    kills at random moments land among them."""
    t0 = first_fix_time(day)
    seen: set[str] = set()
    lines: list[str] = []
    for line in day.scans.read_text(encoding="utf-8").splitlines():
        scan = json.loads(line)
        truth = scan.get("truth", {})
        if truth.get("kind") != "ok" or truth.get("parcel") in seen:
            continue
        seen.add(truth["parcel"])
        when = t0.timestamp() + start_s + step_s * len(lines)
        scan["time"] = datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
        lines.append(json.dumps(scan))
    directory.mkdir(parents=True, exist_ok=True)
    scans = directory / "scans-dense.jsonl"
    scans.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Day(day.nmea, scans, day.manifest)


def short_day(day: Day, directory: Path, *, seconds: int) -> Day:
    """``day``'s first ``seconds`` epochs (1 Hz: one RMC each), same manifest and scans."""
    kept: list[bytes] = []
    epochs = 0
    with day.nmea.open("rb") as lines:
        for line in lines:
            if line[3:6] == b"RMC":
                epochs += 1
                if epochs > seconds:
                    break
            kept.append(line)
    directory.mkdir(parents=True, exist_ok=True)
    nmea = directory / "nmea.log"
    nmea.write_bytes(b"".join(kept))
    shutil.copy(day.nmea.with_name("truth.csv"), directory / "truth.csv")
    return Day(nmea, day.scans, day.manifest)


def prepare_agent_state(state_dir: Path, day: Day) -> bytes:
    """The van's state directory with the day's manifest; returns its raw public key."""
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(day.manifest, state_dir / "manifest.json")
    key = load_or_create_device_key(state_dir / "device.key")
    return raw_public_key(key)


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agent_config(
    state_dir: Path, day: Day, port: int, *, speed: float = 0.0, **uplink: object
) -> AgentConfig:
    return AgentConfig(
        state_dir=state_dir,
        uplink=UplinkConfig(device_id=DEVICE, port=port, **uplink),  # type: ignore[arg-type]
        nmea_file=day.nmea,
        scans_file=day.scans,
        speed=speed,
        exit_when_drained=True,
    )


def agent_command(state_dir: Path, day: Day, port: int, *, speed: float) -> list[str]:
    """``fleet-agent run`` playing ``day`` into ``state_dir`` (the service's own CLI)."""
    return [
        str(FLEET_AGENT), "run", "--device-id", DEVICE, "--state-dir", str(state_dir),
        "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--nmea-file", str(day.nmea),
        "--scans-file", str(day.scans), "--speed", str(speed),
    ]  # fmt: skip


async def input_started(
    log_path: Path, proc: asyncio.subprocess.Process, timeout_s: float = 30.0
) -> None:
    """Wait until an agent started by :func:`agent_command` logs that its input plays
    (or it has ended): start-up (imports, model, outbox) takes 1.6-1.9 s on a loaded
    2-CPU VM, so a kill timed from the launch alone seldom lands mid-day."""
    async with asyncio.timeout(timeout_s):
        while proc.returncode is None:
            if b"GNSS input: " in await asyncio.to_thread(log_path.read_bytes):
                return
            await asyncio.sleep(0.02)


class ObservedWorker(IngestWorker):
    """An ingest worker that also counts the messages it has finished with (checked,
    stored, acked and republished), so that a test knows when it is done."""

    processed: int = 0

    async def process(self, client: aiomqtt.Client, received: list[Any]) -> WriteResult:
        try:
            return await super().process(client, received)
        finally:
            # Done with, stored or not: a batch cut short by the broker's death is
            # resent by the van (no ack came), and counts again when it arrives.
            self.processed += len(received)

    async def finished(self, count: int, *, timeout_s: float = 30.0) -> None:
        """Return once ``count`` messages have been processed in all."""
        await wait_for(lambda: self.processed >= count, timeout_s=timeout_s)

    async def idle(self, quiet_s: float = 0.3, timeout_s: float = 30.0) -> None:
        """Return once every message received so far is processed and none came for
        ``quiet_s`` (a message waiting in the worker's queue starts a batch sooner)."""
        deadline = time.monotonic() + timeout_s
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.counts.received != seen:
                seen, since = self.counts.received, time.monotonic()
            elif self.processed == seen and time.monotonic() - since >= quiet_s:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the ingest worker never went idle")


async def run_day(
    store: Store,
    config: AgentConfig,
    *,
    port: int,
    during: Callable[[Agent, IngestWorker], Coroutine[Any, Any, None]] | None = None,
    timeout_s: float = float(os.environ.get("DAY_TIMEOUT_S", "120")),
    agent: Agent | None = None,
) -> tuple[Agent, IngestWorker]:
    worker = ObservedWorker(store, WorkerConfig(port=port, backoff_max_s=1.0))
    agent = agent or Agent(config)
    async with asyncio.timeout(timeout_s):
        worker_task = asyncio.create_task(worker.run(), name="ingest")
        try:
            await worker.connected.wait()
            fault = None if during is None else during(agent, worker)
            await run_agent(config, agent=agent, during=fault)
            # The van is done at its last ack; ingest republishes right after its acks.
            await worker.idle()
        finally:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
    return agent, worker


async def run_agent(
    config: AgentConfig,
    *,
    agent: Agent | None = None,
    during: Coroutine[Any, Any, None] | None = None,
    timeout_s: float = float(os.environ.get("DAY_TIMEOUT_S", "120")),
) -> Agent:
    """Run an agent until ingest (running elsewhere) acknowledged its whole day."""
    agent = agent or Agent(config)
    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
        tg.create_task(agent.run(), name="agent")
        if during is not None:
            tg.create_task(during, name="fault")
    return agent


# -- what ingest publishes -----------------------------------------------------------------

# Topic leaf -> contract kind (docs/schemas/<kind>.schema.json).
FLEETSTREAM_KINDS = {
    "position": "fleetstream-position",
    "event": "fleetstream-event",
    "pod": "fleetstream-pod",
}
UPLINK_KINDS = {
    "telemetry": "telemetry-batch",
    "events": "events",
    "pod": "pod",
    "status": "status",
}


@dataclass(frozen=True, slots=True)
class Seen:
    """One message the watcher received: ``at`` is time.monotonic() at receipt."""

    topic: str
    payload: bytes
    at: float

    @property
    def root(self) -> str:
        return self.topic.split("/", 1)[0]

    @property
    def device_id(self) -> str:
        return self.topic.split("/")[2]

    @property
    def leaf(self) -> str:
        return self.topic.rsplit("/", 1)[-1]

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        assert isinstance(value, dict), self.topic
        return value


@dataclass
class Watcher:
    """A backend team's view: subscribes to ``fleetstream/v1/#`` and ``fleet/v1/+/ack``
    (and with ``uplink`` the vans' own topics), keeping every message in order.

    ``async with Watcher(port) as watcher`` is subscribed when the block starts.
    """

    port: int
    uplink: bool = False
    messages: list[Seen] = field(default_factory=list)
    error: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run(), name="watcher")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        topics = ["fleetstream/v1/#", "fleet/v1/+/ack"]
        if self.uplink:
            topics += [f"fleet/v1/+/{leaf}" for leaf in UPLINK_KINDS]
        try:
            async with aiomqtt.Client(
                "127.0.0.1",
                self.port,
                identifier=f"watcher-{os.getpid()}-{id(self)}",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                self._ready.set()
                async for message in client.messages:
                    payload = message.payload
                    assert isinstance(payload, bytes | bytearray)
                    self.messages.append(Seen(str(message.topic), bytes(payload), time.monotonic()))
        except aiomqtt.MqttError as err:
            self.error = err

    async def settle(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Wait until nothing has arrived for ``quiet_s`` (ingest's last publishes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.messages[-1].at if self.messages else 0.0
            if time.monotonic() - last >= quiet_s:
                return
            await asyncio.sleep(quiet_s / 3)

    def of(self, root: str, leaf: str, device_id: str | None = None) -> list[Seen]:
        return [
            m
            for m in self.messages
            if m.root == root.split("/", maxsplit=1)[0]
            and m.leaf == leaf
            and (device_id is None or m.device_id == device_id)
        ]

    def fleetstream(self, leaf: str, device_id: str | None = None) -> list[dict[str, Any]]:
        """The records of every ``fleetstream/v1/.../{leaf}`` message, in order."""
        return [r for m in self.of("fleetstream", leaf, device_id) for r in m.json()["records"]]

    def acks(self, device_id: str) -> list[dict[str, int]]:
        return [m.json()["acks"] for m in self.of("fleet", "ack", device_id)]

    def contract_failures(self) -> list[str]:
        """Every message that breaks the contract, as 'topic: reason' (empty: all fit).

        Fleetstream messages and acks are validated against their schemas; the device
        id in a payload must be its topic's. With ``uplink``, the vans' messages too
        (a telemetry batch decoded first, as ingest does).
        """
        failures = []
        for m in self.messages:
            try:
                for kind, message in _contract_view(m):
                    validate(kind, message)
                    if message.get("device_id") != m.device_id:
                        failures.append(f"{m.topic}: {kind}: device_id is not the topic's")
            except (SchemaError, CodecError, ValueError) as err:
                failures.append(f"{m.topic}: {err}")
        return failures

    def check_acks_never_go_down(self, device_id: str) -> None:
        """Per stream, the acks ingest sent the device never decrease (the schema says so)."""
        top: dict[str, int] = dict.fromkeys(STREAMS, 0)
        for acks in self.acks(device_id):
            for stream, seq in acks.items():
                assert seq >= top[stream], f"{stream} ack went down: {top[stream]} -> {seq}"
                top[stream] = seq


def _contract_view(m: Seen) -> list[tuple[str, dict[str, Any]]]:
    if m.root == "fleetstream":
        return [(FLEETSTREAM_KINDS[m.leaf], m.json())]
    if m.leaf == "ack":
        return [("ack", m.json())]
    if m.leaf == "telemetry":
        return [("telemetry-batch", decode_batch(m.payload).to_json())]
    if m.leaf == "status":
        return [("status", decode_status(m.payload).to_json())]
    if m.leaf == "events" and is_event_batch(m.payload):
        return [("event-batch", decode_events(m.payload).to_json())]
    return [(UPLINK_KINDS[m.leaf], decode_envelope(m.payload, stream=m.leaf).to_json())]


# -- exactly once ----------------------------------------------------------------------------


async def outbox_state(state_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Per stream of a stopped agent's outbox: (last seq handed out, acked, pending);
    all zero when the agent never got as far as creating it."""
    path = state_dir / "outbox.db"

    def read() -> dict[str, tuple[int, int, int]]:
        if not path.exists():
            return dict.fromkeys(STREAMS, (0, 0, 0))
        with Outbox(path) as outbox:
            pending = outbox.counts()
            return {s: (outbox.last_seq(s), outbox.acked(s), pending[s]) for s in STREAMS}

    return await asyncio.to_thread(read)


async def stored_pods(store: Store, device_id: str) -> list[Pod]:
    """The device's stored PODs by chain seq, 1 to the head, asserting none is missing."""
    head = await store.pod_head(device_id)
    pods = []
    for pod_seq in range(1, (head.pod_seq if head is not None else 0) + 1):
        pod = await store.pod_by_pod_seq(device_id, pod_seq)
        assert pod is not None, f"POD {pod_seq} of {device_id} is not stored"
        pods.append(pod)
    return pods


@dataclass(frozen=True)
class Stored:
    """What :func:`assert_exactly_once` found, for the tests' own further checks."""

    last_seqs: dict[str, int]
    pods: list[Pod]


async def assert_exactly_once(
    store: Store,
    last_seqs: dict[str, int],
    public_key: bytes,
    *,
    device_id: str = DEVICE,
    watcher: Watcher | None = None,
    chain_state: ChainState | None = None,
    single_device: bool = True,
    stream_repeats: bool = False,
) -> Stored:
    """Every seq the agent's outbox handed out (``last_seqs``: stream -> last seq) is
    stored exactly once, nothing else is, and the PODs form one chain from genesis.

    - ingest acknowledges exactly ``last_seqs`` and knows no gap;
    - the positions stored are exactly seqs 1..last (by sequence number, not a count);
      events and PODs: their counts equal ``last_seqs`` while the cumulative ack covers
      1..last, so each seq is stored once and nothing beyond (``single_device``: the
      store holds this device only, so its global counts are the device's);
    - PODs: chain seqs 1..N all stored with chain status ok, N == the number of POD
      records, and the tokens, in chain order, verify from genesis with the device key
      exactly as ``fleet-agent pod verify --from-genesis`` does; with ``chain_state``
      (the agent's saved state), the stored head is the agent's head;
    - with ``watcher``: the normalized stream carried each stored position and event
      exactly once (``stream_repeats``: at least once, for runs that kill a worker,
      whose stream messages published but not yet deleted from the store's outbox are
      published again by the next), and each stored POD once per chain status it was
      published with
      (a POD stored "pending" and linked later may be said again as "ok"), nothing else.
    """
    assert await store.acks(device_id) == last_seqs
    assert await store.gaps(device_id) == []
    positions = await store.track(device_id, EPOCH, FOREVER)
    assert sorted(p.seq for p in positions) == list(range(1, last_seqs["telemetry"] + 1))
    pods = await stored_pods(store, device_id)
    assert len(pods) == last_seqs["pod"]
    assert sorted(p.seq for p in pods) == list(range(1, last_seqs["pod"] + 1))
    assert [p.chain_status for p in pods] == ["ok"] * len(pods)
    if single_device:
        counts = await store.counts()
        assert counts.positions == last_seqs["telemetry"]
        assert counts.stop_events == last_seqs["events"]
        assert counts.pods == last_seqs["pod"]
        assert counts.pods_pending == counts.pods_broken == 0
    key = Ed25519PublicKey.from_public_bytes(public_key)
    report = verify_chain([p.jws for p in pods], key, device_id=device_id, start=ChainState())
    assert report.valid, report.problems[:5]
    assert report.last_seq == (len(pods) or None)
    if chain_state is not None:
        assert chain_state.seq == len(pods)
        assert chain_state.prev == (pods[-1].digest if pods else ChainState().prev)
    if watcher is not None:
        await watcher.settle()
        for leaf, stream in (("position", "telemetry"), ("event", "events")):
            seqs = Counter(m["seq"] for m in watcher.fleetstream(leaf, device_id))
            once = Counter(range(1, last_seqs[stream] + 1))
            if stream_repeats:
                assert set(seqs) == set(once), f"fleetstream {leaf}: {_counter_diff(seqs, once)}"
            else:
                assert seqs == once, f"fleetstream {leaf}: {_counter_diff(seqs, once)}"
        said = Counter((m["seq"], m["chain"]) for m in watcher.fleetstream("pod", device_id))
        if not stream_repeats:
            assert max(said.values(), default=1) == 1, f"a POD said twice: {said.most_common(3)}"
        assert {seq for seq, _ in said} == {p.seq for p in pods}
    return Stored(last_seqs, pods)


def _counter_diff(got: Counter[int], want: Counter[int]) -> str:
    missing = sorted((want - got).elements())
    extra = sorted((got - want).elements())
    return f"missing {missing[:10]} ({len(missing)}), extra {extra[:10]} ({len(extra)})"


def saved_chain_state(state_dir: Path) -> ChainState:
    return ChainStateStore(state_dir / "pod-chain.json").load()


# -- the van pipeline without an agent -------------------------------------------------------


@dataclass
class DayMessages:
    """What a van's pipeline produced over a day, numbered as its outbox would have:
    ``telemetry``, ``events`` and ``pods`` are ``(seq, record)`` per stream."""

    device_id: str
    key: Ed25519PrivateKey
    telemetry: list[tuple[int, TelemetryPoint]] = field(default_factory=list)
    events: list[tuple[int, EventRecord]] = field(default_factory=list)
    pods: list[tuple[int, PodRecord]] = field(default_factory=list)

    def last_seqs(self) -> dict[str, int]:
        return {
            "telemetry": len(self.telemetry),
            "events": len(self.events),
            "pod": len(self.pods),
        }

    def batch(self, seqs: Sequence[int], *, historical: bool = False) -> bytes:
        """One telemetry batch of the fixes with ``seqs`` (contiguous, ascending)."""
        fixes = [self.telemetry[s - 1] for s in seqs]
        return encode_batch(self.device_id, fixes[0][0], fixes, historical=historical)

    def envelope(self, stream: str, seq: int, *, historical: bool = False) -> bytes:
        records = self.events if stream == "events" else self.pods
        got, record = records[seq - 1]
        assert got == seq
        return frame_record(
            self.device_id,
            stream,
            seq,
            encode_record(record),
            historical=historical,
            sent_at=datetime.now(UTC),
        )


def day_messages(day: Day, key: Ed25519PrivateKey, device_id: str = DEVICE) -> DayMessages:
    """Run the van pipeline over ``day`` (no agent, no clock), signing PODs with ``key``."""
    manifest = parse_manifest(json.loads(day.manifest.read_text(encoding="utf-8")))
    pipeline = VanPipeline(manifest, pods=PodChain(device_id, key))
    with day.scans.open(encoding="utf-8") as lines:
        scans = list(read_scan_log(lines, FaultCounter()))
    out = DayMessages(device_id, key)

    def emit(record: Record) -> None:
        if isinstance(record, TelemetryPoint):
            out.telemetry.append((len(out.telemetry) + 1, record))
        elif isinstance(record, PodRecord):
            out.pods.append((len(out.pods) + 1, record))
        else:
            out.events.append((len(out.events) + 1, record))

    with day.nmea.open("rb") as nmea:
        replay(nmea, scans, pipeline, emit)
    return out


async def publish_all(
    port: int, messages: Iterable[tuple[str, bytes]], *, identifier: str = "test-publisher"
) -> int:
    """Publish ``(topic, payload)`` pairs at QoS 1, in order; how many."""
    n = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)
            n += 1
    return n


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 20.0, what: str = ""
) -> None:
    """Poll ``predicate`` (plain or async) every 20 ms until it holds; TimeoutError
    naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what or predicate}")
        await asyncio.sleep(0.02)
