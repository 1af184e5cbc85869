"""saga_fsm.testing on sagas that wait: signals and deadlines explored, coverage whole,
and a table that pays after a rejection caught."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from saga_fsm import SagaDefinition, Step, WaitFor
from saga_fsm.examples.refund_approval import definition as refund
from saga_fsm.examples.refund_approval import ledger
from saga_fsm.testing import InvariantContext, check, saga_invariant
from saga_fsm.testing._faults import ALL_FAULTS
from saga_fsm.testing._invariants import signals_end_only_the_wait_in_progress
from saga_fsm.testing._reachability import reachability
from saga_fsm.testing._trace import TraceEntry

AMOUNTS = st.sampled_from([{"amount": 800}, {"amount": 120}])


def test_the_refund_example_is_covered_whole_with_both_sides_of_its_threshold() -> None:
    report = check(refund, data=AMOUNTS, setup=ledger.reset, max_examples=60, seed=3)
    assert report.ok, report.format()
    assert report.coverage.ratio == 1.0, report.coverage.summary()
    taken = {report.coverage.rows[n].trigger for n in report.coverage.taken}
    assert {"signal", "step_timed_out", "cancel"} <= taken


def test_reachability_explores_each_event_the_deadline_and_the_skip() -> None:
    found = reachability(refund, ALL_FAULTS)
    assert found.exact
    moves = {kind for path in found.paths.values() for kind, _ in path}
    assert {"signal:approved", "signal:rejected", "call", "cancel"} <= moves
    # The skip (needs_approval false) is reachable: the search tries both sides of when.
    rows = refund_rows()
    skip = next(
        n
        for n, r in enumerate(rows)
        if r.source == "running:manager_approval" and r.trigger == "step_succeeded"
    )
    assert skip in found.rows


def refund_rows() -> Any:
    from saga_fsm import compile_saga

    return compile_saga(refund).rows


def noop(ctx: Any) -> dict[str, Any] | None:
    return None


@saga_invariant
def pays_only_after_an_approval(ctx: InvariantContext) -> None:
    paid = "pay" in ctx.succeeded
    approval = ctx.snapshot.step("approval")
    assert not paid or approval.signal == "approved", f"paid after {approval.signal or 'no signal'}"


def test_a_table_that_goes_on_after_a_rejection_is_caught() -> None:
    lenient = SagaDefinition(
        "lenient",
        [
            Step("hold", noop, compensation=noop),
            WaitFor(
                "approval", events={"approved": "continue", "rejected": "continue"}, timeout=60
            ),
            Step("pay", noop, kind="pivot"),
        ],
    )
    report = check(lenient, invariants=[pays_only_after_an_approval], max_examples=100, seed=1)
    assert not report.ok
    assert "pays_only_after_an_approval" in report.format()
    assert "signal rejected" in report.format()


@pytest.mark.parametrize(
    ("entry", "broken"),
    [
        (
            TraceEntry(
                "signal", "running:approval", "running:approval", label="approved", refused=True
            ),
            "refused while approval waited",
        ),
        (
            TraceEntry("signal", "running:hold", "running:pay", label="approved"),
            "does not wait for it",
        ),
        (
            TraceEntry("signal", "running:pay", "completed", label="approved", repeated=True),
            "yet the saga moved",
        ),
    ],
)
def test_the_signal_invariant_names_what_went_wrong(entry: TraceEntry, broken: str) -> None:
    definition = SagaDefinition(
        "d",
        [
            Step("hold", noop, compensation=noop),
            WaitFor("approval", events={"approved": "continue"}, timeout=60),
            Step("pay", noop, kind="pivot"),
        ],
    )

    class Context:
        trace = (entry,)

    Context.definition = definition  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match=broken):
        signals_end_only_the_wait_in_progress(Context())  # type: ignore[arg-type]


def test_scenarios_script_signals() -> None:
    from saga_fsm.testing import scenario, signal, step

    approved = (
        scenario(refund, setup=ledger.reset)
        .given(amount=800)
        .when(signal("approved", {"approved_by": "maria"}), step("pay_refund").succeeds())
        .expect(state="completed", data={"approved_by": "maria"})
    )
    assert "signal approved" in approved.run
    scenario(refund, setup=ledger.reset).given(amount=800).when(signal("rejected")).expect(
        state="compensated", compensations=["open_case"], failure="rejected"
    )
    # Nothing signalled: the wait's deadline passes.
    scenario(refund, setup=ledger.reset).given(amount=800).expect(state="compensated")
    # Below the threshold there is no wait: the signal is never applied.
    with pytest.raises(AssertionError, match="never applied: signal\\('approved'\\)"):
        scenario(refund, setup=ledger.reset).given(amount=80).when(signal("approved")).expect(
            state="completed"
        )
    with pytest.raises(ValueError, match="waits for 'maybe'"):
        scenario(refund).when(signal("maybe"))
