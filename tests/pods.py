"""POD claim fields for the pod tests: what the van pipeline passes to PodChain.issue."""

from __future__ import annotations

from typing import Any

from firmware_agent.pod import chain as podchain


def fields(n: int) -> dict[str, Any]:
    return {
        "parcel": f"00106141412345{n:04d}",
        "raw": f"]C10010614141234{n:04d}",
        "stop_id": f"S{n:03d}",
        "route_id": "R-20261121-van-0007",
        "time": "2026-11-21T09:14:02.000Z",
        "scan_time": "2026-11-21T09:14:03.250Z",
        "lat": 48.137,
        "lon": 11.575,
        "hacc_m": 3.5,
        "verdict": "inside",
        "distance_m": 0.0,
        "source": "serial",
    }


def pod_record(pod: podchain.Pod, **changes: Any) -> dict[str, Any]:
    """The van's pod message for ``pod`` (firmware_agent/van.py), with ``changes``."""
    c = pod.claims
    record = {
        "type": "pod",
        "time": c["scan_time"],
        "stop_id": c["stop_id"],
        "parcel": c["parcel"],
        "seq": c["seq"],
        "verdict": c["verdict"],
        "distance_m": c["distance_m"],
        "jws": pod.token,
    }
    if "outcome" in c:  # a POD signed before outcomes has none, nor has its record
        record["outcome"] = c["outcome"]
    return record | changes
