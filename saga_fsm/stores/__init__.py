"""Snapshot stores: one Protocol, three implementations, opened by URL."""

from saga_fsm.stores._protocol import SnapshotStore
from saga_fsm.stores.memory import MemoryStore

__all__ = ["MemoryStore", "SnapshotStore"]
