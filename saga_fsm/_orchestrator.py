"""The asyncio engine: loads snapshots, asks the core what to do, persists each
transition, then acts. Recovery is the same loop: load, decide again, act."""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from saga_fsm._clock import Clock, SystemClock
from saga_fsm._codec import dumps
from saga_fsm._core import (
    Command,
    Event,
    Finish,
    RunCompensation,
    RunStep,
    ScheduleWake,
    decide,
    new_snapshot,
    outstanding,
)
from saga_fsm._definition import Action, RetryPolicy, SagaDefinition, StepContext
from saga_fsm._errors import ConcurrencyConflict, SagaError, StepFailed, TransitionNotAllowed
from saga_fsm._flow import PENDING, CompiledSaga, compile_saga
from saga_fsm._snapshot import ErrorInfo, Snapshot
from saga_fsm.stores._protocol import SnapshotStore

log = logging.getLogger("saga_fsm")

_CONFLICT_RETRIES = 5


class UnknownDefinition(SagaError, LookupError):
    """A snapshot names a definition (name, version) this orchestrator was not given."""

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        super().__init__(f"no definition {name!r} version {version} is registered")


class Orchestrator:
    """Drives saga instances of the registered definitions against one store.

    Steps run at least once: a step is persisted as ``running`` (attempt number and
    idempotency key) before its action is called, and a crash before the result is
    persisted means the action runs again with the same key. State transitions happen
    exactly once. Participants deduplicate on ``StepContext.idempotency_key``.
    """

    def __init__(
        self,
        store: SnapshotStore,
        definitions: Iterable[SagaDefinition] = (),
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self._definitions: dict[tuple[str, int], CompiledSaga] = {}
        for definition in definitions:
            self.register(definition)

    # -- definitions ----------------------------------------------------------------------
    def register(self, definition: SagaDefinition) -> CompiledSaga:
        key = (definition.name, definition.version)
        known = self._definitions.get(key)
        if known is not None and known.definition != definition:
            raise SagaError(
                f"a different definition {definition.name!r} version {definition.version}"
                " is already registered: bump the version when a definition changes"
            )
        compiled = compile_saga(definition)
        self._definitions[key] = compiled
        return compiled

    def compiled_for(self, snapshot: Snapshot) -> CompiledSaga:
        compiled = self._definitions.get((snapshot.definition, snapshot.definition_version))
        if compiled is None:
            raise UnknownDefinition(snapshot.definition, snapshot.definition_version)
        return compiled

    # -- public operations ----------------------------------------------------------------
    async def start(
        self,
        definition: SagaDefinition,
        data: Mapping[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Snapshot:
        """Persist a new ``pending`` instance without running it. With an
        ``idempotency_key`` already in the store, return that instance instead."""
        self.register(definition)
        payload = dict(data or {})
        dumps(payload)  # not JSON-serialisable: fail here, before anything is written
        snapshot = new_snapshot(
            definition,
            saga_id or str(uuid.uuid4()),
            payload,
            self.clock.now(),
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
        )
        stored, _created = await self.store.create(snapshot)
        return stored

    async def run(
        self,
        definition: SagaDefinition,
        data: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Snapshot:
        """Start an instance and drive it until it is finished or parked."""
        snapshot = await self.start(definition, data, **options)
        return await self.resume(snapshot.saga_id)

    async def resume(self, saga_id: str) -> Snapshot:
        """Drive an existing instance from its last snapshot until it is finished,
        parked in ``failed``, or has nothing to do."""
        snapshot = await self.store.load(saga_id)
        compiled = self.compiled_for(snapshot)
        if snapshot.state == PENDING:
            snapshot, commands = await self._apply(
                compiled, snapshot, Event.start(self.clock.now())
            )
        else:
            commands = outstanding(compiled, snapshot)
        while True:
            event = await self._act(compiled, snapshot, commands)
            if event is None:
                return snapshot
            snapshot, commands = await self._apply(compiled, snapshot, event)

    async def cancel(self, saga_id: str) -> Snapshot:
        """Ask a saga to compensate. Refused (``TransitionNotAllowed``) past the pivot or
        once finished. A step in flight finishes first; then its work is undone too."""
        return await self._operator(saga_id, Event.cancel(self.clock.now()))

    async def retry(self, saga_id: str) -> Snapshot:
        """Resume a saga parked in ``failed`` where it gave up, with a fresh attempt budget."""
        return await self._operator(saga_id, Event.retry(self.clock.now()))

    # -- internals ------------------------------------------------------------------------
    async def _operator(self, saga_id: str, event: Event) -> Snapshot:
        snapshot = await self.store.load(saga_id)
        snapshot, _ = await self._apply(self.compiled_for(snapshot), snapshot, event)
        return snapshot

    async def _apply(
        self, compiled: CompiledSaga, snapshot: Snapshot, event: Event
    ) -> tuple[Snapshot, tuple[Command, ...]]:
        """Decide and persist; on a lost race, load the winner's snapshot and decide again."""
        for _ in range(_CONFLICT_RETRIES):
            decision = decide(compiled, snapshot, event)
            try:
                saved = await self.store.save(
                    decision.snapshot, decision.history, expected_version=snapshot.version
                )
            except ConcurrencyConflict:
                snapshot = await self.store.load(snapshot.saga_id)
                try:
                    decide(compiled, snapshot, event)
                except TransitionNotAllowed:
                    # The winner already moved past this event: carry on from its state.
                    return snapshot, outstanding(compiled, snapshot)
                continue
            return saved, decision.commands
        raise ConcurrencyConflict(snapshot.saga_id, snapshot.version, None)

    async def _act(
        self, compiled: CompiledSaga, snapshot: Snapshot, commands: tuple[Command, ...]
    ) -> Event | None:
        for command in commands:
            if isinstance(command, Finish):
                return None
            if isinstance(command, ScheduleWake):
                delay = (command.at - self.clock.now()).total_seconds()
                await self.clock.sleep(delay)
                return Event.retry_due(self.clock.now())
            step = compiled.definition.steps[compiled.step_index[command.step]]
            if isinstance(command, RunStep):
                assert step.action is not None
                return await self._call(
                    snapshot, command, step.action, step.retry, step.timeout, "step"
                )
            if isinstance(command, RunCompensation):
                assert step.compensation is not None
                return await self._call(
                    snapshot,
                    command,
                    step.compensation,
                    step.compensation_retry,
                    step.compensation_timeout,
                    "compensation",
                )
        return None

    async def _call(
        self,
        snapshot: Snapshot,
        command: RunStep | RunCompensation,
        fn: Action,
        policy: RetryPolicy,
        timeout: float | None,
        phase: str,
    ) -> Event:
        ctx = StepContext(
            saga_id=snapshot.saga_id,
            step=command.step,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            correlation_id=snapshot.correlation_id,
            data=MappingProxyType(snapshot.data),
            compensating=phase == "compensation",
        )

        def event(trigger: str, **fields: Any) -> Event:
            return Event(
                f"{phase}_{trigger}",  # type: ignore[arg-type]
                self.clock.now(),
                step=command.step,
                attempt=command.attempt,
                **fields,
            )

        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await _invoke(fn, ctx)
        except TimeoutError:
            if deadline.expired():
                log.warning("saga %s: %s %s timed out", snapshot.saga_id, phase, command.step)
                return event("timed_out")
            return event("failed", error=ErrorInfo.from_exception(TimeoutError(), retryable=True))
        except StepFailed as err:
            return event("failed", error=ErrorInfo.from_exception(err, retryable=err.retryable))
        except Exception as err:
            retryable = not isinstance(err, policy.non_retryable)
            log.info("saga %s: %s %s raised %r", snapshot.saga_id, phase, command.step, err)
            return event("failed", error=ErrorInfo.from_exception(err, retryable=retryable))
        problem = _result_problem(result)
        if problem is not None:
            return event("failed", error=ErrorInfo("InvalidResult", problem, retryable=False))
        if phase == "compensation":
            return event("succeeded")
        return event("succeeded", result=dict(result) if result else None)


async def _invoke(fn: Action, ctx: StepContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx)
    # Sync actions run in a thread so a slow one neither blocks other sagas nor escapes
    # its timeout (the thread itself cannot be killed; its result is then ignored).
    result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        return await result
    return result


def _result_problem(result: Any) -> str | None:
    if result is None:
        return None
    if not isinstance(result, Mapping):
        return f"an action must return a mapping or None, got {type(result).__name__}"
    if not all(isinstance(k, str) for k in result):
        return "an action's result must have string keys"
    try:
        dumps(dict(result))
    except (TypeError, ValueError) as err:
        return f"an action's result must be JSON-serialisable: {err}"
    return None


def run_sync(
    definition: SagaDefinition,
    data: Mapping[str, Any] | None = None,
    *,
    store: str | None = None,
    **options: Any,
) -> Snapshot:
    """Blocking convenience for scripts: open the store at URL ``store`` (default: the
    ``SAGA_FSM_STORE`` environment variable, else ``sqlite:///saga_fsm.db``), run one
    saga to the end, close the store, return the final snapshot."""
    from saga_fsm.stores.url import open_store, store_url_from_env

    async def go() -> Snapshot:
        async with open_store(store or store_url_from_env()) as opened:
            return await Orchestrator(opened, [definition]).run(definition, data, **options)

    return asyncio.run(go())
