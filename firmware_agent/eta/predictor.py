"""From feature rows to arrival predictions: the model's answer beside the baseline.

The model contract (what ``fleet-ingest train-eta`` writes and the agent reads; the
metadata lives in the .tflite file itself, see :mod:`firmware_agent.eta.interpreter`):

- input: :data:`firmware_agent.eta.features.FEATURE_NAMES` in that order, raw units
  (any normalization is folded into the model's first layer);
- metadata ``features_version`` equal to
  :data:`~firmware_agent.eta.features.FEATURES_VERSION`, ``model_version`` (a name
  the agent reports in status and on every ETA event), ``output`` equal to
  :data:`OUTPUT_LOG_RATIO`;
- output column 0: ``log((actual_s + 60) / (naive_s + 60))``, a correction of the
  naive baseline. A log ratio keeps one model good at 2 min and at 2 h; the 60 s
  offset keeps it finite for a stop the van is about to reach.

A model that breaks the contract is refused when loaded (:class:`ModelError`); with
no model, or no interpreter on this van, :class:`EtaPredictor` answers with the
baseline and says why in :attr:`EtaPredictor.unavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from firmware_agent.errors import ModelError, ModelUnavailableError
from firmware_agent.eta.features import FEATURE_NAMES, FEATURES_VERSION, FeatureMatrix
from firmware_agent.eta.interpreter import TfliteRunner, read_metadata

OUTPUT_LOG_RATIO: Final = "log_ratio_plus60/1"
OFFSET_S: Final = 60.0
# A correction beyond x/e^3..x*e^3 is the model extrapolating, not knowledge: clipped.
MAX_ABS_LOG_RATIO: Final = 3.0
NAIVE_COLUMN: Final = FEATURE_NAMES.index("naive_eta_s")


def eta_from_log_ratio(naive_s: npt.ArrayLike, log_ratio: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Seconds to arrival from the baseline and the model's output column."""
    naive = np.asarray(naive_s, dtype=np.float64)
    y = np.clip(np.asarray(log_ratio, dtype=np.float64), -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
    return np.maximum(0.0, (naive + OFFSET_S) * np.exp(y) - OFFSET_S)


def log_ratio_target(actual_s: npt.ArrayLike, naive_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The training target: the inverse of :func:`eta_from_log_ratio`."""
    actual = np.maximum(0.0, np.asarray(actual_s, dtype=np.float64))
    naive = np.maximum(0.0, np.asarray(naive_s, dtype=np.float64))
    return np.log((actual + OFFSET_S) / (naive + OFFSET_S))


@dataclass(frozen=True, slots=True)
class Prediction:
    """Seconds from now to arrival per remaining stop, in the features' stop order."""

    stop_ids: tuple[str, ...]
    eta_s: npt.NDArray[np.float64]  # the model's, or the baseline's without a model
    baseline_s: npt.NDArray[np.float64]
    model_version: str | None  # None: eta_s is the baseline


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
    ) -> None:
        self._runner = runner
        self.model_version = model_version if runner is not None else None
        self.unavailable = unavailable

    @classmethod
    def baseline(cls, reason: str) -> EtaPredictor:
        return cls(None, unavailable=reason)

    @classmethod
    def load(cls, model: bytes | Path) -> EtaPredictor:
        data = model.read_bytes() if isinstance(model, Path) else model
        metadata = read_metadata(data)  # ModelError for a damaged file
        _check_contract(metadata)
        try:
            runner = TfliteRunner.open(data)
        except ModelUnavailableError as err:
            return cls(None, unavailable=str(err))
        if runner.n_inputs != len(FEATURE_NAMES) or runner.n_outputs < 1:
            raise ModelError(
                f"model takes {runner.n_inputs} features and gives {runner.n_outputs} "
                f"outputs; the agent has {len(FEATURE_NAMES)} features and needs >= 1"
            )
        return cls(runner, model_version=metadata["model_version"])

    @property
    def backend(self) -> str | None:
        return None if self._runner is None else self._runner.backend

    def predict(self, features: FeatureMatrix) -> Prediction:
        baseline = features.values[:, NAIVE_COLUMN].astype(np.float64)
        if self._runner is None or len(baseline) == 0:
            return Prediction(features.stop_ids, baseline.copy(), baseline, None)
        out = self._runner.predict(features.values)
        return Prediction(
            features.stop_ids,
            eta_from_log_ratio(baseline, out[:, 0]),
            baseline,
            self.model_version,
        )


def _check_contract(metadata: dict[str, str]) -> None:
    if metadata.get("features_version") != FEATURES_VERSION:
        raise ModelError(
            f"model is for features {metadata.get('features_version')!r}, "
            f"this agent computes {FEATURES_VERSION!r}"
        )
    if metadata.get("output") != OUTPUT_LOG_RATIO:
        raise ModelError(f"model output {metadata.get('output')!r}, expected {OUTPUT_LOG_RATIO!r}")
    if not metadata.get("model_version"):
        raise ModelError("model has no model_version in its metadata")
