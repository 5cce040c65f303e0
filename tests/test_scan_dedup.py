"""Double scans of one parcel within a window count once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_agent.errors import ConfigError
from firmware_agent.scan.dedup import ScanDeduplicator

A = "106141412345678908"
B = "JD0146000062812"


def test_a_second_scan_within_the_window_is_a_duplicate() -> None:
    dedup = ScanDeduplicator(window_s=10.0)
    assert dedup.seen(A, 100.0) is False
    assert dedup.seen(A, 101.0) is True
    assert dedup.seen(A, 109.999) is True
    assert dedup.seen(A, 110.0) is False  # the window is [accepted, accepted + window)


def test_codes_are_independent() -> None:
    dedup = ScanDeduplicator(window_s=10.0)
    assert dedup.seen(A, 0.0) is False
    assert dedup.seen(B, 1.0) is False
    assert dedup.seen(A, 2.0) is True
    assert dedup.seen(B, 3.0) is True


def test_duplicates_do_not_extend_the_window() -> None:
    # A label left in front of a continuous-mode scanner: read every 4 s. It counts
    # again once per window, not never.
    dedup = ScanDeduplicator(window_s=10.0)
    verdicts = [dedup.seen(A, t) for t in (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0)]
    assert verdicts == [False, True, True, False, True, True, False]


def test_a_zero_window_disables_deduplication() -> None:
    dedup = ScanDeduplicator(window_s=0.0)
    assert [dedup.seen(A, 5.0) for _ in range(3)] == [False, False, False]


def test_a_clock_running_backwards_counts_as_within_the_window() -> None:
    dedup = ScanDeduplicator(window_s=10.0)
    assert dedup.seen(A, 100.0) is False
    assert dedup.seen(A, 50.0) is True


def test_expired_entries_are_evicted() -> None:
    dedup = ScanDeduplicator(window_s=10.0)
    for i in range(1000):
        dedup.seen(f"code-{i}", float(i))
    # Only the codes of the last 10 s are remembered.
    assert len(dedup) == 10
    assert dedup.seen("code-0", 1000.0) is False


def test_memory_is_bounded_whatever_the_clock_does() -> None:
    dedup = ScanDeduplicator(window_s=10.0, max_entries=100)
    for i in range(1000):
        dedup.seen(f"code-{i}", 0.0)  # a frozen clock: nothing ever expires
    assert len(dedup) == 100
    assert dedup.seen("code-999", 0.0) is True
    assert dedup.seen("code-0", 0.0) is False  # the oldest was dropped


@pytest.mark.parametrize("window_s", [-1.0, float("nan"), float("inf")])
def test_bad_windows_are_rejected(window_s: float) -> None:
    with pytest.raises(ConfigError):
        ScanDeduplicator(window_s=window_s)


@given(
    st.lists(
        st.tuples(st.sampled_from([A, B, "x"]), st.floats(0, 5, allow_nan=False)), max_size=60
    ),
    st.floats(0.5, 20),
)
def test_matches_a_reference_model(steps: list[tuple[str, float]], window_s: float) -> None:
    dedup = ScanDeduplicator(window_s=window_s)
    accepted: dict[str, float] = {}
    now_s = 0.0
    for code, dt_s in steps:
        now_s += dt_s
        expected = code in accepted and now_s - accepted[code] < window_s
        if not expected:
            accepted[code] = now_s
        assert dedup.seen(code, now_s) is expected
