"""The ingest service's settings: a TOML file, then ``FLEET_INGEST_*`` environment overrides.

Precedence, lowest first: the defaults below, the TOML file (``--config``, else
``$FLEET_INGEST_CONFIG``, else :data:`DEFAULT_CONFIG` when it exists), then one
environment variable per key. Everything is validated at start; a mistake (an unknown
key, a misspelt variable, a port out of range) is a :class:`~cloud_ingest.errors.ConfigError`
that names where the value came from, never a surprise later.

TOML layout (every key optional)::

    workers = 2                        # MQTT consumers on the shared subscription
    max_message_bytes = 262144         # larger uplink messages are quarantined

    [database]
    url = "sqlite:////var/lib/fleet-ingest/ingest.sqlite3"   # or "postgresql://host/db"

    [mqtt]
    host = "broker.example.com"
    port = 8883
    group = "ingest"                   # $share/{group}/fleet/v1/+/...
    client_id = "ingest-a"             # worker i connects as "{client_id}-{i}"
    tls_ca = "/etc/fleet-ingest/ca.pem"
    tls_cert = "/etc/fleet-ingest/ingest.pem"
    tls_key = "/etc/fleet-ingest/ingest.key"

    [http]
    host = "127.0.0.1"
    port = 8080
    access_log = false

    [quarantine]                       # refused messages (docs/ingest.md, "Quarantine")
    payload_max_bytes = 4096           # kept of a payload that settled nothing (+ length, SHA-256)
    max_age_days = 90                  # rows older are deleted (0: kept for ever)
    max_unsettled_rows = 100000        # of the rows that settled nothing, the newest kept (0: all)
    prune_interval_s = 600             # how often the service applies the two limits

    [record_time]                      # record times taken as plausible (implausible_time)
    max_ahead_s = 300                  # at most this far ahead of the receipt
    earliest = 2020-01-01T00:00:00Z    # never before
    max_age_days = 0                   # at most this old at receipt (0: any age)

    [ca]                               # the fleet CA and enrollment (docs/ingest.md)
    dir = "/var/lib/fleet-ingest/ca"   # fleet-ingest ca init; unset: no POST /v1/enroll
    broker_host = "broker.example.com" # what enrolled vans connect to (default: [mqtt] host)
    broker_port = 8883
    device_cert_days = 730
    crl_file = "/etc/mosquitto/certs/fleet-crl.pem"   # default: crl.pem in dir
    crl_days = 365
    reload_command = "systemctl reload mosquitto"     # after each CRL rewrite

    [api]                              # who may call the HTTP API (docs/ingest.md)
    tokens = true                      # scoped API tokens (fleet-ingest token create)
    metrics_public = false             # /metrics without credentials

    [api.oidc]                         # bearer JWTs from an identity provider, also
    enabled = false
    issuer = "https://idp.example.com/realms/fleet"
    audience = "fleet-ingest"
    jwks_url = "https://idp.example.com/realms/fleet/protocol/openid-connect/certs"
    scope_claim = "scope"              # or "roles", "groups", ...
    scope_map = { "fleet-read" = ["read"] }   # empty: read/dispatch/admin/enroll as named

Environment: ``FLEET_INGEST_`` + the key path in capitals joined by ``_``:
``FLEET_INGEST_WORKERS``, ``FLEET_INGEST_DATABASE_URL``, ``FLEET_INGEST_MQTT_PORT``,
``FLEET_INGEST_HTTP_PORT``, ... (:func:`environment_variables` lists them all).

Secrets never go into the file or the environment (DESIGN.md): a database URL with a
password is refused (use libpq's password file, ``~/.pgpass`` or ``PGPASSFILE``), and
TLS keys are named by path.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cloud_ingest.apitokens import Scope
from cloud_ingest.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/fleet-ingest/ingest.toml")
ENV_PREFIX = "FLEET_INGEST_"
# Names the file itself, so it is not a setting.
CONFIG_ENV = "FLEET_INGEST_CONFIG"
SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_MQTT_FORBIDDEN = frozenset("/+#\x00")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

Port = Annotated[int, Field(ge=1, le=65535)]
Backend = Literal["sqlite", "postgresql"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    """``url``: ``sqlite:///PATH`` (SQLAlchemy's spelling: ``sqlite:///ingest.db`` is
    relative to the working directory, ``sqlite:////var/lib/x.db`` absolute) or
    ``postgresql://[user@]host[:port]/dbname[?param=...]`` (any libpq URI)."""

    url: str = "sqlite:///fleet-ingest.sqlite3"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if url.startswith(SQLITE_PREFIX):
            if not url.removeprefix(SQLITE_PREFIX):
                raise ValueError("sqlite:/// needs a file path after it")
            return url
        parts = urlsplit(url)
        if parts.scheme not in _POSTGRES_SCHEMES:
            raise ValueError(
                "must start with sqlite:/// or postgresql:// "
                f"(got {url.split(':', 1)[0] + ':' if ':' in url else 'no scheme'})"
            )
        if parts.password is not None or "password=" in parts.query:
            raise ValueError(
                "holds a password: keep it out of files and the environment; use libpq's "
                "password file (~/.pgpass or PGPASSFILE) instead"
            )
        return url

    @property
    def backend(self) -> Backend:
        return "sqlite" if self.url.startswith(SQLITE_PREFIX) else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (``ValueError`` for a PostgreSQL URL)."""
        if self.backend != "sqlite":
            raise ValueError("not a SQLite URL")
        return Path(self.url.removeprefix(SQLITE_PREFIX))

    def describe(self) -> str:
        """Where the database is, for messages: the URL without credentials or query."""
        if self.backend == "sqlite":
            return str(self.sqlite_path)
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{host}{port}{parts.path}"


class MqttSettings(_Section):
    """The broker the workers consume from. ``client_id``: the prefix of the workers'
    MQTT client ids (worker i is ``{client_id}-{i}``); it must differ between processes
    on one broker, which the default (the host name) does for one process per host."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 1883
    group: str = Field(default="ingest", min_length=1, max_length=64)
    client_id: str = Field(
        default_factory=lambda: f"fleet-ingest-{socket.gethostname()}", min_length=1, max_length=60
    )
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("group", "client_id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        bad = _MQTT_FORBIDDEN & set(value)
        if bad:
            raise ValueError(f"must not contain {' '.join(sorted(map(repr, bad)))}")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> Self:
        if (self.tls_cert is not None or self.tls_key is not None) and self.tls_ca is None:
            raise ValueError("tls_cert and tls_key need tls_ca (TLS to the broker)")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


class HttpSettings(_Section):
    """Where the HTTP API listens; ``access_log``: one log line per request."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 8080
    access_log: bool = False


class QuarantineSettings(_Section):
    """What the quarantine keeps of a refused message, and for how long.

    ``payload_max_bytes``: of a payload that settled nothing (its sender still holds
    the records, or it is none), the first bytes kept, with its length and SHA-256; a
    payload that settled seqs is the only copy of those records and is kept whole.
    ``max_age_days``: rows received longer ago are deleted (0: never).
    ``max_unsettled_rows``: of the rows that settled nothing, only the newest are kept
    (0: no limit); a flood of junk never pushes out evidence of settled records.
    ``prune_interval_s``: how often ``serve`` applies the two limits.
    """

    payload_max_bytes: int = Field(default=4096, ge=0, le=16 * 1024 * 1024)
    max_age_days: float = Field(default=90.0, ge=0, le=100 * 366)
    max_unsettled_rows: int = Field(default=100_000, ge=0)
    prune_interval_s: float = Field(default=600.0, gt=0, le=7 * 86_400)


class RecordTimeSettings(_Section):
    """The record times ingest takes as plausible (:class:`cloud_ingest.verify.RecordTimes`);
    others are quarantined as ``implausible_time``. ``max_ahead_s``: how far ahead of the
    receipt (clock skew); ``earliest``: never before it; ``max_age_days``: how old at
    receipt (0: any age, so a van's replay after however long an outage is accepted)."""

    max_ahead_s: float = Field(default=300.0, ge=0, le=366 * 86_400)
    earliest: AwareDatetime = datetime(2020, 1, 1, tzinfo=UTC)
    max_age_days: float = Field(default=0.0, ge=0, le=100 * 366)


class CaSettings(_Section):
    """The fleet CA and enrollment (:mod:`cloud_ingest.ca`, :mod:`cloud_ingest.enroll`).

    ``dir``: the CA directory (``fleet-ingest ca init``); unset: no CA commands without
    ``--ca-dir`` and no ``POST /v1/enroll``. ``broker_host``/``broker_port``: the
    broker address enrolled vans are given (default: ``[mqtt] host``, and 8883).
    ``device_cert_days``: how long a van's certificate is valid. ``crl_file``: where the
    CRL goes (default ``crl.pem`` in ``dir``; the broker's ``crlfile``), valid for
    ``crl_days``. ``reload_command``: run (no shell) after every CRL rewrite so the
    broker re-reads it, e.g. ``systemctl reload mosquitto``.
    """

    dir: Path | None = None
    broker_host: str | None = Field(default=None, min_length=1)
    broker_port: Port = 8883
    device_cert_days: int = Field(default=730, ge=1, le=3650)
    crl_file: Path | None = None
    crl_days: int = Field(default=365, ge=1, le=3650)
    reload_command: str | None = None


def _check_url(name: str, url: str) -> str:
    """``url`` when it is https, or http to this host (tests, a local identity provider)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return url
    raise ValueError(f"{name} must be an https:// URL (http:// only to localhost), got {url!r}")


class OidcSettings(_Section):
    """Bearer JWTs from the operator's identity provider (docs/ingest.md, "OIDC").

    ``issuer`` and ``audience``: the ``iss`` and ``aud`` a token must carry;
    ``jwks_url``: where the provider publishes its signing keys; ``scope_claim``: the
    claim that holds the caller's scopes (a space-separated string or a list);
    ``scope_map``: a claim value -> the ingest scopes it grants (empty: the values
    ``read``, ``dispatch``, ``admin``, ``enroll`` grant themselves, nothing else does);
    ``leeway_s``: clock skew allowed on ``exp``/``nbf``/``iat``; ``jwks_refresh_min_s``:
    a token with an unknown ``kid`` refetches the keys at most this often;
    ``jwks_max_age_s``: the keys are refetched when older; ``timeout_s``: per fetch.
    """

    enabled: bool = False
    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    scope_claim: str = Field(default="scope", min_length=1, max_length=100)
    scope_map: dict[str, list[Scope]] = Field(default_factory=dict)
    leeway_s: float = Field(default=60.0, ge=0, le=600)
    jwks_refresh_min_s: float = Field(default=60.0, ge=0, le=86_400)
    jwks_max_age_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("scope_map", mode="before")
    @classmethod
    def _json_map(cls, value: object) -> object:
        # From the environment the map comes as JSON text.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError('not JSON such as {"fleet-read": ["read"]}') from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if not self.enabled:
            return self
        missing = [n for n in ("issuer", "audience", "jwks_url") if not getattr(self, n)]
        if missing:
            raise ValueError(f"enabled needs {', '.join(missing)}")
        _check_url("issuer", self.issuer)
        _check_url("jwks_url", self.jwks_url)
        return self


class ApiSettings(_Section):
    """Who may call the HTTP API (docs/ingest.md, "Who may call the API").

    ``tokens``: scoped API tokens (``fleet-ingest token create``) are accepted;
    ``metrics_public``: ``/metrics`` answers without credentials (default: it needs a
    ``read`` token, which Prometheus sends with its ``authorization`` setting);
    ``oidc``: bearer JWTs from an identity provider as well (or instead).
    """

    tokens: bool = True
    metrics_public: bool = False
    oidc: OidcSettings = Field(default_factory=OidcSettings)

    @model_validator(mode="after")
    def _some_way_in(self) -> Self:
        if not self.tokens and not self.oidc.enabled:
            raise ValueError(
                "tokens is false and oidc.enabled is false: no request could authenticate"
            )
        return self


class IngestConfig(_Section):
    """Every setting of ``fleet-ingest`` (see the module doc)."""

    workers: int = Field(default=1, ge=1, le=64)
    max_message_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    quarantine: QuarantineSettings = Field(default_factory=QuarantineSettings)
    record_time: RecordTimeSettings = Field(default_factory=RecordTimeSettings)
    ca: CaSettings = Field(default_factory=CaSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _leaves(kind, (*prefix, name))
        else:
            yield (*prefix, name)


def environment_variables() -> dict[str, tuple[str, ...]]:
    """Every ``FLEET_INGEST_*`` variable a setting reads, and the key path it sets."""
    return {ENV_PREFIX + "_".join(path).upper(): path for path in _leaves(IngestConfig)}


def _set(tree: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            # The file has a scalar where a table belongs: validation names it.
            return
        tree = node
    tree[path[-1]] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config {path} is not valid TOML: {err}") from err


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one key path holds the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: ``explicit``, else ``$FLEET_INGEST_CONFIG``, else
    :data:`DEFAULT_CONFIG` when it exists, else none (defaults and environment only)."""
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[tuple[str, ...], object] | None = None,
) -> IngestConfig:
    """The validated settings from ``path`` (see :func:`config_path`), the environment
    and ``overrides`` (key path -> value, e.g. from command-line flags), in that order.

    :class:`ConfigError` for an unreadable file, an unknown key or variable, or a value
    out of range; the message says which file or variable held it.
    """
    environ = os.environ if environ is None else environ
    file = config_path(path, environ)
    tree: dict[str, Any] = _read_toml(file) if file is not None else {}
    sources: dict[tuple[str, ...], str] = {}
    known = environment_variables()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV and name not in known
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}, {CONFIG_ENV}"
        )
    for name, key_path in known.items():
        if name in environ:
            _set(tree, key_path, environ[name])
            sources[key_path] = f"environment variable {name}"
    for key_path, value in (overrides or {}).items():
        _set(tree, key_path, value)
        sources[key_path] = "the command line"
    try:
        return IngestConfig.model_validate(tree)
    except ValidationError as err:
        where = f"config {file}" if file is not None else "defaults"
        problems = []
        for e in err.errors():
            loc = tuple(str(p) for p in e["loc"])
            origin = sources.get(loc) or ", ".join(
                # the sources under loc, or the one above it (an item of a table)
                sorted({s for k, s in sources.items() if _related(k, loc)}) or [where]
            )
            problems.append(f"{'.'.join(loc) or '(top level)'}: {e['msg']} (from {origin})")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
