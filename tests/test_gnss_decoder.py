"""The pure GNSS core: sentences in, one validated fix per epoch out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from firmware_agent.gnss.sentences import KNOT_MPS
from tests.nmea import CYCLE_1, CYCLE_2, line, lines, ublox_cycle

ROTTERDAM_LAT = 51 + 55.55442 / 60
T_0837 = 8 * 3600 + 37 * 60  # 08:37:00 as seconds of the day
ROTTERDAM_LON = 4 + 34.65873 / 60


def decode(data: bytes, **kwargs: object) -> tuple[list[Fix], GnssDecoder]:
    decoder = GnssDecoder(**kwargs)  # type: ignore[arg-type]
    return decoder.feed(data) + decoder.flush(), decoder


def test_one_fix_per_epoch_merges_every_sentence() -> None:
    fixes, _ = decode(lines(*CYCLE_1, *CYCLE_2))
    assert len(fixes) == 2
    fix = fixes[0]
    assert fix.time == datetime(2010, 8, 21, 8, 37, 23, tzinfo=UTC)
    assert fix.lat == pytest.approx(ROTTERDAM_LAT, abs=1e-9)
    assert fix.lon == pytest.approx(ROTTERDAM_LON, abs=1e-9)
    assert fix.speed_mps == pytest.approx(0.211 * KNOT_MPS)
    assert fix.course_deg == 12.5
    assert fix.alt_m == -4.0
    assert fix.mode is FixMode.FIX_3D
    assert (fix.hdop, fix.pdop, fix.vdop) == (2.51, 3.33, 2.20)
    assert fix.sats_used == 6
    assert fix.quality == 1
    assert fixes[1].time == datetime(2010, 8, 21, 8, 37, 24, tzinfo=UTC)
    assert fixes[1].alt_m == -4.2


def test_json_record_has_the_documented_fields() -> None:
    fixes, _ = decode(lines(*CYCLE_1))
    record = json.loads(json.dumps(fixes[0].to_json_dict()))
    assert record["time"] == "2010-08-21T08:37:23.000Z"
    for key in ("lat", "lon", "speed_mps", "course_deg", "alt_m", "mode", "hdop", "sats_used"):
        assert key in record
    assert record["mode"] == 3


@pytest.mark.parametrize(
    "bodies",
    [
        # RMC void with the last known position still in its fields
        ("GPRMC,083723.00,V,5155.55442,N,00434.65873,E,0.2,12.5,210810,,,N",),
        # GGA quality 0 with a position
        ("GPGGA,083723.00,5155.55442,N,00434.65873,E,0,06,2.51,-4.0,M,46.0,M,,",),
        # empty fields: pynmea2 alone would make these 0.0, 0.0
        ("GPRMC,083723.00,V,,,,,,,210810,,,N", "GPGGA,083723.00,,,,,0,00,99.99,,,,,,"),
        # GLL status V, GNS all constellations N
        ("GPGLL,5155.55442,N,00434.65873,E,083723.00,V,N",),
        ("GNGNS,083723.00,5155.55442,N,00434.65873,E,NNN,00,,,,,",),
        # MediaTek's cold-start placeholder 89 deg 60 min
        ("GPGGA,235946.005,8960.000000,N,00000.000000,E,0,0,,137.000,M,13.000,M,,",),
    ],
)
def test_no_fix_sentences_never_produce_a_position(bodies: tuple[str, ...]) -> None:
    fixes, decoder = decode(lines(*bodies))
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix.lat is None
    assert fix.lon is None
    assert fix.speed_mps is None
    assert fix.alt_m is None
    assert fix.mode is FixMode.NO_FIX
    assert decoder.faults.total() == 0  # a receiver without a fix is not damaged input


def test_gnss_time_needs_a_date_and_carries_it_across_midnight() -> None:
    fixes, _ = decode(
        lines(
            "GPGGA,235958.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
            "GPRMC,235959.00,A,5155.55442,N,00434.65873,E,0.0,,311226,,,A",
            "GPGGA,235959.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
            "GPGGA,000000.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
            "GPGGA,000001.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
        )
    )
    assert [f.time for f in fixes] == [
        None,  # GGA alone never says the date
        datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC),
    ]
    assert fixes[0].tod_s == 86398.0
    assert fixes[0].to_json_dict()["time"] is None


def test_zda_supplies_the_date() -> None:
    fixes, _ = decode(
        lines(
            "GNZDA,120000.00,21,11,2026,00,00",
            "GNGGA,120000.50,5155.55442,N,00434.65873,E,1,12,0.8,10.0,M,46.0,M,,",
        )
    )
    assert fixes[0].time == datetime(2026, 11, 21, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "QZ"])
def test_every_constellation_talker(talker: str) -> None:
    fixes, _ = decode(
        lines(f"{talker}RMC,083723.00,A,5155.55442,N,00434.65873,W,1.0,90.0,210810,,,A")
    )
    assert fixes[0].lon == pytest.approx(-ROTTERDAM_LON)
    assert fixes[0].talker == talker


def test_gns_and_multi_constellation_gsa() -> None:
    fixes, _ = decode(
        lines(
            "GNGNS,051347.00,6001.336799,N,03014.169008,E,AAN,09,0.9,16.5,18.0,,,V",
            "GNRMC,051347.00,A,6001.336799,N,03014.169008,E,0.0,0.0,200922,8.4,E,A,V",
            "GNGSA,A,3,08,10,16,18,27,,,,,,,,1.2,0.9,0.9,1",
            "GNGSA,A,3,69,76,78,85,,,,,,,,,1.2,0.9,0.9,2",
        )
    )
    fix = fixes[0]
    assert fix.sats_used == 9  # 5 GPS + 4 GLONASS in GSA, and GNS says 9
    assert fix.alt_m == 16.5
    assert fix.mode is FixMode.FIX_3D
    assert fix.time == datetime(2022, 9, 20, 5, 13, 47, tzinfo=UTC)


def test_gga_capped_at_12_sats_is_corrected_by_gsa() -> None:
    gsa_gps = "GNGSA,A,3,01,02,03,04,05,06,07,08,09,10,11,12,1.0,0.6,0.8,1"
    gsa_glo = "GNGSA,A,3,65,66,67,,,,,,,,,,1.0,0.6,0.8,2"
    fixes, _ = decode(
        lines(
            "GNGGA,083723.00,5155.55442,N,00434.65873,E,1,12,0.6,1.0,M,46.0,M,,", gsa_gps, gsa_glo
        )
    )
    assert fixes[0].sats_used == 15


def test_the_most_precise_position_of_an_epoch_wins() -> None:
    fixes, _ = decode(
        lines(
            "GPGGA,193221.00,2037.72792,N,08704.08478,W,1,04,1.7,-30.40,M,-13.9,M,,",
            "GPRMC,193221.00,A,2037.7279,N,08704.0848,W,00.1,201.8,231207,01,W,A",
        )
    )
    assert fixes[0].lat == pytest.approx(20 + 37.72792 / 60, abs=1e-12)


def test_old_vtg_format_and_vtg_without_fix() -> None:
    fixes, _ = decode(
        lines(
            "GPGGA,083723,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
            "GPVTG,054.7,034.4,005.5,010.2",
            "GPGGA,083724,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,",
            "GPVTG,,T,,M,,N,,K,N",
        )
    )
    assert fixes[0].course_deg == 54.7
    assert fixes[0].speed_mps == pytest.approx(5.5 * KNOT_MPS)
    assert fixes[1].speed_mps is None


def test_learned_cycle_end_emits_without_waiting_for_the_next_epoch() -> None:
    decoder = GnssDecoder()
    out: list[Fix] = []
    out += decoder.feed(lines(*ublox_cycle(0), *ublox_cycle(1)))
    assert [f.tod_s for f in out] == [T_0837]  # cycle 0 closed by cycle 1's time change
    # Cycle 1 also ends on GLL before a time change: "GLL ends the cycle" is learned, and
    # cycle 2 comes out on its own GLL.
    out += decoder.feed(lines(*ublox_cycle(2)))
    assert [f.tod_s for f in out] == [T_0837, T_0837 + 1, T_0837 + 2]
    # From now on a fix comes out on the cycle's last sentence, before any other input.
    nxt = ublox_cycle(30)
    assert decoder.feed(lines(*nxt[:-1])) == []
    emitted = decoder.feed(lines(nxt[-1]))
    assert [f.tod_s for f in emitted] == [T_0837 + 30.0]


def test_leading_untimed_sentence_needs_the_line_to_go_quiet() -> None:
    """GSA sent *before* the timed sentences of its epoch.

    The byte stream alone cannot tell whether a GSA ends one burst or starts the next:
    only receive timing can. The live reader flushes the decoder when the line goes
    quiet between bursts; with that, each GSA lands in its own epoch.
    """

    def burst(sec: int, fix_type: int) -> bytes:
        return lines(
            f"GPGSA,A,{fix_type},01,02,03,04,,,,,,,,,2.0,1.0,1.7",
            f"GPGGA,0837{sec:02d}.00,5155.55442,N,00434.65873,E,1,04,1.0,5.0,M,46.0,M,,",
            f"GPRMC,0837{sec:02d}.00,A,5155.55442,N,00434.65873,E,0.0,,210810,,,A",
        )

    decoder = GnssDecoder()
    modes = []
    for sec in range(6):
        modes += [f.mode for f in decoder.feed(burst(sec, 2 if sec == 5 else 3))]
        modes += [f.mode for f in decoder.flush()]  # the quiet gap between bursts
    assert modes == [FixMode.FIX_3D] * 5 + [FixMode.FIX_2D]


def test_split_at_every_byte_gives_the_same_fixes() -> None:
    data = lines(*CYCLE_1, *CYCLE_2) + b"\x00\xb5b\x01\x07junk" + lines(*CYCLE_1)
    whole, _ = decode(data, filters=FilterConfig.disabled())
    assert len(whole) == 3
    for cut in range(len(data) + 1):
        decoder = GnssDecoder(filters=FilterConfig.disabled())
        halves = decoder.feed(data[:cut]) + decoder.feed(data[cut:]) + decoder.flush()
        assert halves == whole, cut
    decoder = GnssDecoder(filters=FilterConfig.disabled())
    bytewise = [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]
    assert bytewise + decoder.flush() == whole


def test_hostile_input_is_counted_by_kind_and_never_raises() -> None:
    good = lines(*CYCLE_1)
    bad_checksum = b"$GPGGA,083723.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,*00\r\n"
    truncated = b"$GPGGA,083723.00,5155.55442,N,00434.6\r\n"
    binary = bytes(range(256)) + b"\r\n"  # holds '$' and '*': one "sentence", bad checksum
    non_ascii = b"$GPGGA,083723.00,\xb5\x62,N*00\r\n"
    proprietary = line("PUBX,00,083723.00,5155.55442,N,00434.65873,E,0.0,G3")
    unknown = line("GPXYZ,1,2,3")
    unused = line("GPTXT,01,01,02,u-blox ag")
    overlong = b"$GPGGA," + b"1," * 400 + b"\r\n"
    bad_time = line("GPGGA,256199.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,")
    bad_hdop = line("GPGGA,083725.00,5155.55442,N,00434.65873,E,1,06,x.5,-4.0,M,46.0,M,,")
    stream = (
        bad_checksum
        + truncated
        + binary
        + non_ascii
        + proprietary
        + unknown
        + unused
        + overlong
        + bad_time
        + good
        + bad_hdop
    )
    fixes, decoder = decode(stream)
    assert [f.tod_s for f in fixes] == [T_0837 + 23.0, T_0837 + 25.0]
    assert fixes[1].hdop is None  # the damaged field is dropped, the fix is kept
    c = decoder.summary_counts()
    assert c["fault.bad_checksum"] == 2
    assert c["fault.truncated"] == 1
    assert c["fault.non_ascii"] == 1
    assert c["fault.noise_bytes"] > 200
    assert c["fault.overlong"] == 1
    assert c["fault.malformed"] == 1
    assert c["fault.bad_field"] == 1
    assert c["ignored.proprietary"] == 1
    assert c["ignored.unused_type"] == 2


def test_first_occurrence_of_each_fault_is_reported_once() -> None:
    decoder = GnssDecoder()
    bad = b"$GPGGA,1*00\r\n"
    decoder.feed(bad * 50)
    first = decoder.faults.drain_first_seen()
    assert [k for k, _ in first] == ["bad_checksum"]
    decoder.feed(bad * 50)
    assert decoder.faults.drain_first_seen() == []
    assert decoder.faults.counts["bad_checksum"] == 100


def test_sentence_glued_to_garbage_and_to_another_sentence() -> None:
    gga = line("GPGGA,083723.00,5155.55442,N,00434.65873,E,1,06,2.51,-4.0,M,46.0,M,,", crlf=False)
    rmc = line("GPRMC,083723.00,A,5155.55442,N,00434.65873,E,0.2,,210810,,,A", crlf=False)
    fixes, decoder = decode(b"\xff\xfegarbage" + gga + b"trailing junk" + rmc + b"\r\n")
    assert len(fixes) == 1
    assert fixes[0].time is not None
    assert decoder.faults.counts["noise_bytes"] > 0


def test_comments_are_skipped_only_when_asked() -> None:
    data = b"# Name: a log\n" + lines(*CYCLE_1)
    _, with_comments = decode(data, comments=True)
    assert with_comments.summary_counts()["ignored.comment"] == 1
    assert "fault.noise_bytes" not in with_comments.summary_counts()
    _, live = decode(data)
    assert live.summary_counts()["fault.noise_bytes"] > 0


def test_missing_checksum_is_accepted_but_can_be_required() -> None:
    data = b"".join(line(b, checksum=False) for b in CYCLE_1)
    fixes, decoder = decode(data)
    assert len(fixes) == 1
    assert decoder.summary_counts()["ignored.no_checksum"] == 5
    fixes, decoder = decode(data, require_checksum=True)
    assert fixes == []
    assert decoder.faults.counts["no_checksum"] == 5


def test_summary_is_one_line() -> None:
    _, decoder = decode(lines(*CYCLE_1) + b"$GPGGA,1*00\r\n")
    summary = decoder.summary()
    assert "\n" not in summary
    assert summary.startswith("sentences=6 decoded=5 fixes=1 ")
    assert "fault.bad_checksum=1" in summary


def test_fast_json_equals_the_json_module() -> None:
    fixes, _ = decode(
        lines(*CYCLE_1)
        + lines("GPGGA,120000,,,,,0,00,,,,,,,")
        + lines("GNRMC,235959.999,A,0000.00001,S,18000.0000,W,0.0,359.99,010100,,,A"),
        filters=FilterConfig.disabled(),
    )
    assert len(fixes) == 3
    for fix in fixes:
        assert fix.to_json() == json.dumps(fix.to_json_dict(), separators=(",", ":"))
    assert json.loads(fixes[2].to_json())["time"] == "2000-01-01T23:59:59.999Z"
