"""The agent's one settings tree (firmware_agent/settings.py): strict, layered, and the
remote config's schema held to it.

Layers, lowest first: defaults, the TOML file, ``FLEET_*`` variables, flags, then (while
the agent runs) the remote config for the keys it may change. A mistake anywhere is exit
status 2 naming the key and where its value came from; ``fleet-agent run`` and
``fleet-agent config`` are run as the installed commands for the ones users meet first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from firmware_agent.agent import AgentConfig
from firmware_agent.errors import ConfigError
from firmware_agent.eta.tracker import EtaConfig
from firmware_agent.feedback import FeedbackPins, FeedbackSettings
from firmware_agent.geofence.config import GeofenceConfig
from firmware_agent.gnss.reader import ReaderConfig
from firmware_agent.remote_config import SETTINGS, apply_config, parse_config
from firmware_agent.run_cli import build_config, settings
from firmware_agent.scan.serial_reader import ScannerConfig
from firmware_agent.settings import (
    AgentSettings,
    LoadedSettings,
    bounds,
    environment_variables,
    is_loopback,
    leaves,
    load_settings,
    remote_settings,
    to_toml,
)
from firmware_agent.sources import HidScan, ScanLog, SerialScan, TcpGnss
from firmware_agent.telemetry import TelemetryConfig
from firmware_agent.uplink.mqtt import UplinkConfig
from firmware_agent.van import VanConfig
from tests.idle_agent import run_args

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "firmware_agent" / "contract" / "schemas" / "config.schema.json"
FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _refusal(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(_toml(tmp_path, text), environ or {})
    return str(caught.value)


def _agent_env(**extra: str) -> dict[str, str]:
    # The test process's environment without the agent's own variables (CI's
    # FLEET_REQUIRE_CORPUS and the like stay: they are not the agent's).
    env = {k: v for k, v in os.environ.items() if k not in environment_variables()}
    env.pop("FLEET_CONFIG", None)
    return {**env, **extra}


def _fleet_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLEET_AGENT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env or _agent_env(),
    )


# -- strict: unknown keys and variables, bad values, wrong types ---------------------


@pytest.mark.parametrize(
    ("text", "key", "table"),
    [
        ("[mqtt]\nhots = 'broker.example.com'\n", "mqtt.hots", "[mqtt]"),
        ("devce_id = 'van-1'\n", "devce_id", "(top level)"),
        ("[geofence]\nborder = 30\n", "geofence.border", "[geofence]"),
        ("[mqtts]\nhost = 'x'\n", "mqtts", "[mqtts]"),
        (
            "[[scanners]]\nkind = 'serial'\nport = '/dev/x'\nbaudrate = 9600\n",
            "scanners[1].baudrate",
            "[[scanners]] #1",
        ),
    ],
)
def test_an_unknown_key_is_refused_naming_it_and_its_table(
    tmp_path: Path, text: str, key: str, table: str
) -> None:
    message = _refusal(tmp_path, text)
    assert f"{key}: unknown key" in message
    assert f"{tmp_path / 'agent.toml'} {table}" in message


def test_the_typo_of_the_issue_is_named_with_the_key_it_resembles(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "[mqtt]\nhots = 'broker.example.com'\n")
    assert "did you mean 'host'?" in message


def test_an_unknown_fleet_variable_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"FLEET_MQTT_HOTS": "broker", "FLEET_MQTT_HOST": "127.0.0.1"})
    assert "FLEET_MQTT_HOTS (did you mean FLEET_MQTT_HOST?)" in str(caught.value)
    # The old names are unknown now, and said to be.
    with pytest.raises(ConfigError, match="FLEET_TLS_CA"):
        load_settings(None, {"FLEET_TLS_CA": "/etc/ca.pem"})


def test_the_variables_of_the_projects_other_programs_are_not_the_agents() -> None:
    loaded = load_settings(
        None,
        {
            "FLEET_INGEST_MQTT_HOST": "x",
            "FLEET_REQUIRE_CORPUS": "1",
            "FLEET_E2E_SEED": "3",
            "FLEET_TEST_PG_DSN": "host=x",
            "FLEET_BENCH_PG_DSN": "host=x",
            "FLEET_VENV": ".venv",
            "FLEET_SIM_SPEED": "1",
            "FLEETING": "not ours",
        },
    )
    assert loaded.settings == AgentSettings()


@pytest.mark.parametrize(
    ("text", "key", "got"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port", "70000"),
        ("[geofence]\nindex_cell_m = 0.001\n", "geofence.index_cell_m", "0.001"),
        ("[geofence]\nborder_m = 0\n", "geofence.border_m", "0"),
        ("[uplink]\nbatch_max_fixes = 5000\n", "uplink.batch_max_fixes", "5000"),
        ("[eta]\nheartbeat_stops = -1\n", "eta.heartbeat_stops", "-1"),
        ("[telemetry]\ndistance_m = inf\n", "telemetry.distance_m", "inf"),
        ("[gnss]\nsource = 'usb'\n", "gnss.source", "'usb'"),
        ("device_id = 'van 1'\n", "device_id", "'van 1'"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_key_value_and_file(
    tmp_path: Path, text: str, key: str, got: str
) -> None:
    message = _refusal(tmp_path, text)
    assert message.startswith(f"invalid settings: {key}: ")
    assert f"got {got} (from {tmp_path / 'agent.toml'} " in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = '8883'\n", "mqtt.port"),
        ("[mqtt]\nhost = 127\n", "mqtt.host"),
        ("[geofence]\nconfirm_min_fixes = 3.5\n", "geofence.confirm_min_fixes"),
        ("[geofence]\nborder_m = '20'\n", "geofence.border_m"),
        ("[eta]\nenabled = 1\n", "eta.enabled"),
        ("[eta]\nmodel_keys = 'a.pem'\n", "eta.model_keys"),
        ("[feedback]\nbuzzer = true\n", "feedback.buzzer"),
        ("mqtt = 'broker'\n", "mqtt"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    message = _refusal(tmp_path, text)
    assert message.startswith(f"invalid settings: {key}: Input should be")


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "[mqtt]\nhots = 'x'\nport = 0\n[van]\nmax_fix_age_s = -1\n")
    assert "mqtt.hots: unknown key" in message
    assert "mqtt.port: " in message
    assert "van.max_fix_age_s: " in message


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"FLEET_MQTT_PORT": "eighty"}, "mqtt.port"),
        ({"FLEET_ETA_ENABLED": "maybe"}, "eta.enabled"),
        ({"FLEET_GEOFENCE_BORDER_M": "20m"}, "geofence.border_m"),
    ],
)
def test_a_variable_that_is_not_of_its_keys_type_names_both(
    environ: dict[str, str], key: str
) -> None:
    ((name, value),) = environ.items()
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    assert str(caught.value).startswith(f"{key}: ")
    assert f"got {value!r} (from environment variable {name})" in str(caught.value)


def test_a_variable_out_of_range_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"FLEET_GEOFENCE_BORDER_M": "5000"})
    assert "geofence.border_m: " in str(caught.value)
    assert "(from environment variable FLEET_GEOFENCE_BORDER_M)" in str(caught.value)


def test_a_bad_flag_names_the_flag(tmp_path: Path) -> None:
    args = run_args("--set", "geofence.border_m=-3", "--mqtt-port", "0")
    with pytest.raises(ConfigError) as caught:
        settings(args, {})
    assert "geofence.border_m: " in str(caught.value)
    assert "(from flag --set geofence.border_m=-3)" in str(caught.value)
    assert "mqtt.port: " in str(caught.value)
    assert "(from flag --mqtt-port)" in str(caught.value)
    with pytest.raises(ConfigError, match=r"--set geofence\.bordr_m=3: not KEY=VALUE"):
        settings(run_args("--set", "geofence.bordr_m=3"), {})


def test_cross_field_rules_name_both_keys_and_sources(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "[geofence]\ndeviation_clear_m = 80\n")
    assert "geofence.deviation_clear_m: 80 (from " in message
    assert "exceeds geofence.deviation_m 75 (from default)" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[gnss]\nsource = 'file'\n", "source = 'file' needs file"),
        ("[gnss]\nsource = 'tcp'\n", "source = 'tcp' needs address"),
        ("[[scanners]]\nkind = 'hid'\n", "kind = 'hid' needs device"),
        (
            "[[scanners]]\nkind = 'log'\nfile = 'a'\nport = '/dev/x'\n",
            "port is for kind = 'serial'",
        ),
    ],
)
def test_a_source_without_what_it_reads_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in _refusal(tmp_path, text)


# -- through the installed command -------------------------------------------------


def test_fleet_agent_run_exits_2_on_the_issues_typo_naming_key_and_file(tmp_path: Path) -> None:
    config = _toml(tmp_path, "device_id = 'van-1'\n[mqtt]\nhots = 'broker.example.com'\n")
    proc = _fleet_agent("run", "--config", str(config), "--nmea-file", "/dev/null")
    assert proc.returncode == 2, proc.stderr
    assert "mqtt.hots: unknown key" in proc.stderr
    assert f"{config} [mqtt]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fleet_agent_run_exits_2_on_an_unknown_variable_and_a_bad_value(tmp_path: Path) -> None:
    proc = _fleet_agent(
        "run", "--device-id", "van-1", "--nmea-file", "/dev/null",
        env=_agent_env(FLEET_GEOFENCE_BORDR_M="30"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "FLEET_GEOFENCE_BORDR_M (did you mean FLEET_GEOFENCE_BORDER_M?)" in proc.stderr
    proc = _fleet_agent(
        "run", "--device-id", "van-1", "--nmea-file", "/dev/null",
        env=_agent_env(FLEET_MQTT_PORT="1883x"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "mqtt.port:" in proc.stderr
    assert "FLEET_MQTT_PORT" in proc.stderr


# -- layering ------------------------------------------------------------------------

LAYERS = "[mqtt]\nport = 1884\nkeepalive_s = 40\nwill_delay_s = 70\n"


@pytest.mark.parametrize(
    ("environ", "argv", "expected"),
    [
        # (keepalive_s, will_delay_s, session_expiry_s, port) and their sources
        ({}, (), ((40, "file"), (70, "file"), (86_400, "default"), (1884, "file"))),
        (
            {"FLEET_MQTT_KEEPALIVE_S": "50", "FLEET_MQTT_SESSION_EXPIRY_S": "60"},
            (),
            ((50, "env"), (70, "file"), (60, "env"), (1884, "file")),
        ),
        (
            {"FLEET_MQTT_KEEPALIVE_S": "50", "FLEET_MQTT_PORT": "1885"},
            ("--set", "mqtt.keepalive_s=60", "--mqtt-port", "1886"),
            ((60, "flag"), (70, "file"), (86_400, "default"), (1886, "flag")),
        ),
    ],
)
def test_each_layer_overrides_the_ones_below_and_says_so(
    tmp_path: Path,
    environ: dict[str, str],
    argv: tuple[str, ...],
    expected: tuple[tuple[int, str], ...],
) -> None:
    args = run_args("--config", str(_toml(tmp_path, LAYERS)), *argv)
    loaded = settings(args, environ)
    keys = ("keepalive_s", "will_delay_s", "session_expiry_s", "port")
    got = tuple(
        (getattr(loaded.settings.mqtt, key), loaded.source(("mqtt", key)).split(" ")[0])
        for key in keys
    )
    kinds = {"file": str(tmp_path / "agent.toml"), "env": "environment", "flag": "flag"}
    assert got == tuple((value, kinds.get(kind, kind)) for value, kind in expected)


def test_the_file_comes_from_fleet_config_unless_a_flag_names_one(tmp_path: Path) -> None:
    first = _toml(tmp_path, "[mqtt]\nport = 1001\n")
    second = tmp_path / "other.toml"
    second.write_text("[mqtt]\nport = 1002\n")
    assert load_settings(None, {"FLEET_CONFIG": str(first)}).settings.mqtt.port == 1001
    assert load_settings(second, {"FLEET_CONFIG": str(first)}).settings.mqtt.port == 1002


def test_flags_for_sources_replace_the_files_of_their_kind(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        "device_id = 'van-1'\n[gnss]\nport = '/dev/ttyA'\n"
        "[[scanners]]\nkind = 'serial'\nport = '/dev/ttyS'\n"
        "[[scanners]]\nkind = 'log'\nfile = 'a.jsonl'\n",
    )
    args = run_args("--config", str(config), "--nmea-file", "day.nmea", "--scanner-port", "/dev/x")
    loaded = settings(args, {})
    assert (loaded.settings.gnss.source, loaded.settings.gnss.file) == ("file", Path("day.nmea"))
    assert [(s.kind, s.port, s.file) for s in loaded.settings.scanners] == [
        ("log", None, Path("a.jsonl")),
        ("serial", "/dev/x", None),
    ]
    built = build_config(args, loaded)
    assert built.gnss is None
    assert built.nmea_file == Path("day.nmea")
    assert built.scanners == (ScanLog(Path("a.jsonl")), SerialScan(ScannerConfig(port="/dev/x")))


def _distinct(info: Any, default: Any) -> Any:
    # A valid value that differs from the default, within the field's range.
    limits = bounds(info)
    high = limits.get("maximum", default * 4 + 4)
    value = (default + high) / 2 if default != high else default / 2
    return int(value) if isinstance(default, int) else value


def test_every_pipeline_and_uplink_setting_reaches_the_agent(tmp_path: Path) -> None:
    """The issue: none of the 39 pipeline settings could be set in agent.toml."""
    lines: dict[str, list[str]] = {}
    expected: dict[tuple[str, str], Any] = {}
    for path, info in leaves():
        if path[0] not in (*remote_settings(), "mqtt"):
            continue
        section, key = path
        if info.annotation not in (int, float) or key in ("port", "deviation_clear_m"):
            continue
        expected[(section, key)] = _distinct(info, info.default)
        lines.setdefault(section, []).append(f"{key} = {expected[(section, key)]!r}")
    assert sum(1 for section, _ in expected if section != "mqtt" and section != "uplink") >= 36
    text = "device_id = 'van-1'\n" + "".join(
        f"[{section}]\n" + "\n".join(body) + "\n" for section, body in lines.items()
    )
    args = run_args("--config", str(_toml(tmp_path, text)), "--nmea-file", "day.nmea")
    built = build_config(args, settings(args, {}))
    targets = {
        "telemetry": built.van.telemetry,
        "geofence": built.van.geofence,
        "eta": built.van.eta,
        "van": built.van,
        "uplink": built.uplink,
        "mqtt": built.uplink,
    }
    got = {(section, key): getattr(targets[section], key) for section, key in expected}
    assert got == expected


# -- the remote layer on top -------------------------------------------------------


def test_the_remote_config_overrides_its_keys_over_every_local_layer(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        "device_id = 'van-1'\n[geofence]\nborder_m = 25\nhalt_after_s = 200\n"
        "[uplink]\nbatch_max_fixes = 10\nwindow = 8\n",
    )
    args = run_args(
        "--config", str(config), "--nmea-file", "d.nmea", "--set", "geofence.border_m=26"
    )
    built = build_config(args, settings(args, {"FLEET_UPLINK_BATCH_MAX_FIXES": "11"}))
    assert (built.van.geofence.border_m, built.uplink.batch_max_fixes) == (26, 11)
    remote = parse_config(b'{"v": 1, "revision": 3, "geofence": {"border_m": 40}, '
                          b'"uplink": {"batch_max_fixes": 99}}')  # fmt: skip
    van, uplink = apply_config(remote, van=built.van, uplink=built.uplink)
    assert (van.geofence.border_m, uplink.batch_max_fixes) == (40, 99)
    # What it does not name stays the local layers'.
    assert (van.geofence.halt_after_s, uplink.window) == (200, 8)


# -- the TLS rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("broker.example.com", False),
        ("10.0.0.5", False),
        ("localhost.example.com", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_is_an_address_or_localhost_never_a_resolved_name(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["broker.example.com", "10.0.0.5", "2001:db8::1"])
def test_plain_text_off_this_machine_is_refused(host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"FLEET_MQTT_HOST": host})
    assert f"mqtt.host: {host!r} (from environment variable FLEET_MQTT_HOST)" in str(caught.value)
    assert "mqtt.tls = false" in str(caught.value)


def test_tls_or_an_explicit_false_lets_a_remote_broker_through(tmp_path: Path) -> None:
    env = {"FLEET_MQTT_HOST": "broker.example.com"}
    with_ca = load_settings(None, {**env, "FLEET_MQTT_TLS_CA": "/etc/ca.pem"}).settings
    assert with_ca.mqtt.tls_ca == Path("/etc/ca.pem")
    plain = load_settings(_toml(tmp_path, "[mqtt]\ntls = false\n"), env).settings
    assert (plain.mqtt.tls, plain.mqtt.tls_ca) == (False, None)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[mqtt]\ntls = true\n", "mqtt.tls: true (from "),
        ("[mqtt]\ntls = false\ntls_ca = '/ca.pem'\n", "say one or the other"),
        ("[mqtt]\ntls_cert = '/c.pem'\n", "need mqtt.tls_ca"),
    ],
)
def test_contradicting_tls_settings_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in _refusal(tmp_path, text)


def test_fleet_agent_run_refuses_plain_text_to_a_remote_broker(tmp_path: Path) -> None:
    proc = _fleet_agent(
        "run", "--device-id", "van-1", "--nmea-file", "/dev/null", "--mqtt-host", "192.0.2.1"
    )
    assert proc.returncode == 2, proc.stderr
    assert "mqtt.host: '192.0.2.1' (from flag --mqtt-host) is not a loopback address" in proc.stderr


def test_fleet_agent_run_warns_at_start_when_told_to_send_in_the_clear(tmp_path: Path) -> None:
    nmea = tmp_path / "none.nmea"
    nmea.write_bytes(b"")
    # 192.0.2.1 (TEST-NET-1) never answers: the agent starts and keeps trying; the warning
    # is what this test waits for.
    proc = subprocess.Popen(
        [
            str(FLEET_AGENT), "run", "--device-id", "van-1", "--state-dir", str(tmp_path / "s"),
            "--nmea-file", str(nmea), "--mqtt-host", "192.0.2.1", "--no-tls",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=_agent_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen += line
            if "plain text" in line or not line:
                break
        assert "WARNING" in seen
        assert "MQTT in plain text to 192.0.2.1:1883" in seen
        assert "(mqtt.tls = false, from flag --no-tls)" in seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- fleet-agent config ------------------------------------------------------------


def test_fleet_agent_config_prints_toml_that_loads_back_to_the_same_settings(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.json").write_text(
        '{"v": 1, "revision": 7, "geofence": {"border_m": 44}}', encoding="utf-8"
    )
    config = _toml(
        tmp_path,
        f"device_id = 'van-1'\nstate_dir = '{state}'\n[geofence]\nborder_m = 30\n"
        "[[scanners]]\nkind = 'hid'\ndevice = '/dev/input/event3'\n",
    )
    proc = _fleet_agent(
        "config", "--config", str(config), "--mqtt-port", "1999",
        env=_agent_env(FLEET_ETA_MODEL_KEYS="/k/a.pem:/k/b.pem"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    assert "port = 1999  # flag --mqtt-port" in lines
    assert (
        'model_keys = ["/k/a.pem", "/k/b.pem"]  # environment variable FLEET_ETA_MODEL_KEYS'
        in lines
    )
    assert "max_hdop = 5.0  # default" in lines
    assert f'device_id = "van-1"  # {config} (top level)' in lines
    assert f'device = "/dev/input/event3"  # {config} [[scanners]] #1' in lines
    # The stored remote config shows, with the agent's own value beside it.
    assert "border_m = 44.0  # remote config revision 7; own: 30.0" in lines
    # Without the remote overlay, the printed file is the settings it was printed from.
    printed = tomllib.loads(out)
    printed["geofence"]["border_m"] = 30.0
    again = tmp_path / "again.toml"
    again.write_text(to_toml_without_remote(printed), encoding="utf-8")
    assert (
        load_settings(again, {}).settings
        == load_settings(
            config,
            {"FLEET_MQTT_PORT": "1999", "FLEET_ETA_MODEL_KEYS": "/k/a.pem:/k/b.pem"},
        ).settings
    )


def to_toml_without_remote(doc: dict[str, Any]) -> str:
    """``doc`` (as tomllib read it) written back with the module's own writer."""
    loaded = LoadedSettings(settings=AgentSettings.model_validate(doc), file=None, sources={})
    return to_toml(loaded)


def test_the_printed_defaults_load_back_to_the_defaults(tmp_path: Path) -> None:
    text = to_toml(load_settings(None, {}))
    assert load_settings(_toml(tmp_path, text), {}).settings == AgentSettings()


def test_fleet_agent_config_exits_2_on_invalid_settings_and_lists_variables(
    tmp_path: Path,
) -> None:
    proc = _fleet_agent("config", "--config", str(_toml(tmp_path, "[van]\ndedup_window_s = 0\n")))
    assert proc.returncode == 2
    assert "van.dedup_window_s: " in proc.stderr
    proc = _fleet_agent("config", "--variables")
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split("\t") for line in proc.stdout.splitlines())
    assert listed["FLEET_MQTT_HOST"] == "mqtt.host"
    assert listed["FLEET_GEOFENCE_BORDER_M"] == "geofence.border_m"
    assert len(listed) == len(environment_variables())


# -- one definition: the schema, the remote parser and the dataclasses --------------


def test_every_setting_has_its_own_variable() -> None:
    variables = environment_variables()
    assert len(variables) == len(list(leaves()))
    assert variables["FLEET_DEVICE_ID"] == ("device_id",)
    assert variables["FLEET_ETA_MODEL_KEYS"] == ("eta", "model_keys")


def test_the_remote_schema_holds_exactly_the_remote_settings_with_their_ranges() -> None:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    props = schema["properties"]
    sections = {k: v["properties"] for k, v in props.items() if v.get("type") == "object"}
    tree = remote_settings()
    assert set(sections) == set(tree)
    for section, keys in tree.items():
        assert set(sections[section]) == set(keys), section
        for key, info in keys.items():
            spec = sections[section][key]
            kind = "integer" if info.annotation is int else "number"
            ranges = {k: v for k, v in spec.items() if k not in ("type", "description")}
            assert (spec["type"], ranges) == (kind, bounds(info)), f"{section}.{key}"


def test_the_remote_parser_takes_the_trees_remote_settings() -> None:
    assert {s: set(keys) for s, keys in SETTINGS.items()} == {
        s: set(keys) for s, keys in remote_settings().items()
    }
    # The 39 pipeline settings the issue counts, the two reason-card waits, the four
    # of sequence deviations (eta.passed_*), the two of events batching and the three
    # of the dwell (eta.dwell_*), eta.late_probability and the three of the near rule
    # (eta.near_*) (issue 15).
    assert sum(len(keys) for keys in SETTINGS.values()) == 54


@pytest.mark.parametrize(
    ("section", "instance"),
    [
        ("telemetry", TelemetryConfig()),
        ("geofence", GeofenceConfig()),
        ("eta", EtaConfig()),
        ("van", VanConfig()),
        ("uplink", UplinkConfig(device_id="van-1")),
        ("mqtt", UplinkConfig(device_id="van-1")),
        ("feedback", FeedbackPins()),
        ("gnss", ReaderConfig(port="/dev/x")),
        (
            "outbox",
            AgentConfig(state_dir=Path(), uplink=UplinkConfig(device_id="v"), nmea_file=Path()),
        ),
    ],
)
def test_the_trees_defaults_are_the_components_own(section: str, instance: Any) -> None:
    names = {"baud": "baudrate", "budget_bytes": "outbox_budget_bytes"}
    own = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    shared = 0
    for path, info in leaves():
        sec, key = path if len(path) == 2 else ("", path[0])
        if sec == section and names.get(key, key) in own and key != "port":
            assert info.default == own[names.get(key, key)], f"{section}.{key}"
            shared += 1
    assert shared >= 1


def test_the_operator_guide_lists_every_key_and_its_variable() -> None:
    guide = (ROOT / "docs" / "configuration.md").read_text("utf-8")
    for name, path in environment_variables().items():
        assert f"| `{'.'.join(path)}` |" in guide, path
        assert f"`{name}`" in guide, name


def test_an_old_scanner_table_points_to_the_new_one(tmp_path: Path) -> None:
    message = _refusal(tmp_path, "[scanner]\nport = '/dev/fleet/scanner'\n")
    assert "scanner: unknown key; did you mean 'scanners'?" in message


@pytest.mark.parametrize(
    ("value", "pin"), [("17", 17), ("GPIO17", "GPIO17"), ("false", False), ("BOARD11", "BOARD11")]
)
def test_a_pin_from_the_environment_is_a_number_a_name_or_not_fitted(
    value: str, pin: int | str | bool
) -> None:
    loaded = load_settings(None, {"FLEET_FEEDBACK_BUZZER": value})
    assert loaded.settings.feedback.buzzer == pin
    assert type(loaded.settings.feedback.buzzer) is type(pin)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[gnss]\nsource = 'tcp'\naddress = '127.0.0.1:10110'\n",
            {"gnss": TcpGnss("127.0.0.1", 10110)},
        ),
        (
            "[[scanners]]\nkind = 'hid'\ndevice = '/dev/input/event3'\n",
            {"scanners": (HidScan("/dev/input/event3"),)},
        ),
        (
            "[[scanners]]\nkind = 'serial'\nport = '/dev/a'\n"
            "[[scanners]]\nkind = 'serial'\nport = '/dev/b'\n",
            {
                "scanners": (
                    SerialScan(ScannerConfig(port="/dev/a")),
                    SerialScan(ScannerConfig(port="/dev/b")),
                )
            },
        ),
        (
            "[feedback]\nkind = 'log'\nbuzzer = false\n",
            {"feedback": FeedbackSettings(kind="log", pins=FeedbackPins(buzzer=None))},
        ),
    ],
)
def test_the_sources_settings_build_the_agents_parts(
    tmp_path: Path, text: str, expected: dict[str, Any]
) -> None:
    config = _toml(tmp_path, "device_id = 'van-1'\n" + text)
    args = run_args("--config", str(config))
    built = build_config(args, settings(args, {}))
    for name, value in expected.items():
        assert getattr(built, name) == value


def test_run_needs_a_device_id_and_config_does_not(tmp_path: Path) -> None:
    args = run_args("--nmea-file", "day.nmea")
    loaded = settings(args, {})
    assert loaded.settings.device_id is None
    with pytest.raises(ConfigError, match="device_id: required"):
        build_config(args, loaded)
