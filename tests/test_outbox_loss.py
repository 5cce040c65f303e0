"""The outbox when its files are lost or damaged, and the agent's commits on a full disk
(issue 13, findings 4 and 5): sequence numbers are never handed out twice, whatever
happens to ``outbox.db``; what can be read of a damaged file is salvaged; a full disk
holds records in memory instead of killing the agent.

The end-to-end versions, with the real ``fleet-agent run``, are in
tests/test_e2e_disk.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_agent.contract.topics import STREAMS
from firmware_agent.errors import OutboxStorageError
from firmware_agent.pod.chain import ChainState
from firmware_agent.pod.state import ChainStateStore, encode_state
from firmware_agent.uplink.holdback import Committer, Held, HoldLimits
from firmware_agent.uplink.outbox import META_POD_CHAIN, Outbox
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.uplink.seqmark import SEQ_BLOCK, load_mark
from firmware_agent.uplink.sqlitefile import inspect_wal, scan_pages, wal_tail_pages
from tests.idle_agent import idle_agent

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fix(i: int) -> bytes:
    return i.to_bytes(8, "little") * 3


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox" / "outbox.db"


# A process that commits records one transaction each and dies without closing the
# outbox (no checkpoint, no clean close: the -wal holds the commits, the mark is ahead).
CRASHING_WRITER = """
import os, sys
from datetime import UTC, datetime
from firmware_agent.uplink.outbox import Outbox
ob = Outbox(sys.argv[1])
now = datetime.now(UTC)
for i in range(1, int(sys.argv[2]) + 1):
    ob.add("telemetry", i.to_bytes(8, "little") * 3, created=now)
for i in range(1, int(sys.argv[3]) + 1):
    ob.add("pod", b'{"type":"pod"}' * 40, created=now)
print(ob.last_seq("telemetry"), ob.last_seq("pod"), flush=True)
os._exit(0)
"""


def crash_after(db: Path, fixes: int, pods: int) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(db), str(fixes), str(pods)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    telemetry, pod = map(int, done.stdout.split())
    return telemetry, pod


# -- the high-water mark ---------------------------------------------------------------------


def test_the_mark_reserves_ahead_and_shrinks_at_a_clean_close(db: Path) -> None:
    with Outbox(db) as ob:
        ob.add_many("telemetry", [(fix(i), at(i)) for i in range(1, 11)])
        mark = load_mark(ob.mark_path)
        assert mark is not None
        assert mark.reserved("telemetry") == 10 + SEQ_BLOCK
        assert mark.reserved("pod") == 0
    mark = load_mark(db.with_name("outbox.db.seqmark"))
    assert mark is not None
    assert (mark.reserved("telemetry"), mark.committed("telemetry")) == (10, 10)


def test_a_lost_file_after_a_crash_numbers_on_above_the_mark(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry, pods = crash_after(db, 20, 3)
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR), Outbox(db) as ob:
        # Nothing is reused: numbering goes on above the whole reservation (made at
        # the first record: seq 1 and a block beyond).
        assert ob.last_seq("telemetry") == 1 + SEQ_BLOCK > telemetry
        assert ob.add("telemetry", fix(21), created=at(21)) > telemetry
        assert ob.add("pod", b"p", created=at(21)) > pods
        # The seqs skipped are void: settled, nothing pending below them.
        assert ob.acked("telemetry") == ob.last_seq("telemetry") - 1
        assert ob.stats()["seq_resets"] == 1
        reset = ob.last_reset()
        assert reset is not None
        assert reset["reason"] == "the file was missing"
        assert reset["from"] == dict.fromkeys(STREAMS, 0)
    assert any("above the high-water mark" in r.getMessage() for r in caplog.records)


def test_garbage_in_the_wal_is_detected_and_no_seq_is_reused(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: 16 KB of garbage in the middle of the -wal; SQLite discards every
    commit from there on (by design): telemetry's last seq fell back (291 -> ~150),
    silently, and the next records took seqs ingest already had."""
    telemetry, _ = crash_after(db, 291, 0)
    wal = db.with_name("outbox.db-wal")
    size = wal.stat().st_size
    with wal.open("r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(16 * 1024))
    with caplog.at_level(logging.ERROR), Outbox(db) as ob:
        stats = ob.stats()
        assert stats["wal_discarded"] > 100  # SQLite did drop the commits past the garbage
        assert stats["seq_resets"] == 1
        # Their records are back, read from the frames SQLite dropped (each a whole
        # page image), every one as it was stored; numbering goes on above the mark.
        kept = ob.pending("telemetry", limit=1000)
        assert [r.seq for r in kept] == list(range(1, telemetry + 1))
        assert all(r.payload == fix(r.seq) for r in kept)
        assert ob.add("telemetry", fix(292), created=at(292)) > telemetry
        reset = ob.last_reset()
        assert reset is not None
        assert "write-ahead log" in str(reset["reason"])
        assert "restored" in str(reset["reason"])
        # Acks of them still work; past the last, the rest of the block is void: settled.
        assert ob.ack("telemetry", telemetry) == telemetry
        assert ob.acked("telemetry") == ob.last_seq("telemetry") - 1
    assert any("discarded" in r.getMessage() for r in caplog.records)


def test_a_clean_wal_after_a_crash_is_no_reset(db: Path) -> None:
    telemetry, pods = crash_after(db, 50, 2)
    with Outbox(db) as ob:
        assert ob.stats()["seq_resets"] == 0
        assert ob.last_seq("telemetry") == telemetry
        assert ob.add("pod", b"p", created=T0) == pods + 1


# -- salvage ---------------------------------------------------------------------------------


def test_16_kb_of_garbage_over_the_root_page_salvages_the_rest(db: Path) -> None:
    """The finding: 16 KB of garbage mid-file salvaged 0 of 350 pending records, because
    it hit the record table's root page and SQLite reads rows only through the b-tree.
    The page scan reads every leaf page that survived."""
    stored: dict[tuple[str, int], bytes] = {}
    with Outbox(db) as ob:
        for stream, n, make in (
            ("telemetry", 291, fix),
            ("events", 30, lambda i: b'{"type":"event %d"}' % i * 10),
            ("pod", 29, lambda i: b'{"type":"pod %d"}' % i * 60),
        ):
            seqs = ob.add_many(stream, [(make(i), at(i)) for i in range(1, n + 1)])
            stored.update(
                {(stream, s): make(i) for s, i in zip(seqs, range(1, n + 1), strict=True)}
            )
    conn = sqlite3.connect(db)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'record'").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * 16 * 1024)

    with Outbox(db) as ob:
        found = {(s, r.seq): r.payload for s in STREAMS for r in ob.pending(s, limit=1000)}
        assert ob.stats()["salvaged"] == len(found)
        # Four pages of ~20 went, the root among them: most records come back, each
        # exactly as stored, and numbering goes on after the last.
        assert len(found) >= 0.6 * len(stored), len(found)
        assert all(stored[key] == payload for key, payload in found.items())
        assert ob.add("telemetry", fix(292), created=at(292)) == 292
        assert ob.add("pod", b"p", created=T0) == 30
    print(f"\n16 KB over the root page: {len(found)} of {len(stored)} records salvaged")


def test_salvage_leaves_out_what_was_acknowledged(db: Path) -> None:
    with Outbox(db) as ob:
        ob.add_many("events", [(b"event %d" % i * 10, at(i)) for i in range(1, 201)])
        ob.ack("events", 150)
    with db.open("r+b") as f:
        f.write(bytes(100))
    with Outbox(db) as ob:
        assert ob.acked("events") == 150
        assert [r.seq for r in ob.pending("events", limit=1000)] == list(range(151, 201))


# -- the agent's commits on a full disk ---------------------------------------------------------


def _limit_pages(outbox: AsyncOutbox, pages: int) -> None:
    conn = outbox.outbox._conn
    assert conn is not None
    conn.execute(f"PRAGMA max_page_count = {pages}")


def test_the_committer_holds_records_while_the_disk_is_full_and_catches_up(db: Path) -> None:
    limits = HoldLimits(pods=3, telemetry=40, retry_initial_s=0.01, retry_max_s=0.05)

    async def main() -> None:
        async with AsyncOutbox(db, reserve_bytes=0) as outbox:
            stored: dict[str, int] = dict.fromkeys(STREAMS, 0)
            changes: list[bool] = []
            committer = Committer(outbox, limits=limits, stored=stored)
            committer._on_change = lambda: changes.append(committer.degraded)
            retry = asyncio.create_task(committer.run())
            await committer.commit([Held("telemetry", fix(0), T0)])
            (pages,) = outbox.outbox._conn.execute("PRAGMA page_count").fetchone()  # type: ignore[union-attr]
            _limit_pages(outbox, pages)
            big = b"x" * 5000  # needs a new page
            for i in range(1, 101):
                await committer.commit([Held("telemetry", fix(i) + big, at(i))])
            for i in range(3):
                assert committer.can_sign()
                chain = encode_state(ChainState(seq=i + 1, prev="0" * 64))
                await committer.commit([Held("pod", big + b"%d" % i, at(i), chain)])
            # Three PODs held: no fourth may be signed.
            assert not committer.can_sign()
            committer.refuse_scan("parcel X")
            health = committer.health()
            assert health["outbox_degraded"] is True
            assert health["scans_refused"] == 1
            assert health["outbox_held_thinned"] > 0  # 100 fixes held, at most 40 kept
            assert committer.held()["telemetry"] <= 40
            assert stored == {"telemetry": 1, "events": 0, "pod": 0}
            # Space returns: everything held is stored, in order, PODs first.
            _limit_pages(outbox, 1_000_000)
            async with asyncio.timeout(5):
                await committer.flushed()
            assert not committer.degraded
            assert committer.can_sign()
            assert stored["pod"] == 3
            pods = await outbox.pending("pod")
            assert [r.payload for r in pods] == [big + b"%d" % i for i in range(3)]
            assert await outbox.meta(META_POD_CHAIN) == encode_state(
                ChainState(seq=3, prev="0" * 64)
            )
            fixes = await outbox.pending("telemetry", limit=1000)
            numbers = [int.from_bytes(r.payload[:8], "little") for r in fixes]
            assert numbers == sorted(numbers)
            assert numbers[-1] == 100  # the newest kept at full rate
            assert changes == [True, False]
            retry.cancel()

    asyncio.run(main())


def test_the_agent_recovers_its_pod_chain_from_the_outbox_when_the_file_is_behind(
    tmp_path: Path,
) -> None:
    """The chain state file could not be saved (a full disk) after its POD was stored
    and acknowledged: the state kept with the POD in the outbox wins at start, so the
    chain never forks."""
    agent = idle_agent(tmp_path)
    state_dir = tmp_path / "state"
    ahead = ChainState(seq=7, prev="ab" * 32)
    ChainStateStore(state_dir / "pod-chain.json").save(ChainState(seq=5, prev="cd" * 32))

    async def main() -> ChainState:
        async with AsyncOutbox(state_dir / "outbox.db") as outbox:
            await outbox.add_many("pod", [(b"{}", T0)], meta={META_POD_CHAIN: encode_state(ahead)})
            await outbox.ack("pod", 1)
            chain = await agent.store.chain(outbox, "van-1")
            return chain.state

    assert asyncio.run(main()) == ahead
    assert ChainStateStore(state_dir / "pod-chain.json").load() == ahead


# -- the reserve on a real full disk ---------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """A file that takes every block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512):
            while True:
                try:
                    os.write(fd, bytes(size))
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_on_a_full_disk_the_reserve_keeps_pods_and_telemetry_waits(tiny_disk: Path) -> None:
    db = tiny_disk / "outbox.db"
    with Outbox(db, reserve_bytes=256 * 1024) as ob:
        ob.add_many("telemetry", [(fix(i), at(i)) for i in range(1, 101)])
        filler = fill(tiny_disk)
        with pytest.raises(OutboxStorageError):
            ob.add_many("telemetry", [(fix(i) * 40, at(i)) for i in range(101, 400)])
        # A POD goes into the space the reserve frees, durably.
        seqs = ob.add_many("pod", [(b"pod %d" % i * 100, at(i)) for i in range(50)])
        assert seqs == list(range(1, 51))
        assert ob.stats()["reserve_released"] == 1
        assert ob.stats()["reserve_free"] == 0
        # Telemetry does not eat that space: refused while the reserve cannot come back.
        with pytest.raises(OutboxStorageError, match="reserve"):
            ob.add("telemetry", fix(101), created=at(101))
        filler.unlink()
        assert ob.add("telemetry", fix(101), created=at(101)) == 101
        assert ob.stats()["reserve_free"] == 1
    assert json.loads(db.with_name("outbox.db.seqmark").read_bytes())["streams"]["pod"] == {
        "reserved": 50,
        "committed": 50,
    }


def test_an_outbox_opens_on_a_full_disk_in_the_space_of_its_reserve(tiny_disk: Path) -> None:
    """Opening needs room too (SQLite's -shm file): a restarted agent on a full disk
    would otherwise fail at once, and systemd would restart it in a loop."""
    db = tiny_disk / "outbox.db"
    with Outbox(db, reserve_bytes=256 * 1024) as ob:
        ob.add_many("telemetry", [(fix(i), at(i)) for i in range(1, 101)])
    filler = fill(tiny_disk)
    with Outbox(db, reserve_bytes=256 * 1024) as ob:
        assert ob.stats()["reserve_free"] == 0
        assert ob.add("pod", b"p" * 200, created=T0) == 1
        with pytest.raises(OutboxStorageError):
            ob.add("telemetry", fix(101), created=at(101))
        filler.unlink()
        assert ob.add("telemetry", fix(101), created=at(101)) == 101


def test_reading_damaged_files_never_raises(db: Path, tmp_path: Path) -> None:
    """The page scan and the log inspection read whatever a damaged card holds."""
    crash_after(db, 300, 5)
    good = db.read_bytes()
    wal = db.with_name("outbox.db-wal").read_bytes()
    rng = random.Random(13)
    target = tmp_path / "fuzz" / "outbox.db"
    target.parent.mkdir()
    for i in range(60):
        data, log = bytearray(good), bytearray(wal)
        for blob in (data, log):
            for _ in range(rng.randint(1, 40)):
                at_ = rng.randrange(len(blob))
                blob[at_ : at_ + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
        if i % 10 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 20_000)))
        target.write_bytes(bytes(data))
        target.with_name("outbox.db-wal").write_bytes(bytes(log))
        found: list[tuple[int, int]] = []
        scan_pages(target, lambda sid, seq, *_, f=found: f.append((sid, seq)), stream_names=STREAMS)
        inspect_wal(target.with_name("outbox.db-wal"))
        wal_tail_pages(bytes(log), rng.randint(0, 100))
        assert all(0 <= sid < len(STREAMS) and seq >= 1 for sid, seq in found)
