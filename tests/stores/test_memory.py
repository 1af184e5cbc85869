"""What MemoryStore has beyond the contract: forgetting finished sagas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from saga_fsm._core import new_snapshot
from saga_fsm._errors import SagaNotFound
from saga_fsm.stores import MemoryStore
from tests.stores.test_contract import ORDER

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_discard_forgets_the_row_its_history_and_its_key() -> None:
    store = MemoryStore()

    async def scenario() -> None:
        await store.create(new_snapshot(ORDER, "s-1", {}, T0, idempotency_key="k"))
        await store.create(new_snapshot(ORDER, "s-2", {}, T0))
        store.discard("s-1")
        store.discard("never-there")
        with pytest.raises(SagaNotFound):
            await store.load("s-1")
        with pytest.raises(SagaNotFound):
            await store.history("s-1")
        assert await store.find_ids("", 10) == ["s-2"]
        again, created = await store.create(new_snapshot(ORDER, "s-3", {}, T0, idempotency_key="k"))
        assert created and again.saga_id == "s-3"

    asyncio.run(scenario())
