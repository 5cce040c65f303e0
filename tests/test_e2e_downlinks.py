"""No downlink bricks a van (issue 13, findings 1-3), with the real service: ``fleet-agent
run`` as a process on a private Mosquitto, sent what wedged it for good.

- the 62-byte config (``index_cell_m`` 0.001: 2.4 GB, then MemoryError, stored first so
  every restart died the same way);
- the 257-byte manifest whose route spans the planet (700 MB in 3 s and climbing);
- a manifest for another van (adopted, with a warning).

The van refuses each, keeps the manifest and config it runs (on disk too), logs the
reason every time and says in its status health what runs and what it refused and why;
restarted with those still retained on the broker it refuses them again and stays up.
A good config afterwards is taken as ever. ``fleet-ingest publish-manifest`` checks a
manifest as the van will before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_agent.contract.envelope import decode_status
from firmware_agent.contract.topics import downlink_topic, status_topic
from tests.bigday import day_doc
from tests.broker import Mosquitto, free_port
from tests.vanday import route_line, stop

BIN = Path(sys.executable).parent
FLEET_AGENT = BIN / "fleet-agent"
FLEET_INGEST = BIN / "fleet-ingest"
DEVICE = "van-0001"
TIMEOUT_S = 20.0

GOOD = {
    "route_id": "R-good",
    "device_id": DEVICE,
    "date": "2026-11-21",
    "stops": [stop("S1", 0.0), stop("S2", 1000.0)],
    "route": route_line([-500.0, 0.0, 1500.0]),
}
# The report's payloads, byte for byte in spirit: 62 bytes of config, 257 of manifest.
BAD_CONFIG = b'{"v":1,"revision":2,"geofence":{"index_cell_m":0.001}}'
PLANET = json.dumps(
    {
        "route_id": "R-planet",
        "device_id": DEVICE,
        "date": "2026-11-21",
        "stops": [{"id": "S1", "lat": 48.0, "lon": 11.0, "radius_m": 30, "type": "house",
                   "parcels": []}],
        "route": {"type": "LineString", "coordinates": [[-180, -90], [180, 90]]},
    }
).encode()  # fmt: skip
OTHER_VANS = json.dumps(GOOD | {"route_id": "R-other", "device_id": "van-9999"}).encode()
GOOD_CONFIG = b'{"v":1,"revision":3,"geofence":{"index_cell_m":100}}'


class Statuses:
    """Every status health the van publishes, in order (a subscriber of its own)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.health: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, identifier="status-watch",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:  # fmt: skip
            await client.subscribe(status_topic(DEVICE), qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                status = decode_status(message.payload)
                if status.state == "online" and status.health is not None:
                    self.health.append(dict(status.health))
                    self._changed.set()

    async def until(
        self, ok: Callable[[dict[str, Any]], bool], *, since: int = 0
    ) -> dict[str, Any]:
        """The first health from index ``since`` on that is ``ok``."""
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                for health in self.health[since:]:
                    if ok(health):
                        return health
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def watching(port: int) -> AsyncIterator[Statuses]:
    statuses = Statuses(port)
    ready = asyncio.Event()
    task = asyncio.create_task(statuses.run(ready))
    await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=TIMEOUT_S,
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    if task.done():
        task.result()
    try:
        yield statuses
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def start_agent(state: Path, port: int, nmea: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            str(FLEET_AGENT), "run", "--device-id", DEVICE, "--state-dir", str(state),
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--nmea-file", str(nmea),
            "--no-eta", stdout=out, stderr=out,
        )  # fmt: skip


async def stop_agent(agent: asyncio.subprocess.Process) -> None:
    if agent.returncode is None:
        agent.terminate()
        async with asyncio.timeout(TIMEOUT_S):
            await agent.wait()


def refused(kind: str, reason_start: str) -> Callable[[dict[str, Any]], bool]:
    def ok(health: dict[str, Any]) -> bool:
        refusal = health.get(f"{kind}_refused")
        return isinstance(refusal, dict) and str(refusal["reason"]).startswith(reason_start)

    return ok


def test_a_van_refuses_what_would_brick_it_and_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "van"
    state.mkdir()
    (state / "manifest.json").write_text(json.dumps(GOOD))
    nmea = tmp_path / "none.nmea"
    nmea.write_bytes(b"")
    log = tmp_path / "agent.log"

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                watching(broker.port) as statuses,
                aiomqtt.Client(
                    "127.0.0.1", broker.port, identifier="dispatch-test",
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as dispatch,
            ):  # fmt: skip
                agent = await start_agent(state, broker.port, nmea, log)
                try:
                    await first_run(statuses, dispatch, agent)
                    await stop_agent(agent)
                    since = len(statuses.health)
                    agent = await start_agent(state, broker.port, nmea, log)
                    await second_run(statuses, dispatch, agent, since)
                finally:
                    await stop_agent(agent)

    async def first_run(
        statuses: Statuses, dispatch: aiomqtt.Client, agent: asyncio.subprocess.Process
    ) -> None:
        health = await statuses.until(lambda h: h.get("manifest_route_id") == "R-good")
        assert (health["manifests_refused"], health["configs_refused"]) == (0, 0)
        assert health["config_revision"] == 0

        await dispatch.publish(downlink_topic(DEVICE, "config"), BAD_CONFIG, qos=1, retain=True)
        health = await statuses.until(refused("config", "geofence.index_cell_m"))
        assert health["config_refused"]["revision"] == 2
        assert health["config_refused"]["reason"] == (
            "geofence.index_cell_m: must be within [10, 10000] and finite, got 0.001"
        )
        assert (health["config_revision"], health["configs_refused"]) == (0, 1)

        await dispatch.publish(downlink_topic(DEVICE, "manifest"), PLANET, qos=1, retain=True)
        health = await statuses.until(refused("manifest", "route.coordinates[0]: is 15,345 km"))
        assert health["manifest_refused"]["route_id"] == "R-planet"
        assert health["manifest_route_id"] == "R-good"
        assert health["manifest_stops"] == 2

        await dispatch.publish(downlink_topic(DEVICE, "manifest"), OTHER_VANS, qos=1, retain=True)
        health = await statuses.until(refused("manifest", "device_id"))
        assert health["manifest_refused"]["route_id"] == "R-other"
        assert health["manifest_refused"]["reason"] == (
            "device_id: is 'van-9999', not this van's 'van-0001'"
        )
        assert (health["manifest_route_id"], health["manifests_refused"]) == ("R-good", 2)
        assert agent.returncode is None
        # Nothing refused reached the disk.
        assert json.loads((state / "manifest.json").read_text()) == GOOD
        assert not (state / "config.json").exists()

    async def second_run(
        statuses: Statuses,
        dispatch: aiomqtt.Client,
        agent: asyncio.subprocess.Process,
        since: int,
    ) -> None:
        # The broker delivers the retained config and manifest again: refused again,
        # and the van runs its stored day.
        health = await statuses.until(
            lambda h: h.get("configs_refused") == 1 and h.get("manifests_refused") == 1,
            since=since,
        )
        assert health["manifest_route_id"] == "R-good"
        assert health["manifest_refused"]["route_id"] == "R-other"
        assert health["config_refused"]["revision"] == 2
        assert health["config_revision"] == 0
        # A good config is taken as ever.
        await dispatch.publish(downlink_topic(DEVICE, "config"), GOOD_CONFIG, qos=1, retain=True)
        health = await statuses.until(lambda h: h.get("config_revision") == 3, since=since)
        assert health["manifest_route_id"] == "R-good"
        assert agent.returncode is None
        assert (state / "config.json").read_bytes() == GOOD_CONFIG

    asyncio.run(main())
    lines = log.read_text().splitlines()
    # Every refusal logged with its reason: 3 in the first run, 2 in the second.
    assert sum("config revision 2 refused: geofence.index_cell_m" in line for line in lines) == 2
    assert sum("manifest 'R-planet' refused: route.coordinates[0]" in line for line in lines) == 1
    assert sum("manifest 'R-other' refused: device_id" in line for line in lines) == 2
    assert not [line for line in lines if "Traceback" in line or "MemoryError" in line]


def fleet_ingest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")}
    return subprocess.run(
        [str(FLEET_INGEST), *map(str, args)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_publish_manifest_checks_as_the_van_before_it_sends(tmp_path: Path) -> None:
    settings = tmp_path / "ingest.toml"
    settings.write_text(f'[mqtt]\nport = {free_port()}\nclient_id = "dispatch-test"\n')
    good, planet, other, big = (tmp_path / f"{n}.json" for n in ("good", "planet", "other", "big"))
    good.write_text(json.dumps(GOOD))
    planet.write_bytes(PLANET)
    other.write_bytes(OTHER_VANS)
    # 12,000 stops: over the schema's 10,000, the van would refuse it.
    big.write_text(json.dumps(day_doc(12_000, 0)))
    cases: list[tuple[tuple[str | Path, ...], int, str]] = [
        (("--manifest", planet), 2, "the van would refuse it: route.coordinates[0]: is 15,345 km"),
        (("--manifest", big), 2, "the van would refuse it: stops: must be a list of at most"),
        (("--manifest", other, "--device", DEVICE), 2, "is for 'van-9999', not 'van-0001'"),
        (("--manifest", tmp_path / "absent.json"), 2, "cannot read"),
        (("--manifest", good), 1, "cannot connect to the broker"),
    ]
    for args, code, message in cases:
        r = fleet_ingest("publish-manifest", *args, "--config", settings)
        assert (r.returncode, message in r.stderr) == (code, True), (args, r.stderr)
    r = fleet_ingest("publish-manifest", "--manifest", good, "--dry-run", "--config", settings)
    assert r.returncode == 0, r.stderr
    size = len(json.dumps(GOOD, separators=(",", ":")).encode())
    assert r.stdout.strip() == (
        f"checked manifest R-good for van-0001 (2 stops): {size:,} bytes as JSON, "
        "limit 1,000,000; not published (--dry-run)"
    )


def test_publish_manifest_sends_what_the_van_reads(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    doc = day_doc(5000, 5000)
    big.write_text(json.dumps(doc))

    async def retained(port: int) -> bytes:
        async with aiomqtt.Client("127.0.0.1", port, identifier="van-probe") as client:
            await client.subscribe(downlink_topic(DEVICE, "manifest"), qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    return message.payload
        raise AssertionError("no retained manifest")

    with Mosquitto(tmp_path / "broker", extra="message_size_limit 1048576") as broker:
        settings = tmp_path / "ingest.toml"
        settings.write_text(f'[mqtt]\nport = {broker.port}\nclient_id = "dispatch-test"\n')
        r = fleet_ingest("publish-manifest", "--manifest", big, "--config", settings)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"fleet/v1/{DEVICE}/manifest: No matching subscribers"
        assert lines[1].startswith("published manifest R-big-5000 for van-0001 (5000 stops): ")
        assert lines[1].endswith(" bytes as gzip, limit 1,000,000, retained")
        payload = asyncio.run(retained(broker.port))
    from firmware_agent.contract.manifest import loads_manifest  # noqa: PLC0415

    assert payload[:2] == b"\x1f\x8b"
    assert loads_manifest(payload).raw == doc


def test_a_van_starts_past_what_an_older_version_stored(tmp_path: Path) -> None:
    """Before this change the van stored another van's manifest and the 62-byte config
    before it failed on them: on such a state directory it now starts, on an empty day
    and its own settings, and says why in its status health."""
    from tests.idle_agent import idle_agent  # noqa: PLC0415

    agent = idle_agent(tmp_path, device_id=DEVICE, eta=False)
    state = tmp_path / "state"
    state.mkdir()
    (state / "manifest.json").write_bytes(OTHER_VANS)
    (state / "config.json").write_bytes(BAD_CONFIG)

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while agent.uplink is None:
                    assert not run.done(), run
                    await asyncio.sleep(0.01)
            return agent.health()
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)

    health = asyncio.run(main())
    assert health["manifest_route_id"] == "none"
    assert health["manifest_refused"]["reason"] == (
        f"stored manifest {state / 'manifest.json'}: device_id: is 'van-9999', not this "
        "van's 'van-0001'; starting without it"
    )
    assert health["config_refused"]["reason"].startswith(
        f"stored config {state / 'config.json'}: geofence.index_cell_m: must be within"
    )
    assert (health["config_revision"], health["configs_refused"]) == (0, 1)
