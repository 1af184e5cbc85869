"""The order-fulfilment saga's services as a participant: inventory, payment, shipping.

Each handler receives a command (the saga's data as its payload) and answers with data
to merge into the saga, or refuses with ``StepFailed(retryable=False)``. The
participant's inbox makes them idempotent (a command delivered twice is handled once)
and guards against a forward command arriving after its compensation.

The services keep their tables in this process (``tables``): an order for more than
``STOCK`` items is refused by inventory, a card ending in ``0000`` by payment.
``tables.applied`` counts each effect per idempotency key, so a test can check that
none was applied twice.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from attrs import define, field

from saga_fsm._errors import StepFailed
from saga_fsm.participant import Command, Participant

STOCK = 5


@define
class Tables:
    """What the three services hold: reservations, charges, shipments, and a count of
    every effect applied, by operation and idempotency key."""

    reservations: dict[str, int] = field(factory=dict)
    charges: dict[str, int] = field(factory=dict)
    shipments: dict[str, str] = field(factory=dict)
    applied: Counter[str] = field(factory=Counter)
    order: list[str] = field(factory=list)
    """``operation:key`` of every effect, in the order they were applied."""

    def apply(self, operation: str, command: Command) -> None:
        effect = f"{operation}:{command.idempotency_key}"
        self.applied[effect] += 1
        self.order.append(effect)

    def clear(self) -> None:
        self.reservations.clear()
        self.charges.clear()
        self.shipments.clear()
        self.applied.clear()
        self.order.clear()


tables = Tables()


def inventory_reserve(command: Command) -> dict[str, Any]:
    quantity = int(command.payload.get("quantity", 1))
    if quantity > STOCK:
        raise StepFailed(f"only {STOCK} in stock, {quantity} asked", retryable=False)
    tables.apply("inventory.reserve", command)
    reservation = f"res-{command.idempotency_key}"
    tables.reservations[reservation] = quantity
    return {"reservation_id": reservation}


def inventory_release(command: Command) -> None:
    # Found by the step's idempotency key, not by the saga's data: when the reserve's
    # reply was lost the saga never learnt the reservation id, yet it must be undone.
    tables.apply("inventory.release", command)
    tables.reservations.pop(f"res-{command.idempotency_key}", None)


def payment_charge(command: Command) -> dict[str, Any]:
    if str(command.payload.get("card", "")).endswith("0000"):
        raise StepFailed("card declined", retryable=False)
    tables.apply("payment.charge", command)
    payment = f"pay-{command.idempotency_key}"
    tables.charges[payment] = int(command.payload.get("amount", 0))
    return {"payment_id": payment}


def payment_refund(command: Command) -> None:
    tables.apply("payment.refund", command)
    tables.charges.pop(f"pay-{command.idempotency_key}", None)


def shipping_ship(command: Command) -> dict[str, Any]:
    tables.apply("shipping.ship", command)
    shipment = f"shp-{command.idempotency_key}"
    tables.shipments[shipment] = str(command.payload.get("order_id", ""))
    return {"shipment_id": shipment}


def make_participant(prefix: str = "") -> Participant:
    """The handlers on their channels (``prefix.inventory.reserve``... with a prefix:
    what lets several runs share one broker)."""
    at = f"{prefix}." if prefix else ""
    services = Participant("order_services")
    services.handles(f"{at}inventory.reserve")(inventory_reserve)
    services.handles(f"{at}inventory.release", compensates=f"{at}inventory.reserve")(
        inventory_release
    )
    services.handles(f"{at}payment.charge")(payment_charge)
    services.handles(f"{at}payment.refund", compensates=f"{at}payment.charge")(payment_refund)
    services.handles(f"{at}shipping.ship")(shipping_ship)
    return services


participant = make_participant()
