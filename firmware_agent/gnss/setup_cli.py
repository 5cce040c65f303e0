"""``fleet-agent gnss configure`` and ``fleet-agent gnss probe``: a u-blox over UBX.

    fleet-agent gnss configure --port /dev/fleet/gnss --rate-hz 5 --dynamic-model automotive
    fleet-agent gnss configure --port /dev/fleet/gnss --dry-run      # probe, show the plan
    fleet-agent gnss probe --port /dev/fleet/gnss --json

Exit status: 0 when the receiver is configured (or probed, or planned) as asked, and
also when it is not a u-blox (said on stderr: nothing to do, set it up by hand); 1 when
a setting was refused or unanswered, the receiver is silent or the port will not open;
2 for a usage error. Stop ``fleet-agent run`` first: the port is opened exclusively.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_agent.gnss.ubx import ReceiverReport

# asyncio, pyserial and pyubx2 are imported by the commands, not when the parser is
# built: every fleet-agent command builds it (see firmware_agent.cli._cmd_watch).


def register(gnss: Any) -> None:
    """Add ``configure`` and ``probe`` to ``fleet-agent gnss``'s sub-commands."""

    def port_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", required=True, help="serial device, e.g. /dev/fleet/gnss")
        p.add_argument("--baud", type=int, default=9600, help="(default %(default)s)")
        p.add_argument(
            "--timeout-s",
            type=float,
            default=1.0,
            help="wait this long for each answer (default %(default)s)",
        )
        p.add_argument("--json", action="store_true", help="the report as one JSON object")

    cfg = gnss.add_parser(
        "configure",
        help="set a u-blox receiver's rate and dynamic model over UBX",
        description="Set a u-blox receiver's navigation rate, dynamic platform model and "
        "NMEA output (RMC, GGA, GSA, VTG), save them to its non-volatile memory, and read "
        "them back. M8 and older: UBX-CFG-RATE/NAV5/MSG/CFG; M9/M10: UBX-CFG-VALSET.",
    )
    port_options(cfg)
    cfg.add_argument("--rate-hz", type=float, default=1.0, help="(default %(default)s)")
    cfg.add_argument(
        "--dynamic-model",
        default="automotive",
        help="portable, stationary, pedestrian, automotive, sea, airborne1g/2g/4g, wrist "
        "(default %(default)s)",
    )
    cfg.add_argument(
        "--save",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save to battery-backed RAM and flash (default: save)",
    )
    cfg.add_argument(
        "--dry-run", action="store_true", help="identify and read only; print what would be sent"
    )
    cfg.set_defaults(func=_cmd_configure)

    probe = gnss.add_parser(
        "probe", help="identify a u-blox receiver and read its rate and dynamic model"
    )
    port_options(probe)
    probe.set_defaults(func=_cmd_probe)


def _cmd_configure(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 (see the imports)

    from firmware_agent.errors import ConfigError  # noqa: PLC0415
    from firmware_agent.gnss.receiver_setup import (  # noqa: PLC0415
        configure_receiver,
        probe_receiver,
    )
    from firmware_agent.gnss.ubx import ReceiverSettings, setup_steps  # noqa: PLC0415

    try:
        settings = ReceiverSettings(
            rate_hz=args.rate_hz, dynamic_model=args.dynamic_model, save=args.save
        )
    except ConfigError as err:
        print(f"fleet-agent: {err}", file=sys.stderr)
        return 2
    if args.baud <= 0 or args.timeout_s <= 0:
        print("fleet-agent: --baud and --timeout-s must be > 0", file=sys.stderr)
        return 2
    if args.dry_run:
        report = asyncio.run(
            probe_receiver(args.port, baudrate=args.baud, timeout_s=args.timeout_s)
        )
        plan = []
        if report.identity is not None:
            plan = [
                {"name": step.name, "frame": step.frame.hex()}
                for step in setup_steps(report.identity.generation, settings)
            ]
        return _finish(args, report, {"dry_run": True, "would_send": plan})
    report = asyncio.run(
        configure_receiver(args.port, settings, baudrate=args.baud, timeout_s=args.timeout_s)
    )
    return _finish(args, report, {})


def _cmd_probe(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415 (see the imports)

    from firmware_agent.gnss.receiver_setup import probe_receiver  # noqa: PLC0415

    if args.baud <= 0 or args.timeout_s <= 0:
        print("fleet-agent: --baud and --timeout-s must be > 0", file=sys.stderr)
        return 2
    report = asyncio.run(probe_receiver(args.port, baudrate=args.baud, timeout_s=args.timeout_s))
    return _finish(args, report, {})


def _finish(args: argparse.Namespace, report: ReceiverReport, extra: dict[str, Any]) -> int:
    from firmware_agent.gnss.ubx import Status  # noqa: PLC0415

    if args.json:
        print(json.dumps(report.to_json_dict() | extra))
    else:
        print(_text(report))
        for step in extra.get("would_send", []):
            print(f"  would send {step['name']}: {step['frame']}")
    if report.status is Status.NOT_UBLOX:
        print(f"fleet-agent: {report.port}: {report.problems[0]}", file=sys.stderr)
        return 0
    return 0 if report.ok else 1


def _text(report: ReceiverReport) -> str:
    lines = [f"{report.port}: {report.status.value}"]
    if (identity := report.identity) is not None:
        lines.append(
            f"  receiver: {identity.model or 'u-blox'} firmware {identity.firmware} "
            f"(protocol {identity.protocol_version}, {identity.generation.value})"
        )
        lines.append(
            f"  rate: {report.rate_hz} Hz, dynamic model: {report.dynamic_model}, "
            f"saved: {'yes' if report.saved else 'no'}"
        )
    lines += [f"  {s.name}: {s.outcome}" for s in report.steps]
    lines += [f"  problem: {p}" for p in report.problems]
    return "\n".join(lines)
