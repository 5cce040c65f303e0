"""A receiver standing still: NMEA at its configured rate, and UBX if it is a u-blox.

For setting up a receiver (``fleet-agent gnss configure``) against the simulator:
:class:`StaticReceiver` sends one burst of RMC, VTG, GGA and GSA per navigation epoch
for a fixed position, at the rate its :class:`~simulator.ubx_responder.UbxResponder`
holds (1 Hz without one, like a receiver that is not u-blox), and only the sentences
the responder has enabled. Changing the rate over UBX changes how often bursts come,
from the next epoch.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from simulator.nmea_writer import format_date, format_lat, format_lon, format_time, sentence
from simulator.receiver import Sink
from simulator.ubx_responder import UbxResponder

DEFAULT_LAT = 48.137
DEFAULT_LON = 11.575
_MAX_NAP_S = 0.05


class StaticReceiver:
    """``await receiver.run()`` sends epochs into ``sink`` until cancelled.

    ``epochs`` counts the bursts sent (written or dropped by the sink).
    """

    def __init__(
        self,
        sink: Sink,
        responder: UbxResponder | None = None,
        *,
        lat: float = DEFAULT_LAT,
        lon: float = DEFAULT_LON,
        talker: str = "GN",
    ) -> None:
        self.sink = sink
        self.responder = responder
        self.lat = lat
        self.lon = lon
        self.talker = talker
        self.epochs = 0

    def epoch(self, now: datetime) -> bytes:
        """One epoch's sentences at ``now`` (UTC), those the receiver has enabled."""
        enabled = None if self.responder is None else self.responder.state.nmea
        t, d, k = format_time(now), format_date(now), self.talker
        lat, ns = format_lat(self.lat)
        lon, ew = format_lon(self.lon)
        bodies = {
            "RMC": f"{k}RMC,{t},A,{lat},{ns},{lon},{ew},0.000,,{d},,,A",
            "VTG": f"{k}VTG,,T,,M,0.000,N,0.000,K,A",
            "GGA": f"{k}GGA,{t},{lat},{ns},{lon},{ew},1,09,0.90,520.0,M,47.0,M,,",
            "GSA": f"{k}GSA,A,3,02,05,12,13,15,18,20,25,29,,,,1.60,0.90,1.32",
        }
        return "".join(
            sentence(body)
            for name, body in bodies.items()
            if enabled is None or enabled.get(name, 0) > 0
        ).encode("ascii")

    @property
    def period_s(self) -> float:
        return 1.0 if self.responder is None else self.responder.state.period_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_s: float | None = None
        while True:
            now_s = loop.time()
            period_s = self.period_s
            if last_s is None or now_s >= last_s + period_s:
                self.sink.write(self.epoch(datetime.now(UTC)))
                self.epochs += 1
                # Paced on the loop's clock (the rate holds whatever a write costs),
                # starting afresh after a stall rather than bursting to catch up.
                last_s = (
                    now_s
                    if last_s is None or now_s > last_s + 2 * period_s
                    else (last_s + period_s)
                )
                continue
            # Short naps: a rate set over UBX takes effect from the next epoch, not
            # after a whole old period.
            await asyncio.sleep(min(last_s + period_s - now_s, _MAX_NAP_S))
