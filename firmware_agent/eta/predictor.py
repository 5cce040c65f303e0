"""From feature rows to arrival predictions: the model's answer beside the baseline.

The model contract (what ``fleet-ingest train-eta`` writes and the agent reads) is
:mod:`firmware_agent.contract.eta_model`. A model that breaks the contract is refused
when loaded (:class:`ModelError`); with no model, or no interpreter on this van,
:class:`EtaPredictor` answers with the baseline and says why in
:attr:`EtaPredictor.unavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.eta_features import FEATURE_NAMES, FeatureMatrix
from firmware_agent.contract.eta_model import (
    ANCHOR_COLUMN,
    Calibration,
    answer,
    check_model,
    model_calibration,
)
from firmware_agent.errors import ModelUnavailableError
from firmware_agent.eta.interpreter import TfliteRunner


@dataclass(frozen=True, slots=True)
class Prediction:
    """Seconds from now to arrival per remaining stop, in the features' stop order.

    ``baseline_s`` is the customer's naive ETA (``chain_naive_s``), the model's anchor;
    ``p10_s``/``p90_s`` the model's calibrated interval (None without a model or
    without a calibration in it)."""

    stop_ids: tuple[str, ...]
    eta_s: npt.NDArray[np.float64]  # the model's, or the baseline's without a model
    baseline_s: npt.NDArray[np.float64]
    model_version: str | None  # None: eta_s is the baseline
    p10_s: npt.NDArray[np.float64] | None = None
    p90_s: npt.NDArray[np.float64] | None = None


class EtaPredictor:
    """The model when there is one that runs here, else the baseline.

    ``EtaPredictor.load(bytes)`` raises :class:`ModelError` for a file that breaks the
    contract (the caller keeps its previous predictor); a van without an interpreter
    gets a baseline predictor whose :attr:`unavailable` says why.
    """

    def __init__(
        self,
        runner: TfliteRunner | None,
        *,
        model_version: str | None = None,
        unavailable: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self._runner = runner
        self.calibration = calibration
        self.model_version = model_version if runner is not None else None
        self.unavailable = unavailable

    @classmethod
    def baseline(cls, reason: str) -> EtaPredictor:
        return cls(None, unavailable=reason)

    @classmethod
    def load(cls, model: bytes | Path) -> EtaPredictor:
        data = model.read_bytes() if isinstance(model, Path) else model
        metadata = check_model(data)  # ModelError for a damaged or foreign file
        try:
            runner = TfliteRunner.open(data)
        except ModelUnavailableError as err:
            return cls(None, unavailable=str(err))
        if runner.n_inputs != len(FEATURE_NAMES) or runner.n_outputs < 1:
            raise ModelError(
                f"model takes {runner.n_inputs} features and gives {runner.n_outputs} "
                f"outputs; the agent has {len(FEATURE_NAMES)} features and needs >= 1"
            )
        return cls(
            runner,
            model_version=metadata["model_version"],
            calibration=model_calibration(metadata),
        )

    @property
    def backend(self) -> str | None:
        return None if self._runner is None else self._runner.backend

    def predict(self, features: FeatureMatrix) -> Prediction:
        baseline = features.values[:, ANCHOR_COLUMN].astype(np.float64)
        if self._runner is None or len(baseline) == 0:
            return Prediction(features.stop_ids, baseline.copy(), baseline, None)
        out = self._runner.predict(features.values)
        got = answer(baseline, out[:, 0], self.calibration)
        return Prediction(
            features.stop_ids, got.eta_s, baseline, self.model_version, got.p10_s, got.p90_s
        )
