"""The one interface every snapshot store implements."""

from __future__ import annotations

import builtins  # the stores' own ``list`` method shadows it in class bodies
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import LiteralString, Protocol, TypeAlias, runtime_checkable

from attrs import frozen

from saga_fsm._errors import InvalidArgument, InvalidArgumentType, SnapshotDecodeError
from saga_fsm._snapshot import TERMINAL_STATUSES, HistoryEntry, SagaStatus, Snapshot

Served: TypeAlias = tuple[str, int] | tuple[str, int, str]
"""What a worker claims: (name, version), any table of it, or (name, version,
fingerprint), only sagas pinned to that table (or to none)."""

# Statuses of sagas that are not finished (``running`` is ``running:<step>``); a saga
# parked in ``failed`` waits for an operator on purpose and counts as finished.
UNFINISHED_STATUSES: tuple[str, ...] = tuple(
    s.value for s in SagaStatus if s not in TERMINAL_STATUSES
)


@frozen
class QuarantinedSaga:
    """A saga set aside because its stored snapshot could not be decoded: no worker
    claims it until an operator fixes the row and calls ``unquarantine``."""

    saga_id: str
    reason: str
    quarantined_at: datetime


@frozen
class Lease:
    """Which worker drives a saga, until when: columns the store keeps beside the
    snapshot, never inside it."""

    owner: str
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        """THE liveness rule: a lease holds until it runs out. Every store asks it (the
        SQL stores through ``LIVE_SQL``/``LIVE_ELSEWHERE_SQL``, the same rule written in
        SQL once): a claim skips sagas with a live lease, an acquire those of another."""
        return self.expires_at > now

    def held_by_another(self, worker_id: str, now: datetime) -> bool:
        return self.owner != worker_id and self.live(now)


def lease_or_none(owner: str | None, expires_at: datetime | None) -> Lease | None:
    """The lease columns of a row as a value (NULL columns: no lease)."""
    return None if owner is None or expires_at is None else Lease(owner, expires_at)


# ``Lease.live`` and ``Lease.held_by_another`` in SQL, over a row's lease columns; the
# caller fills in its driver's placeholders for ``now`` and ``worker``.
LIVE_SQL: LiteralString = "(lease_owner IS NOT NULL AND lease_expires_at > {now})"
LIVE_ELSEWHERE_SQL: LiteralString = "(lease_owner <> {worker} AND " + LIVE_SQL + ")"


@runtime_checkable
class SnapshotStore(Protocol):
    """Persists snapshots and their history: the saga's business state.

    Every write is atomic: the snapshot and its history rows land together or not at
    all, guarded by the optimistic ``version`` the store keeps in a column (handed back
    as ``Snapshot.version``). A write leaves the lease alone, except that a saga no
    longer due (finished or parked: ``due_at`` is None) has no lease left.
    """

    async def create(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry] = (),
        *,
        lease: Lease | None = None,
    ) -> tuple[Snapshot, bool]:
        """Insert a new saga at version 1 (leased already with ``lease``: a process that
        starts a saga to drive it itself). If ``snapshot.idempotency_key`` is already
        taken, return ``(existing, False)`` and write nothing; otherwise
        ``(stored, True)``. An existing ``saga_id`` raises ``ConcurrencyConflict``.

        The key stands for one request: the store keeps a fingerprint of the definition
        (name, version) and the data it was created with, and the same key with another
        fingerprint raises ``IdempotencyKeyReused`` and writes nothing."""
        ...

    async def create_many(self, snapshots: Sequence[Snapshot]) -> builtins.list[Snapshot]:
        """``create`` for each snapshot (no history), all in ONE transaction: every
        one is written, or (on any error) none. Returns, in order, the stored snapshot,
        or the existing one for an idempotency key already taken."""
        ...

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        """Replace the saga's snapshot if the stored version is ``expected_version``
        and append ``history``; return the snapshot at ``expected_version + 1``.
        Otherwise raise ``ConcurrencyConflict`` and write nothing. The lease is left as
        it is, and dropped when the saved saga is no longer due."""
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
        updated_before: datetime | None = None,
        unfinished: bool = False,
        newest_first: bool = False,
        parent: str | None = None,
    ) -> list[Snapshot | SnapshotDecodeError]:
        """Snapshots, oldest first (``newest_first``: the other way round, so ``limit``
        keeps the newest); a row that cannot be decoded is returned as its
        error, in its place, and never hides the others. ``state`` matches a whole flow
        state (``running:charge``) or a status (``running`` matches every
        ``running:*``); ``updated_before`` keeps those whose last transition is older;
        ``unfinished`` keeps only ``UNFINISHED_STATUSES``, filtered by the store on its
        state index: finished sagas, however many, are never read nor decoded.
        ``parent`` keeps the child sagas of that saga (``Snapshot.parent_id``)."""
        ...

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        """Up to ``limit`` saga ids starting with ``prefix`` (taken literally: ``%`` and
        ``_`` are plain characters), in id order; what lets a person type a short id."""
        ...

    async def count(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        updated_before: datetime | None = None,
        unfinished: bool = False,
        parent: str | None = None,
    ) -> int:
        """How many sagas ``list`` with the same filters and no limit would return,
        without decoding any."""
        ...

    async def close(self) -> None:
        """Release what the store opened itself (never a pool the caller passed in)."""
        ...


@runtime_checkable
class WorkerLeases(Protocol):
    """Coordinates workers: which saga is due, which worker drives it (the lease), which
    rows no worker may claim (quarantine). Lease changes touch the store's columns only:
    they never read, decode, encode or write a snapshot, except that a claim or an
    acquire reads the snapshot it hands out."""

    # -- quarantine: rows no worker can decode ---------------------------------------------

    async def quarantine(self, saga_id: str, reason: str, *, now: datetime) -> None:
        """Set the saga aside (``claim_due`` no longer returns it) and drop its lease,
        recording why and when. ``SagaNotFound`` if it does not exist."""
        ...

    async def unquarantine(self, saga_id: str) -> Snapshot:
        """Let workers claim the saga again, once its row decodes; returns it.
        ``NotQuarantined`` if it is not quarantined, ``SnapshotDecodeError`` (nothing
        changed) if it still cannot be decoded, ``SagaNotFound`` if unknown."""
        ...

    async def list_quarantined(self, *, limit: int | None = None) -> builtins.list[QuarantinedSaga]:
        """The quarantined sagas, oldest quarantine first."""
        ...

    # -- leases: which worker drives a saga ------------------------------------------------

    async def claim_due(
        self,
        worker_id: str,
        *,
        now: datetime,
        lease_seconds: float,
        limit: int,
        definitions: Collection[Served],
    ) -> builtins.list[Snapshot | SnapshotDecodeError]:
        """Lease up to ``limit`` sagas of ``definitions`` (name, version, and the table's
        fingerprint when given: a saga pinned to another table is left) that are due
        (``due_at <= now``), not quarantined and not leased by a live worker, to
        ``worker_id`` until ``now + lease_seconds``. Sagas of other definitions are left
        for workers that serve them. Each claim bumps the version, so a worker whose
        lease expired can no longer save. Concurrent claimers never get the same saga.
        A row that cannot be decoded is still leased (so it is not handed out in a tight
        loop) and returned as its error, for the worker to ``quarantine``."""
        ...

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        """Lease one saga, due or not. ``SagaLeased`` if another worker's lease is live
        (``Lease.held_by_another``), ``SagaNotFound`` if it does not exist. Bumps the
        version like a claim."""
        ...

    async def lease(self, saga_id: str) -> Lease | None:
        """The saga's lease as recorded, run out or not (None: no worker holds it);
        ``SagaNotFound`` if it does not exist."""
        ...

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        """Extend ``worker_id``'s leases on these sagas to ``expires_at`` (no version
        bump), in one round trip however many; returns the ids it still held (and now
        holds until ``expires_at``). A worker with thousands of sagas in flight renews
        them all at once, not one statement each."""
        ...

    async def release(self, saga_id: str, worker_id: str) -> None:
        """Drop ``worker_id``'s lease, if it still holds it (no version bump), so another
        worker can take the saga at once; an undecodable row's lease too."""
        ...


@runtime_checkable
class SagaStore(SnapshotStore, WorkerLeases, Protocol):
    """What the executor runs on: snapshots persisted and workers coordinated by one
    store (a claim must see the writes it coordinates). Every store implements both."""


def state_matches(state: str, wanted: str | None) -> bool:
    if wanted is None:
        return True
    return state == wanted or (":" not in wanted and state.startswith(wanted + ":"))


def check_limit(limit: int | None) -> None:
    """A row limit is a count: ``None`` (no limit) or >= 0."""
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")


def served(
    definitions: Collection[Served],
) -> builtins.list[tuple[str, int, str | None]]:
    """The (name, version, fingerprint) triples a claim may return, without repeats; a
    (name, version) pair has fingerprint None: any table of that version."""
    if isinstance(definitions, str):
        raise InvalidArgumentType(f"expected (name, version) pairs, got the str {definitions!r}")
    wanted: dict[tuple[str, int, str | None], None] = {}
    for entry in definitions:
        fingerprint = entry[2] if len(entry) == 3 else None
        wanted[(str(entry[0]), int(entry[1]), fingerprint)] = None
    return list(wanted)


def pinned_elsewhere(fingerprint: str | None, wanted: str | None) -> bool:
    """Whether a saga pinned to table ``fingerprint`` must not be claimed by a worker
    serving table ``wanted`` of its (name, version). Unpinned sagas (written before
    fingerprints) run on whatever table is registered."""
    return fingerprint is not None and wanted is not None and fingerprint != wanted


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) matching exactly the strings starting with
    ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def ids(saga_ids: Collection[str]) -> builtins.list[str]:
    """Saga ids as a list without repeats; one bare ``str`` is refused, not read as a
    collection of one-character ids."""
    if isinstance(saga_ids, str):
        raise InvalidArgumentType(f"expected a collection of saga ids, got the str {saga_ids!r}")
    return list(dict.fromkeys(saga_ids))
