"""The decoder on 77 real receiver captures, against gpsd's decoding of the same bytes.

Each gpsd TPV that has a position is judged by the sentence gpsd emitted it after
(the ``.chk`` echoes every input sentence before gpsd's output for it). The sentence's
validity is read with pynmea2's own ``is_valid``, not with our decoder, so the test
cannot agree with a bug of ours by construction:

- ``valid``: the position came from a GGA/RMC/GLL/GNS that declares a fix. Our fix for
  that epoch must carry the same position within 1e-6 degrees (required: 100 %).
- ``no_fix``: gpsd passed on a position from a sentence that declares *no* fix (GGA
  quality 0, RMC/GLL status V). We must not produce a position for that epoch unless
  another sentence of the same epoch declared a valid fix (validity gating, required
  100 %).
- ``other``: the position came from a sentence we do not decode (proprietary, e.g.
  Ericsson ``$PERC,GPavp``); reported, not comparable.

Filters are off here (gpsd has none); ``test_default_filters_on_the_corpus`` covers
them on the same data.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pynmea2
import pytest

from firmware_agent.contract.fix import Fix
from firmware_agent.gnss.decoder import GnssDecoder
from firmware_agent.gnss.filters import FilterConfig
from tests.corpus import (
    GPSD_DIR,
    PYNMEA2_SENTENCES,
    gpsd_chk_events,
    gpsd_logs,
    read_gpsd_log,
    require,
)

TOLERANCE_DEG = 1e-6
# gpsd stamps a TPV with its own sentence's time, which may be a few ms off the epoch's
# (eXplorist GLL at .295 for the .30 epoch); real epochs are >= 10 ms apart.
SAME_EPOCH_MS = 5
GPS_WEEK_ROLLOVER = dt.timedelta(weeks=1024)

# Logs where gpsd's answer is not what the NMEA says, so 100 % cannot be required.
# Their match rate is still computed and printed.
EXCLUDED = {
    "bundg_zeus_9.log": (
        "B&G chartplotter: each second's GLL states a position 1.7-3.3e-6 deg away from "
        "the same second's GGA (same 4-decimal precision). gpsd reports both; one fix per "
        "epoch can equal only one of them (we keep the later GLL)"
    ),
}

_POSITION_KINDS = ("GGA", "RMC", "GLL", "GNS")


def _tod_ms(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


@dataclass(frozen=True)
class _Source:
    """A position sentence as pynmea2 reads it (independently of our decoder)."""

    kind: str
    valid: bool
    tod_ms: int | None
    lat: float
    lon: float


def _source_of(body: str) -> _Source | None:
    try:
        msg = pynmea2.parse(body)
    except pynmea2.ParseError:
        return None
    kind = getattr(msg, "sentence_type", "P")
    if not isinstance(msg, pynmea2.TalkerSentence) or kind not in _POSITION_KINDS:
        return None
    try:
        lat, lon = float(msg.latitude), float(msg.longitude)
    except (ValueError, TypeError):
        return None
    ts = msg.timestamp
    tod = _tod_ms(ts) if isinstance(ts, dt.time) else None
    if kind == "GNS":
        valid = any(c != "N" for c in (msg.mode_indicator or "N"))
    elif kind == "RMC":
        # Not pynmea2's is_valid: it also demands an NMEA 4.1 navigational status of
        # S/C/U, but "V" there means "equipment does not provide one" (Quectel always
        # sends it), not "no fix".
        mode = msg.data[11] if len(msg.data) > 11 else ""
        valid = msg.status == "A" and (mode == "" or mode in "ADEFMPRS")
    else:
        valid = bool(msg.is_valid)
    return _Source(kind, valid, tod, lat, lon)


@dataclass
class LogReport:
    name: str
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def rate(self) -> str:
        c = self.counts
        return (
            f"{self.name:38s} valid {c['valid_ok']}/{c['valid']}"
            f"  gated {c['no_fix_ok']}/{c['no_fix']}  other {c['other']}"
            f"  rollover {c['rollover']}"
        )


def _fix_at(fixes: dict[int, list[Fix]], tod_ms: int) -> Fix | None:
    for delta in sorted(range(-SAME_EPOCH_MS, SAME_EPOCH_MS + 1), key=abs):
        found = fixes.get(tod_ms + delta)
        if found:
            return found[-1]
    return None


def compare_log(log: Path) -> LogReport:
    report = LogReport(log.name)
    decoder = GnssDecoder(comments=True, filters=FilterConfig.disabled())
    out = decoder.feed(read_gpsd_log(log)) + decoder.flush()
    by_tod: dict[int, list[Fix]] = {}
    for fix in out:
        by_tod.setdefault(round(fix.tod_s * 1000), []).append(fix)

    # gpsd may emit the TPV after a later sentence of the cycle (ZDA, GBS): the source
    # of a TPV's position is the latest position sentence stating that position.
    events = list(gpsd_chk_events(log.with_suffix(".log.chk")))
    sources = [src for e in events if isinstance(e, str) and (src := _source_of(e))]
    valid_tods = {s.tod_ms for s in sources if s.valid and s.tod_ms is not None}
    recent: list[_Source] = []
    for event in events:
        if isinstance(event, str):
            src = _source_of(event)
            if src is not None:
                recent = [*recent[-7:], src]
            continue
        tpv = event
        pos = (tpv["lat"], tpv["lon"])
        source = next(
            (
                s
                for s in reversed(recent)
                if abs(s.lat - pos[0]) <= TOLERANCE_DEG and abs(s.lon - pos[1]) <= TOLERANCE_DEG
            ),
            None,
        )
        if source is None:
            report.counts["other"] += 1
            continue
        if "time" in tpv:
            when = dt.datetime.fromisoformat(tpv["time"].replace("Z", "+00:00"))
            tod: int | None = _tod_ms(when.time())
        else:
            when, tod = None, source.tod_ms
        if tod is None:
            report.counts["other"] += 1
            continue
        fix = _fix_at(by_tod, tod)
        if source.valid:
            report.counts["valid"] += 1
            problem = _compare(fix, pos, when, report)
            if problem is None:
                report.counts["valid_ok"] += 1
            else:
                report.failures.append(f"{tpv.get('time', tod)} {source.kind}: {problem}")
        else:
            report.counts["no_fix"] += 1
            leaked = fix is not None and fix.has_position
            if leaked and not any(abs(tod - t) <= SAME_EPOCH_MS for t in valid_tods):
                report.failures.append(f"{tod} {source.kind}: position from a no-fix sentence")
            else:
                report.counts["no_fix_ok"] += 1
    return report


def _compare(
    fix: Fix | None, pos: tuple[float, float], when: dt.datetime | None, report: LogReport
) -> str | None:
    if fix is None:
        return "no fix for this epoch"
    if fix.lat is None or fix.lon is None:
        return "epoch has no position"
    if abs(fix.lat - pos[0]) > TOLERANCE_DEG or abs(fix.lon - pos[1]) > TOLERANCE_DEG:
        return f"ours {fix.lat:.9f},{fix.lon:.9f} gpsd {pos[0]:.9f},{pos[1]:.9f}"
    if when is not None:
        if fix.time is None:
            return "gpsd knows the date, we do not"
        # gpsd moves receiver dates it thinks hit a GPS week rollover forward by
        # 1024 weeks (rst39: 2014 -> 2033); that is gpsd's policy, not the NMEA.
        delta = when - fix.time
        weeks = round(delta / GPS_WEEK_ROLLOVER)
        rest = delta - weeks * GPS_WEEK_ROLLOVER
        if abs(rest.total_seconds()) * 1000 > SAME_EPOCH_MS:
            return f"time: ours {fix.time.isoformat()} gpsd {when.isoformat()}"
        if weeks:
            report.counts["rollover"] += 1
    return None


LOGS = gpsd_logs()


@pytest.mark.corpus
def test_corpus_is_present() -> None:
    require(GPSD_DIR)
    assert len(LOGS) >= 70, f"expected the 77 gpsd captures, found {len(LOGS)}"


@pytest.mark.corpus
@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_gpsd_log_matches(log: Path) -> None:
    report = compare_log(log)
    print(report.rate())
    if log.name in EXCLUDED:
        pytest.xfail(f"{report.rate()}: {EXCLUDED[log.name]}")
    assert not report.failures, "\n".join(report.failures[:10])


@pytest.mark.corpus
def test_gpsd_corpus_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The whole corpus at once: the figures quoted in the issue note."""
    require(GPSD_DIR)
    total: Counter[str] = Counter()
    lines = []
    for log in LOGS:
        report = compare_log(log)
        total.update(report.counts)
        lines.append(report.rate())
    with capsys.disabled():
        print("\n" + "\n".join(lines))
        print(
            f"TOTAL valid {total['valid_ok']}/{total['valid']} "
            f"gated {total['no_fix_ok']}/{total['no_fix']} other {total['other']}"
        )
    assert total["valid"] > 4000  # the corpus holds ~5,000 such TPVs: the walk found them
    assert total["no_fix"] > 0  # and gpsd does pass on no-fix positions somewhere


@pytest.mark.corpus
def test_default_filters_on_the_corpus() -> None:
    """``gnss decode``'s default path over every log: no exception, every drop counted.

    telit-he910's receiver steps its clock back 0.3 s once (105153.71 then 105153.408):
    exactly that epoch is dropped as out of order.
    """
    require(GPSD_DIR)
    for log in LOGS:
        decoder = GnssDecoder(comments=True)
        emitted = decoder.feed(read_gpsd_log(log)) + decoder.flush()
        counts = decoder.summary_counts()
        drops = sum(
            n
            for k, n in counts.items()
            if k.startswith("filter.") and k not in ("filter.time_reset", "filter.jump_reanchor")
        )
        assert counts["emitted"] == len(emitted) == counts["fixes"] - drops, log.name
        if log.name == "telit-he910.log":
            assert counts.get("filter.out_of_order") == 1
            assert all(f.tod_s != 38_313.408 for f in emitted)


@pytest.mark.corpus
def test_every_pynmea2_sentence_is_decoded_or_counted() -> None:
    lines = require(PYNMEA2_SENTENCES).read_bytes().splitlines()
    assert len(lines) > 100
    for line in lines:
        decoder = GnssDecoder()
        decoder.feed(line + b"\r\n")
        decoder.flush()
        c = decoder.summary_counts()
        accounted = c["decoded"] + sum(
            n
            for k, n in c.items()
            if k.startswith(("fault.", "ignored.")) and k != "ignored.no_checksum"
        )
        # Every sentence ends up decoded or in a named counter; a line may add noise
        # counts on top (bytes around the sentence), never fewer than one outcome.
        assert accounted >= max(1, c["sentences"]), (line, c)
