"""decide() for parallel groups: branches run concurrently and are undone exactly as far
as they may have acted, each in its own reverse order, once nothing is in flight."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga_fsm import (
    ErrorInfo,
    Event,
    ForEach,
    Parallel,
    RetryPolicy,
    RunCompensation,
    RunStep,
    SagaDefinition,
    ScheduleWake,
    Snapshot,
    Step,
    StepContext,
    TransitionNotAllowed,
    decide,
    new_snapshot,
    outcome_event,
    outstanding,
)
from saga_fsm._codec import snapshot_from_json, snapshot_to_json

T0 = datetime(2026, 1, 1, tzinfo=UTC)
REFUSED = ErrorInfo("Refused", "no stock", retryable=False)
LOST = ErrorInfo("ConnectionError", "reply lost", retryable=True)
ONCE = RetryPolicy(max_attempts=1)


def act(ctx: StepContext) -> None:
    return None


def comp(name: str, **options: Any) -> Step:
    return Step(name, act, compensation=act, **options)


def saga(**options: Any) -> SagaDefinition:
    branches = options.pop(
        "branches",
        {"a": [comp("r", retry=ONCE)], "b": [comp("r", retry=ONCE), comp("s", retry=ONCE)]},
    )
    group = Parallel("g", branches=branches, **options)
    return SagaDefinition("p", [comp("first"), group, Step("charge", act, kind="pivot")])


class Run:
    """One saga decided event by event; the calls in flight are what the core asked for."""

    def __init__(self, definition: SagaDefinition, data: dict[str, Any] | None = None) -> None:
        self.definition = definition
        self.at = T0
        self.snapshot = new_snapshot(definition, "s1", data or {}, T0)
        self.flight: list[RunStep | RunCompensation] = []
        self.log: list[str] = []
        self.apply(Event.start(T0))

    def apply(self, event: Event) -> None:
        self.at += timedelta(seconds=1)
        decision = decide(self.definition, self.snapshot, event)
        self.snapshot = decision.snapshot
        # Every decision must survive the codec and be what recovery derives.
        assert snapshot_from_json(snapshot_to_json(self.snapshot)) == self.snapshot
        for command in decision.commands:
            if isinstance(command, RunStep | RunCompensation):
                self.flight.append(command)
        runs = {
            c
            for c in outstanding(self.definition, self.snapshot)
            if isinstance(c, RunStep | RunCompensation)
        }
        assert runs == set(self.flight), (runs, self.flight)

    def call(self, step: str, outcome: str = "succeeded", **extra: Any) -> None:
        """End the call of ``step`` in flight (``undo step`` for its compensation)."""
        compensation = step.startswith("undo ")
        name = step.removeprefix("undo ")
        (command,) = [
            c
            for c in self.flight
            if c.step == name and isinstance(c, RunCompensation) == compensation
        ]
        self.flight.remove(command)
        self.log.append(step if outcome == "succeeded" else f"{step} {outcome}")
        self.apply(outcome_event(command, outcome, self.at, **extra))  # type: ignore[arg-type]

    def settle(self, pick: Callable[[list[str]], str] = min) -> None:
        """Let every call in flight succeed, one by one."""
        while self.flight:
            self.call(pick(self.names()))

    def names(self) -> list[str]:
        return sorted(
            ("undo " if isinstance(c, RunCompensation) else "") + c.step for c in self.flight
        )

    def branch(self, key: str, group: str = "g") -> Any:
        (b,) = [b for b in self.snapshot.step(group).branches or () if b.key == key]
        return b


def test_join_all_runs_every_branch_at_once_and_goes_on_with_their_data() -> None:
    run = Run(saga())
    run.call("first")
    assert run.snapshot.state == "running:g"
    assert run.names() == ["g/a/r", "g/b/r"]
    keys = {c.idempotency_key for c in run.flight}
    assert keys == {"s1:g/a/r", "s1:g/b/r"}
    run.call("g/b/r", result={"b": 1})
    assert run.names() == ["g/a/r", "g/b/s"]
    run.call("g/a/r", result={"a": 1})
    assert run.snapshot.state == "running:g" and run.branch("a").state == "running:_join"
    run.call("g/b/s", result={"s": 2})
    assert run.snapshot.state == "running:charge"
    assert run.snapshot.data == {"a": 1, "b": 1, "s": 2}
    assert run.branch("b").data == {"b": 1, "s": 2}


def test_max_concurrency_bounds_the_branches_running_at_once() -> None:
    three = {k: [comp("r")] for k in "abc"}
    run = Run(saga(branches=three, max_concurrency=2))
    run.call("first")
    assert run.names() == ["g/a/r", "g/b/r"]
    assert run.branch("c").state == "pending"
    run.call("g/b/r")
    assert run.names() == ["g/a/r", "g/c/r"]
    run.call("g/c/r")
    run.call("g/a/r")
    assert run.snapshot.state == "running:charge"


def test_a_branch_refused_holds_the_others_compensations_until_nothing_is_in_flight() -> None:
    three = {"a": [comp("r", retry=ONCE)], "b": [comp("r"), comp("s")], "c": [comp("r")]}
    run = Run(saga(branches=three, max_concurrency=2))
    run.call("first")
    run.call("g/a/r", "failed", error=REFUSED)
    # b's step is still in flight: it settles before anything is undone; c never starts.
    assert run.names() == ["g/b/r"] and run.snapshot.state == "running:g"
    assert run.branch("a").state == "compensated"  # refused: nothing of it to undo
    assert run.branch("b").cancel_requested and run.branch("c").state == "pending"
    run.call("g/b/r")
    assert run.snapshot.state == "compensating:g"
    assert run.names() == ["undo g/b/r"]
    run.call("undo g/b/r")
    assert run.snapshot.state == "compensating:first"
    run.settle()
    assert run.snapshot.state == "compensated"
    assert run.log == ["first", "g/a/r failed", "g/b/r", "undo g/b/r", "undo first"]
    assert run.branch("c").state == "compensated" and run.branch("c").steps[0].attempts == 0
    assert run.snapshot.failure is not None and "branch 'a'" in run.snapshot.failure.message


def test_a_branch_that_may_have_acted_is_compensated_while_others_settle_first() -> None:
    run = Run(saga())
    run.call("first")
    run.call("g/b/r")
    # b's second step loses its reply and has no retries left: it may have acted.
    run.call("g/b/s", "failed", error=LOST)
    assert run.branch("b").state == "compensating:s" and run.branch("b").held
    assert run.names() == ["g/a/r"]  # the undo waits for a's step in flight
    run.call("g/a/r")
    assert run.snapshot.state == "compensating:g"
    assert run.names() == ["undo g/a/r", "undo g/b/s"]
    run.call("undo g/b/s")
    assert run.names() == ["undo g/a/r", "undo g/b/r"]  # b in its own reverse order
    run.settle()
    run.settle()
    assert run.snapshot.state == "compensated"
    assert run.log[-1] == "undo first"


def test_a_later_step_failing_undoes_every_branch_in_its_own_reverse_order() -> None:
    definition = SagaDefinition(
        "p",
        [
            comp("first"),
            Parallel("g", branches={"a": [comp("r")], "b": [comp("r"), comp("s")]}),
            comp("last", retry=ONCE),
        ],
    )
    run = Run(definition)
    for step in ("first", "g/a/r", "g/b/r", "g/b/s"):
        run.call(step)
    assert run.snapshot.state == "running:last"
    run.call("last", "failed", error=REFUSED)
    assert run.snapshot.state == "compensating:g"
    assert run.names() == ["undo g/a/r", "undo g/b/s"]
    run.settle()
    assert run.snapshot.state == "compensated"
    assert run.log[-4:] == ["undo g/a/r", "undo g/b/s", "undo g/b/r", "undo first"]


def test_a_cancel_during_the_group_lets_calls_settle_then_undoes_them() -> None:
    run = Run(saga())
    run.call("first")
    run.call("g/b/r")
    run.apply(Event.cancel(run.at))
    assert run.snapshot.state == "running:g" and run.snapshot.cancel_requested
    assert run.names() == ["g/a/r", "g/b/s"]
    run.call("g/a/r")
    assert run.names() == ["g/b/s"]
    run.call("g/b/s", "failed", error=REFUSED)
    assert run.snapshot.state == "compensating:g"
    assert run.snapshot.failure is not None and run.snapshot.failure.type == "Cancelled"
    run.settle()
    run.settle()
    assert run.snapshot.state == "compensated"
    assert sorted(run.log[-3:]) == ["undo first", "undo g/a/r", "undo g/b/r"]
    with pytest.raises(TransitionNotAllowed, match="finished"):
        decide(run.definition, run.snapshot, Event.cancel(run.at))


def test_a_cancel_while_compensating_the_group_is_refused() -> None:
    run = Run(saga())
    run.call("first")
    run.call("g/a/r", "failed", error=LOST)
    run.call("g/b/r")
    assert run.snapshot.state == "compensating:g"
    with pytest.raises(TransitionNotAllowed, match="already compensating"):
        decide(run.definition, run.snapshot, Event.cancel(run.at))


@pytest.mark.parametrize("join", ["any", 1])
def test_join_any_goes_on_with_the_first_branch_and_undoes_the_others(join: Any) -> None:
    three = {k: [comp("r"), comp("s")] for k in "abc"}
    run = Run(saga(branches=three, join=join, max_concurrency=2))
    run.call("first")
    run.call("g/a/r", result={"a": 1})
    run.call("g/a/s", result={"a2": 1})
    # a reached the join: b (in flight) is cancelled, c never starts.
    assert run.snapshot.state == "running:g"
    assert run.names() == ["g/b/r"] and run.branch("b").cancel_requested
    run.call("g/b/r", result={"b": 1})
    assert run.names() == ["undo g/b/r"]
    run.call("undo g/b/r")
    assert run.snapshot.state == "running:charge"
    assert run.snapshot.data == {"a": 1, "a2": 1}  # only the branch that joined
    assert [run.branch(k).state for k in "abc"] == ["running:_join", "compensated", "compensated"]


def test_join_k_needs_k_branches_and_fails_once_too_few_are_left() -> None:
    three = {k: [comp("r", retry=ONCE)] for k in "abc"}
    run = Run(saga(branches=three, join=2))
    run.call("first")
    run.call("g/a/r", "failed", error=REFUSED)
    assert run.snapshot.state == "running:g" and run.names() == ["g/b/r", "g/c/r"]
    run.call("g/b/r")
    run.call("g/c/r")
    assert run.snapshot.state == "running:charge"

    run = Run(saga(branches=three, join=2))
    run.call("first")
    run.call("g/a/r", "failed", error=REFUSED)
    run.call("g/b/r", "failed", error=REFUSED)
    assert run.snapshot.state == "running:g"  # c is still in flight
    run.call("g/c/r")
    assert run.snapshot.state == "compensating:g" and run.names() == ["undo g/c/r"]


def test_a_branch_compensation_that_gives_up_parks_the_saga_and_a_retry_resumes_it() -> None:
    branches = {"a": [comp("r", compensation_retry=ONCE)], "b": [comp("r", retry=ONCE)]}
    run = Run(saga(branches=branches))
    run.call("first")
    run.call("g/a/r")
    run.call("g/b/r", "failed", error=REFUSED)
    assert run.names() == ["undo g/a/r"]
    run.call("undo g/a/r", "failed", error=LOST)
    assert run.snapshot.state == "failed"
    assert run.snapshot.parked_at == "compensating:g"
    assert run.snapshot.failure is not None
    assert run.snapshot.failure.type == "BranchCompensationFailed"
    run.apply(Event.retry(run.at))
    assert run.snapshot.state == "compensating:g" and run.names() == ["undo g/a/r"]
    run.settle()
    run.settle()
    assert run.snapshot.state == "compensated"


def test_a_branch_retry_back_off_is_a_timer_of_the_saga() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=5, max_interval=5)
    run = Run(saga(branches={"a": [comp("r", retry=policy)], "b": [comp("r")]}))
    run.call("first")
    run.call("g/a/r", "failed", error=LOST)
    # b is still in flight: the saga is due now (its driver holds it), the timer waits.
    assert run.snapshot.wake_at is not None and run.snapshot.due_at == run.snapshot.created_at
    with pytest.raises(TransitionNotAllowed, match="no branch is due"):
        decide(run.definition, run.snapshot, Event.retry_due(run.at))
    run.call("g/b/r")
    wake = run.snapshot.wake_at
    assert wake is not None and run.snapshot.due_at == wake
    assert outstanding(run.definition, run.snapshot) == (ScheduleWake(wake),)
    run.apply(Event.retry_due(wake))
    assert run.names() == ["g/a/r"] and run.flight[0].attempt == 2
    run.call("g/a/r")
    assert run.snapshot.state == "running:charge"


def test_a_stale_or_foreign_branch_result_is_refused() -> None:
    run = Run(saga())
    run.call("first")
    stale = RunStep("g/a/r", 7, "s1:g/a/r", None)
    with pytest.raises(TransitionNotAllowed, match="stale"):
        decide(run.definition, run.snapshot, outcome_event(stale, "succeeded", run.at))
    foreign = RunStep("g/zz/r", 1, "s1:g/zz/r", None)
    with pytest.raises(TransitionNotAllowed, match="no branch 'zz'"):
        decide(run.definition, run.snapshot, outcome_event(foreign, "succeeded", run.at))


def for_each(**options: Any) -> SagaDefinition:
    group = ForEach("each", items="warehouses", steps=[comp("hold")], **options)
    return SagaDefinition("f", [comp("first"), group])


def test_for_each_runs_one_branch_per_item_with_keys_of_their_own() -> None:
    run = Run(for_each(max_concurrency=2), {"warehouses": ["w1", "w2", "w3"]})
    run.call("first")
    assert run.names() == ["each/0/hold", "each/1/hold"]
    assert {c.idempotency_key for c in run.flight} == {"s1:each/0/hold", "s1:each/1/hold"}
    assert run.branch("1", "each").item == "w2"
    run.call("each/1/hold", result={"held": "w2"})
    run.call("each/0/hold", result={"held": "w1"})
    run.call("each/2/hold", result={"held": "w3"})
    assert run.snapshot.state == "completed"
    assert run.snapshot.data["each"] == [{"held": "w1"}, {"held": "w2"}, {"held": "w3"}]


@pytest.mark.parametrize(
    ("data", "state"),
    [({"warehouses": []}, "completed"), ({}, "compensating:first"), ({"warehouses": 3}, None)],
)
def test_for_each_over_nothing_succeeds_and_over_no_list_fails(
    data: dict[str, Any], state: str | None
) -> None:
    run = Run(for_each(), data)
    run.call("first")
    assert run.snapshot.state == (state or "compensating:first")
    if state != "completed":
        failure = run.snapshot.failure
        assert failure is not None and failure.type == "InvalidItems"


def test_recovery_derives_every_branch_call_from_the_snapshot_alone() -> None:
    run = Run(saga())
    run.call("first")
    run.call("g/b/r")
    reloaded: Snapshot = snapshot_from_json(snapshot_to_json(run.snapshot))
    assert {c.step for c in outstanding(run.definition, reloaded)} == {"g/a/r", "g/b/s"}
