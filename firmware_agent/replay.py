"""Offline replay: the whole van pipeline over recorded input, as fast as the CPU allows.

Time comes from the fixes (GNSS time), never from the wall clock: scans are merged in
by their timestamps, each one handled just before the first fix at or after it. Every
record the van would publish is passed to ``emit`` in order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from firmware_agent.contract.records import Record, TelemetryPoint
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.scan.types import Scan
from firmware_agent.van import VanPipeline

_READ_CHUNK = 1 << 20


@dataclass(slots=True)
class ReplaySummary:
    fixes: int = 0
    scans: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    def line(self) -> str:
        rate = self.fixes / self.elapsed_s if self.elapsed_s > 0 else 0.0
        kinds = " ".join(f"{k}={v}" for k, v in sorted(self.messages.items()))
        return (
            f"replay: {self.fixes} fixes, {self.scans} scans in {self.elapsed_s:.2f} s "
            f"({rate:,.0f} fixes/s); messages: {kinds or 'none'}"
        )


def replay(
    nmea: BinaryIO,
    scans: Iterable[Scan],
    pipeline: VanPipeline,
    emit: Callable[[Record], None],
    *,
    decoder: GnssDecoder | None = None,
) -> ReplaySummary:
    """Run ``pipeline`` over an NMEA byte stream and a scan log; returns counts."""
    decoder = decoder or GnssDecoder()
    pending = sorted(scans, key=lambda s: s.time)
    summary = ReplaySummary()
    counts = summary.messages
    next_scan = 0
    started = time.perf_counter()

    def send(records: list[Record]) -> None:
        for record in records:
            counts[record.type] += 1
            emit(record)

    def fixes(chunks: Iterable[bytes]) -> None:
        nonlocal next_scan
        for chunk in chunks:
            for fix in decoder.feed(chunk) if chunk else decoder.flush():
                summary.fixes += 1
                if fix.time is not None:
                    while next_scan < len(pending) and pending[next_scan].time <= fix.time:
                        send(pipeline.on_scan(pending[next_scan]))
                        next_scan += 1
                send(pipeline.on_fix(fix))

    fixes(iter(lambda: nmea.read(_READ_CHUNK), b""))
    fixes([b""])  # flush the decoder's last epoch
    for scan in pending[next_scan:]:
        send(pipeline.on_scan(scan))
    send(pipeline.flush())  # the attempt still waiting for a reason card
    summary.scans = len(pending)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def json_line(record: Record) -> str:
    """A record as one line of ``fleet-agent replay``'s output (docs/replay-output.md):
    its JSON, a telemetry point's with ``"type": "telemetry"`` in front."""
    obj = record.to_json()
    if isinstance(record, TelemetryPoint):
        obj = {"type": record.type, **obj}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
