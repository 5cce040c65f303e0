"""``fleet-agent provision --enroll URL --token T``: the van's identity, from a one-time
enrollment token (:mod:`firmware_agent.provision`).

Then the receiver: with ``gnss.source = "serial"`` and ``gnss.receiver`` not ``"nmea"``,
a u-blox on ``gnss.port`` gets ``gnss.rate_hz`` and the automotive dynamic model over
UBX, saved to its flash (:func:`~firmware_agent.gnss.receiver_setup.configure_receiver`);
a receiver that does not speak UBX is left alone, a port with nothing on it yet is only
reported (wire it, then ``fleet-agent gnss configure``). ``--no-receiver`` skips this.

Exit status: 0 provisioned, or already provisioned with this token; 1 the enrollment
was refused or the service could not be reached, or a file could not be written, or
the u-blox refused its set-up (or ``gnss.receiver = "ublox"`` found none); 2 a
malformed token, URL or option.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from firmware_agent.settings import DEFAULT_CONFIG  # noqa: PLC0415

    p = sub.add_parser(
        "provision",
        help="enroll this van with a one-time token: keys, certificate, settings",
        description="Make the POD key (kept if present) and a new TLS key, send a CSR and "
        "the POD public key to ingest's enrollment endpoint with the token, and write the "
        "certificate, the fleet CA and the broker's address into the settings. Re-running "
        "with the same token is a no-op; a new token or --force provisions again.",
    )
    p.add_argument("--enroll", required=True, metavar="URL", help="ingest's API, https://...")
    p.add_argument("--token", required=True, help="from `fleet-ingest enroll-token`")
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the settings file to write (default %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where the POD key lives (default: the file's state_dir, else /var/lib/fleet-agent)",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="where the TLS key, certificate and CA go (default: tls/ beside --config)",
    )
    p.add_argument(
        "--owner",
        default="fleet",
        help="run as root: the user that gets the keys, when it exists (default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="provision again even if done")
    p.add_argument("--cafile", type=Path, help="trust this CA for the https:// URL")
    p.add_argument("--timeout-s", type=float, default=30.0, help="HTTP timeout (30)")
    p.add_argument(
        "--no-receiver",
        dest="receiver",
        action="store_false",
        help="do not set up the GNSS receiver (default: a u-blox on gnss.port is set up)",
    )
    p.set_defaults(func=cmd_provision)


def cmd_provision(args: argparse.Namespace) -> int:
    from firmware_agent.provision import (  # noqa: PLC0415
        Paths,
        ProvisionError,
        ProvisionUsageError,
        provision,
        read_settings_file,
        state_dir_of,
    )

    try:
        text, _ = read_settings_file(args.config)
        paths = Paths(
            config=args.config,
            state_dir=args.state_dir or state_dir_of(text),
            tls_dir=args.tls_dir or args.config.parent / "tls",
        )
        outcome = provision(
            args.enroll,
            args.token,
            paths,
            force=args.force,
            owner=args.owner,
            timeout_s=args.timeout_s,
            cafile=args.cafile,
        )
    except ProvisionUsageError as err:
        print(f"fleet-agent provision: {err}", file=sys.stderr)
        return 2
    except (ProvisionError, OSError) as err:
        print(f"fleet-agent provision: {err}", file=sys.stderr)
        if "already used" in str(err) or "expired" in str(err):
            print("ask for a new token: fleet-ingest enroll-token --device ID", file=sys.stderr)
        return 1
    until = outcome.not_after.strftime("%Y-%m-%d")
    receiver_ok = _set_up_receiver(paths.config) if args.receiver else True
    if not outcome.changed:
        print(
            f"already provisioned: {outcome.device_id}, certificate {outcome.serial} valid to "
            f"{until}, broker {outcome.broker}; nothing changed (--force or a new token to redo)"
        )
        return 0 if receiver_ok else 1
    print(f"provisioned {outcome.device_id}: certificate {outcome.serial} valid to {until}")
    print(f"broker {outcome.broker}; settings {paths.config}; keys in {paths.tls_dir}")
    if outcome.owner is not None:
        print(f"keys owned by {outcome.owner}")
    elif os.geteuid() == 0:
        print(f"no user {args.owner!r}: the keys stay root's (create it, or --owner USER)")
    if outcome.revoked:
        print(f"the van's earlier certificate(s) revoked: {', '.join(outcome.revoked)}")
    return 0 if receiver_ok else 1


def _set_up_receiver(config: Path) -> bool:
    """Set up the u-blox on the settings' ``gnss.port``, print what happened; False when
    it refused (or ``gnss.receiver = "ublox"`` found none there)."""
    import asyncio  # noqa: PLC0415 (imports on use: see firmware_agent/cli.py)

    from firmware_agent.errors import ConfigError  # noqa: PLC0415
    from firmware_agent.gnss.receiver_setup import configure_receiver  # noqa: PLC0415
    from firmware_agent.gnss.ubx import ReceiverSettings, Status  # noqa: PLC0415
    from firmware_agent.settings import load_settings  # noqa: PLC0415

    try:
        gnss = load_settings(config, os.environ).settings.gnss
    except ConfigError as err:
        print(f"fleet-agent provision: receiver not set up: {err}", file=sys.stderr)
        return False
    if gnss.source != "serial":
        print(f"receiver: not set up (gnss.source = {gnss.source!r})")
        return True
    if gnss.receiver == "nmea":
        print("receiver: not set up (gnss.receiver = 'nmea')")
        return True
    if not Path(gnss.port).exists():
        print(
            f"receiver: nothing at {gnss.port} yet; once it is wired: "
            f"fleet-agent gnss configure --port {gnss.port} --rate-hz {gnss.rate_hz:g}"
        )
        return gnss.receiver != "ublox"
    report = asyncio.run(
        configure_receiver(gnss.port, ReceiverSettings(rate_hz=gnss.rate_hz), baudrate=gnss.baud)
    )
    if report.status is Status.CONFIGURED and report.identity is not None:
        model = report.identity.model or report.identity.hardware
        saved = ", saved" if report.saved else ""
        print(f"receiver: u-blox {model} set to {report.rate_hz:g} Hz, automotive{saved}")
        return True
    why = "; ".join(report.problems) or report.status.value
    if report.status in (Status.NOT_UBLOX, Status.SILENT) and gnss.receiver == "auto":
        print(f"receiver: {gnss.port} is not a u-blox, left as it is ({why})")
        return True
    print(f"fleet-agent provision: receiver on {gnss.port}: {why}", file=sys.stderr)
    return False
