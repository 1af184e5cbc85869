"""The one interface every snapshot store implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from saga_fsm._snapshot import HistoryEntry, Snapshot


@runtime_checkable
class SnapshotStore(Protocol):
    """Persists snapshots and their history.

    Every write is atomic: the snapshot and its history rows land together or not at
    all, guarded by the snapshot's optimistic ``version``.
    """

    async def create(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry] = ()
    ) -> tuple[Snapshot, bool]:
        """Insert a new saga at version 1. If ``snapshot.idempotency_key`` is already
        taken, return ``(existing, False)`` and write nothing; otherwise
        ``(stored, True)``. An existing ``saga_id`` raises ``ConcurrencyConflict``."""
        ...

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        """Replace the saga's snapshot if the stored version is ``expected_version``
        and append ``history``; return the snapshot at ``expected_version + 1``.
        Otherwise raise ``ConcurrencyConflict`` and write nothing."""
        ...

    async def load(self, saga_id: str) -> Snapshot:
        """The current snapshot; ``SagaNotFound`` if there is none."""
        ...

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        """Every transition of the saga, oldest first; ``SagaNotFound`` if unknown."""
        ...

    async def list(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """Snapshots, oldest first. ``state`` matches a whole flow state
        (``running:charge``) or a status (``running`` matches every ``running:*``)."""
        ...

    async def close(self) -> None:
        """Release what the store opened itself (never a pool the caller passed in)."""
        ...


def state_matches(state: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return state == wanted or (":" not in wanted and state.startswith(wanted + ":"))
