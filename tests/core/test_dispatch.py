"""``Dispatch`` (the engine's hot path) and transitions' own trigger path make the same
choice on every state, trigger and combination of guard values: the Machine stays the
single source of truth."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from transitions import Machine

from saga_fsm import SagaBuilder, SagaDefinition, compile_saga
from saga_fsm._lifecycle import (
    SAGA_LIFECYCLE_MACHINE,
    STEP_LIFECYCLE_MACHINE,
    Dispatch,
    StepModel,
    build_machine,
    fire,
    step_transition,
)
from saga_fsm._snapshot import StepStatus
from saga_fsm.examples import order_fulfillment, travel_booking
from tests.helpers import noop, three_step


class Model:
    """Guards answer from a table (callable or plain attribute, as the engine's scratch
    has both); effects are recorded in the order they are called."""

    def __init__(self, state: str, answers: dict[str, bool], plain: frozenset[str]) -> None:
        self.state = state
        self.calls: list[tuple[str, str, str | None, str]] = []
        self._answers = answers
        self._plain = plain

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._answers:
            if name in self._plain:
                return self._answers[name]
            return lambda ev: self._answers[name]

        def effect(ev: Any) -> None:
            self.calls.append((name, ev.event.name, ev.transition.dest, ev.transition.source))

        return effect


def _action_less_first() -> SagaDefinition:
    return (
        SagaBuilder("pending_first")
        .step("create_pending", None, compensation=noop)
        .step("charge", noop, compensation=noop)
        .build()
    )


MACHINES: list[tuple[str, Machine]] = [
    ("saga", SAGA_LIFECYCLE_MACHINE),
    ("step", STEP_LIFECYCLE_MACHINE),
    *(
        (d.name, compile_saga(d).machine)
        for d in (
            order_fulfillment.definition,
            travel_booking.definition,
            three_step(),
            _action_less_first(),
        )
    ),
]


@pytest.mark.parametrize("machine", [m for _, m in MACHINES], ids=[n for n, _ in MACHINES])
def test_dispatch_chooses_what_the_machine_chooses(machine: Machine) -> None:
    dispatch = Dispatch(machine)
    guards = sorted(
        {
            str(c.func)
            for event in machine.events.values()
            for ts in event.transitions.values()
            for t in ts
            for c in t.conditions
        }
    )
    triggers = list(machine.events)
    checked = 0
    for state in machine.states:
        for trigger in triggers:
            for values in itertools.product((False, True), repeat=len(guards)):
                answers = dict(zip(guards, values, strict=True))
                # cancel_requested is a plain attribute on the engine's model, the rest
                # are methods: cover both ways transitions reads a guard.
                for plain in (frozenset(), frozenset(guards)):
                    slow, fast = Model(state, answers, plain), Model(state, answers, plain)
                    try:
                        slow_result: object = fire(machine, slow, trigger)
                    except KeyError:
                        slow_result = KeyError
                    try:
                        fast_result: object = dispatch.fire(fast, trigger)
                    except KeyError:
                        fast_result = KeyError
                    assert fast_result == slow_result, (state, trigger, answers)
                    assert fast.state == slow.state, (state, trigger, answers)
                    assert fast.calls == slow.calls, (state, trigger, answers)
                    checked += 1
    assert checked > 0


def test_the_step_table_is_the_step_machine() -> None:
    for status in StepStatus:
        for trigger in STEP_LIFECYCLE_MACHINE.events:
            for attempts_left in (True, False):
                model = StepModel(status.value, attempts_left)
                try:
                    moved = fire(STEP_LIFECYCLE_MACHINE, model, trigger)
                    expected: object = StepStatus(model.state) if moved else "refused"
                except KeyError:
                    expected = "no transition"
                try:
                    got: object = step_transition(status, trigger, attempts_left=attempts_left)
                except KeyError as err:
                    got = "refused" if "refused" in str(err) else "no transition"
                assert got == expected, (status, trigger, attempts_left)


def test_dispatch_refuses_a_machine_it_would_not_reproduce() -> None:
    machine = build_machine(["a", "b"], [], initial="a", name="x")
    machine.add_transition("go", "a", "b", before="prepare_something")
    with pytest.raises(ValueError, match="prepare/before"):
        Dispatch(machine)
    with pytest.raises(ValueError, match="send_event"):
        Dispatch(Machine(model=None, states=["a"], initial="a", auto_transitions=False))
