"""Random mixes of versions and tables across workers sharing one store: sagas started
on any of three tables (version 1, version 1 edited without a bump, version 2), some
declined, workers serving random subsets one after another. Nothing ever runs on a table
other than its pinned one; a saga no worker served is untouched and listed unrunnable;
every other saga ends completed or compensated."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_fsm import (
    MemoryStore,
    Orchestrator,
    SagaDefinition,
    Snapshot,
    Worker,
    find_unrunnable,
)
from tests.versioned_sagas import RAN, order_v1, order_v1_edited, order_v2

TABLES: dict[str, SagaDefinition] = {
    "v1": order_v1,
    "v1-edited": order_v1_edited,
    "v2": order_v2,
}
# Two tables under one (name, version) never share a process's registry: a worker is
# given a compatible subset.
WORKER_SETS = [["v1"], ["v1-edited"], ["v2"], ["v1", "v2"], ["v1-edited", "v2"]]


async def _drain(store: MemoryStore, tables: list[str], n: int) -> None:
    """Run a worker serving ``tables`` until every saga of them is finished."""
    worker = Worker(
        Orchestrator(store, [TABLES[t] for t in tables], worker_id=f"w{n}"),
        poll_interval=0.005,
    )
    mine = {TABLES[t].version for t in tables}
    served = Orchestrator(store, [TABLES[t] for t in tables]).definitions

    async def done() -> bool:
        for s in await store.list():
            assert isinstance(s, Snapshot)
            if s.definition_version in mine and not s.is_terminal:
                try:
                    served.compiled_for(s)
                except LookupError:
                    continue  # another table: never finished here
                return False
        return True

    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, grace=1))
    try:
        async with asyncio.timeout(20):
            while not await done():
                await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    sagas=st.lists(st.tuples(st.sampled_from(sorted(TABLES)), st.booleans()), max_size=8),
    workers=st.lists(st.sampled_from(range(len(WORKER_SETS))), max_size=4),
)
def test_nothing_runs_on_a_table_other_than_its_pinned_one(
    sagas: list[tuple[str, bool]], workers: list[int]
) -> None:
    RAN.clear()

    async def go() -> None:
        store = MemoryStore()
        started: dict[str, str] = {}
        for table, decline in sagas:
            snapshot = await Orchestrator(store, [TABLES[table]]).start(
                TABLES[table], {"decline": decline}
            )
            started[snapshot.saga_id] = table
        served: set[str] = set()
        for n, index in enumerate(workers):
            await _drain(store, WORKER_SETS[index], n)
            served.update(WORKER_SETS[index])
        for saga_id, table in started.items():
            ran = {t for s, t, _ in RAN if s == saga_id}
            assert ran <= {table}, (saga_id, table, ran)
            final = await store.load(saga_id)
            if table in served:
                assert final.state in ("completed", "compensated"), final.state
            else:
                assert (final.state, ran) == ("pending", set())
        last = WORKER_SETS[workers[-1]] if workers else ["v2"]
        unrunnable = await find_unrunnable(store, [TABLES[t] for t in last])
        stranded = {u.snapshot.saga_id for u in unrunnable}
        assert stranded == {i for i, t in started.items() if t not in served | set(last)}

    asyncio.run(go())
