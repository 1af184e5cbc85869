"""The compiled flow: one Machine per definition, a refinement of the saga lifecycle."""

from __future__ import annotations

from saga_fsm import compile_saga
from saga_fsm._lifecycle import (
    SAGA_LIFECYCLE,
    SAGA_LIFECYCLE_MACHINE,
    STEP_LIFECYCLE_MACHINE,
)
from saga_fsm._snapshot import split_state
from saga_fsm.examples import order_fulfillment, travel_booking
from tests.helpers import three_step


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
