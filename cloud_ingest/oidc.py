"""Bearer JWTs from the operator's identity provider, checked against its JWKS.

:class:`JwksCache` holds the provider's public keys: fetched on first use, again when
older than ``max_age_s``, and at once when a token names a key id it does not hold (the
provider rotated its keys), at most every ``refresh_min_s`` so that a stream of tokens
with made-up kids cannot turn the API into a flood against the provider.
:class:`OidcVerifier` checks a token with joserfc: an asymmetric signature by a key of
the set (never ``none`` nor HMAC: a public key must not double as a shared secret),
``iss``, ``aud`` and ``exp`` present and right (``nbf`` and ``iat`` when present), and
reads the caller's scopes from one claim.

The fetch is blocking urllib run in a thread (the ingest extra has no HTTP client), so
the event loop never waits on the provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import KeySet

from cloud_ingest.apitokens import SCOPES, Scope
from cloud_ingest.errors import IngestError

log = logging.getLogger(__name__)

# Asymmetric algorithms only (see the module doc).
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)
MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024


class OidcError(IngestError):
    """A bearer JWT is not acceptable (the message says why; the caller gets a 401)."""


class IdentityProviderError(IngestError):
    """The identity provider's keys cannot be had (the caller gets a 503)."""


def _fetch(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (https, or http to localhost: config checks)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"more than {MAX_JWKS_BYTES} bytes")
    return body


class JwksCache:
    """The provider's key set (see the module doc). ``fetch(url, timeout_s)`` returns
    the document's bytes; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        refresh_min_s: float = 60.0,
        max_age_s: float = 3600.0,
        fetch: Callable[[str, float], bytes] = _fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._refresh_min_s = refresh_min_s
        self._max_age_s = max_age_s
        self._fetch = fetch
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _kids(self) -> set[str]:
        return {k.kid for k in self._keys or () if k.kid is not None}

    async def keys(self, kid: str | None) -> KeySet:
        """The key set, refetched when stale, or when it lacks ``kid`` and the last
        fetch is at least ``refresh_min_s`` old."""
        async with self._lock:
            age = self._clock() - self._fetched_at
            stale = self._keys is None or age >= self._max_age_s
            unknown = kid is not None and kid not in self._kids()
            if stale or (unknown and age >= self._refresh_min_s):
                await self._refresh()
            if self._keys is None:
                raise IdentityProviderError(f"no keys from {self.url}")
            return self._keys

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()  # a failed fetch counts too: no retry storm
        self.fetches += 1
        try:
            body = await asyncio.to_thread(self._fetch, self.url, self._timeout_s)
            keys = KeySet.import_key_set(json.loads(body))
        except (OSError, ValueError, KeyError, TypeError, JoseError) as err:
            if self._keys is None:
                raise IdentityProviderError(f"cannot fetch the JWKS {self.url}: {err}") from err
            log.warning("cannot refresh the JWKS %s (keeping the keys held): %s", self.url, err)
            return
        self._keys = keys


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    subject: str
    scopes: frozenset[Scope]


def scopes_from_claim(value: object, scope_map: Mapping[str, Iterable[Scope]]) -> frozenset[Scope]:
    """The ingest scopes a scope claim grants: its values (a space-separated string or
    a list of strings) mapped by ``scope_map``, or taken as scope names when the map is
    empty. Unknown values grant nothing."""
    if isinstance(value, str):
        values = value.split()
    elif isinstance(value, list):
        values = [v for v in value if isinstance(v, str)]
    else:
        values = []
    granted: set[Scope] = set()
    for v in values:
        if scope_map:
            granted.update(scope_map.get(v, ()))
        elif v in SCOPES:
            granted.add(v)
    return frozenset(granted)


class OidcVerifier:
    """Checks bearer JWTs (see the module doc). ``now`` is wall-clock seconds (UNIX)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        scope_claim: str = "scope",
        scope_map: Mapping[str, Iterable[Scope]] | None = None,
        leeway_s: float = 60.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks
        self._scope_claim = scope_claim
        self._scope_map = {k: tuple(v) for k, v in (scope_map or {}).items()}
        self._leeway_s = leeway_s
        self._now = now

    async def verify(self, token: str) -> OidcIdentity:
        """The caller a token names; :class:`OidcError` when it is not acceptable,
        :class:`IdentityProviderError` when the keys cannot be had."""
        if len(token) > MAX_TOKEN_CHARS:
            raise OidcError("token too long")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeEncodeError) as err:
            raise OidcError(f"not a JWT: {err}") from None
        if header.get("alg") not in ALGORITHMS:
            raise OidcError(f"algorithm {header.get('alg')!r} not accepted")
        kid = header.get("kid")
        keys = await self.jwks.keys(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(token, keys, algorithms=ALGORITHMS).claims
            jwt.JWTClaimsRegistry(
                now=int(self._now()),
                leeway=round(self._leeway_s),
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
            ).validate(claims)
        except ExpiredTokenError:
            raise OidcError("token expired") from None
        except (InvalidClaimError, MissingClaimError) as err:
            raise OidcError(f"claim rejected: {err.description or err}") from None
        except JoseError as err:
            raise OidcError(f"token rejected: {err.description or type(err).__name__}") from None
        except ValueError as err:  # a key of the wrong type for the alg, and the like
            raise OidcError(f"token rejected: {err}") from None
        subject = claims.get("sub")
        return OidcIdentity(
            subject=subject if isinstance(subject, str) else "?",
            scopes=scopes_from_claim(claims.get(self._scope_claim), self._scope_map),
        )
