"""The SCANS file: reading it leniently (bad lines are faults), writing it exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.faults import FaultCounter
from firmware_agent.scan.log import format_scan_line, read_scan_log
from firmware_agent.scan.types import Scan

T = datetime(2026, 11, 21, 9, 14, 3, 250000, tzinfo=UTC)
CONTRACT_LINE = (
    '{"time": "2026-11-21T09:14:03.250Z", "raw": "]C100106141412345678908\\u001d4201234", '
    '"source": "serial"}'
)


def test_the_contract_example_reads_back() -> None:
    faults = FaultCounter()
    scans = list(read_scan_log([CONTRACT_LINE], faults))
    assert scans == [Scan(T, "]C100106141412345678908\x1d4201234", "serial")]
    assert faults.total() == 0


def test_a_scan_is_written_as_the_contract_says() -> None:
    scan = Scan(T, "]C100106141412345678908\x1d4201234", "serial")
    assert format_scan_line(scan) == CONTRACT_LINE


def test_extra_keys_are_written_after_the_scan_and_ignored_on_reading() -> None:
    scan = Scan(T, "JD0146000062812", "hid")
    line = format_scan_line(scan, code="JD0146000062812", truth={"stop": "S001"})
    assert list(json.loads(line)) == ["time", "raw", "source", "code", "truth"]
    faults = FaultCounter()
    assert list(read_scan_log([line], faults)) == [scan]


def test_extra_keys_may_not_replace_the_scans_own() -> None:
    with pytest.raises(ValueError, match="raw"):
        format_scan_line(Scan(T, "x", "serial"), raw="y")


def test_comments_blank_lines_and_line_ends_are_skipped() -> None:
    lines = ["# recorded in van 7\n", "\n", "   \r\n", CONTRACT_LINE + "\r\n", "  # indented\n"]
    faults = FaultCounter()
    assert len(list(read_scan_log(lines, faults))) == 1
    assert faults.total() == 0


def test_source_defaults_to_serial() -> None:
    line = '{"time": "2026-11-21T09:14:03.250Z", "raw": "A"}'
    (scan,) = read_scan_log([line], FaultCounter())
    assert scan.source == "serial"


@pytest.mark.parametrize(
    ("time_text", "expected"),
    [
        ("2026-11-21T09:14:03.250Z", T),
        ("2026-11-21T09:14:03.250+00:00", T),
        ("2026-11-21T10:14:03.250+01:00", T),
        ("2026-11-21T04:14:03.25-05:00", T),
        ("2026-11-21T09:14:03Z", T.replace(microsecond=0)),
    ],
)
def test_times_with_any_offset_become_utc(time_text: str, expected: datetime) -> None:
    line = json.dumps({"time": time_text, "raw": "A"})
    (scan,) = read_scan_log([line], FaultCounter())
    assert scan.time == expected
    assert scan.time.tzinfo is UTC


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("not json", "scan_log_bad_json"),
        ('{"time": "2026-11-21T09:14:03Z", "raw": "A"', "scan_log_bad_json"),
        ("[" * 100_000, "scan_log_bad_json"),
        ('{"time": "2026-11-21T09:14:03Z", "raw": "\x1d"}', "scan_log_bad_json"),  # unescaped
        ('["2026-11-21T09:14:03Z", "A"]', "scan_log_not_object"),
        ('"A"', "scan_log_not_object"),
        ('{"raw": "A"}', "scan_log_no_time"),
        ('{"time": null, "raw": "A"}', "scan_log_no_time"),
        ('{"time": 1700000000, "raw": "A"}', "scan_log_bad_time"),
        ('{"time": "yesterday", "raw": "A"}', "scan_log_bad_time"),
        ('{"time": "2026-13-21T09:14:03Z", "raw": "A"}', "scan_log_bad_time"),
        ('{"time": "2026-11-21T09:14:03", "raw": "A"}', "scan_log_naive_time"),
        ('{"time": "2026-11-21", "raw": "A"}', "scan_log_naive_time"),
        ('{"time": "2026-11-21T09:14:03Z"}', "scan_log_bad_raw"),
        ('{"time": "2026-11-21T09:14:03Z", "raw": 106141412345678908}', "scan_log_bad_raw"),
        ('{"time": "2026-11-21T09:14:03Z", "raw": "A", "source": "usb"}', "scan_log_bad_source"),
        ('{"time": "2026-11-21T09:14:03Z", "raw": "A", "source": ["hid"]}', "scan_log_bad_source"),
    ],
)
def test_bad_lines_are_counted_and_skipped(line: str, kind: str) -> None:
    faults = FaultCounter()
    good = '{"time": "2026-11-21T09:14:04Z", "raw": "B"}'
    scans = list(read_scan_log([good, line, good], faults))
    assert [s.raw for s in scans] == ["B", "B"]  # reading goes on past the bad line
    assert dict(faults.counts) == {kind: 1}
    ((first_kind, example),) = faults.drain_first_seen()
    assert first_kind == kind
    assert example.startswith("line 2: ")


def test_raw_text_that_is_not_a_valid_code_is_still_a_scan() -> None:
    # Parsing is the pipeline's job: an empty read or lone surrogates (bytes that were
    # not UTF-8, as the simulator records them) are scans to be rejected there.
    lines = [
        '{"time": "2026-11-21T09:14:03Z", "raw": ""}',
        '{"time": "2026-11-21T09:14:03Z", "raw": "\\udcff\\u0001"}',
    ]
    faults = FaultCounter()
    assert [s.raw for s in read_scan_log(lines, faults)] == ["", "\udcff\x01"]
    assert faults.total() == 0


def test_scan_rejects_naive_times_and_unknown_sources() -> None:
    with pytest.raises(ValueError, match="naive"):
        Scan(datetime(2026, 11, 21, 9, 0), "A", "serial")
    with pytest.raises(ValueError, match="source"):
        Scan(T, "A", "bluetooth")


def test_scan_times_are_normalised_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    scan = Scan(T.astimezone(cet), "A", "serial")
    assert scan.time.tzinfo is UTC
    assert scan.time == T


_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))


@given(time=_TIMES, raw=st.text(), source=st.sampled_from(["serial", "hid"]))
def test_written_lines_read_back_identically(time: datetime, raw: str, source: str) -> None:
    scan = Scan(time, raw, source)
    line = format_scan_line(scan, note="x")
    assert line.isascii()
    assert "\n" not in line
    faults = FaultCounter()
    assert list(read_scan_log([line + "\n"], faults)) == [scan]
    assert faults.total() == 0


@given(st.lists(st.text(), max_size=20))
def test_reading_never_raises(lines: list[str]) -> None:
    faults = FaultCounter()
    for scan in read_scan_log(lines, faults):
        assert scan.time.tzinfo is UTC
