"""``fleet-agent doctor`` (issue 16): the judgements, pure, and the command as installed
against a pty receiver, a pty scanner, gpiozero's mock pins and a real Mosquitto with
mutual TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.doctor.checks import (
    BrokerProbe,
    Check,
    GnssObservation,
    KeyFile,
    Status,
    ack_check,
    broker_checks,
    broker_from_agent,
    disk_check,
    exit_code,
    gnss_checks,
    gnss_from_agent,
    key_checks,
    outbox_check,
    receiver_check,
    render_json,
    render_table,
)
from firmware_agent.gnss.ubx import ReceiverIdentity, ReceiverReport
from firmware_agent.gnss.ubx import Status as UbxStatus
from firmware_agent.service_state import ServiceState, write_state
from simulator.fleet_broker import FLEET_ACL
from simulator.receiver import PtyReceiver
from tests.broker import Mosquitto
from tests.nmea import lines
from tests.pki import issue, write_pair

FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"
NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
VAN = "van-0042"


def _status(checks: list[Check]) -> dict[str, Status]:
    return {c.name: c.status for c in checks}


def _fix(**kw: Any) -> Fix:
    base: dict[str, Any] = {
        "time": NOW,
        "tod_s": 32400.0,
        "lat": 51.9,
        "lon": 4.5,
        "mode": FixMode.FIX_3D,
        "quality": 1,
        "hdop": 0.9,
        "sats_used": 9,
    }
    return Fix(**(base | kw))


# -- the judgements ---------------------------------------------------------------------


def test_gnss_port_missing_or_unopenable_fails_with_a_hint() -> None:
    (absent,) = gnss_checks(GnssObservation("/dev/fleet/gnss", exists=False, open_error=None), NOW)
    assert absent.status is Status.FAIL
    assert "udev" in absent.hint
    (busy,) = gnss_checks(GnssObservation("/dev/x", exists=True, open_error="busy"), NOW)
    assert busy.status is Status.FAIL
    assert "fleet-agent running" in busy.hint


def test_gnss_silent_or_undecodable_fails() -> None:
    silent = gnss_checks(GnssObservation("/dev/x", True, None, listened_s=3), NOW)
    assert _status(silent) == {"gnss.port": Status.PASS, "gnss.fix": Status.FAIL}
    assert "baud" in silent[1].hint
    noise = gnss_checks(GnssObservation("/dev/x", True, None, bytes_read=500, listened_s=3), NOW)
    assert noise[1].status is Status.FAIL
    assert "no NMEA epoch" in noise[1].summary


def test_gnss_good_fix_weak_fix_stale_fix_and_clocks() -> None:
    def judge(fix: Fix, arrived: datetime, now: datetime = NOW) -> dict[str, Status]:
        obs = GnssObservation("/dev/x", True, None, ((fix, arrived),), 300, 3.0)
        return _status(gnss_checks(obs, now))

    assert judge(_fix(), NOW) == dict.fromkeys(
        ("gnss.port", "gnss.fix", "gnss.satellites", "gnss.clock"), Status.PASS
    )
    weak = judge(_fix(mode=FixMode.FIX_2D, sats_used=4), NOW)
    assert (weak["gnss.fix"], weak["gnss.satellites"]) == (Status.WARN, Status.WARN)
    assert judge(_fix(), NOW, NOW + timedelta(seconds=30))["gnss.fix"] is Status.FAIL
    assert judge(_fix(lat=None, lon=None, mode=FixMode.NO_FIX), NOW)["gnss.fix"] is Status.WARN
    # The system clock 10 s, then 2 minutes, ahead of the receiver's.
    assert judge(_fix(), NOW + timedelta(seconds=10))["gnss.clock"] is Status.WARN
    assert judge(_fix(), NOW + timedelta(minutes=2))["gnss.clock"] is Status.FAIL


def test_gnss_from_the_running_agent() -> None:
    assert _status(gnss_from_agent("/dev/x", "FIX_3D", 9, 1.0)) == {
        "gnss.port": Status.PASS,
        "gnss.fix": Status.PASS,
        "gnss.satellites": Status.PASS,
        "gnss.clock": Status.WARN,
    }
    assert _status(gnss_from_agent("/dev/x", "FIX_3D", 9, 60.0))["gnss.fix"] is Status.FAIL
    assert _status(gnss_from_agent("/dev/x", None, None, None))["gnss.fix"] is Status.FAIL


def test_key_files_must_be_private_and_owned_by_the_service() -> None:
    path = Path("/k")
    keys = [
        KeyFile("ok", path, 0o100600, 1000),
        KeyFile("root", path, 0o100400, 0),
        KeyFile("open", path, 0o100644, 1000),
        KeyFile("stranger", path, 0o100600, 1234),
        KeyFile("missing", path, None, None),
        KeyFile("later", path, None, None, required=False),
    ]
    got = _status(key_checks(keys, 1000))
    assert got == {
        "keys.ok": Status.PASS,
        "keys.root": Status.PASS,
        "keys.open": Status.FAIL,
        "keys.stranger": Status.FAIL,
        "keys.missing": Status.FAIL,
        "keys.later": Status.WARN,
    }


def test_ingest_acks_judged_from_the_agents_state() -> None:
    minute = timedelta(minutes=1)
    assert ack_check(None, None, None, NOW, "no file").status is Status.WARN
    assert ack_check(NOW - 10 * minute, NOW - 10 * minute, 0, NOW).status is Status.WARN  # stale
    assert ack_check(NOW, None, 40, NOW).status is Status.FAIL  # never acked, records wait
    assert ack_check(NOW, NOW - minute, 40, NOW).status is Status.PASS
    assert ack_check(NOW, NOW - 10 * minute, 40, NOW).status is Status.WARN
    assert ack_check(NOW, NOW - 120 * minute, 40, NOW).status is Status.FAIL
    assert ack_check(NOW, NOW - 120 * minute, 0, NOW).status is Status.PASS  # nothing waits


def test_outbox_disk_and_broker() -> None:
    budget = 100_000_000
    assert outbox_check(10_000_000, budget).status is Status.PASS
    assert outbox_check(60_000_000, budget).status is Status.WARN
    assert outbox_check(95_000_000, budget).status is Status.FAIL
    assert disk_check(Path("/var"), 10_000_000).status is Status.FAIL
    assert disk_check(Path("/var"), 200_000_000).status is Status.WARN
    assert disk_check(Path("/var"), 5_000_000_000).status is Status.PASS
    refused = broker_checks(BrokerProbe("b:8883", True, None, (("fleet/v1/v/manifest", 0x87),)))
    assert _status(refused) == {"broker.connect": Status.PASS, "broker.acl": Status.FAIL}
    plain = broker_checks(BrokerProbe("b:1883", False, None, (("t", 1),)))
    assert plain[0].status is Status.WARN
    assert broker_checks(BrokerProbe("b:8883", True, "refused"))[0].status is Status.FAIL
    # The forged-ack probe: a PUBACK that took it fails, a refusal (0x87) passes.
    granted = (("fleet/v1/v/manifest", 1),)
    for own_ack, status, said in (
        (0x00, Status.FAIL, "own ack topic"),
        (0x10, Status.FAIL, "own ack topic"),  # taken, nobody subscribed
        (0x87, Status.PASS, "own ack topic refused"),
        (None, Status.PASS, "no answer to the forged-ack probe"),
    ):
        acl = broker_checks(BrokerProbe("b:8883", True, None, granted, own_ack=own_ack))[1]
        assert (acl.status, said in acl.summary) == (status, True), (own_ack, acl)
    assert broker_from_agent(False, "b:8883", True)[0].status is Status.FAIL


def test_receiver_set_up_judged_from_its_ubx_probe() -> None:
    m8 = ReceiverIdentity("ROM CORE 3.01 (107888)", "00080000", ("FWVER=SPG 3.01", "MOD=NEO-M8N"))

    def report(status: UbxStatus, **kw: Any) -> ReceiverReport:
        return ReceiverReport(port="/dev/fleet/gnss", status=status, **kw)

    good = report(UbxStatus.PROBED, identity=m8, rate_hz=5.0, dynamic_model="automotive")
    check = receiver_check(good, "auto", 5.0)
    assert (check.status, check.summary) == (
        Status.PASS,
        "u-blox NEO-M8N (SPG 3.01): 5 Hz, automotive dynamic model",
    )
    # Left at the factory's settings (portable, 1 Hz): works, worse; the hint sets it.
    factory = report(UbxStatus.PROBED, identity=m8, rate_hz=1.0, dynamic_model="portable")
    check = receiver_check(factory, "auto", 5.0)
    assert check.status is Status.WARN
    assert "portable" in check.summary
    assert "fleet-agent gnss configure --port /dev/fleet/gnss --rate-hz 5" in check.hint
    assert receiver_check(good, "auto", 10.0).status is Status.WARN  # rate differs
    # Not a u-blox: fine under "auto", a failure when the fleet said "ublox".
    other = report(UbxStatus.NOT_UBLOX, problems=("NMEA but no answer to UBX-MON-VER",))
    assert receiver_check(other, "auto", 1.0).status is Status.PASS
    assert receiver_check(other, "ublox", 1.0).status is Status.FAIL
    assert receiver_check(report(UbxStatus.SILENT), "ublox", 1.0).status is Status.FAIL
    gone = report(UbxStatus.UNAVAILABLE, problems=("/dev/fleet/gnss: no such device",))
    assert receiver_check(gone, "auto", 1.0).status is Status.WARN
    refused = report(UbxStatus.FAILED, problems=("CFG-NAV5: nak",))
    assert receiver_check(refused, "auto", 1.0).status is Status.WARN


def test_report_table_json_and_exit_code() -> None:
    checks = [Check("a", Status.PASS, "fine"), Check("b", Status.WARN, "meh", "do x")]
    assert exit_code(checks) == 0
    table = render_table(checks)
    assert "WARN  b  meh" in table
    assert "-> do x" in table
    assert table.endswith("1 pass, 1 warn, 0 fail\n")
    failing = [*checks, Check("c", Status.FAIL, "bad", "do y")]
    assert exit_code(failing) == 1
    doc = json.loads(render_json(failing))
    assert doc["ok"] is False
    assert doc["checks"][2] == {"name": "c", "status": "fail", "summary": "bad", "hint": "do y"}


# -- the command, as installed ----------------------------------------------------------


def _nmea_now() -> bytes:
    now = datetime.now(UTC)
    t, d = now.strftime("%H%M%S.") + f"{now.microsecond // 10000:02d}", now.strftime("%d%m%y")
    return lines(
        f"GPRMC,{t},A,5155.55442,N,00434.65873,E,0.2,12.5,{d},,,A",
        f"GPGGA,{t},5155.55442,N,00434.65873,E,1,09,0.90,-4.0,M,46.0,M,,",
        "GPGSA,A,3,27,15,09,28,18,08,10,11,12,,,,1.50,0.90,1.20",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("fleet test CA", ca_key, None, ca=True)
    write_pair(d, "ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    write_pair(d, "broker", issue("127.0.0.1", key, (ca.subject, ca_key), san_ip=True), key)
    key = ec.generate_private_key(ec.SECP256R1())
    write_pair(d, VAN, issue(VAN, key, (ca.subject, ca_key)), key)
    (d / f"{VAN}.key").chmod(0o600)
    return d


def _tls_broker_config(pki: Path, *, acl: bool) -> str:
    """Mutual TLS on the listener (the van's certificate required), and the vans' ACL
    as shipped (docs/mosquitto/fleet.acl) unless ``acl`` is false."""
    lines = [
        f"cafile {pki / 'ca.pem'}",
        f"certfile {pki / 'broker.pem'}",
        f"keyfile {pki / 'broker.key'}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if acl:
        lines.append(f"acl_file {FLEET_ACL}")
    return "\n".join(lines)


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Iterator[Mosquitto]:
    """Mosquitto with mutual TLS and the vans' ACL."""
    with Mosquitto(tmp_path / "broker", extra=_tls_broker_config(pki, acl=True)) as broker:
        yield broker


def _doctor(
    args: list[str], env: dict[str, str], gnss: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run ``fleet-agent doctor --json``, a pty receiver on ``gnss`` talking meanwhile."""

    async def main() -> subprocess.CompletedProcess[str]:
        command = [str(FLEET_AGENT), "doctor", "--json", "--gnss-listen-s", "2", *args]
        if gnss is None:
            return await asyncio.to_thread(
                subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
            )
        async with PtyReceiver(gnss) as pty:
            run = asyncio.create_task(
                asyncio.to_thread(
                    subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
                )
            )
            while not run.done():
                if pty.reader_attached:
                    pty.write(_nmea_now())
                await asyncio.sleep(0.2)
            return await run

    result = asyncio.run(main())
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, doc, result.stderr


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in doc["checks"]}


@pytest.mark.slow
def test_doctor_green_on_a_ready_van_then_red_when_the_broker_is_gone(
    tmp_path: Path, pki: Path, tls_broker: Mosquitto
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    scanner = tmp_path / "scanner"
    master, slave = os.openpty()
    scanner.symlink_to(os.ttyname(slave))
    config = tmp_path / "agent.toml"
    config.write_text(
        f"device_id = '{VAN}'\nstate_dir = '{state}'\n"
        f"[mqtt]\nhost = '127.0.0.1'\nport = {tls_broker.port}\n"
        f"tls_ca = '{pki / 'ca.pem'}'\ntls_cert = '{pki / f'{VAN}.pem'}'\n"
        f"tls_key = '{pki / f'{VAN}.key'}'\n"
        f"[gnss]\nport = '{tmp_path / 'gnss'}'\n"
        f"[[scanners]]\nkind = 'serial'\nport = '{scanner}'\n"
        "[feedback]\nkind = 'gpio'\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        "GPIOZERO_PIN_FACTORY": "mock",
    }
    try:
        rc, doc, err = _doctor(["--config", str(config)], env, gnss=tmp_path / "gnss")
        checks = _by_name(doc)
        assert rc == 0, json.dumps(doc, indent=1) + err
        assert doc["ok"] is True
        for name in (
            "config",
            "gnss.port",
            "gnss.fix",
            "gnss.satellites",
            "gnss.clock",
            "scanner.0",
            "feedback",
            "broker.connect",
            "broker.acl",
            "keys.tls",
            "disk",
        ):
            assert checks[name]["status"] == "pass", checks[name]
        assert "TLS with this van's certificate" in checks["broker.connect"]["summary"]
        assert "publishing to its own ack topic refused" in checks["broker.acl"]["summary"]
        # The pty receiver speaks NMEA only: probed over UBX, found not to be a u-blox,
        # which gnss.receiver = "auto" accepts.
        assert checks["gnss.receiver"]["status"] == "pass", checks["gnss.receiver"]
        assert "not a u-blox" in checks["gnss.receiver"]["summary"]
        # No agent has run: acks and the outbox are unknown (warnings), the device key
        # is made by the first run.
        assert checks["ingest.ack"]["status"] == "warn"
        assert checks["keys.device"]["status"] == "warn"

        # A key anyone can read, and no broker: failures, exit status 1.
        (pki / f"{VAN}.key").chmod(0o644)
        tls_broker.stop()
        rc, doc, _ = _doctor(["--config", str(config), "--timeout-s", "3"], env)
        checks = _by_name(doc)
        assert rc == 1
        assert checks["broker.connect"]["status"] == "fail"
        assert checks["keys.tls"]["status"] == "fail"
        assert checks["gnss.port"]["status"] == "fail"  # the receiver is unplugged now
        assert "chmod 600" in checks["keys.tls"]["hint"]

        # The agent running (a fresh service state): doctor takes the broker and the
        # receiver from it, and connects to nothing itself.
        write_state(
            state / "service-state.json",
            ServiceState(
                at=datetime.now(UTC),
                fix_mode="FIX_3D",
                sats_used=8,
                fix_age_s=0.5,
                connected=True,
                pending=3,
                last_ack_at=datetime.now(UTC) - timedelta(seconds=5),
                last_ack_age_s=5.0,
            ),
        )
        rc, doc, _ = _doctor(["--config", str(config), "--timeout-s", "3"], env)
        checks = _by_name(doc)
        assert checks["broker.connect"]["status"] == "pass"
        assert "running agent" in checks["broker.connect"]["summary"]
        assert checks["gnss.fix"]["status"] == "pass"
        assert checks["ingest.ack"]["status"] == "pass"
    finally:
        (pki / f"{VAN}.key").chmod(0o600)
        os.close(master)
        os.close(slave)


@pytest.mark.slow
def test_doctor_fails_a_broker_that_lets_the_van_forge_its_own_acks(
    tmp_path: Path, pki: Path
) -> None:
    """A broker without the vans' ACL takes a publish to the van's ack topic: whoever
    holds a van's certificate could make it delete records. Doctor says so."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    with Mosquitto(tmp_path / "broker", extra=_tls_broker_config(pki, acl=False)) as broker:
        config = tmp_path / "agent.toml"
        config.write_text(
            f"device_id = '{VAN}'\nstate_dir = '{state}'\n"
            f"[mqtt]\nhost = '127.0.0.1'\nport = {broker.port}\n"
            f"tls_ca = '{pki / 'ca.pem'}'\ntls_cert = '{pki / f'{VAN}.pem'}'\n"
            f"tls_key = '{pki / f'{VAN}.key'}'\n[feedback]\nkind = 'none'\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        rc, doc, err = _doctor(["--config", str(config), "--timeout-s", "3"], env)
    checks = _by_name(doc)
    assert rc == 1, err
    assert checks["broker.connect"]["status"] == "pass", checks["broker.connect"]
    assert checks["broker.acl"]["status"] == "fail", checks["broker.acl"]
    assert "own ack topic" in checks["broker.acl"]["summary"]
    assert "fleet.acl" in checks["broker.acl"]["hint"]


def test_doctor_bad_settings_exit_2_naming_them(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("device_id = 'van-1'\n[mqtt]\nport = 'many'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    rc, doc, err = _doctor(["--config", str(config)], env)
    assert rc == 2
    assert "mqtt.port" in err
    assert doc["checks"][0]["name"] == "config"
    assert doc["checks"][0]["status"] == "fail"
    usage = subprocess.run(
        [str(FLEET_AGENT), "doctor", "--timeout-s", "-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2
