"""The pure core, event by event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga_fsm import (
    ErrorInfo,
    Event,
    Finish,
    RetryPolicy,
    RunCompensation,
    RunStep,
    SagaBuilder,
    ScheduleWake,
    StepStatus,
    TransitionNotAllowed,
    decide,
    new_snapshot,
    outstanding,
)
from saga_fsm._snapshot import Snapshot
from tests.helpers import noop, three_step

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TRANSIENT = ErrorInfo("ConnectionError", "reset", retryable=True)
PERMANENT = ErrorInfo("CardDeclined", "no", retryable=False)


def started(definition=None) -> Snapshot:  # type: ignore[no-untyped-def]
    definition = definition or three_step()
    return decide(
        definition, new_snapshot(definition, "s1", {"n": 1}, T0), Event.start(T0)
    ).snapshot


def result(trigger: str, step: str, attempt: int = 1, **kw) -> Event:  # type: ignore[no-untyped-def]
    return Event(trigger, T0, step=step, attempt=attempt, **kw)  # type: ignore[arg-type]


def test_start_marks_the_first_step_running_with_its_idempotency_key() -> None:
    definition = three_step(timeout=2.0)
    decision = decide(definition, new_snapshot(definition, "s1", {}, T0), Event.start(T0))
    assert decision.snapshot.state == "running:reserve"
    assert decision.commands == (RunStep("reserve", 1, "s1:reserve", T0 + timedelta(seconds=2)),)
    record = decision.snapshot.step("reserve")
    assert (record.status, record.attempts) == (StepStatus.RUNNING, 1)
    assert decision.snapshot.wake_at == T0 + timedelta(seconds=2)
    assert [(h.from_state, h.to_state, h.trigger) for h in decision.history] == [
        ("pending", "running:reserve", "start")
    ]


def test_happy_path_merges_results_and_completes() -> None:
    definition = three_step()
    s = started(definition)
    s = decide(definition, s, result("step_succeeded", "reserve", result={"rid": "r1"})).snapshot
    s = decide(definition, s, result("step_succeeded", "charge")).snapshot
    final = decide(definition, s, result("step_succeeded", "notify"))
    assert final.snapshot.state == "completed"
    assert final.commands == (Finish("completed"),)
    assert final.snapshot.data == {"n": 1, "rid": "r1"}
    assert [r.status for r in final.snapshot.steps] == [StepStatus.SUCCEEDED] * 3


def test_transient_failure_schedules_a_retry_then_runs_again() -> None:
    definition = three_step(retry=RetryPolicy(max_attempts=2, initial_interval=3))
    s = started(definition)
    d = decide(definition, s, result("step_failed", "reserve", error=TRANSIENT))
    assert d.snapshot.state == "running:reserve"
    assert d.commands == (ScheduleWake(T0 + timedelta(seconds=3)),)
    assert d.snapshot.step("reserve").status is StepStatus.FAILED
    assert outstanding(definition, d.snapshot) == d.commands
    d = decide(definition, d.snapshot, Event.retry_due(T0))
    assert d.commands == (RunStep("reserve", 2, "s1:reserve", None),)
    # The policy is spent: compensation begins with reserve's own, since a transient
    # error leaves open whether it acted.
    d = decide(definition, d.snapshot, result("step_failed", "reserve", 2, error=TRANSIENT))
    assert d.snapshot.state == "compensating:reserve"
    assert d.commands == (RunCompensation("reserve", 1, "s1:reserve:compensate", None),)
    assert d.snapshot.failure == TRANSIENT
    assert [r.status for r in d.snapshot.steps] == [
        StepStatus.COMPENSATING,
        StepStatus.SKIPPED,
        StepStatus.SKIPPED,
    ]
    d = decide(definition, d.snapshot, result("compensation_succeeded", "reserve"))
    assert d.snapshot.state == "compensated"


def test_a_definite_refusal_skips_the_steps_own_compensation() -> None:
    definition = (
        SagaBuilder("refused")
        .step("reserve", noop, compensation=noop)
        .step("charge", noop, compensation=noop)
        .build()
    )
    s = started(definition)
    s = decide(definition, s, result("step_succeeded", "reserve")).snapshot
    d = decide(definition, s, result("step_failed", "charge", error=PERMANENT))
    assert d.snapshot.state == "compensating:reserve"
    assert d.snapshot.step("charge").status is StepStatus.FAILED


@pytest.mark.parametrize(
    ("trigger", "error"),
    [
        ("step_timed_out", None),
        ("step_failed", TRANSIENT),
        # It ran and returned something unusable: it acted.
        ("step_failed", ErrorInfo("InvalidResult", "not a mapping", retryable=False)),
    ],
)
def test_a_step_that_may_have_acted_is_compensated_first(
    trigger: str, error: ErrorInfo | None
) -> None:
    definition = (
        SagaBuilder("acted")
        .step("reserve", noop, compensation=noop)
        .step("charge", noop, compensation=noop, retry=RetryPolicy(max_attempts=1))
        .pivot("ship", noop)
        .build()
    )
    s = started(definition)
    s = decide(definition, s, result("step_succeeded", "reserve")).snapshot
    d = decide(definition, s, result(trigger, "charge", error=error))
    assert d.snapshot.state == "compensating:charge"
    assert d.commands == (RunCompensation("charge", 1, "s1:charge:compensate", None),)
    d = decide(definition, d.snapshot, result("compensation_succeeded", "charge"))
    assert d.snapshot.state == "compensating:reserve"
    d = decide(definition, d.snapshot, result("compensation_succeeded", "reserve"))
    assert d.snapshot.state == "compensated"
    assert [r.status for r in d.snapshot.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.SKIPPED,
    ]


def test_cancel_while_a_retry_is_pending_compensates_the_failed_step_too() -> None:
    definition = three_step(retry=RetryPolicy(max_attempts=3, initial_interval=5))
    s = started(definition)
    s = decide(definition, s, result("step_failed", "reserve", error=TRANSIENT)).snapshot
    d = decide(definition, s, Event.cancel(T0))
    assert d.snapshot.state == "compensating:reserve"
    assert d.commands == (RunCompensation("reserve", 1, "s1:reserve:compensate", None),)


def test_permanent_pivot_failure_compensates_in_reverse() -> None:
    definition = (
        SagaBuilder("rev")
        .step("a", noop, compensation=noop)
        .step("b", noop, read_only=True)
        .step("c", noop, compensation=noop)
        .pivot("p", noop)
        .build()
    )
    s = started(definition)
    for name in ("a", "b", "c"):
        s = decide(definition, s, result("step_succeeded", name)).snapshot
    d = decide(definition, s, result("step_failed", "p", error=PERMANENT))
    assert d.snapshot.state == "compensating:c"
    assert d.commands == (RunCompensation("c", 1, "s1:c:compensate", None),)
    d = decide(definition, d.snapshot, result("compensation_succeeded", "c"))
    assert d.snapshot.state == "compensating:a"  # b is read-only: nothing to undo
    d = decide(definition, d.snapshot, result("compensation_succeeded", "a"))
    assert d.snapshot.state == "compensated"
    assert [r.status.value for r in d.snapshot.steps] == [
        "compensated",
        "succeeded",
        "compensated",
        "failed",
    ]


def test_compensation_that_gives_up_parks_the_saga_and_operator_retry_resumes() -> None:
    definition = three_step()
    s = started(definition)
    s = decide(definition, s, result("step_succeeded", "reserve")).snapshot
    s = decide(definition, s, result("step_failed", "charge", error=PERMANENT)).snapshot
    assert s.state == "compensating:reserve"
    boom = ErrorInfo("KeyError", "'rid'", retryable=False)
    parked = decide(definition, s, result("compensation_failed", "reserve", error=boom)).snapshot
    assert parked.state == "failed"
    assert parked.parked_at == "compensating:reserve"
    assert parked.failure == boom
    assert parked.step("reserve").status is StepStatus.COMPENSATION_FAILED
    resumed = decide(definition, parked, Event.retry(T0))
    assert resumed.snapshot.state == "compensating:reserve"
    assert resumed.commands == (RunCompensation("reserve", 1, "s1:reserve:compensate", None),)


def test_after_the_pivot_every_failure_is_retried_and_nothing_compensated() -> None:
    definition = three_step()
    s = started(definition)
    s = decide(definition, s, result("step_succeeded", "reserve")).snapshot
    s = decide(definition, s, result("step_succeeded", "charge")).snapshot
    for attempt in range(1, 20):
        error = PERMANENT if attempt % 2 else TRANSIENT
        trigger = "step_timed_out" if attempt % 5 == 0 else "step_failed"
        d = decide(definition, s, result(trigger, "notify", attempt, error=error))
        assert d.snapshot.state == "running:notify"
        s = decide(definition, d.snapshot, Event.retry_due(T0)).snapshot
    with pytest.raises(TransitionNotAllowed, match="only go forward"):
        decide(definition, s, Event.cancel(T0))


def test_cancel_while_a_step_is_in_flight_waits_for_it_then_undoes_it() -> None:
    definition = three_step()
    s = started(definition)
    d = decide(definition, s, Event.cancel(T0))
    assert d.snapshot.state == "running:reserve"  # in flight: only the request is recorded
    assert d.snapshot.cancel_requested and d.commands == ()
    d = decide(definition, d.snapshot, result("step_succeeded", "reserve"))
    assert d.snapshot.state == "compensating:reserve"
    assert d.snapshot.failure is not None and d.snapshot.failure.type == "Cancelled"


def test_cancel_while_waiting_for_a_retry_compensates_at_once() -> None:
    definition = three_step()
    s = started(definition)
    s = decide(definition, s, result("step_failed", "reserve", error=TRANSIENT)).snapshot
    d = decide(definition, s, Event.cancel(T0))
    assert d.snapshot.state == "compensating:reserve"
    assert d.snapshot.wake_at is None


def test_cancel_of_a_pending_saga_finishes_it_compensated() -> None:
    definition = three_step()
    d = decide(definition, new_snapshot(definition, "s1", {}, T0), Event.cancel(T0))
    assert d.snapshot.state == "compensated"


def test_timeout_counts_as_a_failure_under_the_policy() -> None:
    definition = three_step(retry=RetryPolicy(max_attempts=1))
    s = started(definition)
    d = decide(definition, s, result("step_timed_out", "reserve"))
    assert d.snapshot.state == "compensating:reserve"
    assert d.snapshot.step("reserve").status is StepStatus.COMPENSATING
    assert d.snapshot.step("reserve").error is not None
    assert d.snapshot.step("reserve").error.type == "StepTimedOut"


def test_stale_and_foreign_results_are_refused_and_change_nothing() -> None:
    definition = three_step()
    s = started(definition)
    with pytest.raises(TransitionNotAllowed, match="stale"):
        decide(definition, s, result("step_succeeded", "reserve", attempt=7))
    with pytest.raises(TransitionNotAllowed, match="saga is at"):
        decide(definition, s, result("step_succeeded", "charge"))
    with pytest.raises(TransitionNotAllowed) as caught:
        decide(definition, s, Event.retry(T0))
    assert (caught.value.saga_id, caught.value.state, caught.value.trigger) == (
        "s1",
        "running:reserve",
        "retry",
    )
    assert (
        decide(definition, s, result("step_succeeded", "reserve")).snapshot.state
        == "running:charge"
    )


def test_action_less_step_succeeds_in_the_same_decision() -> None:
    definition = (
        SagaBuilder("ftgo")
        .step("create_pending", compensation=noop)
        .step("reserve", noop, compensation=noop)
        .pivot("approve", noop)
        .build()
    )
    d = decide(definition, new_snapshot(definition, "s1", {}, T0), Event.start(T0))
    assert d.snapshot.state == "running:reserve"
    assert [h.to_state for h in d.history] == ["running:create_pending", "running:reserve"]
    d = decide(definition, d.snapshot, result("step_failed", "reserve", error=PERMANENT))
    assert d.snapshot.state == "compensating:create_pending"  # the "reject order" compensation


def test_restoring_a_snapshot_fires_no_callbacks() -> None:
    definition = three_step()
    s = started(definition)
    assert outstanding(definition, s) == (RunStep("reserve", 1, "s1:reserve", None),)
    # Deciding from the same snapshot twice gives the same answer: nothing was mutated.
    event = result("step_succeeded", "reserve")
    assert decide(definition, s, event) == decide(definition, s, event)
