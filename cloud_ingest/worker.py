"""An ingest worker: MQTT in, checked and stored, then ack and the normalized stream out.

Workers subscribe with a shared subscription (``$share/ingest/fleet/v1/+/...``), so N
processes (or N clustered broker nodes' clients) split the vans' traffic with no code
change. Each worker gathers what arrives for up to ``batch_wait_s`` (at most
``batch_max`` messages), checks every message (:func:`cloud_ingest.verify.check_message`;
a refused one goes to quarantine with its reason, never stops the worker), stores the
batch in one transaction, and only then publishes each device's cumulative ``ack`` and
the new records on ``fleetstream/v1/{device_id}/{kind}``.

A worker killed mid-batch loses nothing: the broker considers messages delivered once
the client has received them, but the vans delete records only on ingest's ``ack``,
which follows the commit, so they send the lost batch again (and the store ignores
whatever had been stored already).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from cloud_ingest.store.base import (
    Device,
    Pod,
    Position,
    StopEvent,
    Store,
    WriteBatch,
    WriteResult,
)
from cloud_ingest.verify import Accepted, Rejected, StatusUpdate, check_message
from firmware_agent.backoff import Backoff
from firmware_agent.gnss.fix import format_utc
from firmware_agent.uplink.codec import encode_ack
from firmware_agent.uplink.mqtt import TlsConfig, stay_connected, until_one_ends
from firmware_agent.uplink.topics import downlink_topic, shared_subscriptions, stream_topic

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
    # QoS 1 publishes (acks, normalized stream) on the wire awaiting PUBACK at once.
    max_inflight: int = 100
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # Mutual TLS to the broker (the same settings as a van's).
    tls: TlsConfig | None = None


@dataclass
class WorkerCounts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    connects: int = 0
    store_errors: int = 0


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

    async def run(self) -> None:
        c = self.config
        tls = None if c.tls is None else await asyncio.to_thread(c.tls.context)

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
            {"ingest-receive": pump(), "ingest-store": self._batches(client, queue)}
        )

    async def _batches(self, client: aiomqtt.Client, queue: asyncio.Queue[_Received]) -> None:
        c = self.config
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + c.batch_wait_s
            while len(batch) < c.batch_max:
                if queue.empty():
                    remaining_s = deadline - time.monotonic()
                    if remaining_s <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining_s))
                    except TimeoutError:
                        break
                else:
                    batch.append(queue.get_nowait())
            await self.process(client, batch)

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
        """Check, store (one transaction), then ack and republish: one batch."""
        items: list[Any] = []
        for r in received:
            self.counts.received += 1
            checked = check_message(
                r.topic,
                r.payload,
                received_at=r.received_at,
                device=await self._device(_topic_device(r.topic)),
                max_bytes=self.config.max_message_bytes,
            )
            if isinstance(checked, Rejected):
                items.append(
                    checked.quarantined(topic=r.topic, payload=r.payload, received_at=r.received_at)
                )
                continue
            assert isinstance(checked, Accepted)
            for item in checked.items:
                if isinstance(item, StatusUpdate):
                    self.status[item.device_id] = item
                else:
                    items.append(item)
        batch = WriteBatch.of(items)
        result = await self.store.write(batch) if batch else WriteResult()
        self.counts.batches += 1
        self.counts.stored += (
            len(result.new_positions) + len(result.new_events) + len(result.new_pods)
        )
        self.counts.duplicates += result.duplicates
        for q in result.quarantined:
            self.counts.quarantined[q.reason] = self.counts.quarantined.get(q.reason, 0) + 1
            log.info("ingest: quarantined %s from %s: %s", q.reason, q.topic, q.detail)
        await self._publish(client, result)
        self.stored.set()
        return result

    async def _publish(self, client: aiomqtt.Client, result: WriteResult) -> None:
        """Acks first (they free the vans' outboxes), then the normalized stream; all
        in flight at once (paho bounds what is on the wire), not one round trip each."""
        now = self._clock()
        acks = [
            (downlink_topic(device_id, "ack"), encode_ack(device_id, dict(acks), time=now))
            for device_id, acks in result.acks.items()
        ]
        await self._publish_all(client, acks)
        out = [(stream_topic(p.device_id, "position"), _position(p)) for p in result.new_positions]
        out += [(stream_topic(e.device_id, "event"), _event(e)) for e in result.new_events]
        out += [
            (stream_topic(pod.device_id, "pod"), _pod(pod))
            # A POD relinked by this write (pending -> ok) is said again with its new
            # status: on the stream, the last message per (device_id, seq) wins.
            for pod in (*result.new_pods, *result.relinked)
            if pod.chain_status != "broken"
        ]
        await self._publish_all(client, out)

    async def _publish_all(self, client: aiomqtt.Client, messages: list[tuple[str, bytes]]) -> None:
        """Publish at QoS 1 with at most ``max_inflight`` calls pending: aiomqtt lists
        every pending call at each publish, so a batch's thousands handed over at once
        cost quadratic time (and a warning per publish past its threshold)."""
        window = asyncio.Semaphore(self.config.max_inflight)

        async def one(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        await asyncio.gather(*(one(t, p) for t, p in messages))


def _topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[2] if len(parts) == 4 and parts[0] == "fleet" else None


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _position(p: Position) -> bytes:
    return _dumps(
        {
            "device_id": p.device_id,
            "seq": p.seq,
            "time": format_utc(p.time),
            "lat": p.lat,
            "lon": p.lon,
            "speed_mps": p.speed_mps,
            "course_deg": p.course_deg,
            "hdop": p.hdop,
            "historical": p.historical,
        }
    )


def _event(e: StopEvent) -> bytes:
    return _dumps({**e.record, "device_id": e.device_id, "seq": e.seq, "historical": e.historical})


def _pod(pod: Pod) -> bytes:
    return _dumps(
        {
            "device_id": pod.device_id,
            "seq": pod.seq,
            "historical": pod.historical,
            "parcel": pod.parcel,
            "stop_id": pod.stop_id,
            "time": format_utc(pod.time),
            "verdict": pod.verdict,
            "jws": pod.jws,
            "verified": True,
            "chain": pod.chain_status,
        }
    )
