"""Outbox capacity and speed: a million 29-byte telemetry points, against raw SQLite.

Figures, on a fresh outbox in ``--dir`` (a temporary directory by default; point it at
the SD card to measure the card):

- fill: ``--records`` telemetry points (``records.encode_point``, 29 bytes each, a van
  driving at 1 Hz) in ``add_many`` transactions of ``--batch``: the database's size
  (file and used pages), bytes per fix, records/s;
- durable commits: ``--commits`` single ``add`` calls, each its own fsynced transaction
  (``synchronous=FULL``), records/s: what the agent gets when it stores one record at a
  time;
- drain: ``pending(limit=--batch)`` then ``ack`` of the last seq, until empty,
  records/s;
- baseline: the same payloads ``executemany``'d into a plain rowid table
  ``(id INTEGER PRIMARY KEY, payload BLOB)`` in transactions of the same size, WAL and
  ``synchronous=FULL`` too, and the ratio of our fill rate to it.

    .venv/bin/python bench/outbox_capacity.py [--records 1000000] [--batch 1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from firmware_agent.contract.records import STORED_POINT_SIZE, TelemetryPoint, encode_point
from firmware_agent.uplink.outbox import Outbox

T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
MB = 1e6


def batches(records: int, batch: int) -> Iterator[list[tuple[bytes, datetime]]]:
    """Packed fixes of a van going round a 5 km circle at 12 m/s, one per second."""
    for start in range(0, records, batch):
        out = []
        for i in range(start, min(start + batch, records)):
            angle = i * 12.0 / 5000.0
            when = T0 + timedelta(seconds=i)
            point = TelemetryPoint(
                time=when,
                lat=52.37 + 0.0072 * math.sin(angle),
                lon=4.89 + 0.0118 * math.cos(angle),
                alt_m=12.5,
                speed_mps=12.0,
                course_deg=math.degrees(angle) % 360.0,
                mode=3,
                quality=1,
                hdop=0.9,
                sats_used=11,
            )
            out.append((encode_point(point), when))
        yield out


def fill(outbox: Outbox, records: int, batch: int) -> float:
    """Seconds spent inside ``add_many`` (building the payloads is not counted)."""
    spent = 0.0
    for items in batches(records, batch):
        started = time.perf_counter()
        outbox.add_many("telemetry", items)
        spent += time.perf_counter() - started
    return spent


def durable_adds(outbox: Outbox, n: int) -> float:
    payload = next(batches(1, 1))[0][0]
    started = time.perf_counter()
    for i in range(n):
        outbox.add("events", payload, created=T0 + timedelta(seconds=i))
    return time.perf_counter() - started


def drain(outbox: Outbox, batch: int) -> tuple[float, int]:
    started = time.perf_counter()
    drained = 0
    while records := outbox.pending("telemetry", limit=batch):
        drained += outbox.ack("telemetry", records[-1].seq)
    return time.perf_counter() - started, drained


def baseline(path: Path, records: int, batch: int) -> tuple[float, int]:
    """Seconds for raw executemany into a rowid table, and the file's size."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    spent = 0.0
    for items in batches(records, batch):
        rows = [(payload,) for payload, _ in items]
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (payload) VALUES (?)", rows)
        conn.execute("COMMIT")
        spent += time.perf_counter() - started
    conn.close()
    return spent, path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    assert STORED_POINT_SIZE == 29
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "outbox.db"
        with Outbox(db) as outbox:
            fill_s = fill(outbox, args.records, args.batch)
            stats = outbox.stats()
            assert stats["thinned"] == stats["evicted"] == 0, "the budget was reached"
            assert outbox.counts()["telemetry"] == args.records
        file_bytes = db.stat().st_size  # closed: the WAL is checkpointed into the file
        started = time.perf_counter()
        with Outbox(db) as outbox:  # includes the quick_check of the full file
            open_s = time.perf_counter() - started
            commit_s = durable_adds(outbox, args.commits)
            drain_s, drained = drain(outbox, args.batch)
            assert drained == args.records
        base_s, base_bytes = baseline(Path(tmp) / "baseline.db", args.records, args.batch)

    ours_rate = args.records / fill_s
    base_rate = args.records / base_s
    print(f"records                  {args.records:,} fixes of {STORED_POINT_SIZE} bytes")
    used_mb = stats["used_bytes"] / MB
    print(f"database file            {file_bytes / MB:.1f} MB (used {used_mb:.1f} MB)")
    print(f"bytes per fix            {file_bytes / args.records:.1f}")
    print(f"fill, add_many x{args.batch:<6}  {ours_rate:,.0f} records/s ({fill_s:.1f} s)")
    print(f"open + quick_check       {open_s:.2f} s")
    print(
        f"add(), one fsync each    {args.commits / commit_s:,.0f} records/s ({args.commits:,} adds)"
    )
    print(f"drain, pending + ack     {drained / drain_s:,.0f} records/s")
    print(
        f"baseline rowid table     {base_rate:,.0f} records/s, {base_bytes / MB:.1f} MB, "
        f"{base_bytes / args.records:.1f} bytes per fix"
    )
    print(f"ours / baseline          {ours_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
