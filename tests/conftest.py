"""Shared pytest configuration: the real services live in tests/fixtures/*, one module each."""

import os
import time
from collections.abc import Iterator

import pytest

from tests.procs import describe, live_processes

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.registry",
    "tests.fixtures.buildkit",
    "tests.fixtures.cluster",
]
LEAK_GRACE_S = 5.0  # how long a test's processes may take to exit after it ends


@pytest.fixture
def anyio_backend() -> str:
    """devloop runs on asyncio; trio happens to be installed but is not a target."""
    return "asyncio"


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a child process of the test run alive (zombies aside).

    Session services (registries, the cluster) start before this fixture and are not counted.
    """
    before = live_processes(ppid=os.getpid())
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaked := live_processes(ppid=os.getpid()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"the test left processes running: {sorted(describe(p) for p in leaked)}"
