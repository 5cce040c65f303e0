"""The days the simulator writes for ETA training, and what training reads of them.

A day's fixes are what the receiver reports each epoch (``Epoch.fix``), not the van's
decoder run over the simulator's NMEA: so they must say what that decoder would have
said, at the NMEA's resolution. Written and read back, a day gives the same rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_ingest.eta.dataset import day_rows, read_days
from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.eta_days import (
    ARRIVALS,
    DEPARTURES,
    FIXES,
    EtaDayError,
    read_day,
    write_day,
)
from firmware_agent.contract.fix import Fix
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from simulator.cli import main as sim_main
from simulator.eta_days import format_seeds, parse_seeds, simulator_day, trip_day
from simulator.nmea_writer import epoch_bytes
from simulator.scenario import ScenarioConfig, generate
from tests.corpus import TRAJECTORIES, require


def test_a_reported_fix_is_what_the_decoder_makes_of_the_epochs_nmea() -> None:
    config = ScenarioConfig(seed=3, n_stops=4, rate_hz=1, talker="GN")
    epochs = list(generate(config).epochs())
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    decoded = decoder.feed(b"".join(epoch_bytes(e, "GN") for e in epochs)) + decoder.flush()
    by_time = {f.time: f for f in decoded}
    compared = with_position = 0
    for epoch in epochs:
        ours, theirs = epoch.fix("GN"), by_time[epoch.time]
        compared += 1
        assert (ours.mode, ours.quality, ours.sats_used, ours.sats_view) == (
            theirs.mode,
            theirs.quality,
            theirs.sats_used,
            theirs.sats_view,
        )
        assert ours.talker == theirs.talker
        assert (ours.lat is None) == (theirs.lat is None)
        if ours.lat is None or theirs.lat is None:
            continue
        with_position += 1
        assert ours.talker == "GN"
        # The NMEA carries 1e-5 minute (2 cm), knots to 3 decimals, DOPs to 2.
        assert abs(ours.lat - theirs.lat) < 2e-7
        assert ours.lon is not None
        assert theirs.lon is not None
        assert abs(ours.lon - theirs.lon) < 2e-7
        assert ours.speed_mps is not None
        assert theirs.speed_mps is not None
        assert abs(ours.speed_mps - theirs.speed_mps) < 0.01
        assert ours.hdop is not None
        assert theirs.hdop is not None
        assert abs(ours.hdop - theirs.hdop) < 0.006
        assert (ours.alt_m is None) == (theirs.alt_m is None)  # no altitude in 2D
        if ours.alt_m is not None and theirs.alt_m is not None:
            assert abs(ours.alt_m - theirs.alt_m) < 0.06
    assert compared == len(epochs) > 300
    assert with_position > 0.8 * compared


def test_a_written_day_reads_back_with_the_same_rows(tmp_path: Path) -> None:
    day = simulator_day(5, n_stops=3)
    assert day.name == "sim-5"
    back = read_day(write_day(day, tmp_path / day.name))
    assert back.name == day.name
    assert back.manifest == day.manifest
    assert back.arrivals == {k: v.replace(microsecond=v.microsecond // 1000 * 1000)
                             for k, v in day.arrivals.items()}  # fmt: skip
    assert len(back.fixes) == len(day.fixes)
    assert back.about["seed"] == 5
    assert day.departures.keys() == day.arrivals.keys()
    assert back.departures == {k: v.replace(microsecond=v.microsecond // 1000 * 1000)
                               for k, v in day.departures.items()}  # fmt: skip
    # A day written before departures existed still reads, with none.
    (tmp_path / day.name / DEPARTURES).unlink()
    assert read_day(tmp_path / day.name).departures == {}
    rows, again = day_rows(day), day_rows(back)
    np.testing.assert_array_equal(rows.stop_index, again.stop_index)
    np.testing.assert_allclose(again.x, rows.x, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(again.actual_s, rows.actual_s, atol=1e-3)


def test_a_damaged_day_is_named_not_trained_on(tmp_path: Path) -> None:
    directory = write_day(simulator_day(6, n_stops=2), tmp_path / "d")
    with (directory / FIXES).open("a", encoding="utf-8") as f:
        f.write('{"time": "yesterday"}\n')
    with pytest.raises(EtaDayError, match=r"fixes\.jsonl.*ISO 8601"):
        read_day(directory)
    (directory / FIXES).write_text("")
    (directory / ARRIVALS).write_text('{"S001": 7}')
    with pytest.raises(EtaDayError, match=r"arrivals\.json: S001"):
        read_day(directory)
    (directory / ARRIVALS).write_text("{}")
    (directory / DEPARTURES).write_text('{"S001": "soon"}')
    with pytest.raises(EtaDayError, match=r"departures\.json: S001"):
        read_day(directory)
    with pytest.raises(CodecError, match="lat and lon go together"):
        Fix.from_json({"lat": 1.0})


@pytest.mark.corpus
def test_a_real_trip_is_a_day_with_its_halts_as_stops() -> None:
    csv = sorted(require(TRAJECTORIES / "liverpool_bus").glob("*.csv"))[0]
    day = trip_day(csv)
    assert len(day.manifest.stops) == len(day.arrivals) > 0
    assert day.about == {"source": "trip", "csv": csv.name, "min_halt_s": 20.0}
    assert day.name == csv.stem
    assert all(f.talker == "GP" for f in day.fixes)
    assert len(day_rows(day)) > 0
    # Each halt's last sample is its departure, at or after its first.
    assert day.departures.keys() == day.arrivals.keys()
    assert all(day.departures[s] >= day.arrivals[s] for s in day.arrivals)
    # Long halts only: fewer stops, each lasting at least 60 s.
    long = trip_day(csv, min_halt_s=60.0)
    assert long.name == f"h60-{csv.stem}"
    assert 0 < len(long.arrivals) < len(day.arrivals)
    assert all(
        (long.departures[s] - long.arrivals[s]).total_seconds() >= 60.0 for s in long.arrivals
    )


def test_the_command_writes_days_training_reads(tmp_path: Path) -> None:
    assert sim_main(["eta-days", "--seeds", "20-21", "--stops", "2", "--out", str(tmp_path)]) == 0
    days = read_days([tmp_path])
    assert [d.name for d in days] == ["sim-20", "sim-21"]
    assert sim_main(["eta-days", "--out", str(tmp_path / "none")]) != 0
    assert parse_seeds("1,5,9-12") == [1, 5, 9, 10, 11, 12]
    assert format_seeds([1, 2, 3, 7]) == "1-3,7"
