"""The scan log (SCANS): one JSON object per scan, as docs/scan-log.md describes.

``{"time": "2026-11-21T09:14:03.250Z", "raw": "]C100106141412345678908", "source": "serial"}``

Offline replay reads it, ``fleet-agent scan watch`` and the simulator write it. A bad
line is counted as a fault and skipped, never raised: one corrupt line must not lose
the rest of a driver's day.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Final

from firmware_agent.contract.times import format_utc
from firmware_agent.faults import FaultCounter
from firmware_agent.scan.types import SOURCES, Scan

DEFAULT_SOURCE: Final = "serial"
_KEYS: Final = ("time", "raw", "source")


def read_scan_log(lines: Iterable[str], faults: FaultCounter) -> Iterator[Scan]:
    """The scans of a SCANS file, in file order.

    Blank lines and lines starting with ``#`` are skipped. A line that is not a JSON
    object, or whose ``time``/``raw``/``source`` is missing or malformed, is counted
    in ``faults`` (kinds ``scan_log_bad_json``, ``scan_log_not_object``,
    ``scan_log_no_time``, ``scan_log_bad_time``, ``scan_log_naive_time``,
    ``scan_log_bad_raw``, ``scan_log_bad_source``; the example names the line number)
    and skipped. Times with an offset are converted to UTC; naive times are a fault,
    as nobody can tell which zone they meant. Keys other than those three are ignored.
    """
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        scan = _parse_line(text, line_no, faults)
        if scan is not None:
            yield scan


def format_scan_line(scan: Scan, **extra: object) -> str:
    """One SCANS line (no trailing newline): time, raw, source, then ``extra`` keys.

    ``extra`` must be JSON-serialisable and must not reuse the three scan keys.
    Non-ASCII and control characters are escaped (``\\u001d``), so the line is
    plain ASCII whatever the scanner sent.
    """
    clash = set(extra).intersection(_KEYS)
    if clash:
        raise ValueError(f"extra keys clash with the scan's own: {sorted(clash)}")
    record: dict[str, object] = {
        "time": format_utc(scan.time),
        "raw": scan.raw,
        "source": scan.source,
    }
    record.update(extra)
    return json.dumps(record, ensure_ascii=True)


def _parse_line(text: str, line_no: int, faults: FaultCounter) -> Scan | None:
    def fault(kind: str) -> None:
        faults.add(kind, f"line {line_no}: {text}")

    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        fault("scan_log_bad_json")
        return None
    if not isinstance(record, dict):
        fault("scan_log_not_object")
        return None
    time_text = record.get("time")
    if time_text is None:
        fault("scan_log_no_time")
        return None
    if not isinstance(time_text, str):
        fault("scan_log_bad_time")
        return None
    try:
        time = datetime.fromisoformat(time_text)
    except ValueError:
        fault("scan_log_bad_time")
        return None
    if time.tzinfo is None or time.utcoffset() is None:
        fault("scan_log_naive_time")
        return None
    try:
        time = time.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: before the first time Python holds
        fault("scan_log_bad_time")
        return None
    raw = record.get("raw")
    if not isinstance(raw, str):
        fault("scan_log_bad_raw")
        return None
    source = record.get("source", DEFAULT_SOURCE)
    if source not in SOURCES:
        fault("scan_log_bad_source")
        return None
    return Scan(time=time, raw=raw, source=source)
