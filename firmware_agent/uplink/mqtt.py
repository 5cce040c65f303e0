"""The MQTT uplink: drains the outbox to the broker and applies ingest's acks.

One :class:`Uplink` per van. :meth:`Uplink.run` connects (MQTT 5, optional mutual
TLS), announces the van online (retained ``status``; the last will, with a will delay,
says offline), subscribes to its downlink topics, and then, until the connection
fails, sends what the outbox holds: PODs first, then events, then telemetry in
delta-encoded batches. A record leaves the outbox only when ingest's cumulative
``ack`` covers it, never on the broker's PUBACK: a broker that loses its queue must
not lose our data. After a reconnect, or when no ack has come for
``resend_after_s`` (``reconnect_resend_s`` after a reconnect: ingest may have come back
after the van did), everything unacknowledged is sent again; ingest stores
idempotently on (device, stream, seq), so a repeat costs bytes, not correctness.
Reconnects back off exponentially with jitter, capped.

Events go in deflated batches (:mod:`firmware_agent.contract.eventbatch`), sent when
:func:`~firmware_agent.uplink.batching.events_due` says so: at once when one holds an
arrival or another record dispatch must see now, else at ``events_batch_max_records``
records or once the first is ``events_batch_max_age_s`` old. Each record keeps its own
seq and ack, as when it went alone (``events_batch_max_records`` 1).

An ack is applied only when it makes sense (docs/ingest.md, "Acks"):

- one *above what this van has sent* (a record it never published cannot be stored) is
  refused, counted (``acks_unsent``) and logged, and everything unacknowledged is sent
  again: ingest's record of this van is wrong, and the van deletes nothing on it;
- one *below what the van has applied* means ingest lost records it had acknowledged
  (its database dropped, or restored from an older backup): counted (``acks_behind``)
  and logged, and the van sends its signed sequence report again
  (:mod:`firmware_agent.contract.seqreport`, in the ``status``) so that ingest settles
  what is lost instead of waiting for it for ever. The report also goes with every
  ``status`` (each connect).

The retained ``status`` goes out at each connect, on :meth:`Uplink.announce` and at
least every ``status_every_s``; to the health the agent gives it adds the outbox's
depth: ``outbox_pending`` (per stream, records waiting for an ack),
``outbox_oldest_unacked_s`` (per stream, seconds since the oldest of them was committed,
None when none waits) and ``outbox_oldest_unacked_max_s`` (the largest, 0 when drained).

A telemetry batch whose range holds seqs it does not carry (the outbox thinned them) is
signed with the device key: ingest settles seqs a batch does not carry only on the
van's signature.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_agent.contract.backoff import Backoff
from firmware_agent.contract.envelope import decode_ack, encode_status, frame_record
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.eventbatch import frame_events
from firmware_agent.contract.mqtt import TlsConfig, stay_connected, until_one_ends
from firmware_agent.contract.seqreport import SeqReport, sign_report
from firmware_agent.contract.telemetry import frame_batch, is_historical
from firmware_agent.contract.topics import (
    STREAMS,
    Stream,
    downlink_topic,
    status_topic,
    uplink_topic,
)
from firmware_agent.faults import FaultCounter, log_first_seen
from firmware_agent.uplink.batching import events_due, fitting, record_type
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
    # Events go in batches (firmware_agent.uplink.batching): at this many records, once
    # the first is this old, or at once for a record that is not deferrable; 1: each
    # record alone in its JSON envelope (what an ingest older than event batches reads).
    events_batch_max_records: int = 32
    # Under HISTORICAL_AFTER_S (60 s): a record waiting for its batch is not historical.
    events_batch_max_age_s: float = 45.0
    resend_after_s: float = 30.0
    # After a (re)connect the first resend comes sooner: what the van sent again on
    # connecting is lost if ingest had not subscribed again yet (a broker restarted:
    # both reconnect at once, and a shared subscription holds nothing for a worker
    # that is away).
    reconnect_resend_s: float = 5.0
    # While ingest's acks stay below what the van applied, the sequence report goes out
    # again at most this often (the first at once).
    report_interval_s: float = 5.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    # The retained status (with fresh health: outbox depth, oldest unacknowledged
    # record) goes out again at least this often while connected, not only on changes.
    status_every_s: float = 60.0


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
    acks_behind: int = 0  # an ack below what the van applied: ingest lost records
    acks_unsent: int = 0  # an ack above what the van sent: refused
    seq_reports: int = 0  # statuses sent with the signed sequence report
    signed_batches: int = 0  # telemetry batches covering seqs they do not carry
    event_batches: int = 0  # events batches (firmware_agent.contract.eventbatch)
    events_sent: int = 0  # events records sent, batched or alone (repeats included)
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
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        """``key``: the device key (the PODs' key), which signs the sequence report and
        the telemetry batches that cover thinned seqs; without one neither is sent, and
        ingest never settles seqs the van's batches do not carry."""
        self.config = config
        self.outbox = outbox
        self._key = key
        self._on_downlink = on_downlink
        self._status_due = asyncio.Event()
        self._health = health
        self._clock = clock
        self.counts = UplinkCounts()
        self.faults = FaultCounter()
        self.connected = asyncio.Event()
        # When ingest last acknowledged (any ack for this van, one that moves nothing
        # included): the service status and `fleet-agent doctor` report its age.
        self.last_ack_at: datetime | None = None
        self._acked: dict[str, int] = dict.fromkeys(SEND_ORDER, 0)
        self._sent: dict[str, int] = dict.fromkeys(SEND_ORDER, 0)
        # The highest seq each stream has had in a message published by this process
        # (from the outbox's ack at the first connect): no honest ack goes above it.
        self._sent_max: dict[str, int] | None = None
        self._rewound_s = -float("inf")
        self._reported_s = -float("inf")
        # Per stream, when what it has in flight is sent again if no ack moved it on.
        self._resend_due: dict[str, float] = dict.fromkeys(SEND_ORDER, float("inf"))
        self._connect_sends: set[str] = set()
        self._flush = False

    def _fault(self, kind: str, message: str) -> None:
        """Count a fault; log its kind the first time only (a flapping link, a hostile
        downlink publisher must not fill the SD card)."""
        self.faults.add(kind, message)
        log_first_seen(log, self.faults, "uplink")

    # -- public ------------------------------------------------------------------

    def flush(self) -> None:
        """Send partial telemetry and events batches now (end of day, shutdown, tests)."""
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
        if self._sent_max is None:
            self._sent_max = dict(self._acked)
        due = time.monotonic() + min(self.config.reconnect_resend_s, self.config.resend_after_s)
        self._resend_due = dict.fromkeys(SEND_ORDER, due)
        self._connect_sends = set(SEND_ORDER)
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.status_every_s):
                    await self._status_due.wait()
            self._status_due.clear()
            await self._publish_status(client)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        device = self.config.device_id
        health = dict(self._health()) if self._health is not None else {}
        health["acks_behind"] = self.counts.acks_behind
        health["acks_unsent"] = self.counts.acks_unsent
        now = self._clock()
        health.update(await self._outbox_depth(now))
        seqs = await self._seq_report(now)
        await client.publish(
            status_topic(device),
            encode_status(device, "online", time=now, health=health, seqs=seqs),
            qos=1,
            retain=True,
        )
        if seqs is not None:
            self.counts.seq_reports += 1

    async def _outbox_depth(self, now: datetime) -> dict[str, Any]:
        """What waits for ingest's ack, per stream: ``outbox_pending`` (records) and
        ``outbox_oldest_unacked_s`` (the age of the oldest, seconds since it was
        committed; null when none waits), and ``outbox_oldest_unacked_max_s``, the
        largest of those (0 when the van has drained)."""
        pending = await self.outbox.counts()
        oldest: dict[str, float | None] = {}
        for stream in STREAMS:
            first = await self.outbox.pending(stream, limit=1) if pending[stream] else []
            age_s = (now - first[0].created).total_seconds() if first else None
            oldest[stream] = None if age_s is None else round(max(0.0, age_s), 1)
        return {
            "outbox_pending": dict(pending),
            "outbox_oldest_unacked_s": oldest,
            "outbox_oldest_unacked_max_s": max((a for a in oldest.values() if a), default=0.0),
        }

    async def _seq_report(self, now: datetime) -> str | None:
        """The signed sequence report (what the outbox has applied and handed out), or
        ``None`` without a device key."""
        if self._key is None:
            return None
        acked: dict[Stream, int] = {}
        last: dict[Stream, int] = {}
        for stream in STREAMS:
            acked[stream] = await self.outbox.acked(stream)
            last[stream] = await self.outbox.last_seq(stream)
        report = SeqReport(device_id=self.config.device_id, time=now, acked=acked, last=last)
        return sign_report(report, self._key)

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
        self.last_ack_at = self._clock()
        for stream, seq in ack.acks.items():
            if stream not in self._acked or seq == self._acked[stream]:
                continue
            if seq < self._acked[stream]:
                self._ack_behind(stream, seq)
                continue
            sent = self._sent_max[stream] if self._sent_max is not None else 0
            if seq > sent:
                self._ack_unsent(stream, seq, sent)
                continue
            # The outbox ignores (and counts) an ack beyond what it ever assigned.
            self.counts.acked_records += await self.outbox.ack(stream, seq)
            self._acked[stream] = await self.outbox.acked(stream)
            self._resend_due[stream] = time.monotonic() + self.config.resend_after_s

    def _ack_behind(self, stream: str, seq: int) -> None:
        """Ingest acks less than it did: it lost records (a restored database), or an
        old ack came late. Send the signed sequence report, at most every
        ``report_interval_s``, so that ingest settles what it lost; and everything not
        acknowledged again (what ingest had not acknowledged when it went may be gone
        too, and what was sent while it was away was not delivered)."""
        self.counts.acks_behind += 1
        self._fault(
            "ack-behind",
            f"ingest acks {stream} {seq}, below the {self._acked[stream]} applied: "
            "ingest lost records; sending the sequence report",
        )
        now = time.monotonic()
        if self._key is not None and now - self._reported_s >= self.config.report_interval_s:
            self._reported_s = now
            self.announce()
        self._rewind()

    def _ack_unsent(self, stream: str, seq: int, sent: int) -> None:
        """Ingest acks seqs this van never sent: refuse it, and send everything not
        acknowledged again (at most every ``resend_after_s``), so that ingest holds it
        for real before an ack can delete it."""
        self.counts.acks_unsent += 1
        self._fault(
            "ack-unsent",
            f"ingest acks {stream} {seq}, beyond the {sent} this run has sent: refused, "
            "nothing deleted; sending everything unacknowledged again (an ack queued "
            "for the run before a restart looks the same, and is harmless)",
        )
        self._rewind()

    def _rewind(self) -> None:
        """Send everything not acknowledged again, at most every ``resend_after_s``
        (as after a reconnect; the first time at once)."""
        now = time.monotonic()
        if now - self._rewound_s >= self.config.resend_after_s:
            self._rewound_s = now
            self.counts.resends += 1
            for s in SEND_ORDER:
                self._sent[s] = self._acked[s]
                self._resend_due[s] = now + self.config.resend_after_s
            self.outbox.changed.set()

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
        """Send again what a stream has in flight once no ack has moved it on for
        ``resend_after_s`` (``reconnect_resend_s`` after a connect). Per stream: acks
        moving another stream on say nothing about this one's lost messages."""
        now = time.monotonic()
        late = [
            s for s in SEND_ORDER if self._sent[s] > self._acked[s] and now >= self._resend_due[s]
        ]
        if late:
            self.counts.resends += 1
            log.info("uplink: no ack moved %s on in time, sending again", ", ".join(late))
            for s in late:
                self._sent[s] = self._acked[s]
                self._resend_due[s] = now + self.config.resend_after_s

    async def _send_stream(
        self,
        client: aiomqtt.Client,
        stream: str,
        window: asyncio.Semaphore,
        publishes: asyncio.TaskGroup,
    ) -> bool:
        c = self.config
        device = c.device_id
        batching = stream == "events" and c.events_batch_max_records > 1
        if stream == "telemetry":
            limit = c.batch_max_fixes
        else:
            limit = c.events_batch_max_records if batching else c.window
        records = await self.outbox.pending(stream, after_seq=self._sent[stream], limit=limit)
        if not records:
            return False
        now = self._clock()
        topic = uplink_topic(device, stream)
        if stream == "telemetry":
            age_s = (now - records[0].created).total_seconds()
            if len(records) < c.batch_max_fixes and age_s < c.batch_max_age_s and not self._flush:
                return False
        if batching:
            records = records[: fitting([len(r.payload) for r in records])]
        if batching and not events_due(
            [(record_type(r.payload), r.created) for r in records],
            now,
            max_records=c.events_batch_max_records,
            max_age_s=c.events_batch_max_age_s,
            flush=self._flush,
        ):
            return False
        if self._sent_max is not None:
            # Before publishing: ingest may ack the first before the last is handed over.
            self._sent_max[stream] = max(self._sent_max[stream], records[-1].seq)
        if stream == "telemetry":
            first_seq = self._sent[stream] + 1
            # Seqs in the range without a fix were thinned away: only the van's
            # signature makes ingest settle them.
            thinned = records[-1].seq - first_seq + 1 > len(records)
            sign = self._key.sign if thinned and self._key is not None else None
            payload = frame_batch(
                device,
                first_seq,
                [(r.seq, r.payload) for r in records],
                historical=is_historical(records[0].created, now),
                sign=sign,
            )
            self.counts.fixes_sent += len(records)
            self.counts.signed_batches += sign is not None
            await self._publish(client, topic, payload, window, publishes, stream)
        elif batching:
            payload = frame_events(
                device,
                [(r.seq, is_historical(r.created, now), r.payload) for r in records],
                sent_at=now,
            )
            self.counts.event_batches += 1
            self.counts.events_sent += len(records)
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
                self.counts.events_sent += stream == "events"
                await self._publish(client, topic, payload, window, publishes, stream)
        if self._sent[stream] <= self._acked[stream]:
            # Nothing in flight: the wait for an ack starts now (the first send of a
            # connection, while it lasts, keeps the shorter wait the connect set).
            mono = time.monotonic()
            if stream not in self._connect_sends or self._resend_due[stream] <= mono:
                self._resend_due[stream] = mono + c.resend_after_s
            self._connect_sends.discard(stream)
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
