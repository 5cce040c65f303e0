"""ETA events on the wire: how many the van sends, what they cost, and what they tell.

Simulator days the shipped model never saw (default: 25-stop days 1-12 and 150-stop
days 2, 3, 5, 6; the model was trained on 1000-1059 and the script refuses seeds its
training record lists), each built as the ETA training and evaluation build them
(:func:`simulator.eta_days.simulator_day`: the receiver's reports of the scenario,
noise and outages included; the seed draws the start hour, whether the stops have
promised windows, whether they are typed). Every day is played twice through the real
:class:`~firmware_agent.van.VanPipeline` and its real
:class:`~firmware_agent.eta.tracker.EtaTracker` (geofence arrivals, no scans): once with
the model (``EtaPredictor.load``) and once with the baseline (``EtaPredictor.baseline``),
with the same :class:`~firmware_agent.eta.tracker.EtaConfig` (defaults, or ``--set``).

Printed per suite (days of one size) and predictor:

- volume: ``eta`` records by trigger, ``late_risk`` records, and their bytes as the
  uplink sends them: one MQTT message per record, the JSON envelope of
  :func:`~firmware_agent.contract.envelope.frame_record` around the compact record JSON the
  agent stores (the events stream is neither batched nor compressed; MQTT headers and
  the topic are not counted, as in bench/wire_bytes.py); kB per van-hour, to compare
  with the 6.6 kB the van's telemetry costs (docs/benchmarks.md);
- ``late_risk`` against the simulator's truth: windowed stops really late (true
  arrival after ``window_end``), how many got a ``late_risk`` before arriving (recall),
  the median lead of the first one before the window's end and before the arrival;
  ``late_risk`` records on stops that were not late (false alerts) and on how many
  stops; records per stop ever alerted (flapping: 1.0 is none);
- the error of the picture the backend has: every 30 s of the day, for every stop not
  yet reached, the last ``eta`` published for it against its true arrival, by horizon
  (minutes before the true arrival); beside it the error of the van's own latest
  prediction (every 10 s) at the same instants. Their ratio is what publishing less
  costs in accuracy.

    .venv/bin/python bench/eta_events.py [--quick] [--seeds 1-12] [--stops 25]
        [--long-seeds 2,3,5,6] [--long-stops 150] [--model FILE] [--jobs 2]
        [--set min_move_s=90 --set heartbeat_s=600 ...]
        (``--set dwell_hold_stops=0``: the ETAs not held during dwells, as before)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.envelope import frame_record
from firmware_agent.contract.eta_features import FeatureMatrix
from firmware_agent.contract.model_file import read_metadata
from firmware_agent.contract.records import EtaUpdate, LateRisk, encode_record
from firmware_agent.eta.models import DEFAULT_MODEL
from firmware_agent.eta.predictor import EtaPredictor, Prediction
from firmware_agent.eta.tracker import TRIGGERS, EtaConfig
from firmware_agent.pod.chain import PodChain
from firmware_agent.van import VanConfig, VanPipeline
from simulator.eta_days import format_seeds, parse_seeds, simulator_day, trained_seeds

SHIPPED = Path(__file__).resolve().parents[1] / "firmware_agent" / "eta" / "models" / DEFAULT_MODEL
SAMPLE_EVERY_S = 30.0
BUCKETS_MIN = ((0, 5), (5, 15), (15, 30), (30, 60), (60, 1440))
TELEMETRY_KB_PER_VAN_HOUR = 5.9  # docs/benchmarks.md, bench/wire_bytes.py


class Recording(EtaPredictor):
    """The real predictor, with every prediction kept: (time, stop ids, seconds)."""

    def __init__(self, inner: EtaPredictor) -> None:
        super().__init__(None, unavailable=inner.unavailable)
        self.model_version = inner.model_version
        self.inner = inner
        self.now: datetime | None = None  # set by the bench before each fix
        self.log: list[tuple[float, tuple[str, ...], np.ndarray[Any, Any]]] = []

    def predict(self, features: FeatureMatrix) -> Prediction:
        prediction = self.inner.predict(features)
        assert self.now is not None
        self.log.append((self.now.timestamp(), prediction.stop_ids, prediction.eta_s.copy()))
        return prediction


@dataclass
class Tally:
    """One predictor over some days: sums only, so days add up."""

    days: int = 0
    stops: int = 0
    hours: float = 0.0
    triggers: Counter[str] = field(default_factory=Counter)
    late_risk: int = 0
    wire_bytes: int = 0
    eta_wire_bytes: int = 0
    no_eta_before_arrival: int = 0
    windowed: int = 0
    late_stops: int = 0
    late_alerted: int = 0
    lead_window_s: list[float] = field(default_factory=list)
    lead_arrival_s: list[float] = field(default_factory=list)
    false_records: int = 0
    false_stops: int = 0
    alerted_stops: int = 0
    alert_records: int = 0
    # Per horizon bucket: [samples, sum |published - truth|, sum |own - truth|].
    errors: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict) and not isinstance(mine, Counter):
                for key, values in theirs.items():
                    acc = mine.setdefault(key, [0.0] * len(values))
                    for i, v in enumerate(values):
                        acc[i] += v
            elif isinstance(mine, Counter):
                mine.update(theirs)
            else:
                setattr(self, f.name, mine + theirs)


def _bucket(horizon_s: float) -> str | None:
    for lo, hi in BUCKETS_MIN:
        if lo * 60 <= horizon_s < hi * 60:
            return f"{lo}-{hi} min" if hi < 1440 else f"{lo}+ min"
    return None


def play(day: Any, predictor: EtaPredictor, config: EtaConfig) -> Tally:
    """``day`` through the pipeline with ``predictor``; what was sent, scored on the truth."""
    recorder = Recording(predictor)
    manifest = day.manifest
    van = VanPipeline(
        manifest,
        pods=PodChain(manifest.device_id, Ed25519PrivateKey.generate()),
        config=VanConfig(eta=config),
        telemetry=False,
        eta=recorder,
    )
    assert van.eta_tracker is not None
    records: list[EtaUpdate | LateRisk] = []
    for fix in day.fixes:
        recorder.now = fix.time
        records += [r for r in van.on_fix(fix) if isinstance(r, EtaUpdate | LateRisk)]
        # The van's own prediction is the tracker's, after the hold of a dwell.
        held = van.eta_tracker.last_prediction
        if recorder.log and held is not None and held.stop_ids == recorder.log[-1][1]:
            recorder.log[-1] = (recorder.log[-1][0], held.stop_ids, held.eta_s.copy())

    t = Tally(days=1, stops=len(manifest.stops))
    first_s = day.fixes[0].time.timestamp()
    last_s = day.fixes[-1].time.timestamp()
    t.hours = (last_s - first_s) / 3600.0
    published: dict[str, list[tuple[float, float]]] = defaultdict(list)
    alerts: dict[str, list[float]] = defaultdict(list)
    for seq, r in enumerate(records, start=1):
        # What the agent stores is the record's JSON; the wire carries it enveloped.
        stored = encode_record(r)
        sent = frame_record(
            manifest.device_id, "events", seq, stored, historical=False, sent_at=r.time
        )
        t.wire_bytes += len(sent)
        if isinstance(r, EtaUpdate):
            t.triggers[r.trigger or "first"] += 1
            t.eta_wire_bytes += len(sent)
            published[r.stop_id].append((r.time.timestamp(), r.eta.timestamp()))
        else:
            t.late_risk += 1
            alerts[r.stop_id].append(r.time.timestamp())

    # late_risk against the truth.
    truth = {stop_id: at.timestamp() for stop_id, at in day.arrivals.items()}
    for stop in manifest.stops:
        arrival_s = truth.get(stop.id)
        if arrival_s is None:
            continue
        if not any(issued < arrival_s for issued, _ in published.get(stop.id, [])):
            t.no_eta_before_arrival += 1
        said = alerts.get(stop.id, [])
        if said:
            t.alerted_stops += 1
            t.alert_records += len(said)
        if stop.window_end is None:
            continue
        t.windowed += 1
        window_end_s = stop.window_end.timestamp()
        if arrival_s > window_end_s:
            t.late_stops += 1
            before = [s for s in said if s < arrival_s]
            if before:
                t.late_alerted += 1
                t.lead_window_s.append(window_end_s - before[0])
                t.lead_arrival_s.append(arrival_s - before[0])
        elif said:
            t.false_records += len(said)
            t.false_stops += 1

    # The backend's picture (last published) and the van's (last predicted), every 30 s.
    predicted: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for now_s, stop_ids, eta_s in recorder.log:
        for stop_id, seconds in zip(stop_ids, eta_s, strict=True):
            predicted[stop_id].append((now_s, now_s + float(seconds)))
    samples = np.arange(first_s, last_s, SAMPLE_EVERY_S)
    for stop_id, arrival_s in truth.items():
        pub, own = published.get(stop_id), predicted.get(stop_id)
        if not pub or not own:
            continue
        pub_t = np.array([p[0] for p in pub])
        pub_eta = np.array([p[1] for p in pub])
        own_t = np.array([p[0] for p in own])
        own_eta = np.array([p[1] for p in own])
        at = samples[(samples < arrival_s) & (samples >= pub_t[0])]
        ip = np.searchsorted(pub_t, at, side="right") - 1
        io = np.searchsorted(own_t, at, side="right") - 1
        for when, i, j in zip(at, ip, io, strict=True):
            bucket = _bucket(arrival_s - when)
            if bucket is None or j < 0:
                continue
            acc = t.errors.setdefault(bucket, [0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += abs(pub_eta[i] - arrival_s)
            acc[2] += abs(own_eta[j] - arrival_s)
    return t


_PREDICTORS: dict[str, EtaPredictor] = {}


def run_day(seed: int, n_stops: int, model: bytes, config: EtaConfig) -> tuple[Tally, Tally]:
    """One simulator day, played with the model and with the baseline."""
    if "model" not in _PREDICTORS:  # once per process
        _PREDICTORS["model"] = EtaPredictor.load(model)
    day = simulator_day(seed, n_stops)
    baseline = EtaPredictor.baseline("bench: the baseline")
    return play(day, _PREDICTORS["model"], config), play(day, baseline, config)


def _median_min(values: list[float]) -> str:
    return f"{statistics.median(values) / 60:.1f}" if values else "-"


def tables(suites: list[tuple[str, dict[str, Tally]]]) -> list[str]:
    out = [
        "| days | predictor | stops | hours | first | moved | arrival | heartbeat | eta "
        "| late_risk | wire kB | kB/van-hour | B/record | stops without an eta before arrival |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, by in suites:
        for who, t in by.items():
            n_eta = sum(t.triggers.values())
            n = n_eta + t.late_risk
            out.append(
                f"| {name} | {who} | {t.stops} | {t.hours:.1f} | "
                + " | ".join(str(t.triggers[k]) for k in TRIGGERS)
                + f" | {n_eta} | {t.late_risk} | {t.wire_bytes / 1e3:.1f} | "
                f"{t.wire_bytes / t.hours / 1e3:.1f} | {t.wire_bytes / max(n, 1):.0f} | "
                f"{t.no_eta_before_arrival} |"
            )
    out += [
        "",
        "| days | predictor | windowed stops | late stops | alerted before arrival "
        "| median lead before window end, min | median lead before arrival, min "
        "| false alerts (records / stops) | late_risk per alerted stop |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, by in suites:
        for who, t in by.items():
            recall = (
                f"{t.late_alerted} ({t.late_alerted / t.late_stops:.0%})" if t.late_stops else "-"
            )
            flap = f"{t.alert_records / t.alerted_stops:.2f}" if t.alerted_stops else "-"
            out.append(
                f"| {name} | {who} | {t.windowed} | {t.late_stops} | {recall} | "
                f"{_median_min(t.lead_window_s)} | {_median_min(t.lead_arrival_s)} | "
                f"{t.false_records} / {t.false_stops} | {flap} |"
            )
    out += [
        "",
        "| days | predictor | horizon | samples | MAE published s | MAE own prediction s "
        "| published / own |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    labels = [f"{lo}-{hi} min" if hi < 1440 else f"{lo}+ min" for lo, hi in BUCKETS_MIN]
    for name, by in suites:
        for who, t in by.items():
            for label in labels:
                samples, pub, own = t.errors.get(label, [0.0, 0.0, 0.0])
                if not samples:
                    continue
                out.append(
                    f"| {name} | {who} | {label} | {samples:.0f} | {pub / samples:.0f} | "
                    f"{own / samples:.0f} | "
                    f"{pub / own:.2f} |"
                )
    return out


def _setting(text: str) -> tuple[str, int | float]:
    """``--set NAME=VALUE``: an integer for EtaConfig's integer settings, else a float."""
    name, sep, value = text.partition("=")
    types = {f.name: f.type for f in dataclasses.fields(EtaConfig)}
    if not sep or name not in types:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, NAME one of {sorted(types)}")
    try:
        return name, int(value) if types[name] in {int, "int"} else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None, help="short days (1-12; --quick 1-4)")
    parser.add_argument("--stops", type=int, default=None, help="stops per short day (25)")
    parser.add_argument("--long-seeds", default=None, help="long days (2,3,5,6; --quick 3)")
    parser.add_argument("--long-stops", type=int, default=150, help="stops per long day")
    parser.add_argument("--quick", action="store_true", help="4 short days and one long: ~30 s")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="the .tflite to use")
    parser.add_argument("--jobs", type=int, default=2, help="processes playing days (2)")
    parser.add_argument(
        "--set", type=_setting, action="append", default=[], metavar="NAME=VALUE",
        help="an EtaConfig setting other than its default (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    short = parse_seeds(args.seeds or ("1-4" if args.quick else "1-12"))
    long = parse_seeds(args.long_seeds or ("3" if args.quick else "2,3,5,6"))
    n_short = args.stops or (15 if args.quick else 25)
    config = EtaConfig(**dict(args.set))

    model = args.model.read_bytes()
    version = EtaPredictor.load(model).model_version
    if version is None:
        sys.exit("eta_events: the model cannot run here (no interpreter?)")
    training = json.loads(read_metadata(model).get("training", "{}"))
    overlap = trained_seeds(training) & (set(short) | set(long))
    if overlap:
        sys.exit(f"eta_events: seeds {format_seeds(sorted(overlap))} were used in training")

    started = time.perf_counter()
    jobs = [(s, n_short) for s in short] + [(s, args.long_stops) for s in long]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(
            pool.map(
                run_day,
                [s for s, _ in jobs],
                [n for _, n in jobs],
                [model] * len(jobs),
                [config] * len(jobs),
            )
        )
    elapsed_s = time.perf_counter() - started

    suites: list[tuple[str, dict[str, Tally]]] = []
    for seeds, n_stops in ((short, n_short), (long, args.long_stops)):
        if not seeds:
            continue
        by = {"model": Tally(), "baseline": Tally()}
        for (seed, n), (m, b) in zip(jobs, results, strict=True):
            if n == n_stops and seed in seeds:
                by["model"].add(m)
                by["baseline"].add(b)
        suites.append((f"{n_stops} stops x{len(seeds)} ({format_seeds(seeds)})", by))

    print(f"model {version}; {config}")
    print(
        f"telemetry for scale: {TELEMETRY_KB_PER_VAN_HOUR} kB/van-hour (docs/benchmarks.md); "
        f"played in {elapsed_s:.0f} s, {args.jobs} processes, Python {platform.python_version()}"
    )
    print()
    print("\n".join(tables(suites)))


if __name__ == "__main__":
    main()
