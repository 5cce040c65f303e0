"""``fleet-sim receiver``: a u-blox (or plain NMEA) receiver standing still on a pty.

    fleet-sim receiver --pty /tmp/fleet/gnss --ubx m8
    fleet-sim receiver --pty /tmp/fleet/gnss --ubx m9 --refuse CFG-VALSET=nak
    fleet-sim receiver --pty /tmp/fleet/gnss            # NMEA only, no UBX

The first stdout line is ``pty: /dev/pts/N linked at LINK``. The receiver sends NMEA
for a fixed position at the rate set over UBX (1 Hz at start) and answers UBX as
:mod:`simulator.ubx_responder` says. SIGHUP is a power cycle: the settings go back to
what was saved (``power cycle: RATE Hz, dynamic model N`` on stderr). SIGINT/SIGTERM
stop it; the link is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any, Literal, cast

from simulator.errors import ConfigError
from simulator.receiver import PtyReceiver
from simulator.static_receiver import DEFAULT_LAT, DEFAULT_LON, StaticReceiver
from simulator.ubx_responder import GENERATIONS, UbxResponder


def register(commands: Any) -> None:
    """Add ``receiver`` to ``fleet-sim``'s sub-commands."""
    cmd = commands.add_parser(
        "receiver", help="a receiver standing still on a pty, answering UBX like a u-blox"
    )
    cmd.add_argument("--pty", required=True, metavar="LINK", help="create a pty, symlinked at LINK")
    cmd.add_argument(
        "--ubx",
        choices=GENERATIONS,
        help="answer UBX as a u-blox M8 (legacy CFG messages) or M9 (CFG-VALSET); "
        "without it, a receiver that speaks NMEA only",
    )
    cmd.add_argument("--lat", type=float, default=DEFAULT_LAT)
    cmd.add_argument("--lon", type=float, default=DEFAULT_LON)
    cmd.add_argument(
        "--refuse",
        action="append",
        default=[],
        metavar="ID=nak|ignore",
        help="NAK (or never answer) this UBX message, e.g. CFG-NAV5=nak; repeatable",
    )
    cmd.set_defaults(handler=_cmd_receiver)


def _refusals(items: list[str]) -> dict[str, Literal["nak", "ignore"]]:
    out: dict[str, Literal["nak", "ignore"]] = {}
    for item in items:
        identity, _, how = item.partition("=")
        if how not in ("nak", "ignore") or not identity:
            raise ConfigError(f"--refuse {item!r}: expected ID=nak or ID=ignore")
        out[identity] = cast(Literal["nak", "ignore"], how)
    return out


def _cmd_receiver(args: argparse.Namespace) -> int:
    refuse = _refusals(args.refuse)
    if refuse and args.ubx is None:
        raise ConfigError("--refuse needs --ubx")
    return asyncio.run(_run(args, refuse))


async def _run(args: argparse.Namespace, refuse: dict[str, Literal["nak", "ignore"]]) -> int:
    responder = UbxResponder(args.ubx, refuse=refuse) if args.ubx else None
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def power_cycle() -> None:
        if responder is not None:
            responder.power_cycle()
            state = responder.state
            print(
                f"power cycle: {1.0 / state.period_s:g} Hz, dynamic model {state.dynamic_model}",
                file=sys.stderr,
                flush=True,
            )

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    loop.add_signal_handler(signal.SIGHUP, power_cycle)
    async with PtyReceiver(Path(args.pty), responder=responder) as pty:
        print(f"pty: {pty.device} linked at {pty.path}", flush=True)
        try:
            await StaticReceiver(pty, responder, lat=args.lat, lon=args.lon).run()
        except asyncio.CancelledError:
            return 0
    return 0
