"""Compile a saga definition into its flow: a state table whose state names the step in
progress (``running:charge``), and the one transitions Machine built from it."""

from __future__ import annotations

import functools
from collections.abc import Callable

from attrs import frozen
from transitions import Machine

from saga_fsm._child import ChildSaga
from saga_fsm._definition import SagaDefinition, WaitFor, WaitOutcome
from saga_fsm._lifecycle import TransitionRow, build_machine
from saga_fsm._snapshot import SagaStatus

PENDING = SagaStatus.PENDING.value
COMPLETED = SagaStatus.COMPLETED.value
COMPENSATED = SagaStatus.COMPENSATED.value
FAILED = SagaStatus.FAILED.value
TERMINAL_STATES = (COMPLETED, COMPENSATED, FAILED)


def running(step: str) -> str:
    return f"{SagaStatus.RUNNING.value}:{step}"


def compensating(step: str) -> str:
    return f"{SagaStatus.COMPENSATING.value}:{step}"


def _flow_rows(definition: SagaDefinition) -> tuple[TransitionRow, ...]:
    steps = definition.steps
    pivot = definition.pivot_index
    names = [s.name for s in steps]

    def undo_from(row: int, *, inclusive: bool) -> str:
        # The last step at or before ``row`` with a compensation: every earlier step on
        # the forward path has succeeded (and ``row`` itself may have acted when
        # ``inclusive``), so this target is static.
        last = row if inclusive else row - 1
        for j in range(last, -1, -1):
            if steps[j].compensable:
                return compensating(names[j])
        return COMPENSATED

    def then(dest: str, *, compensation: bool) -> str:
        if dest in TERMINAL_STATES:
            return "finish"
        return "run_compensation" if compensation else "run_step"

    rows: list[TransitionRow] = [
        TransitionRow("start", PENDING, running(names[0]), effects=["run_step"]),
        TransitionRow("cancel", PENDING, COMPENSATED, effects=["request_cancel", "finish"]),
    ]
    for i, step in enumerate(steps):
        here = running(step.name)
        cancellable = pivot is None or i <= pivot
        before_pivot = pivot is None or i < pivot
        forward = running(names[i + 1]) if i + 1 < len(steps) else COMPLETED
        if step.is_group:
            from saga_fsm._groups import StepGroup, group_rows

            assert isinstance(step, StepGroup)
            undo = undo_from(i, inclusive=False)
            rows.extend(
                group_rows(
                    step,
                    here,
                    compensating(step.name),
                    forward,
                    then(forward, compensation=False),
                    undo,
                    then(undo, compensation=True),
                    FAILED,
                )
            )
            continue
        if isinstance(step, WaitFor):
            rows.extend(
                _wait_rows(step, here, forward, undo_from(i, inclusive=False), then, before_pivot)
            )
            continue
        rows.append(
            TransitionRow(
                "step_succeeded",
                here,
                forward,
                unless=["cancel_requested"] if before_pivot else [],
                effects=["record_success", then(forward, compensation=False)],
            )
        )
        if before_pivot:
            undo = undo_from(i, inclusive=True)
            rows.append(
                TransitionRow(
                    "step_succeeded",
                    here,
                    undo,
                    conditions=["cancel_requested"],
                    effects=["record_success", "begin_compensation", then(undo, compensation=True)],
                )
            )
        # A pivot that may have acted cannot be undone, nor can the steps before it be
        # undone under it: an ambiguous last attempt parks the saga for an operator. A
        # transactional pivot's failure is definite (its writes rolled back, and a deadline
        # is checked before the commit), so it compensates like a refusal.
        guarded_pivot = i == pivot and not step.transactional
        for trigger, record in (
            ("step_failed", "record_failure"),
            ("step_timed_out", "record_timeout"),
        ):
            if not cancellable:
                # Past the pivot there is no way back: retry, whatever the error.
                rows.append(TransitionRow(trigger, here, here, effects=[record, "schedule_retry"]))
                continue
            rows.append(
                TransitionRow(
                    trigger,
                    here,
                    here,
                    conditions=["may_retry"],
                    # A cancel does not cut a guarded pivot's retries short: its outcome
                    # decides whether the earlier steps may be undone.
                    unless=[] if guarded_pivot else ["cancel_requested"],
                    effects=[record, "schedule_retry"],
                )
            )
            if trigger == "step_failed" and (step.compensable or guarded_pivot):
                # A definite refusal: the participant did nothing, there is nothing of
                # this step to undo.
                undo = undo_from(i, inclusive=False)
                rows.append(
                    TransitionRow(
                        trigger,
                        here,
                        undo,
                        conditions=["refused"],
                        effects=[record, "begin_compensation", then(undo, compensation=True)],
                    )
                )
            if guarded_pivot:
                rows.append(TransitionRow(trigger, here, FAILED, effects=[record, "park"]))
                continue
            # Anything else (a timeout, a transient error the policy gave up on) may
            # have acted: this step's own compensation runs first.
            undo = undo_from(i, inclusive=True)
            rows.append(
                TransitionRow(
                    trigger,
                    here,
                    undo,
                    effects=[record, "begin_compensation", then(undo, compensation=True)],
                )
            )
        rows.append(
            TransitionRow(
                "retry_due", here, here, conditions=["awaiting_retry"], effects=["run_step"]
            )
        )
        if guarded_pivot:
            # Recorded, in flight or awaiting a retry alike: the pivot may have acted, so
            # its outcome decides (refused: compensate; succeeded: forward, the cancel
            # dropped; ambiguous to the end: parked).
            rows.append(TransitionRow("cancel", here, None, effects=["request_cancel"]))
            # An operator's retry of a pivot parked after an ambiguous outcome runs it
            # again: one more attempt, same idempotency key.
            rows.append(
                TransitionRow(
                    "retry",
                    FAILED,
                    here,
                    conditions=["parked_here"],
                    effects=["resume_parked", "run_step"],
                )
            )
        elif cancellable:
            # Not in flight: its last attempt failed transiently or timed out and awaits
            # a retry, so it may have acted.
            undo = undo_from(i, inclusive=True)
            rows.append(
                TransitionRow(
                    "cancel", here, None, conditions=["in_flight"], effects=["request_cancel"]
                )
            )
            rows.append(
                TransitionRow(
                    "cancel",
                    here,
                    undo,
                    unless=["in_flight"],
                    effects=["request_cancel", "begin_compensation", then(undo, compensation=True)],
                )
            )
    for j, step in enumerate(steps):
        if not step.compensable or step.is_group:
            continue
        here = compensating(step.name)
        undo = undo_from(j, inclusive=False)
        rows.append(
            TransitionRow(
                "compensation_succeeded",
                here,
                undo,
                effects=["record_compensated", then(undo, compensation=True)],
            )
        )
        for trigger, record in (
            ("compensation_failed", "record_compensation_failure"),
            ("compensation_timed_out", "record_compensation_timeout"),
        ):
            rows.append(
                TransitionRow(
                    trigger,
                    here,
                    here,
                    conditions=["compensation_may_retry"],
                    effects=[record, "schedule_compensation_retry"],
                )
            )
            rows.append(TransitionRow(trigger, here, FAILED, effects=[record, "park"]))
        rows.append(
            TransitionRow(
                "retry_due", here, here, conditions=["awaiting_retry"], effects=["run_compensation"]
            )
        )
        rows.append(
            TransitionRow(
                "retry",
                FAILED,
                here,
                conditions=["parked_here"],
                effects=["resume_parked", "run_compensation"],
            )
        )
    rows.extend(_child_rows(definition, undo_from, then))
    return tuple(rows)


def _child_rows(
    definition: SagaDefinition,
    undo_from: Callable[..., str],
    then: Callable[..., str],
) -> list[TransitionRow]:
    """Rows only tables with child sagas have: a parent that looked at its child and
    found it still running waits on (``child_pending``); a reversible saga is
    compensated after it completed (``compensate``, what its parent's compensation fires)."""
    rows = []
    for step in definition.steps:
        if not isinstance(step, ChildSaga):
            continue
        here = running(step.name)
        rows.append(
            TransitionRow(
                "child_pending", here, None, conditions=["in_flight"], effects=["schedule_check"]
            )
        )
        if step.compensable:
            rows.append(
                TransitionRow(
                    "child_pending", compensating(step.name), None, effects=["schedule_check"]
                )
            )
    if definition.reversible:
        undo = undo_from(len(definition.steps) - 1, inclusive=True)
        rows.append(
            TransitionRow(
                "compensate",
                COMPLETED,
                undo,
                effects=["begin_undo", then(undo, compensation=True)],
            )
        )
    return rows


def _wait_rows(
    step: WaitFor,
    here: str,
    forward: str,
    undo: str,
    then: Callable[..., str],
    cancellable: bool,
) -> list[TransitionRow]:
    """A wait: an event or the deadline ends it, as ``events``/``on_timeout`` say. It did
    nothing, so a failure or a cancel compensates the steps before it, at once."""
    ahead = ["record_success", then(forward, compensation=False)]
    back = ["begin_compensation", then(undo, compensation=True)]
    rows = []
    if step.when is not None:
        # Its field said no: the wait is skipped, in the decision that reached it.
        rows.append(TransitionRow("step_succeeded", here, forward, effects=ahead))
    outcomes = set(step.outcomes.values())
    if WaitOutcome.CONTINUE in outcomes:
        rows.append(
            TransitionRow(
                "signal",
                here,
                forward,
                conditions=["signal_continues"],
                effects=["record_signal", *ahead[1:]],
            )
        )
    if WaitOutcome.FAIL in outcomes:
        rows.append(TransitionRow("signal", here, undo, effects=["record_signal", *back]))
    if step.on_timeout == WaitOutcome.CONTINUE:
        rows.append(TransitionRow("step_timed_out", here, forward, effects=ahead))
    else:
        rows.append(TransitionRow("step_timed_out", here, undo, effects=["record_timeout", *back]))
    if cancellable:
        # Nothing in flight to wait for: a cancel compensates at once.
        rows.append(
            TransitionRow("cancel", here, undo, effects=["request_cancel", "end_wait", *back])
        )
    return rows


def _flow_states(definition: SagaDefinition) -> tuple[str, ...]:
    return (
        PENDING,
        *(running(s.name) for s in definition.steps),
        *(compensating(s.name) for s in definition.steps if s.compensable),
        *TERMINAL_STATES,
    )


@frozen(eq=False)
class CompiledSaga:
    """A definition with its flow table and the one Machine every instance shares."""

    definition: SagaDefinition
    states: tuple[str, ...]
    rows: tuple[TransitionRow, ...]
    machine: Machine
    step_index: dict[str, int]
    child_steps: frozenset[str] = frozenset()
    """The steps that are child sagas (``ChildSaga``)."""

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.trigger for row in self.rows))


@functools.cache
def compile_saga(definition: SagaDefinition) -> CompiledSaga:
    """Build (once per definition) the flow table and its Machine."""
    states = _flow_states(definition)
    rows = _flow_rows(definition)
    machine = build_machine(
        states, rows, initial=PENDING, name=definition.name, callbacks=definition.callbacks
    )
    return CompiledSaga(
        definition=definition,
        states=states,
        rows=rows,
        machine=machine,
        step_index={s.name: i for i, s in enumerate(definition.steps)},
        child_steps=frozenset(s.name for s in definition.steps if isinstance(s, ChildSaga)),
    )
