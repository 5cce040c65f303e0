"""The config downlink: parsing and validation held to config.schema.json, the overrides
applied to the agent's settings, the revision rule, the stored copy; and a van that
acts on a retained config from a real Mosquitto, refuses an old one, and starts on the
stored one after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.envelope import decode_status
from firmware_agent.contract.errors import CodecError
from firmware_agent.errors import RemoteConfigError
from firmware_agent.eta.predictor import EtaPredictor
from firmware_agent.eta.tracker import EtaConfig
from firmware_agent.geofence import GeofenceConfig
from firmware_agent.pod.chain import PodChain
from firmware_agent.remote_config import (
    MAX_CONFIG_BYTES,
    SETTINGS,
    RemoteConfig,
    RemoteConfigStore,
    admit,
    apply_config,
    parse_config,
)
from firmware_agent.scan.types import Scan
from firmware_agent.telemetry import TelemetryConfig
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.van import VanConfig, VanPipeline
from tests.broker import Mosquitto
from tests.nmea import line
from tests.vanday import T0, drive, fix_at, manifest, route_line, stop

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "firmware_agent" / "contract" / "schemas"
DEVICE = "van-0042"
SSCC = "106141412345678908"


def _asyncapi_config_example() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text("utf-8"))
    example: dict[str, Any] = doc["components"]["messages"]["config"]["examples"][0]["payload"]
    return example


EXAMPLE = _asyncapi_config_example()


def _schema_validator() -> Draft202012Validator:
    # The schema files themselves, not firmware_agent.contract.schema: the agent's checks are
    # held to the contract as written.
    docs = [json.loads(p.read_text("utf-8")) for p in SCHEMAS.glob("*.schema.json")]
    registry: Registry[Any] = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs
    )
    config = json.loads((SCHEMAS / "config.schema.json").read_text("utf-8"))
    return Draft202012Validator(config, registry=registry)


SCHEMA = _schema_validator()


def payload(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def config(revision: int, **sections: dict[str, Any]) -> RemoteConfig:
    parsed = parse_config(payload({"v": 1, "revision": revision, **sections}))
    assert parsed is not None
    return parsed


# -- parsing -------------------------------------------------------------------------


def test_the_asyncapi_example_parses_into_its_overrides() -> None:
    assert SCHEMA.is_valid(EXAMPLE)
    parsed = parse_config(payload(EXAMPLE))
    assert parsed is not None
    assert parsed.revision == 3
    assert parsed.issued_at == dt.datetime(2026, 11, 20, 18, 0, tzinfo=dt.UTC)
    assert dict(parsed.telemetry) == {"moving_period_s": 3.0, "distance_m": 60.0}
    assert dict(parsed.uplink) == {"batch_max_fixes": 60, "batch_max_age_s": 60.0}
    assert dict(parsed.geofence) == {"halt_after_s": 300.0, "confirm_min_fixes": 3}
    assert dict(parsed.van) == {"max_fix_age_s": 15.0}
    assert type(parsed.uplink["batch_max_fixes"]) is int
    assert type(parsed.geofence["confirm_min_fixes"]) is int
    assert parsed.ignored == ()
    assert parsed.raw == payload(EXAMPLE)


def test_only_v_and_revision_are_required() -> None:
    parsed = parse_config(b'{"v": 1, "revision": 1}')
    assert parsed == RemoteConfig(revision=1)
    assert parsed is not None
    assert parsed.issued_at is None
    assert dict(parsed.telemetry) == dict(parsed.geofence) == {}


def test_the_empty_payload_clears_and_nothing_else_does() -> None:
    assert parse_config(b"") is None
    for almost_empty in (b" ", b"\n", b"{}", b"null"):
        with pytest.raises(RemoteConfigError):
            parse_config(almost_empty)


def test_unknown_sections_and_keys_are_ignored_whatever_they_hold() -> None:
    doc = {
        "v": 1,
        "revision": 7,
        "model": {"id": "eta-1"},
        "future": [1, 2],
        "telemetry": {"distance_m": 50, "adaptive": "yes", "moving_period_s": 4},
        "geofence": {"border_m": 10.5, "polygon_mode": None},
    }
    assert SCHEMA.is_valid(doc)
    parsed = parse_config(payload(doc))
    assert parsed is not None
    assert dict(parsed.telemetry) == {"distance_m": 50.0, "moving_period_s": 4.0}
    assert type(parsed.telemetry["distance_m"]) is float
    assert dict(parsed.geofence) == {"border_m": 10.5}
    assert parsed.ignored == ("model", "future", "telemetry.adaptive", "geofence.polygon_mode")


def test_an_integral_float_counts_as_an_integer_as_in_json_schema() -> None:
    doc = {"v": 1, "revision": 2.0, "uplink": {"batch_max_fixes": 30.0}}
    assert SCHEMA.is_valid(doc)
    parsed = parse_config(payload(doc))
    assert parsed is not None
    assert parsed.revision == 2
    assert parsed.uplink["batch_max_fixes"] == 30
    assert type(parsed.uplink["batch_max_fixes"]) is int


def _with(**changes: Any) -> dict[str, Any]:
    return {"v": 1, "revision": 4, **changes}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no v", {"revision": 4}, "v"),
    ("v 2", _with(v=2), "v"),
    ("v as a string", _with(v="1"), "v"),
    ("v true", _with(v=True), "v"),
    ("no revision", {"v": 1}, "revision"),
    ("revision 0", _with(revision=0), "revision"),
    ("revision negative", _with(revision=-3), "revision"),
    ("revision a string", _with(revision="5"), "revision"),
    ("revision fractional", _with(revision=4.5), "revision"),
    ("revision true", _with(revision=True), "revision"),
    ("issued_at not UTC", _with(issued_at="2026-11-20T19:00:00+01:00"), "issued_at"),
    ("issued_at no zone", _with(issued_at="2026-11-20T18:00:00"), "issued_at"),
    ("issued_at a number", _with(issued_at=1763661600), "issued_at"),
    ("section a list", _with(telemetry=[1]), "telemetry"),
    ("section null", _with(geofence=None), "geofence"),
    ("zero period", _with(telemetry={"moving_period_s": 0}), "telemetry.moving_period_s"),
    ("negative distance", _with(telemetry={"distance_m": -1.0}), "telemetry.distance_m"),
    ("string value", _with(telemetry={"parked_period_s": "60"}), "telemetry.parked_period_s"),
    ("bool value", _with(geofence={"border_m": True}), "geofence.border_m"),
    ("null value", _with(geofence={"max_hdop": None}), "geofence.max_hdop"),
    ("batch too big", _with(uplink={"batch_max_fixes": 5000}), "uplink.batch_max_fixes"),
    ("batch zero", _with(uplink={"batch_max_fixes": 0}), "uplink.batch_max_fixes"),
    ("batch fractional", _with(uplink={"batch_max_fixes": 2.5}), "uplink.batch_max_fixes"),
    ("batch age zero", _with(uplink={"batch_max_age_s": 0.0}), "uplink.batch_max_age_s"),
    ("min fixes zero", _with(geofence={"confirm_min_fixes": 0}), "geofence.confirm_min_fixes"),
    ("van window negative", _with(van={"dedup_window_s": -5}), "van.dedup_window_s"),
    ("van fix age zero", _with(van={"max_fix_age_s": 0}), "van.max_fix_age_s"),
    ("eta cadence zero", _with(eta={"predict_every_s": 0}), "eta.predict_every_s"),
    ("eta heartbeat zero", _with(eta={"heartbeat_s": 0.0}), "eta.heartbeat_s"),
    ("eta move negative", _with(eta={"min_move_s": -1}), "eta.min_move_s"),
    ("eta fraction a string", _with(eta={"min_move_fraction": "0.2"}), "eta.min_move_fraction"),
    ("eta stops negative", _with(eta={"heartbeat_stops": -1}), "eta.heartbeat_stops"),
    ("eta stops fractional", _with(eta={"heartbeat_stops": 1.5}), "eta.heartbeat_stops"),
    ("eta section a number", _with(eta=5), "eta"),
]


@pytest.mark.parametrize(
    ("doc", "where"), [(d, w) for _, d, w in INVALID], ids=[n for n, *_ in INVALID]
)
def test_an_invalid_config_is_refused_naming_the_field(doc: dict[str, Any], where: str) -> None:
    assert not SCHEMA.is_valid(doc), "the case must be invalid by the contract too"
    with pytest.raises(RemoteConfigError) as caught:
        parse_config(payload(doc))
    assert caught.value.where == where
    assert str(caught.value).startswith(f"{where}: ")
    # The uplink counts a refused downlink by catching CodecError.
    assert isinstance(caught.value, CodecError)


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"\xff\xfe{}",
        b'{"v": 1, "revision": 4, "telemetry": {"distance_m": NaN}}',
        b'{"v": 1, "revision": 4, "geofence": {"border_m": Infinity}}',
        b"[1, 2]",
        b'"config"',
        b"[" * 100_000,
    ],
)
def test_bytes_that_are_no_json_object_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteConfigError):
        parse_config(data)


def test_an_oversized_payload_is_refused_before_parsing() -> None:
    doc = _with(padding="x" * MAX_CONFIG_BYTES)
    with pytest.raises(RemoteConfigError, match="larger than"):
        parse_config(payload(doc))


def test_a_huge_number_is_refused_not_crashed_on() -> None:
    with pytest.raises(RemoteConfigError) as caught:
        parse_config(b'{"v": 1, "revision": 4, "telemetry": {"distance_m": 1' + b"0" * 400 + b"}}")
    assert caught.value.where == "telemetry.distance_m"


def test_the_agent_knows_exactly_the_settings_of_the_schema() -> None:
    """Drift guard: a setting added to the schema, or to the agent, shows up here."""
    schema = json.loads((SCHEMAS / "config.schema.json").read_text("utf-8"))
    props = schema["properties"]
    sections = {k for k, v in props.items() if v.get("type") == "object"}
    assert sections == set(SETTINGS)
    for section, settings in SETTINGS.items():
        keys = props[section]["properties"]
        assert set(keys) == set(settings), section
        for key, setting in settings.items():
            assert setting.integer == (keys[key]["type"] == "integer"), f"{section}.{key}"
            assert setting.maximum == keys[key].get("maximum"), f"{section}.{key}"
            # 0 allowed: "minimum": 0; else > 0 ("exclusiveMinimum": 0, or "minimum": 1).
            assert setting.zero == (keys[key].get("minimum") == 0), f"{section}.{key}"


def test_every_setting_names_a_field_of_the_settings_it_overrides() -> None:
    targets = {
        "telemetry": TelemetryConfig,
        "geofence": GeofenceConfig,
        "uplink": UplinkConfig,
        "van": VanConfig,
        "eta": EtaConfig,
    }
    for section, settings in SETTINGS.items():
        names = {f.name for f in dataclasses.fields(targets[section])}
        assert set(settings) <= names, section


# -- applying ------------------------------------------------------------------------

BASE_UPLINK = UplinkConfig(device_id=DEVICE, host="broker.example", port=8883)


def test_apply_changes_only_the_named_settings() -> None:
    parsed = parse_config(payload(EXAMPLE))
    van, uplink = apply_config(parsed, van=VanConfig(), uplink=BASE_UPLINK)
    assert van.telemetry == TelemetryConfig(moving_period_s=3.0, distance_m=60.0)
    assert van.telemetry.parked_period_s == 60.0  # left out: the default
    assert van.geofence == GeofenceConfig(halt_after_s=300.0, confirm_min_fixes=3)
    assert van.geofence.border_m == 20.0
    assert van.max_fix_age_s == 15.0
    assert van.dedup_window_s == 10.0
    assert uplink == dataclasses.replace(BASE_UPLINK, batch_max_fixes=60, batch_max_age_s=60.0)
    assert (uplink.host, uplink.port, uplink.window) == ("broker.example", 8883, 32)


def test_apply_starts_from_the_agents_own_settings_each_time() -> None:
    own = VanConfig(telemetry=TelemetryConfig(parked_period_s=120.0), dedup_window_s=4.0)
    first, _ = apply_config(config(3, telemetry={"distance_m": 60}), van=own, uplink=BASE_UPLINK)
    assert (first.telemetry.distance_m, first.telemetry.parked_period_s) == (60.0, 120.0)
    # Revision 4 no longer names distance_m: back to the agent's own value.
    second, _ = apply_config(config(4, van={"dedup_window_s": 2}), van=own, uplink=BASE_UPLINK)
    assert second.telemetry == own.telemetry
    assert second.dedup_window_s == 2.0


def test_apply_none_is_the_agents_own_settings() -> None:
    own = VanConfig(max_fix_age_s=5.0)
    van, uplink = apply_config(None, van=own, uplink=BASE_UPLINK)
    assert van is own
    assert uplink is BASE_UPLINK


def test_the_eta_section_takes_zero_where_zero_turns_a_rule_off() -> None:
    doc = _with(eta={"move_confirm_s": 0, "heartbeat_stops": 0, "late_horizon_s": 5400})
    assert SCHEMA.is_valid(doc)
    parsed = parse_config(payload(doc))
    assert parsed is not None
    assert dict(parsed.eta) == {
        "move_confirm_s": 0.0,
        "heartbeat_stops": 0,
        "late_horizon_s": 5400.0,
    }
    assert type(parsed.eta["heartbeat_stops"]) is int
    van, _ = apply_config(parsed, van=VanConfig(), uplink=BASE_UPLINK)
    assert van.eta == EtaConfig(move_confirm_s=0.0, heartbeat_stops=0, late_horizon_s=5400.0)
    assert van.eta.min_move_s == EtaConfig().min_move_s  # left out: the default


def test_apply_starts_the_eta_settings_from_the_agents_own() -> None:
    own = VanConfig(eta=EtaConfig(heartbeat_s=600.0, min_move_s=90.0))
    van, _ = apply_config(config(2, eta={"min_move_s": 150}), van=own, uplink=BASE_UPLINK)
    assert (van.eta.min_move_s, van.eta.heartbeat_s) == (150.0, 600.0)
    van, _ = apply_config(config(3), van=own, uplink=BASE_UPLINK)
    assert van.eta == own.eta


def test_apply_refuses_settings_the_geofence_cannot_take() -> None:
    # Each value is valid alone; together with the default deviation_m (75) it is not.
    bad = config(5, geofence={"deviation_clear_m": 80})
    with pytest.raises(RemoteConfigError) as caught:
        apply_config(bad, van=VanConfig(), uplink=BASE_UPLINK)
    assert caught.value.where == "geofence"
    assert "deviation_clear_m" in str(caught.value)
    fine = config(5, geofence={"deviation_clear_m": 80, "deviation_m": 100})
    van, _ = apply_config(fine, van=VanConfig(), uplink=BASE_UPLINK)
    assert (van.geofence.deviation_m, van.geofence.deviation_clear_m) == (100.0, 80.0)


def test_apply_refuses_drive_past_distances_that_cannot_work_together() -> None:
    # passed_leave_m must exceed passed_near_m (default 100): a van could not be
    # "near" and "gone" at once.
    bad = config(6, eta={"passed_leave_m": 80})
    with pytest.raises(RemoteConfigError) as caught:
        apply_config(bad, van=VanConfig(), uplink=BASE_UPLINK)
    assert caught.value.where == "eta"
    assert "passed_leave_m" in str(caught.value)
    fine = config(6, eta={"passed_leave_m": 80, "passed_near_m": 50, "passed_watch_stops": 0})
    van, _ = apply_config(fine, van=VanConfig(), uplink=BASE_UPLINK)
    assert (van.eta.passed_near_m, van.eta.passed_leave_m, van.eta.passed_watch_stops) == (
        50.0,
        80.0,
        0,
    )


# -- the revision rule ---------------------------------------------------------------


def test_a_higher_revision_is_admitted() -> None:
    assert admit(None, config(1)) is True
    assert admit(config(3), config(4)) is True
    assert admit(config(3, telemetry={"distance_m": 9}), config(10)) is True


def test_the_running_config_again_is_nothing_to_do() -> None:
    running = config(3, telemetry={"distance_m": 60})
    # Re-sent by the broker at every reconnect, formatted differently or not.
    again = parse_config(b'{"revision":3,"telemetry":{"distance_m":60.0},"v":1}')
    assert admit(running, again) is False


@pytest.mark.parametrize(
    "offered",
    [config(2), config(3, telemetry={"distance_m": 61}), config(3)],
    ids=["older", "same revision, other settings", "same revision, fewer settings"],
)
def test_a_revision_not_above_the_running_one_is_refused(offered: RemoteConfig) -> None:
    running = config(3, telemetry={"distance_m": 60})
    with pytest.raises(RemoteConfigError) as caught:
        admit(running, offered)
    assert caught.value.where == "revision"
    assert f"{offered.revision} is not above the running 3" in str(caught.value)


def test_clearing_applies_unless_already_on_defaults() -> None:
    assert admit(config(3), None) is True
    assert admit(None, None) is False


# -- the pipeline takes new settings at runtime --------------------------------------


def _pipeline() -> VanPipeline:
    m = manifest([stop("S1", 0.0, parcels=[SSCC])])
    return VanPipeline(m, pods=PodChain("van-1", Ed25519PrivateKey.generate()))


def test_reconfigure_changes_the_running_sampler_and_keeps_its_state() -> None:
    van = _pipeline()
    parked = drive([(120, 0.0)], x0=-300)

    def telemetry(fixes: list[Any]) -> int:
        return sum(m.type == "telemetry" for f in fixes for m in van.on_fix(f))

    assert telemetry(parked[:60]) == 1  # the first fix; next due after 60 s parked
    new, _ = apply_config(
        config(2, telemetry={"parked_period_s": 10}), van=VanConfig(), uplink=BASE_UPLINK
    )
    van.reconfigure(new)
    # The sampler's last fix (t=0) is kept: due at once (t=60), then every 10 s.
    assert telemetry(parked[60:]) == 6
    assert van.config is new


def test_reconfigure_changes_geofence_and_scan_settings_and_keeps_stop_state() -> None:
    van = _pipeline()
    fixes = drive([(36, 10.0), (4, 1.0), (60, 0.0)], x0=-364)
    arrived = [m for f in fixes for m in van.on_fix(f) if m.type != "telemetry"]
    assert [m.type for m in arrived] == ["arrival"]
    new, _ = apply_config(
        config(2, geofence={"halt_after_s": 30, "border_m": 5}, van={"dedup_window_s": 60}),
        van=VanConfig(),
        uplink=BASE_UPLINK,
    )
    van.reconfigure(new)
    assert van.engine.config.halt_after_s == 30.0
    assert van.engine.config.border_m == 5.0
    assert van.engine.current_stop == "S1"  # still arrived
    t = T0 + dt.timedelta(seconds=100)
    scanned = van.on_scan(Scan(time=t, raw=SSCC, source="serial")) + van.flush()
    assert [m.type for m in scanned] == ["pod"]
    # 30 s later: within the new 60 s window (not the default 10 s), a duplicate.
    later = Scan(time=t + dt.timedelta(seconds=30), raw=SSCC, source="serial")
    assert van.on_scan(later) == []
    assert van.counts["duplicates"] == 1


def test_reconfigure_gives_the_running_eta_tracker_its_new_settings_and_keeps_its_day() -> None:
    m = manifest([stop("S1", 0.0), stop("S2", 1000.0)], route=route_line([-500.0, 1500.0]))
    # The baseline's ETAs of a parked van drift as its speed history fills: this van
    # publishes no moves, so that only the heartbeat speaks.
    own = VanConfig(eta=EtaConfig(min_move_s=1e6, near_min_move_s=1e6, far_min_move_s=1e6))
    van = VanPipeline(
        m,
        pods=PodChain("van-1", Ed25519PrivateKey.generate()),
        config=own,
        telemetry=False,
        eta=EtaPredictor.baseline("test"),
    )

    def etas(first_s: int, seconds: int) -> list[tuple[int, str, str]]:
        # Parked 500 m before S1.
        return [
            (t, msg.stop_id, msg.trigger)
            for t in range(first_s, first_s + seconds)
            for msg in van.on_fix(fix_at(T0 + dt.timedelta(seconds=t), -500.0))
            if msg.type == "eta"
        ]

    assert [(t, trigger) for t, _, trigger in etas(0, 60)] == [(0, "first"), (0, "first")]
    tracker = van.eta_tracker
    new, _ = apply_config(
        config(2, eta={"heartbeat_s": 120, "heartbeat_stops": 2}), van=own, uplink=BASE_UPLINK
    )
    van.reconfigure(new)
    assert van.eta_tracker is tracker
    assert tracker is not None
    assert tracker.config == dataclasses.replace(own.eta, heartbeat_s=120.0, heartbeat_stops=2)
    # No new "first": the published ETAs carry on; both stops' ETAs, published at t=0,
    # are 120 s old at t=120 (the default heartbeat is 15 min).
    assert etas(60, 70) == [(120, "S1", "heartbeat"), (120, "S2", "heartbeat")]


def test_reconfigure_rebuilds_the_geofence_indexes_for_their_new_reach() -> None:
    def deviations(config: VanConfig | None) -> list[str]:
        m = manifest([stop("S1", 0.0)], route=route_line([-2000.0, 2000.0]))
        van = VanPipeline(m, pods=PodChain("van-1", Ed25519PrivateKey.generate()))
        if config is not None:
            van.reconfigure(config)
        # 150 m north of the planned route for a minute.
        fixes = [
            fix_at(T0 + dt.timedelta(seconds=i), -1000.0 + 10 * i, 150.0, speed_mps=10.0)
            for i in range(60)
        ]
        return [msg.type for f in fixes for msg in van.on_fix(f) if msg.type != "telemetry"]

    assert deviations(None) == ["deviation"]  # beyond the default 75 m
    wider, _ = apply_config(
        config(2, geofence={"deviation_m": 300, "deviation_clear_m": 250}),
        van=VanConfig(),
        uplink=BASE_UPLINK,
    )
    assert deviations(wider) == []


# -- the stored copy -----------------------------------------------------------------


def test_the_store_keeps_the_payload_as_received(tmp_path: Path) -> None:
    store = RemoteConfigStore(tmp_path / "state" / "config.json")
    assert store.load() is None
    parsed = parse_config(payload(EXAMPLE) + b"\n")
    assert parsed is not None
    store.save(parsed)
    assert store.path.read_bytes() == payload(EXAMPLE) + b"\n"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load() == parsed
    assert list(store.path.parent.iterdir()) == [store.path]  # no temporary left
    newer = config(4, van={"max_fix_age_s": 20})
    store.save(newer)
    assert store.load() == newer
    store.clear()
    assert not store.path.exists()
    assert store.load() is None
    store.clear()  # nothing to clear: fine


def test_a_damaged_stored_config_is_an_error(tmp_path: Path) -> None:
    store = RemoteConfigStore(tmp_path / "config.json")
    store.path.write_bytes(b'{"v": 1, "revision": ')
    with pytest.raises(RemoteConfigError):
        store.load()


# -- a van on a real broker ----------------------------------------------------------


def _parked_nmea(path: Path) -> Path:
    # A parked van: a fix a second for 5 minutes of playback at real time.
    body = b""
    for i in range(300):
        t = (T0 + dt.timedelta(seconds=i)).strftime("%H%M%S.00")
        body += line(f"GPRMC,{t},A,4800.000,N,01100.000,E,0.0,0.0,211126,,,A")
    path.write_bytes(body)
    return path


async def _until(condition: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


async def _status_health(port: int) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"fleet/v1/{DEVICE}/status", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                return dict(decode_status(message.payload).health)
    raise AssertionError("no status")


async def _publish(port: int, data: bytes, *, retain: bool) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(f"fleet/v1/{DEVICE}/config", data, qos=1, retain=retain)


@pytest.mark.slow
def test_a_van_acts_on_the_retained_config_and_starts_on_it_again(tmp_path: Path) -> None:
    nmea = _parked_nmea(tmp_path / "still.nmea")
    state = tmp_path / "van"
    stored = state / "config.json"
    uplink = UplinkConfig(device_id=DEVICE, port=0)
    example = dict(EXAMPLE, model={"model_id": "eta-2"})  # a section this agent lacks

    async def run_van(broker: Mosquitto, scenario: Any) -> Agent:
        agent = Agent(
            AgentConfig(
                state_dir=state,
                uplink=dataclasses.replace(uplink, port=broker.port),
                nmea_file=nmea,
                speed=1.0,
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            await _until(lambda: agent.uplink is not None and agent.uplink.connected.is_set())
            await scenario(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return agent

    async def first_day(agent: Agent) -> None:
        assert agent.pipeline is not None
        assert agent.uplink is not None
        assert agent.health()["config_revision"] == 0
        await _publish(broker.port, payload(example), retain=True)
        await _until(lambda: agent.counts.configs == 1)
        # The running pipeline and uplink took it.
        telemetry = agent.pipeline.config.telemetry
        assert (telemetry.moving_period_s, telemetry.distance_m) == (3.0, 60.0)
        assert telemetry.parked_period_s == 60.0
        assert agent.pipeline.engine.config.halt_after_s == 300.0
        assert agent.pipeline.engine.config.confirm_min_fixes == 3
        assert agent.pipeline.engine.config.border_m == 20.0
        assert agent.pipeline.config.max_fix_age_s == 15.0
        assert (agent.uplink.config.batch_max_fixes, agent.uplink.config.batch_max_age_s) == (
            60,
            60.0,
        )
        assert agent.uplink.config.port == broker.port
        assert stored.read_bytes() == payload(example)
        assert agent.health()["config_revision"] == 3
        # The retained status says so at once, not only at the next connect.
        await _until(lambda: agent.uplink is not None and agent.uplink.counts.connects == 1)
        async with asyncio.timeout(5):
            while (await _status_health(broker.port))["config_revision"] != 3:
                await asyncio.sleep(0.05)
        assert agent.uplink.counts.connects == 1
        # An older revision is refused, counted, and changes nothing.
        await _publish(broker.port, payload(dict(EXAMPLE, revision=2)), retain=False)
        await _until(lambda: agent.counts.configs_refused == 1)
        assert agent.uplink.counts.downlink_errors == 1
        assert agent.counts.configs == 1
        assert agent.health()["config_revision"] == 3
        assert agent.pipeline.engine.config.halt_after_s == 300.0
        assert stored.read_bytes() == payload(example)

    async def after_restart(agent: Agent) -> None:
        assert agent.pipeline is not None
        assert agent.uplink is not None
        # The birth, published on connect before any downlink, already says 3: the
        # stored config was loaded at start.
        assert (await _status_health(broker.port))["config_revision"] == 3
        assert agent.pipeline.engine.config.halt_after_s == 300.0
        assert agent.uplink.config.batch_max_age_s == 60.0
        # The broker re-sends the retained config: the running one, no error.
        await _until(lambda: agent.uplink is not None and agent.uplink.counts.downlink >= 1)
        await asyncio.sleep(0.2)
        assert agent.uplink.counts.downlink_errors == 0
        assert (agent.counts.configs, agent.counts.configs_refused) == (0, 0)
        # Dispatch deletes the retained config: back to the defaults.
        await _publish(broker.port, b"", retain=True)
        await _until(lambda: agent.counts.configs == 1)
        assert agent.remote_config is None
        assert agent.health()["config_revision"] == 0
        assert agent.pipeline.config == VanConfig()
        assert agent.pipeline.engine.config == GeofenceConfig()
        assert agent.uplink.config == dataclasses.replace(uplink, port=broker.port)
        assert not stored.exists()

    with Mosquitto(tmp_path / "broker") as broker:
        asyncio.run(run_van(broker, first_day))
        asyncio.run(run_van(broker, after_restart))
