"""Writes ``sagas_schema3.sqlite``: a SQLite store written by the release whose
snapshots still held the version and the lease (schema_version 1, SQLite migration 3).
Run once, with that release's saga_fsm on the path; tests/stores/test_upgrade.py
upgrades a copy."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from attrs import evolve

from saga_fsm import SagaBuilder, SqliteStore, StepContext
from saga_fsm._core import Event, decide, new_snapshot


def noop(ctx: StepContext) -> None:
    return None


ORDER = SagaBuilder("order").step("reserve", noop, compensation=noop).pivot("charge", noop).build()
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def main(path: str) -> None:
    store = SqliteStore(path)
    await store.create(new_snapshot(ORDER, "pending-1", {"n": 1}, T0, idempotency_key="k-1"))
    running = new_snapshot(ORDER, "running-1", {"n": 2}, T0)
    decision = decide(ORDER, running, Event.start(T0))
    await store.create(decision.snapshot, decision.history)
    await store.acquire("running-1", "worker-a", now=T0, lease_seconds=3600)
    await store.create(evolve(new_snapshot(ORDER, "done-1", {"n": 3}, T0), state="completed"))
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
