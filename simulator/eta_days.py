"""Days for the ETA model to learn from: generated days and real trips, as ingest reads them.

``fleet-sim eta-days`` writes each day as a directory of
:mod:`firmware_agent.contract.eta_days` (the manifest, every fix the receiver reported,
the true arrivals); ``fleet-ingest train-eta --days`` trains on them and
bench/eta_eval.py scores models on them. Ingest never runs the simulator: it reads what
the simulator wrote.

- :func:`simulator_day`: a generated day (:func:`sim_day_plan`: the seed also draws the
  start time and weekday, and whether the manifest keeps its windows and stop types).
  Its fixes are what the receiver reports each epoch (:meth:`~simulator.epoch.Epoch.
  fix`, noise, jumps and outages included), its arrivals the simulator's truth.
- :func:`trip_day`: a recorded position CSV (the Liverpool bus runs, the Munich car
  trips), its stops where the vehicle really halted (:func:`simulator.trips.
  find_dwells`, the manifest of :func:`simulator.trips.trip_manifest`), its fixes the
  trace interpolated to 1 Hz; the labels are the first sample of each halt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from firmware_agent.contract.eta_days import EtaDay, write_day
from firmware_agent.contract.manifest import parse_manifest
from simulator.errors import ConfigError
from simulator.manifest import build_manifest
from simulator.rng import stream as random_stream
from simulator.scenario import DEFAULT_START, Scenario, ScenarioConfig, generate
from simulator.trace import TracePoint, read_trace_csv, trace_epochs
from simulator.trips import (
    DWELL_SPREAD_M,
    MIN_DWELL_S,
    TRIP_STOP_RADIUS_M,
    Dwell,
    find_dwells,
    trip_manifest,
    trip_stop_order,
)

DEFAULT_SIM_STOPS: Final = 25


def parse_seeds(text: str) -> list[int]:
    """``1000-1039``, ``1,5,9-12`` or ``none``: the seeds in the order given
    (:class:`~simulator.errors.ConfigError`, a ``ValueError``, for anything else)."""
    if text.strip().lower() in {"", "none"}:
        return []
    seeds: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ConfigError(f"seeds must look like 1000-1039 or 1,5,9-12, got {text!r}") from None
        if hi < lo:
            raise ConfigError(f"empty seed range {part.strip()!r}")
        seeds.extend(range(lo, hi + 1))
    return seeds


def format_seeds(seeds: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``, the inverse of :func:`parse_seeds`."""
    out: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True, slots=True)
class SimDay:
    """What a simulator day is made of, all drawn from its seed (:func:`sim_day_plan`)."""

    config: ScenarioConfig
    windows: bool  # the manifest keeps its promised windows
    stop_types: bool  # the manifest keeps its stop types (else every stop is "other")


def sim_day_plan(seed: int, n_stops: int = DEFAULT_SIM_STOPS) -> SimDay:
    """Simulator day ``seed``: its town, stops and receiver noise are the seed's, and so
    are the variations a fleet's days have that one generated day lacks:

    - the start, 05:00 to 19:00 UTC on any weekday (the simulator's traffic follows the
      hour, and the model sees the time of day);
    - one day in three without promised windows (not every customer gets one, and then
      ``late_known`` is 0);
    - one day in four with every stop typed ``other`` (a dispatch system that does not
      say), so the model learns what an unknown type means rather than never seeing one;
    - the talker (GPS alone or GPS + GLONASS), alternating.

    The same seed always gives the same day.
    """
    rng = random_stream("eta-day", seed)
    day = DEFAULT_START.replace(hour=0, minute=0) + timedelta(days=rng.randrange(7))
    start = day + timedelta(minutes=rng.randrange(5 * 60, 19 * 60))
    config = ScenarioConfig(
        seed=seed, n_stops=n_stops, start=start, rate_hz=1, talker="GN" if seed % 2 else "GP"
    )
    return SimDay(config, windows=rng.random() >= 1 / 3, stop_types=rng.random() >= 1 / 4)


def simulator_day(seed: int, n_stops: int = DEFAULT_SIM_STOPS) -> EtaDay:
    """Simulator day ``seed`` (:func:`sim_day_plan`) as the van sees it (module doc)."""
    return simulator_day_with_scenario(seed, n_stops)[0]


def simulator_day_with_scenario(
    seed: int, n_stops: int = DEFAULT_SIM_STOPS
) -> tuple[EtaDay, Scenario, dict[str, Any]]:
    """:func:`simulator_day`, with the scenario and the manifest document it was made
    from (what a bench needs to derive more of the same day, e.g. its scans)."""
    plan = sim_day_plan(seed, n_stops)
    scenario = generate(plan.config)
    doc = build_manifest(scenario, seed=seed)
    for stop in doc["stops"]:
        if not plan.windows:
            stop.pop("window_start", None)
            stop.pop("window_end", None)
        if not plan.stop_types:
            stop["type"] = "other"
    fixes = [epoch.fix(plan.config.talker) for epoch in scenario.epochs()]
    arrivals = {s.id: s.arrival for s in scenario.stops}
    departures = {s.id: s.departure for s in scenario.stops}
    about = {"source": "simulator", "seed": seed, "n_stops": n_stops}
    day = EtaDay(f"sim-{seed}", parse_manifest(doc), fixes, arrivals, about, departures)
    return day, scenario, doc


def trip_day(
    csv_path: Path,
    *,
    name: str | None = None,
    min_halt_s: float = MIN_DWELL_S,
    max_spread_m: float = DWELL_SPREAD_M,
    radius_m: int = TRIP_STOP_RADIUS_M,
    passes: Callable[[Sequence[TracePoint], Sequence[Dwell]], Sequence[TracePoint]] | None = None,
) -> EtaDay:
    """A recorded trip (``timestamp_utc,lat,lon`` CSV) as a day: stops where the vehicle
    really halted for at least ``min_halt_s`` (20 s: traffic lights included; 60 s: the
    halts a delivery stop or the evaluation's manifests are made of), fixes at 1 Hz
    interpolated between the samples, exactly as ``fleet-sim trip`` plays it. Labels:
    each halt's first sample (arrival) and last (departure). Raises
    :class:`simulator.errors.TraceFileError` for a bad CSV.

    The halt rule's spread and the stops' radius are :func:`simulator.trips.find_dwells`'
    and :func:`simulator.trips.trip_manifest`'s defaults unless given. ``passes``, if
    given, is called with the trace and its halts and returns places the vehicle drove
    past, added to the manifest in the order reached without an arrival (``about``
    lists their stop ids under ``drive_pasts``)."""
    points = read_trace_csv(csv_path)
    dwells = find_dwells(points, max_spread_m=max_spread_m, min_duration_s=min_halt_s)
    passed = list(passes(points, dwells)) if passes is not None else []
    manifest = parse_manifest(trip_manifest(points, dwells, radius_m=radius_m, passes=passed))
    fixes = [epoch.fix("GP") for epoch in trace_epochs(points, rate_hz=1)]
    arrivals: dict[str, datetime] = {}
    departures: dict[str, datetime] = {}
    drive_pasts: list[str] = []
    for stop, place in zip(manifest.stops, trip_stop_order(dwells, passed), strict=True):
        if isinstance(place, Dwell):
            arrivals[stop.id] = place.arrival
            departures[stop.id] = place.departure
        else:
            drive_pasts.append(stop.id)
    about: dict[str, Any] = {"source": "trip", "csv": csv_path.name, "min_halt_s": min_halt_s}
    if passes is not None:
        about["drive_pasts"] = drive_pasts
    default = csv_path.stem if min_halt_s == MIN_DWELL_S else f"h{min_halt_s:g}-{csv_path.stem}"
    return EtaDay(name or default, manifest, fixes, arrivals, about, departures)


def _write_sim_day(seed: int, n_stops: int, out: Path) -> Path:
    day = simulator_day(seed, n_stops)
    return write_day(day, out / day.name)


def write_days(
    out: Path,
    *,
    seeds: Sequence[int] = (),
    n_stops: int = DEFAULT_SIM_STOPS,
    trips: Iterable[Path] = (),
    trip_halts_s: Sequence[float] = (MIN_DWELL_S,),
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write simulator days ``seeds`` and the ``trips`` as day directories under ``out``,
    the simulator days in ``jobs`` processes (a 25-stop day takes seconds of CPU); each
    trip once per minimum halt of ``trip_halts_s`` (``trip-NAME`` for 20 s,
    ``trip-hSECONDS-NAME`` otherwise); returns the directories, seeds first, in order."""
    if n_stops < 1:
        raise ConfigError(f"n_stops must be >= 1, got {n_stops}")
    written: list[Path] = []

    def done(path: Path) -> None:
        written.append(path)
        if progress is not None:
            progress(f"{path.name}: written")

    seeds = list(seeds)
    if jobs <= 1 or len(seeds) <= 1:
        for seed in seeds:
            done(_write_sim_day(seed, n_stops, out))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for path in pool.map(_write_sim_day, seeds, [n_stops] * len(seeds), [out] * len(seeds)):
                done(path)
    for csv_path in trips:
        for halt_s in trip_halts_s:
            day = trip_day(csv_path, min_halt_s=halt_s)
            done(write_day(day, out / f"trip-{day.name}"))
    return written


def trained_seeds(training: Mapping[str, Any]) -> set[int]:
    """The simulator seeds a model's training record (its ``training`` metadata) says it
    learned from: the days ``sim-SEED`` it read, or (records before the days were
    written by the simulator) its ``simulator`` seeds. An evaluation must not use them."""
    sources = training.get("sources", {})
    seeds = set(parse_seeds(sources.get("simulator", {}).get("seeds", "")))
    for name in sources.get("days", {}).get("days", []):
        prefix, _, number = str(name).partition("-")
        if prefix == "sim" and number.isdigit():
            seeds.add(int(number))
    return seeds
