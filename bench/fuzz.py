"""The long fuzz campaign (issue 13): every parser and payload decoder of the van and ingest.

    nice .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--targets a,b]
                                         [--jobs 1] [--memory-mb 2048] [--save DIR]
    .venv/bin/python bench/fuzz.py --replay TARGET:INDEX [--seed 1]

The targets, seeds, mutator and generators are ``tests/fuzzing.py``'s, the same that
``tests/test_fuzz.py`` runs briefly under hypothesis in CI (its docstring says what each
target runs and which errors it may raise; anything else is a crash). Here a seeded
random source drives them: input ``i`` of target ``t`` comes from
``random.Random(f"{seed}:{t}:{i}")`` alone, so ``--replay t:i`` rebuilds any input and
runs it again with its traceback. ``--inputs`` is the total, shared among the targets by
their weight (an input of the geofence-building targets costs a hundred of the others').

Each target runs in its own process (spawned: its memory is its own), one after the other
or ``--jobs`` at a time:

- every input is timed; one over 1 s is a *hang* (reported with its reproducer), and one
  still running after 1 s more is interrupted (SIGALRM) so that the campaign goes on;
- a process that stops reporting progress for 30 s (a hang inside one C call) is killed
  by the parent, the input is reported as a hang, and the target resumes after it;
- memory: the process's address space is capped (``--memory-mb``; a MemoryError is a
  crash like any other) and its RSS sampled: after warm-up (the first 1 % of inputs), at
  the end, and the peak (VmHWM). Bounded memory means the end is not far above the warm-up;
- the table at the end: per target, inputs, crashes (and distinct ones), hangs, the
  slowest input and its time, inputs per second, RSS after warm-up, at the end, peak.
  Then every distinct crash and hang once, with its reproducer.

Exit status 1 if anything crashed or hung.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests/fuzzing.py: the campaign's targets
    sys.path.insert(0, str(REPO))

from tests import fuzzing  # noqa: E402

DEFAULT_INPUTS = 1_000_000
KILL_AFTER_S = 30.0  # no progress this long: a hang inside C code; the parent kills
REPORT_EVERY_S = 1.0


@dataclass
class Stats:
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    busy_s: float = 0.0  # time spent inside the target, generation excluded
    max_s: float = 0.0
    max_index: int = -1
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    peak_kib: int = 0
    seeds: int = 0
    restarts: int = 0
    generator_errors: int = 0  # inputs the harness failed to make (its own bug)
    wall_s: float = 0.0
    findings: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def merge(self, other: Stats) -> None:
        self.inputs += other.inputs
        self.crashes += other.crashes
        self.hangs += other.hangs
        self.busy_s += other.busy_s
        self.generator_errors += other.generator_errors
        if other.max_s > self.max_s:
            self.max_s, self.max_index = other.max_s, other.max_index
        self.rss_warm_kib = self.rss_warm_kib or other.rss_warm_kib
        self.rss_end_kib = other.rss_end_kib or self.rss_end_kib
        self.peak_kib = max(self.peak_kib, other.peak_kib)
        self.seeds = self.seeds or other.seeds
        for sig, finding in other.findings.items():
            mine = self.findings.get(sig)
            if mine is None:
                self.findings[sig] = finding
            else:
                mine["count"] += finding["count"]


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _finding(kind: str, where: str, message: str, index: int, data: bytes) -> dict[str, Any]:
    return {
        "kind": kind,
        "where": where,
        "message": message[:4000],
        "index": index,
        "input": repr(data[:240]) + (f" ... ({len(data)} bytes)" if len(data) > 240 else ""),
        "bytes": data,
        "count": 1,
    }


def _worker(
    name: str,
    seed: int,
    start: int,
    stop: int,
    memory_mb: int,
    progress: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Run inputs ``start..stop-1`` of target ``name``; report on ``conn``."""
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    target = fuzzing.target(name)
    seeds = target.seeds()
    stats = Stats(seeds=len(seeds))
    warm_at = start + max(1, (stop - start) // 100)
    last_report = time.monotonic()
    for i in range(start, stop):
        progress.value = i
        try:
            data = fuzzing.make_input(target, fuzzing.input_rng(seed, name, i), seeds)
        except Exception as err:  # the harness's own bug: reported, never the target's
            sig = (name, "generator", type(err).__name__)
            stats.findings.setdefault(
                sig, _finding("generator", type(err).__name__, repr(err), i, b"")
            )
            stats.generator_errors += 1
            continue
        t0 = time.perf_counter()
        crash: fuzzing.Crash | None = None
        hung = False
        try:
            with fuzzing.deadline(2 * fuzzing.HANG_S):
                crash = fuzzing.crash_of(target, data)
        except fuzzing.Hang:
            hung = True
        dt = time.perf_counter() - t0
        stats.inputs += 1
        stats.busy_s += dt
        if dt > stats.max_s:
            stats.max_s, stats.max_index = dt, i
        if crash is not None:
            stats.crashes += 1
            finding = stats.findings.get(crash.signature)
            if finding is None:
                stats.findings[crash.signature] = _finding(
                    crash.kind, crash.where, crash.message + "\n" + crash.trace, i, data
                )
            else:
                finding["count"] += 1
        if hung or dt > fuzzing.HANG_S:
            stats.hangs += 1
            sig = (name, "hang", "interrupted" if hung else "slow")
            if sig in stats.findings:
                stats.findings[sig]["count"] += 1
            else:
                stats.findings[sig] = _finding(
                    "hang", sig[2], f"{dt:.2f} s (interrupted at {2 * fuzzing.HANG_S:g} s)"
                    if hung else f"{dt:.2f} s", i, data
                )  # fmt: skip
        if i + 1 == warm_at:
            stats.rss_warm_kib = _status_kib("VmRSS")
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            conn.send(("stats", stats))
            stats = Stats(seeds=stats.seeds, rss_warm_kib=stats.rss_warm_kib)
    stats.rss_end_kib = _status_kib("VmRSS")
    stats.peak_kib = _status_kib("VmHWM")
    conn.send(("done", stats))


def _run_target(name: str, seed: int, count: int, memory_mb: int) -> Stats:
    """All ``count`` inputs of ``name`` in child processes (a new one after a kill)."""
    ctx = mp.get_context("spawn")
    total = Stats()
    start = 0
    t0 = time.monotonic()
    while start < count:
        before = total.inputs
        progress = ctx.Value("q", start, lock=False)
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker,
            args=(name, seed, start, count, memory_mb, progress, child),
            name=f"fuzz-{name}",
        )
        proc.start()
        child.close()
        done = False
        seen, seen_at = progress.value, time.monotonic()
        while not done:
            if parent.poll(0.5):
                try:
                    kind, stats = parent.recv()
                except EOFError:
                    break
                total.merge(stats)
                done = kind == "done"
                continue
            if not proc.is_alive():
                break
            if progress.value != seen:
                seen, seen_at = progress.value, time.monotonic()
            elif time.monotonic() - seen_at > KILL_AFTER_S:
                proc.kill()
                break
        proc.join()
        if done:
            break
        # Killed, or died by itself (a crash of the interpreter): that input is a hang or
        # a crash; the inputs since the last report are counted, then on after it.
        i = int(progress.value)
        target = fuzzing.target(name)
        try:
            data = fuzzing.make_input(target, fuzzing.input_rng(seed, name, i), target.seeds())
        except Exception:  # the harness's own bug, counted by the child already
            data = b""
        code = proc.exitcode
        reason = "hang" if code in (-9, None) else f"died (exit {code})"
        lost = max(0, i + 1 - start - (total.inputs - before))
        total.inputs += lost
        total.hangs += reason == "hang"
        total.crashes += reason != "hang"
        total.restarts += 1
        total.findings.setdefault(
            (name, reason, str(i)),
            _finding(reason, f"input {i}", f"no progress for {KILL_AFTER_S:g} s", i, data),
        )
        start = i + 1
    total.wall_s = time.monotonic() - t0
    return total


def _split(total: int, names: list[str]) -> dict[str, int]:
    weights = {n: fuzzing.target(n).weight for n in names}
    scale = total / sum(weights.values())
    counts = {n: max(1, round(weights[n] * scale)) for n in names}
    # Rounding may leave the total a few short: the first target takes the rest.
    counts[names[0]] += max(0, total - sum(counts.values()))
    return counts


def _mb(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _distinct(s: Stats) -> int:
    """Distinct crashes: findings that are neither hangs nor the harness's own errors."""
    return sum(1 for f in s.findings.values() if f["kind"] not in ("hang", "generator"))


def _table(results: dict[str, Stats]) -> str:
    head = (
        f"{'target':<12} {'inputs':>9} {'crashes':>8} {'distinct':>8} {'hangs>1s':>8} "
        f"{'max s':>7} {'at input':>9} {'inputs/s':>9} {'RSS warm MB':>11} {'RSS end MB':>10} "
        f"{'peak MB':>7}"
    )
    rows = [head, "-" * len(head)]
    for name, s in results.items():
        distinct = _distinct(s)
        rate = s.inputs / s.wall_s if s.wall_s else 0.0
        rows.append(
            f"{name:<12} {s.inputs:>9,} {s.crashes:>8,} {distinct:>8} {s.hangs:>8} "
            f"{s.max_s:>7.3f} {s.max_index:>9} {rate:>9,.0f} {_mb(s.rss_warm_kib):>11} "
            f"{_mb(s.rss_end_kib):>10} {_mb(s.peak_kib):>7}"
        )
    n = sum(s.inputs for s in results.values())
    rows.append("-" * len(head))
    rows.append(
        f"{'total':<12} {n:>9,} {sum(s.crashes for s in results.values()):>8,} "
        f"{sum(_distinct(s) for s in results.values()):>8} "
        f"{sum(s.hangs for s in results.values()):>8} "
        f"{max((s.max_s for s in results.values()), default=0):>7.3f}"
    )
    return "\n".join(rows)


def _report(results: dict[str, Stats], seed: int, save: Path | None) -> None:
    for name, s in results.items():
        for finding in s.findings.values():
            print(
                f"\n{name}: {finding['kind']} at {finding['where']} x{finding['count']} "
                f"(first: input {finding['index']}; replay: bench/fuzz.py --seed {seed} "
                f"--replay {name}:{finding['index']})"
            )
            print(f"  input: {finding['input']}")
            message = finding["message"].strip().splitlines()
            print("  " + "\n  ".join(message[:1] + message[-6:] if len(message) > 7 else message))
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"{name}-{finding['index']}.bin").write_bytes(finding["bytes"])


def _replay(spec: str, seed: int) -> int:
    name, _, index = spec.partition(":")
    target = fuzzing.target(name)
    data = fuzzing.make_input(target, fuzzing.input_rng(seed, name, int(index)), target.seeds())
    print(f"{name} input {index} (seed {seed}), {len(data)} bytes:\n{data[:2000]!r}")
    t0 = time.perf_counter()
    try:
        target.run(data)
    except target.allowed as err:
        print(f"refused ({type(err).__name__}): {err}")
    except Exception:
        traceback.print_exc()
        print(f"CRASH after {time.perf_counter() - t0:.3f} s")
        return 1
    else:
        print("accepted")
    print(f"{time.perf_counter() - t0:.3f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="total over targets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", help=f"comma-separated, of {','.join(fuzzing.TARGET_NAMES)}")
    parser.add_argument("--jobs", type=int, default=1, help="targets run at the same time")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space per target")
    parser.add_argument("--save", type=Path, help="write each finding's input to DIR")
    parser.add_argument("--replay", metavar="TARGET:INDEX", help="rebuild and run one input")
    args = parser.parse_args(argv)
    if args.replay:
        return _replay(args.replay, args.seed)
    names = args.targets.split(",") if args.targets else list(fuzzing.TARGET_NAMES)
    unknown = set(names) - set(fuzzing.TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    if not fuzzing.CORPUS.is_dir():
        print(f"note: no corpus at {fuzzing.CORPUS}: seeds from the simulated day only")
    counts = _split(args.inputs, names)
    print(
        f"fuzz campaign: seed {args.seed}, {sum(counts.values()):,} inputs over "
        f"{len(names)} targets, {args.jobs} at a time, {os.cpu_count()} CPUs"
    )
    t0 = time.monotonic()
    results: dict[str, Stats] = {}
    if args.jobs <= 1:
        for name in names:
            results[name] = _run_target(name, args.seed, counts[name], args.memory_mb)
            s = results[name]
            print(
                f"  {name}: {s.inputs:,} inputs in {s.wall_s:.0f} s, {s.crashes} crashes, "
                f"{s.hangs} hangs",
                flush=True,
            )
    else:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {
                n: pool.submit(_run_target, n, args.seed, counts[n], args.memory_mb) for n in names
            }
            results = {n: f.result() for n, f in futures.items()}
    print(f"\n{_table(results)}\n\nwall time {time.monotonic() - t0:.0f} s")
    unmade = sum(s.generator_errors for s in results.values())
    if unmade:
        print(f"harness errors: {unmade} inputs could not be made (listed below)")
    _report(results, args.seed, args.save)
    bad = sum(s.crashes + s.hangs + s.generator_errors for s in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
