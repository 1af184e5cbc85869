"""What the contract cannot see: SQLite files, pragmas, migrations, several connections."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from saga_fsm._errors import ConcurrencyConflict, StoreError
from saga_fsm._snapshot import Snapshot
from saga_fsm.stores import SqliteStore
from saga_fsm.stores.migrations import load

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def snapshot(saga_id: str = "s-1") -> Snapshot:
    return Snapshot(saga_id, "order", 1, "pending", (), {"n": 1}, T0, T0)


def test_a_missing_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "sagas.db"
    with pytest.raises(StoreError, match=r"directory .*nope does not exist"):
        SqliteStore(missing)
    assert not missing.parent.exists()  # creating it is the caller's call


def test_a_path_that_is_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="SQLite store"):
        SqliteStore(tmp_path)


def test_durability_pragmas(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "sagas.db")
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    asyncio.run(store.close())


def test_reopening_keeps_data_and_applies_migrations_once(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    first = SqliteStore(path)
    stored, _ = asyncio.run(first.create(snapshot()))
    asyncio.run(first.close())
    second = SqliteStore(path)
    assert asyncio.run(second.load("s-1")) == stored
    asyncio.run(second.close())
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version, name FROM saga_fsm_migrations").fetchall()
    conn.close()
    assert rows == [(m.version, m.name) for m in load("sqlite")]


def test_a_schema_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    asyncio.run(SqliteStore(path).close())
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO saga_fsm_migrations VALUES (999, 'future', 'x')")
    conn.close()
    with pytest.raises(StoreError, match=r"migration 999.*upgrade saga_fsm"):
        SqliteStore(path)


def test_two_connections_to_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    a, b = SqliteStore(path), SqliteStore(path)

    async def scenario() -> None:
        stored, _ = await a.create(snapshot())
        assert await b.load("s-1") == stored
        await b.save(stored, [], expected_version=1)
        with pytest.raises(ConcurrencyConflict):
            await a.save(stored, [], expected_version=1)
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_closed_store_raises_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "sagas.db")
    asyncio.run(store.close())
    with pytest.raises(StoreError):
        asyncio.run(store.load("s-1"))


def test_in_memory_database() -> None:
    store = SqliteStore(":memory:")
    stored, _ = asyncio.run(store.create(snapshot()))
    assert asyncio.run(store.load("s-1")) == stored
    asyncio.run(store.close())


def test_indexes(tmp_path: Path) -> None:
    """Every index is paid for by every transition: exactly these."""
    path = tmp_path / "s.db"
    asyncio.run(SqliteStore(path).close())
    with sqlite3.connect(path) as conn:
        names = sorted(
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'saga_fsm_sagas' AND name NOT LIKE 'sqlite_autoindex%'"
            )
        )
    assert names == [
        "saga_fsm_sagas_created_idx",
        "saga_fsm_sagas_due_idx",
        "saga_fsm_sagas_quarantined_idx",
        "saga_fsm_sagas_state_idx",
    ]
    conn.close()


def test_migration_3_upgrades_a_file_of_the_previous_release(tmp_path: Path) -> None:
    """Sagas created before fingerprints were kept still answer their key (matched on
    the key alone); new ones are fingerprinted; nothing is quarantined."""
    from attrs import evolve

    from saga_fsm._errors import IdempotencyKeyReused
    from saga_fsm.stores.sqlite import _columns, _statements

    path = tmp_path / "sagas.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE saga_fsm_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    for migration in load("sqlite")[:2]:
        for statement in _statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO saga_fsm_migrations VALUES (?, ?, 'then')",
            (migration.version, migration.name),
        )
    # A saga the previous release created under a key (no fingerprint column then).
    row = _columns(evolve(snapshot("legacy"), idempotency_key="k-old", version=1))
    conn.execute(
        f"INSERT INTO saga_fsm_sagas ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    conn.close()
    old = SqliteStore(path)  # migrates to 3 on open
    same, created = asyncio.run(
        old.create(evolve(snapshot("s-2"), idempotency_key="k-old", data={"other": 1}))
    )
    assert (same.saga_id, created) == ("legacy", False)
    asyncio.run(old.create(evolve(snapshot("s-3"), idempotency_key="k-new")))
    with pytest.raises(IdempotencyKeyReused):
        asyncio.run(old.create(evolve(snapshot("s-4"), idempotency_key="k-new", data={})))
    assert asyncio.run(old.list_quarantined()) == []
    asyncio.run(old.close())
