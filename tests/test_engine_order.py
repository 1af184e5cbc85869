"""The orchestrator's own ordering and fencing, on every store (memory, SQLite, PostgreSQL).

Each participant here is a probe: at the start of every action and compensation it reads
the saga from the durable store (a second store object: its own connection) and checks
that the step is persisted as in flight and that every outcome it returned before is
already committed. An engine that acted before it persisted would run the next side
effect on a state a crash would forget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from saga_fsm import (
    ConcurrencyConflict,
    MemoryStore,
    Orchestrator,
    PostgresStore,
    SagaBuilder,
    SagaDefinition,
    SqliteStore,
    StepContext,
    StepFailed,
    StepStatus,
)
from saga_fsm.stores import SnapshotStore

STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ACTED = {StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED}
FAILED = {StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING}
FAILED |= {StepStatus.COMPENSATED, StepStatus.SKIPPED}


@asynccontextmanager
async def two_views(kind: str, where: Path, conninfo: str) -> AsyncIterator[tuple[Any, Any]]:
    """The store the engine writes to, and a second one reading the same durable rows."""
    if kind == "memory":
        memory = MemoryStore()
        yield memory, memory
        return
    stores: list[SnapshotStore] = []
    for _ in range(2):
        if kind == "sqlite":
            stores.append(SqliteStore(str(where / "sagas.db")))
        else:
            stores.append(await PostgresStore.open(conninfo, max_size=2))
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def conninfo(kind: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_dsn")) if kind == "postgres" else ""


class Probe:
    """Participants that log each call (in order) and check the durable store first."""

    def __init__(self, view: SnapshotStore) -> None:
        self.view = view
        self.calls: list[tuple[str, str, int]] = []  # (phase, step, attempt), in call order
        self.outcomes: list[tuple[str, str, int, bool]] = []  # (phase, step, attempt, ok)
        self.violations: list[str] = []
        self.fail_at: set[str] = set()

    async def check(self, ctx: StepContext, phase: str) -> None:
        stored = await self.view.load(ctx.saga_id)
        here = stored.step(ctx.step)
        in_flight = StepStatus.COMPENSATING if phase == "undo" else StepStatus.RUNNING
        attempts = here.compensation_attempts if phase == "undo" else here.attempts
        if here.status != in_flight or attempts != ctx.attempt:
            self.violations.append(
                f"{phase} {ctx.step}#{ctx.attempt} started while the store has"
                f" {here.status}#{attempts}"
            )
        for done_phase, step, attempt, ok in self.outcomes:
            record = stored.step(step)
            if done_phase == "undo":
                committed = record.status == StepStatus.COMPENSATED
            elif ok:
                committed = record.status in ACTED
            else:
                committed = record.status in FAILED or record.attempts > attempt
            if not committed:
                self.violations.append(
                    f"{phase} {ctx.step}#{ctx.attempt} started before {done_phase} {step}"
                    f"#{attempt} was committed (store: {record.status}, {stored.state})"
                )

    def action(self, name: str) -> Callable[[StepContext], Any]:
        async def act(ctx: StepContext) -> dict[str, Any]:
            await self.check(ctx, "do")
            self.calls.append(("do", name, ctx.attempt))
            ok = name not in self.fail_at
            self.outcomes.append(("do", name, ctx.attempt, ok))
            if not ok:
                raise StepFailed(f"{name} refused", retryable=False)
            return {name: ctx.attempt}

        return act

    def undo(self, name: str) -> Callable[[StepContext], Any]:
        async def compensate(ctx: StepContext) -> None:
            await self.check(ctx, "undo")
            self.calls.append(("undo", name, ctx.attempt))
            self.outcomes.append(("undo", name, ctx.attempt, True))

        return compensate

    def saga(self) -> SagaDefinition:
        builder = SagaBuilder("probed")
        for name in ("a", "b", "c"):
            builder = builder.step(name, self.action(name), compensation=self.undo(name))
        return builder.pivot("d", self.action("d")).retriable("e", self.action("e")).build()


@pytest.mark.parametrize("fail_at", [None, "a", "c", "d"])
def test_every_outcome_is_committed_before_the_next_call_and_undone_in_reverse(
    kind: str, conninfo: str, tmp_path: Path, fail_at: str | None
) -> None:
    async def go() -> tuple[Probe, str]:
        async with two_views(kind, tmp_path, conninfo) as (store, view):
            probe = Probe(view)
            if fail_at:
                probe.fail_at.add(fail_at)
            saga = probe.saga()
            final = await Orchestrator(store, [saga]).run(saga, {})
            return probe, final.state

    probe, state = asyncio.run(go())
    assert probe.violations == []
    forward = [step for phase, step, _ in probe.calls if phase == "do"]
    undone = [step for phase, step, _ in probe.calls if phase == "undo"]
    if fail_at is None:
        assert (state, forward, undone) == ("completed", ["a", "b", "c", "d", "e"], [])
    else:
        stop = "abcde".index(fail_at)
        assert state == "compensated"
        assert forward == list("abcde"[: stop + 1])
        assert undone == list(reversed("abc"[:stop])), "compensations in the wrong order"


class Zombie:
    """Participants for two workers: ``w1`` stalls in step ``a`` until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (worker, key)
        self.applied: dict[str, int] = {}  # key -> times a key-honouring participant applied it
        self.inside = asyncio.Event()
        self.release = asyncio.Event()

    def saga(self, worker: str) -> SagaDefinition:
        async def act(ctx: StepContext) -> None:
            self.calls.append((worker, ctx.idempotency_key))
            if worker == "w1" and ctx.step == "a":
                self.inside.set()
                await self.release.wait()
            self.applied[ctx.idempotency_key] = self.applied.get(ctx.idempotency_key, 0) + 1

        async def undo(ctx: StepContext) -> None:
            self.calls.append((worker, ctx.idempotency_key))

        return (
            SagaBuilder("fenced")
            .step("a", act, compensation=undo)
            .step("b", act, compensation=undo)
            .pivot("c", act)
            .build()
        )


def test_a_stalled_worker_is_fenced_off_after_a_takeover(
    kind: str, conninfo: str, tmp_path: Path
) -> None:
    """``w1`` stalls past its lease inside step a; ``w2`` takes the saga over. When ``w1``
    wakes up, its write is refused (the takeover bumped the version) before ``w2`` wrote
    anything, ``w1`` stops driving, and ``w2`` finishes the saga alone."""

    async def go() -> tuple[Zombie, Any, Any, Any]:
        async with two_views(kind, tmp_path, conninfo) as (store, view):
            zombie = Zombie()
            first = zombie.saga("w1")
            w1 = Orchestrator(store, [first], worker_id="w1", lease_seconds=0.3)
            run = asyncio.create_task(w1.run(first, {}))
            async with asyncio.timeout(30):
                await zombie.inside.wait()
            (stalled,) = await view.list()
            # w2's clock is past w1's lease: the lease is expired as far as w2 can tell.
            later = stalled.updated_at + timedelta(hours=1)
            taken = await view.acquire(stalled.saga_id, "w2", now=later, lease_seconds=3600)
            with pytest.raises(ConcurrencyConflict):  # the zombie's write, as it would be
                await view.save(stalled, (), expected_version=stalled.version)
            zombie.release.set()
            left = await run  # w1's step a returns now: its result write must be refused
            after_zombie = await view.load(stalled.saga_id)
            w2 = Orchestrator(view, [zombie.saga("w2")], worker_id="w2", lease_seconds=3600)
            left_lease = await view.lease(stalled.saga_id)
            final = await w2.drive(taken)
            final_lease = await view.lease(final.saga_id)
            return zombie, left, after_zombie, (taken, final), (left_lease, final_lease)

    zombie, left, after_zombie, (taken, final), (left_lease, final_lease) = asyncio.run(go())
    assert left.version == taken.version and left_lease is not None and left_lease.owner == "w2"
    # Nothing the zombie did after the takeover reached the store...
    assert (after_zombie.version, after_zombie.state) == (taken.version, taken.state)
    assert after_zombie.step("a").status == StepStatus.RUNNING
    # ...nor any participant: it ran only the step it was in when it stalled.
    assert [key for worker, key in zombie.calls if worker == "w1"] == [f"{final.saga_id}:a"]
    assert final.state == "completed" and final_lease is None
    # Step a ran twice under one key (at least once), everything else exactly once.
    assert zombie.applied == {
        f"{final.saga_id}:a": 2,
        f"{final.saga_id}:b": 1,
        f"{final.saga_id}:c": 1,
    }
