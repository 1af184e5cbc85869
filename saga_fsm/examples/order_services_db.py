"""The order-fulfilment services as saga participants: inventory, payment and shipping.

Channels and handlers::

    inventory.reserve   inventory_reserve      undone by  inventory.release  inventory_release
    payment.charge      payment_charge         undone by  payment.refund     payment_refund
    shipping.ship       shipping_ship          (the pivot: never undone)

Each service runs as a process of its own (``inventory``, ``payment``, ``shipping``);
``participant`` serves all five channels in one process::

    saga-fsm participant saga_fsm.examples.order_services_db:inventory \\
        --broker amqp://guest:guest@127.0.0.1:5672/ --inbox sqlite:///inventory.db

Every effect is a row in the service's own table (``inventory_moves``, ``payment_moves``,
``shipping_moves``) in its inbox database, written through the inbox transaction's
connection: the row commits with the inbox record, or not at all, so a command handled
twice would show as two rows. Payment refuses for good (``StepFailed``,
``retryable=False``) any amount over ``PAYMENT_LIMIT``, so the saga compensates.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from saga_fsm._errors import StepFailed
from saga_fsm.participant import Command, Participant

PAYMENT_LIMIT = 1000
TABLES = ("inventory_moves", "payment_moves", "shipping_moves")

# One schema for every service's table: an append-only log of what the service did.
_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, idempotency_key TEXT NOT NULL,
    saga_id TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL)"""
_POSTGRES_TABLE = """CREATE TABLE IF NOT EXISTS {table} (
    seq bigserial PRIMARY KEY, idempotency_key text NOT NULL,
    saga_id text, kind text NOT NULL, detail jsonb NOT NULL)"""


async def record(command: Command, table: str, kind: str, **detail: Any) -> None:
    """Append ``kind`` to the service's ``table`` in the inbox transaction (nowhere with
    an in-memory inbox: there is no database to write to)."""
    conn = command.connection
    row = (command.idempotency_key, command.saga_id, kind, json.dumps(detail, sort_keys=True))
    if conn is None:
        return
    if isinstance(conn, sqlite3.Connection):
        conn.execute(_SQLITE_TABLE.format(table=table))
        conn.execute(
            f"INSERT INTO {table} (idempotency_key, saga_id, kind, detail) VALUES (?, ?, ?, ?)",
            row,
        )
        return
    await conn.execute(_POSTGRES_TABLE.format(table=table))
    await conn.execute(
        f"INSERT INTO {table} (idempotency_key, saga_id, kind, detail)"
        " VALUES (%s, %s, %s, %s::jsonb)",
        row,
    )


def _order(command: Command) -> str:
    return str(command.payload.get("order_id") or command.saga_id or command.idempotency_key)


async def inventory_reserve(command: Command) -> dict[str, Any]:
    sku = str(command.payload.get("sku", "SKU-1"))
    quantity = int(command.payload.get("quantity", 1))
    await record(command, "inventory_moves", "reserve", sku=sku, quantity=quantity)
    return {"reservation_id": f"res-{_order(command)}"}


async def inventory_release(command: Command) -> None:
    await record(command, "inventory_moves", "release")


async def payment_charge(command: Command) -> dict[str, Any]:
    amount = command.payload.get("amount", 0)
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        raise StepFailed(f"amount must be a number, got {amount!r}", retryable=False)
    if amount > PAYMENT_LIMIT:
        raise StepFailed(f"amount {amount} is over the limit of {PAYMENT_LIMIT}", retryable=False)
    await record(command, "payment_moves", "charge", amount=amount)
    return {"payment_id": f"pay-{_order(command)}", "charged": amount}


async def payment_refund(command: Command) -> None:
    await record(command, "payment_moves", "refund")


async def shipping_ship(command: Command) -> dict[str, Any]:
    await record(command, "shipping_moves", "ship")
    return {"shipment_id": f"shp-{_order(command)}"}


def services(prefix: str = "") -> dict[str, Participant]:
    """``inventory``, ``payment``, ``shipping`` and ``order_services`` (all channels), with
    every channel under ``prefix`` when given (``prefix.inventory.reserve``: deployments
    or tests that share a broker)."""

    def channel(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    inventory = Participant("inventory")
    payment = Participant("payment")
    shipping = Participant("shipping")
    everything = Participant("order_services")
    reserve, charge = channel("inventory.reserve"), channel("payment.charge")
    for service in (inventory, everything):
        service.handles(reserve)(inventory_reserve)
        service.handles(channel("inventory.release"), compensates=reserve)(inventory_release)
    for service in (payment, everything):
        service.handles(charge)(payment_charge)
        service.handles(channel("payment.refund"), compensates=charge)(payment_refund)
    for service in (shipping, everything):
        service.handles(channel("shipping.ship"))(shipping_ship)
    return {p.name: p for p in (inventory, payment, shipping, everything)}


_DEFAULT = services()
inventory = _DEFAULT["inventory"]
payment = _DEFAULT["payment"]
shipping = _DEFAULT["shipping"]
participant = _DEFAULT["order_services"]
