"""The durable outbox on real SQLite files: sequences, acks, the budget, failures.

The crash tests (kill -9 at random moments) are in tests/test_outbox_crash.py.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from firmware_agent.contract.topics import STREAMS
from firmware_agent.errors import AgentError, OutboxError, OutboxStorageError
from firmware_agent.uplink.outbox import THIN_MIN_WINDOW, Outbox, OutboxRecord

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fix_payload(i: int) -> bytes:
    """24 bytes that name fix ``i``, so a test can tell every stored fix apart."""
    return i.to_bytes(8, "little") * 3


def raw(path: Path) -> sqlite3.Connection:
    """A plain connection of our own, to look at the file behind the outbox's back."""
    return sqlite3.connect(path)


def integrity_ok(path: Path) -> bool:
    conn = raw(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox" / "outbox.db"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    with Outbox(db) as ob:
        yield ob


# -- sequence numbers ---------------------------------------------------------------------


def test_each_stream_counts_from_one(outbox: Outbox) -> None:
    assert [outbox.add("telemetry", b"t", created=T0) for _ in range(3)] == [1, 2, 3]
    assert outbox.add("events", b"e", created=T0) == 1
    assert outbox.add("pod", b"p", created=T0) == 1
    assert outbox.add("events", b"e", created=T0) == 2
    assert {s: outbox.last_seq(s) for s in STREAMS} == {"telemetry": 3, "events": 2, "pod": 1}
    assert outbox.counts() == {"telemetry": 3, "events": 2, "pod": 1}


def test_add_many_takes_consecutive_seqs(outbox: Outbox) -> None:
    outbox.add("telemetry", b"first", created=T0)
    seqs = outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(5)])
    assert seqs == [2, 3, 4, 5, 6]
    assert outbox.add_many("telemetry", []) == []
    assert outbox.last_seq("telemetry") == 6


def test_seqs_survive_reopening_and_are_never_reused(db: Path) -> None:
    with Outbox(db) as ob:
        for i in range(5):
            ob.add("pod", b"p%d" % i, created=at(i))
        assert ob.ack("pod", 5) == 5
        assert ob.counts()["pod"] == 0
    # Every record is gone, the number is not: a reused seq would be dropped by ingest
    # as a duplicate of the record it was first given to.
    with Outbox(db) as ob:
        assert ob.last_seq("pod") == 5
        assert ob.acked("pod") == 5
        assert ob.add("pod", b"p5", created=at(5)) == 6


def test_a_record_comes_back_as_stored(outbox: Outbox) -> None:
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2026, 11, 21, 11, 0, 3, 123_456, tzinfo=plus_two)
    outbox.add("events", b'{"type":"arrival"}', created=created)
    (record,) = outbox.pending("events")
    assert record == OutboxRecord(
        stream="events",
        seq=1,
        # The same instant, in UTC, kept to the millisecond.
        created=datetime(2026, 11, 21, 9, 0, 3, 123_000, tzinfo=UTC),
        payload=b'{"type":"arrival"}',
    )
    assert record.created.tzinfo is UTC


def test_pending_is_oldest_first_with_after_seq_and_limit(outbox: Outbox) -> None:
    outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(1, 11)])
    outbox.add("events", b"not telemetry", created=T0)
    assert [r.seq for r in outbox.pending("telemetry")] == list(range(1, 11))
    assert [r.seq for r in outbox.pending("telemetry", limit=3)] == [1, 2, 3]
    assert [r.seq for r in outbox.pending("telemetry", after_seq=7)] == [8, 9, 10]
    assert [r.seq for r in outbox.pending("telemetry", after_seq=8, limit=1)] == [9]
    assert outbox.pending("telemetry", after_seq=10) == []
    assert outbox.pending("telemetry", after_seq=2**80) == []
    assert [r.payload for r in outbox.pending("telemetry", limit=2)] == [
        fix_payload(1),
        fix_payload(2),
    ]
    assert outbox.pending("pod") == []


# -- acks ----------------------------------------------------------------------------------


def test_ack_deletes_exactly_up_to_its_seq(outbox: Outbox) -> None:
    outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(10)])
    outbox.add_many("events", [(b"e", T0)] * 4)
    assert outbox.ack("telemetry", 4) == 4
    assert [r.seq for r in outbox.pending("telemetry")] == [5, 6, 7, 8, 9, 10]
    assert outbox.acked("telemetry") == 4
    assert outbox.counts() == {"telemetry": 6, "events": 4, "pod": 0}  # other streams untouched
    assert outbox.ack("telemetry", 4) == 0  # a repeat (QoS 1 redelivery) is harmless
    assert outbox.ack("telemetry", 10) == 6
    assert outbox.pending("telemetry") == []
    assert outbox.last_seq("telemetry") == 10


@pytest.mark.parametrize(
    ("stream", "seq", "kind"),
    [
        ("telemetry", 11, "ack_beyond"),  # beyond the last seq handed out
        ("telemetry", 2**70, "ack_beyond"),  # beyond SQLite's integers, too
        ("telemetry", 2, "ack_backwards"),  # below the ack already applied
        ("telemetry", -1, "ack_invalid"),
        ("telemetry", True, "ack_invalid"),
        ("telemetry", 5.0, "ack_invalid"),
        ("telemetry", "7", "ack_invalid"),
        ("telemetry", None, "ack_invalid"),
        ("status", 5, "ack_invalid"),
        ("", 5, "ack_invalid"),
        (None, 5, "ack_invalid"),
        (["telemetry"], 5, "ack_invalid"),
    ],
)
def test_hostile_acks_are_ignored_and_counted(
    outbox: Outbox, stream: object, seq: object, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(10)])
    assert outbox.ack("telemetry", 3) == 3
    before = outbox.pending("telemetry", limit=100)
    with caplog.at_level(logging.WARNING, logger="firmware_agent.uplink.outbox"):
        assert outbox.ack(stream, seq) == 0
        assert outbox.ack(stream, seq) == 0
    assert outbox.pending("telemetry", limit=100) == before
    assert outbox.acked("telemetry") == 3
    stats = outbox.stats()
    assert stats[kind] == 2
    assert sum(stats[k] for k in ("ack_beyond", "ack_backwards", "ack_invalid")) == 2
    # Logged once, not once per ack: a flood of bad acks must not fill the card.
    assert len([r for r in caplog.records if kind in r.getMessage()]) == 1


# -- what callers get wrong ----------------------------------------------------------------


@pytest.mark.parametrize("stream", ["status", "Telemetry", "", "pods"])
def test_an_unknown_stream_is_refused(outbox: Outbox, stream: str) -> None:
    with pytest.raises(OutboxError, match="unknown stream"):
        outbox.add(stream, b"x", created=T0)
    with pytest.raises(OutboxError, match="unknown stream"):
        outbox.pending(stream)
    with pytest.raises(OutboxError, match="unknown stream"):
        outbox.last_seq(stream)


def test_bad_arguments_are_refused_and_nothing_is_stored(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="timezone-aware"):
        outbox.add("events", b"x", created=datetime(2026, 11, 21, 9, 0))
    with pytest.raises(OutboxError, match="must be bytes"):
        outbox.add("events", "text", created=T0)  # type: ignore[arg-type]
    with pytest.raises(OutboxError, match="timezone-aware"):
        outbox.add_many("events", [(b"ok", T0), (b"bad", datetime(2026, 1, 1))])
    with pytest.raises(OutboxError, match="limit"):
        outbox.pending("events", limit=0)
    assert outbox.last_seq("events") == 0
    assert outbox.counts()["events"] == 0
    with pytest.raises(OutboxError, match="budget_bytes"):
        Outbox(outbox.path, budget_bytes=0)


def test_a_closed_outbox_says_so(db: Path) -> None:
    ob = Outbox(db)
    ob.close()
    ob.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        ob.add("pod", b"p", created=T0)
    with pytest.raises(OutboxError, match="closed"):
        ob.counts()


def test_errors_belong_to_the_agent_tree() -> None:
    assert issubclass(OutboxError, AgentError)
    assert issubclass(OutboxStorageError, OutboxError)
    assert issubclass(OutboxStorageError, OSError)


# -- durability settings -------------------------------------------------------------------


def test_durability_pragmas_are_in_effect(outbox: Outbox, db: Path) -> None:
    # kill -9 cannot show what a power cut does: the kernel still writes the page cache
    # out for a killed process. What protects commits from a power cut is that the WAL
    # is fsynced at every commit, which synchronous=FULL (2) does and NORMAL (1) does
    # not; so the test checks the setting is really in effect on the outbox's own
    # connection (synchronous is per connection, not stored in the file).
    assert outbox.pragmas() == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "secure_delete": 2,  # FAST
    }
    other = raw(db)  # WAL mode is a property of the file, seen by anyone
    try:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()


def test_only_the_agent_can_read_the_files(outbox: Outbox, db: Path) -> None:
    outbox.add("telemetry", fix_payload(1), created=T0)  # positions: personal data
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        assert (db.with_name(name).stat().st_mode & 0o777) == 0o600, name
    assert (db.parent.stat().st_mode & 0o777) == 0o700


def test_usable_from_another_thread_than_the_one_that_opened_it(outbox: Outbox) -> None:
    # The uplink opens the outbox, then hands every call to one worker thread.
    opened_in = threading.get_ident()
    with ThreadPoolExecutor(max_workers=1) as worker:
        seq = worker.submit(outbox.add, "pod", b"p", created=T0).result()
        records = worker.submit(outbox.pending, "pod").result()
        assert worker.submit(threading.get_ident).result() != opened_in
        assert worker.submit(outbox.ack, "pod", seq).result() == 1
    assert seq == 1
    assert [r.seq for r in records] == [1]
    assert outbox.counts()["pod"] == 0


# -- the budget ----------------------------------------------------------------------------

BUDGET = 2 * 1024 * 1024


def fill(outbox: Outbox, batches: int) -> tuple[int, int]:
    """1000 fixes per batch (fix i created at second i), 5 events and a POD after each."""
    events = pods = 0
    for b in range(batches):
        first = b * 1000 + 1
        fixes = [(fix_payload(i), at(i)) for i in range(first, first + 1000)]
        assert outbox.add_many("telemetry", fixes) == list(range(first, first + 1000))
        batch = [(b"event %d " % (events + k) * 20, at(first)) for k in range(1, 6)]
        assert outbox.add_many("events", batch) == list(range(events + 1, events + 6))
        events += 5
        pods += 1
        assert outbox.add("pod", b"pod %d " % pods * 200, created=at(first)) == pods
    return events, pods


def test_the_budget_thins_telemetry_and_never_drops_an_event_or_pod(db: Path) -> None:
    batches = 120  # 120,000 fixes: four times what 2 MB holds
    with Outbox(db, budget_bytes=BUDGET) as ob:
        events, pods = fill(ob, batches)
        stats = ob.stats()
        # Within the budget, and not far under it: thinning stops once it is met.
        assert 0.8 * BUDGET <= stats["used_bytes"] <= BUDGET
        assert stats["thinned"] > 0
        assert stats["evicted"] == stats["over_budget"] == 0
        assert [r.seq for r in ob.pending("events", limit=10**6)] == list(range(1, events + 1))
        assert [r.seq for r in ob.pending("pod", limit=10**6)] == list(range(1, pods + 1))
        kept = ob.pending("telemetry", limit=10**6)
        assert stats["thinned"] == batches * 1000 - len(kept)
        assert ob.counts() == {"telemetry": len(kept), "events": events, "pod": pods}
    assert db.stat().st_size <= 1.1 * BUDGET  # closed: the WAL is checkpointed away

    # Thinning moved records around; every fix still has its own bytes and time.
    for record in kept:
        assert record.payload == fix_payload(record.seq)
        assert record.created == at(record.seq)
    seqs = [r.seq for r in kept]
    last = batches * 1000
    # The newer half of what is pending is untouched: the newest fixes, at full rate.
    newer = seqs[len(seqs) // 2 :]
    assert newer == list(range(last - len(newer) + 1, last + 1))
    # The older half is thinned evenly, oldest first, not erased: the very first fix
    # (the start of the outage) is still there, and every twentieth of the track too.
    assert seqs[0] == 1
    per_slice = Counter((seq - 1) * 20 // last for seq in seqs)
    assert min(per_slice[i] for i in range(20)) >= 50, per_slice


def test_past_the_budget_pods_are_still_accepted_and_counted(db: Path) -> None:
    with Outbox(db, budget_bytes=128 * 1024) as ob:
        ob.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(1, 2001)])
        pod = b"x" * 2000
        for i in range(1, 201):  # 400 KB of PODs into a 128 KB budget
            assert ob.add("pod", pod, created=at(i)) == i
        stats = ob.stats()
        assert ob.counts() == {"telemetry": 0, "events": 0, "pod": 200}
        assert stats["thinned"] + stats["evicted"] == 2000
        assert stats["evicted"] > 0
        assert stats["over_budget"] > 0
        assert stats["used_bytes"] > 128 * 1024
        assert [r.payload for r in ob.pending("pod", limit=1000)] == [pod] * 200
    with Outbox(db, budget_bytes=128 * 1024) as ob:  # the counters persist
        assert ob.stats()["over_budget"] == stats["over_budget"]


def test_a_tiny_budget_still_ends_each_thinning_and_keeps_the_newest(db: Path) -> None:
    # Room for a few hundred fixes: passes run down to the minimum window and stop.
    with Outbox(db, budget_bytes=64 * 1024) as ob:
        for first in range(1, THIN_MIN_WINDOW * 40, 25):
            ob.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(first, first + 25)])
        last = ob.last_seq("telemetry")
        kept = [r.seq for r in ob.pending("telemetry", limit=10**6)]
        assert ob.stats()["used_bytes"] <= 64 * 1024
        assert ob.stats()["evicted"] == 0
        assert kept[0] == 1
        assert kept[-THIN_MIN_WINDOW:] == list(range(last - THIN_MIN_WINDOW + 1, last + 1))


# -- failures ------------------------------------------------------------------------------


def test_a_full_disk_refuses_the_record_and_keeps_the_earlier_ones(outbox: Outbox) -> None:
    outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(1, 1001)])
    outbox.add_many("pod", [(b"pod %d" % i * 50, at(i)) for i in range(1, 11)])
    # A real "database or disk is full" from SQLite, without a small filesystem:
    # forbid the file to grow past its current pages (a per-connection limit, so on
    # the outbox's own connection).
    conn = outbox._conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = b"y" * 8000  # needs new pages
    with pytest.raises(OutboxStorageError, match="full") as caught:
        outbox.add("pod", big, created=at(11))
    assert caught.value.sqlite_errorname == "SQLITE_FULL"
    assert "not stored" in str(caught.value)
    with pytest.raises(OutboxStorageError):
        outbox.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(1001, 3001)])

    # Nothing half-done: no record, no number used, the earlier records intact.
    assert outbox.last_seq("pod") == 10
    assert outbox.last_seq("telemetry") == 1000
    assert outbox.counts() == {"telemetry": 1000, "events": 0, "pod": 10}
    assert [r.payload for r in outbox.pending("pod")] == [b"pod %d" % i * 50 for i in range(1, 11)]
    assert outbox.ack("telemetry", 10) == 10  # deleting still works on a full disk

    # Space comes back: the caller's retry gets the next number, with no gap.
    conn.execute(f"PRAGMA max_page_count = {pages * 100}")
    assert outbox.add("pod", big, created=at(11)) == 11
    assert integrity_ok(outbox.path)


# Run in a child process: the file size limit applies to every file the process
# writes, and pytest's own capture files must not hit it.
WRITE_FAILURE_CHILD = """
import json, resource, signal, sys
from datetime import UTC, datetime
from firmware_agent.errors import OutboxStorageError
from firmware_agent.uplink.outbox import Outbox

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
now = datetime.now(UTC)
ob = Outbox(sys.argv[1])
ob.add_many("pod", [(b"pod" * 30, now)] * 10)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
batches = 0
try:
    while batches < 10_000:
        ob.add_many("telemetry", [(bytes(24), now)] * 100)
        batches += 1
    error = None
except OutboxStorageError as err:
    error = err.sqlite_errorname
last = ob.last_seq("telemetry")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
retry = ob.add("pod", b"retried", created=now)
ob.close()
print(json.dumps({"error": error, "batches": batches, "last": last, "retry": retry}))
"""


def test_a_failing_write_refuses_the_record_and_keeps_the_earlier_ones(db: Path) -> None:
    # The operating system refuses a write for real (a file size limit: EFBIG), which
    # SQLite reports as an I/O error in the middle of a commit.
    done = subprocess.run(
        [sys.executable, "-c", WRITE_FAILURE_CHILD, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["error"] is not None
    assert report["error"].startswith(("SQLITE_IOERR", "SQLITE_FULL"))
    assert report["batches"] > 0
    assert report["last"] == report["batches"] * 100  # the failed batch took no numbers
    assert report["retry"] == 11
    assert integrity_ok(db)
    with Outbox(db) as ob:
        assert ob.counts() == {"telemetry": report["last"], "events": 0, "pod": 11}
        assert [r.seq for r in ob.pending("telemetry", limit=10**6)] == list(
            range(1, report["last"] + 1)
        )


def corrupt_files(db: Path) -> list[Path]:
    """The damaged databases moved aside (not their -wal and -shm companions)."""
    found = db.parent.glob(db.name + ".corrupt-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def test_a_corrupt_file_is_moved_aside_not_deleted(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Outbox(db) as ob:
        ob.add_many("pod", [(b"p", T0)] * 3)
    garbage = b"this is not an SQLite header, it is garbage".ljust(100, b"!")
    with db.open("r+b") as f:
        f.write(garbage)
    damaged = db.read_bytes()

    with caplog.at_level(logging.ERROR), Outbox(db) as ob:
        assert ob.stats()["corrupt_recovered"] == 1
        # SQLite cannot open it at all; the page scan still finds the three PODs, and
        # numbering goes on after them (the high-water mark says 3).
        assert ob.counts() == {"telemetry": 0, "events": 0, "pod": 3}
        assert ob.add("pod", b"new", created=T0) == 4
        assert [r.payload for r in ob.pending("pod")] == [b"p", b"p", b"p", b"new"]
    (aside,) = corrupt_files(db)
    assert aside.read_bytes() == damaged  # kept byte for byte, for a human
    assert any("damaged" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert integrity_ok(db)


def test_a_damaged_page_costs_only_its_own_records(db: Path) -> None:
    with Outbox(db) as ob:
        ob.add_many("telemetry", [(fix_payload(i), at(i)) for i in range(1, 3001)])
        ob.add_many("events", [(b"event %d" % i * 10, at(i)) for i in range(1, 301)])
        ob.add_many("pod", [(b"pod %d" % i * 30, at(i)) for i in range(1, 101)])
        assert ob.ack("telemetry", 100) == 100
    conn = raw(db)
    try:
        leaves = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'record' AND pagetype = 'leaf' ORDER BY path"
        ).fetchall()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    except sqlite3.OperationalError:
        pytest.skip("this SQLite is built without the dbstat table")
    finally:
        conn.close()
    (page,) = leaves[len(leaves) // 4]  # a page of telemetry, a quarter of the way in
    with db.open("r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xff" * page_size)

    with Outbox(db) as ob:
        stats = ob.stats()
        assert stats["corrupt_recovered"] == 1
        assert ob.counts()["events"] == 300
        assert ob.counts()["pod"] == 100
        telemetry = ob.pending("telemetry", limit=10**6)
        assert 2900 - 200 < len(telemetry) < 2900
        assert stats["salvaged"] == len(telemetry) + 400
        assert all(r.payload == fix_payload(r.seq) for r in telemetry)
        assert telemetry[0].seq == 101
        # The counters were readable: numbering goes on where it was.
        assert ob.acked("telemetry") == 100
        assert ob.add("telemetry", fix_payload(3001), created=at(3001)) == 3001
        assert ob.add("pod", b"p", created=T0) == 101
    assert len(corrupt_files(db)) == 1


def test_a_recovery_cut_short_is_finished_at_the_next_open(db: Path, tmp_path: Path) -> None:
    # The state a crash can leave: the salvaged database complete under .salvaged,
    # the damaged file (with a stray -wal) still in place, a half-built .salvage.
    with Outbox(tmp_path / "salvaged.db") as good:
        good.add_many("pod", [(b"kept", T0)] * 4)
    db.parent.mkdir()
    (tmp_path / "salvaged.db").rename(db.with_name("outbox.db.salvaged"))
    db.write_bytes(b"damaged" * 1000)
    db.with_name("outbox.db-wal").write_bytes(b"stray wal")
    db.with_name("outbox.db.salvage").write_bytes(b"half built")

    with Outbox(db) as ob:
        assert ob.counts()["pod"] == 4
        assert ob.add("pod", b"next", created=T0) == 5
    assert not db.with_name("outbox.db.salvaged").exists()
    assert not db.with_name("outbox.db.salvage").exists()
    (aside,) = corrupt_files(db)
    assert aside.read_bytes() == b"damaged" * 1000
    assert aside.with_name(aside.name + "-wal").read_bytes() == b"stray wal"


def test_a_newer_schema_is_left_untouched(db: Path) -> None:
    with Outbox(db) as ob:
        ob.add("pod", b"p", created=T0)
    conn = raw(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(db)
    assert db.read_bytes() == before
    assert corrupt_files(db) == []


def test_an_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(OutboxStorageError):
        Outbox(tmp_path / "a-file" / "outbox.db")  # its "directory" is a file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_directory_is_a_storage_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutboxStorageError):
            Outbox(tmp_path / "outbox.db")
    finally:
        tmp_path.chmod(0o700)
