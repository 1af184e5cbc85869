"""Transactional steps: a step's own SQL and the transition that records its outcome,
committed in one transaction of the saga store's database, or not at all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._outbox import OutboxMessage

Write: TypeAlias = tuple[Snapshot, Sequence[HistoryEntry], int, Sequence[OutboxMessage]]
"""A transition to save: the snapshot at its new version, its history rows, the
version the stored row must still have, and the commands it sends (a remote step next)."""


class ActionRaised(Exception):
    """What a transactional action raised, carried unchanged out of the store's
    transaction, which it rolled back: the caller records it as the step's failure."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(repr(error))


@runtime_checkable
class TransactionalStore(Protocol):
    """A store whose database can hold a step's own writes in the transaction that
    saves the step's transition (PostgreSQL, SQLite; never the memory store)."""

    async def transact(self, call: Callable[[Any], Any], write: Callable[[Any], Write]) -> Snapshot:
        """In ONE transaction: ``call(connection)`` (its awaitable awaited), then the
        transition ``write(result)`` returns, saved under its optimistic version; then
        commit, and return the saved snapshot. Anything ``call`` or ``write`` raises
        rolls everything back and propagates; a lost version race rolls back and raises
        ``ConcurrencyConflict``."""
        ...
