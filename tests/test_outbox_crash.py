"""The outbox under ``kill -9`` at random moments: nothing it reported stored is lost.

A child process (tests/outbox_writer.py) adds records in a loop and prints each seq
once ``add`` has returned; the test SIGKILLs it after a random delay, then checks the
file with a plain SQLite connection and reopens the outbox, again and again on the
same file. What kill -9 cannot show, a power cut, rests on synchronous=FULL; see
tests/test_outbox.py::test_durability_pragmas_are_in_effect.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_agent.contract.topics import STREAMS
from firmware_agent.uplink.outbox import Outbox
from tests.outbox_writer import payload

WRITER = Path(__file__).with_name("outbox_writer.py")
MAX_BATCH = 200  # the writer's largest add_many
READY_TIMEOUT_S = 30.0

pytestmark = pytest.mark.slow


def run_and_kill(
    db: Path, budget_bytes: int, seed: int, mode: str, delay_s: float, *, wait_ready: bool
) -> dict[str, dict[int, str]]:
    """Run the writer, SIGKILL it ``delay_s`` after it is ready (or after its start).

    Returns what it reported stored: stream -> seq -> payload tag.
    """
    out_path = db.with_name(f"writer-{seed}.out")
    err_path = db.with_name(f"writer-{seed}.err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), str(budget_bytes), str(seed), mode],
            stdout=out,
            stderr=err,
        )
    try:
        if wait_ready:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not out_path.read_bytes().startswith(b"ready\n"):
                assert child.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "the writer never got ready"
                time.sleep(0.002)
        time.sleep(delay_s)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # Killed, not dead of its own accord (a traceback would be in its stderr).
    assert child.returncode == -signal.SIGKILL, err_path.read_text()
    reported: dict[str, dict[int, str]] = defaultdict(dict)
    for line in out_path.read_text().splitlines(keepends=True):
        if line.endswith("\n") and line != "ready\n":  # a torn last line promised nothing
            stream, seq, tag = line.split()
            assert int(seq) not in reported[stream], f"{stream} seq {seq} handed out twice"
            reported[stream][int(seq)] = tag
    return reported


def integrity(db: Path) -> str:
    """SQLite's full integrity check, on our own connection, before the outbox opens it.

    The outbox would quietly move a damaged file aside: this must see it first.
    """
    conn = sqlite3.connect(db)
    try:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def test_kill_9_never_loses_or_tears_a_record_it_reported_stored(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    rng = random.Random(20261121)
    promised: dict[str, dict[int, str]] = {s: {} for s in STREAMS}  # seq -> tag, unacked
    last_seen = dict.fromkeys(STREAMS, 0)
    acked = dict.fromkeys(STREAMS, 0)
    runs = 24
    for run in range(runs):
        # Most runs are killed while adding; every fourth may die while still starting
        # up and opening (or creating) the file.
        wait_ready = run % 4 != 3
        delay_s = rng.uniform(0.02, 0.3) if wait_ready else rng.uniform(0.0, 0.25)
        reported = run_and_kill(db, 100 * 1024 * 1024, run, "mixed", delay_s, wait_ready=wait_ready)
        if not db.exists():
            continue  # killed before it created the file
        assert integrity(db) == "ok", f"run {run}"

        with Outbox(db) as ob:
            assert ob.stats()["corrupt_recovered"] == 0
            for stream in STREAMS:
                mine = reported.get(stream, {})
                last = ob.last_seq(stream)
                if mine:
                    # Numbering went on from where the last run left it, with no gap ...
                    assert min(mine) == last_seen[stream] + 1, (run, stream)
                    # ... and at most the one add it was killed in is stored but unreported.
                    assert max(mine) <= last <= max(mine) + MAX_BATCH, (run, stream)
                else:
                    assert last_seen[stream] <= last <= last_seen[stream] + MAX_BATCH
                promised[stream].update(mine)
                assert ob.acked(stream) == acked[stream]

                records = ob.pending(stream, limit=10**6)
                # Every seq from the last ack to the last handed out, once, in order.
                assert [r.seq for r in records] == list(range(acked[stream] + 1, last + 1))
                assert ob.counts()[stream] == len(records)
                stored = {r.seq: r.payload for r in records}
                for seq, tag in promised[stream].items():
                    assert stored[seq] == payload(stream, tag), (run, stream, seq)

                # Ingest acks part of it; that too must survive the next kill.
                if last > acked[stream] and rng.random() < 0.5:
                    upto = rng.randint(acked[stream], last)
                    assert ob.ack(stream, upto) == upto - acked[stream]
                    acked[stream] = upto
                    promised[stream] = {s: t for s, t in promised[stream].items() if s > upto}
                last_seen[stream] = last

    with Outbox(db) as ob:  # and after all that, numbering simply goes on
        for stream in STREAMS:
            assert ob.add(stream, b"after the storm", created=datetime.now(UTC)) == (
                last_seen[stream] + 1
            )
    assert sum(len(p) for p in promised.values()) > 0, "the writer never got to write"


def test_kill_9_while_thinning_keeps_the_outbox_consistent(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    budget = 192 * 1024  # a few thousand fixes: nearly every batch sets off thinning
    rng = random.Random(4)
    pods: dict[int, str] = {}
    newest_fix = 0
    for run in range(10):
        reported = run_and_kill(
            db, budget, 1000 + run, "telemetry", rng.uniform(0.02, 0.3), wait_ready=True
        )
        assert integrity(db) == "ok", f"run {run}"
        pods.update(reported.get("pod", {}))
        fixes = reported.get("telemetry", {})
        with Outbox(db, budget_bytes=budget) as ob:
            stats = ob.stats()
            assert stats["corrupt_recovered"] == 0
            assert stats["used_bytes"] <= budget
            # PODs are never thinned: all there, in order, intact.
            records = ob.pending("pod", limit=10**6)
            assert [r.seq for r in records] == list(range(1, ob.last_seq("pod") + 1))
            assert {r.seq: r.payload for r in records if r.seq in pods} == {
                seq: payload("pod", tag) for seq, tag in pods.items()
            }
            # Telemetry: holes allowed, but each fix that is left holds its own bytes,
            # the pending count is exact, and the newest reported fix is there.
            kept = ob.pending("telemetry", limit=10**6)
            assert ob.counts()["telemetry"] == len(kept)
            assert all(0 < r.seq <= ob.last_seq("telemetry") for r in kept)
            for record in kept:
                if record.seq in fixes:
                    assert record.payload == payload("telemetry", fixes[record.seq])
            if fixes:
                newest_fix = max(fixes)
                assert newest_fix in {r.seq for r in kept}
    with Outbox(db, budget_bytes=budget) as ob:
        assert ob.stats()["thinned"] > 0, "the budget was never reached"
        assert newest_fix > 0
