"""The installer's day, played whole on this machine with the shipped commands.

The cloud: ``fleet-ingest ca init`` makes the fleet CA; ``ca issue`` the broker's and
ingest's certificates; a real Mosquitto runs the shipped fleet.conf (mutual TLS on
both listeners, the CA's CRL, the ACLs and the share guard); ``fleet-ingest serve``
runs with API auth on, connected over TLS as ``ingest``. The van: a u-blox receiver
(the simulator's, on a pty) and a serial scanner are wired; ``fleet-agent provision``
enrolls it with a one-time token and sets the receiver up over UBX; ``fleet-agent
doctor`` is green; ``fleet-agent run`` drives a simulated round whose records ingest
stores and serves (read with an API token); the operator revokes the van and the
broker refuses it, which doctor reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator.broker import BrokerError
from simulator.fleet_broker import BrokerTls, FleetPorts, build_share_guard, fleet_mosquitto
from tests.broker import Mosquitto, free_port
from tests.processes import running, wait_http
from tests.uplinkday import Day, dense_scans, first_fix_time

BIN = Path(sys.executable).parent
INGEST, AGENT, SIM = BIN / "fleet-ingest", BIN / "fleet-agent", BIN / "fleet-sim"
VAN = "van-0042"
RATE_HZ = 2


def run(*args: str | Path, timeout_s: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, check=False, **kw
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


class Cloud:
    """What the operator runs: the CA's directory, the broker, ingest's API."""

    def __init__(self, directory: Path, broker: Mosquitto, ports: FleetPorts, base: str) -> None:
        self.directory = directory
        self.config = directory / "ingest.toml"
        self.broker = broker
        self.ports = ports
        self.base = base

    @property
    def hup(self) -> str:
        assert self.broker.process is not None
        return f"kill -HUP {self.broker.process.pid}"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    home = tmp_path / "cloud"
    ca, certs = home / "ca", home / "certs"
    ok(run(INGEST, "ca", "init", "--ca-dir", ca, "--name", "Acme fleet CA"))
    ok(run(INGEST, "ca", "issue", "--ca-dir", ca, "--service", "broker", "--ip", "127.0.0.1",
           "--out-dir", certs))  # fmt: skip
    ok(run(INGEST, "ca", "issue", "--ca-dir", ca, "--service", "ingest", "--out-dir", certs))
    try:
        guard = build_share_guard(home / "guard")
    except BrokerError as err:  # ./run installs the compiler and Mosquitto's headers
        pytest.fail(str(err))
    ports = FleetPorts.free()
    tls = BrokerTls(ca / "ca.pem", certs / "127.0.0.1.pem", certs / "127.0.0.1.key", ca / "crl.pem")
    with fleet_mosquitto(home / "broker", tls, guard=guard, ports=ports) as broker:
        assert broker.process is not None
        http_port = free_port()
        (home / "ingest.toml").write_text(
            f'[database]\nurl = "sqlite:///{home}/ingest.sqlite3"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {ports.services}\nclient_id = "ingest-1"\n'
            f'tls_ca = "{ca / "ca.pem"}"\n'
            f'tls_cert = "{certs / "ingest.pem"}"\ntls_key = "{certs / "ingest.key"}"\n'
            f"[http]\nport = {http_port}\n"
            f'[ca]\ndir = "{ca}"\nbroker_host = "127.0.0.1"\nbroker_port = {ports.vans}\n'
            f'reload_command = "kill -HUP {broker.process.pid}"\n'
        )
        log = home / "serve.log"
        with running([INGEST, "serve", "--config", home / "ingest.toml"], log) as serve:
            base = f"http://127.0.0.1:{http_port}"
            wait_http(base, serve, log)
            yield Cloud(home, broker, ports, base)
        assert "Traceback" not in log.read_text(), log.read_text()


class Van:
    """The van on the bench: its settings file as the package ships it plus what the
    installer wrote, a u-blox receiver (the simulator's) and a serial scanner wired."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = directory / "etc" / "agent.toml"
        self.state = directory / "state"
        self.gnss = directory / "gnss"
        self.scanner = directory / "scanner"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
            "GPIOZERO_PIN_FACTORY": "mock",  # the LEDs and buzzer: GPIO's stand-in
        }

    def write_settings(self) -> None:
        self.config.parent.mkdir(parents=True)
        self.state.mkdir(mode=0o700)
        self.config.write_text(
            "# /etc/fleet-agent/agent.toml (the package's conffile, edited on the bench)\n"
            f"state_dir = '{self.state}'\n"
            f"[gnss]\nport = '{self.gnss}'\nreceiver = 'ublox'\nrate_hz = {RATE_HZ}\n"
            f"[[scanners]]\nkind = 'serial'\nport = '{self.scanner}'\n"
            "[feedback]\nkind = 'gpio'\n"
        )

    def doctor(self) -> tuple[int, dict[str, dict[str, str]], str]:
        r = run(AGENT, "doctor", "--json", "--config", self.config, "--timeout-s", "5",
                "--gnss-listen-s", "2.5", env=self.env, timeout_s=90)  # fmt: skip
        doc = json.loads(r.stdout) if r.stdout.strip() else {"checks": []}
        return r.returncode, {c["name"]: c for c in doc["checks"]}, r.stdout + r.stderr


@pytest.fixture
def van(tmp_path: Path) -> Iterator[Van]:
    van = Van(tmp_path / "van")
    van.directory.mkdir()
    master, slave = os.openpty()
    van.scanner.symlink_to(os.ttyname(slave))
    log = tmp_path / "receiver.log"
    try:
        with running([SIM, "receiver", "--pty", van.gnss, "--ubx", "m8"], log) as receiver:
            deadline = time.monotonic() + 15
            while not van.gnss.exists():
                assert receiver.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            yield van
    finally:
        os.close(master)
        os.close(slave)


def _round(directory: Path) -> Day:
    """A short simulated round for VAN, every parcel scanned while it drives."""
    ok(run(SIM, "scenario", "--seed", "23", "--stops", "4", "--rate-hz", "1", "--duration-h",
           "0.3", "--device-id", VAN, "--out", directory, timeout_s=120))  # fmt: skip
    day = Day(directory / "nmea.log", directory / "scans.jsonl", directory / "manifest.json")
    return dense_scans(day, directory)


def _parcels(day: Day) -> set[str]:
    return {json.loads(line)["truth"]["parcel"] for line in day.scans.read_text().splitlines()}


async def _drive(van: Van, day: Day, log: Path) -> int:
    """``fleet-agent run`` with the provisioned settings, the round's NMEA and scans
    played as the receiver and scanner, until ingest acknowledged everything."""
    with log.open("wb") as out:
        agent = await asyncio.create_subprocess_exec(
            str(AGENT), "run", "--config", str(van.config), "--nmea-file", str(day.nmea),
            "--scans-file", str(day.scans), "--speed", "0", "--exit-when-drained",
            env=van.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(240):
                return await agent.wait()
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()


def _get(cloud: Cloud, path: str, token: str, **params: str) -> Any:
    r = httpx.get(
        f"{cloud.base}{path}", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


@pytest.mark.slow
def test_the_installers_day_from_a_fleet_ca_to_a_van_revoked(
    cloud: Cloud, van: Van, tmp_path: Path
) -> None:
    # The operator: an enrollment token for the van, a read token for the backend.
    enroll = ok(run(INGEST, "enroll-token", "--config", cloud.config, "--device", VAN))
    name, token, *_ = enroll.split()
    assert name == VAN
    reader = ok(run(INGEST, "token", "create", "--config", cloud.config, "--scope", "read",
                    "--name", "backend")).strip()  # fmt: skip
    # Without credentials the API answers nothing but /health.
    assert httpx.get(f"{cloud.base}/v1/devices").status_code == 401

    # Before provisioning: the receiver is at its factory settings and nothing is
    # trusted yet; doctor says so and fails.
    van.write_settings()
    rc, checks, out = van.doctor()
    assert rc == 1, out
    assert checks["identity"]["status"] == "fail", checks["identity"]
    assert "fleet-agent provision" in checks["identity"]["hint"]
    for check in ("gnss.port", "gnss.fix", "scanner.0", "feedback"):  # the wiring is right
        assert checks[check]["status"] == "pass", (check, checks[check])
    assert checks["gnss.receiver"]["status"] == "warn", checks["gnss.receiver"]
    assert "portable" in checks["gnss.receiver"]["summary"]

    # The installer: provision with the token (keys, certificate, broker address, the
    # receiver's rate and dynamic model).
    r = run(AGENT, "provision", "--enroll", cloud.base, "--token", token, "--config",
            van.config, env=van.env, timeout_s=90)  # fmt: skip
    provisioned = ok(r)
    assert f"provisioned {VAN}" in provisioned
    assert f"receiver: u-blox NEO-M8N set to {RATE_HZ} Hz, automotive, saved" in provisioned
    assert f"port = {cloud.ports.vans}" in van.config.read_text()

    # doctor: green, every check that can pass before the first run passes.
    rc, checks, out = van.doctor()
    assert rc == 0, out
    for check in ("config", "gnss.port", "gnss.fix", "gnss.satellites", "gnss.clock",
                  "gnss.receiver", "scanner.0", "feedback", "broker.connect", "broker.acl",
                  "keys.tls", "keys.device", "disk"):  # fmt: skip
        assert checks[check]["status"] == "pass", (check, checks[check])
    assert f"{RATE_HZ} Hz, automotive" in checks["gnss.receiver"]["summary"]
    assert "TLS with this van's certificate" in checks["broker.connect"]["summary"]
    assert {c["status"] for c in checks.values()} <= {"pass", "warn"}

    # The first round: the dispatcher's manifest (put in place here), the van drives
    # it, ingest stores and acknowledges every record.
    day = _round(tmp_path / "round")
    (van.state / "manifest.json").write_bytes(day.manifest.read_bytes())
    drive_log = tmp_path / "agent.log"
    assert asyncio.run(_drive(van, day, drive_log)) == 0, drive_log.read_text()[-4000:]
    assert "Traceback" not in drive_log.read_text()

    device = _get(cloud, f"/v1/devices/{VAN}", reader)
    assert device["enabled"] is True
    latest = {p["device_id"]: p for p in _get(cloud, "/v1/positions/latest", reader)}
    assert VAN in latest
    parcels = _parcels(day)
    assert parcels
    for parcel in parcels:
        found = _get(cloud, f"/v1/pods/{parcel}", reader)
        assert found["delivered"] is True, found
        (pod,) = found["pods"]
        assert pod["device_id"] == VAN
        assert pod["verification"]["verified"] is True, pod
    t0 = first_fix_time(day)
    track = _get(cloud, f"/v1/devices/{VAN}/track", reader,
                 start=(t0 - timedelta(minutes=1)).isoformat(),
                 end=(t0 + timedelta(hours=2)).isoformat())  # fmt: skip
    assert len(track["positions"]) > 10
    gaps = _get(cloud, f"/v1/devices/{VAN}/gaps", reader)
    assert gaps["gaps"] == [], gaps
    assert gaps["acks"]["telemetry"] > 0, gaps
    assert gaps["acks"]["pod"] >= len(parcels), gaps

    # After the round: doctor sees the agent's last ack (the agent has stopped).
    rc, checks, out = van.doctor()
    assert rc == 0, out
    assert checks["ingest.ack"]["status"] == "pass", checks["ingest.ack"]
    assert "0 records waiting" in checks["ingest.ack"]["summary"]
    assert checks["broker.connect"]["status"] == "pass"
    assert "running agent" not in checks["broker.connect"]["summary"]

    # The van is stolen: the operator revokes it; the broker (its CRL reloaded)
    # refuses it at connect, ingest's registry has it disabled.
    revoked = ok(run(INGEST, "ca", "revoke", "--config", cloud.config, "--device", VAN,
                     "--reload-broker", cloud.hup))  # fmt: skip
    assert "broker reloaded" in revoked
    assert f"device {VAN} disabled" in revoked
    rc, checks, out = van.doctor()
    assert rc == 1, out
    assert checks["broker.connect"]["status"] == "fail", checks["broker.connect"]
    assert _get(cloud, f"/v1/devices/{VAN}", reader)["enabled"] is False
