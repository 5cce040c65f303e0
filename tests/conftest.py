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


# The end-to-end runs that time SIGKILLs in wall time: one group of their own, so the
# two slow groups (about 2.5 and 4 minutes) go to the two workers side by side.
KILL_TESTS: frozenset[str] = frozenset(
    {"test_e2e_day.py", "test_e2e_faults.py", "test_outbox_crash.py", "test_e2e_acks.py"}
)

# The tests that pip-install or package the project from this tree, every one of them.
WHEEL_BUILDERS: frozenset[str] = frozenset(
    {"test_deb.py", "test_deb_arm64.py", "test_ingest_install.py"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``./run test`` runs two workers) the end-to-end runs marked
    ``slow`` run in two groups, each one test after another on one worker: they pace
    agents, brokers and SIGKILLs in wall time, so at most two run at once on a 2-CPU
    machine. The fast tests fill in around them."""
    for item in items:
        if item.path.name in WHEEL_BUILDERS:
            # They build the project's wheel in the one source tree (setuptools' build/):
            # two at once collide there (File exists: build/bdist...).
            item.add_marker(pytest.mark.xdist_group("slow"))
        elif item.get_closest_marker("slow") is not None:
            group = "slow-kills" if item.path.name in KILL_TESTS else "slow"
            item.add_marker(pytest.mark.xdist_group(group))


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
