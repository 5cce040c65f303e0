"""End-to-end ingest latency: agent send to stored, at a paced rate (1,000 msg/s), one
worker on SQLite and on PostgreSQL, against the broker alone in the same run.

The stream is the fleet traffic of ``_ingestlib.make_fleet`` (telemetry batches of
20..60 fixes, events, signed PODs of 50 vans), cut to ``--rate`` x ``--seconds``
messages. One agent-like publisher (paho-mqtt, one MQTT 5 connection, QoS 1, at most
``UplinkConfig.window`` (32) messages awaiting PUBACK, as the uplink) sends them on a
fixed schedule and, like a van, subscribes to ``fleet/v1/+/ack`` on that connection.

- ingest: one ``IngestWorker`` process on a fresh store. A message counts as stored
  when the first ack covering its seq (``acks[stream] >= its last seq``) reaches the
  publisher: ingest sends acks only after the batch's commit, so this is send ->
  committed -> ack back at the van. Send and arrival times are taken in the publisher
  process.
- baseline: the same schedule, drained by ``mosquitto_sub -q 1`` on the workers' shared
  subscriptions; latency = its receipt time (``-F %U``) minus the send time, matched by
  topic and order (one publisher, QoS 1: Mosquitto keeps each topic's order). The
  broker's own share of the figures above.

Printed: messages sent, the rate they were sent at and the rate they were stored at
(messages / (last one stored - first sent): below the sending rate, the worker could not
keep up and a backlog grew), p50/p90/p99/max in ms, overall and per stream, and how
many messages no ack covered within ``--drain-s`` after the last send.

    .venv/bin/python bench/ingest_latency.py [--quick] [--rate 1000] [--seconds 10]
        [--backends sqlite,postgres] [--drain-s 180] [--nodelay] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from _ingestlib import (
    BACKENDS,
    Backend,
    Broker,
    Fleet,
    MosquittoSub,
    PublishResult,
    WorkerPool,
    WorkerReport,
    fresh_store,
    machine,
    make_fleet,
    percentile,
    pg_unavailable,
    prepare_store,
    print_profiles,
    publish,
    retain_probe,
)

from firmware_agent.contract.envelope import decode_ack
from firmware_agent.contract.errors import CodecError
from firmware_agent.uplink.mqtt import UplinkConfig

GOAL_P99_MS = 250.0
# Messages awaiting PUBACK, as the agent's uplink.
WINDOW = UplinkConfig(device_id="bench").window
STREAMS = ("telemetry", "events", "pod")


@dataclass
class Latencies:
    name: str
    sent: int
    rate: float  # achieved sending rate, messages/s
    done_rate: float  # messages stored (or received) / (last one - first send)
    ms: list[float] = field(default_factory=list)  # sorted
    by_stream: dict[str, list[float]] = field(default_factory=dict)
    missing: int = 0
    reports: list[WorkerReport] = field(default_factory=list)

    def row(self) -> str:
        def q(p: float) -> str:
            return f"{percentile(self.ms, p):8.1f}"

        return (
            f"| {self.name:<25} | {self.sent:6,d} | {self.rate:7,.0f} | {self.done_rate:8,.0f} "
            f"| {q(50)} | {q(90)} "
            f"| {q(99)} | {max(self.ms, default=math.nan):8.1f} | {self.missing:7d} |"
        )


HEADER = (
    "| run                       |   sent | sent/s  | stored/s |  p50 ms |  p90 ms |  p99 ms "
    "|  max ms | no ack |\n"
    "|---------------------------|-------:|--------:|---------:|--------:|--------:|--------:"
    "|--------:|-------:|"
)


def _rate(r: PublishResult) -> float:
    span = r.send_times[-1] - r.send_times[0] if len(r.send_times) > 1 else math.nan
    return (len(r.send_times) - 1) / span


class AckTracker:
    """Decodes acks as they come; true once every van's acks reach its last seqs."""

    def __init__(self, fleet: Fleet) -> None:
        self._want = {v.device_id: dict(v.last_seqs) for v in fleet.vans}
        self._got: dict[str, dict[str, int]] = defaultdict(dict)
        self._seen = 0

    def __call__(self, received: list[tuple[float, str, bytes]]) -> bool:
        # paho's thread appends meanwhile: advance by what was read, not to len().
        new = received[self._seen :]
        self._seen += len(new)
        for _, _, payload in new:
            try:
                ack = decode_ack(payload)
            except CodecError:
                continue
            got = self._got[ack.device_id]
            for stream, seq in ack.acks.items():
                got[stream] = max(got.get(stream, 0), seq)
        return all(
            self._got[d].get(s, 0) >= seq
            for d, want in self._want.items()
            for s, seq in want.items()
        )


def ack_latencies(fleet: Fleet, r: PublishResult) -> tuple[dict[str, list[float]], int, float]:
    """Per stream, each message's send -> first covering ack, in ms; the number of
    messages no ack covered; the time the last one was covered."""
    pending: dict[tuple[str, str], deque[tuple[int, float]]] = defaultdict(deque)
    for m, sent in zip(fleet.messages, r.send_times, strict=True):
        pending[m.device_id, m.stream].append((m.last_seq, sent))
    out: dict[str, list[float]] = {s: [] for s in STREAMS}
    last = math.nan
    for at, _topic, payload in r.received:
        try:
            ack = decode_ack(payload)
        except CodecError:
            continue
        for stream, seq in ack.acks.items():
            queue = pending.get((ack.device_id, stream))
            while queue and queue[0][0] <= seq:
                out[stream].append(1000 * (at - queue.popleft()[1]))
                last = at
    return out, sum(len(q) for q in pending.values()), last


def baseline(fleet: Fleet, tmp: Path, rate: float, drain_s: float, nodelay: bool) -> Latencies:
    items = [(m.topic, m.payload) for m in fleet.messages]
    with Broker(tmp / "broker-baseline", nodelay=nodelay) as broker:
        retain_probe(broker.port)
        sub = MosquittoSub(broker.port, len(items), tmp / "baseline.txt")
        sub.start()
        r = publish(broker.port, items, rate=rate, window=WINDOW, nodelay=nodelay)
        arrivals = sub.wait(timeout_s=drain_s + 10)
    sends: dict[str, deque[float]] = defaultdict(deque)
    streams: dict[str, str] = {}
    for m, sent in zip(fleet.messages, r.send_times, strict=True):
        sends[m.topic].append(sent)
        streams[m.topic] = m.stream
    by_stream: dict[str, list[float]] = {s: [] for s in STREAMS}
    for topic, at in arrivals:
        by_stream[streams[topic]].append(1000 * (at - sends[topic].popleft()))
    last = arrivals[-1][1] if arrivals else math.nan
    return _latencies("broker -> mosquitto_sub", r, by_stream, len(items) - len(arrivals), last)


def _latencies(
    name: str,
    r: PublishResult,
    by_stream: dict[str, list[float]],
    missing: int,
    last: float,
    reports: list[WorkerReport] | None = None,
) -> Latencies:
    every = sorted(x for v in by_stream.values() for x in v)
    return Latencies(
        name,
        r.sent,
        _rate(r),
        len(every) / (last - r.send_times[0]),
        every,
        {s: sorted(v) for s, v in by_stream.items()},
        missing,
        reports or [],
    )


def ingest(
    fleet: Fleet,
    tmp: Path,
    backend: Backend,
    rate: float,
    drain_s: float,
    profile_dir: Path | None,
    nodelay: bool,
    workers: int = 1,
) -> Latencies:
    items = [(m.topic, m.payload) for m in fleet.messages]
    with (
        Broker(tmp / f"broker-{backend}", nodelay=nodelay) as broker,
        fresh_store(backend, tmp) as spec,
    ):
        asyncio.run(prepare_store(spec, fleet))
        with WorkerPool(workers, spec, broker.port, profile_dir=profile_dir) as pool:
            pool.go()
            r = publish(
                broker.port,
                items,
                window=WINDOW,
                rate=rate,
                subscribe="fleet/v1/+/ack",
                drain_s=drain_s,
                drain_until=AckTracker(fleet),
                nodelay=nodelay,
            )
            reports = pool.stop()
    by_stream, missing, last = ack_latencies(fleet, r)
    name = f"ingest {backend}, {workers} worker{'s' if workers > 1 else ''}"
    return _latencies(name, r, by_stream, missing, last, reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s of sending per backend")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=None, help="default 10 (--quick 3)")
    parser.add_argument("--vans", type=int, default=50)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--workers", default="1,2", help="worker process counts to run, comma-separated"
    )
    parser.add_argument(
        "--drain-s", type=float, default=180.0, help="after the last send, wait for acks this long"
    )
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the worker into DIR")
    parser.add_argument(
        "--nodelay",
        action="store_true",
        help="the broker with set_tcp_nodelay true and the publisher with TCP_NODELAY "
        "(the worker's socket is as cloud_ingest.worker makes it)",
    )
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
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

    n = round(args.rate * seconds)
    # A simulated van day is about 70 messages (15 stops, 1 h).
    days = max(1, math.ceil(n / (args.vans * 60)))
    print(machine())
    print(f"building the stream: {n:,} messages ({args.vans} vans x up to {days} days)...")
    fleet = make_fleet(args.vans, days, templates=min(days, 4) if args.quick else 4).head(n)
    if len(fleet.messages) < n:
        raise SystemExit(f"only {len(fleet.messages)} messages generated, {n} wanted")
    print(f"stream: {fleet.describe()}")
    print(
        f"schedule: {args.rate:,.0f} msg/s for {seconds:g} s; TCP_NODELAY on broker and "
        f"publisher: {'yes' if args.nodelay else 'no (defaults)'}"
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="ingest-latency-") as tmp_name:
        tmp = Path(tmp_name)
        print("baseline: broker -> mosquitto_sub...", file=sys.stderr)
        started = time.monotonic()
        runs.append(baseline(fleet, tmp, args.rate, args.drain_s, args.nodelay))
        print(f"  {time.monotonic() - started:.1f} s", file=sys.stderr)
        for backend in backends:
            for workers in (int(w) for w in args.workers.split(",")):
                print(f"ingest: {backend}, {workers} worker(s)...", file=sys.stderr)
                started = time.monotonic()
                runs.append(
                    ingest(
                        fleet,
                        tmp,
                        backend,
                        args.rate,
                        args.drain_s,
                        args.profile,
                        args.nodelay,
                        workers,
                    )
                )
                p99 = percentile(runs[-1].ms, 99)
                print(f"  p99 {p99:.1f} ms, {time.monotonic() - started:.1f} s", file=sys.stderr)

    print()
    print(HEADER)
    for run in runs:
        print(run.row())
    print()
    print("| run                       | stream    |      n |  p50 ms |  p99 ms |  max ms |")
    print("|---------------------------|-----------|-------:|--------:|--------:|--------:|")
    for run in runs:
        for stream, ms in run.by_stream.items():
            print(
                f"| {run.name:<25} | {stream:<9} | {len(ms):6,d} | {percentile(ms, 50):7.1f} "
                f"| {percentile(ms, 99):7.1f} | {max(ms, default=math.nan):7.1f} |"
            )
    print()
    base = runs[0]
    for run in runs[1:]:
        p99 = percentile(run.ms, 99)
        verdict = "meets" if p99 <= GOAL_P99_MS and not run.missing else "misses"
        split = ""
        for i, w in enumerate(run.reports):
            if w.batches:
                # process_s counts a batch from its check to its last PUBACK; with
                # pipelining two batches' spans overlap, so busy can exceed wall time.
                split += (
                    f"\n  worker {i + 1}: {w.batches} batches of {w.received / w.batches:.0f} "
                    f"messages, in process {w.process_s:.1f} s for {seconds:g} s of sending; "
                    f"per batch: check {1000 * w.check_s / w.batches:.0f} ms, write "
                    f"{1000 * w.write_s / w.batches:.0f} ms, publish "
                    f"{1000 * w.publish_s / w.batches:.0f} ms; CPU {w.cpu_s:.1f} s"
                )
        print(
            f"{run.name}: p99 {p99:.1f} ms ({verdict} the {GOAL_P99_MS:.0f} ms goal), "
            f"{p99 / percentile(base.ms, 99):.1f}x the broker's p99{split}"
        )
    if args.profile is not None:
        print_profiles((run.name, run.reports) for run in runs)


if __name__ == "__main__":
    main()
