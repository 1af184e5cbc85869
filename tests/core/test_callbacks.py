"""A definition's own transitions callbacks run inside the decision, through the
Machine: they see the event data, their return is ignored, and an exception in one is
a CallbackError naming it, with nothing decided."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from saga_fsm import CallbackError, DefinitionError, SagaDefinition, SagaError, Step, decide
from saga_fsm._core import Event, new_snapshot
from tests.helpers import noop

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _definition(callbacks: Any) -> SagaDefinition:
    return SagaDefinition(
        "hooked",
        (Step("reserve", noop, noop), Step("charge", noop, noop)),
        callbacks=callbacks,
    )


def test_callbacks_see_each_transition_in_transitions_order() -> None:
    seen: list[tuple[str, str, str]] = []

    def record(hook: str) -> Any:
        def callback(event: Any) -> str:
            seen.append((hook, event.event.name, event.model.state))
            return "ignored"

        return callback

    definition = _definition(
        {
            "before_step_succeeded": record("before"),
            "on_exit_running:reserve": record("exit"),
            "on_enter_running:charge": [record("enter")],
            "after_step_succeeded": record("after"),
            "after_state_change": record("changed"),
        }
    )
    started = decide(definition, new_snapshot(definition, "s1", {}, T0), Event.start(T0))
    assert seen == [("changed", "start", "running:reserve")]
    seen.clear()
    event = Event("step_succeeded", T0, step="reserve", attempt=1)
    decision = decide(definition, started.snapshot, event)
    assert decision.snapshot.state == "running:charge"
    assert seen == [
        ("before", "step_succeeded", "running:reserve"),
        ("exit", "step_succeeded", "running:reserve"),
        ("enter", "step_succeeded", "running:charge"),
        ("after", "step_succeeded", "running:charge"),
        ("changed", "step_succeeded", "running:charge"),
    ]


def test_a_raising_callback_is_a_saga_error_naming_it_and_decides_nothing() -> None:
    def audit(_event: Any) -> None:
        raise RuntimeError("audit log full")

    definition = _definition({"on_enter_running:reserve": audit})
    snapshot = new_snapshot(definition, "s1", {}, T0)
    with pytest.raises(CallbackError) as caught:
        decide(definition, snapshot, Event.start(T0))
    assert isinstance(caught.value, SagaError)
    assert caught.value.hook == "on_enter_running:reserve"
    assert "audit" in caught.value.callback
    assert "audit log full" in str(caught.value)
    assert snapshot.state == "pending"


@pytest.mark.parametrize(
    "hook",
    ["on_enter_running:nope", "before_explode", "on_enter_compensating:missing", "whenever"],
)
def test_unknown_callback_names_are_refused_when_the_definition_is_built(hook: str) -> None:
    with pytest.raises(DefinitionError, match="callbacks"):
        _definition({hook: noop})


def test_a_callback_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="callable"):
        _definition({"after_state_change": ["not a function"]})
