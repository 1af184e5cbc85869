"""The pivot's failure model: a refusal compensates the steps before it; an outcome that
may have acted (a timeout, a transient error the policy gave up on) parks the saga at the
pivot with nothing compensated, and an operator's retry runs the pivot again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from saga_fsm import ErrorInfo, RetryPolicy, SagaBuilder, StepStatus, decide
from saga_fsm._core import Event, Finish, RunStep, ScheduleWake, new_snapshot
from saga_fsm._snapshot import Snapshot
from tests.helpers import noop

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TRANSIENT = ErrorInfo("ConnectionError", "reset", retryable=True)
REFUSED = ErrorInfo("CardDeclined", "no", retryable=False)
DEFINITION = (
    SagaBuilder("pivoted")
    .step("reserve", noop, compensation=noop)
    .pivot("ship", noop, retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
    .retriable("notify", noop)
    .build()
)


def ev(trigger: str, step: str, attempt: int = 1, **kw) -> Event:  # type: ignore[no-untyped-def]
    return Event(trigger, T0, step=step, attempt=attempt, **kw)  # type: ignore[arg-type]


def at_pivot() -> Snapshot:
    s = decide(DEFINITION, new_snapshot(DEFINITION, "p1", {}, T0), Event.start(T0)).snapshot
    return decide(DEFINITION, s, ev("step_succeeded", "reserve")).snapshot


def exhausted(outcome: str) -> Snapshot:
    s = at_pivot()
    kw = {"error": TRANSIENT} if outcome == "step_failed" else {}
    s = decide(DEFINITION, s, ev(outcome, "ship", 1, **kw)).snapshot
    s = decide(DEFINITION, s, Event.retry_due(T0)).snapshot
    return decide(DEFINITION, s, ev(outcome, "ship", 2, **kw)).snapshot


@pytest.mark.parametrize("outcome", ["step_timed_out", "step_failed"])
def test_an_ambiguous_pivot_parks_the_saga_with_nothing_compensated(outcome: str) -> None:
    s = exhausted(outcome)
    assert s.state == "failed" and s.parked_at == "running:ship"
    assert s.failure is not None
    assert s.failure.type == ("StepTimedOut" if outcome == "step_timed_out" else "ConnectionError")
    assert s.step("reserve").status is StepStatus.SUCCEEDED
    assert s.step("ship").status in (StepStatus.TIMED_OUT, StepStatus.FAILED)
    assert s.step("notify").status is StepStatus.PENDING


def test_a_pivot_refusal_compensates_the_steps_before_it() -> None:
    d = decide(DEFINITION, at_pivot(), ev("step_failed", "ship", error=REFUSED))
    assert d.snapshot.state == "compensating:reserve"
    assert d.snapshot.parked_at is None


def test_operator_retry_runs_the_parked_pivot_again_with_its_key() -> None:
    s = exhausted("step_timed_out")
    d = decide(DEFINITION, s, Event.retry(T0))
    assert d.snapshot.state == "running:ship" and d.snapshot.parked_at is None
    assert d.snapshot.failure is None
    (run,) = [c for c in d.commands if isinstance(c, RunStep)]
    assert (run.step, run.attempt, run.idempotency_key) == ("ship", 3, "p1:ship")
    done = decide(DEFINITION, d.snapshot, ev("step_succeeded", "ship", 3)).snapshot
    done = decide(DEFINITION, done, ev("step_succeeded", "notify")).snapshot
    assert done.state == "completed"


def test_after_an_operator_retry_a_refusal_compensates_and_ambiguity_parks_again() -> None:
    s = decide(DEFINITION, exhausted("step_failed"), Event.retry(T0)).snapshot
    refused = decide(DEFINITION, s, ev("step_failed", "ship", 3, error=REFUSED)).snapshot
    assert refused.state == "compensating:reserve"
    again = decide(DEFINITION, s, ev("step_timed_out", "ship", 3))
    assert again.snapshot.state == "failed" and again.snapshot.parked_at == "running:ship"
    assert again.commands == (Finish("failed"),)


def test_a_cancel_at_the_pivot_awaiting_a_retry_lets_the_pivot_decide() -> None:
    s = decide(DEFINITION, at_pivot(), ev("step_timed_out", "ship", 1)).snapshot
    d = decide(DEFINITION, s, Event.cancel(T0))
    assert d.snapshot.state == "running:ship" and d.snapshot.cancel_requested
    assert d.commands == ()
    s = decide(DEFINITION, d.snapshot, Event.retry_due(T0)).snapshot
    # Succeeded: forward, the cancel dropped.
    assert decide(DEFINITION, s, ev("step_succeeded", "ship", 2)).snapshot.state == (
        "running:notify"
    )
    # Refused: the earlier steps are undone, as a cancel.
    refused = decide(DEFINITION, s, ev("step_failed", "ship", 2, error=REFUSED)).snapshot
    assert refused.state == "compensating:reserve"
    assert refused.failure is not None and refused.failure.type == "Cancelled"
    # Ambiguous to the end: parked.
    assert decide(DEFINITION, s, ev("step_timed_out", "ship", 2)).snapshot.state == "failed"


def test_a_cancel_does_not_cut_the_pivots_retries_short() -> None:
    s = decide(DEFINITION, at_pivot(), Event.cancel(T0)).snapshot
    d = decide(DEFINITION, s, ev("step_failed", "ship", 1, error=TRANSIENT))
    assert d.snapshot.state == "running:ship"
    assert any(isinstance(c, ScheduleWake) for c in d.commands)


def test_a_transactional_pivot_failure_is_definite_and_compensates() -> None:
    definition = (
        SagaBuilder("tx_pivot")
        .step("reserve", noop, compensation=noop)
        .pivot("ship", noop, transactional=True, retry=RetryPolicy(max_attempts=1))
        .build()
    )
    s = decide(definition, new_snapshot(definition, "t1", {}, T0), Event.start(T0)).snapshot
    s = decide(definition, s, ev("step_succeeded", "reserve")).snapshot
    assert decide(definition, s, ev("step_timed_out", "ship")).snapshot.state == (
        "compensating:reserve"
    )
