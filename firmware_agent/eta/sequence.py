"""The order the driver is expected to serve the remaining stops in (pure).

The planned order (the manifest's) is the prior; what the van has seen overrides it.
:class:`~firmware_agent.eta.tracker.EtaTracker` detects the stops the driver *passed*
(drove past without an arrival, or skipped by reaching a stop planned after them) and
asks :func:`expected_order` for the order its ETAs follow:

1. the stops not passed keep their planned order (the driver's plan, or the planner's,
   is still the best guess for the part of the round not yet deviated from);
2. each passed stop, in planned order, is re-inserted where it costs the least extra
   distance (*cheapest insertion*, the classic construction heuristic of routing):
   between two consecutive stops of the sequence, between the van and the first one
   (turning back now), or after the last one. A stop the route passes again later goes
   there; a stop nothing passes near goes to the end of the round. A stop the van
   came near (*driven past*, or skipped out of order after the van stood or drove by
   it: often a halt the geofence did not confirm) is *deferred* until it is served: it
   is never put before the stop the van heads for. Turning back at once is often the
   shortest detour (twice the few hundred metres since the pass), but the driver was
   right there and chose not to stop: the one thing the van knows about their plan is
   that it is not next; it goes only where the route comes back by it (an extra
   distance of at most ``max_detour_m``, the tracker's 2 x ``passed_leave_m``), else
   to the end of the round. Until issue 15's near-stop work the deferral ended at the next
   arrival, and on a route that runs on away from the stop (a bus line, a long street)
   cheapest insertion then turned the van back at once, putting two times the way back
   into every later stop's ETA (up to 1000 s on a real bus run). A stop skipped while
   the van was never near it (the driver served another first) may come next.

The reference problem is the Amazon Last Mile Routing Research Challenge 2021 (predict
the sequence drivers really take). This is a heuristic, not a learned model: a learned
next-stop model needs a fleet's driver histories, which a van does not have on day one,
and here the planned order already carries what the challenge's models had to learn
(which area comes after which). Distances are straight lines in the plan's local frame:
the insertion only ranks places, and road distance is mostly a constant factor of them.

Cost: O(stops) numpy per passed stop, run at each prediction (every 10 s), not per fix.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from firmware_agent.contract.eta_features import BoolArray, RoutePlan

IntArray = npt.NDArray[np.intp]


def expected_order(
    plan: RoutePlan,
    served: BoolArray,
    passed: BoolArray,
    x_m: float,
    y_m: float,
    *,
    deferred: BoolArray | None = None,
    max_detour_m: float = float("inf"),
) -> IntArray:
    """The unserved stops' indexes in the order the van is expected to serve them.

    ``served``, ``passed`` and ``deferred`` (passed stops not to be put first; default
    none) are one flag per stop; ``(x_m, y_m)`` the van in the plan's local frame
    (:attr:`RoutePlan.frame`). Without a passed unserved stop this is the planned order
    of the unserved stops. A deferred stop goes where the route comes back by it, an
    insertion costing at most ``max_detour_m`` more, else to the end of the round.
    """
    pending = ~served
    seq: list[int] = [int(i) for i in np.flatnonzero(pending & ~passed)]
    for p in np.flatnonzero(pending & passed):
        points = np.vstack(([[x_m, y_m]], plan.stop_xy[seq])) if seq else np.array([[x_m, y_m]])
        target = plan.stop_xy[p]
        to_p = np.hypot(points[:, 0] - target[0], points[:, 1] - target[1])
        step = np.diff(points, axis=0)
        legs = np.hypot(step[:, 0], step[:, 1])
        # Inserting before seq[k] costs to_p[k] + to_p[k + 1] - legs[k]; after the last
        # one, to_p[-1]. argmin takes the earliest of equal costs.
        costs = np.concatenate((to_p[:-1] + to_p[1:] - legs, to_p[-1:]))
        if deferred is not None and deferred[p] and len(seq) > 0:
            costs[0] = np.inf  # not before the stop the van heads for
            # Nor back along the way (a turn back after the next stop is the same
            # detour one stop later): only where the route comes by it again.
            costs[:-1][costs[:-1] > max_detour_m] = np.inf
        seq.insert(int(np.argmin(costs)), int(p))
    return np.array(seq, dtype=np.intp)
