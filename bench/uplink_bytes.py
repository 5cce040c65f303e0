"""The whole uplink on the wire: bytes per van-hour by stream and record type.

Simulator days the shipped ETA model never saw (as bench/eta_events.py builds them:
:func:`simulator.eta_days.simulator_day`, the receiver's reports, noise and outages
included; default: 150-stop day 3 and 25-stop day 1) played through the real
:class:`~firmware_agent.van.VanPipeline` with telemetry sampling and the shipped model
(geofence arrivals, no scans, hence no PODs). Every record is numbered per stream as
the outbox numbers it and sent as the uplink sends it, deciding at every fix (the live
uplink decides at every outbox change and at least every second):

- telemetry: :func:`~firmware_agent.contract.telemetry.frame_batch`, a batch when it
  holds ``batch_max_fixes`` fixes or its first is ``batch_max_age_s`` old;
- events, "before": one :func:`~firmware_agent.contract.envelope.frame_record` JSON
  envelope per record, sent at once (what the uplink did before issue 15, and still
  does with ``events_batch_max_records`` 1);
- events, "after": :func:`~firmware_agent.contract.eventbatch.frame_events` batches when
  :func:`~firmware_agent.uplink.batching.events_due` says so (``events_batch_max_records``
  records, the first ``events_batch_max_age_s`` old, or a record that is not
  deferrable), every batch decoded again to check it carries its records back.

Printed: MQTT payload bytes per van-hour by stream and (events) by record type (a batch's
bytes shared among its records in proportion to their JSON); an estimate with each
message's MQTT 5 PUBLISH overhead (fixed header, topic, packet id, empty properties; no
TCP/TLS); messages per hour; how long each event type waited between its creation and
its send (median and max); and the CPU the batches' deflate and inflate cost. Settings
are the uplink's defaults (``--set`` changes them: ``--set events_batch_max_age_s=120``).

    .venv/bin/python bench/uplink_bytes.py [--long-seeds 3] [--seeds 1] [--long-stops 150]
        [--stops 25] [--jobs 2] [--interval] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.envelope import frame_record
from firmware_agent.contract.eventbatch import decode_events, frame_events
from firmware_agent.contract.records import (
    EtaUpdate,
    TelemetryPoint,
    encode_point,
    encode_record,
)
from firmware_agent.contract.telemetry import decode_batch, frame_batch, is_historical
from firmware_agent.contract.times import format_utc
from firmware_agent.contract.topics import uplink_topic
from firmware_agent.eta.models import DEFAULT_MODEL
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.pod.chain import PodChain
from firmware_agent.settings import UplinkSettings
from firmware_agent.uplink.batching import events_due, fitting, record_type
from firmware_agent.van import VanConfig, VanPipeline
from simulator.eta_days import format_seeds, parse_seeds, simulator_day

SHIPPED = Path(__file__).resolve().parents[1] / "firmware_agent" / "eta" / "models" / DEFAULT_MODEL
MODES = ("before", "after")


def mqtt_overhead(topic: str, payload_bytes: int, *, alias: bool = False) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH besides its payload: fixed header (1 + the
    remaining length's varint), topic (2 + its bytes), packet id (2), properties (1).
    ``alias``: the topic replaced by a Topic Alias (an empty topic, and the property's
    3 bytes), as every publish but a connection's first on the topic could be."""
    topic_bytes = 0 if alias else len(topic.encode())
    rest = 2 + topic_bytes + 2 + 1 + 3 * alias + payload_bytes
    length_bytes = 1 if rest < 128 else 2 if rest < 16384 else 3 if rest < 2097152 else 4
    return 1 + length_bytes + rest - payload_bytes


@dataclass
class Tally:
    """One day's (or several days') uplink in one mode: sums only, so days add up."""

    hours: float = 0.0
    messages: Counter[str] = field(default_factory=Counter)  # by stream
    payload: Counter[str] = field(default_factory=Counter)  # by stream
    mqtt: Counter[str] = field(default_factory=Counter)  # by stream, payload + overhead
    aliased: Counter[str] = field(default_factory=Counter)  # the same with a topic alias
    # Events payload by record type (a batch's bytes shared among its records).
    by_type: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    records: Counter[str] = field(default_factory=Counter)  # events records by type
    waits_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    framing_s: float = 0.0  # CPU in frame_events (the van), after only
    decoding_s: float = 0.0  # CPU in decode_events (ingest), after only

    def add(self, other: Tally) -> None:
        self.hours += other.hours
        self.framing_s += other.framing_s
        self.decoding_s += other.decoding_s
        for name in ("messages", "payload", "mqtt", "aliased", "records"):
            getattr(self, name).update(getattr(other, name))
        for kind, value in other.by_type.items():
            self.by_type[kind] += value
        for kind, waits in other.waits_s.items():
            self.waits_s[kind] += waits

    def sent(self, stream: str, topic: str, payload: bytes) -> None:
        self.messages[stream] += 1
        self.payload[stream] += len(payload)
        self.mqtt[stream] += len(payload) + mqtt_overhead(topic, len(payload))
        self.aliased[stream] += len(payload) + mqtt_overhead(topic, len(payload), alias=True)


@dataclass
class _Pending:
    seq: int
    created: datetime
    data: bytes


def _send_events(
    tally: Tally,
    mode: str,
    device: str,
    batch: list[_Pending],
    now: datetime,
) -> None:
    topic = uplink_topic(device, "events")
    if mode == "before":
        for p in batch:
            payload = frame_record(
                device,
                "events",
                p.seq,
                p.data,
                historical=is_historical(p.created, now),
                sent_at=now,
            )
            tally.sent("events", topic, payload)
            tally.by_type[record_type(p.data)] += len(payload)
    else:
        records = [(p.seq, is_historical(p.created, now), p.data) for p in batch]
        started = time.perf_counter()
        payload = frame_events(device, records, sent_at=now)
        tally.framing_s += time.perf_counter() - started
        started = time.perf_counter()
        back = decode_events(payload)
        tally.decoding_s += time.perf_counter() - started
        assert [(r.seq, r.historical, r.record) for r in back.records] == records
        tally.sent("events", topic, payload)
        total = sum(len(p.data) for p in batch)
        for p in batch:
            tally.by_type[record_type(p.data)] += len(payload) * len(p.data) / total
    for p in batch:
        tally.records[record_type(p.data)] += 1
        tally.waits_s[record_type(p.data)].append((now - p.created).total_seconds())


def with_interval(record: EtaUpdate) -> bytes:
    """``record``'s JSON with ``eta_p10`` and ``eta_p90`` added after ``eta_baseline``,
    as the interval of issue 15 will add them: eta - 25 % and + 35 % of the horizon
    (what the bytes cost does not depend on the values' accuracy)."""
    data = encode_record(record)
    horizon_s = (record.eta - record.time).total_seconds()
    p10 = format_utc(record.eta - timedelta(seconds=0.25 * horizon_s))
    p90 = format_utc(record.eta + timedelta(seconds=0.35 * horizon_s))
    key = b'"eta_baseline":"'
    at = data.index(key) + len(key) + len(format_utc(record.eta_baseline)) + 1
    return data[:at] + f',"eta_p10":"{p10}","eta_p90":"{p90}"'.encode() + data[at:]


def play(
    seed: int, n_stops: int, model: bytes, settings: UplinkSettings, interval: bool
) -> dict[str, Tally]:
    """Simulator day ``seed`` of ``n_stops`` stops through the pipeline, its uplink in
    both modes; ``interval``: ETA records carry p10 and p90 (:func:`with_interval`)."""
    day = simulator_day(seed, n_stops)
    manifest = day.manifest
    device = manifest.device_id
    van = VanPipeline(
        manifest,
        pods=PodChain(device, Ed25519PrivateKey.generate()),
        config=VanConfig(),
        telemetry=True,
        eta=EtaPredictor.load(model),
    )
    tallies = {mode: Tally() for mode in MODES}
    fixes: list[tuple[int, datetime, bytes]] = []
    events: dict[str, list[_Pending]] = {mode: [] for mode in MODES}
    seqs = {"telemetry": 0, "events": 0}
    tele_topic = uplink_topic(device, "telemetry")
    max_records = settings.events_batch_max_records

    def send(now: datetime, *, flush: bool) -> None:
        while fixes and (
            flush
            or len(fixes) >= settings.batch_max_fixes
            or (now - fixes[0][1]).total_seconds() >= settings.batch_max_age_s
        ):
            batch, fixes[:] = fixes[: settings.batch_max_fixes], fixes[settings.batch_max_fixes :]
            payload = frame_batch(
                device,
                batch[0][0],
                [(s, d) for s, _, d in batch],
                historical=is_historical(batch[0][1], now),
            )
            assert len(decode_batch(payload).points) == len(batch)
            for tally in tallies.values():
                tally.sent("telemetry", tele_topic, payload)
        before = events["before"]
        if before:
            _send_events(tallies["before"], "before", device, before, now)
            before.clear()
        after = events["after"]
        while after:
            head = after[:max_records]
            head = head[: fitting([len(p.data) for p in head])]
            pending = [(record_type(p.data), p.created) for p in head]
            if not events_due(
                pending,
                now,
                max_records=max_records,
                max_age_s=settings.events_batch_max_age_s,
                flush=flush,
            ):
                break
            _send_events(
                tallies["after"], "after" if max_records > 1 else "before", device, head, now
            )
            del after[: len(head)]

    times = [fix.time for fix in day.fixes if fix.time is not None]
    for fix in day.fixes:
        if fix.time is None:  # a receiver report without a time: nothing is sent on it
            van.on_fix(fix)
            continue
        now = fix.time
        for record in van.on_fix(fix):
            if isinstance(record, TelemetryPoint):
                seqs["telemetry"] += 1
                fixes.append((seqs["telemetry"], record.time, encode_point(record)))
            elif record.stream == "events":
                seqs["events"] += 1
                if interval and isinstance(record, EtaUpdate):
                    data = with_interval(record)
                else:
                    data = encode_record(record)
                for mode in MODES:
                    events[mode].append(_Pending(seqs["events"], now, data))
        send(now, flush=False)
    send(times[-1], flush=True)
    hours = (times[-1] - times[0]).total_seconds() / 3600
    for tally in tallies.values():
        tally.hours = hours
    return tallies


def _kb_h(value: float, hours: float) -> str:
    return f"{value / hours / 1e3:.1f}"


def report(name: str, tallies: dict[str, Tally]) -> list[str]:
    out = [
        f"### {name}",
        "",
        "| mode | hours | stream | messages/h | payload kB/van-hour | with MQTT header+topic "
        "kB/van-hour | same, topic alias (estimate) |",
        "|---|--:|---|--:|--:|--:|--:|",
    ]
    for mode, t in tallies.items():
        for stream in ("telemetry", "events"):
            out.append(
                f"| {mode} | {t.hours:.1f} | {stream} | {t.messages[stream] / t.hours:.0f} | "
                f"{_kb_h(t.payload[stream], t.hours)} | {_kb_h(t.mqtt[stream], t.hours)} | "
                f"{_kb_h(t.aliased[stream], t.hours)} |"
            )
        out.append(
            f"| {mode} | {t.hours:.1f} | **whole uplink** | "
            f"{sum(t.messages.values()) / t.hours:.0f} | "
            f"**{_kb_h(sum(t.payload.values()), t.hours)}** | "
            f"**{_kb_h(sum(t.mqtt.values()), t.hours)}** | "
            f"**{_kb_h(sum(t.aliased.values()), t.hours)}** |"
        )
    out += [
        "",
        "| mode | record type | records | payload kB/van-hour | B/record | wait before "
        "send, median s | max s |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for mode, t in tallies.items():
        for kind, n in t.records.most_common():
            waits = t.waits_s[kind]
            out.append(
                f"| {mode} | {kind} | {n} | {_kb_h(t.by_type[kind], t.hours)} | "
                f"{t.by_type[kind] / n:.0f} | {statistics.median(waits):.0f} | "
                f"{max(waits):.0f} |"
            )
    after = tallies["after"]
    out += [
        "",
        f"after: frame_events {after.framing_s * 1e3 / after.hours:.1f} ms of CPU per van-hour "
        f"({after.messages['events']} batches), decode_events "
        f"{after.decoding_s * 1e3 / after.hours:.1f} ms",
    ]
    return [*out, ""]


def _setting(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    fields = UplinkSettings.model_fields
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, NAME one of {sorted(fields)}")
    kind = fields[name].annotation
    try:
        return name, int(value) if kind is int else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not a number: {value!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-seeds", default="3", help="long days (3)")
    parser.add_argument("--long-stops", type=int, default=150)
    parser.add_argument("--seeds", default="1", help="short days (1)")
    parser.add_argument("--stops", type=int, default=25)
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--interval", action="store_true", help="ETA records with eta_p10 and eta_p90"
    )
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    settings = UplinkSettings.model_validate(dict(args.set))
    model = args.model.read_bytes()
    long, short = parse_seeds(args.long_seeds), parse_seeds(args.seeds)
    jobs = [(s, args.long_stops) for s in long] + [(s, args.stops) for s in short]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(
            pool.map(
                play,
                [s for s, _ in jobs],
                [n for _, n in jobs],
                [model] * len(jobs),
                [settings] * len(jobs),
                [args.interval] * len(jobs),
            )
        )
    elapsed_s = time.perf_counter() - started
    keep = {f.name: getattr(settings, f.name) for f in dataclasses.fields(_Shown)}
    print(f"ETA records with eta_p10/eta_p90: {args.interval}")
    print(
        f"uplink settings: {keep}; played in {elapsed_s:.0f} s, Python {platform.python_version()}"
    )
    print()
    for seeds, n_stops in ((long, args.long_stops), (short, args.stops)):
        if not seeds:
            continue
        merged = {mode: Tally() for mode in MODES}
        for (seed, n), tallies in zip(jobs, results, strict=True):
            if n == n_stops and seed in seeds:
                for mode in MODES:
                    merged[mode].add(tallies[mode])
        print("\n".join(report(f"{n_stops} stops, seeds {format_seeds(seeds)}", merged)))


@dataclass
class _Shown:
    batch_max_fixes: int
    batch_max_age_s: float
    events_batch_max_records: int
    events_batch_max_age_s: float


if __name__ == "__main__":
    main()
