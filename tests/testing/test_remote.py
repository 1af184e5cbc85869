"""saga_fsm.testing on remote steps: the user's participant answers over the in-memory
transport while commands and replies are lost, delayed, duplicated and overtaken."""

from __future__ import annotations

from typing import Any

from saga_fsm import SagaDefinition, Step
from saga_fsm._definition import RetryPolicy
from saga_fsm.examples import order_remote, order_services
from saga_fsm.participant import Command, Participant
from saga_fsm.testing import Fault, check
from saga_fsm.testing._driver import Driver, DriverConfig
from saga_fsm.testing._trace import render_path

ONCE = RetryPolicy(max_attempts=1)


def reserve_only(retry: RetryPolicy = ONCE) -> SagaDefinition:
    return SagaDefinition(
        "reserve_only",
        [
            Step(
                "reserve_inventory",
                command="inventory.reserve",
                compensation_command="inventory.release",
                timeout=5,
                retry=retry,
            )
        ],
    )


def drive(definition: SagaDefinition, *faults: Fault) -> tuple[str, str]:
    order_services.tables.clear()
    driver = Driver(DriverConfig(definition, participants=(order_services.participant,)))
    try:
        saga = driver.create({"quantity": 1, "card": "4111"})
        driver.advance(saga)  # start: the command is in the outbox
        for fault in faults:
            driver.advance(saga, fault)
        driver.finish_all()
        driver.check(final=True)
        return saga.decided.state, render_path(saga.trace)
    finally:
        driver.close()


def test_the_remote_example_holds_every_property() -> None:
    report = check(
        order_remote.definition,
        participants=[order_services.participant],
        max_examples=40,
        seed=5,
    )
    assert report.ok, report.format()


def test_a_late_reply_after_a_retry_is_dropped() -> None:
    state, path = drive(reserve_only(RetryPolicy(max_attempts=2)), Fault.TIMEOUT)
    assert state == "completed"
    assert "reserve_inventory timed out" in path
    assert "reserve_inventory reply (attempt 1) dropped" in path
    assert max(order_services.tables.applied.values()) == 1


def test_a_late_reply_after_compensation_is_dropped() -> None:
    state, path = drive(reserve_only(), Fault.TIMEOUT)
    assert state == "compensated"
    assert path.endswith("undo reserve_inventory ok -> reserve_inventory reply (attempt 1) dropped")


def test_a_command_overtaken_by_its_compensation_is_never_applied() -> None:
    state, path = drive(reserve_only(), Fault.LOST)
    assert state == "compensated"
    assert "reserve_inventory command arrived late, not run" in path
    # The compensation answered "nothing to undo" and the suspension guard refused the
    # command that came after it: no effect at all.
    assert order_services.tables.applied == {}


def test_a_duplicate_reply_changes_nothing() -> None:
    state, path = drive(reserve_only(), Fault.CRASH_AFTER)
    assert state == "completed"
    assert "reserve_inventory reply (attempt 1) dropped" in path


def test_a_handler_that_crashes_is_reported() -> None:
    broken = Participant("broken")

    @broken.handles("inventory.reserve")
    def reserve(command: Command) -> dict[str, Any]:
        return {"sku": command.payload["sku"]}  # KeyError: no sku in the saga data

    @broken.handles("inventory.release", compensates="inventory.reserve")
    def release(command: Command) -> None:
        return None

    report = check(reserve_only(), participants=[broken], max_examples=10, seed=1, data={})
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.invariant == "actions_fail_only_on_purpose"
    assert "KeyError" in report.counterexample.reason


def test_scenarios_script_remote_steps_too() -> None:
    from saga_fsm.testing import scenario, step

    result = (
        scenario(reserve_only())
        .when(step("reserve_inventory").times_out())
        .expect(state="compensated", compensations=["reserve_inventory"])
    )
    assert result.run.endswith("reserve_inventory reply (attempt 1) dropped")
