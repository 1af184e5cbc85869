"""Snapshot stores: ``SnapshotStore`` persists snapshots, ``WorkerLeases`` coordinates
workers (``SagaStore`` is both), three implementations, opened by URL; ``SagaQueries``
is the read side a console pages through; ``OutboxStore`` the outbox of remote steps."""

from typing import TYPE_CHECKING, Any

from saga_fsm.stores._outbox import OutboxEntry, OutboxMessage, OutboxStore
from saga_fsm.stores._protocol import (
    Lease,
    QuarantinedSaga,
    SagaStore,
    SnapshotStore,
    WorkerLeases,
)
from saga_fsm.stores._queries import (
    PageKey,
    SagaFilter,
    SagaPage,
    SagaQueries,
    SagaRow,
    StateCount,
)
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.sqlite import SqliteStore
from saga_fsm.stores.url import DEFAULT_STORE_URL, open_store

if TYPE_CHECKING:
    from saga_fsm.stores.postgres import PostgresStore


def __getattr__(name: str) -> Any:
    # psycopg is imported when PostgresStore is first used, not by ``import saga_fsm``.
    if name == "PostgresStore":
        from saga_fsm.stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_STORE_URL",
    "Lease",
    "MemoryStore",
    "OutboxEntry",
    "OutboxMessage",
    "OutboxStore",
    "PageKey",
    "PostgresStore",
    "QuarantinedSaga",
    "SagaFilter",
    "SagaPage",
    "SagaQueries",
    "SagaRow",
    "SagaStore",
    "SnapshotStore",
    "SqliteStore",
    "StateCount",
    "WorkerLeases",
    "open_store",
]
