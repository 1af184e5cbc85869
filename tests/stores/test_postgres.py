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


def test_a_transition_within_one_status_is_a_hot_update(postgres_dsn: str) -> None:
    """From one step to the next (running:a -> running:b) no indexed column changes, so
    PostgreSQL rewrites the row on its page and no index (migration 7); the status
    changes of start and finish still reach the indexes."""
    from saga_fsm import Orchestrator, SagaBuilder

    def step(ctx: Any) -> None:
        return None

    builder = SagaBuilder("hot")
    for name in ("a", "b", "c", "d"):
        builder.step(name, step, read_only=True)
    definition = builder.build()

    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn, max_size=2)
        try:
            await Orchestrator(store, [definition]).run(definition, {}, saga_id="h")
        finally:
            await store.close()

    asyncio.run(go())
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        ((updates, hot),) = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = 'saga_fsm_sagas' AND schemaname = current_schema()"
        ).fetchall()
    # Four saves: a -> b, b -> c, c -> d within "running" (HOT), d -> completed (not).
    assert (updates, hot) == (4, 3)


def test_indexes(postgres_dsn: str) -> None:
    """Every index and constraint is paid for by every transition: exactly these."""
    asyncio.run(_open_and_close(postgres_dsn))
    with psycopg.connect(postgres_dsn) as conn:
        indexes: dict[str, str] = dict(
            conn.execute(
                # This test's schema only: other schemas of the server hold the same table.
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
        "saga_fsm_sagas_id_pattern_idx",
        "saga_fsm_sagas_idempotency_key_key",
        "saga_fsm_sagas_pkey",
        "saga_fsm_sagas_quarantined_idx",
        "saga_fsm_sagas_status_created_idx",
    ]
    # The console's list: by status in keyset order (on the status column, migration 7,
    # so that a transition within one status indexes nothing), and by id prefix.
    assert (
        '(status, created_at, saga_id COLLATE "C")'
        in (indexes["saga_fsm_sagas_status_created_idx"])
    )
    assert "(saga_id text_pattern_ops)" in indexes["saga_fsm_sagas_id_pattern_idx"]
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
