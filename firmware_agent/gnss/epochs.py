"""Grouping sentences into receiver epochs, and an epoch's draft into one :class:`Fix`.

A receiver reports each navigation epoch as a burst of sentences: some carry the time
(GGA, RMC, GLL, GNS), some do not (VTG, GSA, GSV), and their order depends on the
chipset. The assembler groups them by time of day and closes an epoch when

- a sentence with a different time arrives (always correct, one sentence late), or
- the sentence that ended the last two cycles arrives again (the learned *cycle end*:
  the fix goes out as soon as the burst is complete), or
- the caller says the line went quiet (:meth:`EpochAssembler.flush`). Only receive
  timing can tell a GSA that ends one burst from one that starts the next.

The date comes from RMC or ZDA and is carried across epochs (with midnight rollover),
because GGA, GLL and GNS state only the time of day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.gnss.sentences import EpochDraft

_DAY_MS = 86_400_000
_HALF_DAY_MS = _DAY_MS // 2
_MODES = (FixMode.UNKNOWN, FixMode.NO_FIX, FixMode.FIX_2D, FixMode.FIX_3D)


def same_epoch(a_ms: int, a_res_ms: int, b_ms: int, b_res_ms: int) -> bool:
    """Whether two times of day name the same epoch, compared at the coarser resolution.

    Some receivers stamp GLL with their own milliseconds: a Magellan eXplorist sends
    GLL at .295 s and GGA/RMC at .30 s for one fix (.295 is .30 at 10 ms resolution),
    while a Telit SL869 has two real epochs at .990 s and .000 s, 10 ms apart.
    """
    res = max(a_res_ms, b_res_ms)
    half = res // 2
    return (a_ms + half) // res == (b_ms + half) // res


class EpochAssembler:
    """Owns the draft of the open epoch; closes epochs into fixes.

    Per sentence the decoder calls :meth:`begin` with the sentence's time (if it has
    one), merges the sentence into :attr:`draft`, then calls :meth:`end`. Only epochs
    that contained a position sentence (GGA, RMC, GLL, GNS) yield a fix; a fix without
    a valid position has ``lat``/``lon`` ``None`` and mode ``NO_FIX``.
    """

    __slots__ = (
        "_anchor_tod",
        "_candidate_end",
        "_cycle_end",
        "_date",
        "_end_key",
        "_end_n",
        "_midnight",
        "draft",
    )

    def __init__(self) -> None:
        self.draft = EpochDraft()
        self._date: date | None = None
        self._midnight: datetime | None = None
        self._anchor_tod = 0
        self._cycle_end: tuple[str, int] | None = None
        self._candidate_end: tuple[str, int] | None = None
        # The cycle end unpacked, so that the per-sentence test allocates nothing.
        self._end_key = ""
        self._end_n = 0

    def begin(self, tod_ms: int, res_ms: int, out: list[Fix]) -> None:
        """A sentence stamped ``tod_ms`` arrives: close the open epoch if it is another."""
        d = self.draft
        if d.tod_ms is not None and not same_epoch(tod_ms, res_ms, d.tod_ms, d.tod_res_ms):
            self._close(out, learn=True)
            d = self.draft
        # The last timed sentence sets the epoch's time (GGA/RMC after an eXplorist GLL).
        d.tod_ms, d.tod_res_ms = tod_ms, res_ms

    def end(self, key: str, out: list[Fix]) -> None:
        """The sentence ``key`` (talker + type) was merged; close if it ends the cycle."""
        d = self.draft
        occurrences = d.occurrences
        n = occurrences[key] = occurrences.get(key, 0) + 1
        d.last_key, d.last_n = key, n
        if n == self._end_n and key == self._end_key:
            self._close(out, learn=False)

    def note_date(self, day: date, tod_ms: int) -> None:
        """A ZDA: it states the date; its time may come from a different clock than the
        fix (some receivers send it seconds apart), so it never keys an epoch."""
        self._set_date(day, tod_ms)

    def flush(self, out: list[Fix]) -> None:
        """Close the open epoch (end of input, or the line went quiet)."""
        self._close(out, learn=False)

    def _set_date(self, day: date, tod_ms: int) -> None:
        if day != self._date:
            self._date = day
            self._midnight = datetime.combine(day, time.min, UTC)
        self._anchor_tod = tod_ms

    def _close(self, out: list[Fix], *, learn: bool) -> None:
        d, self.draft = self.draft, EpochDraft()
        if learn:
            # The last sentence of a cycle that ended by a time change is a candidate
            # cycle end; seen twice in a row, it becomes the cycle end.
            last = (d.last_key, d.last_n)
            if last == self._candidate_end:
                self._cycle_end = last
            else:
                self._candidate_end = last
                if last != self._cycle_end:
                    self._cycle_end = None
            self._end_key, self._end_n = self._cycle_end or ("", 0)
        if d.nav_seen and d.tod_ms is not None:
            out.append(self._fix(d, d.tod_ms))

    def _when(self, d: EpochDraft, tod: int) -> datetime | None:
        if d.date is not None:
            self._set_date(d.date, tod)
        elif self._date is None:
            return None
        elif tod < self._anchor_tod - _HALF_DAY_MS:  # passed midnight since the anchor
            self._set_date(self._date + timedelta(days=1), tod)
        elif tod > self._anchor_tod + _HALF_DAY_MS:  # a late epoch from before midnight
            assert self._midnight is not None
            return self._midnight - timedelta(milliseconds=_DAY_MS - tod)
        else:
            self._anchor_tod = tod
        assert self._midnight is not None
        return self._midnight + timedelta(milliseconds=tod)

    def _fix(self, d: EpochDraft, tod: int) -> Fix:
        when = self._when(d, tod)
        # GGA caps the count at 12 on many receivers; the GSA lists (one per
        # constellation on multi-GNSS receivers) then add up to more.
        sats = d.gga_sats
        if d.gsa_used:
            n_gsa = sum(d.gsa_used.values())
            sats = n_gsa if sats is None or n_gsa > sats else sats
        sats_view = None
        if d.in_view:
            # Signal groups of one constellation (GP L1, GP L5) list the same
            # satellites: count the largest group per talker.
            per_talker: dict[str, int] = {}
            for group, n in d.in_view.items():
                if n > per_talker.get(group[:2], -1):
                    per_talker[group[:2]] = n
            sats_view = sum(per_talker.values())
        if d.lat is None:
            return Fix(
                when, tod / 1000.0, None, None, None, None, None, FixMode.NO_FIX,
                d.quality, d.hdop, d.pdop, d.vdop, sats, sats_view, "",
            )  # fmt: skip
        fix_type = d.fix_type
        if fix_type == 2 or fix_type == 3:  # noqa: PLR1714 (faster than a tuple test)
            mode = _MODES[fix_type]
        else:
            mode = FixMode.FIX_3D if d.alt_m is not None else FixMode.FIX_2D
        velocity_ok = not d.velocity_invalid
        return Fix(
            when, tod / 1000.0, d.lat, d.lon,
            d.speed_mps if velocity_ok else None,
            d.course_deg if velocity_ok else None,
            d.alt_m, mode, d.quality, d.hdop, d.pdop, d.vdop, sats, sats_view, d.talker,
        )  # fmt: skip
