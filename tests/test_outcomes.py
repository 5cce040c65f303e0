"""Delivery outcomes: reason cards paired with parcel scans, signed into the POD chain.

The pairing rule (firmware_agent/pod/pairing.py, docs/outcomes.md) is tested on the
pipeline a van runs, with the scans a driver makes: both orders, the timeout, a reason
alone, two reasons, a reason then a wrong-stop parcel. Then the claims and the chain,
old PODs without an outcome, and the feedback each result gives.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.jws import sign_compact, verify_compact
from firmware_agent.contract.manifest import ManifestError, parse_manifest
from firmware_agent.contract.outcomes import (
    CARD_OUTCOMES,
    OUTCOMES,
    SUCCESSFUL_OUTCOMES,
    ReasonCardError,
    card_code,
    card_outcome,
    is_delivery,
)
from firmware_agent.contract.parcels import parse_scan
from firmware_agent.contract.pod import GENESIS_PREV, PodClaims, pod_digest
from firmware_agent.contract.records import PodRecord, Record
from firmware_agent.day_state import DayState
from firmware_agent.feedback import (
    PATTERNS,
    DriverFeedback,
    FeedbackPins,
    ScanResult,
    Signal,
    signal_for,
)
from firmware_agent.pod.chain import PodChain
from firmware_agent.pod.pairing import OutcomePairing
from firmware_agent.pod.verify import verify_chain
from firmware_agent.replay import replay
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanConfig, VanPipeline
from simulator.manifest import build_manifest
from simulator.nmea_writer import epoch_bytes
from simulator.scans import build_scan_log, parse_scan_time
from simulator.scenario import ScenarioConfig, generate
from tests.vanday import T0, JsonVan, drive, manifest, stop

SSCC_1 = "106141412345678908"
SSCC_2 = "340123450000000017"
PLAIN_3 = "JD0146000062812"
NOT_HOME = "]C0" + card_code("not_home")
NEIGHBOUR = card_code("neighbour")
REFUSED = card_code("refused")
AT_S1 = drive([(36, 10.0), (4, 1.0), (120, 0.0)], x0=-364)
T = T0 + timedelta(seconds=70)  # parked at S1, arrival confirmed by dwell


class Recorder:
    def __init__(self) -> None:
        self.signals: list[Signal] = []

    def signal(self, s: Signal) -> None:
        self.signals.append(s)


def day(
    parcel_wait_s: float = 8.0, reason_wait_s: float = 8.0
) -> tuple[JsonVan, Recorder, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    m = manifest(
        [
            stop("S1", 0.0, parcels=[SSCC_1, PLAIN_3]),
            stop("S2", 1000.0, parcels=[SSCC_2]),
        ]
    )
    recorder = Recorder()
    van = VanPipeline(
        m,
        pods=PodChain("van-1", key),
        config=VanConfig(parcel_wait_s=parcel_wait_s, reason_wait_s=reason_wait_s),
        feedback=recorder,
        telemetry=False,
    )
    jvan = JsonVan(van)
    for f in AT_S1[:70]:
        jvan.on_fix(f)
    return jvan, recorder, key


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def scan(seconds: float, raw: str) -> Scan:
    return Scan(time=at(seconds), raw=raw, source="serial")


def pods(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "pod"]


def claims(message: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return verify_compact(message["jws"], key.public_key())


# --- Reason cards and parcel codes ----------------------------------------------------------


def test_every_card_code_reads_back_as_its_outcome_and_never_as_a_parcel() -> None:
    assert set(CARD_OUTCOMES) == set(OUTCOMES) - {"delivered"}
    for outcome in CARD_OUTCOMES:
        for raw in (card_code(outcome), "]C0" + card_code(outcome), card_code(outcome) + "\r\n"):
            parsed = parse_scan(raw)
            assert card_outcome(parsed.code) == outcome
    # Parcel codes are not cards: GS1, plain, even one that mentions a reason.
    for raw in (SSCC_1, "]C100" + SSCC_1, PLAIN_3, "NOT_HOME", "REASON:NOT_HOME"):
        assert card_outcome(parse_scan(raw).code) is None
    with pytest.raises(ReasonCardError, match="no known outcome"):
        card_outcome("FLEET-REASON:ON_HOLIDAY")
    with pytest.raises(ValueError, match="no reason card"):
        card_code("delivered")


def test_safe_place_and_neighbour_are_deliveries_the_others_failed_attempts() -> None:
    assert {"delivered", "safe_place", "neighbour"} == SUCCESSFUL_OUTCOMES
    assert [o for o in OUTCOMES if not is_delivery(o)] == [
        "not_home",
        "refused",
        "address_not_found",
        "damaged",
        "access_problem",
    ]


def test_a_manifest_listing_a_reason_card_as_a_parcel_is_refused() -> None:
    with pytest.raises(ManifestError, match="reason card"):
        manifest([stop("S1", 0.0, parcels=[SSCC_1, " fleet-reason:not_home "])])


# --- Pairing on the pipeline ---------------------------------------------------------------


def test_parcel_then_reason_within_the_window_is_one_failed_attempt() -> None:
    van, rec, key = day()
    assert van.on_scan(scan(0, "]C100" + SSCC_1)) == []  # waits for a reason
    out = van.on_scan(scan(5, NOT_HOME))
    assert [m["type"] for m in out] == ["pod"]
    assert out[0]["outcome"] == "not_home"
    signed = claims(out[0], key)
    assert signed["outcome"] == "not_home"
    assert signed["parcel"] == SSCC_1
    assert signed["scan_time"] == "2026-11-21T09:01:10.000Z"  # the parcel's scan
    assert rec.signals == [Signal.RECORDED, Signal.FAILED_ATTEMPT]
    # Signed once: nothing more when the window ends or the input does.
    assert pods(van.on_tick(at(60)) + van.flush()) == []
    assert van.counts["pods"] == 1
    assert van.counts["failed_attempts"] == 1


def test_reason_then_parcel_within_the_window_is_signed_at_once() -> None:
    van, rec, key = day()
    assert van.on_scan(scan(0, REFUSED)) == []
    out = van.on_scan(scan(6, "]C100" + SSCC_1))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "refused")]
    assert claims(out[0], key)["outcome"] == "refused"
    assert rec.signals == [Signal.REASON_NOTED, Signal.FAILED_ATTEMPT]


def test_a_parcel_alone_is_signed_delivered_when_its_window_ends() -> None:
    van, rec, key = day()
    assert van.on_scan(scan(0, "]C100" + SSCC_1)) == []
    assert van.on_tick(at(7.9)) == []
    out = van.on_tick(at(8.0))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "delivered")]
    # A reason after the window is too late for it: it waits for the next parcel.
    assert van.on_scan(scan(9, NOT_HOME)) == []
    assert rec.signals == [Signal.RECORDED, Signal.REASON_NOTED]
    assert claims(out[0], key)["outcome"] == "delivered"


def test_a_fix_ends_the_window_as_a_tick_does() -> None:
    van, _, _ = day()
    van.on_scan(Scan(time=AT_S1[80].time or T0, raw=SSCC_1, source="serial"))
    out = [m for f in AT_S1[81:100] for m in van.on_fix(f)]
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "delivered")]


def test_the_next_parcel_signs_the_waiting_one_first() -> None:
    van, _, key = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    out = van.on_scan(scan(2, PLAIN_3))
    assert [(m["parcel"], m["outcome"]) for m in out] == [(SSCC_1, "delivered")]
    out += van.on_scan(scan(4, NOT_HOME))  # amends the second parcel, not the first
    assert [(m["parcel"], m["outcome"]) for m in out] == [
        (SSCC_1, "delivered"),
        (PLAIN_3, "not_home"),
    ]
    assert verify_chain([m["jws"] for m in out], key.public_key()).valid


def test_a_reason_alone_expires_unpaired_and_signs_nothing() -> None:
    van, rec, _ = day()
    assert van.on_scan(scan(0, NOT_HOME)) == []
    assert van.on_tick(at(7)) == []
    out = van.on_tick(at(8))
    assert out == [
        {
            "type": "scan_rejected",
            "time": "2026-11-21T09:01:10.000Z",
            "reason": "reason_unpaired",
            "raw": NOT_HOME,
            "source": "serial",
            "error": "no parcel within 8 s",
            "outcome": "not_home",
        }
    ]
    # The parcel scanned after it is an ordinary delivery.
    out = van.on_scan(scan(9, "]C100" + SSCC_1)) + van.flush()
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "delivered")]
    assert rec.signals == [Signal.REASON_NOTED, Signal.RECORDED]


def test_a_reason_alone_at_the_end_of_the_input_is_reported() -> None:
    van, _, _ = day()
    van.on_scan(scan(0, NOT_HOME))
    out = van.flush()
    assert [(m["reason"], m["error"]) for m in out] == [("reason_unpaired", "the input ended")]


def test_two_reasons_before_a_parcel_the_second_wins_and_the_first_is_reported() -> None:
    van, rec, _ = day()
    van.on_scan(scan(0, NOT_HOME))
    out = van.on_scan(scan(3, REFUSED))
    assert [(m["reason"], m["outcome"], m["error"]) for m in out] == [
        ("reason_unpaired", "not_home", "replaced by refused")
    ]
    out = van.on_scan(scan(5, "]C100" + SSCC_1))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "refused")]
    assert rec.signals == [Signal.REASON_NOTED, Signal.REASON_NOTED, Signal.FAILED_ATTEMPT]


def test_two_reasons_after_a_parcel_the_first_amends_it_the_second_waits() -> None:
    van, _, _ = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    out = van.on_scan(scan(2, NOT_HOME))
    out += van.on_scan(scan(4, NEIGHBOUR))
    assert [(m["parcel"], m["outcome"]) for m in pods(out)] == [(SSCC_1, "not_home")]
    out = van.on_scan(scan(6, PLAIN_3))
    assert [(m["parcel"], m["outcome"]) for m in out] == [(PLAIN_3, "neighbour")]


def test_the_same_card_read_twice_at_once_is_a_duplicate() -> None:
    van, rec, _ = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    van.on_scan(scan(2, NOT_HOME))
    assert van.on_scan(scan(2.5, NOT_HOME)) == []  # the scanner's double read
    out = van.on_scan(scan(4, PLAIN_3)) + van.flush()
    assert [(m["parcel"], m["outcome"]) for m in out] == [(PLAIN_3, "delivered")]
    assert rec.signals[2] == Signal.DUPLICATE


def test_a_reason_then_a_wrong_stop_parcel_stays_armed_for_the_right_one() -> None:
    van, rec, _ = day()
    van.on_scan(scan(0, NOT_HOME))
    out = van.on_scan(scan(2, "]C100" + SSCC_2))  # a parcel of S2: wrong stop
    assert [(m["type"], m["reason"]) for m in out] == [("scan_rejected", "wrong_stop")]
    out = van.on_scan(scan(4, "]C100" + SSCC_1))
    assert [(m["type"], m["parcel"], m["outcome"]) for m in out] == [("pod", SSCC_1, "not_home")]
    assert rec.signals == [Signal.REASON_NOTED, Signal.WRONG_STOP, Signal.FAILED_ATTEMPT]


def test_a_failed_attempt_leaves_the_parcel_deliverable_a_later_delivery_is_a_new_pod() -> None:
    van, _, key = day()
    out = van.on_scan(scan(0, NOT_HOME)) + van.on_scan(scan(1, "]C100" + SSCC_1))
    # An hour later the driver comes back: the same parcel, delivered.
    out += van.on_scan(scan(3600, "]C100" + SSCC_1)) + van.flush()
    assert [(m["parcel"], m["outcome"], m["seq"]) for m in pods(out)] == [
        (SSCC_1, "not_home", 1),
        (SSCC_1, "delivered", 2),
    ]
    tokens = [m["jws"] for m in pods(out)]
    assert claims(pods(out)[1], key)["prev"] == pod_digest(tokens[0])
    assert verify_chain(tokens, key.public_key()).valid
    # Now delivered: a third scan is reported, not signed.
    later = van.on_scan(scan(7200, "]C100" + SSCC_1))
    assert [(m["reason"], m["pod_seq"]) for m in later] == [("already_delivered", 2)]


def test_safe_place_delivers_the_parcel() -> None:
    van, rec, _ = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    out = van.on_scan(scan(1, card_code("safe_place")))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "safe_place")]
    assert rec.signals == [Signal.RECORDED, Signal.RECORDED]
    later = van.on_scan(scan(600, "]C100" + SSCC_1))
    assert [m["reason"] for m in later] == ["already_delivered"]
    assert van.counts["failed_attempts"] == 0


def test_a_foreign_reason_card_is_unreadable_and_signs_nothing() -> None:
    van, rec, _ = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    out = van.on_scan(scan(1, "FLEET-REASON:ON_HOLIDAY"))
    assert [(m["reason"], m["error"]) for m in out] == [("unreadable", "unknown_reason_card")]
    assert rec.signals == [Signal.RECORDED, Signal.UNREADABLE]
    assert [m["outcome"] for m in van.flush()] == ["delivered"]


def test_the_waiting_parcel_scanned_again_is_a_duplicate_even_past_the_dedup_window() -> None:
    van, rec, _ = day(parcel_wait_s=30.0)
    van.on_scan(scan(0, "]C100" + SSCC_1))
    assert van.on_scan(scan(12, "]C100" + SSCC_1)) == []  # dedup is 10 s, the wait 30 s
    out = van.on_scan(scan(14, NOT_HOME)) + van.flush()
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "not_home")]
    assert rec.signals == [Signal.RECORDED, Signal.DUPLICATE, Signal.FAILED_ATTEMPT]


def test_window_zero_signs_every_parcel_at_its_scan() -> None:
    van, _, _ = day(parcel_wait_s=0.0)
    out = van.on_scan(scan(0, "]C100" + SSCC_1))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "delivered")]
    out = van.on_scan(scan(1, NOT_HOME)) + van.on_scan(scan(2, PLAIN_3))
    assert [(m["type"], m["outcome"]) for m in out] == [("pod", "not_home")]


def test_pairing_rejects_windows_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match="parcel_wait_s"):
        OutcomePairing(parcel_wait_s=-1.0)
    with pytest.raises(ValueError, match="reason_wait_s"):
        OutcomePairing(reason_wait_s=0.0)


# --- Claims and the chain ------------------------------------------------------------------


def test_old_pods_without_an_outcome_stay_valid_and_read_as_delivered() -> None:
    key = Ed25519PrivateKey.generate()
    chain = PodChain("van-1", key)
    van = VanPipeline(
        manifest([stop("S1", 0.0, parcels=[SSCC_1])]),
        pods=chain,
        config=VanConfig(parcel_wait_s=0),
        telemetry=False,
    )
    record = van.on_scan(scan(0, SSCC_1))[0]
    assert isinstance(record, PodRecord)
    payload = verify_compact(record.jws, key.public_key())
    # The same POD as a van before outcomes signed it: no outcome claim.
    del payload["outcome"]
    old = sign_compact(payload, key, typ="pod+jwt", kid=chain.kid)
    parsed = PodClaims.from_json(verify_compact(old, key.public_key()))
    assert parsed.outcome == "delivered"
    assert verify_chain([old], key.public_key()).valid
    wire = record.to_json()
    del wire["outcome"]
    assert PodRecord.from_json(wire).outcome == "delivered"
    # A present outcome must be one of the outcomes, in claims and records alike.
    with pytest.raises(CodecError, match="outcome"):
        PodClaims.from_json({**payload, "outcome": "lost"})
    with pytest.raises(CodecError, match="outcome"):
        PodRecord.from_json({**record.to_json(), "outcome": None})


def test_the_outcome_is_inside_the_signature() -> None:
    van, _, key = day()
    out = van.on_scan(scan(0, NOT_HOME)) + van.on_scan(scan(1, SSCC_1))
    first = claims(out[0], key)
    assert first["seq"] == 1
    assert first["prev"] == GENESIS_PREV
    # Editing the outcome in the payload breaks the signature.
    head, _, sig = out[0]["jws"].split(".")
    forged = sign_compact({**first, "outcome": "delivered"}, key, kid="k")
    tampered = f"{head}.{forged.split('.')[1]}.{sig}"
    assert not verify_chain([tampered], key.public_key()).valid


# --- Feedback --------------------------------------------------------------------------------


def test_every_result_has_its_signal_and_every_signal_a_pattern() -> None:
    assert {r: signal_for(r) for r in ScanResult} == {
        ScanResult.DELIVERED: Signal.RECORDED,
        ScanResult.DELIVERED_NO_FIX: Signal.NO_FIX,
        ScanResult.FAILED_ATTEMPT: Signal.FAILED_ATTEMPT,
        ScanResult.REASON_NOTED: Signal.REASON_NOTED,
        ScanResult.DUPLICATE: Signal.DUPLICATE,
        ScanResult.ALREADY_DELIVERED: Signal.DUPLICATE,
        ScanResult.WRONG_STOP: Signal.WRONG_STOP,
        ScanResult.UNKNOWN_PARCEL: Signal.UNKNOWN_CODE,
        ScanResult.UNREADABLE: Signal.UNREADABLE,
    }
    assert set(PATTERNS) == set(Signal)
    # Each result the docs' table names is told apart from the others.
    named = [
        ScanResult.DELIVERED,
        ScanResult.FAILED_ATTEMPT,
        ScanResult.WRONG_STOP,
        ScanResult.UNKNOWN_PARCEL,
        ScanResult.UNREADABLE,
        ScanResult.DUPLICATE,
    ]
    assert len({signal_for(r) for r in named}) == len(named)


def test_buzzer_muted_keeps_the_leds() -> None:
    factory = MockFactory()
    try:
        with DriverFeedback(FeedbackPins(), pin_factory=factory, buzzer_muted=True) as fb:
            fb.signal(Signal.FAILED_ATTEMPT)
            assert fb.wait_idle(timeout_s=3.0)
        green, red, buzzer = factory.pin(17), factory.pin(27), factory.pin(22)
        assert [s.state for s in green.states] == [False, True, False]
        assert [s.state for s in red.states] == [False, True, False]
        assert [s.state for s in buzzer.states] == [False]  # never sounded
        green.assert_states_and_times([(0.0, False), (0.0, True), (0.6, False)])
    finally:
        factory.close()


def test_failed_attempt_pattern_is_amber_with_two_beeps() -> None:
    factory = MockFactory()
    try:
        with DriverFeedback(FeedbackPins(), pin_factory=factory) as fb:
            fb.signal(Signal.FAILED_ATTEMPT)
            assert fb.wait_idle(timeout_s=3.0)
        assert [s.state for s in factory.pin(22).states] == [False, True, False, True, False]
    finally:
        factory.close()


# --- The simulator's day ---------------------------------------------------------------------


def test_a_simulated_day_signs_each_attempt_with_the_outcome_the_driver_gave() -> None:
    """The simulator's driver scans reason cards both ways round; replayed through the
    real decoder and pipeline, every parcel's POD has the outcome of its truth."""
    config = ScenarioConfig(seed=1, n_stops=10, rate_hz=1)
    scenario = generate(config)
    doc = build_manifest(scenario, seed=1)
    nmea = b"".join(epoch_bytes(e, config.talker) for e in scenario.epochs())
    log = build_scan_log(scenario, doc, seed=1, outcome_rate=0.6, duplicate_rate=0.3)
    truth = {
        line["truth"]["parcel"]: line["truth"]["outcome"]
        for line in log
        if line["truth"]["kind"] == "ok"
    }
    cards = [line for line in log if line["truth"]["kind"] == "reason"]
    assert len(cards) >= 4
    assert {c["truth"]["outcome"] for c in cards} & {"neighbour", "safe_place"}
    assert {c["truth"]["outcome"] for c in cards} - {"neighbour", "safe_place"}
    kinds = [(line["truth"]["kind"], line["truth"]["parcel"]) for line in log]
    assert any(
        a[0] == "reason" and b == ("ok", a[1]) for a, b in itertools.pairwise(kinds)
    )  # a card scanned before its parcel, too
    scans = [Scan(time=parse_scan_time(s["time"]), raw=s["raw"], source=s["source"]) for s in log]
    key = Ed25519PrivateKey.generate()
    van = VanPipeline(parse_manifest(doc), pods=PodChain(doc["device_id"], key))
    records: list[Record] = []
    replay(io.BytesIO(nmea), scans, van, records.append)
    signed = [r for r in records if isinstance(r, PodRecord)]
    assert {r.parcel: r.outcome for r in signed} == truth
    assert len(signed) == len(truth)  # one attempt each: nothing signed twice
    assert not [r for r in records if getattr(r, "reason", None) == "reason_unpaired"]
    assert van.counts["failed_attempts"] == sum(not is_delivery(o) for o in truth.values())
    assert verify_chain([r.jws for r in signed], key.public_key()).valid


# --- What waits survives a restart (the van's day) ------------------------------------------


def restarted(old: JsonVan, key: Ed25519PrivateKey) -> JsonVan:
    """A new pipeline on the same manifest and chain, given the day ``old`` saved, as
    the agent builds one after a crash (its outbox kept the day)."""
    saved = DayState.decode(old.van.day_state().encode())
    van = VanPipeline(
        old.van.manifest,
        pods=PodChain("van-1", key, old.van.pods.state),
        config=VanConfig(parcel_wait_s=8.0, reason_wait_s=8.0),
        telemetry=False,
    )
    assert van.restore_day(saved)
    return JsonVan(van)


def test_a_parcel_waiting_for_its_card_is_signed_after_a_restart() -> None:
    van, _, key = day()
    assert van.on_scan(scan(0, "]C100" + SSCC_1)) == []  # waits; the van crashes
    again = restarted(van, key)
    assert again.on_tick(at(5)) == []  # still in its window
    out = again.on_tick(at(8))
    assert [(m["type"], m["parcel"], m["outcome"]) for m in out] == [("pod", SSCC_1, "delivered")]
    assert claims(out[0], key)["scan_time"] == "2026-11-21T09:01:10.000Z"
    # Its card scanned after the restart, within the window, still amends it.
    van, _, key = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    out = restarted(van, key).on_scan(scan(4, NOT_HOME))
    assert [(m["parcel"], m["outcome"]) for m in out] == [(SSCC_1, "not_home")]


def test_a_card_waiting_for_its_parcel_pairs_after_a_restart() -> None:
    van, _, key = day()
    assert van.on_scan(scan(0, REFUSED)) == []
    out = restarted(van, key).on_scan(scan(3, "]C100" + SSCC_1))
    assert [(m["parcel"], m["outcome"]) for m in out] == [(SSCC_1, "refused")]


def test_a_signed_attempt_is_not_waiting_in_the_day_saved_with_its_pod() -> None:
    van, _, key = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    assert van.van.day_state().pending is not None
    assert pods(van.on_tick(at(8)))
    again = restarted(van, key)  # the day committed with the POD
    assert again.van.day_state().pending is None
    assert pods(again.on_tick(at(60)) + again.flush()) == []  # never signed twice


def test_a_damaged_saved_attempt_is_dropped_not_fatal() -> None:
    van, _, key = day()
    van.on_scan(scan(0, "]C100" + SSCC_1))
    saved = van.van.day_state()
    assert saved.pending is not None
    broken = DayState.decode(
        dataclasses.replace(saved, pending={**saved.pending, "verdict": 7}).encode()
    )
    fresh = VanPipeline(
        van.van.manifest, pods=PodChain("van-1", key, van.van.pods.state), telemetry=False
    )
    assert fresh.restore_day(broken)  # the rest of the day is taken back
    assert fresh.day_state().pending is None
