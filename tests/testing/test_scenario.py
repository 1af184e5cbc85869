"""The given/when/expect harness: scripts read in the order things happen, unmentioned
calls succeed, and a mismatch shows the expected path next to the actual one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from saga_fsm import RetryPolicy, SagaBuilder, SagaDefinition, StepContext
from saga_fsm.testing import (
    InvariantViolation,
    ScenarioMismatch,
    cancel,
    compensation,
    operator_retry,
    saga_invariant,
    scenario,
    step,
)

FAST = RetryPolicy(max_attempts=3, initial_interval=1, max_interval=10)


class Shop:
    """A fake world: stock held and money taken, per saga; calls counted per key."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()


shop = Shop()


def fresh_shop() -> Iterator[Shop]:
    global shop
    shop = Shop()
    yield shop


def reserve(ctx: StepContext) -> dict[str, Any]:
    shop.calls[ctx.idempotency_key] += 1
    shop.held[ctx.saga_id] = ctx.data["quantity"]
    return {"reservation": f"r-{ctx.saga_id[:6]}"}


def release(ctx: StepContext) -> None:
    shop.held[ctx.saga_id] = 0


async def charge(ctx: StepContext) -> dict[str, Any]:
    shop.calls[ctx.idempotency_key] += 1
    shop.paid[ctx.saga_id] = ctx.data["amount"]
    return {"paid": ctx.data["amount"]}


async def refund(ctx: StepContext) -> None:
    shop.paid[ctx.saga_id] = 0


def ship(ctx: StepContext) -> dict[str, Any]:
    return {"tracking": "t-1"}


def order() -> SagaDefinition:
    return (
        SagaBuilder("order")
        .step("reserve", reserve, compensation=release, retry=FAST, compensation_retry=FAST)
        .step("charge", charge, compensation=refund, retry=FAST, timeout=5)
        .pivot("ship", ship, retry=FAST)
        .build()
    )


@saga_invariant
def nothing_held_once_compensated(ctx: Any) -> None:
    if ctx.state == "compensated":
        assert ctx.world.held[ctx.saga_id] == 0 and ctx.world.paid[ctx.saga_id] == 0


def script() -> Any:
    return scenario(order(), setup=fresh_shop, invariants=[nothing_held_once_compensated]).given(
        quantity=2, amount=30
    )


def test_the_happy_path_needs_no_script() -> None:
    result = script().expect(
        state="completed",
        compensations=[],
        path="pending -> running:reserve -> running:charge -> running:ship -> completed",
        data={"paid": 30, "tracking": "t-1"},
    )
    assert result.run == "reserve ok -> charge ok -> ship ok"


def test_a_declined_card_releases_the_stock() -> None:
    result = (
        script()
        .when(step("reserve").succeeds(), step("charge").fails(permanent=True))
        .expect(compensations=["reserve"], state="compensated", failure="refused")
    )
    assert result.world.held[result.snapshot.saga_id] == 0
    assert result.run == "reserve ok -> charge refused (permanent) -> release ok"


def test_retries_timeouts_and_crashes_in_one_script() -> None:
    result = (
        script()
        .when(
            step("reserve").crashes(after_effect=True),
            step("charge").times_out(times=2),  # the third attempt succeeds
            step("ship").crashes(),
            step("ship").fails(permanent=True),
        )
        .expect(state="compensated", compensations=["charge", "reserve"])
    )
    saga_id = result.snapshot.saga_id
    assert shop.calls[f"{saga_id}:reserve"] == 2  # ran again after the crash, same key
    assert shop.calls[f"{saga_id}:charge"] == 3
    assert result.run.startswith("reserve ran, then crash -> reserve ok -> charge timed out")
    assert "crash before ship -> ship refused (permanent)" in result.run


def test_cancel_while_a_step_runs_undoes_that_step_too() -> None:
    result = (
        script()
        .when(step("reserve").succeeds(), cancel())
        .expect(state="compensated", compensations=["charge", "reserve"])
    )
    assert "cancel while charge runs" in result.run


def test_an_operator_retry_resumes_a_parked_saga() -> None:
    parked = script().when(
        step("ship").fails(permanent=True), compensation("charge").fails(permanent=True)
    )
    parked.expect(state="failed", compensations=[])
    parked.when(operator_retry()).expect(state="compensated", compensations=["charge", "reserve"])


def test_a_mismatch_shows_the_expected_path_next_to_the_actual_one() -> None:
    with pytest.raises(ScenarioMismatch) as raised:
        script().when(step("charge").fails(permanent=True)).expect(
            state="completed", compensations=["charge", "reserve"]
        )
    message = str(raised.value)
    assert "state: expected 'completed', got 'compensated'" in message
    assert "compensations: expected ['charge', 'reserve'], got ['reserve']" in message
    lines = message.splitlines()
    expected = next(line for line in lines if "expected path" in line)
    actual = next(line for line in lines if "actual path:" in line)
    assert expected.index("pending") == actual.index("pending")  # aligned, one under the other
    assert actual.rstrip().endswith("compensating:reserve -> compensated")
    assert "run:" in message and "charge refused (permanent)" in message


def test_a_script_the_saga_never_reaches_is_reported() -> None:
    with pytest.raises(ScenarioMismatch, match=r"never applied: 'ship' fails permanently"):
        script().when(
            step("reserve").fails(permanent=True), step("ship").fails(permanent=True)
        ).expect()


def test_scripts_are_checked_when_written() -> None:
    with pytest.raises(ValueError, match="no step 'nope'"):
        script().when(step("nope").succeeds())
    with pytest.raises(ValueError, match="has no timeout"):
        script().when(step("reserve").times_out())
    with pytest.raises(ValueError, match="has no compensation"):
        script().when(compensation("ship").fails())
    with pytest.raises(TypeError):
        script().when("reserve fails")  # type: ignore[arg-type,unused-ignore]
    with pytest.raises(ValueError, match="cannot refuse"):
        script().when(step("reserve").fails(), step("reserve").fails(permanent=True)).run()


def test_an_invariant_broken_on_the_way_is_raised_with_the_path() -> None:
    def keep_stock(ctx: StepContext) -> None:  # the bug: a release that releases nothing
        return None

    buggy = (
        SagaBuilder("order")
        .step("reserve", reserve, compensation=keep_stock)
        .pivot("ship", ship)
        .build()
    )
    with pytest.raises(InvariantViolation) as raised:
        scenario(buggy, setup=fresh_shop, invariants=[nothing_held_once_compensated]).given(
            quantity=1, amount=5
        ).when(step("ship").fails(permanent=True)).run()
    assert raised.value.invariant == "nothing_held_once_compensated"
    assert raised.value.path == "reserve ok -> ship refused (permanent) -> keep_stock ok"


def test_simulated_scripts_call_nothing() -> None:
    before = sum(shop.calls.values())
    result = (
        scenario(order(), simulate=True)
        .when(step("charge").fails(permanent=True))
        .expect(state="compensated", compensations=["reserve"])
    )
    assert sum(shop.calls.values()) == before
    assert result.run == "reserve ok -> charge refused (permanent) -> release ok"
