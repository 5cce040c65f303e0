"""The ETA model's contract: what ``fleet-ingest train-eta`` writes and the van reads.

The metadata lives in the .tflite file itself (:mod:`.model_file` reads it):

- input: :data:`~.eta_features.FEATURE_NAMES` in that order, raw units (any
  normalization is folded into the model's first layer);
- metadata ``features_version`` equal to :data:`~.eta_features.FEATURES_VERSION`,
  ``model_version`` (a name the agent reports in status and on every ETA event),
  ``output`` equal to :data:`OUTPUT_LOG_RATIO`, and optionally ``calibration``
  (:class:`Calibration`, JSON);
- output column 0: ``log((actual_s + 60) / (anchor_s + 60))``, a correction of the
  *anchor*, the customer's naive ETA (``chain_naive_s``: straight lines through the
  remaining stops over the last 5 minutes' mean speed). A log ratio keeps one model good
  at 2 min and at 2 h; the 60 s offset keeps it finite for a stop the van is about to
  reach.

The calibration, fit on held-out real trips, does two things per horizon bucket (of the
anchor): it *shrinks* the model's correction towards the anchor (``eta`` uses
``shrink * y``: 0 is the naive ETA itself, where the model has shown no gain), and
gives the interval: ``p10``/``p90`` are the eta times the 10th/90th percentile of the
held-out ratio ``(actual + 60) / (eta + 60)``. A model without calibration is used
unshrunk and without an interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.errors import ModelError
from firmware_agent.contract.eta_features import FEATURE_NAMES, FEATURES_VERSION
from firmware_agent.contract.model_file import read_model

OUTPUT_LOG_RATIO: Final = "log_ratio_chain_plus60/2"
OFFSET_S: Final = 60.0
# A correction beyond x/e^3..x*e^3 is the model extrapolating, not knowledge: clipped.
MAX_ABS_LOG_RATIO: Final = 3.0
NAIVE_COLUMN: Final = FEATURE_NAMES.index("naive_eta_s")
ANCHOR_COLUMN: Final = FEATURE_NAMES.index("chain_naive_s")
"""The model's reference and the van's baseline: the customer's naive ETA."""
HORIZON_EDGES_S: Final = (300.0, 900.0, 1800.0, 3600.0)
"""Upper edges of the calibration's anchor buckets (0-5, 5-15, 15-30, 30-60, 60+ min)."""
MAX_CALIBRATION_BUCKETS: Final = 64


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
class Calibration:
    """Per anchor bucket (``edges_s``: upper edges, the last bucket open): how much of
    the model's correction to keep (``shrink``, 0..1) and the log ratios of the
    interval (``q10`` <= ``q90``) around the shrunk ETA, for ``eta + 60`` s."""

    edges_s: tuple[float, ...]
    shrink: tuple[float, ...]
    q10: tuple[float, ...]
    q90: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.edges_s) + 1
        if n > MAX_CALIBRATION_BUCKETS:
            raise ModelError(f"calibration has {n} buckets, at most {MAX_CALIBRATION_BUCKETS}")
        if any(len(v) != n for v in (self.shrink, self.q10, self.q90)):
            raise ModelError(f"calibration needs {n} values per list for {n - 1} edges")
        values = (*self.edges_s, *self.shrink, *self.q10, *self.q90)
        if not all(math.isfinite(v) for v in values):
            raise ModelError("calibration values must be finite")
        if list(self.edges_s) != sorted(self.edges_s) or any(e <= 0 for e in self.edges_s):
            raise ModelError("calibration edges must be positive and increasing")
        if not all(0.0 <= w <= 1.0 for w in self.shrink):
            raise ModelError("calibration shrink factors must be within 0..1")
        if any(
            lo > hi or abs(lo) > MAX_ABS_LOG_RATIO or abs(hi) > MAX_ABS_LOG_RATIO
            for lo, hi in zip(self.q10, self.q90, strict=True)
        ):
            raise ModelError(f"calibration needs q10 <= q90, each within +-{MAX_ABS_LOG_RATIO}")

    def bucket(self, anchor_s: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """The bucket of each anchor (seconds)."""
        edges = np.asarray(self.edges_s, dtype=np.float64)
        return np.searchsorted(edges, np.asarray(anchor_s, dtype=np.float64), side="right")

    def to_json(self) -> str:
        return json.dumps(
            {"edges_s": self.edges_s, "shrink": self.shrink, "q10": self.q10, "q90": self.q90}
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """:class:`ModelError` for anything but the form :meth:`to_json` writes."""
        try:
            doc: Any = json.loads(text)
            return cls(*(tuple(float(v) for v in _list(doc[k])) for k in _CALIBRATION_KEYS))
        except (ValueError, TypeError, KeyError) as err:
            raise ModelError(f"model calibration is unreadable: {err}") from None


_CALIBRATION_KEYS: Final = ("edges_s", "shrink", "q10", "q90")


def _list(value: object) -> Sequence[Any]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise TypeError("expected a list of numbers")
    return value


@dataclass(frozen=True, slots=True)
class Answer:
    """Seconds to arrival per row: the point estimate and, with a calibration, the
    p10 / p90 interval (``None`` without)."""

    eta_s: npt.NDArray[np.float64]
    p10_s: npt.NDArray[np.float64] | None
    p90_s: npt.NDArray[np.float64] | None


def answer(
    anchor_s: npt.ArrayLike, log_ratio: npt.ArrayLike, calibration: Calibration | None
) -> Answer:
    """The ETA (and interval) from the anchor and the model's output column (module doc)."""
    anchor = np.maximum(0.0, np.asarray(anchor_s, dtype=np.float64))
    y = np.clip(np.asarray(log_ratio, dtype=np.float64), -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
    if calibration is None:
        return Answer(eta_from_log_ratio(anchor, y), None, None)
    b = calibration.bucket(anchor)
    eta = eta_from_log_ratio(anchor, np.asarray(calibration.shrink)[b] * y)
    p10 = eta_from_log_ratio(eta, np.asarray(calibration.q10)[b])
    p90 = eta_from_log_ratio(eta, np.asarray(calibration.q90)[b])
    return Answer(eta, np.minimum(p10, eta), np.maximum(p90, eta))


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
    if "calibration" in metadata:
        Calibration.from_json(metadata["calibration"])


def model_calibration(metadata: dict[str, str]) -> Calibration | None:
    """The model's calibration, ``None`` if it has none (:class:`ModelError` if bad)."""
    text = metadata.get("calibration")
    return None if text is None else Calibration.from_json(text)


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
