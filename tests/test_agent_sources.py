"""The agent's parts (issue 14): fix sources, scan sources, clocks, driver feedback,
their settings, and ``fleet-agent run`` built from them.

Real parts throughout: a TCP NMEA server (the simulator's gpsfake-like receiver), FIFOs
carrying the kernel's own ``struct input_event`` bytes into the real HID reader (no
/dev/uinput here: the documented event-stream hook of :class:`~firmware_agent.sources.
scans.HidScan`), gpiozero's MockFactory pins. The last test runs ``fleet-agent run`` as a
process with two HID scanners and GPIO feedback and asserts the LED and buzzer pins'
history for a delivery and a wrong-stop scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import gpiozero  # type: ignore[import-untyped]
import pytest
from evdev import ecodes
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.jws import peek_claims
from firmware_agent.contract.outcomes import card_code
from firmware_agent.contract.times import format_utc
from firmware_agent.errors import ConfigError
from firmware_agent.feedback import (
    PATTERNS,
    PIN_HISTORY_ENV,
    DriverFeedback,
    FeedbackPins,
    FeedbackSettings,
    LogFeedback,
    NullFeedback,
    Signal,
    open_feedback,
)
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.run_cli import build_config, settings
from firmware_agent.scan.types import Scan
from firmware_agent.sources import (
    GnssClock,
    HidScan,
    NmeaFile,
    ScanLog,
    SerialGnss,
    SerialScan,
    SimClock,
    SystemClock,
    TcpGnss,
)
from firmware_agent.sources.scans import write_events
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.uplink.outbox import Outbox
from simulator.broker import free_port
from simulator.receiver import TcpReceiver
from tests.idle_agent import run_args
from tests.nmea import line, ublox_cycle
from tests.test_scan_hid import keystrokes
from tests.vanday import latlon

BIN = Path(sys.executable).parent
SSCC_S1 = "106141412345678908"  # GS1's own example SSCC
SSCC_S2 = "106141412345678915"
SSCC_S1B = "106141412345678922"  # a second parcel for S1: the failed attempt


def sscc_check(body: str) -> str:
    """``body`` (17 digits) with its GS1 mod-10 check digit."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def test_the_test_parcels_are_valid_ssccs() -> None:
    assert sscc_check(SSCC_S1[:-1]) == SSCC_S1
    assert sscc_check(SSCC_S2[:-1]) == SSCC_S2
    assert sscc_check(SSCC_S1B[:-1]) == SSCC_S1B


def hid_bytes(text: str) -> bytes:
    """The raw input events a US-layout keyboard-mode scanner sends for ``text``."""
    return write_events(
        [(ecodes.EV_KEY, code, value) for code, value in keystrokes(text)], time_s=time.time()
    )


def nmea_epoch(t: datetime, x_m: float) -> bytes:
    """RMC + GGA + GSA of a van standing ``x_m`` east of the test street's origin."""
    lat, lon = latlon(x_m)
    hms = t.strftime("%H%M%S.") + f"{t.microsecond // 10000:02d}"

    def angle(value: float, width: int, hemis: str) -> str:
        degrees = int(abs(value))
        minutes = (abs(value) - degrees) * 60.0
        return f"{degrees:0{width}d}{minutes:09.6f},{hemis[0] if value >= 0 else hemis[1]}"

    where = f"{angle(lat, 2, 'NS')},{angle(lon, 3, 'EW')}"
    return b"".join(
        [
            line(f"GPRMC,{hms},A,{where},0.000,90.0,{t.strftime('%d%m%y')},,,A"),
            line(f"GPGGA,{hms},{where},1,08,0.9,512.0,M,47.0,M,,"),
            line("GPGSA,A,3,01,02,03,04,05,06,07,08,,,,,1.5,0.9,1.1"),
        ]
    )


async def take(iterator: AsyncIterator[Any], n: int, timeout_s: float = 10.0) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(timeout_s):
        async for item in iterator:
            out.append(item)
            if len(out) == n:
                break
    return out


# -- clocks ------------------------------------------------------------------------------


def test_the_simulated_clock_runs_at_the_playback_speed_from_the_first_fix() -> None:
    wall = [100.0]
    clock = SimClock(50.0, monotonic=lambda: wall[0])
    assert not clock.anchored
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    clock.on_fix(Fix(time=t0, tod_s=0.0))
    clock.on_fix(Fix(time=t0 + timedelta(hours=1), tod_s=0.0))  # only the first anchors
    assert clock.now() == t0
    wall[0] += 2.0
    assert clock.now() == t0 + timedelta(seconds=100)
    assert clock.at(101.0) == t0 + timedelta(seconds=50)


def test_the_gnss_clock_follows_gnss_time_only_when_the_system_clock_is_off() -> None:
    clock = GnssClock(max_skew_s=2.0)
    clock.on_fix(
        Fix(time=datetime.now(UTC) + timedelta(hours=3), tod_s=0.0, mode=FixMode.FIX_3D)
    )  # a Pi without RTC
    assert abs((clock.now() - datetime.now(UTC)).total_seconds() - 3 * 3600) < 5
    clock.on_fix(
        Fix(time=datetime.now(UTC) + timedelta(seconds=0.5), tod_s=0.0, mode=FixMode.FIX_3D)
    )
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 1
    before = clock.now()
    no_fix = Fix(time=datetime.now(UTC) - timedelta(days=9), tod_s=0.0, mode=FixMode.NO_FIX)
    clock.on_fix(no_fix)  # no fix: ignored
    assert abs((clock.now() - before).total_seconds()) < 1


def test_a_file_runs_on_the_system_clock_and_a_receiver_on_the_gnss_clock(
    tmp_path: Path,
) -> None:
    def agent(**config: Any) -> Agent:
        return Agent(
            AgentConfig(
                state_dir=tmp_path, uplink=UplinkConfig(device_id="van-1", port=0), **config
            )
        )

    assert isinstance(agent(nmea_file=tmp_path / "x.nmea").clock, SystemClock)
    assert isinstance(agent(gnss=TcpGnss("127.0.0.1", 2947)).clock, GnssClock)


# -- fix sources -------------------------------------------------------------------------


def test_a_file_merges_its_scan_logs_into_the_fixes_by_time(tmp_path: Path) -> None:
    nmea = tmp_path / "day.nmea"
    nmea.write_bytes(b"".join(line(s) for second in range(23, 30) for s in ublox_cycle(second)))
    fixes = GnssDecoder().feed(nmea.read_bytes()) + GnssDecoder().flush()
    assert len(fixes) >= 6

    def scan_at(second: float, raw: str) -> str:
        t = datetime(2010, 8, 21, 8, 37, tzinfo=UTC) + timedelta(seconds=second)
        return json.dumps({"time": format_utc(t), "raw": raw, "source": "serial"}) + "\n"

    scans = tmp_path / "scans.jsonl"
    scans.write_text(scan_at(25.5, "b") + scan_at(10, "a") + scan_at(25, "c") + scan_at(99, "z"))

    async def main() -> list[Fix | Scan]:
        return [r async for r in NmeaFile(nmea, scans=(scans,)).readings(SystemClock())]

    readings = asyncio.run(main())
    order = [r.raw if isinstance(r, Scan) else r.time.second for r in readings if r.time]
    # Before the first fix at or after each scan; the one past the last fix at the end.
    assert order == ["a", 23, 24, "c", 25, "b", 26, 27, 28, 29, "z"]


def test_a_receiver_on_tcp_is_read_and_reconnected() -> None:
    unused_port = free_port()
    source = TcpGnss("127.0.0.1", unused_port, backoff_initial_s=0.05, backoff_max_s=0.2)
    assert source.live

    async def serve(seconds: range) -> TcpReceiver:
        receiver = TcpReceiver(port=unused_port)
        await receiver.__aenter__()
        await receiver.wait_for_client()
        for second in seconds:
            receiver.write(b"".join(line(s) for s in ublox_cycle(second)))
            await asyncio.sleep(0.05)
        return receiver

    async def main() -> list[int]:
        readings = source.readings(SystemClock())
        got: list[int] = []
        reader = asyncio.create_task(take(readings, 6, timeout_s=20))
        first = await serve(range(23, 27))
        await asyncio.sleep(0.5)
        await first.close()  # the server goes away: the source reconnects to the next
        second = await serve(range(40, 45))
        got = [f.time.second for f in await reader]
        await second.close()
        return got

    # The last epoch before the server went away is flushed on the quiet line (or at
    # the disconnect); then the reconnected stream.
    assert asyncio.run(main()) == [23, 24, 25, 26, 40, 41]


# -- scan sources ------------------------------------------------------------------------


def test_hid_codes_through_a_fifo_of_raw_input_events(tmp_path: Path) -> None:
    """The real HID reader and key decoder, fed the kernel's event bytes by a FIFO; a
    writer that closes is a scanner unplugged, and the next writer is read."""
    fifo = tmp_path / "scanner.events"
    os.mkfifo(fifo)
    label = f"]C100{SSCC_S1}"

    def write(data: bytes) -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until the reader has the FIFO open
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    async def main() -> list[Scan]:
        scans = HidScan(str(fifo), event_stream=True).scans(SystemClock())
        reader = asyncio.create_task(take(scans, 3, timeout_s=20))
        await asyncio.to_thread(write, hid_bytes(label) + hid_bytes("abc"))
        await asyncio.to_thread(write, hid_bytes("Second-Plug"))
        return await reader

    got = asyncio.run(main())
    assert [s.raw for s in got] == [label, "abc", "Second-Plug"]
    assert {s.source for s in got} == {"hid"}


def test_a_recorded_event_file_plays_once(tmp_path: Path) -> None:
    capture = tmp_path / "capture.events"
    # "two" cut inside its Enter press: never a code; "one" read once, not again.
    capture.write_bytes(hid_bytes("one") + hid_bytes("two")[:-29])

    async def main() -> list[Scan]:
        got: list[Scan] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                async for scan in HidScan(str(capture), event_stream=True).scans(SystemClock()):
                    got.append(scan)
        return got

    assert [s.raw for s in asyncio.run(main())] == ["one"]


def test_a_scan_log_beside_a_receiver_plays_against_the_clock(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    log_file = tmp_path / "scans.jsonl"
    log_file.write_text(
        "".join(
            json.dumps({"time": format_utc(now + timedelta(seconds=s)), "raw": r, "source": "hid"})
            + "\n"
            for s, r in ((0.6, "late"), (-60, "past"))
        )
    )

    async def main() -> list[tuple[str, float]]:
        started = time.monotonic()
        return [
            (scan.raw, time.monotonic() - started)
            async for scan in ScanLog(log_file).scans(SystemClock())
        ]

    (past, past_s), (late, late_s) = asyncio.run(main())
    assert (past, late) == ("past", "late")
    assert past_s < 0.3
    assert late_s >= 0.5


def test_the_settings_map_onto_sources_and_scan_logs_join_a_file(tmp_path: Path) -> None:
    config = AgentConfig(
        state_dir=tmp_path,
        uplink=UplinkConfig(device_id="van-1", port=0),
        nmea_file=tmp_path / "day.nmea",
        speed=2.0,
        scans_file=tmp_path / "a.jsonl",
        scanners=(HidScan("/dev/fleet/scanner-hid"), ScanLog(tmp_path / "b.jsonl")),
    )
    gnss, scanners = config.sources()
    assert gnss == NmeaFile(
        tmp_path / "day.nmea", speed=2.0, scans=(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    )
    assert scanners == (HidScan("/dev/fleet/scanner-hid"),)
    with pytest.raises(ConfigError, match="exactly one GNSS input"):
        AgentConfig(state_dir=tmp_path, uplink=UplinkConfig(device_id="van-1", port=0))


# -- feedback ----------------------------------------------------------------------------


def test_log_feedback_writes_each_signal(caplog: pytest.LogCaptureFixture) -> None:
    feedback = open_feedback(FeedbackSettings(kind="log"))
    assert isinstance(feedback, LogFeedback)
    with caplog.at_level(logging.INFO, logger="firmware_agent.feedback"):
        feedback.signal(Signal.WRONG_STOP)
    assert "driver feedback: wrong_stop" in caplog.text
    assert isinstance(open_feedback(FeedbackSettings(kind="none")), NullFeedback)
    with pytest.raises(ConfigError):
        FeedbackSettings(kind="lamp")  # type: ignore[arg-type]


def test_unusable_pins_leave_the_van_running_without_feedback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = MockFactory()
    with caplog.at_level(logging.ERROR, logger="firmware_agent.feedback"):
        bad_pin = open_feedback(
            FeedbackSettings(kind="gpio", pins=FeedbackPins(green_led=99)), pin_factory=factory
        )
        with gpiozero.LED(27, pin_factory=factory):  # the red LED's pin held elsewhere
            in_use = open_feedback(FeedbackSettings(kind="gpio"), pin_factory=factory)
    assert isinstance(bad_pin, NullFeedback)
    assert isinstance(in_use, NullFeedback)
    assert "feedback pin 99" in caplog.text
    assert "feedback pin 27" in caplog.text
    # The pins it did open before the failure are released again.
    with DriverFeedback(FeedbackPins(red_led=None), pin_factory=factory) as feedback:
        feedback.signal(Signal.RECORDED)
        assert feedback.wait_idle(5)


def test_a_muted_buzzer_stays_off_while_the_leds_play() -> None:
    factory = MockFactory()
    with DriverFeedback(FeedbackPins(), pin_factory=factory, buzzer_muted=True) as feedback:
        feedback.signal(Signal.WRONG_STOP)
        assert feedback.wait_idle(5)
    assert [s.state for s in factory.pin(22).states] == [False]
    assert [s.state for s in factory.pin(27).states] == [False] + [True, False] * 3


def test_the_mock_pin_history_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = tmp_path / "pins.jsonl"
    monkeypatch.setenv(PIN_HISTORY_ENV, str(history))
    with DriverFeedback(FeedbackPins(), pin_factory=MockFactory()) as feedback:
        feedback.signal(Signal.RECORDED)
        assert feedback.wait_idle(5)
    pins = {p["role"]: p for p in map(json.loads, history.read_text().splitlines())}
    assert pins["green"]["pin"] == "GPIO17"
    assert [s for _, s in pins["green"]["states"]] == [False, True, False]
    assert [s for _, s in pins["buzzer"]["states"]] == [False, True, False]
    assert [s for _, s in pins["red"]["states"]] == [False]


# -- settings ----------------------------------------------------------------------------


def config_from(tmp_path: Path, toml: str, *argv: str, **environ: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "van-7"\n' + toml)
    args = run_args("--config", str(path), *argv)
    config = build_config(args, settings(args, environ))
    assert isinstance(config, AgentConfig)
    return config


def test_the_toml_sets_the_sources_and_the_feedback(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        """
[gnss]
source = "tcp"
address = "127.0.0.1:2947"
[[scanners]]
kind = "hid"
device = "/dev/fleet/ring"
grab = false
[[scanners]]
kind = "hid"
device = "/run/handheld.events"
event_stream = true
[[scanners]]
kind = "serial"
port = "/dev/ttyACM3"
baud = 115200
[[scanners]]
kind = "log"
file = "scans.jsonl"
[feedback]
kind = "log"
green_led = "GPIO5"
red_led = 6
buzzer = false
buzzer_muted = true
""",
    )
    gnss, scanners = config.sources()
    assert gnss == TcpGnss("127.0.0.1", 2947)
    assert [s.describe() for s in scanners] == [
        "HID scanner /dev/fleet/ring",
        "HID event stream /run/handheld.events",
        "serial scanner /dev/ttyACM3",
        "scan log scans.jsonl",
    ]
    assert isinstance(scanners[0], HidScan)
    assert not scanners[0].grab
    assert isinstance(scanners[2], SerialScan)
    assert scanners[2].config.baudrate == 115200
    assert config.feedback == FeedbackSettings(
        kind="log", pins=FeedbackPins(green_led="GPIO5", red_led=6, buzzer=None), buzzer_muted=True
    )


def test_the_defaults_flags_and_environment_choose_the_sources(tmp_path: Path) -> None:
    config = config_from(tmp_path, '[gnss]\nport = "/dev/fleet/gnss"\nbaud = 4800\n')
    gnss, scanners = config.sources()
    assert isinstance(gnss, SerialGnss)
    assert gnss.reader.baudrate == 4800
    assert scanners == ()
    assert config.feedback == FeedbackSettings(kind="gpio")  # a van has LEDs
    flags = config_from(
        tmp_path,
        "",
        "--set",
        "gnss.source=tcp",
        "--set",
        "gnss.address=gps.local:10110",
        "--set",
        "feedback.kind=none",
    )
    assert flags.sources()[0] == TcpGnss("gps.local", 10110)
    assert flags.feedback.kind == "none"
    (tmp_path / "d.nmea").write_text("")
    env = config_from(
        tmp_path,
        "",
        FLEET_GNSS_SOURCE="file",
        FLEET_GNSS_FILE=str(tmp_path / "d.nmea"),
        FLEET_FEEDBACK_BUZZER_MUTED="true",
    )
    assert env.sources()[0] == NmeaFile(tmp_path / "d.nmea")
    assert env.feedback.buzzer_muted


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[scanners]]\nkind = "bluetooth"\n', r"scanners.*kind"),
        ('[[scanners]]\nkind = "hid"\n', "needs device"),
        ('[[scanners]]\nkind = "hid"\ndevice = "x"\nport = "y"\n', "port is for kind"),
        ('[[scanners]]\nkind = "serial"\nport = "/dev/x"\nbaud = "fast"\n', r"scanners.*baud"),
        ('scanners = "hid"\n', "scanners"),
        ('[gnss]\nsource = "tcp"\naddress = "no-port"\n', "host:port"),
        ('[gnss]\nsource = "tcp"\n', "needs address"),
        ('[feedback]\nkind = "lamp"\n', r"feedback.*kind"),
        ("[feedback]\nbuzzer = 1.5\n", r"feedback.*buzzer"),
        ('[feedback]\nbuzzer_muted = "perhaps"\n', "buzzer_muted"),
    ],
)
def test_bad_source_settings_are_named(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from(tmp_path, toml)


# -- fleet-agent run with a HID scanner and GPIO feedback --------------------------------


def manifest(device_id: str) -> dict[str, Any]:
    def stop(stop_id: str, x_m: float, *parcels: str) -> dict[str, Any]:
        lat, lon = latlon(x_m)
        return {
            "id": stop_id,
            "lat": lat,
            "lon": lon,
            "radius_m": 35,
            "type": "house",
            "parcels": list(parcels),
        }

    return {
        "route_id": "R-hid",
        "device_id": device_id,
        "date": datetime.now(UTC).date().isoformat(),
        "stops": [stop("S1", 0.0, SSCC_S1, SSCC_S1B), stop("S2", 600.0, SSCC_S2)],
    }


async def write_when_read(path: Path, data: bytes, timeout_s: float = 30.0) -> None:
    """Write ``data`` into the FIFO once its reader (the agent) has it open, and close
    it (the scanner is unplugged; the agent waits for the next writer)."""

    def write() -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    await asyncio.to_thread(write)


def states(pin: dict[str, Any]) -> list[bool]:
    return [bool(s) for _, s in pin["states"]]


def on_durations(pin: dict[str, Any]) -> list[float]:
    """How long the pin stayed high each time (the time stamped on the next change)."""
    changes = pin["states"]
    return [changes[i + 1][0] for i in range(len(changes) - 1) if changes[i][1]]


class FifoScanner:
    """A HID scanner as a FIFO of raw input events (the event-stream hook)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.device = str(path)
        self.event_stream = True

    async def type(self, text: str) -> None:
        await write_when_read(Path(self.device), hid_bytes(text))


class UinputScanner:
    """A real virtual keyboard (/dev/uinput): the agent opens and grabs its evdev node."""

    def __init__(self, ui: Any) -> None:
        self.ui = ui
        self.device = str(ui.device.path)
        self.event_stream = False

    async def type(self, text: str) -> None:
        for code, value in keystrokes(text):
            self.ui.write(ecodes.EV_KEY, code, value)
            self.ui.syn()


def _uinput_writable() -> bool:
    return os.path.exists("/dev/uinput") and os.access("/dev/uinput", os.W_OK)


@contextlib.contextmanager
def hid_scanners(kind: str, tmp_path: Path) -> Iterator[list[FifoScanner | UinputScanner]]:
    """Two scanners, a ring scanner and a handheld."""
    if kind == "event-stream":
        yield [FifoScanner(tmp_path / "ring.events"), FifoScanner(tmp_path / "handheld.events")]
        return
    import evdev  # noqa: PLC0415

    keys = sorted({code for code, _ in keystrokes("]C1000123456789")})  # what the labels type
    with (
        evdev.UInput({ecodes.EV_KEY: keys}, name="fleet-test-ring") as ring,
        evdev.UInput({ecodes.EV_KEY: keys}, name="fleet-test-handheld") as handheld,
    ):
        yield [UinputScanner(ring), UinputScanner(handheld)]


async def wait_for_text(path: Path, text: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while text not in await asyncio.to_thread(path.read_text, errors="replace"):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "kind",
    [
        "event-stream",
        pytest.param(
            "uinput",
            marks=pytest.mark.skipif(
                not _uinput_writable(), reason="needs a writable /dev/uinput (a Pi)"
            ),
        ),
    ],
)
def test_fleet_agent_run_plays_the_drivers_feedback_for_hid_scans(
    tmp_path: Path, kind: str
) -> None:
    """``fleet-agent run`` as a process: a receiver on TCP parked at S1, two HID
    scanners (a ring scanner and a handheld: real uinput keyboards where /dev/uinput
    is writable, else each a FIFO of the same raw input events), GPIO feedback on
    gpiozero's mock pins. The ring scanner reads S1's parcel (a POD: the green LED and
    one short beep), the handheld S2's (a wrong stop: red and three beeps). The pins'
    history comes back through FLEET_TEST_PIN_HISTORY."""
    with hid_scanners(kind, tmp_path) as scanners:
        run_hid_day(tmp_path, scanners)


def run_hid_day(tmp_path: Path, scanners: list[FifoScanner | UinputScanner]) -> None:
    device = "van-hid"
    mqtt_port, gnss_port = free_port(), free_port()  # no broker: the outbox keeps it all
    state = tmp_path / "state"
    state.mkdir()
    (state / "manifest.json").write_text(json.dumps(manifest(device)))
    ring, handheld = scanners
    history = tmp_path / "pins.jsonl"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
device_id = "{device}"
state_dir = "{state}"
[mqtt]
port = {mqtt_port}
[gnss]
source = "tcp"
address = "127.0.0.1:{gnss_port}"
[[scanners]]
kind = "hid"
device = "{ring.device}"
event_stream = {str(ring.event_stream).lower()}
[[scanners]]
kind = "hid"
device = "{handheld.device}"
event_stream = {str(handheld.event_stream).lower()}
[feedback]
kind = "gpio"
[eta]
enabled = false
"""
    )
    env = {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        PIN_HISTORY_ENV: str(history),
        "PYTHONUNBUFFERED": "1",
    }

    async def main() -> str:
        agent_log = tmp_path / "agent.log"
        async with TcpReceiver(port=gnss_port) as receiver:
            log_file = agent_log.open("wb")
            agent = await asyncio.create_subprocess_exec(
                str(BIN / "fleet-agent"),
                *("run", "--config", str(config)),
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                await receiver.wait_for_client()

                async def parked() -> None:  # at S1, one epoch every 0.2 s, in real time
                    while True:
                        receiver.write(nmea_epoch(datetime.now(UTC), 0.0))
                        await asyncio.sleep(0.2)

                gnss = asyncio.create_task(parked())
                for scanner in scanners:
                    await wait_for_text(agent_log, f"HID scanner open on {scanner.device}")
                await asyncio.sleep(2.5)  # fixes through the pipeline: the van is at S1
                await ring.type(f"]C100{SSCC_S1}")
                await asyncio.sleep(1.5)  # the pattern plays out (0.3 s)
                await handheld.type(f"]C100{SSCC_S2}")
                # The delivery's POD waits 8 s for a reason card (docs/outcomes.md):
                # the next card must come after that, or it would amend the delivery.
                await asyncio.sleep(8.5)
                # A failed attempt, the reason card first: the card (its pattern) then
                # the parcel, signed "not home" at once (the failed-attempt pattern).
                await ring.type(card_code("not_home"))
                await asyncio.sleep(1.0)
                await handheld.type(f"]C100{SSCC_S1B}")
                await asyncio.sleep(2.0)  # 0.6 s
                gnss.cancel()
                agent.send_signal(signal.SIGINT)
                async with asyncio.timeout(30):
                    await agent.wait()
            finally:
                if agent.returncode is None:
                    agent.kill()
                    await agent.wait()
                log_file.close()
        return agent_log.read_text(errors="replace")

    output = asyncio.run(main())
    assert "driver feedback: DriverFeedback" in output, output
    pins = {p["role"]: p for p in map(json.loads, history.read_text().splitlines())}
    assert set(pins) == {"green", "red", "buzzer"}, output
    # A POD delivered: green 0.3 s with a 0.1 s beep. A wrong stop: red and buzzer
    # three times 0.15 s on, 0.15 s off. A reason card: amber 0.15 s, a 0.05 s click. A
    # failed attempt: amber 0.6 s, two 0.1 s beeps. Nothing else.
    assert states(pins["green"]) == [False] + [True, False] * 3, output
    assert states(pins["red"]) == [False] + [True, False] * 5, output
    assert states(pins["buzzer"]) == [False] + [True, False] * 7, output
    slack_s = 0.25  # a loaded machine's thread wake-ups
    expected = {
        "green": [0.3, 0.15, 0.6],
        "red": [0.15] * 4 + [0.6],
        "buzzer": [0.1] + [0.15] * 3 + [0.05, 0.1, 0.1],
    }
    for role, durations in expected.items():
        got = on_durations(pins[role])
        assert all(d <= g <= d + slack_s for d, g in zip(durations, got, strict=True)), (role, got)
    assert PATTERNS[Signal.RECORDED][0].duration_s == 0.1  # the table the pins played
    # What the pipeline decided, in the van's outbox: the PODs and the wrong-stop scan.
    with Outbox(state / "outbox.db") as outbox:
        pods = outbox.pending("pod", limit=10)
        events = [json.loads(r.payload) for r in outbox.pending("events", limit=100)]
    claims = [peek_claims(json.loads(p.payload)["jws"]) for p in pods]
    assert [(c["parcel"], c.get("outcome", "delivered")) for c in claims] == [
        (SSCC_S1, "delivered"),
        (SSCC_S1B, "not_home"),
    ], claims
    assert json.loads(pods[0].payload)["jws"]
    rejected = [e for e in events if e.get("type") == "scan_rejected"]
    assert [(e["reason"], e["parcel"]) for e in rejected] == [("wrong_stop", SSCC_S2)], events
