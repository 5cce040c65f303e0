"""``fleet-agent``: the in-van agent's command line.

- ``fleet-agent gnss decode FILE``: an NMEA log (``-`` for stdin) to JSON lines of
  fixes on stdout, one summary line of counters on stderr.
- ``fleet-agent gnss watch --port DEV``: read a live receiver (serial device or pty),
  print each fix as it is decoded; survives the receiver being unplugged.
- ``fleet-agent gnss configure --port DEV [--rate-hz 5] [--dynamic-model automotive]``
  / ``gnss probe``: a u-blox receiver's set-up over UBX (docs/gnss-setup.md).
- ``fleet-agent replay --nmea LOG --manifest M [--scans S] [--out OUT]``: the whole van
  pipeline over recorded input, every message it would publish as JSON lines (ETAs
  included: ``--eta-model FILE`` or the shipped model, ``--no-eta`` for none).
- ``fleet-agent pod verify FILE --pubkey KEY``: check POD signatures and the hash chain.
- ``fleet-agent scan parse CODE`` / ``scan watch``: the scanner's view of a barcode.
- ``fleet-agent run``: the van service; ``fleet-agent config``: the settings it would
  start with, and where each came from (:mod:`firmware_agent.run_cli`,
  docs/configuration.md).
- ``fleet-agent provision --enroll URL --token T``: the van's keys, certificate and
  settings from a one-time enrollment token (:mod:`firmware_agent.provision`).
- ``fleet-agent doctor [--json]``: is this van ready (:mod:`firmware_agent.doctor`).
- ``fleet-agent cards --out reasons.svg``: the printable reason cards (docs/outcomes.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from firmware_agent import __version__
from firmware_agent.contract.fix import Fix
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig

_READ_CHUNK = 1 << 20
_DEFAULTS = FilterConfig()


def _filter_config(args: argparse.Namespace) -> FilterConfig:
    if args.no_filters:
        return FilterConfig.disabled()
    return FilterConfig(max_speed_mps=args.max_speed_mps, max_lag_s=args.max_lag_s)


def _json_line(fix: Fix) -> str:
    return fix.to_json() + "\n"


def _text_line(fix: Fix) -> str:
    when = fix.to_json_dict()["time"] or f"(no date) tod {fix.tod_s:9.3f}"
    if fix.lat is None or fix.lon is None:
        return f"{when}  no fix\n"
    speed = f"{fix.speed_mps:5.1f} m/s" if fix.speed_mps is not None else "    ? m/s"
    hdop = f"hdop {fix.hdop:4.1f}" if fix.hdop is not None else "hdop    ?"
    sats = f"sats {fix.sats_used:2d}" if fix.sats_used is not None else "sats  ?"
    return (
        f"{when}  {fix.lat:10.6f} {fix.lon:11.6f}  {speed}  "
        f"{fix.mode.name.removeprefix('FIX_'):6s} {hdop}  {sats}\n"
    )


def decode_stream(source: BinaryIO, out: TextIO, decoder: GnssDecoder) -> int:
    """Decode ``source`` to JSON lines on ``out``; return the number of fixes written."""
    n = 0
    write = out.write
    while chunk := source.read(_READ_CHUNK):
        for fix in decoder.feed(chunk):
            write(_json_line(fix))
            n += 1
    for fix in decoder.flush():
        write(_json_line(fix))
        n += 1
    return n


def _cmd_decode(args: argparse.Namespace) -> int:
    decoder = GnssDecoder(
        filters=_filter_config(args), comments=True, require_checksum=args.require_checksum
    )
    try:
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as err:
        print(f"fleet-agent: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 1
    try:
        with source:
            decode_stream(source, sys.stdout, decoder)
            sys.stdout.flush()
    except BrokenPipeError:
        # The consumer went away (`| head`): stop quietly, as Unix filters do, and keep
        # the interpreter's final flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(decoder.summary(), file=sys.stderr)
    return 0


async def _watch(args: argparse.Namespace) -> None:
    import asyncio  # noqa: PLC0415 (see _cmd_watch)
    import signal  # noqa: PLC0415

    from firmware_agent.gnss.reader import GnssReader, ReaderConfig  # noqa: PLC0415

    reader = GnssReader(
        ReaderConfig(port=args.port, baudrate=args.baud),
        decoder=GnssDecoder(filters=_filter_config(args)),
    )
    line = _json_line if args.format == "json" else _text_line
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    deadline = loop.time() + args.duration_s if args.duration_s else None
    try:
        async with contextlib.aclosing(reader.fixes()) as fixes:
            async for fix in fixes:
                sys.stdout.write(line(fix))
                sys.stdout.flush()
                if deadline is not None and loop.time() >= deadline:
                    break
    finally:
        print(reader.decoder.summary(), dict(reader.stats), file=sys.stderr)


def _cmd_watch(args: argparse.Namespace) -> int:
    # asyncio and pyserial are imported only by the commands that run an event loop:
    # they are two thirds of the start-up time of `gnss decode`.
    import asyncio  # noqa: PLC0415

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_watch(args))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    # Imported here: cryptography and the van logic are not needed by `gnss decode`.
    from firmware_agent.replay_cli import run_replay  # noqa: PLC0415

    return run_replay(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"fleet-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    gnss = sub.add_parser("gnss", help="GNSS receiver tools").add_subparsers(
        dest="gnss_command", required=True
    )

    def filter_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-filters",
            action="store_true",
            help="keep duplicate, out-of-order "
            "and implausible epochs (validity gating always applies)",
        )
        p.add_argument(
            "--max-speed-mps",
            type=float,
            default=_DEFAULTS.max_speed_mps,
            help="drop positions implying a higher speed (default %(default)s)",
        )
        p.add_argument(
            "--max-lag-s",
            type=float,
            default=_DEFAULTS.max_lag_s,
            help="live only: drop epochs arriving this late (default %(default)s)",
        )

    dec = gnss.add_parser("decode", help="NMEA log to JSON lines of fixes")
    dec.add_argument("file", help="NMEA log, '-' for stdin; lines starting with # are skipped")
    dec.add_argument(
        "--require-checksum", action="store_true", help="reject sentences without a *HH checksum"
    )
    filter_options(dec)
    dec.set_defaults(func=_cmd_decode)

    watch = gnss.add_parser("watch", help="print fixes from a live receiver")
    watch.add_argument("--port", required=True, help="serial device, e.g. /dev/fleet/gnss")
    watch.add_argument("--baud", type=int, default=9600)
    watch.add_argument("--format", choices=("text", "json"), default="text")
    watch.add_argument("--duration-s", type=float, default=0.0, help="stop after this long")
    filter_options(watch)
    watch.set_defaults(func=_cmd_watch)

    from firmware_agent.gnss.setup_cli import register as register_setup  # noqa: PLC0415

    register_setup(gnss)

    rep = sub.add_parser(
        "replay",
        help="run the van pipeline over recorded input",
        description="Run the whole van pipeline (geofences, exceptions, scans, PODs, "
        "telemetry, ETAs) over an NMEA log, a manifest and a scan log, as fast as the CPU "
        "allows, with time taken from the fixes; write every message the van would "
        "publish as one JSON object per line (docs/replay-output.md).",
    )
    rep.add_argument("--nmea", required=True, help="NMEA log ('-' for stdin)")
    rep.add_argument("--manifest", required=True, help="manifest JSON (docs/manifest.schema.json)")
    rep.add_argument("--scans", help="scan log, JSON lines (docs/scan-log.md)")
    rep.add_argument("--out", default="-", help="output JSON lines (default stdout)")
    rep.add_argument(
        "--key",
        help="device signing key (PEM, created 0600 if absent); default: a throwaway key",
    )
    rep.add_argument("--pubkey-out", help="also write the signing public key (PEM) here")
    rep.add_argument("--no-telemetry", action="store_true", help="omit telemetry messages")
    eta = rep.add_mutually_exclusive_group()
    eta.add_argument(
        "--eta-model",
        metavar="FILE",
        help="predict ETAs with this .tflite model (default: the shipped one; the baseline "
        "where it cannot load, with the reason on stderr)",
    )
    eta.add_argument(
        "--no-eta", action="store_true", help="predict no ETAs: no eta or late_risk events"
    )
    filter_options(rep)
    rep.set_defaults(func=_cmd_replay)

    from firmware_agent.doctor.cli import register as register_doctor  # noqa: PLC0415
    from firmware_agent.pod.cards import register as register_cards  # noqa: PLC0415
    from firmware_agent.pod.cli import register as register_pod  # noqa: PLC0415
    from firmware_agent.provision_cli import register as register_provision  # noqa: PLC0415
    from firmware_agent.run_cli import register as register_run  # noqa: PLC0415
    from firmware_agent.scan.cli import register as register_scan  # noqa: PLC0415

    register_run(sub)
    register_pod(sub)
    register_scan(sub)
    register_cards(sub)
    register_provision(sub)
    register_doctor(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
