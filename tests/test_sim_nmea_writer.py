"""NMEA output: every sentence parses, fields round-trip, no-fix looks like a receiver's."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime

import pynmea2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.contract.fix import FixMode
from simulator.epoch import Epoch, Talker
from simulator.gnss_errors import MultipathConfig, OutageConfig, OutageWindow
from simulator.nmea_writer import KNOTS_PER_MPS, format_lat, format_lon, render_epoch, sentence
from simulator.scenario import ScenarioConfig, generate


def _epochs(talker: Talker, rate_hz: int) -> list[Epoch]:
    config = ScenarioConfig(
        seed=17,
        n_stops=3,
        rate_hz=rate_hz,
        talker=talker,
        multipath=MultipathConfig(rate_per_h=120.0),
        outages=OutageConfig(windows=(OutageWindow(90.0, 12.0),)),
    )
    return list(generate(config).epochs())


@pytest.fixture(scope="module", params=[("GP", 1), ("GN", 5)], ids=["GP-1Hz", "GN-5Hz"])
def run(request: pytest.FixtureRequest) -> tuple[Talker, list[Epoch]]:
    talker, rate_hz = request.param
    return talker, _epochs(talker, rate_hz)


def test_every_sentence_parses_with_checksums_and_round_trips(
    run: tuple[Talker, list[Epoch]],
) -> None:
    talker, epochs = run
    assert any(e.outage for e in epochs)
    assert any(e.multipath for e in epochs)
    for epoch in epochs:
        lines = render_epoch(epoch, talker)
        for line in lines:
            assert line.endswith("\r\n")
            assert line.isascii()
        parsed = [pynmea2.parse(line.rstrip("\r\n"), check=True) for line in lines]
        rmc, vtg, gga = parsed[0], parsed[1], parsed[2]
        assert (rmc.sentence_type, vtg.sentence_type, gga.sentence_type) == ("RMC", "VTG", "GGA")
        assert rmc.timestamp == epoch.time.time().replace(tzinfo=rmc.timestamp.tzinfo)
        assert rmc.datestamp == epoch.time.date()
        if epoch.has_fix:
            assert epoch.reported_lat is not None
            assert epoch.reported_lon is not None
            for message in (rmc, gga):
                assert abs(message.latitude - epoch.reported_lat) < 1e-6
                assert abs(message.longitude - epoch.reported_lon) < 1e-6
            assert epoch.reported_speed_mps is not None
            assert float(rmc.spd_over_grnd) == pytest.approx(
                epoch.reported_speed_mps * KNOTS_PER_MPS, abs=6e-4
            )
            assert float(vtg.spd_over_grnd_kmph) == pytest.approx(
                epoch.reported_speed_mps * 3.6, abs=6e-4
            )
            assert rmc.status == "A"
            assert int(gga.gps_qual) == 1
            assert int(gga.num_sats) == epoch.sats_used
            assert float(gga.horizontal_dil) == pytest.approx(epoch.hdop)


def test_no_fix_epochs_are_sent_as_a_receiver_without_fix_sends_them(
    run: tuple[Talker, list[Epoch]],
) -> None:
    talker, epochs = run
    no_fix = [e for e in epochs if e.mode is FixMode.NO_FIX]
    assert no_fix
    for epoch in no_fix:
        parsed = [
            pynmea2.parse(line.rstrip("\r\n"), check=True) for line in render_epoch(epoch, talker)
        ]
        rmc, vtg, gga = parsed[:3]
        gsas = [p for p in parsed if p.sentence_type == "GSA"]
        assert rmc.status == "V"
        assert rmc.lat == rmc.lon == ""
        assert rmc.mode_indicator == "N"
        assert int(gga.gps_qual) == 0
        assert gga.lat == gga.lon == ""
        assert gga.num_sats == "00"
        assert vtg.faa_mode == "N"
        assert vtg.true_track in ("", None)
        assert all(g.mode_fix_type == "1" for g in gsas)
        assert all(not getattr(g, f"sv_id{i:02d}") for g in gsas for i in range(1, 13))


def test_gsa_lists_the_satellites_used_and_the_fix_type(run: tuple[Talker, list[Epoch]]) -> None:
    talker, epochs = run
    for epoch in epochs:
        gsas = [
            pynmea2.parse(line.rstrip("\r\n"), check=True)
            for line in render_epoch(epoch, talker)
            if line[3:6] == "GSA"
        ]
        assert len(gsas) == (1 if talker == "GP" else 2)
        ids = [
            int(getattr(g, f"sv_id{i:02d}"))
            for g in gsas
            for i in range(1, 13)
            if getattr(g, f"sv_id{i:02d}")
        ]
        assert len(ids) == epoch.sats_used
        expected_type = {FixMode.NO_FIX: "1", FixMode.FIX_2D: "2", FixMode.FIX_3D: "3"}[epoch.mode]
        assert {g.mode_fix_type for g in gsas} == {expected_type}
        if talker == "GN":
            gps, glonass = gsas
            assert all(
                1 <= int(getattr(gps, f"sv_id{i:02d}")) <= 32
                for i in range(1, 13)
                if getattr(gps, f"sv_id{i:02d}")
            )
            assert all(
                65 <= int(getattr(glonass, f"sv_id{i:02d}")) <= 96
                for i in range(1, 13)
                if getattr(glonass, f"sv_id{i:02d}")
            )


def test_talkers_and_gsv_once_a_second(run: tuple[Talker, list[Epoch]]) -> None:
    talker, epochs = run
    kinds: Counter[str] = Counter()
    for epoch in epochs:
        lines = render_epoch(epoch, talker)
        for line in lines:
            kinds[line[1:6]] += 1
        gsv = [line for line in lines if line[3:6] == "GSV"]
        if epoch.time.microsecond == 0:
            assert gsv
            systems = {line[1:3] for line in gsv}
            assert systems == ({"GP"} if talker == "GP" else {"GP", "GL"})
            for system in systems:
                messages = [
                    pynmea2.parse(g.rstrip("\r\n"), check=True) for g in gsv if g[1:3] == system
                ]
                in_view = [s for s in epoch.satellites if (s.system == system)]
                assert int(messages[0].num_sv_in_view) == len(in_view)
                assert [int(m.msg_num) for m in messages] == list(
                    range(1, int(messages[0].num_messages) + 1)
                )
        else:
            assert not gsv
    assert kinds[f"{talker}RMC"] == kinds[f"{talker}GGA"] == kinds[f"{talker}VTG"] == len(epochs)
    other = "GN" if talker == "GP" else "GP"
    assert kinds[f"{other}RMC"] == 0


def test_ten_hz_times_carry_hundredths() -> None:
    epochs = list(
        generate(ScenarioConfig(seed=1, n_stops=1, rate_hz=10, max_duration_s=2.0)).epochs()
    )
    times = [render_epoch(e, "GP")[0].split(",")[1] for e in epochs]
    assert times[:12] == [f"0800{s:02d}.{c}0" for s in range(2) for c in range(10)][:12]


@given(st.floats(-89.999999, 89.999999), st.floats(-179.999999, 179.999999))
def test_coordinates_round_trip_through_degrees_and_minutes(lat: float, lon: float) -> None:
    lat_text, ns = format_lat(lat)
    lon_text, ew = format_lon(lon)
    assert len(lat_text) == 10
    assert len(lon_text) == 11
    message = pynmea2.parse(
        sentence(f"GPGGA,120000.00,{lat_text},{ns},{lon_text},{ew},1,08,0.9,1.0,M,0.0,M,,").strip()
    )
    assert abs(message.latitude - lat) < 1e-6
    assert abs(message.longitude - lon) < 1e-6


def test_minutes_that_round_to_sixty_carry_into_the_degree() -> None:
    assert format_lat(47.9999999999) == ("4800.00000", "N")
    assert format_lon(-11.99999999999) == ("01200.00000", "W")


def test_checksums_match_real_receivers() -> None:
    # Captured from real receivers (gpsd's test logs).
    assert sentence("GPVTG,,,,,,,,,N") == "$GPVTG,,,,,,,,,N*30\r\n"
    assert sentence("GPGSV,1,1,00") == "$GPGSV,1,1,00*79\r\n"


def test_slow_epochs_have_no_course() -> None:
    epoch = _epochs("GP", 1)[40]
    slow = dataclasses.replace(
        epoch,
        reported_speed_mps=0.1,
        reported_course_deg=None,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    rmc = pynmea2.parse(render_epoch(slow, "GP")[0].strip(), check=True)
    assert rmc.true_course is None or rmc.true_course == ""
