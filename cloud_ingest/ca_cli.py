"""``fleet-ingest ca ...`` and ``fleet-ingest enroll-token``: the fleet CA's commands.

- ``ca init [--ca-dir D] [--name CN] [--days N]``: create the CA (key 0600, never
  overwritten), an empty record and CRL.
- ``ca issue --service broker|ingest|backend|dispatcher [--name CN] [--dns NAME ...]
  [--ip ADDR ...] --out-dir DIR``: a new key and certificate for a service
  (``DIR/{CN}.key`` 0600, never overwritten, and ``DIR/{CN}.pem``).
- ``ca list [--json]``: every certificate issued, and whether it is valid.
- ``ca revoke (SERIAL | --device ID) [--reload-broker CMD]``: revoke, rewrite the CRL,
  make the broker re-read it, and disable the device in the registry (its messages
  are refused) when it has no valid certificate left.
- ``ca crl [--reload-broker CMD]``: rewrite the CRL (valid ``[ca] crl_days``).
- ``enroll-token (--device ID | --devices A..B | --devices-file FILE) [--expires 24h]
  [--json]``: one-time enrollment tokens, printed once, kept hashed.

The CA directory is ``--ca-dir``, else ``[ca] dir`` (:mod:`cloud_ingest.config`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_ingest.errors import ConfigError

if TYPE_CHECKING:
    from cloud_ingest.ca import FleetCa

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _error(message: str, code: int) -> int:
    print(f"fleet-ingest: {message}", file=sys.stderr)
    return code


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    cadir = argparse.ArgumentParser(add_help=False, parents=[common])
    cadir.add_argument("--ca-dir", type=Path, help="the CA directory (default: [ca] dir)")
    reload = argparse.ArgumentParser(add_help=False)
    reload.add_argument(
        "--reload-broker",
        metavar="CMD",
        help="run after the CRL is rewritten so the broker re-reads it (default: "
        "[ca] reload_command), e.g. 'systemctl reload mosquitto'",
    )

    ca = sub.add_parser("ca", help="the fleet CA: init, issue, list, revoke, crl")
    csub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    p = csub.add_parser("init", parents=[cadir], help="create the fleet CA (never overwritten)")
    p.add_argument("--name", default="fleet CA", help="the CA's common name")
    p.add_argument("--days", type=_days, default=3650, help="validity (3650)")
    p.set_defaults(func=_cmd_init)

    p = csub.add_parser("issue", parents=[cadir], help="a key and certificate for a service")
    p.add_argument(
        "--service", required=True, choices=["broker", "ingest", "backend", "dispatcher"]
    )
    p.add_argument("--name", help="the CN (default: the service; the broker's: its first name)")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="broker DNS name")
    p.add_argument("--ip", action="append", default=[], metavar="ADDR", help="broker IP address")
    p.add_argument("--days", type=_days, default=730, help="validity (730)")
    p.add_argument("--out-dir", type=Path, required=True, help="where {CN}.pem and .key go")
    p.set_defaults(func=_cmd_issue)

    p = csub.add_parser("list", parents=[cadir], help="every certificate issued")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_list)

    p = csub.add_parser("revoke", parents=[cadir, reload], help="revoke a certificate or a van's")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("serial", nargs="?", metavar="SERIAL", help="as `ca list` prints it")
    what.add_argument("--device", metavar="ID", help="every valid certificate of this van")
    p.set_defaults(func=_cmd_revoke)

    p = csub.add_parser("crl", parents=[cadir, reload], help="rewrite the CRL")
    p.add_argument(
        "--if-due",
        action="store_true",
        help="only when it is missing or past half its validity (what `serve` does itself)",
    )
    p.set_defaults(func=_cmd_crl)

    p = csub.add_parser(
        "install-crl",
        parents=[cadir],
        help="copy the CRL, checked, to the broker's crlfile (fleet-crl-sync.service)",
    )
    p.add_argument("--to", type=Path, required=True, metavar="FILE", help="the broker's crlfile")
    p.set_defaults(func=_cmd_install_crl)

    p = sub.add_parser(
        "enroll-token",
        parents=[cadir],
        help="one-time enrollment tokens for vans (fleet-agent provision --token)",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--device", metavar="ID", help="one van")
    who.add_argument("--devices", metavar="A..B", help="a range, e.g. van-0001..van-0020")
    who.add_argument("--devices-file", type=Path, metavar="FILE", help="one device id a line")
    p.add_argument("--expires", default="24h", help="lifetime: 30m, 24h, 7d (24h)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_enroll_token)


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 36500:
        raise argparse.ArgumentTypeError(f"must be 1..36500, got {value}")
    return value


def _settings(args: argparse.Namespace) -> Any:
    from cloud_ingest.cli import _config  # noqa: PLC0415

    return _config(args).ca


def _ca(args: argparse.Namespace) -> FleetCa:
    from cloud_ingest.ca import FleetCa  # noqa: PLC0415

    settings = _settings(args)
    directory = args.ca_dir or settings.dir
    if directory is None:
        raise ConfigError("no CA directory: give --ca-dir or set [ca] dir")
    return FleetCa(directory, crl_file=settings.crl_file, crl_days=settings.crl_days)


def _reload(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from cloud_ingest.enroll import reload_broker  # noqa: PLC0415

    command = args.reload_broker or _settings(args).reload_command
    if not command:
        print("no reload command: make the broker re-read the CRL (systemctl reload mosquitto)")
        return EXIT_OK
    problem = asyncio.run(reload_broker(command))
    if problem is not None:
        return _error(f"the CRL is written but the broker was not reloaded: {problem}", EXIT_FAILED)
    print(f"broker reloaded: {command}")
    return EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import CA_CERT, CA_KEY, init_ca, utcnow  # noqa: PLC0415

    ca = _ca(args)
    init_ca(
        ca.directory,
        now=utcnow(),
        name=args.name,
        days=args.days,
        crl_file=ca.crl_file,
        crl_days=ca.crl_days,
    )
    print(f"CA key: {ca.directory / CA_KEY} (0600: keep it on this host only)")
    print(f"CA certificate: {ca.directory / CA_CERT} (the broker's cafile; vans get it)")
    print(f"CRL: {ca.crl_file} (the broker's crlfile)")
    return EXIT_OK


def _cmd_issue(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    from cloud_ingest.ca import private_key_pem, utcnow  # noqa: PLC0415
    from firmware_agent.contract.keys import make_private_dirs, write_file_atomically  # noqa: PLC0415

    cn = args.name or (args.dns[0] if args.service == "broker" and args.dns else None)
    cn = cn or (args.ip[0] if args.service == "broker" and args.ip else args.service)
    key_path = args.out_dir / f"{cn}.key"
    if key_path.exists():
        return _error(f"{key_path} exists: a key is never overwritten", EXIT_FAILED)
    ca = _ca(args)
    cert, key = ca.issue_service(
        args.service, cn, now=utcnow(), days=args.days, dns=args.dns, ips=args.ip
    )
    make_private_dirs(args.out_dir)
    if not write_file_atomically(key_path, private_key_pem(key), overwrite=False):
        return _error(f"{key_path} exists: a key is never overwritten", EXIT_FAILED)
    cert_path = args.out_dir / f"{cn}.pem"
    write_file_atomically(cert_path, cert.public_bytes(Encoding.PEM), overwrite=True, mode=0o644)
    print(
        f"{args.service} {cn}: serial {cert.serial_number:x}, valid to {cert.not_valid_after_utc}"
    )
    print(f"certificate: {cert_path}\nkey: {key_path} (0600)")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import utcnow  # noqa: PLC0415

    now = utcnow()
    records = _ca(args).records()
    for r in records:
        state = "revoked" if r.revoked_at is not None else "valid" if r.valid_at(now) else "expired"
        if args.json:
            print(json.dumps({**r.to_json(), "state": state}))
        else:
            print(f"{r.serial_hex:40} {r.kind:10} {r.cn:24} {state:7} to {r.not_after:%Y-%m-%d}")
    if not records and not args.json:
        print("no certificates issued", file=sys.stderr)
    return EXIT_OK


def _cmd_revoke(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import CaError, parse_serial, utcnow  # noqa: PLC0415
    from cloud_ingest.cli import _with_store  # noqa: PLC0415

    try:
        serial = parse_serial(args.serial) if args.serial is not None else None
    except CaError as err:
        return _error(str(err), EXIT_USAGE)
    ca = _ca(args)
    now = utcnow()
    revoked = ca.revoke(now=now, serial=serial, device_id=args.device)
    for r in revoked:
        print(f"revoked {r.serial_hex} ({r.kind} {r.cn})")
    if not revoked:
        print("already revoked: nothing changed")
    print(f"CRL written: {ca.crl_file}")
    code = _reload(args)
    # A van without a valid certificate left is disabled: ingest refuses its messages
    # (they wait in its outbox) even from a broker that has not re-read the CRL.
    devices = {r.cn for r in revoked if r.kind == "device"}
    valid = {r.cn for r in ca.records() if r.kind == "device" and r.valid_at(now)}
    to_disable = sorted(devices - valid)
    if to_disable:

        async def disable(store: Any) -> list[str]:
            done = []
            for device in to_disable:
                if await store.get_device(device) is not None:
                    await store.set_enabled(device, False)
                    done.append(device)
            return done

        for device in _with_store(args, disable):
            print(f"device {device} disabled: ingest refuses its messages")
    return code


def _cmd_crl(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import utcnow  # noqa: PLC0415

    ca, now = _ca(args), utcnow()
    if args.if_due and not ca.crl_due(now=now):
        print(f"CRL {ca.crl_file} valid to {ca.crl_next_update():%Y-%m-%d}: not due")
        return 0
    path = ca.write_crl(now=now)
    print(f"CRL written: {path}, valid to {ca.crl_next_update():%Y-%m-%d}")
    return _reload(args)


def _cmd_install_crl(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import utcnow  # noqa: PLC0415
    from firmware_agent.contract.keys import write_file_atomically  # noqa: PLC0415

    data = _ca(args).checked_crl(now=utcnow())
    target: Path = args.to
    target.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all (a broker reading half a CRL refuses everyone); world-readable
    # like any CRL: Mosquitto reads it after dropping root.
    write_file_atomically(target, data, overwrite=True, mode=0o644)
    print(f"CRL installed: {target}")
    return 0


def _cmd_enroll_token(args: argparse.Namespace) -> int:
    from cloud_ingest.ca import utcnow  # noqa: PLC0415
    from cloud_ingest.enroll import TokenBook, parse_duration_s  # noqa: PLC0415

    try:
        expires_s = parse_duration_s(args.expires)
        devices = _token_devices(args)
    except ValueError as err:
        return _error(str(err), EXIT_USAGE)
    except OSError as err:
        return _error(f"cannot read {args.devices_file}: {err.strerror or err}", EXIT_USAGE)
    devices = list(dict.fromkeys(devices))
    ca = _ca(args)
    if not ca.exists():
        return _error(f"no fleet CA in {ca.directory}: run `fleet-ingest ca init`", EXIT_FAILED)
    for t in TokenBook(ca).create(devices, now=utcnow(), expires_s=expires_s):
        expires = t.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if args.json:
            print(json.dumps({"device_id": t.device_id, "token": t.token, "expires_at": expires}))
        else:
            print(f"{t.device_id} {t.token} expires {expires}")
    print(
        f"{len(devices)} token(s), shown once: each enrolls its van once "
        "(fleet-agent provision --enroll URL --token TOKEN)",
        file=sys.stderr,
    )
    return EXIT_OK


def _token_devices(args: argparse.Namespace) -> list[str]:
    """The device ids of ``enroll-token``'s --device, --devices or --devices-file."""
    from cloud_ingest.enroll import expand_devices  # noqa: PLC0415
    from cloud_ingest.store.base import is_device_id  # noqa: PLC0415

    if args.device is not None:
        if not is_device_id(args.device):
            raise ValueError(f"invalid device id {args.device!r}")
        return [args.device]
    if args.devices is not None:
        return expand_devices(args.devices)
    devices: list[str] = []
    for line in args.devices_file.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            devices += expand_devices(line.strip())
    if not devices:
        raise ValueError(f"{args.devices_file} names no device")
    return devices
