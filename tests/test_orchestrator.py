"""The engine end to end on the in-memory store with a fake clock."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from attrs import evolve

from saga_fsm import (
    FakeClock,
    IdempotencyKeyReused,
    InvalidSagaData,
    MemoryStore,
    Orchestrator,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    StepContext,
    StepFailed,
    StepStatus,
    TransitionNotAllowed,
)

FAST = RetryPolicy(max_attempts=3, initial_interval=1, max_interval=10)


class World:
    """Records every call an action or compensation makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.fail: dict[str, list[BaseException | None]] = {}

    def action(self, name: str, result: dict[str, Any] | None = None) -> Any:
        async def act(ctx: StepContext) -> dict[str, Any] | None:
            self.calls.append((name, ctx.attempt, ctx.idempotency_key))
            script = self.fail.get(name)
            if script:
                error = script.pop(0)
                if error is not None:
                    raise error
            return result

        return act


def order(world: World, **options: Any) -> SagaDefinition:
    return (
        SagaBuilder("order")
        .step(
            "reserve",
            world.action("reserve", {"rid": "r1"}),
            compensation=world.action("release"),
            retry=FAST,
            **options,
        )
        .step(
            "pay",
            world.action("pay", {"pid": "p1"}),
            compensation=world.action("refund"),
            retry=FAST,
            **options,
        )
        .pivot("ship", world.action("ship"), retry=FAST)
        .retriable(
            "notify",
            world.action("notify"),
            retry=RetryPolicy(max_attempts=None, initial_interval=1),
        )
        .build()
    )


async def run(
    definition: SagaDefinition, data: dict[str, Any] | None = None
) -> tuple[Orchestrator, Any]:
    orchestrator = Orchestrator(MemoryStore(), [definition], clock=FakeClock())
    return orchestrator, await orchestrator.run(definition, data or {"order": 1})


def test_happy_path_runs_every_step_once_and_merges_results() -> None:
    world = World()
    _, final = asyncio.run(run(order(world)))
    assert final.state == "completed"
    assert [c[0] for c in world.calls] == ["reserve", "pay", "ship", "notify"]
    assert final.data == {"order": 1, "rid": "r1", "pid": "p1"}
    assert final.step("reserve").result == {"rid": "r1"}


def test_transient_failures_are_retried_with_backoff_and_the_same_key() -> None:
    world = World()
    world.fail["pay"] = [ConnectionError("reset"), ConnectionError("reset"), None]
    orchestrator, final = asyncio.run(run(order(world)))
    pays = [c for c in world.calls if c[0] == "pay"]
    assert [c[1] for c in pays] == [1, 2, 3]
    assert len({c[2] for c in pays}) == 1
    assert final.state == "completed"
    # Back-off 1 s then 2 s of fake time, no real sleeping.
    assert (orchestrator.clock.now() - final.created_at).total_seconds() >= 3


def test_permanent_failure_compensates_succeeded_steps_in_reverse() -> None:
    world = World()
    world.fail["ship"] = [StepFailed("no carrier", retryable=False)]
    orchestrator, final = asyncio.run(run(order(world)))
    assert final.state == "compensated"
    assert [c[0] for c in world.calls] == ["reserve", "pay", "ship", "refund", "release"]
    assert final.failure is not None and "no carrier" in final.failure.message
    history = asyncio.run(orchestrator.store.history(final.saga_id))
    assert [h.to_state for h in history][-3:] == [
        "compensating:pay",
        "compensating:reserve",
        "compensated",
    ]


def test_non_retryable_exception_types_skip_the_policy() -> None:
    world = World()
    world.fail["pay"] = [KeyError("card")]
    definition = (
        SagaBuilder("s")
        .step("reserve", world.action("reserve"), compensation=world.action("release"))
        .pivot("pay", world.action("pay"), retry=RetryPolicy(non_retryable=(KeyError,)))
        .build()
    )
    _, final = asyncio.run(run(definition))
    assert final.state == "compensated"
    assert [c[0] for c in world.calls] == ["reserve", "pay", "release"]


def test_compensation_that_gives_up_parks_in_failed_and_retry_resumes_it() -> None:
    world = World()
    world.fail["pay"] = [StepFailed("declined", retryable=False)]
    world.fail["release"] = [StepFailed("warehouse offline", retryable=False)]
    orchestrator, final = asyncio.run(run(order(world)))
    assert final.state == "failed"
    assert final.parked_at == "compensating:reserve"
    assert final.failure is not None and "warehouse offline" in final.failure.message
    assert final.step("reserve").status is StepStatus.COMPENSATION_FAILED

    async def operator() -> Any:
        await orchestrator.retry(final.saga_id)
        return await orchestrator.resume(final.saga_id)

    resumed = asyncio.run(operator())
    assert resumed.state == "compensated"
    assert [c[0] for c in world.calls].count("release") == 2


def test_after_the_pivot_failures_are_retried_until_success() -> None:
    world = World()
    world.fail["notify"] = [
        StepFailed("smtp", retryable=False),
        TimeoutError(),
        ConnectionError(),
        None,
    ]
    _, final = asyncio.run(run(order(world)))
    assert final.state == "completed"
    assert final.step("notify").attempts == 4
    assert "release" not in [c[0] for c in world.calls]


def test_step_timeout_fires_and_compensation_runs() -> None:
    release_calls: list[str] = []

    async def hang(ctx: StepContext) -> None:
        await asyncio.sleep(3600)

    def release(ctx: StepContext) -> None:
        release_calls.append(ctx.idempotency_key)

    definition = (
        SagaBuilder("slow")
        .step("reserve", lambda ctx: None, compensation=release)
        .step(
            "pay",
            hang,
            compensation=release,
            timeout=0.05,
            retry=RetryPolicy(max_attempts=2, initial_interval=0.01),
        )
        .build()
    )
    _, final = asyncio.run(run(definition))
    assert final.state == "compensated"
    assert final.step("pay").status is StepStatus.COMPENSATED
    assert final.step("pay").attempts == 2
    # pay may have acted (it timed out): its own compensation runs first.
    assert [key.split(":")[1] for key in release_calls] == ["pay", "reserve"]


def test_sync_actions_run_off_the_event_loop_thread() -> None:
    threads: list[int] = []

    def act(ctx: StepContext) -> dict[str, int]:
        threads.append(threading.get_ident())
        return {"n": 1}

    definition = SagaBuilder("sync").pivot("only", act).build()
    _, final = asyncio.run(run(definition))
    assert final.state == "completed"
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize(
    ("result", "words"),
    [(["not", "a", "mapping"], "mapping"), ({"when": object()}, "JSON"), ({1: "x"}, "string keys")],
)
def test_bad_action_results_are_permanent_failures(result: Any, words: str) -> None:
    definition = (
        SagaBuilder("bad")
        .step("a", lambda ctx: None, compensation=lambda ctx: None)
        .step("b", lambda ctx: result, compensation=lambda ctx: None)
        .build()
    )
    _, final = asyncio.run(run(definition))
    assert final.state == "compensated"
    assert final.failure is not None and words in final.failure.message
    # A pivot that returned something unusable did run: it is parked, not compensated.
    pivoted = (
        SagaBuilder("bad_pivot")
        .step("a", lambda ctx: None, compensation=lambda ctx: None)
        .pivot("b", lambda ctx: result)
        .build()
    )
    _, final = asyncio.run(run(pivoted))
    assert final.state == "failed" and final.parked_at == "running:b"
    assert final.step("a").status is StepStatus.SUCCEEDED
    assert final.failure is not None and words in final.failure.message


def test_cancel_is_refused_past_the_pivot_and_changes_nothing() -> None:
    world = World()
    orchestrator, final = asyncio.run(run(order(world)))
    with pytest.raises(TransitionNotAllowed, match="finished"):
        asyncio.run(orchestrator.cancel(final.saga_id))
    assert asyncio.run(orchestrator.store.load(final.saga_id)) == final


def test_cancel_before_running_then_resume_compensates() -> None:
    world = World()
    definition = order(world)

    async def go() -> Any:
        orchestrator = Orchestrator(MemoryStore(), [definition], clock=FakeClock())
        started = await orchestrator.start(definition, {"x": 1})
        cancelled = await orchestrator.cancel(started.saga_id)
        return cancelled, await orchestrator.resume(started.saga_id)

    cancelled, resumed = asyncio.run(go())
    assert cancelled.state == resumed.state == "compensated"
    assert world.calls == []


def test_start_with_an_idempotency_key_returns_the_existing_instance() -> None:
    definition = order(World())

    async def go() -> tuple[Any, Any, int]:
        store = MemoryStore()
        orchestrator = Orchestrator(store, [definition])
        first = await orchestrator.start(definition, {"a": 1}, idempotency_key="k1")
        second = await orchestrator.start(definition, {"a": 1}, idempotency_key="k1")
        # Another request under the same key is refused, naming the saga it started.
        with pytest.raises(IdempotencyKeyReused) as caught:
            await orchestrator.start(definition, {"a": 2}, idempotency_key="k1")
        assert (caught.value.key, caught.value.saga_id) == ("k1", first.saga_id)
        other = evolve(definition, version=2)
        with pytest.raises(IdempotencyKeyReused):
            await orchestrator.run(other, {"a": 1}, idempotency_key="k1")
        return first, second, len(await store.list())

    first, second, count = asyncio.run(go())
    assert first.saga_id == second.saga_id and second.data == {"a": 1} and count == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"total": float("nan")}, "data.total"),
        ({"order": {"lines": [{"qty": float("inf")}]}}, "data.order.lines[0].qty"),
        ({"big": json.loads("1e999")}, "data.big"),
        ({"when": object()}, "data.when"),
    ],
)
def test_saga_data_json_cannot_hold_is_refused_naming_the_field(
    data: dict[str, Any], field: str
) -> None:
    definition = order(World())

    async def go() -> int:
        store = MemoryStore()
        orchestrator = Orchestrator(store, [definition])
        for attempt in (
            orchestrator.start(definition, data),
            orchestrator.run(definition, data),
            orchestrator.start_many(definition, [{"fine": 1}, data]),
        ):
            with pytest.raises(InvalidSagaData) as caught:
                await attempt
            assert caught.value.path == field and field in str(caught.value)
        return len(await store.list())

    assert asyncio.run(go()) == 0


def test_an_action_returning_nan_fails_its_step_for_good_naming_the_field() -> None:
    async def quote(ctx: StepContext) -> dict[str, Any]:
        return {"price": {"net": float("nan")}}

    undone: list[str] = []

    async def release(ctx: StepContext) -> None:
        undone.append(ctx.step)

    definition = (
        SagaBuilder("nan")
        .step("reserve", _ok, compensation=release)
        .step("quote", quote, read_only=True)
        .build()
    )
    final = asyncio.run(Orchestrator(MemoryStore(), [definition]).run(definition, {}))
    assert final.state == "compensated" and undone == ["reserve"]
    error = final.step("quote").error
    assert error is not None and error.type == "InvalidResult" and not error.retryable
    assert "result.price.net" in error.message and "NaN" in error.message
    assert final.step("quote").attempts == 1  # permanent: never retried


async def _ok(ctx: StepContext) -> None:
    return None


def test_non_json_saga_data_is_refused_before_anything_is_written() -> None:
    definition = order(World())

    async def go() -> int:
        store = MemoryStore()
        with pytest.raises(TypeError):
            await Orchestrator(store, [definition]).start(definition, {"when": object()})
        return len(await store.list())

    assert asyncio.run(go()) == 0


class LateBooking:
    """A sync action that outlives its timeout in its thread, and lands its effect late;
    its compensation undoes whatever is there (nothing, if nothing landed yet)."""

    def __init__(self, takes: float) -> None:
        self.takes = takes
        self.effects: list[str] = []
        self.landed = threading.Event()

    def book(self, ctx: StepContext) -> None:
        time.sleep(self.takes)
        self.effects.append("booked")
        self.landed.set()

    def unbook(self, ctx: StepContext) -> None:
        self.effects.append("unbooked" if "booked" in self.effects else "nothing to undo")

    def definition(self) -> SagaDefinition:
        return (
            SagaBuilder(f"late_{self.takes}")
            .step(
                "book",
                self.book,
                compensation=self.unbook,
                timeout=0.2,
                retry=RetryPolicy(max_attempts=1),
            )
            .pivot("ship", lambda ctx: None)
            .build()
        )


def test_a_timed_out_step_is_undone_after_its_late_effect_lands() -> None:
    booking = LateBooking(takes=0.3)  # past the 0.2 s timeout, within a grace as long again
    definition = booking.definition()
    final = asyncio.run(Orchestrator(MemoryStore(), [definition]).run(definition))
    assert final.state == "compensated"
    assert final.step("book").status is StepStatus.COMPENSATED
    assert booking.effects == ["booked", "unbooked"]


def test_a_step_still_running_after_the_grace_parks_the_saga_until_its_effect_lands() -> None:
    booking = LateBooking(takes=2.0)
    definition = booking.definition()

    async def go() -> tuple[Any, Any]:
        orchestrator = Orchestrator(MemoryStore(), [definition])
        parked = await orchestrator.run(definition)
        # Never undo before the effect: the operator retries once the thread is done.
        assert booking.landed.wait(5)
        await orchestrator.retry(parked.saga_id)
        return parked, await orchestrator.resume(parked.saga_id)

    parked, final = asyncio.run(go())
    assert parked.state == "failed"
    assert parked.parked_at == "compensating:book"
    assert parked.failure is not None and parked.failure.type == "ActionStillRunning"
    assert parked.failure.message == "action still running after its deadline"
    assert final.state == "compensated"
    assert booking.effects == ["booked", "unbooked"]
