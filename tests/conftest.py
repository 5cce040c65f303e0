"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import settings

# CI runs the same examples every time (a red build is reproducible, never a dice
# roll); a developer's runs keep exploring new ones. No per-example deadline: a
# loaded CI machine must not fail on timing, which is what bench/ is for.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def no_blocking() -> Iterator[BlockBuster]:
    """Fail any blocking call made on an asyncio event loop thread during the test.

    As python-zeroconf does: a sleep, a blocking read or a file open inside the loop
    stalls every other task of the agent (the GNSS reader, the uplink, the watchdog).
    Only calls made from the agent's own code count; the simulator playing the
    hardware in the same loop is the test bench, not the subject.
    """
    with blockbuster_ctx(["firmware_agent"]) as bb:
        yield bb
