"""``fleet-agent pod``: proof-of-delivery tools.

- ``fleet-agent pod verify FILE --pubkey KEY [--device-id ID] [--from-genesis] [--json]``:
  verify a file of PODs (one compact JWS per line, or the agent's JSON-lines replay
  output) as a hash chain. Exit 0 when valid, 1 when problems were found, 2 when the
  file or the key cannot be used.
- ``fleet-agent pod pubkey --key PATH [--format pem|jwk]``: print the public half of an
  existing device key, for enrollment. Never prints the private key, never creates one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

# cryptography loads only when a pod command runs: `fleet-agent gnss decode` builds this
# parser too and must start fast.
if TYPE_CHECKING:
    from firmware_agent.pod.verify import ChainReport, Problem

EXIT_VALID = 0
EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2


def _error(message: str) -> int:
    print(f"fleet-agent pod: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _read_text(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    # utf-8-sig: a file saved by an editor that adds a BOM is still a POD file.
    return Path(name).read_text(encoding="utf-8-sig")


def _problem_line(problem: Problem, line: int) -> str:
    seq = "?" if problem.seq is None else str(problem.seq)
    return f"line {line} (seq {seq}): {problem.kind}: {problem.detail}"


def _problem_json(problem: Problem, line: int) -> dict[str, Any]:
    return {
        "line": line,
        "record": problem.index,
        "seq": problem.seq,
        "kind": problem.kind,
        "detail": problem.detail,
    }


def _print_text(name: str, report: ChainReport, lines: list[int]) -> None:
    span = (
        f"seq {report.first_seq}..{report.last_seq}" if report.first_seq is not None else "no seq"
    )
    device = f", device {report.device_id}" if report.device_id else ""
    if report.valid:
        print(f"{name}: OK: {report.records} PODs, {span}{device}")
        print(
            f"note: PODs deleted after seq {report.last_seq} cannot show in the chain; "
            "compare with the highest seq ingest acknowledged"
        )
        return
    print(
        f"{name}: {len(report.problems)} problem(s) in {report.records} PODs "
        f"({report.ok} ok, {span}{device})"
    )
    first = report.problems[0]
    print(f"first problem: {_problem_line(first, lines[first.index - 1])}")
    for problem in report.problems:
        print(_problem_line(problem, lines[problem.index - 1]))


def _cmd_verify(args: argparse.Namespace) -> int:
    from firmware_agent.contract.keys import KeyFileError, key_thumbprint, load_public_key  # noqa: PLC0415
    from firmware_agent.pod.chain import ChainState  # noqa: PLC0415
    from firmware_agent.pod.verify import read_pod_records, verify_chain  # noqa: PLC0415

    try:
        key = load_public_key(Path(args.pubkey))
    except KeyFileError as err:
        return _error(str(err))
    try:
        text = _read_text(args.file)
    except OSError as err:
        return _error(f"cannot read {args.file}: {err.strerror or err}")
    except UnicodeDecodeError as err:
        return _error(f"{args.file} is not UTF-8 text: {err.reason} at byte {err.start}")
    records = list(read_pod_records(text))
    if not records:
        return _error(f"no POD in {args.file}")
    lines = [line for line, _ in records]
    report = verify_chain(
        (token for _, token in records),
        key,
        device_id=args.device_id,
        start=ChainState() if args.from_genesis else None,
    )
    if args.json:
        out = {
            "file": args.file,
            "valid": report.valid,
            "records": report.records,
            "ok": report.ok,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "device_id": report.device_id,
            "kid": key_thumbprint(key),
            "first_problem": (
                _problem_json(report.problems[0], lines[report.problems[0].index - 1])
                if report.problems
                else None
            ),
            "problems": [_problem_json(p, lines[p.index - 1]) for p in report.problems],
        }
        print(json.dumps(out, ensure_ascii=False))
    else:
        _print_text(args.file, report, lines)
    return EXIT_VALID if report.valid else EXIT_PROBLEMS


def _cmd_pubkey(args: argparse.Namespace) -> int:
    from firmware_agent.contract.keys import (  # noqa: PLC0415
        KeyFileError,
        key_thumbprint,
        load_device_key,
        public_jwk,
        public_key_pem,
    )

    try:
        public = load_device_key(Path(args.key)).public_key()
    except KeyFileError as err:  # messages never carry key material (see keys.py)
        return _error(str(err))
    if args.format == "jwk":
        # kid and use help whoever stores it; the thumbprint ignores them.
        jwk = {**public_jwk(public), "kid": key_thumbprint(public), "use": "sig"}
        print(json.dumps(jwk, indent=2))
    else:
        sys.stdout.write(public_key_pem(public).decode("ascii"))
    return EXIT_VALID


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pod verify`` and ``pod pubkey``; each sets ``func(args) -> exit code``."""
    pod = subparsers.add_parser("pod", help="signed proof-of-delivery tools").add_subparsers(
        dest="pod_command", required=True
    )

    verify = pod.add_parser(
        "verify",
        help="verify a file of PODs as a signed hash chain",
        description="Exit 0: valid; 1: problems found (each printed as "
        "'line N (seq S): kind: detail'); 2: unusable file or key.",
    )
    verify.add_argument(
        "file",
        metavar="FILE",
        help="one compact JWS per line, or JSON lines with a 'jws' field; '-' for stdin",
    )
    verify.add_argument(
        "--pubkey",
        required=True,
        metavar="KEY",
        help="the device's public key: PEM or JWK (JSON) file",
    )
    verify.add_argument(
        "--device-id",
        metavar="ID",
        help="require this device id (default: the one most PODs carry)",
    )
    verify.add_argument(
        "--from-genesis",
        action="store_true",
        help="the file holds the device's whole chain: it must start at seq 1",
    )
    verify.add_argument("--json", action="store_true", help="one JSON object on stdout")
    verify.set_defaults(func=_cmd_verify)

    pubkey = pod.add_parser("pubkey", help="print the public key of an existing device key")
    pubkey.add_argument(
        "--key", required=True, metavar="PATH", help="the device key file (PKCS#8 PEM)"
    )
    pubkey.add_argument("--format", choices=("pem", "jwk"), default="pem")
    pubkey.set_defaults(func=_cmd_pubkey)
