"""Parallel groups in diagrams: branches side by side beside their group's state, and
an instance's path through each branch."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from saga_fsm import MemoryStore, SagaDefinition, SagaExecutor, StepContext, StepFailed
from saga_fsm.diagrams import definition_diagram, load_instance_diagram
from saga_fsm.diagrams._dot import _FADED_NODE
from saga_fsm.examples import order_fulfillment, parallel_order
from tests.diagrams._support import edge, node


def test_each_branch_is_a_box_of_its_own_beside_the_group() -> None:
    dot = definition_diagram(parallel_order.definition).to_dot()
    for key in ("north", "south", "east"):
        assert f'subgraph "cluster_reserve_stock/{key}"' in dot
        assert node(dot, f"reserve_stock/{key}/running:reserve")["label"] == "reserve"
        assert node(dot, f"reserve_stock/{key}/running:_join")["label"] == "joined"
        # The group's state starts the branch; the branch runs down to its join.
        assert edge(dot, "running:reserve_stock", f"reserve_stock/{key}/running:reserve")
        assert edge(
            dot, f"reserve_stock/{key}/running:reserve", f"reserve_stock/{key}/running:_join"
        )
        assert edge(
            dot,
            f"reserve_stock/{key}/compensating:reserve",
            f"reserve_stock/{key}/compensated",
        )
    assert 'label="reserve_stock: parallel, join all, at most 3 at once"' in dot
    # A ForEach draws its one template branch.
    assert 'subgraph "cluster_book_couriers/*"' in dot
    assert "for each item of data['parcels'], at most 2 at once" in dot


def test_a_flow_without_groups_draws_no_clusters() -> None:
    assert "subgraph" not in definition_diagram(order_fulfillment.definition).to_dot()


def test_mermaid_draws_branches_as_concurrent_regions() -> None:
    text = definition_diagram(parallel_order.definition).to_mermaid()
    assert 'state "reserve_stock: parallel, join all, at most 3 at once" as' in text
    assert text.count("        --\n") == 2  # three regions
    assert "running_reserve_stock --> cluster_reserve_stock : branches" in text


def _instance() -> tuple[str, str]:
    async def refuse_east(ctx: StepContext) -> dict[str, str]:
        if ctx.step == "reserve_stock/east/reserve":
            await asyncio.sleep(0.1)  # north has joined by then
            raise StepFailed("east is empty", retryable=False)
        return {ctx.step.replace("/", "_"): "ok"}

    async def undo(ctx: StepContext) -> None:
        return None

    from saga_fsm import ForEach, Parallel, Step

    definition = SagaDefinition(
        "drawn",
        [
            Parallel(
                "reserve_stock",
                branches={k: [Step("reserve", refuse_east, undo)] for k in ("north", "east")},
            ),
            ForEach("book", items="parcels", steps=[Step("hold", refuse_east, undo)]),
        ],
    )

    async def go() -> tuple[str, str]:
        executor = SagaExecutor(MemoryStore(), [definition])
        done = await executor.run(definition, {"parcels": ["p1"]})
        assert done.state == "compensated"
        diagram = await load_instance_diagram(executor.store, done.saga_id, definition)
        return diagram.to_dot(), diagram.to_mermaid()

    return asyncio.run(go())


def test_an_instance_diagram_shows_each_branchs_path() -> None:
    dot, mermaid = _instance()
    north = "reserve_stock/north/"
    # North reserved, reached the join, then was undone; east was refused.
    assert edge(dot, north + "running:reserve", north + "running:_join")["penwidth"] == "3.5"
    assert edge(dot, north + "running:_join", north + "compensating:reserve")["penwidth"] == "3.5"
    east = "reserve_stock/east/"
    assert edge(dot, east + "running:reserve", east + "compensated")["penwidth"] == "3.5"
    assert node(dot, east + "running:_join")["fillcolor"] == _FADED_NODE["fillcolor"]
    # The ForEach never started.
    assert node(dot, "book/*/running:hold")["fillcolor"] == _FADED_NODE["fillcolor"]
    assert "class " in mermaid


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_the_png_renders_with_graphviz() -> None:
    from saga_fsm.diagrams._render import PNG_SIGNATURE

    png = definition_diagram(parallel_order.definition).render("png")
    assert png.startswith(PNG_SIGNATURE) and len(png) > 50_000
