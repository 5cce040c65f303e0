"""The model contract between training and the van (firmware_agent/eta/predictor.py),
with real .tflite files run by the installed interpreter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloud_ingest.eta.tflite_export import Dense, export_mlp
from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.eta_features import FEATURE_NAMES, FEATURES_VERSION, FeatureMatrix
from firmware_agent.contract.eta_model import (
    ANCHOR_COLUMN,
    MAX_ABS_LOG_RATIO,
    OUTPUT_LOG_RATIO,
    Calibration,
    eta_from_log_ratio,
    log_ratio_target,
)
from firmware_agent.eta.predictor import EtaPredictor

N = len(FEATURE_NAMES)
CONTRACT = {
    "features_version": FEATURES_VERSION,
    "model_version": "t-1",
    "output": OUTPUT_LOG_RATIO,
}


def constant_model(bias: float, *, n_in: int = N, **metadata: str) -> bytes:
    """A model whose output is ``bias`` whatever the input."""
    layer = Dense(np.zeros((1, n_in), np.float32), np.array([bias], np.float32))
    return export_mlp([layer], batch=8, metadata={**CONTRACT, **metadata})


def features(naive_s: list[float]) -> FeatureMatrix:
    values = np.zeros((len(naive_s), N), np.float32)
    values[:, ANCHOR_COLUMN] = naive_s
    return FeatureMatrix(values, tuple(f"S{i:03d}" for i in range(len(naive_s))))


def test_the_target_and_the_eta_are_inverse() -> None:
    actual = np.array([0.0, 30.0, 600.0, 7200.0])
    naive = np.array([10.0, 300.0, 400.0, 3600.0])
    y = log_ratio_target(actual, naive)
    assert y[2] == pytest.approx(math.log(660 / 460))
    np.testing.assert_allclose(eta_from_log_ratio(naive, y), actual, atol=1e-9)


def test_a_wild_correction_is_clipped_and_an_eta_is_never_negative() -> None:
    eta = eta_from_log_ratio([100.0, 100.0], [50.0, -50.0])
    assert eta[0] == pytest.approx(160 * math.exp(MAX_ABS_LOG_RATIO) - 60)
    assert eta[1] == 0.0


def test_the_baseline_predictor_answers_the_baseline() -> None:
    p = EtaPredictor.baseline("no model shipped").predict(features([120.0, 900.0]))
    assert p.model_version is None
    np.testing.assert_array_equal(p.eta_s, [120.0, 900.0])
    np.testing.assert_array_equal(p.baseline_s, [120.0, 900.0])


def test_a_model_corrects_the_baseline_through_the_interpreter() -> None:
    predictor = EtaPredictor.load(constant_model(0.5))
    assert predictor.model_version == "t-1"
    assert predictor.backend in {"ai-edge-litert", "tflite-runtime"}
    naive = [0.0, 120.0, 900.0, 3600.0]
    p = predictor.predict(features(naive))
    assert p.stop_ids == ("S000", "S001", "S002", "S003")
    expected = [(n + 60) * math.exp(0.5) - 60 for n in naive]
    np.testing.assert_allclose(p.eta_s, expected, rtol=1e-5)
    np.testing.assert_array_equal(p.baseline_s, naive)
    # No remaining stop: nothing to run.
    assert len(predictor.predict(features([])).eta_s) == 0


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (constant_model(0.0, features_version="eta-features/0"), "features"),
        (constant_model(0.0, output="seconds"), "output"),
        (constant_model(0.0, model_version=""), "model_version"),
        (constant_model(0.0, n_in=N - 1), "features"),
        (b"TFL3" * 40, "."),
        (constant_model(0.0, calibration="{not json"), "calibration"),
        (
            constant_model(
                0.0,
                calibration='{"edges_s": [300], "shrink": [2, 1], "q10": [0, 0], "q90": [0, 0]}',
            ),
            "shrink",
        ),
        (
            constant_model(
                0.0,
                calibration='{"edges_s": [300], "shrink": [1, 1], '
                '"q10": [0.2, 0], "q90": [0.1, 0]}',
            ),
            "q10",
        ),
    ],
)
def test_a_model_that_breaks_the_contract_is_refused(model: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        EtaPredictor.load(model)


def test_a_calibrated_model_shrinks_by_horizon_and_gives_an_interval() -> None:
    """Bucket 0 (anchor < 300 s) keeps none of the correction: the naive ETA itself;
    bucket 1 all of it. The interval is the shrunk ETA times the calibrated ratios."""
    calibration = Calibration((300.0,), (0.0, 1.0), (-0.2, -0.5), (0.1, 0.4))
    predictor = EtaPredictor.load(constant_model(0.5, calibration=calibration.to_json()))
    assert predictor.calibration == calibration
    naive = [120.0, 900.0]
    p = predictor.predict(features(naive))
    expected = [120.0, (900 + 60) * math.exp(0.5) - 60]
    np.testing.assert_allclose(p.eta_s, expected, rtol=1e-5)
    assert p.p10_s is not None
    assert p.p90_s is not None
    np.testing.assert_allclose(
        p.p10_s,
        [(e + 60) * math.exp(q) - 60 for e, q in zip(expected, (-0.2, -0.5), strict=True)],
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        p.p90_s,
        [(e + 60) * math.exp(q) - 60 for e, q in zip(expected, (0.1, 0.4), strict=True)],
        rtol=1e-5,
    )
    assert np.all(p.p10_s <= p.eta_s)
    assert np.all(p.eta_s <= p.p90_s)


def test_without_a_calibration_there_is_no_interval() -> None:
    p = EtaPredictor.load(constant_model(0.5)).predict(features([600.0]))
    assert p.p10_s is None
    assert p.p90_s is None
    assert EtaPredictor.baseline("none").predict(features([600.0])).p10_s is None
