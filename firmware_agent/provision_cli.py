"""``fleet-agent provision --enroll URL --token T``: the van's identity, from a one-time
enrollment token (:mod:`firmware_agent.provision`).

Exit status: 0 provisioned, or already provisioned with this token; 1 the enrollment
was refused or the service could not be reached, or a file could not be written; 2 a
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
    if not outcome.changed:
        print(
            f"already provisioned: {outcome.device_id}, certificate {outcome.serial} valid to "
            f"{until}, broker {outcome.broker}; nothing changed (--force or a new token to redo)"
        )
        return 0
    print(f"provisioned {outcome.device_id}: certificate {outcome.serial} valid to {until}")
    print(f"broker {outcome.broker}; settings {paths.config}; keys in {paths.tls_dir}")
    if outcome.owner is not None:
        print(f"keys owned by {outcome.owner}")
    elif os.geteuid() == 0:
        print(f"no user {args.owner!r}: the keys stay root's (create it, or --owner USER)")
    if outcome.revoked:
        print(f"the van's earlier certificate(s) revoked: {', '.join(outcome.revoked)}")
    return 0
