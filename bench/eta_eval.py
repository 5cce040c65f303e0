"""ETA accuracy and cost: the shipped model against the naive baseline, in the same run.

Synthetic suite: simulator days whose seeds the model never saw (default 1-40; the
shipped model was trained on 1000-1059, and the script refuses seeds its training
record lists). Real runs: the Liverpool bus runs in
../shared/corpus/trajectories/liverpool_bus, with stops where the buses really halted
(:func:`simulator.eta_days.trip_day`, as bench/arrivals.py replays them). Both
suites are sampled every 30 s exactly as the training rows are
(:mod:`cloud_ingest.eta.dataset`); each (sample time, unserved stop) is one prediction
of the stop's arrival, scored against the real arrival. Predictions go through the
agent's own path: :class:`~firmware_agent.eta.predictor.EtaPredictor` on the .tflite
file, batches of 256 rows.

Per suite and horizon (minutes before the real arrival): MAE, MAPE (over the real time
to arrival, floored at 60 s) and p90 of the absolute error of the predicted arrival
time, model and baseline, and the ratio of their MAEs. Goals (issue 5): ratio <= 0.6 on
the synthetic suite and <= 1.0 on the real runs, judged on all rows within 60 minutes
(the four buckets); the ratio over every horizon is printed too.

Cost: one ETA update of a 150-stop route (the SpeedHistory update, the projection on the
plan, the features of every remaining stop and one invoke), median and p99 over 600
updates at 1 Hz along the day; and the model's load time (checks, interpreter, trial
invoke). Figures only: nothing here asserts a time.

    .venv/bin/python bench/eta_eval.py [--seeds 1-40] [--stops 25] [--quick] [--model FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud_ingest.eta.dataset import EtaDataset, build_dataset
from cloud_ingest.eta.train import ErrorStats
from firmware_agent.contract.eta_features import (
    FeatureMatrix,
    RoutePlan,
    SpeedHistory,
    eta_features,
)
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.eta.models import DEFAULT_MODEL
from firmware_agent.eta.predictor import EtaPredictor
from simulator.eta_days import format_seeds, parse_seeds, simulator_day, trained_seeds, trip_day
from simulator.manifest import build_manifest
from simulator.scenario import ScenarioConfig, generate

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "trajectories"
BUS_RUNS = CORPUS / "liverpool_bus"
SHIPPED = Path(__file__).resolve().parents[1] / "firmware_agent" / "eta" / "models" / DEFAULT_MODEL
BUCKETS_MIN = ((0, 5), (5, 15), (15, 30), (30, 60))
GOALS = {"synthetic": 0.6, "real": 1.0}
COST_STOPS = 150
COST_UPDATES = 600
COST_WARMUP_S = 900  # a quarter of an hour of history before the timed updates


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # "synthetic" or "real"
    what: str
    rows: EtaDataset
    predicted_s: npt.NDArray[np.float64]


def predict(predictor: EtaPredictor, rows: EtaDataset) -> npt.NDArray[np.float64]:
    """The agent's answer for every row, 256 rows (one invoke) at a time."""
    out = []
    for lo in range(0, len(rows), 256):
        values = rows.x[lo : lo + 256]
        out.append(predictor.predict(FeatureMatrix(values, ("",) * len(values))).eta_s)
    return np.concatenate(out) if out else np.zeros(0)


def table(suites: list[Suite]) -> list[str]:
    lines = [
        "| suite | horizon | rows | MAE model s | MAE base s | ratio | MAPE model % "
        "| MAPE base % | p90 model s | p90 base s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for suite in suites:
        actual = suite.rows.actual_s
        spans = [(f"{lo}-{hi} min", lo * 60.0, hi * 60.0) for lo, hi in BUCKETS_MIN]
        spans += [("0-60 min", 0.0, 3600.0), ("all", 0.0, np.inf)]
        for label, lo, hi in spans:
            rows = (actual >= lo) & (actual < hi)
            m = ErrorStats.of(suite.predicted_s[rows], actual[rows])
            b = ErrorStats.of(suite.rows.naive_s[rows], actual[rows])
            ratio = m.mae_s / b.mae_s if b.n else float("nan")
            lines.append(
                f"| {suite.name} | {label} | {m.n} | {m.mae_s:.0f} | {b.mae_s:.0f} | "
                f"{ratio:.2f} | {m.mape_pct:.1f} | {b.mape_pct:.1f} | {m.p90_s:.0f} | "
                f"{b.p90_s:.0f} |"
            )
    return lines


def verdicts(suites: list[Suite]) -> list[str]:
    lines = []
    for suite in suites:
        within = suite.rows.actual_s < 3600.0
        model = ErrorStats.of(suite.predicted_s[within], suite.rows.actual_s[within])
        base = ErrorStats.of(suite.rows.naive_s[within], suite.rows.actual_s[within])
        ratio = model.mae_s / base.mae_s
        goal = GOALS[suite.kind]
        worse = [
            f"{lo}-{hi} min"
            for lo, hi in BUCKETS_MIN
            if _bucket_ratio(suite, lo * 60.0, hi * 60.0) > goal
        ]
        lines.append(
            f"{suite.name}: model MAE / baseline MAE = {ratio:.2f} within 60 min "
            f"(goal <= {goal:.1f}): {'MET' if ratio <= goal else 'NOT MET'}"
            + (f"; buckets above the goal: {', '.join(worse)}" if worse else "")
        )
    return lines


def _bucket_ratio(suite: Suite, lo_s: float, hi_s: float) -> float:
    rows = (suite.rows.actual_s >= lo_s) & (suite.rows.actual_s < hi_s)
    base = ErrorStats.of(suite.rows.naive_s[rows], suite.rows.actual_s[rows])
    model = ErrorStats.of(suite.predicted_s[rows], suite.rows.actual_s[rows])
    return model.mae_s / base.mae_s if base.n else float("nan")


def cost(model: bytes) -> list[str]:
    """Per-update cost on a 150-stop route, and the model's load time."""
    loads_us = []
    for _ in range(20):
        started = time.perf_counter()
        predictor = EtaPredictor.load(model)
        loads_us.append((time.perf_counter() - started) * 1e6)
    scenario = generate(ScenarioConfig(seed=4242, n_stops=COST_STOPS))
    manifest = parse_manifest(build_manifest(scenario, seed=4242))
    started = time.perf_counter()
    plan = RoutePlan.from_manifest(manifest)
    plan_ms = (time.perf_counter() - started) * 1e3
    history = SpeedHistory()
    position = None
    served = np.zeros(plan.n_stops, dtype=np.bool_)
    features_us, invoke_us, total_us = [], [], []
    remaining = []
    for t_s in range(COST_WARMUP_S + COST_UPDATES):
        state = scenario.trajectory.state_at(float(t_s))
        lat, lon = scenario.frame.to_geodetic(state.east_m, state.north_m)
        now = scenario.start + timedelta(seconds=t_s)
        fix = Fix(
            time=now,
            tod_s=0.0,
            lat=lat,
            lon=lon,
            speed_mps=state.speed_mps,
            mode=FixMode.FIX_3D,
            hdop=0.9,
            sats_used=10,
        )
        t0 = time.perf_counter()
        history.update(fix)
        position = plan.project(lat, lon, now, served, since=position)
        features = eta_features(now, plan, position, served, history)
        t1 = time.perf_counter()
        prediction = predictor.predict(features)
        t2 = time.perf_counter()
        if t_s >= COST_WARMUP_S:
            features_us.append((t1 - t0) * 1e6)
            invoke_us.append((t2 - t1) * 1e6)
            total_us.append((t2 - t0) * 1e6)
            remaining.append(len(prediction.eta_s))

    def med_p99(values: list[float]) -> str:
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return f"median {statistics.median(ordered):.0f} us, p99 {p99:.0f} us"

    return [
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, interpreter {predictor.backend}",
        f"model: {len(model)} bytes; load (checks, interpreter, trial invoke): "
        f"median {statistics.median(loads_us) / 1000:.2f} ms over {len(loads_us)} loads",
        f"150-stop route: plan built once in {plan_ms:.1f} ms; per update ({COST_UPDATES} "
        f"updates, {min(remaining)}-{max(remaining)} stops predicted):",
        f"  history + projection + features: {med_p99(features_us)}",
        f"  predict (one invoke):            {med_p99(invoke_us)}",
        f"  total:                           {med_p99(total_us)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None, help="held-out simulator days (1-40)")
    parser.add_argument("--stops", type=int, default=None, help="stops per day (25)")
    parser.add_argument("--quick", action="store_true", help="6 days of 15 stops: under 1 min")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the .tflite to evaluate")
    parser.add_argument("--jobs", type=int, default=2, help="processes simulating days (2)")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds or ("1-6" if args.quick else "1-40"))
    n_stops = args.stops or (15 if args.quick else 25)

    model = args.model.read_bytes()
    predictor = EtaPredictor.load(model)
    if predictor.model_version is None:
        sys.exit(f"eta_eval: the model cannot run here: {predictor.unavailable}")
    overlap = trained_seeds(json.loads(read_metadata(model).get("training", "{}"))) & set(seeds)
    if overlap:
        sys.exit(f"eta_eval: seeds {format_seeds(sorted(overlap))} were used in training")
    print(f"model {predictor.model_version} ({args.model})", file=sys.stderr)

    started = time.perf_counter()
    suites = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        synthetic = build_dataset(pool.map(simulator_day, seeds, [n_stops] * len(seeds)))
    suites.append(
        Suite(
            f"synthetic x{len(seeds)}",
            "synthetic",
            f"simulator seeds {format_seeds(seeds)}, {n_stops} stops",
            synthetic,
            predict(predictor, synthetic),
        )
    )
    print(f"  synthetic: {len(synthetic)} rows", file=sys.stderr)
    runs = sorted(BUS_RUNS.glob("*.csv")) if BUS_RUNS.is_dir() else []
    if runs:
        real = build_dataset(trip_day(csv) for csv in runs)
        suites.append(
            Suite(
                f"real bus x{len(runs)}",
                "real",
                f"{BUS_RUNS.name}: {len(runs)} runs",
                real,
                predict(predictor, real),
            )
        )
        print(f"  real runs: {len(real)} rows", file=sys.stderr)
    elapsed_s = time.perf_counter() - started

    for suite in suites:
        print(f"{suite.name}: {suite.what}")
    print()
    print("\n".join(table(suites)))
    print()
    print("\n".join(verdicts(suites)))
    if not runs:
        print(f"(no real runs: {BUS_RUNS} not found)")
    print()
    print("\n".join(cost(model)))
    print(f"(suites built and scored in {elapsed_s:.0f} s)")


if __name__ == "__main__":
    main()
