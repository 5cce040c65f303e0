"""Plausibility filters: each drops what it should, counts it, and recovers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.geo import destination
from firmware_agent.errors import ConfigError
from firmware_agent.gnss.filters import FilterConfig, FixFilter

T0 = datetime(2026, 11, 21, 8, 0, 0, tzinfo=UTC)
LAT, LON = 53.55, 9.99


def fix_at(t_s: float, north_m: float = 0.0, *, position: bool = True) -> Fix:
    lat, lon = destination(LAT, LON, 0.0, north_m)
    when = T0 + timedelta(seconds=t_s)
    if not position:
        return Fix(time=when, tod_s=t_s, mode=FixMode.NO_FIX)
    return Fix(time=when, tod_s=t_s, lat=lat, lon=lon, mode=FixMode.FIX_3D)


def test_duplicate_epoch_is_dropped() -> None:
    f = FixFilter()
    assert f.accept(fix_at(0))
    assert not f.accept(fix_at(0))
    assert f.accept(fix_at(1))
    assert f.counts["duplicate"] == 1


def test_out_of_order_then_a_genuine_clock_reset() -> None:
    f = FixFilter(FilterConfig(reorder_reset_after=3))
    assert f.accept(fix_at(100))
    assert not f.accept(fix_at(99))
    assert f.accept(fix_at(101))
    assert f.counts["out_of_order"] == 1
    # the receiver's clock really went back: followed after 3 epochs in a row
    assert not f.accept(fix_at(50))
    assert not f.accept(fix_at(51))
    assert f.accept(fix_at(52))
    assert f.accept(fix_at(53))
    assert f.counts["time_reset"] == 1


def test_stale_epochs_judged_on_the_receive_clock() -> None:
    f = FixFilter(FilterConfig(max_lag_s=5.0))
    assert f.accept(fix_at(0), now_s=1000.0)
    assert f.accept(fix_at(1), now_s=1001.0)
    # a buffer dumped after a 20 s stall: old epochs arrive now
    assert not f.accept(fix_at(2), now_s=1021.0)
    assert not f.accept(fix_at(3), now_s=1021.1)
    # live data again
    assert f.accept(fix_at(21), now_s=1021.2)
    assert f.counts["stale"] == 2
    # without a receive clock (decoding a file) nothing is stale
    g = FixFilter()
    assert g.accept(fix_at(0))
    assert g.accept(fix_at(1))


def test_implausible_jump_is_dropped_and_reanchored() -> None:
    f = FixFilter(FilterConfig(max_speed_mps=50.0, jump_slack_m=20.0, jump_reanchor_s=5.0))
    assert f.accept(fix_at(0, 0))
    assert f.accept(fix_at(1, 30))  # 30 m/s: plausible
    assert not f.accept(fix_at(2, 800))  # 770 m in 1 s
    assert f.accept(fix_at(3, 90))  # back on the road: 60 m in 2 s
    assert f.counts["jump"] == 1
    # the van really is elsewhere (first fix after a ferry, a bad anchor...)
    for t in range(4, 9):
        assert not f.accept(fix_at(t, 5000 + t))
    assert f.accept(fix_at(9, 5009))
    assert f.counts["jump_reanchor"] == 1
    assert f.accept(fix_at(10, 5010))


def test_no_fix_epochs_pass_and_keep_the_jump_anchor() -> None:
    f = FixFilter(FilterConfig(max_speed_mps=30.0, jump_slack_m=10.0))
    assert f.accept(fix_at(0, 0))
    assert f.accept(fix_at(1, position=False))  # a tunnel
    assert f.accept(fix_at(60, 1500))  # 1.5 km in 60 s after the tunnel: fine
    assert not f.accept(fix_at(61, 3000))


def test_fixes_before_the_date_is_known_are_ordered_by_time_of_day() -> None:
    f = FixFilter()
    assert f.accept(Fix(time=None, tod_s=10.0))
    assert not f.accept(Fix(time=None, tod_s=10.0))
    assert f.accept(Fix(time=None, tod_s=11.0))
    assert f.accept(fix_at(12))  # the date became known: a fresh start, not "out of order"


def test_disabled_filters_pass_everything() -> None:
    f = FixFilter(FilterConfig.disabled())
    for t, north in [(0, 0), (0, 0), (-5, 0), (1, 99999)]:
        assert f.accept(fix_at(t, north))
    assert not f.counts


@pytest.mark.parametrize(
    "kwargs",
    [{"reorder_reset_after": 0}, {"max_lag_s": 0}, {"max_speed_mps": -1}, {"jump_slack_m": -1}],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FilterConfig(**kwargs)  # type: ignore[arg-type]
