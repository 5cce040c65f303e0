"""The per-stop state machine.

::

    IDLE --good fix inside--> APPROACH --confirmed (engine: dwell, or a scan)--> ARRIVED
      ^                          |                                                  |
      +--beyond border, moving---+      +--beyond radius+border for depart_confirm_s,+
      +---------------------------------+   moving (Departure, time = first fix outside)
                                            or: the engine confirmed a dwell elsewhere

Only good fixes are observed (the engine drops no-fix and high-HDOP ones), so a poor
fix neither enters nor leaves, and an outage changes nothing by itself. ``entered_s``
survives small excursions (within the border) so the arrival time reported is the
first fix inside on the approach that led to the stop. Times are POSIX seconds (UTC).
"""

from __future__ import annotations

from enum import StrEnum

from firmware_agent.geofence.index import Shape


class Phase(StrEnum):
    IDLE = "idle"
    APPROACH = "approach"
    ARRIVED = "arrived"


class StopFence:
    """One stop's fence state. ``observe`` returns a departure's (time, arrived) or None."""

    __slots__ = (
        "arrived_s",
        "beyond_s",
        "departed_s",
        "entered_s",
        "index",
        "moved",
        "outside_s",
        "phase",
        "shape",
        "stop_id",
        "visits",
    )

    def __init__(self, stop_id: str, index: int, shape: Shape) -> None:
        self.stop_id = stop_id
        self.index = index
        self.shape = shape
        self.phase = Phase.IDLE
        self.visits = 0
        self.entered_s: float | None = None
        self.arrived_s: float | None = None
        self.departed_s: float | None = None
        self.outside_s: float | None = None  # first fix outside radius since arrival
        self.beyond_s: float | None = None  # first fix beyond radius + border
        self.moved = False  # a fix beyond the border showed the van moving

    def observe(
        self,
        t_s: float,
        outside_m: float,
        *,
        moving: bool,
        border_m: float,
        depart_confirm_s: float,
    ) -> tuple[float, float] | None:
        """Feed one good fix's distance outside the fence (0 = inside).

        A departure needs the van beyond the border for ``depart_confirm_s`` and, at some
        fix in that stretch, ``moving``: the receiver's Doppler speed does not share a
        multipath position error, so a parked van whose fixes wander 300 m away for a
        while (seen in the field and in the simulator) does not "leave".
        """
        phase = self.phase
        if phase is Phase.IDLE:
            if outside_m == 0.0:
                self.phase = Phase.APPROACH
                self.entered_s = t_s
        elif phase is Phase.APPROACH:
            # Drove past, or left before confirming. A stopped van's fix beyond the
            # border is a multipath jump, not a departure from the approach: resetting
            # here would lose the entry time and, after an outage, the arrival itself.
            if outside_m > border_m and moving:
                self.phase = Phase.IDLE
                self.entered_s = None
        elif outside_m == 0.0:  # ARRIVED, still (or again) inside
            self.outside_s = self.beyond_s = None
            self.moved = False
        else:
            if self.outside_s is None:
                self.outside_s = t_s
            if outside_m <= border_m:
                self.beyond_s = None
                self.moved = False
            else:
                if self.beyond_s is None:
                    self.beyond_s = t_s
                self.moved = self.moved or moving
                if self.moved and t_s - self.beyond_s >= depart_confirm_s:
                    return self.depart(t_s)
        return None

    def depart(self, t_s: float) -> tuple[float, float]:
        """ARRIVED -> IDLE; returns (departure time, arrival time).

        The departure time is the first fix outside the radius on the way out, or
        ``t_s`` if the van was never seen outside it (a departure forced by an arrival
        elsewhere after an outage).
        """
        arrived_s = self.arrived_s
        if self.phase is not Phase.ARRIVED or arrived_s is None:
            raise RuntimeError(f"stop {self.stop_id}: depart() outside ARRIVED")
        departed_s = self.outside_s if self.outside_s is not None else t_s
        self.phase = Phase.IDLE
        self.departed_s = departed_s
        self.entered_s = self.arrived_s = self.outside_s = self.beyond_s = None
        self.moved = False
        return departed_s, arrived_s

    def confirm(self) -> float:
        """APPROACH -> ARRIVED; returns the arrival time (the entry on this approach)."""
        if self.phase is not Phase.APPROACH or self.entered_s is None:
            raise RuntimeError(f"stop {self.stop_id}: confirm() outside APPROACH")
        self.phase = Phase.ARRIVED
        self.visits += 1
        self.arrived_s = self.entered_s
        self.outside_s = self.beyond_s = None
        self.moved = False
        return self.entered_s
