"""End to end: hostile and broken messages through a real Mosquitto into ingest.

A van's real day (``van-0001``, the victim) and a second van's (``van-0002``) are
published while the following arrive on the wire, each rejected into quarantine with
its reason, and nothing else affected (the vans' records stored once, their acks what
they sent, the normalized stream carrying only accepted records):

==========================================  ==============================  =========
message                                     reason                          settles
==========================================  ==============================  =========
van-0002's telemetry on van-0001's topic    device_mismatch                 no
van-0002's POD on van-0001's topic          device_mismatch                 no
a valid batch from an unknown device        unknown_device                  no
a 300 KiB payload                           too_large                       no
bytes that are not a batch                  malformed                       no
an envelope that is not JSON                malformed                       no
an arrival without its stop                 schema                          no
a POD signed with another key (forged)      bad_signature                   its seq
a real POD with its claims altered          bad_signature                   its seq
a real POD, its envelope's parcel altered   pod_mismatch                    its seq
a POD signed for another device id          wrong_device                    its seq
a stored POD sent again as a new record     replayed_pod                    its seq
==========================================  ==============================  =========

"settles": the messages that take a seq of the victim's own pod stream stand for a
record the van sent (ingest trusts the topic for who sent it: the broker's ACL lets a
van publish only under its own id), so ingest counts that seq as received and the van
stops resending it; the others take no seq and move no ack.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest.store.base import Quarantined, Store
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.contract.records import JsonRecord
from firmware_agent.contract.topics import STREAMS, uplink_topic
from firmware_agent.pod.chain import PodChain
from tests.broker import Mosquitto
from tests.pg import fresh_database
from tests.pods import fields
from tests.uplinkday import (
    DEVICE,
    EPOCH,
    FOREVER,
    Day,
    DayMessages,
    ObservedWorker,
    Watcher,
    assert_exactly_once,
    day_messages,
    make_day,
    publish_all,
    raw_public_key,
    stored_pods,
)
from tests.wire import envelope

pytestmark = pytest.mark.slow

VICTIM = DEVICE
OTHER = "van-0002"
UNKNOWN = "van-9999"
HALF_PODS = 6  # the victim's PODs sent before the attacks


@pytest.fixture(scope="module")
def full_day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return make_day(tmp_path_factory.mktemp("securityday"))


@dataclass(frozen=True)
class Attack:
    name: str
    topic: str
    payload: bytes
    reason: str
    device_id: str | None
    # The victim's pod seq the message takes (and settles), or None.
    settles: int | None = None
    # What quarantine keeps: the payload, or (refused by the store) the POD's JWS.
    kept: bytes | None = None


@dataclass
class Attacked:
    store_kind: str
    dsn: str
    directory: Path
    victim: DayMessages
    other: DayMessages
    attacks: list[Attack]
    good_pod_seqs: list[int]  # the victim's envelope seqs of its genuine PODs
    last_pod_seq: int  # the victim's pod stream, genuine and settled together
    watcher: Watcher
    worker: IngestWorker
    published: int

    def open(self) -> Store:
        return PostgresStore(self.dsn) if self.dsn else SqliteStore(self.directory / "ingest.db")


def _envelope(device_id: str, stream: str, seq: int, record: dict[str, Any] | JsonRecord) -> bytes:
    return envelope(device_id, stream, seq, record, historical=False, sent_at=datetime.now(UTC))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _altered_claims(token: str, **changes: Any) -> str:
    """``token`` with its payload's claims changed and its signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return ".".join((header, _b64(json.dumps(claims, separators=(",", ":")).encode()), signature))


def _pod_record(token_claims: dict[str, Any], token: str) -> dict[str, Any]:
    """The van's pod message for a POD with these claims (as van.py builds it)."""
    return {
        "type": "pod",
        "time": token_claims["scan_time"],
        "stop_id": token_claims["stop_id"],
        "parcel": token_claims["parcel"],
        "seq": token_claims["seq"],
        "verdict": token_claims["verdict"],
        "distance_m": token_claims["distance_m"],
        "jws": token,
    }


def _attacks(victim: DayMessages, other: DayMessages, first_seq: int) -> list[Attack]:
    """The hostile messages; those that settle take the victim's pod seqs from
    ``first_seq`` on, as records its outbox would have numbered."""
    vt = uplink_topic(VICTIM, "telemetry")
    vev, vpod = uplink_topic(VICTIM, "events"), uplink_topic(VICTIM, "pod")
    oversized = b"{" + b" " * (300 * 1024) + b"}"
    next_pod = victim.pods[HALF_PODS][1].to_json()  # the victim's next genuine POD
    seq = iter(range(first_seq, first_seq + 100))

    forged = PodChain(VICTIM, Ed25519PrivateKey.generate()).issue(fields(1))
    misnamed = PodChain(OTHER, victim.key).issue(fields(2))  # the victim's key, not its id
    altered = _altered_claims(next_pod["jws"], parcel="00106141412345" + "9999")
    replayed = victim.pods[0][1].to_json()  # POD 1, stored already
    arrival = next(r.to_json() for _, r in victim.events if r.type == "arrival")
    no_stop = {k: v for k, v in arrival.items() if k != "stop_id"}
    unknown = DayMessages(UNKNOWN, Ed25519PrivateKey.generate(), telemetry=victim.telemetry[:5])
    pod_mismatch = {**next_pod, "parcel": misnamed.claims["parcel"]}

    def pod(name: str, record: dict[str, Any], reason: str, kept: bytes | None = None) -> Attack:
        s = next(seq)
        return Attack(name, vpod, _envelope(VICTIM, "pod", s, record), reason, VICTIM, s, kept)

    def unsigned(name: str, record: dict[str, Any]) -> Attack:
        # Not signed by the victim: it settles no seq. It names a seq of the victim's
        # stream (the one a settled attack takes next), which stays the victim's.
        payload = _envelope(VICTIM, "pod", first_seq, record)
        return Attack(name, vpod, payload, "bad_signature", VICTIM)

    return [
        Attack("other's batch", vt, other.batch(range(1, 11)), "device_mismatch", VICTIM),
        Attack("other's POD", vpod, other.envelope("pod", 1), "device_mismatch", VICTIM),
        Attack("unknown device", uplink_topic(UNKNOWN, "telemetry"), unknown.batch(range(1, 6)),
               "unknown_device", UNKNOWN),
        # Settles nothing: the quarantine keeps its first 4 KiB (and its length, digest).
        Attack("oversized", vev, oversized, "too_large", VICTIM, kept=oversized[:4096]),
        Attack("not a batch", vt, b"FT\x01\x00\xff\xff\xff", "malformed", VICTIM),
        Attack("not JSON", vev, b'{"v": 1, "device_id": "van-0001", ', "malformed", VICTIM),
        Attack("no stop", vev, _envelope(VICTIM, "events", 1, no_stop), "schema", VICTIM),
        unsigned("forged", _pod_record(forged.claims, forged.token)),
        unsigned("altered claims", {**next_pod, "jws": altered}),
        pod("altered envelope", pod_mismatch, "pod_mismatch"),
        pod("misnamed", _pod_record(misnamed.claims, misnamed.token), "wrong_device"),
        pod("replayed", replayed, "replayed_pod", kept=replayed["jws"].encode()),
    ]  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def attacked(
    request: pytest.FixtureRequest, full_day: Day, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Attacked]:
    tmp = tmp_path_factory.mktemp(f"attacked-{request.param}")
    victim = day_messages(full_day, Ed25519PrivateKey.generate(), VICTIM)
    other = day_messages(full_day, Ed25519PrivateKey.generate(), OTHER)
    attacks = _attacks(victim, other, HALF_PODS + 1)
    settled = [a.settles for a in attacks if a.settles is not None]
    n_pods = len(victim.pods)
    # The victim's pod stream: 1..HALF_PODS genuine, then the attacks' seqs, then the rest.
    good_seqs = list(range(1, HALF_PODS + 1))
    good_seqs += list(range(max(settled) + 1, max(settled) + 1 + n_pods - HALF_PODS))
    victim_before, victim_after = _halves(victim, good_seqs)
    other_before, other_after = _halves(other, list(range(1, len(other.pods) + 1)))
    messages = [
        *victim_before,
        *other_before,
        *((a.topic, a.payload) for a in attacks),
        *victim_after,
        *other_after,
    ]

    async def main(dsn: str) -> Attacked:
        with Mosquitto(tmp / "broker") as broker:
            store: Store = PostgresStore(dsn) if dsn else SqliteStore(tmp / "ingest.db")
            async with store, Watcher(broker.port) as watcher:
                await store.migrate()
                await store.register_device(VICTIM, raw_public_key(victim.key))
                await store.register_device(OTHER, raw_public_key(other.key))
                worker = ObservedWorker(store, WorkerConfig(port=broker.port))
                task = asyncio.create_task(worker.run())
                try:
                    await worker.connected.wait()
                    published = await publish_all(broker.port, messages)
                    await worker.finished(published)
                    await watcher.settle()
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        return Attacked(
            request.param, dsn, tmp, victim, other, attacks, good_seqs,
            max(good_seqs), watcher, worker, published,
        )  # fmt: skip

    with fresh_database() if request.param == "postgres" else nullcontext("") as dsn:
        yield asyncio.run(main(dsn))


def _halves(
    d: DayMessages, pod_seqs: list[int]
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """A van's day as published, in two halves: telemetry in batches of 20, events, and
    PODs under envelope seqs ``pod_seqs`` (the first :data:`HALF_PODS` in the first)."""
    n_tel, n_ev = len(d.telemetry), len(d.events)
    runs = [range(i, min(i + 20, n_tel + 1)) for i in range(1, n_tel + 1, 20)]
    tel = [(uplink_topic(d.device_id, "telemetry"), d.batch(r)) for r in runs]
    ev = [
        (uplink_topic(d.device_id, "events"), d.envelope("events", s)) for s in range(1, n_ev + 1)
    ]
    pods = [
        (uplink_topic(d.device_id, "pod"), _envelope(d.device_id, "pod", seq, record))
        for seq, (_, record) in zip(pod_seqs, d.pods, strict=True)
    ]
    t, e = len(tel) // 2, n_ev // 2
    return tel[:t] + ev[:e] + pods[:HALF_PODS], tel[t:] + ev[e:] + pods[HALF_PODS:]


def test_each_attack_is_quarantined_with_its_reason(attacked: Attacked) -> None:
    async def check() -> list[Quarantined]:
        async with attacked.open() as store:
            return await store.quarantine(limit=1000)

    quarantine = asyncio.run(check())
    assert Counter(q.reason for q in quarantine) == Counter(a.reason for a in attacked.attacks)
    assert attacked.worker.counts.quarantined == Counter(a.reason for a in attacked.attacks)
    for attack in attacked.attacks:
        kept = attack.kept or attack.payload
        rows = [q for q in quarantine if q.payload == kept]
        assert len(rows) == 1, attack.name
        q = rows[0]
        assert (q.reason, q.device_id, q.topic) == (attack.reason, attack.device_id, attack.topic)
        assert q.detail
        settled = None if q.covered is None else (q.covered.stream, q.covered.first_seq)
        assert settled == (None if attack.settles is None else ("pod", attack.settles))


def test_nothing_else_is_affected(attacked: Attacked) -> None:
    victim, other = attacked.victim, attacked.other
    tel, ev = len(victim.telemetry), len(victim.events)

    async def check() -> None:
        async with attacked.open() as store:
            # The other van: its day exactly, as if nothing had happened.
            await assert_exactly_once(
                store,
                other.last_seqs(),
                raw_public_key(other.key),
                device_id=OTHER,
                watcher=attacked.watcher,
                single_device=False,
            )
            # The victim: every genuine record stored once, and the seqs the refused
            # PODs took settled, so its acks cover exactly what it sent.
            assert await store.acks(VICTIM) == {
                "telemetry": tel,
                "events": ev,
                "pod": attacked.last_pod_seq,
            }
            assert await store.gaps(VICTIM) == []
            positions = await store.track(VICTIM, EPOCH, FOREVER)
            assert [p.seq for p in positions] == list(range(1, tel + 1))
            # Each stored point is the point the victim sent, every field.
            assert [p.point for p in positions] == [sent for _, sent in victim.telemetry]
            pods = await stored_pods(store, VICTIM)
            assert [p.seq for p in pods] == attacked.good_pod_seqs
            assert [p.record for p in pods] == [r for _, r in victim.pods]
            assert {p.chain_status for p in pods} == {"ok"}
            # Nothing at all for the unknown device.
            assert await store.get_device(UNKNOWN) is None
            assert await store.acks(UNKNOWN) == dict.fromkeys(STREAMS, 0)
            counts = await store.counts()
            assert counts.positions == tel + len(other.telemetry)
            assert counts.stop_events == ev + len(other.events)
            assert counts.pods == len(victim.pods) + len(other.pods)

    asyncio.run(check())
    watcher = attacked.watcher
    # The normalized stream: the victim's genuine records, each once; nothing else.
    stream = {
        leaf: Counter(m["seq"] for m in watcher.fleetstream(leaf, VICTIM))
        for leaf in ("position", "event", "pod")
    }
    assert stream["position"] == Counter(range(1, tel + 1))
    assert stream["event"] == Counter(range(1, ev + 1))
    assert stream["pod"] == Counter(attacked.good_pod_seqs)
    assert watcher.of("fleetstream", "position", UNKNOWN) == []
    assert watcher.acks(UNKNOWN) == []  # an unknown device is never acked
    assert watcher.contract_failures() == []
    for device in (VICTIM, OTHER):
        watcher.check_acks_never_go_down(device)


@dataclass
class _Small:
    """A tiny scenario: the victim's first PODs, then one message."""

    acks_before: dict[str, int]
    acks_after: dict[str, int]
    quarantine: list[Quarantined]


def _small_scenario(tmp: Path, day: Day, message: Any) -> _Small:
    victim = day_messages(day, Ed25519PrivateKey.generate(), VICTIM)
    other = day_messages(day, Ed25519PrivateKey.generate(), OTHER)
    genuine = [
        (uplink_topic(VICTIM, "pod"), victim.envelope("pod", s)) for s in range(1, HALF_PODS + 1)
    ]

    async def main() -> _Small:
        with Mosquitto(tmp / "broker") as broker:
            async with SqliteStore(tmp / "ingest.db") as store:
                await store.migrate()
                await store.register_device(VICTIM, raw_public_key(victim.key))
                await store.register_device(OTHER, raw_public_key(other.key))
                worker = ObservedWorker(store, WorkerConfig(port=broker.port))
                task = asyncio.create_task(worker.run())
                try:
                    await worker.connected.wait()
                    n = await publish_all(broker.port, genuine)
                    await worker.finished(n)
                    before = await store.acks(VICTIM)
                    n += await publish_all(broker.port, [message(victim, other)])
                    await worker.finished(n)
                    return _Small(before, await store.acks(VICTIM), await store.quarantine())
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(main())


def test_a_forged_pod_on_another_vans_topic_moves_no_ack(full_day: Day, tmp_path: Path) -> None:
    """van-0002 publishes, on van-0001's pod topic, a POD envelope naming van-0001 with
    van-0001's next seq, signed with van-0002's own key. It is refused (bad_signature),
    and must leave van-0001's ack where van-0001 put it."""

    def forged(victim: DayMessages, other: DayMessages) -> tuple[str, bytes]:
        _, record = other.pods[0]
        return uplink_topic(VICTIM, "pod"), _envelope(VICTIM, "pod", HALF_PODS + 1, record)

    result = _small_scenario(tmp_path, full_day, forged)
    assert [q.reason for q in result.quarantine] == ["bad_signature"]
    assert result.acks_after == result.acks_before == {"telemetry": 0, "events": 0, "pod": 6}


def test_a_pod_replayed_under_a_stored_seq_is_quarantined(full_day: Day, tmp_path: Path) -> None:
    def replayed(victim: DayMessages, other: DayMessages) -> tuple[str, bytes]:
        _, record = victim.pods[0]  # POD 1, as a new copy of envelope seq 2
        return uplink_topic(VICTIM, "pod"), _envelope(VICTIM, "pod", 2, record)

    result = _small_scenario(tmp_path, full_day, replayed)
    assert result.acks_after == result.acks_before
    assert [q.reason for q in result.quarantine] == ["replayed_pod"]
