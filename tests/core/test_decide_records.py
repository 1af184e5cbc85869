"""What each transition writes down: the times, deadlines and history detail of every
step, event by event, each at a different time so that a wrong one shows."""

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
    SagaDefinition,
    StepStatus,
    TransitionNotAllowed,
    decide,
    new_snapshot,
    outstanding,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from tests.helpers import noop

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RETRY = RetryPolicy(max_attempts=2, initial_interval=5, max_interval=5)
TRANSIENT = ErrorInfo("ConnectionError", "reset", retryable=True)
PERMANENT = ErrorInfo("CardDeclined", "no", retryable=False)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def saga() -> SagaDefinition:
    return (
        SagaBuilder("records")
        .step(
            "reserve",
            noop,
            compensation=noop,
            timeout=2,
            compensation_timeout=3,
            compensation_retry=RETRY,
        )
        .step("charge", noop, compensation=noop, timeout=2, retry=RETRY)
        .pivot("ship", noop)
        .retriable("notify", noop)
        .build()
    )


class Path:
    def __init__(self) -> None:
        self.definition = saga()
        self.snapshot: Snapshot = new_snapshot(self.definition, "s1", {}, T0)
        self.history: list[HistoryEntry] = []

    def fire(self, trigger: str, when: float, step: str | None = None, **fields: object) -> None:
        event = Event(trigger, at(when), step=step, **fields)  # type: ignore[arg-type]
        decision = decide(self.definition, self.snapshot, event)
        self.snapshot = decision.snapshot
        self.history.extend(decision.history)


def test_times_deadlines_and_history_of_a_compensated_path() -> None:
    path = Path()
    path.fire("start", 0)
    path.fire("step_succeeded", 1, "reserve", attempt=1, result={"r": 1})
    reserve = path.snapshot.step("reserve")
    assert (reserve.status, reserve.started_at, reserve.finished_at) == (
        StepStatus.SUCCEEDED,
        at(0),
        at(1),
    )
    assert (reserve.deadline, reserve.result, reserve.error) == (None, {"r": 1}, None)
    charge = path.snapshot.step("charge")
    assert (charge.status, charge.started_at, charge.deadline) == (
        StepStatus.RUNNING,
        at(1),
        at(3),
    )

    path.fire("step_failed", 2, "charge", attempt=1, error=TRANSIENT)  # retry in 5 s
    charge = path.snapshot.step("charge")
    assert (charge.status, charge.error, charge.finished_at, charge.deadline) == (
        StepStatus.FAILED,
        TRANSIENT,
        at(2),
        None,
    )
    assert (path.snapshot.updated_at, path.snapshot.failure) == (at(2), None)
    assert path.snapshot.wake_at == at(7)
    assert outstanding(path.definition, path.snapshot)[0].at == at(7)  # type: ignore[union-attr]
    path.fire("retry_due", 7)
    charge = path.snapshot.step("charge")
    assert (charge.status, charge.attempts, charge.started_at, charge.deadline) == (
        StepStatus.RUNNING,
        2,
        at(7),
        at(9),
    )
    assert outstanding(path.definition, path.snapshot) == (
        RunStep("charge", 2, "s1:charge", at(9)),
    )

    path.fire("step_failed", 8, "charge", attempt=2, error=PERMANENT)
    assert path.snapshot.state == "compensating:reserve"
    assert (path.snapshot.updated_at, path.snapshot.failure) == (at(8), PERMANENT)
    reserve = path.snapshot.step("reserve")
    assert (reserve.status, reserve.compensation_attempts, reserve.deadline) == (
        StepStatus.COMPENSATING,
        1,
        at(11),
    )
    assert path.snapshot.step("charge").finished_at == at(8)
    assert outstanding(path.definition, path.snapshot) == (
        RunCompensation("reserve", 1, "s1:reserve:compensate", at(11)),
    )

    path.fire("compensation_failed", 9, "reserve", attempt=1, error=TRANSIENT)
    reserve = path.snapshot.step("reserve")
    assert (reserve.error, reserve.finished_at, path.snapshot.wake_at) == (
        TRANSIENT,
        at(9),
        at(14),
    )
    path.fire("retry_due", 14)
    reserve = path.snapshot.step("reserve")
    assert (reserve.compensation_attempts, reserve.deadline) == (2, at(17))
    path.fire("compensation_succeeded", 15, "reserve", attempt=2)
    reserve = path.snapshot.step("reserve")
    assert (reserve.status, reserve.finished_at, reserve.deadline, reserve.error) == (
        StepStatus.COMPENSATED,
        at(15),
        None,
        None,
    )
    assert path.snapshot.state == "compensated" and path.snapshot.wake_at is None
    assert outstanding(path.definition, path.snapshot) == (Finish("compensated"),)

    assert [(h.trigger, h.at, h.detail) for h in path.history] == [
        ("start", at(0), {}),
        ("step_succeeded", at(1), {"step": "reserve", "attempt": 1}),
        ("step_failed", at(2), {"step": "charge", "attempt": 1, "error": str(TRANSIENT)}),
        ("retry_due", at(7), {}),
        ("step_failed", at(8), {"step": "charge", "attempt": 2, "error": str(PERMANENT)}),
        ("compensation_failed", at(9), {"step": "reserve", "attempt": 1, "error": str(TRANSIENT)}),
        ("retry_due", at(14), {}),
        ("compensation_succeeded", at(15), {"step": "reserve", "attempt": 2}),
    ]
    states = [(h.from_state, h.to_state) for h in path.history]
    assert states[0] == ("pending", "running:reserve")
    assert states[-1] == ("compensating:reserve", "compensated")


def test_a_retried_step_that_succeeds_forgets_its_error() -> None:
    path = Path()
    path.fire("start", 0)
    path.fire("step_succeeded", 1, "reserve", attempt=1)
    path.fire("step_failed", 2, "charge", attempt=1, error=TRANSIENT)
    path.fire("retry_due", 7)
    path.fire("step_succeeded", 8, "charge", attempt=2)
    charge = path.snapshot.step("charge")
    assert (charge.status, charge.error, charge.finished_at, charge.deadline) == (
        StepStatus.SUCCEEDED,
        None,
        at(8),
        None,
    )
    assert path.snapshot.wake_at is None  # ship has no timeout


def test_a_compensation_that_times_out_records_a_timeout() -> None:
    path = Path()
    path.fire("start", 0)
    path.fire("step_succeeded", 1, "reserve", attempt=1)
    path.fire("step_failed", 2, "charge", attempt=1, error=PERMANENT)
    path.fire("compensation_timed_out", 20, "reserve", attempt=1)
    reserve = path.snapshot.step("reserve")
    assert reserve.error == ErrorInfo("StepTimedOut", "deadline passed", retryable=True)
    assert (reserve.finished_at, reserve.deadline) == (at(20), None)


def forward(path: Path, *steps: str) -> Path:
    path.fire("start", 0)
    for n, step in enumerate(steps, start=1):
        path.fire("step_succeeded", n, step, attempt=1)
    return path


def failed_at_charge() -> Path:
    path = forward(Path(), "reserve")
    path.fire("step_failed", 5, "charge", attempt=1, error=PERMANENT)
    return path


def compensated() -> Path:
    path = failed_at_charge()
    path.fire("compensation_succeeded", 6, "reserve", attempt=1)
    return path


@pytest.mark.parametrize(
    ("build", "trigger", "fields", "reason"),
    [
        (
            lambda: forward(Path()),
            "step_succeeded",
            {"step": "charge", "attempt": 1},
            "result for step 'charge', but the saga is at 'running:reserve'",
        ),
        (
            lambda: forward(Path()),
            "step_succeeded",
            {"step": "reserve", "attempt": 2},
            "stale result for step 'reserve' attempt 2 (step is running, attempt 1)",
        ),
        (
            failed_at_charge,
            "compensation_succeeded",
            {"step": "reserve", "attempt": 3},
            "stale result for step 'reserve' attempt 3 (step is compensating, attempt 1)",
        ),
        (
            lambda: forward(Path(), "reserve", "charge", "ship"),
            "cancel",
            {},
            "the pivot has succeeded: the saga can only go forward",
        ),
        (failed_at_charge, "cancel", {}, "the saga is already compensating"),
        (compensated, "cancel", {}, "the saga is finished (compensated)"),
        (lambda: forward(Path()), "retry_due", {}, "every guard refused"),
        (lambda: forward(Path()), "retry", {}, "no such transition from this state"),
    ],
)
def test_a_refused_event_says_which_saga_state_trigger_and_why(
    build: object, trigger: str, fields: dict[str, object], reason: str
) -> None:
    path: Path = build()  # type: ignore[operator]
    before = path.snapshot
    with pytest.raises(TransitionNotAllowed) as caught:
        path.fire(trigger, 99, **fields)  # type: ignore[arg-type]
    refused = caught.value
    assert (refused.saga_id, refused.state, refused.trigger) == ("s1", before.state, trigger)
    assert refused.reason == reason
    assert path.snapshot is before
