"""The precise semantics of each injected fault: is the real function called, what
does the engine see, and what does recovery do. And parity with the orchestrator: the
harness calls actions, and records their failures, exactly as production does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from saga_fsm import (
    FakeClock,
    MemoryStore,
    Orchestrator,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    StepContext,
    StepFailed,
    StepStatus,
)
from saga_fsm.testing import Fault
from saga_fsm.testing._driver import Driver, DriverConfig, SagaRun

FAST = RetryPolicy(max_attempts=3, initial_interval=1, max_interval=10)


class Probe:
    """A participant that records every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, bool]] = []
        self.contexts: list[StepContext] = []
        self.threads: set[str] = set()

    def sync(self, name: str, result: dict[str, Any] | None = None) -> Any:
        def act(ctx: StepContext) -> dict[str, Any] | None:
            self.threads.add(threading.current_thread().name)
            self.calls.append((name, ctx.attempt, ctx.idempotency_key, ctx.compensating))
            self.contexts.append(ctx)
            return result

        act.__name__ = name
        return act

    def named(self, name: str) -> list[tuple[int, str]]:
        return [(attempt, key) for n, attempt, key, _ in self.calls if n == name]


@pytest.fixture
def probe() -> Probe:
    return Probe()


def definition(probe: Probe) -> SagaDefinition:
    return (
        SagaBuilder("probe")
        .step(
            "reserve",
            probe.sync("reserve", {"rid": "r1"}),
            compensation=probe.sync("release"),
            retry=FAST,
            timeout=5,
            compensation_retry=FAST,
        )
        .pivot("charge", probe.sync("charge", {"pid": "p1"}), retry=FAST, timeout=5)
        .build()
    )


@pytest.fixture
def driver(probe: Probe) -> Iterator[Driver]:
    running = Driver(DriverConfig(definition(probe)))
    yield running
    running.close()


def started(driver: Driver) -> SagaRun:
    saga = driver.create({"amount": 3})
    driver.advance(saga)  # start: reserve is in flight
    assert saga.decided.state == "running:reserve"
    return saga


def test_ok_calls_the_action_once_and_merges_its_result(driver: Driver, probe: Probe) -> None:
    saga = started(driver)
    driver.advance(saga, Fault.OK)
    assert probe.named("reserve") == [(1, f"{saga.saga_id}:reserve")]
    assert saga.decided.state == "running:charge"
    assert saga.decided.data == {"amount": 3, "rid": "r1"}


def test_transient_calls_then_loses_the_reply(driver: Driver, probe: Probe) -> None:
    saga = started(driver)
    driver.advance(saga, Fault.TRANSIENT)
    record = saga.decided.step("reserve")
    assert probe.named("reserve") == [(1, f"{saga.saga_id}:reserve")]  # it acted
    assert record.status is StepStatus.FAILED and record.error is not None
    assert record.error.retryable and "reply lost" in record.error.message
    assert "rid" not in saga.decided.data  # the result never arrived
    driver.advance(saga)  # the back-off is over: wake up, run again
    driver.advance(saga, Fault.OK)
    assert probe.named("reserve") == [
        (1, f"{saga.saga_id}:reserve"),
        (2, f"{saga.saga_id}:reserve"),
    ]
    assert saga.decided.state == "running:charge"


def test_permanent_is_a_refusal_before_the_call(driver: Driver, probe: Probe) -> None:
    saga = started(driver)
    driver.advance(saga, Fault.PERMANENT)
    assert probe.named("reserve") == []
    assert saga.decided.state == "compensated"  # nothing before reserve to undo
    assert saga.decided.failure is not None and not saga.decided.failure.retryable


def test_a_participant_cannot_refuse_a_key_it_already_acted_on(driver: Driver) -> None:
    saga = started(driver)
    assert Fault.PERMANENT in driver.faults_for(saga)
    driver.advance(saga, Fault.TRANSIENT)
    driver.advance(saga)  # wake
    assert Fault.PERMANENT not in driver.faults_for(saga)
    assert Fault.TRANSIENT in driver.faults_for(saga)


def test_timeout_calls_and_the_engine_sees_the_deadline_pass(driver: Driver, probe: Probe) -> None:
    saga = started(driver)
    deadline = saga.decided.step("reserve").deadline
    assert deadline is not None
    driver.advance(saga, Fault.TIMEOUT)
    assert probe.named("reserve") == [(1, f"{saga.saga_id}:reserve")]
    assert saga.decided.step("reserve").status is StepStatus.TIMED_OUT
    assert driver.clock.now() >= deadline


def test_crash_before_the_effect_calls_nothing_and_writes_nothing(
    driver: Driver, probe: Probe
) -> None:
    saga = started(driver)
    version = saga.decided.version
    driver.advance(saga, Fault.CRASH_BEFORE)
    assert probe.named("reserve") == [] and saga.decided.version == version
    driver.advance(saga, Fault.OK)  # recovery re-issues the same command
    assert probe.named("reserve") == [(1, f"{saga.saga_id}:reserve")]


def test_crash_after_the_effect_runs_it_again_with_the_same_key_and_attempt(
    driver: Driver, probe: Probe
) -> None:
    saga = started(driver)
    version = saga.decided.version
    driver.advance(saga, Fault.CRASH_AFTER)
    assert saga.decided.version == version  # the result was never written
    driver.advance(saga, Fault.OK)
    key = f"{saga.saga_id}:reserve"
    assert probe.named("reserve") == [(1, key), (1, key)]
    assert saga.decided.state == "running:charge"


def test_compensation_faults_work_the_same_way(driver: Driver, probe: Probe) -> None:
    saga = started(driver)
    driver.advance(saga, Fault.OK)  # reserve done; charge in flight
    driver.advance(saga, Fault.PERMANENT)  # the pivot is refused: undo reserve
    assert saga.decided.state == "compensating:reserve"
    driver.advance(saga, Fault.CRASH_AFTER)  # release acted, the write was lost
    assert Fault.PERMANENT not in driver.faults_for(saga)
    driver.advance(saga, Fault.TRANSIENT)  # acted again, reply lost
    assert saga.decided.step("reserve").status is StepStatus.COMPENSATION_FAILED
    driver.finish_all()
    key = f"{saga.saga_id}:reserve:compensate"
    assert probe.named("release") == [(1, key), (1, key), (2, key)]
    assert all(c[3] for c in probe.calls if c[0] == "release")  # ctx.compensating
    assert saga.decided.state == "compensated"


def test_a_refused_compensation_parks_the_saga_for_an_operator(driver: Driver) -> None:
    saga = started(driver)
    driver.advance(saga, Fault.OK)
    driver.advance(saga, Fault.PERMANENT)
    driver.advance(saga, Fault.PERMANENT)  # release refused before acting
    assert saga.decided.state == "failed"
    assert saga.decided.parked_at == "compensating:reserve"
    driver.operator_retry(saga)
    driver.advance(saga, Fault.OK)
    assert saga.decided.state == "compensated"
    driver.check(final=True)


def test_simulate_never_calls_the_real_functions(probe: Probe) -> None:
    driver = Driver(DriverConfig(definition(probe), simulate=True))
    try:
        saga = driver.create({})
        driver.finish_all()
        driver.check(final=True)
    finally:
        driver.close()
    assert saga.decided.state == "completed" and probe.calls == []


def test_actions_get_the_context_the_orchestrator_gives_and_sync_ones_run_in_a_thread(
    probe: Probe,
) -> None:
    harness = Driver(DriverConfig(definition(probe)))
    try:
        saga = harness.create({"amount": 3})
        harness.finish_all()
    finally:
        harness.close()
    by_harness = [
        (c.step, c.attempt, c.idempotency_key.split(":", 1)[1], dict(c.data))
        for c in probe.contexts
    ]
    assert "MainThread" not in probe.threads

    engine_probe = Probe()
    engine_definition = definition(engine_probe)

    async def run() -> None:
        engine = Orchestrator(MemoryStore(), [engine_definition], clock=FakeClock())
        await engine.run(engine_definition, {"amount": 3})

    asyncio.run(run())
    by_engine = [
        (c.step, c.attempt, c.idempotency_key.split(":", 1)[1], dict(c.data))
        for c in engine_probe.contexts
    ]
    assert by_harness == by_engine
    assert type(probe.contexts[0].data).__name__ == type(engine_probe.contexts[0].data).__name__
    assert saga.decided.state == "completed"


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "raise_or_return",
    [
        StepFailed("declined", retryable=False),
        StepFailed("busy", retryable=True),
        Boom("bug"),
        KeyError("amount"),
        TimeoutError(),
        "not a mapping",
        {1: "no string keys"},
        {"when": object()},
    ],
    ids=repr,
)
def test_failures_are_recorded_as_the_orchestrator_records_them(raise_or_return: Any) -> None:
    """The same action outcome gives the same ErrorInfo in the harness and in the engine."""

    async def act(ctx: StepContext) -> Any:
        if isinstance(raise_or_return, BaseException):
            raise raise_or_return
        return raise_or_return

    one_shot = RetryPolicy(max_attempts=1, non_retryable=[Boom])  # type: ignore[list-item]
    saga = (
        SagaBuilder("parity")
        .step("first", act, compensation=lambda ctx: None, retry=one_shot)
        .pivot("second", lambda ctx: None)
        .build()
    )
    harness = Driver(DriverConfig(saga))
    try:
        run = harness.create({})
        harness.advance(run)
        harness.advance(run, Fault.OK)
        by_harness = run.decided.failure
    finally:
        harness.close()

    async def engine() -> Any:
        final = await Orchestrator(MemoryStore(), [saga], clock=FakeClock()).run(saga, {})
        return final.failure

    assert by_harness is not None
    assert by_harness == asyncio.run(engine())


def test_a_call_that_never_answers_is_a_bug_and_does_not_hang_the_run() -> None:
    release = threading.Event()

    def stuck(ctx: StepContext) -> None:
        release.wait(5)

    saga = SagaBuilder("stuck").step("wait", stuck, compensation=lambda ctx: None).build()
    driver = Driver(DriverConfig(saga, call_timeout=0.2))
    try:
        run = driver.create({})
        driver.advance(run)
        driver.advance(run, Fault.OK)
        with pytest.raises(AssertionError, match="CallDidNotReturn"):
            driver.check(final=False)
    finally:
        driver.close()
        release.set()
