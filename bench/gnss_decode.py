"""GNSS decode throughput and memory, against raw ``pynmea2.parse`` in the same run.

    .venv/bin/python bench/gnss_decode.py [--repeat 5] [--keep DIR]

Inputs: (a) every gpsd capture in ../shared/corpus/nmea/gpsd concatenated (delay
cookies removed, as gpsfake does), (b) a one-hour 10 Hz simulated van day (GN talker,
seed 2026, noise, multipath and tunnels on), generated into a temporary directory.

For each input it prints sentences per second for:

- ``pynmea2.parse``: the baseline, on the input's ``$`` lines already split into
  strings (so the baseline does no framing at all), exceptions swallowed;
- ``decoder``: :class:`GnssDecoder` in-process from the raw bytes: framing, checksum,
  strict field conversion, validity gating, epoch merging and filters;
- ``fleet-agent``: the console script as a subprocess writing JSON lines to
  /dev/null (interpreter start-up, file reading and JSON encoding included).

Each figure is the best of ``--repeat`` runs; ratios are to the baseline of the same run.
Memory: the tracemalloc peak of the decoder fed the one-hour log in 64 KiB chunks, and
the peak RSS of ``fleet-agent gnss decode`` against an interpreter that only imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pynmea2

from firmware_agent.gnss.decoder import GnssDecoder
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir

REPO = Path(__file__).resolve().parents[1]
GPSD_DIR = REPO.parent / "shared" / "corpus" / "nmea" / "gpsd"
FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"


def gpsd_corpus(path: Path) -> None:
    chunks = []
    for log in sorted(GPSD_DIR.glob("*.log")):
        raw = log.read_bytes()
        cookie = next(
            (
                ln.split(b":", 1)[1].split()[0]
                for ln in raw.splitlines()
                if ln.startswith(b"# Delay-Cookie:")
            ),
            None,
        )
        if cookie is not None:
            raw = (
                b"\n".join(
                    ln if ln.startswith(b"#") else ln.replace(cookie, b"")
                    for ln in raw.splitlines()
                )
                + b"\n"
            )
        chunks.append(raw)
    path.write_bytes(b"".join(chunks))


def one_hour_10hz(directory: Path) -> Path:
    config = ScenarioConfig(seed=2026, rate_hz=10, talker="GN", n_stops=60, max_duration_s=3600)
    summary = write_scenario_dir(generate(config), directory)
    print(f"  generated: {summary.line()}")
    return directory / "nmea.log"


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_cli(log: Path) -> float:
    """Wall time of ``fleet-agent gnss decode LOG > /dev/null``."""
    with open(os.devnull, "wb") as devnull:
        t0 = time.perf_counter()
        subprocess.run(
            [str(FLEET_AGENT), "gnss", "decode", str(log)],
            stdout=devnull,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - t0


# Peak RSS is read by the child itself (VmHWM): ru_maxrss would also count the parent's
# memory that the child inherited before exec(), which Linux carries across exec.
_PEAK = (
    "import sys\n"
    "{body}\n"
    "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
    "sys.stderr.write(hwm.split()[1])\n"
)


def peak_rss_kib(body: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK.format(body=body)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=True,
    )
    return int(proc.stderr.decode().split()[-1])


def measure(name: str, log: Path, repeat: int) -> None:
    data = log.read_bytes()
    lines = [
        ln.decode("ascii", "replace").strip() for ln in data.splitlines() if ln.startswith(b"$")
    ]

    def baseline() -> None:
        parse = pynmea2.parse
        for line in lines:
            with contextlib.suppress(pynmea2.ParseError):
                parse(line)

    decoder_out: list[int] = []

    def ours() -> None:
        decoder = GnssDecoder(comments=True)
        n = len(decoder.feed(data)) + len(decoder.flush())
        decoder_out.append(n)

    t_raw = best_of(repeat, baseline)
    t_ours = best_of(repeat, ours)
    t_cli = min(run_cli(log) for _ in range(repeat))
    n = len(lines)
    raw_rate = n / t_raw
    print(f"{name}: {n:,} sentences, {len(data) / 1e6:.1f} MB, {decoder_out[-1]:,} fixes emitted")
    print(f"  {'pynmea2.parse (baseline)':28s} {raw_rate:12,.0f} sentences/s   1.00")
    for label, t in (("decoder, in-process", t_ours), ("fleet-agent gnss decode", t_cli)):
        rate = n / t
        print(f"  {label:28s} {rate:12,.0f} sentences/s   {rate / raw_rate:.2f}")


def memory(log: Path) -> None:
    decoder = GnssDecoder(comments=True)
    tracemalloc.start()
    with log.open("rb") as f:
        while chunk := f.read(65536):
            decoder.feed(chunk)
    decoder.flush()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cli = peak_rss_kib(
        f"from firmware_agent.cli import main\nmain(['gnss', 'decode', {str(log)!r}])"
    )
    bare = peak_rss_kib("import firmware_agent.cli")
    print("memory (one-hour 10 Hz log):")
    print(f"  decoder tracemalloc peak, 64 KiB chunks   {peak / 1024:8.0f} KiB")
    print(f"  fleet-agent gnss decode peak RSS          {cli:8d} KiB")
    print(f"  interpreter with the agent imported       {bare:8d} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the generated inputs in this directory")
    args = parser.parse_args()
    if not GPSD_DIR.is_dir():
        raise SystemExit(f"corpus not found at {GPSD_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "gpsd-corpus.nmea"
        gpsd_corpus(corpus)
        print(f"python {sys.version.split()[0]}, pynmea2 {pynmea2.version}, best of {args.repeat}")
        measure("gpsd corpus (77 receivers)", corpus, args.repeat)
        print("one-hour 10 Hz simulated day:")
        sim_log = one_hour_10hz(work / "sim-1h-10hz")
        measure("one-hour 10 Hz simulated day", sim_log, args.repeat)
        memory(sim_log)


if __name__ == "__main__":
    main()
