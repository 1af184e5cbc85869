"""The in-memory reference store. Everything goes through the JSON codec, so it behaves
like the durable stores (copies, not shared objects), minus the durability."""

from __future__ import annotations

from collections.abc import Sequence

from saga_fsm._codec import history_from_dict, history_to_dict, snapshot_from_json, snapshot_to_json
from saga_fsm._errors import ConcurrencyConflict, SagaNotFound
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._protocol import state_matches


class MemoryStore:
    """Reference implementation of ``SnapshotStore``; lives as long as the object."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, str, str, str]] = {}  # id -> (version, state, def, json)
        self._history: dict[str, list[dict[str, object]]] = {}
        self._keys: dict[str, str] = {}

    async def create(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry] = ()
    ) -> tuple[Snapshot, bool]:
        key = snapshot.idempotency_key
        if key is not None and key in self._keys:
            return await self.load(self._keys[key]), False
        if snapshot.saga_id in self._rows:
            raise ConcurrencyConflict(snapshot.saga_id, 0, self._rows[snapshot.saga_id][0])
        stored = snapshot.with_version(1)
        self._rows[stored.saga_id] = (1, stored.state, stored.definition, snapshot_to_json(stored))
        self._history[stored.saga_id] = [history_to_dict(h) for h in history]
        if key is not None:
            self._keys[key] = stored.saga_id
        return stored, True

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        row = self._rows.get(snapshot.saga_id)
        if row is None:
            raise SagaNotFound(snapshot.saga_id)
        if row[0] != expected_version:
            raise ConcurrencyConflict(snapshot.saga_id, expected_version, row[0])
        stored = snapshot.with_version(expected_version + 1)
        encoded = snapshot_to_json(stored)  # before any write: a bad value changes nothing
        self._rows[stored.saga_id] = (stored.version, stored.state, stored.definition, encoded)
        self._history[stored.saga_id].extend(history_to_dict(h) for h in history)
        return stored

    async def load(self, saga_id: str) -> Snapshot:
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        return snapshot_from_json(row[3], saga_id=saga_id)

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
    ) -> list[Snapshot]:
        found = [
            snapshot_from_json(row[3], saga_id=saga_id)
            for saga_id, row in self._rows.items()
            if state_matches(row[1], state) and (definition is None or row[2] == definition)
        ]
        found.sort(key=lambda s: (s.created_at, s.saga_id))
        return found if limit is None else found[:limit]

    async def close(self) -> None:
        return None
