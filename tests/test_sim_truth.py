"""Ground truth on disk: written beside the NMEA log, read back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.errors import TruthFileError
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import NMEA_LOG, write_scenario_dir
from simulator.truth import TRUTH_COLUMNS, load_truth, read_stops_json, read_truth_csv


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("day")
    write_scenario_dir(generate(ScenarioConfig(seed=7, n_stops=4, rate_hz=5)), out)
    return out


def test_truth_reads_back_what_the_scenario_was(scenario_dir: Path) -> None:
    config = ScenarioConfig(seed=7, n_stops=4, rate_hz=5)
    scenario = generate(config)
    truth = load_truth(scenario_dir)
    assert truth.config == config
    assert len(truth.stops) == len(scenario.stops)
    for read, made in zip(truth.stops, scenario.stops, strict=True):
        # Times are whole milliseconds, so they survive exactly; positions to 1e-8°.
        assert (read.id, read.type, read.arrival, read.departure) == (
            made.id,
            made.type,
            made.arrival,
            made.departure,
        )
        for name in ("lat", "lon", "park_lat", "park_lon"):
            assert getattr(read, name) == pytest.approx(getattr(made, name), abs=1e-8)
    epochs = list(scenario.epochs())
    assert len(truth.rows) == len(epochs) == scenario.n_epochs
    for row, epoch in zip(truth.rows, epochs, strict=True):
        assert row.time == epoch.time
        assert row.lat == pytest.approx(epoch.lat, abs=1e-8)
        assert row.lon == pytest.approx(epoch.lon, abs=1e-8)
        assert row.speed_mps == pytest.approx(epoch.speed_mps, abs=1e-3)
        assert (row.reported_lat is None) == (epoch.reported_lat is None)
        assert row.hdop == epoch.hdop
        assert (row.mode, row.outage, row.multipath, row.stop_id) == (
            epoch.mode,
            epoch.outage,
            epoch.multipath,
            epoch.stop_id,
        )
        assert row.sats_used == epoch.sats_used


def test_files_have_the_documented_shape(scenario_dir: Path) -> None:
    header = (scenario_dir / "truth.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(TRUTH_COLUMNS)
    stops = json.loads((scenario_dir / "stops.json").read_text(encoding="utf-8"))
    assert set(stops[0]) == {
        "id",
        "type",
        "lat",
        "lon",
        "park_lat",
        "park_lon",
        "arrival",
        "departure",
        "dwell_s",
    }
    assert stops[0]["arrival"].endswith("Z")
    assert len(stops[0]["arrival"]) == len("2026-11-21T08:00:01.000Z")
    assert (scenario_dir / NMEA_LOG).read_bytes().startswith(b"$GPRMC,080000.00,")
    assert (
        json.loads((scenario_dir / "scenario.json").read_text(encoding="utf-8"))["config"]["seed"]
        == 7
    )


def test_a_damaged_truth_csv_names_the_line(tmp_path: Path, scenario_dir: Path) -> None:
    lines = (scenario_dir / "truth.csv").read_text(encoding="utf-8").splitlines()
    fields = lines[5].split(",")
    fields[TRUTH_COLUMNS.index("mode")] = "x"
    lines[5] = ",".join(fields)
    broken = tmp_path / "truth.csv"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TruthFileError, match="line 6"):
        list(read_truth_csv(broken))
    (tmp_path / "wrong.csv").write_text("time,lat\n", encoding="utf-8")
    with pytest.raises(TruthFileError, match="line 1: header"):
        list(read_truth_csv(tmp_path / "wrong.csv"))


def test_a_damaged_stops_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "stops.json").write_text('[{"id": "S001"}]', encoding="utf-8")
    with pytest.raises(TruthFileError, match="stop 0"):
        read_stops_json(tmp_path / "stops.json")
    (tmp_path / "stops.json").write_text("[", encoding="utf-8")
    with pytest.raises(TruthFileError, match="not valid JSON"):
        read_stops_json(tmp_path / "stops.json")
