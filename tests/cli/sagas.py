"""Small sagas for the command-line tests (loaded by reference in subprocesses)."""

from __future__ import annotations

import os

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed


def ok(ctx: StepContext) -> dict[str, bool]:
    return {f"{ctx.step}_done": True}


def refuse(ctx: StepContext) -> None:
    raise StepFailed("card declined", retryable=False)


def release_unless_broken(ctx: StepContext) -> None:
    # The warehouse is "down" until the operator's environment says it is back.
    if os.environ.get("WAREHOUSE_BACK") != "1":
        raise StepFailed("warehouse offline", retryable=False)


ONCE = RetryPolicy(max_attempts=1)

parks = (
    SagaBuilder("parks")
    .step("reserve", ok, compensation=release_unless_broken, compensation_retry=ONCE)
    .pivot("charge", refuse)
    .build()
)

completes = (
    SagaBuilder("completes").step("reserve", ok, compensation=ok).pivot("charge", ok).build()
)
