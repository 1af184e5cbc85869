"""Travel booking: flight, hotel and car (each cancellable), then charge the card (the
pivot), then send the itinerary (retried until it succeeds)."""

from __future__ import annotations

from typing import Any

from saga_fsm._definition import RetryPolicy, SagaBuilder, StepContext
from saga_fsm.examples._fakes import services

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.1)
FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.01, max_interval=0.1)


def _booker(operation: str, result_key: str) -> Any:
    async def book(ctx: StepContext) -> dict[str, Any]:
        return await services.call(
            operation,
            ctx,
            {result_key: f"{result_key[:3]}-{ctx.saga_id[:8]}"},
            may_fail_for_good=True,
        )

    book.__name__ = book.__qualname__ = operation
    return book


def _canceller(operation: str) -> Any:
    async def cancel(ctx: StepContext) -> None:
        await services.call(operation, ctx, {}, may_fail_for_good=False)

    cancel.__name__ = cancel.__qualname__ = operation
    return cancel


book_flight = _booker("book_flight", "flight_booking")
cancel_flight = _canceller("cancel_flight")
book_hotel = _booker("book_hotel", "hotel_booking")
cancel_hotel = _canceller("cancel_hotel")
book_car = _booker("book_car", "car_booking")
cancel_car = _canceller("cancel_car")
charge_card = _booker("charge_card", "charge_id")


async def send_itinerary(ctx: StepContext) -> dict[str, Any]:
    return await services.call(
        "send_itinerary", ctx, {"itinerary_sent": True}, may_fail_for_good=False
    )


_options: dict[str, Any] = {"retry": FAST_RETRY, "timeout": 5.0}
_undo: dict[str, Any] = {"compensation_retry": FAST_COMPENSATION_RETRY, **_options}

definition = (
    SagaBuilder("travel_booking", description="Flight, hotel, car, then charge and confirm.")
    .step("book_flight", book_flight, compensation=cancel_flight, **_undo)
    .step("book_hotel", book_hotel, compensation=cancel_hotel, **_undo)
    .step("book_car", book_car, compensation=cancel_car, **_undo)
    .pivot("charge_card", charge_card, **_options)
    .retriable(
        "send_itinerary",
        send_itinerary,
        retry=RetryPolicy(max_attempts=None, initial_interval=0.01, max_interval=0.1),
        timeout=5.0,
    )
    .build()
)
