"""``fleet-agent replay`` end to end: a simulated day (NMEA, manifest, scan log) through the
installed console scripts, judged against the simulator's ground truth; then the PODs
checked with ``fleet-agent pod verify``, before and after tampering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.keys import public_key_pem

BIN = Path(sys.executable).parent


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=check, timeout=240
    )


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("replay")
    sim = shutil.which("fleet-sim", path=str(BIN))
    agent = shutil.which("fleet-agent", path=str(BIN))
    assert sim is not None
    assert agent is not None
    run(sim, "scenario", "--seed", "11", "--stops", "14", "--rate-hz", "1", "--talker", "GN",
        "--outage", "900:30", "--wrong-stop-rate", "0.15", "--garbage-rate", "0.1",
        "--duplicate-rate", "0.2", "--out", tmp / "day")  # fmt: skip
    out = tmp / "out.jsonl"
    proc = run(agent, "replay", "--nmea", tmp / "day/nmea.log",
               "--manifest", tmp / "day/manifest.json", "--scans", tmp / "day/scans.jsonl",
               "--out", out, "--key", tmp / "keys/device.key",
               "--pubkey-out", tmp / "device.pub.pem")  # fmt: skip
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    scans = [json.loads(line) for line in (tmp / "day/scans.jsonl").read_text().splitlines()]
    stops = json.loads((tmp / "day/stops.json").read_text())
    return {
        "tmp": tmp,
        "agent": agent,
        "out": out,
        "stderr": proc.stderr,
        "messages": messages,
        "scans": scans,
        "stops": stops["stops"] if isinstance(stops, dict) else stops,
    }


def test_every_message_has_type_and_utc_time_in_order(day: dict[str, Any]) -> None:
    kinds = Counter(m["type"] for m in day["messages"])
    assert kinds["telemetry"] > 50
    for m in day["messages"]:
        assert m["time"].endswith("Z")
        datetime.fromisoformat(m["time"])
        if m["type"] in {"arrival", "departure", "window", "pod"}:
            assert m["stop_id"]
    assert "replay:" in day["stderr"]
    assert "fixes/s" in day["stderr"]


def test_each_true_stop_arrives_and_departs_once_close_to_the_truth(
    day: dict[str, Any],
) -> None:
    arrivals = [m for m in day["messages"] if m["type"] == "arrival"]
    departures = [m for m in day["messages"] if m["type"] == "departure"]
    truth = {s["id"]: s for s in day["stops"]}
    assert sorted(a["stop_id"] for a in arrivals) == sorted(truth)
    assert sorted(d["stop_id"] for d in departures) == sorted(truth)
    for a in arrivals:
        true_t = datetime.fromisoformat(truth[a["stop_id"]]["arrival"])
        error_s = (datetime.fromisoformat(a["time"]) - true_t).total_seconds()
        assert abs(error_s) < 60, (a, true_t)  # accuracy is bench/arrivals.py's job


def test_scans_lead_to_exactly_the_expected_pods_and_reports(day: dict[str, Any]) -> None:
    pods = [m for m in day["messages"] if m["type"] == "pod"]
    rejected = [m for m in day["messages"] if m["type"] == "scan_rejected"]
    truth = Counter(s["truth"]["kind"] for s in day["scans"])
    assert truth["wrong_stop"] >= 1
    assert truth["garbage"] >= 1
    assert truth["duplicate"] >= 1
    # One POD per parcel, at its own stop, every one of them inside the fence.
    ok = {(s["truth"]["parcel"], s["truth"]["stop_id"]) for s in day["scans"]
          if s["truth"]["kind"] == "ok"}  # fmt: skip
    assert {(p["parcel"], p["stop_id"]) for p in pods} == ok
    assert len(pods) == len(ok)
    assert Counter(p["verdict"] for p in pods)["inside"] >= len(pods) - 2
    assert [p["seq"] for p in pods] == list(range(1, len(pods) + 1))
    # Wrong-stop scans are reported as such, never delivered (a second scan of the same
    # label within the 10 s de-duplication window counts once); garbage is reported.
    reasons = Counter(r["reason"] for r in rejected)
    last_seen: dict[str, datetime] = {}
    expected_wrong = 0
    for s in day["scans"]:
        t = datetime.fromisoformat(s["time"])
        parcel = s["truth"]["parcel"]
        repeat = parcel in last_seen and (t - last_seen[parcel]).total_seconds() <= 10
        if parcel is not None:
            last_seen[parcel] = t
        expected_wrong += s["truth"]["kind"] == "wrong_stop" and not repeat
    assert reasons["wrong_stop"] == expected_wrong
    assert reasons["unreadable"] + reasons["not_on_manifest"] == truth["garbage"]


def test_pods_verify_and_tampering_is_named(day: dict[str, Any]) -> None:
    agent, tmp, out = day["agent"], day["tmp"], day["out"]
    pub = tmp / "device.pub.pem"
    ok = run(agent, "pod", "verify", out, "--pubkey", pub, "--from-genesis")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = out.read_text().splitlines()
    pod_lines = [i for i, line in enumerate(lines) if '"type":"pod"' in line]
    # Delete the third POD: the fourth is named as the one after a missing record.
    deleted = tmp / "deleted.jsonl"
    deleted.write_text("\n".join(lines[: pod_lines[2]] + lines[pod_lines[2] + 1 :]) + "\n")
    bad = run(agent, "pod", "verify", deleted, "--pubkey", pub, check=False)
    assert bad.returncode == 1
    assert f"line {pod_lines[3]} (seq 4): missing" in bad.stdout
    # Checked against another device's key, the very first record fails its signature.
    other = tmp / "other.pub.pem"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    forged = run(agent, "pod", "verify", out, "--pubkey", other, "--json", check=False)
    assert forged.returncode == 1
    report = json.loads(forged.stdout)
    assert report["valid"] is False
    assert report["problems"][0]["kind"] == "bad_signature"
    assert report["problems"][0]["seq"] == 1


def test_garbage_inputs_are_refused_with_a_clear_error(day: dict[str, Any], tmp_path: Path) -> None:
    agent = day["agent"]
    manifest = tmp_path / "m.json"
    manifest.write_text('{"route_id": "R", "device_id": "v", "date": "2026-11-21", "stops": [{}]}')
    proc = run(agent, "replay", "--nmea", "/dev/null", "--manifest", manifest, check=False)
    assert proc.returncode == 2
    assert "stops[0].id" in proc.stderr
    # A scan log full of junk lines and an NMEA log of noise: counted, no crash.
    scans = tmp_path / "scans.jsonl"
    scans.write_text('not json\n{"time": "yesterday", "raw": "x"}\n{"raw": 5}\n')
    nmea = tmp_path / "noise.log"
    nmea.write_bytes(bytes(range(256)) * 50)
    proc = run(agent, "replay", "--nmea", nmea, "--manifest",
               day["tmp"] / "day/manifest.json", "--scans", scans)  # fmt: skip
    assert proc.stdout == ""
    assert "scan_log_bad_json" in proc.stderr


def test_eta_events_come_by_default_and_the_flags_choose_the_model_or_drop_them(
    day: dict[str, Any], tmp_path: Path
) -> None:
    agent, tmp = day["agent"], day["tmp"]
    inputs = ("--nmea", tmp / "day/nmea.log", "--manifest", tmp / "day/manifest.json",
              "--scans", tmp / "day/scans.jsonl", "--key", tmp / "keys/device.key")  # fmt: skip
    etas = [m for m in day["messages"] if m["type"] == "eta"]
    # The shipped model (or the baseline where no interpreter runs): a first ETA for
    # every stop, and which model said on stderr.
    assert {m["stop_id"] for m in etas} == {s["id"] for s in json.loads(
        (tmp / "day/manifest.json").read_text())["stops"]}  # fmt: skip
    assert "replay: ETA by " in day["stderr"]

    def others(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in messages if m["type"] not in {"eta", "late_risk", "stop_passed"}]

    out = tmp_path / "no-eta.jsonl"
    proc = run(agent, "replay", *inputs, "--out", out, "--no-eta")
    without = [json.loads(line) for line in out.read_text().splitlines()]
    assert others(without) == without == others(day["messages"])
    assert "replay: ETA off" in proc.stderr

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    out = tmp_path / "bad-model.jsonl"
    proc = run(agent, "replay", *inputs, "--out", out, "--eta-model", bad)
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"replay: ETA by the baseline (model {bad} refused" in proc.stderr
    assert {m["model"] for m in messages if m["type"] in {"eta", "late_risk", "stop_passed"}} == {
        "baseline"
    }
    assert others(messages) == others(day["messages"])

    proc = run(agent, "replay", *inputs, "--no-eta", "--eta-model", bad, check=False)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr
