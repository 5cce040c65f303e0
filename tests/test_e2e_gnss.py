"""End to end: the simulator plays a van day on a pty, the agent's reader decodes it.

Two programs, as in the van: ``fleet-sim play`` (a separate process) serves a generated
day on a pseudo-terminal with a tunnel outage and a receiver unplug/replug; the agent's
:class:`GnssReader` reads that pty in this process. Every decoded fix is checked against
the ground truth ``fleet-sim scenario`` wrote beside the day.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.geo import haversine_m
from firmware_agent.gnss.reader import GnssReader, ReaderConfig
from simulator.truth import TruthRow, load_truth

FLEET_SIM = shutil.which("fleet-sim") or str(Path(sys.executable).parent / "fleet-sim")
UERE_M = 2.5  # the simulator's default user range error per axis

RATE_HZ = 5
SPEEDUP = 25.0
DURATION_S = 360  # six minutes of a van's day, 14.4 s of wall time
OUTAGE = (100, 25)  # a tunnel: 25 s without a fix from t+100 s
UNPLUG = (220, 20)  # the receiver pulled out at t+220 s, back 20 s later

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_blocking")]


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("day")
    subprocess.run(
        [
            FLEET_SIM, "scenario", "--seed", "11", "--stops", "4", "--rate-hz", str(RATE_HZ),
            "--talker", "GN", "--duration-h", str(DURATION_S / 3600),
            "--tunnels", "0", "--outage", f"{OUTAGE[0]}:{OUTAGE[1]}", "--out", str(out),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


async def _play_and_read(day: Path, link: Path) -> tuple[list[Fix], GnssReader, str]:
    reader = GnssReader(
        ReaderConfig(port=str(link), idle_flush_s=0.1, backoff_initial_s=0.02, backoff_max_s=0.1)
    )
    fixes: list[Fix] = []

    async def consume() -> None:
        async with contextlib.aclosing(reader.fixes()) as stream:
            async for fix in stream:
                fixes.append(fix)

    sim = await asyncio.create_subprocess_exec(
        FLEET_SIM, "play", "--scenario-dir", str(day), "--pty", str(link),
        "--speedup", str(SPEEDUP), "--wait-reader",
        "--unplug-after-s", str(UNPLUG[0]), "--unplug-for-s", str(UNPLUG[1]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    task = asyncio.create_task(consume(), name="gnss-reader")
    try:
        async with asyncio.timeout(DURATION_S / SPEEDUP + 60):
            _, err = await sim.communicate()
        await asyncio.sleep(0.3)  # the last epoch leaves on the idle flush
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if sim.returncode is None:
            sim.kill()
            await sim.wait()
    assert sim.returncode == 0, err.decode()
    return fixes, reader, err.decode()


@pytest.fixture(scope="module")
def played(
    day: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Fix], GnssReader, str, dict[datetime, TruthRow]]:
    link = tmp_path_factory.mktemp("dev") / "gnss"
    fixes, reader, sim_log = asyncio.run(_play_and_read(day, link))
    truth = {row.time: row for row in load_truth(day).rows}
    return fixes, reader, sim_log, truth


def _in(window: tuple[int, int], t0: datetime, t: datetime, margin_s: float = 0.0) -> bool:
    start = t0 + timedelta(seconds=window[0] - margin_s)
    return start <= t < start + timedelta(seconds=window[1] + 2 * margin_s)


def test_every_fix_is_a_truth_epoch_decoded_exactly(played: tuple) -> None:  # type: ignore[type-arg]
    fixes, reader, _, truth = played
    assert len(fixes) > 0.85 * len(truth)
    for fix in fixes:
        row = truth[fix.time]  # KeyError: a fix at a time the receiver never sent
        if row.reported_lat is None:
            assert fix.lat is None, f"{fix.time}: a position while the receiver had no fix"
            continue
        assert fix.lat is not None, fix.time
        assert fix.lon is not None, fix.time
        # What the receiver reported, to NMEA precision (5 decimals of minutes).
        assert abs(fix.lat - row.reported_lat) < 1e-6
        assert abs(fix.lon - (row.reported_lon or 0.0)) < 1e-6
        assert fix.mode in (FixMode.FIX_2D, FixMode.FIX_3D)
    # The pty was clean apart from the unplug, which may cut one sentence in two.
    assert reader.decoder.faults.total() <= 2, reader.decoder.summary()


def test_positions_are_within_the_injected_noise(played: tuple) -> None:  # type: ignore[type-arg]
    fixes, _, _, truth = played
    ratios = []
    for fix in fixes:
        row = truth[fix.time]
        if fix.lat is None or fix.lon is None or row.multipath or row.hdop is None:
            continue
        error_m = haversine_m(row.lat, row.lon, fix.lat, fix.lon)
        ratios.append(error_m / (row.hdop * UERE_M))
    assert len(ratios) > 1000
    # Horizontal error over sigma = HDOP x UERE per axis is Rayleigh: mean 1.25,
    # beyond 5 with probability 4e-6.
    mean = sum(ratios) / len(ratios)
    assert 0.6 < mean < 2.0, mean
    assert max(ratios) < 5.5, max(ratios)


def test_the_tunnel_gives_no_fix_epochs_then_reacquisition(played: tuple) -> None:  # type: ignore[type-arg]
    fixes, _, _, truth = played
    t0 = min(truth)
    in_tunnel = [f for f in fixes if f.time and _in(OUTAGE, t0, f.time)]
    # The receiver kept talking in the tunnel: epochs arrive, none with a position.
    assert len(in_tunnel) >= 0.9 * OUTAGE[1] * RATE_HZ
    assert all(f.lat is None and f.mode is FixMode.NO_FIX for f in in_tunnel)
    after = [f for f in fixes if f.time and f.time >= t0 + timedelta(seconds=sum(OUTAGE))]
    reacquired = next(f for f in after if f.lat is not None)
    assert reacquired.time is not None
    assert reacquired.time - (t0 + timedelta(seconds=sum(OUTAGE))) < timedelta(seconds=10)


def test_the_unplug_costs_only_its_own_window(played: tuple) -> None:  # type: ignore[type-arg]
    fixes, reader, sim_log, truth = played
    assert "unplugged at" in sim_log
    assert "replugged at" in sim_log
    assert reader.stats["opens"] >= 2
    assert reader.stats["disconnects"] >= 1
    t0 = min(truth)
    times = sorted(f.time for f in fixes if f.time is not None)
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a > timedelta(seconds=1)]
    # One gap: the unplug. Its length is the unplugged time plus the reopen (< 1 s wall).
    assert len(gaps) == 1, gaps
    start, end = gaps[0]
    assert _in(UNPLUG, t0, start, margin_s=1.0)
    assert (end - start).total_seconds() < UNPLUG[1] + SPEEDUP * 1.0
    # Everything outside that gap came through.
    expected = [t for t in truth if not (start < t < end)]
    assert len(times) >= 0.995 * len(expected), (len(times), len(expected))


def test_no_fix_is_reported_twice_or_out_of_order(played: tuple) -> None:  # type: ignore[type-arg]
    fixes, _, _, _ = played
    times = [f.time for f in fixes]
    assert all(t is not None for t in times)
    assert times == sorted(times)  # type: ignore[type-var]
    assert len(set(times)) == len(times)
