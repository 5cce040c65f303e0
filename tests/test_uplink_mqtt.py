"""The agent's MQTT side against a real Mosquitto: mutual TLS, birth and will, the
manifest downlink, hostile acks; and the GNSS-referenced clock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.envelope import decode_status, encode_ack
from firmware_agent.contract.mqtt import TlsConfig
from firmware_agent.contract.records import TelemetryPoint, encode_point
from firmware_agent.contract.seqreport import verify_report
from firmware_agent.contract.telemetry import decode_batch, verify_batch
from firmware_agent.sources.clock import GnssClock
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.queue import AsyncOutbox
from tests.broker import Mosquitto
from tests.nmea import line
from tests.pki import issue, write_pair
from tests.vanday import T0

DEVICE = "van-0042"


# -- certificates --------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, the broker's certificate (for 127.0.0.1) and a van's client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("fleet test CA", ca_key, None, ca=True)
    write_pair(d, "ca", ca, ca_key)
    for name, san in (("broker", True), (DEVICE, False), ("ingest", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        write_pair(
            d,
            name,
            issue(name if name != "broker" else "127.0.0.1", key, (ca.subject, ca_key), san_ip=san),
            key,
        )
    return d


# -- helpers -------------------------------------------------------------------------


@asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def retained_status(port: int, **tls: object) -> dict[str, object]:
    async with aiomqtt.Client("127.0.0.1", port, **tls) as client:  # type: ignore[arg-type]
        await client.subscribe(f"fleet/v1/{DEVICE}/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return decode_status(message.payload).to_json()
    raise AssertionError("no status")


# -- tests ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mutual_tls_connects_with_the_van_certificate_and_refuses_without(
    pki: Path, tmp_path: Path
) -> None:
    extra = "\n".join(
        [
            f"cafile {pki / 'ca.pem'}",
            f"certfile {pki / 'broker.pem'}",
            f"keyfile {pki / 'broker.key'}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    )

    async def main(broker: Mosquitto) -> None:
        async with AsyncOutbox(tmp_path / "outbox.db") as outbox:
            good = Uplink(
                UplinkConfig(
                    device_id=DEVICE,
                    port=broker.port,
                    tls=TlsConfig(
                        ca_file=pki / "ca.pem",
                        cert_file=pki / f"{DEVICE}.pem",
                        key_file=pki / f"{DEVICE}.key",
                    ),
                ),
                outbox,
            )
            async with running(good):
                async with asyncio.timeout(10):
                    await good.connected.wait()
            # Ingest's workers connect the same way, with their own certificate.
            async with SqliteStore(tmp_path / "ingest.db") as store:
                worker = IngestWorker(
                    store,
                    WorkerConfig(
                        port=broker.port,
                        tls=TlsConfig(
                            ca_file=pki / "ca.pem",
                            cert_file=pki / "ingest.pem",
                            key_file=pki / "ingest.key",
                        ),
                    ),
                )
                task = asyncio.create_task(worker.run())
                try:
                    async with asyncio.timeout(10):
                        await worker.connected.wait()
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            # Without a client certificate the broker refuses the handshake.
            bad = Uplink(
                UplinkConfig(
                    device_id=DEVICE,
                    port=broker.port,
                    tls=TlsConfig(ca_file=pki / "ca.pem"),
                    backoff_max_s=0.5,
                    connect_timeout_s=1.0,
                ),
                outbox,
            )
            async with running(bad):
                # TLS 1.3: the refusal arrives after the client's handshake, as an alert.
                await asyncio.sleep(3.0)
                assert not bad.connected.is_set()
                assert bad.counts.disconnects >= 1
                assert bad.faults.counts["broker"] >= 1

    with Mosquitto(tmp_path / "broker", extra=extra) as broker:
        asyncio.run(main(broker))


VAN_PROCESS = """
import asyncio, sys
from firmware_agent.uplink.mqtt import Uplink, UplinkConfig
from firmware_agent.uplink.queue import AsyncOutbox

async def main():
    async with AsyncOutbox(sys.argv[2]) as outbox:
        config = UplinkConfig(device_id="DEVICE_ID", port=int(sys.argv[1]), will_delay_s=1)
        uplink = Uplink(config, outbox, health=lambda: {"fixes": 12})
        task = asyncio.create_task(uplink.run())
        await uplink.connected.wait()
        print("connected", flush=True)
        await task

asyncio.run(main())
""".replace("DEVICE_ID", DEVICE)


@pytest.mark.slow
def test_birth_is_retained_and_the_will_says_offline_after_its_delay(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        van = subprocess.Popen(
            [sys.executable, "-c", VAN_PROCESS, str(broker.port), str(tmp_path / "outbox.db")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert van.stdout is not None
            assert van.stdout.readline().strip() == "connected"
            status = asyncio.run(retained_status(broker.port))
            assert status["state"] == "online"
            assert status["health"] == {
                "fixes": 12,
                "acks_behind": 0,
                "acks_unsent": 0,
                # The outbox's depth, said by every status (issue 14): nothing waits.
                "outbox_pending": {"telemetry": 0, "events": 0, "pod": 0},
                "outbox_oldest_unacked_s": {"telemetry": None, "events": None, "pod": None},
                "outbox_oldest_unacked_max_s": 0.0,
            }
            # The van dies without a DISCONNECT (power cut): the broker publishes the
            # retained will, but only after the will delay.
            van.send_signal(signal.SIGKILL)
            van.wait(10)
            killed = time.monotonic()
            while asyncio.run(retained_status(broker.port))["state"] != "offline":
                assert time.monotonic() - killed < 10, "no will"
                time.sleep(0.1)
            assert time.monotonic() - killed >= 0.9  # the will delay (1 s) held it back
        finally:
            van.kill()
            van.wait(10)


@pytest.mark.slow
def test_a_manifest_on_the_downlink_replaces_the_stored_one(tmp_path: Path) -> None:
    nmea = tmp_path / "still.nmea"
    # A parked van: a fix a second for 5 minutes of playback at real time.
    body = b""
    for i in range(300):
        t = (T0 + dt.timedelta(seconds=i)).strftime("%H%M%S.00")
        body += line(f"GPRMC,{t},A,4800.000,N,01100.000,E,0.0,0.0,211126,,,A")
    nmea.write_bytes(body)
    new_manifest = {
        "route_id": "R-2",
        "device_id": DEVICE,
        "date": "2026-11-21",
        "stops": [
            {
                "id": "S1",
                "lat": 48.0,
                "lon": 11.0,
                "radius_m": 30,
                "type": "house",
                "parcels": ["P1"],
            }
        ],
    }

    async def main(broker: Mosquitto) -> Agent:
        agent = Agent(
            AgentConfig(
                state_dir=tmp_path / "van",
                uplink=UplinkConfig(device_id=DEVICE, port=broker.port),
                nmea_file=nmea,
                speed=1.0,
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(20):
                while agent.uplink is None or not agent.uplink.connected.is_set():
                    await asyncio.sleep(0.05)
                async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                    topic = f"fleet/v1/{DEVICE}/manifest"
                    await client.publish(topic, b"{not json", qos=1)
                    await client.publish(
                        topic, json.dumps(new_manifest).encode(), qos=1, retain=True
                    )
                    # A hostile ack (another device, nonsense) changes nothing.
                    await client.publish(
                        f"fleet/v1/{DEVICE}/ack",
                        encode_ack("van-9999", {"pod": 5}, time=T0),
                        qos=1,
                    )
                    await client.publish(f"fleet/v1/{DEVICE}/ack", b"\xff\x00", qos=1)
                while agent.counts.manifests < 1:
                    await asyncio.sleep(0.05)
                assert agent.uplink is not None
                while agent.uplink.counts.bad_acks < 2:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return agent

    with Mosquitto(tmp_path / "broker") as broker:
        agent = asyncio.run(main(broker))
    assert agent.pipeline is not None
    assert agent.pipeline.manifest.route_id == "R-2"
    stored = json.loads((tmp_path / "van" / "manifest.json").read_text())
    assert stored["route_id"] == "R-2"
    assert agent.uplink is not None
    assert agent.uplink.counts.downlink_errors == 1  # the broken manifest, refused
    assert agent.uplink.counts.acked_records == 0


def test_gnss_clock_follows_the_system_clock_unless_it_is_wrong() -> None:
    clock = GnssClock(max_skew_s=2.0)
    now = dt.datetime.now(dt.UTC)
    clock.observe(now + dt.timedelta(seconds=0.5))
    assert abs((clock.now() - dt.datetime.now(dt.UTC)).total_seconds()) < 0.1
    # A Pi without RTC booted at its last shutdown time: a day behind GNSS.
    clock.observe(now + dt.timedelta(days=1))
    assert abs((clock.now() - (dt.datetime.now(dt.UTC) + dt.timedelta(days=1))).total_seconds()) < 1


class _RacingUplink(Uplink):
    """An uplink whose downlink reader fails as it is cancelled, as aiomqtt's message
    iterator can ("Disconnected during message iteration") while the client closes."""

    async def _receive(self, client: aiomqtt.Client) -> None:
        try:
            await super()._receive(client)
        except asyncio.CancelledError:
            raise aiomqtt.MqttError("Disconnected during message iteration") from None


def test_cancelling_the_uplink_stops_it_even_when_a_child_fails_meanwhile(
    tmp_path: Path,
) -> None:
    # A task group cancelled while a child fails raises the child's error, not
    # CancelledError: the reconnect loop must not take it for a lost broker.
    async def main(broker: Mosquitto) -> None:
        async with AsyncOutbox(tmp_path / "outbox.db") as outbox:
            uplink = _RacingUplink(UplinkConfig(device_id=DEVICE, port=broker.port), outbox)
            task = asyncio.create_task(uplink.run())
            async with asyncio.timeout(10):
                await uplink.connected.wait()
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            assert done, "the uplink swallowed its cancellation and kept reconnecting"
            assert task.cancelled()
            assert uplink.counts.connects == 1

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(main(broker))


def test_the_sender_stops_when_cancelled_as_the_outbox_changes(tmp_path: Path) -> None:
    # Python 3.11's asyncio.wait_for swallows a cancellation that lands in the tick its
    # awaited event fires (CPython gh-86296): the sender then looped on, and the agent
    # never stopped (seen once in ~30 runs of the ETA end-to-end test on a loaded
    # machine). Cancel it at every tick offset around the outbox's change.
    async def main(broker: Mosquitto) -> None:
        async with (
            AsyncOutbox(tmp_path / "outbox.db") as outbox,
            aiomqtt.Client("127.0.0.1", broker.port) as client,
        ):
            uplink = Uplink(UplinkConfig(device_id=DEVICE, port=broker.port), outbox)
            for ticks in range(8):
                sender = asyncio.create_task(uplink._send(client), name="uplink-send")
                await asyncio.sleep(0.05)  # asleep on the outbox
                outbox.changed.set()
                for _ in range(ticks):
                    await asyncio.sleep(0)
                sender.cancel()
                done, _ = await asyncio.wait([sender], timeout=3)
                assert done, f"the sender swallowed a cancellation {ticks} ticks after a change"
                assert sender.cancelled()

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(main(broker))


# -- acks that make no sense (issue 13, findings 6 and 7) ------------------------------


async def _first_message(client: aiomqtt.Client, within_s: float = 5.0) -> bytes:
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("nothing came")


def test_acks_above_what_was_sent_or_below_what_was_applied(tmp_path: Path) -> None:
    """An ack covering fixes the van has not sent yet deletes nothing (before: the van
    deleted them, never delivered); an ack below what the van applied (ingest lost
    records) sends the signed sequence report; a batch over thinned seqs is signed."""
    key = Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)

    async def main(broker: Mosquitto) -> None:
        async with (
            AsyncOutbox(tmp_path / "outbox.db") as outbox,
            aiomqtt.Client("127.0.0.1", broker.port, identifier="ingest-stand-in") as ingest,
        ):
            await ingest.subscribe(f"fleet/v1/{DEVICE}/+", qos=1)
            for _ in range(3):
                await outbox.add("events", b'{"type":"x"}', created=now)
            await outbox.add_many("telemetry", [(_point(i), now) for i in range(10)])
            uplink = Uplink(UplinkConfig(device_id=DEVICE, port=broker.port), outbox, key=key)
            async with running(uplink):
                async with asyncio.timeout(10):
                    # Records of a type the uplink does not know go at once (in a batch).
                    while uplink.counts.events_sent < 3 or uplink.counts.published["events"] < 1:
                        await asyncio.sleep(0.02)
                ack = f"fleet/v1/{DEVICE}/ack"
                # Telemetry waits for its batch (10 fixes, younger than 30 s): not sent.
                await ingest.publish(ack, encode_ack(DEVICE, {"telemetry": 10}, time=now), qos=1)
                await ingest.publish(ack, encode_ack(DEVICE, {"events": 3}, time=now), qos=1)
                async with asyncio.timeout(5):
                    while await outbox.acked("events") < 3 or uplink.counts.acks_unsent < 1:
                        await asyncio.sleep(0.02)
                assert (await outbox.counts())["telemetry"] == 10  # nothing deleted
                assert await outbox.acked("telemetry") == 0
                # Ingest restored from a backup: it acks events 1 only.
                reports_before = uplink.counts.seq_reports
                await ingest.publish(ack, encode_ack(DEVICE, {"events": 1}, time=now), qos=1)
                async with asyncio.timeout(5):
                    while uplink.counts.seq_reports == reports_before:
                        await asyncio.sleep(0.02)
                assert uplink.counts.acks_behind == 1
                assert await outbox.acked("events") == 3
                # Fixes 2..5 thinned away (as a thinning pass does): the batch is signed.
                outbox.outbox._db.execute("DELETE FROM record WHERE stream = 0 AND seq < 6")
                outbox.outbox._db.execute("UPDATE stream SET pending = 5 WHERE id = 0")
                uplink.flush()
                async with asyncio.timeout(5):
                    while uplink.counts.signed_batches < 1:
                        await asyncio.sleep(0.02)
            statuses, batches = [], []
            with contextlib.suppress(TimeoutError):
                while True:
                    payload = await _first_message(ingest, within_s=0.5)
                    if payload.startswith(b"FT"):
                        batches.append(decode_batch(payload))
                        assert verify_batch(payload, key.public_key())
                    elif b'"state"' in payload:
                        statuses.append(decode_status(payload))
        reports = [verify_report(s.seqs, key.public_key()) for s in statuses if s.seqs]
        assert len(reports) == 2  # at connect, and after the ack behind
        assert dict(reports[-1].acked) == {"telemetry": 0, "events": 3, "pod": 0}
        assert dict(reports[-1].last) == {"telemetry": 10, "events": 3, "pod": 0}
        assert statuses[-1].health["acks_behind"] == 1
        assert statuses[-1].health["acks_unsent"] == 1
        (batch,) = batches
        assert (batch.first_seq, batch.last_seq, [s for s, _ in batch.points]) == (
            1,
            10,
            [6, 7, 8, 9, 10],
        )

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(main(broker))


def _point(i: int) -> bytes:
    return encode_point(
        TelemetryPoint(time=T0 + dt.timedelta(seconds=i), lat=48.0, lon=11.0 + i * 1e-4, mode=3)
    )
