"""Replay throughput: the whole van pipeline against raw pynmea2 parsing, same log, same run.

A 10 Hz simulator day with 200 stops (about 13 h, 470,000 epochs, 160 MB of NMEA) is
generated once into a temporary directory (``fleet-sim scenario``), then timed:

- baseline: ``pynmea2.parse`` of every line of the log (parsing alone, no state);
- ours: ``firmware_agent.replay.replay``: decoding, filters, geofences, exceptions,
  scans with signed PODs, telemetry selection and JSON encoding of every message.

Both read the log from memory. Figures: fixes/s and the ratio ours / baseline (best of
``--repeat`` runs each).

    .venv/bin/python bench/replay_throughput.py [--stops 200] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pynmea2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.manifest import load_manifest
from firmware_agent.contract.records import Record
from firmware_agent.faults import FaultCounter
from firmware_agent.pod.chain import PodChain
from firmware_agent.replay import json_line, replay
from firmware_agent.scan.log import read_scan_log
from firmware_agent.van import VanPipeline


def baseline(lines: list[str]) -> float:
    started = time.perf_counter()
    parse = pynmea2.parse
    for line in lines:
        with contextlib.suppress(pynmea2.ParseError):
            parse(line)
    return time.perf_counter() - started


def ours(day: Path, nmea: bytes) -> tuple[float, int, dict[str, int]]:
    manifest = load_manifest(day / "manifest.json")
    with (day / "scans.jsonl").open(encoding="utf-8") as f:
        scans = list(read_scan_log(f, FaultCounter()))
    van = VanPipeline(manifest, pods=PodChain(manifest.device_id, Ed25519PrivateKey.generate()))
    sink = io.StringIO()

    def emit(record: Record) -> None:
        sink.write(json_line(record))

    summary = replay(io.BytesIO(nmea), scans, van, emit)
    return summary.elapsed_s, summary.fixes, dict(summary.messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stops", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="reuse (or create) the day here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        day = args.dir or Path(tmp) / "day"
        if not (day / "nmea.log").exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "scenario",
                    "--seed",
                    "3",
                    "--stops",
                    str(args.stops),
                    "--rate-hz",
                    "10",
                    "--talker",
                    "GN",
                    "--out",
                    str(day),
                ],
                check=True,
            )
        nmea = (day / "nmea.log").read_bytes()
        lines = nmea.decode("ascii").splitlines()
        base_s = min(baseline(lines) for _ in range(args.repeat))
        runs = [ours(day, nmea) for _ in range(args.repeat)]
        ours_s, fixes, messages = min(runs)
        scenario = json.loads((day / "scenario.json").read_text())
    print(
        f"day: {args.stops} stops at 10 Hz, {len(nmea) / 1e6:.1f} MB, {len(lines):,} sentences,"
        f" {fixes:,} fixes; seed {scenario.get('config', scenario).get('seed', '?')}"
    )
    print(f"messages: {messages}")
    print(
        f"baseline pynmea2.parse : {base_s:7.2f} s  {fixes / base_s:10,.0f} epochs/s "
        f"({len(lines) / base_s:,.0f} sentences/s)"
    )
    print(f"replay (whole van)     : {ours_s:7.2f} s  {fixes / ours_s:10,.0f} fixes/s")
    print(f"ratio replay / pynmea2 : {base_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
