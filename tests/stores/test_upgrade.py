"""A database written by the release whose snapshots held the version and the lease
(tests/golden/sagas_schema3.sqlite, made by tests/golden/make_sagas_schema3.py) is
upgraded in place: the lease and version stay in the columns, the documents lose them."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from saga_fsm import SagaLeased
from saga_fsm.stores import Lease, PostgresStore, SagaStore, SqliteStore, migrations

GOLDEN = Path(__file__).parent.parent / "golden" / "sagas_schema3.sqlite"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
COLUMNS = (
    "saga_id, definition, definition_version, state, version, snapshot, correlation_id,"
    " idempotency_key, wake_at, due_at, lease_owner, lease_expires_at, created_at, updated_at"
)


def _old_rows() -> list[tuple[object, ...]]:
    with sqlite3.connect(GOLDEN) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM saga_fsm_sagas ORDER BY saga_id").fetchall()


def test_the_golden_database_is_of_the_previous_release() -> None:
    by_id = {row[0]: json.loads(str(row[5])) for row in _old_rows()}
    assert {d["schema_version"] for d in by_id.values()} == {1}
    assert by_id["running-1"]["lease_owner"] == "worker-a"


async def _check_upgraded(store: SagaStore) -> None:
    running = await store.load("running-1")
    assert (running.state, running.version) == ("running:reserve", 2)
    assert await store.lease("running-1") == Lease("worker-a", T0 + timedelta(hours=1))
    with pytest.raises(SagaLeased, match="worker-a"):
        await store.acquire("running-1", "worker-b", now=T0, lease_seconds=60)
    assert (await store.load("done-1")).version == 1
    assert await store.lease("pending-1") is None
    # Claims and writes carry on from the columns.
    later = T0 + timedelta(hours=2)
    claimed = await store.claim_due(
        "worker-b", now=later, lease_seconds=60, limit=10, definitions=[("order", 1)]
    )
    assert sorted((c.saga_id, c.version) for c in claimed) == [  # type: ignore[union-attr]
        ("pending-1", 2),
        ("running-1", 3),
    ]
    await store.save(claimed[0], [], expected_version=claimed[0].version)  # type: ignore[union-attr]


def test_sqlite_upgrades_a_database_of_the_previous_release(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    shutil.copy(GOLDEN, path)

    async def go() -> None:
        store = SqliteStore(path)
        try:
            await _check_upgraded(store)
        finally:
            await store.close()

    asyncio.run(go())
    with sqlite3.connect(path) as conn:
        documents = [json.loads(t) for (t,) in conn.execute("SELECT snapshot FROM saga_fsm_sagas")]
        applied = [v for (v,) in conn.execute("SELECT version FROM saga_fsm_migrations")]
    assert applied == list(range(1, len(migrations.load("sqlite")) + 1))
    assert {d["schema_version"] for d in documents} == {2}
    assert all({"version", "lease_owner", "lease_expires_at"}.isdisjoint(d) for d in documents)


def test_postgres_upgrades_rows_of_the_previous_release(postgres_dsn: str) -> None:
    """The schema of the previous release (migrations 1-5, append-only, as shipped then)
    holding the golden database's rows, as that release wrote them; then opened."""
    old = migrations.load("postgres")[:5]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE saga_fsm_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in old:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO saga_fsm_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        marks = ", ".join(["%s"] * 14)
        for row in _old_rows():
            conn.execute(f"INSERT INTO saga_fsm_sagas ({COLUMNS}) VALUES ({marks})".encode(), row)

    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn)
        try:
            await _check_upgraded(store)
        finally:
            await store.close()

    asyncio.run(go())
    with psycopg.connect(postgres_dsn) as conn:
        documents = [d for (d,) in conn.execute("SELECT snapshot FROM saga_fsm_sagas")]
    assert {d["schema_version"] for d in documents} == {2}
    assert all({"version", "lease_owner", "lease_expires_at"}.isdisjoint(d) for d in documents)
