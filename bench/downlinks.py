"""What a manifest or config downlink costs the van (issue 13, findings 1 and 2).

Part 1, the geofence indexes: for geometry a downlink can ask for (the report's 62-byte
config, a 100 km straight segment, a planet-spanning route, a dense 50,000-vertex route,
10,000 stops), the cells the index lists, the time to build it and its peak memory
(tracemalloc), against the baseline measured in the same run: the bounding-box grid the
index was before (each fence's and segment's bounding box enumerated), whose cell count
is computed without listing them, and, with ``--baseline-build``, built where that count
is under 20 million (the others would take gigabytes).

Part 2, the payload: JSON and gzip sizes of realistic manifests (``tests/bigday.py``)
against the shipped broker's limit, and the cost of adopting the largest: off the event
loop (inflate, parse, index, ETA plan) and on it (the switch).

    .venv/bin/python bench/downlinks.py [--baseline-build]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.manifest import (
    MAX_MANIFEST_PAYLOAD_BYTES,
    MAX_ROUTE_VERTICES,
    MAX_STOPS,
    ManifestError,
    encode_manifest_payload,
    parse_manifest,
)
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.geofence import GeofenceConfig
from firmware_agent.geofence.index import Plane, RouteGrid, Shape, StopGrid
from firmware_agent.manifest_store import prepare_manifest
from firmware_agent.pod.chain import ChainState, PodChain
from firmware_agent.van import VanPipeline

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests/bigday.py: the manifests the tests send
    sys.path.insert(0, str(REPO))

from tests.bigday import day_doc  # noqa: E402

Point = tuple[float, float]
BASELINE_BUILD_MAX_CELLS = 20_000_000


def _span(lo: float, hi: float, cell_m: float) -> int:
    return math.floor(hi / cell_m) - math.floor(lo / cell_m) + 1


def box_cells_stops(shapes: Sequence[Shape], cell_m: float, reach_m: float) -> int:
    return sum(
        _span(s.cx - s.radius_m - reach_m, s.cx + s.radius_m + reach_m, cell_m)
        * _span(s.cy - s.radius_m - reach_m, s.cy + s.radius_m + reach_m, cell_m)
        for s in shapes
    )


def box_cells_route(points: Sequence[Point], reach_m: float) -> int:
    c = max(reach_m, 1.0)
    return sum(
        _span(min(a[0], b[0]) - reach_m, max(a[0], b[0]) + reach_m, c)
        * _span(min(a[1], b[1]) - reach_m, max(a[1], b[1]) + reach_m, c)
        for a, b in itertools.pairwise(points)
    )


def baseline_build_route(points: Sequence[Point], reach_m: float) -> int:
    """The bounding-box route grid as it was; returns the entries it listed."""
    c = max(reach_m, 1.0)
    cells: dict[tuple[int, int], list[int]] = {}
    for i in range(1, len(points)):
        (ax, ay), (bx, by) = points[i - 1], points[i]
        x0, x1 = min(ax, bx) - reach_m, max(ax, bx) + reach_m
        y0, y1 = min(ay, by) - reach_m, max(ay, by) + reach_m
        for ix in range(math.floor(x0 / c), math.floor(x1 / c) + 1):
            for iy in range(math.floor(y0 / c), math.floor(y1 / c) + 1):
                cells.setdefault((ix, iy), []).append(i)
    return sum(map(len, cells.values()))


def measured(build: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MB of Python allocations) of ``build()``: timed on its
    own, then built again under tracemalloc (which slows it) for the memory."""
    gc.collect()
    started = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - started
    del result
    gc.collect()
    tracemalloc.start()
    try:
        result = build()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, seconds, peak / 1e6


def index_cases() -> list[tuple[str, str, Any]]:
    plane = Plane.at(48.137, 11.575)
    wiggle = [(i * 10.0, 300 * math.sin(i / 50)) for i in range(MAX_ROUTE_VERTICES)]
    diagonal = [plane.xy(48.137, 11.575), plane.xy(48.137 + 0.636, 11.575 + 0.955)]
    planet = [plane.xy(-90.0, -180.0), plane.xy(90.0, 180.0)]
    one_stop = [Shape(0.0, 0.0, 30.0, None)]
    city = [
        Shape(((i * 7919) % 40_000) - 20_000.0, ((i * 104_729) % 40_000) - 20_000.0, 35.0, None)
        for i in range(MAX_STOPS)
    ]
    return [
        ("config index_cell_m 0.001, one stop", "stops", (one_stop, 0.001, 20.0)),
        ("config border_m 1e12, one stop", "stops", (one_stop, 250.0, 1e12)),
        ("route: one 100 km straight segment", "route", (diagonal, 75.0)),
        ("route: [-180,-90] to [180,90] (refused now)", "route", (planet, 75.0)),
        (f"route: {MAX_ROUTE_VERTICES:,} vertices 10 m apart", "route", (wiggle, 75.0)),
        (f"{MAX_STOPS:,} stops, 250 m cells", "stops", (city, 250.0, 20.0)),
    ]


def part_1(baseline_build: bool) -> None:
    print("Part 1: the geofence indexes")
    print(
        "| geometry | baseline cells (bounding boxes) | baseline build | now: entries "
        "| cell m | build s | peak MB | baseline / now cells |"
    )
    print("|---|--:|---|--:|--:|--:|--:|--:|")
    for name, kind, args in index_cases():
        grid: StopGrid | RouteGrid
        base_build = "-"
        if kind == "stops":
            shapes, cell_m, reach_m = args
            base = box_cells_stops(shapes, cell_m, reach_m)
            grid, seconds, peak = measured(
                lambda: StopGrid(shapes, cell_m=cell_m, reach_m=reach_m)  # noqa: B023
            )
        else:
            points, reach_m = args
            base = box_cells_route(points, reach_m)
            grid, seconds, peak = measured(lambda: RouteGrid(points, reach_m=reach_m))  # noqa: B023
            if baseline_build and base <= BASELINE_BUILD_MAX_CELLS:
                _, b_s, b_peak = measured(
                    lambda: baseline_build_route(points, reach_m)  # noqa: B023
                )
                base_build = f"{b_s:.2f} s, {b_peak:,.0f} MB"
        print(
            f"| {name} | {base:,} | {base_build} | {grid.entries:,} | {grid.cell_m:,.0f} | "
            f"{seconds:.3f} | {peak:,.1f} | {base / max(grid.entries, 1):,.0f} |"
        )


def part_2() -> None:
    print()
    print(f"Part 2: manifest payloads (limit {MAX_MANIFEST_PAYLOAD_BYTES:,} bytes as sent)")
    print("| stops | route vertices | JSON bytes | gzip bytes | sent as | fits |")
    print("|--:|--:|--:|--:|---|---|")
    largest = b""
    for n_stops, n_vertices in [(1200, 4999), (2000, 4999), (MAX_STOPS, MAX_ROUTE_VERTICES)]:
        manifest = parse_manifest(day_doc(n_stops, n_vertices))
        plain = encode_manifest_payload(manifest, compress=False, limit=1 << 30)
        packed = encode_manifest_payload(manifest, compress=True, limit=1 << 30)
        sizes = f"| {n_stops:,} | {n_vertices:,} | {len(plain):,} | {len(packed):,} |"
        try:
            sent = encode_manifest_payload(manifest)  # as publish-manifest sends it
        except ManifestError:
            print(f"{sizes} - | NO |")
            continue
        form = "gzip" if sent[:2] == b"\x1f\x8b" else "JSON"
        print(f"{sizes} {form} | yes |")
        largest = sent
    first = parse_manifest(day_doc(10, 100, seed=2))
    van = VanPipeline(
        first,
        pods=PodChain("van-0001", Ed25519PrivateKey.generate(), ChainState()),
        eta=EtaPredictor.baseline("bench"),
    )
    prepared, off_s, off_peak = measured(
        lambda: prepare_manifest(largest, device_id="van-0001", geofence=GeofenceConfig(), eta=True)
    )
    started = time.perf_counter()
    van.load_manifest(prepared.manifest, prepared.index, prepared.plan)
    on_s = time.perf_counter() - started
    started = time.perf_counter()
    van.load_manifest(first)
    van.load_manifest(prepared.manifest)  # baseline: everything built on the loop
    base_s = time.perf_counter() - started
    print()
    print(
        f"adopting the largest: off the loop {off_s:.2f} s (peak {off_peak:,.0f} MB), "
        f"on the loop {on_s * 1e3:.0f} ms; baseline (all on the loop) {base_s:.2f} s, "
        f"ratio {base_s / on_s:,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline-build",
        action="store_true",
        help="also build the bounding-box route grid where it lists under 20 million cells",
    )
    args = parser.parse_args()
    part_1(args.baseline_build)
    part_2()


if __name__ == "__main__":
    main()
