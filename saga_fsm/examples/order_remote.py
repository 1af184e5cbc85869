"""Order fulfilment with remote participants: inventory, payment and shipping are
services reached by command and reply (as processes: ``saga_fsm.examples.order_services_db``,
which ``saga-fsm demo --remote`` runs; in memory for ``check --participant``:
``saga_fsm.examples.order_services``); the confirmation is still a local step. Local and
remote steps mix in one table.

reserve_inventory   compensable   inventory.reserve   undo: inventory.release
process_payment     compensable   payment.charge      undo: payment.refund
create_shipment     pivot         shipping.ship       (once shipped, only forward)
send_confirmation   retriable     local               retried until it succeeds
"""

from __future__ import annotations

from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, StepContext, StepKind

RETRY = RetryPolicy(max_attempts=3, initial_interval=0.05, max_interval=0.5)
COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_interval=0.05, max_interval=0.5)


def send_confirmation(ctx: StepContext) -> dict[str, bool]:
    return {"confirmation_sent": True}


def remote_definition(prefix: str = "", *, timeout: float = 10.0) -> SagaDefinition:
    """The saga with its commands on ``prefix.``-ed channels (see ``make_participant``)."""
    at = f"{prefix}." if prefix else ""
    return SagaDefinition(
        name="order_fulfillment_remote",
        version=1,
        description="Reserve stock, take payment, ship (remote services), confirm.",
        steps=(
            Step(
                "reserve_inventory",
                command=f"{at}inventory.reserve",
                compensation_command=f"{at}inventory.release",
                retry=RETRY,
                compensation_retry=COMPENSATION_RETRY,
                timeout=timeout,
            ),
            Step(
                "process_payment",
                command=f"{at}payment.charge",
                compensation_command=f"{at}payment.refund",
                retry=RETRY,
                compensation_retry=COMPENSATION_RETRY,
                timeout=timeout,
            ),
            Step(
                "create_shipment",
                command=f"{at}shipping.ship",
                kind=StepKind.PIVOT,
                retry=RETRY,
                timeout=timeout,
            ),
            Step(
                "send_confirmation",
                send_confirmation,
                kind=StepKind.RETRIABLE,
                retry=RetryPolicy(max_attempts=None, initial_interval=0.05, max_interval=0.5),
                timeout=timeout,
            ),
        ),
    )


definition = remote_definition()
