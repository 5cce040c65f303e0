"""The dwell (issue 15): while the van stands at a stop, the next stop's ETA stays where
it was when the van arrived, until the dwell runs beyond what is expected for the
stop's parcels; the parcels left to scan (the PODs, through the VanPipeline) say how
much longer. Played at 1 Hz on tests/vanday.py's plane with the baseline predictor,
whose naive ETA (distance / 5-minute mean speed) slides hard while the van stands."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.records import EtaUpdate
from firmware_agent.eta.dwell import expected_departure_s
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig, EtaTracker
from firmware_agent.pod.chain import PodChain
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanConfig, VanPipeline
from tests.vanday import T0, fix_at, manifest, stop

PARCELS = ["106141412345678908", "106141412345678915", "106141412345678922"]
ARRIVE_S = 100  # the van reaches S1 (x = 1000 m) after 100 s at 10 m/s
EXPECTED_DWELL_S = 83.0 + 15.0 * len(PARCELS)  # the defaults: 128 s


def street() -> list[dict[str, object]]:
    return [stop("S1", 1000.0, parcels=PARCELS), stop("S2", 3000.0)]


def day(dwell_s: int) -> list[Fix]:
    """Drive 1000 m east at 10 m/s, stand ``dwell_s`` at S1, drive on to S2."""
    fixes = [fix_at(T0 + timedelta(seconds=t), 10.0 * t, speed_mps=10.0) for t in range(ARRIVE_S)]
    for t in range(ARRIVE_S, ARRIVE_S + dwell_s):
        fixes.append(fix_at(T0 + timedelta(seconds=t), 1000.0, speed_mps=0.0))
    for k in range(200):
        t = ARRIVE_S + dwell_s + k
        fixes.append(fix_at(T0 + timedelta(seconds=t), 1000.0 + 10.0 * k, speed_mps=10.0))
    return fixes


def s2_during_dwell(
    config: EtaConfig, dwell_s: int, scans_at_s: tuple[int, ...] = ()
) -> tuple[dict[int, float], list[EtaUpdate]]:
    """The van's predicted arrival at S2 (POSIX s) at each prediction of the dwell at
    S1, by seconds since the arrival, and the eta records of S2 published meanwhile.
    The van runs through the whole VanPipeline (geofence arrival and departure, and
    a POD per parcel scanned at ``scans_at_s`` seconds into the dwell)."""
    van = VanPipeline(
        manifest(street()),
        pods=PodChain("van-1", Ed25519PrivateKey.generate()),
        config=VanConfig(eta=config),
        telemetry=False,
        eta=EtaPredictor.baseline("test"),
    )
    tracker = van.eta_tracker
    assert tracker is not None
    scans = [
        Scan(T0 + timedelta(seconds=ARRIVE_S + s, milliseconds=500), "]C100" + p, "serial")
        for s, p in zip(scans_at_s, PARCELS, strict=False)
    ]
    arrived: datetime | None = None
    predicted: dict[int, float] = {}
    published: list[EtaUpdate] = []
    for fix in day(dwell_s):
        assert fix.time is not None
        while scans and scans[0].time <= fix.time:
            van.on_scan(scans.pop(0))
        before = tracker.counts["predictions"]
        records = van.on_fix(fix)
        if arrived is None and tracker.dwell(fix.time) != (0.0, 0.0):
            arrived = fix.time
        if arrived is None or tracker.dwell(fix.time) == (0.0, 0.0):
            continue  # driving
        into_s = round((fix.time - arrived).total_seconds())
        published += [r for r in records if isinstance(r, EtaUpdate) and r.stop_id == "S2"]
        p = tracker.last_prediction
        if tracker.counts["predictions"] != before and p is not None:
            predicted[into_s] = fix.time.timestamp() + float(p.eta_s[p.stop_ids.index("S2")])
    assert arrived is not None
    assert predicted
    return predicted, [r for r in published if r.trigger != "arrival"]


def test_the_next_stops_eta_does_not_slide_during_an_expected_dwell() -> None:
    held, held_records = s2_during_dwell(EtaConfig(), dwell_s=120)
    start = held[0]
    # Nothing scanned: held until the 3 parcels left could no longer be scanned within
    # the expected dwell (128 - 45 = 83 s).
    within = [s for s in held if s <= 80]
    assert len(within) >= 8  # every 10 s
    for s in within:
        assert held[s] == pytest.approx(start, abs=1.0), s
    assert held_records == []  # no `moved` while the van stands
    # As the tracker was: the naive ETA slid with every minute at the stop, and moved.
    slid, slid_records = s2_during_dwell(EtaConfig(dwell_hold_stops=0), dwell_s=120)
    assert slid[0] == pytest.approx(start, abs=1.0)  # the same prediction at the arrival
    last = max(s for s in slid if s < 120)
    assert slid[last] - slid[0] > 60.0  # more than half a second per second of dwell
    assert slid_records != []


def test_a_dwell_beyond_the_expected_moves_the_next_stop_second_for_second() -> None:
    held, _ = s2_during_dwell(EtaConfig(), dwell_s=400)
    start = held[0]
    # Nothing scanned: the van cannot leave before 3 parcels x 15 s from now, so the
    # departure expected is max(arrival + 128 s, now + 45 s): it moves from 83 s on.
    for s in (150, 250, 350):
        assert held[s] - start == pytest.approx(s + 45.0 - EXPECTED_DWELL_S, abs=1.5), s


def test_the_parcels_scanned_tell_when_the_van_leaves() -> None:
    # The three parcels scanned 20, 25 and 30 s into a 400 s dwell: from the last one
    # on, nothing is left to scan, and only the time beyond 128 s moves the ETA.
    held, _ = s2_during_dwell(EtaConfig(), dwell_s=400, scans_at_s=(20, 25, 30))
    start = held[0]
    for s in (40, 100, 120):
        assert held[s] == pytest.approx(start, abs=1.0), s
    for s in (200, 300):
        assert held[s] - start == pytest.approx(s - EXPECTED_DWELL_S, abs=1.5), s


def test_the_parcels_left_count_each_parcel_of_the_stop_once() -> None:
    tracker = EtaTracker(manifest(street()), EtaPredictor.baseline("test"))
    assert tracker.parcels_left() == 0.0  # driving
    tracker.on_fix(fix_at(T0, 1000.0), arrived=["S1"])
    assert tracker.dwell(T0 + timedelta(seconds=5)) == (5.0, 3.0)  # the model's features
    tracker.on_parcel("S1", PARCELS[0])
    tracker.on_parcel("S1", PARCELS[0])  # a failed attempt, then delivered: one parcel
    tracker.on_parcel("S2", "x")  # another stop's: not this one's
    assert tracker.parcels_left() == 2.0
    tracker.on_departure("S1", T0 + timedelta(seconds=60))
    assert tracker.parcels_left() == 0.0


def test_expected_departure() -> None:
    kw = {"parcels": 2.0, "base_s": 80.0, "per_parcel_s": 10.0}
    assert expected_departure_s(1000.0, 1010.0, parcels_left=2.0, **kw) == 1100.0
    assert expected_departure_s(1000.0, 1200.0, parcels_left=2.0, **kw) == 1220.0
    assert expected_departure_s(1000.0, 1200.0, parcels_left=0.0, **kw) == 1200.0
    with pytest.raises(ValueError, match="finite"):
        expected_departure_s(math.nan, 1200.0, parcels_left=0.0, **kw)
