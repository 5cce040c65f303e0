"""The agent as an operator runs it (issue 14): what its status says about the outbox,
and how systemd stops it.

- Status health: ``outbox_pending`` (records waiting for ingest's ack, per stream),
  ``outbox_oldest_unacked_s`` (per stream, seconds, null when none waits) and
  ``outbox_oldest_unacked_max_s``, at every status publish: a van that cannot reach
  ingest shows its records piling up and ageing; once ingest acks, it shows drained.
- SIGTERM (systemd's stop) ends ``fleet-agent run`` as Ctrl-C does: the summary on
  stderr, exit status 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path
from typing import Any

import pytest

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import WorkerConfig
from firmware_agent.agent import Agent
from firmware_agent.contract.envelope import decode_status
from firmware_agent.contract.topics import STREAMS
from tests.broker import Mosquitto, free_port
from tests.uplinkday import (
    DEVICE,
    Day,
    ObservedWorker,
    Watcher,
    agent_command,
    agent_config,
    make_day,
    prepare_agent_state,
    wait_for,
)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return make_day(tmp_path_factory.mktemp("svcday"), stops=2, hours=0.05)


def _healths(watcher: Watcher) -> list[dict[str, Any]]:
    out = []
    for m in watcher.of("fleet", "status", DEVICE):
        if m.payload:
            status = decode_status(m.payload)
            if status.state == "online":
                out.append(status.health)
    return out


def test_status_health_says_how_much_waits_for_ingest_and_how_old(day: Day, tmp_path: Path) -> None:
    state = tmp_path / "van"
    public_key = prepare_agent_state(state, day)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            config = dataclasses.replace(
                agent_config(state, day, broker.port, status_every_s=0.2),
                exit_when_drained=False,
            )
            agent = Agent(config)
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                van = asyncio.create_task(agent.run(), name="agent")
                try:
                    # No ingest yet: the day's records wait, and their age grows.
                    def piled_up() -> bool:
                        h = _healths(watcher)
                        return bool(h) and h[-1]["outbox_oldest_unacked_max_s"] >= 1.0

                    await wait_for(piled_up, timeout_s=30, what="records ageing in the status")
                    waiting = _healths(watcher)[-1]
                    stored = agent.counts.records
                    assert waiting["outbox_pending"] == {s: stored[s] for s in STREAMS}
                    assert waiting["outbox_pending"]["telemetry"] > 0
                    ages = waiting["outbox_oldest_unacked_s"]
                    assert set(ages) == set(STREAMS)
                    assert ages["telemetry"] >= 1.0
                    assert waiting["outbox_oldest_unacked_max_s"] == max(
                        a for a in ages.values() if a is not None
                    )
                    # Ingest comes: it acknowledges everything, the status says drained.
                    worker = ObservedWorker(store, WorkerConfig(port=broker.port))
                    ingest = asyncio.create_task(worker.run(), name="ingest")
                    try:

                        def drained() -> bool:
                            h = _healths(watcher)
                            return h[-1]["outbox_pending"] == dict.fromkeys(STREAMS, 0)

                        await wait_for(drained, timeout_s=30, what="a drained status")
                    finally:
                        ingest.cancel()
                        await asyncio.gather(ingest, return_exceptions=True)
                    last = _healths(watcher)[-1]
                    assert last["outbox_oldest_unacked_s"] == dict.fromkeys(STREAMS, None)
                    assert last["outbox_oldest_unacked_max_s"] == 0
                    assert await store.acks(DEVICE) == {s: stored[s] for s in STREAMS}
                finally:
                    van.cancel()
                    await asyncio.gather(van, return_exceptions=True)

    asyncio.run(main())


def test_sigterm_stops_the_service_with_its_summary(day: Day, tmp_path: Path) -> None:
    """systemd's stop: SIGTERM, then the summary Ctrl-C prints, and exit status 0."""
    state = tmp_path / "van"
    prepare_agent_state(state, day)
    log_path = tmp_path / "agent.log"

    async def main() -> int:
        with log_path.open("wb") as log:
            # No broker: the van keeps its day in the outbox and retries the link.
            proc = await asyncio.create_subprocess_exec(
                *agent_command(state, day, free_port(), speed=0), stdout=log, stderr=log
            )
            try:
                await wait_for(
                    lambda: b"done:" in log_path.read_bytes(),
                    timeout_s=60,
                    what="the input file played",
                )
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    return await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    rc = asyncio.run(main())
    text = log_path.read_text()
    assert rc == 0, text[-3000:]
    summary = [line for line in text.splitlines() if line.startswith("fleet-agent run: ")]
    assert len(summary) == 1, text[-3000:]
    assert " fixes, " in summary[0]
    assert "committed telemetry=" in summary[0]
    assert "Traceback" not in text
