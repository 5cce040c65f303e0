"""End to end: the events stream in batches (issue 15) through a real Mosquitto and a
real ingest worker into SQLite.

- a simulated day through the real agent, events batched small (4 records): every
  record the outbox handed out is stored exactly once and acknowledged, every events
  message on the wire is a batch fitting its schema, and the outbox drains;
- a batch published as a forger or a broken van would (one record malformed, one a POD
  forged on the events stream, one dated in 2099): the good records are stored, each bad
  one is quarantined on its own, the ack stops below the first one that settled
  nothing, and an old single-record envelope (a van not yet upgraded) fills the hole.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_ingest.store.base import Covered
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import WorkerConfig
from firmware_agent.contract import wirejson
from firmware_agent.contract.envelope import frame_record
from firmware_agent.contract.eventbatch import decode_events, frame_events, is_event_batch
from firmware_agent.contract.topics import uplink_topic
from tests.broker import Mosquitto
from tests.test_eventbatch import _deflate, _header, _varint, arrival, eta
from tests.uplinkday import (
    DEVICE,
    ObservedWorker,
    Watcher,
    agent_config,
    assert_exactly_once,
    make_day,
    outbox_state,
    prepare_agent_state,
    run_day,
    wait_for,
)


@pytest.mark.slow
def test_a_day_in_event_batches_is_stored_exactly_once_and_acked(tmp_path: Path) -> None:
    day = make_day(tmp_path / "day", hours=0.5)
    public_key = prepare_agent_state(tmp_path / "van", day)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                config = agent_config(
                    tmp_path / "van", day, broker.port, events_batch_max_records=4
                )
                agent, worker = await run_day(store, config, port=broker.port)
                await watcher.settle()
                records = dict(agent.counts.records)
                assert records["events"] > 10
                outbox = await outbox_state(tmp_path / "van")
                assert outbox == {s: (n, n, 0) for s, n in records.items()}
                await assert_exactly_once(store, records, public_key, watcher=watcher)
                assert (await store.counts()).quarantined == 0
                assert worker.counts.quarantined == {}
                assert watcher.contract_failures() == []

                uplink = agent.uplink
                assert uplink is not None
                assert uplink.counts.acked_records == sum(records.values())
                sent = [m.payload for m in watcher.of("fleet", "events", DEVICE)]
                assert sent
                assert all(is_event_batch(p) for p in sent)
                carried = [r.seq for p in sent for r in decode_events(p).records]
                assert max(len(decode_events(p).records) for p in sent) <= 4
                assert set(carried) == set(range(1, records["events"] + 1))
                assert len(sent) < records["events"]
                assert uplink.counts.event_batches >= len(set(carried)) // 4

    asyncio.run(main())


def _forged_batch(first_seq: int, records: list[bytes]) -> bytes:
    body = b"".join(_varint(2 * (i > 0)) + _varint(len(r)) + r for i, r in enumerate(records))
    return _header(count=len(records), first_seq=first_seq, device=DEVICE) + _deflate(body)


def _json(record: dict[str, Any]) -> bytes:
    return wirejson.dumps(record, "record")


@pytest.mark.slow
def test_a_bad_record_in_a_batch_is_quarantined_and_the_others_stored(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def fresh(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "time": stamp}

    forged_pod = {"type": "pod", "time": stamp, "jws": "a.b.c"}
    records = [
        _json(fresh(arrival("S001"))),  # 1
        _json(fresh(arrival("S002", visit="one"))),  # 2: breaks the schema
        _json(fresh(eta("S003", 10))),  # 3
        _json(forged_pod),  # 4: a POD on the events stream
        _json(eta("S004", 11, time="2099-01-01T00:00:00.000Z")),  # 5: implausible
        _json(fresh(eta("S005", 12))),  # 6
    ]
    topic = uplink_topic(DEVICE, "events")

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, b"\1" * 32)
                worker = ObservedWorker(store, WorkerConfig(port=broker.port, backoff_max_s=1.0))
                task = asyncio.create_task(worker.run())
                try:
                    await worker.connected.wait()
                    async with aiomqtt.Client("127.0.0.1", broker.port) as van:
                        await van.publish(topic, _forged_batch(1, records), qos=1)
                        await worker.finished(1)
                        assert await store.acks(DEVICE) == {"telemetry": 0, "events": 1, "pod": 0}
                        assert (await store.counts()).stop_events == 3
                        rows = sorted(await store.quarantine(), key=lambda q: q.id)
                        assert [(q.reason, q.covered) for q in rows] == [
                            ("schema", None),
                            ("malformed", None),
                            ("implausible_time", Covered(DEVICE, "events", 5, 5)),
                        ]
                        assert [q.detail.split(":")[0] for q in rows] == [
                            f"events batch 1..6, seq {n}" for n in (2, 4, 5)
                        ]
                        # A van not yet upgraded sends its records one per envelope:
                        # seq 2 again, valid, and seq 4 valid; the ack then covers 1..6.
                        for seq, stop in ((2, "S002"), (4, "S006")):
                            alone = frame_record(
                                DEVICE,
                                "events",
                                seq,
                                _json(fresh(arrival(stop))),
                                historical=False,
                                sent_at=now,
                            )
                            await van.publish(topic, alone, qos=1)
                        await worker.finished(3)
                        assert await store.acks(DEVICE) == {"telemetry": 0, "events": 6, "pod": 0}
                        # The same good records batched again (a resend): duplicates only.
                        again = frame_events(
                            DEVICE, [(1, False, records[0]), (3, False, records[2])], sent_at=now
                        )
                        await van.publish(topic, again, qos=1)
                        await worker.finished(4)
                        assert (await store.counts()).stop_events == 5
                        assert worker.counts.duplicates == 2
                    await wait_for(
                        lambda: len(watcher.fleetstream("event", DEVICE)) >= 5, what="stream"
                    )
                    await watcher.settle()
                    seqs = sorted(r["seq"] for r in watcher.fleetstream("event", DEVICE))
                    assert seqs == [1, 2, 3, 4, 6]
                    assert watcher.acks(DEVICE)[-1]["events"] == 6
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
