"""ChildSaga as a row of the table: validation, the flow rows it adds, and decide()."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga_fsm import ChildSaga, DefinitionError, SagaDefinition, Step, StepKind
from saga_fsm._codec import snapshot_from_json, snapshot_to_dict, snapshot_to_json
from saga_fsm._core import Event, RunStep, ScheduleWake, decide, new_snapshot
from saga_fsm._fingerprint import fingerprint
from saga_fsm._flow import compile_saga
from saga_fsm._nesting import parent_event
from saga_fsm._snapshot import ErrorInfo, StepStatus, replace
from saga_fsm.examples import order_fulfillment, order_shipment

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _noop(ctx: object) -> None:
    return None


CHILD = SagaDefinition("child", [Step("a", _noop, _noop), Step("b", _noop, _noop)], reversible=True)
ONE_WAY = SagaDefinition(
    "one_way", [Step("a", _noop, _noop), Step("go", _noop, kind=StepKind.PIVOT)]
)


def parent(step: ChildSaga | None = None) -> SagaDefinition:
    return SagaDefinition(
        "parent",
        [
            Step("first", _noop, _noop),
            step or ChildSaga("kid", definition=CHILD, input=["x"], output=["y"]),
            Step("last", _noop, _noop),
        ],
    )


# -- validation ---------------------------------------------------------------------------
def test_a_compensable_child_step_needs_a_child_that_can_be_undone() -> None:
    with pytest.raises(DefinitionError) as err:
        ChildSaga("kid", definition=ONE_WAY)
    assert (err.value.step, err.value.field) == ("kid", "definition")
    assert "pivot 'go' cannot be undone" in err.value.reason
    assert "make this step a pivot or retriable" in err.value.reason
    plain = SagaDefinition("plain", [Step("a", _noop, _noop)])
    with pytest.raises(DefinitionError, match="not marked reversible=True"):
        ChildSaga("kid", definition=plain)
    # As a pivot or a retriable step it is never compensated: any child goes.
    assert ChildSaga("kid", definition=ONE_WAY, kind=StepKind.PIVOT).compensable is False


def test_a_reversible_definition_has_no_pivot() -> None:
    with pytest.raises(DefinitionError) as err:
        SagaDefinition(
            "r", [Step("a", _noop, _noop), Step("go", _noop, kind=StepKind.PIVOT)], reversible=True
        )
    assert (err.value.row, err.value.step, err.value.field) == (1, "go", "reversible")


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"action": _noop}, "action", "takes no action"),
        ({"compensation": _noop}, "compensation", "takes no compensation"),
        ({"command": "x.y"}, "command", "takes no command"),
        ({"timeout": 5.0}, "timeout", "not supported"),
        ({"transactional": True}, "transactional", "cannot be transactional"),
        ({"read_only": True}, "read_only", "not read_only"),
        ({"input": 3}, "input", "function of the parent's data"),
        ({"input": ["ok", ""]}, "input", "list of data keys"),
        ({"output": [1]}, "output", "list of data keys"),
        ({"check_every": 0}, "check_every", "positive"),
        ({"definition": 42}, "definition", "SagaDefinition or the name"),
        ({"definition": "no spaces"}, "definition", "invalid saga name"),
    ],
)
def test_child_step_fields_are_checked(options: dict[str, object], field: str, why: str) -> None:
    arguments: dict[str, object] = {"definition": CHILD, **options}
    with pytest.raises(DefinitionError) as err:
        ChildSaga("kid", **arguments)  # type: ignore[arg-type]
    assert (err.value.step, err.value.field) == ("kid", field)
    assert why in err.value.reason


def test_a_saga_cannot_be_its_own_child() -> None:
    with pytest.raises(DefinitionError) as err:
        SagaDefinition("loop", [ChildSaga("again", definition="loop", kind=StepKind.PIVOT)])
    assert (err.value.row, err.value.step, err.value.field) == (0, "again", "definition")


# -- the table ----------------------------------------------------------------------------
def test_existing_tables_keep_their_fingerprints_and_rows() -> None:
    compiled = compile_saga(order_fulfillment.definition)
    assert {r.trigger for r in compiled.rows}.isdisjoint({"child_pending", "compensate"})
    assert compiled.child_steps == frozenset()


def test_child_rows_exist_only_where_used() -> None:
    rows = {(r.trigger, r.source, r.dest) for r in compile_saga(parent()).rows}
    assert ("child_pending", "running:kid", None) in rows
    assert ("child_pending", "compensating:kid", None) in rows
    child_rows = {(r.trigger, r.source, r.dest) for r in compile_saga(CHILD).rows}
    assert ("compensate", "completed", "compensating:b") in child_rows
    # The step type is part of the table: a ChildSaga is not a Step with the same name.
    assert fingerprint(compile_saga(parent())) != fingerprint(
        compile_saga(
            SagaDefinition(
                "parent",
                [
                    Step("first", _noop, _noop),
                    Step("kid", _noop, _noop),
                    Step("last", _noop, _noop),
                ],
            )
        )
    )


# -- decide -------------------------------------------------------------------------------
def test_running_a_child_step_waits_unheld_for_the_child() -> None:
    compiled = compile_saga(parent())
    snapshot = decide(compiled, new_snapshot(parent(), "p", {"x": 1}, T0), Event.start(T0)).snapshot
    decision = decide(compiled, snapshot, Event("step_succeeded", T0, step="first", attempt=1))
    (command,) = decision.commands
    assert command == RunStep("kid", 1, "p:kid", None, "p:kid:1")
    after = decision.snapshot
    assert after.state == "running:kid"
    # Due at the next look, not now (as a remote step waits for its reply).
    assert after.wake_at == after.due_at == T0 + timedelta(seconds=30)

    later = T0 + timedelta(seconds=31)
    pending = decide(compiled, after, Event("child_pending", later))
    assert pending.commands == (ScheduleWake(later + timedelta(seconds=30), hand_back=True),)
    assert pending.snapshot.state == "running:kid"

    child = replace(
        new_snapshot(CHILD, "p:kid:1", {"x": 1}, T0),
        state="completed",
        data={"x": 1, "y": 2, "z": 3},
    )
    event = parent_event(compiled, after, child, later)
    assert event is not None and event.result == {"y": 2}
    done = decide(compiled, after, event).snapshot
    assert done.state == "running:last" and done.data == {"x": 1, "y": 2}

    # A compensated child is a definite failure: only the steps before are undone.
    undone = replace(child, state="compensated", failure=ErrorInfo("E", "no", retryable=False))
    event = parent_event(compiled, after, undone, later)
    assert event is not None and event.error is not None and not event.error.retryable
    failed = decide(compiled, after, event).snapshot
    assert failed.state == "compensating:first"
    assert failed.step("kid").status is StepStatus.FAILED
    # Another attempt's child, or one still running, tells the parent nothing.
    assert parent_event(compiled, after, replace(child, saga_id="p:kid:2"), later) is None
    assert parent_event(compiled, after, replace(child, state="running:a"), later) is None


def test_a_completed_reversible_saga_is_compensated_as_a_whole() -> None:
    compiled = compile_saga(CHILD)
    snapshot = decide(compiled, new_snapshot(CHILD, "c", {}, T0), Event.start(T0)).snapshot
    for step in ("a", "b"):
        snapshot = decide(
            compiled, snapshot, Event("step_succeeded", T0, step=step, attempt=1)
        ).snapshot
    assert snapshot.state == "completed"
    undo = decide(compiled, snapshot, Event("compensate", T0))
    assert undo.snapshot.state == "compensating:b"
    assert undo.snapshot.failure is not None and undo.snapshot.failure.type == "Compensated"


def test_parent_fields_are_encoded_only_when_set() -> None:
    plain = new_snapshot(CHILD, "c", {}, T0)
    assert "parent_id" not in snapshot_to_dict(plain)
    child = replace(plain, parent_id="p", parent_step="kid")
    text = snapshot_to_json(child)
    assert '"parent_id":"p","parent_step":"kid"' in text
    assert snapshot_from_json(text) == child


def test_the_example_tables_are_valid() -> None:
    compiled = compile_saga(order_shipment.definition)
    assert compiled.child_steps == frozenset({"ship"})
    assert order_shipment.shipment.reversible


# -- files --------------------------------------------------------------------------------
def test_a_child_step_in_a_definition_file() -> None:
    from saga_fsm._loading import definition_from_mapping

    raw = {
        "name": "from_file",
        "steps": [
            {
                "name": "reserve",
                "action": "saga_fsm.examples.order_shipment:reserve_inventory",
                "compensation": "saga_fsm.examples.order_shipment:release_inventory",
            },
            {
                "name": "ship",
                "child": "saga_fsm.examples.order_shipment:shipment",
                "input": ["order_id"],
                "output": ["tracking_number"],
                "check_every": 2.5,
            },
            {"name": "later", "child": "some_other_saga", "kind": "pivot"},
        ],
    }
    loaded = definition_from_mapping(raw)
    ship, later = loaded.steps[1], loaded.steps[2]
    assert isinstance(ship, ChildSaga) and ship.definition is order_shipment.shipment
    assert (ship.input, ship.output, ship.check_every) == (
        ("order_id",),
        ("tracking_number",),
        2.5,
    )
    assert isinstance(later, ChildSaga) and later.definition == "some_other_saga"
    assert definition_from_mapping(
        {"name": "r", "reversible": True, "steps": raw["steps"][:1]}
    ).reversible

    bad = {**raw, "steps": [{**raw["steps"][1], "action": "x.y:z"}]}
    with pytest.raises(DefinitionError) as err:
        definition_from_mapping(bad, source="f.toml")
    assert (err.value.row, err.value.step, err.value.field) == (0, "ship", "action")
    plain = {
        **raw,
        "steps": [{"name": "ship", "child": "saga_fsm.examples.order_fulfillment:definition"}],
    }
    with pytest.raises(DefinitionError, match="pivot 'create_shipment' cannot be undone"):
        definition_from_mapping(plain)
