"""The transactional outbox: commands a transition decided to send, written in the same
transaction as the transition, published later by a relay (saga_fsm.messaging.relay).

A saga says ``running:reserve`` with a remote step in flight if and only if that step's
command is in the outbox. The relay claims rows under a lease (a relay that dies loses
its claim when the lease runs out, and another publishes again with the same message
id), publishes them, and marks them published only once the broker confirmed. Only the
oldest unpublished row of a saga can be claimed: a saga's commands go out in order.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from attrs import frozen

from saga_fsm._errors import InvalidArgument
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores._protocol import Lease


@frozen
class OutboxMessage:
    """One command to send: the envelope's JSON text, with what the store indexes."""

    saga_id: str
    channel: str
    message_id: str
    body: str


@frozen
class OutboxEntry:
    """An outbox row as a relay (or a test) reads it."""

    seq: int
    message: OutboxMessage
    published_at: datetime | None = None


@runtime_checkable
class OutboxStore(Protocol):
    """The outbox half of a store that runs remote steps: ``create`` and ``save`` take
    ``outbox=`` (rows written in the same transaction as the snapshot), and a relay
    claims, publishes and marks them."""

    async def create(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry] = (),
        *,
        lease: Lease | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[Snapshot, bool]:
        """``SnapshotStore.create``, writing ``outbox`` in the same transaction when the
        saga is created (not when its idempotency key names an existing one)."""
        ...

    async def save(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry],
        *,
        expected_version: int,
        outbox: Sequence[OutboxMessage] = (),
    ) -> Snapshot:
        """``SnapshotStore.save``, writing ``outbox`` in the same transaction."""
        ...

    async def claim_outbox(
        self, relay_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> builtins.list[OutboxEntry]:
        """Lease up to ``limit`` unpublished rows, oldest first, to ``relay_id`` until
        ``now + lease_seconds``: rows no live relay holds, each the oldest unpublished
        row of its saga (so at most one per saga)."""
        ...

    async def mark_published(
        self, seqs: Sequence[int], relay_id: str, *, now: datetime
    ) -> builtins.list[int]:
        """Mark rows ``relay_id`` still holds as published; the ones it marked."""
        ...

    async def outbox(
        self, *, saga_id: str | None = None, unpublished: bool = False
    ) -> builtins.list[OutboxEntry]:
        """The outbox rows (of one saga), oldest first: what an operator or a test reads."""
        ...


def check_claim(relay_id: str, lease_seconds: float, limit: int) -> None:
    if not relay_id:
        raise InvalidArgument("a relay needs an id")
    if lease_seconds <= 0:
        raise InvalidArgument(f"lease_seconds must be > 0, got {lease_seconds}")
    if limit < 1:
        raise InvalidArgument(f"limit must be at least 1, got {limit}")
