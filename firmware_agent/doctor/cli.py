"""``fleet-agent doctor``: run every check, print a table (or ``--json``), exit 0 when
nothing failed, 1 when a check failed, 2 on bad usage or settings.

It takes the settings ``fleet-agent run`` takes (the same file, variables and flags),
so it checks what the service would use. The probes run side by side, each within
``--timeout-s``; the receiver is read for ``--gnss-listen-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from firmware_agent.errors import ConfigError

if TYPE_CHECKING:
    from firmware_agent.agent_config import AgentConfig
    from firmware_agent.doctor.checks import Check
    from firmware_agent.doctor.probes import StateDirReport
    from firmware_agent.service_state import ServiceState
    from firmware_agent.settings import GnssSettings

SERVICE_USER = "fleet"
# The device id the probes run under on a van not provisioned yet.
UNPROVISIONED = "unprovisioned"
# A u-blox answers a poll within a few hundred ms even while it talks at 10 Hz.
UBX_ANSWER_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from firmware_agent.run_cli import _settings_arguments  # noqa: PLC0415

    p = sub.add_parser(
        "doctor",
        help="check this van: receiver, scanners, GPIO, broker, ingest acks, disk, keys, ETA",
        description=__doc__.split("\n\n")[0].removeprefix("``fleet-agent doctor``: "),
    )
    _settings_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    p.add_argument(
        "--timeout-s", type=_positive, default=10.0, help="per probe (default %(default)s)"
    )
    p.add_argument(
        "--gnss-listen-s",
        type=_positive,
        default=3.0,
        help="how long to read the receiver (default %(default)s)",
    )
    p.set_defaults(func=cmd_doctor)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _service_uid() -> int:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return os.getuid()


async def _gnss(
    config: AgentConfig,
    listen_s: float,
    timeout_s: float,
    running: ServiceState | None,
    wanted: GnssSettings,
) -> list[Check]:
    from firmware_agent.doctor import checks, probes  # noqa: PLC0415
    from firmware_agent.gnss.reader import ReaderConfig  # noqa: PLC0415

    gnss = config.gnss
    if not isinstance(gnss, ReaderConfig):
        what = "an NMEA file" if gnss is None else gnss.describe()
        return [checks.warned("gnss.port", f"no serial receiver: input is {what}", "")]
    if running is not None:
        r = running
        return checks.gnss_from_agent(gnss.port, r.fix_mode, r.sats_used, r.fix_age_s)
    try:
        async with asyncio.timeout(listen_s + timeout_s):
            obs = await probes.read_gnss(gnss.port, gnss.baudrate, listen_s)
    except TimeoutError:
        obs = checks.GnssObservation(gnss.port, exists=True, open_error="timed out")
    found = checks.gnss_checks(obs, datetime.now(UTC))
    if wanted.receiver != "nmea" and obs.exists and obs.open_error is None:
        # After the NMEA read: the port is opened by one at a time. Harmless: MON-VER
        # and the read-back polls change nothing on the receiver.
        from firmware_agent.gnss.receiver_setup import probe_receiver  # noqa: PLC0415

        report = await probe_receiver(
            gnss.port, baudrate=gnss.baudrate, timeout_s=min(timeout_s, UBX_ANSWER_S)
        )
        found.append(checks.receiver_check(report, wanted.receiver, wanted.rate_hz))
    return found


async def _devices(config: AgentConfig, running: bool) -> list[Check]:
    """Scanners and GPIO opened and released; while the agent runs (it holds them
    exclusively) only their presence is checked."""
    from firmware_agent.doctor import checks, probes  # noqa: PLC0415
    from firmware_agent.sources import HidScan, SerialScan  # noqa: PLC0415

    out = []
    for n, scanner in enumerate(config.scanners):
        name = f"scanner.{n}"
        device = (
            scanner.config.port
            if isinstance(scanner, SerialScan)
            else scanner.device
            if isinstance(scanner, HidScan)
            else None
        )
        if running and device is not None:
            present = await asyncio.to_thread(os.path.exists, device)
            out.append(
                checks.device_check(
                    name,
                    f"{device} (held by the running agent)",
                    None if present else "does not exist",
                    "plugged in? hw/udev rules?",
                )
            )
        elif isinstance(scanner, SerialScan):
            error = await asyncio.to_thread(
                probes.open_serial_device, scanner.config.port, scanner.config.baudrate
            )
            out.append(
                checks.device_check(
                    name,
                    f"serial scanner {scanner.config.port}",
                    error,
                    "plugged in? hw/udev rule for /dev/fleet/scanner? dialout group?",
                )
            )
        elif isinstance(scanner, HidScan) and not scanner.event_stream:
            error = await asyncio.to_thread(probes.open_hid_device, scanner.device)
            out.append(
                checks.device_check(
                    name,
                    f"HID scanner {scanner.device}",
                    error,
                    "plugged in? hw/udev rule for /dev/fleet/scanner-hid? input group?",
                )
            )
        else:
            out.append(checks.passed(name, f"{scanner.describe()} (no device)"))
    if not config.scanners:
        out.append(checks.warned("scanner", "no scanner configured", "add [[scanners]]"))
    fb = config.feedback
    if fb.kind == "gpio" and running:
        out.append(checks.passed("feedback", "GPIO held by the running agent (not reopened)"))
    elif fb.kind == "gpio":
        error = await asyncio.to_thread(probes.open_gpio, fb.pins, fb.buzzer_muted)
        out.append(
            checks.device_check(
                "feedback",
                f"GPIO LEDs/buzzer (green {fb.pins.green_led}, red {fb.pins.red_led}, "
                f"buzzer {fb.pins.buzzer})",
                error,
                "wiring and pin numbers (feedback.*); gpio group; lgpio installed?",
            )
        )
    else:
        out.append(checks.passed("feedback", f"feedback.kind = {fb.kind} (no GPIO used)"))
    return out


async def _broker(
    config: AgentConfig, timeout_s: float, running: ServiceState | None
) -> list[Check]:
    from firmware_agent.doctor import checks, probes  # noqa: PLC0415

    u = config.uplink
    if running is not None:
        return checks.broker_from_agent(running.connected, f"{u.host}:{u.port}", u.tls is not None)
    probe = await probes.probe_broker(
        host=u.host, port=u.port, tls=u.tls, device_id=u.device_id, timeout_s=timeout_s
    )
    return checks.broker_checks(probe)


async def _state(config: AgentConfig, report: StateDirReport) -> list[Check]:
    from firmware_agent.doctor import checks, probes  # noqa: PLC0415

    state = report.service_state
    out = [
        checks.ack_check(
            state.at if state else None,
            state.last_ack_at if state else None,
            state.pending if state else None,
            datetime.now(UTC),
            report.service_state_error,
        ),
        checks.outbox_check(
            report.outbox_used_bytes, config.outbox_budget_bytes, report.outbox_error
        ),
        checks.disk_check(config.state_dir, report.free_bytes),
    ]
    keys = [probes.stat_key("device", config.state_dir / "device.key", required=False)]
    if config.uplink.tls is not None and config.uplink.tls.key_file is not None:
        keys.append(probes.stat_key("tls", config.uplink.tls.key_file))
    out += checks.key_checks(keys, _service_uid())
    return out


async def _eta(config: AgentConfig) -> list[Check]:
    from firmware_agent.doctor import checks  # noqa: PLC0415
    from firmware_agent.eta.manager import load_eta_predictor  # noqa: PLC0415

    if not config.eta:
        return [checks.eta_check(False, None, None, None)]
    predictor = await asyncio.to_thread(load_eta_predictor, config.eta_model)
    return [
        checks.eta_check(True, predictor.model_version, predictor.backend, predictor.unavailable)
    ]


async def _bounded(
    name: str, coro: Coroutine[Any, Any, list[Check]], timeout_s: float
) -> list[Check]:
    from firmware_agent.doctor import checks  # noqa: PLC0415

    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        return [checks.failed(name, f"no answer in {timeout_s:g} s", "run doctor -v for details")]


async def run_checks(
    config: AgentConfig,
    source: str,
    timeout_s: float,
    listen_s: float,
    gnss_settings: GnssSettings | None = None,
) -> list[Check]:
    """Every check for ``config``: the state directory first (is the agent running?),
    then the probes side by side. ``gnss_settings``: what the receiver's own set-up
    is checked against (gnss.receiver, gnss.rate_hz; the defaults when None)."""
    from firmware_agent.doctor import checks, probes  # noqa: PLC0415
    from firmware_agent.settings import GnssSettings  # noqa: PLC0415

    async with asyncio.timeout(timeout_s):
        report = await asyncio.to_thread(probes.read_state_dir, config.state_dir)
    state = report.service_state
    running = (
        state
        if state and state.process_alive and checks.agent_running(state.at, datetime.now(UTC))
        else None
    )
    results = await asyncio.gather(
        _bounded(
            "gnss",
            _gnss(config, listen_s, timeout_s, running, gnss_settings or GnssSettings()),
            # The NMEA read, then the UBX probe: two MON-VER polls, two read-backs.
            listen_s + 2 * timeout_s + 5 * min(timeout_s, UBX_ANSWER_S),
        ),
        _bounded("devices", _devices(config, running is not None), timeout_s),
        _bounded("broker.connect", _broker(config, timeout_s, running), timeout_s + 1),
        _state(config, report),
        _bounded("eta", _eta(config), timeout_s),
    )
    return [checks.config_check(source, None)] + [c for group in results for c in group]


def cmd_doctor(args: argparse.Namespace) -> int:
    from firmware_agent.doctor import checks  # noqa: PLC0415
    from firmware_agent.run_cli import build_config, settings  # noqa: PLC0415

    if not args.verbose:
        # The probes' libraries log what the table says already.
        logging.getLogger().setLevel(logging.ERROR)
    unprovisioned = False
    try:
        loaded = settings(args)
        if loaded.settings.device_id is None:
            # Not provisioned yet: the installer checks the wiring before enrolling, so
            # every probe runs anyway (under a placeholder name), and the report fails
            # on the missing identity.
            unprovisioned = True
            args.device_id = UNPROVISIONED
            loaded = settings(args)
        config = build_config(args, loaded)
    except ConfigError as err:
        report = [checks.config_check("", str(err))]
        if args.json:
            sys.stdout.write(checks.render_json(report))
        print(f"fleet-agent doctor: {err}", file=sys.stderr)
        return 2
    source = str(loaded.file) if loaded.file else "defaults, FLEET_* and flags"
    results = asyncio.run(
        run_checks(config, source, args.timeout_s, args.gnss_listen_s, loaded.settings.gnss)
    )
    if unprovisioned:
        results.insert(
            1,
            checks.failed(
                "identity",
                "no device_id: this van is not provisioned",
                "fleet-agent provision --enroll URL --token TOKEN (from fleet-ingest enroll-token)",
            ),
        )
    extra = {"device_id": None if unprovisioned else config.uplink.device_id}
    out = checks.render_json(results, extra) if args.json else checks.render_table(results)
    sys.stdout.write(out)
    return checks.exit_code(results)
