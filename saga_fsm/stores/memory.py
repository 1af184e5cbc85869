"""The in-memory reference store. Everything goes through the JSON codec, so it behaves
like the durable stores (copies, not shared objects), minus the durability."""

from __future__ import annotations

import builtins  # the stores' own ``list`` method shadows it in class bodies
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from attrs import define

from saga_fsm._codec import (
    history_from_dict,
    history_to_dict,
    request_fingerprint,
    snapshot_from_json,
    snapshot_or_error,
    snapshot_to_json,
)
from saga_fsm._errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    NotQuarantined,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._outbox import OutboxEntry, OutboxMessage, check_claim
from saga_fsm.stores._protocol import (
    UNFINISHED_STATUSES,
    Lease,
    QuarantinedSaga,
    Served,
    check_limit,
    pinned_elsewhere,
    served,
    state_matches,
)
from saga_fsm.stores._protocol import ids as _ids
from saga_fsm.stores._queries import (
    EVERYTHING,
    PageKey,
    SagaFilter,
    SagaPage,
    StateCount,
    aware,
    check_page_limit,
    decoded_row,
    paged,
)


@define
class _OutboxRow:
    entry: OutboxEntry
    lease: Lease | None = None


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
    definition_version: int
    # The worker driving the saga: a column, never in ``encoded``.
    lease: Lease | None = None
    # Facts of creation and of operators, which writes of the snapshot never move.
    fingerprint: str | None = None
    quarantine: QuarantinedSaga | None = None
    pinned: str | None = None  # the snapshot's definition_fingerprint
    parent: str | None = None  # the snapshot's parent_id

    @classmethod
    def of(cls, snapshot: Snapshot, was: _Row | None = None, lease: Lease | None = None) -> _Row:
        due_at = snapshot.due_at
        return cls(
            snapshot_to_json(snapshot),
            snapshot.version,
            snapshot.state,
            snapshot.definition,
            snapshot.created_at,
            snapshot.updated_at,
            due_at,
            snapshot.definition_version,
            # A write keeps the lease; a saga no longer due has none.
            (was.lease if was else lease) if due_at is not None else None,
            was.fingerprint if was else None,
            was.quarantine if was else None,
            snapshot.definition_fingerprint,
            snapshot.parent_id,
        )

    def snapshot(self, saga_id: str) -> Snapshot:
        return snapshot_from_json(self.encoded, saga_id=saga_id).with_version(self.version)


class MemoryStore:
    """Reference implementation of ``SnapshotStore``; lives as long as the object."""

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._history: dict[str, list[dict[str, object]]] = {}
        self._keys: dict[str, str] = {}
        self._outbox: dict[int, _OutboxRow] = {}  # by seq, in insertion order
        self._outbox_ids: set[str] = set()

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _row(self, saga_id: str) -> _Row:
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        return row

    def _existing(self, snapshot: Snapshot) -> str | None:
        """The saga already created with ``snapshot``'s idempotency key, if any (the
        same request); raises for the same key with another request, or a taken id."""
        key = snapshot.idempotency_key
        if key is not None and key in self._keys:
            existing = self._keys[key]
            if self._rows[existing].fingerprint != request_fingerprint(snapshot):
                raise IdempotencyKeyReused(key, existing)
            return existing
        if snapshot.saga_id in self._rows:
            raise ConcurrencyConflict(snapshot.saga_id, 0, self._rows[snapshot.saga_id].version)
        return None

    def _insert(
        self, stored: Snapshot, history: Sequence[HistoryEntry], lease: Lease | None
    ) -> None:
        # Encodes first: a value JSON cannot hold changes nothing.
        row = _Row.of(stored, lease=lease)
        key = stored.idempotency_key
        if key is not None:
            row.fingerprint = request_fingerprint(stored)
            self._keys[key] = stored.saga_id
        self._rows[stored.saga_id] = row
        self._history[stored.saga_id] = [history_to_dict(h) for h in history]

    async def create(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry] = (),
        *,
        lease: Lease | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[Snapshot, bool]:
        existing = self._existing(snapshot)
        if existing is not None:
            return await self.load(existing), False
        stored = snapshot.with_version(1)
        self._insert(stored, history, lease)
        self._enqueue(outbox)
        return stored, True

    def _enqueue(self, outbox: Sequence[OutboxMessage]) -> None:
        for message in outbox:
            if message.message_id in self._outbox_ids:
                continue  # the same command decided again: sent once
            self._outbox_ids.add(message.message_id)
            seq = len(self._outbox_ids)
            self._outbox[seq] = _OutboxRow(OutboxEntry(seq, message))

    async def create_many(self, snapshots: Sequence[Snapshot]) -> builtins.list[Snapshot]:
        # create() only adds rows: putting the three maps back undoes a partial batch.
        before = (dict(self._rows), dict(self._history), dict(self._keys))
        try:
            return [(await self.create(snapshot))[0] for snapshot in snapshots]
        except BaseException:
            self._rows, self._history, self._keys = before
            raise

    async def save(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry],
        *,
        expected_version: int,
        outbox: Sequence[OutboxMessage] = (),
    ) -> Snapshot:
        row = self._row(snapshot.saga_id)
        if row.version != expected_version:
            raise ConcurrencyConflict(snapshot.saga_id, expected_version, row.version)
        stored = snapshot.with_version(expected_version + 1)
        new_row = _Row.of(stored, row)  # encodes first: a bad value changes nothing
        self._rows[stored.saga_id] = new_row
        self._history[stored.saga_id].extend(history_to_dict(h) for h in history)
        self._enqueue(outbox)
        return stored

    # -- outbox -------------------------------------------------------------------------------

    async def claim_outbox(
        self, relay_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> builtins.list[OutboxEntry]:
        check_claim(relay_id, lease_seconds, limit)
        heads: dict[str, _OutboxRow] = {}
        for row in self._outbox.values():
            if row.entry.published_at is None:
                heads.setdefault(row.entry.message.saga_id, row)
        claimed = []
        for row in sorted(heads.values(), key=lambda r: r.entry.seq):
            if row.lease is not None and row.lease.live(now):
                continue
            row.lease = Lease(relay_id, now + timedelta(seconds=lease_seconds))
            claimed.append(row.entry)
            if len(claimed) == limit:
                break
        return claimed

    async def mark_published(
        self, seqs: Sequence[int], relay_id: str, *, now: datetime
    ) -> builtins.list[int]:
        marked = []
        for seq in seqs:
            row = self._outbox.get(seq)
            if row is not None and row.lease is not None and row.lease.owner == relay_id:
                row.entry = OutboxEntry(seq, row.entry.message, now)
                row.lease = None
                marked.append(seq)
        return marked

    async def outbox(
        self, *, saga_id: str | None = None, unpublished: bool = False
    ) -> builtins.list[OutboxEntry]:
        return [
            row.entry
            for row in self._outbox.values()
            if (saga_id is None or row.entry.message.saga_id == saga_id)
            and not (unpublished and row.entry.published_at is not None)
        ]

    async def load(self, saga_id: str) -> Snapshot:
        return self._row(saga_id).snapshot(saga_id)

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
        unfinished: bool = False,
        newest_first: bool = False,
        parent: str | None = None,
    ) -> list[Snapshot | SnapshotDecodeError]:
        check_limit(limit)
        rows = sorted(
            (
                (row.created_at, saga_id, row)
                for saga_id, row in self._rows.items()
                if state_matches(row.state, state)
                and (definition is None or row.definition == definition)
                and (updated_before is None or row.updated_at < updated_before)
                and not (unfinished and row.state.partition(":")[0] not in UNFINISHED_STATUSES)
                and (parent is None or row.parent == parent)
            ),
            key=lambda item: (item[0], item[1]),
            reverse=newest_first,
        )
        if limit is not None:
            rows = rows[:limit]
        return [_versioned(row, saga_id) for _, saga_id, row in rows]

    # -- quarantine -------------------------------------------------------------------------

    async def quarantine(self, saga_id: str, reason: str, *, now: datetime) -> None:
        row = self._row(saga_id)
        row.quarantine = QuarantinedSaga(saga_id, reason, now)
        row.lease = None

    async def unquarantine(self, saga_id: str) -> Snapshot:
        row = self._row(saga_id)
        if row.quarantine is None:
            raise NotQuarantined(saga_id)
        snapshot = row.snapshot(saga_id)
        row.quarantine = None
        return snapshot

    async def list_quarantined(self, *, limit: int | None = None) -> builtins.list[QuarantinedSaga]:
        check_limit(limit)
        found = sorted(
            (row.quarantine for row in self._rows.values() if row.quarantine is not None),
            key=lambda q: (q.quarantined_at, q.saga_id),
        )
        return found if limit is None else found[:limit]

    # -- leases: the row's columns, never its snapshot -------------------------------------

    def _lease(self, saga_id: str, worker_id: str, expires_at: datetime) -> Snapshot:
        """Lease the row and bump its version; the snapshot is decoded to hand it out,
        and the lease stays taken when it cannot be (its error is returned instead)."""
        row = self._rows[saga_id]
        row.lease = Lease(worker_id, expires_at)
        row.version += 1
        return row.snapshot(saga_id)

    async def claim_due(
        self,
        worker_id: str,
        *,
        now: datetime,
        lease_seconds: float,
        limit: int,
        definitions: Collection[Served],
    ) -> builtins.list[Snapshot | SnapshotDecodeError]:
        check_limit(limit)
        wanted = served(definitions)
        keys = {(name, version) for name, version, _ in wanted}
        expires_at = now + timedelta(seconds=lease_seconds)
        due = sorted(
            (row.due_at, saga_id)
            for saga_id, row in self._rows.items()
            if row.due_at is not None
            and row.due_at <= now
            and not (row.lease is not None and row.lease.live(now))
            and row.quarantine is None
            and (row.definition, row.definition_version) in keys
            and any(
                (name, version) == (row.definition, row.definition_version)
                and not pinned_elsewhere(row.pinned, table)
                for name, version, table in wanted
            )
        )
        claimed: builtins.list[Snapshot | SnapshotDecodeError] = []
        for _, saga_id in due[:limit]:
            try:
                claimed.append(self._lease(saga_id, worker_id, expires_at))
            except SnapshotDecodeError as err:
                claimed.append(err)
        return claimed

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        row = self._row(saga_id)
        if row.lease is not None and row.lease.held_by_another(worker_id, now):
            raise SagaLeased(saga_id, row.lease.owner, row.lease.expires_at)
        return self._lease(saga_id, worker_id, now + timedelta(seconds=lease_seconds))

    async def lease(self, saga_id: str) -> Lease | None:
        return self._row(saga_id).lease

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        held = set()
        for saga_id in _ids(saga_ids):
            row = self._rows.get(saga_id)
            if row is not None and row.lease is not None and row.lease.owner == worker_id:
                row.lease = Lease(worker_id, expires_at)
                held.add(saga_id)
        return held

    async def release(self, saga_id: str, worker_id: str) -> None:
        row = self._rows.get(saga_id)
        if row is not None and row.lease is not None and row.lease.owner == worker_id:
            row.lease = None

    async def close(self) -> None:
        return None

    # -- SagaQueries: what an operator's console reads ----------------------------------------

    async def page(
        self, where: SagaFilter, *, after: PageKey | None = None, limit: int = 50
    ) -> SagaPage:
        check_page_limit(limit)
        found = sorted(
            (
                PageKey(aware(row.created_at), saga_id)
                for saga_id, row in self._rows.items()
                if self._matches(where, saga_id, row)
                and (after is None or PageKey(aware(row.created_at), saga_id) < after)
            ),
            reverse=True,
        )[: limit + 1]
        rows = [self._rows[key.saga_id] for key in found]
        return paged(
            [
                decoded_row(
                    key.saga_id,
                    row.definition,
                    row.state,
                    row.created_at,
                    row.updated_at,
                    row.encoded,
                    row.version,
                )
                for key, row in zip(found, rows, strict=True)
            ],
            limit,
        )

    async def counts(self, where: SagaFilter = EVERYTHING) -> builtins.list[StateCount]:
        counted = Counter(
            (row.definition, row.state)
            for saga_id, row in self._rows.items()
            if self._matches(where, saga_id, row)
        )
        return sorted(StateCount(d, s, n) for (d, s), n in counted.items())

    async def quarantine_of(self, saga_id: str) -> QuarantinedSaga | None:
        row = self._rows.get(saga_id)
        return row.quarantine if row is not None else None

    @staticmethod
    def _matches(where: SagaFilter, saga_id: str, row: _Row) -> bool:
        return where.matches(
            saga_id,
            row.state,
            row.definition,
            row.created_at,
            row.updated_at,
            row.quarantine is not None,
        )

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        check_limit(limit)
        return sorted(saga_id for saga_id in self._rows if saga_id.startswith(prefix))[:limit]

    async def count(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        updated_before: datetime | None = None,
        unfinished: bool = False,
        parent: str | None = None,
    ) -> int:
        return sum(
            1
            for row in self._rows.values()
            if state_matches(row.state, state)
            and (definition is None or row.definition == definition)
            and (updated_before is None or row.updated_at < updated_before)
            and not (unfinished and row.state.partition(":")[0] not in UNFINISHED_STATUSES)
            and (parent is None or row.parent == parent)
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


def _versioned(row: _Row, saga_id: str) -> Snapshot | SnapshotDecodeError:
    found = snapshot_or_error(row.encoded, saga_id=saga_id)
    return found if isinstance(found, SnapshotDecodeError) else found.with_version(row.version)
