"""WaitFor in the pure core: the table it compiles to, and each way a wait ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga_fsm import (
    DefinitionError,
    Event,
    SagaDefinition,
    SignalRefused,
    Step,
    StepStatus,
    TransitionNotAllowed,
    WaitFor,
    decide,
    load_definition_file,
    new_snapshot,
    outcome_event,
    outstanding,
)
from saga_fsm._core import RunStep, signal_event
from saga_fsm._flow import compile_saga
from saga_fsm._snapshot import Snapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def noop(ctx: Any) -> None:
    return None


def approval(**options: Any) -> WaitFor:
    settings: dict[str, Any] = {
        "events": {"approved": "continue", "rejected": "fail"},
        "timeout": timedelta(hours=48),
    }
    settings.update(options)
    return WaitFor("approval", **settings)


def refund(wait: WaitFor | None = None) -> SagaDefinition:
    return SagaDefinition(
        "refund",
        [
            Step("hold", noop, compensation=noop),
            wait or approval(),
            Step("pay", noop, kind="pivot"),
        ],
    )


def at_wait(definition: SagaDefinition, data: dict[str, Any] | None = None) -> Snapshot:
    snapshot = new_snapshot(definition, "s1", data or {}, T0)
    snapshot = decide(definition, snapshot, Event.start(T0)).snapshot
    (run,) = outstanding(definition, snapshot)
    assert isinstance(run, RunStep)
    return decide(definition, snapshot, outcome_event(run, "succeeded", T0)).snapshot


def signal(definition: SagaDefinition, snapshot: Snapshot, name: str, **data: Any) -> Snapshot:
    event = signal_event(compile_saga(definition), snapshot, name, data, T0)
    assert event is not None
    return decide(definition, snapshot, event).snapshot


def test_a_wait_holds_nothing_and_is_due_at_its_deadline() -> None:
    snapshot = at_wait(refund())
    assert snapshot.state == "running:approval"
    record = snapshot.step("approval")
    assert record.status is StepStatus.RUNNING and record.request_id is not None
    assert snapshot.wake_at == snapshot.due_at == T0 + timedelta(hours=48)
    (waiting,) = outstanding(refund(), snapshot)
    assert isinstance(waiting, RunStep) and waiting.deadline == snapshot.wake_at


def test_a_continuing_event_merges_its_data_and_goes_on() -> None:
    definition = refund()
    after = signal(definition, at_wait(definition), "approved", by="maria")
    assert after.state == "running:pay"
    assert after.data == {"by": "maria"}
    record = after.step("approval")
    assert (record.status, record.signal, record.result) == (
        StepStatus.SUCCEEDED,
        "approved",
        {"by": "maria"},
    )


def test_a_failing_event_compensates_the_steps_before_the_wait() -> None:
    definition = refund()
    after = signal(definition, at_wait(definition), "rejected", why="too much")
    assert after.state == "compensating:hold"
    assert after.data == {}  # a failing event's data is kept on the record only
    assert after.step("approval").status is StepStatus.FAILED
    assert after.failure is not None and "rejected" in after.failure.message


@pytest.mark.parametrize(
    ("on_timeout", "state"), [("fail", "compensating:hold"), ("continue", "running:pay")]
)
def test_silence_until_the_deadline_does_what_on_timeout_says(on_timeout: str, state: str) -> None:
    definition = refund(approval(on_timeout=on_timeout))
    snapshot = at_wait(definition)
    (waiting,) = outstanding(definition, snapshot)
    assert isinstance(waiting, RunStep)
    late = T0 + timedelta(hours=49)
    assert (
        decide(definition, snapshot, outcome_event(waiting, "timed_out", late)).snapshot.state
        == state
    )


def test_a_cancel_while_waiting_compensates_at_once() -> None:
    definition = refund()
    after = decide(definition, at_wait(definition), Event.cancel(T0)).snapshot
    assert after.state == "compensating:hold" and after.cancel_requested


@pytest.mark.parametrize(
    ("data", "state"),
    [
        ({"big": False}, "running:pay"),
        ({"big": True}, "running:approval"),
        ({}, "running:approval"),
    ],
)
def test_when_skips_the_wait_only_for_an_explicit_false(data: dict[str, Any], state: str) -> None:
    definition = refund(approval(when="big"))
    assert at_wait(definition, data).state == state


def test_signals_that_cannot_be_taken_are_refused_with_the_reason() -> None:
    definition = refund()
    compiled = compile_saga(definition)
    snapshot = at_wait(definition)
    with pytest.raises(
        SignalRefused, match="waits for 'approved', 'rejected', not 'maybe'"
    ) as info:
        signal_event(compiled, snapshot, "maybe", {}, T0)
    assert (info.value.saga_id, info.value.signal, info.value.trigger) == ("s1", "maybe", "signal")
    pending = new_snapshot(definition, "s2", {}, T0)
    with pytest.raises(SignalRefused, match=r"not waiting for an event .it is pending"):
        signal_event(compiled, pending, "approved", {}, T0)
    after = signal(definition, snapshot, "approved")
    # The same signal again is taken once; another one is refused, naming the first.
    assert signal_event(compiled, after, "approved", {}, T0) is None
    with pytest.raises(SignalRefused, match="'approval' got 'approved' already"):
        signal_event(compiled, after, "rejected", {}, T0)
    with pytest.raises(SignalRefused):
        signal_event(compiled, after, "approved", {"by": "someone else"}, T0)


def test_decide_refuses_a_signal_event_that_does_not_fit() -> None:
    definition = refund()
    snapshot = at_wait(definition)
    stray = Event("signal", T0, step="approval", attempt=1, signal="maybe")
    with pytest.raises(TransitionNotAllowed, match="not 'maybe'"):
        decide(definition, snapshot, stray)


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"timeout": None}, "timeout", "must be set"),
        ({"events": {}}, "events", "at least one event"),
        ({"events": {"ok": "maybe"}}, "events", "must be 'continue' or 'fail'"),
        ({"events": {"not ok": "continue"}}, "events", "step-name rule"),
        ({"on_timeout": "retry"}, "on_timeout", "must be 'continue' or 'fail'"),
        ({"action": noop}, "action", "runs nothing"),
        ({"command": "a.b"}, "command", "runs nothing"),
        ({"kind": "pivot"}, "kind", "never the pivot"),
        ({"when": "needs approval"}, "when", "field of the saga data"),
        ({"compensation_timeout": 3}, "compensation_timeout", "nothing to compensate"),
    ],
)
def test_a_bad_wait_is_refused_naming_the_field(
    options: dict[str, Any], field: str, why: str
) -> None:
    with pytest.raises(DefinitionError, match=why) as info:
        approval(**options)
    assert (info.value.step, info.value.field) == ("approval", field)


def test_a_wait_after_the_pivot_cannot_fail_the_saga() -> None:
    steps = [Step("pay", noop, kind="pivot"), approval()]
    with pytest.raises(DefinitionError, match="after the pivot cannot fail") as info:
        SagaDefinition("late", steps)
    assert info.value.row == 1
    fine = approval(events={"seen": "continue"}, on_timeout="continue")
    definition = SagaDefinition("late", [Step("pay", noop, kind="pivot"), fine])
    # Past the pivot there is no cancel, at the wait as anywhere.
    triggers = {r.trigger for r in compile_saga(definition).rows if r.source == "running:approval"}
    assert triggers == {"signal", "step_timed_out"}


def test_a_wait_loads_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "refund.toml"
    path.write_text(
        """
name = "refund"
[[steps]]
name = "approval"
timeout = 60
events = { approved = "continue", rejected = "fail" }
on_timeout = "continue"
when = "big"
[[steps]]
name = "pay"
action = "tests.core.test_wait:noop"
kind = "pivot"
"""
    )
    loaded = load_definition_file(path)
    wait = loaded.steps[0]
    assert isinstance(wait, WaitFor)
    assert (wait.outcomes, wait.on_timeout, wait.when, wait.timeout) == (
        {"approved": "continue", "rejected": "fail"},
        "continue",
        "big",
        60,
    )
    path.write_text(path.read_text().replace('kind = "pivot"', 'kind = "pivot"\nwhen = "x"'))
    with pytest.raises(DefinitionError, match="only a wait") as info:
        load_definition_file(path)
    assert (info.value.row, info.value.field) == (1, "when")


def test_tables_without_waits_keep_their_fingerprints() -> None:
    # The wait's rows exist only in tables that have one (tests/core/test_fingerprint.py
    # pins the fingerprints of tables without).
    rows = compile_saga(SagaDefinition("plain", [Step("a", noop, compensation=noop)])).rows
    assert "signal" not in {r.trigger for r in rows}


def test_a_wait_s_events_are_part_of_its_fingerprint() -> None:
    from saga_fsm import definition_fingerprint

    base = definition_fingerprint(refund())
    assert base == definition_fingerprint(refund(approval(timeout=5)))  # a timeout is not
    for changed in (
        approval(events={"ok": "continue", "rejected": "fail"}),
        approval(on_timeout="continue"),
        approval(when="big"),
    ):
        assert definition_fingerprint(refund(changed)) != base
