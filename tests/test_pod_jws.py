"""JWS compact with Ed25519: our tokens are ordinary JOSE, and hostile ones are refused."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws as joserfc_jws
from joserfc.jwk import OKPKey
from jwcrypto import jwk as jwcrypto_jwk  # type: ignore[import-untyped]
from jwcrypto import jws as jwcrypto_jws

from firmware_agent.contract.jws import (
    MAX_TOKEN_CHARS,
    JwsError,
    b64url_decode,
    b64url_encode,
    peek_claims,
    sign_compact,
    verify_compact,
)
from firmware_agent.contract.keys import key_thumbprint, public_jwk
from firmware_agent.pod.chain import PodChain

# RFC 8037 appendix A.1 key and A.4 signature of "Example of Ed25519 signing".
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)

CLAIMS: dict[str, Any] = {
    "v": 1,
    "device_id": "van-0007",
    "seq": 1,
    "prev": "0" * 64,
    "parcel": "106141412345678908",
    "raw": "]C100106141412345678908\u001d4201234",
    "stop_id": "S001",
    "time": "2026-11-21T09:14:02.000Z",
    "lat": 48.137,
    "lon": 11.575,
    "hacc_m": 3.5,
    "verdict": "inside",
    "distance_m": 0.0,
    "source": "serial",
    "note": "Müller, 3. OG",
}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def token(key: Ed25519PrivateKey) -> str:
    return sign_compact(CLAIMS, key, kid=key_thumbprint(key.public_key()))


@pytest.fixture
def no_security_warnings() -> Iterator[None]:
    # joserfc flags "EdDSA" as deprecated by RFC 9864 (a SecurityWarning); still valid.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def segments(token: str) -> list[str]:
    return token.split(".")


def raw_b64(data: bytes) -> str:
    return b64url_encode(data)


def resign(key: Ed25519PrivateKey, header: dict[str, Any] | bytes, payload: bytes) -> str:
    """A token signed with ``key`` over any header and payload bytes."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = raw_b64(header_bytes) + "." + raw_b64(payload)
    return signing_input + "." + raw_b64(key.sign(signing_input.encode()))


def test_round_trip(key: Ed25519PrivateKey, token: str) -> None:
    assert verify_compact(token, key.public_key()) == CLAIMS
    assert verify_compact(token, key.public_key(), typ="pod+jwt") == CLAIMS
    assert verify_compact(token, key.public_key(), typ="application/POD+JWT") == CLAIMS
    assert peek_claims(token) == CLAIMS


def test_header_and_payload_are_canonical(key: Ed25519PrivateKey, token: str) -> None:
    header_b64, payload_b64, _ = segments(token)
    kid = key_thumbprint(key.public_key())
    assert b64url_decode(header_b64) == f'{{"alg":"EdDSA","kid":"{kid}","typ":"pod+jwt"}}'.encode()
    payload = b64url_decode(payload_b64)
    assert payload == json.dumps(
        CLAIMS, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert "Müller".encode() in payload  # UTF-8, not \u escapes
    assert "=" not in token
    assert token.isascii()
    # Same claims, same key: the same token (Ed25519 is deterministic).
    assert sign_compact(dict(reversed(CLAIMS.items())), key, kid=kid) == token


def test_sign_refuses_what_json_cannot_carry(key: Ed25519PrivateKey) -> None:
    for bad in ({"x": float("nan")}, {"x": object()}):
        with pytest.raises(JwsError) as info:
            sign_compact(bad, key, kid="k")
        assert info.value.reason == "bad_payload"


def test_rfc8037_signature_vector_verifies() -> None:
    public = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D)).public_key()
    # The signature verifies; only then is the payload read, and it is not a JSON object.
    with pytest.raises(JwsError) as info:
        verify_compact(RFC8037_JWS, public)
    assert info.value.reason == "bad_payload"


# --- interoperability: independent libraries ------------------------------------------


def test_ours_verify_with_joserfc(
    key: Ed25519PrivateKey, token: str, no_security_warnings: None
) -> None:
    jwk = OKPKey.import_key(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    obj = joserfc_jws.deserialize_compact(token, jwk, algorithms=["EdDSA", "Ed25519"])
    assert json.loads(obj.payload) == CLAIMS
    assert obj.protected["kid"] == jwk.thumbprint()
    assert obj.protected["typ"] == "pod+jwt"


def test_ours_verify_with_jwcrypto(key: Ed25519PrivateKey, token: str) -> None:
    jwk = jwcrypto_jwk.JWK.from_pyca(key.public_key())
    obj = jwcrypto_jws.JWS()
    obj.deserialize(token, key=jwk)
    assert json.loads(obj.payload) == CLAIMS
    assert json.loads(obj.objects["protected"])["kid"] == jwk.thumbprint()


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_joserfc_tokens_verify_with_ours(alg: str, no_security_warnings: None) -> None:
    jwk = OKPKey.generate_key("Ed25519")
    payload = json.dumps(CLAIMS).encode()
    token = joserfc_jws.serialize_compact({"alg": alg, "typ": "pod+jwt"}, payload, jwk, [alg])
    public = OKPKey.import_key(jwk.as_dict(private=False))
    ours = serialization.load_pem_public_key(public.as_pem(private=False))
    assert isinstance(ours, Ed25519PublicKey)
    assert verify_compact(token, ours, typ="pod+jwt") == CLAIMS


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_jwcrypto_tokens_verify_with_ours(alg: str) -> None:
    private = Ed25519PrivateKey.generate()
    obj = jwcrypto_jws.JWS(json.dumps(CLAIMS))
    obj.add_signature(
        jwcrypto_jwk.JWK.from_pyca(private), alg=alg, protected=json.dumps({"alg": alg})
    )
    assert verify_compact(obj.serialize(compact=True), private.public_key()) == CLAIMS


# --- refusals ----------------------------------------------------------------------------


def reason(token: Any, key: Ed25519PrivateKey, *, typ: str | None = None) -> str:
    with pytest.raises(JwsError) as info:
        verify_compact(token, key.public_key(), typ=typ)
    assert isinstance(info.value, ValueError)
    return info.value.reason


def test_wrong_key_and_altered_parts_are_bad_signatures(key: Ed25519PrivateKey, token: str) -> None:
    header_b64, payload_b64, sig_b64 = segments(token)
    assert reason(token, Ed25519PrivateKey.generate()) == "bad_signature"
    altered = b64url_decode(payload_b64).replace(b'"seq":1', b'"seq":2')
    assert reason(f"{header_b64}.{raw_b64(altered)}.{sig_b64}", key) == "bad_signature"
    header = json.loads(b64url_decode(header_b64)) | {"kid": "someone-else"}
    assert (
        reason(f"{raw_b64(json.dumps(header).encode())}.{payload_b64}.{sig_b64}", key)
        == "bad_signature"
    )
    sig = bytearray(b64url_decode(sig_b64))
    sig[0] ^= 1
    assert reason(f"{header_b64}.{payload_b64}.{raw_b64(bytes(sig))}", key) == "bad_signature"
    assert reason(f"{header_b64}.{payload_b64}.{raw_b64(bytes(sig[:63]))}", key) == "bad_signature"


@pytest.mark.parametrize(
    "alg", ["none", "None", "HS256", "RS256", "ES256", "Ed448", "", None, 7, ["EdDSA"]]
)
def test_other_algorithms_are_refused(key: Ed25519PrivateKey, alg: object) -> None:
    header: dict[str, Any] = {"typ": "pod+jwt"}
    if alg is not None:
        header["alg"] = alg
    signed = resign(key, header, json.dumps(CLAIMS).encode())
    assert reason(signed, key) == "bad_alg"
    # The classic: alg none with an empty signature.
    unsigned = ".".join(segments(signed)[:2]) + "."
    assert reason(unsigned, key) in ("malformed", "bad_alg")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "=",  # padding
        lambda t: t.replace(".", "=.", 1),  # padded header
        lambda t: t + ".AAAA.BBBB",  # five segments (JWE-like)
        lambda t: t + ".AAAA",  # four segments
        lambda t: t + ".",
        lambda t: t.rsplit(".", 1)[0],  # two segments
        lambda t: "",
        lambda t: "..",
        lambda t: t.replace(".", "..", 1),
        lambda t: t.replace("-", "+").replace("_", "/") + "+",  # standard base64
        lambda t: t[:10] + "*" + t[11:],
        lambda t: t[:10] + " " + t[11:],
        lambda t: t[:-1] + "é",  # not ASCII
        lambda t: t + "\n",
        lambda t: "A" * (MAX_TOKEN_CHARS + 1),
    ],
)
def test_malformed_tokens(key: Ed25519PrivateKey, token: str, mangle: Any) -> None:
    assert reason(mangle(token), key) == "malformed"


def test_non_canonical_base64_is_malformed(key: Ed25519PrivateKey, token: str) -> None:
    # 64 signature bytes end with 2 spare bits; setting them gives another spelling of
    # the same bytes, which would change the token's digest without touching anything.
    head, sig = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(sig + "==")
    assert twin != sig
    assert reason(f"{head}.{twin}", key) == "malformed"


def test_non_string_tokens_are_malformed(key: Ed25519PrivateKey, token: str) -> None:
    assert reason(token.encode(), key) == "malformed"
    assert reason(None, key) == "malformed"


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'"EdDSA"',
        b"not json",
        b'{"alg":"EdDSA","alg":"none"}',  # duplicate members
        b"\xff\xfe",
    ],
)
def test_bad_headers(key: Ed25519PrivateKey, header: bytes) -> None:
    assert reason(resign(key, header, b"{}"), key) == "bad_header"


def test_crit_and_unencoded_payload_are_refused(key: Ed25519PrivateKey) -> None:
    payload = json.dumps(CLAIMS).encode()
    crit = resign(key, {"alg": "EdDSA", "crit": ["exp"], "exp": 1}, payload)
    assert reason(crit, key) == "bad_header"
    b64 = resign(key, {"alg": "EdDSA", "b64": False, "crit": ["b64"]}, payload)
    assert reason(b64, key) == "bad_header"
    b64_alone = resign(key, {"alg": "EdDSA", "b64": False}, payload)
    assert reason(b64_alone, key) == "bad_header"
    # Headers we do not need but that carry no obligation are fine.
    fine = resign(key, {"alg": "EdDSA", "cty": "json", "x-extra": 1}, payload)
    assert verify_compact(fine, key.public_key()) == CLAIMS


def test_typ_is_checked_when_asked(key: Ed25519PrivateKey, token: str) -> None:
    other = resign(key, {"alg": "EdDSA", "typ": "JWT"}, json.dumps(CLAIMS).encode())
    assert verify_compact(other, key.public_key()) == CLAIMS
    assert reason(other, key, typ="pod+jwt") == "bad_header"
    untyped = resign(key, {"alg": "EdDSA"}, json.dumps(CLAIMS).encode())
    assert reason(untyped, key, typ="pod+jwt") == "bad_header"


@pytest.mark.parametrize(
    "payload",
    [
        b"[1,2]",
        b"42",
        b'"text"',
        b"null",
        b"",
        b"{",
        b'{"seq":1,"seq":2}',  # duplicate members: two parsers could read two claims
        b'{"lat":NaN}',
        b'{"lat":Infinity}',
        b'{"a":"\xff"}',  # not UTF-8
    ],
)
def test_bad_payloads_after_a_good_signature(key: Ed25519PrivateKey, payload: bytes) -> None:
    signed = resign(key, {"alg": "EdDSA"}, payload)
    expected = "malformed" if not payload else "bad_payload"  # an empty segment
    assert reason(signed, key) == expected


def test_peek_claims_reads_without_verifying(key: Ed25519PrivateKey) -> None:
    forged = resign(Ed25519PrivateKey.generate(), {"alg": "none"}, b'{"seq":9}')
    assert peek_claims(forged) == {"seq": 9}
    with pytest.raises(JwsError) as info:
        peek_claims("abc")
    assert info.value.reason == "malformed"
    with pytest.raises(JwsError) as info:
        peek_claims(resign(key, {"alg": "EdDSA"}, b"[]"))
    assert info.value.reason == "bad_payload"


def test_b64url_helpers() -> None:
    for n in range(8):
        data = bytes(range(250, 250 - n, -1))
        assert b64url_decode(b64url_encode(data)) == data
    assert b64url_decode("") == b""
    for bad in ("A", "AB=", "AB+/", "AB C", "ABCDE", "AB\n"):
        with pytest.raises(ValueError):  # noqa: PT011
            b64url_decode(bad)


# --- the recipe backends copy -------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "pod.md"


def test_the_joserfc_recipe_in_the_docs_works() -> None:
    text = DOCS.read_text(encoding="utf-8")
    recipe = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(recipe, str(DOCS), "exec"), namespace)
    verify_pods = namespace["verify_pods"]

    device = Ed25519PrivateKey.generate()
    chain = PodChain("van-0007", device)
    tokens = [chain.issue({"parcel": f"P{n}"}).token for n in range(1, 6)]
    jwk = {**public_jwk(device.public_key()), "kid": key_thumbprint(device.public_key())}
    assert [c["seq"] for c in verify_pods(tokens, jwk)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="chain broken at seq 4"):
        verify_pods(tokens[:2] + tokens[3:], jwk)
    forged = PodChain("van-0007", Ed25519PrivateKey.generate()).issue({"parcel": "P1"})
    with pytest.raises(ValueError, match="signature does not verify"):
        verify_pods([forged.token], jwk)
