"""Leases are the store's columns: renewing or releasing never reads nor writes a
snapshot, and a claim only reads the ones it hands out. Memory and SQLite count the
codec's calls; PostgreSQL refuses, by trigger, any statement that sets the column."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from saga_fsm import SagaBuilder, StepContext
from saga_fsm._core import new_snapshot
from saga_fsm.stores import MemoryStore, PostgresStore, SagaStore, SqliteStore
from saga_fsm.stores import memory as memory_module
from saga_fsm.stores import sqlite as sqlite_module


def _noop(ctx: StepContext) -> None:
    return None


ORDER = SagaBuilder("order").step("a", _noop, compensation=_noop).build()
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CODEC = ("snapshot_to_json", "snapshot_from_json", "snapshot_or_error")


def _count_codec(monkeypatch: pytest.MonkeyPatch, module: Any) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in CODEC:
        real: Callable[..., Any] | None = getattr(module, name, None)
        if real is None:
            continue

        def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(module, name, counted)
    return calls


async def _lease_work(store: SagaStore, calls: Counter[str] | None) -> None:
    ids = [f"s-{n}" for n in range(20)]
    for saga_id in ids:
        await store.create(new_snapshot(ORDER, saga_id, {"n": saga_id}, T0))
    if calls is not None:
        calls.clear()
    claimed = await store.claim_due(
        "w1", now=T0, lease_seconds=30, limit=50, definitions=[("order", 1)]
    )
    assert set(ids) <= {c.saga_id for c in claimed}
    if calls is not None:
        # A claim decodes what it hands out, and encodes nothing.
        assert calls["snapshot_to_json"] == 0
        calls.clear()
    for n in range(5):
        held = await store.renew_leases(ids, "w1", expires_at=T0 + timedelta(minutes=n + 1))
        assert held == set(ids)
    for saga_id in ids:
        await store.release(saga_id, "w1")
    assert [await store.lease(saga_id) for saga_id in ids] == [None] * 20
    if calls is not None:
        assert calls == Counter(), f"renewals and releases used the codec: {dict(calls)}"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_renewals_never_encode_nor_decode(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = memory_module if kind == "memory" else sqlite_module
    calls = _count_codec(monkeypatch, module)

    async def go() -> None:
        store: SagaStore = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "s.db")
        try:
            await _lease_work(store, calls)
        finally:
            await store.close()

    asyncio.run(go())


def test_postgres_lease_statements_never_set_the_snapshot(postgres_dsn: str) -> None:
    async def go() -> None:
        store = await PostgresStore.open(postgres_dsn)
        try:
            await store.create(new_snapshot(ORDER, "probe", {}, T0))
            with psycopg.connect(postgres_dsn, autocommit=True) as conn:
                # Fires for any UPDATE whose SET names the column, whatever its value.
                conn.execute(
                    "CREATE FUNCTION saga_fsm_no_snapshot_write() RETURNS trigger"
                    " LANGUAGE plpgsql AS $$ BEGIN"
                    " RAISE EXCEPTION 'snapshot written by a lease statement'; END $$;"
                    " CREATE TRIGGER no_snapshot_write BEFORE UPDATE OF snapshot"
                    " ON saga_fsm_sagas FOR EACH ROW EXECUTE FUNCTION saga_fsm_no_snapshot_write()"
                )
            await store.acquire("probe", "w1", now=T0, lease_seconds=30)
            await store.release("probe", "w1")
            await _lease_work(store, None)
            # The trigger does fire on a write of the snapshot: it would have caught one.
            snapshot = await store.load("probe")
            with pytest.raises(Exception, match="snapshot written"):
                await store.save(snapshot, [], expected_version=snapshot.version)
        finally:
            await store.close()

    asyncio.run(go())
