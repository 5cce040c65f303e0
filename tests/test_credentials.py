"""The van's TLS files through systemd's ``LoadCredential=`` (issue 16): the agent
uses ``$CREDENTIALS_DIRECTORY``'s copies over the paths its settings name."""

from __future__ import annotations

from pathlib import Path

from firmware_agent.credentials import TLS_CREDENTIALS
from firmware_agent.run_cli import build_config, settings
from tests.idle_agent import run_args


def _files(directory: Path, *names: str) -> list[Path]:
    directory.mkdir()
    out = []
    for name in names:
        (directory / name).write_text(name)
        out.append(directory / name)
    return out


def test_credentials_replace_the_configured_tls_paths(tmp_path: Path) -> None:
    ca, cert, key = _files(tmp_path / "etc", "ca.crt", "van.crt", "van.key")
    args = run_args(
        "--device-id", "van-1", "--nmea-file", "day.nmea",
        "--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    plain = build_config(args, settings(args, {}), {})
    assert plain.uplink.tls is not None
    assert plain.uplink.tls.key_file == key
    creds = tmp_path / "creds"
    _files(creds, "mqtt-tls-key", "mqtt-tls-cert")  # no CA credential: the file's stays
    built = build_config(args, settings(args, {}), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert built.uplink.tls is not None
    assert built.uplink.tls.key_file == creds / "mqtt-tls-key"
    assert built.uplink.tls.cert_file == creds / "mqtt-tls-cert"
    assert built.uplink.tls.ca_file == ca


def test_a_ca_credential_alone_turns_tls_on(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    _files(creds, "mqtt-tls-ca")
    args = run_args("--device-id", "van-1", "--nmea-file", "day.nmea")
    assert build_config(args, settings(args, {}), {}).uplink.tls is None
    built = build_config(args, settings(args, {}), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert built.uplink.tls is not None
    assert built.uplink.tls.ca_file == creds / "mqtt-tls-ca"


def test_the_unit_loads_the_credentials_the_agent_reads() -> None:
    unit = Path(__file__).resolve().parents[1] / "systemd" / "fleet-agent.service"
    loaded = {
        line.removeprefix("LoadCredential=").split(":", 1)[0]
        for line in unit.read_text("utf-8").splitlines()
        if line.startswith("LoadCredential=")
    }
    assert loaded == set(TLS_CREDENTIALS.values())
