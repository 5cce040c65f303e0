"""The probability that a stop is reached after its promised window (issue 15).

Pure. The model's calibrated interval (``eta_p10``, ``eta_p90``: 10th and 90th
percentiles of the arrival, fit on held-out real trips) lives in the model's log-ratio
space, ``log(seconds + 60)`` (firmware_agent/contract/eta_model.py). The arrival is
taken as log-normal there: ``log(arrival_s + 60)`` normal, its mean and spread the ones
whose 10th and 90th percentiles are the interval's (z = -/+1.2816). Only the interval is
used, not the point ETA: the calibration's intervals are not centred on it (on the
shipped model 0-15 min away they lean late by about 12 % of the time remaining), and the
interval is what was fit for coverage. A window already over gives 1.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

Z90: Final = 1.2815515655446004  # the standard normal's 90th percentile
_OFFSET_S: Final = 60.0  # the model's log ratio is of seconds + 60


def late_probability(
    p10_s: npt.NDArray[np.float64],
    p90_s: npt.NDArray[np.float64],
    window_end_s: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Per stop, the probability of arriving after ``window_end_s`` (all three in
    seconds from now); NaN where any of them is NaN (no interval, no window)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.log(np.maximum(p10_s, 0.0) + _OFFSET_S)
        hi = np.log(np.maximum(p90_s, p10_s) + _OFFSET_S)
        mu = (lo + hi) / 2.0
        sigma = (hi - lo) / (2.0 * Z90)
        end = window_end_s + _OFFSET_S
        z = (np.log(np.where(end > 0, end, 1.0)) - mu) / np.where(sigma > 0, sigma, np.nan)
        # sigma 0 (a degenerate interval): a step at the interval's point.
        z = np.where(sigma > 0, z, np.where(np.log(np.where(end > 0, end, 1.0)) >= mu, 1e9, -1e9))
        z = np.where(np.isfinite(mu) & np.isfinite(end), z, np.nan)
    erfc = np.frompyfunc(math.erfc, 1, 1)
    finite = np.isfinite(z)
    out = np.full(z.shape, np.nan)
    out[finite] = 0.5 * np.asarray(erfc(z[finite] / math.sqrt(2.0)), dtype=np.float64)
    out[finite & (end <= 0)] = 1.0
    return out
