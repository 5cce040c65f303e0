"""``fleet-agent scan``: barcode scanner tools.

- ``fleet-agent scan parse CODE...``: parse codes as the agent would; one JSON line
  per code (the parsed code, or ``{"raw": ..., "error": reason, "message": ...}``);
  exit status 1 if any failed. Write GS as ``$'\\x1d'`` in bash.
- ``fleet-agent scan watch --port DEV | --hid /dev/input/eventN``: print scans live
  as SCANS lines (docs/scan-log.md) with the parse result added, so the output is a
  scan log that offline replay reads back. Survives the scanner being unplugged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

# The parser (biip) and the rest load only when a scan command runs: `fleet-agent gnss
# decode` builds this parser too and must start fast.
if TYPE_CHECKING:
    from firmware_agent.scan.types import Scan


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scan`` (with ``parse`` and ``watch``) to the ``fleet-agent`` command line."""
    scan = subparsers.add_parser("scan", help="barcode scanner tools").add_subparsers(
        dest="scan_command", required=True
    )

    parse = scan.add_parser("parse", help="parse codes as the agent would, print JSON")
    parse.add_argument("codes", nargs="+", metavar="CODE", help="scanned text, AIM prefix and all")
    parse.set_defaults(func=_cmd_parse)

    watch = scan.add_parser("watch", help="print scans from a live scanner as JSON lines")
    device = watch.add_mutually_exclusive_group(required=True)
    device.add_argument("--port", help="serial scanner, e.g. /dev/fleet/scanner")
    device.add_argument(
        "--hid",
        metavar="EVENT_DEVICE",
        help="keyboard-mode scanner, e.g. /dev/input/by-id/usb-...-event-kbd",
    )
    watch.add_argument("--baud", type=int, default=9600, help="serial only (default %(default)s)")
    watch.add_argument(
        "--no-grab",
        action="store_true",
        help="HID only: do not grab the device (its keystrokes then also reach the console)",
    )
    watch.add_argument("--duration-s", type=float, default=0.0, help="stop after this long")
    watch.set_defaults(func=_cmd_watch)


def parse_result(raw: str) -> dict[str, Any]:
    """The JSON-ready outcome of parsing ``raw``: the code's fields, or the error."""
    from firmware_agent.contract.parcels import ScanParseError, parse_scan  # noqa: PLC0415

    try:
        code = parse_scan(raw)
    except ScanParseError as err:
        return {"raw": raw, "error": err.reason, "message": str(err)}
    return dataclasses.asdict(code)


def _cmd_parse(args: argparse.Namespace) -> int:
    failed = False
    for raw in args.codes:
        result = parse_result(raw)
        failed |= "error" in result
        print(json.dumps(result))
    return 1 if failed else 0


async def watch(scans: AsyncIterator[Scan], duration_s: float = 0.0) -> int:
    """Print each scan of ``scans`` to stdout as a SCANS line; return how many.

    Stops after ``duration_s`` (0: never; only cancellation then ends it).
    """
    import asyncio  # noqa: PLC0415 (see _cmd_watch)

    from firmware_agent.scan.log import format_scan_line  # noqa: PLC0415

    n = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration_s if duration_s > 0 else None):
            async for scan in scans:
                result = parse_result(scan.raw)
                extra = (
                    {"error": result["error"]}
                    if "error" in result
                    else {"code": result["code"], "kind": result["kind"]}
                )
                sys.stdout.write(format_scan_line(scan, **extra) + "\n")
                sys.stdout.flush()
                n += 1
    return n


async def _watch(args: argparse.Namespace) -> None:
    import asyncio  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from firmware_agent.scan.hid_reader import HidScanner  # noqa: PLC0415
    from firmware_agent.scan.serial_reader import ScannerConfig, SerialScanner  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    reader: SerialScanner | HidScanner
    if args.port:
        reader = SerialScanner(ScannerConfig(port=args.port, baudrate=args.baud))
    else:
        reader = HidScanner(args.hid, grab=not args.no_grab)
    try:
        async with contextlib.aclosing(reader.scans()) as scans:
            await watch(scans, args.duration_s)
    finally:
        print(dict(reader.stats), dict(reader.faults.counts), file=sys.stderr)


def _cmd_watch(args: argparse.Namespace) -> int:
    # asyncio, pyserial and evdev are imported only by the command that runs an event
    # loop, as `fleet-agent gnss` does: `scan parse` starts faster without them.
    import asyncio  # noqa: PLC0415

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_watch(args))
    return 0
