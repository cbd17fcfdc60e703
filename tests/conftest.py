"""Shared pytest configuration: the real services live in tests/fixtures/*, one module each."""

pytest_plugins = [
    "tests.fixtures.engine",
    "tests.fixtures.registry",
    "tests.fixtures.cluster",
]
