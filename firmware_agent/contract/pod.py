"""Proof of delivery as both sides read it: the hash chain's rules.

Every POD carries ``seq`` (1, 2, 3, ... per device) and ``prev``, the hex SHA-256 of the
previous POD's compact serialization (:data:`GENESIS_PREV`, 64 zeros, for the first).
Both are inside the signed payload (:mod:`.jws`), so nobody without the device key can
delete, reorder or replace a POD without a verifier noticing at the next one.
docs/pod.md describes the claims and how backends verify them.
"""

from __future__ import annotations

import hashlib
import re

GENESIS_PREV = "0" * 64
POD_VERSION = 1
# What the chain writes into every POD; the caller's fields must not set them.
RESERVED_CLAIMS = frozenset({"v", "device_id", "seq", "prev"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_hex_digest(text: object) -> bool:
    """Whether ``text`` is a lowercase hex SHA-256 (the form of ``prev``)."""
    return isinstance(text, str) and _HEX_DIGEST.fullmatch(text) is not None


def pod_digest(token: str) -> str:
    """Lowercase hex SHA-256 of the compact serialization as ASCII: the next ``prev``.

    :class:`UnicodeEncodeError` (a :class:`ValueError`) if ``token`` is not ASCII, which
    no compact JWS is.
    """
    return hashlib.sha256(token.encode("ascii")).hexdigest()
