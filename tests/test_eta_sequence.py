"""Sequence deviations: the van passes a stop (drives past it, or serves a later one
first), says so once with ``stop_passed``, and its ETAs follow the order it is taking.

The scenarios are hand-built on tests/vanday.py's plane (metres east ``x`` and north
``y``), played at 1 Hz through :class:`EtaTracker` with the baseline predictor (the
naive ETA is a real prediction the features drive, so the order shows in it), and a
simulated day through the whole :class:`VanPipeline` with the shipped model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract import schema
from firmware_agent.contract.errors import FeatureError
from firmware_agent.contract.eta_features import RoutePlan, SpeedHistory, eta_features
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest, parse_manifest
from firmware_agent.day_state import DayState
from firmware_agent.errors import ConfigError
from firmware_agent.eta.manager import load_eta_predictor
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.sequence import expected_order
from firmware_agent.eta.tracker import EtaConfig, EtaTracker
from firmware_agent.pod.chain import PodChain
from firmware_agent.replay import json_line
from firmware_agent.van import VanPipeline
from simulator.eta_days import simulator_day
from tests.test_eta_tracker import envelopes_validate
from tests.vanday import T0, fix_at, latlon, manifest, stop
from tests.wire import envelope

Record = dict[str, Any]
Waypoint = tuple[float, float, float]  # (x, y, seconds at rest there before moving on)


def path_fixes(
    waypoints: Sequence[Waypoint], *, speed_mps: float = 10.0, t0: datetime = T0
) -> list[tuple[Fix, float, float]]:
    """1 Hz fixes driving straight from waypoint to waypoint at ``speed_mps``, resting
    the waypoint's seconds at each; with the (x, y) of each fix."""
    out: list[tuple[Fix, float, float]] = []
    t = t0
    x, y, rest = waypoints[0]
    for nx, ny, nrest in [*waypoints[1:], (waypoints[-1][0], waypoints[-1][1], 0.0)]:
        for _ in range(round(rest)):
            out.append((fix_at(t, x, y, speed_mps=0.0), x, y))
            t += timedelta(seconds=1)
        length = float(np.hypot(nx - x, ny - y))
        steps = int(length // speed_mps)
        for k in range(steps):
            f = k / steps if steps else 1.0
            px, py = x + f * (nx - x), y + f * (ny - y)
            out.append((fix_at(t, px, py, speed_mps=speed_mps), px, py))
            t += timedelta(seconds=1)
        x, y, rest = nx, ny, nrest
    return out


def play(
    tracker: EtaTracker,
    fixes: Sequence[tuple[Fix, float, float]],
    served_at: dict[str, tuple[float, float]],
    *,
    within_m: float = 5.0,
) -> tuple[list[Record], dict[str, datetime]]:
    """Feed the fixes; a stop of ``served_at`` (its point) is reached at the first fix
    at rest within ``within_m`` of it. Returns the records as JSON and the arrivals."""
    records: list[Record] = []
    arrived: dict[str, datetime] = {}
    for fix, x, y in fixes:
        assert fix.time is not None
        now_arrived = [
            s
            for s, (sx, sy) in served_at.items()
            if s not in arrived and fix.speed_mps == 0.0 and np.hypot(sx - x, sy - y) <= within_m
        ]
        for s in now_arrived:
            arrived[s] = fix.time
        records += [json.loads(json_line(r)) for r in tracker.on_fix(fix, arrived=now_arrived)]
    return records, arrived


def latest_eta_error_s(
    records: Sequence[Record], stop_id: str, arrival: datetime, start: datetime
) -> float:
    """Mean absolute error of the latest published ETA of ``stop_id``, every 10 s from
    ``start`` to its arrival (what a customer watching it would have seen)."""
    etas = [
        (datetime.fromisoformat(r["time"]), datetime.fromisoformat(r["eta"]))
        for r in records
        if r["type"] == "eta" and r["stop_id"] == stop_id
    ]
    errors = []
    t = start
    while t < arrival:
        shown = [eta for issued, eta in etas if issued <= t]
        assert shown, f"no ETA of {stop_id} shown at {t}"
        errors.append(abs((shown[-1] - arrival).total_seconds()))
        t += timedelta(seconds=10)
    return float(np.mean(errors))


def passes(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r["type"] == "stop_passed"]


# -- a drive-past ----------------------------------------------------------------------

# A street east with four stops; S2 is on it (12 m north of the centre line: the van
# drives by at 12 m), and the driver does not stop there.
STREET = {"S1": (1000.0, 0.0), "S2": (2000.0, 12.0), "S3": (4000.0, 0.0), "S4": (5000.0, 0.0)}
DWELL_S = 180.0


def street(stops: dict[str, tuple[float, float]] = STREET, **extra: Any) -> Manifest:
    return manifest([stop(s, x, y, radius_m=50) for s, (x, y) in stops.items()], **extra)


def drive_past_day() -> list[tuple[Fix, float, float]]:
    return path_fixes(
        [(0.0, 0.0, 0.0), (1000.0, 0.0, DWELL_S), (4000.0, 0.0, DWELL_S), (5000.0, 0.0, DWELL_S)]
    )


def test_a_drive_past_is_announced_once_and_the_next_etas_drop_the_detour() -> None:
    served = {s: STREET[s] for s in ("S1", "S3", "S4")}
    fixes = drive_past_day()
    # The ETAs are compared below with drive-pasts on and off: the order alone, so the
    # hold of the ETAs during the dwell at S1 (tests/test_eta_dwell.py) is off in both.
    no_hold = EtaConfig(dwell_hold_stops=0)
    tracker = EtaTracker(street(), EtaPredictor.baseline("test"), no_hold)
    records, arrived = play(tracker, fixes, served)
    [passed] = passes(records)
    assert passed["stop_id"] == "S2"
    assert passed["reason"] == "drive_past"
    assert passed["planned_index"] == 1
    assert passed["closest_m"] == pytest.approx(12.0, abs=1.0)
    # Announced once the van was 300 m past it for 20 s: at 10 m/s, 50 s after it.
    when = datetime.fromisoformat(passed["time"])
    by_s2 = next(f.time for f, x, _ in fixes if x >= 2000.0 and f.time is not None)
    assert 45.0 <= (when - by_s2).total_seconds() <= 55.0
    # The van now expects S2 after S3 and S4 (nothing passes it again): served later.
    assert passed["stops_before"] == 2
    assert datetime.fromisoformat(passed["eta"]) > arrived["S4"]
    assert tracker.passed == {"S2"}
    payload = envelope("van-1", "events", 1, passed, historical=False, sent_at=T0)
    schema.validate("events", json.loads(payload))  # raises if it does not fit

    # The ETAs that moved beyond the threshold (S2's own, a next one's) go out at once ...
    at_pass = [r for r in records if r["time"] == passed["time"] and r["type"] == "eta"]
    assert len(at_pass) >= 2
    assert "S2" in {r["stop_id"] for r in at_pass}
    assert {r["trigger"] for r in at_pass} == {"moved"}
    # ... and are closer to the truth than with drive-pasts off (the planned order: the
    # arrival at S3 then passes S2 as out of order, so both days agree from there on).
    before = EtaTracker(
        street(),
        EtaPredictor.baseline("test"),
        EtaConfig(passed_watch_stops=0, dwell_hold_stops=0),
    )
    old, old_arrived = play(before, fixes, served)
    assert old_arrived == arrived
    assert [(r["stop_id"], r["reason"]) for r in passes(old)] == [("S2", "out_of_order")]
    for stop_id in ("S3", "S4"):
        new_error = latest_eta_error_s(records, stop_id, arrived[stop_id], when)
        old_error = latest_eta_error_s(old, stop_id, arrived[stop_id], when)
        assert new_error < 0.7 * old_error, (stop_id, new_error, old_error)


def test_every_record_of_a_drive_past_day_fits_the_schemas() -> None:
    served = {s: STREET[s] for s in ("S1", "S3", "S4")}
    records, _ = play(EtaTracker(street(), _baseline()), drive_past_day(), served)
    assert {r["type"] for r in records} == {"eta", "stop_passed"}
    assert envelopes_validate(records) == len(records)  # events and the fleetstream


def test_a_new_manifest_keeps_what_was_passed() -> None:
    served = {s: STREET[s] for s in ("S1",)}
    fixes = drive_past_day()[:480]  # 1 km past S2, 1 km before S3
    tracker = EtaTracker(street(), _baseline())
    records, _ = play(tracker, fixes, served)
    assert [r["stop_id"] for r in passes(records)] == ["S2"]
    moved = {**STREET, "S5": (6000.0, 0.0)}
    new = tracker.for_manifest(street(moved), served=["S1"])
    assert new.passed == {"S2"}
    # The next fix predicts on the new plan: S2 stays behind S3, S4, S5, and is not
    # announced again.
    last, x, _ = fixes[-1]
    assert last.time is not None
    out = new.on_fix(fix_at(last.time + timedelta(seconds=10), x + 100.0, speed_mps=10.0))
    assert not [r for r in out if r.type == "stop_passed"]
    assert [new.plan.stop_ids[i] for i in new.order] == ["S3", "S4", "S5", "S2"]


def test_the_pass_is_not_repeated_and_a_later_arrival_there_is_a_normal_one() -> None:
    # The driver comes back for S2 after S3 (out and back): S2 is passed once, served
    # later, and S4 after it is not passed by that arrival.
    fixes = path_fixes(
        [
            (0.0, 0.0, 0.0),
            (1000.0, 0.0, DWELL_S),
            (4000.0, 0.0, DWELL_S),
            (2000.0, 12.0, DWELL_S),
            (5000.0, 0.0, DWELL_S),
        ]
    )
    tracker = EtaTracker(street(), EtaPredictor.baseline("test"))
    records, arrived = play(tracker, fixes, dict(STREET))
    assert [(r["stop_id"], r["reason"]) for r in passes(records)] == [("S2", "drive_past")]
    assert list(arrived) == ["S1", "S3", "S2", "S4"]
    assert tracker.served == set(STREET)
    assert tracker.passed == frozenset()


# -- out of order ------------------------------------------------------------------------


def test_a_round_served_out_of_order_passes_the_skipped_stop_and_reorders() -> None:
    # S1 is 800 m north of the street; the driver serves S2 on the street first, then
    # goes up to S1, then on to S3.
    stops = {"S1": (1000.0, 800.0), "S2": (1000.0, 0.0), "S3": (2500.0, 800.0)}
    fixes = path_fixes(
        [(0.0, 0.0, 0.0), (1000.0, 0.0, DWELL_S), (1000.0, 800.0, DWELL_S), (2500.0, 800.0, 60)]
    )
    tracker = EtaTracker(street(stops), EtaPredictor.baseline("test"))
    records, arrived = play(tracker, fixes, stops)
    assert list(arrived) == ["S2", "S1", "S3"]
    [passed] = passes(records)
    assert (passed["stop_id"], passed["reason"], passed["planned_index"]) == (
        "S1",
        "out_of_order",
        0,
    )
    assert datetime.fromisoformat(passed["time"]) == arrived["S2"]
    assert passed["closest_m"] == pytest.approx(800.0, abs=1.0)  # seen, never near
    # S1 is re-inserted before S3: going up to it and on to S3 costs the least.
    assert passed["stops_before"] == 0
    # The arrival at S2 republishes the stop the van now heads for: S1, not S3 (as
    # ``moved`` when its ETA moved beyond the threshold, which takes precedence).
    at_s2 = [r for r in records if r["time"] == passed["time"] and r["type"] == "eta"]
    assert "S1" in {r["stop_id"] for r in at_s2}
    assert not [r for r in at_s2 if r["stop_id"] == "S3" and r["trigger"] == "arrival"]


def test_a_halt_the_geofence_missed_never_puts_a_turn_back_into_the_later_etas() -> None:
    # A long street east: the van stands a minute at S2, but no arrival is confirmed
    # there (a halt the geofence missed, as on a real bus run); it then serves S3, 250 m
    # on (never 300 m from S2: no drive-past), S4 and S5. S2 is passed out of order at
    # S3 with closest_m ~0: the driver was there. Before, the deferral ended at the next
    # arrival, and from S4 on cheapest insertion turned the van back to S2 first (2 km
    # back and forth on every later ETA; the end of the street, S6, is farther from S2).
    xs = {"S1": 1000.0, "S2": 2000.0, "S3": 2250.0, "S4": 3000.0, "S5": 4000.0, "S6": 9000.0}
    stops = {s: (x, 0.0) for s, x in xs.items()}
    fixes = path_fixes([(0.0, 0.0, 0.0), *((x, 0.0, 60.0) for s, x in xs.items() if s != "S6")])
    served = {s: xy for s, xy in stops.items() if s != "S2"}
    tracker = EtaTracker(street(stops), EtaPredictor.baseline("test"))
    records, arrived = play(tracker, fixes, served)
    assert list(arrived) == ["S1", "S3", "S4", "S5"]
    [passed] = passes(records)
    assert (passed["stop_id"], passed["reason"]) == ("S2", "out_of_order")
    assert passed["closest_m"] == pytest.approx(0.0, abs=1.0)
    assert [tracker.plan.stop_ids[i] for i in tracker.order] == ["S6", "S2"]
    # Every ETA of S5 and S6 published after the pass counts the street ahead only: at
    # most the straight line ahead over the 2 m/s floor of the naive.
    for r in records:
        if r["type"] == "eta" and r["stop_id"] in ("S5", "S6") and r["time"] >= passed["time"]:
            issued = datetime.fromisoformat(r["time"])
            x = next(x for f, x, _ in fixes if f.time == issued)
            ahead_m = stops[r["stop_id"]][0] - x
            assert (datetime.fromisoformat(r["eta"]) - issued).total_seconds() <= ahead_m / 2.0


def test_a_stop_skipped_while_never_near_it_may_still_come_next() -> None:
    # The out-of-order case of test_a_round_served_out_of_order...: S1 was never
    # approached (800 m away), so after S2 it may be next; deferral is for stops the
    # driver was at or by.
    stops = {"S1": (1000.0, 800.0), "S2": (1000.0, 0.0), "S3": (2500.0, 800.0)}
    fixes = path_fixes([(0.0, 0.0, 0.0), (1000.0, 0.0, DWELL_S)])
    tracker = EtaTracker(street(stops), EtaPredictor.baseline("test"))
    play(tracker, fixes, {"S2": stops["S2"]})
    assert tracker.passed == {"S1"}
    assert [tracker.plan.stop_ids[i] for i in tracker.order] == ["S1", "S3"]


def test_expected_order_keeps_the_plan_and_inserts_passed_stops_where_cheapest() -> None:
    # A loop: out east along y = 0, up, and back west along y = 150, by S2 again.
    stops = {
        "S1": (1000.0, 0.0),
        "S2": (2000.0, 0.0),
        "S3": (3000.0, 0.0),
        "S4": (3000.0, 1000.0),
        "S5": (2000.0, 150.0),
        "S6": (500.0, 150.0),
    }
    plan = RoutePlan.from_manifest(street(stops))
    served = np.array([True, False, False, False, False, False])
    passed = np.zeros(6, dtype=np.bool_)
    assert expected_order(plan, served, passed, *here(plan, 2600.0, 0.0)).tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]
    passed[1] = True
    # S2 passed at x = 2600: the loop comes back by it, 150 m away, after S5.
    assert expected_order(plan, served, passed, *here(plan, 2600.0, 0.0)).tolist() == [
        2,
        3,
        4,
        1,
        5,
    ]
    # Just past it, turning back at once is the cheapest detour ...
    assert expected_order(plan, served, passed, *here(plan, 2050.0, 0.0)).tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]
    # ... unless the van drove past it (deferred): then not before the next stop.
    deferred = passed.copy()
    order = expected_order(plan, served, passed, *here(plan, 2050.0, 0.0), deferred=deferred)
    assert order.tolist() == [2, 3, 4, 1, 5]
    # ... and only where the route comes back by it: an insertion costing more than
    # max_detour_m (on the way back west, 157 m) is a turn back one stop later: the end.
    for detour_m, expected in ((600.0, [2, 3, 4, 1, 5]), (100.0, [2, 3, 4, 5, 1])):
        order = expected_order(
            plan, served, passed, *here(plan, 2050.0, 0.0), deferred=deferred, max_detour_m=detour_m
        )
        assert order.tolist() == expected
    # Nothing left but passed stops: their planned order, cheapest first.
    served[2:] = True
    assert expected_order(
        plan, served, passed, *here(plan, 0.0, 0.0), deferred=deferred
    ).tolist() == [1]


def here(plan: RoutePlan, x: float, y: float) -> tuple[float, float]:
    """(x, y) on the test's plane in ``plan``'s local frame (its origin is the first stop)."""
    return plan.frame.to_local(*latlon(x, y))


def test_features_follow_the_order_without_changing_their_columns() -> None:
    stops = {f"S{i}": (1000.0 * i, 0.0) for i in range(1, 5)}
    m = street(stops)
    plan = RoutePlan.from_manifest(m)
    served = np.array([True, False, False, False])
    history = SpeedHistory()
    now = T0 + timedelta(minutes=10)
    history.update(fix_at(now, 2500.0, speed_mps=10.0))
    order = np.array([2, 3, 1])  # S2 passed, to be served last
    position = plan.project(*_latlon(2500.0), now, served, next_stop=2)
    rows = eta_features(now, plan, position, served, history, order=order)
    remaining = dict(zip(rows.stop_ids, rows.column("remaining_m").tolist(), strict=True))
    before = dict(zip(rows.stop_ids, rows.column("stops_before").tolist(), strict=True))
    assert remaining["S3"] == pytest.approx(500.0, abs=1.0)
    assert remaining["S4"] == pytest.approx(1500.0, abs=1.0)
    assert remaining["S2"] == pytest.approx(3500.0, abs=1.0)  # S4 then back to S2
    assert before == {"S2": 2.0, "S3": 0.0, "S4": 1.0}
    # Planned order: S3 includes the 500 m back to S2 and S2's stop.
    planned = eta_features(now, plan, plan.project(*_latlon(2500.0), now, served), served, history)
    assert dict(zip(planned.stop_ids, planned.column("stops_before").tolist(), strict=True)) == {
        "S2": 0.0,
        "S3": 1.0,
        "S4": 2.0,
    }
    with pytest.raises(FeatureError, match="order"):
        eta_features(now, plan, position, served, history, order=[2, 3])
    with pytest.raises(FeatureError, match="next_stop"):
        plan.project(*_latlon(2500.0), now, served, next_stop=0)


def _latlon(x: float, y: float = 0.0) -> tuple[float, float]:
    return latlon(x, y)


# -- what is not a drive-past ----------------------------------------------------------


def test_a_van_that_stops_40_m_short_is_served_not_passed() -> None:
    # Through the pipeline: the geofence (radius 50 m) confirms the arrival, the van
    # leaves, and nothing is passed.
    m = street()
    van = VanPipeline(m, pods=PodChain("van-1", Ed25519PrivateKey.generate()), eta=_baseline())
    fixes = path_fixes(
        [
            (0.0, 0.0, 0.0),
            (960.0, 0.0, DWELL_S),  # 40 m short of S1
            (1960.0, 12.0, DWELL_S),  # 40 m short of S2
            (4000.0, 0.0, DWELL_S),
            (5000.0, 0.0, DWELL_S),
        ]
    )
    records = [json.loads(json_line(r)) for f, _, _ in fixes for r in van.on_fix(f)]
    arrivals = [r["stop_id"] for r in records if r["type"] == "arrival"]
    assert arrivals == ["S1", "S2", "S3", "S4"]
    assert passes(records) == []


def test_gnss_jitter_and_a_jump_while_waiting_near_a_stop_pass_nothing() -> None:
    # The van waits 30 m from S1 for three minutes with 15 m of noise and, once, a
    # 600 m multipath jump for 10 s, before the arrival is confirmed; then it drives on.
    rng = np.random.default_rng(7)
    tracker = EtaTracker(street(), EtaPredictor.baseline("test"))
    t = T0
    records: list[Record] = []
    for k in range(100):  # the approach
        records += [json.loads(json_line(r)) for r in tracker.on_fix(fix_at(t, 10.0 * k))]
        t += timedelta(seconds=1)
    for k in range(180):
        jump = 600.0 if 60 <= k < 70 else 0.0
        x, y = 970.0 + jump + rng.normal(0, 15), rng.normal(0, 15)
        arrived = ["S1"] if k == 179 else []
        fix = fix_at(t, x, y, speed_mps=0.0)
        records += [json.loads(json_line(r)) for r in tracker.on_fix(fix, arrived=arrived)]
        t += timedelta(seconds=1)
    assert passes(records) == []
    assert tracker.served == {"S1"}


def test_passed_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="passed_leave_m"):
        EtaConfig(passed_near_m=300.0, passed_leave_m=300.0)
    with pytest.raises(ConfigError, match="passed_watch_stops"):
        EtaConfig(passed_watch_stops=-1)
    with pytest.raises(ConfigError, match="passed_confirm_s"):
        EtaConfig(passed_confirm_s=float("nan"))


def _baseline() -> EtaPredictor:
    return EtaPredictor.baseline("test")


# -- a simulated day -------------------------------------------------------------------


@pytest.mark.slow
def test_a_simulated_day_served_in_order_passes_nothing() -> None:
    day = simulator_day(1001, 25)
    m = parse_manifest(day.manifest) if isinstance(day.manifest, dict) else day.manifest
    predictor = load_eta_predictor(None)
    van = VanPipeline(m, pods=PodChain("van-1", Ed25519PrivateKey.generate()), eta=predictor)
    records = []
    for fix in day.fixes:
        records += van.on_fix(fix)
    kinds = [r.type for r in records if hasattr(r, "type")]
    assert kinds.count("arrival") >= 20
    assert "stop_passed" not in kinds
    assert van.eta_tracker is not None
    assert van.eta_tracker.counts["stop_passed"] == 0


def test_a_restart_keeps_the_passed_stops_and_announces_none_again() -> None:
    """The van is killed after announcing S2 passed and restarted on its saved day:
    S2 stays passed, no second stop_passed (the arrival at S3 would otherwise pass it
    again as out of order), and no `first` ETA for the stops already published."""
    fixes = [f for f, _, _ in drive_past_day()]

    def van() -> VanPipeline:
        return VanPipeline(
            street(),
            pods=PodChain("van-1", Ed25519PrivateKey.generate()),
            telemetry=False,
            eta=EtaPredictor.baseline("test"),
        )

    first = van()
    before: list[Record] = []
    rest = list(fixes)
    while rest and not passes(before):  # up to the fix that announced S2
        before += [json.loads(json_line(r)) for r in first.on_fix(rest.pop(0))]
    assert [p["stop_id"] for p in passes(before)] == ["S2"]
    saved = first.day_state().encode()  # what the agent commits with those records

    def restarted(state: bytes) -> tuple[VanPipeline, list[Record]]:
        again = van()
        assert again.restore_day(DayState.decode(state))
        out = []
        for fix in rest:
            out += [json.loads(json_line(r)) for r in again.on_fix(fix)]
        return again, out

    again, after = restarted(saved)
    assert again.eta_tracker is not None
    assert again.eta_tracker.passed == {"S2"}
    assert passes(after) == []
    assert "S3" in {r["stop_id"] for r in after if r["type"] == "arrival"}
    assert not [r for r in after if r.get("trigger") == "first"]
    # A day saved before the tracker's memory was (no "eta" key) still restores, and
    # shows what was lost: S2 announced again at S3, every stop's ETA sent as first.
    old = json.loads(saved)
    del old["eta"]
    _, lost = restarted(json.dumps(old).encode())
    assert [(p["stop_id"], p["reason"]) for p in passes(lost)] == [("S2", "out_of_order")]
    assert [r for r in lost if r.get("trigger") == "first"]
