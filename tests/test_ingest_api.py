"""The HTTP API against SQLite and a real PostgreSQL, fed with real signed messages.

Records reach the store the way the worker stores them: real payloads (a PodChain with
a real Ed25519 key, binary telemetry batches, event envelopes) checked by
:func:`cloud_ingest.verify.check_message` and written with ``store.write``. Every
scenario runs with blockbuster watching ``cloud_ingest``: a blocking call on the event
loop fails the test.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import httpx
import psycopg
import pytest
from blockbuster import blockbuster_ctx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from cloud_ingest.api import create_app
from cloud_ingest.store.base import StopEvent, Store, WriteBatch, WriteResult
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from cloud_ingest.verify import Accepted, Rejected, check_message
from cloud_ingest.worker import IngestWorker, WorkerConfig
from firmware_agent.contract import schema
from firmware_agent.contract.keys import key_thumbprint, public_key_pem
from firmware_agent.contract.records import Arrival, TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from firmware_agent.pod import chain as podchain
from firmware_agent.pod.chain import PodChain
from tests.apiauth import bearer
from tests.broker import Mosquitto
from tests.pg import ADMIN_DSN, fresh_database
from tests.pods import fields, pod_record
from tests.wire import envelope

T = TypeVar("T")
# The contract's schemas are files read on first use; read them here, off the loop that
# blockbuster watches (the service reads them before starting its workers).
schema.kinds()
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


# --- a van that sends real messages -------------------------------------------------------


class Van:
    """A device with a real key and POD chain, building the payloads it would publish."""

    def __init__(self, device_id: str, key: Ed25519PrivateKey | None = None) -> None:
        self.device_id = device_id
        self.key = key or Ed25519PrivateKey.generate()
        self.chain = PodChain(device_id, self.key)
        self.issued: list[podchain.Pod] = []

    @property
    def pem(self) -> str:
        return public_key_pem(self.key.public_key()).decode("ascii")

    @property
    def kid(self) -> str:
        return key_thumbprint(self.key.public_key())

    def topic(self, leaf: str) -> str:
        return f"fleet/v1/{self.device_id}/{leaf}"

    def telemetry(self, first: int, last: int, *, minutes: float = 0.0) -> tuple[str, bytes]:
        """Fixes ``first..last`` one second apart from ``T0 + minutes``; even seqs are
        thinned away, as the outbox does, and the batch, signed as the van signs such
        a batch, still covers them."""
        fixes = [
            (
                seq,
                TelemetryPoint(
                    time=T0 + timedelta(minutes=minutes, seconds=seq),
                    lat=48.1 + seq * 1e-5,
                    lon=11.5 + seq * 1e-5,
                    alt_m=519.5,
                    speed_mps=8.5,
                    course_deg=90.0,
                    mode=3,
                    quality=1,
                    hdop=0.9,
                    sats_used=9,
                ),
            )
            for seq in range(first, last + 1)
            if seq % 2 or seq == last
        ]
        payload = encode_batch(
            self.device_id, first, fixes, historical=False, last_seq=last, sign=self.key.sign
        )
        return self.topic("telemetry"), payload

    def arrival(self, seq: int, stop_id: str, minute: int) -> tuple[str, bytes]:
        when = (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
        record = {
            "type": "arrival",
            "time": when,
            "stop_id": stop_id,
            "detected_at": when,
            "lat": 48.137,
            "lon": 11.575,
            "visit": 1,
            "confirmed_by": "dwell",
        }
        sent = T0 + timedelta(minutes=minute, seconds=30)
        return self.topic("events"), envelope(
            self.device_id, "events", seq, record, historical=False, sent_at=sent
        )

    def pod(self, **changes: Any) -> tuple[str, bytes]:
        """The next POD of the chain as the van's pod message, in its envelope."""
        issued = self.chain.issue({**fields(self.chain.state.seq + 1), **changes})
        self.issued.append(issued)
        record = pod_record(issued)
        payload = envelope(
            self.device_id, "pod", issued.seq, record, historical=False, sent_at=RECEIVED
        )
        return self.topic("pod"), payload


async def ingest(
    store: Store, message: tuple[str, bytes], *, received_at: datetime = RECEIVED
) -> WriteResult:
    """Check ``message`` as the worker does (received at ``received_at``: record times
    are held to it) and store what it gives (or its quarantine)."""
    topic, payload = message
    device = await store.get_device(topic.split("/")[2])
    checked = check_message(topic, payload, received_at=received_at, device=device)
    if isinstance(checked, Accepted):
        return await store.write(WriteBatch.of(checked.items))  # type: ignore[arg-type]
    return await store.write(
        WriteBatch.of([checked.quarantined(topic=topic, payload=payload, received_at=received_at)])
    )


# --- backends and the client --------------------------------------------------------------


@dataclass
class Api:
    store: Store
    client: httpx.AsyncClient

    async def enroll(self, van: Van, **query: str) -> httpx.Response:
        return await self.client.post(
            "/v1/devices",
            params=query,
            json={"device_id": van.device_id, "public_key_pem": van.pem},
        )


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "sqlite":
        yield lambda: SqliteStore(tmp_path / "ingest.sqlite3")
        return
    with fresh_database() as dsn:
        yield lambda: PostgresStore(dsn)


def client(app: Any, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest", headers=headers
    )


def run(
    make_store: StoreFactory,
    scenario: Callable[[Api], Awaitable[T]],
    *,
    workers: Callable[[Store], Sequence[IngestWorker]] = lambda store: (),
) -> T:
    """``scenario`` against the API over a fresh, migrated store."""

    async def main() -> T:
        with blockbuster_ctx(["cloud_ingest"]):
            async with make_store() as store:
                await store.migrate()
                app = create_app(store, workers=workers(store), counts_max_age_s=0)
                # A token of every scope: these tests are about what the API serves
                # (test_ingest_auth.py is about who may ask).
                async with client(app, await bearer(store)) as http:
                    return await scenario(Api(store, http))

    return asyncio.run(main())


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


# --- devices ------------------------------------------------------------------------------


def test_enroll_enable_disable_and_a_conflicting_key(make_store: StoreFactory) -> None:
    van = Van("van-7")
    other = Van("van-7")

    async def scenario(api: Api) -> None:
        c = api.client
        r = await api.enroll(van)
        assert r.status_code == 201, r.text
        assert r.headers["location"] == "/v1/devices/van-7"
        body = r.json()
        assert (body["device_id"], body["enabled"], body["kid"]) == ("van-7", True, van.kid)
        assert body["public_key_pem"] == van.pem
        assert body["public_jwk"]["kty"] == "OKP"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["registered_at"])

        r = await c.post("/v1/devices/van-7/disable")
        assert (r.status_code, r.json()["enabled"]) == (200, False)
        # Enrolling again with the same key is harmless and keeps the device disabled.
        r = await api.enroll(van)
        assert (r.status_code, r.json()["enabled"]) == (200, False)
        assert (await c.get("/v1/devices/van-7")).json()["enabled"] is False
        r = await c.post("/v1/devices/van-7/enable")
        assert (r.status_code, r.json()["enabled"]) == (200, True)

        r = await api.enroll(other)
        assert r.status_code == 409
        assert "replace_key=true" in detail(r)
        assert (await c.get("/v1/devices/van-7")).json()["kid"] == van.kid
        r = await api.enroll(other, replace_key="true")
        assert (r.status_code, r.json()["kid"]) == (200, other.kid)

        r = await c.post(
            "/v1/devices",
            json={"device_id": "van-3", "public_key_pem": Van("van-3").pem, "enabled": False},
        )
        assert (r.status_code, r.json()["enabled"]) == (201, False)
        listed = (await c.get("/v1/devices")).json()
        assert [(d["device_id"], d["enabled"]) for d in listed] == [
            ("van-3", False),
            ("van-7", True),
        ]

        for path in ("/v1/devices/van-9", "/v1/devices/van-9/track"):
            r = await c.get(
                path, params={"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T10:00Z"}
            )
            assert r.status_code == 404
            assert detail(r) == "device 'van-9' is not registered"
        for action in ("enable", "disable"):
            r = await c.post(f"/v1/devices/van-9/{action}")
            assert (r.status_code, detail(r)) == (404, "device 'van-9' is not registered")
        assert (await c.get("/v1/devices/van-9/arrivals")).status_code == 404
        assert (await c.get("/v1/devices/van-9/gaps")).status_code == 404
        assert [d.device_id for d in await api.store.list_devices()] == ["van-3", "van-7"]

    run(make_store, scenario)


def test_enrollment_refuses_what_is_not_an_ed25519_public_key(make_store: StoreFactory) -> None:
    van = Van("van-7")
    private_pem = van.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    rsa_pem = (
        generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    garbled = van.pem.replace("MCow", "MCox")

    async def scenario(api: Api) -> None:
        cases = {
            private_pem: "PRIVATE key",
            rsa_pem: "RSAPublicKey, not an Ed25519 key",
            garbled: "not a valid PEM public key",
            "hello": "not a PEM public key",
        }
        for pem, message in cases.items():
            r = await api.client.post(
                "/v1/devices", json={"device_id": "van-7", "public_key_pem": pem}
            )
            assert r.status_code == 422, pem
            (error,) = r.json()["detail"]
            assert error["loc"] == ["body", "public_key_pem"]
            assert message in error["msg"]
            assert "input" not in error  # a pasted private key is not echoed back
            assert "PRIVATE KEY-----" not in r.text
        for device_id in ("", "-van", "van/7", "v" * 65):
            r = await api.client.post(
                "/v1/devices", json={"device_id": device_id, "public_key_pem": van.pem}
            )
            assert r.status_code == 422, device_id
        r = await api.client.post("/v1/devices", json={"device_id": "van-7"})
        assert r.status_code == 422
        assert await api.store.list_devices() == []

    run(make_store, scenario)


# --- positions ----------------------------------------------------------------------------


def test_latest_positions_and_a_track(make_store: StoreFactory) -> None:
    van7, van3 = Van("van-7"), Van("van-3")

    async def scenario(api: Api) -> None:
        c = api.client
        for van in (van7, van3):
            assert (await api.enroll(van)).status_code == 201
        assert (await c.get("/v1/positions/latest")).json() == []
        # van-7: seqs 1..20 (odd ones and 20 sent) at T0 + seq s; van-3: 1..5, 30 min later.
        await ingest(api.store, van7.telemetry(1, 10))
        await ingest(api.store, van7.telemetry(11, 20))
        await ingest(api.store, van3.telemetry(1, 5, minutes=30))

        latest = (await c.get("/v1/positions/latest")).json()
        assert [(p["device_id"], p["seq"]) for p in latest] == [("van-3", 5), ("van-7", 20)]
        p7 = latest[1]
        assert p7 == {
            "device_id": "van-7",
            "seq": 20,
            "time": "2026-11-21T09:00:20.000Z",
            "lat": pytest.approx(48.1002),
            "lon": pytest.approx(11.5002),
            "alt_m": 519.5,
            "speed_mps": 8.5,
            "course_deg": 90.0,
            "mode": 3,
            "quality": 1,
            "hdop": 0.9,
            "sats_used": 9,
            "historical": False,
        }

        r = await c.get(
            "/v1/devices/van-7/track",
            params={"start": "2026-11-21T10:00:05+01:00", "end": "2026-11-21T09:00:15Z"},
        )
        assert r.status_code == 200, r.text
        track = r.json()
        assert track["start"] == "2026-11-21T09:00:05.000Z"
        assert track["end"] == "2026-11-21T09:00:15.000Z"
        # [start, end): seqs 5..14, as sent (odd ones, and each batch's last).
        assert [p["seq"] for p in track["positions"]] == [5, 7, 9, 10, 11, 13]
        assert (track["truncated"], track["next_start"]) == (False, None)

        r = await c.get(
            "/v1/devices/van-7/track",
            params={"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T09:01:00Z", "limit": 4},
        )
        page = r.json()
        assert [p["seq"] for p in page["positions"]] == [1, 3, 5, 7]
        assert (page["truncated"], page["next_start"]) == (True, "2026-11-21T09:00:09.000Z")
        r = await c.get(
            "/v1/devices/van-7/track",
            params={"start": page["next_start"], "end": "2026-11-21T09:01:00Z", "limit": 4},
        )
        assert [p["seq"] for p in r.json()["positions"]] == [9, 10, 11, 13]

        # The other device's positions never leak into this track.
        r = await c.get(
            "/v1/devices/van-3/track",
            params={"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T10:00:00Z"},
        )
        assert [p["seq"] for p in r.json()["positions"]] == [1, 3, 5]

    run(make_store, scenario)


def test_a_long_track_is_served_whole(tmp_path: Path) -> None:
    """More positions than one serialization chunk: the pieces join into one document."""
    van = Van("van-7")

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        await ingest(api.store, van.telemetry(1, 2400), received_at=T0 + timedelta(hours=1))
        params = {"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T11:00:00Z"}
        r = await api.client.get("/v1/devices/van-7/track", params=params)
        assert r.headers["content-type"] == "application/json"
        track = r.json()
        expected = [s for s in range(1, 2401) if s % 2 or s == 2400]
        assert [p["seq"] for p in track["positions"]] == expected
        assert track["positions"][-1]["time"] == "2026-11-21T09:40:00.000Z"
        assert (track["truncated"], track["next_start"]) == (False, None)
        r = await api.client.get("/v1/devices/van-7/track", params=params | {"limit": 1001})
        track = r.json()
        assert [p["seq"] for p in track["positions"]] == expected[:1001]
        assert track["next_start"] == "2026-11-21T09:33:23.000Z"  # seq 2003, the next one
        params |= {"limit": 1001, "cursor": track["next_cursor"]}
        rest = (await api.client.get("/v1/devices/van-7/track", params=params)).json()
        assert [p["seq"] for p in rest["positions"]] == expected[1001:]
        assert (rest["truncated"], rest["next_cursor"]) == (False, None)

    run(lambda: SqliteStore(tmp_path / "ingest.sqlite3"), scenario)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-21T09:00:00", "2026-11-21T10:00:00Z", "start: '2026-11-21T09:00:00' has no UTC"),
        ("2026-11-21T09:00:00Z", "2026-11-21", "end: '2026-11-21' has no UTC offset"),
        ("yesterday", "2026-11-21T10:00:00Z", "start: 'yesterday' is not an ISO 8601 time"),
        ("2026-11-21T09:00:00 01:00", "2026-11-21T10:00Z", "write + as %2B"),
        ("2026-11-21T10:00:00Z", "2026-11-21T10:00:00Z", "end must be after start"),
        ("2026-11-21T10:00:00Z", "2026-11-21T09:00:00Z", "end must be after start"),
        ("2026-11-20T09:00:00Z", "2026-11-21T09:00:01Z", "at most 1 day, 0:00:00 per request"),
        ("0001-01-01T00:00:00+01:00", "2026-11-21T09:00:01Z", "out of range"),
    ],
)
def test_a_bad_track_range_is_a_400(tmp_path: Path, start: str, end: str, message: str) -> None:
    async def scenario(api: Api) -> None:
        await api.enroll(Van("van-7"))
        r = await api.client.get("/v1/devices/van-7/track", params={"start": start, "end": end})
        assert r.status_code == 400, r.text
        assert message in detail(r)

    run(lambda: SqliteStore(tmp_path / "ingest.sqlite3"), scenario)


def test_malformed_requests_are_422(tmp_path: Path) -> None:
    async def scenario(api: Api) -> None:
        c = api.client
        await api.enroll(Van("van-7"))
        cases = [
            "/v1/devices/van-7/track",  # start and end missing
            "/v1/devices/van-7/track?start=2026-11-21T09:00Z&end=2026-11-21T10:00Z&limit=0",
            "/v1/devices/-van/gaps",
            f"/v1/devices/{'v' * 65}",
            "/v1/quarantine?limit=0",
            "/v1/quarantine?limit=1001",
            "/v1/quarantine?limit=many",
            "/v1/routes/R-1/arrivals?limit=10001",
            "/v1/devices/van-7/arrivals?limit=-1",
            "/v1/pods/0010614%00",  # PostgreSQL text cannot hold NUL: refused up front
            "/v1/routes/R%0A1/arrivals",
            f"/v1/pods/{'9' * 201}",
        ]
        for path in cases:
            r = await c.get(path)
            assert r.status_code == 422, path
            assert r.json()["detail"][0]["msg"]

    run(lambda: SqliteStore(tmp_path / "ingest.sqlite3"), scenario)


# --- arrivals -----------------------------------------------------------------------------


def test_arrivals_by_route_and_by_device(make_store: StoreFactory) -> None:
    van7, van3 = Van("van-7"), Van("van-3")

    async def scenario(api: Api) -> None:
        c = api.client
        for van in (van7, van3):
            await api.enroll(van)
        await ingest(api.store, van7.arrival(1, "S001", minute=20))
        await ingest(api.store, van7.arrival(2, "S002", minute=5))
        await ingest(api.store, van3.arrival(1, "S101", minute=10))
        # These arrivals name no route; one that does (what the route endpoint
        # serves) is written here.
        at = T0 + timedelta(minutes=7)
        arrival = Arrival(
            time=at, stop_id="S009", detected_at=at, lat=48.1, lon=11.5, visit=1,
            confirmed_by="scan", route_id="R-1",
        )  # fmt: skip
        record = arrival.to_json()
        routed = StopEvent("van-3", 2, True, arrival)
        await api.store.write(WriteBatch(events=[routed]))

        arrivals = (await c.get("/v1/devices/van-7/arrivals")).json()
        assert [(a["seq"], a["stop_id"], a["time"]) for a in arrivals] == [
            (2, "S002", "2026-11-21T09:05:00.000Z"),
            (1, "S001", "2026-11-21T09:20:00.000Z"),
        ]
        assert arrivals[0]["record"]["confirmed_by"] == "dwell"
        assert arrivals[0]["historical"] is False
        assert len((await c.get("/v1/devices/van-7/arrivals?limit=1")).json()) == 1

        by_route = (await c.get("/v1/routes/R-1/arrivals")).json()
        assert by_route == [
            {
                "device_id": "van-3",
                "seq": 2,
                "type": "arrival",
                "time": "2026-11-21T09:07:00.000Z",
                "stop_id": "S009",
                "route_id": "R-1",
                "historical": True,
                "record": record,
            }
        ]
        assert (await c.get("/v1/routes/R-2/arrivals")).json() == []

    run(make_store, scenario)


# --- PODs ---------------------------------------------------------------------------------


def verify_with_joserfc(token: str, jwk: dict[str, str]) -> dict[str, Any]:
    """What a backend team does with the API's answer alone: an independent JOSE library."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc: "EdDSA" is deprecated by RFC 9864
        obj = joserfc_jws.deserialize_compact(
            token, OKPKey.import_key(jwk), algorithms=["EdDSA", "Ed25519"]
        )
    claims: dict[str, Any] = json.loads(obj.payload)
    return claims


def test_pods_are_served_verbatim_and_verified_with_the_registered_key(
    make_store: StoreFactory,
) -> None:
    van = Van("van-7")
    reprovisioned = Van("van-7")

    async def scenario(api: Api) -> None:
        c = api.client
        await api.enroll(van)
        for _ in range(3):
            result = await ingest(api.store, van.pod())
            assert len(result.new_pods) == 1
        first = van.issued[0]
        parcel = first.claims["parcel"]

        r = await c.get(f"/v1/pods/{parcel}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["parcel"] == parcel
        (pod,) = body["pods"]
        assert pod["jws"] == first.token
        assert (pod["device_id"], pod["seq"], pod["pod_seq"]) == ("van-7", 1, 1)
        assert pod["digest"] == first.digest
        assert pod["claims"] == first.claims
        assert pod["time"] == "2026-11-21T09:14:03.250Z"
        v = pod["verification"]
        assert v["verified"] is True
        assert (v["signature_valid"], v["claims_match"], v["chain_status"]) == (True, True, "ok")
        assert (v["kid"], v["signed_kid"], v["detail"]) == (van.kid, van.kid, None)
        # The dispute is settled from the response alone, with another JOSE library.
        assert verify_with_joserfc(pod["jws"], v["public_jwk"]) == first.claims

        # The van is re-provisioned with a new key: its old PODs no longer verify.
        assert (await api.enroll(reprovisioned, replace_key="true")).status_code == 200
        v = (await c.get(f"/v1/pods/{parcel}")).json()["pods"][0]["verification"]
        assert (v["verified"], v["signature_valid"], v["claims_match"]) == (False, False, False)
        assert v["chain_status"] == "ok"
        assert (v["kid"], v["signed_kid"]) == (reprovisioned.kid, van.kid)
        assert v["detail"] == (
            f"signed by another key (kid {van.kid}; the registered key is {reprovisioned.kid})"
        )

        # Back to the genuine key; a POD whose predecessor never arrived is pending.
        await api.enroll(van, replace_key="true")
        van.pod()  # POD 4: lost on the way
        await ingest(api.store, van.pod())  # POD 5
        fifth = van.issued[4]
        v = (await c.get(f"/v1/pods/{fifth.claims['parcel']}")).json()["pods"][0]["verification"]
        assert (v["verified"], v["signature_valid"], v["chain_status"]) == (False, True, "pending")
        assert v["detail"] == "POD 4 of this device (its predecessor) is not stored"

        r = await c.get("/v1/pods/no-such-parcel")
        assert (r.status_code, detail(r)) == (404, "no POD for parcel 'no-such-parcel'")

    run(make_store, scenario)


def test_a_parcel_delivered_twice_lists_both_pods(make_store: StoreFactory) -> None:
    van7, van3 = Van("van-7"), Van("van-3")

    async def scenario(api: Api) -> None:
        for van in (van7, van3):
            await api.enroll(van)
        await ingest(api.store, van7.pod(parcel="PARCEL-1"))
        await ingest(
            api.store,
            van3.pod(parcel="PARCEL-1", scan_time="2026-11-21T11:00:00.000Z"),
            received_at=T0 + timedelta(hours=3),
        )
        pods = (await api.client.get("/v1/pods/PARCEL-1")).json()["pods"]
        assert [(p["device_id"], p["verification"]["verified"]) for p in pods] == [
            ("van-7", True),
            ("van-3", True),
        ]
        assert [p["verification"]["kid"] for p in pods] == [van7.kid, van3.kid]

    run(make_store, scenario)


def test_a_failed_attempt_and_a_later_delivery_are_two_pods_of_one_parcel(
    make_store: StoreFactory,
) -> None:
    van = Van("van-7")

    async def scenario(api: Api) -> None:
        await api.enroll(van)
        r = await api.client.get("/v1/pods/PARCEL-1")
        assert r.status_code == 404
        await ingest(api.store, van.pod(parcel="PARCEL-1", outcome="not_home"))
        body = (await api.client.get("/v1/pods/PARCEL-1")).json()
        assert body["delivered"] is False
        assert [p["outcome"] for p in body["pods"]] == ["not_home"]
        await ingest(api.store, van.pod(parcel="OTHER", outcome="refused"))
        await ingest(
            api.store,
            van.pod(parcel="PARCEL-1", scan_time="2026-11-21T11:00:00.000Z", outcome="neighbour"),
            received_at=T0 + timedelta(hours=3),
        )
        body = (await api.client.get("/v1/pods/PARCEL-1")).json()
        assert body["delivered"] is True
        assert [
            (p["pod_seq"], p["outcome"], p["verification"]["verified"]) for p in body["pods"]
        ] == [
            (1, "not_home", True),
            (3, "neighbour", True),
        ]
        assert [p["claims"]["outcome"] for p in body["pods"]] == ["not_home", "neighbour"]
        # Old PODs (no outcome claim, no outcome in the record) are deliveries.
        await ingest(api.store, van.pod(parcel="OLD-1"))
        old = (await api.client.get("/v1/pods/OLD-1")).json()
        assert "outcome" not in old["pods"][0]["claims"]
        assert (old["delivered"], old["pods"][0]["outcome"]) == (True, "delivered")
        assert old["pods"][0]["verification"]["verified"] is True
        # A record that says "delivered" over a signed failed attempt is refused.
        issued = van.chain.issue({**fields(9), "outcome": "not_home"})
        forged = envelope(
            "van-7",
            "pod",
            issued.seq,
            pod_record(issued, outcome="delivered"),
            historical=False,
            sent_at=RECEIVED,
        )
        checked = check_message(
            van.topic("pod"),
            forged,
            received_at=RECEIVED,
            device=await api.store.get_device("van-7"),
        )
        assert isinstance(checked, Rejected)
        assert (checked.reason, checked.detail) == (
            "pod_mismatch",
            "record outcome differ(s) from the signed claims",
        )

    run(make_store, scenario)


# --- quarantine and gaps ------------------------------------------------------------------


def test_quarantine_and_gaps(make_store: StoreFactory) -> None:
    van = Van("van-7")
    forger = Van("van-7")

    async def scenario(api: Api) -> None:
        c = api.client
        await api.enroll(van)
        await ingest(api.store, van.telemetry(1, 10))
        await ingest(api.store, van.telemetry(21, 30))  # 11..20 never arrived
        await ingest(api.store, van.arrival(1, "S001", minute=5))
        await ingest(api.store, van.arrival(4, "S004", minute=9))  # 2, 3 missing
        forged = forger.pod()  # signed by another key: bad_signature, settles nothing
        await ingest(api.store, forged)

        gaps = (await c.get("/v1/devices/van-7/gaps")).json()
        assert gaps == {
            "device_id": "van-7",
            "acks": {"telemetry": 10, "events": 1, "pod": 0},
            "gaps": [
                {"stream": "telemetry", "first_seq": 11, "last_seq": 20, "reason": "missing"},
                {"stream": "events", "first_seq": 2, "last_seq": 3, "reason": "missing"},
            ],
        }

        page = (await c.get("/v1/quarantine")).json()
        assert page["next_cursor"] is None
        (q,) = page["messages"]
        assert (q["topic"], q["device_id"], q["reason"]) == (
            "fleet/v1/van-7/pod",
            "van-7",
            "bad_signature",
        )
        assert q["payload_text"] == forged[1].decode()
        assert q["received_at"] == "2026-11-21T09:30:00.000Z"
        assert q["covered"] is None
        assert (q["payload_bytes"], q["kept_bytes"], q["payload_truncated"]) == (
            len(forged[1]),
            len(forged[1]),
            False,
        )
        junk = ("fleet/v1/van-7/events", b"\xff\x00not json")
        await ingest(api.store, junk)
        newest, oldest = (await c.get("/v1/quarantine?limit=2")).json()["messages"]
        assert (newest["reason"], newest["payload_text"], newest["covered"]) == (
            "malformed",
            None,
            None,
        )
        assert newest["payload_base64"] == "/wBub3QganNvbg=="
        assert oldest == q
        assert len((await c.get("/v1/quarantine?limit=1")).json()["messages"]) == 1

    run(make_store, scenario)


# --- health and metrics -------------------------------------------------------------------


def test_health_503_when_the_store_is_closed(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "ingest.sqlite3")
        await store.open()
        await store.migrate()
        async with client(create_app(store, counts_max_age_s=0), await bearer(store)) as c:
            r = await c.get("/health")
            assert r.status_code == 200
            assert r.json() == {
                "status": "ok",
                "store": {"ok": True, "detail": None},
                "workers": [],
            }
            assert (await c.get("/metrics")).status_code == 200
            await store.close()
            r = await c.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert (body["status"], body["store"]["ok"]) == ("unavailable", False)
            assert "is not open" in body["store"]["detail"]
            r = await c.get("/v1/devices")
            assert r.status_code == 503
            assert detail(r).startswith("storage unavailable: ")
            # The token, confirmed by the store a moment ago, still opens the metrics:
            # they matter most while the store is down.
            metrics = (await c.get("/metrics")).text
            assert "fleet_ingest_store_up 0.0" in metrics
            assert "fleet_ingest_rows" not in metrics

    asyncio.run(main())


def test_health_503_while_postgresql_is_unreachable_then_200_again() -> None:
    def admin(*statements: str) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    async def main(dsn: str) -> None:
        name = conninfo_to_dict(dsn)["dbname"]
        async with PostgresStore(dsn, connect_timeout_s=2) as store:
            await store.migrate()
            async with client(create_app(store, health_timeout_s=5), await bearer(store)) as c:
                assert (await c.get("/health")).status_code == 200
                # Cut the service's connection and hide the database: reconnects fail.
                await asyncio.to_thread(
                    admin,
                    f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}'",
                )
                r = await c.get("/health")
                assert r.status_code == 503, r.text
                assert r.json()["store"]["ok"] is False
                assert "PostgreSQL" in r.json()["store"]["detail"]
                assert (await c.get("/v1/positions/latest")).status_code == 503
                await asyncio.to_thread(admin, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
                assert (await c.get("/health")).status_code == 200

    with fresh_database() as dsn:
        asyncio.run(main(dsn))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample, read with prometheus_client's own parser (so the
    exposition must parse, too)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(found) == 1, f"{name}{labels} in:\n{text}"
    return found[0]


def test_health_and_metrics_with_a_live_worker(make_store: StoreFactory, tmp_path: Path) -> None:
    """A real worker on a real Mosquitto: /health follows its connection, /metrics its
    counters and the store's row counts."""
    van = Van("van-7")
    stranger = Van("van-9")
    broker = Mosquitto(tmp_path / "broker")
    worker_holder: list[IngestWorker] = []

    def workers(store: Store) -> list[IngestWorker]:
        worker = IngestWorker(
            store,
            WorkerConfig(
                port=broker.port,
                client_id="api-test-1",
                backoff_initial_s=0.1,
                backoff_max_s=0.2,
            ),
        )
        worker_holder.append(worker)
        return [worker]

    async def scenario(api: Api) -> None:
        c = api.client
        (worker,) = worker_holder
        r = await c.get("/health")
        assert r.status_code == 503
        assert r.json()["workers"] == [{"client_id": "api-test-1", "connected": False}]
        assert r.json()["store"]["ok"] is True
        await api.enroll(van)
        task = asyncio.create_task(worker.run())
        try:
            async with asyncio.timeout(10):
                await worker.connected.wait()
            r = await c.get("/health")
            assert (r.status_code, r.json()["status"]) == (200, "ok")

            messages = [
                van.telemetry(1, 10),
                van.arrival(1, "S001", minute=3),
                van.pod(),
                van.pod(),
                stranger.pod(),  # not enrolled: quarantined as unknown_device
                van.telemetry(1, 10),  # sent again: 6 duplicates
            ]
            async with aiomqtt.Client("127.0.0.1", broker.port) as mqtt:
                for topic, payload in messages:
                    worker.stored.clear()
                    await mqtt.publish(topic, payload, qos=1)
                    async with asyncio.timeout(10):
                        await worker.stored.wait()

            text = (await c.get("/metrics")).text
            w = {"worker": "api-test-1"}
            assert metric(text, "fleet_ingest_messages_received_total", **w) == 6
            assert metric(text, "fleet_ingest_records_stored_total", **w) == 6 + 1 + 2
            assert metric(text, "fleet_ingest_records_duplicate_total", **w) == 6
            assert metric(text, "fleet_ingest_batches_total", **w) == 6
            assert metric(text, "fleet_ingest_broker_connects_total", **w) == 1
            assert metric(text, "fleet_ingest_worker_connected", **w) == 1
            quarantined = "fleet_ingest_messages_quarantined_total"
            assert metric(text, quarantined, **w, reason="unknown_device") == 1
            assert metric(text, quarantined, **w, reason="bad_signature") == 0
            assert metric(text, "fleet_ingest_store_up") == 1
            counts = await api.store.counts()
            assert counts.positions == 6
            for table, n in (
                ("devices", 1),
                ("positions", 6),
                ("stop_events", 1),
                ("pods", 2),
                ("quarantine", 1),
            ):
                assert metric(text, "fleet_ingest_rows", table=table) == n
            assert metric(text, "fleet_ingest_pods", chain_status="ok") == 2
            assert metric(text, "fleet_ingest_pods", chain_status="pending") == 0
            # What the worker stored is what the API serves.
            assert (await c.get("/v1/positions/latest")).json()[0]["seq"] == 10
            pods = (await c.get(f"/v1/pods/{van.issued[1].claims['parcel']}")).json()["pods"]
            assert pods[0]["verification"]["verified"] is True

            broker.kill()
            for _ in range(100):
                if not worker.connected.is_set():
                    break
                await asyncio.sleep(0.05)
            r = await c.get("/health")
            assert r.status_code == 503
            text = (await c.get("/metrics")).text
            assert metric(text, "fleet_ingest_worker_connected", worker="api-test-1") == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    with broker:
        run(make_store, scenario, workers=workers)


# --- the OpenAPI document -----------------------------------------------------------------


def test_openapi_lists_every_endpoint(tmp_path: Path) -> None:
    async def scenario(api: Api) -> dict[str, Any]:
        r = await api.client.get("/openapi.json")
        assert r.status_code == 200
        doc: dict[str, Any] = r.json()
        return doc

    doc = run(lambda: SqliteStore(tmp_path / "ingest.sqlite3"), scenario)
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert operations == {
        ("POST", "/v1/devices"),
        ("GET", "/v1/devices"),
        ("GET", "/v1/devices/{device_id}"),
        ("POST", "/v1/devices/{device_id}/enable"),
        ("POST", "/v1/devices/{device_id}/disable"),
        ("GET", "/v1/positions/latest"),
        ("GET", "/v1/devices/{device_id}/track"),
        ("GET", "/v1/routes/{route_id}/arrivals"),
        ("GET", "/v1/devices/{device_id}/arrivals"),
        ("GET", "/v1/pods/{parcel}"),
        ("GET", "/v1/quarantine"),
        ("GET", "/v1/quarantine/{row_id}/payload"),
        ("GET", "/v1/devices/{device_id}/gaps"),
        ("GET", "/health"),
        ("GET", "/metrics"),
    }
    # Every JSON operation declares its response body, so clients can be generated.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ok = op["responses"].get("200") or op["responses"].get("201")
            assert ok is not None, (method, path)
            if path == "/v1/quarantine/{row_id}/payload":  # the bytes as received
                assert "application/octet-stream" in ok["content"]
            elif path != "/metrics":
                assert "schema" in ok["content"]["application/json"], (method, path)
    schemas = doc["components"]["schemas"]
    assert {"DeviceOut", "PodOut", "PodVerificationOut", "TrackOut", "HealthOut"} <= set(schemas)
    assert "QuarantinePageOut" in schemas
    pod_get = doc["paths"]["/v1/pods/{parcel}"]["get"]
    assert pod_get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ParcelPodsOut"
    }
    assert "404" in pod_get["responses"]
    assert schemas["PositionOut"]["properties"]["time"]["format"] == "date-time"
