"""late_risk from the model's calibrated interval (issue 15): the probability of
arriving after the window's end (firmware_agent/eta/late.py), and the tracker raising
it with a real calibrated model, the point rule without an interval."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import numpy as np
import pytest

from firmware_agent.contract import schema
from firmware_agent.contract.eta_model import Calibration
from firmware_agent.contract.records import LateRisk
from firmware_agent.contract.times import format_utc
from firmware_agent.eta.late import Z90, late_probability
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig, EtaTracker
from firmware_agent.replay import json_line
from tests.test_eta_predictor import constant_model
from tests.vanday import T0, fix_at, manifest, stop
from tests.wire import envelope


def test_the_probability_follows_the_interval_in_log_space() -> None:
    p10, p90 = np.array([540.0] * 5), np.array([1440.0] * 5)  # log(s + 60): 6.4, 7.3
    mid = math.sqrt(600.0 * 1500.0) - 60.0  # the log-normal's median
    got = late_probability(p10, p90, np.array([540.0, 1440.0, mid, -120.0, np.nan]))
    assert got[:3] == pytest.approx([0.9, 0.1, 0.5], abs=1e-9)
    assert got[3] == 1.0  # the window is over
    assert math.isnan(got[4])  # no window
    assert math.isnan(late_probability(np.array([np.nan]), p90[:1], p10[:1])[0])
    assert pytest.approx(1.2816, abs=1e-4) == Z90


def _tracker(predictor: EtaPredictor, window_end_s: float) -> list[LateRisk]:
    """A van driving east at 10 m/s to S1, 6 km away, whose window ends
    ``window_end_s`` after the start; its late_risks over 3 minutes."""
    end = format_utc(T0 + timedelta(seconds=window_end_s))
    day = manifest(
        [stop("S1", 6000.0, window_start=format_utc(T0 - timedelta(hours=1)), window_end=end)]
    )
    tracker = EtaTracker(day, predictor)
    out: list[LateRisk] = []
    for t in range(180):
        fix = fix_at(T0 + timedelta(seconds=t), 10.0 * t, speed_mps=10.0)
        out += [r for r in tracker.on_fix(fix) if isinstance(r, LateRisk)]
    return out


def test_late_risk_says_how_likely_with_an_interval_and_falls_back_without() -> None:
    # Shrink 0: the ETA is the naive (about 600 s), interval x e^-0.5 .. x e^0.5.
    calibration = Calibration((), (0.0,), (-0.5,), (0.5,))
    model = EtaPredictor.load(constant_model(0.3, calibration=calibration.to_json()))
    [late] = _tracker(model, window_end_s=0.0)  # over at the start: surely late
    assert late.probability == 1.0
    record = json.loads(json_line(late))
    assert record["probability"] == 1.0
    schema.validate(
        "events", json.loads(envelope("van-1", "events", 1, record, historical=False, sent_at=T0))
    )
    # A window ending just before the point ETA: the point rule would alert, but the
    # probability (about 0.55) is under 0.7; the baseline has no interval: point rule.
    assert _tracker(model, window_end_s=560.0) == []
    [point] = _tracker(EtaPredictor.baseline("test"), window_end_s=560.0)
    assert point.probability is None
    assert "probability" not in json.loads(json_line(point))
    # late_probability 0: the point rule with the model too.
    assert EtaConfig(late_probability=0).late_probability == 0
