"""A scenario on disk: the NMEA log and its ground truth, written in one pass.

``DIR/nmea.log`` (what the receiver sends), ``DIR/truth.csv``, ``DIR/stops.json`` and
``DIR/scenario.json`` (see :mod:`simulator.truth`). The epochs are generated once and
streamed to both the log and the truth, so a long 10 Hz day never sits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.nmea_writer import epoch_bytes
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

    def line(self) -> str:
        """The one-line summary ``fleet-sim scenario`` prints."""
        return (
            f"{self.stops} stops, {self.epochs} epochs at {self.rate_hz} Hz ({self.talker}), "
            f"{self.duration_s / 60:.1f} min, {self.distance_m / 1000:.2f} km, "
            f"{self.outage_epochs} outage and {self.multipath_epochs} multipath epochs, "
            f"{self.nmea_bytes} NMEA bytes -> {self.out_dir}"
        )


def write_scenario_dir(scenario: Scenario, out_dir: Path) -> ScenarioSummary:
    """Write ``scenario`` into ``out_dir`` (created if needed; files are overwritten)."""
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
    )
