"""The compiled flow: one Machine per definition, a refinement of the saga lifecycle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from transitions import Machine
from transitions.core import Event

from saga_fsm import SagaDefinition, compile_saga, decide
from saga_fsm._core import Event as SagaEvent
from saga_fsm._core import new_snapshot
from saga_fsm._lifecycle import (
    SAGA_LIFECYCLE,
    SAGA_LIFECYCLE_MACHINE,
    STEP_LIFECYCLE_MACHINE,
)
from saga_fsm._snapshot import split_state
from saga_fsm.examples import order_fulfillment, travel_booking
from tests.helpers import three_step

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_flow_states_name_the_step_in_progress() -> None:
    compiled = compile_saga(order_fulfillment.definition)
    assert compiled.states == (
        "pending",
        "running:reserve_inventory",
        "running:process_payment",
        "running:create_shipment",
        "running:send_confirmation",
        "compensating:reserve_inventory",
        "compensating:process_payment",
        "completed",
        "compensated",
        "failed",
    )
    assert set(compiled.machine.states) == set(compiled.states)


def test_machines_have_no_auto_transitions_and_no_models() -> None:
    for machine in (
        compile_saga(travel_booking.definition).machine,
        SAGA_LIFECYCLE_MACHINE,
        STEP_LIFECYCLE_MACHINE,
    ):
        assert not machine.auto_transitions
        assert not any(name.startswith("to_") for name in machine.events)
        assert machine.models == []


def test_one_machine_per_definition() -> None:
    definition = three_step()
    assert compile_saga(definition).machine is compile_saga(definition).machine
    assert compile_saga(definition) is not compile_saga(order_fulfillment.definition)


def test_every_flow_transition_is_a_lifecycle_transition() -> None:
    lifecycle = {
        (row.trigger, row.source, row.dest if row.dest is not None else row.source)
        for row in SAGA_LIFECYCLE
    }
    for definition in (order_fulfillment.definition, travel_booking.definition, three_step()):
        for row in compile_saga(definition).rows:
            source = split_state(row.source)[0].value
            dest = split_state(row.dest)[0].value if row.dest is not None else source
            assert (row.trigger, source, dest) in lifecycle, row


def test_compensation_edges_run_backwards_over_compensable_steps() -> None:
    rows = compile_saga(travel_booking.definition).rows
    undo = {(r.source, r.dest) for r in rows if r.trigger == "compensation_succeeded"}
    assert undo == {
        ("compensating:book_car", "compensating:book_hotel"),
        ("compensating:book_hotel", "compensating:book_flight"),
        ("compensating:book_flight", "compensated"),
    }
    # Past the pivot nothing compensates: every failure is retried.
    after_pivot = [
        r for r in rows if r.source == "running:send_itinerary" and r.trigger == "step_failed"
    ]
    assert {r.dest for r in after_pivot} == {"running:send_itinerary"}
    assert not any(r.trigger == "cancel" and r.source == "running:send_itinerary" for r in rows)


def _machine_rows(machine: Machine) -> list[tuple[object, ...]]:
    return [
        (
            trigger,
            t.source,
            t.dest,
            tuple(str(c.func) for c in t.conditions if c.target),
            tuple(str(c.func) for c in t.conditions if not c.target),
            tuple(f for f in t.after if isinstance(f, str)),
        )
        for trigger, event in machine.events.items()
        for transitions in event.transitions.values()
        for t in transitions
    ]


@pytest.mark.parametrize(
    "definition",
    [order_fulfillment.definition, travel_booking.definition, three_step()],
    ids=lambda d: d.name,
)
def test_the_machine_is_the_flow_table(definition: SagaDefinition) -> None:
    """Every row is one transition of the Machine with the same guards and effects, in
    the table's order per (trigger, source), and the Machine has nothing else."""
    compiled = compile_saga(definition)
    table = [
        (r.trigger, r.source, r.dest, r.conditions, r.unless, r.effects) for r in compiled.rows
    ]
    machine = _machine_rows(compiled.machine)
    assert sorted(machine, key=repr) == sorted(table, key=repr)
    for trigger, source in {(r[0], r[1]) for r in table}:
        assert [r for r in machine if r[:2] == (trigger, source)] == [
            r for r in table if r[:2] == (trigger, source)
        ]
    # No prepare/before callbacks or machine hooks of the engine's own.
    for event in compiled.machine.events.values():
        for t in (t for ts in event.transitions.values() for t in ts):
            assert not t.prepare and not t.before
    assert not compiled.machine.before_state_change and not compiled.machine.after_state_change


def test_decide_fires_through_transitions_own_trigger_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fired: list[str] = []
    real = Event.trigger

    def spy(self: Event, model: object, *args: object, **kwargs: object) -> bool:
        fired.append(self.name)
        return bool(real(self, model, *args, **kwargs))

    monkeypatch.setattr(Event, "trigger", spy)
    definition = three_step()
    snapshot = new_snapshot(definition, "s1", {}, T0)
    decision = decide(definition, snapshot, SagaEvent.start(T0))
    decide(definition, decision.snapshot, SagaEvent.cancel(T0))
    assert fired == ["start", "cancel"]
