"""The fleet CA: one EC P-256 key that signs the broker's server certificate and every
client certificate (vans, ingest, backend, dispatcher), the record of what it issued,
and the CRL the broker reads (Mosquitto's ``crlfile``).

Everything lives in one directory (``[ca] dir``, ``fleet-ingest ca init``)::

    ca.key            the CA's private key (PKCS#8 PEM, 0600; never overwritten)
    ca.pem            its self-signed certificate (what vans and the broker trust)
    issued.json       one record per certificate issued: serial, CN, kind, not_after,
                      revoked_at (0600)
    issued/SERIAL.pem every certificate issued, for audit
    crl.pem           the CRL (or ``[ca] crl_file``), rewritten at every revocation
    enroll-tokens.json  one-time enrollment tokens, hashed (:mod:`cloud_ingest.enroll`)

The records are kept here, beside the key, not in the ingest database: the CRL is
derived from them and must be writable wherever the key is, ``fleet-ingest ca ...``
works without a database, and a restored database backup can never un-revoke a
certificate. Writers take an exclusive ``flock`` on ``.lock``: the CLI and a serving
ingest may issue and revoke at the same time.

EC P-256 (ECDSA with SHA-256) is what Mosquitto's OpenSSL, paho and every TLS stack
accept for both server and client certificates. The functions here block (file I/O,
a lock): the HTTP API calls them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_ingest.errors import IngestError
from firmware_agent.contract.keys import make_private_dirs, write_file_atomically

Kind = Literal["broker", "ingest", "backend", "dispatcher", "device"]
SERVICE_KINDS: tuple[str, ...] = tuple(k for k in get_args(Kind) if k != "device")

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
RECORDS = "issued.json"
ISSUED_DIR = "issued"
CRL = "crl.pem"
_LOCK = ".lock"
# Certificates are valid from a little before they are made: a van whose clock is a
# few minutes behind ingest's must not find its brand-new certificate "not yet valid".
_BACKDATE = timedelta(minutes=10)
_MAX_CSR_BYTES = 16 * 1024


class CaError(IngestError):
    """The CA directory is missing, unreadable or inconsistent, or a request is refused."""


class CaExistsError(CaError, FileExistsError):
    """``ca init`` on a directory that already holds a CA: it is never overwritten."""


class CsrError(CaError, ValueError):
    """A certificate signing request that is malformed or asks for what it may not."""


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One certificate the CA issued."""

    serial: int
    cn: str
    kind: Kind
    issued_at: datetime
    not_after: datetime
    revoked_at: datetime | None = None

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"

    def valid_at(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.not_after

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": self.serial_hex,
            "cn": self.cn,
            "kind": self.kind,
            "issued_at": self.issued_at.isoformat(),
            "not_after": self.not_after.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CertRecord:
        revoked = obj.get("revoked_at")
        return cls(
            serial=int(obj["serial"], 16),
            cn=str(obj["cn"]),
            kind=obj["kind"],
            issued_at=datetime.fromisoformat(obj["issued_at"]),
            not_after=datetime.fromisoformat(obj["not_after"]),
            revoked_at=None if revoked is None else datetime.fromisoformat(revoked),
        )


def parse_serial(text: str) -> int:
    """A serial as ``ca list`` prints it (hex, optionally ``0x``-prefixed or with colons)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise CaError(f"not a certificate serial (hex): {text!r}") from None
    if value <= 0:
        raise CaError(f"not a certificate serial (hex): {text!r}")
    return value


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def init_ca(
    directory: Path,
    *,
    now: datetime,
    name: str = "fleet CA",
    days: int = 3650,
    crl_file: Path | None = None,
    crl_days: int = 365,
) -> FleetCa:
    """Create the CA in ``directory`` (made 0700 if missing): key, certificate, an empty
    record and CRL (see :class:`FleetCa` for ``crl_file`` and ``crl_days``).
    :class:`CaExistsError` if a CA key is already there."""
    make_private_dirs(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key is published last and never replaced (link, not rename): two `ca init`
    # racing leave one CA, and the loser learns it.
    if not write_file_atomically(directory / CA_KEY, private_key_pem(key), overwrite=False):
        raise CaExistsError(f"{directory / CA_KEY} exists: a CA key is never overwritten")
    write_file_atomically(directory / CA_CERT, _pem(cert), overwrite=True, mode=0o644)
    ca = FleetCa(directory, crl_file=crl_file, crl_days=crl_days)
    with ca.locked():
        if not (directory / RECORDS).exists():
            ca._save([])
        ca._write_crl([], now=now)
    return ca


class FleetCa:
    """The CA in ``directory``. ``crl_file``: where the CRL goes (default ``crl.pem``
    in the directory); ``crl_days``: how long a CRL stays valid (OpenSSL refuses every
    client once the broker's CRL is past its nextUpdate, so keep it long and rewrite
    it well before: every revocation and ``ca crl`` do)."""

    def __init__(
        self, directory: Path, *, crl_file: Path | None = None, crl_days: int = 365
    ) -> None:
        self.directory = directory
        self.crl_file = crl_file if crl_file is not None else directory / CRL
        self.crl_days = crl_days

    # --- loading ----------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.directory / CA_KEY).exists()

    def certificate(self) -> x509.Certificate:
        path = self.directory / CA_CERT
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError:
            raise CaError(f"no fleet CA in {self.directory}: run `fleet-ingest ca init`") from None
        except (OSError, ValueError) as err:
            raise CaError(f"cannot read the CA certificate {path}: {err}") from None

    def certificate_pem(self) -> bytes:
        return _pem(self.certificate())

    def _key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / CA_KEY
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                raise CaError(
                    f"{path} is readable by others (mode {st.st_mode & 0o777:o}): chmod 600"
                )
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise CaError(f"no fleet CA in {self.directory}: run `fleet-ingest ca init`") from None
        except (OSError, ValueError, TypeError) as err:
            # Never the key's content: only the file and the fault's type.
            raise CaError(f"cannot read the CA key {path}: {type(err).__name__}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"{path} is not an EC key")
        return key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the CA's records (held across read-modify-write)."""
        if not self.directory.is_dir():
            raise CaError(f"no fleet CA in {self.directory}: run `fleet-ingest ca init`")
        fd = os.open(self.directory / _LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def records(self) -> list[CertRecord]:
        """Every certificate issued, oldest first."""
        path = self.directory / RECORDS
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [CertRecord.from_json(obj) for obj in data]
        except FileNotFoundError:
            raise CaError(f"no fleet CA in {self.directory}: run `fleet-ingest ca init`") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CaError(f"cannot read {path}: {err}") from None

    def _save(self, records: Sequence[CertRecord]) -> None:
        data = json.dumps([r.to_json() for r in records], indent=1).encode()
        write_file_atomically(self.directory / RECORDS, data + b"\n", overwrite=True)

    # --- issuing ----------------------------------------------------------------------

    def _issue(
        self,
        records: list[CertRecord],
        public: ec.EllipticCurvePublicKey,
        *,
        cn: str,
        kind: Kind,
        now: datetime,
        days: int,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> x509.Certificate:
        ca_cert = self.certificate()
        ca_key = self._key()
        not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        try:
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        except ValueError as err:
            raise CaError(str(err)) from None
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        record = CertRecord(
            serial=cert.serial_number,
            cn=cn,
            kind=kind,
            issued_at=now,
            not_after=cert.not_valid_after_utc,
        )
        issued = self.directory / ISSUED_DIR
        issued.mkdir(mode=0o700, exist_ok=True)
        write_file_atomically(
            issued / f"{record.serial_hex}.pem", _pem(cert), overwrite=True, mode=0o644
        )
        records.append(record)
        self._save(records)
        return cert

    def issue_service(
        self,
        kind: Kind,
        cn: str,
        *,
        now: datetime,
        days: int = 730,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new key and certificate for a service: the broker's (serverAuth, with
        ``dns`` and ``ips`` as subjectAltName: clients check the name they connect to
        against it) or a client's (ingest, backend, dispatcher: clientAuth; the CN is
        the username the broker's ACL sees)."""
        if kind not in SERVICE_KINDS:
            raise CaError(f"unknown service {kind!r}: one of {', '.join(SERVICE_KINDS)}")
        if kind == "broker" and not (dns or ips):
            raise CaError("a broker certificate needs its names: --dns NAME and/or --ip ADDR")
        key = ec.generate_private_key(ec.SECP256R1())
        with self.locked():
            records = self.records()
            cert = self._issue(
                records, key.public_key(), cn=cn, kind=kind, now=now, days=days, dns=dns, ips=ips
            )
        return cert, key

    def issue_device(
        self, csr_pem: bytes, device_id: str, *, now: datetime, days: int = 730
    ) -> tuple[x509.Certificate, list[CertRecord]]:
        """A van's client certificate for the key in ``csr_pem``, whose subject must be
        exactly ``CN=device_id``; every earlier certificate of the device still valid is
        revoked (a re-provisioned van has one identity) and the CRL rewritten when any
        was. Returns the certificate and the records it revoked."""
        public = check_csr(csr_pem, device_id)
        with self.locked():
            records = self.records()
            revoked = _revoke_where(
                records, now, lambda r: r.kind == "device" and r.cn == device_id
            )
            cert = self._issue(records, public, cn=device_id, kind="device", now=now, days=days)
            if revoked:
                self._write_crl(records, now=now)
        return cert, revoked

    # --- revocation -------------------------------------------------------------------

    def revoke(
        self, *, now: datetime, serial: int | None = None, device_id: str | None = None
    ) -> list[CertRecord]:
        """Revoke one certificate by serial, or every valid one of a device; rewrite the
        CRL. Returns the records revoked (already revoked ones are not repeated).
        :class:`CaError` if nothing matches."""
        if (serial is None) == (device_id is None):
            raise CaError("revoke needs a serial or a device id")
        with self.locked():
            records = self.records()
            if serial is not None:
                if not any(r.serial == serial for r in records):
                    raise CaError(f"no certificate with serial {serial:x} was issued by this CA")
                revoked = _revoke_where(records, now, lambda r: r.serial == serial)
            else:
                if not any(r.kind == "device" and r.cn == device_id for r in records):
                    raise CaError(f"no certificate was issued to device {device_id!r}")
                revoked = _revoke_where(
                    records, now, lambda r: r.kind == "device" and r.cn == device_id
                )
            self._save(records)
            self._write_crl(records, now=now)
        return revoked

    def crl_next_update(self) -> datetime | None:
        """The CRL's nextUpdate (None: no CRL, or one that does not parse)."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_file.read_bytes())
        except (OSError, ValueError):
            return None
        return crl.next_update_utc

    def crl_due(self, *, now: datetime) -> bool:
        """Whether the CRL should be rewritten: missing, unreadable, or past half its
        validity. OpenSSL refuses every client once a broker's CRL is past its
        nextUpdate, so it is renewed long before (ingest does it: ``crl_renewal``)."""
        next_update = self.crl_next_update()
        return next_update is None or next_update - now < timedelta(days=self.crl_days) / 2

    def checked_crl(self, *, now: datetime) -> bytes:
        """The CRL file's bytes, once checked: a CRL, signed by this CA, not past its
        nextUpdate. :class:`CaError` says what is wrong (a broker given a bad one would
        refuse every van)."""
        try:
            data = self.crl_file.read_bytes()
        except OSError as err:
            raise CaError(f"cannot read the CRL {self.crl_file}: {err.strerror or err}") from err
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as err:
            raise CaError(f"{self.crl_file} is not a PEM CRL: {err}") from err
        if not crl.is_signature_valid(self.certificate().public_key()):  # type: ignore[arg-type]
            raise CaError(f"{self.crl_file} is not signed by the CA in {self.directory}")
        if crl.next_update_utc is None or crl.next_update_utc <= now:
            raise CaError(f"{self.crl_file} is past its nextUpdate: run `fleet-ingest ca crl`")
        return data

    def write_crl(self, *, now: datetime) -> Path:
        """Rewrite the CRL from the records (valid for ``crl_days`` from ``now``)."""
        with self.locked():
            self._write_crl(self.records(), now=now)
        return self.crl_file

    def _write_crl(self, records: Sequence[CertRecord], *, now: datetime) -> None:
        ca_cert = self.certificate()
        ca_key = self._key()
        number = int(now.timestamp() * 1000)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + timedelta(days=self.crl_days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        for r in records:
            if r.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(r.serial)
                    .revocation_date(r.revoked_at)
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_file_atomically(
            self.crl_file, crl.public_bytes(serialization.Encoding.PEM), overwrite=True, mode=0o644
        )


def _revoke_where(records: list[CertRecord], now: datetime, match: Any) -> list[CertRecord]:
    out = []
    for i, r in enumerate(records):
        if r.revoked_at is None and match(r):
            records[i] = CertRecord(
                serial=r.serial,
                cn=r.cn,
                kind=r.kind,
                issued_at=r.issued_at,
                not_after=r.not_after,
                revoked_at=now,
            )
            out.append(records[i])
    return out


def check_csr(csr_pem: bytes, device_id: str) -> ec.EllipticCurvePublicKey:
    """The public key of a van's CSR: a PEM request, correctly self-signed, for an EC
    P-256 key, whose subject is exactly ``CN=device_id``. :class:`CsrError` otherwise.
    Nothing else the request asks for (extensions, other names) is honoured: the CA
    builds the certificate's contents itself."""
    if len(csr_pem) > _MAX_CSR_BYTES:
        raise CsrError(f"the CSR is over {_MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CsrError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise CsrError("the CSR's key must be EC P-256 (secp256r1)")
    try:
        cns = [a.value for a in csr.subject]
        wanted = [a.oid for a in csr.subject] == [NameOID.COMMON_NAME]
    except ValueError:
        raise CsrError("the CSR's subject is malformed") from None
    if not wanted or cns != [device_id]:
        raise CsrError(
            f"the CSR's subject must be exactly CN={device_id} (the token's device), "
            f"got {csr.subject.rfc4514_string()!r}"
        )
    return public


def utcnow() -> datetime:
    return datetime.now(UTC)
