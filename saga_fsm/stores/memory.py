"""The in-memory reference store. Everything goes through the JSON codec, so it behaves
like the durable stores (copies, not shared objects), minus the durability."""

from __future__ import annotations

import builtins  # the stores' own ``list`` method shadows it in class bodies
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from attrs import define, evolve

from saga_fsm._codec import (
    history_from_dict,
    history_to_dict,
    snapshot_from_json,
    snapshot_to_json,
)
from saga_fsm._errors import ConcurrencyConflict, SagaLeased, SagaNotFound, SnapshotDecodeError
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._protocol import check_limit, state_matches
from saga_fsm.stores._protocol import ids as _ids


@define
class _Row:
    """What the durable stores keep in columns, plus the encoded snapshot."""

    encoded: str
    version: int
    state: str
    definition: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None

    @classmethod
    def of(cls, snapshot: Snapshot) -> _Row:
        return cls(
            snapshot_to_json(snapshot),
            snapshot.version,
            snapshot.state,
            snapshot.definition,
            snapshot.created_at,
            snapshot.updated_at,
            snapshot.due_at,
            snapshot.lease_owner,
            snapshot.lease_expires_at,
        )

    def leased_elsewhere(self, worker_id: str, now: datetime) -> bool:
        return (
            self.lease_owner is not None
            and self.lease_owner != worker_id
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


class MemoryStore:
    """Reference implementation of ``SnapshotStore``; lives as long as the object."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._history: dict[str, list[dict[str, object]]] = {}
        self._keys: dict[str, str] = {}

    def _row(self, saga_id: str) -> _Row:
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        return row

    async def create(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry] = ()
    ) -> tuple[Snapshot, bool]:
        key = snapshot.idempotency_key
        if key is not None and key in self._keys:
            return await self.load(self._keys[key]), False
        if snapshot.saga_id in self._rows:
            raise ConcurrencyConflict(snapshot.saga_id, 0, self._rows[snapshot.saga_id].version)
        stored = snapshot.with_version(1)
        self._rows[stored.saga_id] = _Row.of(stored)
        self._history[stored.saga_id] = [history_to_dict(h) for h in history]
        if key is not None:
            self._keys[key] = stored.saga_id
        return stored, True

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        row = self._row(snapshot.saga_id)
        if row.version != expected_version:
            raise ConcurrencyConflict(snapshot.saga_id, expected_version, row.version)
        stored = snapshot.with_version(expected_version + 1)
        new_row = _Row.of(stored)  # encodes first: a bad value changes nothing
        self._rows[stored.saga_id] = new_row
        self._history[stored.saga_id].extend(history_to_dict(h) for h in history)
        return stored

    async def load(self, saga_id: str) -> Snapshot:
        return snapshot_from_json(self._row(saga_id).encoded, saga_id=saga_id)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        if saga_id not in self._history:
            raise SagaNotFound(saga_id)
        return [history_from_dict(h) for h in self._history[saga_id]]

    async def list(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        limit: int | None = None,
        updated_before: datetime | None = None,
        newest_first: bool = False,
    ) -> list[Snapshot]:
        check_limit(limit)
        rows = sorted(
            (
                (row.created_at, saga_id, row)
                for saga_id, row in self._rows.items()
                if state_matches(row.state, state)
                and (definition is None or row.definition == definition)
                and (updated_before is None or row.updated_at < updated_before)
            ),
            key=lambda item: (item[0], item[1]),
            reverse=newest_first,
        )
        if limit is not None:
            rows = rows[:limit]
        return [snapshot_from_json(row.encoded, saga_id=saga_id) for _, saga_id, row in rows]

    # -- leases -----------------------------------------------------------------------------

    def _lease(self, saga_id: str, worker_id: str, expires_at: datetime, *, bump: bool) -> Snapshot:
        row = self._rows[saga_id]
        snapshot = snapshot_from_json(row.encoded, saga_id=saga_id)
        leased = evolve(
            snapshot,
            lease_owner=worker_id,
            lease_expires_at=expires_at,
            version=snapshot.version + (1 if bump else 0),
        )
        self._rows[saga_id] = _Row.of(leased)
        return leased

    async def claim_due(
        self, worker_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> builtins.list[Snapshot | SnapshotDecodeError]:
        check_limit(limit)
        expires_at = now + timedelta(seconds=lease_seconds)
        due = sorted(
            (row.due_at, saga_id)
            for saga_id, row in self._rows.items()
            if row.due_at is not None
            and row.due_at <= now
            and (row.lease_expires_at is None or row.lease_expires_at <= now)
        )
        claimed: builtins.list[Snapshot | SnapshotDecodeError] = []
        for _, saga_id in due[:limit]:
            try:
                claimed.append(self._lease(saga_id, worker_id, expires_at, bump=True))
            except SnapshotDecodeError as err:
                row = self._rows[saga_id]
                row.lease_owner, row.lease_expires_at = worker_id, expires_at
                claimed.append(err)
        return claimed

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        row = self._row(saga_id)
        if row.leased_elsewhere(worker_id, now):
            raise SagaLeased(saga_id, str(row.lease_owner), row.lease_expires_at)
        return self._lease(saga_id, worker_id, now + timedelta(seconds=lease_seconds), bump=True)

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        held = set()
        for saga_id in _ids(saga_ids):
            row = self._rows.get(saga_id)
            if row is not None and row.lease_owner == worker_id:
                self._lease(saga_id, worker_id, expires_at, bump=False)
                held.add(saga_id)
        return held

    async def release(self, saga_id: str, worker_id: str) -> None:
        row = self._rows.get(saga_id)
        if row is None or row.lease_owner != worker_id:
            return
        snapshot = snapshot_from_json(row.encoded, saga_id=saga_id)
        self._rows[saga_id] = _Row.of(evolve(snapshot, lease_owner=None, lease_expires_at=None))

    async def close(self) -> None:
        return None

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        check_limit(limit)
        return sorted(saga_id for saga_id in self._rows if saga_id.startswith(prefix))[:limit]

    async def count(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        updated_before: datetime | None = None,
    ) -> int:
        return sum(
            1
            for row in self._rows.values()
            if state_matches(row.state, state)
            and (definition is None or row.definition == definition)
            and (updated_before is None or row.updated_at < updated_before)
        )

    def discard(self, saga_id: str) -> None:
        """Forget a saga entirely (its row, history and idempotency key): for a process
        that keeps running sagas in memory and has no more use for the finished ones."""
        row = self._rows.pop(saga_id, None)
        self._history.pop(saga_id, None)
        if row is not None:
            key = snapshot_from_json(row.encoded, saga_id=saga_id).idempotency_key
            if key is not None and self._keys.get(key) == saga_id:
                del self._keys[key]
