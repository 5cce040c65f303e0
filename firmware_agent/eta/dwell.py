"""Holding the next stops' ETAs while the van stands at a stop (issue 15, the dwell).

Pure, no clock of its own. While the van dwells, the model is asked every 10 s as if
the van could leave now; its answers for the next stops slid later minute by minute and
caught up at the next arrival (docs/eta.md, "Dwell"). What the van knows during a dwell
is the time already spent there and the parcels left to scan, and those predict when it
leaves, not where it goes after. So :class:`DwellHold` keeps the arrival times the
tracker predicted when the dwell began (the model was then asked with ``dwell_s`` 0 and
the stop's parcels, the rows it was trained on, whose labels include the whole dwell)
and moves them only as the expected departure moves:

    departure = max(arrived + dwell_base_s + dwell_per_parcel_s x parcels,
                    now + dwell_per_parcel_s x parcels left to scan)

The first term is the stop's expected dwell (a constant and a time per parcel: the
settings ``eta.dwell_base_s`` and ``eta.dwell_per_parcel_s``, measured by
bench/eta_dwell.py); the second says that a van whose dwell has run over leaves no
sooner than its driver can scan what is left, so each second beyond the expected dwell
delays every next stop by a second, and less when the driver has scanned everything.
At a prediction, every stop held gets ``held + (departure - departure at the start)``,
never before the departure itself; the interval (``p10``/``p90``) moves with it. The
customer's naive ETA (``eta_baseline``) is not held: it is the backend's reference.

A hold starts at the first prediction of a dwell and ends with it (the van's
departure), at a new arrival or a stop passed (the order changed: a new start), or with
a new manifest (the next prediction starts one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from firmware_agent.eta.predictor import Prediction


@dataclass(frozen=True, slots=True)
class DwellHold:
    """The arrivals predicted when a dwell began, as POSIX seconds per plan stop (NaN:
    not predicted then), and the departure expected then."""

    stop: int  # the plan index of the stop the van stands at
    arrive_s: npt.NDArray[np.float64]
    p10_s: npt.NDArray[np.float64] | None
    p90_s: npt.NDArray[np.float64] | None
    departure_s: float

    @classmethod
    def start(  # noqa: PLR0917 (one call site, the tracker's)
        cls,
        stop: int,
        n_stops: int,
        idx: npt.NDArray[np.intp],
        now_s: float,
        prediction: Prediction,
        departure_s: float,
        only: npt.NDArray[np.intp] | None = None,
    ) -> DwellHold:
        """Hold ``prediction`` (made at ``now_s`` for the plan stops ``idx``); ``only``:
        the plan stops to hold (default all)."""

        def absolute(seconds: npt.NDArray[np.float64] | None) -> npt.NDArray[np.float64] | None:
            if seconds is None:
                return None
            out = np.full(n_stops, np.nan)
            out[idx] = now_s + seconds
            return out

        arrive = absolute(prediction.eta_s)
        assert arrive is not None
        if only is not None:  # the others are not held
            mask = np.ones(n_stops, dtype=np.bool_)
            mask[only] = False
            arrive[mask] = np.nan
        p10, p90 = absolute(prediction.p10_s), absolute(prediction.p90_s)
        return cls(stop, arrive, p10, p90, departure_s)

    def apply(
        self,
        idx: npt.NDArray[np.intp],
        now_s: float,
        prediction: Prediction,
        departure_s: float,
    ) -> Prediction:
        """``prediction`` (made at ``now_s`` for the plan stops ``idx``) with every stop
        held since the start moved by the change of the expected departure."""
        shift_s = departure_s - self.departure_s
        held = self.arrive_s[idx]
        keep = np.isfinite(held)
        if not keep.any():
            return prediction
        # Never before the van leaves: a held arrival the model put sooner than the
        # departure now expected waits for it.
        floor_s = departure_s - now_s
        eta_s = np.where(keep, np.maximum(held + shift_s - now_s, floor_s), prediction.eta_s)

        def moved(
            start: npt.NDArray[np.float64] | None, now: npt.NDArray[np.float64] | None
        ) -> npt.NDArray[np.float64] | None:
            if start is None or now is None:
                return now
            then = start[idx]
            return np.where(keep & np.isfinite(then), np.maximum(then + shift_s - now_s, 0.0), now)

        p10_s, p90_s = moved(self.p10_s, prediction.p10_s), moved(self.p90_s, prediction.p90_s)
        return dataclasses.replace(
            prediction,
            eta_s=eta_s,
            p10_s=None if p10_s is None else np.minimum(p10_s, eta_s),
            p90_s=None if p90_s is None else np.maximum(p90_s, eta_s),
        )


def expected_departure_s(
    arrived_s: float,
    now_s: float,
    *,
    parcels: float,
    parcels_left: float,
    base_s: float,
    per_parcel_s: float,
) -> float:
    """When the van standing at a stop since ``arrived_s`` is expected to leave (module
    doc): its expected dwell, or later if it has run over, by the time the parcels left
    to scan take."""
    if not (math.isfinite(arrived_s) and math.isfinite(now_s)):
        raise ValueError(f"times must be finite, got {arrived_s!r} and {now_s!r}")
    expected = arrived_s + base_s + per_parcel_s * max(0.0, parcels)
    return max(expected, now_s + per_parcel_s * max(0.0, parcels_left))
