"""Big manifests as a dispatcher's planner makes them, for the size limits of the
manifest downlink (issue 13, finding 2)."""

from __future__ import annotations

import random
from typing import Any

from simulator.labels import random_carrier_code, random_sscc


def day_doc(
    n_stops: int, n_vertices: int, *, device_id: str = "van-0001", seed: int = 1
) -> dict[str, Any]:
    """A realistic big day: stops over a 30 x 30 km city, 1-3 parcels each (70 % SSCCs),
    60 % with a window, a postcode; a route of ``n_vertices`` wandering ~25 m apart
    (none: no route)."""
    rng = random.Random(seed)
    stops = []
    for i in range(n_stops):
        entry: dict[str, Any] = {
            "id": f"S{i:05d}",
            "lat": round(48.1 + rng.uniform(-0.15, 0.15), 7),
            "lon": round(11.55 + rng.uniform(-0.2, 0.2), 7),
            "radius_m": rng.choice([25, 30, 40]),
            "type": rng.choice(["house", "apartment", "business", "locker"]),
            "parcels": [
                random_sscc(rng) if rng.random() < 0.7 else random_carrier_code(rng)
                for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))
            ],
            "postcode": rng.choice(["80331", "80333", "80335"]),
        }
        if rng.random() < 0.6:
            entry["window_start"] = "2026-11-21T09:00:00Z"
            entry["window_end"] = "2026-11-21T11:00:00Z"
        stops.append(entry)
    doc: dict[str, Any] = {
        "route_id": f"R-big-{n_stops}",
        "device_id": device_id,
        "date": "2026-11-21",
        "stops": stops,
    }
    if n_vertices:
        lat, lon, coordinates = 48.1, 11.55, []
        for _ in range(n_vertices):
            lat += rng.uniform(-0.0002, 0.0002)
            lon += rng.uniform(-0.0003, 0.0003)
            coordinates.append([round(lon, 7), round(lat, 7)])
        doc["route"] = {"type": "LineString", "coordinates": coordinates}
    return doc
