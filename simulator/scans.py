"""The driver's scans over a day: a scan log in the format of docs/scan-log.md.

:func:`build_scan_log` plays the driver at every stop the scenario served: after
walking from the cab to the parcels (10-40 s after the van came to rest) they scan
each parcel of the stop a few seconds apart, all before the van moves off. Mistakes
happen at configured rates, each counted per delivered parcel (per ``ok`` scan):

- ``wrong_stop``: before scanning a parcel, the driver first scans one that belongs
  to one of the next few stops (the shelves are sorted by stop, neighbours get mixed
  up); that parcel is scanned again, correctly, at its own stop;
- ``garbage``: a bad read before the good one (a truncated code, a misread digit that
  breaks the check digit, printable junk, or control characters and bytes that are
  not UTF-8; see :func:`simulator.labels.garbage_text`);
- ``duplicate``: the same label read twice within 2 s (the trigger held too long).

Not every stop is a plain delivery: at ``outcome_rate`` of the stops the driver
records another outcome (docs/outcomes.md) for every parcel of the stop, drawn from
:data:`OUTCOME_WEIGHTS` (mostly "not home"; "neighbour" and "safe place" are
deliveries, the rest failed attempts) by scanning that outcome's reason card
(``reason`` lines): 1.5-4 s after the parcel (and its double read), or, for the stop's
first parcel in :data:`CARD_FIRST_SHARE` of such stops, just before it. So the pairing
rule of firmware_agent/pod/pairing.py pairs each card with its parcel.

Each line is ``{"time", "raw", "source": "serial", "truth": {...}}``; ``truth`` holds
``kind``, ``stop_id`` (the stop being served), ``parcel`` (the canonical code read,
``null`` for garbage; a reason card's: the parcel it is for), ``parcel_stop_id`` (the
stop that parcel belongs to), ``detail`` (the :class:`~simulator.labels.GarbageKind`
of a garbage line, else ``null``) and ``outcome`` (``ok`` and ``reason`` lines: the
attempt's outcome, ``delivered`` for a plain delivery; else ``null``). The agent
ignores ``truth``; evaluations score against it.

Every parcel has one physical label for the whole day: its rendering (GS1-128,
GS1 DataMatrix, Code 128 with or without AIM prefix) is drawn once per parcel. The
log is deterministic for a seed, and each effect draws from its own random stream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from firmware_agent.contract.outcomes import Outcome, card_code
from firmware_agent.contract.times import format_utc
from simulator.errors import ConfigError, ScanLogError
from simulator.labels import (
    LabelStyle,
    draw_label_style,
    garbage_text,
    scanner_text,
)
from simulator.manifest import POSTCODES
from simulator.rng import stream as random_stream
from simulator.scenario import Scenario

SCAN_LOG = "scans.jsonl"

ScanKind = Literal["ok", "wrong_stop", "garbage", "duplicate", "reason"]
SCAN_KINDS: tuple[ScanKind, ...] = ("ok", "wrong_stop", "garbage", "duplicate", "reason")

DEFAULT_WRONG_STOP_RATE = 0.03
DEFAULT_GARBAGE_RATE = 0.02
DEFAULT_DUPLICATE_RATE = 0.05
DEFAULT_OUTCOME_RATE = 0.15  # stops where the parcels are not simply handed over
# The outcomes of those stops, by weight.
OUTCOME_WEIGHTS: dict[Outcome, float] = {
    "not_home": 0.45,
    "neighbour": 0.2,
    "safe_place": 0.15,
    "access_problem": 0.08,
    "address_not_found": 0.05,
    "refused": 0.04,
    "damaged": 0.03,
}
CARD_FIRST_SHARE = 0.3
CARD_GAP_S = (1.5, 4.0)  # between a parcel and its reason card, either way

WALK_S = (10.0, 40.0)  # from the van coming to rest to the first scan
SCAN_GAP_S = (2.0, 6.0)  # between two parcels
WRONG_STOP_NOTICE_S = (3.0, 8.0)  # the scanner beeps "wrong stop", the driver puts it back
GARBAGE_RETRY_S = (1.0, 3.0)  # a bad read, then the driver aims again
DUPLICATE_GAP_S = (0.15, 1.5)  # a double read of one label
END_MARGIN_S = 1.0  # the last scan comes at least this long before the van moves off
WRONG_STOP_LOOKAHEAD = 3  # mixed-up parcels come from the next few stops' shelves
DATAMATRIX_POSTCODE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class _Label:
    style: LabelStyle
    postcode: str
    text: str


@dataclass(frozen=True, slots=True)
class _Event:
    kind: ScanKind
    raw: str
    parcel: str | None
    parcel_stop_id: str | None
    detail: str | None
    gap_s: float  # after the previous event of the stop (the first one's is unused)
    outcome: Outcome | None = None


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be within 0..1, got {value}")


def _manifest_stops(manifest: Mapping[str, Any]) -> list[tuple[str, list[str], str | None]]:
    """``(id, parcels, postcode)`` of each manifest stop; :class:`ConfigError` if malformed."""
    stops = manifest.get("stops")
    if not isinstance(stops, list):
        raise ConfigError("manifest has no 'stops' list")
    result = []
    for n, stop in enumerate(stops):
        if not isinstance(stop, dict) or not isinstance(stop.get("id"), str):
            raise ConfigError(f"manifest stop {n} has no string 'id'")
        parcels = stop.get("parcels")
        if not isinstance(parcels, list) or not all(isinstance(p, str) for p in parcels):
            raise ConfigError(f"manifest stop {stop['id']}: 'parcels' must be a list of strings")
        postcode = stop.get("postcode")
        result.append((stop["id"], list(parcels), postcode if isinstance(postcode, str) else None))
    return result


def build_scan_log(
    scenario: Scenario,
    manifest: Mapping[str, Any],
    *,
    seed: int,
    wrong_stop_rate: float = DEFAULT_WRONG_STOP_RATE,
    garbage_rate: float = DEFAULT_GARBAGE_RATE,
    duplicate_rate: float = DEFAULT_DUPLICATE_RATE,
    outcome_rate: float = DEFAULT_OUTCOME_RATE,
) -> list[dict[str, Any]]:
    """The scan log of ``scenario``'s day for ``manifest``, time-ordered (see module doc).

    Manifest stops the scenario did not serve get no scans; every parcel of a served
    stop is scanned ``ok`` exactly once, inside that stop's dwell. Rates are
    probabilities per ``ok`` scan, each within 0..1 (:class:`ConfigError` otherwise).
    """
    _check_rate("wrong_stop_rate", wrong_stop_rate)
    _check_rate("garbage_rate", garbage_rate)
    _check_rate("duplicate_rate", duplicate_rate)
    _check_rate("outcome_rate", outcome_rate)
    planned = _manifest_stops(manifest)
    labels = _draw_labels(planned, random_stream("scan-labels", seed))
    owner = {parcel: stop_id for stop_id, parcels, _ in planned for parcel in parcels}
    by_id = {stop_id: parcels for stop_id, parcels, _ in planned}
    served = [stop for stop in scenario.stops if stop.id in by_id]

    order_rng = random_stream("scan-order", seed)
    timing_rng = random_stream("scan-timing", seed)
    wrong_rng = random_stream("scan-wrong-stop", seed)
    garbage_rng = random_stream("scan-garbage", seed)
    duplicate_rng = random_stream("scan-duplicate", seed)
    outcome_rng = random_stream("scan-outcome", seed)

    lines: list[dict[str, Any]] = []
    for n, stop in enumerate(served):
        later = [p for s in served[n + 1 : n + 1 + WRONG_STOP_LOOKAHEAD] for p in by_id[s.id]]
        parcels = list(by_id[stop.id])
        order_rng.shuffle(parcels)
        events: list[_Event] = []
        # Every draw is made whatever the rate, so the rate does not move the others.
        other = outcome_rng.random() < outcome_rate
        drawn = outcome_rng.choices(list(OUTCOME_WEIGHTS), list(OUTCOME_WEIGHTS.values()))[0]
        card_first = outcome_rng.random() < CARD_FIRST_SHARE
        outcome: Outcome = drawn if other else "delivered"
        for i, parcel in enumerate(parcels):
            # Every draw is made whatever the rates, so one rate does not move the others.
            wrong = wrong_rng.random() < wrong_stop_rate
            wrong_pick = wrong_rng.choice(later) if later else None
            garbled = garbage_rng.random() < garbage_rate
            doubled = duplicate_rng.random() < duplicate_rate
            if wrong and wrong_pick is not None:
                events.append(
                    _Event(
                        "wrong_stop",
                        labels[wrong_pick].text,
                        wrong_pick,
                        owner[wrong_pick],
                        None,
                        timing_rng.uniform(*SCAN_GAP_S),
                    )
                )
            if garbled:
                label = labels[parcel]
                raw, kind = garbage_text(garbage_rng, parcel, label.style, postcode=label.postcode)
                gap = timing_rng.uniform(*SCAN_GAP_S)
                events.append(_Event("garbage", raw, None, None, kind.value, gap))
            previous = events[-1].kind if events else None
            after = {"wrong_stop": WRONG_STOP_NOTICE_S, "garbage": GARBAGE_RETRY_S}
            gap = timing_rng.uniform(*after.get(previous or "", SCAN_GAP_S))
            card_gap = outcome_rng.uniform(*CARD_GAP_S)
            card_raw = card_code(drawn)  # used only when the outcome is the drawn one
            card = _Event("reason", card_raw, parcel, stop.id, None, gap, outcome)
            if outcome != "delivered" and card_first and i == 0:
                events.append(card)
                gap = card_gap
            events.append(_Event("ok", labels[parcel].text, parcel, stop.id, None, gap, outcome))
            if doubled:
                gap = timing_rng.uniform(*DUPLICATE_GAP_S)
                events.append(_Event("duplicate", labels[parcel].text, parcel, stop.id, None, gap))
            if outcome != "delivered" and not (card_first and i == 0):
                events.append(_Event("reason", card.raw, parcel, stop.id, None, card_gap, outcome))
        walk_s = timing_rng.uniform(*WALK_S)
        for event, when in zip(
            events, _event_times(stop.arrival, stop.departure, walk_s, events), strict=True
        ):
            lines.append(
                {
                    "time": format_utc(when),
                    "raw": event.raw,
                    "source": "serial",
                    "truth": {
                        "kind": event.kind,
                        "stop_id": stop.id,
                        "parcel": event.parcel,
                        "parcel_stop_id": event.parcel_stop_id,
                        "detail": event.detail,
                        "outcome": event.outcome,
                    },
                }
            )
    return lines


def _draw_labels(
    planned: Sequence[tuple[str, list[str], str | None]], rng: random.Random
) -> dict[str, _Label]:
    """Each parcel's one physical label for the day."""
    labels: dict[str, _Label] = {}
    for _, parcels, stop_postcode in planned:
        postcode = stop_postcode or rng.choice(POSTCODES)
        for parcel in parcels:
            style = draw_label_style(rng, parcel)
            with_postcode = style is LabelStyle.GS1_128_POSTCODE or (
                style is LabelStyle.GS1_DATAMATRIX and rng.random() < DATAMATRIX_POSTCODE_SHARE
            )
            text = scanner_text(parcel, style, postcode=postcode if with_postcode else None)
            labels[parcel] = _Label(style, postcode, text)
    return labels


def _event_times(
    arrival: datetime, departure: datetime, walk_s: float, events: Sequence[_Event]
) -> list[datetime]:
    """Times of a stop's events: the walk, then the gaps, squeezed into the dwell.

    A long list on a short dwell first shortens the walk (down to 10 s), then the
    gaps in proportion; duplicates therefore stay within their 2 s. Times are whole
    milliseconds and strictly increasing.
    """
    if not events:
        return []
    available_s = (departure - arrival).total_seconds() - END_MARGIN_S
    gaps = [e.gap_s for e in events[1:]]
    span_s = sum(gaps)
    if walk_s + span_s > available_s:
        walk_s = max(min(walk_s, available_s - span_s), min(WALK_S[0], available_s / 2))
        if walk_s + span_s > available_s and span_s > 0:
            factor = max(0.0, available_s - walk_s) / span_s
            gaps = [g * factor for g in gaps]
    offsets_s = [walk_s]
    for gap in gaps:
        offsets_s.append(offsets_s[-1] + gap)
    times: list[datetime] = []
    last_ms = -1
    for offset_s in offsets_s:
        ms = max(round(offset_s * 1000), last_ms + 1)
        last_ms = ms
        times.append(arrival + timedelta(milliseconds=ms))
    return times


def write_scan_log(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    """Write ``lines`` as JSON lines, ASCII only (control and non-UTF-8 text escaped)."""
    with path.open("w", encoding="ascii", newline="\n") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=True) + "\n")


def parse_scan_time(value: str) -> datetime:
    """A scan log ``time`` (ISO 8601 with a zone) as a UTC-aware datetime."""
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    return t.astimezone(UTC)


def read_scan_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a scan log, as dicts; blank lines and ``#`` lines are skipped.

    Raises :class:`ScanLogError` naming the line for anything that is not an object
    with a zoned ``time`` and a string ``raw``. Lines are returned in file order.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScanLogError(path, f"cannot read: {err}") from err
    lines: list[dict[str, Any]] = []
    # split("\n"), not splitlines(): that would also split at U+2028 and U+0085,
    # which may stand unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            item = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ScanLogError(path, f"not valid JSON: {err.msg}", line=number) from err
        if not isinstance(item, dict) or not isinstance(item.get("raw"), str):
            raise ScanLogError(path, "expected an object with a string 'raw'", line=number)
        try:
            parse_scan_time(str(item.get("time")))
        except ValueError as err:
            raise ScanLogError(path, f"bad 'time': {err}", line=number) from err
        lines.append(item)
    return lines
