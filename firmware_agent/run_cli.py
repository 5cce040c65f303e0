"""``fleet-agent run``: the service's command line and configuration.

Settings come from, in increasing precedence: the defaults, a TOML file (``--config``,
default ``/etc/fleet-agent/agent.toml`` when it exists), ``FLEET_*`` environment
variables, and command-line flags. Keys (the device's signing key, TLS keys) are files
named by the configuration, never values in it.

TOML layout (every key optional except ``device_id``)::

    device_id = "van-0042"
    state_dir = "/var/lib/fleet-agent"
    [mqtt]
    host = "broker.example.com"
    port = 8883
    tls_ca = "/etc/fleet-agent/ca.pem"
    tls_cert = "/etc/fleet-agent/van.pem"
    tls_key = "/etc/fleet-agent/van.key"
    [gnss]
    port = "/dev/fleet/gnss"
    baud = 9600
    [scanner]
    port = "/dev/fleet/scanner"
    [eta]
    enabled = true      # on-device ETAs (FLEET_ETA=0, --no-eta: off)
    model = "/var/lib/fleet-agent/eta.tflite"   # default: the model shipped in the package
    # The fleet's public keys that sign models sent on the `model` topic (PEM or JWK;
    # several during a key rotation). None: every model sent is refused.
    model_keys = ["/etc/fleet-agent/fleet-model.pub.pem"]

``FLEET_ETA_MODEL_KEYS`` lists model keys separated by ``:`` or ``,``; each
``--eta-model-key`` flag adds one (flags replace the file's and environment's list).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from firmware_agent.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/fleet-agent/agent.toml")
# (flag dest, TOML path, environment variable)
_SETTINGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("device_id", ("device_id",), "FLEET_DEVICE_ID"),
    ("state_dir", ("state_dir",), "FLEET_STATE_DIR"),
    ("mqtt_host", ("mqtt", "host"), "FLEET_MQTT_HOST"),
    ("mqtt_port", ("mqtt", "port"), "FLEET_MQTT_PORT"),
    ("tls_ca", ("mqtt", "tls_ca"), "FLEET_TLS_CA"),
    ("tls_cert", ("mqtt", "tls_cert"), "FLEET_TLS_CERT"),
    ("tls_key", ("mqtt", "tls_key"), "FLEET_TLS_KEY"),
    ("gnss_port", ("gnss", "port"), "FLEET_GNSS_PORT"),
    ("gnss_baud", ("gnss", "baud"), "FLEET_GNSS_BAUD"),
    ("scanner_port", ("scanner", "port"), "FLEET_SCANNER_PORT"),
    ("eta", ("eta", "enabled"), "FLEET_ETA"),
    ("eta_model", ("eta", "model"), "FLEET_ETA_MODEL"),
    ("eta_model_keys", ("eta", "model_keys"), "FLEET_ETA_MODEL_KEYS"),
)
_DEFAULTS: dict[str, Any] = {
    "state_dir": "/var/lib/fleet-agent",
    "mqtt_host": "127.0.0.1",
    "mqtt_port": 1883,
    "gnss_baud": 9600,
    "eta": True,
}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="the van service: receiver, scanner, geofences, PODs, outbox, MQTT uplink",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--config", type=Path, help=f"TOML settings (default {DEFAULT_CONFIG})")
    p.add_argument("--device-id")
    p.add_argument(
        "--state-dir", help=f"key, POD chain, manifest, outbox (default {_DEFAULTS['state_dir']})"
    )
    p.add_argument("--mqtt-host")
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--tls-ca", help="broker CA (PEM): enables TLS")
    p.add_argument("--tls-cert", help="the van's client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="the van's client key")
    p.add_argument("--gnss-port", help="GNSS receiver serial device")
    p.add_argument("--gnss-baud", type=int)
    p.add_argument("--scanner-port", help="serial barcode scanner")
    p.add_argument(
        "--no-eta",
        dest="eta",
        action="store_const",
        const=False,
        help="publish no ETA events (default: on, with the model shipped in the package)",
    )
    p.add_argument("--eta-model", type=Path, help="ETA model (.tflite) instead of the shipped one")
    p.add_argument(
        "--eta-model-key",
        dest="eta_model_keys",
        action="append",
        metavar="FILE",
        help="a fleet public key (PEM or JWK) that signs models sent on the model topic "
        "(repeat for several)",
    )
    sim = p.add_argument_group("simulator and test inputs (instead of hardware)")
    sim.add_argument("--nmea-file", type=Path, help="play this NMEA log as the receiver")
    sim.add_argument("--scans-file", type=Path, help="scan log played with it (docs/scan-log.md)")
    sim.add_argument(
        "--speed", type=float, default=0.0, help="playback speed, 1 = real time, 0 = max"
    )
    sim.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="with --nmea-file: exit once ingest acknowledged every record",
    )
    p.set_defaults(func=cmd_run)


def settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The effective settings (see the module doc for the precedence)."""
    environ = dict(os.environ) if environ is None else environ
    values = dict(_DEFAULTS)
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config {path}: {err}") from err
        for dest, keys, _ in _SETTINGS:
            node: Any = doc
            for key in keys:
                node = node.get(key) if isinstance(node, dict) else None
            if node is not None:
                values[dest] = node
    for dest, _, env in _SETTINGS:
        if environ.get(env):
            values[dest] = environ[env]
    for dest, _, _ in _SETTINGS:
        if getattr(args, dest, None) is not None:
            values[dest] = getattr(args, dest)
    return values


def build_config(args: argparse.Namespace, values: dict[str, Any]) -> Any:
    from firmware_agent.agent import AgentConfig  # noqa: PLC0415 (lazy: fast --help)
    from firmware_agent.contract.mqtt import TlsConfig  # noqa: PLC0415
    from firmware_agent.contract.topics import valid_device_id  # noqa: PLC0415
    from firmware_agent.gnss.reader import ReaderConfig  # noqa: PLC0415
    from firmware_agent.scan.serial_reader import ScannerConfig  # noqa: PLC0415
    from firmware_agent.uplink.mqtt import UplinkConfig  # noqa: PLC0415

    device_id = str(values.get("device_id") or "")
    if not valid_device_id(device_id):
        raise ConfigError(
            f"a valid device_id is required (--device-id, FLEET_DEVICE_ID), got {device_id!r}"
        )
    try:
        port = int(values["mqtt_port"])
        baud = int(values["gnss_baud"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"mqtt port and gnss baud must be integers: {err}") from err
    tls = None
    if values.get("tls_ca"):
        tls = TlsConfig(
            ca_file=Path(values["tls_ca"]),
            cert_file=Path(values["tls_cert"]) if values.get("tls_cert") else None,
            key_file=Path(values["tls_key"]) if values.get("tls_key") else None,
        )
    gnss_port = values.get("gnss_port")
    eta_model = values.get("eta_model")
    return AgentConfig(
        state_dir=Path(values["state_dir"]),
        uplink=UplinkConfig(device_id=device_id, host=str(values["mqtt_host"]), port=port, tls=tls),
        gnss=ReaderConfig(port=str(gnss_port), baudrate=baud)
        if gnss_port and args.nmea_file is None
        else None,
        scanner=ScannerConfig(port=str(values["scanner_port"]))
        if values.get("scanner_port")
        else None,
        nmea_file=args.nmea_file,
        scans_file=args.scans_file,
        speed=args.speed,
        exit_when_drained=args.exit_when_drained,
        eta=_flag(values["eta"], "eta enabled (FLEET_ETA)"),
        eta_model=Path(eta_model) if eta_model else None,
        model_keys=_paths(values.get("eta_model_keys"), "eta model_keys (FLEET_ETA_MODEL_KEYS)"),
    )


def _paths(value: Any, what: str) -> tuple[Path, ...]:
    """A TOML list of paths (or one path), or an environment variable's paths separated
    by ``:`` (as PATH) or ``,``; empty entries are skipped."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = re.split(r"[:,]", value)
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"{what} must be a list of file paths, got {value!r}")
    if not all(isinstance(item, str | Path) for item in items):
        raise ConfigError(f"{what} must be a list of file paths, got {value!r}")
    return tuple(Path(item) for item in items if str(item).strip())


def _flag(value: Any, what: str) -> bool:
    """A TOML boolean, or an environment variable's 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def cmd_run(args: argparse.Namespace) -> int:
    from firmware_agent.agent import Agent  # noqa: PLC0415

    try:
        config = build_config(args, settings(args))
    except ConfigError as err:
        print(f"fleet-agent run: {err}", file=sys.stderr)
        return 2
    agent = Agent(config)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(_serve(agent))
        except ConfigError as err:
            print(f"fleet-agent run: {err}", file=sys.stderr)
            return 2
    r = agent.counts.records
    print(
        f"fleet-agent run: {agent.counts.fixes} fixes, {agent.counts.scans} scans; committed "
        f"telemetry={r['telemetry']} events={r['events']} pod={r['pod']}",
        file=sys.stderr,
    )
    return 0


async def _serve(agent: Any) -> None:
    """Run ``agent`` until it ends, Ctrl-C, or SIGTERM (systemd's stop): SIGTERM
    cancels it as Ctrl-C does, and is a clean stop (the summary, exit status 0)."""
    task = asyncio.current_task()
    assert task is not None
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        await agent.run()
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        log.info("SIGTERM: stopped")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
