"""Shared fixtures. PostgreSQL: see tests/_pg.py for where the server comes from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import _pg


@pytest.fixture(scope="session")
def postgres_server_dsn() -> Iterator[str]:
    """A reachable PostgreSQL server for the session (configured, throwaway, or skip;
    with CI=true an unreachable server fails instead of skipping)."""
    with _pg.postgres_server() as dsn:
        yield dsn


@pytest.fixture
def postgres_dsn(postgres_server_dsn: str) -> Iterator[str]:
    """A conninfo whose search_path is a fresh schema, dropped after the test."""
    with _pg.fresh_schema(postgres_server_dsn) as conninfo:
        yield conninfo


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Anything that asks for a PostgreSQL fixture is a ``postgres`` test, so
    ``-m "not postgres"`` deselects it even if someone forgot the marker."""
    for item in items:
        if {"postgres_dsn", "postgres_server_dsn"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)
