"""Ingest throughput: records stored per second by 1, 2 and 4 worker processes, SQLite and
PostgreSQL, against ``mosquitto_sub`` draining the same stream in the same run.

The stream (``_ingestlib.make_fleet``): ``--vans`` vans driving ``--days`` simulated
delivery days each, built by the agent's own code: telemetry batches of 20..60 fixes,
stop events, and PODs signed by each van's own PodChain (every van's public key is
registered in the store, so each POD's signature is verified). Records = fixes + events
+ PODs.

Each measurement gets a fresh private Mosquitto. One publisher process (one MQTT
connection, QoS 1, up to 10,000 messages awaiting PUBACK) sends the whole stream as fast
as the broker takes it. Rates are taken from the first publish to the end:

- publisher alone: nobody subscribed; end = the last PUBACK. The fastest the stream
  can be offered, which bounds every figure below. The publisher sends pre-encoded
  QoS 1 packets on a raw socket (``_ingestlib.blast``; mosquitto_pub -l cannot carry
  binary payloads), so it costs little CPU and the baseline measures the broker and
  mosquitto_sub, not a Python client.
- baseline: ``mosquitto_sub -q 1`` on the workers' shared subscriptions, subscribed
  before publishing; end = its last message's arrival (``-F %U``). Measured before
  and after the ingest runs, each the best of ``--baseline-runs`` (the machine may be
  shared); the ratio uses the mean of the two. The baselines send the stream over
  until ``--baseline-messages`` messages, so that they last seconds, not milliseconds.
- ingest: N ``IngestWorker`` processes (``$share/ingest/...``), each with its own store
  connection, on a fresh store (a SQLite file in a temporary directory, or a new
  PostgreSQL database); end = the first ``Store.counts()`` poll (every ``--poll-s``)
  that sees every record stored. Then checked: counts equal to what was sent, nothing
  quarantined, every POD chain linked, every van's acks at its last seqs, no
  duplicates reported by the workers.

The worker processes count where their time goes (checking, ``Store.write``, awaiting
PUBACKs of acks and of the ``fleetstream/v1`` republication); ``--profile DIR`` also
writes a cProfile of every worker and prints the top functions.

    .venv/bin/python bench/ingest_throughput.py [--quick] [--vans 50] [--days 2]
        [--workers 1,2,4] [--backends sqlite,postgres] [--nodelay] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _ingestlib import (
    BACKENDS,
    Backend,
    Broker,
    CpuMeter,
    Fleet,
    MosquittoSub,
    PublisherProcess,
    StoreSpec,
    WorkerPool,
    WorkerReport,
    check_stored,
    fresh_store,
    machine,
    make_fleet,
    pg_unavailable,
    prepare_store,
    print_profiles,
    retain_probe,
)


@dataclass
class Run:
    name: str
    workers: int
    seconds: float
    messages: int
    records: int
    check: str = ""
    publish_s: float = 0.0  # first publish to last PUBACK, in this run
    reports: list[WorkerReport] = field(default_factory=list)
    cpu: CpuMeter | None = None

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds

    @property
    def rec_rate(self) -> float:
        return self.records / self.seconds


def publisher_alone(fleet: Fleet, tmp: Path, repeat: int, nodelay: bool) -> Run:
    items = [(m.topic, m.payload) for m in fleet.messages]
    with Broker(tmp / f"publisher-{secrets.token_hex(4)}", nodelay=nodelay) as broker:
        pub = PublisherProcess(broker.port, items, repeat=repeat)
        meter = CpuMeter(broker)
        pub.start()
        r = pub.result()
        meter.stop()
    seconds = r.all_acked - r.first_send
    return Run(
        "publisher alone",
        0,
        seconds,
        r.sent,
        fleet.records * repeat,
        publish_s=seconds,
        cpu=meter,
    )


def baseline(fleet: Fleet, tmp: Path, name: str, repeat: int, nodelay: bool) -> Run:
    items = [(m.topic, m.payload) for m in fleet.messages]
    n = len(items) * repeat
    where = tmp / f"baseline-{secrets.token_hex(4)}"
    with Broker(where, nodelay=nodelay) as broker:
        retain_probe(broker.port)
        sub = MosquittoSub(broker.port, n, where / "mosquitto_sub.txt")
        sub.start()
        pub = PublisherProcess(broker.port, items, repeat=repeat)
        meter = CpuMeter(broker)
        pub.start()
        r = pub.result()
        times = [t for _, t in sub.wait(timeout_s=600)]
        meter.stop()
    check = "ok" if len(times) == n else f"received {len(times)} of {n}"
    return Run(
        name,
        0,
        max(times) - r.first_send,
        len(times),
        fleet.records * repeat,
        check,
        publish_s=r.all_acked - r.first_send,
        cpu=meter,
    )


async def wait_stored(spec: StoreSpec, total: int, poll_s: float, timeout_s: float) -> float:
    """Wall-clock time of the first counts() poll that sees ``total`` records."""
    async with spec.open() as store:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            c = await store.counts()
            if c.positions + c.stop_events + c.pods >= total:
                return time.time()
            await asyncio.sleep(poll_s)
    raise TimeoutError(f"not all {total} records stored after {timeout_s} s")


async def verify(spec: StoreSpec, fleet: Fleet) -> list[str]:
    async with spec.open() as store:
        return await check_stored(store, fleet)


def ingest(
    fleet: Fleet,
    tmp: Path,
    backend: Backend,
    n: int,
    *,
    poll_s: float,
    timeout_s: float,
    profile_dir: Path | None,
    nodelay: bool,
) -> Run:
    items = [(m.topic, m.payload) for m in fleet.messages]
    name = f"ingest {backend}"
    with (
        Broker(tmp / f"broker-{backend}-{n}", nodelay=nodelay) as broker,
        fresh_store(backend, tmp) as spec,
    ):
        asyncio.run(prepare_store(spec, fleet))
        with WorkerPool(n, spec, broker.port, profile_dir=profile_dir) as pool:
            pool.go()
            pub = PublisherProcess(broker.port, items)
            meter = CpuMeter(broker)
            pub.start()
            stored_at = asyncio.run(wait_stored(spec, fleet.records, poll_s, timeout_s))
            meter.stop()
            r = pub.result()
            reports = pool.stop()
        problems = asyncio.run(verify(spec, fleet))
    dups = sum(w.duplicates for w in reports)
    if dups:
        problems.append(f"workers saw {dups} duplicates")
    received = sum(w.received for w in reports)
    if received != len(items):
        problems.append(f"workers received {received} messages of {len(items)}")
    return Run(
        name,
        n,
        stored_at - r.first_send,
        len(items),
        fleet.records,
        "ok" if not problems else "; ".join(problems),
        publish_s=r.all_acked - r.first_send,
        reports=reports,
        cpu=meter,
    )


def print_table(runs: list[Run], base: list[Run]) -> None:
    base_rate = statistics.mean(b.rec_rate for b in base)
    print(
        "| run                                | workers | seconds |    msg/s |  records/s "
        "| / mosquitto_sub | publish s | check |"
    )
    print(
        "|------------------------------------|--------:|--------:|---------:|-----------:"
        "|----------------:|----------:|-------|"
    )
    for r in runs:
        workers = str(r.workers) if r.workers else "-"
        print(
            f"| {r.name:<34} | {workers:>7} | {r.seconds:7.2f} | {r.msg_rate:8,.0f} "
            f"| {r.rec_rate:10,.0f} | {r.rec_rate / base_rate:15.4f} | {r.publish_s:9.2f} "
            f"| {r.check or '-'} |"
        )


def print_where(runs: list[Run]) -> None:
    """Per run, where the CPU went: the machine, the broker, and the workers' time split
    (summed over workers) with their batch sizes."""
    print()
    print(
        "| run                                | workers | CPUs busy | broker CPU s | batches "
        "| msgs/batch | check % | write % | publish % | worker CPU s/1k records |"
    )
    print(
        "|------------------------------------|--------:|----------:|-------------:|--------:|-----------:"
        "|--------:|--------:|----------:|------------------------:|"
    )
    for r in runs:
        cores = f"{r.cpu.machine_cores:9.2f}" if r.cpu else f"{'-':>9}"
        broker = f"{r.cpu.broker_s:12.2f}" if r.cpu else f"{'-':>12}"
        workers = str(r.workers) if r.workers else "-"
        if not r.reports:
            print(
                f"| {r.name:<34} | {workers:>7} | {cores} | {broker} | {'-':>7} | {'-':>10} "
                f"| {'-':>7} | {'-':>7} | {'-':>9} | {'-':>23} |"
            )
            continue
        batches = sum(w.batches for w in r.reports)
        received = sum(w.received for w in r.reports)
        busy = sum(w.process_s for w in r.reports)
        cpu = sum(w.cpu_s for w in r.reports)

        def pct(x: float, busy: float = busy) -> str:
            return f"{100 * x / busy:7.1f}" if busy else f"{'-':>7}"

        print(
            f"| {r.name:<34} | {workers:>7} | {cores} | {broker} | {batches:7d} "
            f"| {received / max(batches, 1):10.1f} | {pct(sum(w.check_s for w in r.reports))} "
            f"| {pct(sum(w.write_s for w in r.reports))} "
            f"| {pct(sum(w.publish_s for w in r.reports)):>9} "
            f"| {1000 * cpu / r.records:23.3f} |"
        )
    print(
        f"(CPUs busy: the whole machine's average over the run, {os.cpu_count()} CPUs, other "
        "processes included; check/write/publish: shares of the workers' time inside "
        "IngestWorker.process, which the check folds decoding, schema and signature checks "
        "into; worker CPU: the worker processes' user+system time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small stream, under a minute")
    parser.add_argument("--vans", type=int, default=None, help="default 50 (--quick: 20)")
    parser.add_argument("--days", type=int, default=None, help="per van; default 4 (--quick 1)")
    parser.add_argument("--templates", type=int, default=None, help="simulated days to draw on")
    parser.add_argument("--stops", type=int, default=15, help="per simulated day")
    parser.add_argument("--workers", default=None, help="comma-separated; default 1,2,4")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--baseline-messages",
        type=int,
        default=None,
        help="the baselines send the stream over until at least this many messages "
        "(default 200,000; --quick 100,000)",
    )
    parser.add_argument(
        "--baseline-runs", type=int, default=3, help="each baseline is the best of this many"
    )
    parser.add_argument("--poll-s", type=float, default=0.05)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--profile", type=Path, default=None, help="cProfile workers into DIR")
    parser.add_argument(
        "--nodelay", action="store_true", help="the broker with set_tcp_nodelay true"
    )
    args = parser.parse_args()
    vans = args.vans or (20 if args.quick else 50)
    days = args.days or (1 if args.quick else 2)
    templates = args.templates or (2 if args.quick else 4)
    workers = [int(w) for w in (args.workers or ("1,2" if args.quick else "1,2,4")).split(",")]
    backends: list[Backend] = []
    for name in args.backends.split(","):
        backend = next((b for b in BACKENDS if b == name), None)
        if backend is None:
            parser.error(f"unknown backend {name!r}")
        elif backend == "postgres" and (reason := pg_unavailable()):
            print(f"skipping PostgreSQL: {reason}", file=sys.stderr)
        else:
            backends.append(backend)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    print(machine())
    print(f"building the stream: {vans} vans x {days} days ({templates} simulated days)...")
    fleet = make_fleet(vans, days, templates=templates, stops=args.stops)
    print(f"stream: {fleet.describe()}")
    at_least = args.baseline_messages or (100_000 if args.quick else 200_000)
    repeat = max(1, math.ceil(at_least / len(fleet.messages)))
    print(f"baselines: the stream {repeat} times over ({repeat * len(fleet.messages):,} messages)")
    print(f"broker: set_tcp_nodelay {'true' if args.nodelay else 'false (Mosquitto default)'}")
    runs: list[Run] = []
    base: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp_name:
        tmp = Path(tmp_name)
        k = args.baseline_runs

        def best(make: Callable[[int], Run], label: str) -> Run:
            tries = [make(i) for i in range(k)]
            print(
                f"  {label}: " + ", ".join(f"{t.msg_rate:,.0f}" for t in tries) + " msg/s",
                file=sys.stderr,
            )
            chosen = max(tries, key=lambda t: t.msg_rate)
            if k > 1:
                chosen.name += f", best of {k}"
            return chosen

        print("publisher alone...", file=sys.stderr)
        runs.append(
            best(lambda i: publisher_alone(fleet, tmp, repeat, args.nodelay), "publisher alone")
        )
        print("baseline: mosquitto_sub...", file=sys.stderr)
        base.append(
            best(
                lambda i: baseline(fleet, tmp, "mosquitto_sub (before)", repeat, args.nodelay),
                "mosquitto_sub before",
            )
        )
        runs.append(base[-1])
        for backend in backends:
            for n in workers:
                print(f"ingest: {backend}, {n} worker(s)...", file=sys.stderr)
                run = ingest(
                    fleet,
                    tmp,
                    backend,
                    n,
                    poll_s=args.poll_s,
                    timeout_s=args.timeout_s,
                    profile_dir=args.profile,
                    nodelay=args.nodelay,
                )
                print(f"  {run.rec_rate:,.0f} records/s, {run.check}", file=sys.stderr)
                runs.append(run)
        print("baseline: mosquitto_sub again...", file=sys.stderr)
        base.append(
            best(
                lambda i: baseline(fleet, tmp, "mosquitto_sub (after)", repeat, args.nodelay),
                "mosquitto_sub after",
            )
        )
        runs.append(base[-1])

    print()
    print_table(runs, base)
    print_where(runs)
    goal = 0.5 * statistics.mean(b.rec_rate for b in base)
    print()
    for r in runs:
        if r.reports:
            verdict = "meets" if r.rec_rate >= goal else "misses"
            print(
                f"{r.name}, {r.workers} worker(s): {r.rec_rate / (2 * goal):.4f} of mosquitto_sub "
                f"({verdict} the 0.5 goal)"
            )
    if args.profile is not None:
        print_profiles((f"{r.name}, {r.workers} worker(s)", r.reports) for r in runs)


if __name__ == "__main__":
    main()
