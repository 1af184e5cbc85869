"""The saga_fsm pytest plugin (registered through the ``pytest11`` entry point).

Fixtures: ``saga_clock`` (a ``FakeClock``), ``saga_store_memory``,
``saga_store_sqlite`` (a file in ``tmp_path``) and ``saga_store_postgres`` (a fresh
schema on the server at ``$SAGA_FSM_TEST_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``; skipped with the reason when no server
answers, failed instead under ``CI=true``). Each store fixture is a ``StoreFactory``:
``async with saga_store_sqlite.open() as store`` in any event loop, or
``saga_store_sqlite.run(lambda store: ...)`` from a sync test. The terminal summary
lists the transition coverage of every ``saga_test_case`` that ran.

Loaded by every pytest run where saga-fsm is installed, so this module imports only
pytest and the standard library at import time.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from saga_fsm._clock import FakeClock
    from saga_fsm.stores import SnapshotStore
    from saga_fsm.testing._choreo_machine import ChoreographyReport
    from saga_fsm.testing._explore import CheckReport
    from saga_fsm.testing._fixtures import StoreFactory

DSN_VARIABLE = "SAGA_FSM_TEST_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_REPORTS = pytest.StashKey[list[tuple[str, "CheckReport | ChoreographyReport"]]]()


def record_report(
    config: pytest.Config, nodeid: str, report: CheckReport | ChoreographyReport
) -> None:
    """Keep a ``check`` report for the terminal summary."""
    config.stash.setdefault(_REPORTS, []).append((nodeid, report))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = terminalreporter.config.stash.get(_REPORTS, [])
    if not reports:
        return
    terminalreporter.section("saga_fsm transition coverage")
    for nodeid, report in reports:
        terminalreporter.write_line(f"{nodeid}: {report.definition.name}")
        for line in report.coverage.format().splitlines():
            terminalreporter.write_line(f"  {line}")


@pytest.fixture
def saga_clock() -> FakeClock:
    """Virtual time for an ``Orchestrator(..., clock=saga_clock)``: back-off sleeps
    return at once, ``saga_clock.advance(seconds)`` moves time on."""
    from saga_fsm._clock import FakeClock

    return FakeClock()


@pytest.fixture
def saga_store_memory() -> StoreFactory:
    """One in-memory store for the test (every ``open()`` returns the same one)."""
    from saga_fsm.stores import MemoryStore
    from saga_fsm.testing._fixtures import StoreFactory

    return StoreFactory.of(MemoryStore(), "memory")


@pytest.fixture
def saga_store_sqlite(tmp_path: Path) -> StoreFactory:
    """A SQLite file in ``tmp_path``, opened (and closed) once per ``open()``."""
    from saga_fsm.stores import SqliteStore
    from saga_fsm.testing._fixtures import StoreFactory

    path = tmp_path / "saga_fsm.db"

    @asynccontextmanager
    async def opener() -> AsyncIterator[SnapshotStore]:
        store = SqliteStore(path)
        try:
            yield store
        finally:
            await store.close()

    return StoreFactory(f"sqlite:///{path}", opener)


def _unreachable(dsn: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.Error as err:
        return str(err).strip() or type(err).__name__


@pytest.fixture(scope="session")
def saga_postgres_dsn() -> str:
    """The PostgreSQL server of ``$SAGA_FSM_TEST_DSN`` (checked once per session)."""
    dsn = os.environ.get(DSN_VARIABLE) or DEFAULT_DSN
    reason = _unreachable(dsn)
    if reason is not None:
        message = f"PostgreSQL at {dsn} is unreachable ({reason}); set {DSN_VARIABLE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: not skipping)", pytrace=False)
        pytest.skip(message)
    return dsn


@pytest.fixture
def saga_store_postgres(saga_postgres_dsn: str) -> Iterator[StoreFactory]:
    """A fresh schema on the test server, dropped afterwards; each ``open()`` makes a
    small pool in the running loop (a pool belongs to the loop that opened it)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from saga_fsm.stores import PostgresStore
    from saga_fsm.testing._fixtures import StoreFactory

    schema = f"saga_fsm_test_{secrets.token_hex(6)}"
    with psycopg.connect(saga_postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conninfo = make_conninfo(saga_postgres_dsn, options=f"-csearch_path={schema}")

    @asynccontextmanager
    async def opener() -> AsyncIterator[SnapshotStore]:
        store = await PostgresStore.open(conninfo, min_size=1, max_size=4)
        try:
            yield store
        finally:
            await store.close()

    try:
        yield StoreFactory(f"postgresql (schema {schema})", opener)
    finally:
        with psycopg.connect(saga_postgres_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
