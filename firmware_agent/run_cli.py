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
    [gnss]              # one of port (serial), tcp, file
    port = "/dev/fleet/gnss"
    baud = 9600
    # tcp = "127.0.0.1:2947"      # a receiver speaking NMEA on TCP (gpsd's gpsfake)
    # file = "day/nmea.log"       # an NMEA log played as the receiver (--nmea-file)
    # speed = 0.0                 # its playback speed: 1 real time, 0 as fast as possible
    [scanner]           # one serial scanner (the older form of [[scanners]])
    port = "/dev/fleet/scanner"
    [[scanners]]        # scanners, several at once
    kind = "hid"        # serial (port, baud) | hid (device, grab, event_stream) | log (path)
    device = "/dev/fleet/scanner-hid"
    [[scanners]]
    kind = "serial"
    port = "/dev/fleet/ring-scanner"
    [feedback]          # what the driver sees and hears after a scan
    kind = "gpio"       # gpio (LEDs, buzzer; none without GPIO) | log | none
    green_led = 17      # gpiozero pin names; false: not fitted
    red_led = 27
    buzzer = 22
    buzzer_muted = false
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
    ("gnss_tcp", ("gnss", "tcp"), "FLEET_GNSS_TCP"),
    ("gnss_file", ("gnss", "file"), "FLEET_GNSS_FILE"),
    ("gnss_speed", ("gnss", "speed"), "FLEET_GNSS_SPEED"),
    ("scanners", ("scanners",), ""),  # TOML only: an array of tables
    ("feedback", ("feedback", "kind"), "FLEET_FEEDBACK"),
    ("green_led", ("feedback", "green_led"), "FLEET_FEEDBACK_GREEN_LED"),
    ("red_led", ("feedback", "red_led"), "FLEET_FEEDBACK_RED_LED"),
    ("buzzer", ("feedback", "buzzer"), "FLEET_FEEDBACK_BUZZER"),
    ("buzzer_muted", ("feedback", "buzzer_muted"), "FLEET_BUZZER_MUTED"),
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
    "feedback": "gpio",
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
    p.add_argument("--gnss-tcp", metavar="HOST:PORT", help="a receiver speaking NMEA on TCP")
    p.add_argument(
        "--feedback",
        choices=("gpio", "log", "none"),
        help="driver feedback: GPIO LEDs and buzzer (default), log lines, none",
    )
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
        if env and environ.get(env):
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
    # --nmea-file wins over the settings' receiver; [gnss] tcp or file, else port.
    gnss: Any = None
    if args.nmea_file is None:
        gnss = _gnss_source(values)
        if gnss is None and gnss_port:
            gnss = ReaderConfig(port=str(gnss_port), baudrate=baud)
    return AgentConfig(
        state_dir=Path(values["state_dir"]),
        uplink=UplinkConfig(device_id=device_id, host=str(values["mqtt_host"]), port=port, tls=tls),
        gnss=gnss,
        scanner=ScannerConfig(port=str(values["scanner_port"]))
        if values.get("scanner_port")
        else None,
        scanners=scanner_sources(values.get("scanners")),
        feedback=feedback_settings(values),
        nmea_file=args.nmea_file,
        scans_file=args.scans_file,
        speed=args.speed,
        exit_when_drained=args.exit_when_drained,
        eta=_flag(values["eta"], "eta enabled (FLEET_ETA)"),
        eta_model=Path(eta_model) if eta_model else None,
        model_keys=_paths(values.get("eta_model_keys"), "eta model_keys (FLEET_ETA_MODEL_KEYS)"),
    )


def _gnss_source(values: dict[str, Any]) -> Any:
    """``[gnss] tcp`` or ``[gnss] file`` (None: ``[gnss] port``, the serial receiver)."""
    from firmware_agent.sources import NmeaFile, TcpGnss  # noqa: PLC0415

    tcp, path = values.get("gnss_tcp"), values.get("gnss_file")
    if sum(bool(v) for v in (tcp, path, values.get("gnss_port"))) > 1:
        raise ConfigError("gnss: give one of port, tcp and file")
    if tcp:
        host, sep, port = str(tcp).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"gnss tcp must be HOST:PORT, got {tcp!r}")
        return TcpGnss(host.strip("[]"), int(port))
    if path:
        try:
            speed = float(values.get("gnss_speed") or 0.0)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"gnss speed must be a number: {err}") from err
        return NmeaFile(Path(path), speed=speed)
    return None


def scanner_sources(tables: Any) -> tuple[Any, ...]:
    """``[[scanners]]``: each table's ``kind`` and its settings (module doc)."""
    from firmware_agent.scan.serial_reader import ScannerConfig  # noqa: PLC0415
    from firmware_agent.sources import HidScan, ScanLog, SerialScan  # noqa: PLC0415

    if tables is None:
        return ()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"scanners must be an array of tables ([[scanners]]), got {tables!r}")
    allowed = {
        "serial": {"kind", "port", "baud"},
        "hid": {"kind", "device", "grab", "event_stream"},
        "log": {"kind", "path"},
    }
    sources: list[Any] = []
    for n, table in enumerate(tables, 1):
        kind = table.get("kind")
        if kind not in allowed:
            raise ConfigError(f"scanners #{n}: kind must be serial, hid or log, got {kind!r}")
        unknown = sorted(set(table) - allowed[kind])
        if unknown:
            raise ConfigError(f"scanners #{n} ({kind}): unknown keys {', '.join(unknown)}")
        try:
            if kind == "serial":
                sources.append(
                    SerialScan(
                        ScannerConfig(
                            port=str(table["port"]), baudrate=int(table.get("baud", 9600))
                        )
                    )
                )
            elif kind == "hid":
                sources.append(
                    HidScan(
                        str(table["device"]),
                        grab=_flag(table.get("grab", True), f"scanners #{n} grab"),
                        event_stream=_flag(
                            table.get("event_stream", False), f"scanners #{n} event_stream"
                        ),
                    )
                )
            else:
                sources.append(ScanLog(Path(table["path"])))
        except KeyError as err:
            raise ConfigError(f"scanners #{n} ({kind}): {err.args[0]} is required") from err
        except (TypeError, ValueError) as err:
            raise ConfigError(f"scanners #{n} ({kind}): {err}") from err
    return tuple(sources)


def feedback_settings(values: dict[str, Any]) -> Any:
    """``[feedback]``: the kind, the pins (false: not fitted), ``buzzer_muted``."""
    from firmware_agent.feedback import FeedbackPins, FeedbackSettings  # noqa: PLC0415

    defaults = FeedbackPins()
    pins = FeedbackPins(
        green_led=_pin(values.get("green_led"), defaults.green_led, "feedback green_led"),
        red_led=_pin(values.get("red_led"), defaults.red_led, "feedback red_led"),
        buzzer=_pin(values.get("buzzer"), defaults.buzzer, "feedback buzzer"),
    )
    return FeedbackSettings(
        kind=str(values.get("feedback") or "gpio"),  # type: ignore[arg-type]  # checked there
        pins=pins,
        buzzer_muted=_flag(values.get("buzzer_muted", False), "feedback buzzer_muted"),
    )


def _pin(value: Any, default: int | str | None, what: str) -> int | str | None:
    """A gpiozero pin: a number, a name (``"GPIO17"``, ``"BOARD11"``), false/none: not
    fitted; unset: ``default``."""
    if value is None:
        return default
    if value is False or str(value).strip().lower() in {"false", "none", "off", ""}:
        return None
    if isinstance(value, int) or str(value).strip().isdigit():
        return int(value)
    if isinstance(value, str):
        return value.strip()
    raise ConfigError(f"{what} must be a pin number or name, got {value!r}")


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
            asyncio.run(agent.run())
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
