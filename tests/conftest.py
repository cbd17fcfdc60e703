"""Shared pytest configuration: the real services live in tests/fixtures/*, one module each."""

import pytest

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.registry",
    "tests.fixtures.cluster",
]


@pytest.fixture
def anyio_backend() -> str:
    """devloop runs on asyncio; trio happens to be installed but is not a target."""
    return "asyncio"
