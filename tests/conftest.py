"""Shared pytest configuration: the real services live in tests/fixtures/*, one module each."""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.registry",
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
    before = _children()
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while (leaked := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"the test left processes running: {sorted(_describe(p) for p in leaked)}"


def _children() -> set[int]:
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _describe(pid: int) -> str:
    try:
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)
