"""An order saga that ships through a child saga.

shipment (the child, reversible: compensated as a whole if the order is)
    book_carrier        compensable   undo: cancel_booking
    print_label         compensable   undo: void_label

order_with_shipment (the parent)
    reserve_inventory   compensable   undo: release_inventory
    ship                ChildSaga     runs ``shipment``; undo: ``shipment``'s compensations
    process_payment     pivot         a refusal compensates the booked shipment too
    send_confirmation   retriable

``ship`` hands the child the order id and address, and takes back its tracking number.
"""

from __future__ import annotations

from typing import Any

from saga_fsm._child import ChildSaga
from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepContext, StepKind
from saga_fsm.examples._fakes import services
from saga_fsm.examples.order_fulfillment import (
    process_payment,
    release_inventory,
    reserve_inventory,
    send_confirmation,
)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.1)
FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.1)


async def book_carrier(ctx: StepContext) -> dict[str, Any]:
    booking = f"bk-{ctx.data.get('order_id', ctx.saga_id)}"
    return await services.call("book_carrier", ctx, {"booking_id": booking}, may_fail_for_good=True)


async def cancel_booking(ctx: StepContext) -> None:
    await services.call("cancel_booking", ctx, {}, may_fail_for_good=False)


async def print_label(ctx: StepContext) -> dict[str, Any]:
    tracking = f"trk-{ctx.data.get('booking_id', '?')}"
    return await services.call(
        "print_label", ctx, {"tracking_number": tracking}, may_fail_for_good=True
    )


async def void_label(ctx: StepContext) -> None:
    await services.call("void_label", ctx, {}, may_fail_for_good=False)


shipment = SagaDefinition(
    name="shipment",
    description="Book a carrier and print the label; undone as a whole if the order is.",
    reversible=True,
    steps=(
        Step(
            "book_carrier",
            book_carrier,
            cancel_booking,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        ),
        Step(
            "print_label",
            print_label,
            void_label,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        ),
    ),
)

definition = SagaDefinition(
    name="order_with_shipment",
    description="Reserve stock, ship through a shipment saga, take payment, confirm.",
    steps=(
        Step(
            "reserve_inventory",
            reserve_inventory,
            release_inventory,
            retry=FAST_RETRY,
            compensation_retry=FAST_COMPENSATION_RETRY,
            timeout=5.0,
        ),
        ChildSaga(
            "ship",
            definition=shipment,
            input=["order_id", "address"],
            output=["tracking_number"],
            check_every=5.0,
        ),
        Step(
            "process_payment", process_payment, kind=StepKind.PIVOT, retry=FAST_RETRY, timeout=5.0
        ),
        Step(
            "send_confirmation",
            send_confirmation,
            kind=StepKind.RETRIABLE,
            retry=RetryPolicy(max_attempts=None, initial_interval=0.01, max_interval=0.1),
        ),
    ),
)
