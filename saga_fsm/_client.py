"""What an API process calls: start sagas, ask one to cancel, retry a parked one. It
writes snapshots and never drives a saga: workers (``SagaExecutor``) do."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from saga_fsm._clock import Clock, SystemClock
from saga_fsm._codec import data_problem
from saga_fsm._core import Event, decide, new_snapshot, signal_event
from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import ConcurrencyConflict, InvalidArgument
from saga_fsm._fingerprint import fingerprint
from saga_fsm._flow import CompiledSaga
from saga_fsm._registry import Definitions, registry
from saga_fsm._remote import DEFAULT_REPLY_CHANNEL, remote_commands
from saga_fsm._snapshot import Snapshot, replace
from saga_fsm.observability._observer import NO_OBSERVER, Observer
from saga_fsm.stores._outbox import OutboxStore
from saga_fsm.stores._protocol import SnapshotStore

_CONFLICT_RETRIES = 5


def new_saga(
    definitions: Definitions,
    clock: Clock,
    definition: SagaDefinition,
    data: Mapping[str, Any] | None,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
    observer: Observer = NO_OBSERVER,
) -> Snapshot:
    """A new ``pending`` snapshot of ``definition`` (registered on the way) pinned to
    its table's fingerprint, its data checked to be plain JSON, stamped by ``observer``
    (a trace's parent, say)."""
    compiled = definitions.register(definition)
    payload = dict(data or {})
    problem = data_problem(payload, "data")
    if problem is not None:
        raise problem
    return observer.stamp(
        new_snapshot(
            definition,
            saga_id or str(uuid.uuid4()),
            payload,
            clock.now(),
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint(compiled),
        )
    )


def chosen(
    definitions: Definitions, definition: SagaDefinition | str, version: int | None
) -> SagaDefinition:
    """What a start runs: ``definition`` itself, or the one registered under that name
    (its newest version unless ``version`` says which)."""
    if isinstance(definition, str):
        return definitions.get(definition, version)
    if version is not None and version != definition.version:
        raise InvalidArgument(
            f"version={version} but the definition given is {definition.name!r}"
            f" version {definition.version}"
        )
    return definition


class SagaClient:
    """Starts sagas and passes operators' requests on, through a ``SnapshotStore``."""

    def __init__(
        self,
        store: SnapshotStore,
        definitions: Definitions | Iterable[SagaDefinition] = (),
        *,
        clock: Clock | None = None,
        observer: Observer = NO_OBSERVER,
        reply_channel: str = DEFAULT_REPLY_CHANNEL,
    ) -> None:
        self.store = store
        self.reply_channel = reply_channel
        """Where participants answer a remote compensation an operator's request starts."""
        self.definitions = registry(definitions)
        self.clock: Clock = clock or SystemClock()
        self.observer = observer  # tracing, metrics, alerts: see saga_fsm.observability

    async def start(
        self,
        definition: SagaDefinition | str,
        data: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        definition_ref: str | None = None,
    ) -> Snapshot:
        """Persist a new ``pending`` instance for a worker to run. With an
        ``idempotency_key`` already in the store for the same definition and data,
        return that instance instead (``IdempotencyKeyReused`` for other ones).
        ``definition`` may be a registered name: its newest version, or ``version``."""
        snapshot = new_saga(
            self.definitions,
            self.clock,
            chosen(self.definitions, definition, version),
            data,
            saga_id,
            correlation_id,
            idempotency_key,
            self.observer,
        )
        stored, created = await self.store.create(replace(snapshot, definition_ref=definition_ref))
        if created:
            self.observer.created(stored)
        return stored

    async def start_many(
        self,
        definition: SagaDefinition | str,
        data: Sequence[Mapping[str, Any]],
        *,
        version: int | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        definition_ref: str | None = None,
    ) -> list[Snapshot]:
        """``start`` for each of ``data``, all or nothing: every item is checked before
        anything is written, and all are written in one transaction."""
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(data)
        if len(keys) != len(data):
            raise InvalidArgument(f"{len(data)} data items but {len(keys)} idempotency keys")
        definition = chosen(self.definitions, definition, version)
        snapshots = [
            replace(
                new_saga(
                    self.definitions,
                    self.clock,
                    definition,
                    item,
                    idempotency_key=key,
                    observer=self.observer,
                ),
                definition_ref=definition_ref,
            )
            for item, key in zip(data, keys, strict=True)
        ]
        stored = await self.store.create_many(snapshots)
        for created in stored:
            self.observer.created(created)
        return stored

    async def cancel(self, saga_id: str) -> Snapshot:
        """Ask a saga to compensate. Refused (``TransitionNotAllowed``) past the pivot or
        once finished. A step in flight finishes first; then its work is undone too. At
        the pivot, which may have acted, the cancel is recorded and the pivot's outcome
        decides: refused, compensate; succeeded, forward; ambiguous to the end, parked.
        The lease is left as it is: whoever drives the saga carries on compensating."""
        return await self._operator(saga_id, Event.cancel(self.clock.now()))

    async def retry(self, saga_id: str) -> Snapshot:
        """Resume a saga parked in ``failed`` where it gave up: a compensation with a fresh
        attempt budget, a pivot that may have acted with one more attempt."""
        return await self._operator(saga_id, Event.retry(self.clock.now()))

    async def signal(
        self, saga_id: str, signal: str, data: Mapping[str, Any] | None = None
    ) -> Snapshot:
        """Deliver the event ``signal`` (with ``data``, merged into the saga data when
        the wait continues) to a saga waiting at a ``WaitFor`` step. Refused with the
        reason (``SignalRefused``, nothing changed) when the saga is not waiting or waits
        for other events; the same signal again, once it was taken, returns the saga as
        it is. A worker carries the saga on from there."""
        payload = dict(data or {})
        problem = data_problem(payload, "data")
        if problem is not None:
            raise problem

        def event_for(snapshot: Snapshot, compiled: CompiledSaga) -> Event | None:
            return signal_event(compiled, snapshot, signal, payload, self.clock.now())

        return await self._operator(saga_id, event_for)

    async def _operator(
        self, saga_id: str, event: Event | Callable[[Snapshot, CompiledSaga], Event | None]
    ) -> Snapshot:
        snapshot = await self.store.load(saga_id)
        compiled = self.definitions.compiled_for(snapshot)
        for _ in range(_CONFLICT_RETRIES):
            this = event if isinstance(event, Event) else event(snapshot, compiled)
            if this is None:
                return snapshot
            decision = decide(compiled, snapshot, this)
            # A cancel or retry may start a remote compensation: its command goes in the
            # outbox with the transition, as a worker's would.
            outbox = remote_commands(
                compiled, decision.snapshot, decision.commands, self.reply_channel
            )
            try:
                # A save leaves the lease as it is: an operator does not drive.
                if outbox:
                    if not isinstance(self.store, OutboxStore):
                        raise InvalidArgument(f"{self.store!r} has no outbox for remote steps")
                    saved = await self.store.save(
                        decision.snapshot,
                        decision.history,
                        expected_version=snapshot.version,
                        outbox=outbox,
                    )
                else:
                    saved = await self.store.save(
                        decision.snapshot, decision.history, expected_version=snapshot.version
                    )
            except ConcurrencyConflict:
                snapshot = await self.store.load(saga_id)
                continue
            self.observer.transitioned(snapshot, saved, decision.history)
            if this.trigger == "cancel" and compiled.child_steps:
                from saga_fsm._nesting import cancel_child  # it builds on this module

                await cancel_child(self, compiled, saved)
            return saved
        raise ConcurrencyConflict(saga_id, snapshot.version, None)
