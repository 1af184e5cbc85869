"""The order choreography: no orchestrator, four services reacting to each other's events.

OrderCreated -> inventory reserves -> InventoryReserved -> payment charges ->
PaymentProcessed -> shipping ships -> ShipmentCreated -> orders fulfils -> OrderFulfilled.
InventoryFailed -> OrderFailed; PaymentFailed -> InventoryReleased and OrderFailed;
ShipmentFailed -> PaymentRefunded and InventoryReleased.

Each service decides by a seeded draw on the order id (``fail_rate``), so a run is
reproducible whatever process handles which event. ``participants(...)`` builds the four
``EventParticipant``; ``python -m saga_fsm.examples.order_choreography SERVICE`` runs one
of them as a process (the demo starts one per service).
"""

from __future__ import annotations

import hashlib
import os

from saga_fsm.choreography import (
    Choreography,
    Event,
    EventContext,
    EventParticipant,
    Failure,
    Move,
    expect,
)

choreography = Choreography(
    name="order_choreography",
    start="OrderCreated",
    correlation=("order_id", "payment_id"),
    events=(
        Event("OrderCreated", publisher="orders", consumers=["inventory"]),
        Event("InventoryReserved", publisher="inventory", consumers=["payment"]),
        Event("InventoryFailed", publisher="inventory", consumers=["orders"]),
        Event("PaymentProcessed", publisher="payment", consumers=["shipping"]),
        Event("PaymentFailed", publisher="payment", consumers=["inventory", "orders"]),
        Event("ShipmentCreated", publisher="shipping", consumers=["orders"]),
        Event("ShipmentFailed", publisher="shipping", consumers=["payment", "inventory"]),
        Event("OrderFulfilled", publisher="orders"),
        Event("OrderFailed", publisher="orders"),
        Event("InventoryReleased", publisher="inventory"),
        Event("PaymentRefunded", publisher="payment", keys=["payment_id"]),
    ),
    moves=(
        Move("pending", "OrderCreated", "reserving"),
        Move("reserving", "InventoryReserved", "charging"),
        Move("charging", "PaymentProcessed", "shipping"),
        Move("shipping", "ShipmentCreated", "fulfilling"),
        Move("fulfilling", "OrderFulfilled", "completed"),
    ),
    failures=(
        Failure("reserving", "InventoryFailed", ["OrderFailed"]),
        Failure("charging", "PaymentFailed", ["InventoryReleased", "OrderFailed"]),
        Failure("shipping", "ShipmentFailed", ["PaymentRefunded", "InventoryReleased"]),
    ),
    expectations=(
        expect("InventoryReserved", within=30),
        expect("PaymentProcessed", within=30, compensate="PaymentFailed"),
        expect("ShipmentCreated", within=30),
        # Every event an instance waits for is expected, so a lost one is noticed
        # (``saga-fsm check`` finds any that is not).
        expect("OrderFulfilled", within=30),
        expect("OrderFailed", within=30),
        expect("InventoryReleased", within=30),
        expect("PaymentRefunded", within=30),
    ),
)


def _fails(service: str, order_id: str, fail_rate: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{service}:{order_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fail_rate


def participants(
    *, fail_rate: float = 0.2, seed: int = 0, table: Choreography = choreography
) -> dict[str, EventParticipant]:
    """The four services, each deciding by a seeded draw on the order id (``table``:
    the choreography under another name, for tests that share a broker)."""
    orders = EventParticipant(table, "orders")
    inventory = EventParticipant(table, "inventory")
    payment = EventParticipant(table, "payment")
    shipping = EventParticipant(table, "shipping")

    def order(event: EventContext) -> dict[str, str]:
        return {"order_id": str(event.payload["order_id"])}

    @inventory.on("OrderCreated")
    def reserve(event: EventContext) -> None:
        failed = _fails("inventory", order(event)["order_id"], fail_rate, seed)
        event.publish("InventoryFailed" if failed else "InventoryReserved", order(event))

    @payment.on("InventoryReserved")
    def charge(event: EventContext) -> None:
        if _fails("payment", order(event)["order_id"], fail_rate, seed):
            event.publish("PaymentFailed", order(event))
            return
        payment_id = f"pay-{order(event)['order_id']}"
        event.publish("PaymentProcessed", {**order(event), "payment_id": payment_id})

    @shipping.on("PaymentProcessed")
    def ship(event: EventContext) -> None:
        failed = _fails("shipping", order(event)["order_id"], fail_rate, seed)
        payload = {**order(event), "payment_id": event.payload["payment_id"]}
        event.publish("ShipmentFailed" if failed else "ShipmentCreated", payload)

    @orders.on("ShipmentCreated")
    def fulfil(event: EventContext) -> None:
        event.publish("OrderFulfilled", order(event))

    @orders.on("InventoryFailed")
    @orders.on("PaymentFailed")
    def fail(event: EventContext) -> None:
        event.publish("OrderFailed", order(event))

    @inventory.on("PaymentFailed")
    @inventory.on("ShipmentFailed")
    def release(event: EventContext) -> None:
        event.publish("InventoryReleased", order(event))

    @payment.on("ShipmentFailed")
    def refund(event: EventContext) -> None:
        # Only the payment id: the tracker finds the order by the key it learnt.
        event.publish("PaymentRefunded", {"payment_id": event.payload["payment_id"]})

    return {p.name: p for p in (orders, inventory, payment, shipping)}


def main() -> None:  # pragma: no cover - run as a subprocess by the demo and the tests
    import asyncio
    import sys

    from saga_fsm.choreography._process import serve_participant

    service = sys.argv[1]
    asyncio.run(
        serve_participant(
            participants(
                fail_rate=float(os.environ.get("SAGA_FSM_FAIL_RATE", "0.2")),
                seed=int(os.environ.get("SAGA_FSM_SEED", "0")),
            )[service],
            transport_url=os.environ["SAGA_FSM_TRANSPORT"],
            inbox_url=os.environ.get("SAGA_FSM_INBOX"),
        )
    )


if __name__ == "__main__":  # pragma: no cover
    main()
