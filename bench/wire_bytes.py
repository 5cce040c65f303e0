"""Telemetry bytes on the wire: our binary batches against one JSON message per fix.

Simulated 1 Hz delivery days (``simulator.scenario``: driving, traffic lights, stops
with dwells, GNSS noise, a tunnel), rendered to NMEA and decoded by the agent's own
``GnssDecoder``. Fixes are then selected by ``TelemetrySampler`` (smart sampling) and
batched as the uplink does: a batch is sent when it holds ``--batch-fixes`` fixes or
its first fix is ``--batch-s`` old by the next fix's time. Measured, in bytes of MQTT
payload per fix:

- ours: ``encode_batch`` of the selected fixes;
- JSON per fix: the point's JSON (``fleet-agent replay``'s telemetry line, compact),
  one message per selected fix, the naive uplink;
- JSON batch: the same messages as one JSON array per batch;
- ours, unsampled: every fix with a position (the whole 1 Hz stream), batched alike.

    .venv/bin/python bench/wire_bytes.py [--days 5] [--first-seed 1] [--stops 15]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from firmware_agent.contract.fix import Fix
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.telemetry import decode_batch, encode_batch
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.replay import json_line
from firmware_agent.telemetry import TelemetrySampler
from simulator.nmea_writer import epoch_bytes
from simulator.scenario import ScenarioConfig, generate

DEVICE_ID = "van-0001"


@dataclass
class Tally:
    fixes: int = 0
    messages: int = 0
    payload_bytes: int = 0

    def add(self, fixes: int, payload: bytes) -> None:
        self.fixes += fixes
        self.messages += 1
        self.payload_bytes += len(payload)

    @property
    def per_fix(self) -> float:
        return self.payload_bytes / self.fixes

    def row(self, name: str, hours: float) -> str:
        return (
            f"| {name:<26} | {self.fixes:7d} | {self.messages:8d} | {self.per_fix:9.1f} | "
            f"{self.payload_bytes / hours / 1e3:11.1f} |"
        )


HEADER = (
    "| telemetry uplink           |   fixes | messages | bytes/fix | kB/van-hour |\n"
    "|----------------------------|--------:|---------:|----------:|------------:|"
)


def day_fixes(seed: int, stops: int) -> list[Fix]:
    config = ScenarioConfig(seed=seed, n_stops=stops, rate_hz=1)
    scenario = generate(config)
    nmea = b"".join(epoch_bytes(e, config.talker) for e in scenario.epochs())
    decoder = GnssDecoder()
    return decoder.feed(nmea) + decoder.flush()


def batches(
    records: Sequence[tuple[Fix, TelemetryPoint]], max_fixes: int, max_age_s: float
) -> Iterator[list[tuple[Fix, TelemetryPoint]]]:
    """Cut the stream as an uplink would: by count, or when the first fix is too old."""
    batch: list[tuple[Fix, TelemetryPoint]] = []
    for item in records:
        if batch and (
            len(batch) >= max_fixes
            or (item[1].time - batch[0][1].time).total_seconds() >= max_age_s
        ):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def measure(
    records: Sequence[tuple[Fix, TelemetryPoint]],
    first_seq: int,
    ours: Tally,
    json_batch: Tally | None,
    max_fixes: int,
    max_age_s: float,
) -> int:
    """Encode ``records`` in batches into the tallies; returns the next free seq."""
    seq = first_seq
    for batch in batches(records, max_fixes, max_age_s):
        numbered = [(seq + i, rec) for i, (_, rec) in enumerate(batch)]
        payload = encode_batch(DEVICE_ID, seq, numbered, historical=False)
        # Measured bytes only count if they carry the fixes back.
        assert list(decode_batch(payload).points) == numbered
        ours.add(len(batch), payload)
        if json_batch is not None:
            lines = [json_line(point).rstrip() for _, point in batch]
            json_batch.add(len(batch), ("[" + ",".join(lines) + "]").encode())
        seq += len(batch)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1, help="seeds first..first+N-1")
    parser.add_argument("--stops", type=int, default=15)
    parser.add_argument("--batch-fixes", type=int, default=60)
    parser.add_argument("--batch-s", type=float, default=60.0)
    args = parser.parse_args()

    ours, json_each, json_batch, unsampled = Tally(), Tally(), Tally(), Tally()
    all_fixes = 0
    span_s = 0.0
    for seed in range(args.first_seed, args.first_seed + args.days):
        fixes = day_fixes(seed, args.stops)
        all_fixes += len(fixes)
        sampler = TelemetrySampler()
        everything: list[tuple[Fix, TelemetryPoint]] = []
        selected: list[tuple[Fix, TelemetryPoint]] = []
        for fix in fixes:
            rec = TelemetryPoint.from_fix(fix)
            if rec is None:
                continue
            everything.append((fix, rec))
            if sampler.select(fix):
                selected.append((fix, rec))
        for _, point in selected:
            json_each.add(1, json_line(point).rstrip().encode())
        span_s += (everything[-1][1].time - everything[0][1].time).total_seconds()
        measure(selected, 1, ours, json_batch, args.batch_fixes, args.batch_s)
        measure(everything, 1, unsampled, None, args.batch_fixes, args.batch_s)
        print(
            f"  seed {seed:3d}: {len(fixes)} fixes at 1 Hz, {len(selected)} selected",
            file=sys.stderr,
        )

    hours = span_s / 3600
    print(
        f"{args.days} simulated days, {args.stops} stops each: {all_fixes} fixes at 1 Hz over "
        f"{hours:.1f} h; batches of up to {args.batch_fixes} fixes or {args.batch_s:g} s"
    )
    print(HEADER)
    print(ours.row("ours, sampled", hours))
    print(json_each.row("JSON per fix, sampled", hours))
    print(json_batch.row("JSON array batch, sampled", hours))
    print(unsampled.row("ours, all fixes (1 Hz)", hours))
    print(f"JSON per fix / ours: {json_each.per_fix / ours.per_fix:.1f}x bytes per fix")
    print(
        f"whole 1 Hz stream in our batches / sampled JSON per fix: "
        f"{unsampled.payload_bytes / json_each.payload_bytes:.2f}x the bytes"
    )


if __name__ == "__main__":
    main()
