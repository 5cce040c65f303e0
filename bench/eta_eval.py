"""ETA accuracy as a customer sees it, on simulated days and real trips, in one run.

Every day is played through the van's real code: the fixes through
:class:`~firmware_agent.van.VanPipeline` with an
:class:`~firmware_agent.eta.predictor.EtaPredictor` on a real .tflite file (its geofence
makes the arrivals, its :class:`~firmware_agent.eta.tracker.EtaTracker` decides what to
publish), and every record it publishes is kept. Scoring (:mod:`simulator.eta_scoring`):
for each stop really reached at T, at every instant t = T - 30 s, T - 60 s, ... back to
the day's first position and within 60 minutes of T, the latest ``eta`` record the van
had published for the stop at or before t (a stale record counts at every later
instant; an instant before any record counts as "no ETA shown") against the naive a
backend computes at t from positions alone: the straight-line distance from the
position at t through the stops still to serve up to the target (planned order, after
the last stop really reached by t, without those served), over the mean speed of the
last 5 minutes of positions (path length over time spanned, positions at least 5 s
apart), floored at 2 m/s.

Suites:

1. ``synthetic``: held-out simulator days (default seeds 1-40, 25 stops; the script
   refuses seeds the model's training record lists), with the model as given
   (``--model``, default the shipped one).
2. ``real``: the 38 real trips of ../shared/corpus/trajectories (all five sets), with a
   manifest of the places where the vehicle stood for 60 s or more (halts of samples
   within 15 m, :func:`simulator.trips.find_dwells`), radius 50 m, in the order
   reached. Leave-one-trip-out: for each trip, a model trained
   (:func:`cloud_ingest.eta.dataset.build_dataset`, :func:`cloud_ingest.eta.train.train`,
   :func:`cloud_ingest.eta.train.export_model`) on the simulator training days
   (default seeds 1000-1059, 25 stops: the shipped model's) plus every other real trip
   (their manifests of 20 s and of 60 s halts, as the shipped model's training; both
   manifests of the left-out recording are left out), with
   :data:`cloud_ingest.eta.train.QUICK_CONFIG` (one member, 15 epochs, its out-of-fold
   calibration included; ``--epochs`` changes the epochs); then the trip is played
   through the van with that model.
3. ``real + drive-pasts``: the same trips, each with the same fold model, with 1-3
   stops added to its manifest that the vehicle drove past: on the trip's path, at
   least 200 m from every served stop and from each other, at a sample passed at more
   than 6 m/s, before the last halt, inserted at their place in the order reached,
   drawn by a random stream seeded with the trip's name (and ``--drive-seed``). They
   have no arrival, so they are not scored; the served stops behind them are.
4. ``real, shipped model``: the real trips (served stops only) with the model as given,
   for reference (no training: ``--no-shipped-real`` leaves it out). The shipped model
   was trained on every corpus trip: this suite is not held out, and only says how far
   the held-out figures are from the model that has seen the trip.

A trip without a halt (or, for suite 3, without a drive-past place) is listed as
skipped with the reason.

Printed per suite, by horizon (0-5, 5-15, 15-30, 30-60 min) and overall (the four
together): instants, share with an ETA shown, MAE model and MAE naive over the instants
with an ETA shown (and the naive over every instant), their ratio; interval coverage
(share of shown instants where T lies within [eta_p10, eta_p90] of the latest record,
and the p10 and p90 sides alone) when the records carry ``eta_p10``/``eta_p90``, else
"n/a"; records by type; the goals (real: ratio <= 0.8 overall and <= 1.0 per bucket,
coverage 75-85 %; synthetic: <= 0.4). ``--json FILE`` writes every figure. Then the
CPU cost of one ETA update (as before): figures only, nothing here asserts a time.

Run time (sim training days and plays in ``--jobs`` processes, one fold per task; one
fold trains in 40-130 s on a loaded 2-CPU VM, 21 folds): the defaults took 17-21 min
there (780-910 s CPU); ``--quick`` (6 held-out days of 15 stops; folds trained on 12
simulator days, at most 20 epochs: its real figures are not the full run's) took 4 min.

    .venv/bin/python bench/eta_eval.py [--quick] [--seeds 1-40] [--stops 25]
        [--train-seeds 1000-1059] [--epochs 60] [--model FILE] [--jobs 2]
        [--drive-seed 0] [--trips GLOB] [--no-shipped-real] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest.eta.dataset import EtaDataset, build_dataset
from cloud_ingest.eta.train import (
    QUICK_CONFIG,
    TrainConfig,
    day_source,
    default_model_version,
    export_model,
    train,
    training_record,
)
from firmware_agent.contract.eta_days import EtaDay
from firmware_agent.contract.eta_features import RoutePlan, SpeedHistory, eta_features
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.contract.records import EtaUpdate
from firmware_agent.eta.models import DEFAULT_MODEL
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.pod.chain import PodChain
from firmware_agent.van import VanPipeline
from simulator.eta_days import format_seeds, parse_seeds, simulator_day, trained_seeds, trip_day
from simulator.eta_scoring import (
    BUCKET_LABELS,
    NAIVE_MIN_SPEED_MPS,
    BucketScore,
    Published,
    Score,
    Track,
    choose_drive_pasts,
    instants,
    score_day,
)
from simulator.manifest import build_manifest
from simulator.scenario import ScenarioConfig, generate
from simulator.trace import TracePoint
from simulator.trips import Dwell

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "trajectories"
SHIPPED = ROOT / "firmware_agent" / "eta" / "models" / DEFAULT_MODEL
TRIP_MIN_DWELL_S = 60.0
TRIP_RADIUS_M = 50
TRACK_MIN_STEP_S = 5.0
GOALS = {"synthetic": (0.4, None), "real": (0.8, 1.0)}  # overall, every bucket
COVERAGE_GOAL = (0.75, 0.85)
COST_STOPS = 150
COST_UPDATES = 600
COST_WARMUP_S = 900  # a quarter of an hour of history before the timed updates


# =====================================================================================
# Playing a day through the van, and scoring what it published
# =====================================================================================


@dataclass
class Played:
    """What one or more days gave: the scores and the records by type."""

    score: Score = field(default_factory=Score)
    records: Counter[str] = field(default_factory=Counter)
    days: int = 0
    hours: float = 0.0

    def add(self, other: Played) -> None:
        self.score.add(other.score)
        self.records.update(other.records)
        self.days += other.days
        self.hours += other.hours


def _stamp(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def play(day: EtaDay, predictor: EtaPredictor) -> Played:
    """``day``'s fixes through the van with ``predictor``; its records, scored."""
    van = VanPipeline(
        day.manifest,
        pods=PodChain(day.manifest.device_id, Ed25519PrivateKey.generate()),
        telemetry=False,
        eta=predictor,
    )
    published: dict[str, list[Published]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    for fix in day.fixes:
        for record in van.on_fix(fix):
            kinds[getattr(record, "type", type(record).__name__)] += 1
            if isinstance(record, EtaUpdate):
                published[record.stop_id].append(
                    Published(
                        record.time.timestamp(),
                        record.eta.timestamp(),
                        _stamp(getattr(record, "eta_p10", None)),
                        _stamp(getattr(record, "eta_p90", None)),
                    )
                )
    positions = [
        (fix.time.timestamp(), fix.lat, fix.lon)
        for fix in day.fixes
        if fix.time is not None and fix.lat is not None and fix.lon is not None
    ]
    track = Track(positions, min_step_s=TRACK_MIN_STEP_S)
    score = score_day(
        order=[stop.id for stop in day.manifest.stops],
        places={stop.id: (stop.lat, stop.lon) for stop in day.manifest.stops},
        arrivals_s={s: at.timestamp() for s, at in day.arrivals.items()},
        published=published,
        track=track,
    )
    hours = (track.times_s[-1] - track.times_s[0]) / 3600.0 if len(track) else 0.0
    return Played(score, kinds, 1, hours)


_PREDICTORS: dict[int, EtaPredictor] = {}


def _predictor(model: bytes) -> EtaPredictor:
    key = hash(model)
    if key not in _PREDICTORS:  # once per process and model
        _PREDICTORS[key] = EtaPredictor.load(model)
    return _PREDICTORS[key]


def play_sim_day(seed: int, n_stops: int, model: bytes) -> Played:
    return play(simulator_day(seed, n_stops), _predictor(model))


def sim_rows(seed: int, n_stops: int) -> EtaDataset:
    return build_dataset([simulator_day(seed, n_stops)])


# =====================================================================================
# Real trips
# =====================================================================================


def real_day(csv: Path, drive_seed: int | None = None) -> EtaDay:
    """A corpus trip with its 60 s halts as stops (radius 50 m); with drive-pasts added
    (seeded with the trip's name and ``drive_seed``) unless ``drive_seed`` is None."""
    passes: Callable[[Sequence[TracePoint], Sequence[Dwell]], list[TracePoint]] | None = None
    if drive_seed is not None:
        passes = partial(_passes, seed=f"{drive_seed}:{csv.stem}")
    return trip_day(csv, min_halt_s=TRIP_MIN_DWELL_S, radius_m=TRIP_RADIUS_M, passes=passes)


def _passes(
    points: Sequence[TracePoint], dwells: Sequence[Dwell], *, seed: str
) -> list[TracePoint]:
    return choose_drive_pasts(points, dwells, seed)


def trip_rows(csv: Path) -> EtaDataset:
    """A trip's training rows as the shipped model's: its 20 s and its 60 s halts."""
    return build_dataset([trip_day(csv), real_day(csv)])


@dataclass
class Fold:
    """One trip left out: what its model gave on it, or why it was skipped."""

    trip: str
    served: Played | None = None
    passed: Played | None = None
    shipped: Played | None = None
    skipped: list[str] = field(default_factory=list)
    stops: int = 0
    drive_pasts: int = 0
    train_s: float = 0.0
    val_ratio: float = float("nan")


_FOLDS: dict[str, Any] = {}


def _fold_init(rows: EtaDataset, config: TrainConfig, sources: dict[str, Any]) -> None:
    _FOLDS.update(rows=rows, config=config, sources=sources)


def run_fold(csv: Path, drive_seed: int, shipped: bytes | None) -> Fold:
    """Train without ``csv``'s trip, then play it (served stops, and with drive-pasts)."""
    day = real_day(csv)
    fold = Fold(day.name, stops=len(day.arrivals))
    if not day.arrivals:
        fold.skipped.append("no halt of 60 s or more: no stop to score")
        return fold
    first = next(f.time for f in day.fixes if f.time is not None and f.lat is not None)
    if all(instants(at.timestamp(), first.timestamp()) == [] for at in day.arrivals.values()):
        fold.skipped.append("its only halts start with the trip: no instant before an arrival")
        return fold
    if shipped is not None:
        fold.shipped = play(day, _predictor(shipped))
    rows: EtaDataset = _FOLDS["rows"]
    # Every manifest made of this recording is left out (its 20 s and 60 s halts).
    keep = [name for name in rows.day_names if day_source(name) != day_source(day.name)]
    started = time.perf_counter()
    result = train(rows.days(keep), _FOLDS["config"])
    trained_at = datetime.now(UTC)
    version = default_model_version(result.layers, trained_at)
    sources = {**_FOLDS["sources"], "left_out": day.name}
    record = training_record(result, model_version=version, trained_at=trained_at, sources=sources)
    model = export_model(result, record)
    fold.train_s = time.perf_counter() - started
    fold.val_ratio = result.val_ratio
    predictor = EtaPredictor.load(model)
    if predictor.model_version is None:
        fold.skipped.append(f"the fold's model cannot run here: {predictor.unavailable}")
        return fold
    fold.served = play(day, predictor)
    with_passes = real_day(csv, drive_seed)
    fold.drive_pasts = len(with_passes.about.get("drive_pasts", []))
    if fold.drive_pasts:
        fold.passed = play(with_passes, predictor)
    else:
        fold.skipped.append("no place passed at > 6 m/s at least 200 m from every halt")
    return fold


# =====================================================================================
# Tables
# =====================================================================================


def _ratio(b: BucketScore) -> float:
    return b.model_abs_s / b.naive_abs_shown_s if b.naive_abs_shown_s > 0 else float("nan")


def _mae(total_s: float, n: int) -> float:
    return total_s / n if n else float("nan")


def figures(b: BucketScore) -> dict[str, Any]:
    """One bucket's figures, as printed and as written to JSON."""
    interval = b.with_interval
    return {
        "instants": b.instants,
        "shown": b.shown,
        "shown_share": b.shown / b.instants if b.instants else None,
        "mae_model_s": _mae(b.model_abs_s, b.shown),
        "mae_naive_s": _mae(b.naive_abs_shown_s, b.shown),
        "mae_naive_all_s": _mae(b.naive_abs_all_s, b.instants),
        "ratio": _ratio(b),
        "with_interval": interval,
        "coverage_p10_p90": b.inside / interval if interval else None,
        "share_above_p10": b.above_p10 / interval if interval else None,
        "share_below_p90": b.below_p90 / interval if interval else None,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def table(suites: Sequence[tuple[str, Played]]) -> list[str]:
    lines = [
        "| suite | horizon | instants | ETA shown | MAE model s | MAE naive s | ratio "
        "| MAE naive, all instants s | p10-p90 coverage | T >= p10 | T <= p90 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, played in suites:
        rows = [*zip(BUCKET_LABELS, played.score.buckets, strict=True)]
        rows.append(("overall 0-60", played.score.total()))
        for label, b in rows:
            f = figures(b)
            lines.append(
                f"| {name} | {label} | {b.instants} | {_pct(f['shown_share'])} | "
                f"{f['mae_model_s']:.0f} | {f['mae_naive_s']:.0f} | {f['ratio']:.2f} | "
                f"{f['mae_naive_all_s']:.0f} | {_pct(f['coverage_p10_p90'])} | "
                f"{_pct(f['share_above_p10'])} | {_pct(f['share_below_p90'])} |"
            )
    return lines


def verdict(name: str, kind: str, played: Played) -> str:
    overall_goal, bucket_goal = GOALS[kind]
    total = figures(played.score.total())
    ratio = total["ratio"]
    misses = []
    if not ratio <= overall_goal:
        misses.append(f"overall {ratio:.2f} > {overall_goal:.1f} (by {ratio - overall_goal:.2f})")
    if bucket_goal is not None:
        for label, b in zip(BUCKET_LABELS, played.score.buckets, strict=True):
            r = _ratio(b)
            if b.shown and not r <= bucket_goal:
                misses.append(f"{label} {r:.2f} > {bucket_goal:.1f}")
    coverage = total["coverage_p10_p90"]
    lo, hi = COVERAGE_GOAL
    if kind == "real":
        if coverage is None:
            misses.append("no interval published (coverage n/a)")
        elif not lo <= coverage <= hi:
            misses.append(f"p10-p90 coverage {100 * coverage:.0f} % outside 75-85 %")
    goal = f"goal: ratio <= {overall_goal:.1f} overall" + (
        f", <= {bucket_goal:.1f} per bucket, coverage 75-85 %" if bucket_goal else ""
    )
    state = "MET" if not misses else "NOT MET: " + "; ".join(misses)
    shown = _pct(total["shown_share"])
    return f"{name}: ratio {ratio:.2f} overall, ETA shown {shown} ({goal}): {state}"


# =====================================================================================
# Cost
# =====================================================================================


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


def _suite_json(kind: str, played: Played) -> dict[str, Any]:
    return {
        "kind": kind,
        "days": played.days,
        "hours": round(played.hours, 2),
        "stops_scored": played.score.stops,
        "records": dict(played.records),
        "buckets": {
            label: figures(b) for label, b in zip(BUCKET_LABELS, played.score.buckets, strict=True)
        },
        "overall": figures(played.score.total()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None, help="held-out simulator days (1-40)")
    parser.add_argument("--stops", type=int, default=None, help="stops per held-out day (25)")
    parser.add_argument(
        "--train-seeds", default=None, help="simulator days the folds train on (1000-1059)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="max epochs per fold (15)")
    parser.add_argument("--quick", action="store_true", help="a few minutes (module doc)")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the .tflite to evaluate")
    parser.add_argument("--jobs", type=int, default=2, help="processes (2)")
    parser.add_argument("--drive-seed", type=int, default=0, help="drive-past draw (0)")
    parser.add_argument("--trips", default="*/*.csv", help="glob under the corpus' trajectories")
    parser.add_argument("--no-shipped-real", action="store_true", help="skip suite 4")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds or ("1-6" if args.quick else "1-40"))
    n_stops = args.stops or (15 if args.quick else 25)
    train_seeds = parse_seeds(args.train_seeds or ("1000-1011" if args.quick else "1000-1059"))
    epochs = args.epochs or (20 if args.quick else None)
    # One training per trip: the evaluations' config (one member, 15 epochs; the
    # shipped model averages three members of up to 60 epochs).
    config: TrainConfig = (
        QUICK_CONFIG if epochs is None else dataclasses.replace(QUICK_CONFIG, max_epochs=epochs)
    )
    if set(seeds) & set(train_seeds):
        sys.exit("eta_eval: --seeds and --train-seeds overlap")

    model = args.model.read_bytes()
    predictor = EtaPredictor.load(model)
    if predictor.model_version is None:
        sys.exit(f"eta_eval: the model cannot run here: {predictor.unavailable}")
    overlap = trained_seeds(json.loads(read_metadata(model).get("training", "{}"))) & set(seeds)
    if overlap:
        sys.exit(f"eta_eval: seeds {format_seeds(sorted(overlap))} were used in training")
    trips = sorted(CORPUS.glob(args.trips)) if CORPUS.is_dir() else []
    print(f"model {predictor.model_version} ({args.model}); {len(trips)} trips", file=sys.stderr)

    started = time.perf_counter()
    jobs = max(1, args.jobs)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        sim_plays = pool.map(play_sim_day, seeds, [n_stops] * len(seeds), [model] * len(seeds))
        sim_parts = pool.map(sim_rows, train_seeds, [25] * len(train_seeds))
        trip_parts = pool.map(trip_rows, trips)
        synthetic = Played()
        for p in sim_plays:
            synthetic.add(p)
        rows = EtaDataset.concat([*sim_parts, *trip_parts])
    rows_s = time.perf_counter() - started
    print(f"  synthetic played, {len(rows)} training rows in {rows_s:.0f} s", file=sys.stderr)
    sources = {
        "simulator": {"seeds": format_seeds(train_seeds), "n_stops": 25},
        "trips": [csv.stem for csv in trips],
    }
    folds: list[Fold] = []
    if trips:
        with ProcessPoolExecutor(
            max_workers=jobs, initializer=_fold_init, initargs=(rows, config, sources)
        ) as pool:
            shipped = None if args.no_shipped_real else model
            for fold in pool.map(
                run_fold, trips, [args.drive_seed] * len(trips), [shipped] * len(trips)
            ):
                folds.append(fold)
                print(f"  {fold.trip}: trained in {fold.train_s:.0f} s", file=sys.stderr)
    elapsed_s = time.perf_counter() - started

    real, passed, shipped_real = Played(), Played(), Played()
    for fold in folds:
        for total, part in (
            (real, fold.served),
            (passed, fold.passed),
            (shipped_real, fold.shipped),
        ):
            if part is not None:
                total.add(part)
    suites: list[tuple[str, str, str, Played]] = [
        (
            "synthetic",
            "synthetic",
            f"simulator seeds {format_seeds(seeds)}, {n_stops} stops, model as given",
            synthetic,
        )
    ]
    if folds:
        suites += [
            (
                "real",
                "real",
                f"{real.days} corpus trips, served stops, leave-one-trip-out",
                real,
            ),
            (
                "real + drive-pasts",
                "real",
                f"{passed.days} corpus trips, 1-3 drive-pasts each, same fold models",
                passed,
            ),
        ]
        if not args.no_shipped_real:
            suites.append(
                (
                    "real, shipped model",
                    "real",
                    f"{shipped_real.days} corpus trips, served stops, model as given "
                    "(trained on them: not held out)",
                    shipped_real,
                )
            )

    print(f"model {predictor.model_version} ({args.model})")
    print(
        f"folds: TrainConfig max_epochs {config.max_epochs}, ensemble {config.ensemble}; "
        f"simulator days {format_seeds(train_seeds)} (25 stops) + every other trip; "
        f"naive floored at {NAIVE_MIN_SPEED_MPS:g} m/s"
    )
    for name, _, what, played in suites:
        records = ", ".join(f"{k} {v}" for k, v in sorted(played.records.items()))
        print(f"{name}: {what}; {played.score.stops} stops scored, {played.hours:.1f} h; {records}")
    print()
    print("\n".join(table([(name, played) for name, _, _, played in suites])))
    print()
    for name, kind, _, played in suites:
        print(verdict(name, kind, played))
    if not trips:
        print(f"(no real trips: {CORPUS} not found)")
    if folds:
        print()
        print(
            "| trip | stops | drive-pasts | fold train s | fold val ratio | real ratio "
            "| + drive-pasts ratio | skipped |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|---|")
        for fold in folds:
            r = _ratio(fold.served.score.total()) if fold.served else float("nan")
            rp = _ratio(fold.passed.score.total()) if fold.passed else float("nan")
            print(
                f"| {fold.trip} | {fold.stops} | {fold.drive_pasts} | {fold.train_s:.0f} | "
                f"{fold.val_ratio:.2f} | {r:.2f} | {rp:.2f} | {'; '.join(fold.skipped)} |"
            )
    print()
    cost_lines = cost(model)
    print("\n".join(cost_lines))
    print(f"(suites built, trained and scored in {elapsed_s:.0f} s, {jobs} processes)")
    if args.json is not None:
        out = {
            "model": predictor.model_version,
            "model_file": str(args.model),
            "held_out_seeds": format_seeds(seeds),
            "train_seeds": format_seeds(train_seeds),
            "train_config": dataclasses.asdict(config),
            "drive_seed": args.drive_seed,
            "suites": {name: _suite_json(kind, played) for name, kind, _, played in suites},
            "folds": [
                {
                    "trip": f.trip,
                    "stops": f.stops,
                    "drive_pasts": f.drive_pasts,
                    "train_s": round(f.train_s, 1),
                    "val_ratio": f.val_ratio,
                    "skipped": f.skipped,
                    "real": figures(f.served.score.total()) if f.served else None,
                    "drive_pasts_figures": figures(f.passed.score.total()) if f.passed else None,
                }
                for f in folds
            ],
            "cost": cost_lines,
            "elapsed_s": round(elapsed_s, 1),
        }
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
