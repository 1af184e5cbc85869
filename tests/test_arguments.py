"""Arguments saga_fsm cannot use are refused when given, naming them: never a busy loop
or an overflow later."""

from __future__ import annotations

import asyncio
import math

import pytest

from saga_fsm import (
    DefinitionError,
    InvalidArgument,
    MemoryStore,
    Orchestrator,
    RetryPolicy,
    SagaBuilder,
    SagaDefinition,
    SagaError,
    StepContext,
)
from saga_fsm._worker import Worker


def _noop(ctx: StepContext) -> None:
    return None


def _served() -> SagaDefinition:
    return SagaBuilder("served").pivot("only", _noop).build()


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, 1e300, "5"])
def test_orchestrator_lease_seconds(value: float) -> None:
    with pytest.raises(InvalidArgument, match="lease_seconds") as raised:
        Orchestrator(MemoryStore(), lease_seconds=value)
    assert isinstance(raised.value, SagaError) and isinstance(raised.value, ValueError)
    assert raised.value.name == "lease_seconds"


@pytest.mark.parametrize("name", ["poll_interval", "max_hold", "max_backoff"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 0])
def test_worker_intervals(name: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=name):
        Worker(Orchestrator(MemoryStore(), [_served()]), **{name: value})  # type: ignore[arg-type]


def test_worker_grace() -> None:
    worker = Worker(Orchestrator(MemoryStore(), [_served()]))
    with pytest.raises(InvalidArgument, match="grace"):
        asyncio.run(worker.run(asyncio.Event(), grace=math.nan))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_step_timeouts_must_be_finite(value: float) -> None:
    with pytest.raises(DefinitionError, match="finite"):
        SagaBuilder("x").step("a", _noop, compensation=_noop, timeout=value).build()


def test_a_bounded_retriable_step_names_the_step_and_the_fix() -> None:
    builder = SagaBuilder("x").step("reserve", _noop, compensation=_noop).pivot("charge", _noop)
    with pytest.raises(DefinitionError, match=r"'notify'.*max_attempts=None") as raised:
        builder.retriable("notify", _noop, retry=RetryPolicy(max_attempts=3))
    assert raised.value.step == "notify" and raised.value.field == "retry"
