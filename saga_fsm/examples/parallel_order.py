"""An order that reserves stock in three warehouses at once, books a courier for each
parcel, then charges the card.

plan_parcels     read-only   splits the order into parcels (data["parcels"])
reserve_stock    Parallel: north, south, east at once (each reserve, undo: release)
book_couriers    ForEach over data["parcels"], two at a time (undo: cancel_courier)
charge_card      pivot       (once charged, only forward)
send_receipt     retriable   retried until it succeeds

If any warehouse refuses, the reservations already made (or in flight when it refused)
are released, each once, and no parcel is booked; if a courier refuses, the other
bookings and every reservation are undone.
"""

from __future__ import annotations

from typing import Any

from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepContext, StepKind
from saga_fsm._groups import ForEach, Parallel
from saga_fsm.examples._fakes import services

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.1)
FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.1)


def _warehouse(step: StepContext) -> str:
    # "reserve_stock/north/reserve" -> "north"
    return step.step.split("/")[1]


async def reserve(ctx: StepContext) -> dict[str, Any]:
    where = _warehouse(ctx)
    return await services.call(
        f"reserve_{where}",
        ctx,
        {f"reservation_{where}": f"res-{where}-{ctx.saga_id[:8]}"},
        may_fail_for_good=True,
    )


async def release(ctx: StepContext) -> None:
    await services.call(f"release_{_warehouse(ctx)}", ctx, {}, may_fail_for_good=False)


async def book_courier(ctx: StepContext) -> dict[str, Any]:
    parcel = ctx.data["item"]
    return await services.call(
        "book_courier", ctx, {"booking": f"crr-{parcel}-{ctx.saga_id[:8]}"}, may_fail_for_good=True
    )


async def cancel_courier(ctx: StepContext) -> None:
    await services.call("cancel_courier", ctx, {}, may_fail_for_good=False)


def plan_parcels(ctx: StepContext) -> dict[str, Any]:
    # An order given its parcels keeps them; otherwise it ships in two.
    parcels = ctx.data.get("parcels") or [
        f"{ctx.data.get('order_id', 'order')}-{n}" for n in (1, 2)
    ]
    return {"parcels": list(parcels)}


async def charge_card(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "charge_card", ctx, {"charged": ctx.data.get("amount", 0)}, may_fail_for_good=True
    )


async def send_receipt(ctx: StepContext) -> dict[str, Any]:
    return await services.call("send_receipt", ctx, {"receipt_sent": True}, may_fail_for_good=False)


def _reserve() -> list[Step]:
    return [
        Step(
            "reserve",
            reserve,
            release,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        )
    ]


definition = SagaDefinition(
    name="parallel_order",
    version=1,
    description="Reserve in three warehouses at once, book a courier per parcel, charge.",
    steps=(
        Step("plan_parcels", plan_parcels, read_only=True, retry=FAST_RETRY),
        Parallel(
            "reserve_stock",
            branches={"north": _reserve(), "south": _reserve(), "east": _reserve()},
            join="all",
            max_concurrency=3,
        ),
        ForEach(
            "book_couriers",
            items="parcels",
            steps=[
                Step(
                    "book",
                    book_courier,
                    cancel_courier,
                    retry=FAST_RETRY,
                    compensation_retry=FAST_COMPENSATION_RETRY,
                    timeout=5.0,
                )
            ],
            max_concurrency=2,
        ),
        Step("charge_card", charge_card, kind=StepKind.PIVOT, retry=FAST_RETRY, timeout=5.0),
        Step(
            "send_receipt",
            send_receipt,
            kind=StepKind.RETRIABLE,
            retry=RetryPolicy(max_attempts=None, initial_interval=0.01, max_interval=0.1),
            timeout=5.0,
        ),
    ),
)

EXAMPLE_DATA: dict[str, Any] = {"order_id": "o-1", "amount": 42, "parcels": ["p1", "p2", "p3"]}
"""Data a saga of this definition can start with (``saga-fsm check --data``)."""
