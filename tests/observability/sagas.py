"""A saga whose outcome its data decides, for metrics with known values (loaded by
reference in worker subprocesses)."""

from __future__ import annotations

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed


def ok(ctx: StepContext) -> None:
    return None


def pay(ctx: StepContext) -> None:
    """``pay``: ok; flaky (a transient failure on the first attempt); decline."""
    how = ctx.data["pay"]
    if how == "decline":
        raise StepFailed("card declined", retryable=False)
    if how == "flaky" and ctx.attempt == 1:
        raise StepFailed("gateway timeout", retryable=True)


def release(ctx: StepContext) -> None:
    if ctx.data.get("warehouse") == "down":
        raise StepFailed("warehouse offline", retryable=False)


QUICK = RetryPolicy(max_attempts=3, initial_interval=0.01)

order = (
    SagaBuilder("order")
    .step("reserve", ok, compensation=release, compensation_retry=RetryPolicy(max_attempts=1))
    .pivot("charge", pay, retry=QUICK)
    .retriable("ship", ok)
    .build()
)

ORDERS = (
    [{"pay": "ok"}] * 3
    + [{"pay": "flaky"}] * 2
    + [{"pay": "decline"}] * 2
    + [{"pay": "decline", "warehouse": "down"}]
)
"""5 complete (2 after a retry of charge), 2 compensate, 1 parks in failed."""
