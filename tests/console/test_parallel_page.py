"""The console's saga page lists a parallel group's branches under it."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from saga_fsm import MemoryStore, SagaExecutor
from saga_fsm.console import create_app
from saga_fsm.examples import parallel_order
from saga_fsm.examples._fakes import services

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_the_saga_page_shows_each_branch_and_its_steps() -> None:
    services.configure()
    store = MemoryStore()
    definition = parallel_order.definition
    done = asyncio.run(SagaExecutor(store, [definition]).run(definition, {"parcels": ["a"]}))
    assert done.state == "completed"
    web = TestClient(create_app(store=store, definitions=[definition]))
    page = web.get(f"/sagas/{done.saga_id}").text
    for key in ("north", "south", "east"):
        assert f'reserve_stock/{key}</td><td colspan="8">joined' in page
    assert "book_couriers/0</td>" in page
    assert page.count('<tr class="branch-step">') == 4
