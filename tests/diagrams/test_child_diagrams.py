"""A parent's instance diagram names its child sagas and draws each of them."""

from __future__ import annotations

import asyncio

from saga_fsm import SagaExecutor
from saga_fsm.diagrams import definition_diagram, load_instance_diagram
from saga_fsm.examples import order_shipment
from saga_fsm.stores import MemoryStore


def test_the_definition_names_the_child_it_starts() -> None:
    dot = definition_diagram(order_shipment.definition).to_dot()
    assert "child saga: shipment" in dot


def test_the_instance_diagram_links_and_draws_the_child() -> None:
    async def main() -> None:
        store = MemoryStore()
        executor = SagaExecutor(store, [order_shipment.definition])
        data = {"order_id": 3, "address": "Main St"}
        await executor.run(order_shipment.definition, data, saga_id="order-3")
        drawn = await load_instance_diagram(store, "order-3", order_shipment.definition)
        assert "child order-3:ship:1: completed" in drawn.to_dot()
        assert "child order-3:ship:1: completed" in drawn.to_mermaid()
        (child,) = drawn.children
        assert (child.saga_id, child.state) == ("order-3:ship:1", "completed")
        assert "shipment v1" in child.to_dot()

    asyncio.run(main())
