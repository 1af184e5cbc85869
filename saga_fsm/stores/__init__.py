"""Snapshot stores: one Protocol, three implementations, opened by URL."""

from typing import TYPE_CHECKING, Any

from saga_fsm.stores._protocol import QuarantinedSaga, SnapshotStore
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
    "MemoryStore",
    "PostgresStore",
    "QuarantinedSaga",
    "SnapshotStore",
    "SqliteStore",
    "open_store",
]
