"""A simulated van day through the real agent, a real Mosquitto and a real ingest worker.

:func:`run_day` runs, in one event loop, an ingest worker on ``store`` and an agent
playing the day's NMEA file (as fast as possible) with its scans, until ingest has
acknowledged every record the agent committed. ``during`` is an optional coroutine run
beside them (to kill the broker, cut the network, ...). Returns the agent (its counts,
its outbox) and the worker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloud_ingest.store.base import Store
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.pod.keys import load_or_create_device_key
from firmware_agent.uplink.mqtt import UplinkConfig

BIN = Path(sys.executable).parent
DEVICE = "van-0001"


@dataclass(frozen=True)
class Day:
    nmea: Path
    scans: Path
    manifest: Path


def make_day(directory: Path, *, seed: int = 11, stops: int = 8, hours: float = 0.75) -> Day:
    sim = shutil.which("fleet-sim", path=str(BIN))
    assert sim is not None
    subprocess.run(
        [sim, "scenario", "--seed", str(seed), "--stops", str(stops), "--rate-hz", "1",
         "--duration-h", str(hours), "--device-id", DEVICE, "--out", str(directory)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return Day(directory / "nmea.log", directory / "scans.jsonl", directory / "manifest.json")


def prepare_agent_state(state_dir: Path, day: Day) -> bytes:
    """The van's state directory with the day's manifest; returns its raw public key."""
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(day.manifest, state_dir / "manifest.json")
    key = load_or_create_device_key(state_dir / "device.key")
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agent_config(state_dir: Path, day: Day, port: int, **uplink: object) -> AgentConfig:
    return AgentConfig(
        state_dir=state_dir,
        uplink=UplinkConfig(device_id=DEVICE, port=port, **uplink),  # type: ignore[arg-type]
        nmea_file=day.nmea,
        scans_file=day.scans,
        exit_when_drained=True,
    )


async def run_day(
    store: Store,
    config: AgentConfig,
    *,
    port: int,
    during: Callable[[Agent, IngestWorker], Awaitable[None]] | None = None,
    timeout_s: float = float(os.environ.get("DAY_TIMEOUT_S", "120")),
) -> tuple[Agent, IngestWorker]:
    worker = IngestWorker(store, WorkerConfig(port=port, backoff_max_s=1.0))
    agent = Agent(config)
    async with asyncio.timeout(timeout_s):
        worker_task = asyncio.create_task(worker.run(), name="ingest")
        try:
            await worker.connected.wait()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(agent.run(), name="agent")
                if during is not None:
                    tg.create_task(during(agent, worker), name="fault")
        finally:
            worker_task.cancel()
            await asyncio.gather(worker_task, return_exceptions=True)
    return agent, worker
