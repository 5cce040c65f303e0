"""The ETA model's contract: what ``fleet-ingest train-eta`` writes and the van reads.

The metadata lives in the .tflite file itself (:mod:`.model_file` reads it):

- input: :data:`~.eta_features.FEATURE_NAMES` in that order, raw units (any
  normalization is folded into the model's first layer);
- metadata ``features_version`` equal to :data:`~.eta_features.FEATURES_VERSION`,
  ``model_version`` (a name the agent reports in status and on every ETA event),
  ``output`` equal to :data:`OUTPUT_LOG_RATIO`;
- output column 0: ``log((actual_s + 60) / (naive_s + 60))``, a correction of the
  naive baseline. A log ratio keeps one model good at 2 min and at 2 h; the 60 s
  offset keeps it finite for a stop the van is about to reach.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.eta_features import FEATURE_NAMES, FEATURES_VERSION
from firmware_agent.contract.model_file import read_model

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


def check_model_metadata(metadata: dict[str, str]) -> None:
    """:class:`ModelError` unless a model's metadata (:func:`~firmware_agent.contract.
    model_file.read_metadata`) is for these features and this output."""
    if metadata.get("features_version") != FEATURES_VERSION:
        raise ModelError(
            f"model is for features {metadata.get('features_version')!r}, "
            f"this agent computes {FEATURES_VERSION!r}"
        )
    if metadata.get("output") != OUTPUT_LOG_RATIO:
        raise ModelError(f"model output {metadata.get('output')!r}, expected {OUTPUT_LOG_RATIO!r}")
    if not metadata.get("model_version"):
        raise ModelError("model has no model_version in its metadata")


def check_model(model_bytes: bytes) -> dict[str, str]:
    """Check a model file as a van does before it hands it to an interpreter: the file
    (:func:`~.model_file.read_model`, bounds-checked), its metadata (for these features,
    this output, with a version) and its shapes (one float input ``[batch,
    N_FEATURES]``, one output ``[batch, >= 1]``). Returns its metadata;
    :class:`ModelError` saying what is wrong. The van's trial invoke is the one check
    this cannot make."""
    model = read_model(model_bytes)
    check_model_metadata(model.metadata)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"the model must have one input and one output, has {len(model.inputs)} and "
            f"{len(model.outputs)}"
        )
    (given,), (answer,) = model.inputs, model.outputs
    if len(given) != 2 or given[1] != len(FEATURE_NAMES):
        raise ModelError(
            f"model takes input {list(given)}; the features are [batch, {len(FEATURE_NAMES)}]"
        )
    if len(answer) != 2 or answer[1] < 1:
        raise ModelError(f"model gives output {list(answer)}; it must be [batch, n >= 1]")
    return model.metadata
