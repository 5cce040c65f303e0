"""The device key file: created safely, refused when exposed, never leaked."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey
from jwcrypto import jwk as jwcrypto_jwk  # type: ignore[import-untyped]

from firmware_agent.contract import keys
from firmware_agent.contract.errors import ContractError
from firmware_agent.contract.jws import b64url_encode
from firmware_agent.contract.keys import (
    KeyFileError,
    key_thumbprint,
    load_device_key,
    load_or_create_device_key,
    load_public_key,
    public_jwk,
    public_key_pem,
    write_file_atomically,
)
from firmware_agent.pod.chain import PodChain

# RFC 8037 appendix A.1 (key) and A.3 (its RFC 7638 thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def secret_spellings(key: Ed25519PrivateKey) -> list[str]:
    """Every way the private key could plausibly show up in text."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body = "".join(pem.strip().splitlines()[1:-1])
    return [raw.hex(), b64url_encode(raw), body, body[:24], repr(raw)[2:30]]


def assert_no_secret(text: str, key: Ed25519PrivateKey) -> None:
    for spelling in secret_spellings(key):
        assert spelling not in text


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_creates_a_0600_key_in_new_0700_directories(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "var" / "lib" / "fleet" / "device.key"
    key = load_or_create_device_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert mode(path) == 0o600
    for d in (tmp_path / "var", tmp_path / "var" / "lib", tmp_path / "var" / "lib" / "fleet"):
        assert mode(d) == 0o700
    assert os.listdir(path.parent) == ["device.key"]  # no temporary file left behind
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    again = load_or_create_device_key(path)
    assert key_thumbprint(again.public_key()) == key_thumbprint(key.public_key())


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would leave the owner without write or search permission
    try:
        path = tmp_path / "new" / "device.key"
        load_or_create_device_key(path)
    finally:
        os.umask(old)
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600


def test_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    load_or_create_device_key(state / "device.key")
    assert mode(state) == 0o755  # systemd's StateDirectory= owns it, not us


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_refuses_a_key_group_or_others_can_access(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "device.key"
    key = load_or_create_device_key(path)
    path.chmod(loose)
    with pytest.raises(KeyFileError, match=f"mode {loose:04o}") as info:
        load_or_create_device_key(path)
    assert str(path) in str(info.value)
    assert_no_secret(str(info.value), key)
    with pytest.raises(KeyFileError):
        load_device_key(path)


def test_key_file_error_is_a_contract_error_and_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError):
        load_device_key(tmp_path / "absent.key")
    with pytest.raises(OSError, match="no device key"):
        load_device_key(tmp_path / "absent.key")
    assert not (tmp_path / "absent.key").exists()  # load_device_key never creates


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_refuses_keys_that_are_not_ed25519(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = write_private(tmp_path / "ec.key", pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_device_key(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = write_private(tmp_path / "device.key", content)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_or_create_device_key(path)


def test_refuses_an_encrypted_key_without_leaking_it(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )
    path = write_private(tmp_path / "device.key", pem)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM") as info:
        load_device_key(path)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_or_create_device_key(path)


def test_private_key_never_in_logs_reprs_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "device.key"
    key = load_or_create_device_key(path)
    load_or_create_device_key(path)
    chain = PodChain("van-0007", key)
    chain.issue({"parcel": "P1"})
    assert "created device key" in caplog.text
    assert key_thumbprint(key.public_key()) in caplog.text
    texts = [caplog.text, repr(chain), repr(chain.state), repr(key)]
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as exposed:
        load_device_key(path)
    path.chmod(0o600)
    # A truncated key file: the parser's own message must not reach ours.
    pem = path.read_bytes()
    damaged = write_private(tmp_path / "damaged.key", pem[: len(pem) // 2] + pem[-30:])
    with pytest.raises(KeyFileError) as broken:
        load_device_key(damaged)
    for err in (exposed.value, broken.value):
        texts += [str(err), repr(err), str(err.__cause__), str(err.__context__)]
    for text in texts:
        assert_no_secret(text, key)


def test_losing_a_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "device.key"
    winner = Ed25519PrivateKey.generate()
    winner_pem = winner.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    real = keys.make_private_dirs

    def another_process_wins(directory: Path) -> None:
        real(directory)
        write_private(path, winner_pem)

    monkeypatch.setattr(keys, "make_private_dirs", another_process_wins)
    key = load_or_create_device_key(path)
    assert key_thumbprint(key.public_key()) == key_thumbprint(winner.public_key())
    assert path.read_bytes() == winner_pem
    assert os.listdir(tmp_path) == ["device.key"]


def test_write_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_file_atomically(path, b"one", overwrite=False)
    assert not write_file_atomically(path, b"two", overwrite=False)
    assert path.read_bytes() == b"one"
    assert write_file_atomically(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def rfc8037_key() -> Ed25519PrivateKey:
    from firmware_agent.contract.jws import b64url_decode  # noqa: PLC0415

    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))


def test_public_jwk_and_thumbprint_match_rfc8037() -> None:
    public = rfc8037_key().public_key()
    assert public_jwk(public) == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert key_thumbprint(public) == RFC8037_THUMBPRINT


def test_thumbprint_matches_joserfc_and_jwcrypto() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    ours = key_thumbprint(public)
    as_joserfc: dict[str, str | list[str]] = {**public_jwk(public)}
    assert OKPKey.import_key(as_joserfc).thumbprint() == ours
    assert jwcrypto_jwk.JWK(**public_jwk(public)).thumbprint() == ours


def test_load_public_key_from_pem_jwk_and_jwk_set(tmp_path: Path) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    want = key_thumbprint(public)
    pem = tmp_path / "device.pub.pem"
    pem.write_bytes(public_key_pem(public))
    assert pem.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    jwk = tmp_path / "device.jwk"
    jwk.write_text(json.dumps({**public_jwk(public), "kid": want, "use": "sig"}))
    jwks = tmp_path / "device.jwks"
    jwks.write_text(json.dumps({"keys": [public_jwk(public)]}))
    for path in (pem, jwk, jwks):
        assert key_thumbprint(load_public_key(path)) == want


def test_load_public_key_refuses_private_keys(tmp_path: Path) -> None:
    device = load_or_create_device_key(tmp_path / "device.key")
    with pytest.raises(KeyFileError, match="is a private key") as info:
        load_public_key(tmp_path / "device.key")
    assert_no_secret(str(info.value), device)
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    private_jwk = tmp_path / "private.jwk"
    private_jwk.write_text(json.dumps({**public_jwk(key.public_key()), "d": b64url_encode(raw)}))
    with pytest.raises(KeyFileError, match="private JWK") as info2:
        load_public_key(private_jwk)
    assert_no_secret(str(info2.value), key)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "neither a PEM public key nor a JWK"),
        (b"hello", "neither a PEM public key nor a JWK"),
        (b"{not json", "does not parse"),
        (b"[1, 2]", "neither"),
        (b'{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}', "expected OKP Ed25519"),
        (b'{"kty": "OKP", "crv": "Ed448", "x": "AA"}', "expected OKP Ed25519"),
        (b'{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}', "not 32 bytes"),
        (b'{"kty": "OKP", "crv": "Ed25519", "x": 7}', "not 32 bytes"),
        (b'{"kty": "OKP", "crv": "Ed25519"}', "not 32 bytes"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public"),
    ],
)
def test_load_public_key_refuses_other_content(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_public_key(path)


def test_load_public_key_refuses_other_key_types_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "ec.pub"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_public_key(path)
    with pytest.raises(KeyFileError, match="cannot read public key"):
        load_public_key(tmp_path / "absent.pem")
