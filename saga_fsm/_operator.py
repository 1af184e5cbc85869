"""The operator commands (cancel, retry, resume) as the CLI and the console both run
them: one function, so both are refused the same way and drive the saga the same way."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from attrs import frozen

from saga_fsm._definition import SagaDefinition
from saga_fsm._errors import SagaLeased
from saga_fsm._orchestrator import Orchestrator
from saga_fsm._snapshot import Snapshot
from saga_fsm.stores import SnapshotStore

OperatorCommand = Literal["cancel", "retry", "resume"]
OPERATOR_COMMANDS: tuple[OperatorCommand, ...] = get_args(OperatorCommand)


@frozen
class Operated:
    """What an operator command left: the saga's snapshot, and the live worker's lease
    when that worker, not this process, carries the saga on."""

    snapshot: Snapshot
    carried_on_by: SagaLeased | None = None


async def operate(
    store: SnapshotStore,
    saga_id: str,
    command: OperatorCommand,
    *,
    definitions: Iterable[SagaDefinition] = (),
) -> Operated:
    """Apply ``command`` through the Machine, then drive the saga here unless a live
    worker holds it. Refusals raise (``TransitionNotAllowed``; ``SagaLeased`` for a
    ``resume`` of a saga a live worker runs) and change nothing."""
    if command not in OPERATOR_COMMANDS:
        raise ValueError(f"unknown operator command {command!r}: one of {OPERATOR_COMMANDS}")
    orchestrator = Orchestrator(store, definitions)
    if command == "cancel":
        await orchestrator.cancel(saga_id)
    elif command == "retry":
        await orchestrator.retry(saga_id)
    try:
        return Operated(await orchestrator.resume(saga_id))
    except SagaLeased as leased:
        if command == "resume":
            raise
        return Operated(await store.load(saga_id), leased)
