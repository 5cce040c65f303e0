"""The fuzz campaign of issue 13: every parser and payload decoder the van and ingest expose.

Shared by ``tests/test_fuzz.py`` (short, driven by hypothesis, in CI) and ``bench/fuzz.py``
(the long campaign: a seeded mutator and generators, a million inputs and more). Each
:class:`Target` is one entry point as the product calls it, with its documented refusal:

==============  ====================================================  ====================
target          what runs                                             may raise
==============  ====================================================  ====================
gnss            ``GnssDecoder.feed`` in three pieces, ``flush``       nothing (counts it)
scan_code       ``parse_scan``, ``canonical_code``, the van's          ScanParseError
                ``VanPipeline.on_scan``                                (the parsers only)
scan_serial     the serial scanner's ``LineFramer``, each line         ScanParseError
                through ``parse_scan``
scan_hid        the HID scanner's ``KeyDecoder`` (3 bytes a key        ScanParseError
                event), each code through ``parse_scan``
scan_log        ``read_scan_log`` (replay's SCANS file)               nothing (counts it)
manifest        ``loads_manifest``, then the van's pipeline built on   ContractError,
                it (geofence indexes) and fed a fix at its stops and   AgentError
                route
config          ``parse_config``, ``admit``, ``apply_config``, then    ContractError,
                the pipeline built on the settings and fed fixes       AgentError
model           ``verify_model`` (the fleet key), ``read_unverified``  ModelUpdateError
model_file      ``read_model``, ``read_metadata`` (the .tflite         ModelError
                flatbuffer)
telemetry       ``decode_batch``, ``verify_batch``, the JSON forms     CodecError
envelope        ``decode_envelope`` (each stream), ``typed()``,        CodecError
                the JSON Schema
event_batch     ``decode_events``, its header's schema, each record    CodecError
                as its envelope (``typed()``; a bad one is skipped)
ack             ``decode_ack`` (the van's downlink)                   CodecError
status          ``decode_status``                                     CodecError
jws             ``verify_compact`` (POD typ, the device key),          JwsError, CodecError
                ``read_header``, ``peek_claims``, ``PodClaims``
ingest          ``cloud_ingest.verify.check_message`` (topic line,     nothing (a Rejected)
                then payload): every uplink kind
==============  ====================================================  ====================

A *crash* is any exception other than the target's documented refusal (the package's
exception tree: the contract is "refuse with a clear error"), and for the GNSS decoder,
which must never raise, also a sentence that raised inside it (its ``internal_error``
fault: the decoder survives it, but it is a bug). A *hang* is an input that takes more
than :data:`HANG_S`; :func:`deadline` interrupts Python code that runs much longer.

Inputs are bytes. Seeds are real samples: the corpus (``../shared/corpus``: gpsd's
receiver captures, pynmea2's sentences, biip's GS1 codes) when present, and a simulated
van day run through the van's own pipeline (its manifest, NMEA, scans, telemetry
batches, events, signed PODs, status and acks), plus the shipped ETA model signed with a
test fleet key. :func:`mutate` changes them (bytes, numbers, JSON trees, NMEA fields with
the checksum made valid again); each target with a ``generate`` also builds inputs from
their structure (for manifests and configs: the geometry, not only the bytes).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import json
import math
import random
import re
import signal
import string
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_agent.contract.errors import ContractError
from firmware_agent.contract.jws import b64url_decode, b64url_encode
from firmware_agent.errors import AgentError

REPO: Final = Path(__file__).resolve().parents[1]
CORPUS: Final = REPO.parent / "shared" / "corpus"
DEVICE: Final = "van-0001"
HANG_S: Final = 1.0
MAX_INPUT_BYTES: Final = 300 * 1024
T0: Final = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)

# Keys of the campaign: fixed, so that a reproducer is the same input in every run.
DEVICE_KEY: Final = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz device").digest())
FLEET_KEY: Final = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz fleet").digest())


class Hang(BaseException):
    """Raised into the input's code by :func:`deadline`: a BaseException, so that no
    ``except Exception`` in the code under test takes it for its own."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the block runs longer than ``seconds``
    (SIGALRM: Python code is interrupted; a single C call only once it returns)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True, slots=True)
class Crash:
    """What an input did that it must not: the exception and where it was raised."""

    target: str
    kind: str  # the exception's type
    message: str
    where: str  # innermost project frame, file:line
    trace: str

    @property
    def signature(self) -> tuple[str, str, str]:
        return (self.target, self.kind, self.where)

    def line(self) -> str:
        return f"{self.target}: {self.kind} at {self.where}: {self.message[:160]}"


class SurvivedBugError(Exception):
    """A target saw its code survive a bug (the GNSS decoder's ``internal_error``)."""


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    generate: Callable[[random.Random], bytes] | None = None
    # Relative share of a campaign's inputs (the costly targets get fewer).
    weight: float = 1.0
    corpus: bool = False  # its seeds include the real-world corpus
    generated: float = 0.5  # share of inputs built by ``generate`` rather than mutated


def crash_of(target: Target, data: bytes) -> Crash | None:
    """Run ``data`` through ``target``: None, or the :class:`Crash` it caused.
    :class:`Hang` (from an enclosing :func:`deadline`) propagates."""
    try:
        target.run(data)
    except target.allowed:
        return None
    except Exception as err:  # the crash being looked for
        return _crash(target.name, err)
    return None


def _crash(name: str, err: BaseException) -> Crash:
    frames = traceback.extract_tb(err.__traceback__)
    # The innermost frame of the product (not of this harness, not of a library).
    ours = [f for f in frames if "/tests/" not in f.filename and "-packages/" not in f.filename]
    where = "?"
    if ours or frames:
        frame = (ours or frames)[-1]
        path = Path(frame.filename)
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        where = f"{shown}:{frame.lineno}"
    return Crash(
        target=name,
        kind=type(err).__name__,
        message=str(err)[:500],
        where=where,
        trace="".join(traceback.format_exception(err))[-4000:],
    )


# --- Interesting values -----------------------------------------------------------------

NUMBERS: Final = (
    "0", "-0", "1", "-1", "00", "007", "59", "60", "61", "99", "255", "256", "65535",
    "65536", "2147483647", "2147483648", "4294967296", "9007199254740993",
    "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "99999999999999999999", "1" + "0" * 400, "1e308", "1e309", "-1e309", "1e-400",
    "5e-324", "NaN", "nan", "inf", "Infinity", "-Infinity", "0.1", "1.5", "1e2", ".",
    "..", "-", "+1", "0x10", "1_000", " 1", "1 ", "\u0661\u0662", "\u00bd", "",
)  # fmt: skip
TOKENS: Final = (
    b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"*", b"$", b"\r", b"\n", b"\r\n",
    b"\x00", b"\x1d", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\u0000", b"\\ud800", b"null",
    b"true", b"NaN", b"-Infinity", b"1e999", b"(", b")", b"]C1", b"]d2", b"]Q3", b"]e0",
    b"https://id.gs1.org/01/", b".", b"=", b"\xef\xbb\xbf", b"\x1f\x8b",
)  # fmt: skip


def _interesting_json(rng: random.Random) -> Any:
    return rng.choice(
        [
            0, -1, 1, 2, 2**31, 2**32, 2**53 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30,
            10**400, -(2**63), 0.5, -0.0, 1e-300, 5e-324, 1e308, -1e308, math.nan, math.inf,
            -math.inf, True, False, None, "", " ", "x" * rng.choice([1, 100, 300, 5000]),
            "\u0000", "\ud800", "\u202e", "2026-11-21T09:14:03.250Z", "2026-11-21T09:14:03Z",
            "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00Z", "2026-11-21", "van-0001",
            "van-9999", "S001", "106141412345678908", [], {}, [[[[[]]]]], [0] * 100,
            {"a": {"b": {"c": None}}}, rng.choice(NUMBERS),
        ]
    )  # fmt: skip


# --- Mutation ---------------------------------------------------------------------------


def _flip(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _set_byte(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    i = rng.randrange(len(data))
    value = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256), ord(rng.choice(",.*$0-9"))))
    return data[:i] + bytes([value]) + data[i + 1 :]


def _insert(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    i = rng.randint(0, len(data))
    if rng.random() < 0.5:
        piece = rng.choice(TOKENS)
    else:
        piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return data[:i] + piece + data[i:]


def _delete(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.choice((1, 1, 2, 8, 64, len(data))))
    return data[:i] + data[j:]


def _duplicate(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 256))
    times = rng.choice((1, 2, 10, 1000))
    return (data[:j] + data[i:j] * times + data[j:])[:MAX_INPUT_BYTES]


def _splice(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    other = rng.choice(pool) if pool else data
    i = rng.randint(0, len(data))
    j = rng.randint(0, len(other))
    return (data[:i] + other[j:])[:MAX_INPUT_BYTES]


def _truncate(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    return data[: rng.randint(0, len(data))]


_NUMBER_RE = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _number(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    matches = list(_NUMBER_RE.finditer(data[:20_000]))
    if not matches:
        return _insert(data, rng, pool)
    m = rng.choice(matches)
    value = rng.choice(NUMBERS).encode("utf-8")
    return data[: m.start()] + value + data[m.end() :]


def _json_tree(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    """Change one node of a JSON document: a value, a key, a list's length, a type."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return _number(data, rng, pool)
    nodes: list[tuple[Any, Any]] = []  # (container, key or index)
    stack = [doc]
    while stack and len(nodes) < 5000:
        node = stack.pop()
        if isinstance(node, dict):
            nodes += [(node, k) for k in node]
            stack += list(node.values())
        elif isinstance(node, list):
            nodes += [(node, i) for i in range(len(node))]
            stack += node
    if not nodes:
        doc = _interesting_json(rng) if rng.random() < 0.5 else [doc]
    else:
        for _ in range(rng.choice((1, 1, 2, 3))):
            container, key = rng.choice(nodes)
            with contextlib.suppress(LookupError):  # an earlier change removed it
                _change(container, key, rng)
    return _dumps(doc, rng)


def _change(container: Any, key: Any, rng: random.Random) -> None:
    value = container[key]
    op = rng.randrange(7)
    if op == 0 and isinstance(container, dict):
        del container[key]
    elif op == 1 and isinstance(container, list):
        container[key:key] = [value] * rng.choice((1, 10, 1000))
    elif op == 2 and isinstance(container, dict):
        container[
            rng.choice(("extra", "", "\u0000", key + "x" if isinstance(key, str) else "k"))
        ] = _interesting_json(rng)
    elif op == 3 and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            container[key] = value * rng.choice((-1, 0.5, 2, 1e3, 1e9, 1e-9)) + rng.choice(
                (0, 1e-7)
            )
        except OverflowError:  # an integer beyond any float
            container[key] = -value
    elif op == 4:
        container[key] = str(value) if not isinstance(value, str) else [value]
    else:
        container[key] = _interesting_json(rng)


def _dumps(doc: Any, rng: random.Random) -> bytes:
    try:
        text = json.dumps(doc, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    except (ValueError, RecursionError):
        return b"[]"
    return text.encode("utf-8", "surrogatepass")[:MAX_INPUT_BYTES]


def nmea_body_checksum(body: bytes) -> bytes:
    x = 0
    for b in body:
        x ^= b
    return f"{x:02X}".encode("ascii")


_SENTENCE_RE = re.compile(rb"\$([^$*\r\n]*)\*[0-9A-Fa-f]{2}")


def _nmea_field(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    """Change one field of one sentence and make its checksum valid again, so that the
    change reaches the field conversions instead of stopping at the checksum."""
    matches = list(_SENTENCE_RE.finditer(data[:50_000]))
    if not matches:
        return _number(data, rng, pool)
    m = rng.choice(matches)
    fields = m[1].split(b",")
    i = rng.randrange(len(fields))
    op = rng.randrange(5)
    if op == 0:
        fields[i] = rng.choice(NUMBERS).encode("utf-8")
    elif op == 1:
        del fields[i]
    elif op == 2:
        fields.insert(i, rng.choice((b"", b"A", b"V", b"N", b"S", b"E", b"W", b"9" * 30)))
    elif op == 3:
        fields[i] = fields[i][: rng.randint(0, len(fields[i]))]
    else:
        fields = fields[: i + 1]
    body = b",".join(fields)
    return data[: m.start()] + b"$" + body + b"*" + nmea_body_checksum(body) + data[m.end() :]


_BYTE_OPS: Final = (_flip, _set_byte, _insert, _delete, _duplicate, _splice, _truncate, _number)


def mutate(data: bytes, rng: random.Random, pool: Sequence[bytes] = ()) -> bytes:
    """A few stacked mutations of ``data`` (``pool``: other samples to splice from)."""
    looks_json = data[:1] in (b"{", b"[")
    looks_nmea = b"$" in data[:200] and b"*" in data[:300]
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5, 8))):
        r = rng.random()
        if looks_json and r < 0.45:
            data = _json_tree(data, rng, pool)
        elif looks_nmea and r < 0.45:
            data = _nmea_field(data, rng, pool)
        else:
            data = rng.choice(_BYTE_OPS)(data, rng, pool)
    return data[:MAX_INPUT_BYTES]


# --- Seeds: real samples ----------------------------------------------------------------


@dataclass
class SimulatedDay:
    """A short simulated van day and everything the van made of it."""

    manifest: bytes
    nmea: bytes
    scans: list[bytes]
    batches: list[bytes]
    envelopes: list[tuple[str, bytes]]  # (stream, payload)
    pod_tokens: list[str]
    raws: list[str] = field(default_factory=list)


@functools.cache
def simulated_day() -> SimulatedDay:
    from simulator.scenario import ScenarioConfig, generate  # noqa: PLC0415
    from simulator.scenario_dir import write_scenario_dir  # noqa: PLC0415
    from tests.uplinkday import Day, day_messages  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="fuzz-day-") as tmp:
        out = Path(tmp)
        config = ScenarioConfig(seed=13, n_stops=4, max_duration_s=900)
        write_scenario_dir(generate(config), out, device_id=DEVICE)
        day = Day(out / "nmea.log", out / "scans.jsonl", out / "manifest.json")
        messages = day_messages(day, DEVICE_KEY)
        nmea = day.nmea.read_bytes()
        scans = day.scans.read_bytes().splitlines()
        manifest = day.manifest.read_bytes()
    batches = [
        messages.batch(range(a, min(a + n, len(messages.telemetry) + 1)))
        for a, n in ((1, 1), (1, 10), (11, 40), (51, 30))
        if a <= len(messages.telemetry)
    ]
    envelopes = [("events", messages.envelope("events", s)) for s, _ in messages.events]
    envelopes += [("pod", messages.envelope("pod", s)) for s, _ in messages.pods]
    return SimulatedDay(
        manifest=manifest,
        nmea=nmea,
        scans=scans,
        batches=batches,
        envelopes=envelopes,
        pod_tokens=[record.jws for _, record in messages.pods],
        raws=[json.loads(line)["raw"] for line in scans],
    )


def _chunks(data: bytes, lines_per_chunk: int) -> list[bytes]:
    lines = data.splitlines(keepends=True)
    return [b"".join(lines[i : i + lines_per_chunk]) for i in range(0, len(lines), lines_per_chunk)]


@functools.cache
def nmea_seeds() -> list[bytes]:
    seeds = _chunks(simulated_day().nmea[:40_000], 12)
    gpsd = CORPUS / "nmea" / "gpsd"
    if gpsd.is_dir():
        from tests.corpus import read_gpsd_log  # noqa: PLC0415

        for log in sorted(gpsd.glob("*.log")):
            seeds += _chunks(read_gpsd_log(log), 15)[:20]
    pynmea2 = CORPUS / "nmea" / "pynmea2" / "pynmea2-sentences.txt"
    if pynmea2.is_file():
        seeds += [ln + b"\r\n" for ln in pynmea2.read_bytes().splitlines() if ln.strip()]
    return seeds


@functools.cache
def scan_seeds() -> list[bytes]:
    raws = list(simulated_day().raws)
    for name, key in (("biip-expected.jsonl", "input"), ("biip-test-cases-full.jsonl", None)):
        path = CORPUS / "gs1" / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            if key is not None and isinstance(case.get(key), str):
                raws.append(case[key])
            for value in (case.get("params") or {}).values():
                if isinstance(value, str) and value:
                    raws.append(value)
    raws += ["]C100106141412345678908", "]d2010950600013435221ABC\x1d10LOT", "1Z999AA10123456784"]
    return [r.encode("utf-8", "surrogatepass") for r in dict.fromkeys(raws)]


@functools.cache
def gs1_ais() -> list[str]:
    """The GS1 Application Identifiers (the syntax dictionary's first column)."""
    path = CORPUS / "gs1" / "gs1-syntax-dictionary.txt"
    ais: list[str] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            head = line.split("#", 1)[0].split()
            if head and head[0][:1].isdigit():
                first = head[0].split("-")[0]
                ais.append(first)
    return ais or ["00", "01", "02", "10", "11", "15", "17", "21", "37", "400", "420", "3103"]


def _shipped_model() -> bytes:
    return (REPO / "firmware_agent" / "eta" / "models" / "default.tflite").read_bytes()


@functools.cache
def model_seeds() -> list[bytes]:
    from firmware_agent.contract.model import sign_model  # noqa: PLC0415

    model = _shipped_model()
    return [
        sign_model(model, FLEET_KEY, issued=T0),
        sign_model(model, FLEET_KEY, issued=T0 + timedelta(days=1), devices=[DEVICE, "van-0002"]),
        sign_model(model, FLEET_KEY, issued=T0, devices=["van-0002"]),
    ]


def _record_examples() -> list[tuple[str, bytes]]:
    from tests.test_contract_records import EXAMPLES  # noqa: PLC0415
    from tests.wire import envelope  # noqa: PLC0415

    out = []
    for i, record in enumerate(EXAMPLES, start=1):
        stream = "pod" if record.type == "pod" else "events"
        out.append((stream, envelope(DEVICE, stream, i, record, historical=i % 2 == 0, sent_at=T0)))
    return out


@functools.cache
def envelope_seeds() -> list[tuple[str, bytes]]:
    return simulated_day().envelopes + _record_examples()


def status_payloads() -> list[bytes]:
    from firmware_agent.contract.envelope import encode_status  # noqa: PLC0415

    health = {
        "fixes": 812, "scans": 14, "records_telemetry": 89, "records_events": 9,
        "records_pod": 13, "config_revision": 3, "pods": 13, "eta_model": "baseline",
        "eta_backend": "none", "eta_unavailable": "off", "models_refused": 0,
    }  # fmt: skip
    return [
        encode_status(DEVICE, "online", time=T0, health=health),
        encode_status(DEVICE, "offline"),
    ]


def ack_payloads() -> list[bytes]:
    from firmware_agent.contract.envelope import encode_ack  # noqa: PLC0415

    return [
        encode_ack(DEVICE, {"telemetry": 89, "events": 9, "pod": 13}, time=T0),
        encode_ack(DEVICE, {"telemetry": 1}, time=T0),
    ]


def config_payloads() -> list[bytes]:
    from firmware_agent.remote_config import SETTINGS  # noqa: PLC0415
    from firmware_agent.van import VanConfig  # noqa: PLC0415

    van = VanConfig()
    sources: dict[str, object] = {
        "telemetry": van.telemetry,
        "geofence": van.geofence,
        "van": van,
        "eta": van.eta,
    }
    full: dict[str, Any] = {"v": 1, "revision": 3, "issued_at": "2026-11-20T18:00:00.000Z"}
    for section, settings in SETTINGS.items():
        source = sources.get(section)
        values = {k: getattr(source, k) for k in settings if hasattr(source, k)}
        if section == "uplink":
            values = {"batch_max_fixes": 256, "batch_max_age_s": 30.0}
        full[section] = values
    small = {"v": 1, "revision": 7, "geofence": {"index_cell_m": 250, "border_m": 15}}
    return [json.dumps(full).encode(), json.dumps(small).encode(), b'{"v":1,"revision":1}']


# --- Structure-aware generators ---------------------------------------------------------

_TALKERS: Final = ("GP", "GN", "GL", "GA", "GB", "BD", "QZ", "XX", "", "G")
_TYPES: Final = ("GGA", "RMC", "GLL", "GNS", "VTG", "GSA", "GSV", "ZDA", "TXT", "GBS", "")


def _nmea_time(rng: random.Random) -> str:
    if rng.random() < 0.7:
        frac = rng.choice(("", ".0", ".00", ".000", ".5", ".99", ".999999999", "."))
        return f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(61):02d}{frac}"
    return rng.choice(("235960.999", "240000", "12", "999999", "", "0837xx", *NUMBERS))


def _nmea_coord(rng: random.Random, deg_digits: int) -> str:
    if rng.random() < 0.6:
        deg = rng.randrange(91 if deg_digits == 2 else 181)
        width, decimals = rng.choice((2, 5, 8, 11)), rng.choice((0, 2, 4, 5, 6, 10))
        return f"{deg:0{deg_digits}d}{rng.uniform(0, 60):0{width}.{decimals}f}"
    return rng.choice(("9000.0000", "18000.0000", "8960.000000", "9999.9999", "0.0", "1", *NUMBERS))


def _nmea_number(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return f"{rng.uniform(0, rng.choice((1, 10, 100, 1e6))):.{rng.randrange(4)}f}"
    return rng.choice(NUMBERS)


def _nmea_sentence(rng: random.Random) -> bytes:
    kind = rng.choice(_TYPES)

    def letter(options: str) -> str:
        choices: list[str] = [*options, "", "X"]
        return choices[rng.randrange(len(choices))]

    fields: list[str]
    if kind in ("GGA", "GNS"):
        fields = [
            _nmea_time(rng), _nmea_coord(rng, 2), letter("NS"), _nmea_coord(rng, 3),
            letter("EW"), rng.choice(("0", "1", "2", "6", "7", "9", "AN", "NN", "")),
            _nmea_number(rng), _nmea_number(rng), _nmea_number(rng), "M", _nmea_number(rng),
            "M", "", "",
        ]  # fmt: skip
    elif kind == "RMC":
        date = rng.choice(
            (f"{rng.randint(1, 31):02d}{rng.randint(1, 12):02d}{rng.randrange(100):02d}",
             "310299", "000000", "999999", "", "2111260")
        )  # fmt: skip
        fields = [
            _nmea_time(rng), letter("AV"), _nmea_coord(rng, 2), letter("NS"),
            _nmea_coord(rng, 3), letter("EW"), _nmea_number(rng), _nmea_number(rng), date,
            "", "", letter("ADNE"), letter("V"),
        ]  # fmt: skip
    elif kind == "GLL":
        fields = [
            _nmea_coord(rng, 2), letter("NS"), _nmea_coord(rng, 3), letter("EW"),
            _nmea_time(rng), letter("AV"), letter("ADN"),
        ]  # fmt: skip
    elif kind == "VTG":
        fields = [
            _nmea_number(rng), letter("T"), "", "M", _nmea_number(rng), "N",
            _nmea_number(rng), "K", letter("AN"),
        ]  # fmt: skip
    elif kind == "GSA":
        fields = [letter("AM"), rng.choice(("1", "2", "3", "", "9"))]
        fields += [str(rng.randint(1, 200)) if rng.random() < 0.5 else "" for _ in range(12)]
        fields += [_nmea_number(rng) for _ in range(3)]
        fields += [str(rng.randint(0, 9))] if rng.random() < 0.5 else []
    elif kind == "GSV":
        fields = [
            rng.choice(("1", "2", "3", "9", "")),
            rng.choice(("1", "2", "")),
            _nmea_number(rng),
        ]
        for _ in range(rng.randint(0, 5)):
            fields += [str(rng.randint(1, 200)), _nmea_number(rng), _nmea_number(rng), ""]
        fields += [str(rng.randint(0, 9))] if rng.random() < 0.5 else []
    elif kind == "ZDA":
        fields = [_nmea_time(rng)] + [
            rng.choice(
                (f"{rng.randint(1, 31):02d}", f"{rng.randint(1, 12):02d}",
                 str(rng.randint(1970, 2300)), *NUMBERS)
            )
            for _ in range(3)
        ] + ["00", "00"]  # fmt: skip
    else:
        fields = [_nmea_number(rng) for _ in range(rng.randint(0, 20))]
    if rng.random() < 0.2:
        del fields[rng.randint(0, len(fields)) :]
    head = (
        ("P" + rng.choice(("UBX", "GRMZ", "MTK")))
        if rng.random() < 0.05
        else rng.choice(_TALKERS) + kind
    )
    body = ",".join([head, *fields]).encode("utf-8", "surrogatepass")
    checksum = nmea_body_checksum(body)
    if rng.random() < 0.1:
        checksum = rng.choice((b"00", b"ZZ", b"", checksum.lower()))
    star = b"*" if rng.random() < 0.95 else b""
    end = rng.choice((b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\r\r\n"))
    return b"$" + body + star + checksum + end


def gen_nmea(rng: random.Random) -> bytes:
    out = [_nmea_sentence(rng) for _ in range(rng.choice((1, 2, 5, 10, 30)))]
    if rng.random() < 0.1:
        out.insert(rng.randint(0, len(out)), bytes(rng.randrange(256) for _ in range(50)))
    return b"".join(out)


def gen_scan(rng: random.Random) -> bytes:
    """A GS1 element string, HRI, Digital Link URI or plain code, with AIM prefixes."""
    ais = gs1_ais()
    parts: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        ai = rng.choice(ais)
        length = rng.choice((0, 1, 6, 8, 13, 14, 18, 20, 30, 90))
        alphabet = string.digits if rng.random() < 0.8 else string.ascii_letters + "-./#!%"
        parts.append(ai + "".join(rng.choice(alphabet) for _ in range(length)))
    style = rng.randrange(4)
    if style == 0:
        text = "\x1d".join(parts)
    elif style == 1:
        text = "".join(f"({p[:2]}){p[2:]}" for p in parts)
    elif style == 2:
        text = "https://id.gs1.org/" + "/".join(f"{p[:2]}/{p[2:]}" for p in parts)
    else:
        text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 80)))
    prefix = rng.choice(("", "]C1", "]C0", "]d2", "]Q3", "]Q1", "]e0", "]E0", "]z9", "]"))
    text = prefix + text + rng.choice(("", "", "\r", " ", "\x1d", "\ufffd", "\ud800"))
    return text.encode("utf-8", "surrogatepass")


def gen_hid(rng: random.Random) -> bytes:
    """Key events as a scanner in keyboard mode types them (3 bytes an event): codes,
    Shift, Caps Lock, Ctrl combinations and Alt + keypad codes, some never released."""
    from evdev import ecodes  # noqa: PLC0415

    keypad = [ecodes.ecodes[f"KEY_KP{d}"] for d in range(10)]
    plain = [ecodes.ecodes[f"KEY_{c}"] for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    events: list[tuple[int, int]] = []

    def press(code: int) -> None:
        events.append((code, 1))
        if rng.random() < 0.95:
            events.append((code, 0))

    for _ in range(rng.choice((1, 3, 20))):
        mode = rng.randrange(4)
        if mode == 0:
            for _ in range(rng.choice((1, 10, 30))):
                press(rng.choice(plain))
        elif mode == 1:  # Alt + keypad digits, often more of them than any code has
            events.append((ecodes.KEY_LEFTALT, 1))
            for _ in range(5000 if rng.random() < 0.02 else rng.choice((1, 3, 4, 5, 10))):
                press(rng.choice(keypad))
            if rng.random() < 0.9:
                events.append((ecodes.KEY_LEFTALT, 0))
        elif mode == 2:
            modifier = rng.choice((ecodes.KEY_LEFTSHIFT, ecodes.KEY_LEFTCTRL, ecodes.KEY_CAPSLOCK))
            events.append((modifier, 1))
            press(rng.choice(plain))
            events.append((modifier, rng.choice((0, 2))))
        else:
            events.append((rng.randrange(1024), rng.randrange(4)))
        if rng.random() < 0.5:
            press(ecodes.KEY_ENTER)
    return b"".join(code.to_bytes(2, "little") + bytes([value]) for code, value in events)


def gen_scan_log(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.choice((1, 3, 10))):
        record: dict[str, Any] = {}
        if rng.random() < 0.95:
            record["time"] = rng.choice(
                (
                    "2026-11-21T09:14:03.250Z", "2026-11-21T09:14:03+01:00",
                    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+00:00",
                    "2026-11-21T09:14:03", "2026-11-21", "x", "2026-11-21T25:00:00Z",
                    "2026-11-21T09:14:03.250+23:59", "2026-W47-6T09:14",
                    _interesting_json(rng),
                )
            )  # fmt: skip
        if rng.random() < 0.95:
            raw = gen_scan(rng).decode("utf-8", "surrogatepass")
            record["raw"] = raw if rng.random() < 0.9 else _interesting_json(rng)
        if rng.random() < 0.5:
            record["source"] = rng.choice(("serial", "hid", "", "x", None, 1))
        lines.append(_dumps(record, rng) if rng.random() < 0.95 else b"[" * 50_000)
    return b"\n".join(lines)


_M_PER_DEG: Final = math.pi * 6_371_008.8 / 180.0


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    cos = max(math.cos(math.radians(lat)), 1e-12)
    return lat + north_m / _M_PER_DEG, lon + east_m / (_M_PER_DEG * cos)


def _distance_m(rng: random.Random, hostile: bool) -> float:
    scales = [0.0, 1e-6, 0.3, 30.0, 500.0, 5_000.0, 50_000.0, 100_000.0, 300_000.0, 499_000.0]
    if hostile:
        scales += [500_001.0, 2e6, 2e7]
    return rng.choice(scales) * rng.choice((1, -1)) * rng.uniform(0.5, 1)


def _origin(rng: random.Random) -> tuple[float, float]:
    lat = rng.choice((48.137, 0.0, 89.9999, -89.9999, 90.0, -90.0, 66.5, rng.uniform(-90, 90)))
    lon = rng.choice((11.575, 0.0, 179.9999, -179.9999, 180.0, -180.0, rng.uniform(-180, 180)))
    return lat, lon


def _coordinate(value: float, limit: float, rng: random.Random, hostile: bool) -> Any:
    """A coordinate as a manifest carries it: in range (a longitude wraps around the
    antimeridian, a latitude stops at the pole) unless ``hostile``, which sometimes
    leaves it out of range or makes it something else than a number."""
    if not hostile:
        value = max(-90.0, min(90.0, value)) if limit == 90 else (value + 180.0) % 360.0 - 180.0
    elif rng.random() < 0.05:
        return _interesting_json(rng)
    return round(value, rng.choice((7, 9, 15)))


def _lonlat(lat: float, lon: float, rng: random.Random, hostile: bool) -> list[Any]:
    return [_coordinate(lon, 180, rng, hostile), _coordinate(lat, 90, rng, hostile)]


def _route(rng: random.Random, lat0: float, lon0: float, hostile: bool) -> dict[str, Any]:
    shape = rng.randrange(6)
    points: list[tuple[float, float]] = [(lat0, lon0)]
    if shape == 0:  # the whole world: the finding's route
        points = [(-90.0, -180.0), (90.0, 180.0)]
    elif shape == 1:  # a few long straight segments (a planner's motorway)
        for _ in range(rng.randint(1, 4)):
            points.append(_offset(lat0, lon0, _distance_m(rng, hostile), _distance_m(rng, hostile)))
    elif shape == 2:  # many short segments: a real route
        lat, lon = points[-1]
        for _ in range(rng.choice((10, 200, 3000))):
            lat, lon = _offset(lat, lon, rng.uniform(-80, 80), rng.uniform(-80, 80))
            points.append((lat, lon))
    elif shape == 3:  # zig-zag across the antimeridian, or near a pole
        lat = rng.choice((89.999, -89.999, lat0))
        points += [(lat, 179.999 if i % 2 else -179.999) for i in range(rng.randint(1, 50))]
    elif shape == 4:  # the same point again and again, or tiny steps
        step = rng.choice((0.0, 1e-12, 1e-9))
        points = [(lat0 + i * step, lon0 + i * step) for i in range(rng.choice((2, 100, 5000)))]
    else:
        points += [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(rng.randint(1, 5))]
    coords: list[Any] = [_lonlat(lat, lon, rng, hostile) for lat, lon in points]
    if hostile and rng.random() < 0.1:
        coords.append(rng.choice(([1.0], [1.0, 2.0, 3.0, 4.0], "x", [])))
    kind = "LineString" if not hostile or rng.random() < 0.95 else "Point"
    return {"type": kind, "coordinates": coords}


def _stop(rng: random.Random, i: int, lat0: float, lon0: float, hostile: bool) -> dict[str, Any]:
    far = i > 0
    lat, lon = _offset(lat0, lon0, far * _distance_m(rng, hostile), far * _distance_m(rng, hostile))
    stop: dict[str, Any] = {
        "id": f"S{i:03d}" if not hostile else rng.choice((f"S{i:03d}", "", "S000", "x" * 101)),
        "lat": _coordinate(lat, 90, rng, hostile),
        "lon": _coordinate(lon, 180, rng, hostile),
        "type": rng.choice(("house", "apartment", "business", "locker", "other", "castle")),
        "parcels": [
            f"00106141412345{(i * 7 + k) % 10000:04d}" for k in range(rng.choice((0, 1, 3)))
        ],
    }
    radii: list[Any] = [1, 35, 100, 5000, 1.0000001, 4999.999, rng.uniform(1, 5000)]
    if hostile:
        radii += [5000.0001, 0.999, 0, -1, 1e308, 1e-300, 10**400, "35"]
    if rng.random() < 0.85 or not hostile:
        stop["radius_m"] = rng.choice(radii)
    if rng.random() < 0.2:
        n = rng.choice((3, 4, 20, 1000, 1001, 2) if hostile else (3, 4, 20, 200, 1000))
        spans = (1.0, 30.0, 200.0, 2_400.0) + ((5_000.0, 20_000.0, 1e-9) if hostile else ())
        span = rng.choice(spans)
        ring = []
        for k in range(n):
            angle = 2 * math.pi * k / n
            vlat, vlon = _offset(lat, lon, span * math.sin(angle), span * math.cos(angle))
            ring.append([_coordinate(vlat, 90, rng, hostile), _coordinate(vlon, 180, rng, hostile)])
        if rng.random() < 0.5:
            ring.append(ring[0])
        stop["polygon"] = ring
    if rng.random() < 0.3:
        starts = ["2026-11-21T07:00:00Z", "0001-01-01T00:00:00Z"]
        ends = ["2026-11-21T09:00:00Z", "9999-12-31T23:59:59.999999Z"]
        if hostile:
            starts += ["2026-11-21T07:00:00", "x"]
            ends += ["2026-11-21T07:00:00Z", "0001-01-01T00:00:00+00:00"]
        stop["window_start"], stop["window_end"] = rng.choice(starts), rng.choice(ends)
    return stop


def manifest_doc(rng: random.Random, hostile: bool | None = None) -> dict[str, Any]:
    """A manifest built from its geometry: stops near, far and across the antimeridian or
    a pole, huge and tiny radii and polygons, long route segments, many vertices. Not
    ``hostile`` (two thirds by default), it is one the van must take: every value in
    range, so that the geofence indexes get built on it."""
    if hostile is None:
        hostile = rng.random() < 1 / 3
    lat0, lon0 = _origin(rng)
    n = rng.choice((0, 1, 1, 2, 3, 8, 40, 300))
    doc: dict[str, Any] = {
        "route_id": "R-fuzz",
        "device_id": DEVICE if not hostile else rng.choice((DEVICE, "van-9999", "", "x y")),
        "date": "2026-11-21" if not hostile else rng.choice(("9999-12-31", "2026-02-30", "")),
        "stops": [_stop(rng, i, lat0, lon0, hostile) for i in range(n)],
    }
    if rng.random() < 0.6:
        doc["route"] = _route(rng, lat0, lon0, hostile)
    return doc


@functools.cache
def _gzip_bomb() -> bytes:
    return gzip.compress(b'{"stops":[' + b" " * (40 * 1024 * 1024) + b"]}", compresslevel=9)


def gen_manifest(rng: random.Random) -> bytes:
    if rng.random() < 0.005:
        return _gzip_bomb()
    data = _dumps(manifest_doc(rng), rng)
    if rng.random() < 0.1:
        data = gzip.compress(data, compresslevel=1)
    return data


def config_doc(rng: random.Random, hostile: bool | None = None) -> dict[str, Any]:
    """A config whose settings sit at their limits, or (``hostile``, a third by default)
    just past and far past them: a grid cell of a millimetre, a border of 10^12 m,
    zeros, NaN, integers beyond any float. Not hostile, every setting is in range, so
    that the pipeline gets built on it (the smallest cells with the longest reaches)."""
    from firmware_agent.geofence.config import LIMITS  # noqa: PLC0415
    from firmware_agent.remote_config import MAX_REVISION, SETTINGS  # noqa: PLC0415

    if hostile is None:
        hostile = rng.random() < 1 / 3
    revisions: list[Any] = [1, 2, rng.randint(1, 10**6), MAX_REVISION]
    if hostile:
        revisions += [MAX_REVISION + 1, 10**30, 0, -1, 1.5, "1", True]
    doc: dict[str, Any] = {"v": 1 if not hostile else _interesting_json(rng), "revision": 1}
    doc["revision"] = rng.choice(revisions)
    if rng.random() < 0.3:
        doc["issued_at"] = rng.choice(
            ("2026-11-20T18:00:00.000Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z",
             "2026-11-20T18:00:00+00:00", *(("2026-02-30T00:00:00Z", "x") if hostile else ()))
        )  # fmt: skip
    for section, settings in SETTINGS.items():
        if rng.random() < 0.4:
            continue
        values: dict[str, Any] = {}
        for name, setting in settings.items():
            if rng.random() < 0.5:
                continue
            low, high = LIMITS[name] if section == "geofence" else (None, None)
            low = low if low is not None else setting.minimum
            high = high if high is not None else setting.maximum
            lo = low if low is not None else (0.0 if setting.zero else 1e-3)
            hi = high if high is not None else 1e6
            values[name] = _setting_value(rng, lo, hi, setting.integer, hostile)
        if rng.random() < 0.05:
            values["unknown_setting"] = 1
        doc[section] = values
    return doc


def _setting_value(rng: random.Random, lo: float, hi: float, integer: bool, hostile: bool) -> Any:
    if hostile and rng.random() < 0.5:
        edges: list[Any] = [0, -0.0, -1, 1e-300, 1e-3, 1e12, 1e300, 10**30, math.nan, "1", None]
        edges += [math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)]
        return rng.choice(edges)
    pick = rng.randrange(4)
    if pick == 0:
        value = lo
    elif pick == 1:
        value = hi
    elif lo > 0:  # log-uniform: as many tiny values as huge ones
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        value = rng.uniform(lo, hi)
    if integer:
        return max(math.ceil(lo), min(math.floor(hi), round(value)))
    return value


def gen_config(rng: random.Random) -> bytes:
    return _dumps(config_doc(rng), rng)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def gen_batch(rng: random.Random) -> bytes:
    """A telemetry batch: built by the van's own encoder over points at the edges of
    what a point carries (signed by the device key or not), or field by field with
    header values at and past their limits, fix counts that do or do not fit and deltas
    that overflow the coordinates."""
    if rng.random() < 0.5:
        return _encoded_batch(rng)
    edge = (0, 1, 2, 127, 128, 2**31, 2**53, 2**63 - 1, 2**63, 2**64, 2**70)
    out = bytearray(rng.choice((b"FT", b"FT", b"FU", b"")))
    out.append(rng.choice((2, 2, 1, 0, 3, 255)))
    out.append(rng.choice((0, 0, 1, 2, 3, 4, 0x80)))
    name = rng.choice((DEVICE, "van-0002", "", "x" * 65, "van 1")).encode()
    out += _varint(len(name) if rng.random() < 0.9 else rng.choice(edge)) + name
    out += _varint(rng.choice(edge) if rng.random() < 0.3 else rng.randint(1, 1000))
    out += _varint(rng.choice(edge) if rng.random() < 0.3 else rng.randint(0, 100))
    n = rng.choice((0, 1, 5, 50)) if rng.random() < 0.9 else rng.choice(edge)
    out += _varint(n)
    for _ in range(min(n, 60)):
        for _ in range(10):
            out += _varint(rng.choice(edge) if rng.random() < 0.1 else rng.randrange(1000))
    if rng.random() < 0.1:
        out += bytes(rng.randrange(256) for _ in range(rng.choice((1, 64))))
    return bytes(out)


def _encoded_batch(rng: random.Random) -> bytes:
    from firmware_agent.contract.records import TelemetryPoint  # noqa: PLC0415
    from firmware_agent.contract.telemetry import encode_batch  # noqa: PLC0415

    def maybe(values: Sequence[float]) -> float | None:
        return rng.choice([None, *values])

    points = []
    seq = rng.choice((1, 1000, 2**62))
    when = rng.choice((datetime(1970, 1, 1, tzinfo=UTC), T0, datetime(2200, 1, 1, tzinfo=UTC)))
    for _ in range(rng.choice((0, 1, 2, 20, 200))):
        seq += rng.choice((1, 1, 2, 1000))
        when += timedelta(milliseconds=rng.choice((0, 1, 1000, -1000, 10**9)))
        lat = rng.choice((rng.uniform(-90, 90), 90.0, -90.0, 0.0))
        lon = rng.choice((rng.uniform(-180, 180), 180.0, -180.0, 179.9999999))
        points.append(
            (
                seq,
                TelemetryPoint(
                    time=when, lat=lat, lon=lon, alt_m=maybe((-1000.0, 0.0, 99_999.9)),
                    speed_mps=maybe((0.0, 655.0, 13.9)), course_deg=maybe((0.0, 359.9)),
                    mode=rng.choice((0, 1, 2, 3)), quality=rng.choice((None, 0, 1, 6, 254)),
                    hdop=maybe((0.0, 0.9, 6553.0)), sats_used=rng.choice((None, 0, 12, 254)),
                ),
            )
        )  # fmt: skip
    first = points[0][0] if points else seq
    last = points[-1][0] + rng.choice((0, 0, 1, 100)) if points else seq + rng.choice((0, 5))
    sign = DEVICE_KEY.sign if rng.random() < 0.5 else None
    try:
        return encode_batch(
            DEVICE, first, points, historical=rng.random() < 0.3, last_seq=last, sign=sign
        )
    except (ValueError, OverflowError):  # a point the encoder refuses: the raw way instead
        return mutate(rng.choice(simulated_day().batches), rng)


def gen_json_message(rng: random.Random, base: Sequence[bytes]) -> bytes:
    """A JSON message of the contract with a field replaced by an interesting value."""
    return _json_tree(rng.choice(base), rng, base)


def _b64_part(token: str, i: int) -> bytes:
    return b64url_decode(token.split(".")[i])


def _signed(key: Ed25519PrivateKey, header: bytes, claims: bytes) -> str:
    """A compact JWS over exactly these header and claims bytes (JSON or not)."""
    signing_input = f"{b64url_encode(header)}.{b64url_encode(claims)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


def gen_jws(rng: random.Random) -> bytes:
    """Compact JWS with chosen headers (alg, typ, crit, b64, kid), payloads and
    signatures: some validly signed by the device key over odd payloads."""
    odd = rng.random() < 0.4
    header: Any = {
        "alg": rng.choice(
            ("none", "HS256", "", None, "eddsa", "EdDSA") if odd else ("EdDSA", "Ed25519")
        ),
        "typ": rng.choice(("JWT", "", 1, "application/pod+jwt") if odd else ("pod+jwt", "POD")),
        "kid": rng.choice(("k", "", None, "x" * 1000)),
    }
    if rng.random() < 0.1:
        header["crit"] = ["b64"]
    if rng.random() < 0.1:
        header["b64"] = rng.choice((False, True, "false"))
    if rng.random() < 0.1:
        header = rng.choice(([], "x", 1, None))
    claims: Any = rng.choice((_interesting_json(rng), {"v": 1, "seq": rng.choice((1, -1, 2**64))}))
    if rng.random() < 0.8 and simulated_day().pod_tokens:
        # A real POD's claims with a few of them changed (or none), signed again.
        claims = json.loads(_b64_part(rng.choice(simulated_day().pod_tokens), 1))
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            key = rng.choice([*claims, "extra"])
            if rng.random() < 0.2:
                claims.pop(key, None)
            else:
                claims[key] = _interesting_json(rng)
    token = _signed(DEVICE_KEY, _dumps(header, rng), _dumps(claims, rng))
    if rng.random() < 0.2:
        signature = b64url_decode(token.rsplit(".", 1)[1])
        signature = signature[: rng.randrange(64)] + bytes(rng.randrange(2))
        token = token.rsplit(".", 1)[0] + "." + b64url_encode(signature)
    if rng.random() < 0.1:
        token = rng.choice((token + "=", token.replace("-", "+"), token + ".", "." + token))
    return token.encode("ascii")


# --- Targets ----------------------------------------------------------------------------


def _run_gnss(data: bytes) -> None:
    from firmware_agent.gnss.decoder import GnssDecoder  # noqa: PLC0415
    from firmware_agent.gnss.sentences import INTERNAL_ERROR  # noqa: PLC0415

    # As the agent reads a receiver, and (odd lengths) as ``fleet-agent gnss decode``
    # reads a log: comments allowed, checksums required.
    odd = bool(len(data) & 1)
    decoder = GnssDecoder(comments=odd, require_checksum=odd)
    a, b = len(data) // 3, 2 * len(data) // 3
    decoder.feed(data[:a], 1.0)
    decoder.feed(data[a:b], 2.0)
    decoder.close_epoch(2.5)
    decoder.feed(data[b:], 3.0)
    decoder.flush(4.0)
    decoder.summary()
    if decoder.faults.counts.get(INTERNAL_ERROR):
        err = decoder.last_internal_error
        raise SurvivedBugError(f"a sentence raised inside the decoder: {err!r}") from err


class _Van:
    """One van pipeline per process for the scan targets (its day carries on)."""

    pipeline: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.pipeline is None:
            from firmware_agent.contract.manifest import loads_manifest  # noqa: PLC0415
            from firmware_agent.pod.chain import PodChain  # noqa: PLC0415
            from firmware_agent.van import VanPipeline  # noqa: PLC0415

            manifest = loads_manifest(simulated_day().manifest)
            cls.pipeline = VanPipeline(manifest, pods=PodChain(DEVICE, DEVICE_KEY))
        return cls.pipeline


def _text(data: bytes) -> str:
    # What a scanner's bytes become: UTF-8, and undecodable bytes as lone surrogates
    # (a JSON scan log can carry those too).
    return data.decode("utf-8", "surrogateescape")


_SCAN_CLOCK = itertools.count(1)


def _run_scan_code(data: bytes) -> None:
    from firmware_agent.contract.parcels import ScanParseError, canonical_code, parse_scan  # noqa: PLC0415
    from firmware_agent.scan.types import Scan  # noqa: PLC0415

    raw = _text(data)
    with contextlib.suppress(ScanParseError):
        parse_scan(raw)
    with contextlib.suppress(ScanParseError):
        canonical_code(raw)
    when = T0 + timedelta(seconds=next(_SCAN_CLOCK))
    _Van.get().on_scan(Scan(time=when, raw=raw, source="serial"))


def _run_scan_serial(data: bytes) -> None:
    from firmware_agent.contract.parcels import MAX_SCAN_BYTES, parse_scan  # noqa: PLC0415
    from firmware_agent.scan.serial_reader import LineFramer  # noqa: PLC0415

    framer = LineFramer(MAX_SCAN_BYTES + 1)
    cut = len(data) // 2
    lines = framer.feed(data[:cut]) + framer.feed(data[cut:])
    framer.discard()
    for line in lines:
        parse_scan(line)


def _run_scan_hid(data: bytes) -> None:
    from firmware_agent.contract.parcels import parse_scan  # noqa: PLC0415
    from firmware_agent.scan.hid_reader import KeyDecoder  # noqa: PLC0415

    decoder = KeyDecoder()
    for i in range(0, len(data) - 2, 3):
        code = int.from_bytes(data[i : i + 2], "little")
        text = decoder.feed(code, data[i + 2] % 4)
        if text is not None:
            parse_scan(text)
    decoder.reset()


def _run_scan_log(data: bytes) -> None:
    from firmware_agent.faults import FaultCounter  # noqa: PLC0415
    from firmware_agent.scan.log import read_scan_log  # noqa: PLC0415

    text = data.decode("utf-8", "replace")  # as replay opens it (errors="replace")
    list(read_scan_log(text.splitlines(), FaultCounter()))


def _feed_pipeline(pipeline: Any, points: Sequence[tuple[float, float]]) -> None:
    from firmware_agent.contract.fix import Fix, FixMode  # noqa: PLC0415

    t = T0
    for k, (lat, lon) in enumerate(points):
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            continue
        for _ in range(2):
            t += timedelta(seconds=1)
            tod = (t - t.replace(hour=0, minute=0, second=0)).total_seconds()
            pipeline.on_fix(
                Fix(t, tod, lat, lon, 0.0 if k % 2 else 12.0, 90.0, 500.0, FixMode.FIX_3D,
                    1, 0.9, None, None, 9, 12, "GP")
            )  # fmt: skip


def _points(manifest: Any) -> list[tuple[float, float]]:
    points = [(s.lat, s.lon) for s in manifest.stops[:3]]
    if manifest.route:
        points += [manifest.route[0], manifest.route[len(manifest.route) // 2]]
    return points


def _run_manifest(data: bytes) -> None:
    from firmware_agent.contract.manifest import loads_manifest  # noqa: PLC0415
    from firmware_agent.pod.chain import PodChain  # noqa: PLC0415
    from firmware_agent.van import VanPipeline  # noqa: PLC0415

    manifest = loads_manifest(data)
    pipeline = VanPipeline(manifest, pods=PodChain(DEVICE, DEVICE_KEY))
    _feed_pipeline(pipeline, _points(manifest))


@functools.cache
def _config_manifests() -> list[Any]:
    """The manifests a config is tried on: the simulated day, and one whose route is a
    straight 100 km segment (an ordinary planner output that the grid must bound)."""
    from firmware_agent.contract.manifest import loads_manifest  # noqa: PLC0415

    day = loads_manifest(simulated_day().manifest)
    doc = json.loads(simulated_day().manifest)
    lat, lon = doc["stops"][0]["lat"], doc["stops"][0]["lon"]
    far = _offset(lat, lon, 70_000.0, 70_000.0)
    doc["route"] = {"type": "LineString", "coordinates": [[lon, lat], [far[1], far[0]]]}
    return [day, loads_manifest(json.dumps(doc))]


def _run_config(data: bytes) -> None:
    from firmware_agent.pod.chain import PodChain  # noqa: PLC0415
    from firmware_agent.remote_config import admit, apply_config, parse_config  # noqa: PLC0415
    from firmware_agent.uplink.mqtt import UplinkConfig  # noqa: PLC0415
    from firmware_agent.van import VanConfig, VanPipeline  # noqa: PLC0415

    config = parse_config(data)
    admit(None, config)
    van, _ = apply_config(config, van=VanConfig(), uplink=UplinkConfig(device_id=DEVICE))
    manifests = _config_manifests()
    manifest = manifests[len(data) % len(manifests)]
    pipeline = VanPipeline(manifest, pods=PodChain(DEVICE, DEVICE_KEY), config=van)
    _feed_pipeline(pipeline, _points(manifest))
    pipeline.reconfigure(van)


def _run_model(data: bytes) -> None:
    from firmware_agent.contract.errors import ModelUpdateError  # noqa: PLC0415
    from firmware_agent.contract.model import read_unverified, verify_model  # noqa: PLC0415

    with contextlib.suppress(ModelUpdateError):
        verify_model(data, [FLEET_KEY.public_key()], device_id=DEVICE)
    read_unverified(data)


def _run_model_file(data: bytes) -> None:
    from firmware_agent.contract.errors import ModelError  # noqa: PLC0415
    from firmware_agent.contract.model_file import read_metadata, read_model  # noqa: PLC0415

    with contextlib.suppress(ModelError):
        read_metadata(data)
    read_model(data)


def _run_telemetry(data: bytes) -> None:
    from firmware_agent.contract import telemetry  # noqa: PLC0415

    telemetry.verify_batch(data, DEVICE_KEY.public_key())
    batch = telemetry.decode_batch(data)
    batch.to_json()
    batch.header_json()


def _run_envelope(data: bytes) -> None:
    from firmware_agent.contract.envelope import decode_envelope  # noqa: PLC0415
    from firmware_agent.contract.errors import CodecError  # noqa: PLC0415
    from firmware_agent.contract.schema import validate  # noqa: PLC0415

    for stream in ("events", "pod", None):
        try:
            env = decode_envelope(data, stream=stream)
        except CodecError:
            continue
        env.to_json()
        validate(env.stream, env.to_json())
        env.typed().to_json()


def event_batch_seeds() -> list[bytes]:
    """Events batches of the simulated day's event records (and the examples'), in
    batches of 1, 3 and all, as the uplink frames them."""
    from firmware_agent.contract.envelope import decode_envelope  # noqa: PLC0415
    from firmware_agent.contract.eventbatch import frame_events  # noqa: PLC0415

    records: list[tuple[int, bool, bytes]] = []
    for stream, payload in envelope_seeds():
        if stream == "events":
            record = json.dumps(decode_envelope(payload).record, separators=(",", ":"))
            records.append((len(records) + 1, False, record.encode()))
    sent_at = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    return [
        frame_events(DEVICE, records[i : i + size], sent_at=sent_at)
        for size in (1, 3, len(records))
        for i in range(0, len(records), size)
    ][:60]


def _run_event_batch(data: bytes) -> None:
    from firmware_agent.contract.envelope import decode_envelope  # noqa: PLC0415
    from firmware_agent.contract.errors import CodecError  # noqa: PLC0415
    from firmware_agent.contract.eventbatch import decode_events  # noqa: PLC0415
    from firmware_agent.contract.schema import validate  # noqa: PLC0415

    batch = decode_events(data)
    validate("event-batch", batch.header_json())
    for record in batch.records:
        try:
            decode_envelope(batch.envelope(record), stream="events").typed().to_json()
        except CodecError:
            continue  # one bad record spoils only itself


def _run_ack(data: bytes) -> None:
    from firmware_agent.contract.envelope import decode_ack  # noqa: PLC0415

    decode_ack(data).to_json()


def _run_status(data: bytes) -> None:
    from firmware_agent.contract.envelope import decode_status  # noqa: PLC0415

    decode_status(data).to_json()


def _run_jws(data: bytes) -> None:
    from firmware_agent.contract.jws import (  # noqa: PLC0415
        POD_TYP,
        JwsError,
        peek_claims,
        read_header,
        verify_compact,
    )
    from firmware_agent.contract.pod import PodClaims  # noqa: PLC0415

    token = _text(data)
    with contextlib.suppress(JwsError):
        read_header(token)
    with contextlib.suppress(JwsError):
        peek_claims(token)
    claims = verify_compact(token, DEVICE_KEY.public_key(), typ=POD_TYP)
    PodClaims.from_json(claims)


@functools.cache
def _ingest_device() -> Any:
    from cloud_ingest.store.base import Device  # noqa: PLC0415
    from tests.uplinkday import raw_public_key  # noqa: PLC0415

    return Device(DEVICE, raw_public_key(DEVICE_KEY), True, T0)


def _run_ingest(data: bytes) -> None:
    from cloud_ingest.verify import check_message  # noqa: PLC0415

    topic, _, payload = data.partition(b"\n")
    text = topic.decode("utf-8", "surrogateescape")
    device = _ingest_device() if f"/{DEVICE}/" in text else None
    check_message(text, payload, received_at=T0, device=device)


def _ingest_seeds() -> list[bytes]:
    day = simulated_day()
    prefix = f"fleet/v1/{DEVICE}/".encode()
    seeds = [prefix + b"telemetry\n" + b for b in day.batches]
    seeds += [prefix + stream.encode() + b"\n" + p for stream, p in envelope_seeds()]
    seeds += [prefix + b"events\n" + p for p in event_batch_seeds()[:10]]
    seeds += [prefix + b"status\n" + p for p in status_payloads()]
    return seeds


def _gen_ingest(rng: random.Random) -> bytes:
    topic = rng.choice(
        (f"fleet/v1/{DEVICE}/telemetry", f"fleet/v1/{DEVICE}/events", f"fleet/v1/{DEVICE}/pod",
         f"fleet/v1/{DEVICE}/status", "fleet/v1/van-0002/pod", f"fleet/v2/{DEVICE}/pod",
         "fleet/v1//pod", "fleet/v1/+/pod", "#", "", "fleet/v1/" + "x" * 300 + "/pod",
         f"fleet/v1/{DEVICE}/ack", "fleet/v1/\ud800/pod")
    )  # fmt: skip
    leaf = topic.rsplit("/", 1)[-1]
    if leaf == "telemetry":
        payload = (
            gen_batch(rng)
            if rng.random() < 0.5
            else mutate(rng.choice(simulated_day().batches), rng)
        )
    elif leaf == "status":
        payload = gen_json_message(rng, status_payloads())
    else:
        payload = gen_json_message(rng, [p for _, p in envelope_seeds()])
        if rng.random() < 0.3:
            payload = _with_jws(payload, rng)
    return topic.encode("utf-8", "surrogatepass") + b"\n" + payload


def _with_jws(payload: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(payload)
        doc["record"]["jws"] = gen_jws(rng).decode("ascii")
    except (ValueError, KeyError, TypeError):
        return payload
    return _dumps(doc, rng)


def _gen_model(rng: random.Random) -> bytes:
    """A model payload signed by the fleet key over chosen claims and a mutated file,
    so that the checks after the signature (claims, sizes, the flatbuffer) are reached."""
    from firmware_agent.contract.keys import key_thumbprint  # noqa: PLC0415
    from firmware_agent.contract.model import MODEL_TYP  # noqa: PLC0415

    model = _shipped_model()
    if rng.random() < 0.7:
        model = mutate(model, rng)
    claims: dict[str, Any] = {
        "model_version": "eta-20261121-ce893f5013",
        "features_version": "1",
        "sha256": hashlib.sha256(model).hexdigest(),
        "size_bytes": len(model),
        "issued": "2026-11-21T09:00:00.000Z",
    }
    from firmware_agent.contract.model_file import read_metadata  # noqa: PLC0415

    with contextlib.suppress(Exception):
        metadata = read_metadata(_shipped_model())
        claims["model_version"] = metadata.get("model_version", claims["model_version"])
        claims["features_version"] = metadata.get("features_version", "1")
    if rng.random() < 0.3:
        claims["devices"] = rng.choice(([DEVICE], [], ["van-0002"] * 1000, "van-0001", [1]))
    for _ in range(rng.choice((0, 0, 1, 2))):
        claims[rng.choice([*claims, "extra"])] = _interesting_json(rng)
    kid = key_thumbprint(FLEET_KEY.public_key()) if rng.random() < 0.9 else "other"
    header = {"alg": "EdDSA", "kid": kid, "typ": MODEL_TYP if rng.random() < 0.95 else "x"}
    token = _signed(FLEET_KEY, _dumps(header, rng), _dumps(claims, rng))
    separator = b"\n" if rng.random() < 0.95 else rng.choice((b"", b"\r\n", b" "))
    return token.encode("ascii") + separator + model


def _allowed() -> dict[str, tuple[type[BaseException], ...]]:
    from firmware_agent.contract.errors import CodecError, ModelError, ModelUpdateError  # noqa: PLC0415
    from firmware_agent.contract.jws import JwsError  # noqa: PLC0415
    from firmware_agent.contract.parcels import ScanParseError  # noqa: PLC0415

    return {
        "gnss": (),
        "scan_code": (),  # the parsers' ScanParseError is taken in the target itself
        "scan_serial": (ScanParseError,),
        "scan_hid": (ScanParseError,),
        "scan_log": (),
        "manifest": (ContractError, AgentError),
        "config": (ContractError, AgentError),
        "model": (ModelUpdateError,),
        "model_file": (ModelError,),
        "telemetry": (CodecError,),
        "envelope": (CodecError,),
        "event_batch": (CodecError,),
        "ack": (CodecError,),
        "status": (CodecError,),
        "jws": (JwsError, CodecError),
        "ingest": (),
    }


def _seeds_of(name: str) -> Callable[[], list[bytes]]:
    day = simulated_day
    table: dict[str, Callable[[], list[bytes]]] = {
        "gnss": nmea_seeds,
        "scan_code": scan_seeds,
        "scan_serial": lambda: [b"\r\n".join(scan_seeds()[:40]) + b"\r\n", *scan_seeds()],
        "scan_hid": lambda: [gen_hid(random.Random(i)) for i in range(20)],
        "scan_log": lambda: [b"\n".join(day().scans[:5]), *day().scans],
        "manifest": lambda: [day().manifest],
        "config": config_payloads,
        "model": model_seeds,
        "model_file": lambda: [_shipped_model()],
        "telemetry": lambda: list(day().batches),
        "envelope": lambda: [p for _, p in envelope_seeds()],
        "event_batch": event_batch_seeds,
        "ack": ack_payloads,
        "status": status_payloads,
        "jws": lambda: (
            [t.encode("ascii") for t in day().pod_tokens]
            + [m.split(b"\n", 1)[0] for m in model_seeds()]
        ),
        "ingest": _ingest_seeds,
    }
    return table[name]


_GENERATORS: Final[dict[str, Callable[[random.Random], bytes]]] = {
    "gnss": gen_nmea,
    "scan_code": gen_scan,
    "scan_serial": lambda rng: b"".join(
        gen_scan(rng) + rng.choice((b"\r\n", b"\n", b"\r")) for _ in range(rng.randint(1, 5))
    ),
    "scan_hid": gen_hid,
    "scan_log": gen_scan_log,
    "manifest": gen_manifest,
    "config": gen_config,
    "model": _gen_model,
    "telemetry": gen_batch,
    "envelope": lambda rng: gen_json_message(rng, [p for _, p in envelope_seeds()]),
    "ack": lambda rng: gen_json_message(rng, ack_payloads()),
    "status": lambda rng: gen_json_message(rng, status_payloads()),
    "jws": gen_jws,
    "ingest": _gen_ingest,
}

_RUNS: Final[dict[str, Callable[[bytes], None]]] = {
    "gnss": _run_gnss,
    "scan_code": _run_scan_code,
    "scan_serial": _run_scan_serial,
    "scan_hid": _run_scan_hid,
    "scan_log": _run_scan_log,
    "manifest": _run_manifest,
    "config": _run_config,
    "model": _run_model,
    "model_file": _run_model_file,
    "telemetry": _run_telemetry,
    "envelope": _run_envelope,
    "event_batch": _run_event_batch,
    "ack": _run_ack,
    "status": _run_status,
    "jws": _run_jws,
    "ingest": _run_ingest,
}
# Shares of a campaign: what an input costs differs a hundredfold between targets.
_WEIGHTS: Final = {
    "manifest": 0.25,
    "config": 0.25,
    "model": 0.5,
    "model_file": 0.5,
    "scan_code": 0.7,
}
_CORPUS_SEEDED: Final = frozenset({"gnss", "scan_code", "scan_serial"})
TARGET_NAMES: Final = tuple(_RUNS)
GENERATED: Final = tuple(_GENERATORS)  # the targets with a structure-aware generator


@functools.cache
def target(name: str) -> Target:
    """The target ``name`` (its allowed errors imported on first use)."""
    return Target(
        name=name,
        run=_RUNS[name],
        allowed=_allowed()[name],
        seeds=_seeds_of(name),
        generate=_GENERATORS.get(name),
        weight=_WEIGHTS.get(name, 1.0),
        corpus=name in _CORPUS_SEEDED,
        generated=0.75 if name in ("manifest", "config") else 0.5,
    )


def make_input(t: Target, rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    """One input for ``t``: generated from structure (where ``t`` has a generator, in
    the share ``t.generated``) or a mutated seed; a generated input is sometimes mutated
    too."""
    if t.generate is not None and rng.random() < t.generated:
        data = t.generate(rng)
        return mutate(data, rng, seeds) if rng.random() < 0.2 else data
    return mutate(rng.choice(seeds), rng, seeds)


def input_rng(seed: int, name: str, index: int) -> random.Random:
    """The random source of input ``index`` of target ``name``: each input is
    reproducible on its own (``bench/fuzz.py --replay name:index``)."""
    return random.Random(f"{seed}:{name}:{index}")
