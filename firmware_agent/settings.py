"""Every setting of the van agent: one typed tree, layered, strict.

Layers, lowest first: the defaults below; the TOML file (``--config``, else
``$FLEET_CONFIG``, else :data:`DEFAULT_CONFIG` when it exists); one ``FLEET_*``
environment variable per key (``FLEET_`` + the key path in capitals joined by ``_``:
``FLEET_MQTT_HOST``, ``FLEET_GEOFENCE_BORDER_M``; :func:`environment_variables` lists
them); command-line flags (``fleet-agent run --mqtt-host``, and ``--set KEY=VALUE`` for
any key); then, while the agent runs, the remote ``config`` downlink
(:mod:`firmware_agent.remote_config`) for the keys marked :data:`REMOTE` here, which are
exactly the settings of ``config.schema.json`` (tests/test_settings.py holds the two
equal, ranges included).

Anything wrong stops the start: an unknown key or ``FLEET_`` variable, a value of the
wrong type or out of range is a :class:`~firmware_agent.errors.ConfigError` naming the
key and where its value came from (the file and table, the variable, the flag); ``fleet-
agent run`` exits 2 with it. The file is typed: ``port = "8883"`` is a string where an
integer belongs, refused; the environment and ``--set`` are text, read as the key's type
(``FLEET_MQTT_PORT=8883``, ``FLEET_ETA_ENABLED=off``; a list of paths separated by ``:`` or
``,``).

MQTT in plain text to anything but a loopback address is refused unless the settings
say so (``[mqtt] tls = false``); the agent then warns at every start.

Why pydantic and not pydantic-settings (measured on the dev machine, best of 7,
``python -X importtime`` and wall clock, docs/configuration.md): importing pydantic
costs ~55 ms on top of what ``fleet-agent run`` imports today (~400 ms), pydantic-settings
~70 ms plus python-dotenv; and pydantic-settings would still leave us to write what
matters here: refusing an unknown ``FLEET_`` variable (its environment source ignores
them), and naming where a bad value came from. Ingest's settings
(cloud_ingest/config.py) are done the same way.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from firmware_agent.contract.topics import valid_device_id
from firmware_agent.errors import ConfigError
from firmware_agent.geofence.config import LIMITS as GEOFENCE_LIMITS
from firmware_agent.geofence.config import GeofenceConfig

DEFAULT_CONFIG: Final = Path("/etc/fleet-agent/agent.toml")
DEFAULT_STATE_DIR: Final = Path("/var/lib/fleet-agent")
ENV_PREFIX: Final = "FLEET_"
# Names the file itself, so it is not a setting.
CONFIG_ENV: Final = "FLEET_CONFIG"
# FLEET_ variables that belong to other programs of the project, not to the agent:
# ingest's settings, the simulator's, and what the test suite, benchmarks and ./run
# read. Anything else starting with FLEET_ is the agent's, or a typo.
FOREIGN_ENV_PREFIXES: Final = (
    "FLEET_INGEST_",
    "FLEET_SIM_",
    "FLEET_TEST_",
    "FLEET_BENCH_",
    "FLEET_E2E_",
    "FLEET_REQUIRE_CORPUS",
    "FLEET_VENV",
)
# json_schema_extra of a setting the remote config may change (config.schema.json).
REMOTE: Final[dict[str, Any]] = {"remote": True}

FilePath = Annotated[Path, Field(strict=False)]  # TOML and the environment give text
Port = Annotated[int, Field(ge=1, le=65535)]
# gpiozero's pin names: 17, "GPIO17", "BOARD11"; false: not fitted.
Pin = StrictInt | StrictStr | Literal[False]

_GEOFENCE_DEFAULTS: Final = GeofenceConfig()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class MqttSettings(_Section):
    """The broker. TLS when ``tls_ca`` is set (``tls`` unset or true); ``tls = false``
    is the only way to talk plain text to a broker that is not on a loopback address."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 1883
    tls: bool | None = None
    tls_ca: FilePath | None = None
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    will_delay_s: int = Field(default=60, ge=0, le=86_400)
    session_expiry_s: int = Field(default=24 * 3600, ge=0, le=30 * 86_400)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=600)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)


class UplinkSettings(_Section):
    """How records go to the broker: the send window, telemetry batching, resends."""

    window: int = Field(default=32, ge=1, le=65_535)
    batch_max_fixes: int = Field(default=60, ge=1, le=4096, json_schema_extra=REMOTE)
    batch_max_age_s: float = Field(default=30.0, gt=0, json_schema_extra=REMOTE)
    # The events stream in batches (firmware_agent.uplink.batching): sent at this many
    # records, once the first is this old, or at once for a record dispatch must see
    # now (an arrival, a late_risk, ...); 1 record: one JSON envelope each, as before.
    events_batch_max_records: int = Field(default=32, ge=1, le=1024, json_schema_extra=REMOTE)
    # At most 50 s: a record sent more than 60 s after it was made is historical
    # (firmware_agent.contract.telemetry.HISTORICAL_AFTER_S), and a live one must not be.
    events_batch_max_age_s: float = Field(default=45.0, gt=0, le=50, json_schema_extra=REMOTE)
    resend_after_s: float = Field(default=30.0, gt=0)
    reconnect_resend_s: float = Field(default=5.0, gt=0)
    report_interval_s: float = Field(default=5.0, gt=0)
    # The retained status (its health: outbox depth, oldest unacknowledged age) again
    # this often while connected.
    status_every_s: float = Field(default=60.0, gt=0)


class TelemetrySettings(_Section):
    """Smart sampling (:class:`firmware_agent.telemetry.TelemetryConfig`)."""

    moving_period_s: float = Field(default=5.0, gt=0, json_schema_extra=REMOTE)
    parked_period_s: float = Field(default=60.0, gt=0, json_schema_extra=REMOTE)
    min_period_s: float = Field(default=1.0, gt=0, json_schema_extra=REMOTE)
    distance_m: float = Field(default=100.0, gt=0, json_schema_extra=REMOTE)
    heading_change_deg: float = Field(default=30.0, gt=0, json_schema_extra=REMOTE)
    speed_change_mps: float = Field(default=5.0, gt=0, json_schema_extra=REMOTE)
    moving_speed_mps: float = Field(default=2.0, gt=0, json_schema_extra=REMOTE)


def _geofence(name: str) -> Any:
    # The ranges are the geofence's own (LIMITS: GeofenceConfig checks them too), the
    # defaults GeofenceConfig's, with the reasoning behind each.
    low, high = GEOFENCE_LIMITS[name]
    default = getattr(_GEOFENCE_DEFAULTS, name)
    if low is None:
        return Field(default=default, gt=0, le=high, json_schema_extra=REMOTE)
    return Field(default=default, ge=low, le=high, json_schema_extra=REMOTE)


class GeofenceSettings(_Section):
    """Geofence thresholds (:class:`firmware_agent.geofence.config.GeofenceConfig`)."""

    max_hdop: float = _geofence("max_hdop")
    border_m: float = _geofence("border_m")
    depart_confirm_s: float = _geofence("depart_confirm_s")
    slow_speed_mps: float = _geofence("slow_speed_mps")
    confirm_dwell_s: float = _geofence("confirm_dwell_s")
    confirm_min_fixes: int = _geofence("confirm_min_fixes")
    revisit_dwell_s: float = _geofence("revisit_dwell_s")
    max_gap_s: float = _geofence("max_gap_s")
    order_slack_m: float = _geofence("order_slack_m")
    halt_after_s: float = _geofence("halt_after_s")
    moving_speed_mps: float = _geofence("moving_speed_mps")
    deviation_m: float = _geofence("deviation_m")
    deviation_after_s: float = _geofence("deviation_after_s")
    deviation_clear_m: float = _geofence("deviation_clear_m")
    index_cell_m: float = _geofence("index_cell_m")


class VanSettings(_Section):
    """Scanning and POD (:class:`firmware_agent.van.VanConfig`)."""

    dedup_window_s: float = Field(default=10.0, gt=0, json_schema_extra=REMOTE)
    max_fix_age_s: float = Field(default=10.0, gt=0, json_schema_extra=REMOTE)
    # Reason cards (docs/outcomes.md): how long a card waits for its parcel, and a
    # parcel for its card (0: only card-first pairing; a POD is signed at its scan).
    reason_wait_s: float = Field(default=10.0, gt=0, json_schema_extra=REMOTE)
    parcel_wait_s: float = Field(default=8.0, ge=0, json_schema_extra=REMOTE)


class EtaSettings(_Section):
    """On-device ETAs: the model and its keys (local), and when ETAs are predicted and
    published (:class:`firmware_agent.eta.tracker.EtaConfig`, remote too)."""

    enabled: bool = True
    # None: the model shipped in the package.
    model: FilePath | None = None
    # The fleet's public keys (PEM or JWK) that sign models sent on the `model` topic;
    # none: every model sent is refused.
    model_keys: Annotated[tuple[FilePath, ...], Field(strict=False)] = ()
    predict_every_s: float = Field(default=10.0, gt=0, json_schema_extra=REMOTE)
    min_move_s: float = Field(default=120.0, ge=0, json_schema_extra=REMOTE)
    min_move_fraction: float = Field(default=0.20, ge=0, json_schema_extra=REMOTE)
    move_confirm_s: float = Field(default=30.0, ge=0, json_schema_extra=REMOTE)
    far_horizon_s: float = Field(default=3600.0, gt=0, json_schema_extra=REMOTE)
    far_min_move_s: float = Field(default=1800.0, ge=0, json_schema_extra=REMOTE)
    far_move_confirm_s: float = Field(default=1800.0, ge=0, json_schema_extra=REMOTE)
    near_horizon_s: float = Field(default=300.0, ge=0, json_schema_extra=REMOTE)
    near_min_move_s: float = Field(default=45.0, ge=0, json_schema_extra=REMOTE)
    near_move_confirm_s: float = Field(default=10.0, ge=0, json_schema_extra=REMOTE)
    heartbeat_s: float = Field(default=900.0, gt=0, json_schema_extra=REMOTE)
    heartbeat_stops: int = Field(default=1, ge=0, json_schema_extra=REMOTE)
    late_horizon_s: float = Field(default=3600.0, gt=0, json_schema_extra=REMOTE)
    late_confirm_s: float = Field(default=60.0, ge=0, json_schema_extra=REMOTE)
    late_clear_s: float = Field(default=120.0, ge=0, json_schema_extra=REMOTE)
    late_clear_fraction: float = Field(default=0.10, ge=0, json_schema_extra=REMOTE)
    # With the model's interval, late_risk when P(arrival after window_end) > this
    # (0: the point rule, as without an interval).
    late_probability: float = Field(default=0.7, ge=0, le=0.99, json_schema_extra=REMOTE)
    # Sequence deviations (docs/eta.md): a pending stop is passed when the van came
    # within passed_near_m and then stayed beyond passed_leave_m for passed_confirm_s
    # without an arrival; the next passed_watch_stops stops are watched (0: off).
    passed_near_m: float = Field(default=100.0, gt=0, json_schema_extra=REMOTE)
    passed_leave_m: float = Field(default=300.0, gt=0, json_schema_extra=REMOTE)
    passed_confirm_s: float = Field(default=20.0, ge=0, json_schema_extra=REMOTE)
    passed_watch_stops: int = Field(default=2, ge=0, json_schema_extra=REMOTE)
    # The dwell (docs/eta.md): a stop's expected dwell is dwell_base_s +
    # dwell_per_parcel_s x its parcels; the next dwell_hold_stops stops' ETAs are held
    # at it while the van stands there (0: not held).
    dwell_base_s: float = Field(default=83.0, ge=0, json_schema_extra=REMOTE)
    dwell_per_parcel_s: float = Field(default=15.0, ge=0, json_schema_extra=REMOTE)
    dwell_hold_stops: int = Field(default=1, ge=0, json_schema_extra=REMOTE)


class GnssSettings(_Section):
    """The fix source: a serial receiver (``port``, ``baud``), a TCP NMEA stream
    (``address``, ``host:port``) or an NMEA file (``file``, played at ``speed``: 1 real
    time, 0 as fast as possible)."""

    source: Literal["serial", "tcp", "file"] = "serial"
    port: str = Field(default="/dev/fleet/gnss", min_length=1)
    baud: int = Field(default=9600, ge=300, le=921_600)
    address: str | None = Field(default=None, min_length=3)
    file: FilePath | None = None
    speed: float = Field(default=0.0, ge=0)
    # The receiver's own set-up over UBX (`fleet-agent provision` sets it, `doctor`
    # checks it): "auto" asks whether it is a u-blox and sets it up if so, "ublox"
    # requires one, "nmea" never sends it a byte. rate_hz is the navigation rate set.
    receiver: Literal["auto", "ublox", "nmea"] = "auto"
    rate_hz: float = Field(default=1.0, ge=0.1, le=25.0)

    @model_validator(mode="after")
    def _source_complete(self) -> GnssSettings:
        if self.source == "tcp" and self.address is None:
            raise ValueError("source = 'tcp' needs address ('host:port')")
        if self.source == "file" and self.file is None:
            raise ValueError("source = 'file' needs file")
        return self


class ScannerSettings(_Section):
    """One scan source (``[[scanners]]``): a serial scanner (``port``, ``baud``), a
    keyboard-mode scanner (``device``, its evdev node) or a scan log (``file``,
    docs/scan-log.md)."""

    kind: Literal["serial", "hid", "log"]
    port: str | None = Field(default=None, min_length=1)
    baud: int = Field(default=9600, ge=300, le=921_600)
    device: FilePath | None = None
    # HID only: take the device for the agent alone (its keystrokes reach no console);
    # read raw input events from a FIFO or file at ``device`` instead (a test hook,
    # docs/agent-inputs.md).
    grab: bool = True
    event_stream: bool = False
    file: FilePath | None = None

    @model_validator(mode="after")
    def _kind_complete(self) -> ScannerSettings:
        needs = {"serial": "port", "hid": "device", "log": "file"}
        for kind, key in needs.items():
            given = getattr(self, key) is not None
            if kind == self.kind and not given:
                raise ValueError(f"kind = {kind!r} needs {key}")
            if kind != self.kind and given:
                raise ValueError(f"{key} is for kind = {kind!r}, not {self.kind!r}")
        return self


class FeedbackSettings(_Section):
    """What tells the driver a scan was recorded: GPIO LEDs and buzzer (pins by gpiozero
    name, false: not fitted; no GPIO on the machine: none, with a warning), log lines (a
    bench), or nothing."""

    kind: Literal["gpio", "log", "none"] = "gpio"
    green_led: Pin = 17
    red_led: Pin = 27
    buzzer: Pin = 22
    buzzer_muted: bool = False


class OutboxSettings(_Section):
    """The durable outbox (``outbox.db`` in the state directory)."""

    budget_bytes: int = Field(default=100 * 1024 * 1024, ge=1024 * 1024)


class AgentSettings(_Section):
    """Every setting of ``fleet-agent run`` (see the module doc)."""

    device_id: str | None = None
    state_dir: FilePath = DEFAULT_STATE_DIR
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    uplink: UplinkSettings = Field(default_factory=UplinkSettings)
    gnss: GnssSettings = Field(default_factory=GnssSettings)
    scanners: Annotated[tuple[ScannerSettings, ...], Field(strict=False)] = ()
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    geofence: GeofenceSettings = Field(default_factory=GeofenceSettings)
    van: VanSettings = Field(default_factory=VanSettings)
    eta: EtaSettings = Field(default_factory=EtaSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str | None) -> str | None:
        if value is not None and not valid_device_id(value):
            raise ValueError("must be 1-64 letters, digits, '-', '_' or '.' (the MQTT topic's)")
        return value


# ---------------------------------------------------------------------------------------
# The tree's shape


def _section_model(annotation: Any) -> type[_Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, _Section) else None


def leaves(
    model: type[BaseModel] = AgentSettings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every scalar setting (``[[scanners]]`` excluded) and its field, key path first."""
    for name, info in model.model_fields.items():
        section = _section_model(info.annotation)
        if section is not None:
            yield from leaves(section, (*prefix, name))
        elif name != "scanners":
            yield (*prefix, name), info


def environment_variables() -> dict[str, tuple[str, ...]]:
    """Every ``FLEET_*`` variable a setting reads, and the key path it sets."""
    return {ENV_PREFIX + "_".join(path).upper(): path for path, _ in leaves()}


def remote_settings() -> dict[str, dict[str, FieldInfo]]:
    """The settings the remote config may change, per section, as config.schema.json
    must define them."""
    out: dict[str, dict[str, FieldInfo]] = {}
    for path, info in leaves():
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("remote"):
            section, key = path
            out.setdefault(section, {})[key] = info
    return out


def bounds(info: FieldInfo) -> dict[str, float]:
    """A field's range in JSON Schema's words (``minimum``, ``exclusiveMinimum``,
    ``maximum``)."""
    out: dict[str, float] = {}
    for item in info.metadata:
        for attribute, keyword in (
            ("gt", "exclusiveMinimum"),
            ("ge", "minimum"),
            ("lt", "exclusiveMaximum"),
            ("le", "maximum"),
        ):
            value = getattr(item, attribute, None)
            if value is not None:
                out[keyword] = value
    return out


def _field(path: tuple[str, ...]) -> FieldInfo:
    model: type[BaseModel] = AgentSettings
    info: FieldInfo | None = None
    for key in path:
        info = model.model_fields[key]
        model = _section_model(info.annotation) or model
    assert info is not None
    return info


def from_text(path: tuple[str, ...], text: str) -> Any:
    """The value of setting ``path`` given as text (the environment, ``--set``).

    ``ValueError`` if the text cannot be one (``abc`` for a port); ranges are checked
    with the whole tree. A list of paths is separated by ``:`` (as PATH) or ``,``.
    """
    info = _field(path)
    annotation = info.annotation
    assert annotation is not None  # every field of the tree is annotated
    if get_origin(annotation) is tuple:
        return tuple(Path(item) for item in re.split(r"[:,]", text) if item.strip())
    if annotation == Pin:
        if text.strip().lower() == "false":
            return False
        return int(text) if text.strip().isdigit() else text
    if annotation in (str, str | None):
        return text
    try:
        return TypeAdapter(annotation).validate_strings(text)
    except ValidationError as err:
        raise ValueError(err.errors()[0]["msg"]) from None


# ---------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """The effective settings, the file they were read from, and where each value
    came from (key path -> ``"default"``, ``"/etc/fleet-agent/agent.toml [mqtt]"``,
    ``"environment FLEET_MQTT_HOST"``, ``"flag --mqtt-host"``)."""

    settings: AgentSettings
    file: Path | None
    sources: Mapping[tuple[str, ...], str]

    def source(self, path: tuple[str, ...]) -> str:
        return self.sources.get(path, "default")


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: ``explicit``, else ``$FLEET_CONFIG``, else
    :data:`DEFAULT_CONFIG` when it exists, else none."""
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from err


def _file_sources(
    node: Mapping[str, Any], file: Path, prefix: tuple[str, ...], out: dict[tuple[str, ...], str]
) -> None:
    table = f"[{'.'.join(prefix)}]" if prefix else "(top level)"
    for key, value in node.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            _file_sources(value, file, path, out)
        elif key == "scanners" and not prefix and isinstance(value, list):
            out[path] = f"{file} [[scanners]]"
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    for sub in item:
                        out[(key, str(i), sub)] = f"{file} [[scanners]] #{i + 1}"
        else:
            out[path] = f"{file} {table}"


def _set(tree: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            return  # the file has a scalar where a table belongs: validation names it
        tree = node
    tree[path[-1]] = value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _key(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    # pydantic's location, without the tags it adds inside unions and validators
    # (("feedback", "buzzer", "int") -> ("feedback", "buzzer")).
    out: list[str] = []
    model: type[BaseModel] | None = AgentSettings
    for part in loc:
        if isinstance(part, int):
            if out[-1:] != ["scanners"]:
                break  # an item of a list: the list names the setting
            out.append(str(part))
            continue
        if model is None or part not in model.model_fields:
            if model is not None:
                out.append(part)  # an unknown key: named as given
            break
        out.append(part)
        info = model.model_fields[part]
        model = _section_model(info.annotation) or (ScannerSettings if part == "scanners" else None)
    return tuple(out)


def _dotted(path: tuple[str, ...]) -> str:
    if path[:1] == ("scanners",) and len(path) > 1:
        rest = ".".join(path[2:])
        return f"scanners[{int(path[1]) + 1}]" + (f".{rest}" if rest else "")
    return ".".join(path) or "(top level)"


def _siblings(path: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] | None = AgentSettings
    for part in path[:-1]:
        if model is None or part not in model.model_fields:
            return []
        model = _section_model(model.model_fields[part].annotation) or (
            ScannerSettings if part == "scanners" else None
        )
    return list(model.model_fields) if model is not None else []


def _problem(error: Any, sources: Mapping[tuple[str, ...], str], default: str) -> str:
    path = _key(tuple(error["loc"]))
    origin = sources.get(path) or ", ".join(
        sorted({s for k, s in sources.items() if k[: len(path)] == path}) or [default]
    )
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(path[-1], _siblings(path), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{_dotted(path)}: unknown key{hint} (in {origin})"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = "" if error["type"] == "missing" else f", got {_shown(error['input'])}"
    return f"{_dotted(path)}: {message}{given} (from {origin})"


def _problems(
    err: ValidationError, sources: Mapping[tuple[str, ...], str], default: str
) -> list[str]:
    # A union (a GPIO pin) fails once per member: one message for the key.
    by_key: dict[tuple[str, ...], list[Any]] = {}
    for error in err.errors():
        by_key.setdefault(_key(tuple(error["loc"])), []).append(error)
    out = []
    for errors in by_key.values():
        first = dict(errors[0])
        if len(errors) > 1:
            wanted = [str(e["msg"]).removeprefix("Input should be ") for e in errors]
            first["msg"] = "Input should be " + " or ".join(wanted)
        out.append(_problem(first, sources, default))
    return out


def load_settings(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    flags: Mapping[tuple[str, ...], tuple[object, str]] | None = None,
    scanners: Mapping[str, tuple[dict[str, Any], str]] | None = None,
) -> LoadedSettings:
    """The validated settings (see the module doc for the layers).

    ``file``: an explicit file (see :func:`config_path`). ``flags``: key path ->
    (value, the flag's name); a value given as text is read as the key's type.
    ``scanners``: kind -> (the scanner's table, the flag's name), replacing the file's
    scanners of that kind. :class:`ConfigError` names every problem and where its value
    came from.
    """
    environ = os.environ if environ is None else environ
    path = config_path(file, environ)
    tree: dict[str, Any] = _read_toml(path) if path is not None else {}
    sources: dict[tuple[str, ...], str] = {}
    if path is not None:
        _file_sources(tree, path, (), sources)
    known = environment_variables()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name != CONFIG_ENV
        and name not in known
        and not name.startswith(FOREIGN_ENV_PREFIXES)
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(
            f"unknown environment variable(s): {', '.join(hints)}; "
            "`fleet-agent config --variables` lists the known ones"
        )
    for name, key_path in known.items():
        if name in environ:
            try:
                value = from_text(key_path, environ[name])
            except ValueError as err:
                raise ConfigError(
                    f"{'.'.join(key_path)}: {err}, got {_shown(environ[name])} "
                    f"(from environment variable {name})"
                ) from None
            _set(tree, key_path, value)
            sources[key_path] = f"environment variable {name}"
    for key_path, (given, flag) in (flags or {}).items():
        value = given
        if isinstance(given, str):
            try:
                value = from_text(key_path, given)
            except ValueError as err:
                raise ConfigError(
                    f"{'.'.join(key_path)}: {err}, got {_shown(given)} (from flag {flag})"
                ) from None
        _set(tree, key_path, value)
        sources[key_path] = f"flag {flag}"
    if scanners:
        given = tree.get("scanners", [])
        kept = (
            [s for s in given if not (isinstance(s, dict) and s.get("kind") in scanners)]
            if isinstance(given, list)
            else given
        )
        if isinstance(kept, list):
            for kind, (table, flag) in scanners.items():
                for key in ("kind", *table):
                    sources[("scanners", str(len(kept)), key)] = f"flag {flag}"
                kept.append({"kind": kind, **table})
            tree["scanners"] = kept
    default = f"config {path}" if path is not None else "defaults"
    try:
        settings = AgentSettings.model_validate(tree)
    except ValidationError as err:
        problems = _problems(err, sources, default)
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    loaded = LoadedSettings(settings=settings, file=path, sources=sources)
    _cross_check(loaded)
    return loaded


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback address. Names
    are not resolved: a broker called anything else may be anywhere."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_text_remote(settings: AgentSettings) -> bool:
    """Whether MQTT goes in plain text to a broker off this machine (``tls = false``
    allowed it: warn at every start)."""
    return settings.mqtt.tls_ca is None and not is_loopback(settings.mqtt.host)


def _cross_check(loaded: LoadedSettings) -> None:
    s, src = loaded.settings, loaded.source
    mqtt = s.mqtt
    if mqtt.tls is False and (mqtt.tls_ca or mqtt.tls_cert or mqtt.tls_key):
        raise ConfigError(
            f"mqtt.tls: false (from {src(('mqtt', 'tls'))}) with TLS files set "
            f"(mqtt.tls_ca from {src(('mqtt', 'tls_ca'))}): say one or the other"
        )
    if mqtt.tls is True and mqtt.tls_ca is None:
        raise ConfigError(
            f"mqtt.tls: true (from {src(('mqtt', 'tls'))}) needs mqtt.tls_ca, the broker's CA"
        )
    if (mqtt.tls_cert is not None or mqtt.tls_key is not None) and mqtt.tls_ca is None:
        raise ConfigError(
            f"mqtt.tls_cert and mqtt.tls_key need mqtt.tls_ca (from "
            f"{src(('mqtt', 'tls_cert'))}, {src(('mqtt', 'tls_key'))})"
        )
    if plain_text_remote(s) and mqtt.tls is not False:
        raise ConfigError(
            f"mqtt.host: {mqtt.host!r} (from {src(('mqtt', 'host'))}) is not a loopback "
            "address, and MQTT would go in plain text: set mqtt.tls_ca (TLS), or "
            "mqtt.tls = false to send in the clear on purpose"
        )
    if mqtt.backoff_initial_s > mqtt.backoff_max_s:
        raise ConfigError(
            f"mqtt.backoff_initial_s: {mqtt.backoff_initial_s:g} (from "
            f"{src(('mqtt', 'backoff_initial_s'))}) exceeds mqtt.backoff_max_s "
            f"{mqtt.backoff_max_s:g} (from {src(('mqtt', 'backoff_max_s'))})"
        )
    g = s.geofence
    if g.deviation_clear_m > g.deviation_m:
        raise ConfigError(
            f"geofence.deviation_clear_m: {g.deviation_clear_m:g} (from "
            f"{src(('geofence', 'deviation_clear_m'))}) exceeds geofence.deviation_m "
            f"{g.deviation_m:g} (from {src(('geofence', 'deviation_m'))})"
        )
    e = s.eta
    if e.passed_leave_m <= e.passed_near_m:
        raise ConfigError(
            f"eta.passed_leave_m: {e.passed_leave_m:g} (from "
            f"{src(('eta', 'passed_leave_m'))}) must exceed eta.passed_near_m "
            f"{e.passed_near_m:g} (from {src(('eta', 'passed_near_m'))})"
        )


# ---------------------------------------------------------------------------------------
# Printing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON's string escapes are TOML's basic string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(
    loaded: LoadedSettings, remote: Mapping[tuple[str, ...], tuple[object, str]] | None = None
) -> str:
    """The effective settings as TOML that loads back to them, each value commented
    with where it came from; ``remote``: key path -> (value, source) of a remote config
    that overrides them while the agent runs. Unset optional keys are comments."""
    remote = remote or {}
    dump = loaded.settings.model_dump()
    lines: list[str] = []

    def emit(path: tuple[str, ...], value: Any) -> None:
        key = path[-1]
        origin = loaded.source(path)
        if path in remote:
            value, origin = remote[path][0], f"{remote[path][1]}; own: {_toml_value(value)}"
        if value is None:
            lines.append(f"# {key} = (not set)")
        else:
            lines.append(f"{key} = {_toml_value(value)}  # {origin}")

    section: tuple[str, ...] = ()
    for path, _ in leaves():
        if path[:-1] != section:
            section = path[:-1]
            lines.extend(("", f"[{'.'.join(section)}]"))
        node: Any = dump
        for key in path:
            node = node[key]
        emit(path, node)
    for i, scanner in enumerate(loaded.settings.scanners):
        lines.extend(("", "[[scanners]]"))
        for key, value in scanner.model_dump().items():
            if value is not None:
                lines.append(
                    f"{key} = {_toml_value(value)}  # {loaded.source(('scanners', str(i), key))}"
                )
    return "\n".join(lines).lstrip("\n") + "\n"
