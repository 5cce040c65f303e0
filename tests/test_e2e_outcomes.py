"""End to end: a failed attempt, then a delivery of the same parcel, through the real
agent, a real Mosquitto and ingest on SQLite.

The day is the simulator's, with its scan log changed as a driver would: at the first
stop, the first parcel is scanned and then the "not home" reason card; later, on the
way to the next stop, the driver delivers it after all (a neighbour came out). Ingest
must store the two attempts as two PODs of the one chain, serve both for the parcel,
and republish both with their outcomes; nothing is quarantined.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_ingest.api import create_app
from cloud_ingest.store.sqlite import SqliteStore
from firmware_agent.contract.outcomes import card_code
from firmware_agent.pod.verify import verify_chain
from tests.apiauth import bearer
from tests.broker import Mosquitto
from tests.uplinkday import (
    DEVICE,
    Day,
    Watcher,
    agent_config,
    make_day,
    prepare_agent_state,
    run_day,
    saved_chain_state,
    stored_pods,
)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _format(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failed_then_delivered(day: Day, directory: Path) -> tuple[Day, str]:
    """``day`` with its first parcel attempted (not home) and delivered later."""
    lines = [json.loads(line) for line in day.scans.read_text(encoding="utf-8").splitlines()]
    # Only the day's good scans, so that every other parcel is plainly delivered.
    ok = [line for line in lines if line["truth"]["kind"] == "ok"]
    first = ok[0]
    parcel = first["truth"]["parcel"]
    stop_id = first["truth"]["stop_id"]
    at_first_stop = [line for line in ok if line["truth"]["stop_id"] == stop_id]
    next_stop = next(line for line in ok if line["truth"]["stop_id"] != stop_id)
    card = {
        "time": _format(_time(first["time"]) + timedelta(seconds=2.5)),
        "raw": card_code("not_home"),
        "source": "serial",
    }
    # Half way between the first stop's last scan and the next stop's first: driving.
    leave, arrive = _time(at_first_stop[-1]["time"]), _time(next_stop["time"])
    again = {**first, "time": _format(leave + (arrive - leave) / 2)}
    scans = sorted([*ok, card, again], key=lambda line: _time(line["time"]))
    if len(at_first_stop) > 1:  # the card comes before the stop's next parcel
        assert _time(card["time"]) < _time(at_first_stop[1]["time"])
    path = directory / "scans-outcomes.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in scans), encoding="utf-8")
    return Day(day.nmea, path, day.manifest), parcel


@pytest.mark.slow
def test_a_failed_attempt_and_a_later_delivery_reach_ingest_as_two_pods_of_one_chain(
    tmp_path: Path,
) -> None:
    day, parcel = failed_then_delivered(make_day(tmp_path / "day", stops=3, hours=0.4), tmp_path)
    public_key = prepare_agent_state(tmp_path / "van", day)

    async def main() -> tuple[Any, ...]:
        with Mosquitto(tmp_path / "broker") as broker:
            async with (
                SqliteStore(tmp_path / "ingest.db") as store,
                Watcher(broker.port) as watcher,
            ):
                await store.migrate()
                await store.register_device(DEVICE, public_key)
                config = agent_config(tmp_path / "van", day, broker.port)
                agent, _ = await run_day(store, config, port=broker.port)
                await watcher.settle()
                pods = await stored_pods(store, DEVICE)
                quarantined = (await store.counts()).quarantined
                transport = httpx.ASGITransport(app=create_app(store))
                headers = await bearer(store, "read")
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://i", headers=headers
                ) as c:
                    served = (await c.get(f"/v1/pods/{parcel}")).json()
                stream = watcher.fleetstream("pod", DEVICE)
        return agent, pods, quarantined, served, stream

    agent, pods, quarantined, served, stream = asyncio.run(main())
    assert quarantined == 0
    assert agent.counts.records["pod"] == len(pods)
    attempts = [p for p in pods if p.record.parcel == parcel]
    assert [p.record.outcome for p in attempts] == ["not_home", "delivered"]
    first, second = (p.pod_seq for p in attempts)
    assert second > first
    # One chain: every stored POD links, and the whole chain verifies with the van's key.
    assert [p.pod_seq for p in pods] == list(range(1, len(pods) + 1))
    assert {p.chain_status for p in pods} == {"ok"}
    report = verify_chain([p.jws for p in pods], Ed25519PublicKey.from_public_bytes(public_key))
    assert report.valid, report
    assert saved_chain_state(tmp_path / "van").seq == len(pods)
    # Every other parcel: one POD, delivered.
    others = [p for p in pods if p.record.parcel != parcel]
    assert {p.record.outcome for p in others} == {"delivered"}
    assert len({p.record.parcel for p in others}) == len(others)
    # The API serves both attempts; the stream carried both with their outcomes.
    assert served["delivered"] is True
    assert [(p["pod_seq"], p["outcome"]) for p in served["pods"]] == [
        (first, "not_home"),
        (second, "delivered"),
    ]
    assert all(p["verification"]["verified"] for p in served["pods"])
    said = {(m["pod_seq"], m["outcome"]) for m in stream if m["parcel"] == parcel}
    assert said == {(first, "not_home"), (second, "delivered")}
