"""Row-level check of the ETA model on real trips, leave-trips-out, and on held-out simulator days.

The rows are the training rows (:mod:`cloud_ingest.eta.dataset`: every 30 s, every
unserved stop with a known arrival). The real trips of ../shared/corpus/trajectories are
held out by *source trip* (a trip's 20 s-halt and 60 s-halt manifests leave together):
each fold trains :func:`cloud_ingest.eta.train.train` on every simulator day and the
other trips, and predicts the held-out trips' rows (``--folds 0``: one trip per fold).
The simulator suite trains once on everything and predicts the held-out seeds' days.

Per suite and horizon (minutes to the real arrival): MAE of the model and of the
customer's naive ETA (``naive_s``: straight lines through the remaining stops over the
last 5 minutes' mean speed, floored at 2 m/s), their ratio, and the share of real
arrivals inside the model's p10-p90. Figures only, nothing asserted.

This is not the customer's view (bench/eta_eval.py: published records, staleness); it
is the model's own error on every sample.

    .venv/bin/fleet-sim eta-days --seeds 1000-1059 --stops 25 \\
        --trip ../shared/corpus/trajectories/*/*.csv --trip-halt-s 20 60 --out out/eta-days
    .venv/bin/fleet-sim eta-days --seeds 5001-5012 --stops 25 --out out/eta-eval
    .venv/bin/python bench/eta_loto.py [--days out/eta-days] [--eval-days out/eta-eval]
        [--folds 0] [--epochs 20] [--ensemble 1] [--exclude NAME ...|--exclude-none]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cloud_ingest.eta.dataset import EtaDataset, build_dataset, read_days
from cloud_ingest.eta.train import (
    SIMULATED_PREFIX,
    TrainConfig,
    day_source,
    is_simulated,
    train,
    trip_halt_s,
)
from firmware_agent.contract.eta_days import day_directories

BUCKETS_MIN = ((0, 5), (5, 15), (15, 30), (30, 60))
FloatArray = npt.NDArray[np.float64]


def trip_of(day_name: str) -> str:
    """The source trip of a trip day: ``h60-X`` and ``X`` are both ``X``."""
    return day_source(day_name)


def halt_of(day_name: str) -> str:
    """Which manifest a trip day has: the minimum halt in seconds (20 unless named)."""
    halt = trip_halt_s(day_name)
    return "20" if halt is None else f"{halt:g}"


def _rows(path: Path) -> EtaDataset:
    return build_dataset(read_days([path]))


def load(paths: Sequence[Path], jobs: int) -> EtaDataset:
    dirs = day_directories(paths)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return EtaDataset.concat(pool.map(_rows, dirs))


def cached(path: Path | None, build: Callable[[], EtaDataset]) -> EtaDataset:
    """The rows from ``path`` if it exists, else built (and saved there if given)."""
    if path is not None and path.exists():
        with np.load(path) as z:
            fields = {f.name: z[f.name] for f in dataclasses.fields(EtaDataset)}
        fields["day_names"] = tuple(str(n) for n in fields["day_names"])
        return EtaDataset(**fields)
    data = build()
    if path is not None:
        arrays = {f.name: getattr(data, f.name) for f in dataclasses.fields(EtaDataset)}
        arrays["day_names"] = np.array(data.day_names)
        np.savez(path, **arrays)
    return data


def report(
    title: str, rows: EtaDataset, eta: FloatArray, p10: FloatArray, p90: FloatArray
) -> list[str]:
    lines = [
        f"\n{title}: {len(rows)} rows, {len(set(rows.groups.tolist()))} days",
        "| horizon | rows | MAE model s | MAE naive s | model / naive | p10-p90 coverage |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    actual = rows.actual_s
    err_m = np.abs(eta - actual)
    err_n = np.abs(rows.naive_s - actual)
    inside = (actual >= p10) & (actual <= p90)
    spans = [(f"{lo}-{hi} min", (actual >= lo * 60) & (actual < hi * 60)) for lo, hi in BUCKETS_MIN]
    spans.append(("0-60 min", actual < 3600))
    spans.append(("all", np.ones(len(actual), dtype=np.bool_)))
    for label, sel in spans:
        n = int(sel.sum())
        if n == 0:
            lines.append(f"| {label} | 0 | | | | |")
            continue
        m, b = float(err_m[sel].mean()), float(err_n[sel].mean())
        cover = 100 * float(inside[sel].mean())
        lines.append(f"| {label} | {n} | {m:.0f} | {b:.0f} | {m / b:.2f} | {cover:.0f} % |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=Path, nargs="+", default=[Path("out/eta-days")])
    parser.add_argument("--eval-days", type=Path, nargs="*", default=[Path("out/eta-eval")])
    parser.add_argument("--folds", type=int, default=0, help="trip folds (0: one trip each)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--real-share", type=float, default=0.5)
    parser.add_argument(
        "--exclude", nargs="*", default=None, help="features (default: the config's)"
    )
    parser.add_argument("--exclude-none", action="store_true")
    parser.add_argument("--no-sim", action="store_true", help="train on real trips only")
    parser.add_argument("--min-calibration-rows", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="keep the rows in this .npz (reused if there)")
    args = parser.parse_args()

    started = time.perf_counter()
    data = cached(args.cache, lambda: load(args.days, args.jobs))
    print(
        f"rows: {len(data)} from {len(data.day_names)} days ({time.perf_counter() - started:.0f} s)"
    )
    config = TrainConfig(max_epochs=args.epochs, ensemble=args.ensemble, real_share=args.real_share)
    if args.min_calibration_rows is not None:
        config = dataclasses.replace(config, min_calibration_rows=args.min_calibration_rows)
    if args.exclude_none:
        config = dataclasses.replace(config, exclude=())
    elif args.exclude is not None:
        config = dataclasses.replace(config, exclude=tuple(args.exclude))
    print(
        f"config: epochs {config.max_epochs}, ensemble {config.ensemble}, real_share "
        f"{config.real_share}, excluded {len(config.exclude)}: {', '.join(config.exclude)}"
    )

    day_trip = np.array([trip_of(n) for n in data.day_names])
    real_day = np.array([not is_simulated(n) for n in data.day_names])
    trips = sorted(set(day_trip[real_day].tolist()))
    n_folds = len(trips) if args.folds <= 0 else min(args.folds, len(trips))
    order = np.random.default_rng(0).permutation(len(trips))
    fold_of = {trips[i]: k % n_folds for k, i in enumerate(order)}
    row_real = real_day[data.groups]
    train_days = data
    if args.no_sim:
        train_days = data.select(row_real)
    oof = np.full((len(data), 3), np.nan)
    train_s: list[float] = []
    for k in range(n_folds):
        held = {t for t, f in fold_of.items() if f == k}
        held_day = np.array(
            [real_day[i] and day_trip[i] in held for i in range(len(data.day_names))]
        )
        test = held_day[data.groups]
        fit = train_days.select(~held_day[train_days.groups])
        t0 = time.perf_counter()
        result = train(fit, config)
        train_s.append(time.perf_counter() - t0)
        eta, p10, p90 = result.predict_interval_s(data.x[test], data.naive_s[test])
        oof[test] = np.stack([eta, p10, p90], axis=1)
        print(
            f"  fold {k + 1}/{n_folds}: {sorted(held)} {train_s[-1]:.0f} s, calibration "
            f"{result.calibration_rows} rows of {result.calibration_on}",
            file=sys.stderr,
        )
    print(f"trip folds: {n_folds}, training {np.median(train_s):.0f} s median per fold")
    halts = np.array(
        [halt_of(n) if r else "" for n, r in zip(data.day_names, real_day, strict=True)]
    )
    for halt in sorted(set(halts[real_day].tolist()), key=float):
        sel = row_real & (halts[data.groups] == halt)
        rows = data.select(sel)
        for line in report(f"real trips, halts >= {halt} s, held out", rows, *oof[sel].T):
            print(line)

    if args.eval_days and not args.no_sim:
        cache = args.cache.with_suffix(".eval.npz") if args.cache is not None else None
        evaluation = cached(cache, lambda: load(args.eval_days, args.jobs))
        if any(not n.startswith(SIMULATED_PREFIX) for n in evaluation.day_names):
            print("warning: --eval-days holds non-simulator days", file=sys.stderr)
        overlap = set(evaluation.day_names) & set(data.day_names)
        if overlap:
            raise SystemExit(f"evaluation days are training days: {sorted(overlap)[:5]}")
        result = train(data, config)
        got = result.predict_interval_s(evaluation.x, evaluation.naive_s)
        for line in report("simulator, held-out seeds", evaluation, *got):
            print(line)
        print(f"calibration: {result.calibration}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
