"""Refund approval: a refund above ``APPROVAL_THRESHOLD`` waits for a manager.

open_case          compensable   undo: close_case
manager_approval   wait          approved: go on; rejected, or 48 hours of silence: undo
pay_refund         pivot         the money leaves: only forward after it
notify_customer    retriable     retried until it succeeds

Nothing runs and no worker holds the saga while it waits. The manager's answer arrives
as a signal: ``saga-fsm signal ID approved --data '{"approved_by": "maria"}'``, or
``await client.signal(saga_id, "approved", {"approved_by": "maria"})``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from attrs import define, field

from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepContext, StepKind, WaitFor

APPROVAL_THRESHOLD = 500
FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.1)


@define
class Ledger:
    """The refund desk's own records, in memory: cases opened and closed, refunds paid
    (by idempotency key, so a repeated call pays once), customers told."""

    cases: dict[str, str] = field(factory=dict)
    paid: dict[str, float] = field(factory=dict)
    told: set[str] = field(factory=set)

    def reset(self) -> None:
        self.cases.clear()
        self.paid.clear()
        self.told.clear()


ledger = Ledger()


def open_case(ctx: StepContext) -> dict[str, Any]:
    ledger.cases[ctx.saga_id] = "open"
    amount = ctx.data.get("amount", 0)
    return {"case_id": f"case-{ctx.saga_id[:8]}", "needs_approval": amount > APPROVAL_THRESHOLD}


def close_case(ctx: StepContext) -> None:
    # Tolerates "nothing to undo": the case may never have been opened.
    if ctx.saga_id in ledger.cases:
        ledger.cases[ctx.saga_id] = "closed"


def pay_refund(ctx: StepContext) -> dict[str, Any]:
    ledger.paid.setdefault(ctx.idempotency_key, float(ctx.data.get("amount", 0)))
    return {"refund_id": f"ref-{ctx.saga_id[:8]}"}


def notify_customer(ctx: StepContext) -> dict[str, Any]:
    ledger.told.add(ctx.saga_id)
    return {"customer_told": True}


definition = SagaDefinition(
    name="refund_approval",
    version=1,
    description=f"Refund a customer; above {APPROVAL_THRESHOLD}, a manager approves first.",
    steps=(
        Step(
            "open_case",
            open_case,
            close_case,
            retry=FAST_RETRY,
            compensation_retry=FAST_RETRY,
            timeout=5.0,
        ),
        WaitFor(
            "manager_approval",
            events={"approved": "continue", "rejected": "fail"},
            timeout=timedelta(hours=48),
            on_timeout="fail",
            when="needs_approval",
        ),
        Step("pay_refund", pay_refund, kind=StepKind.PIVOT, retry=FAST_RETRY, timeout=5.0),
        Step(
            "notify_customer",
            notify_customer,
            kind=StepKind.RETRIABLE,
            retry=RetryPolicy(max_attempts=None, initial_interval=0.01, max_interval=0.1),
            timeout=5.0,
        ),
    ),
)
