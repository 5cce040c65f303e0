"""A fresh PostgreSQL database for a test, dropped afterwards.

The server is the one CI and developers run locally: 127.0.0.1:5432, user postgres,
trust authentication (override with ``FLEET_TEST_PG_DSN``, a libpq connection string
for the maintenance database). Every database gets a unique name, so tests (and
parallel runs) never share state, and is dropped with ``WITH (FORCE)`` even when a
test left a connection open.

No server: the test is skipped with the reason, on a developer's machine. Under CI
(``CI`` set to anything non-empty) it fails instead: a CI job that quietly skipped its
PostgreSQL tests would report a backend as tested when it was not.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

ADMIN_DSN = os.environ.get(
    "FLEET_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
CONNECT_TIMEOUT_S = 3


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def _require_server() -> None:
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as err:
        reason = f"no PostgreSQL server answers at {ADMIN_DSN!r}: {str(err).strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: PostgreSQL tests must run, not skip)")
        pytest.skip(reason)


@contextmanager
def fresh_database(prefix: str = "fleet_test") -> Iterator[str]:
    """Create a uniquely named database; yield its DSN; drop it on the way out."""
    _require_server()
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        with _admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """The DSN of a fresh, empty database (see :func:`fresh_database`)."""
    with fresh_database() as dsn:
        yield dsn
