"""``saga-fsm ls --parent ID`` and ``show`` on child sagas, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from saga_fsm import SagaExecutor
from saga_fsm.examples import order_shipment
from saga_fsm.stores.sqlite import SqliteStore
from tests.cli.test_cli import saga_fsm


def test_ls_parent_lists_a_sagas_children(tmp_path: Path) -> None:
    async def make() -> None:
        store = SqliteStore(tmp_path / "sagas.db")
        executor = SagaExecutor(store, [order_shipment.definition])
        for n in (1, 2):
            data = {"order_id": n, "address": "Main St"}
            done = await executor.run(order_shipment.definition, data, saga_id=f"order-{n}")
            assert done.state == "completed"
        await store.close()

    asyncio.run(make())
    store = f"sqlite:///{tmp_path}/sagas.db"
    listed = saga_fsm("ls", "--parent", "order-1", "--json", "--store", store, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (child,) = json.loads(listed.stdout)
    assert child["id"] == "order-1:ship:1"
    assert (child["parent_id"], child["parent_step"]) == ("order-1", "ship")
    assert child["definition"] == "shipment" and child["state"] == "completed"
    # A parent's summary has no parent fields; a table lists the child too.
    everything = json.loads(saga_fsm("ls", "--json", "--store", store, cwd=tmp_path).stdout)
    assert len(everything) == 4
    assert "parent_id" not in next(row for row in everything if row["id"] == "order-1")
    table = saga_fsm("ls", "--parent", "order-2", "--store", store, cwd=tmp_path).stdout
    assert "shipment v1" in table and "1 saga(s)" in table
    shown = saga_fsm("show", "order-2:ship:1", "--store", store, cwd=tmp_path).stdout
    assert "child of: order-2 (step ship)" in shown
    # An unknown parent is bad input, said on one line.
    unknown = saga_fsm("ls", "--parent", "nope", "--store", store, cwd=tmp_path)
    assert unknown.returncode != 0 and "nope" in unknown.stderr
    # The parent's instance diagram names its child on the step; the child is drawn beside.
    drawn = saga_fsm(
        "diagram",
        "saga_fsm.examples.order_shipment:definition",
        "--instance",
        "order-1",
        "--store",
        store,
        "-o",
        "order.dot",
        cwd=tmp_path,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert "child order-1:ship:1: completed" in (tmp_path / "order.dot").read_text()
    assert "shipment v1" in (tmp_path / "order.order-1_ship_1.dot").read_text()
