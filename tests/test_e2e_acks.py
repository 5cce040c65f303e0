"""Acks that never wedge a van, with the real services as processes (issue 13, findings
6 and 7, and the fault suite's "ingest database dropped and restored" and "broker
restarts"): ``fleet-ingest serve`` on SQLite or PostgreSQL, ``fleet-agent run
--exit-when-drained`` playing a short day, a private Mosquitto, and a peer publishing on
the van's topic.

- The database dropped and restored from a backup taken earlier: the records the van
  had deleted on acks since the backup are gone from both sides. Before, ingest's
  cumulative ack stayed below them for ever and the van's events and PODs never drained;
  now the van's signed sequence report settles them, ``/gaps`` lists them as
  ``released``, and everything the van still held is stored.
- A peer's empty telemetry batch claiming seqs ``1..2**63-1`` (and one claiming a few
  seqs past what the van has sent): before, ingest acked 9223372036854775807 for ever
  and the van never drained; now it is quarantined (``unproven_range``) and settles
  nothing.
- The broker killed and restarted while the van sends.

Each fault is timed from the moment it ends (ingest back on the restored database, the
broker back) to the van's outbox drained (the agent exits), printed as ``recovery``
lines (``pytest -s``), and the end state compared seq by seq.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cloud_ingest.store.base import Store
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from firmware_agent.contract.telemetry import encode_batch
from firmware_agent.contract.topics import MAX_SEQ, STREAMS, Stream, uplink_topic
from tests.apiauth import cli_token
from tests.broker import Mosquitto, free_port
from tests.pg import ADMIN_DSN, fresh_database
from tests.uplinkday import (
    BIN,
    DEVICE,
    EPOCH,
    FOREVER,
    Day,
    agent_command,
    dense_scans,
    make_day,
    prepare_agent_state,
    publish_all,
    short_day,
    wait_for,
)

pytestmark = pytest.mark.slow

# 90 s of a day: 7 fixes (smart sampling), 8 events and 17 PODs per run at full speed.
DAY_S = 90
# Playback speed of the run a fault lands in: 4.5 s, PODs from 1.5 s on.
SLOW_SPEED = 20.0
DRAIN_TIMEOUT_S = 60.0

VanState = dict[str, tuple[int, int, int]]  # stream -> (last seq, acked, pending)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    directory = tmp_path_factory.mktemp("acksday")
    return dense_scans(
        short_day(make_day(directory / "full"), directory / "short", seconds=DAY_S),
        directory / "short",
    )


# -- the database, as an operator handles it ---------------------------------------------------


class Database:
    """Ingest's database: a SQLite file or a fresh PostgreSQL database; backed up while
    ingest runs (SQLite's online backup, ``pg_dump``), dropped and restored from that
    backup (the file deleted and copied back; ``DROP DATABASE``, ``pg_restore``)."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.path = directory / "ingest.db"
        self.backup_path = directory / ("backup.db" if kind == "sqlite" else "backup.dump")
        self.dsn = ""
        self._pg: Any = None

    def __enter__(self) -> Database:
        if self.kind == "postgres":
            self._pg = fresh_database()
            self.dsn = self._pg.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.__exit__(*exc)

    @property
    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        c = conninfo_to_dict(self.dsn)
        return f"postgresql://{c['user']}@{c['host']}:{c.get('port', 5432)}/{c['dbname']}"

    def open(self) -> Store:
        return SqliteStore(self.path) if self.kind == "sqlite" else PostgresStore(self.dsn)

    def backup(self) -> None:
        if self.kind == "sqlite":
            with (
                closing(sqlite3.connect(self.path)) as source,
                closing(sqlite3.connect(self.backup_path)) as copy,
            ):
                source.backup(copy)
        else:
            subprocess.run(
                ["pg_dump", "--format=custom", "--file", str(self.backup_path), self.dsn],
                check=True,
                timeout=60,
            )

    def drop_and_restore(self) -> None:
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            shutil.copy(self.backup_path, self.path)
            return
        name = sql.Identifier(str(conninfo_to_dict(self.dsn)["dbname"]))
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
        subprocess.run(
            ["pg_restore", "--exit-on-error", "--dbname", self.dsn, str(self.backup_path)],
            check=True,
            timeout=60,
        )


class Ingest:
    """``fleet-ingest serve`` as a process on ``db``, HTTP on a port of its own."""

    def __init__(self, db: Database, broker_port: int, directory: Path) -> None:
        self.db = db
        self.http_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")},
            "FLEET_INGEST_DATABASE_URL": db.url,
            "FLEET_INGEST_MQTT_PORT": str(broker_port),
            "FLEET_INGEST_HTTP_PORT": str(self.http_port),
        }
        self.log = directory / "ingest.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "fleet-ingest"), "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.get("/health")["status"] == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"fleet-ingest serve not healthy: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        self.process = None

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        request = urllib.request.Request(url)
        if path != "/health":
            # The operator's way: a read token made with the CLI (again when the
            # database was replaced, and the token with it).
            self.token = self.token or cli_token(["read"], env=self.env)
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code != 401 or path == "/health":
                raise
        self.token = cli_token(["read"], env=self.env)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


@contextmanager
def services(
    kind: str, directory: Path, day: Day
) -> Iterator[tuple[Database, Mosquitto, Ingest, Path]]:
    """A database with the van enrolled, a broker, ingest serving; the van's state dir."""
    state = directory / "van"
    public_key = prepare_agent_state(state, day)
    with Database(kind, directory) as db, Mosquitto(directory / "broker") as broker:

        async def enroll() -> None:
            async with db.open() as store:
                await store.migrate()
                await store.register_device(DEVICE, public_key)

        asyncio.run(enroll())
        ingest = Ingest(db, broker.port, directory)
        ingest.start()
        try:
            yield db, broker, ingest, state
        finally:
            ingest.stop()


# -- the van ------------------------------------------------------------------------------------


class Van:
    """``fleet-agent run --exit-when-drained`` playing ``day`` on ``state``; one run at a
    time, each logged to ``agent-N.log``. Each run is a day of its own: the stored
    manifest's date moves on a day (the van carries on a day it restarts in: issue 14),
    so each run signs the day's PODs again."""

    def __init__(self, state: Path, day: Day, port: int) -> None:
        self.state = state
        self.day = day
        self.port = port
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, speed: float) -> None:
        self.runs += 1
        stored = self.state / "manifest.json"
        manifest = json.loads(stored.read_text(encoding="utf-8"))
        first = date.fromisoformat(json.loads(self.day.manifest.read_text("utf-8"))["date"])
        manifest["date"] = (first + timedelta(days=self.runs - 1)).isoformat()
        stored.write_text(json.dumps(manifest), encoding="utf-8")
        with (self.state.parent / f"agent-{self.runs}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [*agent_command(self.state, self.day, self.port, speed=speed),
                 "--exit-when-drained"],
                stdout=log, stderr=log,
            )  # fmt: skip

    def drained(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for the run to exit once ingest acknowledged everything it committed."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"the van never drained in {timeout_s:.0f} s: {self.state_now()}\n{self.log()}"
            ) from None
        assert code == 0, self.log()

    def run(self) -> None:
        self.start(speed=0.0)
        self.drained()

    def caught_up(self, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
        """Seconds until ingest has acknowledged every record the van had committed when
        this was called (the backlog of a fault: the van may go on committing)."""
        start = time.monotonic()
        target = self.state_now()
        while any(self.state_now()[s][1] < target[s][0] for s in STREAMS):
            if time.monotonic() - start > timeout_s:
                raise AssertionError(
                    f"the van's backlog {target} never drained: {self.state_now()}\n{self.log()}"
                )
            time.sleep(0.02)
        return time.monotonic() - start

    def state_now(self) -> VanState:
        """Per stream of the outbox (read only, while the agent runs)."""
        uri = f"file:{self.state / 'outbox.db'}?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True)) as conn:
                rows = conn.execute("SELECT name, last_seq, acked, pending FROM stream").fetchall()
        except sqlite3.OperationalError:  # not created yet
            rows = []
        found = {name: (last, acked, pending) for name, last, acked, pending in rows}
        return {s: found.get(s, (0, 0, 0)) for s in STREAMS}

    def log(self) -> str:
        return (self.state.parent / f"agent-{self.runs}.log").read_text()[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


async def _stored(db: Database) -> tuple[list[int], int, int]:
    """Positions by seq, and how many events and PODs the store holds."""
    async with db.open() as store:
        positions = sorted(p.seq for p in await store.track(DEVICE, EPOCH, FOREVER))
        counts = await store.counts()
    return positions, counts.stop_events, counts.pods


def _report(fault: str, kind: str, seconds: float, what: str) -> None:
    print(
        f"recovery {fault} [{kind}]: {seconds:.2f} s from the end of the fault to its "
        f"backlog acknowledged; {what}"
    )


# -- finding 6: the database dropped and restored ------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_database_dropped_and_restored_from_an_earlier_backup(
    kind: str, day: Day, tmp_path: Path
) -> None:
    """Backup after a first run, a second run acknowledged and deleted on the van, then,
    during a third run, ingest stopped, its database dropped and restored from the
    backup, ingest started again. The van drains; what it deleted since the backup is
    listed as released (and only that); everything else is stored once."""
    with services(kind, tmp_path, day) as (db, broker, ingest, state):
        van = Van(state, day, broker.port)
        try:
            van.run()
            backed_up = van.state_now()
            db.backup()
            van.run()
            before = van.state_now()
            van.start(speed=SLOW_SPEED)
            # The run's first acks are in: the van has deleted records since the backup.
            asyncio.run(
                wait_for(
                    lambda: van.state_now()["pod"][1] > before["pod"][1],
                    timeout_s=20,
                    what="an ack of the third run",
                )
            )
            ingest.stop()
            dropped = van.state_now()  # what the van had deleted when the database went
            db.drop_and_restore()
            ingest.start()
            recovered_s = van.caught_up()
            van.drained()
            end = van.state_now()
            gaps = ingest.get(f"/v1/devices/{DEVICE}/gaps")
        finally:
            van.stop()
        log = van.log()
        positions, events, pods = asyncio.run(_stored(db))

    # Every stream drained: acked up to its last seq, nothing pending.
    assert {s: (n, p) for s, (_, n, p) in end.items()} == {s: (end[s][0], 0) for s in STREAMS}
    lost = {
        s: (backed_up[s][0] + 1, dropped[s][1]) for s in STREAMS if dropped[s][1] > backed_up[s][0]
    }
    assert {"events", "pod"} <= set(lost), (backed_up, dropped)
    assert gaps["acks"] == {s: end[s][0] for s in STREAMS}
    assert gaps["gaps"] == [
        {"stream": s, "first_seq": a, "last_seq": b, "reason": "released"}
        for s, (a, b) in lost.items()
    ]

    def kept(stream: Stream) -> list[int]:
        a, b = lost.get(stream, (1, 0))
        return [n for n in range(1, end[stream][0] + 1) if not a <= n <= b]

    assert positions == kept("telemetry")
    assert (events, pods) == (len(kept("events")), len(kept("pod")))
    # The van saw ingest's acks go back and sent its report (not a reconnect).
    assert "first ack-behind" in log
    lost_n = sum(b - a + 1 for a, b in lost.values())
    _report(
        "database dropped and restored",
        kind,
        recovered_s,
        f"van drained {sum(n for n, _, _ in end.values())} records, "
        f"{lost_n} listed released ({lost})",
    )


# -- finding 7: a peer's empty batch -------------------------------------------------------------


def test_an_empty_batch_from_a_peer_settles_nothing(day: Day, tmp_path: Path) -> None:
    """A peer on the van's telemetry topic publishes an empty batch claiming seqs 1..3
    (a few past what the van has sent), then one claiming 1..2**63-1 (24 bytes); then
    the van runs its day. Both are quarantined as unproven_range; the van drains (before,
    it never did: ingest acked 9223372036854775807), every fix it committed is stored,
    and ingest's telemetry ack is the van's last seq."""
    with services("sqlite", tmp_path, day) as (db, broker, ingest, state):
        van = Van(state, day, broker.port)
        try:
            ahead = 3
            topic = uplink_topic(DEVICE, "telemetry")
            forged = [
                (topic, encode_batch(DEVICE, 1, [], historical=False, last_seq=ahead)),
                (topic, encode_batch(DEVICE, 1, [], historical=False, last_seq=MAX_SEQ)),
            ]
            assert len(forged[1][1]) == 24
            asyncio.run(publish_all(broker.port, forged, identifier="a-peer"))
            started = time.monotonic()
            van.run()
            drained_s = time.monotonic() - started
            end = van.state_now()
            gaps = ingest.get(f"/v1/devices/{DEVICE}/gaps")
            quarantine = ingest.get("/v1/quarantine")
        finally:
            van.stop()
        positions, _, _ = asyncio.run(_stored(db))

    assert end["telemetry"][0] > ahead
    assert gaps["acks"] == {s: end[s][0] for s in STREAMS}
    assert gaps["gaps"] == []
    assert positions == list(range(1, end["telemetry"][0] + 1))
    refused = quarantine["messages"] if isinstance(quarantine, dict) else quarantine
    assert sorted(q["reason"] for q in refused) == ["unproven_range", "unproven_range"]
    assert all(q["covered"] is None for q in refused)
    print(f"forged empty batches [sqlite]: the van's day drained in {drained_s:.2f} s ({end})")


# -- the broker restarted ------------------------------------------------------------------------


def test_broker_restarted_while_the_van_sends(day: Day, tmp_path: Path) -> None:
    """The broker SIGKILLed during a run and started again a second later: the van and
    ingest reconnect, the van sends again what was not acknowledged, nothing is lost or
    stored twice."""
    with services("sqlite", tmp_path, day) as (db, broker, ingest, state):
        van = Van(state, day, broker.port)
        try:
            van.start(speed=SLOW_SPEED)
            asyncio.run(
                wait_for(lambda: van.state_now()["pod"][1] > 0, timeout_s=20, what="first acks")
            )
            broker.kill()
            time.sleep(1.0)
            broker.start()
            recovered_s = van.caught_up()
            van.drained()
            end = van.state_now()
            gaps = ingest.get(f"/v1/devices/{DEVICE}/gaps")
        finally:
            van.stop()
        positions, events, pods = asyncio.run(_stored(db))
    assert gaps == {"device_id": DEVICE, "acks": {s: end[s][0] for s in STREAMS}, "gaps": []}
    assert positions == list(range(1, end["telemetry"][0] + 1))
    assert (events, pods) == (end["events"][0], end["pod"][0])
    _report("broker restart", "sqlite", recovered_s, f"van drained ({end})")
