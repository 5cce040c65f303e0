"""``fleet-agent run`` and ``fleet-agent config``: the service's command line.

Settings (one typed tree, docs/configuration.md) come from, in
increasing precedence: the defaults, a TOML file (``--config``, else ``$FLEET_CONFIG``,
else ``/etc/fleet-agent/agent.toml`` when it exists), ``FLEET_*`` environment variables
and command-line flags; while the agent runs, the remote ``config`` downlink overrides
the settings it may change. An unknown key or variable, a value of the wrong type or
out of range stops the start with exit status 2 and a message naming the key and where
its value came from. Keys (the device's signing key, TLS keys) are files named by the
configuration, never values in it.

``fleet-agent config`` prints the effective settings as TOML, each value with where it
came from (``--variables``: every ``FLEET_*`` variable and the key it sets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_agent.errors import ConfigError

if TYPE_CHECKING:
    # Imported by the commands, not at parser build: `fleet-agent --help` stays fast.
    from firmware_agent.agent import AgentConfig
    from firmware_agent.settings import LoadedSettings

log = logging.getLogger(__name__)

# Flag dest -> the key path it sets.
_FLAGS: dict[str, tuple[str, ...]] = {
    "device_id": ("device_id",),
    "state_dir": ("state_dir",),
    "mqtt_host": ("mqtt", "host"),
    "mqtt_port": ("mqtt", "port"),
    "tls_ca": ("mqtt", "tls_ca"),
    "tls_cert": ("mqtt", "tls_cert"),
    "tls_key": ("mqtt", "tls_key"),
    "tls": ("mqtt", "tls"),
    "gnss_baud": ("gnss", "baud"),
    "speed": ("gnss", "speed"),
    "eta": ("eta", "enabled"),
    "eta_model": ("eta", "model"),
    "eta_model_keys": ("eta", "model_keys"),
}


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="TOML settings (default $FLEET_CONFIG, else /etc/fleet-agent/agent.toml)",
    )
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, by its key path (--set geofence.border_m=30); repeatable",
    )
    p.add_argument("--device-id")
    p.add_argument(
        "--state-dir", help="key, POD chain, manifest, outbox (default /var/lib/fleet-agent)"
    )
    p.add_argument("--mqtt-host")
    p.add_argument("--mqtt-port", type=int)
    p.add_argument("--tls-ca", help="broker CA (PEM): enables TLS")
    p.add_argument("--tls-cert", help="the van's client certificate (mutual TLS)")
    p.add_argument("--tls-key", help="the van's client key")
    p.add_argument(
        "--no-tls",
        dest="tls",
        action="store_const",
        const=False,
        help="MQTT in plain text even to a broker off this machine (mqtt.tls = false)",
    )
    p.add_argument("--gnss-port", help="GNSS receiver serial device (gnss.source = serial)")
    p.add_argument("--gnss-baud", type=int)
    p.add_argument("--scanner-port", help="a serial barcode scanner (replaces the file's)")
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
        "(repeat for several; replaces the file's and environment's list)",
    )
    sim = p.add_argument_group("simulator and test inputs (instead of hardware)")
    sim.add_argument(
        "--nmea-file", type=Path, help="play this NMEA log as the receiver (gnss.source = file)"
    )
    sim.add_argument("--scans-file", type=Path, help="scan log played with it (docs/scan-log.md)")
    sim.add_argument("--speed", type=float, help="playback speed, 1 = real time, 0 = max")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="the van service: receiver, scanner, geofences, PODs, outbox, MQTT uplink",
        description=__doc__.split("\n\n")[1],
    )
    _settings_arguments(p)
    p.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="with --nmea-file: exit once ingest acknowledged every record",
    )
    p.set_defaults(func=cmd_run)
    c = sub.add_parser(
        "config",
        help="print the effective settings of `fleet-agent run` (TOML, with their sources)",
        description="Print the settings `fleet-agent run` would start with, as TOML, each "
        "value commented with where it came from; the stored remote config's overrides "
        "are shown too. Takes run's settings flags. Exit 2 on invalid settings.",
    )
    _settings_arguments(c)
    c.add_argument(
        "--variables",
        action="store_true",
        help="list every FLEET_* environment variable and the key it sets, instead",
    )
    c.set_defaults(func=cmd_config)


def _flags(args: argparse.Namespace) -> dict[tuple[str, ...], tuple[object, str]]:
    from firmware_agent.settings import environment_variables  # noqa: PLC0415

    flags: dict[tuple[str, ...], tuple[object, str]] = {}
    for dest, path in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            if dest == "eta_model_keys":
                value = tuple(value)
            flag = "--no-tls" if dest == "tls" else "--no-eta" if dest == "eta" else None
            flags[path] = (value, flag or "--" + dest.replace("_", "-").removesuffix("s"))
    if args.gnss_port is not None:
        flags[("gnss", "source")] = ("serial", "--gnss-port")
        flags[("gnss", "port")] = (args.gnss_port, "--gnss-port")
    if args.nmea_file is not None:
        flags[("gnss", "source")] = ("file", "--nmea-file")
        flags[("gnss", "file")] = (args.nmea_file, "--nmea-file")
    keys = {".".join(path): path for path in environment_variables().values()}
    for assignment in args.assignments:
        key, sep, value = assignment.partition("=")
        if not sep or key.strip() not in keys:
            raise ConfigError(
                f"--set {assignment}: not KEY=VALUE with a known key "
                "(`fleet-agent config` shows them)"
            )
        flags[keys[key.strip()]] = (value, f"--set {assignment}")
    return flags


def settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> LoadedSettings:
    """The effective settings of ``args`` and ``environ`` (default: the process's)."""
    from firmware_agent.settings import load_settings  # noqa: PLC0415

    scanners: dict[str, tuple[dict[str, Any], str]] = {}
    if args.scanner_port is not None:
        scanners["serial"] = ({"port": args.scanner_port}, "--scanner-port")
    if args.scans_file is not None:
        scanners["log"] = ({"file": str(args.scans_file)}, "--scans-file")
    return load_settings(args.config, environ, flags=_flags(args), scanners=scanners)


def build_config(
    args: argparse.Namespace, loaded: LoadedSettings, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """The agent's configuration from the effective settings (and ``run``'s own
    ``--exit-when-drained``). :class:`ConfigError` for what this build cannot run.
    ``environ`` (default: the process's) may hold systemd's ``$CREDENTIALS_DIRECTORY``."""
    from firmware_agent.agent import AgentConfig  # noqa: PLC0415 (lazy: fast --help)
    from firmware_agent.contract.mqtt import TlsConfig  # noqa: PLC0415
    from firmware_agent.credentials import TLS_CREDENTIALS, credential  # noqa: PLC0415
    from firmware_agent.eta.tracker import EtaConfig  # noqa: PLC0415
    from firmware_agent.feedback import FeedbackPins, FeedbackSettings  # noqa: PLC0415
    from firmware_agent.geofence.config import GeofenceConfig  # noqa: PLC0415
    from firmware_agent.gnss.reader import ReaderConfig  # noqa: PLC0415
    from firmware_agent.scan.serial_reader import ScannerConfig  # noqa: PLC0415
    from firmware_agent.sources import (  # noqa: PLC0415
        HidScan,
        ScanLog,
        ScannerSource,
        SerialScan,
        TcpGnss,
    )
    from firmware_agent.telemetry import TelemetryConfig  # noqa: PLC0415
    from firmware_agent.uplink.mqtt import UplinkConfig  # noqa: PLC0415
    from firmware_agent.van import VanConfig  # noqa: PLC0415

    s = loaded.settings
    if s.device_id is None:
        raise ConfigError(
            "device_id: required (device_id in the file, FLEET_DEVICE_ID or --device-id)"
        )
    mqtt = s.mqtt
    # The unit's LoadCredential= copies, when systemd gave them (firmware_agent.credentials).
    env = os.environ if environ is None else environ
    ca, cert, key = (
        credential(TLS_CREDENTIALS[name], getattr(mqtt, name), env)
        for name in ("tls_ca", "tls_cert", "tls_key")
    )
    tls = TlsConfig(ca_file=ca, cert_file=cert, key_file=key) if ca is not None else None
    uplink = UplinkConfig(
        device_id=s.device_id,
        host=mqtt.host,
        port=mqtt.port,
        tls=tls,
        keepalive_s=mqtt.keepalive_s,
        will_delay_s=mqtt.will_delay_s,
        session_expiry_s=mqtt.session_expiry_s,
        connect_timeout_s=mqtt.connect_timeout_s,
        backoff_initial_s=mqtt.backoff_initial_s,
        backoff_max_s=mqtt.backoff_max_s,
        **s.uplink.model_dump(),
    )
    gnss: ReaderConfig | TcpGnss | None = None
    nmea_file = None
    if s.gnss.source == "serial":
        gnss = ReaderConfig(port=s.gnss.port, baudrate=s.gnss.baud)
    elif s.gnss.source == "tcp":
        assert s.gnss.address is not None  # the tree checks it
        host, sep, port = s.gnss.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"gnss.address: {s.gnss.address!r} (from "
                f"{loaded.source(('gnss', 'address'))}) is not host:port"
            )
        gnss = TcpGnss(host.strip("[]"), int(port))
    else:
        nmea_file = s.gnss.file
    scanners: list[ScannerSource] = []
    for item in s.scanners:
        if item.kind == "serial":
            assert item.port is not None  # the tree checks it
            scanners.append(SerialScan(ScannerConfig(port=item.port, baudrate=item.baud)))
        elif item.kind == "hid":
            assert item.device is not None
            scanners.append(
                HidScan(str(item.device), grab=item.grab, event_stream=item.event_stream)
            )
        else:
            assert item.file is not None
            scanners.append(ScanLog(item.file))
    fb = s.feedback
    feedback = FeedbackSettings(
        kind=fb.kind,
        pins=FeedbackPins(
            green_led=fb.green_led or None, red_led=fb.red_led or None, buzzer=fb.buzzer or None
        ),
        buzzer_muted=fb.buzzer_muted,
    )
    eta = s.eta.model_dump(exclude={"enabled", "model", "model_keys"})
    try:
        van = VanConfig(
            geofence=GeofenceConfig(**s.geofence.model_dump()),
            telemetry=TelemetryConfig(**s.telemetry.model_dump()),
            eta=EtaConfig(**eta),
            **s.van.model_dump(),
        )
    except ConfigError as err:  # a range the tree already checks: a bug if reached
        raise ConfigError(f"invalid settings: {err}") from err
    return AgentConfig(
        state_dir=s.state_dir,
        uplink=uplink,
        van=van,
        gnss=gnss,
        scanners=tuple(scanners),
        feedback=feedback,
        nmea_file=nmea_file,
        speed=s.gnss.speed,
        outbox_budget_bytes=s.outbox.budget_bytes,
        exit_when_drained=getattr(args, "exit_when_drained", False),
        eta=s.eta.enabled,
        eta_model=s.eta.model,
        model_keys=s.eta.model_keys,
    )


def _refuse(command: str, err: ConfigError) -> int:
    print(f"fleet-agent {command}: {err}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    from firmware_agent.agent import Agent  # noqa: PLC0415
    from firmware_agent.settings import plain_text_remote  # noqa: PLC0415

    try:
        loaded = settings(args)
        config = build_config(args, loaded)
    except ConfigError as err:
        return _refuse("run", err)
    if plain_text_remote(loaded.settings):
        log.warning(
            "MQTT in plain text to %s:%d, off this machine (mqtt.tls = false, from %s): "
            "anyone on the path reads and can forge the van's records",
            loaded.settings.mqtt.host,
            loaded.settings.mqtt.port,
            loaded.source(("mqtt", "tls")),
        )
    agent = Agent(config)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(_serve(agent))
        except ConfigError as err:
            return _refuse("run", err)
    r = agent.counts.records
    print(
        f"fleet-agent run: {agent.counts.fixes} fixes, {agent.counts.scans} scans; committed "
        f"telemetry={r['telemetry']} events={r['events']} pod={r['pod']}",
        file=sys.stderr,
    )
    return 0


Overrides = dict[tuple[str, ...], tuple[object, str]]


def _remote_overrides(loaded: LoadedSettings) -> tuple[Overrides, str]:
    """The stored remote config's overrides (key path -> value, source), and a note
    when there is none or it is refused."""
    from firmware_agent.remote_config import RemoteConfigStore, running_revision  # noqa: PLC0415

    store = RemoteConfigStore(loaded.settings.state_dir / "config.json")
    try:
        remote = store.load()
    except (ConfigError, OSError, ValueError) as err:
        return {}, f"# stored remote config {store.path} not applied: {err}"
    if remote is None:
        return {}, f"# no stored remote config ({store.path})"
    origin = f"remote config revision {running_revision(remote)}"
    out: Overrides = {}
    for section in ("telemetry", "uplink", "geofence", "van", "eta"):
        for key, value in getattr(remote, section).items():
            out[(section, key)] = (value, origin)
    return out, f"# {origin} ({store.path}) overrides what it names while the agent runs"


def cmd_config(args: argparse.Namespace) -> int:
    from firmware_agent.settings import environment_variables, to_toml  # noqa: PLC0415

    if args.variables:
        for name, path in environment_variables().items():
            print(f"{name}\t{'.'.join(path)}")
        return 0
    try:
        loaded = settings(args)
    except ConfigError as err:
        return _refuse("config", err)
    remote, note = _remote_overrides(loaded)
    layers = "defaults < " + (f"{loaded.file} < " if loaded.file else "") + "FLEET_* < flags"
    sys.stdout.write(f"# fleet-agent run's settings: {layers}\n{note}\n" + to_toml(loaded, remote))
    return 0


async def _serve(agent: Any) -> None:
    """Run ``agent`` until it ends, Ctrl-C, or SIGTERM (systemd's stop): SIGTERM
    cancels it as Ctrl-C does, and is a clean stop (the summary, exit status 0).
    Under systemd (``$NOTIFY_SOCKET``) it says READY=1, pings the watchdog and sends
    STATUS= lines (:mod:`firmware_agent.service_state`)."""
    from firmware_agent.contract.sdnotify import Notifier  # noqa: PLC0415
    from firmware_agent.service_state import run_service  # noqa: PLC0415

    task = asyncio.current_task()
    assert task is not None
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        with Notifier.from_environ() as notifier:
            await run_service(agent, notifier)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        log.info("SIGTERM: stopped")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
