"""The shipped broker configuration (docs/mosquitto/fleet.conf, fleet.acl and
fleet-services.acl) in a real Mosquitto: mutual TLS with the certificate's CN as
username, and ACLs under which a van can neither publish as another van nor read
another van's downlink. Two listeners: the vans' (client id forced to the CN, so no van
can push another off) and the services' (its own ACL and client ids: ingest workers
share a CN).

The broker of each test loads fleet.conf itself, its listeners and file paths pointed
at the test's ports, certificates, the repository's ACLs and the share guard plugin
built from its source (:mod:`simulator.fleet_broker`).

What Mosquitto 2.0.11 does with a refusal (MQTT 5), as these tests assert:

- an unauthorized QoS 1 PUBLISH is answered with PUBACK 0x87 (Not authorized) and
  dropped;
- a SUBSCRIBE is always granted (SUBACK 0x01) by acl_file, which does not judge
  subscriptions: it checks "read" on each message before delivering it (retained ones
  included), so a forbidden subscription is granted and stays silent;
- except a shared one ($share/...) on the vans' listener: the share guard refuses it
  (SUBACK 0x87, 0x80 for MQTT 3.1.1). Without the guard a van joins ingest's group,
  is dealt its turn of the messages and drops them at its read check (shown here);
- a last will on a topic the van may not write is dropped, silently, when it falls due.

"Never receives" is proved with a sentinel: a message the subscriber may read,
published after the forbidden one was answered. Mosquitto handles one message at a
time and queues a subscriber's messages in order, so had the forbidden one been
delivered it would have arrived before the sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from firmware_agent.contract.envelope import encode_ack
from firmware_agent.contract.manifest import (
    MAX_ROUTE_VERTICES,
    MAX_STOPS,
    encode_manifest_payload,
    loads_manifest,
    parse_manifest,
)
from firmware_agent.contract.mqtt import TlsConfig
from firmware_agent.contract.topics import (
    DOWNLINK_KINDS,
    STREAMS,
    downlink_topic,
    shared_subscriptions,
    status_topic,
    stream_topic,
    uplink_topic,
)
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.queue import AsyncOutbox
from simulator.demo import MONITOR, MONITOR_ACL
from simulator.fleet_broker import (
    FLEET_SERVICES_ACL,
    BrokerTls,
    FleetPorts,
    build_share_guard,
    fleet_mosquitto,
)
from tests.bigday import day_doc
from tests.pki import issue, write_crl, write_pair

VAN, OTHER_VAN, THIRD_VAN = "van-1", "van-2", "van-3"
ROLES = ("ingest", "backend", "dispatcher")

SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10  # accepted (and retained, if so flagged); nobody to tell
GRANTED_QOS1 = 0x01
NOT_AUTHORIZED = 0x87
FAILURE_MQTT311 = 0x80  # SUBACK "Failure", MQTT 3.1.1's only refusal
TIMEOUT_S = 5.0

# The largest payload ingest accepts (WorkerConfig.max_message_bytes).
MAX_MESSAGE_BYTES = 256 * 1024


# -- certificates (tests/pki.py) ------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the broker's certificate (for 127.0.0.1), three vans', the three roles' and
    the demo's monitor's."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("fleet test CA", ca_key, None, ca=True)
    write_pair(d, "ca", ca, ca_key)
    write_crl(d / "crl.pem", (ca.subject, ca_key))
    key = ec.generate_private_key(ec.SECP256R1())
    write_pair(d, "broker", issue("127.0.0.1", key, (ca.subject, ca_key), san_ip=True), key)
    for cn in (VAN, OTHER_VAN, THIRD_VAN, *ROLES, MONITOR):
        key = ec.generate_private_key(ec.SECP256R1())
        write_pair(d, cn, issue(cn, key, (ca.subject, ca_key)), key)
    return d


# -- the shipped configuration ---------------------------------------------------------


Ports = FleetPorts


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The share guard plugin, built from docs/mosquitto/fleet_share_guard.c."""
    return build_share_guard(tmp_path_factory.mktemp("guard"))


def _tls(pki: Path) -> BrokerTls:
    return BrokerTls(
        ca=pki / "ca.pem", cert=pki / "broker.pem", key=pki / "broker.key", crl=pki / "crl.pem"
    )


@pytest.fixture
def broker(pki: Path, guard: Path, tmp_path: Path) -> Iterator[Ports]:
    """A Mosquitto running the shipped fleet.conf (:func:`fleet_mosquitto`: its listeners
    on free ports of 127.0.0.1, its files the test's certificates, the repository's ACLs
    and the guard built from its source); yields its two listeners' ports."""
    ports = FleetPorts.free()
    with fleet_mosquitto(tmp_path / "broker", _tls(pki), guard=guard, ports=ports):
        yield ports


# -- clients -------------------------------------------------------------------------


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Will(NamedTuple):
    topic: str
    payload: bytes


class Peer:
    """One MQTT 5 client over mutual TLS with ``cn``'s certificate (paho, its network
    loop in a thread; client id ``client_id``, else the CN, as the agent does).
    :meth:`publish` (QoS 1) returns the PUBACK's reason code, :meth:`subscribe` the
    SUBACK's; what arrives queues in :attr:`inbox`, the reason code of each time the
    broker disconnected it in :attr:`disconnects`."""

    def __init__(
        self,
        port: int,
        pki: Path,
        cn: str,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        self.cn = cn
        self.client_id = client_id or cn
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.disconnects: list[int] = []
        self._acks: dict[int, list[ReasonCode]] = {}
        self._connack: ReasonCode | None = None
        self._changed = threading.Condition()
        self._gone = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol
        )
        client.tls_set(
            ca_certs=str(pki / "ca.pem"),
            certfile=str(pki / f"{cn}.pem"),
            keyfile=str(pki / f"{cn}.key"),
        )
        if will is not None:
            client.will_set(will.topic, will.payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect("127.0.0.1", port)
        client.loop_start()
        with self._changed:
            assert self._changed.wait_for(lambda: self._connack is not None, TIMEOUT_S), (
                f"{cn}: no CONNACK"
            )
        assert self._connack == SUCCESS, f"{cn}: CONNACK {self._connack}"

    # paho's network thread

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._changed:
            self._connack = rc
            self._changed.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._changed:
            self._acks[mid] = [rc]
            self._changed.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._changed:
            self._acks[mid] = rcs
            self._changed.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.inbox.put(Message(message.topic, bytes(message.payload), message.retain))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._changed:
            if not self._gone:
                self.disconnects.append(rc.value)
            self._changed.notify_all()

    # the test's thread

    def _ack(self, mid: int) -> list[int]:
        with self._changed:
            assert self._changed.wait_for(lambda: mid in self._acks, TIMEOUT_S), (
                f"{self.cn}: no ack for mid {mid}"
            )
            return [rc.value for rc in self._acks.pop(mid)]

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        (rc,) = self._ack(self._client.publish(topic, payload, qos=1, retain=retain).mid)
        return rc

    def subscribe(self, topic: str) -> int:
        result, mid = self._client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        (rc,) = self._ack(mid)
        return rc

    def disconnected(self) -> list[int]:
        """Waits until the broker has disconnected this client; the reason codes paho
        reported. A client pushed off by another with its client id: Mosquitto 2.0.11
        closes the connection without the DISCONNECT 0x8E (Session taken over) reaching
        it, so paho reports 0x80 (a lost connection)."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.disconnects, TIMEOUT_S), (
                f"{self.cn}: still connected"
            )
            return list(self.disconnects)

    def receive(self) -> Message:
        try:
            return self.inbox.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"{self.cn}: nothing received") from None

    def until(self, sentinel: str) -> list[Message]:
        """Everything received before the first message on topic ``sentinel``."""
        before: list[Message] = []
        while (message := self.receive()).topic != sentinel:
            before.append(message)
        return before

    def power_gone(self) -> None:
        """Vanish without a DISCONNECT, as a van losing power: the broker sends the will."""
        self._gone = True
        self._client.loop_stop()
        sock = self._client.socket()
        assert sock is not None
        sock.close()

    def leave_with_will(self) -> None:
        """DISCONNECT with reason 0x04: the broker publishes the will as if the van died."""
        self._gone = True
        self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
        self._client.loop_stop()

    def close(self) -> None:
        if not self._gone:
            self._gone = True
            self._client.disconnect()
            self._client.loop_stop()


Connect = Callable[..., Peer]


@contextlib.contextmanager
def _peers(ports: Ports, pki: Path) -> Iterator[Connect]:
    """``connect(cn, client_id=None, will=None, port=None, protocol=MQTTv5)``: a
    connected :class:`Peer`, closed at the end; on the services' listener if ``cn`` is a
    role's, else on the vans' (``port``: another)."""
    peers: list[Peer] = []

    def make(
        cn: str,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        port: int | None = None,
        protocol: int = mqtt.MQTTv5,
    ) -> Peer:
        if port is None:
            port = ports.services if cn in ROLES else ports.vans
        peer = Peer(port, pki, cn, client_id=client_id, will=will, protocol=protocol)
        peers.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in peers:
            peer.close()


@pytest.fixture
def connect(broker: Ports, pki: Path) -> Iterator[Connect]:
    """:func:`_peers` on the shipped broker."""
    with _peers(broker, pki) as make:
        yield make


# -- tests ---------------------------------------------------------------------------


def test_a_van_publishes_its_uplink_to_ingest_via_the_shared_subscription(
    connect: Connect,
) -> None:
    ingest = connect("ingest")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    van = connect(VAN)
    sent = [uplink_topic(VAN, stream) for stream in STREAMS]
    for topic in sent:
        assert van.publish(topic, topic.encode()) == SUCCESS
    assert van.publish(status_topic(VAN), b"online", retain=True) == SUCCESS
    received = [ingest.receive() for _ in range(len(sent) + 1)]
    assert [(m.topic, m.payload) for m in received] == [
        *((t, t.encode()) for t in sent),
        (status_topic(VAN), b"online"),
    ]


def test_the_largest_payload_ingest_accepts_passes_the_broker(connect: Connect) -> None:
    ingest = connect("ingest")
    assert ingest.subscribe(shared_subscriptions("ingest")[0]) == GRANTED_QOS1
    van = connect(VAN)
    payload = bytes(MAX_MESSAGE_BYTES)
    assert van.publish(uplink_topic(VAN, "telemetry"), payload) == SUCCESS
    assert ingest.receive().payload == payload


def test_a_van_cannot_publish_as_another_van(connect: Connect) -> None:
    ingest = connect("ingest")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    van = connect(VAN)
    forged = [uplink_topic(OTHER_VAN, stream) for stream in STREAMS]
    for topic in forged:
        assert van.publish(topic) == NOT_AUTHORIZED, topic
    assert van.publish(status_topic(OTHER_VAN), b"offline", retain=True) == NOT_AUTHORIZED
    sentinel = uplink_topic(VAN, "telemetry")
    assert van.publish(sentinel) == SUCCESS
    assert ingest.until(sentinel) == []


def test_a_van_cannot_read_another_vans_downlink(connect: Connect) -> None:
    dispatcher, ingest = connect("dispatcher"), connect("ingest")
    # Retained before the van subscribes (delivered on subscribing) ...
    manifest = downlink_topic(OTHER_VAN, "manifest")
    assert dispatcher.publish(manifest, retain=True) == NO_MATCHING_SUBSCRIBERS
    van = connect(VAN)
    forbidden = [
        downlink_topic(OTHER_VAN, "ack"),
        downlink_topic(OTHER_VAN, "manifest"),
        "fleet/v1/+/manifest",
        "#",
    ]
    for subscription in forbidden:
        # Mosquitto 2.0 grants the subscription and withholds every message: a broker
        # that refuses it (0x87) is stricter still, and needs this assertion updated.
        assert van.subscribe(subscription) == GRANTED_QOS1, subscription
    # A shared subscription is refused outright (the share guard).
    assert van.subscribe(f"$share/vans/{downlink_topic(OTHER_VAN, 'ack')}") == NOT_AUTHORIZED
    own_manifest = downlink_topic(VAN, "manifest")
    assert van.subscribe(own_manifest) == GRANTED_QOS1
    # ... and live after.
    assert ingest.publish(downlink_topic(OTHER_VAN, "ack")) == SUCCESS
    assert dispatcher.publish(downlink_topic(OTHER_VAN, "manifest"), retain=True) == SUCCESS
    assert dispatcher.publish(downlink_topic(OTHER_VAN, "config"), retain=True) == SUCCESS
    assert dispatcher.publish(own_manifest, b"mine", retain=True) == SUCCESS
    # Its own manifest arrives once per matching subscription (its own, "+", "#").
    assert van.until(own_manifest) == []


def test_a_van_receives_its_own_retained_downlinks_from_the_dispatcher(
    connect: Connect,
) -> None:
    dispatcher = connect("dispatcher")
    for kind in ("manifest", "config", "model"):
        topic = downlink_topic(VAN, kind)
        assert dispatcher.publish(topic, kind.encode(), retain=True) == NO_MATCHING_SUBSCRIBERS
    van = connect(VAN)
    for kind in DOWNLINK_KINDS:
        assert van.subscribe(downlink_topic(VAN, kind)) == GRANTED_QOS1
    received = [van.receive() for _ in range(3)]
    assert received == [
        Message(downlink_topic(VAN, kind), kind.encode(), retain=True)
        for kind in ("manifest", "config", "model")
    ]


def test_a_2000_stop_manifest_and_the_documented_maximum_reach_the_van(
    connect: Connect,
) -> None:
    """Issue 13, finding 2: at a 256 KiB message_size_limit a 2,000-stop manifest never
    arrived (the dispatcher was cut off). As the publishing side makes them
    (encode_manifest_payload: plain JSON while it fits, gzip beyond), 2,000 stops and
    the schema's 10,000 with a 50,000-vertex route both reach the van retained."""
    dispatcher = connect("dispatcher")
    van = connect(VAN)
    topic = downlink_topic(VAN, "manifest")
    assert van.subscribe(topic) == GRANTED_QOS1
    for n_stops, n_vertices, form in [(2000, 5000, b"{"), (MAX_STOPS, MAX_ROUTE_VERTICES, b"\x1f")]:
        manifest = parse_manifest(day_doc(n_stops, n_vertices, device_id=VAN))
        payload = encode_manifest_payload(manifest)
        assert payload[:1] == form
        assert len(payload) > MAX_MESSAGE_BYTES  # over the old limit, both
        assert dispatcher.publish(topic, payload, retain=True) == SUCCESS
        received = van.receive()
        assert (received.topic, received.payload) == (topic, payload)
        assert loads_manifest(received.payload) == manifest
    assert dispatcher.disconnects == []


def test_a_van_cannot_publish_downlinks_nor_on_fleetstream(connect: Connect) -> None:
    backend, dispatcher = connect("backend"), connect("dispatcher")
    assert backend.subscribe("fleetstream/v1/#") == GRANTED_QOS1
    van = connect(VAN)
    own_downlinks = [downlink_topic(VAN, kind) for kind in DOWNLINK_KINDS]
    for topic in own_downlinks:
        assert van.subscribe(topic) == GRANTED_QOS1
    forbidden = [
        *own_downlinks,
        downlink_topic(OTHER_VAN, "manifest"),
        stream_topic(VAN, "position"),
        stream_topic(OTHER_VAN, "pod"),
    ]
    for topic in forbidden:
        assert van.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
    manifest = downlink_topic(VAN, "manifest")
    assert dispatcher.publish(manifest, b"real", retain=True) == SUCCESS
    assert van.until(manifest) == []
    ingest = connect("ingest")
    position = stream_topic(VAN, "position")
    assert ingest.publish(position) == SUCCESS
    assert backend.until(position) == []
    # Nothing forged was retained either: reconnected, the van gets only the real manifest.
    van.close()
    late = connect(VAN)
    for topic in own_downlinks:
        assert late.subscribe(topic) == GRANTED_QOS1
    assert late.receive() == Message(manifest, b"real", retain=True)
    assert late.inbox.empty()


def test_backend_reads_fleetstream_only(connect: Connect) -> None:
    backend = connect("backend")
    assert backend.subscribe("fleetstream/v1/#") == GRANTED_QOS1
    assert backend.subscribe("fleet/v1/#") == GRANTED_QOS1  # granted, and silent
    ingest, dispatcher, van = connect("ingest"), connect("dispatcher"), connect(VAN)
    assert van.publish(uplink_topic(VAN, "telemetry")) == SUCCESS
    assert van.publish(status_topic(VAN), b"online", retain=True) == SUCCESS
    assert dispatcher.publish(downlink_topic(VAN, "manifest"), retain=True) == SUCCESS
    assert ingest.publish(downlink_topic(VAN, "ack")) == SUCCESS
    assert backend.publish(stream_topic(VAN, "event"), b"forged") == NOT_AUTHORIZED
    assert backend.publish(downlink_topic(VAN, "manifest")) == NOT_AUTHORIZED
    position = stream_topic(VAN, "position")
    assert ingest.publish(position, b"normalized") == SUCCESS
    assert backend.until(position) == []


def test_the_dispatcher_cannot_publish_uplink_acks_nor_fleetstream(connect: Connect) -> None:
    ingest, backend = connect("ingest"), connect("backend")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    assert backend.subscribe("fleetstream/v1/#") == GRANTED_QOS1
    van = connect(VAN)
    assert van.subscribe(downlink_topic(VAN, "ack")) == GRANTED_QOS1
    dispatcher = connect("dispatcher")
    forbidden = [
        uplink_topic(VAN, "telemetry"),
        uplink_topic(VAN, "pod"),
        status_topic(VAN),
        downlink_topic(VAN, "ack"),
        stream_topic(VAN, "position"),
        # The %u patterns are in the vans' ACL only: the dispatcher is no van here.
        uplink_topic("dispatcher", "telemetry"),
    ]
    for topic in forbidden:
        assert dispatcher.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    sentinel = uplink_topic(VAN, "telemetry")
    assert van.publish(sentinel) == SUCCESS
    assert ingest.until(sentinel) == []
    ack = downlink_topic(VAN, "ack")
    assert ingest.publish(ack) == SUCCESS
    assert van.until(ack) == []
    position = stream_topic(VAN, "position")
    assert ingest.publish(position) == SUCCESS
    assert backend.until(position) == []


def test_a_vans_retained_status_and_last_will_land_and_a_forged_will_does_not(
    connect: Connect,
) -> None:
    status = status_topic(VAN)
    dispatcher = connect("dispatcher")
    assert dispatcher.subscribe("fleet/v1/+/status") == GRANTED_QOS1
    # van-2's will names van-1's status: accepted at CONNECT, dropped when due.
    forger = connect(OTHER_VAN, will=Will(status, b"forged offline"))
    van = connect(VAN, will=Will(status, b"offline"))
    assert van.publish(status, b"online", retain=True) == SUCCESS
    assert dispatcher.receive() == Message(status, b"online", retain=False)
    # The broker handles the forger's leaving well before the van's power cut (each
    # takes it microseconds), so a forged will it published would arrive first.
    forger.leave_with_will()
    time.sleep(0.2)
    van.power_gone()
    assert dispatcher.receive() == Message(status, b"offline", retain=False)
    assert dispatcher.inbox.empty()
    # And it stays, retained, for whoever looks later.
    dispatcher.close()
    later = connect("dispatcher")
    assert later.subscribe("fleet/v1/+/status") == GRANTED_QOS1
    assert later.receive() == Message(status, b"offline", retain=True)
    assert later.inbox.empty()


# -- the two listeners ---------------------------------------------------------------


def test_a_van_cannot_push_another_van_off_by_taking_its_client_id(connect: Connect) -> None:
    victim = connect(OTHER_VAN)
    van = connect(VAN)
    impostor = connect(VAN, client_id=OTHER_VAN)
    # The broker named the impostor after its certificate, "van-1", not "van-2": the
    # connection it pushed off is van-1's own earlier one ...
    assert van.disconnected()
    van.close()  # before paho reconnects it and it pushes the impostor off in turn
    # ... and van-2 is still on its first connection. A round trip on it proves it: the
    # broker closes a pushed-off connection before it answers the new CONNECT, so paho
    # would have seen van-2's closed before this PUBACK (sent again after reconnecting).
    assert victim.publish(status_topic(OTHER_VAN), b"on", retain=True) == NO_MATCHING_SUBSCRIBERS
    assert victim.disconnects == []
    # The impostor holds van-1's rights, no more.
    assert impostor.publish(uplink_topic(OTHER_VAN, "telemetry")) == NOT_AUTHORIZED
    assert impostor.publish(uplink_topic(VAN, "telemetry")) == NO_MATCHING_SUBSCRIBERS
    assert impostor.disconnects == []


def test_ingest_workers_sharing_the_cn_keep_their_own_client_ids(connect: Connect) -> None:
    workers = [connect("ingest", client_id=f"ingest-{i}") for i in (1, 2)]
    for worker in workers:
        for subscription in shared_subscriptions("ingest"):
            assert worker.subscribe(subscription) == GRANTED_QOS1
    van = connect(VAN)
    ack = downlink_topic(VAN, "ack")
    assert van.subscribe(ack) == GRANTED_QOS1
    sent = [str(i).encode() for i in range(4)]
    for payload in sent:
        assert van.publish(uplink_topic(VAN, "telemetry"), payload) == SUCCESS
    # Both still connected: the share group gives each its turn (Mosquitto 2.0 takes
    # the group's members round-robin).
    received: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + TIMEOUT_S
    while sum(map(len, received)) < len(sent) and time.monotonic() < deadline:
        for worker, inbox in zip(workers, received, strict=True):
            with contextlib.suppress(queue.Empty):
                inbox.append(worker.inbox.get(timeout=0.05).payload)
    assert all(received), received
    assert sorted(received[0] + received[1]) == sent
    for worker in workers:
        assert worker.publish(ack, worker_id := worker.client_id.encode()) == SUCCESS
        assert van.receive() == Message(ack, worker_id, retain=False)
        assert worker.disconnects == []


def test_each_listener_grants_by_its_own_acl_only(connect: Connect, broker: Ports) -> None:
    # Not the id "ingest": the misplaced client below gets that one, and would push this
    # one off (client ids are broker-wide).
    ingest = connect("ingest", client_id="ingest-1")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    # An "ingest" certificate on the vans' listener gets the van patterns for that name,
    # not ingest's rights (nor would a van with that CN): it reads no uplink, writes no
    # ack. Its client id there is "ingest", whatever it sent.
    misplaced = connect("ingest", client_id="ingest-9", port=broker.vans)
    assert misplaced.subscribe("fleet/v1/+/telemetry") == GRANTED_QOS1
    assert misplaced.subscribe("$share/ingest/fleet/v1/+/telemetry") == NOT_AUTHORIZED
    assert misplaced.subscribe(downlink_topic("ingest", "ack")) == GRANTED_QOS1
    assert misplaced.publish(downlink_topic(VAN, "ack")) == NOT_AUTHORIZED
    # A van certificate on the services' listener: no rights at all.
    stray = connect(OTHER_VAN, port=broker.services)
    assert stray.publish(uplink_topic(OTHER_VAN, "telemetry")) == NOT_AUTHORIZED
    assert stray.publish(status_topic(OTHER_VAN), b"online", retain=True) == NOT_AUTHORIZED
    van = connect(VAN)
    telemetry = uplink_topic(VAN, "telemetry")
    assert van.publish(telemetry) == SUCCESS
    assert ingest.receive().topic == telemetry
    # What the misplaced client may read (the ack pattern, for "ingest"), as a sentinel.
    own_ack = downlink_topic("ingest", "ack")
    assert ingest.publish(own_ack) == SUCCESS
    assert misplaced.until(own_ack) == []
    assert ingest.inbox.empty()


def test_a_van_that_reaches_the_services_listener_chooses_its_client_id(
    connect: Connect, broker: Ports
) -> None:
    """Why the README firewalls 8884 to the cloud network: client ids are broker-wide,
    and on the services' listener a client keeps the one it sends."""
    victim = connect(OTHER_VAN)
    connect(VAN, client_id=OTHER_VAN, port=broker.services)
    assert victim.disconnected()
    victim.close()  # before paho reconnects it


# -- shared subscriptions: the share guard ---------------------------------------------

# What a van might try, to be dealt a share of ingest's messages (or of another group's).
SHARE_ATTEMPTS = (
    "$share/ingest/fleet/v1/+/pod",
    "$share/ingest/fleet/v1/+/telemetry",
    f"$share/ingest/{uplink_topic(VAN, 'pod')}",
    "$share/ingest/#",
    "$share/other/fleet/v1/#",
)
N_PODS = 40


def _pods_reaching_ingest(ingest: list[Peer], van: Peer) -> list[bytes]:
    """``van`` publishes :data:`N_PODS` PODs, then one telemetry message per worker as
    sentinels (ingest's telemetry group is not the PODs' one: dealt round-robin, one
    each; and each worker's messages queue in order); what the workers got of the PODs."""
    pod, sentinel = uplink_topic(VAN, "pod"), uplink_topic(VAN, "telemetry")
    for i in range(N_PODS):
        assert van.publish(pod, str(i).encode()) == SUCCESS
    for _ in ingest:
        assert van.publish(sentinel) == SUCCESS
    return [m.payload for worker in ingest for m in worker.until(sentinel)]


def test_a_van_cannot_join_a_shared_subscription_and_ingest_gets_every_message(
    connect: Connect,
) -> None:
    ingest = [connect("ingest", client_id=f"ingest-{i}") for i in (1, 2)]
    for worker in ingest:
        for subscription in shared_subscriptions("ingest"):
            assert worker.subscribe(subscription) == GRANTED_QOS1
    thief = connect(OTHER_VAN)
    for subscription in SHARE_ATTEMPTS:
        assert thief.subscribe(subscription) == NOT_AUTHORIZED, subscription
    # MQTT 3.1.1 has shared subscriptions in Mosquitto too; refused there with 0x80.
    old = connect(THIRD_VAN, protocol=mqtt.MQTTv311)
    assert old.subscribe("$share/ingest/fleet/v1/+/pod") == FAILURE_MQTT311
    van = connect(VAN)
    received = _pods_reaching_ingest(ingest, van)
    assert sorted(received, key=int) == [str(i).encode() for i in range(N_PODS)]
    assert thief.inbox.empty()
    assert old.inbox.empty()
    # Refused, not cut off: the thief's own downlinks still reach it.
    ack = downlink_topic(OTHER_VAN, "ack")
    assert thief.subscribe(ack) == GRANTED_QOS1
    assert ingest[0].publish(ack) == SUCCESS
    assert thief.receive().topic == ack


@pytest.fixture
def connect_unguarded(pki: Path, tmp_path: Path) -> Iterator[Connect]:
    """:func:`_peers` on the shipped broker without its share guard: what Mosquitto
    2.0.11 does on its own (never a configuration to run)."""
    ports = FleetPorts.free()
    with (
        fleet_mosquitto(tmp_path / "broker", _tls(pki), guard=None, ports=ports),
        _peers(ports, pki) as make,
    ):
        yield make


def test_without_the_share_guard_one_van_in_ingests_group_halves_its_uplink(
    connect_unguarded: Connect,
) -> None:
    """Why the guard: acl_file grants every SUBSCRIBE, the broker deals the group's
    messages round-robin and only then checks the chosen member's "read". The van's
    turns are dropped at its read check, not passed to ingest: half the PODs are lost."""
    connect = connect_unguarded
    ingest = connect("ingest", client_id="ingest-1")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    thief = connect(OTHER_VAN)
    assert thief.subscribe("$share/ingest/fleet/v1/+/pod") == GRANTED_QOS1
    received = _pods_reaching_ingest([ingest], connect(VAN))
    assert len(received) == N_PODS // 2, received
    assert thief.inbox.empty()  # nor does the thief get them: they are simply gone


# -- acks: only ingest may make a van delete records ------------------------------------


def test_only_ingest_can_ack_a_van(connect: Connect, broker: Ports) -> None:
    van = connect(VAN)
    ack = downlink_topic(VAN, "ack")
    assert van.subscribe(ack) == GRANTED_QOS1
    forgers = [
        connect(OTHER_VAN),
        van,  # nor may a van ack itself
        connect("backend"),
        connect("dispatcher"),
        connect("ingest", client_id="ingest-9", port=broker.vans),  # ingest's CN, vans' port
        # A van that reached the services' port (a client id of its own: on this port it
        # would otherwise push van-2 off, client ids being broker-wide).
        connect(OTHER_VAN, client_id="stray", port=broker.services),
    ]
    for forger in forgers:
        assert forger.publish(ack, b"forged") == NOT_AUTHORIZED, forger.cn
        assert forger.publish(ack, b"forged", retain=True) == NOT_AUTHORIZED, forger.cn
    ingest = connect("ingest", client_id="ingest-1")
    assert ingest.publish(ack, b"genuine") == SUCCESS
    assert van.receive() == Message(ack, b"genuine", retain=False)
    assert van.inbox.empty()


def test_a_forged_ack_leaves_the_vans_records_in_its_outbox(
    connect: Connect, broker: Ports, pki: Path, tmp_path: Path
) -> None:
    """The agent's real uplink and outbox: another van's ack saying "events 3 stored"
    is refused at the broker, so the van deletes only what ingest's own ack covers."""
    ingest = connect("ingest", client_id="ingest-1")
    for subscription in shared_subscriptions("ingest"):
        assert ingest.subscribe(subscription) == GRANTED_QOS1
    forger = connect(OTHER_VAN)
    ack = downlink_topic(VAN, "ack")
    now = dt.datetime.now(dt.UTC)
    tls = TlsConfig(
        ca_file=pki / "ca.pem", cert_file=pki / f"{VAN}.pem", key_file=pki / f"{VAN}.key"
    )

    async def main() -> None:
        async with AsyncOutbox(tmp_path / "outbox.db") as outbox:
            for _ in range(3):
                await outbox.add("events", b'{"type":"x"}', created=now)
            uplink = Uplink(UplinkConfig(device_id=VAN, port=broker.vans, tls=tls), outbox)
            task = asyncio.create_task(uplink.run())
            try:
                async with asyncio.timeout(10):
                    while uplink.counts.events_sent < 3:
                        await asyncio.sleep(0.02)
                forged = encode_ack(VAN, {"events": 3}, time=now)
                assert await asyncio.to_thread(forger.publish, ack, forged) == NOT_AUTHORIZED
                # Ingest's own ack, for the first record: a forged ack delivered before it
                # would already have moved the van to 3.
                genuine = encode_ack(VAN, {"events": 1}, time=now)
                assert await asyncio.to_thread(ingest.publish, ack, genuine) == SUCCESS
                async with asyncio.timeout(5):
                    while await outbox.acked("events") < 1:
                        await asyncio.sleep(0.02)
                assert await outbox.acked("events") == 1
                assert (await outbox.counts())["events"] == 2
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_the_demos_monitor_reads_and_acks_nothing(pki: Path, guard: Path, tmp_path: Path) -> None:
    """The demo's broker: the shipped files, plus a read-only monitor on the services'
    listener (simulator/demo.py)."""
    services_acl = tmp_path / "fleet-services.acl"
    services_acl.write_text(FLEET_SERVICES_ACL.read_text() + MONITOR_ACL)
    ports = FleetPorts.free()
    with (
        fleet_mosquitto(
            tmp_path / "broker", _tls(pki), guard=guard, ports=ports, services_acl=services_acl
        ),
        _peers(ports, pki) as connect,
    ):
        monitor = connect(MONITOR, port=ports.services)
        assert monitor.subscribe("fleet/v1/#") == GRANTED_QOS1
        van = connect(VAN)
        assert van.subscribe(downlink_topic(VAN, "ack")) == GRANTED_QOS1
        for topic in (downlink_topic(VAN, "ack"), downlink_topic(VAN, "manifest"),
                      uplink_topic(VAN, "pod"), stream_topic(VAN, "pod")):  # fmt: skip
            assert monitor.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        telemetry = uplink_topic(VAN, "telemetry")
        assert van.publish(uplink_topic(VAN, "pod")) == SUCCESS  # not the monitor's to read
        assert van.publish(telemetry) == SUCCESS
        assert monitor.until(telemetry) == []
        ingest = connect("ingest", client_id="ingest-1")
        ack = downlink_topic(VAN, "ack")
        assert ingest.publish(ack, b"genuine") == SUCCESS
        assert van.receive() == Message(ack, b"genuine", retain=False)


def _connects(port: int, setup: Callable[[mqtt.Client], None]) -> bool:
    """Whether an MQTT 5 client, ``setup`` its TLS, gets a CONNACK on ``port``."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    setup(client)
    try:
        client.connect("127.0.0.1", port)
        # TLS 1.3: a refused certificate is told after the handshake, as an alert.
        for _ in range(50):
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                return False
            if client.is_connected():
                return True
    except (OSError, ValueError):
        return False
    finally:
        client.disconnect()
    return False


def test_no_client_gets_in_without_a_fleet_certificate(
    broker: Ports, pki: Path, tmp_path: Path
) -> None:
    """Anonymous clients (plain MQTT, TLS without a client certificate, a certificate
    with ingest's CN from another CA) reach neither listener, so never publish an ack."""
    other_ca_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = issue("another CA", other_ca_key, None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    write_pair(tmp_path, "ingest", issue("ingest", key, (other_ca.subject, other_ca_key)), key)

    def tls(stem: Path | None) -> Callable[[mqtt.Client], None]:
        def setup(client: mqtt.Client) -> None:
            if stem is None:
                client.tls_set(ca_certs=str(pki / "ca.pem"))
            else:
                client.tls_set(
                    ca_certs=str(pki / "ca.pem"),
                    certfile=f"{stem}.pem",
                    keyfile=f"{stem}.key",
                )

        return setup

    for port in broker:
        assert _connects(port, tls(pki / VAN))  # the way in, to show the others fail
        assert not _connects(port, lambda _client: None), port  # plain MQTT
        assert not _connects(port, tls(None)), port
        assert not _connects(port, tls(tmp_path / "ingest")), port


def test_a_van_cannot_publish_retained_downlinks_for_itself_nor_read_sys(
    connect: Connect,
) -> None:
    """Manifest, config and model are the dispatcher's (ingest's in the demo): a van
    cannot plant one for its next start. $SYS (the broker's clients, load, version) is
    closed to it, read and write."""
    van = connect(VAN)
    for kind in DOWNLINK_KINDS:
        topic = downlink_topic(VAN, kind)
        assert van.publish(topic, b"planted", retain=True) == NOT_AUTHORIZED, topic
    for subscription in ("$SYS/#", "$SYS/broker/clients/connected", "#"):
        assert van.subscribe(subscription) == GRANTED_QOS1
    assert van.publish("$SYS/broker/version", b"forged") == NOT_AUTHORIZED
    # Mosquitto keeps $SYS/broker/version and others retained: a van allowed to read
    # them would be given them on subscribing, before this sentinel.
    dispatcher = connect("dispatcher")
    manifest = downlink_topic(VAN, "manifest")
    assert dispatcher.publish(manifest, b"real", retain=True) == SUCCESS
    assert van.until(manifest) == []
    # Reconnected, the van is given only the dispatcher's retained manifest.
    van.close()
    late = connect(VAN)
    assert late.subscribe(f"fleet/v1/{VAN}/#") == GRANTED_QOS1
    assert late.receive() == Message(manifest, b"real", retain=True)
    assert late.inbox.empty()
