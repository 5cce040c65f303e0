"""The MQTT uplink: drains the outbox to the broker and applies ingest's acks.

One :class:`Uplink` per van. :meth:`Uplink.run` connects (MQTT 5, optional mutual
TLS), announces the van online (retained ``status``; the last will, with a will delay,
says offline), subscribes to its downlink topics, and then, until the connection
fails, sends what the outbox holds: PODs first, then events, then telemetry in
delta-encoded batches. A record leaves the outbox only when ingest's cumulative
``ack`` covers it, never on the broker's PUBACK: a broker that loses its queue must
not lose our data. After a reconnect, or when no ack has come for
``resend_after_s``, everything unacknowledged is sent again; ingest stores
idempotently on (device, stream, seq), so a repeat costs bytes, not correctness.
Reconnects back off exponentially with jitter, capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_agent.contract.backoff import Backoff
from firmware_agent.contract.envelope import decode_ack, encode_status, frame_record
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.mqtt import TlsConfig, stay_connected, until_one_ends
from firmware_agent.contract.telemetry import frame_batch, is_historical
from firmware_agent.contract.topics import downlink_topic, status_topic, uplink_topic
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.uplink.queue import AsyncOutbox

log = logging.getLogger(__name__)

# Send order: a POD is what a dispute needs, events drive the dispatcher's screen,
# telemetry is the bulk.
SEND_ORDER = ("pod", "events", "telemetry")
DOWNLINK = ("ack", "manifest", "config", "model")

Downlink = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    device_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    tls: TlsConfig | None = None
    keepalive_s: int = 30
    # The broker publishes the will (offline) only if the van stays away this long: a
    # cellular hand-over does not flap the van offline on the dispatcher's screen.
    will_delay_s: int = 60
    # The broker keeps the session (subscriptions, queued acks) this long offline.
    session_expiry_s: int = 24 * 3600
    # Messages published and not yet PUBACKed: bounds memory and the burst after an
    # outage, while keeping the link busy on a high-latency cellular path.
    window: int = 32
    batch_max_fixes: int = 60
    # A partial telemetry batch goes out once its oldest fix is this old.
    batch_max_age_s: float = 30.0
    resend_after_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0


@dataclass
class UplinkCounts:
    connects: int = 0
    disconnects: int = 0
    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEND_ORDER, 0))
    payload_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEND_ORDER, 0))
    fixes_sent: int = 0
    acked_records: int = 0
    resends: int = 0
    bad_acks: int = 0
    downlink: int = 0
    downlink_errors: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Uplink:
    """Sends the outbox over MQTT; ``await uplink.run()`` until cancelled."""

    def __init__(
        self,
        config: UplinkConfig,
        outbox: AsyncOutbox,
        *,
        on_downlink: Downlink | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self._on_downlink = on_downlink
        self._status_due = asyncio.Event()
        self._health = health
        self._clock = clock
        self.counts = UplinkCounts()
        self.faults = FaultCounter()
        self.connected = asyncio.Event()
        self._acked: dict[str, int] = dict.fromkeys(SEND_ORDER, 0)
        self._sent: dict[str, int] = dict.fromkeys(SEND_ORDER, 0)
        self._ack_progress_s = time.monotonic()
        self._flush = False

    def _fault(self, kind: str, message: str) -> None:
        """Count a fault; log its kind the first time only (a flapping link, a hostile
        downlink publisher must not fill the SD card)."""
        self.faults.add(kind, message)
        log_first_seen(log, self.faults, "uplink")

    # -- public ------------------------------------------------------------------

    def flush(self) -> None:
        """Send partial telemetry batches now (end of day, shutdown, tests)."""
        self._flush = True
        self.outbox.changed.set()

    async def drained(self) -> None:
        """Return once every record committed so far has been acknowledged by ingest."""
        target = {s: await self.outbox.last_seq(s) for s in SEND_ORDER}
        self.flush()
        while any(self._acked[s] < target[s] for s in SEND_ORDER):
            for s in SEND_ORDER:
                self._acked[s] = max(self._acked[s], await self.outbox.acked(s))
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """Connect, send, reconnect; forever (cancel to stop)."""
        c = self.config
        tls = None if c.tls is None else await asyncio.to_thread(c.tls.context)

        async def connection(backoff: Backoff) -> None:
            async with self._client(tls) as client:
                # The window bounds our publishes; aiomqtt would warn past 10.
                client.pending_calls_threshold = 2 * c.window
                self.counts.connects += 1
                backoff.reset()
                await self._session(client)

        def lost(err: aiomqtt.MqttError) -> None:
            self.connected.clear()
            self.counts.disconnects += 1
            self._fault("broker", f"MQTT connection to {c.host}:{c.port}: {err}")

        await stay_connected(connection, Backoff(c.backoff_initial_s, c.backoff_max_s), lost)

    # -- connection --------------------------------------------------------------

    def _client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        c = self.config
        will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
        will_props.WillDelayInterval = c.will_delay_s
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = c.session_expiry_s
        return aiomqtt.Client(
            c.host,
            c.port,
            identifier=c.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_props,
            keepalive=c.keepalive_s,
            timeout=c.connect_timeout_s,
            tls_context=tls,
            max_inflight_messages=c.window,
            will=aiomqtt.Will(
                status_topic(c.device_id),
                encode_status(c.device_id, "offline"),
                qos=1,
                retain=True,
                properties=will_props,
            ),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        device = self.config.device_id
        for stream in SEND_ORDER:
            self._acked[stream] = await self.outbox.acked(stream)
            self._sent[stream] = self._acked[stream]  # resend whatever was not acked
        for kind in DOWNLINK:
            await client.subscribe(downlink_topic(device, kind), qos=1)
        self._status_due.clear()
        await self._publish_status(client)
        self.connected.set()
        log.info("uplink: connected to %s:%d as %s", self.config.host, self.config.port, device)
        await until_one_ends(
            {
                "uplink-downlink": self._receive(client),
                "uplink-send": self._send(client),
                "uplink-status": self._status(client),
            }
        )

    def announce(self) -> None:
        """Publish the retained ``status`` again, with fresh health, as soon as connected
        (after a change a dispatcher should see, such as a new config revision)."""
        self._status_due.set()

    async def _status(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            await self._publish_status(client)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        device = self.config.device_id
        health = dict(self._health()) if self._health is not None else None
        await client.publish(
            status_topic(device),
            encode_status(device, "online", time=self._clock(), health=health),
            qos=1,
            retain=True,
        )

    # -- downlink ----------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            kind = str(message.topic).rsplit("/", 1)[-1]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if kind == "ack":
                await self._apply_ack(payload)
                continue
            self.counts.downlink += 1
            if self._on_downlink is None:
                continue
            try:
                await self._on_downlink(kind, payload)
            except Exception as err:
                self.counts.downlink_errors += 1
                self._fault(f"downlink-{kind}", f"downlink {kind} refused: {err}")

    async def _apply_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except CodecError as err:
            self.counts.bad_acks += 1
            self._fault("ack", f"unreadable ack: {err}")
            return
        if ack.device_id != self.config.device_id:
            self.counts.bad_acks += 1
            self._fault("ack", f"ack for another device {ack.device_id!r}")
            return
        for stream, seq in ack.acks.items():
            if stream not in self._acked or seq <= self._acked[stream]:
                continue
            # The outbox ignores (and counts) an ack beyond what it ever assigned.
            self.counts.acked_records += await self.outbox.ack(stream, seq)
            self._acked[stream] = await self.outbox.acked(stream)
            self._ack_progress_s = time.monotonic()

    # -- sending -----------------------------------------------------------------

    async def _send(self, client: aiomqtt.Client) -> None:
        window = asyncio.Semaphore(self.config.window)
        async with asyncio.TaskGroup() as publishes:
            while True:
                self.outbox.changed.clear()
                self._maybe_resend()
                sent_any = False
                for stream in SEND_ORDER:
                    sent_any |= await self._send_stream(client, stream, window, publishes)
                if not sent_any:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
                    # cancellation that lands as the event fires (CPython gh-86296), and
                    # this loop then never ends: the agent hung on shutdown.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.outbox.changed.wait()

    def _maybe_resend(self) -> None:
        unacked = any(self._sent[s] > self._acked[s] for s in SEND_ORDER)
        if unacked and time.monotonic() - self._ack_progress_s > self.config.resend_after_s:
            self.counts.resends += 1
            log.info("uplink: no ack for %.0f s, sending again", self.config.resend_after_s)
            for s in SEND_ORDER:
                self._sent[s] = self._acked[s]
            self._ack_progress_s = time.monotonic()

    async def _send_stream(
        self,
        client: aiomqtt.Client,
        stream: str,
        window: asyncio.Semaphore,
        publishes: asyncio.TaskGroup,
    ) -> bool:
        c = self.config
        device = c.device_id
        limit = c.batch_max_fixes if stream == "telemetry" else c.window
        records = await self.outbox.pending(stream, after_seq=self._sent[stream], limit=limit)
        if not records:
            return False
        now = self._clock()
        topic = uplink_topic(device, stream)
        if stream == "telemetry":
            age_s = (now - records[0].created).total_seconds()
            if len(records) < c.batch_max_fixes and age_s < c.batch_max_age_s and not self._flush:
                return False
            payload = frame_batch(
                device,
                self._sent[stream] + 1,
                [(r.seq, r.payload) for r in records],
                historical=is_historical(records[0].created, now),
            )
            self.counts.fixes_sent += len(records)
            await self._publish(client, topic, payload, window, publishes, stream)
        else:
            for r in records:
                payload = frame_record(
                    device,
                    stream,
                    r.seq,
                    r.payload,
                    historical=is_historical(r.created, now),
                    sent_at=now,
                )
                await self._publish(client, topic, payload, window, publishes, stream)
        self._sent[stream] = records[-1].seq
        return True

    async def _publish(  # noqa: PLR0917 (private)
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        window: asyncio.Semaphore,
        publishes: asyncio.TaskGroup,
        stream: str,
    ) -> None:
        await window.acquire()
        self.counts.payload_bytes[stream] += len(payload)

        async def publish() -> None:
            try:
                await client.publish(topic, payload, qos=1)
                self.counts.published[stream] += 1
            finally:
                window.release()

        publishes.create_task(publish(), name=f"publish-{stream}")
