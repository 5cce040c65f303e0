"""Do the next stops' ETAs slide while the van dwells? Before and after the hold.

Every day is played twice through the real :class:`~firmware_agent.van.VanPipeline` and
its :class:`~firmware_agent.eta.tracker.EtaTracker` with the shipped model: once with
``dwell_hold_stops`` 0 (the tracker as it was: the model asked every 10 s as if the van
could leave now) and once with the defaults (the next stop held,
firmware_agent/eta/dwell.py). Days:

- ``sim``: simulator days the model never saw (25 stops, seeds 1-12 by default), built
  as bench/eta_events.py builds them, with the driver's scans
  (:func:`simulator.scans.build_scan_log`) fed to the pipeline in time order, so the
  PODs tell the tracker which parcels are left;
- ``real``: the corpus' real trips (../shared/corpus/trajectories), their 60 s halts as
  stops (``bench/eta_eval.py``'s ``real_day``; no scans: one parcel per stop). The model
  was trained on these trips: the suite says how the hold behaves on real halts, not how
  accurate the model is.

Per dwell (the van's own: from the geofence's arrival to its departure, at least 60 s)
and its next stop (the stop the van really reaches next): how far the van's latest
*prediction* of the next stop moved from the first prediction of the dwell to the last,
and the *published* ETA (the last ``eta`` record the backend has) from the dwell's start
to its end, in seconds per minute of dwell (median and mean of the absolute value; 0:
no slide, 60: the ETA follows the clock); ``eta`` records published during dwells; and
the error of the next stop's predicted and published ETA against its true arrival at
every 10 s of the dwell. Also printed: the fit of the expected dwell (median line of
dwell against parcels) on the training days, where the defaults of
``eta.dwell_base_s`` and ``eta.dwell_per_parcel_s`` come from.

    .venv/bin/python bench/eta_dwell.py [--seeds 1-12] [--stops 25] [--trips '*/*.csv']
        [--fit-seeds 1000-1059] [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eta_eval import CORPUS, real_day  # a sibling script

from firmware_agent.contract.eta_days import EtaDay
from firmware_agent.contract.records import Arrival, Departure, EtaUpdate
from firmware_agent.eta.models import DEFAULT_MODEL
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig
from firmware_agent.pod.chain import PodChain
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanConfig, VanPipeline
from simulator.eta_days import parse_seeds, sim_day_plan, simulator_day_with_scenario
from simulator.manifest import build_manifest
from simulator.scans import build_scan_log
from simulator.scenario import generate

SHIPPED = Path(__file__).resolve().parents[1] / "firmware_agent" / "eta" / "models" / DEFAULT_MODEL
MIN_DWELL_S = 60.0


def sim_day_with_scans(seed: int, n_stops: int) -> tuple[EtaDay, list[Scan]]:
    """Simulator day ``seed`` as simulator.eta_days.simulator_day builds it, and its
    driver's scans."""
    day, scenario, doc = simulator_day_with_scenario(seed, n_stops)
    scans = [
        Scan(datetime.fromisoformat(line["time"]), line["raw"], line["source"])
        for line in build_scan_log(scenario, doc, seed=seed)
    ]
    return day, scans


@dataclass
class Tally:
    dwells: int = 0
    dwell_min: float = 0.0
    pred_slide: list[float] = field(default_factory=list)  # s per min of dwell, signed
    pub_slide: list[float] = field(default_factory=list)
    eta_in_dwells: int = 0
    eta_total: int = 0
    pred_err: list[float] = field(default_factory=list)
    pub_err: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.dwells += other.dwells
        self.dwell_min += other.dwell_min
        self.eta_in_dwells += other.eta_in_dwells
        self.eta_total += other.eta_total
        for name in ("pred_slide", "pub_slide", "pred_err", "pub_err"):
            getattr(self, name).extend(getattr(other, name))


def play(day: EtaDay, scans: Sequence[Scan], predictor: EtaPredictor, *, hold: bool) -> Tally:
    manifest = day.manifest
    van = VanPipeline(
        manifest,
        pods=PodChain(manifest.device_id, Ed25519PrivateKey.generate()),
        config=VanConfig(eta=EtaConfig() if hold else EtaConfig(dwell_hold_stops=0)),
        telemetry=False,
        eta=predictor,
    )
    assert van.eta_tracker is not None
    # Inputs in time order (a scan before a fix of the same instant).
    inputs: list[tuple[float, int, Any]] = [
        (f.time.timestamp(), 1, f) for f in day.fixes if f.time is not None
    ]
    inputs += [(s.time.timestamp(), 0, s) for s in scans]
    inputs.sort(key=lambda item: (item[0], item[1]))
    # Per stop: (time, predicted arrival s) at every prediction, (time, eta s) published.
    predicted: dict[str, list[tuple[float, float]]] = {}
    published: dict[str, list[tuple[float, float]]] = {}
    arrivals: dict[str, float] = {}
    departures: dict[str, float] = {}
    t = Tally()
    for now_s, kind, item in inputs:
        tracker = van.eta_tracker
        before = tracker.counts["predictions"]
        records = van.on_scan(item) if kind == 0 else van.on_fix(item)
        tracker = van.eta_tracker
        if tracker.counts["predictions"] != before and tracker.last_prediction is not None:
            p = tracker.last_prediction
            for stop_id, eta_s in zip(p.stop_ids, p.eta_s, strict=True):
                predicted.setdefault(stop_id, []).append((now_s, now_s + float(eta_s)))
        for r in records:
            if isinstance(r, EtaUpdate):
                t.eta_total += 1
                published.setdefault(r.stop_id, []).append((now_s, r.eta.timestamp()))
            elif isinstance(r, Arrival):  # the dwell as the tracker sees it: from the
                arrivals.setdefault(r.stop_id, now_s)  # input that brought the arrival
            elif isinstance(r, Departure):
                departures.setdefault(r.stop_id, now_s)  # to the one with the departure
    truth = sorted((at.timestamp(), stop_id) for stop_id, at in day.arrivals.items())
    all_pub = sorted(t_s for rows in published.values() for t_s, _ in rows)
    for stop_id, start_s in arrivals.items():
        end_s = departures.get(stop_id)
        if end_s is None or end_s - start_s < MIN_DWELL_S:
            continue
        later = [(at, s) for at, s in truth if at > end_s and s != stop_id]
        if not later:
            continue
        true_next_s, next_id = later[0]
        pred = [(ts, eta) for ts, eta in predicted.get(next_id, []) if start_s <= ts <= end_s]
        pub = published.get(next_id, [])
        pub_start = [eta for ts, eta in pub if ts <= start_s]
        pub_end = [eta for ts, eta in pub if ts <= end_s]
        if len(pred) < 2 or not pub_start:
            continue
        minutes = (end_s - start_s) / 60.0
        t.dwells += 1
        t.dwell_min += minutes
        t.pred_slide.append((pred[-1][1] - pred[0][1]) / minutes)
        t.pub_slide.append((pub_end[-1] - pub_start[-1]) / minutes)
        t.eta_in_dwells += sum(1 for ts in all_pub if start_s < ts <= end_s)
        for ts, eta in pred:
            t.pred_err.append(eta - true_next_s)
            shown = [e for tp, e in pub if tp <= ts]
            if shown:
                t.pub_err.append(shown[-1] - true_next_s)
    return t


_PREDICTOR: dict[str, EtaPredictor] = {}


def run(job: tuple[str, Any, int]) -> tuple[str, Tally, Tally]:
    suite, what, n_stops = job
    if "model" not in _PREDICTOR:
        _PREDICTOR["model"] = EtaPredictor.load(SHIPPED.read_bytes())
    if suite == "sim":
        day, scans = sim_day_with_scans(int(what), n_stops)
    else:
        day, scans = real_day(Path(what)), []
    predictor = _PREDICTOR["model"]
    return suite, play(day, scans, predictor, hold=False), play(day, scans, predictor, hold=True)


def fit_dwell(seeds: Sequence[int], n_stops: int) -> tuple[float, float, float, float]:
    """The median line dwell = base + per_parcel x parcels on the simulator's training
    days (least absolute deviations over a 1 s grid of per_parcel), its mean absolute
    error, and that of the median dwell alone."""
    parcels, dwell = [], []
    for seed in seeds:
        scenario = generate(sim_day_plan(seed, n_stops).config)
        doc = build_manifest(scenario, seed=seed)
        count = {s["id"]: len(s["parcels"]) for s in doc["stops"]}
        for s in scenario.stops:
            parcels.append(count[s.id])
            dwell.append((s.departure - s.arrival).total_seconds())
    n, d = np.array(parcels, dtype=float), np.array(dwell)
    best = (np.inf, 0.0, 0.0)
    for per in np.arange(0.0, 61.0):
        base = float(np.median(d - per * n))
        err = float(np.abs(d - base - per * n).mean())
        best = min(best, (err, base, float(per)))
    return best[1], best[2], best[0], float(np.abs(d - np.median(d)).mean())


def _row(name: str, who: str, t: Tally) -> str:
    def med_abs(xs: list[float]) -> str:
        return f"{statistics.median(abs(x) for x in xs):.1f}" if xs else "-"

    def mean_abs(xs: list[float]) -> str:
        return f"{statistics.fmean(abs(x) for x in xs):.1f}" if xs else "-"

    def mean(xs: list[float]) -> str:  # MAE (mean signed error: + late)
        if not xs:
            return "-"
        return f"{statistics.fmean(abs(x) for x in xs):.0f} ({statistics.fmean(xs):+.0f})"

    return (
        f"| {name} | {who} | {t.dwells} | {t.dwell_min:.0f} | {med_abs(t.pred_slide)} | "
        f"{mean_abs(t.pred_slide)} | {med_abs(t.pub_slide)} | {mean_abs(t.pub_slide)} | "
        f"{t.eta_in_dwells} | {t.eta_total} | {mean(t.pred_err)} | {mean(t.pub_err)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1-12", help="simulator days (never trained on)")
    parser.add_argument("--stops", type=int, default=25)
    parser.add_argument("--trips", default="*/*.csv", help="glob under the corpus' trajectories")
    parser.add_argument("--fit-seeds", default="1000-1059", help="days of the dwell fit")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    base, per, fit_err, const_err = fit_dwell(parse_seeds(args.fit_seeds), args.stops)
    print(
        f"expected dwell on simulator days {args.fit_seeds} ({args.stops} stops): "
        f"{base:.0f} s + {per:.0f} s per parcel (MAE {fit_err:.0f} s; the median "
        f"dwell alone: {const_err:.0f} s)"
    )
    trips = sorted(CORPUS.glob(args.trips)) if CORPUS.is_dir() else []
    jobs: list[tuple[str, Any, int]] = [("sim", s, args.stops) for s in parse_seeds(args.seeds)]
    jobs += [("real", str(p), 0) for p in trips]
    by: dict[str, tuple[Tally, Tally]] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for suite, off, on in pool.map(run, jobs):
            acc = by.setdefault(suite, (Tally(), Tally()))
            acc[0].add(off)
            acc[1].add(on)
    print(f"model {EtaPredictor.load(SHIPPED.read_bytes()).model_version}; "
          f"{time.perf_counter() - started:.0f} s, {args.jobs} processes")  # fmt: skip
    print()
    print(
        "| days | hold | dwells >= 60 s | dwell min | predicted slide s/min, median | mean "
        "| published slide s/min, median | mean | eta records in dwells | eta records "
        "| next stop MAE (bias) predicted s | published s |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    names = {
        "sim": f"sim {args.stops} stops ({args.seeds}), scans",
        "real": f"real trips ({len(trips)})",
    }
    for suite, (off, on) in by.items():
        print(_row(names[suite], "off", off))
        print(_row(names[suite], "on", on))


if __name__ == "__main__":
    main()
