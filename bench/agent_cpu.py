"""The agent's CPU at 10 Hz fixes, in real time, with and without on-device ETAs.

A Raspberry Pi 4 must keep up with a 10 Hz receiver while it predicts every remaining
stop. This bench runs the real agent process (``fleet-agent run``: decoder, filters,
geofences, ETA tracker and model, durable SQLite outbox, MQTT uplink to a private
Mosquitto, acknowledged by an in-process ingest worker on SQLite) playing a 10 Hz NMEA
log at real time (``--speed 1``) with a 150-stop manifest, and reads the process's CPU
time from ``/proc`` over a window after a warm-up (start-up, imports and model load are
not in the window). Baseline, same run, same log, same pacing: a process that only
parses every line with ``pynmea2.parse``.

The NMEA is the first minutes of simulator day ``--seed`` at 10 Hz; the manifest is the
whole day's (the same seed gives the same stops at any rate), so every prediction
covers all its stops.

    .venv/bin/python bench/agent_cpu.py [--stops 150] [--warmup-s 20] [--measure-s 60]

Figures: CPU seconds per wall second (one core = 100 %), CPU per fix, peak RSS, and the
ratio to the pynmea2 baseline. Measured here on x86; a Pi 4's cores are slower, so
read the ratio and the per-fix cost, not the percentage, when sizing a Pi.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pynmea2
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.contract.keys import load_or_create_device_key
from simulator.broker import Mosquitto
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir

DEVICE_ID = "van-bench"
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_BIN = Path(sys.executable).parent


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pace_pynmea2(path: Path, rate_hz: float) -> None:
    """The baseline process: parse every line, paced at ``rate_hz`` epochs per second
    (an epoch starts where the sentence time changes), as a receiver delivers them."""
    started = time.monotonic()
    epochs = 0
    last_time = None
    with path.open(encoding="ascii", errors="replace") as lines:
        for line in lines:
            try:
                message = pynmea2.parse(line)
            except pynmea2.ParseError:
                continue
            stamp = getattr(message, "timestamp", None)
            if stamp is not None and stamp != last_time:
                last_time = stamp
                epochs += 1
                delay = started + epochs / rate_hz - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    cpu_s: float
    wall_s: float
    rss_mb: float
    fixes: int

    @property
    def share(self) -> float:
        return self.cpu_s / self.wall_s


class IngestThread:
    """An ingest worker on SQLite, in a thread of its own, acknowledging the agent."""

    def __init__(self, db: Path, port: int, public_key: bytes) -> None:
        self._db, self._port, self._key = db, port, public_key
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._task: asyncio.Task[None] | None = None

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        async with SqliteStore(self._db) as store:
            await store.migrate()
            await store.register_device(DEVICE_ID, self._key)
            worker = IngestWorker(store, WorkerConfig(port=self._port))
            self._task = asyncio.current_task()
            runner = asyncio.create_task(worker.run(), name="ingest-worker")
            await worker.connected.wait()
            self._ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def __enter__(self) -> IngestThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the ingest worker did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:  # cancelling the main task cancels the worker it awaits
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def measure(name: str, argv: list[str], warmup_s: float, measure_s: float, fixes: int) -> Run:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(warmup_s)
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        cpu0, wall0 = process_cpu_s(process.pid), time.monotonic()
        time.sleep(measure_s)
        if process.poll() is not None:
            raise RuntimeError(f"{name} ended before the window closed; raise the log length")
        cpu1, wall1 = process_cpu_s(process.pid), time.monotonic()
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Run(name, cpu1 - cpu0, wall1 - wall0, rss, fixes)


@contextlib.contextmanager
def day_files(work: Path, seed: int, stops: int, length_s: float) -> Iterator[Path]:
    """The 10 Hz NMEA of the first ``length_s`` and the whole day's manifest."""
    whole = generate(ScenarioConfig(seed=seed, n_stops=stops, rate_hz=1, talker="GN"))
    write_scenario_dir(whole, work / "whole", device_id=DEVICE_ID)
    short = generate(
        ScenarioConfig(seed=seed, n_stops=stops, rate_hz=10, talker="GN", max_duration_s=length_s)
    )
    write_scenario_dir(short, work / "day", device_id=DEVICE_ID)
    (work / "day" / "manifest.json").write_bytes((work / "whole" / "manifest.json").read_bytes())
    yield work / "day"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=150)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--warmup-s", type=float, default=20.0)
    parser.add_argument("--measure-s", type=float, default=60.0)
    parser.add_argument("--pace-pynmea2", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pace_pynmea2 is not None:  # the baseline's own process
        pace_pynmea2(args.pace_pynmea2, 10.0)
        return 0

    load = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; Python "
        f"{sys.version.split()[0]}"
    )
    fixes = round(10 * args.measure_s)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="agent-cpu-") as tmp:
        work = Path(tmp)
        length_s = args.warmup_s + args.measure_s + 60
        with day_files(work, args.seed, args.stops, length_s) as day:
            nmea = day / "nmea.log"
            print(
                f"log: seed {args.seed}, {nmea.stat().st_size / 1e6:.1f} MB of 10 Hz NMEA "
                f"({length_s:.0f} s), manifest of {args.stops} stops"
            )
            runs.append(
                measure(
                    "baseline: pynmea2.parse, paced",
                    [sys.executable, __file__, "--pace-pynmea2", str(nmea)],
                    args.warmup_s,
                    args.measure_s,
                    fixes,
                )
            )
            with Mosquitto(work / "broker", persistence=False) as broker:
                key = load_or_create_device_key(work / "key" / "device.key")
                public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                with IngestThread(work / "ingest.db", broker.port, public):
                    for name, extra in (
                        ("agent, ETAs off (--no-eta)", ["--no-eta"]),
                        ("agent, ETAs with the shipped model", []),
                    ):
                        state = work / f"van-{len(runs)}"
                        state.mkdir()
                        shutil.copy2(work / "key" / "device.key", state / "device.key")
                        shutil.copy2(day / "manifest.json", state / "manifest.json")
                        argv = [
                            str(_BIN / "fleet-agent"), "run",
                            "--device-id", DEVICE_ID,
                            "--state-dir", str(state),
                            "--mqtt-port", str(broker.port),
                            "--nmea-file", str(nmea),
                            "--speed", "1",
                            *extra,
                        ]  # fmt: skip
                        runs.append(measure(name, argv, args.warmup_s, args.measure_s, fixes))
    base = runs[0]
    print(
        f"window: {args.measure_s:.0f} s after {args.warmup_s:.0f} s of warm-up, "
        f"{fixes} epochs at 10 Hz"
    )
    print()
    print("| process | CPU s | share of one core | CPU per fix | peak RSS MB | / baseline |")
    print("|---|--:|--:|--:|--:|--:|")
    for run in runs:
        print(
            f"| {run.name} | {run.cpu_s:.2f} | {100 * run.share:.2f} % | "
            f"{1e6 * run.cpu_s / run.fixes:.0f} us | {run.rss_mb:.0f} | "
            f"{run.share / base.share:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
