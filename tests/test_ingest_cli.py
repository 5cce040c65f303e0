"""``fleet-ingest``, the installed console script, run as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.keys import key_thumbprint, load_or_create_device_key
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from tests.apiauth import cli_token
from tests.broker import Mosquitto, free_port

BIN = Path(sys.executable).parent
INGEST = BIN / "fleet-ingest"
AGENT = BIN / "fleet-agent"


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_INGEST_")}
    return env | dict(extra or {})


def ingest(
    *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGEST, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(env),
        timeout=60,
        check=False,
    )


def van_public_key(directory: Path) -> tuple[Path, str]:
    """A van's key made as the van makes it, and the PEM ``fleet-agent pod pubkey``
    prints for enrollment; returns the PEM file and the key's kid."""
    key = load_or_create_device_key(directory / "device.key")
    out = subprocess.run(
        [AGENT, "pod", "pubkey", "--key", str(directory / "device.key")],
        capture_output=True,
        check=True,
        timeout=60,
    )
    pem = directory / "van.pub.pem"
    pem.write_bytes(out.stdout)
    return pem, key_thumbprint(key.public_key())


def test_migrate_then_enroll_list_disable(tmp_path: Path) -> None:
    db = tmp_path / "ingest.sqlite3"
    url = ("--database-url", f"sqlite:///{db}")
    r = ingest("migrate", *url)
    assert (r.returncode, r.stdout) == (0, f"{db}: applied migration(s) 1, 2, 3, 4, 5, 6, 7\n"), (
        r.stderr
    )
    r = ingest("migrate", *url)
    assert (r.returncode, r.stdout) == (0, f"{db}: schema up to date\n")

    (tmp_path / "van").mkdir()
    pem, kid = van_public_key(tmp_path / "van")
    r = ingest("device", "add", "van-7", "--pubkey", pem, *url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"enrolled: van-7 enabled kid {kid} registered 20")
    r = ingest("device", "add", "van-7", "--pubkey", pem, *url)
    assert (r.returncode, r.stdout.split(":")[0]) == (0, "already enrolled")

    r = ingest("device", "list", "--json", *url)
    assert r.returncode == 0
    (line,) = r.stdout.splitlines()
    listed = json.loads(line)
    assert (listed["device_id"], listed["enabled"], listed["kid"]) == ("van-7", True, kid)
    # What was stored is the raw 32-byte key of the PEM file.
    with sqlite3.connect(db) as conn:
        ((stored,),) = conn.execute("SELECT public_key FROM devices").fetchall()
    public = serialization.load_pem_public_key(pem.read_bytes())
    assert stored == public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    r = ingest("device", "disable", "van-7", *url)
    assert (r.returncode, r.stdout.split(" ")[:2]) == (0, ["van-7", "disabled"])
    # Enrolling again (a repeated provisioning run) does not re-enable it.
    assert ingest("device", "add", "van-7", "--pubkey", pem, *url).returncode == 0
    r = ingest("device", "list", *url)
    assert r.stdout.startswith(f"van-7 disabled kid {kid}")
    r = ingest("device", "enable", "van-7", *url)
    assert (r.returncode, r.stdout.split(" ")[:2]) == (0, ["van-7", "enabled"])

    # Another key for an enrolled van: refused, unless it was re-provisioned.
    (tmp_path / "new").mkdir()
    new_pem, new_kid = van_public_key(tmp_path / "new")
    r = ingest("device", "add", "van-7", "--pubkey", new_pem, *url)
    assert r.returncode == 1
    assert "registered with another key" in r.stderr
    assert "--replace-key" in r.stderr
    r = ingest("device", "add", "van-7", "--pubkey", new_pem, "--replace-key", *url)
    assert r.returncode == 0
    assert json.loads(ingest("device", "list", "--json", *url).stdout)["kid"] == new_kid

    r = ingest("device", "enable", "van-9", *url)
    assert (r.returncode, r.stderr) == (1, "fleet-ingest: device 'van-9' is not registered\n")


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path: Path) -> None:
    url = ("--database-url", f"sqlite:///{tmp_path / 'ingest.sqlite3'}")
    (tmp_path / "van").mkdir()
    pem, _ = van_public_key(tmp_path / "van")
    cases: list[tuple[tuple[str | Path, ...], dict[str, str], int, str]] = [
        (("device", "add", "van/7", "--pubkey", pem, *url), {}, 2, "invalid device id"),
        (
            ("device", "add", "van-7", "--pubkey", tmp_path / "van" / "device.key", *url),
            {},
            2,
            "is a private key",
        ),
        (("device", "add", "van-7", "--pubkey", tmp_path / "none.pem", *url), {}, 2, "cannot read"),
        (("device", "list"), {"FLEET_INGEST_DATABSE_URL": "x"}, 2, "FLEET_INGEST_DATABSE_URL"),
        (("migrate",), {"FLEET_INGEST_DATABASE_URL": "mysql://db/x"}, 2, "sqlite:/// or post"),
        (("migrate", "--database-url", "postgresql://ingest:secret@db/x"), {}, 2, "password"),
        (("migrate", "--config", tmp_path / "absent.toml"), {}, 2, "cannot read config"),
        (
            ("device", "list", "--database-url", f"sqlite:///{tmp_path}/no/such/dir/x.db"),
            {},
            1,
            "cannot open SQLite database",
        ),
        (("serve", "--config", tmp_path / "absent.toml"), {}, 2, "cannot read config"),
        (("device",), {}, 2, "usage: fleet-ingest device"),
    ]
    for args, env, code, message in cases:
        r = ingest(*args, env=env)
        assert r.returncode == code, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_settings_come_from_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    config.write_text(
        'workers = 3\n[database]\nurl = "sqlite:///from-file.db"\n'
        '[mqtt]\nport = 8883\nclient_id = "ingest-a"\n[http]\nport = 9090\n'
    )
    r = ingest("config", "--config", config, env={"FLEET_INGEST_MQTT_PORT": "1884"})
    assert r.returncode == 0, r.stderr
    settings = json.loads(r.stdout)
    assert settings["workers"] == 3
    assert settings["database"]["url"] == "sqlite:///from-file.db"
    assert settings["mqtt"] | {"tls_ca": None} == {
        "host": "127.0.0.1",
        "port": 1884,
        "group": "ingest",
        "client_id": "ingest-a",
        "tls_ca": None,
        "tls_cert": None,
        "tls_key": None,
    }
    assert settings["http"] == {"host": "127.0.0.1", "port": 9090, "access_log": False}
    r = ingest(
        "config",
        "--database-url",
        "sqlite:///from-flag.db",
        env={"FLEET_INGEST_CONFIG": str(config), "FLEET_INGEST_DATABASE_URL": "sqlite:///env.db"},
    )
    assert json.loads(r.stdout)["database"]["url"] == "sqlite:///from-flag.db"
    config.write_text("[mqtt]\nport = 70000\nhots = 'x'\n")
    r = ingest("config", "--config", config)
    assert r.returncode == 2
    assert "mqtt.port: Input should be less than or equal to 65535" in r.stderr
    assert "mqtt.hots: Extra inputs are not permitted" in r.stderr
    assert f"(from config {config})" in r.stderr


async def _publish_a_fix(port: int) -> None:
    fix = TelemetryPoint(time=datetime(2026, 11, 21, 9, 0, tzinfo=UTC), lat=48.1, lon=11.5, mode=3)
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(
            "fleet/v1/van-7/telemetry",
            encode_batch("van-7", 1, [(1, fix)], historical=False),
            qos=1,
        )


def wait_for_health(
    base: str, process: subprocess.Popen[bytes], timeout_s: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "fleet-ingest serve exited"
        try:
            r = httpx.get(f"{base}/health", timeout=2)
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return r
        assert time.monotonic() < deadline, f"not healthy: {r and r.text}"
        time.sleep(0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_runs_workers_and_api_then_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    http_port = free_port()
    with Mosquitto(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        config.write_text(
            f'workers = 2\n[database]\nurl = "sqlite:///{tmp_path}/ingest.sqlite3"\n'
            f'[mqtt]\nport = {broker.port}\nclient_id = "cli-test"\n'
            f"[http]\nport = {http_port}\n"
        )
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [INGEST, "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment(),
            )
        try:
            base = f"http://127.0.0.1:{http_port}"
            health = wait_for_health(base, process, timeout_s=20).json()
            assert health["workers"] == [
                {"client_id": "cli-test-1", "connected": True},
                {"client_id": "cli-test-2", "connected": True},
            ]
            # The workers store into the database the API reads.
            key = Ed25519PrivateKey.generate().public_key()
            pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
            body = {"device_id": "van-7", "public_key_pem": pem}
            assert httpx.post(f"{base}/v1/devices", json=body).status_code == 401
            # An operator's tokens, made with the CLI on the service's database.
            where = ["--config", str(config)]
            admin = {"Authorization": "Bearer " + cli_token(["admin"], args=where)}
            read = {"Authorization": "Bearer " + cli_token(["read"], args=where)}
            r = httpx.post(f"{base}/v1/devices", json=body, headers=admin)
            assert r.status_code == 201
            asyncio.run(_publish_a_fix(broker.port))
            deadline = time.monotonic() + 10
            while not (latest := httpx.get(f"{base}/v1/positions/latest", headers=read).json()):
                assert time.monotonic() < deadline, "the fix was never stored"
                time.sleep(0.05)
            assert latest[0]["device_id"] == "van-7"
            assert latest[0]["time"] == "2026-11-21T09:00:00.000Z"
            assert httpx.get(f"{base}/metrics").status_code == 401
            metrics = httpx.get(f"{base}/metrics", headers=read).text
            assert "fleet_ingest_worker_connected" in metrics

            started = time.monotonic()
            process.send_signal(stop_signal)
            assert process.wait(timeout=10) == 0, log.read_text()
            assert time.monotonic() - started < 5
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert "fleet-ingest: stopped" in text
    assert "Traceback" not in text
    with socket.socket() as s:  # the HTTP port is free again
        s.bind(("127.0.0.1", http_port))


def test_serve_refuses_a_taken_port_and_a_missing_tls_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ingest.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = ingest("serve", "--database-url", url, env={"FLEET_INGEST_HTTP_PORT": str(port)})
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    ca = tmp_path / "ca.pem"
    r = ingest("serve", "--database-url", url, env={"FLEET_INGEST_MQTT_TLS_CA": str(ca)})
    assert r.returncode == 2
    assert f"mqtt.tls_ca: {ca} is not a readable file" in r.stderr
