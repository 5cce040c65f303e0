"""Arrival detection: our geofence engine against a naive detector, in the same run.

Synthetic suite: N seeded simulator days (GNSS noise, multipath jumps at a raised rate,
a tunnel and an explicit outage (30 s by default) each), rendered to NMEA and replayed through the
agent's own decoder and van pipeline. Real trips: every CSV in
../shared/corpus/trajectories turned into NMEA by ``simulator.trips`` with stops placed
where the vehicle really dwelled.

For each stop the detector's arrival nearest to the true one (within MATCH_S) is the
match; any other arrival is false; a stop with none is missed. The error is detected
minus true arrival time (negative: reported early). The naive detector reports an
arrival whenever a fix enters a stop's radius (no confirmation, no quality gate).

    .venv/bin/python bench/arrivals.py [--scenarios 60] [--first-seed 1] [--stops 15]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest, parse_manifest
from firmware_agent.contract.records import Arrival
from firmware_agent.geofence.config import GeofenceConfig
from firmware_agent.geofence.index import Plane
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.pod.chain import PodChain
from firmware_agent.van import VanConfig, VanPipeline
from simulator.gnss_errors import MultipathConfig, OutageConfig, OutageWindow
from simulator.manifest import build_manifest
from simulator.nmea_writer import epoch_bytes
from simulator.scenario import ScenarioConfig, generate
from simulator.trips import write_trip_dir

MATCH_S = 300.0
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "trajectories"


@dataclass
class Tally:
    stops: int = 0
    detected: int = 0
    missed: int = 0
    false: int = 0
    errors_s: list[float] = field(default_factory=list)

    def add(self, truth: dict[str, datetime], arrivals: Iterable[tuple[str, datetime]]) -> None:
        by_stop: dict[str, list[datetime]] = defaultdict(list)
        for stop_id, t in arrivals:
            by_stop[stop_id].append(t)
        self.stops += len(truth)
        for stop_id, times in by_stop.items():
            if stop_id not in truth:
                self.false += len(times)
        for stop_id, true_t in truth.items():
            times = by_stop.get(stop_id, [])
            errors = sorted(((t - true_t).total_seconds() for t in times), key=abs)
            if errors and abs(errors[0]) <= MATCH_S:
                self.detected += 1
                self.errors_s.append(errors[0])
                self.false += len(errors) - 1
            else:
                self.missed += 1
                self.false += len(errors)

    def row(self, name: str) -> str:
        abs_err = sorted(abs(e) for e in self.errors_s)
        med = statistics.median(abs_err) if abs_err else math.nan
        p95 = (
            abs_err[min(len(abs_err) - 1, math.ceil(0.95 * len(abs_err)) - 1)]
            if abs_err
            else math.nan
        )
        signed = statistics.median(self.errors_s) if self.errors_s else math.nan
        return (
            f"| {name:<28} | {self.stops:5d} | {self.detected:8d} | {self.missed:6d} | "
            f"{self.false:5d} | {med:8.1f} | {p95:7.1f} | {signed:+9.1f} |"
        )


HEADER = (
    "| detector / suite              | stops | detected | missed | false | median|err| s "
    "| p95|err| s | median err s |\n"
    "|------------------------------|------:|---------:|-------:|------:|---------:|--------:|----------:|"
)


def naive_arrivals(manifest: Manifest, fixes: Sequence[Fix]) -> list[tuple[str, datetime]]:
    """Every entry of a fix into a stop's radius is an arrival."""
    first = manifest.stops[0]
    plane = Plane.at(first.lat, first.lon)
    centres = [(s.id, *plane.xy(s.lat, s.lon), s.radius_m) for s in manifest.stops]
    inside: set[str] = set()
    out = []
    for fix in fixes:
        if fix.lat is None or fix.lon is None or fix.time is None:
            continue
        x, y = plane.xy(fix.lat, fix.lon)
        for stop_id, cx, cy, r in centres:
            if math.hypot(x - cx, y - cy) <= r:
                if stop_id not in inside:
                    inside.add(stop_id)
                    out.append((stop_id, fix.time))
            else:
                inside.discard(stop_id)
    return out


GEOFENCE = GeofenceConfig()


def run_day(manifest: Manifest, nmea: bytes) -> tuple[list[tuple[str, datetime]], list[Fix]]:
    decoder = GnssDecoder()
    fixes = decoder.feed(nmea) + decoder.flush()
    van = VanPipeline(
        manifest,
        pods=PodChain("bench", Ed25519PrivateKey.generate()),
        config=VanConfig(geofence=GEOFENCE),
        telemetry=False,
    )
    arrivals = []
    for fix in fixes:
        for r in van.on_fix(fix):
            if isinstance(r, Arrival):
                arrivals.append((r.stop_id, r.time))
    return arrivals, fixes


def synthetic(first: int, n: int, n_stops: int, outage_s: float, ours: Tally, naive: Tally) -> None:
    for seed in range(first, first + n):
        config = ScenarioConfig(
            seed=seed,
            n_stops=n_stops,
            rate_hz=1,
            talker="GN" if seed % 2 else "GP",
            multipath=MultipathConfig(rate_per_h=20.0),
            outages=OutageConfig(
                tunnels=1, windows=(OutageWindow(start_s=600.0 + 37.0 * seed, duration_s=outage_s),)
            ),
        )
        scenario = generate(config)
        manifest = parse_manifest(build_manifest(scenario, seed=seed))
        nmea = b"".join(epoch_bytes(e, config.talker) for e in scenario.epochs())
        arrivals, fixes = run_day(manifest, nmea)
        truth = {s.id: s.arrival for s in scenario.stops}
        ours.add(truth, arrivals)
        naive.add(truth, naive_arrivals(manifest, fixes))
        print(f"  seed {seed:3d}: {len(truth)} stops, {len(fixes)} fixes", file=sys.stderr)


def real_trips(ours: Tally, naive: Tally) -> int:
    csvs = sorted(CORPUS.glob("*/*.csv"))
    with tempfile.TemporaryDirectory() as tmp:
        for i, csv in enumerate(csvs):
            out = Path(tmp) / f"trip{i}"
            write_trip_dir(csv, out, rate_hz=1)
            manifest = parse_manifest(json.loads((out / "manifest.json").read_text()))
            if not manifest.stops:
                continue
            truth = {
                s["stop_id"]: datetime.fromisoformat(s["arrival"])
                for s in json.loads((out / "truth_stops.json").read_text())
            }
            arrivals, fixes = run_day(manifest, (out / "nmea.log").read_bytes())
            ours.add(truth, arrivals)
            naive.add(truth, naive_arrivals(manifest, fixes))
    return len(csvs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", type=int, default=60)
    parser.add_argument("--first-seed", type=int, default=1, help="seeds first..first+N-1")
    parser.add_argument("--stops", type=int, default=15)
    parser.add_argument("--outage-s", type=float, default=30.0, help="one outage per day")
    parser.add_argument("--confirm-dwell-s", type=float, default=GeofenceConfig().confirm_dwell_s)
    args = parser.parse_args()
    global GEOFENCE  # noqa: PLW0603 (a benchmark knob, set once before any run)
    GEOFENCE = GeofenceConfig(confirm_dwell_s=args.confirm_dwell_s)
    print(f"geofence: {GEOFENCE}", file=sys.stderr)
    ours, naive = Tally(), Tally()
    synthetic(args.first_seed, args.scenarios, args.stops, args.outage_s, ours, naive)
    real_ours, real_naive = Tally(), Tally()
    n_trips = real_trips(real_ours, real_naive) if CORPUS.is_dir() else 0
    print(HEADER)
    print(ours.row(f"ours, synthetic x{args.scenarios}"))
    print(naive.row(f"naive, synthetic x{args.scenarios}"))
    if n_trips:
        print(real_ours.row(f"ours, real trips x{n_trips}"))
        print(real_naive.row(f"naive, real trips x{n_trips}"))
    else:
        print(f"(no real trips: {CORPUS} not found)")


if __name__ == "__main__":
    main()
