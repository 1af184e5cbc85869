"""Versions of one saga for the tests of versioned definitions (loaded by reference in
subprocesses too): version 1, version 1 edited without a bump (another table), and
version 2, where ``charge`` became ``charge_card``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed

RAN: list[tuple[str, str, str]] = []
"""(saga id, table, step) of every action run in this process."""
BROKEN = {"release": False}
ONCE = RetryPolicy(max_attempts=1)


def act(table: str) -> Callable[[StepContext], dict[str, Any]]:
    def action(ctx: StepContext) -> dict[str, Any]:
        RAN.append((ctx.saga_id, table, ctx.step))
        if ctx.step.startswith("charge") and ctx.data.get("decline"):
            raise StepFailed("card declined", retryable=False)
        return {f"{ctx.step}_on": table}

    return action


def release(ctx: StepContext) -> None:
    if BROKEN["release"]:
        raise StepFailed("warehouse offline", retryable=False)


def _order(table: str, version: int, *steps: str) -> Any:
    builder = SagaBuilder("order", version=version).step(
        "reserve", act(table), compensation=release, compensation_retry=ONCE
    )
    for step in steps[:-1]:
        builder.step(step, act(table), read_only=True)
    return builder.pivot(steps[-1], act(table)).build()


order_v1 = _order("v1", 1, "charge")
order_v1_edited = _order("v1-edited", 1, "check", "charge")
order_v2 = _order("v2", 2, "charge_card")
