"""The van pipeline: fixes and scans in, stop events, signed PODs and reports out."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.jws import verify_compact
from firmware_agent.contract.pod import GENESIS_PREV, pod_digest
from firmware_agent.feedback import Signal
from firmware_agent.pod.chain import PodChain
from firmware_agent.pod.verify import verify_chain
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanPipeline
from tests.vanday import T0, JsonVan, drive, fix_at, manifest, stop

SSCC_1 = "106141412345678908"  # GS1's own example SSCC: check digit 8
LABEL_1 = "]C100" + SSCC_1
SSCC_2 = "340123450000000017"


class Recorder:
    def __init__(self) -> None:
        self.signals: list[Signal] = []

    def signal(self, s: Signal) -> None:
        self.signals.append(s)


def day() -> tuple[JsonVan, Recorder, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    m = manifest(
        [
            stop("S1", 0.0, parcels=[SSCC_1, "JD0146000062812"]),
            stop("S2", 1000.0, parcels=[SSCC_2]),
        ]
    )
    recorder = Recorder()
    van = VanPipeline(m, pods=PodChain("van-1", key), feedback=recorder, telemetry=False)
    return JsonVan(van), recorder, key


def feed(van: JsonVan, fixes: list[Fix]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in fixes:
        out += van.on_fix(f)
    return out


def scan(t: datetime, raw: str, source: str = "serial") -> Scan:
    return Scan(time=t, raw=raw, source=source)


# Approach S1 at x=0 from the west and stand there.
AT_S1 = drive([(36, 10.0), (4, 1.0), (120, 0.0)], x0=-364)
T_PARKED = T0 + timedelta(seconds=70)  # confirmed by dwell by then


def test_scan_at_the_stop_makes_a_signed_chained_pod() -> None:
    van, rec, key = day()
    messages = feed(van, AT_S1[:70])
    assert [m["type"] for m in messages] == ["arrival"]
    # The first waits for a reason card until the next parcel is scanned, the second
    # until the input ends.
    out = van.on_scan(scan(T_PARKED, LABEL_1))
    assert out == []
    out += van.on_scan(scan(T_PARKED + timedelta(seconds=5), "]C0JD0146000062812"))
    assert [m["type"] for m in out] == ["pod"]
    out += van.flush()
    assert [m["type"] for m in out] == ["pod", "pod"]
    assert [m["outcome"] for m in out] == ["delivered", "delivered"]
    assert rec.signals == [Signal.RECORDED, Signal.RECORDED]
    first, second = (verify_compact(m["jws"], key.public_key()) for m in out)
    assert first["parcel"] == SSCC_1
    assert first["stop_id"] == "S1"
    assert first["verdict"] == "inside"
    assert first["distance_m"] == 0
    assert first["device_id"] == "van-1"
    assert first["route_id"] == "R1"
    assert first["seq"] == 1
    assert first["prev"] == GENESIS_PREV
    assert second["seq"] == 2
    assert second["prev"] == pod_digest(out[0]["jws"])
    assert first["raw"] == LABEL_1
    assert first["source"] == "serial"
    assert first["outcome"] == "delivered"
    # The fix used: the last good one, with its time, position and accuracy.
    assert first["time"] == "2026-11-21T09:01:09.000Z"
    assert first["lat"] == pytest.approx(48.0, abs=1e-6)
    assert first["hacc_m"] == 2.5
    assert verify_chain([m["jws"] for m in out], key.public_key()).valid


def test_duplicate_within_the_window_counts_once_and_has_its_own_signal() -> None:
    van, rec, _ = day()
    feed(van, AT_S1[:70])
    out = []
    for dt in (0, 1, 2, 9):
        out += van.on_scan(scan(T_PARKED + timedelta(seconds=dt), LABEL_1))
    # The POD waits for a reason card 8 s: the scan at 9 s ends its wait, then counts
    # as a duplicate (10 s window).
    assert [m["type"] for m in out] == ["pod"]
    assert rec.signals == [Signal.RECORDED] + [Signal.DUPLICATE] * 3
    assert van.counts["duplicates"] == 3
    # Long after the window, the same parcel again: reported, no second POD.
    later = van.on_scan(scan(T_PARKED + timedelta(seconds=60), LABEL_1))
    assert [(m["type"], m["reason"]) for m in later] == [("scan_rejected", "already_delivered")]
    assert rec.signals[-1] == Signal.DUPLICATE


def test_parcel_of_another_stop_is_wrong_stop_and_no_pod() -> None:
    van, rec, _ = day()
    feed(van, AT_S1[:70])
    out = van.on_scan(scan(T_PARKED, "]C100" + SSCC_2))
    assert out == [
        {
            "type": "scan_rejected",
            "time": "2026-11-21T09:01:10.000Z",
            "reason": "wrong_stop",
            "raw": "]C100" + SSCC_2,
            "source": "serial",
            "parcel": SSCC_2,
            "stop_id": "S2",
            "at_stop_id": "S1",
        }
    ]
    assert rec.signals == [Signal.WRONG_STOP]
    assert van.counts["pods"] == 0


def test_garbage_and_unknown_codes_are_reported_not_dropped() -> None:
    van, rec, _ = day()
    feed(van, AT_S1[:70])
    bad_check = "]C100106141412345678909"
    out = van.on_scan(scan(T_PARKED, bad_check))
    out += van.on_scan(scan(T_PARKED, "\x00\x01\x02\x1b[2J"))
    out += van.on_scan(scan(T_PARKED, "]C0NOT-ON-TODAYS-LIST"))
    assert [(m["type"], m["reason"]) for m in out] == [
        ("scan_rejected", "unreadable"),
        ("scan_rejected", "unreadable"),
        ("scan_rejected", "not_on_manifest"),
    ]
    assert out[0]["error"] == "bad_check_digit"
    assert out[1]["raw"] == "\\x00\\x01\\x02\\x1b[2J"  # escaped for the report
    assert out[2]["parcel"] == "NOT-ON-TODAYS-LIST"
    assert rec.signals == [Signal.UNREADABLE, Signal.UNREADABLE, Signal.UNKNOWN_CODE]
    assert van.counts["pods"] == 0
    assert van.counts["rejected"] == 3


def test_no_fix_still_records_the_pod_with_verdict_no_fix() -> None:
    van, rec, key = day()
    # The last good fix is 5 minutes old: no position for the POD.
    feed(van, AT_S1[:70])
    out = van.on_scan(scan(T0 + timedelta(minutes=6), LABEL_1)) + van.flush()
    assert [m["type"] for m in out] == ["pod"]
    claims = verify_compact(out[0]["jws"], key.public_key())
    assert claims["verdict"] == "no_fix"
    assert claims["lat"] is None
    assert claims["time"] is None
    assert claims["distance_m"] is None
    assert rec.signals == [Signal.NO_FIX]


def test_scan_away_from_every_stop_records_outside_with_distance() -> None:
    van, rec, key = day()
    # Parked 300 m west of S1, never arrived anywhere.
    fixes = [fix_at(T0 + timedelta(seconds=i), -300.0) for i in range(30)]
    feed(van, fixes)
    out = van.on_scan(scan(T0 + timedelta(seconds=29), LABEL_1)) + van.flush()
    claims = verify_compact(out[0]["jws"], key.public_key())
    assert claims["verdict"] == "outside"
    assert claims["distance_m"] == pytest.approx(300.0 - 35.0, abs=0.2)
    assert rec.signals == [Signal.RECORDED]


def test_scan_confirms_the_arrival_before_the_dwell_does() -> None:
    van, _, _ = day()
    # 5 s after stopping: the dwell has not confirmed S1 yet; the scan does.
    out = feed(van, AT_S1[:45])
    assert out == []
    out = van.on_scan(scan(T0 + timedelta(seconds=45), LABEL_1)) + van.flush()
    assert [m["type"] for m in out] == ["arrival", "pod"]
    assert out[0]["confirmed_by"] == "scan"
    assert out[0]["stop_id"] == "S1"
    assert out[0]["time"] == "2026-11-21T09:00:33.000Z"  # first fix inside: x=-34


@settings(max_examples=300)
@given(raw=st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_garbage_scans_never_crash_the_pipeline(raw: str) -> None:
    van, rec, _ = day()
    feed(van, AT_S1[:70])
    out = van.on_scan(scan(T_PARKED, raw))
    assert len(rec.signals) == 1
    assert all(m["type"] in {"scan_rejected", "pod", "arrival"} for m in out)
