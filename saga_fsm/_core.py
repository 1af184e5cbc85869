"""The pure core: ``decide(compiled, snapshot, event) -> Decision``.

No I/O and no clock: time arrives inside events. The flow Machine decides; its effect
callbacks only edit a scratch copy of the snapshot and record commands for the
orchestrator to carry out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from attrs import field, frozen
from transitions.core import EventData

from saga_fsm._child import ChildSaga
from saga_fsm._definition import RetryPolicy, SagaDefinition, Step, WaitFor, WaitOutcome
from saga_fsm._errors import SignalRefused, TransitionNotAllowed
from saga_fsm._flow import PENDING, CompiledSaga, compile_saga
from saga_fsm._lifecycle import fire, step_transition
from saga_fsm._snapshot import (
    ErrorInfo,
    HistoryEntry,
    SagaStatus,
    Snapshot,
    StepRecord,
    StepStatus,
    replace,
    split_state,
)

Trigger = Literal[
    "start",
    "step_succeeded",
    "step_failed",
    "step_timed_out",
    "retry_due",
    "cancel",
    "compensation_succeeded",
    "compensation_failed",
    "compensation_timed_out",
    "retry",
    "signal",
    "child_pending",
    "compensate",
]
Outcome = Literal["succeeded", "failed", "timed_out"]
_OUTCOMES: dict[tuple[bool, Outcome], Trigger] = {
    (False, "succeeded"): "step_succeeded",
    (False, "failed"): "step_failed",
    (False, "timed_out"): "step_timed_out",
    (True, "succeeded"): "compensation_succeeded",
    (True, "failed"): "compensation_failed",
    (True, "timed_out"): "compensation_timed_out",
}
_FORWARD_RESULTS = frozenset({"step_succeeded", "step_failed", "step_timed_out"})
_COMPENSATION_RESULTS = frozenset(
    {"compensation_succeeded", "compensation_failed", "compensation_timed_out"}
)


@frozen
class Event:
    """Something that happened to a saga, at a time the caller's clock gave."""

    trigger: Trigger
    at: datetime
    step: str | None = None
    attempt: int | None = None
    result: Mapping[str, Any] | None = None
    error: ErrorInfo | None = None
    signal: str | None = None
    """For a ``signal``: the event's name (its data is ``result``)."""

    @classmethod
    def start(cls, at: datetime) -> Event:
        return cls("start", at)

    @classmethod
    def cancel(cls, at: datetime) -> Event:
        return cls("cancel", at)

    @classmethod
    def retry_due(cls, at: datetime) -> Event:
        return cls("retry_due", at)

    @classmethod
    def retry(cls, at: datetime) -> Event:
        return cls("retry", at)


@frozen
class RunStep:
    step: str
    attempt: int
    idempotency_key: str
    deadline: datetime | None
    request_id: str | None = None
    """Set for a remote step: its command is in the outbox, its reply names this id."""


@frozen
class RunCompensation:
    step: str
    attempt: int
    idempotency_key: str
    deadline: datetime | None
    request_id: str | None = None


@frozen
class ScheduleWake:
    at: datetime
    hand_back: bool = False
    """Whatever the wait: the saga waits for something other than time (a child saga),
    and nobody holds it meanwhile."""


@frozen
class Finish:
    state: str


Command = RunStep | RunCompensation | ScheduleWake | Finish


def outcome_event(
    command: RunStep | RunCompensation,
    outcome: Outcome,
    at: datetime,
    *,
    result: Mapping[str, Any] | None = None,
    error: ErrorInfo | None = None,
) -> Event:
    """The event that reports how ``command``'s call ended (a compensation's result is
    never merged into the saga data)."""
    compensation = isinstance(command, RunCompensation)
    return Event(
        _OUTCOMES[(compensation, outcome)],
        at,
        step=command.step,
        attempt=command.attempt,
        result=None if compensation or not result else dict(result),
        error=error,
    )


INVALID_RESULT = "InvalidResult"
"""The error type of an action whose return value cannot be merged: it did run."""


def is_refusal(error: ErrorInfo) -> bool:
    """A definite refusal (``StepFailed(retryable=False)`` or a ``non_retryable`` type):
    the participant did nothing. Any other failure may have acted."""
    return not error.retryable and error.type != INVALID_RESULT


def _entries(values: Iterable[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    return tuple(values)


@frozen
class Decision:
    """What one event did: the new snapshot, the commands to carry out, the history rows."""

    snapshot: Snapshot
    commands: tuple[Command, ...]
    history: tuple[HistoryEntry, ...] = field(converter=_entries)


def idempotency_key(saga_id: str, step: str, *, compensation: bool = False) -> str:
    return f"{saga_id}:{step}:compensate" if compensation else f"{saga_id}:{step}"


def request_id(saga_id: str, step: str, attempt: int, *, compensation: bool = False) -> str:
    """The id of one attempt of a remote step or compensation: derived, so a decision
    made twice (a lost race, a replay) names the same request."""
    return f"{idempotency_key(saga_id, step, compensation=compensation)}:{attempt}"


def new_snapshot(
    definition: SagaDefinition,
    saga_id: str,
    data: Mapping[str, Any],
    at: datetime,
    *,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> Snapshot:
    """A ``pending`` saga of ``definition``, pinned to the table ``fingerprint`` names."""
    return Snapshot(
        saga_id=saga_id,
        definition=definition.name,
        definition_version=definition.version,
        state=PENDING,
        steps=tuple(StepRecord(s.name) for s in definition.steps),
        data=dict(data),
        created_at=at,
        updated_at=at,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        definition_fingerprint=fingerprint,
    )


_TIMEOUT = ErrorInfo("StepTimedOut", "deadline passed", retryable=True)
_CANCELLED = ErrorInfo("Cancelled", "cancel requested", retryable=False)
_UNDONE = ErrorInfo("Compensated", "compensated after it completed", retryable=False)


def _source(ev: EventData) -> str:
    assert ev.transition is not None
    return str(ev.transition.source)


def _dest(ev: EventData) -> str:
    assert ev.transition is not None and ev.transition.dest is not None
    return str(ev.transition.dest)


class _Scratch:
    """The mutable model one decision works on; guards and effects are its methods.

    transitions resolves the names in the flow table against this object."""

    # "cancel_requested" is both a slot and a guard name: transitions reads a non-callable
    # attribute as the guard's value.
    __slots__ = (
        "auto_advance",
        "cancel_requested",
        "commands",
        "compiled",
        "data",
        "event",
        "failure",
        "follow_ups",
        "notes",
        "parked_at",
        "snapshot",
        "state",
        "steps",
        "wake_at",
    )

    def __init__(self, compiled: CompiledSaga, snapshot: Snapshot, event: Event) -> None:
        # Restoring is plain assignment: no Machine callback fires.
        self.compiled = compiled
        self.snapshot = snapshot
        self.state = snapshot.state
        self.steps = list(snapshot.steps)
        self.data: dict[str, Any] | None = None  # copied on first write
        self.event = event
        self.commands: list[Command] = []
        self.wake_at = snapshot.wake_at
        self.cancel_requested = snapshot.cancel_requested
        self.parked_at = snapshot.parked_at
        self.failure = snapshot.failure
        self.auto_advance = False
        self.follow_ups: list[Event] = []  # a group's outcome, fired in this decision
        self.notes: list[dict[str, Any]] = []  # a group's branch transitions, for history

    # -- helpers --------------------------------------------------------------------------
    def _row(self, state: str | None) -> int:
        # "running:charge" -> the row of "charge" (a KeyError for a state with no step).
        return self.compiled.step_index[(state or self.state).partition(":")[2]]

    def _step(self, row: int) -> Step:
        return self.compiled.definition.steps[row]

    def _move(self, row: int, trigger: str, *, attempts_left: bool = True, **changes: Any) -> None:
        record = self.steps[row]
        status = step_transition(record.status, trigger, attempts_left=attempts_left)
        self.steps[row] = replace(record, status=status, **changes)

    def _deadline(self, timeout: float | None) -> datetime | None:
        return None if timeout is None else self.event.at + timedelta(seconds=timeout)

    # -- guards (pure predicates) ---------------------------------------------------------
    def may_retry(self, ev: EventData) -> bool:
        error = self.event.error
        if error is not None and not error.retryable:
            return False
        row = self._row(_source(ev))
        return self._step(row).retry.allows_attempt(self.steps[row].attempts)

    def compensation_may_retry(self, ev: EventData) -> bool:
        error = self.event.error
        if error is not None and not error.retryable:
            return False
        row = self._row(_source(ev))
        policy = self._step(row).compensation_retry
        return policy.allows_attempt(self.steps[row].compensation_attempts)

    def refused(self, _ev: EventData) -> bool:
        """The participant definitely refused, so the step did nothing to undo."""
        error = self.event.error
        return error is not None and is_refusal(error)

    def in_flight(self, ev: EventData) -> bool:
        return self.steps[self._row(_source(ev))].status is StepStatus.RUNNING

    def awaiting_retry(self, ev: EventData) -> bool:
        return self.steps[self._row(_source(ev))].status in (
            StepStatus.FAILED,
            StepStatus.TIMED_OUT,
            StepStatus.COMPENSATION_FAILED,
        )

    def signal_continues(self, ev: EventData) -> bool:
        step = self._step(self._row(_source(ev)))
        assert isinstance(step, WaitFor)
        return step.outcomes[self.event.signal or ""] is WaitOutcome.CONTINUE

    def parked_here(self, ev: EventData) -> bool:
        return self.parked_at == _dest(ev)

    # -- effects (record, never act) ------------------------------------------------------
    def run_step(self, ev: EventData) -> None:
        row = self._row(_dest(ev))
        step, record = self._step(row), self.steps[row]
        if step.is_group:
            from saga_fsm._parallel import start_group

            start_group(self, row)
            return
        # An operator's retry of a pivot parked with its attempts used up grants one more.
        attempts_left = self.event.trigger == "retry" or step.retry.allows_attempt(record.attempts)
        deadline = self._deadline(step.timeout)
        saga_id, attempt = self.snapshot.saga_id, record.attempts + 1
        request = None if step.command is None else request_id(saga_id, step.name, attempt)
        waits = isinstance(step, WaitFor) and step.waits(self._data())
        if waits:
            # Waiting, like a remote step for its reply: the id names this wait.
            request = request_id(saga_id, step.name, attempt)
        elif isinstance(step, WaitFor):
            deadline = None
        if isinstance(step, ChildSaga):
            # The child is this attempt's request (its saga id derives from it), and the
            # parent waits for it unheld, looking again every check_every seconds.
            request = request_id(saga_id, step.name, attempt)
        self._move(
            row,
            "run",
            attempts_left=attempts_left,
            attempts=attempt,
            started_at=self.event.at,
            finished_at=None,
            deadline=deadline,
            request_id=request,
        )
        self.wake_at = deadline
        if isinstance(step, ChildSaga):
            self.wake_at = self.event.at + timedelta(seconds=step.check_every)
        if not step.has_action or (isinstance(step, WaitFor) and not waits):
            # "create pending / reject" shape: the forward work happened at start.
            self.auto_advance = True
            return
        self.commands.append(
            RunStep(step.name, attempt, idempotency_key(saga_id, step.name), deadline, request)
        )

    def run_compensation(self, ev: EventData) -> None:
        row = self._row(_dest(ev))
        step, record = self._step(row), self.steps[row]
        if step.is_group:
            from saga_fsm._parallel import compensate_group

            compensate_group(self, row)
            return
        attempt = record.compensation_attempts + 1
        deadline = self._deadline(step.remote_compensation_timeout)
        saga_id = self.snapshot.saga_id
        request = (
            None
            if step.compensation_command is None
            else request_id(saga_id, step.name, attempt, compensation=True)
        )
        if isinstance(step, ChildSaga):
            request = request_id(saga_id, step.name, attempt, compensation=True)
        self._move(
            row,
            "compensate",
            attempts_left=step.compensation_retry.allows_attempt(record.compensation_attempts),
            compensation_attempts=attempt,
            deadline=deadline,
            request_id=request,
        )
        self.wake_at = deadline
        if isinstance(step, ChildSaga):
            self.wake_at = self.event.at + timedelta(seconds=step.check_every)
        self.commands.append(
            RunCompensation(
                step.name,
                attempt,
                idempotency_key(saga_id, step.name, compensation=True),
                deadline,
                request,
            )
        )

    def record_success(self, ev: EventData) -> None:
        row = self._row(_source(ev))
        result = dict(self.event.result) if self.event.result else None
        if result:
            if self.data is None:
                self.data = dict(self.snapshot.data)
            self.data.update(result)
        self._move(
            row, "succeed", result=result, error=None, finished_at=self.event.at, deadline=None
        )
        self.wake_at = None

    def record_signal(self, ev: EventData) -> None:
        """The event a wait got, kept on its record (a second identical signal is then
        known as such); a continuing event's data is merged like a step's result."""
        row = self._row(_source(ev))
        step = self._step(row)
        assert isinstance(step, WaitFor) and self.event.signal is not None
        data = dict(self.event.result) if self.event.result else None
        if step.outcomes[self.event.signal] is WaitOutcome.CONTINUE:
            self.record_success(ev)
        else:
            error = ErrorInfo("SignalFailed", f"{self.event.signal!r} at {step.name}", False)
            self._record_end(ev, "fail", error)
        self.steps[row] = replace(self.steps[row], result=data, signal=self.event.signal)

    def end_wait(self, ev: EventData) -> None:
        self._record_end(ev, "fail", _CANCELLED)

    def _data(self) -> dict[str, Any]:
        return self.data if self.data is not None else self.snapshot.data

    def _record_end(self, ev: EventData, trigger: str, error: ErrorInfo | None) -> None:
        self._move(
            self._row(_source(ev)), trigger, error=error, finished_at=self.event.at, deadline=None
        )
        self.wake_at = None

    def record_failure(self, ev: EventData) -> None:
        self._record_end(ev, "fail", self.event.error)

    def record_timeout(self, ev: EventData) -> None:
        self._record_end(ev, "time_out", _TIMEOUT)

    def _schedule(self, step: Step, policy: RetryPolicy, attempt: int) -> None:
        delay = policy.delay(attempt, f"{self.snapshot.saga_id}:{step.name}")
        self.wake_at = self.event.at + timedelta(seconds=delay)
        self.commands.append(ScheduleWake(self.wake_at))

    def schedule_retry(self, ev: EventData) -> None:
        row = self._row(_source(ev))
        step = self._step(row)
        self._schedule(step, step.retry, self.steps[row].attempts)

    def schedule_compensation_retry(self, ev: EventData) -> None:
        row = self._row(_source(ev))
        step = self._step(row)
        self._schedule(step, step.compensation_retry, self.steps[row].compensation_attempts)

    def begin_compensation(self, ev: EventData) -> None:
        if self.cancel_requested:
            self.failure = _CANCELLED
        else:
            row = self._row(_source(ev))
            self.failure = self.steps[row].error or self.event.error
        for row, record in enumerate(self.steps):
            if record.status is StepStatus.PENDING:
                self._move(row, "skip")

    def record_compensated(self, ev: EventData) -> None:
        self._record_end(ev, "compensation_succeed", None)

    def record_compensation_failure(self, ev: EventData) -> None:
        self._record_end(ev, "compensation_fail", self.event.error)

    def record_compensation_timeout(self, ev: EventData) -> None:
        self._record_end(ev, "compensation_fail", _TIMEOUT)

    def park(self, ev: EventData) -> None:
        row = self._row(_source(ev))
        self.parked_at = _source(ev)
        self.failure = self.steps[row].error
        self.wake_at = None
        self.commands.append(Finish(_dest(ev)))

    def resume_parked(self, ev: EventData) -> None:
        dest = _dest(ev)
        row = self._row(dest)
        self.steps[row] = replace(self.steps[row], compensation_attempts=0)
        self.parked_at = None
        if split_state(dest)[0] is SagaStatus.RUNNING:
            # A pivot run again: the saga is going forward, nothing has failed yet.
            self.failure = None

    def schedule_check(self, ev: EventData) -> None:
        """The child saga is still running: look again later, holding nothing meanwhile."""
        step = self._step(self._row(_source(ev)))
        assert isinstance(step, ChildSaga)
        self.wake_at = self.event.at + timedelta(seconds=step.check_every)
        self.commands.append(ScheduleWake(self.wake_at, hand_back=True))

    def begin_undo(self, _ev: EventData) -> None:
        """A completed (reversible) saga is compensated as a whole: its parent is."""
        self.failure = _UNDONE

    def branch_progress(self, _ev: EventData) -> None:
        """A parallel group's branches moved (see saga_fsm._parallel)."""
        from saga_fsm._parallel import group_progress

        group_progress(self)

    def request_cancel(self, _ev: EventData) -> None:
        self.cancel_requested = True

    def finish(self, ev: EventData) -> None:
        self.wake_at = None
        self.commands.append(Finish(_dest(ev)))

    def to_snapshot(self) -> Snapshot:
        return replace(
            self.snapshot,
            state=self.state,
            steps=tuple(self.steps),
            data=self.data if self.data is not None else self.snapshot.data,
            updated_at=self.event.at,
            wake_at=self.wake_at,
            cancel_requested=self.cancel_requested,
            parked_at=self.parked_at,
            failure=self.failure,
        )


def _check_result_event(scratch: _Scratch, event: Event) -> str | None:
    """Why a step/compensation result event (or a signal) does not belong to the step
    in flight."""
    if event.trigger == "signal":
        return signal_problem(scratch.compiled, scratch.snapshot, event.signal, event.step)
    if event.trigger not in _FORWARD_RESULTS and event.trigger not in _COMPENSATION_RESULTS:
        return None
    step = split_state(scratch.state)[1]
    if step is None or event.step != step:
        return f"result for step {event.step!r}, but the saga is at {scratch.state!r}"
    record = scratch.steps[scratch.compiled.step_index[step]]
    if event.trigger in _FORWARD_RESULTS:
        expected, attempt = StepStatus.RUNNING, record.attempts
    else:
        expected, attempt = StepStatus.COMPENSATING, record.compensation_attempts
    if record.status is not expected or event.attempt != attempt:
        return (
            f"stale result for step {step!r} attempt {event.attempt}"
            f" (step is {record.status.value}, attempt {attempt})"
        )
    return None


def waiting_for(compiled: CompiledSaga, snapshot: Snapshot) -> WaitFor | None:
    """The wait the saga is in, if it waits for an event."""
    status, name = split_state(snapshot.state)
    if status is not SagaStatus.RUNNING or name is None:
        return None
    step = compiled.definition.steps[compiled.step_index[name]]
    if not isinstance(step, WaitFor) or snapshot.step(name).status is not StepStatus.RUNNING:
        return None
    return step


def signal_problem(
    compiled: CompiledSaga, snapshot: Snapshot, signal: str | None, step: str | None = None
) -> str | None:
    """Why ``signal`` cannot end the saga's wait now (None: it can)."""
    wait = waiting_for(compiled, snapshot)
    if wait is None:
        return f"the saga is not waiting for an event (it is {snapshot.state})"
    if step is not None and step != wait.name:
        return f"the signal is for {step!r}, but the saga waits at {wait.name!r}"
    if signal not in wait.outcomes:
        expected = ", ".join(repr(name) for name in wait.outcomes)
        return f"{wait.name!r} waits for {expected}, not {signal!r}"
    return None


def signal_event(
    compiled: CompiledSaga,
    snapshot: Snapshot,
    signal: str,
    data: Mapping[str, Any],
    at: datetime,
) -> Event | None:
    """The event that delivers ``signal`` (with ``data``) to the saga's wait; None when
    a wait of this saga already took this very signal (a duplicate changes nothing).
    ``SignalRefused`` says why any other signal cannot be taken now."""
    why = signal_problem(compiled, snapshot, signal)
    taken = [r for r in snapshot.steps if r.signal is not None]
    if why is None:
        step = split_state(snapshot.state)[1]
        assert step is not None
        attempt = snapshot.step(step).attempts
        return Event("signal", at, step, attempt, dict(data) or None, signal=signal)
    if any(r.signal == signal and (r.result or {}) == dict(data) for r in taken):
        return None
    if taken and waiting_for(compiled, snapshot) is None:
        why += f"; {taken[-1].name!r} got {taken[-1].signal!r} already"
    raise SignalRefused(snapshot.saga_id, snapshot.state, signal, why)


def _fire(scratch: _Scratch, event: Event, trigger: str | None = None) -> HistoryEntry:
    """Fire ``event`` (as ``trigger`` when given: a group's ``branch_progress``)."""
    saga_id, source = scratch.snapshot.saga_id, scratch.state
    stale = None if trigger is not None else _check_result_event(scratch, event)
    if stale:
        raise TransitionNotAllowed(saga_id, source, event.trigger, stale)
    scratch.event = event
    trigger = trigger or event.trigger
    try:
        done = fire(scratch.compiled.machine, scratch, trigger)
    except KeyError:
        raise TransitionNotAllowed(
            saga_id, source, event.trigger, _no_transition_reason(scratch, event)
        ) from None
    if not done:
        raise TransitionNotAllowed(saga_id, source, event.trigger, "every guard refused")
    detail: dict[str, Any] = {}
    if trigger != event.trigger:
        detail["event"] = event.trigger
    if event.step is not None:
        detail["step"] = event.step
    if event.attempt is not None:
        detail["attempt"] = event.attempt
    if event.error is not None:
        detail["error"] = str(event.error)
    if event.signal is not None:
        detail["signal"] = event.signal
    if scratch.notes:
        detail["branches"] = scratch.notes
        scratch.notes = []
    return HistoryEntry(source, scratch.state, trigger, event.at, detail)


def _no_transition_reason(scratch: _Scratch, event: Event) -> str:
    status = split_state(scratch.state)[0]
    if status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED):
        return f"the saga is finished ({status.value})"
    if event.trigger == "cancel" and status is SagaStatus.RUNNING:
        return "the pivot has succeeded: the saga can only go forward"
    if event.trigger == "cancel" and status is SagaStatus.COMPENSATING:
        return "the saga is already compensating"
    return "no such transition from this state"


def _group_trigger(compiled: CompiledSaga, snapshot: Snapshot, event: Event) -> str | None:
    """``branch_progress`` for an event a parallel group takes (a branch step's result,
    a branch's timer), else None: the event fires as itself."""
    if event.trigger != "retry_due" and (event.step is None or "/" not in event.step):
        return None
    from saga_fsm._parallel import routed

    return "branch_progress" if routed(compiled, snapshot, event) else None


def decide(compiled: CompiledSaga | SagaDefinition, snapshot: Snapshot, event: Event) -> Decision:
    """Apply ``event`` to ``snapshot``: the new snapshot, the commands to carry out, and
    the history rows of the transitions taken. Raises ``TransitionNotAllowed`` and
    leaves the snapshot untouched when the Machine refuses."""
    if isinstance(compiled, SagaDefinition):
        compiled = compile_saga(compiled)
    scratch = _Scratch(compiled, snapshot, event)
    history = [_fire(scratch, event, _group_trigger(compiled, snapshot, event))]
    while scratch.auto_advance or scratch.follow_ups:
        if scratch.follow_ups:
            history.append(_fire(scratch, scratch.follow_ups.pop(0)))
            continue
        scratch.auto_advance = False
        step = split_state(scratch.state)[1]
        assert step is not None
        record = scratch.steps[compiled.step_index[step]]
        # An action-less step has nothing to run: it succeeds in the same decision.
        history.append(
            _fire(scratch, Event("step_succeeded", event.at, step=step, attempt=record.attempts))
        )
    return Decision(scratch.to_snapshot(), tuple(scratch.commands), history)


def outstanding(compiled: CompiledSaga | SagaDefinition, snapshot: Snapshot) -> tuple[Command, ...]:
    """What must happen next for a snapshot, derived from it alone (crash recovery)."""
    if isinstance(compiled, SagaDefinition):
        compiled = compile_saga(compiled)
    status, step = split_state(snapshot.state)
    if step is None:
        return (Finish(snapshot.state),) if snapshot.is_terminal else ()
    record = snapshot.steps[compiled.step_index[step]]
    if record.branches is not None and status is not SagaStatus.FAILED:
        from saga_fsm._parallel import group_outstanding

        return group_outstanding(compiled, snapshot)
    if status is SagaStatus.RUNNING and record.status is StepStatus.RUNNING:
        key = idempotency_key(snapshot.saga_id, step)
        return (RunStep(step, record.attempts, key, record.deadline, record.request_id),)
    if status is SagaStatus.COMPENSATING and record.status is StepStatus.COMPENSATING:
        key = idempotency_key(snapshot.saga_id, step, compensation=True)
        return (
            RunCompensation(
                step, record.compensation_attempts, key, record.deadline, record.request_id
            ),
        )
    if snapshot.wake_at is not None:
        return (ScheduleWake(snapshot.wake_at),)
    return ()
