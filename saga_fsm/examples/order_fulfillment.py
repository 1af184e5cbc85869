"""Order fulfilment: reserve stock, take payment, ship (the pivot), confirm.

reserve_inventory   compensable   undo: release_inventory
process_payment     compensable   undo: refund_payment
create_shipment     pivot         (once shipped, only forward)
send_confirmation   retriable     retried until it succeeds
"""

from __future__ import annotations

from typing import Any

from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepContext, StepKind
from saga_fsm.examples._fakes import services

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.1)
FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.1)


async def reserve_inventory(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "reserve_inventory",
        ctx,
        {"reservation_id": f"res-{ctx.saga_id[:8]}"},
        may_fail_for_good=True,
    )


async def release_inventory(ctx: StepContext) -> None:
    await services.call("release_inventory", ctx, {}, may_fail_for_good=False)


async def process_payment(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "process_payment",
        ctx,
        {"payment_id": f"pay-{ctx.saga_id[:8]}", "charged": ctx.data.get("amount", 0)},
        may_fail_for_good=True,
    )


async def refund_payment(ctx: StepContext) -> None:
    await services.call("refund_payment", ctx, {}, may_fail_for_good=False)


async def create_shipment(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "create_shipment", ctx, {"shipment_id": f"shp-{ctx.saga_id[:8]}"}, may_fail_for_good=True
    )


async def send_confirmation(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "send_confirmation", ctx, {"confirmation_sent": True}, may_fail_for_good=False
    )


definition = SagaDefinition(
    name="order_fulfillment",
    version=1,
    description="Reserve stock, take payment, ship, confirm.",
    steps=(
        Step(
            "reserve_inventory",
            reserve_inventory,
            release_inventory,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        ),
        Step(
            "process_payment",
            process_payment,
            refund_payment,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        ),
        Step(
            "create_shipment", create_shipment, kind=StepKind.PIVOT, retry=FAST_RETRY, timeout=5.0
        ),
        Step(
            "send_confirmation",
            send_confirmation,
            kind=StepKind.RETRIABLE,
            retry=RetryPolicy(max_attempts=None, initial_interval=0.01, max_interval=0.1),
            timeout=5.0,
        ),
    ),
)
