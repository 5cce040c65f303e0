"""Sequence deviations on real trips: the published ETAs with and without drive-pasts.

Plays the corpus' real trips (``simulator.eta_days.trip_day``: a stop wherever the
vehicle really halted, 1 Hz fixes) through :class:`~firmware_agent.van.VanPipeline` with
the shipped model, twice: with the trip's manifest (only the stops really served), and
with 1-3 *drive-past* stops added to it (points of the trip's path at least 200 m from
any served stop where the vehicle passed at more than 6 m/s, at least 1 km apart, put
in the manifest in the order the vehicle reached them; drawn with a seed per trip).

Scored as a customer sees it, for the served stops only: every 30 s before each true
arrival (up to 60 min), the latest ETA the van had published for that stop by then,
against the true arrival; MAE by horizon and overall, and the share of those instants
with an ETA shown. ``naive`` is the ``eta_baseline`` of the same records (the van's
naive ETA: remaining distance / 15-minute mean speed, in the order the van expects).
The full customer-view evaluation against a position-only naive estimate is
bench/eta_eval.py's.

"Before" (the planned order, no stop_passed) is the same script run on code without
sequence deviations, e.g. the main worktree::

    PYTHONPATH=/work/main .venv/bin/python bench/eta_sequence.py --label before
    .venv/bin/python bench/eta_sequence.py --label after

Needs ../shared/corpus (skips with a message without it). ~1-2 min.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.eta_days import EtaDay
from firmware_agent.contract.geo import LocalFrame
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.records import EtaUpdate
from firmware_agent.eta.manager import load_eta_predictor
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.pod.chain import PodChain
from firmware_agent.van import VanPipeline
from simulator.eta_days import trip_day

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "trajectories"
HORIZONS_S: tuple[tuple[str, float, float], ...] = (
    ("0-5", 0.0, 300.0),
    ("5-15", 300.0, 900.0),
    ("15-30", 900.0, 1800.0),
    ("30-60", 1800.0, 3600.0),
)
STEP_S = 30.0
PAST_MIN_SPEED_MPS = 6.0
PAST_MIN_FROM_STOP_M = 200.0
PAST_MIN_APART_M = 1000.0


@dataclass
class Score:
    """Absolute errors (s) by horizon bucket, for the model and the naive ETA."""

    model: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h, *_ in HORIZONS_S})
    naive: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h, *_ in HORIZONS_S})
    instants: int = 0
    shown: int = 0
    stop_passed: int = 0
    eta_records: int = 0
    hours: float = 0.0


def with_drive_pasts(day: EtaDay, seed_text: str) -> tuple[dict[str, Any], int]:
    """The day's manifest with 1-3 drive-past stops (module doc); and how many."""
    raw = dict(day.manifest.raw)
    stops = list(raw["stops"])
    frame = LocalFrame(stops[0]["lat"], stops[0]["lon"]) if stops else None
    if frame is None:
        return raw, 0
    served = np.array([frame.to_local(s["lat"], s["lon"]) for s in stops])
    rows = [
        (f.time, f.lat, f.lon)
        for f in day.fixes
        if f.time and f.lat is not None and f.lon is not None
    ]
    xy = np.array([frame.to_local(lat, lon) for _, lat, lon in rows])
    times = [t for t, _, _ in rows]
    speed = np.zeros(len(xy))
    speed[1:] = np.hypot(*np.diff(xy, axis=0).T) / np.maximum(
        [(b - a).total_seconds() for a, b in itertools.pairwise(times)], 1e-3
    )
    from_stop = np.min(
        np.hypot(xy[:, None, 0] - served[None, :, 0], xy[:, None, 1] - served[None, :, 1]), axis=1
    )
    candidates = np.flatnonzero((speed > PAST_MIN_SPEED_MPS) & (from_stop >= PAST_MIN_FROM_STOP_M))
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:4], "big")
    rng = np.random.default_rng(seed)
    want = int(rng.integers(1, 4))
    chosen: list[int] = []
    for k in rng.permutation(candidates):
        if all(math.dist(xy[k], xy[c]) >= PAST_MIN_APART_M for c in chosen):
            chosen.append(int(k))
        if len(chosen) == want:
            break
    arrivals = sorted(day.arrivals.values())
    radius = stops[0].get("radius_m", 50)
    inserted: list[tuple[int, dict[str, Any]]] = []
    for n, k in enumerate(sorted(chosen)):
        lat, lon = frame.to_geodetic(float(xy[k, 0]), float(xy[k, 1]))
        before = sum(a <= times[k] for a in arrivals)
        stop = {
            "id": f"DP{n + 1}",
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "radius_m": radius,
            "type": "other",
            "parcels": [],
        }
        inserted.append((before + n, stop))
    for position, stop in inserted:
        stops.insert(position, stop)
    raw["stops"] = stops
    return raw, len(chosen)


def play(day: EtaDay, manifest_doc: dict[str, Any], predictor: EtaPredictor, score: Score) -> None:
    manifest = parse_manifest(manifest_doc)
    van = VanPipeline(manifest, pods=PodChain("van-1", Ed25519PrivateKey.generate()), eta=predictor)
    published: dict[str, list[EtaUpdate]] = {}
    for fix in day.fixes:
        for r in van.on_fix(fix):
            if isinstance(r, EtaUpdate):
                published.setdefault(r.stop_id, []).append(r)
                score.eta_records += 1
            elif getattr(r, "type", None) == "stop_passed":
                score.stop_passed += 1
    times = [f.time for f in day.fixes if f.time is not None]
    start, end = times[0], times[-1]
    score.hours += (end - start).total_seconds() / 3600.0
    for stop_id, arrival in day.arrivals.items():
        records = published.get(stop_id, [])
        issued = [r.time for r in records]
        k = 1
        while True:
            t = arrival - timedelta(seconds=STEP_S * k)
            horizon_s = (arrival - t).total_seconds()
            if t < start or horizon_s > HORIZONS_S[-1][2]:
                break
            k += 1
            score.instants += 1
            j = _latest(issued, t)
            if j is None:
                continue
            score.shown += 1
            bucket = next(h for h, lo, hi in HORIZONS_S if lo < horizon_s <= hi)
            score.model[bucket].append(abs((records[j].eta - arrival).total_seconds()))
            score.naive[bucket].append(abs((records[j].eta_baseline - arrival).total_seconds()))


def _latest(issued: Sequence[datetime], t: datetime) -> int | None:
    lo, hi = 0, len(issued)
    while lo < hi:
        mid = (lo + hi) // 2
        if issued[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo else None


def report(label: str, name: str, score: Score) -> None:
    cells = []
    every_m: list[float] = []
    every_n: list[float] = []
    for h, *_ in HORIZONS_S:
        m, n = score.model[h], score.naive[h]
        every_m += m
        every_n += n
        cells.append(f"{np.mean(m):6.0f} / {np.mean(n):5.0f} ({len(m)})" if m else "      -")
    shown = score.shown / score.instants if score.instants else 0.0
    eta_per_hour = score.eta_records / max(score.hours, 1e-9)
    overall = f"{np.mean(every_m):5.0f} / {np.mean(every_n):5.0f}" if every_m else "-"
    print(
        f"{label:7s} {name:13s} | " + " | ".join(cells) + f" | {overall} | shown {shown:5.1%}"
        f" | stop_passed {score.stop_passed} | eta/h {eta_per_hour:5.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="this", help="name of the code under test")
    parser.add_argument("--trips", nargs="*", type=Path, help="trip CSVs (default: the corpus')")
    args = parser.parse_args(argv)
    paths = args.trips or sorted(CORPUS.glob("*/*.csv"))
    if not paths:
        print(f"no trips: {CORPUS} is absent (the corpus is needed)")
        return 0
    predictor = load_eta_predictor(None)
    print(
        f"model {predictor.model_version or 'baseline'}; {len(paths)} trips; "
        "MAE s, model / naive (instants)"
    )
    print(
        f"{'code':7s} {'manifest':13s} | "
        + " | ".join(f"{h + ' min':>20s}" for h, *_ in HORIZONS_S)
        + " | overall"
    )
    served, passed = Score(), Score()
    added = 0
    started = time.perf_counter()
    for path in paths:
        day = trip_day(path)
        if len(day.manifest.stops) < 2:
            continue
        play(day, dict(day.manifest.raw), predictor, served)
        doc, n = with_drive_pasts(day, path.name)
        added += n
        play(day, doc, predictor, passed)
    report(args.label, "served only", served)
    report(args.label, "+drive-pasts", passed)
    print(f"{added} drive-past stops added; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
