"""Running a transactional step: the step's SQL and the transition recording its
outcome commit in one transaction of the saga store's database, or not at all.

A success is decided and saved inside the transaction, so the effect and the
transition are one commit: a crash before it leaves nothing, a crash after it leaves
both, and the step has happened exactly once. A raised error, an invalid result or a
missed deadline rolls the step's writes back; only the failure is then saved, by the
ordinary path, as for any other step."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, TypeAlias

from attrs import evolve

from saga_fsm._core import (
    Command,
    Decision,
    Event,
    RunCompensation,
    RunStep,
    decide,
    outcome_event,
    outstanding,
)
from saga_fsm._definition import Action, RetryPolicy, SagaDefinition
from saga_fsm._errors import ConcurrencyConflict, InvalidArgument, TransitionNotAllowed
from saga_fsm._flow import CompiledSaga
from saga_fsm._invoke import call_outcome, step_context
from saga_fsm._remote import remote_commands
from saga_fsm._snapshot import Snapshot
from saga_fsm.stores._outbox import OutboxMessage
from saga_fsm.stores._transact import ActionRaised, TransactionalStore, Write

if TYPE_CHECKING:
    from saga_fsm._executor import SagaExecutor

Applied: TypeAlias = tuple[Snapshot, tuple[Command, ...]]
"""What a transactional step leaves: the saved snapshot and what comes next."""


def require_transactions(store: object, definition: SagaDefinition) -> None:
    """A definition with transactional steps runs only on a store whose database the
    steps' writes can share: refused up front, not at the first such step."""
    steps = [step.name for step in definition.steps if step.transactional]
    if steps and not isinstance(store, TransactionalStore):
        raise InvalidArgument(
            f"saga {definition.name!r} has transactional steps ({', '.join(steps)}): they"
            " write in the saga store's own transaction, which needs PostgresStore or"
            f" SqliteStore; {type(store).__name__} has no transaction to share",
            name="store",
            value=type(store).__name__,
        )


class Rolled(Exception):
    """The outcome was a failure: roll the step's writes back, then record ``event``."""

    def __init__(self, event: Event) -> None:
        self.event = event


def calling(fn: Action, ctx: Any) -> Any:
    """``call(connection)`` for the store: what the action raises comes out as
    ``ActionRaised``, told apart from the store's own errors."""

    def call(connection: Any) -> Any:
        try:
            result = fn(evolve(ctx, connection=connection))
        except Exception as err:
            raise ActionRaised(err) from err
        return _Awaiting(result) if inspect.isawaitable(result) else result

    return call


class _Awaiting:
    """An async action's awaitable, its errors raised as ``ActionRaised``; ``close()``
    closes it unawaited (a store that cannot await it refuses it)."""

    def __init__(self, inner: Awaitable[Any]) -> None:
        self._inner = inner

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wrapped().__await__()

    async def _wrapped(self) -> Any:
        try:
            return await self._inner
        except Exception as err:
            raise ActionRaised(err) from err

    def close(self) -> None:
        if inspect.iscoroutine(self._inner):
            self._inner.close()


async def transact(
    executor: SagaExecutor,
    compiled: CompiledSaga,
    snapshot: Snapshot,
    command: RunStep | RunCompensation,
    fn: Action,
    policy: RetryPolicy,
    max_hold: float,
) -> Event | Applied:
    """Run the step in the store's transaction. Applied (saved with its outcome) on
    success; else the failure event for the ordinary path to save."""
    store = executor.store
    assert isinstance(store, TransactionalStore)  # require_transactions checked it
    clock = executor.clock
    decided: list[tuple[Event, Decision]] = []
    sent: list[OutboxMessage] = []

    def write(result: Any) -> Write:
        # Checked before the commit: an action past its deadline commits nothing.
        now = clock.now()
        if command.deadline is not None and now >= command.deadline:
            raise Rolled(outcome_event(command, "timed_out", now))
        event = call_outcome(command, policy, now, returned=result)
        if event.error is not None:
            raise Rolled(event)  # an invalid result: its writes go too
        decision = decide(compiled, snapshot, event)
        decided.append((event, decision))
        after = decision.snapshot.with_version(snapshot.version + 1)
        # A remote step next: its command commits with this transition, as on any save.
        outbox = remote_commands(compiled, after, decision.commands, executor.reply_channel)
        sent.extend(outbox)
        return after, decision.history, snapshot.version, outbox

    try:
        saved = await store.transact(calling(fn, step_context(snapshot, command)), write)
    except ActionRaised as raised:
        return call_outcome(command, policy, clock.now(), raised=raised.error)
    except Rolled as rolled:
        return rolled.event
    except ConcurrencyConflict:
        # Nothing of the step committed. An operator's write moved the saga on: decide
        # again from what is stored, which re-runs the step if it is still due.
        current = await executor._reload_if_ours(snapshot.saga_id)
        return current, outstanding(compiled, current)
    except TransitionNotAllowed:
        current = await executor._reload_if_ours(snapshot.saga_id)
        return current, outstanding(compiled, current)
    event, decision = decided[-1]
    if sent:
        executor.outbox_written.set()
    executor.observer.attempt_finished(snapshot, event)
    return executor._saved(snapshot, decision, saved, executor._releases(decision, max_hold))
