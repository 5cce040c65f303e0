"""Ingest stays up whatever the vans send (issue 13, findings 8, 9 and 10).

8. The quarantine keeps a bounded part of what settled nothing (its first bytes, its
   length and SHA-256), answers in bounded pages (keyset cursor, previews of each
   payload), and forgets by age and count; ``fleet-ingest serve`` answers
   ``/v1/quarantine?limit=1000`` over 1,000 quarantined 250 KB messages without
   growing by the page's size (it reached 2 GB and could abort before).
9. A track page is read with LIMIT (and a keyset cursor), never a range loaded and
   sliced; arrivals and a parcel's PODs are bounded pages too.
10. Records dated implausibly far from their receipt (2099, 9999-12-31, 0001-01-01) are
    quarantined, settled, and never become a device's latest position; a replay of an
    old outage is still stored.

Finding 11 (what the stream says is verified) is in tests/test_fleetstream.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from cloud_ingest.config import QuarantineSettings, load_config
from cloud_ingest.errors import ConfigError
from cloud_ingest.service import prune_quarantine, quarantine_retention, worker_configs
from cloud_ingest.store.base import Covered, Position, Quarantined, WriteBatch
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.verify import Accepted, RecordTimes, Rejected, check_message
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from tests.apiauth import cli_token
from tests.broker import Mosquitto, free_port
from tests.pg import fresh_database
from tests.test_ingest_api import (
    RECEIVED,
    T0,
    Api,
    StoreFactory,
    Van,
    ingest,
    make_store,
    run,
)
from tests.uplinkday import publish_all
from tests.wire import envelope

__all__ = ["make_store"]  # the fixture, parametrized over SQLite and PostgreSQL

BIN = Path(sys.executable).parent
KIB = 1024


def quarantined(
    n: int,
    *,
    size: int = 100,
    settles: str | None = None,
    at: datetime = RECEIVED,
    reason: str = "malformed",
) -> Quarantined:
    """The ``n``-th refused message of a test: ``size`` bytes; ``settles``: the device
    whose pod seq ``n`` it settles (None: it settles nothing)."""
    payload = (f"{n:08d}".encode() + bytes(range(256)) * (size // 256 + 1))[:size]
    return Quarantined(
        received_at=at,
        topic=f"fleet/v1/{settles or 'ghost'}/pod",
        device_id=settles or "ghost",
        reason=reason,
        detail=f"message {n}",
        payload=payload,
        covered=None if settles is None else Covered(settles, "pod", n, n),
    )


# --- 8: what the quarantine keeps, pages, retention ---------------------------------------


def test_the_quarantine_keeps_a_bounded_part_and_answers_in_pages(
    make_store: StoreFactory,
) -> None:
    van = Van("van-7")
    settled = quarantined(1, size=100_000, settles="van-7")  # the only copy of POD seq 1
    junk = quarantined(2, size=60_000)  # its sender still holds it, or it is no record
    small = [quarantined(n) for n in range(3, 6)]

    async def scenario(api: Api) -> None:
        c = api.client
        await api.enroll(van)
        await api.store.write(WriteBatch(quarantined=[settled, junk, *small]))
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await c.get("/v1/quarantine", params=params)).json()
            pages.append([m["detail"] for m in page["messages"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == [["message 5", "message 4"], ["message 3", "message 2"], ["message 1"]]

        rows = {m["detail"]: m for m in (await c.get("/v1/quarantine")).json()["messages"]}
        for q, kept in ((settled, len(settled.payload)), (junk, 4096)):
            m = rows[q.detail]
            assert (m["payload_bytes"], m["kept_bytes"], m["payload_truncated"]) == (
                len(q.payload),
                kept,
                True,
            )
            assert m["payload_sha256"] == hashlib.sha256(q.payload).hexdigest()
            assert base64.b64decode(m["payload_base64"]) == q.payload[:4096]
            r = await c.get(f"/v1/quarantine/{m['id']}/payload")
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.content == q.payload[:kept]
            assert r.headers["x-payload-bytes"] == str(len(q.payload))
            assert r.headers["x-payload-sha256"] == hashlib.sha256(q.payload).hexdigest()
        assert rows["message 5"]["payload_truncated"] is False
        assert base64.b64decode(rows["message 5"]["payload_base64"]) == small[-1].payload
        assert rows["message 1"]["covered"] == {"stream": "pod", "first_seq": 1, "last_seq": 1}

        assert (await c.get("/v1/quarantine/99/payload")).status_code == 404
        for bad in ("garbage!", base64.urlsafe_b64encode(b"t:1:2").decode(), "cTox" + "0" * 30):
            r = await c.get("/v1/quarantine", params={"cursor": bad})
            assert r.status_code == 400, bad

    run(make_store, scenario)


def test_a_payload_cut_inside_a_character_still_shows_as_text(tmp_path: Path) -> None:
    text = ("é" * 3000).encode()  # 6000 bytes: the 4096th is inside a character

    async def scenario(api: Api) -> None:
        await api.store.write(WriteBatch(quarantined=[replace_payload(quarantined(1), text)]))
        (m,) = (await api.client.get("/v1/quarantine")).json()["messages"]
        assert m["payload_text"] == "é" * 2048
        assert m["payload_truncated"] is True

    run(lambda: SqliteStore(tmp_path / "ingest.sqlite3"), scenario)


def replace_payload(q: Quarantined, payload: bytes) -> Quarantined:
    return Quarantined(q.received_at, q.topic, q.device_id, q.reason, q.detail, payload, q.covered)


def test_quarantine_retention_by_age_and_count(make_store: StoreFactory) -> None:
    """Rows older than the age go; of the rows that settled nothing only the newest
    ``max_unsettled_rows`` stay; a row that settled seqs (the only copy of a record) is
    never pushed out by junk, only by age."""
    van = Van("van-7")
    now = RECEIVED + timedelta(days=100)
    old = now - timedelta(days=91)
    rows = [
        quarantined(1, settles="van-7", at=old),
        quarantined(2, at=old),
        *(quarantined(n, settles="van-7", at=now) for n in (3, 4)),
        *(quarantined(n, at=now) for n in range(5, 10)),
    ]
    settings = QuarantineSettings(max_age_days=90, max_unsettled_rows=2)

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        await api.store.write(WriteBatch(quarantined=rows))
        assert await prune_quarantine(api.store, settings, now=now) == 5
        left = [q.detail for q in await api.store.quarantine()]
        assert left == ["message 9", "message 8", "message 4", "message 3"]
        assert await prune_quarantine(api.store, settings, now=now) == 0
        # Deleted in transactions of batch_rows: all of them, however many.
        await api.store.write(WriteBatch(quarantined=[quarantined(n) for n in range(10, 30)]))
        n = await api.store.prune_quarantine(max_unsettled_rows=0, batch_rows=3)
        assert n == 22
        assert [q.detail for q in await api.store.quarantine()] == ["message 4", "message 3"]

    run(make_store, scenario)


def test_the_service_prunes_the_quarantine_periodically(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "ingest.sqlite3") as store:
            await store.migrate()
            await store.write(WriteBatch(quarantined=[quarantined(n) for n in range(1, 6)]))
            settings = QuarantineSettings(max_unsettled_rows=3, prune_interval_s=0.05)
            task = asyncio.create_task(quarantine_retention(store, settings))
            try:
                async with asyncio.timeout(5):
                    while len(await store.quarantine()) > 3:
                        await asyncio.sleep(0.02)
                    # ... and again later: two more junk rows go within an interval.
                    await store.write(WriteBatch(quarantined=[quarantined(6), quarantined(7)]))
                    while len(await store.quarantine()) > 3:
                        await asyncio.sleep(0.02)
            finally:
                task.cancel()
            assert [q.detail for q in await store.quarantine()] == [
                f"message {n}" for n in (7, 6, 5)
            ]

    asyncio.run(main())


def test_a_version_4_quarantine_gains_lengths_and_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored before migration 5 were kept whole: they read back with their length
    and SHA-256, and a page shows only their first bytes."""
    from cloud_ingest.store import sqlite as module  # noqa: PLC0415

    everything = module.MIGRATIONS
    big = quarantined(1, size=300_000)
    path = tmp_path / "ingest.sqlite3"

    async def old() -> None:
        async with SqliteStore(path) as store:
            await store.migrate()
        with sqlite3.connect(path) as conn:  # as a worker before migration 5 wrote it
            conn.execute(
                "INSERT INTO quarantine (received_at_us, topic, device_id, reason, detail, "
                "payload) VALUES (0, 't', NULL, 'malformed', 'legacy', ?)",
                (big.payload,),
            )

    monkeypatch.setattr(module, "MIGRATIONS", everything[:4])
    asyncio.run(old())
    monkeypatch.setattr(module, "MIGRATIONS", everything)

    async def upgraded() -> None:
        async with SqliteStore(path) as store:
            assert await store.migrate() == [5, 6, 7]
            (q,) = await store.quarantine(payload_max_bytes=100)
            assert (len(q.payload), q.payload_bytes, q.kept_bytes) == (100, 300_000, 300_000)
            assert q.payload_sha256 == hashlib.sha256(big.payload).digest()

    asyncio.run(upgraded())


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ingest.sqlite3'}"
        return
    with fresh_database() as dsn:
        info = conninfo_to_dict(dsn)
        user = info.get("user", "postgres")
        yield f"postgresql://{user}@{info.get('host')}:{info.get('port', 5432)}/{info['dbname']}"


@pytest.mark.slow
def test_serve_answers_a_page_of_big_quarantined_messages_in_bounded_memory(
    database_url: str, tmp_path: Path
) -> None:
    """1,000 quarantined 250 KB messages (each settled a seq, so each is kept whole):
    ``GET /v1/quarantine?limit=1000`` made ``fleet-ingest serve`` peak at 2 GB (a 600 MB
    response built in one piece, and more than that on the way); now its peak grows
    by a few MB. A 1 MB message through the broker is kept as its first 4 KiB."""
    van = Van("van-8")

    def payload(n: int) -> bytes:
        pad = f"{n:06d}".encode() * (250_000 // 6)
        return b'{"v":1,"device_id":"van-8","record":{"pad":"' + pad + b'"}}'

    size = len(payload(1))

    async def fill() -> None:
        from cloud_ingest.service import make_store as make  # noqa: PLC0415

        async with make(database_url) as store:
            await store.migrate()
            await store.register_device(van.device_id, van.key.public_key().public_bytes_raw())
            for start in range(1, 1001, 100):
                batch = [
                    replace_payload(quarantined(n, settles=van.device_id), payload(n))
                    for n in range(start, start + 100)
                ]
                await store.write(WriteBatch(quarantined=batch))

    started = time.monotonic()
    asyncio.run(fill())
    print(f"filled in {time.monotonic() - started:.1f} s")
    http_port = free_port()
    with Mosquitto(tmp_path / "broker") as broker:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")},
            "FLEET_INGEST_DATABASE_URL": database_url,
            "FLEET_INGEST_MQTT_PORT": str(broker.port),
            "FLEET_INGEST_HTTP_PORT": str(http_port),
        }
        log = tmp_path / "ingest.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(BIN / "fleet-ingest"), "serve"], env=env, stdout=out, stderr=out
            )
        base = f"http://127.0.0.1:{http_port}"
        token = cli_token(["read"], env=env)

        def get(path: str) -> tuple[int, bytes]:
            request = urllib.request.Request(base + path)
            request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()

        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    if get("/health")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            rss_before = _kib(process.pid, "VmRSS")
            started = time.monotonic()
            status, content = get("/v1/quarantine?limit=1000")
            peak_after = _kib(process.pid, "VmHWM")
            print(
                f"RSS {rss_before / 1024:.0f} MB, peak after {peak_after / 1024:.0f} MB, "
                f"{len(content) / 1e6:.1f} MB in {time.monotonic() - started:.2f} s"
            )
            assert status == 200
            page = json.loads(content)
            assert len(page["messages"]) == 1000
            assert {m["payload_bytes"] for m in page["messages"]} == {size}
            assert all(m["kept_bytes"] == m["payload_bytes"] for m in page["messages"])
            assert len(content) < 20_000_000, len(content)
            grew_mb = (peak_after - rss_before) / 1024
            assert grew_mb < 100, f"serve grew by {grew_mb:.0f} MB for one page"
            status_ok, whole = get(f"/v1/quarantine/{page['messages'][0]['id']}/payload")
            assert status_ok == 200
            assert whole == payload(int(page["messages"][0]["detail"].split()[-1]))

            big = b"{" + b" " * (1024 * KIB) + b"}"  # over max_message_bytes: too_large
            asyncio.run(publish_all(broker.port, [(van.topic("events"), big)]))
            deadline = time.monotonic() + 20
            while True:
                newest = json.loads(get("/v1/quarantine?limit=1")[1])["messages"][0]
                if newest["reason"] == "too_large":
                    break
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            assert (newest["payload_bytes"], newest["kept_bytes"]) == (len(big), 4096)
            assert newest["payload_sha256"] == hashlib.sha256(big).hexdigest()
            assert get("/health")[0] == 200
            assert process.poll() is None
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)


# --- 9: pages read with LIMIT ----------------------------------------------------------------


def fix(seconds: float, **changes: Any) -> TelemetryPoint:
    values: dict[str, Any] = {"time": T0 + timedelta(seconds=seconds), "lat": 48.1, "lon": 11.5}
    return TelemetryPoint(**(values | changes))


def test_a_track_is_paged_by_cursor_in_time_and_seq_order(make_store: StoreFactory) -> None:
    """Several positions at one time (a receiver repeating its fix): pages of 7 follow
    one another by cursor, every position once, in (time, seq) order."""
    van = Van("van-7")
    fixes = [(seq, fix(seq // 3)) for seq in range(1, 51)]  # three per second
    batch = encode_batch("van-7", 1, fixes, historical=False)

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        await ingest(api.store, (van.topic("telemetry"), batch))
        params: dict[str, Any] = {
            "start": "2026-11-21T09:00:00Z",
            "end": "2026-11-21T10:00:00Z",
            "limit": 7,
        }
        seen: list[int] = []
        while True:
            page = (await api.client.get("/v1/devices/van-7/track", params=params)).json()
            seen += [p["seq"] for p in page["positions"]]
            assert page["truncated"] == (page["next_cursor"] is not None)
            if not page["truncated"]:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == list(range(1, 51))
        # The store stops at the limit, and resumes after a (time, seq).
        first = await api.store.track("van-7", T0, T0 + timedelta(hours=1), limit=4)
        assert [p.seq for p in first] == [1, 2, 3, 4]
        after = (first[-1].time, first[-1].seq)
        rest = await api.store.track("van-7", T0, T0 + timedelta(hours=1), limit=4, after=after)
        assert [p.seq for p in rest] == [5, 6, 7, 8]
        r = await api.client.get("/v1/devices/van-7/track", params=params | {"cursor": "x"})
        assert r.status_code == 400

    run(make_store, scenario)


def test_a_track_page_of_one_costs_one_row_not_the_range(tmp_path: Path) -> None:
    """307,200 positions in the range: ``limit=1`` took 1.5 s (the range loaded, then
    sliced) and held up /health meanwhile; read with LIMIT it takes milliseconds."""
    path = tmp_path / "ingest.sqlite3"
    van = Van("van-7")
    n = 307_200

    async def setup() -> None:
        async with SqliteStore(path) as store:
            await store.migrate()
            await store.register_device("van-7", van.key.public_key().public_bytes_raw())

    asyncio.run(setup())
    t0_us = int(T0.timestamp() * 1_000_000)
    with sqlite3.connect(path) as conn:  # a 10 Hz van's 8.5 hours, written at once
        conn.executemany(
            "INSERT INTO positions (device_id, seq, time_us, lat, lon, historical, mode) "
            "VALUES ('van-7', ?, ?, 48.1, 11.5, 0, 3)",
            ((seq, t0_us + seq * 100_000) for seq in range(1, n + 1)),
        )

    async def scenario(api: Api) -> float:
        params: dict[str, str | int] = {
            "start": "2026-11-21T09:00:00Z",
            "end": "2026-11-22T09:00:00Z",
            "limit": 1,
        }
        await api.client.get("/health")
        started = time.monotonic()
        page = (await api.client.get("/v1/devices/van-7/track", params=params)).json()
        elapsed = time.monotonic() - started
        assert [p["seq"] for p in page["positions"]] == [1]
        assert page["truncated"] is True
        return elapsed

    elapsed = run(lambda: SqliteStore(path), scenario)
    assert elapsed < 0.3, f"limit=1 over {n} positions took {elapsed:.2f} s"


def arrival(van: Van, seq: int, when: datetime) -> tuple[str, bytes]:
    text = when.isoformat().replace("+00:00", "Z")
    record = {
        "type": "arrival",
        "time": text,
        "stop_id": f"S{seq:03d}",
        "detected_at": text,
        "lat": 48.137,
        "lon": 11.575,
        "visit": 1,
        "confirmed_by": "dwell",
    }
    return van.topic("events"), envelope(
        van.device_id, "events", seq, record, historical=False, sent_at=RECEIVED
    )


def test_arrivals_are_paged_by_a_link_header(make_store: StoreFactory) -> None:
    """More arrivals than ``limit``: the newest were out of reach (oldest first, at most
    10,000). A ``Link: <...>; rel="next"`` header names the next page."""
    vans = [Van("van-7"), Van("van-8")]

    async def scenario(api: Api) -> None:
        for van in vans:
            await api.enroll(van)
            for seq in range(1, 4):  # van-7 and van-8 arrive at the same times
                await ingest(api.store, arrival(van, seq, T0 + timedelta(minutes=seq)))
        for first_url, expected in (
            ("/v1/devices/van-8/arrivals?limit=2", [("van-8", 1), ("van-8", 2), ("van-8", 3)]),
            ("/v1/routes/R-1/arrivals?limit=2", []),
        ):
            seen: list[tuple[str, int]] = []
            url = first_url
            while url:
                r = await api.client.get(url)
                assert r.status_code == 200
                seen += [(a["device_id"], a["seq"]) for a in r.json()]
                link = r.headers.get("link")
                url = link.split(">", 1)[0].lstrip("<") if link else ""
            assert seen == expected
        events = await api.store.arrivals(limit=4)
        assert [(e.device_id, e.seq) for e in events] == [
            ("van-7", 1), ("van-8", 1), ("van-7", 2), ("van-8", 2),
        ]  # fmt: skip
        last = events[1]
        rest = await api.store.arrivals(limit=10, after=(last.time, last.device_id, last.seq))
        assert [(e.device_id, e.seq) for e in rest] == [
            ("van-7", 2), ("van-8", 2), ("van-7", 3), ("van-8", 3),
        ]  # fmt: skip

    run(make_store, scenario)


# --- 10: implausible record times ------------------------------------------------------------


def check(message: tuple[str, bytes], van: Van, **kwargs: Any) -> Accepted | Rejected:
    from cloud_ingest.store.base import Device  # noqa: PLC0415

    device = Device(van.device_id, van.key.public_key().public_bytes_raw(), True, T0)
    return check_message(*message, received_at=RECEIVED, device=device, **kwargs)


def test_telemetry_dated_in_2099_or_9999_is_quarantined_and_the_rest_stored() -> None:
    van = Van("van-7")
    ok = RECEIVED - timedelta(minutes=1)
    fixes = [
        (1, fix(0, time=ok)),
        (2, fix(0, time=datetime(2099, 1, 1, tzinfo=UTC))),
        (3, fix(0, time=datetime(9999, 12, 31, tzinfo=UTC))),
        (4, fix(0, time=ok + timedelta(seconds=1))),
        (5, fix(0, time=RECEIVED + timedelta(minutes=6))),  # beyond 5 min of clock skew
        (6, fix(0, time=RECEIVED + timedelta(minutes=4))),  # within it
    ]
    payload = encode_batch("van-7", 1, fixes, historical=False)
    checked = check((van.topic("telemetry"), payload), van)
    assert isinstance(checked, Accepted)
    positions = [i.seq for i in checked.items if isinstance(i, Position)]
    assert positions == [1, 4, 6]
    (q,) = [i for i in checked.items if isinstance(i, Quarantined)]
    assert (q.reason, q.payload, q.covered) == (
        "implausible_time",
        payload,
        Covered("van-7", "telemetry", 2, 3),
    )
    assert "3 of 6 fixes refused" in q.detail
    assert "2099-01-01T00:00:00.000Z" in q.detail
    # The refused seqs are settled (the batch is kept whole in the quarantine).
    others = [i for i in checked.items if isinstance(i, Covered)]
    assert others == [Covered("van-7", "telemetry", 5, 5)]
    # Without the check (times=None) everything is taken, as before.
    assert len(check((van.topic("telemetry"), payload), van, times=None).items) == 6  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("when", "times", "refused"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), RecordTimes(), "before 2020-01-01T00:00:00.000Z"),
        (datetime(1970, 1, 1, tzinfo=UTC), RecordTimes(), "the earliest plausible time"),
        (datetime(2099, 1, 1, tzinfo=UTC), RecordTimes(), "ahead of its receipt"),
        (RECEIVED - timedelta(days=40), RecordTimes(), None),  # an old outage's replay
        (RECEIVED - timedelta(days=40), RecordTimes(max_age=timedelta(days=30)), "older than"),
        (RECEIVED + timedelta(minutes=4), RecordTimes(), None),
    ],
)
def test_an_event_at_an_implausible_time_is_refused_and_settled(
    when: datetime, times: RecordTimes, refused: str | None
) -> None:
    van = Van("van-7")
    checked = check(arrival(van, 7, when), van, times=times)
    if refused is None:
        assert isinstance(checked, Accepted)
        return
    assert isinstance(checked, Rejected)
    assert checked.reason == "implausible_time"
    assert refused in checked.detail
    assert checked.covered == Covered("van-7", "events", 7, 7)


def test_a_pod_dated_2099_is_refused_after_its_signature(make_store: StoreFactory) -> None:
    """A genuine, signed POD at an implausible time: quarantined with its seq settled
    (its JWS kept whole); the next POD stays chain pending, its predecessor being in the
    quarantine, not in the chain."""
    van = Van("van-7")

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        await ingest(api.store, van.pod())
        await ingest(api.store, van.pod(scan_time="2099-01-01T00:00:00.000Z"))
        result = await ingest(api.store, van.pod())
        assert result.acks["van-7"]["pod"] == 3
        (q, *_) = await api.store.quarantine()
        assert (q.reason, q.covered) == ("implausible_time", Covered("van-7", "pod", 2, 2))
        assert q.kept_bytes == q.payload_bytes
        assert [p.chain_status for p in result.new_pods] == ["pending"]

    run(make_store, scenario)


def test_the_latest_position_is_never_a_fix_from_2099(make_store: StoreFactory) -> None:
    van = Van("van-7")
    good = [(seq, fix(seq)) for seq in range(1, 4)]
    future = [(4, fix(0, time=datetime(2099, 1, 1, tzinfo=UTC), lat=1.0, lon=2.0))]

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        topic = van.topic("telemetry")
        await ingest(api.store, (topic, encode_batch("van-7", 1, good, historical=False)))
        result = await ingest(
            api.store, (topic, encode_batch("van-7", 4, future, historical=False))
        )
        assert result.acks["van-7"]["telemetry"] == 4  # settled: the van moves on
        (latest,) = (await api.client.get("/v1/positions/latest")).json()
        assert (latest["seq"], latest["time"]) == (3, "2026-11-21T09:00:03.000Z")
        (m,) = (await api.client.get("/v1/quarantine")).json()["messages"]
        assert (m["reason"], m["covered"]) == (
            "implausible_time",
            {"stream": "telemetry", "first_seq": 4, "last_seq": 4},
        )

    run(make_store, scenario)


def test_the_limits_are_settings(tmp_path: Path) -> None:
    toml = tmp_path / "ingest.toml"
    toml.write_text(
        "[quarantine]\npayload_max_bytes = 1024\nmax_age_days = 30\n"
        "[record_time]\nearliest = 2024-06-01T00:00:00+02:00\nmax_age_days = 30\n"
    )
    env = {"FLEET_INGEST_RECORD_TIME_MAX_AHEAD_S": "60"}
    config = load_config(toml, env)
    assert (config.quarantine.payload_max_bytes, config.quarantine.max_unsettled_rows) == (
        1024,
        100_000,
    )
    (worker,) = worker_configs(config)
    assert worker.record_times == RecordTimes(
        max_ahead=timedelta(seconds=60),
        earliest=datetime(2024, 5, 31, 22, tzinfo=UTC),
        max_age=timedelta(days=30),
    )
    assert worker_configs(load_config(None, {}))[0].record_times == RecordTimes()
    with pytest.raises(ConfigError, match=r"record_time\.earliest"):
        load_config(None, {"FLEET_INGEST_RECORD_TIME_EARLIEST": "2024-06-01T00:00:00"})
