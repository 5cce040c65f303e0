"""Sequence-range arithmetic behind acks and gap reports (pure; both backends use it).

A device's received seqs of one stream are kept as disjoint, non-adjacent inclusive
ranges ``(first_seq, last_seq)``: after seqs 1..1200 and 1205..1300 arrived, two rows.
Storing a batch touches only the ranges that overlap or adjoin what it brings, so the
cost of a write does not grow with the history, and the ack is the end of the range
that starts at 1.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from cloud_ingest.store.base import Gap, WriteBatch
from firmware_agent.contract.topics import STREAMS, Stream

SeqRange = tuple[int, int]


def merge_ranges(ranges: Iterable[SeqRange]) -> list[SeqRange]:
    """``ranges`` as sorted, disjoint, non-adjacent ranges covering the same seqs."""
    merged: list[SeqRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def absorb(
    existing: Sequence[SeqRange], new: Iterable[SeqRange]
) -> tuple[list[int], list[SeqRange]]:
    """How to change stored ranges so that they also cover ``new``.

    ``existing``: the stored (disjoint) ranges that overlap or adjoin a range of ``new``
    (others are unaffected and need not be given). Returns the ``first_seq`` of the
    stored ranges to delete and the ranges to insert; both empty when ``new`` is already
    covered, so a duplicate delivery writes nothing.
    """
    before = set(existing)
    after = set(merge_ranges([*existing, *new]))
    remove = sorted(first for first, _ in before - after)
    add = sorted(after - before)
    return remove, add


def cumulative_ack(ranges: Iterable[SeqRange]) -> int:
    """The highest S such that 1..S is covered by the disjoint ``ranges``; 0 if none."""
    for first, last in ranges:
        if first == 1:
            return last
    return 0


def holes(ranges: Iterable[SeqRange]) -> list[SeqRange]:
    """The seqs missing below the highest covered one, as ranges (``ranges`` disjoint)."""
    missing: list[SeqRange] = []
    expected = 1
    for first, last in sorted(ranges):
        if first > expected:
            missing.append((expected, first - 1))
        expected = max(expected, last + 1)
    return missing


def uncovered(ranges: Iterable[SeqRange], upto: int) -> list[SeqRange]:
    """The seqs of ``1..upto`` that the disjoint ``ranges`` do not cover, as ranges."""
    missing: list[SeqRange] = []
    expected = 1
    for first, last in sorted(ranges):
        if first > upto:
            break
        if first > expected:
            missing.append((expected, first - 1))
        expected = max(expected, last + 1)
    if expected <= upto:
        missing.append((expected, upto))
    return missing


def gap_report(
    ranges: Mapping[str, Iterable[SeqRange]], lost: Iterable[tuple[str, int, int]]
) -> list[Gap]:
    """A device's gaps: the holes in its stored ``ranges`` (stream -> ranges) and its
    ``lost`` ranges (stream, first, last; adjacent ones merged: two reports may each
    have settled part of one loss), by stream and seq."""
    gaps = [Gap(s, a, b) for s in STREAMS for a, b in holes(ranges.get(s, ()))]
    by_stream: dict[str, list[SeqRange]] = defaultdict(list)
    for s, a, b in lost:
        by_stream[s].append((a, b))
    gaps += [
        Gap(_stream(s), a, b, "released")
        for s, found in by_stream.items()
        for a, b in merge_ranges(found)
    ]
    order = {s: i for i, s in enumerate(STREAMS)}
    return sorted(gaps, key=lambda g: (order[g.stream], g.first_seq))


def _stream(name: str) -> Stream:
    for s in STREAMS:
        if s == name:
            return s
    raise ValueError(f"not a stream: {name!r}")


def received_ranges(batch: WriteBatch) -> dict[tuple[str, Stream], list[SeqRange]]:
    """What ``batch`` brings per (device_id, stream), merged.

    Every record counts (a duplicate's seq is covered already, which :func:`absorb`
    turns into no change; a POD the store refuses is quarantined with its seq settled),
    as do signed telemetry ranges and the ranges of quarantined messages that settle
    their seqs. (What a device releases is settled apart: see the write plan.)
    """
    raw: dict[tuple[str, Stream], list[SeqRange]] = defaultdict(list)
    for p in batch.positions:
        raw[p.device_id, "telemetry"].append((p.seq, p.seq))
    for e in batch.events:
        raw[e.device_id, "events"].append((e.seq, e.seq))
    for pod in batch.pods:
        raw[pod.device_id, "pod"].append((pod.seq, pod.seq))
    covered = [*batch.covered, *(q.covered for q in batch.quarantined if q.covered is not None)]
    for c in covered:
        raw[c.device_id, c.stream].append((c.first_seq, c.last_seq))
    return {key: merge_ranges(value) for key, value in raw.items()}
