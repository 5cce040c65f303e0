"""Enrollment: one-time tokens, and the exchange that turns one into a van's identity.

``fleet-ingest enroll-token --device van-0042`` makes a token, ``van-0042:`` and 32
random bytes (URL-safe base64), printed once; only its SHA-256 is kept (``enroll-tokens.json`` in
the CA directory, 0600), with the device it is for and when it expires. A plain hash
is enough: the token has 256 bits of entropy, so there is nothing to brute-force that a
slow, salted hash would protect.

On the van, ``fleet-agent provision`` posts the token, a CSR for its TLS key (subject
``CN={device id}``) and its Ed25519 POD public key to ``POST /v1/enroll``
(:func:`enroll_router`). The token is the request's credential: it is spent (single
use, under the CA's lock, so two requests racing with one token get one certificate),
the device is registered with the POD key (re-keyed and re-enabled if it was enrolled
before: the token is the operator's word that the van was re-provisioned), its
earlier certificates are revoked (CRL rewritten, the broker reloaded) and it gets a
client certificate from the fleet CA, the CA certificate and the broker's address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_ingest.access import PUBLIC, authorize
from cloud_ingest.ca import CaError, CsrError, FleetCa, check_csr, utcnow
from cloud_ingest.errors import IngestError
from cloud_ingest.store.base import Store, is_device_id
from firmware_agent.contract.keys import write_file_atomically

log = logging.getLogger(__name__)

TOKENS = "enroll-tokens.json"
_TOKEN_BYTES = 32
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_RANGE = re.compile(r"^(.*?)(\d+)\.\.(.*?)(\d+)$")
MAX_BATCH = 10_000


class EnrollError(IngestError):
    """An enrollment token or request is refused."""


class TokenError(EnrollError, PermissionError):
    """The token is unknown, used or expired (the request's credential is no good)."""


def parse_duration_s(text: str) -> int:
    """``90s``, ``30m``, ``24h``, ``7d`` in seconds; ``ValueError`` otherwise."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"not a duration like 30m, 24h or 7d: {text!r}")
    return int(m.group(1)) * _UNITS_S[m.group(2)]


def expand_devices(spec: str) -> list[str]:
    """``van-0001..van-0020`` as the 20 ids (the width of the first number kept), or
    one id; ``ValueError`` for a malformed range or id."""
    m = _RANGE.match(spec)
    if m is None:
        ids = [spec]
    else:
        prefix, first, prefix2, last = m.groups()
        if prefix2 not in ("", prefix):
            raise ValueError(f"a range's ends must share a prefix: {spec!r}")
        lo, hi = int(first), int(last)
        if hi < lo or hi - lo >= MAX_BATCH:
            raise ValueError(f"a range of 1 to {MAX_BATCH} ids, low to high: {spec!r}")
        ids = [f"{prefix}{n:0{len(first)}d}" for n in range(lo, hi + 1)]
    bad = [d for d in ids if not is_device_id(d)]
    if bad:
        raise ValueError(f"invalid device id {bad[0]!r}")
    return ids


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    device_id: str
    token: str
    expires_at: datetime


class TokenBook:
    """The one-time tokens of the CA in ``ca.directory`` (under its lock)."""

    def __init__(self, ca: FleetCa) -> None:
        self.ca = ca
        self.path = ca.directory / TOKENS

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise EnrollError(f"cannot read {self.path}: {err}") from None
        return data

    def _save(self, data: dict[str, dict[str, Any]], now: datetime) -> None:
        # Spent and expired tokens are kept a week (for "used at ..." answers), then go.
        horizon = now - timedelta(days=7)
        kept = {
            h: t
            for h, t in data.items()
            if datetime.fromisoformat(t["expires_at"]) > horizon
            and (t["used_at"] is None or datetime.fromisoformat(t["used_at"]) > horizon)
        }
        write_file_atomically(
            self.path, json.dumps(kept, indent=1).encode() + b"\n", overwrite=True
        )

    def create(self, devices: Sequence[str], *, now: datetime, expires_s: int) -> list[IssuedToken]:
        """A new token per device; a device's earlier unused tokens stay valid until
        they expire or are used (one of them gets the certificate)."""
        out = []
        with self.ca.locked():
            data = self._load()
            expires = now + timedelta(seconds=expires_s)
            for device in devices:
                # The device id in front tells `fleet-agent provision` its CN; the
                # secret is the 256 random bits after it.
                token = f"{device}:{secrets.token_urlsafe(_TOKEN_BYTES)}"
                data[token_hash(token)] = {
                    "device_id": device,
                    "created_at": now.isoformat(),
                    "expires_at": expires.isoformat(),
                    "used_at": None,
                }
                out.append(IssuedToken(device, token, expires))
            self._save(data, now)
        return out

    def _check(self, entry: dict[str, Any] | None, now: datetime) -> str:
        if entry is None:
            raise TokenError("unknown enrollment token")
        if entry["used_at"] is not None:
            raise TokenError(f"this enrollment token was already used at {entry['used_at']}")
        if datetime.fromisoformat(entry["expires_at"]) <= now:
            raise TokenError(f"this enrollment token expired at {entry['expires_at']}")
        return str(entry["device_id"])

    def peek(self, token: str, *, now: datetime) -> str:
        """The device a valid token is for (not spent); :class:`TokenError` otherwise."""
        with self.ca.locked():
            return self._check(self._load().get(token_hash(token)), now)

    def restore(self, token: str, *, now: datetime) -> None:
        """Make a spent token usable again (its enrollment failed half-way)."""
        with self.ca.locked():
            data = self._load()
            entry = data.get(token_hash(token))
            if entry is not None:
                entry["used_at"] = None
                self._save(data, now)

    def spend(self, token: str, *, now: datetime) -> str:
        """Spend a valid token, once: its device; :class:`TokenError` otherwise."""
        with self.ca.locked():
            data = self._load()
            h = token_hash(token)
            device = self._check(data.get(h), now)
            data[h]["used_at"] = now.isoformat()
            self._save(data, now)
            return device


# --- the exchange -------------------------------------------------------------------


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="The one-time token (fleet-ingest enroll-token). Without it the request "
        "needs a bearer credential with the enroll or admin scope, and device_id",
    )
    device_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The van, when enrolled by a bearer credential instead of a token "
        "(with a token, the token names it); the CSR's CN must be it",
    )
    csr_pem: str = Field(
        max_length=16_384, description="PEM CSR for the van's EC P-256 TLS key, CN = device id"
    )
    pod_public_key_pem: str = Field(
        max_length=4096, description="The van's Ed25519 POD public key (SubjectPublicKeyInfo PEM)"
    )


class BrokerOut(BaseModel):
    host: str
    port: int


class EnrollOut(BaseModel):
    device_id: str
    certificate_pem: str
    ca_pem: str
    serial: str
    not_after: datetime
    broker: BrokerOut
    revoked_serials: list[str] = Field(description="The device's earlier certificates, revoked")


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What ``POST /v1/enroll`` needs: the CA, the broker address vans get, how long a
    van's certificate is valid, and the command that makes the broker re-read the CRL."""

    ca: FleetCa
    broker_host: str
    broker_port: int = 8883
    device_cert_days: int = 730
    reload_command: str | None = None


async def reload_broker(command: str | None) -> str | None:
    """Run ``command`` (split like a shell would, run without one) so the broker re-reads
    the CRL; ``None`` when it succeeded (or there is none), else what went wrong."""
    if not command:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    except (OSError, ValueError, TimeoutError) as exc:
        return f"{command!r} failed: {exc}"
    if proc.returncode != 0:
        return f"{command!r} exited {proc.returncode}: {err.decode(errors='replace').strip()}"
    return None


# How often ingest looks at the CRL's nextUpdate (renewed past half its validity).
CRL_CHECK_S = 6 * 3600.0


async def renew_crl_if_due(enrollment: Enrollment, now: datetime) -> bool:
    """Rewrite the CRL and reload the broker when :meth:`FleetCa.crl_due`; whether it
    was. A failed reload is logged (the file is written: the next reload takes it)."""
    ca = enrollment.ca
    if not await asyncio.to_thread(ca.crl_due, now=now):
        return False
    path = await asyncio.to_thread(ca.write_crl, now=now)
    problem = await reload_broker(enrollment.reload_command)
    until = now + timedelta(days=ca.crl_days)
    if problem is None:
        log.info("CRL renewed: %s, valid to %s", path, until.date().isoformat())
    else:
        log.warning("CRL renewed: %s, but the broker was not reloaded: %s", path, problem)
    return True


async def crl_renewal(
    enrollment: Enrollment,
    *,
    clock: Callable[[], datetime],
    every_s: float = CRL_CHECK_S,
) -> None:
    """:func:`renew_crl_if_due` now and every ``every_s``, until cancelled; a failure
    (an unwritable CA directory) is logged and tried again next time."""
    while True:
        try:
            await renew_crl_if_due(enrollment, clock())
        except (OSError, CaError) as err:
            log.warning("CRL renewal failed: %s; trying again in %g s", err, every_s)
        await asyncio.sleep(every_s)


def _pod_key(pem: str) -> bytes:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise EnrollError("pod_public_key_pem is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EnrollError("pod_public_key_pem must be an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


async def enroll(
    enrollment: Enrollment, store: Store, body: EnrollIn, *, now: datetime
) -> EnrollOut:
    """Spend the token (or, without one, trust the caller: the route checked its scope)
    and make the van's identity (see the module doc)."""
    ca = enrollment.ca
    tokens = TokenBook(ca)
    pod_key = _pod_key(body.pod_public_key_pem)
    csr = body.csr_pem.encode()
    token = body.token
    if token is None:
        if body.device_id is None or not is_device_id(body.device_id):
            raise EnrollError("without a token, device_id must name the van")
        device_id = body.device_id
        check_csr(csr, device_id)
    else:
        # Check everything the van sent before the token is spent: a typo costs no token.
        device_id = await asyncio.to_thread(tokens.peek, token, now=now)
        if body.device_id is not None and body.device_id != device_id:
            raise EnrollError(f"the token is for {device_id}, not {body.device_id}")
        check_csr(csr, device_id)
        device_id = await asyncio.to_thread(tokens.spend, token, now=now)
    try:
        await store.register_device(device_id, pod_key, enabled=True, replace_key=True)
        cert, revoked = await asyncio.to_thread(
            ca.issue_device, csr, device_id, now=now, days=enrollment.device_cert_days
        )
    except BaseException:
        # Nothing was given to the van: its token stays good for another try.
        if token is not None:
            await asyncio.to_thread(tokens.restore, token, now=now)
        raise
    if revoked:
        problem = await reload_broker(enrollment.reload_command)
        if problem is not None:
            log.error("enroll %s: the broker did not reload its CRL: %s", device_id, problem)
    log.info(
        "enrolled %s: certificate %x%s",
        device_id,
        cert.serial_number,
        f", revoked {', '.join(r.serial_hex for r in revoked)}" if revoked else "",
    )
    ca_pem = await asyncio.to_thread(ca.certificate_pem)
    return EnrollOut(
        device_id=device_id,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_pem=ca_pem.decode(),
        serial=f"{cert.serial_number:x}",
        not_after=cert.not_valid_after_utc,
        broker=BrokerOut(host=enrollment.broker_host, port=enrollment.broker_port),
        revoked_serials=[r.serial_hex for r in revoked],
    )


def enroll_router(enrollment: Enrollment, store: Store) -> APIRouter:
    """``POST /v1/enroll``: its credential is the one-time token in the body, or else a
    bearer credential with the enroll or admin scope (a provisioning tool's)."""
    router = APIRouter()

    # PUBLIC to the route check (cloud_ingest.access): the body's token is a credential
    # of its own; without one, authorize() asks for the scope, 401/403 as any route.
    @router.post(
        "/v1/enroll",
        tags=["enrollment"],
        openapi_extra=PUBLIC,
        responses={
            401: {"description": "Unknown, used or expired token; no token and no bearer"},
            403: {"description": "No token, and a bearer credential without enroll/admin"},
            400: {"description": "A CSR or POD key that cannot be accepted"},
        },
    )
    async def enroll_device(body: EnrollIn, request: Request) -> EnrollOut:
        """Enroll a van with a one-time token (or an enroll-scoped bearer credential):
        its certificate, the CA and the broker."""
        if body.token is None:
            await authorize(request, "enroll", "admin")
        try:
            return await enroll(enrollment, store, body, now=utcnow())
        except TokenError as err:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(err)) from None
        except (CsrError, EnrollError) as err:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
        except CaError as err:
            log.error("enrollment failed: %s", err)  # noqa: TRY400 (the message says it)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"the fleet CA cannot be used: {err}"
            ) from None

    return router
