"""The worker's side of the normalized stream's outbox, with a real Mosquitto and SQLite:
orphaned messages (their worker died between commit and publish) are taken over once
their lease runs out, and published messages leave the outbox without another batch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from cloud_ingest import fleetstream
from cloud_ingest.store.base import Position, WriteBatch
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from tests.broker import Mosquitto
from tests.uplinkday import Watcher

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def position(seq: int) -> Position:
    point = TelemetryPoint(
        time=T0, lat=48.1, lon=11.5, speed_mps=3.5, course_deg=90.0, mode=3, hdop=1.0, sats_used=9
    )
    return Position("van-7", seq, False, point)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.05)


def test_a_dead_workers_stream_messages_are_published_once_by_another(tmp_path: Path) -> None:
    async def main(broker: Mosquitto) -> None:
        async with SqliteStore(tmp_path / "ingest.db") as store, Watcher(broker.port) as watcher:
            await store.migrate()
            await store.register_device("van-7", b"k" * 32)
            # A "dead" worker's commit: its messages are leased to it for 1.5 s.
            dead = await store.write(
                WriteBatch(positions=[position(1), position(2)]),
                stream_lease_s=1.5,
                announce=fleetstream.messages,
            )
            assert len(dead.stream) == 1
            worker = IngestWorker(
                store, WorkerConfig(port=broker.port, stream_lease_s=60.0, stream_sweep_s=0.1)
            )
            task = asyncio.create_task(worker.run(), name="ingest")
            try:
                async with asyncio.timeout(10):
                    await worker.connected.wait()
                await asyncio.sleep(0.8)
                # Still within the dead worker's lease: not taken over yet.
                assert watcher.fleetstream("position") == []
                assert worker.counts.stream_reclaimed == 0

                async def drained() -> bool:
                    return await store.stream_pending() == 0

                await wait_for(drained)
                await watcher.settle()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert [m["seq"] for m in watcher.fleetstream("position", "van-7")] == [1, 2]
            assert worker.counts.stream_reclaimed == worker.counts.stream_published == 1
            assert watcher.of("fleetstream", "position")[0].payload == dead.stream[0].payload

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(main(broker))


def test_published_messages_leave_the_outbox_when_no_batch_follows(tmp_path: Path) -> None:
    """The deletion rides on the next batch's transaction; when none comes, the sweep
    deletes them by itself, and never publishes them a second time."""

    async def main(broker: Mosquitto) -> None:
        async with SqliteStore(tmp_path / "ingest.db") as store, Watcher(broker.port) as watcher:
            await store.migrate()
            await store.register_device("van-7", b"k" * 32)
            worker = IngestWorker(
                store, WorkerConfig(port=broker.port, stream_lease_s=0.5, stream_sweep_s=0.2)
            )
            task = asyncio.create_task(worker.run(), name="ingest")
            try:
                async with asyncio.timeout(10):
                    await worker.connected.wait()
                fix = TelemetryPoint(
                    time=T0, lat=48.1, lon=11.5, mode=3, speed_mps=3.5, sats_used=9
                )
                payload = encode_batch("van-7", 1, [(1, fix), (2, fix)], historical=False)
                async with aiomqtt.Client("127.0.0.1", broker.port) as van:
                    await van.publish("fleet/v1/van-7/telemetry", payload, qos=1)

                async def drained() -> bool:
                    return worker.counts.stored == 2 and await store.stream_pending() == 0

                await wait_for(drained)
                # Well past the lease: had the row stayed, a sweep would have said it again.
                await asyncio.sleep(1.5)
                await watcher.settle()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert [m["seq"] for m in watcher.fleetstream("position", "van-7")] == [1, 2]
            assert len(watcher.of("fleetstream", "position")) == 1
            assert worker.counts.stream_published == 1
            assert worker.counts.stream_reclaimed == 0
            assert json.loads(watcher.of("fleet", "ack")[0].payload)["acks"]["telemetry"] == 2

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(main(broker))
