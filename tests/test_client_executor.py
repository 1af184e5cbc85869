"""An API process starts and cancels through a ``SagaClient``; workers drive through a
``SagaExecutor``; ``Definitions`` is the registry they may share. ``Orchestrator`` is
both, for scripts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from saga_fsm import (
    Definitions,
    MemoryStore,
    Orchestrator,
    SagaBuilder,
    SagaClient,
    SagaExecutor,
    SagaStore,
    SnapshotStore,
    StepContext,
    UnknownDefinition,
    Worker,
)


def _noop(ctx: StepContext) -> None:
    return None


ORDER = (
    SagaBuilder("order").step("reserve", _noop, compensation=_noop).pivot("charge", _noop).build()
)


class PersistenceOnly:
    """Only the ``SnapshotStore`` half of a store: what a client needs, nothing more."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.create = store.create
        self.create_many = store.create_many
        self.save = store.save
        self.load = store.load
        self.history = store.history
        self.list = store.list
        self.find_ids = store.find_ids
        self.count = store.count
        self.close = store.close


def test_a_client_needs_only_the_persistence_half_and_a_worker_drives() -> None:
    async def go() -> list[Any]:
        store = MemoryStore()
        persistence = PersistenceOnly(store)
        assert isinstance(persistence, SnapshotStore)
        assert not isinstance(persistence, SagaStore)
        client = SagaClient(persistence, [ORDER])
        first = await client.start(ORDER, {"n": 1})
        second, third = await client.start_many(ORDER, [{"n": 2}, {"n": 3}])
        cancelled = await client.cancel(third.saga_id)
        assert cancelled.cancel_requested
        assert not hasattr(client, "drive") and not hasattr(client, "resume")

        definitions = Definitions([ORDER])
        executor = SagaExecutor(store, definitions, worker_id="w1")
        assert executor.definitions is definitions and executor.served == (("order", 1),)
        worker = Worker(executor, poll_interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        ids = [first.saga_id, second.saga_id, third.saga_id]
        while not all([(await store.load(i)).is_terminal for i in ids]):
            await asyncio.sleep(0.01)
        stop.set()
        await task
        return [(await store.load(i)).state for i in ids]

    assert asyncio.run(go()) == ["completed", "completed", "compensated"]


def test_an_executor_drives_only_registered_definitions() -> None:
    async def go() -> None:
        store = MemoryStore()
        started = await SagaClient(store).start(ORDER, {})  # the client registers it
        with pytest.raises(UnknownDefinition):
            await SagaExecutor(store).resume(started.saga_id)
        final = await SagaExecutor(store, [ORDER]).resume(started.saga_id)
        assert final.state == "completed"

    asyncio.run(go())


def test_the_orchestrator_is_both_over_one_registry() -> None:
    async def go() -> None:
        orchestrator = Orchestrator(MemoryStore(), [ORDER])
        assert isinstance(orchestrator, SagaExecutor)
        assert isinstance(orchestrator.client, SagaClient)
        assert orchestrator.client.definitions is orchestrator.definitions
        started = await orchestrator.start(ORDER, {})
        assert (await orchestrator.resume(started.saga_id)).state == "completed"

    asyncio.run(go())
