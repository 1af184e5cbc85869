"""What the contract cannot see: pools, migrations, error translation, indexes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from saga_fsm._errors import StoreError
from saga_fsm._snapshot import Snapshot
from saga_fsm.stores import PostgresStore
from saga_fsm.stores.migrations import load

pytestmark = pytest.mark.postgres
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def snapshot(saga_id: str = "s-1") -> Snapshot:
    return Snapshot(saga_id, "order", 1, "pending", (), {"n": 1}, T0, T0)


def test_a_callers_pool_is_left_open_and_as_it_was(postgres_dsn: str) -> None:
    """Non-autocommit connections with a dict row factory: the store copes and hands
    them back unchanged; close() does not close the caller's pool."""

    async def scenario() -> None:
        async with AsyncConnectionPool(
            postgres_dsn, min_size=1, max_size=2, open=False, kwargs={"row_factory": dict_row}
        ) as pool:
            store = PostgresStore(pool)
            stored, _ = await store.create(snapshot())  # migrates on first use
            assert await store.load("s-1") == stored
            assert [s.saga_id for s in await store.list()] == ["s-1"]
            await store.close()
            assert not pool.closed
            async with pool.connection() as conn:
                assert conn.autocommit is False
                cur = await conn.execute("SELECT count(*) AS n FROM saga_fsm_sagas")
                row: Any = await cur.fetchone()
                assert row == {"n": 1}

    asyncio.run(scenario())


def test_open_owns_and_closes_its_pool(postgres_dsn: str) -> None:
    async def scenario() -> None:
        store = await PostgresStore.open(postgres_dsn, min_size=1, max_size=2)
        pool = store._pool
        await store.close()
        assert pool.closed

    asyncio.run(scenario())


def test_concurrent_workers_migrate_once(postgres_dsn: str) -> None:
    async def scenario() -> None:
        async with AsyncConnectionPool(postgres_dsn, min_size=4, max_size=8, open=False) as pool:
            stores = [PostgresStore(pool) for _ in range(8)]
            await asyncio.gather(*(s.migrate() for s in stores))

    asyncio.run(scenario())
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM saga_fsm_migrations").fetchall()
    assert rows == [(m.version, m.name) for m in load("postgres")]


def test_a_schema_from_a_newer_release_is_refused(postgres_dsn: str) -> None:
    asyncio.run(_open_and_close(postgres_dsn))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO saga_fsm_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(StoreError, match=r"migration 999.*upgrade saga_fsm"):
        asyncio.run(_open_and_close(postgres_dsn))


async def _open_and_close(conninfo: str) -> None:
    await (await PostgresStore.open(conninfo, max_size=1)).close()


def test_indexes(postgres_dsn: str) -> None:
    """Every index and constraint is paid for by every transition: exactly these."""
    asyncio.run(_open_and_close(postgres_dsn))
    with psycopg.connect(postgres_dsn) as conn:
        indexes: dict[str, str] = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename = 'saga_fsm_sagas' AND schemaname = current_schema()"
            ).fetchall()
        )
        foreign_keys = conn.execute(
            "SELECT conname FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid = 'saga_fsm_history'::regclass"
        ).fetchall()
    assert sorted(indexes) == [
        "saga_fsm_sagas_created_idx",
        "saga_fsm_sagas_due_idx",
        "saga_fsm_sagas_idempotency_key_key",
        "saga_fsm_sagas_pkey",
        "saga_fsm_sagas_state_idx",
    ]
    assert "(state text_pattern_ops)" in indexes["saga_fsm_sagas_state_idx"]
    assert "WHERE (due_at IS NOT NULL)" in indexes["saga_fsm_sagas_due_idx"]
    assert "UNIQUE" in indexes["saga_fsm_sagas_idempotency_key_key"]
    assert foreign_keys == []


def test_an_unreachable_server_is_a_store_error_not_a_driver_error() -> None:
    with pytest.raises(StoreError, match="connect failed") as caught:
        asyncio.run(PostgresStore.open("postgresql://postgres:hunter2@127.0.0.1:1/x"))
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value.__cause__, psycopg.Error)


def test_a_closed_callers_pool_is_a_store_error(postgres_dsn: str) -> None:
    async def scenario() -> None:
        pool = AsyncConnectionPool(postgres_dsn, min_size=1, open=False)
        await pool.open()
        store = PostgresStore(pool)
        await store.migrate()
        await pool.close()
        with pytest.raises(StoreError, match="load failed"):
            await store.load("s-1")

    asyncio.run(scenario())


def test_strings_jsonb_cannot_hold_are_a_store_error(postgres_dsn: str) -> None:
    async def scenario() -> None:
        store = await PostgresStore.open(postgres_dsn, max_size=1)
        bad = Snapshot("s-1", "order", 1, "pending", (), {"n": "a\x00b"}, T0, T0)
        with pytest.raises(StoreError, match="u0000"):
            await store.create(bad)
        assert await store.list() == []
        await store.close()

    asyncio.run(scenario())
