"""Parallel groups run by the executor and by workers, on memory and PostgreSQL: branch
calls overlap (bounded by max_concurrency), each outcome is its own saved transition,
failures undo exactly what may have acted, and a saga left mid-fan-out by a dead worker
is resumed branch by branch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from saga_fsm import (
    ForEach,
    MemoryStore,
    Orchestrator,
    Parallel,
    RetryPolicy,
    SagaDefinition,
    SagaExecutor,
    Step,
    StepContext,
    StepFailed,
    StepStatus,
)
from saga_fsm._worker import Worker

FAST = RetryPolicy(max_attempts=2, initial_interval=0.01, max_interval=0.01)


class Calls:
    """A fake participant: what ran, and how many calls overlapped at most."""

    def __init__(self, *, delay: float = 0.05, refuse: frozenset[str] = frozenset()) -> None:
        self.delay = delay
        self.refuse = refuse
        self.log: list[str] = []
        self.keys: list[str] = []
        self.items: list[Any] = []
        self.running = 0
        self.most = 0
        self.block: asyncio.Event | None = None

    async def act(self, ctx: StepContext) -> dict[str, Any]:
        self.running += 1
        self.most = max(self.most, self.running)
        self.keys.append(ctx.idempotency_key)
        self.items.append(ctx.data.get("item"))
        try:
            if self.block is not None and ctx.step.endswith("/slow"):
                await self.block.wait()
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if ctx.step in self.refuse:
            self.log.append(f"refused {ctx.step}")
            raise StepFailed(f"{ctx.step} refused", retryable=False)
        self.log.append(ctx.step)
        return {ctx.step.replace("/", "_"): ctx.data.get("item", True)}

    async def undo(self, ctx: StepContext) -> None:
        self.log.append(f"undo {ctx.step}")


def order(calls: Calls, **group: Any) -> SagaDefinition:
    def step(name: str) -> Step:
        return Step(name, calls.act, calls.undo, retry=FAST, compensation_retry=FAST)

    branches = {
        "north": [step("reserve")],
        "south": [step("reserve"), step("slow")],
        "east": [step("reserve")],
    }
    return SagaDefinition(
        "parallel_test",
        [
            step("open"),
            Parallel("reserve_all", branches=branches, **group),
            ForEach("book", items="parcels", steps=[step("courier")], max_concurrency=2),
            Step("charge", calls.act, kind="pivot", retry=FAST),
        ],
    )


@asynccontextmanager
async def store_of(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryStore()
        return
    from saga_fsm.stores.postgres import PostgresStore

    store = await PostgresStore.open(request.getfixturevalue("postgres_dsn"))
    try:
        yield store
    finally:
        await store.close()


DATA = {"parcels": ["p1", "p2", "p3"]}


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_branches_run_at_once_and_the_saga_completes_with_their_data(
    kind: str, request: pytest.FixtureRequest
) -> None:
    calls = Calls(delay=0.2)
    saga = order(calls)

    async def go() -> None:
        async with store_of(kind, request) as store:
            executor = SagaExecutor(store, [saga])
            began = time.perf_counter()
            done = await executor.run(saga, DATA)
            took = time.perf_counter() - began
            assert done.state == "completed", done.failure
            # open, three reservations at once then slow, three couriers two at a time,
            # charge: six calls of 0.2 s in a row at most, not eleven.
            assert took < 6 * 0.2 + 0.6, took
            assert calls.most == 3
            assert done.data["reserve_all_north_reserve"] is True
            assert done.data["book"] == [
                {"book_0_courier": "p1"},
                {"book_1_courier": "p2"},
                {"book_2_courier": "p3"},
            ]
            assert sorted(calls.items[-4:-1]) == ["p1", "p2", "p3"]
            assert len(set(calls.keys)) == len(calls.keys)  # a key per branch and item
            history = await store.history(done.saga_id)
            moved = [e for e in history if e.trigger == "branch_progress"]
            assert len(moved) == 4 + 3  # each branch call's outcome is its own transition
            assert all(e.detail["branches"] for e in moved)
            loaded = await store.load(done.saga_id)
            assert loaded == done

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_a_refused_branch_undoes_what_acted_once_each_then_the_steps_before(
    kind: str, request: pytest.FixtureRequest
) -> None:
    calls = Calls(delay=0.05, refuse=frozenset({"reserve_all/east/reserve"}))
    saga = order(calls)

    async def go() -> None:
        async with store_of(kind, request) as store:
            done = await SagaExecutor(store, [saga]).run(saga, DATA)
            assert done.state == "compensated"
            undone = [c for c in calls.log if c.startswith("undo")]
            assert sorted(undone[:-1]) == [
                "undo reserve_all/north/reserve",
                "undo reserve_all/south/reserve",
            ] or sorted(undone[:-1]) == [
                "undo reserve_all/north/reserve",
                "undo reserve_all/south/reserve",
                "undo reserve_all/south/slow",
            ]
            # South's steps are undone last first; "open" after every branch.
            if "undo reserve_all/south/slow" in undone:
                assert undone.index("undo reserve_all/south/slow") < undone.index(
                    "undo reserve_all/south/reserve"
                )
            assert undone[-1] == "undo open"
            assert len(undone) == len(set(undone))
            assert not any("courier" in c for c in calls.log)

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_a_worker_resumes_a_saga_a_dead_worker_left_mid_fan_out(
    kind: str, request: pytest.FixtureRequest
) -> None:
    calls = Calls(delay=0.01)
    saga = order(calls, max_concurrency=2)

    async def go() -> None:
        async with store_of(kind, request) as store:
            # The first worker dies with south's slow step and a reservation in flight.
            calls.block = asyncio.Event()
            first = SagaExecutor(store, [saga], worker_id="dead", lease_seconds=0.3)
            task = asyncio.create_task(first.run(saga, DATA))
            for _ in range(500):
                await asyncio.sleep(0.01)
                listed = await store.list()
                group = listed[0].step("reserve_all") if listed else None
                south = [b for b in (group.branches or ()) if b.key == "south"] if group else []
                if south and south[0].state == "running:slow":
                    break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            (left,) = await store.list()
            assert left.state == "running:reserve_all"
            calls.block.set()
            ran = list(calls.log)
            worker = Worker(
                Orchestrator(store, [saga], worker_id="w2", lease_seconds=0.3),
                poll_interval=0.01,
            )
            stop = asyncio.Event()
            serving = asyncio.create_task(worker.run(stop, grace=1))
            try:
                async with asyncio.timeout(20):
                    while not (await store.load(left.saga_id)).is_terminal:
                        await asyncio.sleep(0.02)
            finally:
                stop.set()
                await serving
            done = await store.load(left.saga_id)
            assert done.state == "completed", done.failure
            # What the dead worker had saved as done is not run again; what was in
            # flight (or ran without its outcome saved) runs again, same key.
            saved = {"open"} | {
                f"reserve_all/{b.key}/{r.name}"
                for b in left.step("reserve_all").branches or ()
                for r in b.steps
                if r.status is StepStatus.SUCCEEDED
            }
            assert "reserve_all/south/reserve" in saved
            again = calls.log[len(ran) :]
            assert not saved & set(again), (saved, again)
            assert "reserve_all/south/slow" in again
            assert {b.state for b in done.step("reserve_all").branches or ()} == {"running:_join"}

    asyncio.run(go())


def test_a_long_branch_back_off_hands_the_saga_back_and_a_worker_finishes_it() -> None:
    calls = Calls(delay=0.0)
    flaky: dict[str, int] = {}

    async def once_flaky(ctx: StepContext) -> None:
        flaky[ctx.step] = flaky.get(ctx.step, 0) + 1
        if flaky[ctx.step] == 1:
            raise ConnectionError("reply lost")

    slow_retry = RetryPolicy(max_attempts=3, initial_interval=0.3, max_interval=0.3)
    saga = SagaDefinition(
        "backoff",
        [
            Parallel(
                "g",
                branches={
                    "a": [Step("r", once_flaky, calls.undo, retry=slow_retry)],
                    "b": [Step("r", calls.act, calls.undo)],
                },
            )
        ],
    )

    async def go() -> None:
        store = MemoryStore()
        started = await Orchestrator(store, [saga]).start(saga, {})
        worker = Worker(
            Orchestrator(store, [saga], worker_id="w1"), poll_interval=0.01, max_hold=0.05
        )
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.run(stop, grace=1))
        try:
            async with asyncio.timeout(10):
                while not (await store.load(started.saga_id)).is_terminal:
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await serving
        done = await store.load(started.saga_id)
        assert done.state == "completed" and flaky == {"g/a/r": 2}

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_an_operator_cancel_during_the_group_undoes_it_once_its_calls_settle(
    kind: str, request: pytest.FixtureRequest
) -> None:
    calls = Calls(delay=0.01)
    saga = order(calls)

    async def go() -> None:
        async with store_of(kind, request) as store:
            calls.block = asyncio.Event()
            executor = SagaExecutor(store, [saga])
            running = asyncio.create_task(executor.run(saga, DATA))
            for _ in range(500):
                await asyncio.sleep(0.01)
                listed = await store.list()
                group = listed[0].step("reserve_all") if listed else None
                branches = group.branches if group is not None else None
                if branches and any(b.state == "running:slow" for b in branches):
                    break
            (saga_row,) = await store.list()
            cancelled = await Orchestrator(store, [saga]).cancel(saga_row.saga_id)
            assert cancelled.state == "running:reserve_all" and cancelled.cancel_requested
            calls.block.set()  # south's slow step settles, then everything is undone
            done = await asyncio.wait_for(running, 20)
            # The driver took the cancel in when its next save lost the race to it.
            assert done.state == "compensated"
            assert done.failure is not None and done.failure.type == "Cancelled"
            undone = [c.removeprefix("undo ") for c in calls.log if c.startswith("undo ")]
            forward = [c for c in calls.log if not c.startswith(("undo ", "refused "))]
            assert sorted(undone) == sorted(forward) and undone[-1] == "open"
            assert not any("courier" in c for c in calls.log)

    asyncio.run(go())
