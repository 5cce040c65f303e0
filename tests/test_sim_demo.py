"""The README's main command: ``fleet-sim demo`` runs a whole van day end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

FLEET_SIM = Path(sys.executable).parent / "fleet-sim"


@pytest.mark.slow
def test_demo_stores_every_record_of_the_day_exactly_once(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(FLEET_SIM), "demo", "--speed", "0", "--seed", "7", "--stops", "6",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "OK: every record stored exactly once" in out
    rows = dict(re.findall(r"^  (telemetry|events|pod) +(\d+ +\d+ +\d+)$", out, re.MULTILINE))
    assert set(rows) == {"telemetry", "events", "pod"}
    for stream, figures in rows.items():
        committed, stored, acked = (int(v) for v in figures.split())
        assert committed == stored == acked > 0, (stream, figures)
    assert re.search(r"arrivals: 6 of 6 stops detected", out)
    assert "quarantined messages: 0" in out
    # First-attempt success as ingest's stream has it, equal to the simulator's truth.
    found = re.search(
        r"first-attempt success: (\d+) of (\d+) parcels \(([\d.]+) %\); "
        r"simulator's truth: (\d+) of (\d+) \(([\d.]+) %\)",
        out,
    )
    assert found is not None, out
    assert found.group(1, 2, 3) == found.group(4, 5, 6)
    # The backend's stream was printed as ingest stored it: arrivals and verified PODs.
    assert len(re.findall(r" arrival +S00\d", out)) == 6
    assert "signature verified" in out
    # ETAs from the shipped model reached the backend beside the naive ones.
    assert re.search(r" eta +S00\d +at \d\d:\d\d:\d\d \(naive \d\d:\d\d:\d\d\), first", out)
    assert re.search(r"ETAs: eta-\S+ on ai-edge-litert: [1-9]\d* eta and \d+ late_risk", out)
    assert (tmp_path / "ingest.db").exists()
