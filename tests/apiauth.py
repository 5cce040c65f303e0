"""Credentials for tests that call the HTTP API, made the ways an operator makes them.

:func:`bearer` stores a token directly (in-process tests over a store);
:func:`cli_token` runs ``fleet-ingest token create`` as installed (tests that start
``fleet-ingest serve``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud_ingest.apitokens import SCOPES, Scope, new_token
from cloud_ingest.store.base import Store

FLEET_INGEST = Path(sys.executable).with_name("fleet-ingest")


async def bearer(
    store: Store,
    *scopes: Scope,
    name: str = "test",
    expires_in: timedelta | None = None,
) -> dict[str, str]:
    """Headers with a new token of ``scopes`` (default: every scope) in ``store``."""
    token, row = new_token(
        name, frozenset(scopes or SCOPES), now=datetime.now(UTC), expires_in=expires_in
    )
    await store.add_api_token(row)
    return {"Authorization": f"Bearer {token}"}


def cli_token(
    scopes: Sequence[Scope],
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    name: str = "test",
) -> str:
    """A token made with ``fleet-ingest token create`` (``args``: --config, ...)."""
    words = [str(FLEET_INGEST), "token", "create", "--name", name, *args]
    for scope in scopes:
        words += ["--scope", scope]
    done = subprocess.run(
        words,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
