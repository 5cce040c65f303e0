"""Offline replay: the whole van pipeline over recorded input, as fast as the CPU allows.

Time comes from the fixes (GNSS time), never from the wall clock: scans are merged in
by their timestamps, each one handled just before the first fix at or after it. Every
message the van would publish is passed to ``emit`` in order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.scan.types import Scan
from firmware_agent.van import Message, VanPipeline

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
    emit: Callable[[Message], None],
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

    def send(messages: list[Message]) -> None:
        for message in messages:
            counts[message["type"]] += 1
            emit(message)

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
    summary.scans = len(pending)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def json_line(message: Message) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n"
