"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


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
