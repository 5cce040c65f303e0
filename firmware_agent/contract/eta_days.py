"""Days to learn ETAs from: what a van saw on a day, and when it really reached each stop.

An :class:`EtaDay` is the unit of the ETA model's training and evaluation: the manifest
the van drove, the fixes its receiver reported (in time order) and each stop's true
arrival. The simulator writes them (``fleet-sim eta-days``: generated days and real
trips) and ingest's training reads them (``fleet-ingest train-eta --days``), through
one directory format, defined here:

- ``manifest.json``: the manifest, as the van would have received it (:mod:`.manifest`);
- ``fixes.jsonl``: every fix, one JSON object per line, the form of ``fleet-agent gnss
  decode`` (:meth:`~.fix.Fix.to_json`), fixes without a time or position included;
- ``arrivals.json``: ``{"stop_id": "2026-11-21T08:14:03.000Z", ...}``, the true arrival
  of each stop that has one (a stop missing here is unserved but gives no label);
- ``departures.json`` (optional, same form): when the vehicle left each stop, where
  known (days written before it existed read with none; the training rows then derive
  the departure from the fixes, as the van's geofence does);
- ``day.json``: where the day comes from (free form, for people: seed, source file).

Blocking file I/O; pure otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import Manifest, ManifestError, load_manifest
from firmware_agent.contract.times import format_utc, parse_utc

MANIFEST: Final = "manifest.json"
FIXES: Final = "fixes.jsonl"
ARRIVALS: Final = "arrivals.json"
DEPARTURES: Final = "departures.json"
ABOUT: Final = "day.json"


class EtaDayError(CodecError):
    """A day directory that cannot be read: the message names the file and the fault."""


@dataclass(frozen=True, slots=True)
class EtaDay:
    """One day to learn from or evaluate on.

    ``manifest`` is the plan the van had; ``fixes`` what it saw, in time order (fixes
    without a time are skipped by whoever reads them); ``arrivals`` when each stop was
    really reached (UTC-aware); ``departures`` when it left them, where known (may be
    empty). ``about`` says where the day comes from.
    """

    name: str
    manifest: Manifest
    fixes: Sequence[Fix]
    arrivals: Mapping[str, datetime]
    about: Mapping[str, Any] = field(default_factory=dict, compare=False)
    departures: Mapping[str, datetime] = field(default_factory=dict)


def write_day(day: EtaDay, directory: Path) -> Path:
    """Write ``day`` into ``directory`` (created; its files replaced); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(
        json.dumps(dict(day.manifest.raw), separators=(",", ":")) + "\n", encoding="utf-8"
    )
    with (directory / FIXES).open("w", encoding="utf-8") as out:
        out.writelines(fix.to_json() + "\n" for fix in day.fixes)
    arrivals = {stop_id: format_utc(at) for stop_id, at in day.arrivals.items()}
    (directory / ARRIVALS).write_text(json.dumps(arrivals, indent=1) + "\n", encoding="utf-8")
    departures_path = directory / DEPARTURES
    if day.departures:
        departures = {stop_id: format_utc(at) for stop_id, at in day.departures.items()}
        departures_path.write_text(json.dumps(departures, indent=1) + "\n", encoding="utf-8")
    else:
        departures_path.unlink(missing_ok=True)
    about = {"name": day.name, **day.about}
    (directory / ABOUT).write_text(json.dumps(about, indent=1) + "\n", encoding="utf-8")
    return directory


def read_day(directory: Path) -> EtaDay:
    """The day in ``directory``; :class:`EtaDayError` naming the file and what is wrong."""
    try:
        manifest = load_manifest(directory / MANIFEST)
    except ManifestError as err:
        raise EtaDayError(f"{directory / MANIFEST}: {err}") from err
    fixes = []
    path = directory / FIXES
    try:
        with path.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, start=1):
                if line.strip():
                    fixes.append(Fix.from_json(_object(json.loads(line), f"line {n}")))
    except EtaDayError as err:
        raise EtaDayError(f"{path}: {err}") from None
    except (OSError, ValueError) as err:  # CodecError and JSONDecodeError are ValueErrors
        raise EtaDayError(f"{path}: {err}") from err
    arrivals = _times(directory / ARRIVALS, required=True)
    departures = _times(directory / DEPARTURES, required=False)
    try:
        about = json.loads((directory / ABOUT).read_text("utf-8"))
    except (OSError, ValueError):
        about = {}  # for people only: a day without it is still a day
    about = about if isinstance(about, dict) else {}
    name = str(about.get("name", directory.name))
    return EtaDay(name, manifest, fixes, arrivals, about, departures)


def _times(path: Path, *, required: bool) -> dict[str, datetime]:
    """``{"stop_id": ISO 8601 UTC}`` from ``path``; an absent optional file is empty."""
    if not required and not path.exists():
        return {}
    try:
        times = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise EtaDayError(f"{path}: {err}") from err
    out: dict[str, datetime] = {}
    for stop_id, text in _object(times, str(path)).items():
        at = parse_utc(text) if isinstance(text, str) else None
        if at is None:
            raise EtaDayError(f"{path}: {stop_id}: {text!r:.40} is no ISO 8601 UTC time")
        out[stop_id] = at
    return out


def day_directories(paths: Iterable[Path]) -> list[Path]:
    """The day directories in ``paths``: each path that holds a ``manifest.json``, else
    its subdirectories that do, in name order. :class:`EtaDayError` for a path that
    holds neither (a typo must not train on nothing)."""
    found: list[Path] = []
    for path in paths:
        if (path / MANIFEST).is_file():
            found.append(path)
            continue
        days = (
            sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()) if path.is_dir() else []
        )
        if not days:
            raise EtaDayError(f"{path}: no day here (a directory with {MANIFEST}, or of them)")
        found += days
    return found


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EtaDayError(f"{where}: not a JSON object")
    return value
