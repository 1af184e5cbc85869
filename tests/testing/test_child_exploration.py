"""The harness explores a parent with a child saga step: the child runs its real actions
under the same invariants, its failure and its compensation are injected, and every
reachable row of the parent's table is taken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from saga_fsm._flow import compile_saga
from saga_fsm.examples import order_shipment
from saga_fsm.examples._fakes import FakeServices, services
from saga_fsm.testing import check
from saga_fsm.testing._driver import Driver, DriverConfig
from saga_fsm.testing._faults import ALL_FAULTS, Fault
from saga_fsm.testing._reachability import edge_of_row, reachability


def fresh_services() -> FakeServices:
    """The examples' shared fakes, reset (other tests may have made them flaky)."""
    services.configure()
    return services


def test_the_child_step_rows_the_harness_can_reach() -> None:
    compiled = compile_saga(order_shipment.definition)
    found = reachability(order_shipment.definition, ALL_FAULTS)
    reached = {edge_of_row(compiled.rows[i]) for i in found.rows}
    assert ("child_pending", "running:ship", "running:ship") in reached
    assert ("child_pending", "compensating:ship", "compensating:ship") in reached
    assert ("step_failed", "running:ship", "compensating:reserve_inventory") in reached
    assert ("compensation_succeeded", "compensating:ship", "compensating:reserve_inventory") in (
        reached
    )
    # A child step is never retried, timed out or parked: it ends as its child does.
    assert not {e for e in reached if e[1].endswith(":ship") and "timed_out" in e[0]}
    assert ("retry_due", "running:ship", "running:ship") not in reached


def test_check_covers_every_reachable_transition_of_the_parent() -> None:
    report = check(order_shipment.definition, setup=fresh_services, max_examples=60, seed=7)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0 and not report.coverage.missed, report.format()


def test_several_parents_at_once_hold_every_property() -> None:
    report = check(
        order_shipment.definition, setup=fresh_services, max_examples=40, seed=11, sagas=3
    )
    assert report.ok, report.format()


def test_a_crash_after_the_child_finished_is_caught_up_on_the_next_call() -> None:
    driver = Driver(DriverConfig(order_shipment.definition, setup=fresh_services))
    try:
        saga = driver.create({"order_id": 1, "address": "Main St"})
        driver.advance(saga)  # start
        driver.advance(saga)  # reserve_inventory
        driver.advance(saga, Fault.CRASH_AFTER)  # the child finished; the parent never heard
        (child,) = driver.children.values()
        assert child.decided.state == "completed" and saga.decided.state == "running:ship"
        driver.advance(saga)  # the parent's next call finds it finished
        assert saga.decided.state == "running:process_payment"
        assert "tracking_number" in saga.decided.data
        driver.advance(saga, Fault.PERMANENT)  # the pivot refuses: the child is undone
        for _ in range(10):
            driver.advance(saga)
        assert saga.decided.state == "compensated" and child.decided.state == "compensated"
        assert len(driver.children) == 1
        driver.check(final=True)
    finally:
        driver.close()


def test_saga_fsm_check_on_the_child_saga_example_exits_0_with_full_coverage(
    tmp_path: Path,
) -> None:
    """The acceptance run, as a user types it (default settings)."""
    ref = "saga_fsm.examples.order_shipment:definition"
    done = subprocess.run(
        [sys.executable, "-m", "saga_fsm.cli", "check", ref],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reachable transitions taken (100%)" in done.stdout, done.stdout
    assert "every property holds" in done.stdout


def test_a_child_named_only_by_name_cannot_be_explored() -> None:
    import pytest

    from saga_fsm import ChildSaga, SagaDefinition, Step, StepKind
    from saga_fsm._errors import InvalidArgument

    def noop(_ctx: object) -> None:
        return None

    by_name = SagaDefinition(
        "by_name",
        [Step("a", noop, noop), ChildSaga("kid", definition="elsewhere", kind=StepKind.PIVOT)],
    )
    with pytest.raises(InvalidArgument, match="give the SagaDefinition itself"):
        Driver(DriverConfig(by_name))
