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

from firmware_agent.contract.fix import Fix
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


class ScanMerge:
    """Scans merged into a stream of fixes by time, as replay and ``fleet-agent run``
    on a file (:class:`firmware_agent.sources.fix.NmeaFile`) both do: each scan is
    handled just before the first fix with a time at or after it; the ones after the
    last fix, at the end (:meth:`rest`). Pure: no I/O, no clock."""

    __slots__ = ("_next", "pending")

    def __init__(self, scans: Iterable[Scan]) -> None:
        self.pending = sorted(scans, key=lambda s: s.time)
        self._next = 0

    def __len__(self) -> int:
        return len(self.pending)

    def before(self, fix: Fix) -> list[Scan]:
        """The scans to handle before ``fix`` (none for a fix without a time)."""
        if fix.time is None:
            return []
        start = self._next
        while self._next < len(self.pending) and self.pending[self._next].time <= fix.time:
            self._next += 1
        return self.pending[start : self._next]

    def rest(self) -> list[Scan]:
        """The scans left once the fixes are done."""
        start, self._next = self._next, len(self.pending)
        return self.pending[start:]


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
    merge = ScanMerge(scans)
    summary = ReplaySummary()
    counts = summary.messages
    started = time.perf_counter()

    def send(records: list[Record]) -> None:
        for record in records:
            counts[record.type] += 1
            emit(record)

    def fixes(chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            for fix in decoder.feed(chunk) if chunk else decoder.flush():
                summary.fixes += 1
                for scan in merge.before(fix):
                    send(pipeline.on_scan(scan))
                send(pipeline.on_fix(fix))

    fixes(iter(lambda: nmea.read(_READ_CHUNK), b""))
    fixes([b""])  # flush the decoder's last epoch
    for scan in merge.rest():
        send(pipeline.on_scan(scan))
    send(pipeline.flush())  # the attempt still waiting for a reason card
    summary.scans = len(merge)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def json_line(record: Record) -> str:
    """A record as one line of ``fleet-agent replay``'s output (docs/replay-output.md):
    its JSON, a telemetry point's with ``"type": "telemetry"`` in front."""
    obj = record.to_json()
    if isinstance(record, TelemetryPoint):
        obj = {"type": record.type, **obj}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
