"""Definition diagrams: DOT and Mermaid read from the compiled Machine."""

from __future__ import annotations

import itertools
import re

import pytest

from saga_fsm import compile_saga
from saga_fsm._flow import CompiledSaga
from saga_fsm._lifecycle import TransitionRow, build_machine
from saga_fsm.diagrams import definition_diagram, lifecycle_diagram
from saga_fsm.diagrams._dot import EDGE_STYLE
from saga_fsm.diagrams._machine import read_transitions
from saga_fsm.diagrams._mermaid import mermaid_ids
from saga_fsm.diagrams._scene import EdgeKind
from saga_fsm.examples import order_fulfillment, travel_booking
from tests.diagrams._support import edge, edges, label_lines, node, ten_steps

ORDER = order_fulfillment.definition


@pytest.fixture(scope="module")
def dot() -> str:
    return definition_diagram(ORDER).to_dot()


def test_forward_path_is_one_chain_that_sets_the_ranks(dot: str) -> None:
    chain = [
        "pending",
        "running:reserve_inventory",
        "running:process_payment",
        "running:create_shipment",
        "running:send_confirmation",
        "completed",
    ]
    forward = EDGE_STYLE[EdgeKind.FORWARD]["color"]
    for source, dest in itertools.pairwise(chain):
        attrs = edge(dot, source, dest)
        assert attrs["color"] == forward
        assert "constraint" not in attrs
        assert "dir" not in attrs
    assert label_lines(edge(dot, "pending", "running:reserve_inventory")) == ["start"]
    assert label_lines(edge(dot, "running:reserve_inventory", "running:process_payment")) == [
        "step_succeeded [!cancel_requested]"
    ]
    # Every other edge leaves the ranks alone.
    chained = set(itertools.pairwise(chain))
    for source, dest, attrs in edges(dot):
        if (source, dest) not in chained:
            assert attrs["constraint"] == "false", (source, dest)


def test_compensation_runs_backwards_styled_apart(dot: str) -> None:
    compensation = EDGE_STYLE[EdgeKind.COMPENSATION]
    for source, dest in [
        ("compensating:process_payment", "compensating:reserve_inventory"),
        ("compensating:reserve_inventory", "compensated"),
    ]:
        attrs = edge(dot, source, dest)
        assert attrs["color"] == compensation["color"]
        assert attrs["penwidth"] == compensation["penwidth"]
        assert attrs["dir"] == "back"  # drawn upwards, against the forward column
        assert label_lines(attrs) == ["compensation_succeeded"]
    assert compensation["color"] != EDGE_STYLE[EdgeKind.FORWARD]["color"]
    # Compensations sit beside the step they undo.
    assert '{ rank=same; "running:reserve_inventory"; "compensating:reserve_inventory"; }' in dot
    # ``failed`` sits beside the last compensation, where every compensation reaches it.
    assert (
        '{ rank=same; "running:process_payment"; "compensating:process_payment"; "failed"; }'
    ) in dot


def test_failure_edges_are_labelled_with_their_guards(dot: str) -> None:
    loop = label_lines(edge(dot, "running:process_payment", "running:process_payment"))
    assert "step_failed|step_timed_out [may_retry, !cancel_requested] / retry" in loop
    assert "retry_due [awaiting_retry]" in loop
    assert "cancel [in_flight] (internal)" in loop
    # A step that may have acted is undone first: its own compensation.
    own = edge(dot, "running:process_payment", "compensating:process_payment")
    assert "cancel [!in_flight] / compensate" in label_lines(own)
    assert "step_failed|step_timed_out / compensate" in label_lines(own)
    assert own["style"] == "dashed"
    # A definite refusal did nothing: the compensation starts at the step before.
    refused = edge(dot, "running:process_payment", "compensating:reserve_inventory")
    assert label_lines(refused) == ["step_failed [refused] / compensate"]
    # The first step refused has nothing before it to undo: straight to compensated.
    assert label_lines(edge(dot, "running:reserve_inventory", "compensated")) == [
        "step_failed [refused] / compensate"
    ]
    # Past the pivot a failure is only ever retried.
    after = label_lines(edge(dot, "running:send_confirmation", "running:send_confirmation"))
    assert "step_failed|step_timed_out / retry" in after
    assert not [d for s, d, _ in edges(dot) if s == "running:send_confirmation" and d != s][1:]


def test_pivot_retriable_and_terminal_states_are_marked(dot: str) -> None:
    pivot = node(dot, "running:create_shipment")
    assert "pivot" in pivot["label"] and pivot["penwidth"] == "3"
    assert "retriable" in node(dot, "running:send_confirmation")["label"]
    assert "dashed" in node(dot, "running:send_confirmation")["style"]
    assert "pivot" not in node(dot, "running:process_payment")["label"]
    fills = {
        state: node(dot, state)["fillcolor"] for state in ("completed", "compensated", "failed")
    }
    assert len(set(fills.values())) == 3
    for state in fills:
        assert node(dot, state)["peripheries"] == "2"
    assert "peripheries" not in node(dot, "running:process_payment")


def test_park_and_operator_retry_edges(dot: str) -> None:
    park = edge(dot, "compensating:process_payment", "failed")
    assert park["style"] == "dotted"
    resume = edge(dot, "failed", "compensating:process_payment")
    assert resume["color"] == EDGE_STYLE[EdgeKind.RESUME]["color"]
    # Two arrows of one kind and label fan into failed: the label is printed once.
    labels = [
        label_lines(edge(dot, f"compensating:{s}", "failed"))
        for s in ("reserve_inventory", "process_payment")
    ]
    assert sorted(labels, key=len) == [[], ["compensation_failed|compensation_timed_out / park"]]
    assert "labelled twin" in dot  # the legend says so


def test_legend_names_every_edge_style(dot: str) -> None:
    legend = next(line for line in dot.splitlines() if line.lstrip().startswith('"legend"'))
    for kind in EdgeKind:
        assert EDGE_STYLE[kind]["color"] in legend
    assert 'style="dashed"' in legend and 'style="dotted"' in legend


def test_ids_with_colons_are_always_quoted(dot: str) -> None:
    # Outside quoted strings (and the legend's HTML label) no colon is left anywhere:
    # unquoted, ``running:x`` would be node ``running`` with port ``x``.
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', re.sub(r"label=<.*>", "", dot))
    assert ":" not in stripped
    assert '"running:reserve_inventory" -> "running:process_payment"' in dot


def test_every_machine_transition_is_drawn() -> None:
    for definition in (ORDER, travel_booking.definition, ten_steps()):
        compiled = compile_saga(definition)
        dot = definition_diagram(definition).to_dot()
        drawn = {(s, d): label_lines(a) for s, d, a in edges(dot)}
        for t in read_transitions(compiled.machine):
            lines = drawn.get((t.source, t.dest))
            assert lines is not None, t
            if lines:
                assert any(t.trigger in line.split(" ")[0].split("|") for line in lines), t


def test_diagram_follows_the_machine_not_a_copy() -> None:
    """A transition that exists only in the Machine shows up in the picture."""
    compiled = compile_saga(ORDER)
    rows = (*compiled.rows, TransitionRow("expedite", "running:reserve_inventory", "completed"))
    machine = build_machine(compiled.states, rows, initial="pending", name="patched")
    patched = CompiledSaga(ORDER, compiled.states, rows, machine, compiled.step_index)
    dot = definition_diagram(patched).to_dot()
    assert label_lines(edge(dot, "running:reserve_inventory", "completed")) == ["expedite"]
    assert "expedite" not in definition_diagram(ORDER).to_dot()


def test_ten_step_saga_stays_one_column_per_path() -> None:
    definition = ten_steps()
    dot = definition_diagram(definition).to_dot()
    compiled = compile_saga(definition)
    # Parallel transitions are merged: one edge per (source, dest).
    pairs = [(s, d) for s, d, _ in edges(dot)]
    assert len(pairs) == len(set(pairs))
    assert len(pairs) <= len(read_transitions(compiled.machine)) // 2
    for n in range(1, 8):
        assert (
            f'{{ rank=same; "running:step_{n}"; "compensating:step_{n}";'
            + (' "failed";' if n == 7 else "")
            + " }"
        ) in dot
    assert "retriable" in node(dot, "running:step_10")["label"]
    assert "pivot" in node(dot, "running:step_8")["label"]


def test_mermaid_ids_are_sanitised_and_names_kept() -> None:
    text = definition_diagram(ORDER).to_mermaid()
    assert text.splitlines()[:5] == [
        "---",
        'title: "order_fulfillment v1"',
        "---",
        "stateDiagram-v2",
        "    direction TB",
    ]
    assert 'state "running:reserve_inventory" as running_reserve_inventory' in text
    assert "[*] --> pending" in text
    for line in text.splitlines():
        if " --> " in line:
            ends = line.strip().split(" : ")[0].split(" --> ")
            assert all(re.fullmatch(r"\[\*\]|[A-Za-z][A-Za-z0-9_]*", end) for end in ends), line
    assert (
        "running_process_payment --> compensating_reserve_inventory :"
        " step_failed [refused] / compensate"
    ) in text
    assert "class running_create_shipment pivot" in text


def test_mermaid_ids_never_collide() -> None:
    ids = mermaid_ids(["running:a.b", "running:a-b", "running_a_b", "end", "9lives"])
    assert len(set(ids.values())) == 5
    assert ids["end"] == "s_end" and ids["9lives"] == "s_9lives"


@pytest.mark.parametrize("which", ["saga", "step"])
def test_lifecycle_diagrams_read_the_generic_machines(which: str) -> None:
    dot = lifecycle_diagram(which).to_dot()  # type: ignore[arg-type]
    if which == "saga":
        assert "step_failed|step_timed_out [may_retry, !cancel_requested]" in dot
        assert label_lines(edge(dot, "failed", "compensating")) == ["retry [parked_here]"]
        assert node(dot, "completed")["peripheries"] == "2"
    else:
        assert label_lines(edge(dot, "pending", "running")) == ["run"]
        assert edge(dot, "running", "failed")["style"] == "dashed"
        labels = [label_lines(edge(dot, s, "running")) for s in ("failed", "timed_out")]
        assert ["run [attempts_left]"] in labels
    assert lifecycle_diagram(which).to_mermaid().startswith("---\n")  # type: ignore[arg-type]


def test_a_wait_shows_its_events_its_deadline_and_what_skips_it() -> None:
    from saga_fsm.examples import refund_approval

    dot = definition_diagram(refund_approval.definition).to_dot()
    waiting = node(dot, "running:manager_approval")["label"]
    assert "(waits for an event; after 48 h: fail; skipped when needs_approval is false)" in waiting
    assert "signal approved" in label_lines(
        edge(dot, "running:manager_approval", "running:pay_refund")
    )
    undo = label_lines(edge(dot, "running:manager_approval", "compensating:open_case"))
    assert "signal rejected / compensate" in undo
    assert "skipped: needs_approval is false" in label_lines(
        edge(dot, "running:manager_approval", "running:pay_refund")
    )
