"""End to end: a simulated van day through the agent, a real Mosquitto and ingest, into
SQLite and into PostgreSQL.

Every record the agent committed must be stored exactly once: compared by the sequence
numbers its outbox handed out, ingest's acks and the stored rows, not by "something
arrived". A backend team's subscriber (``fleetstream/v1/#`` and the acks) sees every
stored record exactly once, and every message on the wire fits the contract's schemas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_ingest.store.base import Store
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker
from firmware_agent.agent import Agent
from tests.broker import Mosquitto
from tests.pg import fresh_database
from tests.uplinkday import (
    DEVICE,
    FLEETSTREAM_KINDS,
    UPLINK_KINDS,
    Day,
    Watcher,
    agent_config,
    assert_exactly_once,
    make_day,
    outbox_state,
    prepare_agent_state,
    run_day,
    saved_chain_state,
)

StoreFactory = Callable[[], Store]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return make_day(tmp_path_factory.mktemp("uplinkday"))


@dataclass
class DayRun:
    """A clean day that went through: how to reopen its store, and what was seen."""

    backend: str
    open_store: StoreFactory
    state_dir: Path
    public_key: bytes
    agent: Agent
    worker: IngestWorker
    watcher: Watcher


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def clean_day(
    request: pytest.FixtureRequest, day: Day, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DayRun]:
    """One fault-free day per backend, with a subscriber on the fleetstream, the acks
    and the van's own topics from before the van starts."""
    tmp = tmp_path_factory.mktemp(f"day-{request.param}")
    with fresh_database() if request.param == "postgres" else nullcontext("") as dsn:
        open_store: StoreFactory = (
            (lambda: PostgresStore(dsn)) if dsn else (lambda: SqliteStore(tmp / "ingest.db"))
        )
        public_key = prepare_agent_state(tmp / "van", day)

        async def main() -> DayRun:
            with Mosquitto(tmp / "broker") as broker:
                async with open_store() as store, Watcher(broker.port, uplink=True) as watcher:
                    await store.migrate()
                    await store.register_device(DEVICE, public_key)
                    config = agent_config(tmp / "van", day, broker.port)
                    agent, worker = await run_day(store, config, port=broker.port)
                    await watcher.settle()
            return DayRun(
                request.param, open_store, tmp / "van", public_key, agent, worker, watcher
            )

        yield asyncio.run(main())


@pytest.mark.slow
def test_a_day_is_stored_exactly_once(clean_day: DayRun) -> None:
    records = clean_day.agent.counts.records
    assert records["telemetry"] > 100
    assert records["events"] > 10
    assert records["pod"] > 5

    async def check() -> None:
        outbox = await outbox_state(clean_day.state_dir)
        # Every record acked and deleted from the outbox: (last seq, acked, pending).
        assert outbox == {s: (n, n, 0) for s, n in records.items()}
        async with clean_day.open_store() as store:
            await assert_exactly_once(
                store,
                dict(records),
                clean_day.public_key,
                watcher=clean_day.watcher,
                chain_state=saved_chain_state(clean_day.state_dir),
            )
            assert (await store.counts()).quarantined == 0

    asyncio.run(check())
    uplink = clean_day.agent.uplink
    assert uplink is not None
    assert uplink.counts.acked_records == sum(records.values())
    assert clean_day.worker.counts.duplicates == 0
    assert clean_day.worker.counts.quarantined == {}


@pytest.mark.slow
def test_every_message_on_the_wire_fits_the_contract(clean_day: DayRun) -> None:
    """Agent and ingest: each uplink message, ack and fleetstream message validates
    against its schema (docs/schemas), and acks never go down."""
    watcher = clean_day.watcher
    assert watcher.error is None
    assert watcher.contract_failures() == []
    seen = {(m.root, m.leaf) for m in watcher.messages}
    wanted = {("fleetstream", leaf) for leaf in FLEETSTREAM_KINDS}
    wanted |= {("fleet", leaf) for leaf in (*UPLINK_KINDS, "ack")}
    assert wanted <= seen, f"never seen: {sorted(wanted - seen)}"
    watcher.check_acks_never_go_down(DEVICE)
    # The last ack the van got covers all it committed.
    assert watcher.acks(DEVICE)[-1] == clean_day.agent.counts.records
    # A live day: nothing was late, so nothing is historical; PODs came in chain order.
    assert not any(m["historical"] for m in watcher.fleetstream("position"))
    assert {m["chain"] for m in watcher.fleetstream("pod")} == {"ok"}


@pytest.mark.slow
def test_broker_killed_and_restarted_mid_day(day: Day, tmp_path: Path) -> None:
    public_key = prepare_agent_state(tmp_path / "van", day)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with SqliteStore(tmp_path / "ingest.db") as store:
                await store.migrate()
                await store.register_device(DEVICE, public_key)

                async def kill_broker(agent: Agent, worker: IngestWorker) -> None:
                    # Twice, each time with the van connected: the first mid-file, the
                    # second while it sends what piled up during the first.
                    for connects in (1, 2):
                        while (
                            agent.counts.fixes < 600
                            or agent.uplink is None
                            or agent.uplink.counts.connects < connects
                        ):
                            await asyncio.sleep(0.01)
                        broker.kill()
                        await asyncio.sleep(1.5)
                        await asyncio.to_thread(broker.start)

                config = agent_config(
                    tmp_path / "van", day, broker.port, resend_after_s=5.0, backoff_max_s=1.0
                )
                agent, _ = await run_day(store, config, port=broker.port, during=kill_broker)
                assert agent.uplink is not None
                assert agent.uplink.counts.connects >= 3
                records = agent.counts.records
                assert records["pod"] > 5
                await assert_exactly_once(
                    store,
                    dict(records),
                    public_key,
                    chain_state=saved_chain_state(tmp_path / "van"),
                )
                assert (await store.counts()).quarantined == 0

    asyncio.run(main())
