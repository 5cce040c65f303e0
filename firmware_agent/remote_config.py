"""The remote configuration dispatch retains on ``fleet/v1/{device_id}/config``.

The contract is ``config.schema.json`` (docs/asyncapi.yaml, message ``config``): a
JSON object with ``v`` (1), ``revision`` (an integer from 1 to 2^53 - 1,
:data:`MAX_REVISION`, increasing with every change), an optional ``issued_at`` and one
object per section overriding the agent's defaults. Every setting has its range (the
settings tree's, :mod:`firmware_agent.settings`); a value outside it is
refused naming the key (``geofence.index_cell_m: must be within [10, 10000] ...``).
A setting left out keeps its default; an empty payload clears the config (back to
defaults); unknown sections and keys are allowed and ignored, so a newer config never
stops an older agent.

Every section of the schema has a runtime counterpart here, and each is applied over
the agent's own settings (shipped defaults and /etc), never over a previous remote
config, so a setting dropped from a later revision returns to its default:

- ``telemetry``: :class:`~firmware_agent.telemetry.TelemetryConfig` (smart sampling);
- ``uplink``: ``batch_max_fixes``, ``batch_max_age_s``, ``events_batch_max_records``
  and ``events_batch_max_age_s`` of :class:`~firmware_agent.uplink.mqtt.UplinkConfig`
  (telemetry and events batching);
- ``geofence``: :class:`~firmware_agent.geofence.config.GeofenceConfig`;
- ``van``: ``dedup_window_s``, ``max_fix_age_s``, ``reason_wait_s`` and
  ``parcel_wait_s`` of :class:`~firmware_agent.van.VanConfig` (scanning and POD, the
  reason-card pairing windows);
- ``eta``: :class:`~firmware_agent.eta.tracker.EtaConfig` (when the van predicts its
  ETAs and which ``eta`` and ``late_risk`` events it publishes).

Anything else (a section or key this agent does not know) is ignored and listed in
:attr:`RemoteConfig.ignored` for the log.

Validation is written out, as :mod:`firmware_agent.contract.manifest` does, rather than with a
schema library: the van package does not depend on ``cloud_ingest``, whose package
holds the schemas. :func:`parse_config`, :func:`admit` and :func:`apply_config` are
pure; :class:`RemoteConfigStore` keeps the running config in the state directory
(blocking file I/O: call it off the event loop).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from pydantic.fields import FieldInfo

from firmware_agent.contract.keys import fsync_directory, make_private_dirs, write_file_atomically
from firmware_agent.errors import ConfigError, RemoteConfigError
from firmware_agent.settings import bounds, remote_settings
from firmware_agent.van import VanConfig

if TYPE_CHECKING:
    # Only for the annotation: this module stays importable without the MQTT client.
    from firmware_agent.uplink.mqtt import UplinkConfig

VERSION: Final = 1
# A config is a few hundred bytes; the cap bounds what a hostile publisher can make
# the agent parse and store (unknown sections are kept in the stored copy).
MAX_CONFIG_BYTES: Final = 64 * 1024

Overrides = Mapping[str, int | float]

# config.schema.json's utc definition: UTC only, at most microseconds.
_UTC_PATTERN: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)


# The highest revision: JavaScript (a dispatcher's, a backend's) and every JSON parser
# that reads numbers as IEEE doubles lose integers past 2^53 - 1
# (Number.MAX_SAFE_INTEGER): 2^53 + 1 would read as 2^53, a higher revision as a lower.
MAX_REVISION: Final = 2**53 - 1


@dataclass(frozen=True, slots=True)
class _Setting:
    """One setting the agent takes: a number > 0 (>= 0 if ``zero``: 0 turns something
    off; >= ``minimum`` if given), at most ``maximum`` if given, an integer if
    ``integer``."""

    integer: bool = False
    maximum: float | None = None
    zero: bool = False
    minimum: float | None = None


def _from_tree(info: FieldInfo) -> _Setting:
    limits = bounds(info)
    low = limits.get("minimum")
    return _Setting(
        integer=info.annotation is int,
        maximum=limits.get("maximum"),
        zero=low == 0,
        minimum=low if low else None,
    )


# The settings this agent applies, per section: those of the settings tree marked
# remote (firmware_agent.settings, with their ranges), which config.schema.json defines
# (tests/test_settings.py holds the two equal).
SETTINGS: Final[Mapping[str, Mapping[str, _Setting]]] = {
    section: {key: _from_tree(info) for key, info in keys.items()}
    for section, keys in remote_settings().items()
}
_TOP_LEVEL: Final = frozenset({"v", "revision", "issued_at"})


def _frozen(overrides: dict[str, int | float]) -> Overrides:
    return MappingProxyType(overrides)


def _no_overrides() -> Overrides:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteConfig:
    """A validated config: its revision and, per section, the settings it overrides.

    Integer settings (``batch_max_fixes``, ``confirm_min_fixes``, ``heartbeat_stops``)
    are ``int``, every other one a ``float``. ``raw`` is the payload as received, for
    storage; ``ignored`` names the sections and keys this agent does not know
    (``model``, ``telemetry.foo_s``). Neither takes part in equality: two payloads that ask for the
    same settings are the same config.
    """

    revision: int
    issued_at: datetime | None = None
    telemetry: Overrides = field(default_factory=_no_overrides)
    uplink: Overrides = field(default_factory=_no_overrides)
    geofence: Overrides = field(default_factory=_no_overrides)
    van: Overrides = field(default_factory=_no_overrides)
    eta: Overrides = field(default_factory=_no_overrides)
    ignored: tuple[str, ...] = field(default=(), compare=False)
    raw: bytes = field(default=b"", compare=False, repr=False)


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are Python's JSON extensions, not JSON.
    raise ValueError(f"{name} is not a JSON number")


def _decode(data: bytes) -> Any:
    if len(data) > MAX_CONFIG_BYTES:
        raise RemoteConfigError("", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise RemoteConfigError("", f"not valid UTF-8 JSON: {err}") from err


def _shown(value: Any) -> str:
    # Bounded: the message goes to the log, and the value to it from anyone who can
    # publish on the topic.
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _is_number(value: Any) -> bool:
    # bool is an int subclass; true is never a period.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound(limit: float) -> str:
    # 4096, not 4096.0; 9007199254740991, not 9.0072e+15.
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


def _integer(value: Any, where: str, minimum: float, maximum: float | None = None) -> int:
    # JSON Schema counts 3.0 as an integer; so do we.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RemoteConfigError(where, f"must be an integer, got {_shown(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = (
            f"within [{_bound(minimum)}, {_bound(maximum)}]"
            if maximum is not None
            else f">= {_bound(minimum)}"
        )
        raise RemoteConfigError(where, f"must be {bound}, got {_shown(value)}")
    return value


def _setting(value: Any, where: str, setting: _Setting) -> int | float:
    if setting.integer:
        lowest = setting.minimum if setting.minimum is not None else 0 if setting.zero else 1
        return _integer(value, where, lowest, setting.maximum)
    if not _is_number(value):
        raise RemoteConfigError(where, f"must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    low, high = setting.minimum, setting.maximum
    if low is None:
        above_low = number > 0 or (setting.zero and number == 0)
        bound = ">= 0" if setting.zero else "> 0"
    else:
        above_low = number >= low
        bound = f">= {_bound(low)}"
    if high is not None:
        bound = (
            f"within [{_bound(low)}, {_bound(high)}]"
            if low is not None
            else f"{bound} and <= {_bound(high)}"
        )
    if not (math.isfinite(number) and above_low and (high is None or number <= high)):
        raise RemoteConfigError(where, f"must be {bound} and finite, got {_shown(value)}")
    return number


def _issued_at(value: Any) -> datetime:
    if not isinstance(value, str) or _UTC_PATTERN.fullmatch(value) is None:
        raise RemoteConfigError(
            "issued_at",
            f"must be an ISO 8601 UTC time (2026-11-20T18:00:00.000Z), got {_shown(value)}",
        )
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError as err:  # matches the pattern, yet 2026-02-30
        raise RemoteConfigError("issued_at", f"not a valid time: {_shown(value)}") from err


def parse_config(data: bytes) -> RemoteConfig | None:
    """Validate a ``config`` payload; ``None`` for the empty payload, which clears it.

    Only a payload of zero bytes clears (what a retained-message delete delivers);
    anything else must be a config object. :class:`RemoteConfigError` names the first
    offending field (``uplink.batch_max_fixes: must be within [1, 4096], got 5000``).
    """
    if not data:
        return None
    doc = _decode(data)
    if not isinstance(doc, dict):
        raise RemoteConfigError("", "a config must be a JSON object")
    if "v" not in doc:
        raise RemoteConfigError("v", "missing")
    v = doc["v"]
    if not _is_number(v) or v != VERSION:
        raise RemoteConfigError("v", f"must be {VERSION}, got {_shown(v)}")
    if "revision" not in doc:
        raise RemoteConfigError("revision", "missing")
    revision = _integer(doc["revision"], "revision", 1, MAX_REVISION)
    issued_at = _issued_at(doc["issued_at"]) if "issued_at" in doc else None
    ignored = [key for key in doc if key not in _TOP_LEVEL and key not in SETTINGS]
    sections: dict[str, Overrides] = {}
    for section, settings in SETTINGS.items():
        if section not in doc:
            continue
        raw_section = doc[section]
        if not isinstance(raw_section, dict):
            raise RemoteConfigError(section, f"must be an object, got {_shown(raw_section)}")
        overrides: dict[str, int | float] = {}
        for key, value in raw_section.items():
            setting = settings.get(key)
            if setting is None:
                ignored.append(f"{section}.{key}")
                continue
            overrides[key] = _setting(value, f"{section}.{key}", setting)
        sections[section] = _frozen(overrides)
    return RemoteConfig(
        revision=revision,
        issued_at=issued_at,
        ignored=tuple(ignored),
        raw=bytes(data),
        **sections,
    )


def offered_revision(data: bytes) -> int | None:
    """The revision a refused config payload names, if it names a valid one (for the
    report of the refusal); None for anything else."""
    try:
        doc = _decode(data)
        revision = _integer(doc["revision"], "revision", 1, MAX_REVISION)
    except (RemoteConfigError, KeyError, TypeError):
        return None
    return revision


def running_revision(config: RemoteConfig | None) -> int:
    """The revision status health reports: 0 when running on defaults."""
    return 0 if config is None else config.revision


def admit(running: RemoteConfig | None, offered: RemoteConfig | None) -> bool:
    """Whether ``offered`` (``None``: the clearing empty payload) replaces ``running``.

    True for a revision higher than the running one, and for a clear while a config
    runs. False for the running config offered again: the broker re-sends the retained
    config at every reconnect, which is nothing to do and nothing wrong (and a clear
    while on defaults). :class:`RemoteConfigError` (``revision``) for any other revision
    not above the running one. The schema is silent on a repeated revision that asks
    for different settings; it is refused like an older one, as a publisher that
    reuses a revision has made a mistake the van cannot settle.
    """
    if offered is None:
        return running is not None
    current = running_revision(running)
    if offered.revision > current:
        return True
    if offered == running:
        return False
    raise RemoteConfigError(
        "revision", f"{offered.revision} is not above the running {current}; keeping it"
    )


def _changes(overrides: Overrides) -> dict[str, Any]:
    # For dataclasses.replace, whose plugin wants each keyword's type: every key is one
    # of SETTINGS, which the tests hold to the target dataclasses' fields.
    return dict(overrides)


def apply_config(
    config: RemoteConfig | None, *, van: VanConfig, uplink: UplinkConfig
) -> tuple[VanConfig, UplinkConfig]:
    """The agent's settings with ``config``'s overrides; ``None`` returns them as given.

    ``van`` and ``uplink`` are the agent's own settings (not a previous remote config's
    result), so that every setting ``config`` leaves out is the agent's own. Settings
    that a section does not name keep their values; of ``uplink`` only the batching
    settings (``batch_max_fixes``, ``batch_max_age_s``, ``events_batch_max_records``,
    ``events_batch_max_age_s``) can change. :class:`RemoteConfigError` when the
    settings refuse the combination (``geofence.deviation_clear_m`` above
    ``deviation_m``) or a value (``eta``: what :class:`~firmware_agent.eta.tracker.
    EtaConfig` refuses).
    """
    if config is None:
        return van, uplink
    try:
        geofence = replace(van.geofence, **_changes(config.geofence))
    except ConfigError as err:
        raise RemoteConfigError("geofence", str(err).removeprefix("geofence ")) from err
    try:
        eta = replace(van.eta, **_changes(config.eta))
    except ConfigError as err:
        raise RemoteConfigError("eta", str(err).removeprefix("eta ")) from err
    new_van = replace(
        van,
        geofence=geofence,
        telemetry=replace(van.telemetry, **_changes(config.telemetry)),
        eta=eta,
        **_changes(config.van),
    )
    return new_van, replace(uplink, **_changes(config.uplink))


class RemoteConfigStore:
    """The running config on disk (``config.json`` in the agent's state directory).

    The payload is stored as received. :meth:`save` writes a temporary file, fsyncs it
    and renames it over the old one (:func:`~firmware_agent.contract.keys.
    write_file_atomically`), so a power cut leaves the old config or the new one, never
    a torn one; :meth:`clear` removes it and fsyncs the directory. Blocking: call these
    with :func:`asyncio.to_thread`.
    """

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"RemoteConfigStore({str(self.path)!r})"

    def load(self) -> RemoteConfig | None:
        """The stored config, or None when there is none.

        :class:`RemoteConfigError` if the file no longer validates; other
        :class:`OSError` (permissions, I/O) propagate.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_config(data)

    def save(self, config: RemoteConfig) -> None:
        """Durably replace the stored config with ``config.raw``."""
        make_private_dirs(self.path.parent)
        write_file_atomically(self.path, config.raw, overwrite=True)

    def clear(self) -> None:
        """Durably remove the stored config (back to defaults); no file is fine."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_directory(self.path.parent)
