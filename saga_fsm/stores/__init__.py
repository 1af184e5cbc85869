"""Snapshot stores: one Protocol, three implementations, opened by URL."""

from saga_fsm.stores._protocol import QuarantinedSaga, SnapshotStore
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.postgres import PostgresStore
from saga_fsm.stores.sqlite import SqliteStore
from saga_fsm.stores.url import DEFAULT_STORE_URL, open_store

__all__ = [
    "DEFAULT_STORE_URL",
    "MemoryStore",
    "PostgresStore",
    "QuarantinedSaga",
    "SnapshotStore",
    "SqliteStore",
    "open_store",
]
