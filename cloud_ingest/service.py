"""Running the ingest service: N MQTT workers and the HTTP API in one event loop.

:func:`serve` opens the store (and migrates it), starts ``workers`` :class:`IngestWorker`
tasks and the uvicorn server as named tasks of one :class:`asyncio.TaskGroup`, and
runs until SIGTERM or SIGINT (or ``stop``): then the HTTP server stops accepting and
finishes its requests, the workers are cancelled (a batch cut short is resent by the
vans: they delete records only on ingest's ack, which follows the commit), and the
store is closed. A task that fails takes the others down with it and :func:`serve`
raises: the process exits non-zero and systemd restarts it.

Stores: SQLite has one writer, so workers and API share one store (one connection, one
thread). PostgreSQL serves many connections, so each worker gets its own store and
the API another: a slow query of the API never holds up ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import ValidationError

from cloud_ingest.config import (
    DatabaseSettings,
    IngestConfig,
    MqttSettings,
    QuarantineSettings,
    RecordTimeSettings,
)
from cloud_ingest.errors import ConfigError, IngestError, StorageError
from cloud_ingest.store.base import QUARANTINE_PAYLOAD_MAX_BYTES, Store
from firmware_agent.contract.sdnotify import Notifier

# The HTTP stack and the MQTT client load only for `serve`: the other commands of
# fleet-ingest (migrate, device ...) open a store and should start fast.
if TYPE_CHECKING:
    import uvicorn

    from cloud_ingest.enroll import Enrollment
    from cloud_ingest.verify import RecordTimes
    from cloud_ingest.worker import IngestWorker, WorkerConfig
    from firmware_agent.contract.mqtt import TlsConfig

log = logging.getLogger(__name__)

# How long the HTTP server lets running requests finish after a stop signal.
GRACEFUL_SHUTDOWN_S = 5


class ServiceError(IngestError, OSError):
    """The service cannot start (the HTTP address is taken, ...)."""


def make_store(
    url: str, *, quarantine_payload_max_bytes: int = QUARANTINE_PAYLOAD_MAX_BYTES
) -> Store:
    """An unopened store for a database URL (see :class:`DatabaseSettings`):
    :class:`~cloud_ingest.store.sqlite.SqliteStore` or
    :class:`~cloud_ingest.store.postgres.PostgresStore`. :class:`ConfigError` for a
    URL neither takes. ``quarantine_payload_max_bytes``: see :class:`QuarantineSettings`."""
    try:
        settings = DatabaseSettings(url=url)
    except ValidationError as err:
        raise ConfigError(f"database URL: {err.errors()[0]['msg']}") from None
    keep = quarantine_payload_max_bytes
    if settings.backend == "sqlite":
        from cloud_ingest.store.sqlite import SqliteStore  # noqa: PLC0415 (only what is used)

        return SqliteStore(settings.sqlite_path, quarantine_payload_max_bytes=keep)
    from cloud_ingest.store.postgres import PostgresStore  # noqa: PLC0415

    return PostgresStore(url, quarantine_payload_max_bytes=keep)


@asynccontextmanager
async def open_store(
    url: str,
    *,
    migrate: bool = True,
    quarantine_payload_max_bytes: int = QUARANTINE_PAYLOAD_MAX_BYTES,
) -> AsyncIterator[Store]:
    """``async with open_store(url) as store``: opened, migrated (unless ``migrate`` is
    false), closed on the way out. :class:`~cloud_ingest.errors.StorageError` if the
    database cannot be used, :class:`~cloud_ingest.store.base.MigrationError` if its
    schema is newer than this code."""
    async with make_store(url, quarantine_payload_max_bytes=quarantine_payload_max_bytes) as store:
        if migrate:
            applied = await store.migrate()
            if applied:
                log.info("database migrated to version %d", max(applied))
        yield store


def mqtt_tls(mqtt: MqttSettings) -> TlsConfig | None:
    """The TLS settings of every MQTT client of ingest (its workers, ``fleet-ingest
    publish-model``), None without TLS. :class:`ConfigError` for a file that is not
    there, at start rather than at the first connection."""
    from firmware_agent.contract.mqtt import TlsConfig  # noqa: PLC0415

    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(mqtt, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"mqtt.{name}: {path} is not a readable file")
    if mqtt.tls_ca is None:
        return None
    return TlsConfig(ca_file=mqtt.tls_ca, cert_file=mqtt.tls_cert, key_file=mqtt.tls_key)


def record_times(settings: RecordTimeSettings) -> RecordTimes:
    """The workers' :class:`~cloud_ingest.verify.RecordTimes` of ``[record_time]``."""
    from cloud_ingest.verify import RecordTimes  # noqa: PLC0415

    return RecordTimes(
        max_ahead=timedelta(seconds=settings.max_ahead_s),
        earliest=settings.earliest.astimezone(UTC),
        max_age=timedelta(days=settings.max_age_days) if settings.max_age_days else None,
    )


def worker_configs(config: IngestConfig) -> list[WorkerConfig]:
    """One :class:`WorkerConfig` per worker of ``config``."""
    from cloud_ingest.worker import WorkerConfig  # noqa: PLC0415

    mqtt = config.mqtt
    tls = mqtt_tls(mqtt)
    times = record_times(config.record_time)
    return [
        WorkerConfig(
            host=mqtt.host,
            port=mqtt.port,
            client_id=f"{mqtt.client_id}-{i}",
            group=mqtt.group,
            max_message_bytes=config.max_message_bytes,
            tls=tls,
            record_times=times,
        )
        for i in range(1, config.workers + 1)
    ]


def enrollment(config: IngestConfig) -> Enrollment | None:
    """``POST /v1/enroll``'s settings, when ``[ca] dir`` names a CA (else none)."""
    from cloud_ingest.ca import FleetCa  # noqa: PLC0415
    from cloud_ingest.enroll import Enrollment  # noqa: PLC0415

    ca = config.ca
    if ca.dir is None:
        return None
    fleet_ca = FleetCa(ca.dir, crl_file=ca.crl_file, crl_days=ca.crl_days)
    if not fleet_ca.exists():
        raise ConfigError(f"ca.dir: no fleet CA in {ca.dir} (run `fleet-ingest ca init`)")
    return Enrollment(
        ca=fleet_ca,
        broker_host=ca.broker_host or config.mqtt.host,
        broker_port=ca.broker_port,
        device_cert_days=ca.device_cert_days,
        reload_command=ca.reload_command,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def prune_quarantine(
    store: Store, settings: QuarantineSettings, *, now: datetime | None = None
) -> int:
    """Apply the quarantine's retention (``[quarantine]``) once; the rows deleted."""
    now = now or _utcnow()
    return await store.prune_quarantine(
        received_before=now - timedelta(days=settings.max_age_days)
        if settings.max_age_days
        else None,
        max_unsettled_rows=settings.max_unsettled_rows or None,
    )


async def quarantine_retention(
    store: Store, settings: QuarantineSettings, *, clock: Callable[[], datetime] = _utcnow
) -> None:
    """:func:`prune_quarantine` now and every ``prune_interval_s``, until cancelled. A
    failure is logged and tried again next time: retention never stops ingest."""
    while True:
        try:
            deleted = await prune_quarantine(store, settings, now=clock())
        except StorageError as err:
            log.warning(
                "quarantine retention: %s; trying again in %g s", err, settings.prune_interval_s
            )
        else:
            if deleted:
                log.info("quarantine retention: %d rows deleted", deleted)
        await asyncio.sleep(settings.prune_interval_s)


def _http_server(config: uvicorn.Config) -> uvicorn.Server:
    import uvicorn  # noqa: PLC0415

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The service owns SIGTERM and SIGINT (they stop the workers too). uvicorn's
            # own handlers would raise the signal again after its shutdown, killing the
            # process with it instead of letting it exit 0.
            yield

    return Server(config)


async def _listen(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        raise ServiceError(f"http.host {host!r}: {err}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ServiceError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sock


def _status(workers: list[IngestWorker]) -> str:
    """systemd's STATUS= line: workers connected to the broker, records stored."""
    connected = sum(w.connected.is_set() for w in workers)
    stored = sum(w.counts.stored for w in workers)
    return f"{connected}/{len(workers)} workers connected to the broker; {stored} records stored"


async def serve(
    config: IngestConfig,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the service until SIGTERM/SIGINT (``handle_signals``) or ``stop`` is set.

    Returns after a clean shutdown. Raises :class:`ConfigError`, :class:`ServiceError`
    or :class:`~cloud_ingest.errors.StorageError` when it cannot start, and whatever
    made a task fail (in an :class:`ExceptionGroup`) when one does.
    """
    import uvicorn  # noqa: PLC0415

    from cloud_ingest.access import access_from_settings  # noqa: PLC0415
    from cloud_ingest.api import create_app  # noqa: PLC0415
    from cloud_ingest.worker import IngestWorker  # noqa: PLC0415
    from firmware_agent.contract import schema  # noqa: PLC0415

    stop = stop or asyncio.Event()
    configs = worker_configs(config)
    enroll = enrollment(config)
    # The schemas are package files read on first use: read them now, off the loop,
    # rather than in a worker's first batch.
    await asyncio.to_thread(schema.kinds)
    url = config.database.url
    sock = await _listen(config.http.host, config.http.port)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    try:
        async with AsyncExitStack() as stack:
            keep = config.quarantine.payload_max_bytes
            store = await stack.enter_async_context(
                open_store(url, quarantine_payload_max_bytes=keep)
            )
            workers = []
            for wc in configs:
                worker_store = store
                if config.database.backend == "postgresql":
                    worker_store = await stack.enter_async_context(
                        open_store(url, migrate=False, quarantine_payload_max_bytes=keep)
                    )
                workers.append(IngestWorker(worker_store, wc))
            access = access_from_settings(store, config.api)
            app = create_app(store, workers=workers, enrollment=enroll, access=access)
            server = _http_server(
                uvicorn.Config(
                    app,
                    lifespan="off",
                    log_config=None,
                    access_log=config.http.access_log,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                )
            )
            for sig in signals:
                loop.add_signal_handler(sig, stop.set)
            log.info(
                "fleet-ingest: %d worker(s) on %s:%d, database %s, HTTP on %s:%d",
                len(workers),
                config.mqtt.host,
                config.mqtt.port,
                config.database.describe(),
                config.http.host,
                config.http.port,
            )
            log.info(
                "fleet-ingest: API credentials: %s; /metrics %s",
                " and ".join(
                    w
                    for w, on in (
                        ("API tokens", config.api.tokens),
                        (f"OIDC JWTs from {config.api.oidc.issuer}", config.api.oidc.enabled),
                    )
                    if on
                ),
                "public" if config.api.metrics_public else "needs the read scope",
            )
            async with asyncio.TaskGroup() as tg:
                http = tg.create_task(server.serve(sockets=[sock]), name="http-api")
                http.add_done_callback(lambda _: stop.set())
                tasks = [
                    tg.create_task(w.run(), name=f"ingest-worker-{w.config.client_id}")
                    for w in workers
                ]
                tasks.append(
                    tg.create_task(
                        quarantine_retention(store, config.quarantine), name="quarantine-retention"
                    )
                )
                if enroll is not None:
                    from cloud_ingest.enroll import crl_renewal  # noqa: PLC0415

                    tasks.append(
                        tg.create_task(crl_renewal(enroll, clock=_utcnow), name="crl-renewal")
                    )
                notifier = stack.enter_context(Notifier.from_environ())
                if notifier.enabled:
                    # READY=1 once the HTTP socket is bound and the workers are started;
                    # then WATCHDOG=1 and STATUS= from this loop (a hung loop is restarted).
                    notifier.ready(_status(workers))
                    tasks.append(
                        tg.create_task(
                            notifier.keep_alive(lambda: _status(workers)), name="sd-notify"
                        )
                    )
                await stop.wait()
                notifier.stopping()
                log.info("fleet-ingest: stopping")
                server.should_exit = True
                await asyncio.wait([http])
                for task in tasks:
                    task.cancel()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        sock.close()
    log.info("fleet-ingest: stopped")
