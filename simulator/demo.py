"""``fleet-sim demo``: one simulated van day, end to end, on this machine.

1. A scenario (a generated town, its stops, GNSS noise, multipath, a tunnel) is written
   as an NMEA log, the day's manifest and the driver's scan log.
2. A private Mosquitto starts on a free port.
3. Ingest: a SQLite database, the van enrolled with its public key, one worker on the
   shared subscription.
4. The agent (the real one: geofences, PODs, durable outbox, MQTT uplink) plays the day
   at ``speed`` times real time, with the scans, until ingest has acknowledged
   everything.
5. A backend-team subscriber prints the normalized stream (``fleetstream/v1/...``) as
   stops, PODs and exceptions are stored; a summary compares what the agent committed
   with what ingest stored, and the detected arrivals with the simulator's truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.uplink.mqtt import UplinkConfig
from simulator.broker import Mosquitto
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir

DEVICE_ID = "van-0001"


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    seed: int = 7
    stops: int = 12
    speed: float = 60.0
    work_dir: Path | None = None
    timeout_s: float = 900.0


async def _watch(port: int, out: TextIO, ready: asyncio.Event) -> None:
    """What a backend team sees: the normalized stream, one line per stop event/POD."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-backend") as client:
        await client.subscribe("fleetstream/v1/+/event", qos=1)
        await client.subscribe("fleetstream/v1/+/pod", qos=1)
        ready.set()
        async for message in client.messages:
            if not isinstance(message.payload, bytes):
                continue
            for m in json.loads(message.payload)["records"]:
                out.write(_stream_line(m))
            out.flush()


def _stream_line(m: dict[str, Any]) -> str:
    kind = m.get("type", "pod")
    where = m.get("stop_id") or ""
    if kind == "pod":
        detail = f"parcel {m['parcel']} {m['verdict']}, signature verified"
    elif kind == "eta":
        detail = f"at {m['eta'][11:19]} (naive {m['eta_baseline'][11:19]}), {m['trigger']}"
    elif kind == "late_risk":
        detail = f"late by {m['late_by_s']:.0f} s (window ends {m['window_end'][11:19]})"
    elif kind == "scan_rejected":
        detail = f"scan rejected: {m.get('reason')}"
    else:
        detail = ", ".join(f"{k}={m[k]}" for k in ("visit", "kind", "by_s", "distance_m") if k in m)
    return f"  {m.get('time', '')[11:19]}  {kind:<14} {where:<6} {detail}\n"


def _truth(path: Path) -> dict[str, datetime]:
    data = json.loads(path.read_text())
    stops = data["stops"] if isinstance(data, dict) else data
    return {s["id"]: datetime.fromisoformat(s["arrival"]) for s in stops}


async def run_demo(config: DemoConfig, out: TextIO) -> dict[str, Any]:
    """Run the day; returns the summary figures (also printed to ``out``)."""
    with contextlib.ExitStack() as stack:
        work = config.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        day = work / "day"
        scenario = generate(ScenarioConfig(seed=config.seed, n_stops=config.stops, talker="GN"))
        summary = write_scenario_dir(scenario, day, device_id=DEVICE_ID)
        out.write(f"day: {summary.line()}\n")
        van = work / "van"
        van.mkdir(parents=True, exist_ok=True)
        (van / "manifest.json").write_bytes((day / "manifest.json").read_bytes())
        key = await asyncio.to_thread(load_or_create_device_key, van / "device.key")
        public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        broker = stack.enter_context(Mosquitto(work / "broker"))
        out.write(f"broker: mosquitto on 127.0.0.1:{broker.port}\n")
        async with SqliteStore(work / "ingest.db") as store:
            await store.migrate()
            await store.register_device(DEVICE_ID, public_key)
            worker = IngestWorker(store, WorkerConfig(port=broker.port))
            agent = Agent(
                AgentConfig(
                    state_dir=van,
                    uplink=UplinkConfig(device_id=DEVICE_ID, port=broker.port),
                    nmea_file=day / "nmea.log",
                    scans_file=day / "scans.jsonl",
                    speed=config.speed,
                    exit_when_drained=True,
                )
            )
            out.write(
                f"agent: {DEVICE_ID} plays the day at {config.speed:g}x "
                f"({summary.duration_s / 60 / max(config.speed, 1e-9):.1f} min); "
                "the backend's stream as ingest stores it:\n"
            )
            ready = asyncio.Event()
            async with asyncio.timeout(config.timeout_s):
                tasks = [
                    asyncio.create_task(worker.run(), name="ingest"),
                    asyncio.create_task(_watch(broker.port, out, ready), name="backend"),
                ]
                try:
                    await worker.connected.wait()
                    await ready.wait()
                    await agent.run()
                    await asyncio.sleep(0.5)  # the last republished lines
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            figures = await _summary(store, agent, day, out)
    return figures


async def _summary(store: SqliteStore, agent: Agent, day: Path, out: TextIO) -> dict[str, Any]:
    counts = await store.counts()
    acks = await store.acks(DEVICE_ID)
    committed = agent.counts.records
    stored = {"telemetry": counts.positions, "events": counts.stop_events, "pod": counts.pods}
    truth = _truth(day / "stops.json")
    route_id = json.loads((day / "manifest.json").read_text())["route_id"]
    arrivals = {e.stop_id: e.time for e in await store.arrivals(route_id=route_id)}
    errors_s = [(arrivals[s] - t).total_seconds() for s, t in truth.items() if s in arrivals]
    uplink = agent.uplink
    assert uplink is not None
    bytes_per_fix = (
        uplink.counts.payload_bytes["telemetry"] / uplink.counts.fixes_sent
        if uplink.counts.fixes_sent
        else 0.0
    )
    out.write("\nsummary\n")
    out.write(f"  {'stream':<10} {'committed':>9} {'stored':>7} {'acked seq':>9}\n")
    for stream in ("telemetry", "events", "pod"):
        out.write(f"  {stream:<10} {committed[stream]:>9} {stored[stream]:>7} {acks[stream]:>9}\n")
    median_s = sorted(errors_s)[len(errors_s) // 2] if errors_s else float("nan")
    out.write(
        f"  arrivals: {len(arrivals)} of {len(truth)} stops detected, "
        f"median error {median_s:+.1f} s (detected - true)\n"
        f"  PODs: {counts.pods} stored, chain pending {counts.pods_pending}, "
        f"broken {counts.pods_broken}; quarantined messages: {counts.quarantined}\n"
        f"  telemetry on the wire: {bytes_per_fix:.1f} bytes per fix "
        f"({uplink.counts.fixes_sent} fixes in {uplink.counts.published['telemetry']} batches)\n"
    )
    tracker = agent.pipeline.eta_tracker if agent.pipeline is not None else None
    if tracker is not None:
        health = agent.health()
        out.write(
            f"  ETAs: {health.get('eta_model')} on {health.get('eta_backend')}: "
            f"{tracker.counts['eta']} eta and {tracker.counts['late_risk']} late_risk events\n"
        )
    ok = committed == stored and all(acks[s] == committed[s] for s in committed)
    out.write(f"  {'OK: every record stored exactly once' if ok else 'MISMATCH'}\n")
    return {
        "committed": committed,
        "stored": stored,
        "acks": acks,
        "arrivals": len(arrivals),
        "stops": len(truth),
        "quarantined": counts.quarantined,
        "bytes_per_fix": bytes_per_fix,
        "ok": ok,
    }
