"""The embedded default store: one SQLite file, standard-library ``sqlite3``.

Every create/save is one ``BEGIN IMMEDIATE`` transaction writing the snapshot row and
its history rows, so a crash leaves either all of a transition or none of it. The
journal is WAL with ``synchronous=FULL``: a transition is on disk before the
orchestrator carries out the next side effect. Several processes may share a file
(SQLite serialises writers; ``busy_timeout`` makes them wait instead of failing).

The methods are ``async`` to satisfy ``SnapshotStore`` but call SQLite directly: each
is a few short statements on a local file, cheaper than a hop to a thread.
"""

from __future__ import annotations

import builtins  # the stores' own ``list`` method shadows it in class bodies
import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

from attrs import evolve

from saga_fsm._codec import dumps, history_to_dict, snapshot_from_json, snapshot_to_json
from saga_fsm._errors import (
    ConcurrencyConflict,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StoreError,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores import migrations
from saga_fsm.stores._protocol import check_limit, ids

_MIGRATIONS = migrations.load("sqlite")
Claimed: TypeAlias = list[Snapshot | SnapshotDecodeError]  # (a method named list shadows it)
_BUSY_TIMEOUT_MS = 10_000

_INSERT = """
INSERT INTO saga_fsm_sagas (
    saga_id, definition, definition_version, state, version, snapshot, correlation_id,
    idempotency_key, wake_at, due_at, lease_owner, lease_expires_at, created_at, updated_at
) VALUES (
    :saga_id, :definition, :definition_version, :state, :version, :snapshot, :correlation_id,
    :idempotency_key, :wake_at, :due_at, :lease_owner, :lease_expires_at, :created_at,
    :updated_at
)
"""
# The idempotency key is a fact of creation: a save never moves it.
_UPDATE = """
UPDATE saga_fsm_sagas SET
    definition = :definition, definition_version = :definition_version, state = :state,
    version = :version, snapshot = :snapshot, correlation_id = :correlation_id,
    wake_at = :wake_at, due_at = :due_at, lease_owner = :lease_owner,
    lease_expires_at = :lease_expires_at, created_at = :created_at, updated_at = :updated_at
WHERE saga_id = :saga_id AND version = :expected_version
"""
_INSERT_HISTORY = """
INSERT INTO saga_fsm_history (saga_id, version, from_state, to_state, trigger, at, detail)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_FILTER = """
WHERE (:state IS NULL OR state = :state OR (:prefix_lo IS NOT NULL
       AND state >= :prefix_lo AND state < :prefix_hi))
  AND (:definition IS NULL OR definition = :definition)
  AND (:updated_before IS NULL OR updated_at < :updated_before)
"""
_LIST = (
    "SELECT saga_id, snapshot FROM saga_fsm_sagas"
    + _FILTER
    + """
ORDER BY created_at, saga_id
LIMIT :limit
"""
)
_LIST_NEWEST = _LIST.replace(
    "ORDER BY created_at, saga_id", "ORDER BY created_at DESC, saga_id DESC"
)
_COUNT = "SELECT count(*) FROM saga_fsm_sagas" + _FILTER

_DUE = """
SELECT saga_id, snapshot FROM saga_fsm_sagas
WHERE due_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
ORDER BY due_at, saga_id
LIMIT :limit
"""
_LEASE_OF = "SELECT snapshot, lease_owner, lease_expires_at FROM saga_fsm_sagas WHERE saga_id = ?"
_SET_LEASE = """
UPDATE saga_fsm_sagas SET snapshot = :snapshot, version = :version, lease_owner = :lease_owner,
    lease_expires_at = :lease_expires_at
WHERE saga_id = :saga_id
"""
_SET_LEASE_COLUMNS = (
    "UPDATE saga_fsm_sagas SET lease_owner = ?, lease_expires_at = ? WHERE saga_id = ?"
)


def utc_text(value: datetime | None) -> str | None:
    """A fixed-width UTC ISO-8601 string, so SQL text order is time order.
    Naive datetimes are taken to be UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _columns(snapshot: Snapshot) -> dict[str, Any]:
    """The row for ``snapshot``: the JSON document is the truth, the other columns copy
    it so SQL can filter and order without decoding."""
    return {
        "saga_id": snapshot.saga_id,
        "definition": snapshot.definition,
        "definition_version": snapshot.definition_version,
        "state": snapshot.state,
        "version": snapshot.version,
        "snapshot": snapshot_to_json(snapshot),
        "correlation_id": snapshot.correlation_id,
        "idempotency_key": snapshot.idempotency_key,
        "wake_at": utc_text(snapshot.wake_at),
        "due_at": utc_text(snapshot.due_at),
        "lease_owner": snapshot.lease_owner,
        "lease_expires_at": utc_text(snapshot.lease_expires_at),
        "created_at": utc_text(snapshot.created_at),
        "updated_at": utc_text(snapshot.updated_at),
    }


def _history_rows(
    saga_id: str, version: int, history: Sequence[HistoryEntry]
) -> list[tuple[Any, ...]]:
    rows = []
    for entry in history:
        encoded = history_to_dict(entry)
        rows.append(
            (
                saga_id,
                version,
                entry.from_state,
                entry.to_state,
                entry.trigger,
                utc_text(entry.at),
                dumps(encoded["detail"]),
            )
        )
    return rows


def _status_range(state: str | None) -> tuple[str | None, str | None]:
    """``running`` also matches ``running:*``: the half-open text range
    [``running:``, ``running;``) under SQLite's byte-order collation."""
    if state is None or ":" in state:
        return None, None
    return state + ":", state + ";"


def _filter_params(
    state: str | None, definition: str | None, updated_before: datetime | None
) -> dict[str, Any]:
    lo, hi = _status_range(state)
    return {
        "state": state,
        "prefix_lo": lo,
        "prefix_hi": hi,
        "definition": definition,
        "updated_before": utc_text(updated_before),
    }


class SqliteStore:
    """A ``SnapshotStore`` in one SQLite file, with one connection.

    ``path`` may be ``":memory:"`` (gone when closed). The parent directory must exist:
    creating directories is the caller's decision."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StoreError(
                    f"cannot open SQLite database {self.path}: directory {parent} does not exist"
                )
        # One connection shared by whichever thread runs the event loop; the lock keeps
        # two threads from interleaving transactions on it.
        self._lock = threading.Lock()
        with self._errors("open"):
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with self._errors("open"):
                self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Raw ``sqlite3`` errors never reach users: they become ``StoreError``."""
        try:
            yield
        except sqlite3.Error as err:
            raise StoreError(f"SQLite store {self.path}: {action} failed: {err}") from err

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` takes the write lock up front, so a read-then-write
        sequence cannot be overtaken by another process between the two."""
        with self._lock, self._errors(action):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction("migrate") as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS saga_fsm_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM saga_fsm_migrations")}
            for migration in migrations.pending(_MIGRATIONS, applied, f"SQLite {self.path}"):
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO saga_fsm_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, utc_text(datetime.now(UTC))),
                )

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        with self._lock, self._errors("read"):
            return self._conn.execute(sql, params).fetchall()

    @staticmethod
    def _version(conn: sqlite3.Connection, saga_id: str) -> int | None:
        row = conn.execute(
            "SELECT version FROM saga_fsm_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    # -- SnapshotStore ----------------------------------------------------------------------
    async def create(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry] = ()
    ) -> tuple[Snapshot, bool]:
        stored = snapshot.with_version(1)
        # Encode before the transaction: a value JSON cannot hold changes nothing.
        row = _columns(stored)
        rows = _history_rows(stored.saga_id, 1, history)
        with self._transaction("create") as conn:
            if stored.idempotency_key is not None:
                found = conn.execute(
                    "SELECT saga_id, snapshot FROM saga_fsm_sagas WHERE idempotency_key = ?",
                    (stored.idempotency_key,),
                ).fetchone()
                if found is not None:
                    return snapshot_from_json(found[1], saga_id=found[0]), False
            actual = self._version(conn, stored.saga_id)
            if actual is not None:
                raise ConcurrencyConflict(stored.saga_id, 0, actual)
            conn.execute(_INSERT, row)
            conn.executemany(_INSERT_HISTORY, rows)
        return stored, True

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        stored = snapshot.with_version(expected_version + 1)
        row = _columns(stored) | {"expected_version": expected_version}
        rows = _history_rows(stored.saga_id, stored.version, history)
        with self._transaction("save") as conn:
            if conn.execute(_UPDATE, row).rowcount != 1:
                actual = self._version(conn, stored.saga_id)
                if actual is None:
                    raise SagaNotFound(stored.saga_id)
                raise ConcurrencyConflict(stored.saga_id, expected_version, actual)
            conn.executemany(_INSERT_HISTORY, rows)
        return stored

    async def load(self, saga_id: str) -> Snapshot:
        found = self._read("SELECT snapshot FROM saga_fsm_sagas WHERE saga_id = ?", (saga_id,))
        if not found:
            raise SagaNotFound(saga_id)
        return snapshot_from_json(found[0][0], saga_id=saga_id)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        # One read: the LEFT JOIN tells "no saga" (no row) from "no history" (NULL row).
        rows = self._read(
            "SELECT h.from_state, h.to_state, h.trigger, h.at, h.detail"
            " FROM saga_fsm_sagas s LEFT JOIN saga_fsm_history h ON h.saga_id = s.saga_id"
            " WHERE s.saga_id = ? ORDER BY h.id",
            (saga_id,),
        )
        if not rows:
            raise SagaNotFound(saga_id)
        return [
            HistoryEntry(src, dst, trigger, datetime.fromisoformat(at), json.loads(detail))
            for src, dst, trigger, at, detail in rows
            if src is not None
        ]

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
        rows = self._read(
            _LIST_NEWEST if newest_first else _LIST,
            _filter_params(state, definition, updated_before)
            | {"limit": -1 if limit is None else limit},
        )
        return [snapshot_from_json(text, saga_id=saga_id) for saga_id, text in rows]

    # -- leases ---------------------------------------------------------------------------
    # Read-modify-write inside BEGIN IMMEDIATE: the snapshot JSON is the truth, so a lease
    # change is decoded, evolved and re-encoded by the codec, exactly as MemoryStore does.
    # SQLite admits one writer at a time, so two claimers never lease the same saga.

    @staticmethod
    def _lease(
        conn: sqlite3.Connection,
        saga_id: str,
        text: str,
        owner: str | None,
        expires_at: datetime | None,
        *,
        bump: bool,
    ) -> Snapshot:
        snapshot = snapshot_from_json(text, saga_id=saga_id)
        leased = evolve(
            snapshot,
            lease_owner=owner,
            lease_expires_at=expires_at,
            version=snapshot.version + (1 if bump else 0),
        )
        conn.execute(
            _SET_LEASE,
            {
                "snapshot": snapshot_to_json(leased),
                "version": leased.version,
                "lease_owner": owner,
                "lease_expires_at": utc_text(expires_at),
                "saga_id": saga_id,
            },
        )
        return leased

    async def claim_due(
        self, worker_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> Claimed:
        check_limit(limit)
        expires_at = now + timedelta(seconds=lease_seconds)
        claimed: Claimed = []
        with self._transaction("claim_due") as conn:
            due = conn.execute(_DUE, {"now": utc_text(now), "limit": limit}).fetchall()
            for saga_id, text in due:
                try:
                    claimed.append(
                        self._lease(conn, saga_id, text, worker_id, expires_at, bump=True)
                    )
                except SnapshotDecodeError as err:
                    # Leased all the same, so it is not handed out again in a tight loop.
                    conn.execute(_SET_LEASE_COLUMNS, (worker_id, utc_text(expires_at), saga_id))
                    claimed.append(err)
        return claimed

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        with self._transaction("acquire") as conn:
            row = conn.execute(_LEASE_OF, (saga_id,)).fetchone()
            if row is None:
                raise SagaNotFound(saga_id)
            text, owner, expires = row
            now_text = utc_text(now)
            assert now_text is not None
            live = expires is not None and expires > now_text
            if owner is not None and owner != worker_id and live:
                raise SagaLeased(saga_id, owner, datetime.fromisoformat(expires))
            expires_at = now + timedelta(seconds=lease_seconds)
            return self._lease(conn, saga_id, text, worker_id, expires_at, bump=True)

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        held = set()
        wanted = ids(saga_ids)
        with self._transaction("renew_leases") as conn:
            for saga_id in wanted:
                row = conn.execute(_LEASE_OF, (saga_id,)).fetchone()
                if row is not None and row[1] == worker_id:
                    self._lease(conn, saga_id, row[0], worker_id, expires_at, bump=False)
                    held.add(saga_id)
        return held

    async def release(self, saga_id: str, worker_id: str) -> None:
        with self._transaction("release") as conn:
            row = conn.execute(_LEASE_OF, (saga_id,)).fetchone()
            if row is not None and row[1] == worker_id:
                self._lease(conn, saga_id, row[0], None, None, bump=False)

    async def close(self) -> None:
        with self._lock:
            self._conn.close()

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        check_limit(limit)
        # A range on the primary key (an index seek; SQLite's LIKE is case-insensitive and
        # skips the index), then the exact test, since ids are compared byte by byte.
        rows = self._read(
            "SELECT saga_id FROM saga_fsm_sagas WHERE saga_id >= :prefix"
            " AND saga_id < :prefix || char(1114111)"
            " AND substr(saga_id, 1, length(:prefix)) = :prefix ORDER BY saga_id LIMIT :limit",
            {"prefix": prefix, "limit": limit},
        )
        return [saga_id for (saga_id,) in rows]

    async def count(
        self,
        *,
        state: str | None = None,
        definition: str | None = None,
        updated_before: datetime | None = None,
    ) -> int:
        ((found,),) = self._read(_COUNT, _filter_params(state, definition, updated_before))
        return int(found)


def _statements(script: str) -> Iterator[str]:
    """Split a migration file into statements (``sqlite3`` runs one at a time, and
    ``executescript`` would commit our transaction half-way)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if _strip_comments(buffer):
                yield buffer
            buffer = ""
    if _strip_comments(buffer.rstrip(";")):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()!r}")


def _strip_comments(sql: str) -> str:
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return "".join(lines).strip(" \t;")
