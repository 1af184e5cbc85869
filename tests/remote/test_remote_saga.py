"""A saga of remote steps end to end, on every transport (memory, SQLite, PostgreSQL,
RabbitMQ, NATS JetStream), with the example participant answering in the same process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from saga_fsm.examples import order_remote, order_services
from saga_fsm.stores import MemoryStore, PostgresStore, SqliteStore
from saga_fsm.stores._outbox import OutboxStore
from saga_fsm.stores._protocol import SagaStore
from tests.messaging._brokers import Broker
from tests.messaging.conftest import broker
from tests.remote._harness import running

__all__ = ["broker"]

ORDERS: list[dict[str, Any]] = [
    {"order_id": "ok-1", "quantity": 1, "card": "4111"},
    {"order_id": "ok-2", "quantity": 2, "card": "4111", "amount": 30},
    {"order_id": "no-stock", "quantity": order_services.STOCK + 1, "card": "4111"},
    {"order_id": "declined", "quantity": 1, "card": "4000-0000"},
]


async def open_store(broker: Broker, tmp_path: Path, request: pytest.FixtureRequest) -> SagaStore:
    """The saga store: the transport's own database where it is one (embedded)."""
    if broker.kind == "sqlite":
        return SqliteStore(broker.url[len("sqlite:///") :])
    if broker.kind == "postgresql":
        return await PostgresStore.open(request.getfixturevalue("postgres_dsn"))
    del tmp_path
    return MemoryStore()


def test_orders_end_completed_or_compensated_on_every_transport(
    broker: Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    prefix = broker.prefix
    for name in (
        "inventory.reserve",
        "inventory.release",
        "payment.charge",
        "payment.refund",
        "shipping.ship",
        "replies.order_fulfillment_remote",
    ):
        broker.channel(name)  # so that the broker's clean-up deletes them
    definition = order_remote.remote_definition(prefix)
    participant = order_services.make_participant(prefix)
    order_services.tables.clear()
    if broker.kind == "postgresql":
        request.getfixturevalue("postgres_dsn")

    async def go() -> None:
        store = await open_store(broker, tmp_path, request)
        transport = await broker.connect(ack_wait=5.0)
        try:
            async with running(
                store,
                transport,
                definition,
                participant=participant,
                reply_channel=broker.channel("replies"),
            ) as run:
                ids = [await run.start(order) for order in ORDERS]
                finals = await run.finished(ids)
                assert [f.state for f in finals] == [
                    "completed",
                    "completed",
                    "compensated",
                    "compensated",
                ]
                ok = finals[1]
                assert ok.data["reservation_id"] == f"res-{ok.saga_id}:reserve_inventory"
                assert ok.data["payment_id"] and ok.data["shipment_id"]
                assert ok.data["confirmation_sent"] is True  # the local step, mixed in
                declined = finals[3]
                assert declined.step("reserve_inventory").status.value == "compensated"
                assert declined.step("process_payment").error is not None
                assert not declined.step("process_payment").error.retryable
                # Every command went out through the outbox, once, and was published.
                assert isinstance(store, OutboxStore)
                rows = await store.outbox()
                assert rows and all(r.published_at is not None for r in rows)
                assert len({r.message.message_id for r in rows}) == len(rows)
                assert run.executor.reply_counts["applied"] == len(rows)
                # The declined order's release undid its reservation; completed ones keep theirs.
                kept = {f"res-{f.saga_id}:reserve_inventory" for f in finals[:2]}
                assert set(order_services.tables.reservations) == kept
        finally:
            await transport.close()
            await store.close()
        assert max(order_services.tables.applied.values()) == 1

    asyncio.run(go())
