"""Deliberately broken sagas, each hiding one bug ``saga_fsm.testing`` must find.

They talk to one in-process fake, ``ledger``; every record is keyed by saga id, so
examples cannot disturb each other even when nothing resets it (``setup`` does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from saga_fsm import RetryPolicy, SagaBuilder, StepContext, StepFailed
from saga_fsm.testing import InvariantContext, saga_invariant


class Ledger:
    """Payments, refunds, reservations and warehouse picks, in memory."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}
        self.charges: defaultdict[str, list[str]] = defaultdict(list)
        self.refunds: defaultdict[str, int] = defaultdict(int)
        self.picks: set[str] = set()

    def once(self, key: str, result: dict[str, Any]) -> dict[str, Any]:
        """An idempotent participant: the first answer for a key, applied once."""
        return self.by_key.setdefault(key, result)


ledger = Ledger()


def setup() -> Iterator[Ledger]:
    ledger.reset()
    yield ledger


def reserve(ctx: StepContext) -> dict[str, Any]:
    return ledger.once(ctx.idempotency_key, {"reservation_id": f"r-{ctx.saga_id[:8]}"})


def release(ctx: StepContext) -> None:
    ledger.once(ctx.idempotency_key, {})


def charge(ctx: StepContext) -> dict[str, Any]:
    key = ctx.idempotency_key
    if key not in ledger.by_key:
        ledger.charges[ctx.saga_id].append(key)
    return ledger.once(key, {"payment_id": f"p-{ctx.saga_id[:8]}"})


def refund(ctx: StepContext) -> None:
    ledger.once(ctx.idempotency_key, {"refunded": True})


def ship(ctx: StepContext) -> dict[str, Any]:
    return ledger.once(ctx.idempotency_key, {"tracking": f"t-{ctx.saga_id[:8]}"})


# 1. A compensation that is not idempotent: a crash after the refund, and it refunds again.


def refund_every_time(ctx: StepContext) -> None:
    ledger.refunds[ctx.saga_id] += 1


double_refund = (
    SagaBuilder("double_refund")
    .step("charge", charge, compensation=refund_every_time)
    .pivot("ship", ship)
    .build()
)


@saga_invariant
def refunded_at_most_once(ctx: InvariantContext) -> None:
    refunds = ledger.refunds[ctx.saga_id]
    assert refunds <= 1, f"the customer was refunded {refunds} times"


double_refund_invariants = [refunded_at_most_once]


# 2. A compensation that assumes data from a step that may never have run.


def release_with_payment(ctx: StepContext) -> None:
    payment = ctx.data["payment_id"]  # only there if charge ran: KeyError otherwise
    ledger.once(ctx.idempotency_key, {"released_for": payment})


missing_data = (
    SagaBuilder("missing_data")
    .step("reserve", reserve, compensation=release_with_payment)
    .step("charge", charge, compensation=refund)
    .pivot("ship", ship)
    .build()
)


# 3. A compensation that always fails.


def release_never(ctx: StepContext) -> None:
    raise StepFailed("the warehouse no longer accepts releases", retryable=False)


compensation_always_fails = (
    SagaBuilder("compensation_always_fails")
    .step("reserve", reserve, compensation=release_never)
    .pivot("ship", ship)
    .build()
)


# 4. A forward step that ignores its idempotency key: every call charges again.


def charge_every_time(ctx: StepContext) -> dict[str, Any]:
    ledger.charges[ctx.saga_id].append(ctx.idempotency_key)
    return {"payment_id": f"p-{ctx.saga_id[:8]}-{len(ledger.charges[ctx.saga_id])}"}


ignores_idempotency_key = (
    SagaBuilder("ignores_idempotency_key")
    .step("reserve", reserve, compensation=release)
    .step("charge", charge_every_time, compensation=refund)
    .pivot("ship", ship)
    .build()
)


@saga_invariant
def charged_at_most_once(ctx: InvariantContext) -> None:
    charges = ledger.charges[ctx.saga_id]
    assert len(charges) <= 1, f"the customer was charged {len(charges)} times"


# 5. A business invariant broken on one path only: a step declared read-only has an
#    effect (a warehouse pick), so an order compensated after it is still picked.


def notify_warehouse(ctx: StepContext) -> None:
    ledger.picks.add(ctx.saga_id)


picked_after_compensation = (
    SagaBuilder("picked_after_compensation")
    .step("reserve", reserve, compensation=release)
    .step("notify_warehouse", notify_warehouse, read_only=True)
    .pivot("charge", charge)
    .build()
)


@saga_invariant
def compensated_orders_are_not_picked(ctx: InvariantContext) -> None:
    if ctx.state == "compensated":
        assert ctx.saga_id not in ledger.picks, "a compensated order is still on the pick list"


picked_invariants = [compensated_orders_are_not_picked]


# 6. A compensation that fails when there is nothing to undo: the hold request was lost
#    (or timed out before arriving), so there is no hold, and cancelling it raises.


def place_hold(ctx: StepContext) -> dict[str, Any]:
    return ledger.once(ctx.idempotency_key, {"hold_id": f"h-{ctx.saga_id[:8]}"})


def cancel_hold_strictly(ctx: StepContext) -> None:
    if f"{ctx.saga_id}:hold" not in ledger.by_key:
        raise LookupError("no hold to cancel")
    ledger.once(ctx.idempotency_key, {})


empty_compensation_fails = (
    SagaBuilder("empty_compensation_fails")
    .step("hold", place_hold, compensation=cancel_hold_strictly, retry=RetryPolicy(max_attempts=1))
    .pivot("ship", ship)
    .build()
)
