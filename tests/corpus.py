"""Locating and reading ../shared/corpus (real receiver logs, trips, barcodes).

The corpus is never copied into the project. Where it is absent (someone's own
clone) the tests that need it skip with a clear reason; CI always has it, and
``.ci/run`` refuses to run without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
GPSD_DIR = CORPUS / "nmea" / "gpsd"
PYNMEA2_SENTENCES = CORPUS / "nmea" / "pynmea2" / "pynmea2-sentences.txt"
TRAJECTORIES = CORPUS / "trajectories"


def require(path: Path) -> Path:
    """``path`` inside the corpus, or skip the calling test with the reason.

    Under ``FLEET_REQUIRE_CORPUS=1`` (set by .ci/run, since CI always has the corpus) a
    missing path fails the test instead: CI must never pass by skipping.
    """
    if not path.exists():
        reason = (
            f"real-world corpus not found at {path} (expected ../shared/corpus beside the repo)"
        )
        if os.environ.get("FLEET_REQUIRE_CORPUS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def gpsd_logs() -> list[Path]:
    """Every gpsd capture (``*.log``); empty when the corpus is absent."""
    return sorted(GPSD_DIR.glob("*.log")) if GPSD_DIR.is_dir() else []


def read_gpsd_log(path: Path) -> bytes:
    """A gpsd test log as gpsfake would send it: delay cookies removed.

    gpsd's logs may declare ``# Delay-Cookie: X`` and then sprinkle X inside sentences
    to force write boundaries in its packetizer tests; gpsfake strips them.
    """
    raw = path.read_bytes()
    cookie = None
    for line in raw.splitlines():
        if line.startswith(b"# Delay-Cookie:"):
            cookie = line.split(b":", 1)[1].split()[0]
    if cookie is None:
        return raw
    lines = (ln if ln.startswith(b"#") else ln.replace(cookie, b"") for ln in raw.splitlines())
    return b"\n".join(lines) + b"\n"


def gpsd_chk_events(chk: Path) -> Iterator[str | dict[str, Any]]:
    """A ``.chk`` file in order: sentence bodies (str, after ``$``) and TPVs with a position.

    A ``.chk`` echoes each input sentence, followed by the JSON gpsd emitted for it.
    """
    with chk.open("r", encoding="ascii", errors="replace") as f:
        for raw in f:
            text = raw.rstrip("\r\n")
            if text.startswith("$"):
                yield text[1:]
            elif text.startswith('{"class":"TPV"'):
                tpv = json.loads(text)
                if "lat" in tpv and "lon" in tpv:
                    yield tpv
