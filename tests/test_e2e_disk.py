"""The van's data against its own disk, with the real ``fleet-agent run``, a private
Mosquitto and ingest (issue 13, findings 4 and 5).

- A full disk: the state directory on a 16 MB tmpfs, filled while the van drives and
  scans, and kept full by a greedy writer (so that even the outbox's reserve, once
  released, is taken), then freed. The agent must not die: it holds what the outbox
  refuses in memory, says so in its status, and catches up by itself once space is
  back; ingest then holds every record once and every POD in one chain. Needs root
  (``mount``); skipped otherwise.
- A corrupted outbox: the first 100 bytes of ``outbox.db`` zeroed after a fully
  acknowledged day, then the next day played. Numbering must go on from the
  high-water mark kept beside the file, so ingest takes every new record as new and
  the van drains.

Each prints what the van did and how long it took (pytest -s shows it).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import WorkerConfig
from firmware_agent.contract.envelope import decode_status
from firmware_agent.contract.topics import STREAMS
from tests.broker import Mosquitto
from tests.uplinkday import (
    DEVICE,
    EPOCH,
    FOREVER,
    Day,
    ObservedWorker,
    Watcher,
    agent_command,
    assert_exactly_once,
    dense_scans,
    make_day,
    outbox_state,
    prepare_agent_state,
    saved_chain_state,
    short_day,
    stored_pods,
)

pytestmark = pytest.mark.slow

DAY_S = 200
SPEED = 30.0  # the 200 s day in 7 s; the dense scans come 1.0 .. 4.2 s in
RUN_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    directory = tmp_path_factory.mktemp("diskday")
    return dense_scans(
        short_day(make_day(directory), directory / "short", seconds=DAY_S), directory
    )


def parcels(day: Day) -> int:
    return len(day.scans.read_text(encoding="utf-8").splitlines())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 16 MB tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class GreedyFiller:
    """Fills a filesystem to its last block and keeps it full (whatever is freed, it
    takes within milliseconds) until :meth:`free` deletes its file."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self._stop = threading.Event()
        self._full = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="filler", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._full.wait(10), "the disk never filled"

    def _fill(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096):
                chunk = bytes(size)
                while True:
                    try:
                        os.write(fd, chunk)
                    except OSError as err:
                        if err.errno != errno.ENOSPC:
                            raise
                        break
            self._full.set()
            chunk = bytes(4096)
            while not self._stop.is_set():
                try:
                    os.write(fd, chunk)
                except OSError:
                    time.sleep(0.002)
        finally:
            os.close(fd)

    def free(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink()


def statuses(watcher: Watcher) -> list[tuple[float, dict[str, Any]]]:
    """(receipt time, health) of every ``online`` status of the van, in order."""
    out = []
    for m in watcher.of("fleet", "status", DEVICE):
        if m.payload:
            status = decode_status(m.payload)
            if status.state == "online":
                out.append((m.at, status.health))
    return out


@pytest.mark.parametrize("when", ["while driving", "at start"])
def test_a_full_disk_holds_records_in_memory_and_recovers_by_itself(
    day: Day, tmp_path: Path, small_disk: Path, when: str
) -> None:
    """``while driving``: the disk fills 1.2 s into the run (among the scans) and is freed
    3 s later. ``at start``: the agent (re)starts on a disk already full, as systemd
    would restart it, and the disk is freed 2.5 s later."""
    state = small_disk / "van"
    public_key = prepare_agent_state(state, day)
    log_path = tmp_path / "agent.log"
    filler = GreedyFiller(small_disk)
    marks: dict[str, float] = {}

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                worker = ObservedWorker(store, WorkerConfig(port=broker.port, backoff_max_s=0.5))
                worker_task = asyncio.create_task(worker.run(), name="ingest")
                try:
                    await worker.connected.wait()
                    rc = await _run_with_full_disk(
                        state,
                        day,
                        broker.port,
                        log_path,
                        filler,
                        marks,
                        at_start=when == "at start",
                    )
                    await worker.idle()
                    await watcher.settle()
                finally:
                    worker_task.cancel()
                    await asyncio.gather(worker_task, return_exceptions=True)
                text = await asyncio.to_thread(log_path.read_text)
                assert rc == 0, text[-3000:]
                await _check_full_disk_day(store, state, public_key, watcher, text, marks)
                assert (await outbox_state(state))["pod"][0] == parcels(day)  # none refused

    asyncio.run(main())


async def _run_with_full_disk(
    state: Path,
    day: Day,
    port: int,
    log_path: Path,
    filler: GreedyFiller,
    marks: dict[str, float],
    *,
    at_start: bool,
) -> int:
    if at_start:
        marks["filled"] = time.monotonic()
        await asyncio.to_thread(filler.start)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *agent_command(state, day, port, speed=2 * SPEED if at_start else SPEED),
            "--exit-when-drained",
            stdout=log,
            stderr=log,
        )
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                if at_start:
                    await asyncio.sleep(2.5)
                else:
                    await asyncio.sleep(1.2)  # driving, the first scans coming
                    marks["filled"] = time.monotonic()
                    await asyncio.to_thread(filler.start)
                    await asyncio.sleep(3.0)  # full while a dozen parcels are scanned
                assert proc.returncode is None, "the agent died on the full disk"
                await asyncio.to_thread(filler.free)
                marks["freed"] = time.monotonic()
                return await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _check_full_disk_day(
    store: SqliteStore,
    state: Path,
    public_key: bytes,
    watcher: Watcher,
    text: str,
    marks: dict[str, float],
) -> None:
    outbox = await outbox_state(state)
    last_seqs = {s: last for s, (last, _, _) in outbox.items()}
    assert outbox == {s: (n, n, 0) for s, n in last_seqs.items()}  # drained
    await assert_exactly_once(
        store, last_seqs, public_key, watcher=watcher, chain_state=saved_chain_state(state)
    )
    assert (await store.counts()).quarantined == 0
    assert watcher.contract_failures() == []
    assert "Traceback" not in text
    healths = statuses(watcher)
    assert healths[-1][1]["outbox_degraded"] is False
    back = next(at for at, _ in healths if at > marks["freed"]) - marks["freed"]
    freed = marks["freed"] - marks["filled"]
    opened = re.search(r"outbox opened after ([0-9.]+) s", text)
    if opened is not None:  # it started on the full disk: the outbox could not open
        assert "cannot open the outbox" in text, text[-3000:]
        print(
            f"\nfull disk at start: the agent waited for its outbox ({opened[1]} s), "
            f"disk freed at +{freed:.1f} s, first status {back:.2f} s after; "
            f"committed {last_seqs}, all stored once"
        )
        return
    assert "outbox cannot store records" in text, text[-3000:]
    recovered = re.search(
        r"outbox storing records again after ([0-9.]+) s: ([0-9]+) records held", text
    )
    assert recovered is not None, text[-3000:]
    # The status said so while it lasted, and again when it was over.
    assert any(h.get("outbox_degraded") for _, h in healths), "no status said so"
    print(
        f"\nfull disk while driving: freed at +{freed:.1f} s; {recovered[2]} records held "
        f"in memory, stored again {back:.2f} s after space returned (outage "
        f"{recovered[1]} s by the agent's clock); committed {last_seqs}, all stored once"
    )


@pytest.mark.parametrize("damage", ["header zeroed", "file lost"])
def test_a_corrupted_outbox_after_an_acknowledged_day_loses_nothing_next_day(
    day: Day, tmp_path: Path, damage: str
) -> None:
    """``header zeroed``: the finding as reported (SQLite cannot open the file; the page
    scan still reads the counters). ``file lost``: nothing of it left (a card's fsck
    moved it away): only the high-water mark beside it knows where numbering was."""
    state = tmp_path / "van"
    public_key = prepare_agent_state(state, day)

    async def run_day(port: int, name: str) -> None:
        log_path = tmp_path / f"agent-{name}.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *agent_command(state, day, port, speed=0),
                "--exit-when-drained",
                stdout=log,
                stderr=log,
            )
            try:
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    rc = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert rc == 0, log_path.read_text()[-3000:]

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                worker = ObservedWorker(store, WorkerConfig(port=broker.port, backoff_max_s=0.5))
                worker_task = asyncio.create_task(worker.run(), name="ingest")
                try:
                    await worker.connected.wait()
                    await run_day(broker.port, "day1")
                    first = await outbox_state(state)
                    if damage == "header zeroed":
                        with (state / "outbox.db").open("r+b") as f:
                            f.write(bytes(100))
                    else:
                        (state / "outbox.db").unlink()
                    # The next day's manifest: the van starts a new day (same parcels).
                    manifest = json.loads((state / "manifest.json").read_text(encoding="utf-8"))
                    next_day = date.fromisoformat(manifest["date"]) + timedelta(days=1)
                    manifest["date"] = next_day.isoformat()
                    (state / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
                    started = time.monotonic()
                    await run_day(broker.port, "day2")
                    took = time.monotonic() - started
                    await worker.idle()
                    await watcher.settle()
                finally:
                    worker_task.cancel()
                    await asyncio.gather(worker_task, return_exceptions=True)
                outbox = await outbox_state(state)
                last_seqs = {s: last for s, (last, _, _) in outbox.items()}
                assert outbox == {s: (n, n, 0) for s, n in last_seqs.items()}  # drained
                # Day 2 numbered on from day 1, in every stream.
                for s in STREAMS:
                    assert last_seqs[s] > first[s][0] > 0, (s, first, outbox)
                await assert_exactly_once(
                    store,
                    last_seqs,
                    public_key,
                    watcher=watcher,
                    chain_state=saved_chain_state(state),
                )
                assert (await store.counts()).quarantined == 0
                assert watcher.contract_failures() == []
                healths = [h for _, h in statuses(watcher)]
                assert healths[-1]["outbox_resets"] == 1
                reason = healths[-1]["outbox_last_reset"]["reason"]
                if damage == "header zeroed":
                    assert reason.startswith("the file was damaged"), reason
                    assert list(state.glob("outbox.db.corrupt-*"))
                else:
                    assert reason == "the file was missing"
                print(
                    f"\ncorrupt outbox ({damage}): day 1 committed "
                    f"{ {s: v[0] for s, v in first.items()} }; {damage}; day 2 "
                    f"numbered on to {last_seqs} and drained in {took:.1f} s; "
                    f"reset reported: {json.dumps(healths[-1]['outbox_last_reset'])}"
                )

    asyncio.run(main())


def test_garbage_in_the_wal_after_a_crash_loses_and_reuses_nothing(
    day: Day, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The van killed after its day (its commits still in the -wal), 16 KB of garbage
    written into the middle of that log, then the next day. SQLite drops every commit
    past the garbage (by design); the outbox sees it, puts the dropped records back
    from the log's frames, numbers on above the high-water mark, and the van's
    sequence report settles the seqs it skipped: every record of both days is stored
    once, under the seq it was committed with, and the van drains."""
    state = tmp_path / "van"
    public_key = prepare_agent_state(state, day)

    async def main() -> None:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port, uplink=True) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                worker = ObservedWorker(store, WorkerConfig(port=broker.port, backoff_max_s=0.5))
                worker_task = asyncio.create_task(worker.run(), name="ingest")
                try:
                    await worker.connected.wait()
                    await _killed_after_its_day(state, day, broker.port, tmp_path / "day1.log")
                    # What day 1 committed, read from an undamaged copy of its files.
                    copy = tmp_path / "copy"
                    copy.mkdir()
                    for name in ("outbox.db", "outbox.db-wal"):
                        shutil.copy(state / name, copy / name)
                    day1 = {s: last for s, (last, _, _) in (await outbox_state(copy)).items()}
                    wal = state / "outbox.db-wal"
                    size = wal.stat().st_size
                    with wal.open("r+b") as f:
                        f.seek(size // 2)
                        f.write(os.urandom(16 * 1024))
                    started = time.monotonic()
                    await _day_to_the_end(state, day, broker.port, tmp_path / "day2.log")
                    took = time.monotonic() - started
                    await worker.idle()
                    await watcher.settle()
                finally:
                    worker_task.cancel()
                    await asyncio.gather(worker_task, return_exceptions=True)
                day2_log = await asyncio.to_thread((tmp_path / "day2.log").read_text)
                day2 = {
                    s: int(n) for s, n in re.findall(r"(telemetry|events|pod)=([0-9]+)", day2_log)
                }
                # First what any van must get right: every record of both days stored
                # (a seq reused for a day-2 record makes ingest drop it as a duplicate).
                counts = await store.counts()
                stored = (counts.positions, counts.stop_events, counts.pods)
                assert stored == tuple(day1[s] + day2[s] for s in STREAMS), (day1, day2, stored)
                await _check_wal_days(store, state, day1, watcher, took, size)

    with caplog.at_level(logging.WARNING, logger="cloud_ingest.worker"):
        asyncio.run(main())
    # Ingest says why seqs were released: the van's outbox was reset, not its database.
    assert any("reports an outbox reset" in r.getMessage() for r in caplog.records)


async def _killed_after_its_day(state: Path, day: Day, port: int, log_path: Path) -> None:
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *agent_command(state, day, port, speed=0), stdout=log, stderr=log
        )
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while b"input file" not in await asyncio.to_thread(log_path.read_bytes):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # acks come back; the last batch waits (30 s)
        finally:
            proc.kill()
            await proc.wait()


async def _day_to_the_end(state: Path, day: Day, port: int, log_path: Path) -> None:
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *agent_command(state, day, port, speed=0),
            "--exit-when-drained",
            stdout=log,
            stderr=log,
        )
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 0, (await asyncio.to_thread(log_path.read_text))[-3000:]


async def _check_wal_days(
    store: SqliteStore,
    state: Path,
    day1: dict[str, int],
    watcher: Watcher,
    took: float,
    wal_bytes: int,
) -> None:
    outbox = await outbox_state(state)
    last_seqs = {s: last for s, (last, _, _) in outbox.items()}
    assert outbox == {s: (n, n, 0) for s, n in last_seqs.items()}  # drained
    healths = [h for _, h in statuses(watcher)]
    reset = healths[-1]["outbox_last_reset"]
    assert "write-ahead log" in reset["reason"], reset
    assert healths[-1]["outbox_wal_discarded"] > 0
    after = reset["to"]
    # What the van committed: day 1, then day 2 above the mark.
    committed = {
        s: [*range(1, day1[s] + 1), *range(after[s] + 1, last_seqs[s] + 1)] for s in STREAMS
    }
    assert await store.acks(DEVICE) == last_seqs
    positions = await store.track(DEVICE, EPOCH, FOREVER)
    assert sorted(p.seq for p in positions) == committed["telemetry"]
    pods = await stored_pods(store, DEVICE)
    assert sorted(p.seq for p in pods) == committed["pod"]
    assert [p.chain_status for p in pods] == ["ok"] * len(pods)
    assert saved_chain_state(state).seq == len(pods)
    counts = await store.counts()
    assert counts.stop_events == len(committed["events"])
    assert counts.quarantined == 0
    # The only seqs ingest does not hold are the ones the reset skipped.
    skipped = {(s, day1[s] + 1, after[s]) for s in STREAMS if after[s] > day1[s]}
    assert {(g.stream, g.first_seq, g.last_seq) for g in await store.gaps(DEVICE)} <= skipped
    assert watcher.contract_failures() == []
    print(
        f"\nWAL garbage: 16 KB into a {wal_bytes}-byte log; SQLite dropped "
        f"{healths[-1]['outbox_wal_discarded']} commits, the outbox restored them "
        f"({reset['reason']}); numbering {day1} -> {after}; day 2 drained in "
        f"{took:.1f} s; committed {last_seqs}, all stored once"
    )
