"""``fleet-ingest``: the cloud ingest service's command line.

- ``fleet-ingest serve``: the service, MQTT workers and HTTP API, until SIGTERM/SIGINT.
- ``fleet-ingest migrate``: create or upgrade the database schema.
- ``fleet-ingest device add ID --pubkey FILE [--replace-key] [--disabled]``: enroll a
  van with the public key it printed (``fleet-agent pod pubkey --key ...``; PEM or JWK).
- ``fleet-ingest device enable ID`` / ``device disable ID`` / ``device list [--json]``.
- ``fleet-ingest config``: the effective settings, as JSON.
- ``fleet-ingest ca init|issue|list|revoke|crl`` and ``fleet-ingest enroll-token``: the
  fleet CA and the vans' one-time enrollment tokens (:mod:`cloud_ingest.ca_cli`).
- ``fleet-ingest token create --scope S [--scope S ...] --name NAME [--expires 90d]``:
  an API token for the HTTP API, printed once (stdout holds the token alone);
  ``token list [--json]`` (never the secrets), ``token revoke ID``.
- ``fleet-ingest train-eta --out FILE [--days DIR ...] [--from-store]``: build the ETA
  training set from day directories (``fleet-sim eta-days`` writes them) and/or the
  stored history, train the model and write the .tflite file the vans run (docs/eta.md).
- ``fleet-ingest model-key --out FILE [--pubkey-out FILE]``: create the fleet's
  Ed25519 key that signs ETA models (0600, never overwritten) and its public key for
  the vans (``[eta] model_keys``).
- ``fleet-ingest sign-model --key KEY --model M.tflite --out M.signed [--device ID
  ...]``: the signed ``model`` payload (:mod:`firmware_agent.contract.model`).
- ``fleet-ingest publish-model (--signed FILE | --clear) (--device ID ... | --all)``:
  publish it retained on each van's ``fleet/v1/{id}/model`` (``--all``: every enabled
  enrolled device), or clear it (the vans go back to their shipped model).
- ``fleet-ingest publish-manifest --manifest FILE [--gzip | --no-gzip] [--dry-run]``:
  check a day's manifest as the van will (its parser, its device) and that its payload
  fits the broker (:data:`~firmware_agent.contract.manifest.MAX_MANIFEST_PAYLOAD_BYTES`,
  gzip-compressed when the JSON alone does not), then publish it retained on
  ``fleet/v1/{its device_id}/manifest``.

Every command but ``model-key`` and ``sign-model`` takes ``--config FILE`` (TOML; see
:mod:`cloud_ingest.config`) and ``--database-url URL`` (over the file and
``FLEET_INGEST_DATABASE_URL``).

Exit status: 0 success; 1 the command failed (unknown device, key conflict, database
unreachable, a task of the service died, no training data, the broker refused or
cannot be reached); 2 bad usage, settings, key or model file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cloud_ingest import __version__
from cloud_ingest.errors import ConfigError, IngestError

# pydantic, the stores and the HTTP stack load only for the command that needs them.
if TYPE_CHECKING:
    from cloud_ingest.config import IngestConfig

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# docs/mosquitto/fleet.conf's message_size_limit: a larger signed model is refused by
# a broker run with the shipped settings.
BROKER_MESSAGE_LIMIT_BYTES = 1024 * 1024

log = logging.getLogger("cloud_ingest")


def _error(message: str, code: int) -> int:
    print(f"fleet-ingest: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        help="TOML settings (default: $FLEET_INGEST_CONFIG, else /etc/fleet-ingest/ingest.toml "
        "when it exists)",
    )
    common.add_argument(
        "--database-url",
        help="sqlite:///PATH or postgresql://host/db (overrides the file and environment)",
    )
    parser = argparse.ArgumentParser(
        prog="fleet-ingest",
        description="Cloud ingest for the fleet gateway: MQTT workers, storage, HTTP API.",
    )
    parser.add_argument("--version", action="version", version=f"fleet-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve", parents=[common], help="run the MQTT workers and the HTTP API until stopped"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("config", parents=[common], help="print the effective settings as JSON")
    p.set_defaults(func=_cmd_config)

    device = sub.add_parser("device", help="enroll, enable, disable and list devices")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    p = dsub.add_parser(
        "add", parents=[common], help="enroll a device with its public key (idempotent)"
    )
    p.add_argument("device_id", metavar="ID")
    p.add_argument(
        "--pubkey",
        required=True,
        type=Path,
        help="the van's public key: PEM or JWK, as `fleet-agent pod pubkey` prints it",
    )
    p.add_argument(
        "--replace-key",
        action="store_true",
        help="accept a new key for an enrolled device (it was re-provisioned)",
    )
    p.add_argument("--disabled", action="store_true", help="enroll it disabled (its messages wait)")
    p.set_defaults(func=_cmd_device_add)
    for action, help_text in (
        ("enable", "accept the device's messages"),
        ("disable", "refuse the device's messages (they wait in its outbox)"),
    ):
        p = dsub.add_parser(action, parents=[common], help=help_text)
        p.add_argument("device_id", metavar="ID")
        p.set_defaults(func=_cmd_device_enable, enabled=action == "enable")
    p = dsub.add_parser("list", parents=[common], help="list enrolled devices")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_device_list)

    token = sub.add_parser(
        "token",
        help="create, list and revoke the HTTP API's scoped tokens",
        description="API tokens for the HTTP API (docs/ingest.md, 'Who may call the API'). "
        "Scopes: read (every GET), admin (enroll, re-key, enable, disable devices), "
        "dispatch, enroll. Each grants exactly its endpoints; none implies another.",
    )
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = tsub.add_parser(
        "create",
        parents=[common],
        help="create a token and print it once (stdout: the token alone)",
    )
    p.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="read, dispatch, admin or enroll (repeat for several)",
    )
    p.add_argument("--name", required=True, help="who or what holds it (shown by token list)")
    p.add_argument("--expires", metavar="DURATION", help="e.g. 90d, 24h, 30m (default: never)")
    p.set_defaults(func=_cmd_token_create)
    p = tsub.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_token_list)
    p = tsub.add_parser("revoke", parents=[common], help="revoke a token at once (by its id)")
    p.add_argument("token_id", metavar="ID", help="the id token list shows")
    p.set_defaults(func=_cmd_token_revoke)

    p = sub.add_parser(
        "train-eta",
        parents=[common],
        help="train the ETA model on days the simulator wrote and/or the stored history",
        description="Build ETA training rows from day directories (--days: what "
        "`fleet-sim eta-days` writes, simulated days and real trips) and/or the configured "
        "database's history (--from-store), train the MLP with numpy and write the .tflite "
        "file the vans run. See docs/eta.md.",
    )
    p.add_argument("--out", type=Path, required=True, help="the .tflite file to write")
    p.add_argument(
        "--days",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="day directories, or directories of them (fleet-sim eta-days --out)",
    )
    p.add_argument(
        "--from-store",
        action="store_true",
        help="also learn from the configured database's arrivals and tracks",
    )
    p.add_argument("--model-version", help="the model's name (default eta-YYYYMMDD-<weights hash>)")
    p.add_argument("--epochs", type=_positive_int, default=60, help="at most this many epochs (60)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and minibatch order (0)")
    p.add_argument("--record", type=Path, help="also write the training record (JSON) to this file")
    p.set_defaults(func=_cmd_train_eta)

    p = sub.add_parser(
        "model-key",
        help="create the fleet's Ed25519 key that signs ETA models",
        description="Create the private key (PEM, 0600; never overwritten) that signs the "
        "ETA models sent to vans, and write its public key for the vans' [eta] model_keys.",
    )
    p.add_argument("--out", type=Path, required=True, help="the private key file to create")
    p.add_argument(
        "--pubkey-out", type=Path, help="the public key file (default: OUT with .pub.pem)"
    )
    p.set_defaults(func=_cmd_model_key)

    p = sub.add_parser(
        "sign-model",
        help="sign an ETA model (.tflite) for the vans' model topic",
        description="Write the model topic's payload: a JWS (signed with the fleet's model "
        "key) naming the model's version, size and SHA-256, a newline, then the model.",
    )
    p.add_argument("--key", type=Path, required=True, help="the fleet's model key (model-key)")
    p.add_argument("--model", type=Path, required=True, help="the .tflite file (train-eta)")
    p.add_argument("--out", type=Path, required=True, help="the signed payload to write")
    p.add_argument(
        "--device",
        dest="devices",
        action="append",
        metavar="ID",
        help="only for this van (repeat for several; default: every van)",
    )
    p.set_defaults(func=_cmd_sign_model)

    p = sub.add_parser(
        "publish-model",
        parents=[common],
        help="publish a signed ETA model to vans (retained), or clear it",
        description="Publish retained at QoS 1 on fleet/v1/{ID}/model, with the MQTT "
        "settings of --config (on a broker with the shipped ACLs, the dispatcher's "
        "certificate). --clear deletes the retained model: the vans go back to their own.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--signed", type=Path, metavar="FILE", help="the sign-model output")
    what.add_argument("--clear", action="store_true", help="clear the retained model")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--device", dest="devices", action="append", metavar="ID", help="a van (repeatable)"
    )
    who.add_argument("--all", action="store_true", help="every enabled enrolled device")
    p.set_defaults(func=_cmd_publish_model)

    p = sub.add_parser(
        "publish-manifest",
        parents=[common],
        help="publish a day's manifest to its van (retained), checked first",
        description="Check the manifest as the van will (the van's own parser; exit 2 if "
        "the van would refuse it) and that its payload fits the broker (at most "
        "1,000,000 bytes as sent), then publish it retained at QoS 1 on "
        "fleet/v1/{its device_id}/manifest with the MQTT settings of --config (on a "
        "broker with the shipped ACLs, the dispatcher's certificate). Sent as compact "
        "JSON, gzip-compressed when that alone is over the limit.",
    )
    p.add_argument("--manifest", type=Path, required=True, help="the manifest (JSON, or gzip)")
    p.add_argument("--device", metavar="ID", help="the van it must be for (default: its device_id)")
    gz = p.add_mutually_exclusive_group()
    gz.add_argument(
        "--gzip",
        dest="compress",
        action="store_const",
        const=True,
        help="always gzip (agents before the gzip form refuse it)",
    )
    gz.add_argument(
        "--no-gzip", dest="compress", action="store_const", const=False, help="never gzip"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check and size the payload, publish nothing"
    )
    p.set_defaults(func=_cmd_publish_manifest, compress=None)

    from cloud_ingest import ca_cli  # noqa: PLC0415 (the CA's commands: their own module)

    ca_cli.register(sub, common)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _config(args: argparse.Namespace) -> IngestConfig:
    from cloud_ingest.config import load_config  # noqa: PLC0415 (fast --help)

    overrides: dict[tuple[str, ...], object] = {}
    if args.database_url is not None:
        overrides["database", "url"] = args.database_url
    return load_config(args.config, overrides=overrides)


def _with_store(args: argparse.Namespace, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``action(store)`` on the configured database, opened and migrated."""
    from cloud_ingest.service import open_store  # noqa: PLC0415

    url = _config(args).database.url

    async def main() -> T:
        async with open_store(url) as store:
            return await action(store)

    return asyncio.run(main())


def _cmd_serve(args: argparse.Namespace) -> int:
    from cloud_ingest.service import serve  # noqa: PLC0415

    logging.basicConfig(
        level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    config = _config(args)
    try:
        asyncio.run(serve(config))
    except ExceptionGroup as group:
        # A task died: the whole story in the log, the first cause on the last line.
        log.exception("fleet-ingest: a task failed")
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        return _error(f"stopped: {type(first).__name__}: {first}", EXIT_FAILED)
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from cloud_ingest.service import make_store  # noqa: PLC0415

    config = _config(args)

    async def main() -> list[int]:
        async with make_store(config.database.url) as store:
            return await store.migrate()

    applied = asyncio.run(main())
    where = config.database.describe()
    if applied:
        print(f"{where}: applied migration(s) {', '.join(map(str, applied))}")
    else:
        print(f"{where}: schema up to date")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_config(args).model_dump(mode="json"), indent=2))
    return EXIT_OK


def _device_json(device: Any) -> dict[str, Any]:
    """A device as the API shows it (GET /v1/devices/{id}), less the PEM."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    from firmware_agent.contract.keys import key_thumbprint, public_jwk  # noqa: PLC0415
    from firmware_agent.contract.times import format_utc  # noqa: PLC0415

    key = Ed25519PublicKey.from_public_bytes(device.public_key)
    return {
        "device_id": device.device_id,
        "enabled": device.enabled,
        "registered_at": format_utc(device.registered_at),
        "kid": key_thumbprint(key),
        "public_jwk": public_jwk(key),
    }


def _describe(device: Any) -> str:
    d = _device_json(device)
    state = "enabled" if d["enabled"] else "disabled"
    return f"{d['device_id']} {state} kid {d['kid']} registered {d['registered_at']}"


def _cmd_device_add(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from cloud_ingest.store.base import is_device_id  # noqa: PLC0415
    from firmware_agent.contract.keys import KeyFileError, load_public_key  # noqa: PLC0415

    if not is_device_id(args.device_id):
        return _error(
            f"invalid device id {args.device_id!r}: 1 to 64 of A-Z a-z 0-9 _ . - "
            "(not starting with _ . -)",
            EXIT_USAGE,
        )
    try:
        key = load_public_key(args.pubkey).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    except KeyFileError as err:
        return _error(str(err), EXIT_USAGE)

    async def add(store: Any) -> tuple[Any, bool]:
        existing = await store.get_device(args.device_id)
        enabled = not args.disabled if existing is None or args.disabled else existing.enabled
        device = await store.register_device(
            args.device_id, key, enabled=enabled, replace_key=args.replace_key
        )
        return device, existing is None

    device, created = _with_store(args, add)
    print(f"{'enrolled' if created else 'already enrolled'}: {_describe(device)}")
    return EXIT_OK


def _cmd_device_enable(args: argparse.Namespace) -> int:
    device = _with_store(args, lambda store: store.set_enabled(args.device_id, args.enabled))
    print(_describe(device))
    return EXIT_OK


def _cmd_device_list(args: argparse.Namespace) -> int:
    devices = _with_store(args, lambda store: store.list_devices())
    for device in devices:
        print(json.dumps(_device_json(device)) if args.json else _describe(device))
    if not devices and not args.json:
        print("no devices enrolled", file=sys.stderr)
    return EXIT_OK


def _token_json(token: Any, now: Any) -> dict[str, Any]:
    from cloud_ingest.apitokens import scopes_text  # noqa: PLC0415
    from firmware_agent.contract.times import format_utc  # noqa: PLC0415

    def at(t: Any) -> str | None:
        return None if t is None else format_utc(t)

    return {
        "id": token.id,
        "name": token.name,
        "scopes": scopes_text(token.scopes).split(),
        "state": token.state(now),
        "created_at": format_utc(token.created_at),
        "expires_at": at(token.expires_at),
        "revoked_at": at(token.revoked_at),
        "last_used_at": at(token.last_used_at),
    }


def _describe_token(token: Any, now: Any) -> str:
    t = _token_json(token, now)
    parts = [t["id"], t["state"], " ".join(t["scopes"]), repr(t["name"])]
    parts.append(f"created {t['created_at']}")
    for key in ("expires_at", "revoked_at", "last_used_at"):
        if t[key] is not None:
            parts.append(f"{key.removesuffix('_at').replace('_', ' ')} {t[key]}")
    return " ".join(parts)


def _cmd_token_create(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    from cloud_ingest.apitokens import new_token, parse_duration, parse_scopes  # noqa: PLC0415

    try:
        scopes = parse_scopes(args.scopes)
        expires = None if args.expires is None else parse_duration(args.expires)
        now = datetime.now(UTC)
        secret, row = new_token(args.name, scopes, now=now, expires_in=expires)
    except ValueError as err:
        return _error(str(err), EXIT_USAGE)
    _with_store(args, lambda store: store.add_api_token(row))
    print(f"created: {_describe_token(row, now)}", file=sys.stderr)
    print("the token (shown this once; send it as Authorization: Bearer <token>):", file=sys.stderr)
    print(secret)
    return EXIT_OK


def _cmd_token_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    tokens = _with_store(args, lambda store: store.list_api_tokens())
    now = datetime.now(UTC)
    for token in tokens:
        print(json.dumps(_token_json(token, now)) if args.json else _describe_token(token, now))
    if not tokens and not args.json:
        print("no API tokens", file=sys.stderr)
    return EXIT_OK


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    now = datetime.now(UTC)
    token = _with_store(args, lambda store: store.revoke_api_token(args.token_id, now))
    print(f"revoked: {_describe_token(token, now)}")
    return EXIT_OK


def _cmd_train_eta(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    from cloud_ingest.eta import dataset, train  # noqa: PLC0415 (numpy, tflite: only here)

    parts = []
    sources: dict[str, Any] = {}
    if args.days:
        try:
            days = dataset.read_days(args.days)
        except ConfigError as err:
            return _error(str(err), EXIT_USAGE)
        rows = dataset.build_dataset(days)
        print(f"days: {len(days)} from {len(args.days)} path(s), {len(rows)} rows", file=sys.stderr)
        parts.append(rows)
        sources["days"] = {
            "paths": [str(path) for path in args.days],
            "days": [day.name for day in days],
            "rows": len(rows),
        }
    if args.from_store:
        days = _with_store(args, dataset.store_days)
        stored = dataset.build_dataset(days)
        print(f"stored history: {len(days)} routes, {len(stored)} rows", file=sys.stderr)
        parts.append(stored)
        sources["store"] = {
            "database": _config(args).database.describe(),
            "routes": len(days),
            "rows": len(stored),
        }
    if not parts:
        return _error("nothing to learn from: give --days and/or --from-store", EXIT_USAGE)
    rows = dataset.EtaDataset.concat(parts)
    config = train.TrainConfig(max_epochs=args.epochs, seed=args.seed)
    print(f"training on {len(rows)} rows...", file=sys.stderr)
    result = train.train(rows, config)
    trained_at = datetime.now(UTC)
    version = args.model_version or train.default_model_version(result.layers, trained_at)
    record = train.training_record(
        result,
        model_version=version,
        trained_at=trained_at,
        sources=sources,
        command=_train_command(args),
    )
    model = train.export_model(result, record)
    try:
        args.out.write_bytes(model)
        if args.record is not None:
            args.record.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        return _error(f"cannot write the model: {err}", EXIT_FAILED)
    print(f"wrote {args.out} ({len(model)} bytes), model_version {version}")
    print(
        f"rows: {result.n_train} training ({_days(result.train_days)}), "
        f"{result.n_val} validation ({_days(result.val_days)}); "
        f"{result.epochs} epochs (best {result.best_epoch}) in {result.train_time_s:.1f} s"
    )
    print(
        f"validation MAE: model {result.val_model.mae_s:.1f} s, baseline "
        f"{result.val_baseline.mae_s:.1f} s (ratio {result.val_ratio:.2f}); p90: model "
        f"{result.val_model.p90_s:.1f} s, baseline {result.val_baseline.p90_s:.1f} s"
    )
    if result.calibration is not None:
        c = result.calibration
        print(
            f"calibration ({result.calibration_rows} rows of {result.calibration_on}): "
            f"shrink {', '.join(f'{w:.2f}' for w in c.shrink)} by anchor bucket "
            f"(edges {', '.join(f'{e:g}' for e in c.edges_s)} s)"
        )
    return EXIT_OK


def _cmd_model_key(args: argparse.Namespace) -> int:
    from firmware_agent.contract.keys import (  # noqa: PLC0415
        KeyFileError,
        create_key,
        key_thumbprint,
        public_key_pem,
        write_file_atomically,
    )

    public_path: Path = args.pubkey_out or args.out.with_suffix(".pub.pem")
    if public_path.resolve() == args.out.resolve():
        return _error("--pubkey-out must differ from --out", EXIT_USAGE)
    try:
        key = create_key(args.out, what="model key")
    except KeyFileError as err:
        return _error(str(err), EXIT_FAILED)
    if key is None:
        return _error(f"{args.out} exists: a model key is never overwritten", EXIT_FAILED)
    public = key.public_key()
    try:
        write_file_atomically(public_path, public_key_pem(public), overwrite=True, mode=0o644)
    except OSError as err:
        return _error(f"cannot write {public_path}: {err.strerror or err}", EXIT_FAILED)
    print(f"private key: {args.out} (0600: keep it off the vans and the broker)")
    print(f"public key: {public_path} (for the vans: [eta] model_keys)")
    print(f"kid: {key_thumbprint(public)}")
    return EXIT_OK


def _cmd_sign_model(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime  # noqa: PLC0415

    from cloud_ingest.store.base import is_device_id  # noqa: PLC0415
    from firmware_agent.contract.errors import ModelError, ModelUpdateError  # noqa: PLC0415
    from firmware_agent.contract.eta_model import check_model  # noqa: PLC0415
    from firmware_agent.contract.keys import (  # noqa: PLC0415
        KeyFileError,
        key_thumbprint,
        load_device_key,
        write_file_atomically,
    )
    from firmware_agent.contract.model import read_unverified, sign_model  # noqa: PLC0415
    from firmware_agent.contract.times import format_utc  # noqa: PLC0415

    bad = [d for d in args.devices or () if not is_device_id(d)]
    if bad:
        return _error(f"invalid device id {bad[0]!r}", EXIT_USAGE)
    try:
        key = load_device_key(args.key, what="model key")
    except KeyFileError as err:
        return _error(str(err), EXIT_USAGE)
    try:
        model = args.model.read_bytes()
    except OSError as err:
        return _error(f"cannot read {args.model}: {err.strerror or err}", EXIT_USAGE)
    try:
        # What every van checks before it hands a model to its interpreter (the file,
        # the metadata, the shapes): a model they would all refuse is not worth a
        # signature. Their trial invoke needs an interpreter, which ingest does not ship.
        check_model(model)
        payload = sign_model(model, key, issued=datetime.now(UTC), devices=args.devices)
    except (ModelError, ModelUpdateError) as err:
        return _error(f"{args.model}: the vans would refuse it: {err}", EXIT_USAGE)
    try:
        write_file_atomically(args.out, payload, overwrite=True, mode=0o644)
    except OSError as err:
        return _error(f"cannot write {args.out}: {err.strerror or err}", EXIT_FAILED)
    claims, _ = read_unverified(payload)
    devices = ", ".join(claims.devices) if claims.devices else "every van"
    print(
        f"wrote {args.out} ({len(payload)} bytes): model {claims.model_version}, "
        f"{claims.size_bytes} bytes, sha256 {claims.sha256}"
    )
    print(
        f"issued {format_utc(claims.issued)}, key {key_thumbprint(key.public_key())}, for {devices}"
    )
    if len(payload) > BROKER_MESSAGE_LIMIT_BYTES:
        print(
            f"note: over {BROKER_MESSAGE_LIMIT_BYTES} bytes, the message_size_limit of "
            "docs/mosquitto/fleet.conf: raise it on the broker before publishing",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_publish_model(args: argparse.Namespace) -> int:
    from cloud_ingest.downlink import publish_retained  # noqa: PLC0415 (paho: only here)
    from cloud_ingest.store.base import is_device_id  # noqa: PLC0415
    from firmware_agent.contract.errors import ModelUpdateError  # noqa: PLC0415
    from firmware_agent.contract.model import read_unverified  # noqa: PLC0415
    from firmware_agent.contract.topics import downlink_topic  # noqa: PLC0415

    payload = b""
    allowed: tuple[str, ...] | None = None
    what = "the model clear"
    if args.signed is not None:
        try:
            payload = args.signed.read_bytes()
        except OSError as err:
            return _error(f"cannot read {args.signed}: {err.strerror or err}", EXIT_USAGE)
        try:
            # Unverified (the vans verify): a file that is not a signed model, or a
            # model signed for other vans, is caught here rather than refused by each.
            claims, _ = read_unverified(payload)
        except ModelUpdateError as err:
            return _error(f"{args.signed} is not a signed model: {err}", EXIT_USAGE)
        allowed = claims.devices
        what = f"model {claims.model_version} ({len(payload)} bytes)"
    if args.all:
        devices = _with_store(args, lambda store: store.list_devices())
        targets = [d.device_id for d in devices if d.enabled]
        if not targets:
            return _error("no enabled device is enrolled: nothing to publish to", EXIT_FAILED)
        if allowed is not None:
            targets = [d for d in targets if d in allowed]
    else:
        targets = list(dict.fromkeys(args.devices))
        bad = [d for d in targets if not is_device_id(d)]
        if bad:
            return _error(f"invalid device id {bad[0]!r}", EXIT_USAGE)
        if allowed is not None and (others := [d for d in targets if d not in allowed]):
            return _error(
                f"{args.signed} is signed for {', '.join(allowed)} only; "
                f"{', '.join(others)} would refuse it",
                EXIT_USAGE,
            )
    if not targets:
        return _error("no enabled device is one the model is signed for", EXIT_FAILED)
    config = _config(args)
    reasons = publish_retained(
        config.mqtt, [(downlink_topic(device, "model"), payload) for device in targets]
    )
    for device, reason in zip(targets, reasons, strict=True):
        print(f"{downlink_topic(device, 'model')}: {reason}")
    print(f"published {what}, retained, to {len(targets)} device(s)")
    return EXIT_OK


def _cmd_publish_manifest(args: argparse.Namespace) -> int:
    from cloud_ingest.store.base import is_device_id  # noqa: PLC0415
    from firmware_agent.contract.manifest import (  # noqa: PLC0415
        MAX_MANIFEST_PAYLOAD_BYTES,
        ManifestError,
        encode_manifest_payload,
        load_manifest,
    )
    from firmware_agent.contract.topics import downlink_topic  # noqa: PLC0415

    try:
        # The van's own checks (load_manifest reads a gzip file as well): a manifest
        # every van would refuse is not worth a publish.
        manifest = load_manifest(args.manifest)
    except ManifestError as err:
        return _error(f"{args.manifest}: the van would refuse it: {err}", EXIT_USAGE)
    device = manifest.device_id
    if not is_device_id(device):
        return _error(f"{args.manifest}: device_id {device!r} is no device id", EXIT_USAGE)
    if args.device is not None and args.device != device:
        return _error(
            f"{args.manifest} is for {device!r}, not {args.device!r}: that van would refuse it",
            EXIT_USAGE,
        )
    try:
        payload = encode_manifest_payload(manifest, compress=args.compress)
    except ManifestError as err:
        return _error(f"{args.manifest}: {err}", EXIT_USAGE)
    form = "gzip" if payload[:2] == b"\x1f\x8b" else "JSON"
    what = (
        f"manifest {manifest.route_id} for {device} ({len(manifest.stops)} stops): "
        f"{len(payload):,} bytes as {form}, limit {MAX_MANIFEST_PAYLOAD_BYTES:,}"
    )
    if args.dry_run:
        print(f"checked {what}; not published (--dry-run)")
        return EXIT_OK
    from cloud_ingest.downlink import publish_retained  # noqa: PLC0415 (paho: only here)

    topic = downlink_topic(device, "manifest")
    (reason,) = publish_retained(_config(args).mqtt, [(topic, payload)])
    print(f"{topic}: {reason}")
    print(f"published {what}, retained")
    return EXIT_OK


def _days(names: Sequence[str]) -> str:
    return f"{len(names)} day{'' if len(names) == 1 else 's'}"


def _train_command(args: argparse.Namespace) -> str:
    """The command line that repeats this training."""
    import shlex  # noqa: PLC0415

    words = ["fleet-ingest", "train-eta"]
    if args.days:
        words += ["--days", *(str(path) for path in args.days)]
    words += ["--epochs", str(args.epochs), "--seed", str(args.seed)]
    if args.from_store:
        words.append("--from-store")
    if args.model_version:
        words += ["--model-version", args.model_version]
    return shlex.join([*words, "--out", str(args.out)])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cloud_ingest.store.base import DeviceConflictError  # noqa: PLC0415

    try:
        code: int = args.func(args)
    except ConfigError as err:
        return _error(str(err), EXIT_USAGE)
    except DeviceConflictError as err:
        return _error(f"{err}; use --replace-key if the van was re-provisioned", EXIT_FAILED)
    except IngestError as err:
        return _error(str(err), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
