"""End to end: the van remembers its day across SIGKILLs (issue 14).

A day with revisits and rescans is played into the real ``fleet-agent run`` (a
subprocess: NMEA file paced at ``SPEED`` times real time, a scan log, a private
Mosquitto, a real ingest worker on SQLite). The agent is SIGKILLed at random instants,
20 times, and restarted each time on the same state directory, as a power cut or a
watchdog does; each restart plays the day on from where the last run could have got
to, so the van's time never goes back (the minute the Pi takes to boot, the van drives
on: what it did meanwhile is not seen, as on a real van). Then:

- no parcel has a second POD: a parcel scanned again after a restart is rejected
  ``already_delivered`` (every parcel is rescanned 90 s after its delivery, and the
  revisits rescan their parcels);
- no stop reports an arrival twice: per stop, the visits say 1, 2, ... in order (a van
  killed while parked in a fence does not arrive again, the next real visit is 2);
- no ``eta`` for a stop after its arrival;
- as the other fault tests: every record the outbox numbered is stored exactly once,
  the POD chain unbroken.

The day: the simulator drives a generated town's first three stops, then back past the
second and to the first again (a GeoJSON route built from the town day's ground truth);
the stops of the way back are dropped from the manifest, so those dwells are revisits.
Random choices are seeded; FLEET_E2E_SEED=... reproduces a run.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import WorkerConfig
from firmware_agent.contract.outcomes import Outcome, is_delivery
from tests.broker import Mosquitto
from tests.uplinkday import (
    BIN,
    DEVICE,
    Day,
    ObservedWorker,
    Watcher,
    agent_command,
    assert_exactly_once,
    input_started,
    outbox_state,
    prepare_agent_state,
    saved_chain_state,
    stored_pods,
)

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("FLEET_E2E_SEED") or secrets.randbelow(2**32))
KILLS = 20
SPEED = 15.0  # the 17-minute day in about a minute of playing
RUN_S = (0.4, 3.6)  # wall seconds to SIGKILL, from the spawn or from the input playing
RESCAN_AFTER_S = 90.0
# The town day's stops the van serves, then the ones it comes back to (revisits).
OUT = ("S001", "S002", "S003")
BACK = (("S902", "S002"), ("S901", "S001"))


@dataclass(frozen=True)
class RevisitDay:
    day: Day
    nmea: list[tuple[datetime, bytes]]  # epochs: (time, sentences)
    scans: list[tuple[datetime, str]]  # (time, JSON line)


def _sim(*args: str) -> None:
    sim = shutil.which("fleet-sim", path=str(BIN))
    assert sim is not None
    subprocess.run([sim, "scenario", *args], check=True, capture_output=True, timeout=120)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _route_with_revisits(town: Path, out: Path) -> None:
    """A GeoJSON route: the town day's true track to the third stop's departure, then
    the same track backwards to the first stop, with the stops of the way back."""
    stops = json.loads((town / "stops.json").read_text(encoding="utf-8"))
    with (town / "truth.csv").open(encoding="utf-8") as f:
        rows = [(_utc(r["time_utc"]), float(r["lon"]), float(r["lat"])) for r in csv.DictReader(f)]
    turn, first = _utc(stops[2]["departure"]), _utc(stops[0]["arrival"])
    line: list[tuple[float, float]] = []
    for _, lon, lat in [r for r in rows if r[0] <= turn] + [
        r for r in reversed(rows) if first <= r[0] <= turn
    ]:
        p = (round(lon, 7), round(lat, 7))
        if not line or line[-1] != p:
            line.append(p)
    by_id = {s["id"]: s for s in stops}
    sites = [(s, by_id[s]) for s in OUT] + [(new, by_id[old]) for new, old in BACK]
    features: list[dict[str, Any]] = [
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": line}}
    ]
    features += [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [s["lon"], s["lat"]]},
            "properties": {"id": sid, "type": s["type"]},
        }
        for sid, s in sites
    ]
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


@pytest.fixture(scope="module")
def revisit_day(tmp_path_factory: pytest.TempPathFactory) -> RevisitDay:
    base = tmp_path_factory.mktemp("revisits")
    town = base / "town"
    _sim("--seed", "11", "--stops", "4", "--duration-h", "0.25", "--device-id", DEVICE,
         "--out", str(town))  # fmt: skip
    _route_with_revisits(town, base / "route.geojson")
    out = base / "day"
    _sim("--seed", "3", "--route", str(base / "route.geojson"), "--tunnels", "0",
         "--wrong-stop-rate", "0", "--garbage-rate", "0", "--device-id", DEVICE,
         "--out", str(out))  # fmt: skip
    # The stops of the way back leave the manifest: those dwells are revisits, and
    # their scans become rescans of the parcels delivered there the first time.
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    back = dict(BACK)
    manifest["stops"] = [s for s in manifest["stops"] if s["id"] not in back]
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    lines = [json.loads(x) for x in (out / "scans.jsonl").read_text(encoding="utf-8").splitlines()]
    first = [x for x in lines if x["truth"]["kind"] == "ok" and x["truth"]["stop_id"] not in back]
    scans: list[tuple[datetime, str]] = []
    for x in lines:
        stop = back.get(x["truth"]["stop_id"])
        scan = x
        if stop is not None:  # at a revisit: the same stop's parcels scanned again
            again = [y for y in first if y["truth"]["stop_id"] == stop]
            scan = {**x, "raw": again[len(scans) % len(again)]["raw"]}
        scans.append((_utc(scan["time"]), json.dumps(scan)))
    for x in first:  # and every parcel once more, 90 s after its delivery
        when = _utc(x["time"]) + timedelta(seconds=RESCAN_AFTER_S)
        scans.append((when, json.dumps({**x, "time": when.isoformat()})))
    scans.sort()
    epochs: list[tuple[datetime, bytes]] = []
    date = datetime.fromisoformat(manifest["date"]).replace(tzinfo=UTC)
    for line in (out / "nmea.log").read_bytes().splitlines(keepends=True):
        if line[3:6] == b"RMC":
            hhmmss = line.split(b",")[1].decode()
            at = date + timedelta(
                hours=int(hhmmss[:2]), minutes=int(hhmmss[2:4]), seconds=float(hhmmss[4:])
            )
            epochs.append((at, b""))
        if epochs:
            epochs[-1] = (epochs[-1][0], epochs[-1][1] + line)
    day = Day(out / "nmea.log", out / "scans.jsonl", out / "manifest.json")
    return RevisitDay(day, epochs, scans)


def _rest_of_day(day: RevisitDay, after: datetime, directory: Path, run: int) -> Day:
    """The day's input after ``after``: what the van lives through from then on."""
    nmea = directory / f"nmea-{run:02d}.log"
    nmea.write_bytes(b"".join(data for t, data in day.nmea if t > after))
    scans = directory / f"scans-{run:02d}.jsonl"
    scans.write_text("".join(line + "\n" for t, line in day.scans if t > after), encoding="utf-8")
    return Day(nmea, scans, day.day.manifest)


@pytest.fixture
def seed(record_property: Callable[[str, object], None]) -> int:
    print(f"FLEET_E2E_SEED={SEED}")
    record_property("seed", SEED)
    return SEED


def test_the_van_remembers_its_day_across_sigkills(
    revisit_day: RevisitDay, tmp_path: Path, seed: int
) -> None:
    """20 SIGKILLs at random instants of a day with revisits and rescans, a restart
    on the same state directory after each: no second POD, no repeated arrival, no
    ETA for a stop reached, every record stored once."""
    state = tmp_path / "van"
    public_key = prepare_agent_state(state, revisit_day.day)
    rng = random.Random(seed)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                worker = ObservedWorker(store, WorkerConfig(port=broker.port, backoff_max_s=0.5))
                worker_task = asyncio.create_task(worker.run(), name="ingest")
                try:
                    await worker.connected.wait()
                    await _kill_restart_and_finish(revisit_day, state, broker.port, rng)
                    await worker.idle()
                    await watcher.settle()
                finally:
                    worker_task.cancel()
                    await asyncio.gather(worker_task, return_exceptions=True)
                outbox = await outbox_state(state)
                last_seqs = {s: last for s, (last, _, _) in outbox.items()}
                assert outbox == {s: (n, n, 0) for s, n in last_seqs.items()}
                stored = await assert_exactly_once(
                    store,
                    last_seqs,
                    public_key,
                    watcher=watcher,
                    chain_state=saved_chain_state(state),
                )
                assert watcher.contract_failures() == []
                pods = sorted(await stored_pods(store, DEVICE), key=lambda p: p.seq)
                _check_the_day(
                    watcher.fleetstream("event", DEVICE),
                    [(p.record.parcel, p.record.outcome) for p in pods],
                )
                assert len(stored.pods) > 0

    asyncio.run(main())
    # The restarts did carry the day on (the agent says so at start).
    carried = [
        log.name
        for log in sorted(tmp_path.glob("agent-*.log"))
        if "carried on after a restart" in log.read_text()
    ]
    print(f"the day carried on by {len(carried)} of {KILLS} restarts")
    assert len(carried) >= KILLS // 2, carried


async def _kill_restart_and_finish(
    day: RevisitDay, state: Path, port: int, rng: random.Random
) -> None:
    """Run, SIGKILL, run on from where the van can have got to, ... then a last run to
    the end of the day, waiting for ingest to acknowledge everything."""
    directory = state.parent
    after = day.nmea[0][0] - timedelta(seconds=1)
    for run in range(KILLS + 1):
        last = run == KILLS
        part = _rest_of_day(day, after, directory, run)
        command = agent_command(state, part, port, speed=SPEED)
        log_path = directory / f"agent-{run:02d}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *command, *(["--exit-when-drained"] if last else []), stdout=log, stderr=log
            )
            if last:
                try:
                    async with asyncio.timeout(120):
                        rc = await proc.wait()
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                assert rc == 0, (directory / f"agent-{run:02d}.log").read_text()
                return
            # When the input started playing (the agent logs it first): the day plays
            # from then on, so the next run starts where this one can have got to.
            playing = asyncio.create_task(_playing_since(log_path, proc))
            delay_s = rng.uniform(*RUN_S)
            # Half the kills count from the launch (start-up included), half from the
            # moment the input plays: start-up alone takes 1.6-1.9 s on a loaded VM.
            if rng.random() < 0.5:
                await asyncio.shield(playing)
            await asyncio.sleep(delay_s)
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            assert await proc.wait() == -signal.SIGKILL, f"run {run} ended by itself"
            since = await playing
        # Paced from its first fix, the input cannot have got further than the wall
        # time it played (plus the log poll's step) allows; killed before it played,
        # the van saw nothing of this part.
        first = next((t for t, _ in day.nmea if t > after), day.nmea[-1][0])
        if since is not None:
            played_s = killed - since + 0.1
            after = first + timedelta(seconds=played_s * SPEED)


async def _playing_since(log_path: Path, proc: asyncio.subprocess.Process) -> float | None:
    """The monotonic time the agent logged its input playing, None if it never did."""
    await input_started(log_path, proc)
    if b"GNSS input: " in await asyncio.to_thread(log_path.read_bytes):
        return time.monotonic()
    return None


def _check_the_day(events: list[dict[str, Any]], pods: list[tuple[str, Outcome]]) -> None:
    """``pods``: (parcel, outcome) in chain order. A parcel's POD after a delivery of it
    is a second POD; one after a failed attempt (the day's reason cards: not home,
    refused, ...) is its next attempt."""
    pod_parcels = [parcel for parcel, _ in pods]
    delivered: set[str] = set()
    twice: list[str] = []
    for parcel, outcome in pods:
        if parcel in delivered:
            twice.append(parcel)
        if is_delivery(outcome):
            delivered.add(parcel)
    events = sorted(events, key=lambda e: e["seq"])
    visits: dict[str, list[int]] = defaultdict(list)
    reached: set[str] = set()
    late_etas: list[tuple[int, str]] = []
    rejected: Counter[str] = Counter()
    for e in events:
        if e["type"] == "arrival":
            visits[e["stop_id"]].append(e["visit"])
            reached.add(e["stop_id"])
        elif e["type"] == "eta" and e["stop_id"] in reached:
            late_etas.append((e["seq"], e["stop_id"]))
        elif e["type"] == "scan_rejected":
            rejected[e["reason"]] += 1
    repeated = {s: v for s, v in visits.items() if v != list(range(1, len(v) + 1))}
    # All three said at once: each is a way of forgetting the day.
    forgotten = bool(twice or repeated or late_etas)
    assert not forgotten, (
        f"parcels with a second POD: {twice}; arrivals repeated (stop: visits in "
        f"order): {repeated}; eta records for stops already reached (seq, stop): "
        f"{late_etas[:10]} ({len(late_etas)})"
    )
    print(
        f"{KILLS} kills: PODs {len(pod_parcels)}, visits {dict(visits)}, "
        f"scans rejected {dict(rejected)}"
    )
    # The day did what it is for: a revisit (visit 2) and rescans rejected.
    assert any(len(v) >= 2 for v in visits.values()), dict(visits)
    assert rejected["already_delivered"] >= 1, dict(rejected)
