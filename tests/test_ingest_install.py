"""Ingest installs and runs without the van's hardware libraries.

A fresh virtual environment gets ``pip install '.[ingest]'`` and nothing else: no
gpiozero, evdev, TFLite runtime, pyserial or pynmea2. In it, ``fleet-ingest serve``
runs against a real Mosquitto, stores a van's telemetry batch (every field of its
point) and serves it on the HTTP track; ``fleet-agent`` says what it lacks instead of
dying on an import. This is what tests/test_imports.py's rule buys, shown on a real
install.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from firmware_agent.contract.keys import load_or_create_device_key, public_key_pem
from firmware_agent.contract.records import TelemetryPoint
from firmware_agent.contract.telemetry import encode_batch
from firmware_agent.contract.topics import uplink_topic
from tests.broker import Mosquitto, free_port
from tests.source_snapshot import snapshot_sources

VAN_ONLY = ("gpiozero", "evdev", "ai_edge_litert", "tflite_runtime", "pynmea2", "serial")
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def ingest_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ingest-only")
    venv = work / "venv"
    sources = snapshot_sources(work / "src")
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]  # fmt: skip
    installed = _run([*pip, f"{sources}[ingest]"], timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


@pytest.mark.slow
def test_the_ingest_extra_has_none_of_the_vans_libraries(ingest_venv: Path) -> None:
    probe = "import importlib.util as u, json; print(json.dumps([m for m in %r if u.find_spec(m)]))"
    found = _run([str(ingest_venv / "bin" / "python"), "-c", probe % (VAN_ONLY,)], timeout=60)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == []
    # The agent's command is installed too, and says what is missing.
    agent = _run([str(ingest_venv / "bin" / "fleet-agent"), "run"], timeout=60)
    assert agent.returncode == 2
    assert "pip install 'fleet-gateway[van]'" in agent.stderr


@pytest.mark.slow
def test_fleet_ingest_serve_runs_and_stores_from_the_ingest_only_install(
    ingest_venv: Path, tmp_path: Path
) -> None:
    bin_dir = ingest_venv / "bin"
    key = load_or_create_device_key(tmp_path / "van.key")
    (tmp_path / "van.pub.pem").write_bytes(public_key_pem(key.public_key()))
    with Mosquitto(tmp_path / "broker") as broker:
        http_port = free_port()
        env = {
            **os.environ,
            "FLEET_INGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'ingest.db'}",
            "FLEET_INGEST_MQTT_PORT": str(broker.port),
            "FLEET_INGEST_HTTP_PORT": str(http_port),
        }
        enrolled = _run(
            [str(bin_dir / "fleet-ingest"), "device", "add", "van-7",
             "--pubkey", str(tmp_path / "van.pub.pem")],
            env=env, timeout=60,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        made = _run(
            [str(bin_dir / "fleet-ingest"), "token", "create", "--scope", "read",
             "--name", "install-test"],
            env=env, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        with (tmp_path / "serve.log").open("w") as log:
            service = subprocess.Popen(
                [str(bin_dir / "fleet-ingest"), "serve"], env=env, stdout=log, stderr=log
            )
        try:
            api = f"http://127.0.0.1:{http_port}"
            _wait_healthy(api, service, tmp_path / "serve.log")
            point = TelemetryPoint(
                time=T0, lat=48.1372081, lon=11.5756033, alt_m=519.4, speed_mps=8.42,
                course_deg=87.3, mode=3, quality=2, hdop=0.9, sats_used=11,
            )  # fmt: skip
            asyncio.run(
                _publish(broker.port, encode_batch("van-7", 1, [(1, point)], historical=False))
            )
            track = _wait_track(api, "van-7", token)
        finally:
            service.terminate()
            service.wait(20)
        assert service.returncode == 0, (tmp_path / "serve.log").read_text()
    assert track == [{"device_id": "van-7", "seq": 1, **point.to_json(), "historical": False}]


async def _publish(port: int, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="van-7") as client:
        await client.publish(uplink_topic("van-7", "telemetry"), payload, qos=1)


def _get(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _wait_healthy(api: str, service: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.poll() is None, log.read_text()
        try:
            if json.loads(_get(api + "/health"))["status"] == "ok":
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not healthy: {log.read_text()}")


def _wait_track(api: str, device_id: str, token: str) -> list[dict[str, object]]:
    url = f"{api}/v1/devices/{device_id}/track?start=2026-11-21T08:00:00Z&end=2026-11-21T10:00:00Z"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        positions: list[dict[str, object]] = json.loads(_get(url, token))["positions"]
        if positions:
            return positions
        time.sleep(0.1)
    raise AssertionError("the batch was not stored")
