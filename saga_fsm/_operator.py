"""The operator commands (cancel, retry, resume) as the CLI and the console both run
them: one function, so both are refused the same way and drive the saga the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from attrs import frozen

from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import InvalidArgument, SagaLeased, TransitionNotAllowed, UnknownDefinition
from saga_fsm._loading import load_definition
from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import SagaStatus, Snapshot
from saga_fsm.stores import SagaStore

OperatorCommand = Literal["cancel", "retry", "resume"]
OPERATOR_COMMANDS: tuple[OperatorCommand, ...] = get_args(OperatorCommand)


@frozen
class Operated:
    """What an operator command left: the saga's snapshot, and the live worker's lease
    when that worker, not this process, carries the saga on."""

    snapshot: Snapshot
    carried_on_by: SagaLeased | None = None


async def operate(
    store: SagaStore,
    saga_id: str,
    command: OperatorCommand,
    *,
    definitions: Iterable[SagaDefinition] = (),
) -> Operated:
    """Apply ``command`` through the Machine, then drive the saga here unless a live
    worker holds it. Refusals raise (``TransitionNotAllowed``; ``SagaLeased`` for a
    ``resume`` of a saga a live worker runs) and change nothing."""
    if command not in OPERATOR_COMMANDS:
        raise InvalidArgument(f"unknown operator command {command!r}: one of {OPERATOR_COMMANDS}")
    snapshot = await store.load(saga_id)
    if command == "resume" and snapshot.is_terminal:
        why = (
            "parked for an operator: use retry"
            if snapshot.status is SagaStatus.FAILED
            else "finished, there is nothing to resume"
        )
        raise TransitionNotAllowed(saga_id, snapshot.state, "resume", why)
    orchestrator = _orchestrator_for(store, snapshot, definitions)
    if command == "cancel":
        await orchestrator.cancel(saga_id)
    elif command == "retry":
        await orchestrator.retry(saga_id)
    return await _carry_on(orchestrator, saga_id, resuming=command == "resume")


async def deliver_signal(
    store: SagaStore,
    saga_id: str,
    signal: str,
    data: Mapping[str, Any] | None = None,
    *,
    definitions: Iterable[SagaDefinition] = (),
) -> Operated:
    """``SagaClient.signal``, then drive the saga here unless a live worker holds it
    (as ``operate`` does). Refusals raise ``SignalRefused`` and change nothing."""
    orchestrator = _orchestrator_for(store, await store.load(saga_id), definitions)
    await orchestrator.signal(saga_id, signal, data)
    return await _carry_on(orchestrator, saga_id, resuming=False)


def _orchestrator_for(
    store: SagaStore, snapshot: Snapshot, definitions: Iterable[SagaDefinition]
) -> Orchestrator:
    orchestrator = Orchestrator(store, definitions)
    if (snapshot.definition, snapshot.definition_version) not in orchestrator.served:
        orchestrator.register(recorded_definition(snapshot))
    return orchestrator


async def _carry_on(orchestrator: Orchestrator, saga_id: str, *, resuming: bool) -> Operated:
    try:
        return Operated(await orchestrator.resume(saga_id))
    except SagaLeased as leased:
        if resuming:
            raise
        return Operated(await orchestrator.store.load(saga_id), leased)


def recorded_definition(snapshot: Snapshot) -> SagaDefinition:
    """The definition an operator command drives a saga with when it was given none:
    loaded from the REF that ``start``/``run`` recorded on it (an operator chose to act
    on this saga; workers never load what a row names), checked to still be the same
    name and version."""
    key = (snapshot.definition, snapshot.definition_version)
    if snapshot.definition_ref is None:
        raise UnknownDefinition(*key, f"saga {snapshot.saga_id} records no definition REF")
    definition = load_definition(snapshot.definition_ref)
    if (definition.name, definition.version) != key:
        raise UnknownDefinition(
            *key,
            f"{snapshot.definition_ref} now holds {definition.name!r} version {definition.version}",
        )
    return definition
