"""The simulator against the road: how the simulator's vans move next to real trips.

Real trips: every CSV under ../shared/corpus/trajectories (liverpool_bus, munich_car,
omaha_car, helsinki_car_bus, envirocar_de), read with the project's own reader
(:func:`simulator.trace.read_trace_csv`, as ``fleet-sim trip`` reads them), grouped by
the vehicle kind the corpus gives (MANIFEST.csv's ``vehicle`` column: bus, car, van; the
sets it does not list by their name: liverpool_bus, munich_car) and by set, since the
sets are sampled from 1 s to ~25 s. Simulated: the delivery days ``fleet-sim eta-days``
makes (:func:`simulator.eta_days.simulator_day`, fixed seeds), the fixes the receiver
reported.

Each figure comes from positions alone, the same way on both sides
(:mod:`simulator.road_stats`: segments weighted by their duration, stopped below 1 m/s,
a halt >= 20 s of it); and each real group is compared with the simulated days thinned
to that group's median sampling interval, so both sides lose the same detail. Printed
per group: real, simulated, and simulated / real for every figure.

    .venv/bin/python bench/sim_vs_real.py [--seeds 1-20] [--stops 25] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from simulator.eta_days import DEFAULT_SIM_STOPS, format_seeds, parse_seeds, simulator_day
from simulator.road_stats import (
    MIN_SPAN_S,
    Sample,
    figures,
    pooled,
    samples_from_fixes,
    samples_from_trace,
    thin,
    trip_stats,
)
from simulator.trace import read_trace_csv

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "trajectories"
SET_KINDS = {"liverpool_bus": "bus", "munich_car": "car"}  # sets MANIFEST.csv does not list
COLUMNS = (
    ("km", "km", "{:.0f}"),
    ("hours", "h", "{:.1f}"),
    ("move_p10_mps", "move p10 m/s", "{:.1f}"),
    ("move_p50_mps", "move p50 m/s", "{:.1f}"),
    ("move_p90_mps", "move p90 m/s", "{:.1f}"),
    ("mean_speed_mps", "mean speed m/s", "{:.1f}"),
    ("stopped_pct", "stopped %", "{:.0f}"),
    ("halts_per_km", "halts /km", "{:.2f}"),
    ("dwell_p10_s", "dwell p10 s", "{:.0f}"),
    ("dwell_p50_s", "dwell p50 s", "{:.0f}"),
    ("dwell_p90_s", "dwell p90 s", "{:.0f}"),
    ("off_stop_halts_per_km", "halts off stops /km", "{:.2f}"),
    ("short_halts_per_km", "halts <60 s /km", "{:.2f}"),
    ("slowdowns_per_km", "slowdowns /km", "{:.2f}"),
    ("pace_change_p50", "5-min pace change p50 x", "{:.2f}"),
    ("pace_change_p90", "5-min pace change p90 x", "{:.2f}"),
)


def kind_of(vehicle: str, set_name: str) -> str:
    """bus, car or van from MANIFEST.csv's vehicle text (or the set's name)."""
    text = vehicle.lower()
    if text.startswith("bus"):
        return "bus"
    if text.startswith("van") or " van " in f" {text} ":
        return "van"
    if text:
        return "car"
    return SET_KINDS.get(set_name, "car")


def real_groups() -> dict[tuple[str, str], list[list[Sample]]]:
    """(kind, set) -> the traces of its trips."""
    vehicles: dict[tuple[str, str], str] = {}
    with (CORPUS / "MANIFEST.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            vehicles[(row["set"], row["file"])] = row["vehicle"]
    groups: dict[tuple[str, str], list[list[Sample]]] = defaultdict(list)
    for path in sorted(CORPUS.glob("*/*.csv")):
        set_name = path.parent.name
        kind = kind_of(vehicles.get((set_name, path.name), ""), set_name)
        groups[(kind, set_name)].append(samples_from_trace(read_trace_csv(path)))
    return dict(sorted(groups.items()))


def median_interval_s(traces: list[list[Sample]]) -> float:
    """The median over trips of each trip's median interval, whole seconds, at least
    road_stats.MIN_SPAN_S (every trace is thinned to that anyway)."""
    per_trip = [statistics.median(b.t_s - a.t_s for a, b in itertools.pairwise(t)) for t in traces]
    return max(MIN_SPAN_S, float(round(statistics.median(per_trip))))


SimTrace = tuple[list[Sample], list[tuple[float, float]]]


def sim_trace(seed: int, n_stops: int) -> SimTrace:
    """A simulated day's reported fixes and its planned stops."""
    day = simulator_day(seed, n_stops)
    return samples_from_fixes(day.fixes), [(s.lat, s.lon) for s in day.manifest.stops]


def cell(value: float, fmt: str) -> str:
    return "-" if value != value else fmt.format(value)  # NaN


def ratio(sim: float, real: float) -> str:
    if sim != sim or real != real or real == 0:
        return "-"
    return f"{sim / real:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1-20", help="simulator days (1-20)")
    parser.add_argument("--stops", type=int, default=DEFAULT_SIM_STOPS, help="stops per day")
    parser.add_argument("--jobs", type=int, default=2, help="processes for simulator days")
    args = parser.parse_args()
    if not (CORPUS / "MANIFEST.csv").is_file():
        print(
            f"no real trips: {CORPUS} not found (../shared/corpus beside the repo); "
            "nothing to compare"
        )
        return
    seeds = parse_seeds(args.seeds)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"# sim_vs_real {datetime.now(UTC):%Y-%m-%dT%H:%MZ}, commit {commit}")
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    started = time.monotonic()
    groups = real_groups()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        sims = list(pool.map(sim_trace, seeds, [args.stops] * len(seeds)))
    print(
        f"# real: {sum(len(t) for t in groups.values())} trips in {len(groups)} groups; "
        f"simulated: {len(sims)} days (seeds {format_seeds(seeds)}, {args.stops} stops), "
        f"{time.monotonic() - started:.0f} s to load"
    )
    print()
    print("| group | side | trips | interval s | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|---|--:|--:|" + "--:|" * len(COLUMNS))
    sim_cache: dict[float, dict[str, float]] = {}

    def sim_at(interval_s: float) -> dict[str, float]:
        if interval_s not in sim_cache:
            sim_cache[interval_s] = figures(
                pooled(trip_stats(thin(s, interval_s), stops) for s, stops in sims)
            )
        return sim_cache[interval_s]

    def row(group: str, side: str, n: int, interval_s: float, figs: dict[str, float]) -> None:
        cells = [cell(figs[key], fmt) for key, _, fmt in COLUMNS]
        print(f"| {group} | {side} | {n} | {interval_s:g} | " + " | ".join(cells) + " |")

    row("simulator as generated", "sim", len(sims), MIN_SPAN_S, sim_at(MIN_SPAN_S))
    for (kind, set_name), traces in groups.items():
        interval_s = median_interval_s(traces)
        real = figures(pooled(trip_stats(t) for t in traces))
        sim = sim_at(interval_s)
        label = f"{kind}: {set_name}"
        row(label, "real", len(traces), interval_s, real)
        row(label, f"sim @{interval_s:g} s", len(sims), interval_s, sim)
        ratios = [
            ratio(sim[key], real[key]) if key not in {"km", "hours"} else ""
            for key, _, _ in COLUMNS
        ]
        print(f"| {label} | sim / real | | | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
