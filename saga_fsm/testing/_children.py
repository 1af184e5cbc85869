"""Child saga steps under the harness: the parent's call starts, looks at, compensates
or cancels its child, and the child runs its real actions through the same driver.

The faults around a child step's call mean what they can mean for a child:

``ok``            the child runs to its end (fault-free; parked, it is retried as an
                  operator would) and the parent learns how it ended
``permanent``     the child's first call is refused: it compensates itself, the step fails
                  for good (only before the child exists or while it can still cancel)
``transient``     the parent looks while the child is under way and waits on
                  (``child_pending``); the child moved one step meanwhile, its call (if it
                  made one) failing transiently: it may retry, compensate itself, or park
``crash_before``  nothing: the parent's running write stands, no child yet (or no further)
``crash_after``   the child runs to its end, the process dies before the parent hears of
                  it: the parent's next call finds it finished
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saga_fsm._child import ChildSaga, child_id
from saga_fsm._core import Event, RunCompensation, RunStep, new_snapshot, outcome_event
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import InvalidArgument, TransitionNotAllowed
from saga_fsm._flow import COMPLETED, compile_saga
from saga_fsm._nesting import BAD_CHILD_INPUT, parent_event, waited_child
from saga_fsm._snapshot import ErrorInfo, SagaStatus, replace
from saga_fsm.testing._faults import Fault
from saga_fsm.testing._trace import TraceEntry, TraceKind

if TYPE_CHECKING:
    from saga_fsm.testing._driver import Driver, SagaRun

_CHILD_FAULTS = (Fault.OK, Fault.TRANSIENT, Fault.CRASH_BEFORE, Fault.CRASH_AFTER)


def child_faults(
    configured: tuple[Fault, ...], command: RunStep | RunCompensation
) -> tuple[Fault, ...]:
    """The faults a child step's call can have (see the module docstring)."""
    wanted = (
        (*_CHILD_FAULTS, Fault.PERMANENT)
        if isinstance(command, RunStep) and command.attempt == 1
        else _CHILD_FAULTS
    )
    return tuple(f for f in configured if f in wanted)


def require_child_definitions(definition: SagaDefinition) -> None:
    """The harness creates children from their definitions: a child named only by its
    name (resolved by a worker's registry) cannot be explored; say so at once."""
    for step in definition.steps:
        if isinstance(step, ChildSaga):
            if not isinstance(step.definition, SagaDefinition):
                raise InvalidArgument(
                    f"step {step.name!r} names its child saga {step.definition!r}: give"
                    " the SagaDefinition itself to explore it"
                )
            require_child_definitions(step.definition)


async def _create(
    driver: Driver, parent: SagaRun, step: ChildSaga, saga_id: str
) -> SagaRun | ErrorInfo:
    child = step.definition
    assert isinstance(child, SagaDefinition)  # see require_child_definitions
    try:
        data = step.child_data(parent.decided.data)
    except Exception as err:
        return ErrorInfo(BAD_CHILD_INPUT, f"{type(err).__name__}: {err}", retryable=False)
    snapshot = replace(
        new_snapshot(child, saga_id, data, driver._tick()),
        parent_id=parent.saga_id,
        parent_step=step.name,
    )
    stored, _ = await driver.store.create(snapshot)
    number = 1000 * parent.number + len(driver.children) + 1
    run = type(parent)(saga_id, number, stored, data, compiled=compile_saga(child))
    driver.children[saga_id] = run
    return run


async def _finish(driver: Driver, child: SagaRun, first: Fault = Fault.OK) -> None:
    """Drive the child to a final state with no fault but ``first`` (a refusal) on its
    next call; a child parked for an operator is retried, as an operator would."""
    fault = first
    for _ in range(driver.config.finish_limit):
        if child.decided.status is SagaStatus.FAILED:
            await driver._operator(child, Event.retry(driver._tick()), "retry")
        if child.decided.is_terminal:
            return
        called = child.runnable
        await driver._move(child, fault if fault in driver.faults_for(child) else Fault.OK)
        if called:
            fault = Fault.OK


async def _nudge(driver: Driver, child: SagaRun) -> None:
    """One move of the child, its call (if that is next) failing transiently: a child
    under way when its parent looks, which may retry, compensate itself, or park."""
    if child.decided.is_terminal:
        return
    transient = Fault.TRANSIENT in driver.faults_for(child)
    await driver._move(child, Fault.TRANSIENT if transient and child.runnable else Fault.OK)


async def children_call(
    driver: Driver, saga: SagaRun, command: RunStep | RunCompensation, fault: Fault
) -> None:
    """The parent's call of a child step, with ``fault`` around it."""
    table = driver._table(saga)
    step = table.definition.step(command.step)
    assert isinstance(step, ChildSaga)
    phase: TraceKind = "compensation" if isinstance(command, RunCompensation) else "step"
    state = saga.decided.state
    record = saga.decided.step(command.step)
    saga_id = child_id(saga.saga_id, command.step, record.attempts)
    trace: dict[str, Any] = {
        "label": f"child {step.child_name}" if phase == "step" else f"undo child {step.child_name}",
        "step": command.step,
        "attempt": command.attempt,
        "idempotency_key": command.idempotency_key,
        "fault": fault,
    }
    if fault is Fault.CRASH_BEFORE:
        driver._record(saga, TraceEntry(phase, state, state, **trace))
        return
    child = driver.children.get(saga_id)
    if isinstance(command, RunStep):
        if child is None:
            made = await _create(driver, saga, step, saga_id)
            if isinstance(made, ErrorInfo):
                failed = outcome_event(command, "failed", driver._tick(), error=made)
                await driver._apply(saga, failed, "step", **(trace | {"fault": Fault.PERMANENT}))
                return
            child = made
            if fault is Fault.TRANSIENT:
                await driver._move(child, Fault.OK)  # started, not finished
            else:
                await _finish(
                    driver, child, Fault.PERMANENT if fault is Fault.PERMANENT else Fault.OK
                )
        else:
            if fault is Fault.PERMANENT and not child.decided.is_terminal:
                await driver._operator(child, Event.cancel(driver._tick()), "cancel")
            if fault is Fault.TRANSIENT:
                await _nudge(driver, child)
            else:
                await _finish(driver, child)
    elif child is not None:
        if child.decided.state == COMPLETED:
            await driver._apply(child, Event("compensate", driver._tick()), "compensation")
        elif fault is Fault.TRANSIENT:
            await _nudge(driver, child)
        if fault is not Fault.TRANSIENT:
            await _finish(driver, child)
    at = driver._tick()
    event: Event | None
    if child is None:  # compensating a child never created: nothing to undo
        event = outcome_event(command, "succeeded", at)
    else:
        event = parent_event(table, saga.decided, child.decided, at)
    if fault is Fault.CRASH_AFTER:
        returned = None if event is None else event.result
        driver._record(
            saga, TraceEntry(phase, state, state, called=True, returned=returned, **trace)
        )
        return
    if event is None:
        await driver._apply(saga, Event("child_pending", at), "wake", label=trace["label"])
        return
    # What the trace says is what the child did: refused (it compensated) or acted.
    refused = event.error is not None and not event.error.retryable
    trace |= {"fault": Fault.PERMANENT if refused else Fault.OK, "called": not refused}
    trace["returned"] = event.result
    await driver._apply(saga, event, phase, **trace)


async def cancel_child(driver: Driver, saga: SagaRun) -> None:
    """A parent's cancel cancels the child it waits on, as ``SagaClient.cancel`` does."""
    waited = waited_child(driver._table(saga), saga.decided)
    if waited is None or not saga.decided.cancel_requested:
        return
    child = driver.children.get(waited[1])
    if child is None or child.decided.cancel_requested:
        return
    if child.decided.status in (SagaStatus.PENDING, SagaStatus.RUNNING):
        try:
            await driver._operator(child, Event.cancel(driver._tick()), "cancel")
        except TransitionNotAllowed:
            return
