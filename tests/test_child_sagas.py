"""Child sagas run by the executor on each store: forward, failure, compensation of a
completed child, a parent's cancel, and recovery from crashes around the child."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saga_fsm import (
    ChildSaga,
    RetryPolicy,
    SagaDefinition,
    SagaExecutor,
    Step,
    StepContext,
    StepFailed,
    StepKind,
)
from saga_fsm._clock import FakeClock
from saga_fsm._errors import DefinitionError
from saga_fsm._orchestrator import Orchestrator
from saga_fsm.stores import MemoryStore
from saga_fsm.stores._protocol import SagaStore
from saga_fsm.stores.sqlite import SqliteStore


class World:
    """Recording actions: what ran, per saga, and which steps refuse."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        self.transient: Counter[str] = Counter()  # step -> failures left

    def action(self, name: str) -> Callable[[StepContext], dict[str, Any]]:
        def act(ctx: StepContext) -> dict[str, Any]:
            self.calls.append((name, ctx.saga_id))
            if name in self.refuse:
                raise StepFailed(f"{name} refused", retryable=False)
            if self.transient[name] > 0:
                self.transient[name] -= 1
                raise ConnectionError(f"{name} unavailable")
            return {f"{name}_done": True}

        return act

    def undo(self, name: str) -> Callable[[StepContext], None]:
        def undo(ctx: StepContext) -> None:
            self.calls.append((f"undo {name}", ctx.saga_id))

        return undo

    def ran(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)


SLOW_RETRY = RetryPolicy(max_attempts=3, initial_interval=100.0, max_interval=100.0)


def definitions(world: World) -> tuple[SagaDefinition, SagaDefinition]:
    child = SagaDefinition(
        "ship",
        [
            Step("book", world.action("book"), world.undo("book"), retry=SLOW_RETRY),
            Step("label", world.action("label"), world.undo("label")),
        ],
        reversible=True,
    )
    parent = SagaDefinition(
        "order",
        [
            Step("reserve", world.action("reserve"), world.undo("reserve")),
            ChildSaga("ship", definition=child, input=["order_id"], output=["label_done"]),
            Step("charge", world.action("charge"), world.undo("charge")),
        ],
    )
    return parent, child


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    kind: str = request.param
    if kind == "postgres":
        conninfo: str = request.getfixturevalue("postgres_dsn")

        async def make() -> SagaStore:
            from saga_fsm.stores.postgres import PostgresStore

            return await PostgresStore.open(conninfo, max_size=4)

    elif kind == "sqlite":

        async def make() -> SagaStore:
            return SqliteStore(tmp_path / "sagas.db")

    else:

        async def make() -> SagaStore:
            return MemoryStore()

    yield make


def run(store_factory: Callable[[], Any], scenario: Callable[[SagaStore], Any]) -> Any:
    async def main() -> Any:
        store = await store_factory()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_completed_child_is_the_step_succeeding(store_factory: Callable[[], Any]) -> None:
    world = World()
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        executor = SagaExecutor(store, [parent], clock=FakeClock())
        done = await executor.run(parent, {"order_id": 7, "secret": "s"}, saga_id="o-1")
        assert done.state == "completed"
        # Only the declared output comes back; only the declared input went in.
        assert done.data == {
            "order_id": 7,
            "secret": "s",
            "reserve_done": True,
            "label_done": True,
            "charge_done": True,
        }
        (child,) = await store.list(parent="o-1")
        assert not isinstance(child, Exception)
        assert (child.saga_id, child.state) == ("o-1:ship:1", "completed")
        assert (child.parent_id, child.parent_step) == ("o-1", "ship")
        assert child.data == {"order_id": 7, "book_done": True, "label_done": True}
        assert await store.count(parent="o-1") == 1
        assert await store.list(parent="o-1:ship:1") == []
        assert [c for c, _ in world.calls] == ["reserve", "book", "label", "charge"]

    run(store_factory, scenario)


def test_a_compensated_child_fails_the_step_for_good(store_factory: Callable[[], Any]) -> None:
    world = World()
    world.refuse.add("label")
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        executor = SagaExecutor(store, [parent], clock=FakeClock())
        done = await executor.run(parent, {"order_id": 7}, saga_id="o-2")
        assert done.state == "compensated"
        child = await store.load("o-2:ship:1")
        assert child.state == "compensated"
        assert done.step("ship").error is not None
        assert done.step("ship").error.type == "ChildCompensated"
        # The child undid itself; the parent undid only what came before it.
        assert [c for c, _ in world.calls] == [
            "reserve",
            "book",
            "label",
            "undo book",
            "undo reserve",
        ]

    run(store_factory, scenario)


def test_compensating_the_parent_compensates_a_completed_child(
    store_factory: Callable[[], Any],
) -> None:
    world = World()
    world.refuse.add("charge")
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        executor = SagaExecutor(store, [parent], clock=FakeClock())
        done = await executor.run(parent, {"order_id": 7}, saga_id="o-3")
        assert done.state == "compensated"
        child = await store.load("o-3:ship:1")
        assert child.state == "compensated"
        history = [
            (h.from_state, h.trigger, h.to_state) for h in await store.history(child.saga_id)
        ]
        assert ("completed", "compensate", "compensating:label") in history
        assert [c for c, _ in world.calls] == [
            "reserve",
            "book",
            "label",
            "charge",
            "undo label",
            "undo book",
            "undo reserve",
        ]

    run(store_factory, scenario)


def test_a_lost_notice_is_only_late(
    store_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the child finished and before the parent heard of it: the
    parent's next look applies the outcome."""
    world = World()
    parent, _ = definitions(world)

    async def lost(*_args: object) -> None:
        return None

    async def scenario(store: SagaStore) -> None:
        clock = FakeClock()
        executor = SagaExecutor(store, [parent], clock=clock)
        with monkeypatch.context() as patched:
            patched.setattr("saga_fsm._executor.notify_parent", lost)
            waiting = await executor.run(parent, {"order_id": 1}, saga_id="o-4")
        assert waiting.state == "running:ship"
        assert (await store.load("o-4:ship:1")).state == "completed"
        assert await store.lease("o-4") is None  # nobody holds a waiting parent
        # Not due before its next look; due then, and a worker finishes it.
        claim = {"lease_seconds": 30, "limit": 10, "definitions": executor.claimable}
        assert await store.claim_due("w", now=clock.now(), **claim) == []
        clock.advance(31)
        (claimed,) = await store.claim_due(executor.worker_id, now=clock.now(), **claim)
        assert not isinstance(claimed, Exception)
        done = await executor.drive(claimed)
        assert done.state == "completed" and done.data["label_done"] is True
        assert world.ran("book") == 1 and await store.count(parent="o-4") == 1

    run(store_factory, scenario)


def test_a_crash_before_the_child_was_created_starts_it_once(
    store_factory: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    parent, _ = definitions(world)

    class Crash(Exception):
        pass

    async def crash(*_args: object) -> None:
        raise Crash

    async def scenario(store: SagaStore) -> None:
        clock = FakeClock()
        executor = SagaExecutor(store, [parent], clock=clock)
        with monkeypatch.context() as patched, pytest.raises(Crash):
            patched.setattr("saga_fsm._nesting._start", crash)
            await executor.run(parent, {"order_id": 1}, saga_id="o-5")
        snapshot = await store.load("o-5")
        # Recorded running (the child's request named) before any child exists.
        assert snapshot.state == "running:ship"
        assert snapshot.step("ship").request_id == "o-5:ship:1"
        assert await store.list(parent="o-5") == []
        clock.advance(31)
        done = await executor.resume("o-5")
        assert done.state == "completed"
        # A second look at the same attempt finds the child, never starts another.
        assert await store.count(parent="o-5") == 1 and world.ran("book") == 1

    run(store_factory, scenario)


def test_cancelling_the_parent_cancels_its_running_child(
    store_factory: Callable[[], Any],
) -> None:
    world = World()
    world.transient["book"] = 1  # the child waits 100 s for its retry
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        clock = FakeClock()
        orchestrator = Orchestrator(store, [parent], clock=clock)
        started = await orchestrator.start(parent, {"order_id": 1}, saga_id="o-6")
        leased = await store.acquire(
            started.saga_id, orchestrator.worker_id, now=clock.now(), lease_seconds=30
        )
        waiting = await orchestrator.drive(leased, max_hold=1.0)
        assert waiting.state == "running:ship"
        child = await store.load("o-6:ship:1")
        assert child.state == "running:book" and child.wake_at is not None

        await orchestrator.cancel("o-6")
        child = await store.load("o-6:ship:1")
        # The child's book attempt may have acted: its own compensation runs.
        assert child.state == "compensating:book" and child.cancel_requested
        claimed = await store.claim_due(
            orchestrator.worker_id,
            now=clock.now(),
            lease_seconds=30,
            limit=10,
            definitions=orchestrator.claimable,
        )
        assert [s.saga_id for s in claimed] == ["o-6:ship:1"]
        assert not isinstance(claimed[0], Exception)
        await orchestrator.drive(claimed[0])
        parent_now = await store.load("o-6")
        assert parent_now.state == "compensated"
        assert (await store.load("o-6:ship:1")).state == "compensated"
        assert world.ran("undo book") == 1 and world.ran("undo reserve") == 1
        assert world.ran("label") == 0 and world.ran("charge") == 0

    run(store_factory, scenario)


def test_a_child_named_by_string_must_be_served_and_fit() -> None:
    child = SagaDefinition("kid", [Step("a", _noop, _noop)])
    parent = SagaDefinition("p", [Step("first", _noop, _noop), ChildSaga("kid", definition="kid")])

    async def scenario() -> None:
        alone = SagaExecutor(MemoryStore(), [parent], clock=FakeClock())
        with pytest.raises(DefinitionError) as err:
            await alone.run(parent, {})
        assert (err.value.row, err.value.step, err.value.field) == (1, "kid", "definition")
        assert "not registered here" in err.value.reason
        both = SagaExecutor(MemoryStore(), [parent, child], clock=FakeClock())
        with pytest.raises(DefinitionError, match="not marked reversible"):
            await both.run(parent, {})

    asyncio.run(scenario())


def _noop(_ctx: StepContext) -> None:
    return None


def test_a_pivot_child_may_be_any_definition() -> None:
    one_way = SagaDefinition(
        "one_way", [Step("a", _noop, _noop), Step("go", _noop, kind=StepKind.PIVOT)]
    )
    parent = SagaDefinition(
        "p",
        [
            Step("first", _noop, _noop),
            ChildSaga("kid", definition=one_way, kind=StepKind.PIVOT),
            Step("after", _noop, kind=StepKind.RETRIABLE),
        ],
    )

    async def scenario() -> None:
        executor = SagaExecutor(MemoryStore(), [parent], clock=FakeClock())
        assert (await executor.run(parent, {})).state == "completed"

    asyncio.run(scenario())


def test_workers_run_parents_and_children_started_elsewhere(
    store_factory: Callable[[], Any],
) -> None:
    """A client starts parents; two workers (serving the parent, and with it the child)
    run them and their children to the end: one child each."""
    from saga_fsm import SagaClient, Worker

    world = World()
    world.refuse.add("charge")
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        client = SagaClient(store, [parent])
        for n in range(6):
            await client.start(parent, {"order_id": n}, saga_id=f"w-{n}")
        stop = asyncio.Event()
        workers = [
            Worker(Orchestrator(store, [parent], worker_id=f"w{k}"), poll_interval=0.01)
            for k in (1, 2)
        ]
        tasks = [asyncio.create_task(w.run(stop, grace=1)) for w in workers]
        try:
            for _ in range(500):
                if await store.count(unfinished=True) == 0 and await store.count() == 12:
                    break
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        for n in range(6):
            assert (await store.load(f"w-{n}")).state == "compensated"
            (child,) = await store.list(parent=f"w-{n}")
            assert not isinstance(child, Exception) and child.state == "compensated"
        assert world.ran("book") == world.ran("undo book") == 6

    run(store_factory, scenario)


def test_grandchildren_are_started_and_undone_down_the_tree() -> None:
    world = World()
    world.refuse.add("charge")
    grandchild = SagaDefinition(
        "label", [Step("print", world.action("print"), world.undo("print"))], reversible=True
    )
    child = SagaDefinition(
        "ship",
        [
            Step("book", world.action("book"), world.undo("book")),
            ChildSaga("label", definition=grandchild),
        ],
        reversible=True,
    )
    parent = SagaDefinition(
        "order",
        [ChildSaga("ship", definition=child), Step("charge", world.action("charge"), _noop)],
    )

    async def scenario() -> None:
        store = MemoryStore()
        done = await SagaExecutor(store, [parent], clock=FakeClock()).run(parent, {}, saga_id="g")
        assert done.state == "compensated"
        assert (await store.load("g:ship:1")).state == "compensated"
        assert (await store.load("g:ship:1:label:1")).state == "compensated"
        assert [c for c, _ in world.calls] == ["book", "print", "charge", "undo print", "undo book"]

    asyncio.run(scenario())


def test_a_parents_look_carries_a_cancel_to_its_child(store_factory: Callable[[], Any]) -> None:
    """The cancel was written on the parent, and the process died before it reached
    the child: the parent's next look cancels the child and sees it through."""
    from saga_fsm._core import Event as CoreEvent
    from saga_fsm._core import decide

    world = World()
    world.transient["book"] = 1
    parent, _ = definitions(world)

    async def scenario(store: SagaStore) -> None:
        clock = FakeClock()
        orchestrator = Orchestrator(store, [parent], clock=clock)
        await orchestrator.start(parent, {"order_id": 1}, saga_id="o-7")
        leased = await store.acquire(
            "o-7", orchestrator.worker_id, now=clock.now(), lease_seconds=30
        )
        await orchestrator.drive(leased, max_hold=1.0)
        waiting = await store.load("o-7")
        cancelled = decide(parent, waiting, CoreEvent.cancel(clock.now()))
        await store.save(cancelled.snapshot, cancelled.history, expected_version=waiting.version)
        assert (await store.load("o-7:ship:1")).cancel_requested is False
        clock.advance(31)
        claimed = await store.claim_due(
            orchestrator.worker_id,
            now=clock.now(),
            lease_seconds=30,
            limit=10,
            definitions=orchestrator.claimable,
        )
        assert [s.saga_id for s in claimed] == ["o-7"]
        assert not isinstance(claimed[0], Exception)
        done = await orchestrator.drive(claimed[0], max_hold=1.0)
        assert done.state == "compensated"
        assert (await store.load("o-7:ship:1")).state == "compensated"
        assert world.ran("label") == 0 and world.ran("undo book") == 1

    run(store_factory, scenario)
