"""The console's saga page links a parent and its child sagas both ways."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from saga_fsm import MemoryStore, SagaExecutor
from saga_fsm.console import create_app
from saga_fsm.examples import order_shipment

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_a_parent_and_its_child_link_to_each_other() -> None:
    store = MemoryStore()
    data = {"order_id": 1, "address": "Main St"}
    asyncio.run(
        SagaExecutor(store, [order_shipment.definition]).run(
            order_shipment.definition, data, saga_id="order-1"
        )
    )
    app = create_app(store=store, definitions=[order_shipment.definition])
    web = TestClient(app, follow_redirects=False)
    parent = web.get("/sagas/order-1")
    assert parent.status_code == 200
    assert 'href="/sagas/order-1%3Aship%3A1"' in parent.text
    child = web.get("/sagas/order-1:ship:1")
    assert child.status_code == 200
    assert 'id="parent" href="/sagas/order-1"' in child.text and "(step ship)" in child.text
