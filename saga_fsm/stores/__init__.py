"""Snapshot stores: one Protocol, three implementations, opened by URL; ``SagaQueries``
is the read side a console pages through."""

from saga_fsm.stores._protocol import SnapshotStore
from saga_fsm.stores._queries import (
    PageKey,
    SagaFilter,
    SagaPage,
    SagaQueries,
    SagaRow,
    StateCount,
)
from saga_fsm.stores.memory import MemoryStore
from saga_fsm.stores.postgres import PostgresStore
from saga_fsm.stores.sqlite import SqliteStore
from saga_fsm.stores.url import DEFAULT_STORE_URL, open_store

__all__ = [
    "DEFAULT_STORE_URL",
    "MemoryStore",
    "PageKey",
    "PostgresStore",
    "SagaFilter",
    "SagaPage",
    "SagaQueries",
    "SagaRow",
    "SnapshotStore",
    "SqliteStore",
    "StateCount",
    "open_store",
]
