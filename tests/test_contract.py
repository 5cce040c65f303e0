"""The MQTT contract: docs/asyncapi.yaml, its JSON Schemas, and the real code held to them.

The AsyncAPI document must name every topic the code builds, with the QoS and retain
flags of the contract; every payload schema must be a valid JSON Schema 2020-12 and
every example must fit it. Then a simulated van day runs through the real pipeline and
every message it would publish, encoded by the real codec, must fit its schema.
"""

from __future__ import annotations

import copy
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_ingest import fleetstream
from cloud_ingest.store.base import Pod, Position, StopEvent
from firmware_agent.contract import schema
from firmware_agent.contract.envelope import (
    decode_ack,
    decode_envelope,
    decode_status,
    encode_ack,
    encode_status,
    frame_record,
)
from firmware_agent.contract.errors import CodecError, SchemaError, UnknownSchemaError
from firmware_agent.contract.fix import Fix
from firmware_agent.contract.manifest import parse_manifest
from firmware_agent.contract.pod import GENESIS_PREV
from firmware_agent.contract.records import PodRecord, Record, TelemetryPoint, encode_record
from firmware_agent.contract.telemetry import decode_batch, encode_batch
from firmware_agent.contract.times import UTC_PATTERN, format_utc
from firmware_agent.contract.topics import (
    DEVICE_ID_PATTERN,
    DOWNLINK_KINDS,
    STREAM_KINDS,
    STREAM_ROOT,
    UPLINK_LEAVES,
)
from firmware_agent.pod.chain import ChainState, PodChain
from firmware_agent.pod.verify import verify_chain
from firmware_agent.replay import replay
from firmware_agent.scan.types import Scan
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.van import VanPipeline
from simulator.gnss_errors import OutageConfig, OutageWindow
from simulator.manifest import build_manifest
from simulator.nmea_writer import epoch_bytes
from simulator.scans import build_scan_log, parse_scan_time
from simulator.scenario import ScenarioConfig, generate
from tests.vanday import T0, drive, fix_at, manifest, route_line, stop

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMAS = ROOT / "firmware_agent" / "contract" / "schemas"
ASYNCAPI: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text("utf-8"))
RETAINED = {"status", "manifest", "config", "model"}
SSCC_1 = "106141412345678908"
SSCC_2 = "340123450000000017"


def resolve(ref: str) -> Any:
    """A local ``#/a/b`` reference of the AsyncAPI document."""
    assert ref.startswith("#/"), ref
    node: Any = ASYNCAPI
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def kind_of(message: dict[str, Any]) -> str:
    """The schema kind of a components message: its payload file's name."""
    ref = str(message["payload"]["$ref"])
    assert ref.startswith("./schemas/"), ref
    return ref.removeprefix("./schemas/").removesuffix(".schema.json")


def channel_messages() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for channel_id, channel in ASYNCAPI["channels"].items():
        for message_id, ref in channel["messages"].items():
            yield channel_id, message_id, resolve(ref["$ref"])


# --- The document ---------------------------------------------------------------------------


def test_asyncapi_says_when_the_uplink_sends_a_partial_batch() -> None:
    """The telemetry batch's limits in the spec are the uplink's defaults (issue 14: it
    said 60 s while the code sent after 30 s)."""
    summary = ASYNCAPI["operations"]["sendTelemetry"]["summary"]
    defaults = UplinkConfig(device_id="van-1")
    assert f"up to {defaults.batch_max_fixes} fixes" in summary
    assert f"the oldest fix has waited {defaults.batch_max_age_s:g} s" in summary


def test_asyncapi_document_is_3_0_0_and_names_every_topic_of_the_code() -> None:
    assert ASYNCAPI["asyncapi"] == "3.0.0"
    assert ASYNCAPI["info"]["version"] == "1.0.0"
    addresses = {c["address"] for c in ASYNCAPI["channels"].values()}
    expected = {f"fleet/v1/{{device_id}}/{leaf}" for leaf in (*UPLINK_LEAVES, *DOWNLINK_KINDS)}
    expected |= {f"{STREAM_ROOT}/{{device_id}}/{kind}" for kind in STREAM_KINDS}
    assert addresses == expected
    for channel in ASYNCAPI["channels"].values():
        assert set(channel["parameters"]) == {"device_id"}
        assert channel["messages"]


def test_every_operation_has_the_contract_qos_and_retain_flag() -> None:
    seen = set()
    for op_id, op in ASYNCAPI["operations"].items():
        assert op["action"] in {"send", "receive"}, op_id
        channel = resolve(op["channel"]["$ref"])
        leaf = channel["address"].rsplit("/", 1)[1]
        seen.add(op["channel"]["$ref"])
        for ref in op["messages"]:
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), op_id
            resolve(ref["$ref"])
        mqtt = op["bindings"]["mqtt"]
        assert mqtt["qos"] == 1, op_id
        retained = leaf in RETAINED and channel["address"].startswith("fleet/")
        assert mqtt["retain"] is retained, op_id
    assert seen == {f"#/channels/{c}" for c in ASYNCAPI["channels"]}


def test_last_will_is_the_codecs_offline_status() -> None:
    will = ASYNCAPI["servers"]["broker"]["bindings"]["mqtt"]["lastWill"]
    assert will["topic"] == "fleet/v1/{device_id}/status"
    assert (will["qos"], will["retain"]) == (1, True)
    payload = will["message"].replace("{device_id}", "van-7").encode()
    assert payload == encode_status("van-7", "offline")
    schema.validate("status", json.loads(payload))


def test_every_message_refers_to_a_valid_2020_12_schema_file() -> None:
    kinds = set()
    for channel_id, message_id, message in channel_messages():
        kind = kind_of(message)
        path = DOCS / "schemas" / f"{kind}.schema.json"
        assert path.is_file(), (channel_id, message_id, path)
        doc = json.loads(path.read_text("utf-8"))
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["$id"].endswith(f"/docs/schemas/{kind}.schema.json")
        jsonschema.Draft202012Validator.check_schema(doc)
        assert doc == schema.schema(kind)
        kinds.add(kind)
    # Every schema serves a message; defs is the shared definitions file.
    assert kinds == set(schema.kinds())
    assert {p.name for p in SCHEMAS.glob("*.json")} == {f"{k}.schema.json" for k in kinds} | {
        "defs.schema.json"
    }


def test_schemas_have_one_real_copy_shipped_with_ingest() -> None:
    assert (DOCS / "schemas").is_symlink()
    assert (DOCS / "schemas").resolve() == SCHEMAS
    assert (DOCS / "manifest.schema.json").resolve() == SCHEMAS / "manifest.schema.json"
    assert not (SCHEMAS / "manifest.schema.json").is_symlink()


def test_schemas_and_codec_share_the_time_and_device_id_rules() -> None:
    defs = json.loads((SCHEMAS / "defs.schema.json").read_text("utf-8"))["$defs"]
    assert defs["utc"]["pattern"] == f"^{UTC_PATTERN}$"
    assert defs["device_id"]["pattern"] == f"^{DEVICE_ID_PATTERN}$"
    assert defs["seq"]["maximum"] == 2**63 - 1
    # Times the codec writes fit; a non-ASCII digit does not (whatever the regex engine).
    schema.validate("status", json.loads(encode_status("van-7", "online", time=T0)))
    with pytest.raises(SchemaError, match=r"\$\.time"):
        schema.validate("status", {"v": 1, "device_id": "v", "state": "online",
                                     "time": "\uff12026-11-21T09:00:00Z"})  # fmt: skip


def examples() -> Iterator[tuple[str, str, Any]]:
    for _, message_id, message in channel_messages():
        assert message.get("examples"), message_id
        for example in message["examples"]:
            yield kind_of(message), f"{message_id}/{example['name']}", example["payload"]


@pytest.mark.parametrize(("kind", "name", "payload"), list(examples()))
def test_every_example_fits_its_schema(kind: str, name: str, payload: Any) -> None:
    schema.validate(kind, payload)


def test_telemetry_example_is_the_decoded_form_of_its_bytes() -> None:
    message = ASYNCAPI["components"]["messages"]["telemetryBatch"]
    hexes = message["x-payload-hex"]
    assert set(hexes) == {e["name"] for e in message["examples"]}
    for example in message["examples"]:
        batch = decode_batch(bytes.fromhex(hexes[example["name"]]))
        assert batch.to_json() == example["payload"]


def test_envelope_examples_decode_with_the_codec() -> None:
    for kind, name, payload in examples():
        raw = json.dumps(payload).encode()
        if kind in {"events", "pod"}:
            env = decode_envelope(raw, stream=kind)
            assert env.to_json() == payload, name
            assert env.typed().to_json() == payload["record"], name
        elif kind == "ack":
            assert decode_ack(raw).to_json() == payload, name
        elif kind == "status":
            assert decode_status(raw).to_json() == payload, name


# --- Rejections -----------------------------------------------------------------------------


def example(message_id: str, n: int = 0) -> dict[str, Any]:
    payload = ASYNCAPI["components"]["messages"][message_id]["examples"][n]["payload"]
    return copy.deepcopy(payload)


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("message_id", "n", "path", "value", "where"),
    [
        ("eventRecord", 0, "record.stop_id", ..., "$.record"),
        ("eventRecord", 0, "record.visit", "1", "$.record.visit"),
        ("eventRecord", 0, "record.lat", 91, "$.record.lat"),
        ("eventRecord", 0, "record.confirmed_by", "gps", "$.record.confirmed_by"),
        ("eventRecord", 0, "record.surprise", 1, "$.record"),
        ("eventRecord", 0, "record.type", "teleport", "$.record.type"),
        ("eventRecord", 0, "record.time", "2026-11-21 08:14:03", "$.record.time"),
        ("eventRecord", 0, "seq", 0, "$.seq"),
        ("eventRecord", 0, "stream", "pod", "$.stream"),
        ("eventRecord", 0, "device_id", "van/7", "$.device_id"),
        ("eventRecord", 0, "historical", "no", "$.historical"),
        ("eventRecord", 0, "v", 2, "$.v"),
        ("eventRecord", 1, "record.dwell_s", -1, "$.record.dwell_s"),
        ("eventRecord", 2, "record.kind", "on_time", "$.record.kind"),
        ("eventRecord", 7, "record.reason", "meh", "$.record.reason"),
        ("eventRecord", 7, "record.source", "usb", "$.record.source"),
        ("podRecord", 0, "record.jws", "not a jws", "$.record.jws"),
        ("podRecord", 0, "record.verdict", "near", "$.record.verdict"),
        ("podRecord", 0, "record.distance_m", "0", "$.record.distance_m"),
        ("podRecord", 0, "record.type", "arrival", "$.record.type"),
        ("podRecord", 0, "sent_at", ..., "$"),
        ("status", 0, "state", "asleep", "$.state"),
        ("status", 0, "health", [], "$.health"),
        ("ack", 0, "acks.pod", -1, "$.acks.pod"),
        ("ack", 0, "acks.status", 1, "$.acks"),
        ("ack", 1, "acks.telemetry", ..., "$.acks"),
        ("telemetryBatch", 0, "fixes.0.course_deg", 360.0, "$.fixes[0].course_deg"),
        ("telemetryBatch", 0, "fixes.0.mode", 4, "$.fixes[0].mode"),
        ("telemetryBatch", 0, "fixes.0.sats_used", 1.5, "$.fixes[0].sats_used"),
        ("telemetryBatch", 0, "fixes.0.alt_m", "high", "$.fixes[0].alt_m"),
        ("telemetryBatch", 0, "fixes.0.quality", ..., "$.fixes[0]"),
        ("telemetryBatch", 0, "fixes.1.seq", ..., "$.fixes[1]"),
        ("telemetryBatch", 0, "first_seq", 0, "$.first_seq"),
        ("config", 0, "revision", ..., "$"),
        ("config", 0, "telemetry.moving_period_s", 0, "$.telemetry.moving_period_s"),
        ("config", 0, "uplink.batch_max_fixes", 5000, "$.uplink.batch_max_fixes"),
        ("model", 0, "sha256", "ABC", "$.sha256"),
        ("model", 0, "size_bytes", 0, "$.size_bytes"),
        ("model", 0, "issued", "2026-11-21T19:00:00+01:00", "$.issued"),
        ("model", 0, "model_version", ..., "$"),
        ("model", 0, "url", "https://models.example.net/m.tflite", "$"),  # no unknown claim
        ("model", 1, "devices", [], "$.devices"),
        ("model", 1, "devices", ["van-7", "van-7"], "$.devices"),
        ("model", 1, "devices", ["van/7"], "$.devices[0]"),
        ("manifest", 0, "stops.0.lat", 95, "$.stops[0].lat"),
        ("fleetstreamPosition", 0, "records.1.hdop", "1", "$.records[1].hdop"),
        ("fleetstreamPosition", 0, "records.0.sats", 9, "$.records[0]"),
        ("fleetstreamPosition", 0, "records.0.mode", 7, "$.records[0].mode"),
        ("fleetstreamPosition", 0, "records.0.sats_used", ..., "$.records[0]"),
        ("fleetstreamPosition", 0, "records", [], "$.records"),
        ("fleetstreamPosition", 0, "seq", 1, "$"),
        ("fleetstreamEvent", 0, "records.0.seq", ..., "$.records[0]"),
        ("fleetstreamEvent", 0, "records.0.stop_id", 7, "$.records[0].stop_id"),
        ("fleetstreamEvent", 0, "records.0.bogus", 1, "$.records[0]"),
        ("fleetstreamPod", 0, "records.0.verified", False, "$.records[0].verified"),
    ],
)
def test_broken_examples_are_rejected_at_the_right_place(
    message_id: str, n: int, path: str, value: Any, where: str
) -> None:
    message = ASYNCAPI["components"]["messages"][message_id]
    doc = set_path(example(message_id, n), path, value)
    with pytest.raises(SchemaError) as info:
        schema.validate(kind_of(message), doc)
    err = info.value
    assert (err.kind, err.path) == (kind_of(message), where), str(err)
    assert str(err).startswith(f"{err.kind}: {where}: ")
    assert isinstance(err, CodecError)
    assert isinstance(err, ValueError)


def test_unknown_kinds_and_non_objects() -> None:
    with pytest.raises(UnknownSchemaError, match="no schema 'eta'"):
        schema.validate("eta", {})
    with pytest.raises(UnknownSchemaError):
        schema.schema("defs")
    with pytest.raises(SchemaError, match=r"ack: \$: \[\] is not of type 'object'"):
        schema.validate("ack", [])


# --- Real messages --------------------------------------------------------------------------


def run_pipeline(
    van: VanPipeline, fixes: list[Fix], scans: list[Scan]
) -> tuple[list[Record], list[Fix]]:
    """Records in publishing order, and the fixes telemetry selected."""
    records: list[Record] = []
    selected: list[Fix] = []
    pending = sorted(scans, key=lambda s: s.time)
    for fix in fixes:
        while pending and fix.time is not None and pending[0].time <= fix.time:
            records += van.on_scan(pending.pop(0))
        out = van.on_fix(fix)
        selected += [fix for r in out if isinstance(r, TelemetryPoint)]
        records += out
    for scan in pending:
        records += van.on_scan(scan)
    records += van.flush()
    return records, selected


@pytest.fixture(scope="module")
def simulated_day() -> tuple[list[Record], Ed25519PrivateKey]:
    """A generated town day through the real decoder and pipeline (as fleet-agent replay)."""
    config = ScenarioConfig(
        seed=5,
        n_stops=6,
        rate_hz=1,
        outages=OutageConfig(windows=(OutageWindow(start_s=600.0, duration_s=30.0),)),
    )
    scenario = generate(config)
    doc = build_manifest(scenario, seed=5)
    nmea = b"".join(epoch_bytes(e, config.talker) for e in scenario.epochs())
    log = build_scan_log(
        scenario, doc, seed=5, wrong_stop_rate=0.3, garbage_rate=0.3, duplicate_rate=0.2
    )
    scans = [Scan(time=parse_scan_time(s["time"]), raw=s["raw"], source=s["source"]) for s in log]
    key = Ed25519PrivateKey.generate()
    van = VanPipeline(parse_manifest(doc), pods=PodChain(doc["device_id"], key))
    records: list[Record] = []
    replay(io.BytesIO(nmea), scans, van, records.append)
    return records, key


def street_day() -> tuple[list[Record], list[Fix]]:
    """The exceptions a generated day rarely has: a late arrival, a repeat delivery, a
    halt and a route deviation, on tests/vanday.py's straight street."""
    m = manifest(
        [
            stop(
                "S1",
                0.0,
                parcels=[SSCC_1],
                window_start="2026-11-21T08:00:00Z",
                window_end="2026-11-21T08:30:00Z",
            ),
            stop("S2", 3000.0, parcels=[SSCC_2]),
        ],
        route=route_line([-1000.0, 0.0, 4000.0]),
    )
    van = VanPipeline(m, pods=PodChain("van-1", Ed25519PrivateKey.generate()))
    # Park at S1 two minutes, drive 600 m, halt 200 s, drive on, swerve 120 m off the
    # route for a minute, and come back.
    fixes = drive([(36, 10.0), (4, 1.0), (120, 0.0), (60, 10.0), (200, 0.0), (10, 10.0)], x0=-364)
    last = fixes[-1]
    assert last.time is not None
    for i in range(90):
        y = 120.0 if 10 <= i < 70 else 0.0
        fixes.append(fix_at(last.time + timedelta(seconds=1 + i), 700.0 + 5 * i, y, speed_mps=5.0))
    parked = T0 + timedelta(seconds=70)
    scans = [
        Scan(time=parked, raw="]C100" + SSCC_1, source="serial"),
        Scan(time=parked + timedelta(seconds=30), raw="]C100" + SSCC_1, source="hid"),
        Scan(time=parked + timedelta(seconds=40), raw="]C100" + SSCC_2, source="serial"),
        Scan(time=parked + timedelta(seconds=50), raw="]C1001061414123456789\x07", source="hid"),
        Scan(time=parked + timedelta(seconds=55), raw="JD0146000062812", source="serial"),
    ]
    return run_pipeline(van, fixes, scans)


def publish(records: list[Record]) -> dict[str, list[bytes]]:
    """What the uplink would publish: one envelope per event or POD, with stream seqs,
    framed around each record's stored bytes as the uplink frames them."""
    out: dict[str, list[bytes]] = {"events": [], "pod": []}
    for r in records:
        if isinstance(r, TelemetryPoint):
            continue
        seq = len(out[r.stream]) + 1
        body = encode_record(r)
        out[r.stream].append(
            frame_record("van-0001", r.stream, seq, body, historical=seq % 3 == 0, sent_at=T0)
        )
    return out


def check_envelopes(payloads: dict[str, list[bytes]]) -> Counter[str]:
    """Each envelope fits its schema, decodes into its record's class, and is stored
    and republished by ingest's own code in a form that fits the stream's schema."""
    kinds: Counter[str] = Counter()
    for stream, items in payloads.items():
        for payload in items:
            env = decode_envelope(payload, stream=stream)
            schema.validate(stream, json.loads(payload))
            schema.validate(stream, env.to_json())
            record = env.typed()
            assert record.to_json() == env.record
            if isinstance(record, PodRecord):
                row = Pod(env.device_id, env.seq, env.historical, record, GENESIS_PREV, "ok")
                stream_doc = fleetstream.pod_record(row)
                schema.validate(
                    "fleetstream-pod", {"device_id": env.device_id, "records": [stream_doc]}
                )
            else:
                event = StopEvent(env.device_id, env.seq, env.historical, record)
                stream_doc = fleetstream.event_record(event)
                schema.validate(
                    "fleetstream-event", {"device_id": env.device_id, "records": [stream_doc]}
                )
            reason = env.record.get("reason")
            kinds[env.record["type"] + (f"/{reason}" if reason else "")] += 1
    return kinds


def test_every_message_of_a_simulated_day_fits_the_contract(
    simulated_day: tuple[list[Record], Ed25519PrivateKey],
) -> None:
    messages, key = simulated_day
    payloads = publish(messages)
    kinds = check_envelopes(payloads)
    assert kinds["arrival"] == kinds["departure"] == 6
    assert kinds["pod"] >= 5
    assert sum(v for k, v in kinds.items() if k.startswith("scan_rejected/")) >= 3
    # The PODs that went through the envelope still verify as a chain from genesis.
    tokens = [decode_envelope(p).record["jws"] for p in payloads["pod"]]
    report = verify_chain(tokens, key.public_key(), start=ChainState())
    assert report.valid, report.problems
    assert report.ok == len(tokens) == kinds["pod"]


def test_exceptions_of_a_street_day_fit_the_contract() -> None:
    messages, _ = street_day()
    kinds = check_envelopes(publish(messages))
    expected = {
        "arrival",
        "window",
        "pod",
        "scan_rejected/already_delivered",
        "scan_rejected/wrong_stop",
        "scan_rejected/unreadable",
        "scan_rejected/not_on_manifest",
        "departure",
        "halt",
        "halt_end",
        "deviation",
        "deviation_end",
    }
    assert expected <= set(kinds), kinds


def test_telemetry_of_a_simulated_day_fits_the_contract() -> None:
    records, selected = street_day()
    points = [r for r in records if isinstance(r, TelemetryPoint)]
    assert len(points) == len(selected) > 20
    assert points == [TelemetryPoint.from_fix(f) for f in selected]
    numbered = list(enumerate(points, start=1))
    for start in range(0, len(numbered), 60):
        chunk = numbered[start : start + 60]
        batch = decode_batch(encode_batch("van-1", chunk[0][0], chunk, historical=False))
        schema.validate("telemetry-batch", batch.to_json())
        # The batch carries the very points the pipeline made, every field.
        assert list(batch.points) == chunk
        rows = [Position(batch.device_id, seq, batch.historical, p) for seq, p in batch.points]
        stream_doc = {
            "device_id": "van-1",
            "records": [fleetstream.position_record(r) for r in rows],
        }
        schema.validate("fleetstream-position", stream_doc)


def test_status_and_ack_of_the_codec_fit_the_contract() -> None:
    schema.validate("status", json.loads(encode_status("van-7", "offline")))
    birth = encode_status("van-7", "online", time=T0, health={"outbox_records": 3, "gnss": "3d"})
    schema.validate("status", json.loads(birth))
    ack = encode_ack("van-7", {"telemetry": 120, "events": 0, "pod": 2**63 - 1}, time=T0)
    schema.validate("ack", json.loads(ack))


def test_decoder_sketch_in_the_docs_agrees_with_the_codec() -> None:
    text = (DOCS / "telemetry-batch.md").read_text("utf-8")
    section = text.split("## A short decoder", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 70
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the documentation's own code, nothing from outside
    hex_example = "".join(text.split("## Worked example", 1)[1].split("```\n", 2)[1].split())
    payloads = [bytes.fromhex(hex_example)]
    records, _ = street_day()
    points = [r for r in records if isinstance(r, TelemetryPoint)]
    payloads.append(
        encode_batch("van-1", 1, list(enumerate(points, start=1)), historical=True, last_seq=999)
    )
    for payload in payloads:
        sketch = namespace["decode"](payload)
        for fix in sketch["fixes"]:
            fix["time"] = format_utc(fix["time"])
        assert {"v": 1, **sketch} == decode_batch(payload).to_json()
