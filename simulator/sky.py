"""The satellites a receiver sees: ids, elevations, azimuths, signal strengths.

Not orbital mechanics: each satellite rises and sets on a smooth, seeded curve with
the period of a GPS ground track (about 12 h) and drifts in azimuth, which gives GSV
sentences that change slowly and plausibly over a day. Which satellites the fix uses
(GSA) follows from how many the error model says the fix uses at that moment: the
strongest ones above 10°.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.epoch import Constellation, Satellite
from simulator.rng import stream as random_stream

GPS_IDS = tuple(range(1, 33))
GLONASS_IDS = tuple(range(65, 89))  # NMEA ids of GLONASS slots 1-24
SKY_PERIOD_S = 11.967 * 3600.0  # half a sidereal day: a GPS satellite's ground-track period
ELEVATION_MASK_DEG = 5.0  # listed in GSV above this
USE_MASK_DEG = 10.0  # used in the fix above this
MAX_IDS_PER_GSA = 12  # an NMEA 0183 GSA sentence has twelve id fields
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True, slots=True)
class _Pass:
    system: Constellation
    prn: int
    phase_rad: float
    peak_deg: float
    azimuth0_deg: float
    azimuth_rate_deg_s: float
    snr_offset_db: float


class Sky:
    """The satellites of ``systems`` above a receiver, deterministic for a seed."""

    def __init__(self, seed: int | str, systems: Sequence[Constellation]) -> None:
        rng = random_stream("sky", seed)
        self._passes: list[_Pass] = []
        for system in systems:
            for i, prn in enumerate(GPS_IDS if system == "GP" else GLONASS_IDS):
                # Phases spread by the golden ratio, as orbital planes spread a real
                # constellation: never a sky with only a handful of satellites up.
                spread = (i * _GOLDEN + rng.uniform(-0.05, 0.05)) % 1.0
                self._passes.append(
                    _Pass(
                        system,
                        prn,
                        2.0 * math.pi * spread,
                        rng.uniform(35.0, 88.0),
                        rng.uniform(0.0, 360.0),
                        rng.uniform(-30.0, 30.0) / 3600.0,
                        rng.uniform(-4.0, 4.0),
                    )
                )
        self._cache_key: tuple[int, int, bool, int] | None = None
        self._cache: tuple[Satellite, ...] = ()

    def view(
        self, t_s: float, *, used: int, tracking: bool, snr_penalty_db: int = 0
    ) -> tuple[Satellite, ...]:
        """Satellites in view at ``t_s``, the ``used`` strongest usable ones flagged.

        The geometry is evaluated once per whole second, as a receiver's GSV is; the
        tuple is reused for the epochs in between. ``tracking=False`` (no signal at
        all) leaves every SNR empty and nothing used. Fewer satellites may be flagged
        than asked for when fewer are usable; at most twelve per constellation.
        """
        key = (math.floor(t_s), used, tracking, snr_penalty_db)
        if key != self._cache_key:
            self._cache = self._compute(key[0], used, tracking, snr_penalty_db)
            self._cache_key = key
        return self._cache

    def _compute(
        self, second: int, used: int, tracking: bool, snr_penalty_db: int
    ) -> tuple[Satellite, ...]:
        visible: list[tuple[_Pass, float, float, int | None]] = []
        angle = 2.0 * math.pi * second / SKY_PERIOD_S
        for p in self._passes:
            # Shifted down so a satellite spends about 37 % of its period above the
            # mask: 11-13 GPS satellites in view, as on a real open sky.
            elevation = (p.peak_deg + 30.0) * math.sin(p.phase_rad + angle) - 30.0
            if elevation < ELEVATION_MASK_DEG:
                continue
            azimuth = (p.azimuth0_deg + p.azimuth_rate_deg_s * second) % 360.0
            snr: int | None = None
            if tracking:
                strength = (
                    20.0
                    + 26.0 * math.sin(math.radians(elevation))
                    + p.snr_offset_db
                    - snr_penalty_db
                )
                snr = round(max(12.0, min(50.0, strength)))
            visible.append((p, elevation, azimuth, snr))

        chosen: set[tuple[str, int]] = set()
        per_system: dict[str, int] = {}
        usable = sorted(
            (v for v in visible if v[1] >= USE_MASK_DEG and v[3] is not None),
            key=lambda v: (-(v[3] or 0), v[0].system, v[0].prn),
        )
        for p, _, _, _ in usable:
            if len(chosen) >= used:
                break
            if per_system.get(p.system, 0) < MAX_IDS_PER_GSA:
                chosen.add((p.system, p.prn))
                per_system[p.system] = per_system.get(p.system, 0) + 1

        satellites = [
            Satellite(
                system=p.system,
                prn=p.prn,
                elevation_deg=round(elevation),
                azimuth_deg=round(azimuth) % 360,
                snr_db=snr,
                used=(p.system, p.prn) in chosen,
            )
            for p, elevation, azimuth, snr in visible
        ]
        satellites.sort(key=lambda s: (s.system != "GP", s.prn))
        return tuple(satellites)
