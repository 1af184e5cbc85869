"""The coverage denominator: reachable rows are computed exactly (the abstraction that
keeps the search small loses nothing), explained when unreachable, and the directed
path to each reachable row really takes it."""

from __future__ import annotations

import pytest

from saga_fsm import RetryPolicy, SagaBuilder, SagaDefinition, Snapshot, compile_saga
from saga_fsm.examples import order_fulfillment
from saga_fsm.testing import Fault, TransitionCoverage
from saga_fsm.testing import _reachability as reach
from saga_fsm.testing._driver import Driver, DriverConfig
from saga_fsm.testing._faults import ALL_FAULTS
from tests.helpers import noop, three_step

FAST = RetryPolicy(max_attempts=2, initial_interval=0.1, max_interval=1)


def shapes() -> SagaDefinition:
    """An action-less first step, timeouts on one step only, unlimited retries last."""
    return (
        SagaBuilder("shapes")
        .step("create_pending", None, compensation=noop)
        .step("reserve", noop, compensation=noop, retry=FAST, timeout=2, compensation_timeout=3)
        .pivot("charge", noop, retry=FAST)
        .retriable("notify", noop, retry=RetryPolicy(max_attempts=None, initial_interval=0.1))
        .build()
    )


def _full_key(compiled: object, snapshot: Snapshot) -> tuple[object, ...]:
    """No abstraction: every step's attempt counts (unlimited ones capped)."""
    return (
        snapshot.state,
        snapshot.cancel_requested,
        snapshot.parked_at,
        snapshot.wake_at is None,
        tuple(
            (r.status, min(r.attempts, 4), min(r.compensation_attempts, 6)) for r in snapshot.steps
        ),
    )


DEFINITIONS = [three_step(retry=FAST), shapes(), order_fulfillment.definition]


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.name)
def test_the_abstract_search_finds_what_the_full_search_finds(
    definition: SagaDefinition, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = reach.reachability.__wrapped__
    abstract = search(definition, ALL_FAULTS, True)
    monkeypatch.setattr(reach, "_abstract", _full_key)
    full = search(definition, ALL_FAULTS, True)
    assert full.exact and abstract.exact
    assert abstract.rows == full.rows
    assert all(len(abstract.paths[r]) == len(full.paths[r]) for r in full.rows)


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.name)
def test_every_directed_path_takes_its_row(definition: SagaDefinition) -> None:
    found = reach.reachability(definition, ALL_FAULTS, True)
    edges = reach.row_edges(compile_saga(definition))
    assert set(found.paths) == found.rows
    for row, moves in found.paths.items():
        driver = Driver(DriverConfig(definition, simulate=True))
        try:
            saga = driver.create({})
            for move in moves:
                driver.play(saga, move)
            history = driver.run(driver.store.history(saga.saga_id))
        finally:
            driver.close()
        taken = {i for e in history for i in edges.get(reach.edge_of_entry(e), ())}
        assert row in taken, (compile_saga(definition).rows[row], moves)


def test_unreachable_rows_are_left_out_and_explained() -> None:
    coverage = TransitionCoverage.for_definition(shapes())
    text = coverage.format()
    unreachable = {(r.trigger, r.source) for r in coverage.unreachable}
    # No timeout on charge, no compensation_timeout on create_pending.
    assert ("step_timed_out", "running:charge") in unreachable
    assert ("compensation_timed_out", "compensating:create_pending") in unreachable
    assert ("step_timed_out", "running:reserve") not in unreachable
    assert "the step has no timeout" in text
    assert "the compensation has no compensation_timeout" in text
    # An action-less step succeeds in the decision that starts it: nothing else happens there.
    assert ("cancel", "running:create_pending") in unreachable
    assert "the step has no action" in text
    assert coverage.summary().startswith(f"0/{len(coverage.reachable)} reachable")


def test_fewer_faults_means_fewer_reachable_rows() -> None:
    definition = three_step(retry=FAST)
    everything = reach.reachability(definition, ALL_FAULTS, True).rows
    only_ok = reach.reachability(definition, (Fault.OK,), False).rows
    rows = compile_saga(definition).rows
    assert only_ok < everything
    triggers = {rows[i].trigger for i in only_ok}
    assert "step_failed" not in triggers and "retry" not in triggers
    assert "compensation_succeeded" in triggers  # a cancel still compensates
