"""The van's day as a value (issue 14): the pipeline saves it, a new pipeline takes it
back, and the outbox keeps it in the same transaction as the records that changed it.

The end-to-end proof (the real agent SIGKILLed 20 times) is tests/test_e2e_day.py;
these are the parts, each in isolation: the codec, the pipeline's restore (a rescan,
a van still in a fence, the ETA's served stops, another day), the outbox's batch and
the committer's day with held records.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.manifest import Manifest
from firmware_agent.contract.topics import STREAMS
from firmware_agent.day_state import DayState, DayStateError, EtaDay, StopDay
from firmware_agent.errors import OutboxStorageError
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.pod.chain import PodChain
from firmware_agent.scan.types import Scan
from firmware_agent.uplink.holdback import Committer, Held
from firmware_agent.uplink.outbox import META_POD_CHAIN, META_VAN_DAY, Outbox
from firmware_agent.uplink.queue import AsyncOutbox
from firmware_agent.van import VanConfig, VanPipeline
from tests.vanday import T0, drive, js, manifest, route_line, stop

SSCC = "106141412345678908"
KEY = Ed25519PrivateKey.generate()


def street(**extra: Any) -> Manifest:
    return manifest(
        [stop("S1", 0.0, parcels=[SSCC]), stop("S2", 1000.0), stop("S3", 2000.0)],
        route=route_line([-500.0, 2500.0]),
        **extra,
    )


def van(m: Manifest | None = None) -> VanPipeline:
    # A parcel signed at its scan (no wait for a reason card): these tests are about
    # the day; what waits for a card across a restart is in tests/test_outcomes.py.
    return VanPipeline(
        m or street(),
        pods=PodChain("van-1", KEY),
        config=VanConfig(parcel_wait_s=0.0),
        telemetry=False,
        eta=EtaPredictor.baseline("test"),
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def scan(seconds: float) -> Scan:
    return Scan(time=at(seconds), raw="]C100" + SSCC, source="serial")


# -- the codec ----------------------------------------------------------------------------


def test_a_day_reads_back_as_it_was_written() -> None:
    day = DayState(
        route_id="R1",
        date="2026-11-21",
        delivered={SSCC: 3, "JD0123": 4},
        accepted=(("JD0123", 1.5e9), (SSCC, 1.5e9 + 2.25)),
        stops={
            "S1": StopDay(phase="arrived", visits=2, entered_s=10.0, arrived_s=10.0),
            "S2": StopDay(phase="idle", visits=1, departed_s=99.5),
            "S3": StopDay(phase="approach", entered_s=120.0, outside_s=121.0, moved=True),
        },
        has_moved=True,
        halt_s=130.0,
        off_s=140.0,
        off_reported=True,
        off_max_m=88.5,
    )
    assert DayState.decode(day.encode()) == day
    assert DayState.decode(DayState(route_id="R", date="2026-01-01").encode()).stops == {}
    # The ETA tracker's memory (passed stops, published ETAs, standing late_risks).
    eta = EtaDay(
        passed=("S4", "S5"),
        deferred=("S5",),
        published={"S4": (1.8e9, 1.7999e9), "S6": (1.8e9 + 60, 1.7999e9)},
        late=("S6",),
    )
    with_eta = DayState(route_id="R1", date="2026-11-21", eta=eta)
    assert DayState.decode(with_eta.encode()) == with_eta
    assert b'"eta"' not in day.encode()  # nothing to keep: the format as before


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "route_id": "R1"}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{"P":"1"},"accepted":[],"stops":{},'
        b'"engine":[false,null,null,false,0]}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[],'
        b'"stops":{"S1":["gone",0,null,null,null,null,null,false]},"engine":[false,null,null,false,0]}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[],'
        b'"stops":{"S1":["arrived",0,null,null,null,null,null,false]},"engine":[false,null,null,false,0]}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[["P",1e999]],"stops":{},'
        b'"engine":[false,null,null,false,0]}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[],"stops":{},'
        b'"engine":[false,null,null,false,0],"eta":{"passed":[3]}}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[],"stops":{},'
        b'"engine":[false,null,null,false,0],"eta":{"published":{"S1":[1]}}}',
        b'{"v":1,"route_id":"R","date":"d","delivered":{},"accepted":[],"stops":{},'
        b'"engine":[false,null,null,false,0],"eta":[]}',
    ],
)
def test_a_damaged_day_is_a_day_state_error(data: bytes) -> None:
    with pytest.raises(DayStateError):
        DayState.decode(data)


# -- the pipeline, saved and taken back ------------------------------------------------------


def _deliver_at_s1(v: VanPipeline) -> list[dict[str, Any]]:
    """Drive to S1, stop in its fence until the dwell confirms it, scan its parcel."""
    out = []
    for f in drive([(40, 10.0), (20, 0.0)], x0=-400.0):
        out += js(v.on_fix(f))
    out += js(v.on_scan(scan(61.0)))
    return out


def test_a_restarted_pipeline_carries_on_the_day() -> None:
    first = van()
    before = _deliver_at_s1(first)
    assert [(m["type"], m.get("visit")) for m in before if m["type"] in ("arrival", "pod")] == [
        ("arrival", 1),
        ("pod", None),
    ]
    saved = first.day_state().encode()

    again = van()
    assert again.restore_day(DayState.decode(saved))
    # The parcel scanned again, out of the duplicate window: already delivered, no POD.
    rescan = js(again.on_scan(scan(80.0)))
    assert [(m["type"], m.get("reason"), m.get("pod_seq")) for m in rescan] == [
        ("scan_rejected", "already_delivered", 1)
    ]
    # Still parked in S1's fence: no second arrival; the ETAs leave S1 out.
    out = []
    for f in drive([(30, 0.0)], x0=0.0, t0=at(62.0)):
        out += js(again.on_fix(f))
    assert not [m for m in out if m["type"] == "arrival"]
    assert again.eta_tracker is not None
    assert again.eta_tracker.served == {"S1"}
    assert {m["stop_id"] for m in out if m["type"] == "eta"} <= {"S2", "S3"}
    # Away and back: the next real visit is visit 2.
    for f in drive([(20, 10.0), (20, -10.0), (70, 0.0)], x0=0.0, t0=at(100.0)):
        out += js(again.on_fix(f))
    arrivals = [(m["stop_id"], m["visit"]) for m in out if m["type"] == "arrival"]
    assert arrivals == [("S1", 2)]


def test_a_fresh_pipeline_forgets_which_is_why_the_day_is_saved() -> None:
    """The same restart without the saved day: what issue 14 saw on the vans."""
    _deliver_at_s1(van())
    fresh = van()
    again = js(fresh.on_scan(scan(80.0)))
    assert [m["type"] for m in again] == ["pod"]  # a second signed POD
    out = []
    for f in drive([(30, 0.0)], x0=0.0, t0=at(62.0)):
        out += js(fresh.on_fix(f))
    assert [(m["stop_id"], m["visit"]) for m in out if m["type"] == "arrival"] == [("S1", 1)]


def test_a_duplicate_read_across_the_restart_stays_a_duplicate() -> None:
    first = van()
    _deliver_at_s1(first)
    again = van()
    again.restore_day(first.day_state())
    assert again.on_scan(scan(63.0)) == []  # 2 s after: within the 10 s window


def test_another_days_state_is_not_taken_back() -> None:
    first = van()
    _deliver_at_s1(first)
    day = first.day_state()
    for other in (street(route_id="R2"), street(date="2026-11-22")):
        fresh = van(other)
        assert not fresh.restore_day(day)
        assert [m["type"] for m in js(fresh.on_scan(scan(80.0)))] == ["pod"]


def test_a_new_days_manifest_starts_a_new_day() -> None:
    v = van()
    _deliver_at_s1(v)
    v.load_manifest(street())  # the same day again: it carries on
    assert js(v.on_scan(scan(80.0)))[0]["reason"] == "already_delivered"
    v.load_manifest(street(date="2026-11-22"))
    assert v.engine.visits("S1") == 0
    assert v.eta_tracker is not None
    assert v.eta_tracker.served == frozenset()
    assert [m["type"] for m in js(v.on_scan(scan(100.0)))] == ["pod"]
    assert v.day_state().date == "2026-11-22"


# -- the outbox: a day with its records, or not at all -----------------------------------------


def test_a_batch_of_streams_and_its_meta_commit_together(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with Outbox(tmp_path / "outbox.db") as outbox:
        seqs = outbox.add_batch(
            [("events", [(b"{}", now), (b"{}", now)]), ("telemetry", []), ("pod", [(b"p", now)])],
            meta={META_VAN_DAY: b"day-1", META_POD_CHAIN: b"chain-1"},
        )
        assert seqs == [[1, 2], [], [1]]
        assert outbox.meta(META_VAN_DAY) == b"day-1"
        outbox.close()
        # A failure takes nothing: neither records nor the day (a trigger refuses PODs).
        pod = STREAMS.index("pod")
        with sqlite3.connect(tmp_path / "outbox.db") as db:
            db.execute(
                "CREATE TRIGGER no_pod BEFORE INSERT ON record "
                f"WHEN NEW.stream = {pod} BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
        db.close()
        with Outbox(tmp_path / "outbox.db") as again:
            with pytest.raises(OutboxStorageError):
                again.add_batch(
                    [("events", [(b"{}", now)]), ("pod", [(b"p", now)])],
                    meta={META_VAN_DAY: b"day-2"},
                )
            assert again.meta(META_VAN_DAY) == b"day-1"
            assert again.last_seq("events") == 2
            assert again.counts() == {"telemetry": 0, "events": 2, "pod": 1}


class _Refusing(AsyncOutbox):
    """An outbox that refuses every write while ``full`` (a full disk)."""

    full = False

    async def add_batch(self, *args: Any, **kwargs: Any) -> list[list[int]]:
        if self.full:
            raise OutboxStorageError("disk full", sqlite_errorname="SQLITE_FULL")
        return await super().add_batch(*args, **kwargs)

    async def add_many(self, *args: Any, **kwargs: Any) -> list[int]:
        if self.full:
            raise OutboxStorageError("disk full", sqlite_errorname="SQLITE_FULL")
        return await super().add_many(*args, **kwargs)


def test_held_records_take_the_newest_day_with_the_last_of_them(tmp_path: Path) -> None:
    async def main() -> None:
        now = datetime.now(UTC)
        async with _Refusing(tmp_path / "outbox.db") as outbox:
            committer = Committer(outbox)
            retry = asyncio.create_task(committer.run())
            try:
                await committer.commit([Held("events", b"{}", now)], day=b"day-1")
                assert await outbox.meta(META_VAN_DAY) == b"day-1"
                outbox.full = True
                await committer.commit([Held("events", b"{}", now)], day=b"day-2")
                await committer.commit([Held("telemetry", b"t", now)], day=b"day-3")
                await committer.commit([Held("pod", b"p", now, b"chain")])
                assert committer.degraded
                assert await outbox.meta(META_VAN_DAY) == b"day-1"
                outbox.full = False
                async with asyncio.timeout(10):
                    await committer.flushed()
                assert await outbox.meta(META_VAN_DAY) == b"day-3"
                assert await outbox.counts() == {"telemetry": 1, "events": 2, "pod": 1}
            finally:
                retry.cancel()
                await asyncio.gather(retry, return_exceptions=True)

    asyncio.run(main())


def test_a_day_alone_is_stored_and_held_on_a_full_disk(tmp_path: Path) -> None:
    """A scan that publishes nothing may change the day (a parcel now waits for its
    reason card): the day goes to the outbox alone; on a full disk it waits in memory
    and is stored at the first retry once space returns."""

    async def main() -> None:
        async with _Refusing(tmp_path / "outbox.db") as outbox:
            committer = Committer(outbox)
            await committer.commit([], day=b"day-1")
            assert await outbox.meta(META_VAN_DAY) == b"day-1"
            assert not committer.degraded
            outbox.full = True
            await committer.commit([], day=b"day-2")
            assert committer.degraded
            assert await outbox.meta(META_VAN_DAY) == b"day-1"
            outbox.full = False
            retry = asyncio.create_task(committer.run())
            try:
                async with asyncio.timeout(10):
                    while committer.degraded:
                        await asyncio.sleep(0.05)
            finally:
                retry.cancel()
            assert await outbox.meta(META_VAN_DAY) == b"day-2"

    asyncio.run(main())
