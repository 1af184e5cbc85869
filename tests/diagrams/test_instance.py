"""Instance diagrams: the path one saga took, read from its stored history."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from saga_fsm import HistoryEntry, MemoryStore, Orchestrator, SagaDefinition, Snapshot
from saga_fsm.diagrams import (
    DiagramError,
    InstanceDiagram,
    instance_diagram,
    load_instance_diagram,
    snapshot_diagram,
)
from saga_fsm.diagrams._dot import _FADED_EDGE, _FADED_NODE
from saga_fsm.examples import order_fulfillment
from tests.diagrams._support import Script, edge, label_lines, node, order_saga


def run(definition: SagaDefinition) -> tuple[InstanceDiagram, Snapshot, list[HistoryEntry]]:
    async def go() -> tuple[InstanceDiagram, Snapshot, list[HistoryEntry]]:
        store = MemoryStore()
        final = await Orchestrator(store, [definition]).run(definition, {"n": 1})
        diagram = await load_instance_diagram(store, final.saga_id, definition)
        return diagram, final, await store.history(final.saga_id)

    return asyncio.run(go())


def test_retries_are_counted_on_the_loop_and_the_path_numbered() -> None:
    diagram, final, history = run(order_saga(Script({"charge": ["transient", "transient"]})))
    assert final.state == "completed"
    dot = diagram.to_dot()
    loop = edge(dot, "running:charge", "running:charge")
    assert label_lines(loop)[0] == "\u00d72"
    assert loop["penwidth"] == "3.5"
    numbered = [
        ("pending", "running:reserve"),
        ("running:reserve", "running:charge"),
        ("running:charge", "running:ship"),
        ("running:ship", "running:notify"),
        ("running:notify", "completed"),
    ]
    for n, (source, dest) in enumerate(numbered, 1):
        assert label_lines(edge(dot, source, dest))[0] == f"#{n}"
    # Four loop rows (two failures, two wake-ups) and five moves: the whole history.
    assert len(history) == 9
    current = node(dot, "completed")
    assert current["fillcolor"] == "#ffd54f" and "current" in current["label"]
    assert node(dot, "running:charge")["penwidth"] == "2.5"
    for state in ("compensating:reserve", "compensated", "failed"):
        assert node(dot, state)["fillcolor"] == _FADED_NODE["fillcolor"]
    assert edge(dot, "running:charge", "compensating:reserve")["color"] == _FADED_EDGE["color"]
    assert diagram.state == "completed" and diagram.saga_id == final.saga_id


def test_a_permanent_failure_draws_the_compensation_path() -> None:
    diagram, final, _ = run(order_saga(Script({"ship": ["permanent"]})))
    assert final.state == "compensated"
    dot = diagram.to_dot()
    path = [
        ("pending", "running:reserve"),
        ("running:reserve", "running:charge"),
        ("running:charge", "running:ship"),
        ("running:ship", "compensating:charge"),
        ("compensating:charge", "compensating:reserve"),
        ("compensating:reserve", "compensated"),
    ]
    for n, (source, dest) in enumerate(path, 1):
        attrs = edge(dot, source, dest)
        assert label_lines(attrs)[0] == f"#{n}", (source, dest)
        assert attrs["color"] != _FADED_EDGE["color"]
    assert edge(dot, "compensating:charge", "compensating:reserve")["dir"] == "back"
    assert node(dot, "compensated")["fillcolor"] == "#ffd54f"
    assert node(dot, "running:notify")["fillcolor"] == _FADED_NODE["fillcolor"]
    mermaid = diagram.to_mermaid()
    assert "class compensated current" in mermaid
    assert "running_ship --> compensating_charge : #4<br/>" in mermaid


def test_a_parked_saga_and_an_edge_taken_twice() -> None:
    definition = order_saga(Script({"charge": ["permanent"], "reserve:undo": ["permanent"]}))
    diagram, final, history = run(definition)
    assert final.state == "failed"
    dot = diagram.to_dot()
    assert label_lines(edge(dot, "compensating:reserve", "failed"))[0] == "#4"
    assert node(dot, "failed")["fillcolor"] == "#ffd54f"
    # Operator retry: failed -> compensating:reserve is taken, then parked again.
    now = datetime.now(UTC)
    later = [
        *history,
        HistoryEntry("failed", "compensating:reserve", "retry", now),
        HistoryEntry("compensating:reserve", "failed", "compensation_failed", now),
    ]
    again = instance_diagram(definition, later).to_dot()
    assert label_lines(edge(again, "compensating:reserve", "failed"))[0] == "#4, #6"
    assert label_lines(edge(again, "failed", "compensating:reserve"))[0] == "#5"


def test_history_that_does_not_fit_the_definition_is_refused() -> None:
    definition = order_fulfillment.definition
    bogus = [HistoryEntry("pending", "completed", "start", datetime.now(UTC))]
    with pytest.raises(DiagramError, match=r"history row 1 \(pending -> completed on 'start'\)"):
        instance_diagram(definition, bogus)


def test_a_snapshot_of_another_definition_is_refused() -> None:
    _, final, history = run(order_saga(Script()))
    with pytest.raises(DiagramError, match="is a order v1 instance, not order_fulfillment v1"):
        snapshot_diagram(order_fulfillment.definition, final, history)


def test_no_history_yet_marks_the_initial_state() -> None:
    dot = instance_diagram(order_fulfillment.definition, []).to_dot()
    assert node(dot, "pending")["fillcolor"] == "#ffd54f"
    assert node(dot, "completed")["fillcolor"] == _FADED_NODE["fillcolor"]
