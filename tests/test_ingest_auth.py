"""Who may call the HTTP API: scoped API tokens, OIDC JWTs, 401 and 403 (issue 16).

Every operation of the OpenAPI document is called the way a client would: anonymously
(401 but for /health), and with a token of each scope (403 outside its endpoints). The
identity provider is a real HTTP server on this host serving a JWKS of keys made here.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI, Request
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

from cloud_ingest.access import PUBLIC, Access, authorize, install
from cloud_ingest.api import create_app
from cloud_ingest.apitokens import (
    SCOPES,
    Scope,
    new_token,
    parse_duration,
    parse_scopes,
    token_id,
)
from cloud_ingest.oidc import JwksCache, OidcVerifier
from cloud_ingest.store.base import Store
from cloud_ingest.store.sqlite import SqliteStore
from tests.apiauth import FLEET_INGEST, bearer
from tests.test_ingest_api import StoreFactory, Van, make_store

__all__ = ["make_store"]  # the fixture, used by name

T = TypeVar("T")

# The scope of every operation: the access model this file holds the API to.
SCOPE_OF: dict[tuple[str, str], tuple[Scope, ...] | None] = {
    ("POST", "/v1/devices"): ("admin", "enroll"),
    ("GET", "/v1/devices"): ("read",),
    ("GET", "/v1/devices/{device_id}"): ("read",),
    ("POST", "/v1/devices/{device_id}/enable"): ("admin",),
    ("POST", "/v1/devices/{device_id}/disable"): ("admin",),
    ("GET", "/v1/positions/latest"): ("read",),
    ("GET", "/v1/devices/{device_id}/track"): ("read",),
    ("GET", "/v1/routes/{route_id}/arrivals"): ("read",),
    ("GET", "/v1/devices/{device_id}/arrivals"): ("read",),
    ("GET", "/v1/pods/{parcel}"): ("read",),
    ("GET", "/v1/quarantine"): ("read",),
    ("GET", "/v1/quarantine/{row_id}/payload"): ("read",),
    ("GET", "/v1/devices/{device_id}/gaps"): ("read",),
    ("GET", "/metrics"): ("read",),
    ("GET", "/health"): None,
}
PATH_VALUES = {"device_id": "van-7", "route_id": "R-1", "parcel": "P-1", "row_id": "1"}
QUERY_VALUES = {"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T10:00:00Z"}


def client(app: Any, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest", headers=headers
    )


def with_app(
    tmp_path: Path,
    scenario: Callable[[Store, httpx.AsyncClient], Awaitable[T]],
    *,
    make_access: Callable[[Store], Access] = Access,
) -> T:
    async def main() -> T:
        async with SqliteStore(tmp_path / "ingest.sqlite3") as store:
            await store.migrate()
            await store.register_device("van-7", Van("van-7").key.public_key().public_bytes_raw())
            async with client(create_app(store, access=make_access(store))) as c:
                return await scenario(store, c)

    return asyncio.run(main())


async def call(
    c: httpx.AsyncClient, method: str, path: str, op: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """``op`` with valid arguments (so that only access decides the answer)."""
    url = path.format(**PATH_VALUES)
    query = {
        p["name"]: QUERY_VALUES[p["name"]]
        for p in op.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    body = None
    if "requestBody" in op:
        body = {"device_id": "van-9", "public_key_pem": Van("van-9").pem}
    return await c.request(method, url, params=query, json=body, headers=headers)


async def operations(c: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, Any]]:
    r = await c.get("/openapi.json")  # public: it describes the API, holds no data
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}


# --- anonymous, and the OpenAPI document ----------------------------------------------------


def test_anonymous_calls_get_401_on_every_operation_but_health(tmp_path: Path) -> None:
    async def scenario(store: Store, c: httpx.AsyncClient) -> None:
        ops = await operations(c)
        assert set(ops) == set(SCOPE_OF)
        for (method, path), op in ops.items():
            for headers in ({}, {"Authorization": "Bearer fit_000000000000_" + "x" * 43}):
                r = await call(c, method, path, op, headers)
                if SCOPE_OF[method, path] is None:
                    assert r.status_code == 200, (method, path)
                    continue
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["WWW-Authenticate"].startswith('Bearer realm="fleet-ingest"')
                assert ("invalid_token" in r.headers["WWW-Authenticate"]) == bool(headers)
        # Malformed requests too: credentials are judged before the request is read,
        # so an anonymous caller learns nothing of the API from its validation errors.
        for method, url, kw in (
            (
                "POST",
                "/v1/devices",
                {"content": b"{", "headers": {"content-type": "application/json"}},
            ),
            ("POST", "/v1/devices", {"json": {"device_id": 7}}),
            ("GET", "/v1/devices/not%20an%20id/track", {"params": {"start": "yesterday"}}),
            ("GET", "/v1/quarantine", {"params": {"limit": "-5"}}),
            ("GET", "/v1/pods/" + "x" * 300, {}),
        ):
            r = await c.request(method, url, **kw)  # type: ignore[arg-type]
            assert r.status_code == 401, (method, url, r.status_code, r.text)

    with_app(tmp_path, scenario)


def test_openapi_declares_the_scheme_and_each_operations_scope(tmp_path: Path) -> None:
    async def scenario(store: Store, c: httpx.AsyncClient) -> dict[str, Any]:
        r = await c.get("/openapi.json")
        doc: dict[str, Any] = r.json()
        return doc

    doc = with_app(tmp_path, scenario)
    assert doc["components"]["securitySchemes"] == {
        "apiToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (fleet-ingest token create --scope ...)",
        }
    }
    for (method, path), scope in SCOPE_OF.items():
        op = doc["paths"][path][method.lower()]
        if scope is None:
            assert op["security"] == [], path
            assert "401" not in op["responses"]
        else:
            assert op["security"] == [{"apiToken": [s]} for s in scope], (method, path)
            assert op["description"].endswith(f"Scope: {' or '.join(scope)}."), (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_metrics_public_when_configured_so(tmp_path: Path) -> None:
    async def scenario(store: Store, c: httpx.AsyncClient) -> tuple[int, int, Any]:
        metrics = await c.get("/metrics")
        devices = await c.get("/v1/devices")
        doc = (await c.get("/openapi.json")).json()
        return metrics.status_code, devices.status_code, doc["paths"]["/metrics"]["get"]

    status, devices, op = with_app(
        tmp_path, scenario, make_access=lambda store: Access(store, metrics_public=True)
    )
    assert (status, devices) == (200, 401)
    assert op["security"] == []


# --- scopes -------------------------------------------------------------------------------


def test_each_scope_gets_exactly_its_endpoints(tmp_path: Path) -> None:
    async def scenario(store: Store, c: httpx.AsyncClient) -> dict[Scope, set[tuple[str, str]]]:
        ops = await operations(c)
        allowed: dict[Scope, set[tuple[str, str]]] = {}
        for scope in SCOPES:
            headers = await bearer(store, scope, name=f"only {scope}")
            allowed[scope] = set()
            for (method, path), op in ops.items():
                r = await call(c, method, path, op, headers)
                assert r.status_code != 401, (scope, method, path, r.text)
                if r.status_code == 403:
                    needed = " ".join(SCOPE_OF[method, path] or ())
                    assert f'scope="{needed}"' in r.headers["WWW-Authenticate"]
                    assert "insufficient_scope" in r.headers["WWW-Authenticate"]
                else:
                    allowed[scope].add((method, path))
        # A malformed body to an endpoint of another scope: 403, not a 422 about it.
        reader = await bearer(store, "read", name="reader")
        r = await c.post(
            "/v1/devices", content=b"{", headers={**reader, "content-type": "application/json"}
        )
        assert r.status_code == 403, r.text
        return allowed

    allowed = with_app(tmp_path, scenario)
    for scope in SCOPES:
        # Explicit scopes: admin does not imply read; enroll may only enroll (and
        # POST /v1/enroll, absent from this app); dispatch has no endpoint yet.
        expected = {op for op, s in SCOPE_OF.items() if s is None or scope in s}
        assert allowed[scope] == expected, scope


def test_revoked_expired_and_forged_tokens_get_401(make_store: StoreFactory) -> None:
    async def main() -> None:
        async with make_store() as store:
            await store.migrate()
            now = datetime.now(UTC)
            good, row = new_token("ops", frozenset({"read"}), now=now)
            await store.add_api_token(row)
            late, late_row = new_token(
                "late", frozenset({"read"}), now=now - timedelta(days=2), expires_in=timedelta(1)
            )
            await store.add_api_token(late_row)
            access = Access(store)
            async with client(create_app(store, access=access)) as c:

                async def status(token: str, scheme: str = "Bearer") -> int:
                    r = await c.get("/v1/devices", headers={"Authorization": f"{scheme} {token}"})
                    return r.status_code

                assert await status(good) == 200
                assert (await store.get_api_token(row.id)) is not None
                touched = await store.get_api_token(row.id)
                assert touched is not None
                assert touched.last_used_at is not None
                assert await status(good, "bearer") == 200  # the scheme is case-insensitive
                assert await status(good, "Basic") == 401
                assert await status(late) == 401  # expired
                forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
                assert await status(forged) == 401  # the right id, another secret
                assert await status("not-a-token") == 401
                revoked = await store.revoke_api_token(row.id, datetime.now(UTC))
                assert revoked.state(datetime.now(UTC)) == "revoked"
                r = await c.get("/v1/devices", headers={"Authorization": f"Bearer {good}"})
                assert (r.status_code, r.json()["detail"]) == (401, "invalid token: revoked")
            listed = {t.id: t for t in await store.list_api_tokens()}
            assert set(listed) == {row.id, late_row.id}
            assert listed[row.id].revoked_at is not None
            assert listed[late_row.id].state(datetime.now(UTC)) == "expired"

    asyncio.run(main())


def test_the_attacker_cannot_rekey_a_van(tmp_path: Path) -> None:
    """Issue 16: an anonymous ``POST /v1/devices?replace_key=true`` re-keyed a van."""

    async def scenario(store: Store, c: httpx.AsyncClient) -> None:
        before = await store.get_device("van-7")
        attacker = Van("van-7")
        body = {"device_id": "van-7", "public_key_pem": attacker.pem}
        params = {"replace_key": "true"}
        r = await c.post("/v1/devices", params=params, json=body)
        assert r.status_code == 401
        reader = await bearer(store, "read", "dispatch")
        r = await c.post("/v1/devices", params=params, json=body, headers=reader)
        assert r.status_code == 403
        for action in ("disable", "enable"):
            assert (await c.post(f"/v1/devices/van-7/{action}")).status_code == 401
        enroller = await bearer(store, "enroll", name="provisioning")
        r = await c.post("/v1/devices/van-7/disable", headers=enroller)
        assert r.status_code == 403  # enroll may enroll, not disable
        assert await store.get_device("van-7") == before
        for scope in ("admin", "enroll"):  # each re-provisions a van
            van = Van("van-7")
            body = {"device_id": "van-7", "public_key_pem": van.pem}
            holder = await bearer(store, scope, name=f"re-key {scope}")
            r = await c.post("/v1/devices", params=params, json=body, headers=holder)
            assert r.status_code == 200, r.text
            after = await store.get_device("van-7")
            assert after is not None
            assert after.public_key == van.key.public_key().public_bytes_raw()

    with_app(tmp_path, scenario)


def test_a_public_route_can_take_a_bearer_credential_as_one_way_in(tmp_path: Path) -> None:
    """The hook for ``POST /v1/enroll``: a one-time token in the body, or else a bearer
    credential with the admin or enroll scope."""
    app = FastAPI()

    @app.post("/v1/enroll", openapi_extra=PUBLIC)
    async def enroll(request: Request, body: dict[str, str]) -> dict[str, str]:
        if body.get("token") == "one-time":
            return {"via": "one-time token"}
        return {"via": (await authorize(request, "admin", "enroll")).subject}

    async def main() -> list[tuple[int, str]]:
        async with SqliteStore(tmp_path / "ingest.sqlite3") as store:
            await store.migrate()
            install(app, Access(store))
            answers = []
            async with client(app) as c:
                for headers, body in (
                    ({}, {}),
                    ({}, {"token": "one-time"}),
                    (await bearer(store, "read"), {}),
                    (await bearer(store, "enroll", name="installer"), {}),
                ):
                    r = await c.post("/v1/enroll", json=body, headers=headers)
                    answers.append((r.status_code, r.json().get("via", "")))
                doc = (await c.get("/openapi.json")).json()
            assert doc["paths"]["/v1/enroll"]["post"]["security"] == []
            return answers

    answers = asyncio.run(main())
    assert [code for code, _ in answers] == [401, 200, 403, 200]
    assert answers[1][1] == "one-time token"
    assert answers[3][1].endswith("(installer)")

    @app.get("/v1/forgotten")
    async def forgotten() -> None: ...

    with pytest.raises(RuntimeError, match="/v1/forgotten must declare its access"):
        install(app, Access(SqliteStore(tmp_path / "unused.sqlite3")))


# --- the command line ---------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")}
    return subprocess.run(
        [str(FLEET_INGEST), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_token_create_list_revoke_from_the_cli(tmp_path: Path) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path / 'ingest.sqlite3'}"]
    made = run_cli(
        "token", "create", "--scope", "read", "--name", "grafana", "--expires", "90d", *db
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("fit_")
    assert "\n" not in token
    listed = run_cli("token", "list", "--json", *db)
    assert listed.returncode == 0
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert token not in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout
    assert (row["name"], row["scopes"], row["state"]) == ("grafana", ["read"], "active")
    assert row["expires_at"] is not None

    async def status() -> int:
        async with (
            SqliteStore(tmp_path / "ingest.sqlite3") as store,
            client(create_app(store)) as c,
        ):
            r = await c.get("/v1/devices", headers={"Authorization": f"Bearer {token}"})
            return r.status_code

    assert asyncio.run(status()) == 200
    revoked = run_cli("token", "revoke", row["id"], *db)
    assert revoked.returncode == 0, revoked.stderr
    assert asyncio.run(status()) == 401


@pytest.mark.slow
def test_token_cli_usage_errors_exit_2_and_failures_1(tmp_path: Path) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path / 'ingest.sqlite3'}"]
    unknown = run_cli("token", "revoke", "000000000000", *db)
    assert unknown.returncode == 1
    assert "no API token '000000000000'" in unknown.stderr
    bad = run_cli("token", "create", "--scope", "root", "--name", "x", *db)
    assert bad.returncode == 2
    assert "unknown scope 'root'" in bad.stderr
    bad = run_cli("token", "create", "--scope", "read", "--name", "x", "--expires", "soon", *db)
    assert bad.returncode == 2
    assert "not a duration" in bad.stderr


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FLEET_INGEST_API_OIDC_ENABLED", "true", "api.oidc"),
        ("FLEET_INGEST_API_TOKENS", "false", "api"),
        ("FLEET_INGEST_API_OIDC_SCOPE_MAP", '{"x": ["root"]}', "api.oidc.scope_map"),
    ],
)
def test_a_bad_auth_setting_stops_serve_with_exit_2(
    tmp_path: Path, variable: str, value: str, named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")}
    env |= {variable: value, "FLEET_INGEST_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    done = subprocess.run(
        [str(FLEET_INGEST), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"invalid settings: {named}" in done.stderr
    assert variable in done.stderr


# --- OIDC ---------------------------------------------------------------------------------

ISSUER = "https://idp.example.test/realms/fleet"
AUDIENCE = "fleet-ingest"


class IdentityProvider:
    """A JWKS on a real local HTTP server; ``keys`` is what it serves now."""

    def __init__(self) -> None:
        self.keys: list[ECKey] = []
        self.requests = 0
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests += 1
                body = json.dumps(KeySet(list(provider.keys)).as_dict(private=False)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> IdentityProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def new_key(self, kid: str) -> ECKey:
        key = ECKey.generate_key("P-256", parameters={"kid": kid})
        self.keys.append(key)
        return key


def jwt_for(key: ECKey | OctKey, alg: str = "ES256", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "dispatcher-1",
        "iat": now,
        "exp": now + 300,
        "scope": "openid read",
    } | claims
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, payload, key, algorithms=[alg])


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as provider:
        yield provider


def oidc_access(
    idp: IdentityProvider, clock: Callable[[], float] = time.monotonic, **kwargs: Any
) -> Callable[[Store], Access]:
    def make(store: Store) -> Access:
        jwks = JwksCache(idp.url, refresh_min_s=60, clock=clock)
        verifier = OidcVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, **kwargs)
        return Access(store, oidc=verifier)

    return make


def test_oidc_jwts_are_checked_against_the_providers_jwks(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    key = idp.new_key("k1")
    now = int(time.time())
    stranger = ECKey.generate_key("P-256", parameters={"kid": "k1"})  # same kid, other key
    cases = {
        "good": (jwt_for(key), 200),
        "the API token still works": (None, 200),
        "no read scope": (jwt_for(key, scope="openid dispatch"), 403),
        "expired": (jwt_for(key, iat=now - 900, exp=now - 600), 401),
        "wrong audience": (jwt_for(key, aud="another-api"), 401),
        "wrong issuer": (jwt_for(key, iss="https://evil.example.test"), 401),
        "no exp": (jwt_for(key, exp=None), 401),
        "another key": (jwt_for(stranger), 401),
        "HMAC with a made-up secret": (
            jwt_for(OctKey.import_key("s" * 32, {"kid": "k1"}), alg="HS256"),
            401,
        ),
    }

    async def scenario(store: Store, c: httpx.AsyncClient) -> dict[str, int]:
        api_token = await bearer(store, "read")
        seen = {}
        for name, (token, _) in cases.items():
            headers = api_token if token is None else {"Authorization": f"Bearer {token}"}
            seen[name] = (await c.get("/v1/devices", headers=headers)).status_code
        doc = (await c.get("/openapi.json")).json()
        assert doc["components"]["securitySchemes"]["oidc"] == {
            "type": "openIdConnect",
            "openIdConnectUrl": f"{ISSUER}/.well-known/openid-configuration",
            "description": "A JWT from the fleet's identity provider",
        }
        assert doc["paths"]["/v1/devices"]["get"]["security"] == [
            {"apiToken": ["read"]},
            {"oidc": ["read"]},
        ]
        return seen

    seen = with_app(tmp_path, scenario, make_access=oidc_access(idp))
    assert seen == {name: expected for name, (_, expected) in cases.items()}
    assert idp.requests == 1  # the keys are fetched once and kept


def test_an_unknown_kid_refetches_the_jwks_at_most_once_a_minute(
    tmp_path: Path, idp: IdentityProvider
) -> None:
    old = idp.new_key("old")
    clock = [1000.0]

    async def scenario(store: Store, c: httpx.AsyncClient) -> None:
        async def status(key: ECKey) -> int:
            headers = {"Authorization": f"Bearer {jwt_for(key)}"}
            return (await c.get("/v1/devices", headers=headers)).status_code

        assert await status(old) == 200
        assert idp.requests == 1
        # Unknown kids within the minute after a fetch: refused, nothing fetched.
        made_up = ECKey.generate_key("P-256", parameters={"kid": "made-up"})
        clock[0] += 30
        assert [await status(made_up) for _ in range(5)] == [401] * 5
        assert idp.requests == 1
        # The provider rotates its keys; a minute on, a token with the new kid is
        # accepted after one fetch, and made-up kids fetch no more than once a minute.
        new = idp.new_key("new")
        clock[0] += 31
        assert await status(new) == 200
        assert idp.requests == 2
        assert [await status(made_up) for _ in range(5)] == [401] * 5
        assert idp.requests == 2
        assert await status(old) == 200

    with_app(tmp_path, scenario, make_access=oidc_access(idp, clock=lambda: clock[0]))


def test_oidc_scope_map_and_claim(tmp_path: Path, idp: IdentityProvider) -> None:
    key = idp.new_key("k1")
    make = oidc_access(idp, scope_claim="roles", scope_map={"fleet-admins": ["admin", "read"]})

    async def scenario(store: Store, c: httpx.AsyncClient) -> list[int]:
        codes = []
        for roles in (["fleet-admins"], ["read"], "fleet-admins", None):
            headers = {"Authorization": f"Bearer {jwt_for(key, roles=roles)}"}
            codes.append((await c.post("/v1/devices/van-7/disable", headers=headers)).status_code)
        return codes

    # Mapped: only the mapped value grants; a list or a space-separated string.
    assert with_app(tmp_path, scenario, make_access=make) == [200, 403, 200, 403]


# --- the token itself ---------------------------------------------------------------------


def test_a_token_is_random_its_row_holds_only_a_digest_and_durations_parse() -> None:
    now = datetime.now(UTC)
    token, row = new_token("ops", frozenset({"read"}), now=now, expires_in=parse_duration("24h"))
    other, _ = new_token("ops", frozenset({"read"}), now=now)
    assert token != other
    assert token_id(token) == row.id
    assert token_id(token + "\n") is None
    assert token_id(token.replace("fit_", "fit-")) is None
    assert token.encode() not in repr(row).encode()
    assert row.sha256 == hashlib.sha256(token.encode()).digest()
    assert row.matches(token)
    assert not row.matches(other)
    assert (row.state(now), row.state(now + timedelta(hours=24))) == ("active", "expired")
    assert [parse_duration(t) for t in ("90d", "24h", "30m", "3600s")] == [
        timedelta(days=90),
        timedelta(hours=24),
        timedelta(minutes=30),
        timedelta(hours=1),
    ]
    for bad in ("0d", "1y", "d", "-1h", "1.5h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="unknown scope 'root'"):
        parse_scopes(["read", "root"])
