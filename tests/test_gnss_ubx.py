"""u-blox set-up over UBX: the pure core, then real ptys with the simulated receiver."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import pytest
from pyubx2 import UBXReader

from firmware_agent.errors import ConfigError
from firmware_agent.gnss.receiver_setup import configure_receiver, probe_receiver
from firmware_agent.gnss.ubx import (
    Generation,
    Readback,
    ReceiverIdentity,
    ReceiverReport,
    ReceiverSettings,
    Status,
    StepResult,
    UbxFramer,
    poll_version,
    setup_steps,
    verdict,
)
from simulator.receiver import PtyReceiver
from simulator.static_receiver import StaticReceiver
from simulator.ubx_responder import UbxGeneration, UbxResponder

REPO = Path(__file__).resolve().parents[1]
FLEET_AGENT = str(Path(sys.executable).parent / "fleet-agent")
GGA = b"$GNGGA,080000.00,4808.22000,N,01134.50000,E,1,09,0.90,520.0,M,47.0,M,,*4E\r\n"
TIMEOUT_S = 0.4

# --- the pure core ----------------------------------------------------------------


def _stream() -> tuple[bytes, list[bytes]]:
    frames = [
        poll_version(),
        *(step.frame for step in setup_steps(Generation.LEGACY, ReceiverSettings())),
    ]
    return GGA + GGA.join(frames) + GGA[:20], frames


def test_framer_finds_the_frames_between_nmea_whole_split_and_byte_by_byte() -> None:
    stream, frames = _stream()
    whole = UbxFramer()
    assert whole.feed(stream) == frames
    assert whole.nmea_seen
    for cut in range(0, len(stream), 7):
        split = UbxFramer()
        assert split.feed(stream[:cut]) + split.feed(stream[cut:]) == frames
    bytewise = UbxFramer()
    assert [f for i in range(len(stream)) for f in bytewise.feed(stream[i : i + 1])] == frames


def test_framer_drops_a_corrupt_frame_and_finds_the_next() -> None:
    good = poll_version()
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    framer = UbxFramer()
    assert framer.feed(bytes(bad) + b"\xb5\x62\xff\xff" + good) == [good]
    assert framer.bad_frames == 2  # the checksum, then an impossible length
    assert not framer.nmea_seen


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"rate_hz": 0.0}, "rate_hz"),
        ({"rate_hz": 40.0}, "rate_hz"),
        ({"rate_hz": float("nan")}, "rate_hz"),
        ({"dynamic_model": "car"}, "dynamic_model"),
        ({"nmea": ("GGA", "GSV")}, "nmea"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        ReceiverSettings(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hardware", "extensions", "generation"),
    [
        ("00080000", ("PROTVER=32.01",), Generation.LEGACY),  # an M8 on SPG 4.04
        ("00190000", (), Generation.VALSET),
        ("000A0000", (), Generation.VALSET),
        ("00990000", ("PROTVER=34.10",), Generation.VALSET),
        ("00990000", ("PROTVER=15.00",), Generation.LEGACY),
        ("00990000", (), Generation.LEGACY),
    ],
)
def test_generation_from_hardware_then_protocol(
    hardware: str, extensions: tuple[str, ...], generation: Generation
) -> None:
    assert ReceiverIdentity("ROM", hardware, extensions).generation is generation


def test_verdict_fails_on_a_nak_and_on_a_wrong_readback() -> None:
    identity = ReceiverIdentity("ROM CORE 3.01", "00080000", ("MOD=NEO-M8N",))
    settings = ReceiverSettings(rate_hz=5)
    ok = verdict(
        "p", identity, settings, [StepResult("CFG-RATE", "ack")], Readback(5.0, "automotive")
    )
    assert ok.status is Status.CONFIGURED
    assert ok.saved
    bad = verdict(
        "p",
        identity,
        settings,
        [StepResult("CFG-RATE", "ack"), StepResult("CFG-NAV5", "nak")],
        Readback(1.0, "automotive"),
    )
    assert bad.status is Status.FAILED
    assert not bad.ok
    assert not bad.saved
    assert bad.problems == ("CFG-NAV5: refused (NAK)", "rate reads back as 1.0 Hz, not 5")


# --- over a real pty --------------------------------------------------------------

pty_tests = pytest.mark.usefixtures("no_blocking")


def _count_gga(path: Path, duration_s: float) -> int:
    """GGA sentences read from ``path`` in ``duration_s`` (blocking: run off the loop)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    data = b""
    try:
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                data += os.read(fd, 65536)
    finally:
        os.close(fd)
    return data.count(b"GGA,")


def _with_receiver(
    tmp_path: Path,
    responder: UbxResponder | None,
    body: Callable[[Path, PtyReceiver], Awaitable[None]],
    *,
    nmea: bool = True,
) -> None:
    async def session() -> None:
        link = tmp_path / "gnss"
        async with PtyReceiver(link, responder=responder) as pty:
            task = asyncio.create_task(StaticReceiver(pty, responder).run()) if nmea else None
            try:
                await body(link, pty)
            finally:
                if task is not None:
                    task.cancel()

    asyncio.run(session())


@pty_tests
@pytest.mark.parametrize("generation", ["m8", "m9"])
def test_configure_sets_rate_and_model_saves_them_and_the_nmea_rate_follows(
    tmp_path: Path, generation: UbxGeneration
) -> None:
    responder = UbxResponder(generation)

    async def body(link: Path, pty: PtyReceiver) -> None:
        before = await asyncio.to_thread(_count_gga, link, 0.6)
        report = await configure_receiver(
            str(link), ReceiverSettings(rate_hz=5, dynamic_model="automotive"), timeout_s=TIMEOUT_S
        )
        assert report.status is Status.CONFIGURED, report.problems
        assert (report.rate_hz, report.dynamic_model, report.saved) == (5.0, "automotive", True)
        assert report.identity is not None
        assert report.identity.generation.value == {"m8": "legacy", "m9": "valset"}[generation]
        assert report.identity.model == {"m8": "NEO-M8N", "m9": "NEO-M9N"}[generation]
        assert all(step.outcome == "ack" for step in report.steps)
        after = await asyncio.to_thread(_count_gga, link, 1.0)
        assert before <= 1, before
        assert 4 <= after <= 7, after
        # Saved: a power cycle keeps it.
        responder.power_cycle()
        probed = await probe_receiver(str(link), timeout_s=TIMEOUT_S)
        assert (probed.status, probed.rate_hz, probed.dynamic_model) == (
            Status.PROBED,
            5.0,
            "automotive",
        )

    _with_receiver(tmp_path, responder, body)
    expected = "CFG-VALSET" if generation == "m9" else "CFG-CFG"
    assert expected in responder.received


@pty_tests
@pytest.mark.parametrize("generation", ["m8", "m9"])
def test_without_save_a_power_cycle_forgets(tmp_path: Path, generation: UbxGeneration) -> None:
    responder = UbxResponder(generation)

    async def body(link: Path, pty: PtyReceiver) -> None:
        settings = ReceiverSettings(rate_hz=10, dynamic_model="pedestrian", save=False)
        report = await configure_receiver(str(link), settings, timeout_s=TIMEOUT_S)
        assert (report.status, report.rate_hz, report.saved) == (Status.CONFIGURED, 10.0, False)
        responder.power_cycle()
        probed = await probe_receiver(str(link), timeout_s=TIMEOUT_S)
        assert (probed.rate_hz, probed.dynamic_model) == (1.0, "portable")

    _with_receiver(tmp_path, responder, body)


@pty_tests
@pytest.mark.parametrize(
    ("generation", "refused", "how"),
    [("m8", "CFG-NAV5", "nak"), ("m9", "CFG-VALSET", "nak"), ("m9", "CFG-VALSET", "ignore")],
)
def test_a_refused_or_unanswered_setting_is_reported(
    tmp_path: Path, generation: UbxGeneration, refused: str, how: Literal["nak", "ignore"]
) -> None:
    responder = UbxResponder(generation, refuse={refused: how})

    async def body(link: Path, pty: PtyReceiver) -> None:
        started = time.monotonic()
        report = await configure_receiver(str(link), ReceiverSettings(), timeout_s=TIMEOUT_S)
        assert time.monotonic() - started < 3.0
        assert report.status is Status.FAILED
        assert not report.saved
        outcome = {"nak": "nak", "ignore": "timeout"}[how]
        assert StepResult(refused, outcome) in report.steps
        assert report.problems[0].startswith(refused)
        assert report.dynamic_model == "portable"  # the receiver kept its own

    _with_receiver(tmp_path, responder, body)


@pty_tests
def test_a_receiver_that_is_not_ublox_is_reported_not_an_error(tmp_path: Path) -> None:
    async def body(link: Path, pty: PtyReceiver) -> None:
        started = time.monotonic()
        report = await configure_receiver(str(link), ReceiverSettings(), timeout_s=TIMEOUT_S)
        assert time.monotonic() - started < 3.0
        assert report.status is Status.NOT_UBLOX
        assert report.identity is None
        assert "not a u-blox" in report.problems[0]

    _with_receiver(tmp_path, None, body)


@pty_tests
def test_a_silent_port_and_a_missing_one(tmp_path: Path) -> None:
    async def body(link: Path, pty: PtyReceiver) -> None:
        silent = await probe_receiver(str(link), timeout_s=TIMEOUT_S)
        assert silent.status is Status.SILENT
        missing = await probe_receiver(str(tmp_path / "absent"), timeout_s=TIMEOUT_S)
        assert missing.status is Status.UNAVAILABLE
        assert "absent" in missing.problems[0]

    _with_receiver(tmp_path, UbxResponder("m8", refuse={"MON-VER": "ignore"}), body, nmea=False)


def test_report_json_is_plain_data() -> None:
    report = ReceiverReport(port="p", status=Status.NOT_UBLOX, problems=("x",))
    assert json.loads(json.dumps(report.to_json_dict()))["status"] == "not_ublox"


# --- the commands, as installed ---------------------------------------------------


@pytest.mark.slow  # three interpreters start: 2-3 s on a quiet machine, more under load
def test_fleet_agent_gnss_configure_against_fleet_sim_receiver(tmp_path: Path) -> None:
    link = tmp_path / "gnss"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator", "receiver", "--pty", str(link), "--ubx", "m8"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        assert select.select([sim.stdout], [], [], 10.0)[0], "fleet-sim receiver printed nothing"
        assert sim.stdout.readline().startswith("pty: /dev/")

        def agent(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [FLEET_AGENT, "gnss", *args, "--port", str(link), "--timeout-s", "0.5"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip

        done = agent("configure", "--rate-hz", "5", "--no-save", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert (report["status"], report["rate_hz"], report["saved"]) == ("configured", 5.0, False)
        sim.send_signal(signal.SIGHUP)  # a power cycle: nothing was saved
        assert sim.stderr is not None
        assert select.select([sim.stderr], [], [], 10.0)[0]
        assert sim.stderr.readline().startswith("power cycle: 1 Hz")
        usage = agent("configure", "--dynamic-model", "car")
        assert usage.returncode == 2
        assert "dynamic_model" in usage.stderr
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.communicate()
    assert sim.returncode == 0
    assert not link.exists()


# --- the simulated receiver's UBX side ------------------------------------------


def _identities(replies: list[bytes]) -> list[str]:
    return [str(UBXReader.parse(reply).identity) for reply in replies]


@pytest.mark.parametrize("generation", ["m8", "m9"])
def test_responder_answers_whole_or_byte_by_byte(generation: UbxGeneration) -> None:
    kind = Generation.LEGACY if generation == "m8" else Generation.VALSET
    host = GGA + poll_version() + b"".join(s.frame for s in setup_steps(kind, ReceiverSettings()))
    whole = UbxResponder(generation).feed(host)
    bytewise = UbxResponder(generation)
    assert [r for i in range(len(host)) for r in bytewise.feed(host[i : i + 1])] == whole
    assert _identities(whole)[0] == "MON-VER"
    assert set(_identities(whole)[1:]) == {"ACK-ACK"}


@pytest.mark.parametrize(
    ("generation", "foreign"),
    [("m8", Generation.VALSET), ("m9", Generation.LEGACY)],
)
def test_each_generation_naks_the_other_ones_messages(
    generation: UbxGeneration, foreign: Generation
) -> None:
    responder = UbxResponder(generation)
    replies = responder.feed(b"".join(s.frame for s in setup_steps(foreign, ReceiverSettings())))
    assert set(_identities(replies)) == {"ACK-NAK"}
    assert responder.state.dynamic_model == 0


def test_fleet_sim_play_ubx_needs_a_pty(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.cli import main  # noqa: PLC0415

    assert main(["play", "--stops", "1", "--ubx", "m8", "--file", os.devnull]) == 1
    assert "--ubx needs --pty" in capsys.readouterr().err


def test_a_played_day_is_thinned_to_the_rate_set_over_ubx() -> None:
    from simulator.playback import TimedChunk  # noqa: PLC0415
    from simulator.ubx_responder import at_receiver_rate  # noqa: PLC0415

    responder = UbxResponder("m9")
    responder.state.meas_period_ms = 100  # the day's own 10 Hz
    day = (TimedChunk(offset_s=i * 0.1, data=b"%d" % i) for i in range(40))
    played = []
    for chunk in at_receiver_rate(day, responder):
        played.append(chunk.data)
        if chunk.data == b"9":
            responder.state.meas_period_ms = 200  # the host sets 5 Hz
        if chunk.data == b"19":
            responder.state.meas_period_ms = 1000  # and then 1 Hz
    assert played[:10] == [b"%d" % i for i in range(10)]
    assert played[10:15] == [b"11", b"13", b"15", b"17", b"19"]
    assert played[15:] == [b"29", b"39"]
