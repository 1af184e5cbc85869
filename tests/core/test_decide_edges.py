"""Edges the mutation run showed were untested: cancel around the pivot, sagas without a
pivot, compensation retries, parking in the middle of the undo path."""

from __future__ import annotations

from datetime import UTC, datetime

from saga_fsm import (
    ErrorInfo,
    Event,
    Finish,
    RetryPolicy,
    RunCompensation,
    SagaBuilder,
    ScheduleWake,
    StepStatus,
    decide,
    new_snapshot,
    outstanding,
)
from saga_fsm._snapshot import Snapshot
from saga_fsm.examples import travel_booking
from tests.helpers import noop, three_step

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TRANSIENT = ErrorInfo("ConnectionError", "reset", retryable=True)
PERMANENT = ErrorInfo("Refused", "no", retryable=False)


def ev(trigger: str, step: str, attempt: int = 1, **kw) -> Event:  # type: ignore[no-untyped-def]
    return Event(trigger, T0, step=step, attempt=attempt, **kw)  # type: ignore[arg-type]


def start(definition) -> Snapshot:  # type: ignore[no-untyped-def]
    return decide(definition, new_snapshot(definition, "s1", {}, T0), Event.start(T0)).snapshot


def test_cancel_while_the_pivot_runs_is_overtaken_by_its_success() -> None:
    definition = three_step()
    s = decide(definition, start(definition), ev("step_succeeded", "reserve")).snapshot
    s = decide(definition, s, Event.cancel(T0)).snapshot
    assert s.cancel_requested and s.state == "running:charge"
    s = decide(definition, s, ev("step_succeeded", "charge")).snapshot
    assert s.state == "running:notify"  # past the pivot: only forward
    s = decide(definition, s, ev("step_succeeded", "notify")).snapshot
    assert s.state == "completed"


def test_cancel_then_a_transient_failure_compensates_without_retrying() -> None:
    definition = three_step()
    s = decide(definition, start(definition), Event.cancel(T0)).snapshot
    d = decide(definition, s, ev("step_failed", "reserve", error=TRANSIENT))
    assert d.snapshot.state == "compensating:reserve"
    assert not any(isinstance(c, ScheduleWake) for c in d.commands)
    assert d.snapshot.failure is not None and d.snapshot.failure.type == "Cancelled"


def test_cancel_then_a_transient_failure_of_the_pivot_retries_it() -> None:
    # The pivot may have acted: its outcome, not the cancel, decides.
    definition = three_step()
    s = decide(definition, start(definition), ev("step_succeeded", "reserve")).snapshot
    s = decide(definition, s, Event.cancel(T0)).snapshot
    d = decide(definition, s, ev("step_failed", "charge", error=TRANSIENT))
    assert d.snapshot.state == "running:charge"
    assert any(isinstance(c, ScheduleWake) for c in d.commands)


def test_a_saga_without_a_pivot_compensates_everything_that_succeeded() -> None:
    definition = (
        SagaBuilder("flat")
        .step("a", noop, read_only=True)
        .step("b", noop, compensation=noop)
        .step("c", noop, compensation=noop)
        .build()
    )
    s = start(definition)
    s = decide(definition, s, ev("step_succeeded", "a")).snapshot
    s = decide(definition, s, ev("step_succeeded", "b")).snapshot
    s = decide(definition, s, Event.cancel(T0)).snapshot  # c in flight: recorded
    d = decide(definition, s, ev("step_succeeded", "c"))
    assert d.snapshot.state == "compensating:c"
    d = decide(definition, d.snapshot, ev("compensation_succeeded", "c"))
    assert d.snapshot.state == "compensating:b"
    d = decide(definition, d.snapshot, ev("compensation_succeeded", "b"))
    assert d.snapshot.state == "compensated"  # a is read-only: nothing to undo
    assert d.commands == (Finish("compensated"),)


def test_compensation_retries_under_its_own_policy_then_parks() -> None:
    definition = (
        SagaBuilder("undo")
        .step(
            "a",
            noop,
            compensation=noop,
            compensation_retry=RetryPolicy(max_attempts=3, initial_interval=2),
        )
        .pivot("p", noop, retry=RetryPolicy(max_attempts=1))
        .build()
    )
    s = decide(definition, start(definition), ev("step_succeeded", "a")).snapshot
    s = decide(definition, s, ev("step_failed", "p", error=PERMANENT)).snapshot
    assert s.failure == PERMANENT
    for attempt in (1, 2):
        d = decide(definition, s, ev("compensation_failed", "a", attempt, error=TRANSIENT))
        assert d.snapshot.state == "compensating:a"
        assert d.snapshot.step("a").status is StepStatus.COMPENSATION_FAILED
        assert isinstance(d.commands[0], ScheduleWake) and d.snapshot.wake_at == d.commands[0].at
        assert outstanding(definition, d.snapshot) == d.commands
        d = decide(definition, d.snapshot, Event.retry_due(T0))
        assert d.commands == (RunCompensation("a", attempt + 1, "s1:a:compensate", None),)
        assert outstanding(definition, d.snapshot) == d.commands
        s = d.snapshot
    parked = decide(definition, s, ev("compensation_failed", "a", 3, error=TRANSIENT))
    assert parked.snapshot.state == "failed" and parked.commands == (Finish("failed"),)
    assert parked.snapshot.failure == TRANSIENT


def test_failure_reason_survives_to_the_end_of_compensation() -> None:
    definition = three_step()
    s = decide(definition, start(definition), ev("step_succeeded", "reserve")).snapshot
    s = decide(definition, s, ev("step_failed", "charge", error=PERMANENT)).snapshot
    s = decide(definition, s, ev("compensation_succeeded", "reserve")).snapshot
    assert s.state == "compensated" and s.failure == PERMANENT


def test_operator_retry_resumes_where_the_saga_was_parked() -> None:
    definition = travel_booking.definition
    s = start(definition)
    for name in ("book_flight", "book_hotel", "book_car"):
        s = decide(definition, s, ev("step_succeeded", name)).snapshot
    s = decide(definition, s, ev("step_failed", "charge_card", error=PERMANENT)).snapshot
    assert s.state == "compensating:book_car"
    s = decide(definition, s, ev("compensation_failed", "book_car", error=PERMANENT)).snapshot
    assert (s.state, s.parked_at) == ("failed", "compensating:book_car")
    d = decide(definition, s, Event.retry(T0))
    assert d.snapshot.state == "compensating:book_car" and d.snapshot.parked_at is None
    assert d.commands == (RunCompensation("book_car", 1, "s1:book_car:compensate", None),)
