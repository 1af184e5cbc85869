"""Parallel groups as rows of a state table: what is accepted, what is refused and why,
and what their flow rows and fingerprints are."""

from __future__ import annotations

import pytest

from saga_fsm import (
    DefinitionError,
    ForEach,
    Parallel,
    SagaBuilder,
    SagaDefinition,
    Step,
    StepContext,
    compile_saga,
    definition_fingerprint,
)


def act(ctx: StepContext) -> None:
    return None


def undo(ctx: StepContext) -> None:
    return None


def comp(name: str, **options: object) -> Step:
    return Step(name, act, compensation=undo, **options)  # type: ignore[arg-type]


def group(**options: object) -> Parallel:
    branches = options.pop("branches", {"a": [comp("r")], "b": [comp("r"), comp("s")]})
    return Parallel("reserve_all", branches=branches, **options)  # type: ignore[arg-type]


def test_a_parallel_group_is_a_row_with_running_and_compensating_states() -> None:
    saga = SagaDefinition("p", [comp("first"), group(), Step("charge", act, kind="pivot")])
    compiled = compile_saga(saga)
    assert {"running:reserve_all", "compensating:reserve_all"} <= set(compiled.states)
    edges = {(r.trigger, r.source, r.dest) for r in compiled.rows if "reserve_all" in r.source}
    assert edges == {
        ("step_succeeded", "running:reserve_all", "running:charge"),
        ("step_failed", "running:reserve_all", "compensating:reserve_all"),
        ("branch_progress", "running:reserve_all", None),
        ("cancel", "running:reserve_all", None),
        ("branch_progress", "compensating:reserve_all", None),
        ("compensation_succeeded", "compensating:reserve_all", "compensating:first"),
        ("compensation_failed", "compensating:reserve_all", "failed"),
    }
    # A later step failing undoes the whole group first.
    assert ("step_failed", "running:charge", "compensating:reserve_all") in {
        (r.trigger, r.source, r.dest) for r in compiled.rows
    }


def test_a_definition_without_groups_keeps_its_rows_and_fingerprint() -> None:
    plain = SagaDefinition("p", [comp("a"), Step("b", act, kind="pivot")])
    assert not any(r.trigger == "branch_progress" for r in compile_saga(plain).rows)
    again = SagaDefinition("p", [comp("a"), Step("b", act, kind="pivot")])
    assert definition_fingerprint(plain) == definition_fingerprint(again)


def test_the_fingerprint_covers_branches_and_join_but_not_concurrency() -> None:
    base = definition_fingerprint(SagaDefinition("p", [group()]))
    assert definition_fingerprint(SagaDefinition("p", [group(max_concurrency=1)])) == base
    assert definition_fingerprint(SagaDefinition("p", [group(join="any")])) != base
    other = group(branches={"a": [comp("r")], "c": [comp("r"), comp("s")]})
    assert definition_fingerprint(SagaDefinition("p", [other])) != base
    longer = group(branches={"a": [comp("r"), comp("t")], "b": [comp("r"), comp("s")]})
    assert definition_fingerprint(SagaDefinition("p", [longer])) != base


@pytest.mark.parametrize(
    ("options", "step", "field", "why"),
    [
        ({"branches": {}}, "reserve_all", "branches", "at least one branch"),
        ({"branches": {"a": []}}, "reserve_all", "branches", "has no steps"),
        ({"branches": {"a b": [comp("r")]}}, "reserve_all", "branches", "branch names"),
        ({"branches": {"a": "r"}}, "reserve_all", "branches", "lists of steps"),
        ({"branches": {"a": [comp("r"), comp("r")]}}, "reserve_all/a/r", "name", "duplicate"),
        ({"branches": {"a": [comp("_join")]}}, "reserve_all/a/_join", "name", "reserved"),
        (
            {"branches": {"a": [Step("p", act, kind="pivot")]}},
            "reserve_all/a/p",
            "kind",
            "a pivot may not sit inside a group",
        ),
        (
            {"branches": {"a": [comp("r", transactional=True)]}},
            "reserve_all/a/r",
            "transactional",
            "transactional",
        ),
        ({"join": "most"}, "reserve_all", "join", '"all", "any"'),
        ({"join": 0}, "reserve_all", "join", "between 1 and the number of branches (2)"),
        ({"join": 3}, "reserve_all", "join", "between 1 and the number of branches (2)"),
        ({"join": True}, "reserve_all", "join", '"all", "any"'),
        ({"max_concurrency": 0}, "reserve_all", "max_concurrency", ">= 1"),
        ({"max_concurrency": 1.5}, "reserve_all", "max_concurrency", ">= 1"),
        ({"action": act}, "reserve_all", "action", "no action of its own"),
        ({"timeout": 3.0}, "reserve_all", "timeout", "no timeout"),
        ({"kind": "pivot"}, "reserve_all", "kind", "cannot be a pivot"),
    ],
)
def test_invalid_groups_are_refused_saying_where_and_why(
    options: dict[str, object], step: str, field: str, why: str
) -> None:
    with pytest.raises(DefinitionError) as raised:
        group(**options)
    err = raised.value
    assert (err.step, err.field) == (step, field)
    assert why in err.reason


def test_nested_groups_are_refused() -> None:
    with pytest.raises(DefinitionError, match="groups do not nest") as raised:
        group(branches={"a": [group()]})
    assert raised.value.step == "reserve_all/a/reserve_all"


def test_a_group_after_the_pivot_is_refused_with_its_row() -> None:
    with pytest.raises(DefinitionError, match="cannot come after the pivot") as raised:
        SagaDefinition("p", [Step("charge", act, kind="pivot"), group()])
    assert (raised.value.row, raised.value.step, raised.value.field) == (1, "reserve_all", "kind")


def test_group_names_share_the_rows_namespace() -> None:
    with pytest.raises(DefinitionError, match="duplicate step name") as raised:
        SagaDefinition("p", [comp("reserve_all"), group()])
    assert raised.value.row == 1


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"items": ""}, "items", "must name a list"),
        ({"steps": []}, "branches", "has no steps"),
        ({"steps": [Step("p", act, kind="pivot")]}, "kind", "pivot"),
        ({"max_concurrency": -1}, "max_concurrency", ">= 1"),
    ],
)
def test_invalid_for_each_is_refused(options: dict[str, object], field: str, why: str) -> None:
    arguments: dict[str, object] = {"items": "warehouses", "steps": [comp("hold")]}
    arguments.update(options)
    with pytest.raises(DefinitionError) as raised:
        ForEach("each", **arguments)  # type: ignore[arg-type]
    assert raised.value.field == field and why in raised.value.reason


def test_groups_fit_the_builder_too() -> None:
    saga = (
        SagaBuilder("b")
        .step("first", act, compensation=undo)
        .parallel("reserve_all", {"a": [comp("r")], "b": [comp("r")]}, max_concurrency=1)
        .for_each("each", "items", [comp("hold")])
        .pivot("charge", act)
        .build()
    )
    assert [type(s).__name__ for s in saga.steps] == ["Step", "Parallel", "ForEach", "Step"]
    with pytest.raises(DefinitionError) as raised:
        SagaBuilder("b").step("first", act, compensation=undo).parallel("g", {}, join="any")
    assert (raised.value.row, raised.value.step, raised.value.field) == (1, "g", "branches")


def test_a_group_definition_may_hook_branch_progress_and_others_may_not() -> None:
    seen: list[str] = []
    saga = SagaDefinition(
        "p", [group()], callbacks={"after_branch_progress": lambda ev: seen.append("moved")}
    )
    assert saga.callbacks
    with pytest.raises(DefinitionError, match="unknown callback"):
        SagaDefinition("p", [comp("a")], callbacks={"after_branch_progress": print})


def test_a_wait_inside_a_group_is_refused() -> None:
    from datetime import timedelta

    from saga_fsm import WaitFor

    wait = WaitFor("approval", events={"approved": "continue"}, timeout=timedelta(hours=1))
    with pytest.raises(DefinitionError, match="a wait may not sit inside a group") as raised:
        group(branches={"a": [wait]})
    assert raised.value.step == "reserve_all/a/approval"


def test_a_child_saga_inside_a_group_is_refused() -> None:
    from saga_fsm import ChildSaga

    child = ChildSaga("ship", definition=SagaDefinition("shipment", [comp("pack")]), kind="pivot")
    with pytest.raises(DefinitionError, match="a child saga may not sit inside a group") as raised:
        group(branches={"a": [child]})
    assert raised.value.step == "reserve_all/a/ship"
