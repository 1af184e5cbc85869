"""Child sagas at run time: starting a parent's child, looking at it, and telling the
parent how it ended.

The order of writes is what makes it durable. The parent's step is recorded running
(its request id names the child) before the child is created; the child's id is derived
from the parent's id, step and attempt, so a second try finds the first one's child
instead of starting another. Nobody holds the parent while its child runs. The worker
that finishes a child applies the outcome to its parent at once; and the parent, due
again every ``check_every`` seconds, looks at its child (starting it if a crash came
before it was created), so an outcome whose notice was lost is only late, never lost.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING

from attrs import frozen

from saga_fsm._child import ChildSaga, child_id, undo_problem
from saga_fsm._client import SagaClient, new_saga
from saga_fsm._core import (
    Event,
    RunCompensation,
    RunStep,
    decide,
    outcome_event,
)
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import (
    ConcurrencyConflict,
    DefinitionError,
    SagaError,
    SagaLeased,
    SagaNotFound,
    TransitionNotAllowed,
    UnknownDefinition,
)
from saga_fsm._flow import COMPENSATED, COMPLETED, CompiledSaga
from saga_fsm._logging import get_logger
from saga_fsm._registry import Definitions
from saga_fsm._remote import remote_commands
from saga_fsm._snapshot import ErrorInfo, SagaStatus, Snapshot, StepStatus, replace, split_state

if TYPE_CHECKING:
    from saga_fsm._executor import SagaExecutor

log = get_logger("saga_fsm")

CHILD_COMPENSATED = "ChildCompensated"
"""The error type of a child step whose child compensated itself: a definite failure."""
BAD_CHILD_INPUT = "InvalidChildInput"


@frozen
class ChildWait:
    """The parent is handed back to wait for its child. ``event`` (a ``child_pending``)
    is recorded on the parent first when it was due (its next look); ``child``, leased to
    this worker, is driven here once the parent is handed back, from ``child_event``."""

    event: Event | None = None
    child: Snapshot | None = None
    child_event: Event | None = None


def waited_child(compiled: CompiledSaga, parent: Snapshot) -> tuple[ChildSaga, str] | None:
    """The child step the parent waits on and its child's id, if it waits on one."""
    status, name = split_state(parent.state)
    if name is None:
        return None
    step = compiled.definition.steps[compiled.step_index[name]]
    if not isinstance(step, ChildSaga):
        return None
    record = parent.step(name)
    if (status, record.status) not in (
        (SagaStatus.RUNNING, StepStatus.RUNNING),
        (SagaStatus.COMPENSATING, StepStatus.COMPENSATING),
    ):
        return None
    return step, child_id(parent.saga_id, name, record.attempts)


def parent_event(
    compiled: CompiledSaga, parent: Snapshot, child: Snapshot, at: datetime
) -> Event | None:
    """What ``child``'s state means for ``parent`` now (None: nothing yet, or the
    parent no longer waits for this child). Pure."""
    waited = waited_child(compiled, parent)
    if waited is None or waited[1] != child.saga_id:
        return None
    step, _ = waited
    record = parent.step(step.name)
    if record.status is StepStatus.RUNNING:
        command = RunStep(step.name, record.attempts, "", None, record.request_id)
        if child.state == COMPLETED:
            return outcome_event(command, "succeeded", at, result=step.result_of(child.data))
        if child.state == COMPENSATED:
            why = f"child saga {child.saga_id} compensated"
            if child.failure is not None:
                why += f" ({child.failure})"
            error = ErrorInfo(CHILD_COMPENSATED, why, retryable=False)
            return outcome_event(command, "failed", at, error=error)
        return None  # running, compensating, or parked for an operator: still waiting
    undo = RunCompensation(step.name, record.compensation_attempts, "", None, record.request_id)
    if child.state == COMPENSATED:
        return outcome_event(undo, "succeeded", at)
    return None


async def _load(executor: SagaExecutor, saga_id: str) -> Snapshot | None:
    try:
        return await executor.store.load(saga_id)
    except SagaNotFound:
        return None


async def _take(executor: SagaExecutor, child: Snapshot) -> Snapshot | None:
    """The child, leased to this worker to drive here; None if another worker has it or
    its definition is not served here (a worker that serves it will)."""
    if child.is_terminal and child.state != COMPLETED:
        return None
    due = child.due_at
    if due is not None and due > executor.clock.now():
        return None  # waiting out a back-off or a reply: whoever is free then runs it
    try:
        executor.definitions.compiled_for(child)
        return await executor.store.acquire(
            child.saga_id,
            executor.worker_id,
            now=executor.clock.now(),
            lease_seconds=executor.lease_seconds,
        )
    except (SagaLeased, UnknownDefinition, SagaNotFound):
        return None


def _client(executor: SagaExecutor) -> SagaClient:
    return SagaClient(
        executor.store,
        executor.definitions,
        clock=executor.clock,
        observer=executor.observer,
        reply_channel=executor.reply_channel,
    )


async def cancel_child(client: SagaClient, compiled: CompiledSaga, parent: Snapshot) -> None:
    """A parent asked to cancel asks the child it waits on to cancel too (and so on down):
    the child compensates itself, and the parent's step fails for good. A child past its
    pivot refuses: it completes, and the parent compensates it in its turn."""
    waited = waited_child(compiled, parent)
    if waited is None or not parent.cancel_requested:
        return
    with contextlib.suppress(TransitionNotAllowed, SagaNotFound, UnknownDefinition):
        child = await client.store.load(waited[1])
        if child.status in (SagaStatus.PENDING, SagaStatus.RUNNING) and not child.cancel_requested:
            await client.cancel(child.saga_id)


def _definition_of(executor: SagaExecutor, step: ChildSaga) -> SagaDefinition:
    child = step.definition
    return child if isinstance(child, SagaDefinition) else executor.definitions.get(child)


async def _start(
    executor: SagaExecutor, parent: Snapshot, step: ChildSaga, command: RunStep, saga_id: str
) -> Event | ChildWait:
    """Create the child (once: its id is derived), leased to this worker, already started."""
    definition = _definition_of(executor, step)
    compiled = executor.definitions.register(definition)
    now = executor.clock.now()
    try:
        data = step.child_data(parent.data)
        snapshot = new_saga(
            executor.definitions,
            executor.clock,
            definition,
            data,
            saga_id,
            parent.correlation_id,
            None,
            executor.observer,
        )
    except Exception as err:  # the input function's or the data check's: nothing started
        error = ErrorInfo(BAD_CHILD_INPUT, f"{type(err).__name__}: {err}", retryable=False)
        return outcome_event(command, "failed", now, error=error)
    snapshot = replace(
        snapshot,
        parent_id=parent.saga_id,
        parent_step=step.name,
        traceparent=parent.traceparent or snapshot.traceparent,
    )
    decision = decide(compiled, snapshot, Event.start(snapshot.created_at))
    outbox = remote_commands(compiled, decision.snapshot, decision.commands, executor.reply_channel)
    lease = executor._lease()
    try:
        if outbox:
            stored, created = await executor.outbox_store().create(
                decision.snapshot, decision.history, lease=lease, outbox=outbox
            )
            executor.outbox_written.set()
        else:
            stored, created = await executor.store.create(
                decision.snapshot, decision.history, lease=lease
            )
    except ConcurrencyConflict:
        # Created already (the same decision carried out before a crash, or by a worker
        # that lost the parent): that one is the child.
        return ChildWait()
    executor.observer.created(stored)
    executor.observer.transitioned(snapshot, stored, decision.history)
    log.info("saga %s: started child %s (%s)", parent.saga_id, stored.saga_id, definition.name)
    return ChildWait(child=stored if created else None)


async def act_on_child(
    executor: SagaExecutor,
    compiled: CompiledSaga,
    parent: Snapshot,
    command: RunStep | RunCompensation,
) -> Event | ChildWait:
    """Carry out a child step's command on the parent's behalf: start or look at its
    child (forward), or compensate, cancel or look at it (compensation). The event it
    ends in, or how the parent waits."""
    step = compiled.definition.steps[compiled.step_index[command.step]]
    assert isinstance(step, ChildSaga)
    now = executor.clock.now()
    # Due again (a look, not the decision that started the step): the next look is
    # recorded when the child has not finished.
    pending = (
        Event("child_pending", now)
        if parent.wake_at is not None and parent.wake_at <= now
        else None
    )
    record = parent.step(step.name)
    saga_id = child_id(parent.saga_id, step.name, record.attempts)
    child = await _load(executor, saga_id)
    if isinstance(command, RunStep):
        if child is None:
            started = await _start(executor, parent, step, command, saga_id)
            if isinstance(started, ChildWait):
                return ChildWait(pending, started.child)
            return started
        event = parent_event(compiled, parent, child, now)
        if event is not None:
            return event
        if parent.cancel_requested:
            await cancel_child(_client(executor), compiled, parent)
            child = await _load(executor, saga_id) or child  # compensating now: due
        return ChildWait(pending, await _take(executor, child))
    if child is None:
        # The crash came before the child was created: nothing was started, nothing to undo.
        return outcome_event(command, "succeeded", now)
    event = parent_event(compiled, parent, child, now)
    if event is not None:
        return event
    if child.state == COMPLETED:
        taken = await _take(executor, child)
        return ChildWait(pending, taken, None if taken is None else Event("compensate", now))
    if child.status in (SagaStatus.PENDING, SagaStatus.RUNNING) and not child.cancel_requested:
        with contextlib.suppress(TransitionNotAllowed, SagaError):
            await _client(executor).cancel(child.saga_id)
        child = await _load(executor, saga_id) or child
    return ChildWait(pending, await _take(executor, child))


async def notify_parent(executor: SagaExecutor, child: Snapshot, max_hold: float) -> None:
    """A finished child's outcome, applied to its parent at once (when its definition is
    served here and no worker holds it: otherwise the parent's next look applies it)."""
    if child.parent_id is None or not child.is_terminal:
        return
    parent = await _load(executor, child.parent_id)
    if parent is None:
        return
    try:
        compiled = executor.definitions.compiled_for(parent)
    except UnknownDefinition:
        return
    if parent_event(compiled, parent, child, executor.clock.now()) is None:
        return
    try:
        parent = await executor.store.acquire(
            parent.saga_id,
            executor.worker_id,
            now=executor.clock.now(),
            lease_seconds=executor.lease_seconds,
        )
    except (SagaLeased, SagaNotFound):
        return
    event = parent_event(compiled, parent, child, executor.clock.now())
    if event is None:
        with contextlib.suppress(SagaError):
            await executor.store.release(parent.saga_id, executor.worker_id)
        return
    executor.observer.claimed(parent)
    await executor.drive(parent, max_hold=max_hold, event=event)


def check_children(definitions: Definitions, definition: SagaDefinition) -> None:
    """The children a definition starts by name must be known where it runs (a child is
    created from its definition), and fit the step: ``DefinitionError`` otherwise."""
    for row, step in enumerate(definition.steps):
        if not isinstance(step, ChildSaga) or not isinstance(step.definition, str):
            continue
        try:
            child = definitions.get(step.definition)
        except UnknownDefinition:
            raise DefinitionError(
                f"child saga {step.definition!r} is not registered here: register it with"
                " the parent, or give the SagaDefinition itself",
                row=row,
                step=step.name,
                field="definition",
            ) from None
        problem = undo_problem(step, child)
        if problem is not None:
            raise DefinitionError(problem, row=row, step=step.name, field="definition")
