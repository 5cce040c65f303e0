"""``fleet-agent provision``: give a van its identity with a one-time enrollment token.

The token (``fleet-ingest enroll-token``) reads ``{device id}:{secret}``. Provisioning:

1. the Ed25519 POD key, ``{state_dir}/device.key``: the one ``fleet-agent run`` signs
   PODs with (created 0600 if absent, kept if present: a van that keeps its POD key
   keeps every POD it signed verifiable);
2. a new EC P-256 TLS key and a CSR for it with subject ``CN={device id}``;
3. ``POST {URL}/v1/enroll`` with the token, the CSR and the POD public key; back come
   the van's client certificate, the fleet CA certificate and the broker's address;
4. ``{tls_dir}/client.key`` (0600), ``client.pem``, ``ca.pem`` and ``provisioned.json``
   (what was enrolled, and the token's SHA-256), owned by the ``fleet`` user when run
   as root and that user exists;
5. the agent's settings file: ``device_id`` and ``[mqtt] host, port, tls_ca, tls_cert,
   tls_key`` set, every other line (comments included) kept; the result must load as
   ``fleet-agent run`` loads it.

Running it again with the same token on a van so provisioned (certificate valid, files
in place) does nothing and says so; a new token, or ``--force``, provisions again: a
new TLS key and certificate, the old certificate revoked by the CA.

Everything here blocks (a CLI): urllib from the standard library, no event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import ssl
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_agent.contract.keys import (
    load_or_create_device_key,
    make_private_dirs,
    public_key_pem,
    write_file_atomically,
)
from firmware_agent.contract.topics import valid_device_id
from firmware_agent.errors import AgentError

ENROLL_PATH: Final = "/v1/enroll"
MARKER: Final = "provisioned.json"
CLIENT_KEY: Final = "client.key"
CLIENT_CERT: Final = "client.pem"
CA_CERT: Final = "ca.pem"
DEFAULT_OWNER: Final = "fleet"
_MAX_RESPONSE_BYTES: Final = 256 * 1024
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


class ProvisionError(AgentError):
    """Provisioning failed (the enrollment was refused, the network, a file)."""


class ProvisionUsageError(ProvisionError, ValueError):
    """A malformed token, URL or setting: the command line is wrong."""


@dataclass(frozen=True, slots=True)
class Paths:
    config: Path
    state_dir: Path
    tls_dir: Path

    @property
    def pod_key(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def client_key(self) -> Path:
        return self.tls_dir / CLIENT_KEY

    @property
    def client_cert(self) -> Path:
        return self.tls_dir / CLIENT_CERT

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / CA_CERT

    @property
    def marker(self) -> Path:
        return self.tls_dir / MARKER


@dataclass(frozen=True, slots=True)
class Outcome:
    changed: bool
    device_id: str
    serial: str
    not_after: datetime
    broker: str
    revoked: tuple[str, ...] = ()
    owner: str | None = None


def token_device(token: str) -> str:
    """The device id a token is for (``{device id}:{secret}``)."""
    device, sep, secret = token.partition(":")
    if not sep or not valid_device_id(device) or len(secret) < 16:
        raise ProvisionUsageError(
            "not an enrollment token (DEVICE:SECRET, as `fleet-ingest enroll-token` prints it)"
        )
    return device


def enroll_url(url: str) -> str:
    """``https://ingest.example.com`` or its ``/v1/enroll``: the endpoint's URL. Plain
    http only to this machine (the token is a credential)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ProvisionUsageError(f"--enroll must be an https:// URL, got {url!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        raise ProvisionUsageError(
            f"--enroll {url!r}: plain http would send the token in the clear; use https://"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(ENROLL_PATH):
        path += ENROLL_PATH
    return parts._replace(path=path, query="", fragment="").geturl()


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_settings_file(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", {}
    except OSError as err:
        raise ProvisionError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProvisionError(f"{path} is not valid TOML: {err}") from None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def set_settings(text: str, top: dict[str, object], mqtt: dict[str, object]) -> str:
    """``text`` (the agent's TOML) with ``top`` keys set at the top level and ``mqtt``
    keys in ``[mqtt]`` (``tls`` removed there: TLS follows from ``tls_ca``); every
    other line kept as it was. :class:`ProvisionError` if the result does not read
    back with those values (a layout this line editor does not handle)."""
    lines = text.splitlines()
    out: list[str] = []
    table: str | None = None
    drop_mqtt = {*mqtt, "tls"}
    first_table = None
    mqtt_at = None
    for line in lines:
        header = _HEADER.match(line)
        if header is not None:
            table = header.group(1)
            if first_table is None:
                first_table = len(out)
            out.append(line)
            if table == "mqtt" and not line.lstrip().startswith("[["):
                mqtt_at = len(out)
            continue
        assign = _ASSIGN.match(line)
        if assign is not None:
            key = assign.group(1)
            if (table is None and key in top) or (table == "mqtt" and key in drop_mqtt):
                continue
        out.append(line)
    mqtt_lines = [f"{k} = {_toml(v)}" for k, v in mqtt.items()]
    if mqtt_at is not None:
        out[mqtt_at:mqtt_at] = mqtt_lines
    # The top-level keys go before the first table (the file's or the new [mqtt]).
    at = first_table if first_table is not None else len(out)
    while at > 0 and not out[at - 1].strip():  # one blank line before it
        del out[at - 1]
        at -= 1
    out[at:at] = [f"{k} = {_toml(v)}" for k, v in top.items()]
    if first_table is not None:
        out.insert(at + len(top), "")
    if mqtt_at is None:
        out += ["", "[mqtt]", *mqtt_lines]
    result = "\n".join(out).strip("\n") + "\n"
    try:
        tree = tomllib.loads(result)
    except tomllib.TOMLDecodeError as err:
        raise ProvisionError(f"could not edit the settings file: {err}; edit it by hand") from None
    wanted: dict[tuple[str, ...], object] = {(k,): v for k, v in top.items()}
    wanted.update({("mqtt", k): v for k, v in mqtt.items()})
    for path, value in wanted.items():
        node: Any = tree
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node != value:
            raise ProvisionError(
                f"could not set {'.'.join(path)} in the settings file (an unusual layout): "
                "edit it by hand"
            )
    return result


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def current_identity(paths: Paths, now: datetime) -> dict[str, Any] | None:
    """What ``provisioned.json`` says, when the files it names are in place and the
    certificate is valid at ``now``, matches the key and chains to the CA; else None."""
    try:
        marker = json.loads(paths.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cert, ca = _load_cert(paths.client_cert), _load_cert(paths.ca_cert)
    if cert is None or ca is None or not isinstance(marker, dict):
        return None
    try:
        key = serialization.load_pem_private_key(paths.client_key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return None
    if key.public_key() != cert.public_key() or not (
        cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    ):
        return None
    _, tree = read_settings_file(paths.config)
    if _cn(cert) != marker.get("device_id") or tree.get("device_id") != marker.get("device_id"):
        return None
    return marker


def _post(url: str, body: dict[str, Any], *, timeout_s: float, cafile: Path | None) -> Any:
    data = json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked: enroll_url)
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310
            raw = response.read(_MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as err:
        detail: Any = err.reason
        with contextlib.suppress(ValueError, AttributeError, OSError):
            detail = json.loads(err.read(_MAX_RESPONSE_BYTES)).get("detail", detail)
        raise ProvisionError(f"enrollment refused ({err.code}): {detail}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as err:
        reason = getattr(err, "reason", err)
        raise ProvisionError(f"cannot reach {url}: {reason}") from None
    if len(raw) > _MAX_RESPONSE_BYTES:
        raise ProvisionError(f"{url}: the answer is over {_MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError:
        raise ProvisionError(f"{url}: the answer is not JSON") from None


def _chown(owner: str | None, *paths: Path) -> str | None:
    """Give ``paths`` to ``owner`` when run as root and the user exists; who got them."""
    if owner is None or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 (POSIX only)

    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return None
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return owner


def provision(
    url: str,
    token: str,
    paths: Paths,
    *,
    now: datetime | None = None,
    force: bool = False,
    owner: str | None = DEFAULT_OWNER,
    timeout_s: float = 30.0,
    cafile: Path | None = None,
) -> Outcome:
    """Provision the van (see the module doc); an :class:`Outcome` with ``changed``
    false when it already was, with this token."""
    now = now or datetime.now(UTC)
    device_id = token_device(token)
    endpoint = enroll_url(url)
    marker = current_identity(paths, now)
    if (
        marker is not None
        and not force
        and marker.get("token_sha256") == _token_sha256(token)
        and marker.get("device_id") == device_id
    ):
        return Outcome(
            changed=False,
            device_id=device_id,
            serial=str(marker.get("serial")),
            not_after=datetime.fromisoformat(str(marker.get("not_after"))),
            broker=str(marker.get("broker")),
        )
    text, _ = read_settings_file(paths.config)
    top: dict[str, object] = {"device_id": device_id}
    if paths.state_dir != state_dir_of(text):
        top["state_dir"] = str(paths.state_dir)
    tls_files = {
        "tls_ca": str(paths.ca_cert),
        "tls_cert": str(paths.client_cert),
        "tls_key": str(paths.client_key),
    }
    # A settings file this editor cannot handle is found before the token is spent.
    set_settings(text, top, {"host": "broker.invalid", "port": 8883, **tls_files})
    pod_key = load_or_create_device_key(paths.pod_key)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(tls_key, hashes.SHA256())
    )
    answer = _post(
        endpoint,
        {
            "token": token,
            "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "pod_public_key_pem": public_key_pem(pod_key.public_key()).decode(),
        },
        timeout_s=timeout_s,
        cafile=cafile,
    )
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate_pem"]).encode())
        ca = x509.load_pem_x509_certificate(str(answer["ca_pem"]).encode())
        host = str(answer["broker"]["host"])
        port = int(answer["broker"]["port"])
        revoked = tuple(str(s) for s in answer.get("revoked_serials", ()))
        cert.verify_directly_issued_by(ca)
    except (KeyError, TypeError, ValueError, InvalidSignature) as err:
        raise ProvisionError(f"{endpoint}: an answer that is no enrollment: {err}") from None
    if cert.public_key() != tls_key.public_key() or _cn(cert) != device_id:
        raise ProvisionError(f"{endpoint}: the certificate is not for this van's key and id")
    pem = serialization.Encoding.PEM
    make_private_dirs(paths.tls_dir)
    key_pem = tls_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file_atomically(paths.client_key, key_pem, overwrite=True)
    write_file_atomically(paths.client_cert, cert.public_bytes(pem), overwrite=True, mode=0o644)
    write_file_atomically(paths.ca_cert, ca.public_bytes(pem), overwrite=True, mode=0o644)
    settings = set_settings(text, top, {"host": host, "port": port, **tls_files})
    paths.config.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_file_atomically(paths.config, settings.encode(), overwrite=True, mode=0o644)
    serial = f"{cert.serial_number:x}"
    record = {
        "device_id": device_id,
        "serial": serial,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "broker": f"{host}:{port}",
        "enroll_url": endpoint,
        "provisioned_at": now.isoformat(),
        "token_sha256": _token_sha256(token),
    }
    write_file_atomically(
        paths.marker, json.dumps(record, indent=1).encode() + b"\n", overwrite=True
    )
    owned_by = _chown(
        owner,
        paths.tls_dir,
        paths.client_key,
        paths.client_cert,
        paths.ca_cert,
        paths.marker,
        paths.state_dir,
        paths.pod_key,
    )
    return Outcome(
        changed=True,
        device_id=device_id,
        serial=serial,
        not_after=cert.not_valid_after_utc,
        broker=f"{host}:{port}",
        revoked=revoked,
        owner=owned_by,
    )


def state_dir_of(text: str) -> Path:
    from firmware_agent.settings import DEFAULT_STATE_DIR  # noqa: PLC0415

    value = tomllib.loads(text).get("state_dir") if text else None
    return Path(value) if isinstance(value, str) else DEFAULT_STATE_DIR
