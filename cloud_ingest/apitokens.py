"""Scoped API tokens: what a token is, how it is made, hashed, checked and named.

A token is ``fit_<id>_<secret>``: ``id`` (12 hex digits) names its row and is shown by
``fleet-ingest token list``; ``secret`` is 32 random bytes (256 bits, base64url). Only
the SHA-256 of the whole token is stored. A slow password hash (bcrypt, argon2) exists
to make guessing a *low-entropy* secret expensive; a 256-bit random secret cannot be
guessed, so one SHA-256 is the right hash (and costs the API nothing per request). The
stored digest is compared in constant time (:func:`hmac.compare_digest`).

Scopes (docs/ingest.md, "Who may call the API"): each grants exactly its endpoints;
none implies another (an administrator who also reads holds ``admin`` and ``read``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

Scope = Literal["read", "dispatch", "admin", "enroll"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
TOKEN_PREFIX = "fit_"  # noqa: S105 (every token starts so: not a secret)
TokenState = Literal["active", "expired", "revoked"]

_ID_HEX = 12
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{{_ID_HEX}}})_[A-Za-z0-9_-]{{43}}")
_DURATION_RE = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MAX_NAME_CHARS = 100


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """The scopes named; :class:`ValueError` naming an unknown one, or for none."""
    scopes: set[Scope] = set()
    for name in names:
        if name not in SCOPES:
            raise ValueError(f"unknown scope {name!r}; scopes: {', '.join(SCOPES)}")
        scopes.add(name)
    if not scopes:
        raise ValueError(f"at least one scope is needed ({', '.join(SCOPES)})")
    return frozenset(scopes)


def parse_duration(text: str) -> timedelta:
    """``90d``, ``24h``, ``30m`` or ``3600s``; :class:`ValueError` otherwise (or zero)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"not a duration such as 90d, 24h, 30m or 3600s: {text!r}")
    return timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])


def token_id(token: str) -> str | None:
    """The id in ``token`` when it has the shape of one of ours, else ``None``."""
    match = _TOKEN_RE.fullmatch(token)
    return None if match is None else match[1]


def token_sha256(token: str) -> bytes:
    """What the store keeps of a token (see the module doc for why SHA-256)."""
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token's row: everything but the token itself."""

    id: str
    name: str
    scopes: frozenset[Scope]
    sha256: bytes
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def state(self, now: datetime) -> TokenState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def matches(self, token: str) -> bool:
        """Whether ``token`` is this one (constant time in the digest)."""
        return hmac.compare_digest(self.sha256, token_sha256(token))

    @classmethod
    def from_row(cls, row: Sequence[Any], to_time: Callable[[Any], datetime]) -> ApiToken:
        """The token of a stored row (id, name, scopes as one space-separated string,
        sha256, created, expires, revoked, last used); ``to_time`` reads the store's
        times (SQLite's microseconds, PostgreSQL's timestamps) as UTC datetimes."""

        def at(value: Any) -> datetime | None:
            return None if value is None else to_time(value)

        return cls(
            id=row[0],
            name=row[1],
            scopes=parse_scopes(row[2].split()),
            sha256=bytes(row[3]),
            created_at=to_time(row[4]),
            expires_at=at(row[5]),
            revoked_at=at(row[6]),
            last_used_at=at(row[7]),
        )


def new_token(
    name: str, scopes: frozenset[Scope], *, now: datetime, expires_in: timedelta | None = None
) -> tuple[str, ApiToken]:
    """A fresh token (shown once) and the row to store for it."""
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"a token's name is 1 to {MAX_NAME_CHARS} printable characters")
    if not scopes:
        raise ValueError("at least one scope is needed")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ident = secrets.token_hex(_ID_HEX // 2)
    token = f"{TOKEN_PREFIX}{ident}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    row = ApiToken(
        id=ident,
        name=name,
        scopes=scopes,
        sha256=token_sha256(token),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
    )
    return token, row


def scopes_text(scopes: Iterable[str]) -> str:
    """Scopes as stored and shown: space-separated, in :data:`SCOPES` order."""
    chosen = set(scopes)
    return " ".join(s for s in SCOPES if s in chosen)
