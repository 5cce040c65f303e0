"""A scenario on disk: the NMEA log and its ground truth, written in one pass.

``DIR/nmea.log`` (what the receiver sends), ``DIR/truth.csv``, ``DIR/stops.json`` and
``DIR/scenario.json`` (see :mod:`simulator.truth`), ``DIR/manifest.json`` (the day's
plan, :mod:`simulator.manifest`) and ``DIR/scans.jsonl`` (what the scanner sends, with
its truth, :mod:`simulator.scans`). The epochs are generated once and streamed to both
the log and the truth, so a long 10 Hz day never sits in memory. The manifest and the
scans are drawn with the scenario's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.manifest import DEFAULT_DEVICE_ID, MANIFEST_JSON, build_manifest, write_manifest
from simulator.nmea_writer import epoch_bytes
from simulator.scans import (
    DEFAULT_DUPLICATE_RATE,
    DEFAULT_GARBAGE_RATE,
    DEFAULT_OUTCOME_RATE,
    DEFAULT_WRONG_STOP_RATE,
    SCAN_LOG,
    build_scan_log,
    write_scan_log,
)
from simulator.scenario import Scenario
from simulator.truth import (
    SCENARIO_JSON,
    STOPS_JSON,
    TRUTH_CSV,
    TruthWriter,
    write_scenario_json,
    write_stops_json,
)

NMEA_LOG = "nmea.log"


@dataclass(frozen=True, slots=True)
class ScenarioSummary:
    """What was written, in figures a tester checks at a glance."""

    out_dir: Path
    epochs: int
    stops: int
    duration_s: float
    distance_m: float
    outage_epochs: int
    multipath_epochs: int
    nmea_bytes: int
    rate_hz: int
    talker: str
    parcels: int = 0
    scans: int = 0

    def line(self) -> str:
        """The one-line summary ``fleet-sim scenario`` prints."""
        return (
            f"{self.stops} stops, {self.epochs} epochs at {self.rate_hz} Hz ({self.talker}), "
            f"{self.duration_s / 60:.1f} min, {self.distance_m / 1000:.2f} km, "
            f"{self.outage_epochs} outage and {self.multipath_epochs} multipath epochs, "
            f"{self.nmea_bytes} NMEA bytes, {self.parcels} parcels, {self.scans} scans "
            f"-> {self.out_dir}"
        )


def write_scenario_dir(
    scenario: Scenario,
    out_dir: Path,
    *,
    device_id: str = DEFAULT_DEVICE_ID,
    wrong_stop_rate: float = DEFAULT_WRONG_STOP_RATE,
    garbage_rate: float = DEFAULT_GARBAGE_RATE,
    duplicate_rate: float = DEFAULT_DUPLICATE_RATE,
    outcome_rate: float = DEFAULT_OUTCOME_RATE,
) -> ScenarioSummary:
    """Write ``scenario`` into ``out_dir`` (created if needed; files are overwritten).

    The manifest is for ``device_id``; the rates go to
    :func:`~simulator.scans.build_scan_log` (a bad rate raises before anything is written).
    """
    seed = scenario.config.seed
    manifest = build_manifest(scenario, device_id=device_id, seed=seed)
    scans = build_scan_log(
        scenario,
        manifest,
        seed=seed,
        wrong_stop_rate=wrong_stop_rate,
        garbage_rate=garbage_rate,
        duplicate_rate=duplicate_rate,
        outcome_rate=outcome_rate,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    talker = scenario.config.talker
    outages = multipath = written = 0
    distance_m = 0.0
    with (out_dir / NMEA_LOG).open("wb") as log, TruthWriter(out_dir / TRUTH_CSV) as truth:
        for epoch in scenario.epochs():
            data = epoch_bytes(epoch, talker)
            log.write(data)
            written += len(data)
            truth.write(epoch)
            outages += epoch.outage
            multipath += epoch.multipath
            distance_m = epoch.odometer_m
        rows = truth.rows
    write_stops_json(out_dir / STOPS_JSON, scenario.stops)
    write_scenario_json(out_dir / SCENARIO_JSON, scenario.config)
    write_manifest(out_dir / MANIFEST_JSON, manifest)
    write_scan_log(out_dir / SCAN_LOG, scans)
    return ScenarioSummary(
        out_dir=out_dir,
        epochs=rows,
        stops=len(scenario.stops),
        duration_s=scenario.duration_s,
        distance_m=distance_m,
        outage_epochs=outages,
        multipath_epochs=multipath,
        nmea_bytes=written,
        rate_hz=scenario.config.rate_hz,
        talker=talker,
        parcels=sum(len(stop["parcels"]) for stop in manifest["stops"]),
        scans=len(scans),
    )
