"""The fuzz campaign, short (issue 13's acceptance): every parser and payload decoder
the van and ingest expose, under hypothesis.

``tests/fuzzing.py`` defines the targets (what runs, what each may raise: anything else
is a crash), the real samples they start from and the structure-aware generators; the
long campaign is ``bench/fuzz.py`` (docs/fuzzing.md). Here hypothesis drives the same
mutator and generators (``st.randoms``: its choices are hypothesis's, so a failure is
reproducible and shrinks), a few dozen inputs per target, and draws manifests and
configs from their geometry with its own strategies as well. An input that runs longer
than :data:`GUARD_S` fails as a hang instead of blocking the suite (the 1 s bound is the
long campaign's, on an idle machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_agent.faults import FaultCounter
from firmware_agent.scan.hid_reader import KeyDecoder
from firmware_agent.scan.log import read_scan_log
from tests import fuzzing
from tests.corpus import CORPUS, require

GUARD_S = 10.0
REPO = Path(__file__).resolve().parents[1]
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# Examples per target and test: the geofence-building targets cost ~50 times the others.
_EXAMPLES = {"manifest": 25, "config": 25, "model": 40, "model_file": 40, "scan_hid": 40}


def check(name: str, data: bytes) -> None:
    """Fail if ``data`` crashes target ``name`` or runs longer than :data:`GUARD_S`."""
    target = fuzzing.target(name)
    try:
        with fuzzing.deadline(GUARD_S):
            crash = fuzzing.crash_of(target, data)
    except fuzzing.Hang:
        pytest.fail(f"{name}: still running after {GUARD_S:g} s on {data[:300]!r}")
    if crash is not None:
        pytest.fail(f"{crash.line()}\ninput: {data[:300]!r}\n{crash.trace}")


def examples(name: str) -> int:
    return _EXAMPLES.get(name, 80)


@pytest.fixture
def seeds(request: pytest.FixtureRequest) -> list[bytes]:
    """The target's real samples (the corpus ones required where it has some)."""
    name: str = request.node.callspec.params["name"]
    if fuzzing.target(name).corpus:
        require(CORPUS)
    return fuzzing.target(name).seeds()


@pytest.mark.parametrize("name", fuzzing.TARGET_NAMES)
def test_mutated_real_samples_are_refused_cleanly(name: str, seeds: list[bytes]) -> None:
    @settings(max_examples=examples(name), suppress_health_check=_SUPPRESS)
    @given(pick=st.integers(min_value=0), rnd=st.randoms(use_true_random=False))
    def mutated(pick: int, rnd: Any) -> None:
        check(name, fuzzing.mutate(seeds[pick % len(seeds)], rnd, seeds))

    mutated()


@pytest.mark.parametrize("name", fuzzing.GENERATED)
def test_generated_inputs_are_refused_cleanly(name: str, seeds: list[bytes]) -> None:
    generate = fuzzing.target(name).generate
    assert generate is not None

    @settings(max_examples=examples(name), suppress_health_check=_SUPPRESS)
    @given(rnd=st.randoms(use_true_random=False))
    def generated(rnd: Any) -> None:
        check(name, generate(rnd))

    generated()


# --- Manifests and configs from their geometry, with hypothesis's own strategies --------

latitudes = st.floats(-90, 90) | st.sampled_from([90.0, -90.0, 89.99999, 0.0])
longitudes = st.floats(-180, 180) | st.sampled_from([180.0, -180.0, 179.99999, -179.99999])
# Offsets from the first stop in degrees: metres to continents.
offsets = st.sampled_from([0.0, 1e-9, 1e-5, 1e-3, 0.05, 1.0, 4.4, 4.6, 90.0, 360.0]) | st.floats(
    -5, 5
)


def _clamp(lat: float, lon: float) -> list[float]:
    return [max(-90.0, min(90.0, lat)), (lon + 180.0) % 360.0 - 180.0]


@st.composite
def manifest_docs(draw: st.DrawFn) -> dict[str, Any]:
    lat0, lon0 = draw(latitudes), draw(longitudes)
    stops = []
    for i in range(draw(st.integers(0, 6))):
        lat, lon = _clamp(lat0 + draw(offsets) * (i > 0), lon0 + draw(offsets) * (i > 0))
        stop: dict[str, Any] = {
            "id": f"S{i}",
            "lat": lat,
            "lon": lon,
            "type": "house",
            "parcels": [],
            # In range, at its ends, past them, and integers beyond any float.
            "radius_m": draw(
                st.floats(1, 5000)
                | st.sampled_from([1, 5000, 0.5, 5001, 1e300])
                | st.integers(-(2**1100), 2**1100)
            ),
        }
        if draw(st.booleans()):
            n = draw(st.integers(3, 40))
            span = draw(st.floats(1e-7, 0.05))
            # A scatter of vertices around the stop: convex or not, sometimes degenerate.
            jitter = [((k * 7919) % 13 - 6) / 6 for k in range(n + 1)]
            stop["polygon"] = [
                _clamp(lat + span * jitter[k], lon + span * jitter[k + 1]) for k in range(n)
            ]
        stops.append(stop)
    doc: dict[str, Any] = {
        "route_id": "R",
        "device_id": fuzzing.DEVICE,
        "date": "2026-11-21",
        "stops": stops,
    }
    if draw(st.booleans()):
        n = draw(st.integers(2, 8))
        route = [_clamp(lat0 + draw(offsets), lon0 + draw(offsets)) for _ in range(n)]
        doc["route"] = {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in route]}
    return doc


@settings(max_examples=40, suppress_health_check=_SUPPRESS)
@given(doc=manifest_docs())
def test_manifests_drawn_from_their_geometry_build_or_are_refused(doc: dict[str, Any]) -> None:
    check("manifest", json.dumps(doc).encode())


def _geofence_settings() -> st.SearchStrategy[dict[str, Any]]:
    from firmware_agent.geofence.config import LIMITS  # noqa: PLC0415

    values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
    near: dict[str, st.SearchStrategy[Any]] = {}
    for name, (low, high) in LIMITS.items():
        lo = low if low is not None else 0.0
        inside = st.floats(lo, high) if name != "confirm_min_fixes" else st.integers(1, int(high))
        near[name] = inside | st.sampled_from([lo, high]) | values
    return st.fixed_dictionaries({}, optional=near)


@settings(max_examples=40, suppress_health_check=_SUPPRESS)
@given(geofence=_geofence_settings(), revision=st.integers(-1, 2**60))
def test_configs_drawn_from_their_settings_build_or_are_refused(
    geofence: dict[str, Any], revision: int
) -> None:
    doc = {"v": 1, "revision": revision, "geofence": geofence}
    check("config", json.dumps(doc, allow_nan=True).encode())


# --- What the campaign found, kept -------------------------------------------------------


def test_found_a_stuck_alt_key_no_longer_raises() -> None:
    # Alt held over 5,000 keypad digits: int() of the digits raised ValueError (Python
    # refuses to convert more than 4,300) out of the HID reader.
    from evdev import ecodes  # noqa: PLC0415

    decoder = KeyDecoder()
    decoder.feed(ecodes.KEY_LEFTALT, 1)
    for _ in range(5000):
        decoder.feed(ecodes.KEY_KP9, 1)
        decoder.feed(ecodes.KEY_KP9, 0)
    decoder.feed(ecodes.KEY_LEFTALT, 0)
    assert decoder.faults.counts == {"hid_bad_alt_code": 1}
    decoder.feed(ecodes.KEY_LEFTALT, 1)
    for key in (ecodes.KEY_KP0, ecodes.KEY_KP0, ecodes.KEY_KP2, ecodes.KEY_KP9):
        decoder.feed(key, 1)
        decoder.feed(key, 0)
    decoder.feed(ecodes.KEY_LEFTALT, 0)
    decoder.feed(ecodes.KEY_A, 1)
    assert decoder.feed(ecodes.KEY_ENTER, 1) == "\x1da"  # Alt+0029 still types GS


def test_found_a_scan_time_before_year_1_utc_is_a_counted_fault() -> None:
    # 0001-01-01T00:00:00+01:00 is a valid ISO time whose UTC is before year 1:
    # astimezone raised OverflowError out of read_scan_log.
    faults = FaultCounter()
    lines = [
        '{"time": "0001-01-01T00:00:00+01:00", "raw": "x"}',
        '{"time": "9999-12-31T23:59:59-01:00", "raw": "x"}',
        '{"time": "2026-11-21T09:14:03.250+01:00", "raw": "x"}',
    ]
    scans = list(read_scan_log(lines, faults))
    assert faults.counts == {"scan_log_bad_time": 2}
    assert [s.time.isoformat() for s in scans] == ["2026-11-21T08:14:03.250000+00:00"]


def test_found_an_integer_beyond_any_float_is_refused_not_raised() -> None:
    # 10^400 is valid JSON, and the wire reader keeps it an integer: math.isfinite
    # raised OverflowError on it out of the record decoders (an event, a POD's claims,
    # a telemetry point's JSON, a fix's JSON), and out of ingest's check_message, which
    # must never raise.
    from cloud_ingest.verify import Rejected, check_message  # noqa: PLC0415
    from firmware_agent.contract.envelope import decode_envelope  # noqa: PLC0415
    from firmware_agent.contract.errors import CodecError  # noqa: PLC0415
    from firmware_agent.contract.fix import Fix  # noqa: PLC0415
    from firmware_agent.contract.records import TelemetryPoint  # noqa: PLC0415

    huge = 10**400
    stream, payload = next((s, p) for s, p in fuzzing.envelope_seeds() if b"dwell_s" in p)
    doc = json.loads(payload)
    doc["record"]["dwell_s"] = huge
    bad = json.dumps(doc).encode()
    with pytest.raises(CodecError, match="dwell_s is not finite"):
        decode_envelope(bad, stream=stream).typed()
    topic = f"fleet/v1/{fuzzing.DEVICE}/{stream}"
    checked = check_message(topic, bad, received_at=fuzzing.T0, device=fuzzing._ingest_device())
    assert isinstance(checked, Rejected)
    assert checked.reason == "schema"
    point = {"time": "2026-11-21T09:00:00.000Z", "lat": 48.1, "lon": huge}
    with pytest.raises(CodecError, match="lon must be a finite number"):
        TelemetryPoint.from_json(point)
    with pytest.raises(CodecError, match="speed_mps must be a finite number"):
        Fix.from_json({"time": None, "tod_s": 1.0, "speed_mps": -huge})
    check(
        "jws",
        fuzzing._signed(
            fuzzing.DEVICE_KEY,
            b'{"alg":"EdDSA","typ":"pod+jwt"}',
            b'{"distance_m":' + str(huge).encode() + b"}",
        ).encode(),
    )


def test_found_the_overflowing_zda_is_refused_cleanly() -> None:
    # Finding 12, the campaign's first find (683 in 100,000 inputs before the fix).
    check("gnss", b"$GPZDA,120000.00,01,01,99999999999999999999,00,00*65\r\n")


@pytest.mark.slow
def test_the_long_campaign_command_runs(tmp_path: Path) -> None:
    """``bench/fuzz.py`` as documented, on a few inputs: table, figures, exit status."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "fuzz.py"), "--inputs", "120",
         "--targets", "ack,jws,telemetry", "--save", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln.strip()}
    for name in ("ack", "jws", "telemetry"):
        assert rows[name][1] == "40", proc.stdout  # inputs
        assert rows[name][2] == "0", proc.stdout  # crashes
    assert rows["total"][1] == "120"
