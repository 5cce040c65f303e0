"""JWS compact serialization with Ed25519 (RFC 7515 + RFC 8037), and nothing else.

Written here with ``cryptography`` instead of depending on a JOSE library, on purpose:

- The van's base install stays small: we need one algorithm and one serialization, about
  sixty lines, while a JOSE library brings JWE, JWT, key management and their
  dependencies onto every Pi.
- A verifier that knows one algorithm cannot be talked into another: no ``alg: none``,
  no HMAC-with-the-public-key confusion, no algorithm negotiation at all.
- The strictness is ours to decide: canonical base64url only (a token has exactly one
  spelling, so its SHA-256 — the hash chain's link — cannot be changed without breaking
  the signature), duplicate JSON keys and unknown ``crit`` extensions refused.

Interoperability is not taken on faith: the tests sign with joserfc and jwcrypto and
verify with this module, and the other way round.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_agent.contract.errors import ContractError

JwsReason = Literal["malformed", "bad_header", "bad_alg", "bad_signature", "bad_payload"]

# RFC 8037 "EdDSA" is what the contract signs with: every JOSE library that does Ed25519
# knows it. RFC 9864 deprecates it in favour of the fully specified "Ed25519", which we
# accept so that a verifier or a future agent may move over without a flag day.
SIGN_ALG = "EdDSA"
ACCEPTED_ALGS = frozenset({"EdDSA", "Ed25519"})
POD_TYP = "pod+jwt"
# A POD is under 1 KiB; the limit keeps hostile input from costing memory and CPU
# before anything is checked (a QR payload of 3 KB escaped as JSON still fits).
MAX_TOKEN_CHARS = 64 * 1024
_ED25519_SIG_BYTES = 64
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JwsError(ContractError, ValueError):
    """A token failed verification; :attr:`reason` says at which step.

    ``malformed``: not three canonical base64url segments; ``bad_header``: the protected
    header is not a JSON object we can honour (``crit``, ``b64``, ``typ``);
    ``bad_alg``: an algorithm other than EdDSA/Ed25519 (``none`` included);
    ``bad_signature``: the signature does not verify with the key; ``bad_payload``:
    signed, but the payload is not a JSON object.
    """

    def __init__(self, reason: JwsReason, message: str) -> None:
        super().__init__(message)
        self.reason: JwsReason = reason


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`; :class:`ValueError` on anything else.

    Refuses padding, characters outside the URL-safe alphabet, impossible lengths and
    non-canonical encodings (stray bits in the last character), so that exactly one
    string decodes to given bytes.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as err:
        raise ValueError("not unpadded base64url") from err
    if b64url_encode(data) != text:
        raise ValueError("non-canonical base64url (stray bits in the last character)")
    return data


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not ``\\u`` escapes); NaN/Infinity refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign_compact(
    payload: Mapping[str, Any], key: Ed25519PrivateKey, *, kid: str, typ: str = POD_TYP
) -> str:
    """Sign ``payload`` as a JWS compact serialization with header alg/kid/typ.

    The payload is :func:`canonical_json`, so the same claims always give the same
    token. :class:`JwsError` (``bad_payload``) if it is not JSON-serializable.
    """
    header = {"alg": SIGN_ALG, "kid": kid, "typ": typ}
    try:
        payload_json = canonical_json(payload)
    except (TypeError, ValueError) as err:
        raise JwsError("bad_payload", f"payload is not JSON: {err}") from err
    signing_input = b64url_encode(canonical_json(header)) + "." + b64url_encode(payload_json)
    signature = key.sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 section 5.2 lets a parser take the last of duplicate member names; two
    # parsers that differ on that would read different claims from one signed token.
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise ValueError(f"duplicate member {name!r}")
        obj[name] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or ``None`` if it is anything else."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _split(token: str) -> tuple[str, str, bytes, bytes, bytes]:
    """Signing input and the three decoded segments; ``malformed`` otherwise."""
    if not isinstance(token, str):
        raise JwsError("malformed", f"token is a {type(token).__name__}, not a str")
    if len(token) > MAX_TOKEN_CHARS:
        raise JwsError("malformed", f"token longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsError("malformed", f"{len(parts)} segment(s), a compact JWS has 3")
    if not all(parts):
        # An empty payload is RFC 7515's detached content; an empty signature is what
        # "alg": "none" leaves behind. A POD has neither.
        raise JwsError("malformed", "empty segment")
    try:
        header, payload, signature = (b64url_decode(part) for part in parts)
    except ValueError as err:
        raise JwsError("malformed", f"bad base64url segment: {err}") from None
    return parts[0], parts[1], header, payload, signature


def _normalise_typ(typ: str) -> str:
    # RFC 7515 section 4.1.9: media types compare case-insensitively, and
    # "application/" may be left out.
    typ = typ.lower()
    return typ.removeprefix("application/")


def read_header(token: str) -> dict[str, Any]:
    """The protected header, unverified (for reporting, e.g. which ``kid`` signed)."""
    header = _json_object(_split(token)[2])
    if header is None:
        raise JwsError("bad_header", "protected header is not a JSON object")
    return header


def verify_compact(token: str, key: Ed25519PublicKey, *, typ: str | None = None) -> dict[str, Any]:
    """Verify an EdDSA/Ed25519 compact JWS with ``key`` and return its claims.

    Steps, in order (the first failure raises :class:`JwsError` with its reason): three
    canonical base64url segments; a JSON-object header without ``crit`` (we implement
    no extension) and without ``b64: false``; ``alg`` "EdDSA" or "Ed25519"; when ``typ``
    is given, a matching ``typ`` header; the signature; a JSON-object payload. The
    payload is parsed only after the signature verified.
    """
    header_b64, payload_b64, header_json, payload_json, signature = _split(token)
    header = _json_object(header_json)
    if header is None:
        raise JwsError("bad_header", "protected header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ACCEPTED_ALGS:
        raise JwsError("bad_alg", f"alg {alg!r} refused (accepted: EdDSA, Ed25519)")
    if "crit" in header:
        raise JwsError("bad_header", f"crit {header['crit']!r}: no extension is understood")
    if header.get("b64", True) is not True:
        raise JwsError("bad_header", "unencoded payloads (b64) are not supported")
    if typ is not None:
        got = header.get("typ")
        if not isinstance(got, str) or _normalise_typ(got) != _normalise_typ(typ):
            raise JwsError("bad_header", f"typ {got!r}, expected {typ!r}")
    if len(signature) != _ED25519_SIG_BYTES:
        raise JwsError("bad_signature", f"signature is {len(signature)} bytes, not 64")
    try:
        key.verify(signature, f"{header_b64}.{payload_b64}".encode("ascii"))
    except InvalidSignature:
        raise JwsError("bad_signature", "signature does not verify with the key") from None
    claims = _json_object(payload_json)
    if claims is None:
        raise JwsError("bad_payload", "payload is not a JSON object")
    return claims


def peek_claims(token: str) -> dict[str, Any]:
    """The claims of ``token`` WITHOUT verifying anything: for reports, never for trust.

    :class:`JwsError` ``malformed`` or ``bad_payload`` if they cannot be read.
    """
    claims = _json_object(_split(token)[3])
    if claims is None:
        raise JwsError("bad_payload", "payload is not a JSON object")
    return claims
