"""The device's Ed25519 signing key: created once on the device, never leaving it.

The private key lives in one PKCS#8 PEM file readable by its owner only (0600, in a
0700 directory when we create it). It is generated on the device, so no copy exists
anywhere else; backends learn the public half at enrollment (``fleet-agent pod
pubkey``) and identify it by its RFC 7638 thumbprint, which every POD carries as
``kid``.

Nothing in this module puts key material into a log line, a repr or an exception
message: errors name the file and what is wrong with it, never its content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_agent.contract.errors import ContractError
from firmware_agent.contract.jws import b64url_decode, b64url_encode

_log = logging.getLogger(__name__)

_ED25519_KEY_BYTES = 32
# The longest public key file we read: a PEM or a JWK is a few hundred bytes.
_MAX_KEY_FILE_BYTES = 64 * 1024


class KeyFileError(ContractError, OSError):
    """A key file is absent, unreadable, too widely readable or not an Ed25519 key.

    The message names the file and the fault, never the key material.
    """


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700; leave existing ones.

    Existing directories keep their mode: /var/lib/fleet may be managed by systemd's
    StateDirectory=, and it is not ours to tighten or loosen.
    """
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # the umask may have removed bits we asked for
        fsync_directory(d.parent)


def write_file_atomically(path: Path, data: bytes, *, overwrite: bool, mode: int = 0o600) -> bool:
    """Write ``data`` to ``path`` so that a crash leaves the old content or the new, whole.

    A temporary file in the same directory is created exclusively with ``mode``, written
    and fsynced, then published: with ``os.replace`` when ``overwrite``, otherwise with
    ``os.link``, which fails if ``path`` exists (a rename would silently replace a file
    another process created meanwhile). The directory is fsynced afterwards. Returns
    ``False``, writing nothing, when ``overwrite`` is false and ``path`` already exists.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    published = False
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
            published = True
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            published = True
    finally:
        if not (published and overwrite):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_directory(directory)
    return True


def _describe_key(key: object) -> str:
    # Only the type's name: a key object's repr is safe today, but that is
    # cryptography's business, not something to rely on in an error message.
    return type(key).__name__


def _private_file_fault(st: os.stat_result, path: Path, what: str) -> str | None:
    """Why a file with status ``st`` must not be used as a private key, if it must not."""
    if not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file"
    if st.st_mode & 0o077:
        return (
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others "
            "can access it; refusing to use a key that may have been copied "
            f"(chmod 600 {path} if it never left the device, else provision a new key)"
        )
    return None


def load_device_key(path: Path, *, what: str = "device key") -> Ed25519PrivateKey:
    """Load the existing device key at ``path``; never creates one.

    ``what`` names the key in error messages (``"model key"`` for the fleet's model
    signing key, which follows the same rules).

    :class:`KeyFileError` if the file is absent, is not a regular file, can be read or
    written by group or others (ssh's rule: a key others could have copied is no longer
    secret), or does not hold an unencrypted PKCS#8/OpenSSL PEM Ed25519 private key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {path}") from None
    except OSError as err:
        raise KeyFileError(f"cannot open {what} {path}: {err.strerror or err}") from None
    try:
        # fstat the open file, not the path: what we check is what we read.
        st = os.fstat(fd)
        fault = _private_file_fault(st, path, what)
        data = b""
        if fault is None:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise KeyFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if fault:
        raise KeyFileError(fault)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # ``from None``: the parser's message is about the content, and the content is
        # the secret. Our message says enough to act on.
        raise KeyFileError(f"{what} {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{what} {path} holds a {_describe_key(key)}, not an Ed25519 key")
    return key


def load_or_create_device_key(path: Path) -> Ed25519PrivateKey:
    """The device key at ``path``, generated here on first use.

    When the file is absent: missing parent directories are created with mode 0700, a
    fresh key is written as unencrypted PKCS#8 PEM to an exclusively created 0600
    temporary file in the same directory, fsynced, published under ``path`` without
    ever replacing an existing file, and the directory is fsynced. If another process
    published a key first, that key is loaded and returned instead: a device has one
    identity. When present, :func:`load_device_key` rules apply (:class:`KeyFileError`).
    """
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise KeyFileError(f"cannot look up device key {path}: {err.strerror or err}") from None
    else:
        return load_device_key(path)
    key = create_key(path)
    if key is None:
        _log.info("device key %s was created concurrently by another process; using it", path)
        return load_device_key(path)
    _log.info("created device key %s (kid %s)", path, key_thumbprint(key.public_key()))
    return key


def create_key(path: Path, *, what: str = "device key") -> Ed25519PrivateKey | None:
    """A fresh Ed25519 key written to ``path``, or None if ``path`` exists (untouched).

    Missing parent directories are created with mode 0700; the key is written as
    unencrypted PKCS#8 PEM to an exclusively created 0600 temporary file in the same
    directory, fsynced, published under ``path`` without ever replacing an existing
    file, and the directory is fsynced. :class:`KeyFileError` (naming ``what``) if it
    cannot be written.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        make_private_dirs(path.parent)
        created = write_file_atomically(path, pem, overwrite=False, mode=0o600)
    except OSError as err:
        raise KeyFileError(f"cannot create {what} {path}: {err.strerror or err}") from None
    return key if created else None


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The RFC 8037 JWK of ``key``: ``{"kty": "OKP", "crv": "Ed25519", "x": ...}``."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def key_thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: base64url SHA-256 of the JWK's required members, canonical.

    Used as the ``kid`` of every POD. Identical to joserfc's and jwcrypto's thumbprints.
    """
    jwk = public_jwk(key)
    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """``key`` as a SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_from_jwk(obj: Any, path: Path) -> Ed25519PublicKey:
    if isinstance(obj, dict) and isinstance(obj.get("keys"), list) and len(obj["keys"]) == 1:
        obj = obj["keys"][0]  # a JWK Set holding exactly one key
    if not isinstance(obj, dict):
        raise KeyFileError(f"{path} is JSON but not a JWK object")
    if "d" in obj:
        raise KeyFileError(f"{path} is a private JWK; give the public key (fleet-agent pod pubkey)")
    if obj.get("kty") != "OKP" or obj.get("crv") != "Ed25519":
        raise KeyFileError(
            f"{path} is a JWK with kty {obj.get('kty')!r} crv {obj.get('crv')!r}, "
            "expected OKP Ed25519"
        )
    x = obj.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != _ED25519_KEY_BYTES:
        raise KeyFileError(f"{path}: JWK member x is not 32 bytes of base64url")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a SubjectPublicKeyInfo PEM or an RFC 8037 JWK file.

    A JWK Set with a single key is accepted too. :class:`KeyFileError` for anything
    else, including a private key given by mistake.
    """
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise KeyFileError(f"cannot read public key {path}: {err.strerror or err}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a public key file")
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY-----" in text.split(b"\n", 1)[0]:
            raise KeyFileError(
                f"{path} is a private key; give the public key (fleet-agent pod pubkey)"
            )
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{path} is not a PEM public key (SubjectPublicKeyInfo)") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} holds a {_describe_key(key)}, not an Ed25519 key")
        return key
    if text.startswith(b"{"):
        try:
            obj = json.loads(text.decode("utf-8"))
        except ValueError:
            raise KeyFileError(f"{path} starts like JSON but does not parse") from None
        return _key_from_jwk(obj, path)
    raise KeyFileError(f"{path} is neither a PEM public key nor a JWK (JSON)")
