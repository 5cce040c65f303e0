"""An ingest worker: MQTT in, checked and stored, then ack and the normalized stream out.

Workers subscribe with a shared subscription (``$share/ingest/fleet/v1/+/...``), so N
processes (or N clustered broker nodes' clients) split the vans' traffic with no code
change. Each worker gathers what arrives for up to ``batch_wait_s`` (at most
``batch_max`` messages), checks every message (:func:`cloud_ingest.verify.check_message`;
a refused one goes to quarantine with its reason, never stops the worker), stores the
batch in one transaction, and only then publishes each device's cumulative ``ack`` and
the new records on ``fleetstream/v1/{device_id}/{kind}`` (:mod:`cloud_ingest.fleetstream`).

A worker killed mid-batch loses nothing: the broker considers messages delivered once
the client has received them, but the vans delete records only on ingest's ``ack``,
which follows the commit, so they send the lost batch again (and the store ignores
whatever had been stored already). The normalized stream cannot count on that resend
(the resent copies are duplicates, announced by nobody), so the batch's transaction
also stores its stream messages in the store's outbox, leased to this worker: it
publishes them and deletes them once PUBACKed (with its next write, or after
``stream_sweep_s`` idle); every ``stream_sweep_s`` each worker also claims and
publishes messages whose lease ran out, those of a worker that died in between.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from cloud_ingest import fleetstream
from cloud_ingest.store.base import STREAM_LEASE_S, Device, Store, WriteBatch, WriteResult
from cloud_ingest.verify import (
    RECORD_TIMES,
    Accepted,
    RecordTimes,
    Rejected,
    StatusUpdate,
    check_message,
)
from firmware_agent.contract import schema
from firmware_agent.contract.backoff import Backoff
from firmware_agent.contract.envelope import encode_ack
from firmware_agent.contract.mqtt import TlsConfig, stay_connected, until_one_ends
from firmware_agent.contract.topics import downlink_topic, shared_subscriptions

log = logging.getLogger(__name__)

# A registered device's record is re-read this often: enabling or disabling a device
# through the API reaches every worker within this time.
DEVICE_CACHE_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "ingest-1"
    group: str = "ingest"
    batch_max: int = 500
    batch_wait_s: float = 0.02
    max_message_bytes: int = 256 * 1024
    # Record times taken as plausible against the receipt (others: implausible_time).
    record_times: RecordTimes = RECORD_TIMES
    # QoS 1 publishes (acks, normalized stream) on the wire awaiting PUBACK at once.
    max_inflight: int = 100
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # Mutual TLS to the broker (the same settings as a van's).
    tls: TlsConfig | None = None
    # A batch's stream messages are this worker's to publish for this long; after it any
    # worker's sweep (every stream_sweep_s) takes them over.
    stream_lease_s: float = STREAM_LEASE_S
    stream_sweep_s: float = 1.0
    # Batches in hand at once: one checked while the one before is being written.
    pipeline_batches: int = 2


@dataclass
class WorkerCounts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    connects: int = 0
    store_errors: int = 0
    stream_published: int = 0  # fleetstream messages PUBACKed
    stream_reclaimed: int = 0  # of which taken over from the outbox after their lease
    # Seqs devices released that the store did not hold (a restored database, a van's
    # outbox reset).
    lost: int = 0


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    received_at: datetime


def _utcnow() -> datetime:
    return datetime.now(UTC)


class IngestWorker:
    """``await worker.run()`` until cancelled. ``stored`` is set after each batch."""

    def __init__(
        self,
        store: Store,
        config: WorkerConfig | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.config = config or WorkerConfig()
        self._clock = clock
        self.counts = WorkerCounts()
        self.status: dict[str, StatusUpdate] = {}
        self.connected = asyncio.Event()
        self.stored = asyncio.Event()
        self._devices: dict[str, tuple[float, Device | None]] = {}
        # Outbox ids of stream messages published and PUBACKed, not deleted yet.
        self._streamed: list[int] = []
        self._last_write = time.monotonic()
        # A batch writes, then publishes, in turn: see process().
        self._write_turn = asyncio.Lock()
        self._publish_turn = asyncio.Lock()

    async def run(self) -> None:
        c = self.config
        tls = None if c.tls is None else await asyncio.to_thread(c.tls.context)
        await asyncio.to_thread(schema.prepare)

        async def connection(backoff: Backoff) -> None:
            async with aiomqtt.Client(
                c.host,
                c.port,
                identifier=c.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                max_inflight_messages=c.max_inflight,
                tls_context=tls,
                # A batch's acks and republished records are many small writes
                # awaiting PUBACKs: with Nagle's algorithm a burst waits for the
                # broker's delayed ACK (the broker needs set_tcp_nodelay true too).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ) as client:
                client.pending_calls_threshold = 10 * c.max_inflight
                self.counts.connects += 1
                for topic in shared_subscriptions(c.group):
                    await client.subscribe(topic, qos=1)
                self.connected.set()
                backoff.reset()
                log.info("ingest %s: consuming from %s:%d", c.client_id, c.host, c.port)
                await self._consume(client)

        def lost(err: aiomqtt.MqttError) -> None:
            self.connected.clear()
            log.warning("ingest %s: broker lost (%s); reconnecting", c.client_id, err)

        try:
            await stay_connected(connection, Backoff(c.backoff_initial_s, c.backoff_max_s), lost)
        except Exception:
            self.counts.store_errors += 1  # not the broker: the store (systemd restarts us)
            raise

    async def _consume(self, client: aiomqtt.Client) -> None:
        # One task only moves messages into our queue: cancelling a wait on aiomqtt's
        # iterator (a batch's deadline) can drop the message it was about to return,
        # while asyncio.Queue.get is safe to cancel.
        queue: asyncio.Queue[_Received] = asyncio.Queue()

        async def pump() -> None:
            async for message in client.messages:
                queue.put_nowait(self._received(message))

        await until_one_ends(
            {
                "ingest-receive": pump(),
                "ingest-store": self._batches(client, queue),
                "ingest-stream-sweep": self._sweep(client),
            }
        )

    async def _sweep(self, client: aiomqtt.Client) -> None:
        """Delete what was published while no batch came to do it; publish the outbox
        messages whose lease ran out (their worker died between commit and PUBACK)."""
        c = self.config
        while True:
            if self._streamed and time.monotonic() - self._last_write >= c.stream_sweep_s:
                ids, self._streamed = self._streamed, []
                await self.store.stream_done(ids)
            while claimed := await self.store.claim_stream(
                stream_lease_s=c.stream_lease_s, limit=c.batch_max
            ):
                log.info(
                    "ingest %s: publishing %d orphaned stream messages", c.client_id, len(claimed)
                )
                await self._publish_all(client, [(m.topic, m.payload) for m in claimed])
                self._streamed += (m.id for m in claimed)
                self.counts.stream_published += len(claimed)
                self.counts.stream_reclaimed += len(claimed)
            await asyncio.sleep(c.stream_sweep_s)

    async def _batches(self, client: aiomqtt.Client, queue: asyncio.Queue[_Received]) -> None:
        """Cut the queue into batches and process them, up to ``pipeline_batches`` at
        once: the next batch is checked on the loop while the last one's transaction
        runs in the store (a thread or the database server)."""
        c = self.config
        inflight: set[asyncio.Task[WriteResult]] = set()
        try:
            while True:
                batch = [await self._next(queue, inflight)]
                deadline = time.monotonic() + c.batch_wait_s
                while len(batch) < c.batch_max:
                    if queue.empty():
                        remaining_s = deadline - time.monotonic()
                        if remaining_s <= 0:
                            break
                        # asyncio.timeout, not wait_for, which on Python 3.11 can swallow
                        # a cancellation (CPython gh-86296). A get cut short loses
                        # nothing: the message stays queued.
                        try:
                            async with asyncio.timeout(remaining_s):
                                batch.append(await queue.get())
                        except TimeoutError:
                            break
                    else:
                        batch.append(queue.get_nowait())
                while len(inflight) >= max(1, c.pipeline_batches):
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    _reap(inflight)
                inflight.add(asyncio.create_task(self.process(client, batch), name="ingest-batch"))
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    @staticmethod
    async def _next(
        queue: asyncio.Queue[_Received], inflight: set[asyncio.Task[WriteResult]]
    ) -> _Received:
        """The next message; meanwhile a batch that failed raises here (a lost broker,
        a store error), not only when more traffic comes."""
        if not inflight:
            return await queue.get()
        get = asyncio.ensure_future(queue.get())
        try:
            while True:
                await asyncio.wait({get, *inflight}, return_when=asyncio.FIRST_COMPLETED)
                _reap(inflight)
                if get.done():
                    return get.result()
        finally:
            get.cancel()  # Queue.get gives nothing up when cancelled

    def _received(self, message: aiomqtt.Message) -> _Received:
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        elif not isinstance(payload, bytes | bytearray):
            payload = b""
        return _Received(str(message.topic), bytes(payload), self._clock())

    async def _device(self, device_id: str | None) -> Device | None:
        if device_id is None:
            return None
        now = time.monotonic()
        cached = self._devices.get(device_id)
        if cached is not None and now - cached[0] < DEVICE_CACHE_S:
            return cached[1]
        device = await self.store.get_device(device_id)
        self._devices[device_id] = (now, device)
        return device

    async def process(self, client: aiomqtt.Client, received: list[_Received]) -> WriteResult:
        """Check, store (one transaction), then ack and announce: one batch. Batches
        may be checked at once; they write one at a time and publish in write order."""
        items: list[Any] = []
        for r in received:
            self.counts.received += 1
            checked = check_message(
                r.topic,
                r.payload,
                received_at=r.received_at,
                device=await self._device(_topic_device(r.topic)),
                max_bytes=self.config.max_message_bytes,
                times=self.config.record_times,
            )
            if isinstance(checked, Rejected):
                items.append(
                    checked.quarantined(topic=r.topic, payload=r.payload, received_at=r.received_at)
                )
                continue
            assert isinstance(checked, Accepted)
            for item in checked.items:
                if isinstance(item, StatusUpdate):
                    _note_outbox_reset(self.status.get(item.device_id), item)
                    self.status[item.device_id] = item
                else:
                    items.append(item)
        async with self._write_turn:
            streamed, self._streamed = self._streamed, []
            batch = WriteBatch.of(items, streamed=streamed)
            try:
                result = (
                    await self.store.write(
                        batch,
                        stream_lease_s=self.config.stream_lease_s,
                        announce=fleetstream.messages,
                    )
                    if batch
                    else WriteResult()
                )
            except BaseException:
                self._streamed[:0] = streamed  # not deleted: say them again next time
                raise
            # Publishing goes in commit order (a later batch's acks are never sent
            # before an earlier one's: acks on the wire never go down): the publish
            # turn is taken before the next batch may write.
            await self._publish_turn.acquire()
        try:
            self._last_write = time.monotonic()
            self.counts.batches += 1
            self.counts.stored += (
                len(result.new_positions) + len(result.new_events) + len(result.new_pods)
            )
            self.counts.duplicates += result.duplicates
            for q in result.quarantined:
                self.counts.quarantined[q.reason] = self.counts.quarantined.get(q.reason, 0) + 1
                log.info("ingest: quarantined %s from %s: %s", q.reason, q.topic, q.detail)
            for x in result.lost:
                self.counts.lost += x.last_seq - x.first_seq + 1
                log.warning(
                    "ingest: %s released %s %d..%d, which the store does not hold (lost with "
                    "a dropped or restored database, or skipped by an outbox reset the van "
                    "reports); settled, listed as released",
                    x.device_id,
                    x.stream,
                    x.first_seq,
                    x.last_seq,
                )
            await self._publish(client, result)
        finally:
            self._publish_turn.release()
        self.stored.set()
        return result

    async def _publish(self, client: aiomqtt.Client, result: WriteResult) -> None:
        """Acks first (they free the vans' outboxes), then the batch's stream messages;
        all in flight at once (paho bounds what is on the wire), not one round trip each."""
        now = self._clock()
        acks = [
            (downlink_topic(device_id, "ack"), encode_ack(device_id, dict(acks), time=now))
            for device_id, acks in result.acks.items()
        ]
        await self._publish_all(client, acks)
        await self._publish_all(client, [(m.topic, m.payload) for m in result.stream])
        self._streamed += (m.id for m in result.stream)
        self.counts.stream_published += len(result.stream)

    async def _publish_all(self, client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
        """Publish at QoS 1 with at most ``max_inflight`` calls pending: aiomqtt lists
        every pending call at each publish, so a batch's thousands handed over at once
        cost quadratic time (and a warning per publish past its threshold)."""
        window = asyncio.Semaphore(self.config.max_inflight)

        async def one(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        await asyncio.gather(*(one(t, p) for t, p in messages))


def _reap(tasks: set[asyncio.Task[WriteResult]]) -> None:
    """Drop the finished tasks; raise what the first failed one raised."""
    for task in [t for t in tasks if t.done()]:
        tasks.discard(task)
        task.result()


def _topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[2] if len(parts) == 4 and parts[0] == "fleet" else None


def _note_outbox_reset(before: StatusUpdate | None, now: StatusUpdate) -> None:
    """Log a van's outbox numbering reset (its status health ``outbox_last_reset``: the
    van lost or rebuilt its outbox and numbers on above its high-water mark) the first
    time this worker sees it. The seqs it skipped reach the store as released by the
    van's sequence report, which this log line explains."""
    reset = now.health.get("outbox_last_reset")
    if not isinstance(reset, dict) or (
        before is not None and before.health.get("outbox_last_reset") == reset
    ):
        return
    log.warning(
        "ingest: %s reports an outbox reset at %s (%s): numbering %s -> %s; the seqs it "
        "skipped come released in its sequence report (never used, or lost with its file)",
        now.device_id,
        reset.get("at"),
        str(reset.get("reason"))[:200],
        reset.get("from"),
        reset.get("to"),
    )
