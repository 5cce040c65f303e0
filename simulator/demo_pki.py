"""The demo's throwaway fleet CA: the broker's certificate (for 127.0.0.1) and one client
certificate per CN (the van's device id, ``ingest``, the demo's monitor), as
docs/mosquitto/README.md makes them for a real fleet (EC P-256, CN = who), with
cryptography's x509. Valid for two days; keys unencrypted, readable by their owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulator.fleet_broker import BrokerTls

VALID_DAYS = 2
BROKER_IP = "127.0.0.1"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / f"{stem}.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def write_demo_pki(directory: Path, clients: tuple[str, ...]) -> BrokerTls:
    """``ca.pem``, ``broker.pem``/``.key`` and ``{cn}.pem``/``{cn}.key`` for each of
    ``clients`` in ``directory``; the broker's files."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fleet demo CA")

    def builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        )

    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca = (
        builder(ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory, "ca", ca, ca_key)
    leaf = x509.BasicConstraints(ca=False, path_length=None)
    key = ec.generate_private_key(ec.SECP256R1())
    broker = (
        builder(_name(BROKER_IP), key)
        .add_extension(leaf, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(BROKER_IP))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory, "broker", broker, key)
    for cn in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        client = (
            builder(_name(cn), key)
            .add_extension(leaf, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory, cn, client, key)
    # The broker's crlfile (fleet.conf): nothing revoked in a demo, valid for a day.
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_name)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return BrokerTls(
        ca=directory / "ca.pem",
        cert=directory / "broker.pem",
        key=directory / "broker.key",
        crl=directory / "crl.pem",
    )
