"""Verifying a device's PODs as a chain, and naming what is wrong with it.

Each record is checked alone first (signature, shape, device), then in sequence: the
chain is expected to go ``seq`` 1, 2, 3, ... with each ``prev`` equal to the digest of
the record before. The first deviation is named by what most likely happened:

=============  ===============================================================
malformed      not a compact JWS, not JSON, or signed but lacking POD claims
bad_signature  does not verify with the device key: altered after signing
               (payload, header or ``prev`` changed), forged with another key,
               or an algorithm we refuse (``none``)
wrong_device   validly signed, but for another device id
broken_link    right seq, but ``prev`` is not the previous record's digest; or a
               seq signed twice with different content (a forked chain: the
               device's state was rolled back)
missing        seq jumps forward over seqs that no record carries: records
               were deleted (reported at the record after the gap)
reordered      seq arrives before a lower seq still to come, or after the chain
               has passed it: a record out of place
duplicate      the same token (same seq) again
=============  ===============================================================

Verification goes on after a problem, resynchronising on the next good record, so
one report lists every problem, in record order. From a known start, the first problem
is at the first record that departs from the genuine chain (a property the tests check
over arbitrary selections, orders and repetitions of records). An unreadable record
stands in for one seq: the record after it is accepted if its seq fits, with its link
unverifiable (its prev is the digest of the original, which we no longer have).

What a chain cannot show: records deleted from the END. Nothing follows them to
carry their digest; the outbox's cumulative sequence acks (ingest acknowledges the
highest contiguous seq stored) are what cover that case. Likewise, without a known
starting point (``start``), records deleted from the beginning are not visible.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware_agent.contract.jws import POD_TYP, JwsError, peek_claims, read_header, verify_compact
from firmware_agent.contract.keys import key_thumbprint
from firmware_agent.contract.pod import POD_VERSION, is_hex_digest, pod_digest
from firmware_agent.pod.chain import ChainState

ProblemKind = Literal[
    "malformed",
    "bad_signature",
    "wrong_device",
    "broken_link",
    "missing",
    "reordered",
    "duplicate",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one record.

    ``index`` is the 1-based position of the record among the tokens given;
    ``seq`` the seq it claims (unverified when the record is not validly signed), or
    ``None`` when unreadable.
    """

    index: int
    seq: int | None
    kind: ProblemKind
    detail: str


@dataclass(slots=True)
class ChainReport:
    """The outcome of :func:`verify_chain`.

    ``records``: tokens examined; ``ok``: records without any problem; ``problems``:
    in record order, the first one first; ``first_seq``/``last_seq``: lowest and highest
    seq among validly signed records of the device (``None`` if there are none);
    ``device_id``: the device verified (given, or the one most records carry).
    """

    records: int
    ok: int
    problems: list[Problem] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    device_id: str | None = None

    @property
    def valid(self) -> bool:
        """No problem found (an empty input is valid: there is nothing wrong in it)."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Record:
    """A validly signed POD, reduced to what the chain checks need."""

    index: int
    token: str
    seq: int
    prev: str
    device_id: str
    digest: str


@dataclass(frozen=True, slots=True)
class _Link:
    """Where the chain stands: the last record in place (``index`` None: ``start``)."""

    seq: int
    digest: str
    index: int | None = None


def _claimed_seq(token: str) -> int | None:
    try:
        seq = peek_claims(token).get("seq")
    except JwsError:
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _signature_detail(token: str, err: JwsError, kid: str) -> str:
    if err.reason == "bad_alg":
        return str(err)
    try:
        signed_kid = read_header(token).get("kid")
    except JwsError:
        signed_kid = None
    if isinstance(signed_kid, str) and signed_kid != kid:
        return f"signed by another key (kid {signed_kid}, the device key is {kid})"
    return "signature does not match the content: altered after signing"


def _check_record(index: int, token: str, key: Ed25519PublicKey, kid: str) -> _Record | Problem:
    """Verify one record on its own: signature and POD shape."""
    try:
        claims = verify_compact(token, key, typ=POD_TYP)
    except JwsError as err:
        seq = _claimed_seq(token) if err.reason != "malformed" else None
        if err.reason in ("bad_signature", "bad_alg"):
            return Problem(index, seq, "bad_signature", _signature_detail(token, err, kid))
        return Problem(index, seq, "malformed", str(err))
    seq, prev, device_id = claims.get("seq"), claims.get("prev"), claims.get("device_id")
    faults = []
    if claims.get("v") != POD_VERSION:
        faults.append(f"v is {claims.get('v')!r}, not {POD_VERSION}")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        faults.append(f"seq is {seq!r}, not an integer >= 1")
    if not is_hex_digest(prev):
        faults.append("prev is not 64 lowercase hex digits")
    if not isinstance(device_id, str) or not device_id:
        faults.append("device_id is not a non-empty string")
    if faults:
        good_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        return Problem(index, good_seq, "malformed", "signed, but not a POD: " + "; ".join(faults))
    assert isinstance(seq, int)
    assert isinstance(prev, str)
    assert isinstance(device_id, str)
    return _Record(index, token, seq, prev, device_id, pod_digest(token))


def _seqs_within(seqs: Collection[int], lo: int, hi: int) -> list[int]:
    """The members of ``seqs`` in ``[lo, hi)``, sorted, in O(min(hi - lo, len(seqs))).

    A validly signed seq can be arbitrarily large (a device bug): never loop over a gap.
    """
    if hi - lo <= len(seqs):
        return [s for s in range(lo, hi) if s in seqs]
    return sorted(s for s in seqs if lo <= s < hi)


def _describe_absent(lo: int, hi: int, present: Collection[int]) -> str:
    """The seqs of ``[lo, hi)`` not in ``present``, for a message."""
    if not present:
        return f"seq {lo}" if hi - lo == 1 else f"seqs {lo}..{hi - 1}"
    shown: list[int] = []
    for s in range(lo, hi):  # ends after 6 absent seqs: at most len(present) + 6 steps
        if s not in present:
            shown.append(s)
            if len(shown) > 5:
                break
    listed = ", ".join(str(s) for s in shown[:5])
    return f"seq{'s' if len(shown) > 1 else ''} {listed}{', ...' if len(shown) > 5 else ''}"


def _at(index: int | None) -> str:
    return f"record {index}" if index is not None else "the start point"


class _ChainWalk:
    """Walks the records in input order, keeping where the chain stands (the head).

    The head is the last record in place. A record that comes too early (a lower seq is
    still to come) is reported and parked; it slots in, link checked, once the chain
    reaches it. A record the chain has already passed is reported and otherwise ignored,
    so one misplaced record does not derail the checks of all those after it.
    """

    def __init__(self, device_id: str | None, head: _Link | None, chain: list[_Record]) -> None:
        self.device_id = device_id
        self.head = head
        self.problems: list[Problem] = []
        self.seen: dict[int, _Record] = {}  # the first record of each seq, in input order
        self.early: dict[int, _Record] = {}  # parked records that came too early
        self.unreadable = 0  # bad records since the head last advanced
        # For each seq, the last position it occupies: "does seq s still come after i?"
        self.last_index = {r.seq: r.index for r in chain}

    def report(self, record: _Record, kind: ProblemKind, detail: str) -> None:
        self.problems.append(Problem(record.index, record.seq, kind, detail))

    def bad(self, problem: Problem) -> None:
        self.problems.append(problem)
        # An unreadable record stands in for one seq: the next one may skip it.
        self.unreadable += 1

    def take(self, r: _Record) -> None:
        if r.device_id != self.device_id:
            self.report(r, "wrong_device", f"device {r.device_id!r}, not {self.device_id!r}")
            self.unreadable += 1
            return
        first = self.seen.get(r.seq)
        if first is not None:
            if first.token == r.token:
                self.report(r, "duplicate", f"same POD as record {first.index}")
            else:
                self.report(
                    r,
                    "broken_link",
                    f"seq {r.seq} was already signed with other content at record "
                    f"{first.index}: the chain forked (device state rolled back?)",
                )
            return
        self.seen[r.seq] = r
        head = self.head
        assert head is not None  # set whenever the device has a validly signed record
        expected = head.seq + 1
        if r.seq < expected:
            self.report(
                r,
                "reordered",
                f"seq {r.seq} arrives after seq {head.seq} ({_at(head.index)}): out of place",
            )
        elif r.seq == expected:
            self.check_link(r)
            self.advance(r)
        elif later := [
            s
            for s in _seqs_within(self.last_index, expected, r.seq)
            if self.last_index[s] > r.index
        ]:
            self.report(
                r,
                "reordered",
                f"seq {r.seq} arrives before seq {later[0]} (record {self.last_index[later[0]]})",
            )
            self.early[r.seq] = r
        else:
            self.jump(r)

    def check_link(self, r: _Record) -> None:
        head = self.head
        assert head is not None
        if r.prev != head.digest:
            self.report(
                r,
                "broken_link",
                f"prev does not match the digest of seq {head.seq} ({_at(head.index)})",
            )

    def advance(self, r: _Record) -> None:
        self.head, self.unreadable = _Link(r.seq, r.digest, r.index), 0
        while (parked := self.early.pop(r.seq + 1, None)) is not None:
            self.check_link(parked)
            self.head = _Link(parked.seq, parked.digest, parked.index)
            r = parked

    def jump(self, r: _Record) -> None:
        """Move the head forward over a gap to ``r``; seqs never seen are missing."""
        head = self.head
        assert head is not None
        lo, hi = head.seq + 1, r.seq
        present = set(_seqs_within(self.seen, lo, hi))
        lost = (hi - lo) - len(present) - self.unreadable
        if lost > 0:
            besides = f" besides {self.unreadable} unreadable" if self.unreadable else ""
            self.report(
                r,
                "missing",
                f"{_describe_absent(lo, hi, present)} absent before this record: {lost} "
                f"record(s) deleted{besides} (after seq {head.seq}, {_at(head.index)})",
            )
        for s in _seqs_within(self.early, lo, hi):
            del self.early[s]  # parked in the gap: reported already, now passed
        self.advance(r)

    def finish(self) -> None:
        # Parked records the chain never reached: a gap below them was never filled.
        while self.early:
            self.jump(self.early.pop(min(self.early)))


def verify_chain(
    tokens: Iterable[str],
    key: Ed25519PublicKey,
    *,
    device_id: str | None = None,
    start: ChainState | None = None,
) -> ChainReport:
    """Verify ``tokens`` (one device's PODs, in stored order) as a hash chain.

    ``device_id``: the device the PODs must belong to (default: the device id most
    records carry). ``start``: the state before the first record — ``ChainState()``
    to require the chain to begin at seq 1; by default the chain is anchored at its
    lowest seq, so an excerpt (one day of a device's PODs) verifies on its own.
    Never raises on bad records: every problem is reported (see the module doc).
    """
    kid = key_thumbprint(key)
    checked = [_check_record(i, token, key, kid) for i, token in enumerate(tokens, start=1)]
    signed = [r for r in checked if isinstance(r, _Record)]
    if device_id is None and signed:
        device_id = Counter(r.device_id for r in signed).most_common(1)[0][0]
    chain = [r for r in signed if r.device_id == device_id]
    head: _Link | None = None
    if start is not None:
        head = _Link(start.seq, start.prev)
    elif chain:
        lowest = min(chain, key=lambda r: (r.seq, r.index))
        head = _Link(lowest.seq - 1, lowest.prev)

    walk = _ChainWalk(device_id, head, chain)
    for item in checked:
        if isinstance(item, Problem):
            walk.bad(item)
        else:
            walk.take(item)
    walk.finish()

    problems = sorted(walk.problems, key=lambda p: p.index)  # stable: per record, in order
    seqs = [r.seq for r in chain]
    return ChainReport(
        records=len(checked),
        ok=len(checked) - len({p.index for p in problems}),
        problems=problems,
        first_seq=min(seqs) if seqs else None,
        last_seq=max(seqs) if seqs else None,
        device_id=device_id,
    )


def read_pod_records(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, token)`` for each POD in ``text``, 1-based line numbers.

    Each line is either a compact JWS, or a JSON object: the agent's replay output, where
    objects with a string ``jws`` field are PODs and other message types are skipped.
    Blank lines and lines starting with ``#`` are skipped. A line that is neither (a
    truncated JSON line, garbage) is yielded as it is, so that verification reports
    it as malformed instead of silently dropping a record.
    """
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("{"):
            yield number, line
            continue
        try:
            obj: Any = json.loads(line)
        except ValueError:
            yield number, line
            continue
        if not isinstance(obj, dict):
            yield number, line
        elif "jws" in obj or obj.get("type") == "pod":
            jws = obj.get("jws")
            yield number, jws if isinstance(jws, str) else line
        # any other message type (telemetry, events, status, ...) is not ours


def read_pod_file(text: str) -> Iterator[str]:
    """The POD tokens in ``text`` (see :func:`read_pod_records` for the formats)."""
    for _, token in read_pod_records(text):
        yield token
