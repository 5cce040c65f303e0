"""Device identity: the fleet CA (``fleet-ingest ca ...``), one-time enrollment tokens,
``POST /v1/enroll`` and ``fleet-agent provision``; revocation refused at the broker
(a real Mosquitto with TLS and ``crlfile``, reloaded by SIGHUP) and by ingest."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cloud_ingest.ca import CaError, CaExistsError, CsrError, FleetCa, init_ca
from cloud_ingest.enroll import (
    Enrollment,
    TokenBook,
    TokenError,
    expand_devices,
    parse_duration_s,
    renew_crl_if_due,
)
from firmware_agent.provision import ProvisionUsageError, enroll_url, set_settings, token_device
from firmware_agent.settings import load_settings
from tests.apiauth import bearer
from tests.broker import Mosquitto, free_port
from tests.processes import running, wait_http

BIN = Path(sys.executable).parent
INGEST = BIN / "fleet-ingest"
AGENT = BIN / "fleet-agent"
NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
DEVICE = "van-0042"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False
    )


def csr_for(cn: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- the CA and the tokens, fed with data and a clock ----------------------------------


def test_ca_issues_revokes_and_lists_revoked_serials_in_its_crl(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", now=NOW)
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(CaExistsError):
        init_ca(tmp_path / "ca", now=NOW)
    broker, _ = ca.issue_service("broker", "broker.example", now=NOW, dns=["broker.example"])
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    first, revoked = ca.issue_device(csr_for(DEVICE), DEVICE, now=NOW)
    assert revoked == []
    first.verify_directly_issued_by(ca.certificate())
    # Re-enrollment: a new identity, the old one revoked and in the CRL.
    second, revoked = ca.issue_device(csr_for(DEVICE), DEVICE, now=NOW + timedelta(hours=1))
    assert [r.serial for r in revoked] == [first.serial_number]
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert crl.is_signature_valid(ca.certificate().public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is None
    assert ca.revoke(now=NOW, device_id=DEVICE)[0].serial == second.serial_number
    assert ca.revoke(now=NOW, device_id=DEVICE) == []  # already revoked
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(broker.serial_number) is None
    with pytest.raises(CaError, match="no certificate with serial"):
        ca.revoke(now=NOW, serial=12345)
    kinds = [(r.kind, r.cn, r.revoked_at is not None) for r in FleetCa(ca.directory).records()]
    assert kinds == [
        ("broker", "broker.example", False),
        ("device", DEVICE, True),
        ("device", DEVICE, True),
    ]


def test_the_crl_is_renewed_past_half_its_validity_and_the_broker_reloaded(
    tmp_path: Path,
) -> None:
    ca = init_ca(tmp_path / "ca", now=NOW, crl_days=10)
    revoked_cert, _ = ca.issue_device(csr_for(DEVICE), DEVICE, now=NOW)
    ca.revoke(now=NOW, device_id=DEVICE)
    assert ca.crl_next_update() == NOW + timedelta(days=10)
    assert not ca.crl_due(now=NOW + timedelta(days=4))
    assert ca.crl_due(now=NOW + timedelta(days=6))
    marker = tmp_path / "reloaded"
    enrollment = Enrollment(ca=ca, broker_host="b", reload_command=f"touch {marker}")
    assert not asyncio.run(renew_crl_if_due(enrollment, NOW + timedelta(days=4)))
    assert not marker.exists()
    later = NOW + timedelta(days=6)
    assert asyncio.run(renew_crl_if_due(enrollment, later))
    assert marker.exists()
    assert ca.crl_next_update() == later + timedelta(days=10)
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())  # still lists the revoked one
    assert crl.get_revoked_certificate_by_serial_number(revoked_cert.serial_number) is not None
    # Installed for the broker (fleet-crl-sync.service) only when it checks out.
    target = tmp_path / "mosquitto" / "fleet-crl.pem"
    r = run(INGEST, "ca", "install-crl", "--ca-dir", ca.directory, "--to", target)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == ca.crl_file.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o644
    other = init_ca(tmp_path / "other", now=NOW)
    ca.crl_file.write_bytes(other.crl_file.read_bytes())  # another CA's
    r = run(INGEST, "ca", "install-crl", "--ca-dir", ca.directory, "--to", target)
    assert r.returncode == 1
    assert "not signed by the CA" in r.stderr
    assert x509.load_pem_x509_crl(target.read_bytes()).next_update_utc == later + timedelta(days=10)
    # A missing or damaged CRL is due at once, and never installed.
    ca.crl_file.write_text("not a CRL")
    assert ca.crl_due(now=later)
    r = run(INGEST, "ca", "install-crl", "--ca-dir", ca.directory, "--to", target)
    assert r.returncode == 1
    assert "not a PEM CRL" in r.stderr
    # The command-line form for a timer: only when due.
    r = run(INGEST, "ca", "crl", "--ca-dir", ca.directory, "--if-due")
    assert r.returncode == 0, r.stderr
    assert "CRL written" in r.stdout
    r = run(INGEST, "ca", "crl", "--ca-dir", ca.directory, "--if-due")
    assert r.returncode == 0, r.stderr
    assert "not due" in r.stdout


def test_a_csr_must_name_exactly_the_tokens_device_with_a_p256_key(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", now=NOW)
    with pytest.raises(CsrError, match="exactly CN=van-0042"):
        ca.issue_device(csr_for("van-0043"), DEVICE, now=NOW)
    with pytest.raises(CsrError, match="EC P-256"):
        ca.issue_device(csr_for(DEVICE, rsa.generate_private_key(65537, 2048)), DEVICE, now=NOW)
    with pytest.raises(CsrError, match="not a PEM"):
        ca.issue_device(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", DEVICE, now=NOW)
    assert ca.records() == []


def test_tokens_are_single_use_expire_and_are_kept_hashed(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", now=NOW)
    book = TokenBook(ca)
    (a, b) = book.create(["van-1", "van-2"], now=NOW, expires_s=3600)
    assert a.token.startswith("van-1:")
    stored = (tmp_path / "ca" / "enroll-tokens.json").read_text()
    assert a.token not in stored
    assert a.token.split(":")[1] not in stored
    assert book.peek(a.token, now=NOW) == "van-1"
    assert book.spend(a.token, now=NOW) == "van-1"
    with pytest.raises(TokenError, match="already used"):
        book.spend(a.token, now=NOW)
    with pytest.raises(TokenError, match="expired"):
        book.spend(b.token, now=NOW + timedelta(hours=1))
    with pytest.raises(TokenError, match="unknown"):
        book.spend("van-1:" + "x" * 43, now=NOW)
    assert parse_duration_s("24h") == 86_400
    assert expand_devices("van-0008..van-0011") == ["van-0008", "van-0009", "van-0010", "van-0011"]
    with pytest.raises(ValueError, match="range"):
        expand_devices("van-9..van-1")


def test_provision_edits_only_its_keys_of_the_settings_file() -> None:
    text = (
        "# the van's settings\nstate_dir = '/var/lib/fleet-agent'\ndevice_id = 'old'\n\n"
        "[mqtt]\nhost = '10.0.0.1'  # the old broker\ntls = false\nkeepalive_s = 20\n\n"
        "[gnss]\nport = '/dev/fleet/gnss'\n"
    )
    mqtt: dict[str, object] = {"host": "broker.example", "port": 8883, "tls_ca": "/x/ca.pem"}
    out = set_settings(text, {"device_id": DEVICE}, mqtt)
    assert "# the van's settings" in out
    assert "keepalive_s = 20" in out
    assert "'old'" not in out
    assert "tls = false" not in out
    assert "[gnss]\nport = '/dev/fleet/gnss'" in out
    assert set_settings(out, {"device_id": DEVICE}, mqtt) == out  # idempotent
    assert set_settings("", {"device_id": DEVICE}, mqtt).startswith('device_id = "van-0042"\n')
    assert token_device("van-7:" + "s" * 43) == "van-7"
    with pytest.raises(ProvisionUsageError):
        token_device("no-secret")
    with pytest.raises(ProvisionUsageError, match="in the clear"):
        enroll_url("http://ingest.example.com")
    assert enroll_url("https://i.example/") == "https://i.example/v1/enroll"


# -- the whole exchange on real processes ----------------------------------------------


async def _connects(port: int, ca: Path, cert: Path, key: Path) -> bool:
    """Whether the broker takes a connection with this certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    # TLS 1.2: the broker judges the client certificate (CRL included) inside the
    # handshake, so a refusal is an immediate handshake error; under TLS 1.3 it comes
    # as an alert after it, which the client only notices when it times out.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        async with (
            asyncio.timeout(5),
            aiomqtt.Client("127.0.0.1", port, identifier=DEVICE, tls_context=ctx) as client,
        ):
            await client.publish(f"fleet/v1/{DEVICE}/probe", b"x", qos=1)
    except (aiomqtt.MqttError, ssl.SSLError, OSError, TimeoutError):
        return False
    return True


def _connects_as_provisioned(config: Path, port: int) -> bool:
    mqtt = load_settings(config, environ={}).settings.mqtt
    assert mqtt.tls_ca is not None
    assert mqtt.tls_cert is not None
    assert mqtt.tls_key is not None
    return asyncio.run(_connects(port, mqtt.tls_ca, mqtt.tls_cert, mqtt.tls_key))


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Path, Mosquitto, str]]:
    """The fleet CA, a broker with TLS and the CA's CRL, and `fleet-ingest serve` with
    enrollment on: (its config, the broker, the API's base URL)."""
    ca, certs = tmp_path / "ca", tmp_path / "certs"
    assert run(INGEST, "ca", "init", "--ca-dir", ca).returncode == 0
    r = run(INGEST, "ca", "issue", "--ca-dir", ca, "--service", "broker", "--ip", "127.0.0.1",
            "--out-dir", certs)  # fmt: skip
    assert r.returncode == 0, r.stderr
    tls_port = free_port()
    broker = Mosquitto(
        tmp_path / "broker",
        extra="\n".join(
            [
                f"listener {tls_port} 127.0.0.1",
                f"cafile {ca / 'ca.pem'}",
                f"certfile {certs / '127.0.0.1.pem'}",
                f"keyfile {certs / '127.0.0.1.key'}",
                f"crlfile {ca / 'crl.pem'}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        ),
    )
    with broker:
        http_port = free_port()
        config = tmp_path / "ingest.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{tmp_path}/ingest.sqlite3"\n'
            f'[mqtt]\nport = {broker.port}\nclient_id = "enroll-test"\n'
            f"[http]\nport = {http_port}\n"
            f'[ca]\ndir = "{ca}"\nbroker_host = "127.0.0.1"\nbroker_port = {tls_port}\n'
            f'reload_command = "kill -HUP {broker.process.pid if broker.process else 0}"\n'
        )
        log = tmp_path / "serve.log"
        with running([INGEST, "serve", "--config", config], log) as serve:
            base = f"http://127.0.0.1:{http_port}"
            wait_http(base, serve, log)
            yield config, broker, base


def _token(config: Path, device: str = DEVICE) -> str:
    r = run(INGEST, "enroll-token", "--config", config, "--device", device, "--expires", "1h")
    assert r.returncode == 0, r.stderr
    name, token, *_ = r.stdout.split()
    assert name == device
    return token


def _api_token(config: Path) -> dict[str, str]:
    """The header of a read-only API token, made as an operator does (every endpoint
    but /health and /v1/enroll needs one)."""
    r = run(INGEST, "token", "create", "--config", config, "--scope", "read", "--name", "test")
    assert r.returncode == 0, r.stderr
    return {"Authorization": f"Bearer {r.stdout.strip()}"}


@pytest.mark.slow
def test_enroll_provision_connect_reenroll_revoke_refused(
    cloud: tuple[Path, Mosquitto, str], tmp_path: Path
) -> None:
    config, _, base = cloud
    reader = _api_token(config)
    tls_port = tomllib.loads(config.read_text())["ca"]["broker_port"]
    van = tmp_path / "van"
    agent_toml = van / "etc" / "agent.toml"
    agent_toml.parent.mkdir(parents=True)
    agent_toml.write_text("# shipped by the package\n[gnss]\nbaud = 9600\n")
    provision = (AGENT, "provision", "--enroll", base, "--config", agent_toml,
                 "--state-dir", van / "state")  # fmt: skip

    token = _token(config)
    r = run(*provision, "--token", token)
    assert r.returncode == 0, r.stderr
    assert f"provisioned {DEVICE}" in r.stdout
    settings = load_settings(agent_toml, environ={}).settings
    assert settings.device_id == DEVICE
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", tls_port)
    assert settings.gnss.baud == 9600
    assert "# shipped by the package" in agent_toml.read_text()
    tls_dir = agent_toml.parent / "tls"
    assert (tls_dir / "client.key").stat().st_mode & 0o777 == 0o600
    assert (van / "state" / "device.key").stat().st_mode & 0o777 == 0o600
    pod_key = (van / "state" / "device.key").read_bytes()
    device = httpx.get(f"{base}/v1/devices/{DEVICE}", headers=reader).json()
    assert device["enabled"] is True
    assert _connects_as_provisioned(agent_toml, tls_port)

    # Again with the same token: nothing to do, nothing spent.
    r = run(*provision, "--token", token)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already provisioned" in r.stdout, r.stdout + r.stderr
    # The token is spent: --force cannot reuse it.
    r = run(*provision, "--token", token, "--force")
    assert r.returncode == 1, r.stderr
    assert "already used" in r.stderr, r.stderr

    # Re-provisioned with a new token: a new certificate, the old one revoked, the
    # broker reloaded by ingest (its reload_command): the old one is refused.
    old = {name: (tls_dir / name).read_bytes() for name in ("ca.pem", "client.pem", "client.key")}
    saved = tmp_path / "old"
    saved.mkdir()
    for name, data in old.items():
        (saved / name).write_bytes(data)
    ca = FleetCa(tmp_path / "ca")
    (again,) = TokenBook(ca).create([DEVICE], now=datetime.now(UTC), expires_s=600)
    r = run(*provision, "--token", again.token)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "revoked" in r.stdout, r.stdout + r.stderr
    assert (van / "state" / "device.key").read_bytes() == pod_key  # PODs stay verifiable
    assert _connects_as_provisioned(agent_toml, tls_port)
    assert not asyncio.run(
        _connects(tls_port, saved / "ca.pem", saved / "client.pem", saved / "client.key")
    )

    # Revoked by the operator: the CRL rewritten, the broker reloaded, the van refused
    # at connect and disabled in the registry (ingest refuses its messages).
    hup = f"kill -HUP {cloud[1].process.pid if cloud[1].process else 0}"
    r = run(INGEST, "ca", "revoke", "--config", config, "--device", DEVICE, "--reload-broker", hup)
    assert r.returncode == 0, r.stderr
    assert "broker reloaded" in r.stdout
    assert f"device {DEVICE} disabled" in r.stdout
    assert not _connects_as_provisioned(agent_toml, tls_port)
    assert httpx.get(f"{base}/v1/devices/{DEVICE}", headers=reader).json()["enabled"] is False
    assert [(c.kind, c.revoked_at is not None) for c in ca.records()] == [
        ("broker", False),
        ("device", True),
        ("device", True),
    ]


def test_enroll_endpoint_refuses_a_bad_token_csr_or_key(
    tmp_path: Path,
) -> None:
    from cloud_ingest.api import create_app  # noqa: PLC0415
    from cloud_ingest.enroll import Enrollment  # noqa: PLC0415
    from cloud_ingest.store.sqlite import SqliteStore  # noqa: PLC0415

    ca = init_ca(tmp_path / "ca", now=datetime.now(UTC))
    (issued,) = TokenBook(ca).create([DEVICE], now=datetime.now(UTC), expires_s=600)
    pod = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    async def main() -> None:
        async with SqliteStore(tmp_path / "ingest.db") as store:
            await store.migrate()
            app = create_app(store, enrollment=Enrollment(ca=ca, broker_host="b.example"))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://i") as api:

                async def post(**body: str) -> httpx.Response:
                    full = {"token": issued.token, "csr_pem": csr_for(DEVICE).decode(),
                            "pod_public_key_pem": pod} | body  # fmt: skip
                    return await api.post("/v1/enroll", json=full)

                r = await post(token="van-0042:" + "y" * 43)
                assert r.status_code == 401, r.text
                r = await post(csr_pem=csr_for("van-0099").decode())
                assert r.status_code == 400
                assert "CN=van-0042" in r.text
                r = await post(pod_public_key_pem=csr_for(DEVICE).decode())
                assert r.status_code == 400, r.text
                # None of those spent the token.
                r = await post()
                assert r.status_code == 200, r.text
                assert r.json()["broker"] == {"host": "b.example", "port": 8883}
                assert (await post()).status_code == 401
                assert (await store.get_device(DEVICE)) is not None

                # No token: a bearer credential with the enroll (or admin) scope instead,
                # for a provisioning tool; it names the van, the CSR must agree.
                async def post_bearer(headers: dict[str, str], **body: str) -> httpx.Response:
                    full = {"csr_pem": csr_for("van-0043").decode(),
                            "pod_public_key_pem": pod} | body  # fmt: skip
                    return await api.post("/v1/enroll", json=full, headers=headers)

                assert (await post_bearer({}, device_id="van-0043")).status_code == 401
                reader = await bearer(store, "read")
                assert (await post_bearer(reader, device_id="van-0043")).status_code == 403
                enroller = await bearer(store, "enroll")
                r = await post_bearer(enroller)
                assert r.status_code == 400, r.text
                assert "device_id" in r.text
                r = await post_bearer(enroller, device_id="van-0044")
                assert r.status_code == 400, r.text
                assert "CN=van-0044" in r.text
                r = await post_bearer(enroller, device_id="van-0043")
                assert r.status_code == 200, r.text
                assert r.json()["device_id"] == "van-0043"
                # A token and a device_id that is not its van: refused, token unspent.
                (other,) = TokenBook(ca).create(["van-0045"], now=datetime.now(UTC), expires_s=60)
                r = await post(token=other.token, device_id="van-0046")
                assert r.status_code == 400, r.text

    asyncio.run(main())


@pytest.mark.slow
def test_ca_cli_lists_and_refuses_bad_usage_with_exit_2(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", now=datetime.now(UTC))
    ca.issue_service("ingest", "ingest", now=datetime.now(UTC))
    r = run(INGEST, "ca", "list", "--ca-dir", ca.directory, "--json")
    assert r.returncode == 0, r.stderr
    (listed,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (listed["kind"], listed["cn"], listed["state"]) == ("ingest", "ingest", "valid")
    r = run(INGEST, "enroll-token", "--ca-dir", ca.directory, "--devices", "van-9..van-1")
    assert r.returncode == 2
    assert "range" in r.stderr
    r = run(INGEST, "ca", "revoke", "--ca-dir", ca.directory, "not-hex")
    assert r.returncode == 2
    assert "serial" in r.stderr
