"""The fleet's production broker (docs/mosquitto/) run on this machine: the shipped
``fleet.conf``, ``fleet.acl`` and ``fleet-services.acl`` and the ``fleet_share_guard``
plugin, with only the listeners' ports (on 127.0.0.1) and the file paths changed. The
demo's broker and the tests' of the broker's rules (tests/test_broker_acl.py).

with fleet_mosquitto(tmp_path / "broker", tls, guard=build_share_guard(tmp_path)) as broker:
    ...  # vans on broker.port (= ports.vans), services on ports.services
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from simulator.broker import BrokerError, Mosquitto, free_port

MOSQUITTO_DOCS = Path(__file__).resolve().parent.parent / "docs" / "mosquitto"
FLEET_CONF = MOSQUITTO_DOCS / "fleet.conf"
FLEET_ACL = MOSQUITTO_DOCS / "fleet.acl"
FLEET_SERVICES_ACL = MOSQUITTO_DOCS / "fleet-services.acl"
SHARE_GUARD_SOURCE = MOSQUITTO_DOCS / "fleet_share_guard.c"
# Where fleet.conf loads the plugin from on a broker host (docs/mosquitto/README.md).
SHARE_GUARD_INSTALLED = "/usr/local/lib/mosquitto/fleet_share_guard.so"
# Debian packages the plugin's build needs.
BUILD_PACKAGES = "gcc libc6-dev mosquitto-dev libmosquitto-dev"


class FleetPorts(NamedTuple):
    """The two listeners: the vans' (8883 in production) and the services' (8884)."""

    vans: int
    services: int

    @classmethod
    def free(cls) -> FleetPorts:
        return cls(vans=free_port(), services=free_port())


class BrokerTls(NamedTuple):
    """The broker's TLS files: the fleet CA (it signs every client), its own pair and
    the CA's certificate revocation list (``crlfile``: a revoked van is refused)."""

    ca: Path
    cert: Path
    key: Path
    crl: Path


def build_share_guard(directory: Path, *, timeout_s: float = 60.0) -> Path:
    """Compiles docs/mosquitto/fleet_share_guard.c into ``directory``; the plugin's path.
    :class:`BrokerError` when the compiler or Mosquitto's headers are missing."""
    if not SHARE_GUARD_SOURCE.exists():
        raise BrokerError(f"{SHARE_GUARD_SOURCE} is missing: the broker needs a clone")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BrokerError(f"no C compiler for the share guard: apt-get install {BUILD_PACKAGES}")
    directory.mkdir(parents=True, exist_ok=True)
    plugin = directory / "fleet_share_guard.so"
    argv = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
            "-o", str(plugin), str(SHARE_GUARD_SOURCE)]  # fmt: skip
    proc = subprocess.run(  # noqa: S603 (the compiler on our own source)
        argv, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise BrokerError(
            f"building {SHARE_GUARD_SOURCE.name} failed (apt-get install {BUILD_PACKAGES}?):"
            f"\n{proc.stderr[-2000:]}"
        )
    return plugin


def fleet_config(
    tls: BrokerTls,
    ports: FleetPorts,
    *,
    guard: Path | None,
    vans_acl: Path = FLEET_ACL,
    services_acl: Path = FLEET_SERVICES_ACL,
) -> str:
    """fleet.conf as shipped, but its two listeners on ``ports`` of 127.0.0.1, its
    certificates ``tls``, its ACLs ``vans_acl`` and ``services_acl`` and the share guard
    ``guard``. ``guard=None`` drops the plugin line: the broker as it was without it (for
    the test that shows what the guard is for), never a configuration to run."""
    text = FLEET_CONF.read_text(encoding="utf-8")
    plugin_line = f"plugin {SHARE_GUARD_INSTALLED}\n"
    # Each setting, how often fleet.conf holds it (the certificates: once per listener).
    replacements = {
        "listener 8883\n": (f"listener {ports.vans} 127.0.0.1\n", 1),
        "listener 8884\n": (f"listener {ports.services} 127.0.0.1\n", 1),
        "/etc/mosquitto/certs/fleet-ca.pem": (str(tls.ca), 2),
        "/etc/mosquitto/certs/broker.pem": (str(tls.cert), 2),
        "/etc/mosquitto/certs/broker.key": (str(tls.key), 2),
        "/etc/mosquitto/certs/fleet-crl.pem": (str(tls.crl), 2),
        "/etc/mosquitto/fleet.acl": (str(vans_acl), 1),
        "/etc/mosquitto/fleet-services.acl": (str(services_acl), 1),
        plugin_line: ("" if guard is None else f"plugin {guard}\n", 1),
    }
    for old, (new, count) in replacements.items():
        if text.count(old) != count:
            raise BrokerError(f"{FLEET_CONF.name} should hold {old!r} {count} times")
        text = text.replace(old, new)
    listeners = [line for line in text.splitlines() if line.startswith("listener")]
    if len(listeners) != len(FleetPorts._fields):
        raise BrokerError(f"{FLEET_CONF.name} should open two listeners: {listeners}")
    return text


def fleet_mosquitto(
    directory: Path,
    tls: BrokerTls,
    *,
    guard: Path | None,
    ports: FleetPorts | None = None,
    services_acl: Path = FLEET_SERVICES_ACL,
) -> Mosquitto:
    """A :class:`Mosquitto` (not started) running :func:`fleet_config`: no anonymous
    listener, the vans' on its :attr:`~Mosquitto.port`, the services' on
    ``ports.services`` (``ports``: free ones by default)."""
    ports = FleetPorts.free() if ports is None else ports
    config = fleet_config(tls, ports, guard=guard, services_acl=services_acl)
    return Mosquitto(
        directory,
        port=ports.vans,
        anonymous=False,
        wait_ports=(ports.services,),
        extra=config,
    )
