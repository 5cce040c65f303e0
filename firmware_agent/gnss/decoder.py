"""Bytes from a receiver in, clean fixes out: the GNSS path's pure core.

:class:`GnssDecoder` owns no I/O and no clock: the serial reader, ``fleet-agent gnss
decode`` and the offline replay all feed it bytes (and, live, a monotonic receive
time). It never raises on input; everything it rejects is counted:

- ``faults``: damaged input (bad checksum, truncated or malformed sentences, binary
  noise, non-ASCII bytes, over-long lines, fields that fail to convert), logged once per
  kind by whoever owns the logger; ``internal_error`` counts a sentence that raised out
  of the decoding code itself (a bug: the sentence is dropped and decoding goes on);
- ``ignored``: well-formed input it has no use for (proprietary sentences, types other
  than GGA/RMC/VTG/GSA/GSV/GNS/GLL/ZDA, log comments, sentences without checksum);
- the filters' counts (duplicate, out_of_order, stale, jump, and recoveries).
"""

from __future__ import annotations

from collections import Counter

import pynmea2

from firmware_agent.contract.fix import Fix
from firmware_agent.faults import FaultCounter, format_counts
from firmware_agent.gnss import framing
from firmware_agent.gnss.epochs import EpochAssembler
from firmware_agent.gnss.filters import FilterConfig, FixFilter
from firmware_agent.gnss.sentences import (
    BAD_CHECKSUM,
    BAD_FIELD,
    INTERNAL_ERROR,
    MALFORMED,
    NO_CHECKSUM,
    PROPRIETARY,
    SPECS,
    TRUNCATED,
    UNUSED_TYPE,
    SentenceError,
    nmea_checksum,
    parse_tod_ms,
    parse_zda,
    tod_resolution_ms,
)

_SUMMARY_ORDER = ("sentences", "decoded", "fixes", "no_fix", "no_date", "emitted")


class GnssDecoder:
    """Incremental NMEA decoder with validity gating, epoch merging and filters.

    ``feed(data, now_s)`` accepts any bytes split anywhere and returns the fixes of the
    epochs they complete. ``close_epoch(now_s)`` closes the open epoch when the line has
    gone quiet between bursts (the live reader calls it); ``flush(now_s)`` is the end of
    the stream: an unterminated last line is decoded too, then the epoch is closed.
    """

    def __init__(
        self,
        *,
        filters: FilterConfig | None = None,
        comments: bool = False,
        require_checksum: bool = False,
        max_sentence_chars: int = framing.DEFAULT_MAX_SENTENCE_CHARS,
    ) -> None:
        self.faults = FaultCounter()
        self.ignored: Counter[str] = Counter()
        # Activity counters: plain ints, as they are bumped once or twice per sentence.
        self.sentences = 0  # candidate sentences framed
        self.decoded = 0  # sentences decoded into navigation facts
        self.fixes = 0  # epochs closed
        self.no_fix = 0  # ... of which without a valid position
        self.no_date = 0  # ... of which before any date was known
        self.emitted = 0  # fixes that passed the filters
        # The latest exception a sentence raised out of the decoding code (counted as
        # the fault INTERNAL_ERROR), for the reader's log.
        self.last_internal_error: Exception | None = None
        self._framer = framing.SentenceFramer(
            self.faults, self.ignored, comments=comments, max_sentence_chars=max_sentence_chars
        )
        self._require_checksum = require_checksum
        self._epochs = EpochAssembler()
        self.filter = FixFilter(filters if filters is not None else FilterConfig())

    def feed(self, data: bytes, now_s: float | None = None) -> list[Fix]:
        fixes: list[Fix] = []
        for body in self._framer.feed(data):
            try:
                self._sentence(body, fixes)
            except Exception as err:  # the contract: never raise on input
                self._internal_error(body, err)
        return self._filtered(fixes, now_s) if fixes else fixes

    def close_epoch(self, now_s: float | None = None) -> list[Fix]:
        fixes: list[Fix] = []
        self._epochs.flush(fixes)
        return self._filtered(fixes, now_s)

    def flush(self, now_s: float | None = None) -> list[Fix]:
        fixes: list[Fix] = []
        for body in self._framer.flush():
            try:
                self._sentence(body, fixes)
            except Exception as err:  # as in feed
                self._internal_error(body, err)
        self._epochs.flush(fixes)
        return self._filtered(fixes, now_s)

    def _sentence(self, body: str, fixes: list[Fix]) -> None:
        # The hot path of the agent (10 sentences per epoch at 10 Hz): locals, not
        # attribute lookups, and no call that is not needed.
        self.sentences += 1
        kind = "P" if body[:1] == "P" else body[2:5]
        spec = SPECS.get(kind)
        if spec is None:
            self._ignore(body, kind)
            return
        merge, width, required, time_field = spec
        checked = body[-3:-2] == "*"
        if not checked:
            if self._require_checksum:
                self.faults.add(NO_CHECKSUM, body)
                return
            self.ignored[NO_CHECKSUM] += 1
        try:
            msg = pynmea2.parse(body)
        except pynmea2.ChecksumError:
            self.faults.add(BAD_CHECKSUM, body)
            return
        except pynmea2.ParseError:
            self.faults.add(MALFORMED, body)
            return
        data: list[str] = msg.data
        n = len(data)
        if n < width:
            if n < required and not checked:
                self.faults.add(TRUNCATED, body)
                return
            data = data + [""] * (width - n)
        epochs = self._epochs
        talker: str = msg.talker
        if time_field >= 0 and (stamp := data[time_field]):
            try:
                tod = parse_tod_ms(stamp)
            except ValueError:
                self.faults.add(MALFORMED, body)
                return
            if kind == "ZDA":
                try:
                    day = parse_zda(data)
                except SentenceError as err:
                    self.faults.add(err.reason, body)
                    return
                if day is not None:
                    epochs.note_date(day, tod)
                self.decoded += 1
                return
            epochs.begin(tod, tod_resolution_ms(stamp), fixes)
        draft = epochs.draft
        try:
            merge(data, n, talker, draft)
        except SentenceError as err:
            self.faults.add(err.reason, body)
            return
        if draft.bad_fields:
            self.faults.add(BAD_FIELD, body, n=draft.bad_fields)
            draft.bad_fields = 0
        self.decoded += 1
        epochs.end(talker + kind, fixes)

    def _internal_error(self, body: str, err: Exception) -> None:
        # A sentence the checks above let through and the code below them could not
        # take: a bug, never the receiver's fault, yet one sentence must not stop the
        # van's GNSS. Counted (the first example with its exception, for the log),
        # dropped, and the epoch it was part of goes on.
        self.last_internal_error = err
        self.faults.add(INTERNAL_ERROR, f"{type(err).__name__} on {body}")

    def _ignore(self, body: str, kind: str) -> None:
        # Not ours to decode, but a corrupted one still says the line is damaged.
        star = body.rfind("*")
        if star >= 0 and len(body) == star + 3:
            try:
                if int(body[star + 1 :], 16) != nmea_checksum(body[:star]):
                    self.faults.add(BAD_CHECKSUM, body)
                    return
            except (ValueError, UnicodeEncodeError):
                self.faults.add(BAD_CHECKSUM, body)
                return
        self.ignored[PROPRIETARY if kind == "P" else UNUSED_TYPE] += 1

    def _filtered(self, fixes: list[Fix], now_s: float | None) -> list[Fix]:
        out = []
        accept = self.filter.accept
        for fix in fixes:
            self.fixes += 1
            if fix.lat is None:
                self.no_fix += 1
            if fix.time is None:
                self.no_date += 1
            if accept(fix, now_s):
                self.emitted += 1
                out.append(fix)
        return out

    def summary_counts(self) -> dict[str, int]:
        """Every counter, flat: activity, then faults, ignored input and filter outcomes."""
        out: dict[str, int] = {k: getattr(self, k) for k in _SUMMARY_ORDER}
        for kind, n in self.faults.counts.items():
            out["fault." + kind] = n
        for kind, n in self.ignored.items():
            out["ignored." + kind] = n
        for kind, n in self.filter.counts.items():
            out["filter." + kind] = n
        return out

    def summary(self) -> str:
        """One line with every counter, for logs and ``gnss decode``'s stderr."""
        return format_counts(self.summary_counts(), _SUMMARY_ORDER)
