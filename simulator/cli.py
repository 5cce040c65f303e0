"""``fleet-sim``: generate scenarios, play them into fake devices, convert real trips.

    fleet-sim scenario --seed 7 --stops 12 --rate-hz 10 --talker GN --out out/day7
    fleet-sim play --scenario-dir out/day7 --pty /tmp/fleet/gnss --speedup 5 --live
    fleet-sim play --scenario-dir out/day7 --pty /tmp/fleet/gnss --scanner-pty /tmp/fleet/scanner
    fleet-sim play --seed 7 --stops 3 --tcp 127.0.0.1:2947 --afap
    fleet-sim trace trip.csv --rate-hz 5 --noise-m 2 --out trip.nmea
    fleet-sim trip trip.csv --out out/trip
    fleet-sim eta-days --seeds 1000-1059 --trip bus1.csv bus2.csv --out out/eta-days
    fleet-sim demo --speed 60
    fleet-sim receiver --pty /tmp/fleet/gnss --ubx m8

``play`` prints where to connect (``pty: /dev/pts/N linked at LINK``, ``tcp: HOST:PORT``
or ``file: PATH``) on stdout as its first line, at once, so a script can wait for it;
with ``--scanner-pty`` a second line ``scanner: /dev/pts/M linked at LINK`` follows.
Ctrl-C or SIGTERM stop it cleanly: the pty link is removed. Errors are reported on
stderr in one line, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from simulator.epoch import RATES_HZ, TALKERS, Talker
from simulator.errors import ConfigError, SimulatorError
from simulator.eta_days import DEFAULT_SIM_STOPS, parse_seeds, write_days
from simulator.gnss_errors import OutageWindow
from simulator.live import LiveView
from simulator.manifest import DEFAULT_DEVICE_ID, build_manifest
from simulator.playback import (
    PlayProgress,
    SideStream,
    TimedChunk,
    attach_truth,
    epoch_chunks,
    nmea_log_chunks,
    play,
)
from simulator.receiver import FileSink, PtyReceiver, TcpReceiver
from simulator.receiver_cli import register as register_receiver
from simulator.scanner import PtyScanner, scan_chunks
from simulator.scans import (
    DEFAULT_DUPLICATE_RATE,
    DEFAULT_GARBAGE_RATE,
    DEFAULT_OUTCOME_RATE,
    DEFAULT_WRONG_STOP_RATE,
    SCAN_LOG,
    build_scan_log,
    read_scan_log,
)
from simulator.scenario import DEFAULT_START, ScenarioConfig, generate
from simulator.scenario_dir import NMEA_LOG, write_scenario_dir
from simulator.stops import Stop
from simulator.trace import DEFAULT_MAX_GAP_S, write_trace_nmea
from simulator.trips import write_trip_dir
from simulator.truth import (
    SCENARIO_JSON,
    STOPS_JSON,
    TRUTH_CSV,
    read_scenario_json,
    read_stops_json,
    read_truth_csv,
)
from simulator.ubx_responder import GENERATIONS, UbxResponder, at_receiver_rate

PROG = "fleet-sim"
_GENERATION_FLAGS = (
    "seed",
    "stops",
    "rate_hz",
    "talker",
    "start",
    "duration_h",
    "route",
    "no_noise",
    "no_multipath",
    "no_outages",
    "utc_offset_h",
    "tunnels",
    "outage",
)


def _utc_datetime(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no timezone (write e.g. 2026-11-21T08:00:00Z)"
        )
    return t.astimezone(UTC)


def _outage_window(text: str) -> OutageWindow:
    try:
        start, duration = (float(part) for part in text.split(":"))
        return OutageWindow(start, duration)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START_S:DURATION_S, got {text!r}") from None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), number


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1: {text!r}")
    return value


def _generation_flags() -> argparse.ArgumentParser:
    """Flags that describe a generated day; defaults are applied in :func:`_config`."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("scenario generation")
    group.add_argument("--seed", type=int, help="random seed (default 1)")
    group.add_argument(
        "--stops", type=int, help="number of stops (default 10; a route file's own stops win)"
    )
    group.add_argument(
        "--rate-hz", type=int, choices=RATES_HZ, help="epochs per second (default 1)"
    )
    group.add_argument(
        "--talker", choices=TALKERS, help="GP: GPS only; GN: GPS + GLONASS (default GP)"
    )
    group.add_argument(
        "--start", type=_utc_datetime, help="start time, UTC (default 2026-11-21T08:00:00Z)"
    )
    group.add_argument("--duration-h", type=_positive_float, help="cut the day off after H hours")
    group.add_argument(
        "--route", type=Path, help="drive a GeoJSON or GPX route instead of a generated town"
    )
    group.add_argument(
        "--utc-offset-h", type=float, help="local time offset for traffic (default 1)"
    )
    group.add_argument("--tunnels", type=int, help="tunnels on the route (default 1)")
    group.add_argument(
        "--outage", type=_outage_window, action="append", metavar="START_S:DURATION_S",
        help="an outage window, seconds from the start (repeatable)",
    )  # fmt: skip
    group.add_argument(
        "--no-noise", action="store_true", default=None, help="report the true position"
    )
    group.add_argument(
        "--no-multipath", action="store_true", default=None, help="no multipath jumps"
    )
    group.add_argument(
        "--no-outages", action="store_true", default=None, help="no tunnels, windows or start-up"
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="GNSS receiver simulator for the fleet gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generation = _generation_flags()

    scenario = commands.add_parser(
        "scenario", parents=[generation], help="generate a day: NMEA log and ground truth"
    )
    scenario.add_argument("--out", type=Path, required=True, help="output directory")
    scans = scenario.add_argument_group("manifest and scans")
    scans.add_argument(
        "--device-id", default=DEFAULT_DEVICE_ID, help=f"the van (default {DEFAULT_DEVICE_ID})"
    )
    scans.add_argument(
        "--wrong-stop-rate", type=_rate, default=DEFAULT_WRONG_STOP_RATE, metavar="P",
        help=f"scans of another stop's parcel, per parcel (default {DEFAULT_WRONG_STOP_RATE})",
    )  # fmt: skip
    scans.add_argument(
        "--garbage-rate", type=_rate, default=DEFAULT_GARBAGE_RATE, metavar="P",
        help=f"unreadable scans, per parcel (default {DEFAULT_GARBAGE_RATE})",
    )  # fmt: skip
    scans.add_argument(
        "--duplicate-rate", type=_rate, default=DEFAULT_DUPLICATE_RATE, metavar="P",
        help=f"double reads within 2 s, per parcel (default {DEFAULT_DUPLICATE_RATE})",
    )  # fmt: skip
    scans.add_argument(
        "--outcome-rate", type=_rate, default=DEFAULT_OUTCOME_RATE, metavar="P",
        help="stops whose parcels get a reason card (not home, neighbour, ...), per stop "
        f"(default {DEFAULT_OUTCOME_RATE})",
    )  # fmt: skip
    scenario.set_defaults(handler=_cmd_scenario)

    play_cmd = commands.add_parser(
        "play", parents=[generation], help="stream a day into a pty, a TCP port or a file"
    )
    source = play_cmd.add_mutually_exclusive_group()
    source.add_argument(
        "--scenario-dir", type=Path, help="play DIR/nmea.log of a generated scenario"
    )
    source.add_argument("--nmea", type=Path, help="play a recorded NMEA log")
    sink = play_cmd.add_mutually_exclusive_group(required=True)
    sink.add_argument("--pty", type=Path, metavar="LINK", help="create a pty, symlinked at LINK")
    sink.add_argument(
        "--tcp", type=_host_port, metavar="HOST:PORT", help="serve on TCP (port 0: any)"
    )
    sink.add_argument("--file", type=Path, metavar="OUT", help="write to a file")
    play_cmd.add_argument(
        "--scanner-pty", type=Path, metavar="LINK",
        help="also play the day's scans (scans.jsonl) on a scanner pty symlinked at LINK",
    )  # fmt: skip
    pacing = play_cmd.add_mutually_exclusive_group()
    pacing.add_argument(
        "--speedup", type=_positive_float, default=1.0, help="times real time (default 1)"
    )
    pacing.add_argument("--afap", action="store_true", help="as fast as possible")
    play_cmd.add_argument(
        "--wait-reader", action="store_true", help="start once a reader or client is there"
    )
    play_cmd.add_argument("--live", action="store_true", help="show a live panel on stderr")
    play_cmd.add_argument(
        "--unplug-after-s",
        type=_positive_float,
        metavar="T",
        help="pull the pty out T s into the day (scenario time: wall time is T / speedup)",
    )
    play_cmd.add_argument(
        "--unplug-for-s",
        type=_positive_float,
        metavar="D",
        help="plug it back in D s (scenario time) later",
    )
    play_cmd.add_argument(
        "--ubx", choices=GENERATIONS,
        help="with --pty: answer UBX as a u-blox M8 or M9 (the day's NMEA rate stays)",
    )  # fmt: skip
    play_cmd.set_defaults(handler=_cmd_play)

    demo = commands.add_parser(
        "demo",
        help="one van day end to end: simulator, agent, a private Mosquitto, ingest (SQLite)",
    )
    demo.add_argument("--seed", type=int, default=7, help="scenario seed (default 7)")
    demo.add_argument("--stops", type=int, default=12, help="stops (default 12)")
    demo.add_argument(
        "--speed", type=float, default=60.0, help="times real time, 0 = as fast as possible"
    )
    demo.add_argument("--dir", type=Path, help="keep the day, databases and logs here")
    demo.set_defaults(handler=_cmd_demo)
    register_receiver(commands)

    trace = commands.add_parser("trace", help="turn a timestamp_utc,lat,lon CSV into an NMEA log")
    trace.add_argument("csv", type=Path, help="position CSV")
    trace.add_argument(
        "--rate-hz", type=int, choices=RATES_HZ, default=1, help="epochs per second (default 1)"
    )
    trace.add_argument(
        "--noise-m", type=float, default=0.0, help="noise sigma per axis, metres (default 0)"
    )
    trace.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    trace.add_argument("--talker", choices=TALKERS, default="GP", help="default GP")
    trace.add_argument(
        "--max-gap-s", type=_positive_float, default=DEFAULT_MAX_GAP_S, help="longer gaps: no fix"
    )
    trace.add_argument("--out", type=Path, required=True, help="output NMEA log")
    trace.set_defaults(handler=_cmd_trace)

    trip = commands.add_parser(
        "trip", help="turn a real trip CSV into a replayable day: NMEA, manifest, halts"
    )
    trip.add_argument("csv", type=Path, help="position CSV (timestamp_utc,lat,lon,...)")
    trip.add_argument("--out", type=Path, required=True, help="output directory")
    trip.add_argument(
        "--rate-hz", type=int, choices=RATES_HZ, default=1, help="epochs per second (default 1)"
    )
    trip.add_argument(
        "--noise-m", type=float, default=0.0, help="noise sigma per axis, metres (default 0)"
    )
    trip.add_argument("--seed", type=int, default=0, help="noise and parcel seed (default 0)")
    trip.add_argument("--talker", choices=TALKERS, default="GP", help="default GP")
    trip.add_argument(
        "--max-gap-s", type=_positive_float, default=DEFAULT_MAX_GAP_S, help="longer gaps: no fix"
    )
    trip.add_argument(
        "--device-id", default=DEFAULT_DEVICE_ID, help=f"the van (default {DEFAULT_DEVICE_ID})"
    )
    trip.set_defaults(handler=_cmd_trip)

    days = commands.add_parser(
        "eta-days",
        help="write days for ETA training: generated days and real trips (fleet-ingest "
        "train-eta --days reads them)",
    )
    days.add_argument(
        "--seeds",
        type=_seed_list,
        default=[],
        metavar="SEEDS",
        help="simulator days, e.g. 1000-1059 or 1,5,9-12 (the shipped model's: 1000-1059)",
    )
    days.add_argument(
        "--stops", type=int, default=DEFAULT_SIM_STOPS, help="stops per simulator day (25)"
    )
    days.add_argument(
        "--trip", type=Path, nargs="+", default=[], metavar="CSV", help="real trip CSVs"
    )
    days.add_argument(
        "--trip-halt-s",
        type=float,
        nargs="+",
        default=[20.0],
        metavar="S",
        help="each trip once per minimum halt that makes a stop (default 20; e.g. 20 60)",
    )
    days.add_argument("--jobs", type=int, default=2, help="processes for simulator days (2)")
    days.add_argument("--out", type=Path, required=True, help="directory of day directories")
    days.set_defaults(handler=_cmd_eta_days)
    return parser


def _seed_list(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fleet-sim``; returns the exit status (errors: message on stderr, no traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the error
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (SimulatorError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _config(args: argparse.Namespace) -> ScenarioConfig:
    config = ScenarioConfig(
        seed=args.seed if args.seed is not None else 1,
        start=args.start or DEFAULT_START,
        n_stops=args.stops if args.stops is not None else 10,
        rate_hz=args.rate_hz or 1,
        talker=args.talker or "GP",
        utc_offset_h=args.utc_offset_h if args.utc_offset_h is not None else 1.0,
        max_duration_s=args.duration_h * 3600.0 if args.duration_h is not None else None,
        route_file=args.route.resolve() if args.route is not None else None,
    )
    try:
        noise = replace(config.noise, enabled=not args.no_noise)
        multipath = replace(config.multipath, enabled=not args.no_multipath)
        outages = replace(
            config.outages,
            enabled=not args.no_outages,
            tunnels=args.tunnels if args.tunnels is not None else config.outages.tunnels,
            windows=tuple(args.outage or ()),
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return replace(config, noise=noise, multipath=multipath, outages=outages)


def _cmd_scenario(args: argparse.Namespace) -> int:
    scenario = generate(_config(args))
    summary = write_scenario_dir(
        scenario,
        args.out,
        device_id=args.device_id,
        wrong_stop_rate=args.wrong_stop_rate,
        garbage_rate=args.garbage_rate,
        duplicate_rate=args.duplicate_rate,
        outcome_rate=args.outcome_rate,
    )
    print(f"scenario seed={scenario.config.seed}: {summary.line()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    # Imported here: the agent, aiomqtt and ingest are not needed by the other commands.
    import asyncio  # noqa: PLC0415

    from simulator.demo import DemoConfig, run_demo  # noqa: PLC0415

    config = DemoConfig(seed=args.seed, stops=args.stops, speed=args.speed, work_dir=args.dir)
    figures = asyncio.run(run_demo(config, sys.stdout))
    return 0 if figures["ok"] else 1


def _cmd_trace(args: argparse.Namespace) -> int:
    summary = write_trace_nmea(
        args.csv,
        args.out,
        rate_hz=args.rate_hz,
        noise_m=args.noise_m,
        seed=args.seed,
        max_gap_s=args.max_gap_s,
        talker=args.talker,
    )
    print(f"trace {args.csv}: {summary.line(args.out, args.rate_hz)}")
    return 0


def _cmd_eta_days(args: argparse.Namespace) -> int:
    if not args.seeds and not args.trip:
        raise ConfigError("nothing to write: give --seeds and/or --trip")

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr)

    written = write_days(
        args.out,
        seeds=args.seeds,
        n_stops=args.stops,
        trips=args.trip,
        trip_halts_s=args.trip_halt_s,
        jobs=args.jobs,
        progress=progress,
    )
    print(f"eta-days: {len(written)} days -> {args.out}")
    return 0


def _cmd_trip(args: argparse.Namespace) -> int:
    summary = write_trip_dir(
        args.csv,
        args.out,
        rate_hz=args.rate_hz,
        noise_m=args.noise_m,
        seed=args.seed,
        max_gap_s=args.max_gap_s,
        talker=args.talker,
        device_id=args.device_id,
    )
    print(f"trip {args.csv}: {summary.line()}")
    return 0


@dataclass(frozen=True, slots=True)
class _Source:
    """What to play: a way to get the chunks, how many there are, the stops if known.

    ``scans``: the scanner's chunks on the same clock, when ``--scanner-pty`` asks.
    """

    chunks: Callable[[], Iterable[TimedChunk]]
    total: int | None
    stops: tuple[Stop, ...]
    scans: Callable[[], Iterable[TimedChunk]] | None = None


def _source(args: argparse.Namespace) -> _Source:
    from_file = args.scenario_dir is not None or args.nmea is not None
    given = [
        f"--{name.replace('_', '-')}"
        for name in _GENERATION_FLAGS
        if getattr(args, name) is not None
    ]
    if from_file and given:
        raise ConfigError(f"{', '.join(given)} only apply to a generated scenario, not to a file")
    if args.scenario_dir is not None:
        directory: Path = args.scenario_dir
        log = directory / NMEA_LOG
        stops = read_stops_json(directory / STOPS_JSON) if (directory / STOPS_JSON).exists() else ()
        total = sum(1 for _ in nmea_log_chunks(log))
        scans = _scenario_dir_scans(directory) if args.scanner_pty is not None else None
        if (directory / TRUTH_CSV).exists():
            return _Source(
                lambda: attach_truth(nmea_log_chunks(log), read_truth_csv(directory / TRUTH_CSV)),
                total,
                stops,
                scans,
            )
        return _Source(lambda: nmea_log_chunks(log), total, stops, scans)
    if args.nmea is not None:
        if args.scanner_pty is not None:
            raise ConfigError("--scanner-pty needs --scenario-dir or a generated scenario")
        nmea: Path = args.nmea
        total = sum(1 for _ in nmea_log_chunks(nmea))
        return _Source(lambda: nmea_log_chunks(nmea), total, ())
    scenario = generate(_config(args))
    talker: Talker = scenario.config.talker
    generated_scans: Callable[[], Iterable[TimedChunk]] | None = None
    if args.scanner_pty is not None:
        # The same manifest and scans `fleet-sim scenario` would write for this day.
        seed = scenario.config.seed
        lines = build_scan_log(scenario, build_manifest(scenario, seed=seed), seed=seed)
        generated_scans = partial(scan_chunks, lines, scenario.start)
    return _Source(
        lambda: epoch_chunks(scenario.epochs(), talker),
        scenario.n_epochs,
        scenario.stops,
        generated_scans,
    )


def _scenario_dir_scans(directory: Path) -> Callable[[], Iterable[TimedChunk]]:
    """The scans of ``directory`` on the clock of its NMEA log (0 = its first epoch)."""
    path = directory / SCAN_LOG
    if not path.exists():
        raise ConfigError(f"{path} not found: regenerate the day with `fleet-sim scenario`")
    lines = read_scan_log(path)
    first = next(iter(nmea_log_chunks(directory / NMEA_LOG)), None)
    start = first.time if first is not None else None
    if start is None and (directory / SCENARIO_JSON).exists():
        start = read_scenario_json(directory / SCENARIO_JSON).start
    if start is None:
        raise ConfigError(
            f"cannot place the scans in time: {directory / NMEA_LOG} has no dated RMC or ZDA"
            f" and there is no {SCENARIO_JSON}"
        )
    return lambda: scan_chunks(lines, start)


class _Unplugger:
    """Pulls the pty at a sim time and plugs it back a while later (a loose USB plug)."""

    def __init__(self, pty: PtyReceiver, after_s: float, for_s: float) -> None:
        self._pty = pty
        self._after_s = after_s
        self._back_s = after_s + for_s
        self._state = "plugged"

    def __call__(self, progress: PlayProgress) -> None:
        if self._state == "plugged" and progress.offset_s >= self._after_s:
            self._pty.unplug()
            self._state = "unplugged"
            print(f"unplugged at {progress.offset_s:.1f} s", file=sys.stderr, flush=True)
        elif self._state == "unplugged" and progress.offset_s >= self._back_s:
            self._pty.replug()
            self._state = "replugged"
            print(
                f"replugged at {progress.offset_s:.1f} s: "
                f"{self._pty.device} linked at {self._pty.path}",
                file=sys.stderr,
                flush=True,
            )


def _cmd_play(args: argparse.Namespace) -> int:
    if (args.unplug_after_s is None) != (args.unplug_for_s is None):
        raise ConfigError("--unplug-after-s and --unplug-for-s go together")
    if args.unplug_after_s is not None and args.pty is None:
        raise ConfigError("--unplug-after-s needs --pty")
    if args.ubx is not None and args.pty is None:
        raise ConfigError("--ubx needs --pty")
    if (
        args.scanner_pty is not None
        and args.pty is not None
        and args.scanner_pty.absolute() == args.pty.absolute()
    ):
        raise ConfigError("--scanner-pty and --pty must be different paths")
    source = _source(args)
    return asyncio.run(_play(args, source))


async def _play(args: argparse.Namespace, source: _Source) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stopped_by: list[str] = []

    def stop(name: str) -> None:
        stopped_by.append(name)
        if task is not None:
            task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        return await _stream(args, source)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        print(f"stopped by {stopped_by[0]}", file=sys.stderr)
        return 0
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _stream(args: argparse.Namespace, source: _Source) -> int:
    speedup = None if args.afap else args.speedup
    sink: PtyReceiver | TcpReceiver | FileSink
    if args.pty is not None:
        responder = UbxResponder(args.ubx) if args.ubx else None
        sink = PtyReceiver(args.pty, responder=responder)
    elif args.tcp is not None:
        sink = TcpReceiver(args.tcp[0], args.tcp[1])
    else:
        sink = FileSink(args.file)
    async with contextlib.AsyncExitStack() as devices:
        await devices.enter_async_context(sink)
        if isinstance(sink, PtyReceiver):
            label = f"pty: {sink.device} linked at {sink.path}"
        elif isinstance(sink, TcpReceiver):
            label = f"tcp: {sink.host}:{sink.port}"
        else:
            label = f"file: {sink.path}"
        print(label, flush=True)
        scanner: PtyScanner | None = None
        side: list[SideStream] = []
        if source.scans is not None:
            scanner = await devices.enter_async_context(PtyScanner(args.scanner_pty))
            print(f"scanner: {scanner.device} linked at {scanner.path}", flush=True)
            side.append(SideStream(source.scans(), scanner))
        if args.wait_reader:
            await _wait_for_reader(sink)
            if scanner is not None:
                await scanner.wait_for_reader()

        hooks: list[Callable[[PlayProgress], None]] = []
        if isinstance(sink, PtyReceiver) and args.unplug_after_s is not None:
            hooks.append(_Unplugger(sink, args.unplug_after_s, args.unplug_for_s))
        with contextlib.ExitStack() as stack:
            if args.live:
                view = stack.enter_context(
                    LiveView(
                        stops=source.stops,
                        sink_label=label,
                        link_status=_link_status(sink, scanner),
                    )
                )
                hooks.append(view.update)

            def on_chunk(progress: PlayProgress) -> None:
                for hook in hooks:
                    hook(progress)

            chunks = source.chunks()
            if isinstance(sink, PtyReceiver) and isinstance(sink.responder, UbxResponder):
                chunks = at_receiver_rate(chunks, sink.responder)
            stats = await play(
                chunks,
                sink,
                speedup=speedup,
                total=source.total,
                on_chunk=on_chunk,
                side=side,
            )
    scans = (
        f"; {stats.side_chunks} scans, {stats.side_dropped_bytes} scanner bytes dropped"
        if scanner is not None
        else ""
    )
    print(
        f"played {stats.chunks} epochs, {stats.bytes_written} bytes written, "
        f"{stats.dropped_bytes} dropped, in {stats.wall_s:.1f} s{scans}",
        file=sys.stderr,
    )
    return 0


async def _wait_for_reader(sink: PtyReceiver | TcpReceiver | FileSink) -> None:
    if isinstance(sink, TcpReceiver):
        await sink.wait_for_client()
    elif isinstance(sink, PtyReceiver):
        await sink.wait_for_reader()


def _link_status(
    sink: PtyReceiver | TcpReceiver | FileSink, scanner: PtyScanner | None = None
) -> Callable[[], str]:
    def port(device: PtyReceiver | PtyScanner) -> str:
        if not device.plugged:
            return "unplugged"
        return "reader attached" if device.reader_attached else "no reader"

    def status() -> str:
        if isinstance(sink, TcpReceiver):
            text = f"{sink.clients} client(s) connected"
        elif isinstance(sink, PtyReceiver):
            text = port(sink)
        else:
            text = ""
        if scanner is not None:
            text = f"{text}; scanner: {port(scanner)} ({scanner.bytes_written} bytes)".lstrip("; ")
        return text

    return status


if __name__ == "__main__":
    sys.exit(main())
