"""End to end: a simulated van day through agent, a real Mosquitto and ingest into SQLite.

Every record the agent committed must be stored exactly once: compared by counts and
by the sequence numbers ingest acknowledged, not by "something arrived".
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker
from firmware_agent.agent import Agent
from tests.broker import Mosquitto
from tests.uplinkday import DEVICE, Day, agent_config, make_day, prepare_agent_state, run_day


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return make_day(tmp_path_factory.mktemp("uplinkday"))


async def _stored_exactly_once(store: SqliteStore, agent: Agent) -> None:
    counts = await store.counts()
    records = agent.counts.records
    assert records["telemetry"] > 100
    assert records["events"] > 10
    assert records["pod"] > 5
    assert counts.positions == records["telemetry"]
    assert counts.stop_events == records["events"]
    assert counts.pods == records["pod"]
    assert counts.pods_pending == counts.pods_broken == 0
    assert counts.quarantined == 0
    assert await store.acks(DEVICE) == {
        "telemetry": records["telemetry"],
        "events": records["events"],
        "pod": records["pod"],
    }
    assert await store.gaps(DEVICE) == []


@pytest.mark.slow
def test_a_day_is_stored_exactly_once(day: Day, tmp_path: Path) -> None:
    public_key = prepare_agent_state(tmp_path / "van", day)

    async def main() -> tuple[Agent, IngestWorker]:
        with Mosquitto(tmp_path / "broker") as broker:
            async with SqliteStore(tmp_path / "ingest.db") as store:
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                agent, worker = await run_day(
                    store, agent_config(tmp_path / "van", day, broker.port), port=broker.port
                )
                await _stored_exactly_once(store, agent)
                return agent, worker

    agent, worker = asyncio.run(main())
    assert agent.uplink is not None
    assert agent.uplink.counts.acked_records == sum(agent.counts.records.values())
    assert worker.counts.duplicates == 0


@pytest.mark.slow
def test_broker_killed_and_restarted_mid_day(day: Day, tmp_path: Path) -> None:
    public_key = prepare_agent_state(tmp_path / "van", day)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with SqliteStore(tmp_path / "ingest.db") as store:
                await store.migrate()
                await store.register_device(DEVICE, public_key)

                async def kill_broker(agent: Agent, worker: IngestWorker) -> None:
                    for _ in range(2):
                        while agent.counts.fixes < 600:
                            await asyncio.sleep(0.01)
                        broker.kill()
                        await asyncio.sleep(1.5)
                        await asyncio.to_thread(broker.start)

                config = agent_config(
                    tmp_path / "van", day, broker.port, resend_after_s=5.0, backoff_max_s=1.0
                )
                agent, _ = await run_day(store, config, port=broker.port, during=kill_broker)
                assert agent.uplink is not None
                assert agent.uplink.counts.connects >= 2
                await _stored_exactly_once(store, agent)

    asyncio.run(main())
