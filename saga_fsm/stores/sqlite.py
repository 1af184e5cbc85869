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

import asyncio
import builtins  # the store's own ``list`` method shadows it in the class body
import inspect
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from saga_fsm._codec import (
    dumps,
    history_to_dict,
    request_fingerprint,
    snapshot_from_json,
    snapshot_or_error,
    snapshot_to_json,
)
from saga_fsm._errors import (
    ConcurrencyConflict,
    IdempotencyKeyReused,
    InvalidArgument,
    NotQuarantined,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StepFailed,
    StoreError,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores import migrations
from saga_fsm.stores._outbox import OutboxEntry, OutboxMessage, check_claim
from saga_fsm.stores._protocol import (
    LIVE_ELSEWHERE_SQL,
    LIVE_SQL,
    UNFINISHED_STATUSES,
    Lease,
    QuarantinedSaga,
    Served,
    check_limit,
    ids,
    lease_or_none,
    served,
)
from saga_fsm.stores._queries import (
    EVERYTHING,
    PageKey,
    SagaFilter,
    SagaPage,
    StateCount,
    check_page_limit,
    decoded_row,
    paged,
    sql_conditions,
)
from saga_fsm.stores._transact import ActionRaised, Write

T = TypeVar("T")
_MIGRATIONS = migrations.load("sqlite")
Claimed: TypeAlias = list[Snapshot | SnapshotDecodeError]  # (a method named list shadows it)
_BUSY_TIMEOUT_MS = 10_000

_INSERT = """
INSERT INTO saga_fsm_sagas (
    saga_id, definition, definition_version, state, version, snapshot, correlation_id,
    idempotency_key, wake_at, due_at, lease_owner, lease_expires_at, created_at, updated_at,
    request_fingerprint
) VALUES (
    :saga_id, :definition, :definition_version, :state, :version, :snapshot, :correlation_id,
    :idempotency_key, :wake_at, :due_at, :lease_owner, :lease_expires_at, :created_at,
    :updated_at, :request_fingerprint
)
"""
# The idempotency key is a fact of creation: a save never moves it. The lease is left
# as it is, and dropped once the saga is no longer due (finished or parked).
_UPDATE = """
UPDATE saga_fsm_sagas SET
    definition = :definition, definition_version = :definition_version, state = :state,
    version = :version, snapshot = :snapshot, correlation_id = :correlation_id,
    wake_at = :wake_at, due_at = :due_at,
    lease_owner = CASE WHEN :due_at IS NULL THEN NULL ELSE lease_owner END,
    lease_expires_at = CASE WHEN :due_at IS NULL THEN NULL ELSE lease_expires_at END,
    created_at = :created_at, updated_at = :updated_at
WHERE saga_id = :saga_id AND version = :expected_version
"""
_INSERT_HISTORY = """
INSERT INTO saga_fsm_history (saga_id, version, from_state, to_state, trigger, at, detail)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
# Each filter is added only when given, so that SQLite picks the index that fits.
_LIST_HEAD = "SELECT saga_id, snapshot, version FROM saga_fsm_sagas WHERE true"
_OLDEST_FIRST = " ORDER BY created_at, saga_id"
# Unfinished sagas as ranges of the state index (one per status, its "status:*" too), so
# that finished ones, however many, are never read. Statuses are fixed words: no quoting.
_UNFINISHED = " AND ({})".format(
    " OR ".join(f"(state >= '{s}' AND state < '{s};')" for s in UNFINISHED_STATUSES)
)

# Leases are columns: a claim, an acquire, a renewal or a release never writes the
# snapshot (a claim and an acquire read it, to hand it out).
_CLAIM = """
UPDATE saga_fsm_sagas SET lease_owner = :worker, lease_expires_at = :expires_at,
    version = version + 1
WHERE saga_id IN (
    SELECT saga_id FROM saga_fsm_sagas
    WHERE due_at <= :now AND NOT {live}
      AND quarantine IS NULL AND (definition, definition_version) IN ({served})
      AND ({tables})
    ORDER BY due_at, saga_id
    LIMIT :limit)
RETURNING saga_id, snapshot, version, due_at
""".replace("{live}", LIVE_SQL.format(now=":now"))
# A saga pinned to another table of its (name, version) is left for a worker that has
# that table (an undecodable row has no pin: it is claimed, to be quarantined).
_PINNED = (
    "(definition = :name{n} AND definition_version = :version{n} AND (:table{n} IS NULL"
    " OR NOT json_valid(snapshot)"
    " OR coalesce(json_extract(snapshot, '$.definition_fingerprint'), :table{n}) = :table{n}))"
)
_ACQUIRE = """
UPDATE saga_fsm_sagas SET lease_owner = :worker, lease_expires_at = :expires_at,
    version = version + 1
WHERE saga_id = :saga_id AND NOT {live}
RETURNING snapshot, version
""".replace("{live}", LIVE_ELSEWHERE_SQL.format(now=":now", worker=":worker"))
_LEASE_OF = "SELECT lease_owner, lease_expires_at FROM saga_fsm_sagas WHERE saga_id = ?"
_INSERT_OUTBOX = """
INSERT INTO saga_fsm_outbox (saga_id, channel, message_id, body) VALUES (?, ?, ?, ?)
ON CONFLICT (message_id) DO NOTHING
"""
# The oldest unpublished row of each saga, unless a live relay holds it.
_CLAIM_OUTBOX = """
UPDATE saga_fsm_outbox SET lease_owner = :relay, lease_expires_at = :expires_at
WHERE seq IN (
    SELECT o.seq FROM saga_fsm_outbox o
    WHERE o.published_at IS NULL
      AND NOT (o.lease_owner IS NOT NULL AND o.lease_expires_at > :now)
      AND NOT EXISTS (
        SELECT 1 FROM saga_fsm_outbox e
        WHERE e.saga_id = o.saga_id AND e.published_at IS NULL AND e.seq < o.seq)
    ORDER BY o.seq LIMIT :limit)
RETURNING seq, saga_id, channel, message_id, body
"""
_OUTBOX_COLUMNS = "seq, saga_id, channel, message_id, body, published_at"


def _outbox_rows(outbox: Sequence[OutboxMessage]) -> list[tuple[str, str, str, str]]:
    return [(m.saga_id, m.channel, m.message_id, m.body) for m in outbox]


def _outbox_entry(row: Sequence[Any]) -> OutboxEntry:
    published = None if len(row) < 6 or row[5] is None else _time(row[5])
    return OutboxEntry(int(row[0]), OutboxMessage(row[1], row[2], row[3], row[4]), published)


def utc_text(value: datetime | None) -> str | None:
    """A fixed-width UTC ISO-8601 string, so SQL text order is time order.
    Naive datetimes are taken to be UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _columns(snapshot: Snapshot) -> dict[str, Any]:
    """The row for ``snapshot``: the JSON document is the saga's state, the other
    columns copy it so SQL can filter and order without decoding (and ``version`` is
    the store's own)."""
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
        "created_at": utc_text(snapshot.created_at),
        "updated_at": utc_text(snapshot.updated_at),
    }


def _new_row(snapshot: Snapshot, lease: Lease | None = None) -> dict[str, Any]:
    """The row a create inserts: the columns, its lease, and what its idempotency key
    stands for."""
    key = snapshot.idempotency_key
    leased = lease is not None and snapshot.due_at is not None
    return _columns(snapshot) | {
        "request_fingerprint": None if key is None else request_fingerprint(snapshot),
        "lease_owner": lease.owner if leased and lease else None,
        "lease_expires_at": utc_text(lease.expires_at) if leased and lease else None,
    }


def _versioned(saga_id: str, text: str, version: int) -> Snapshot | SnapshotDecodeError:
    found = snapshot_or_error(text, saga_id=saga_id)
    return found if isinstance(found, SnapshotDecodeError) else found.with_version(version)


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


def _filters(
    state: str | None,
    definition: str | None,
    updated_before: datetime | None,
    unfinished: bool,
    parent: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The WHERE conditions (to append to ``WHERE true``) and parameters of a listing;
    each only when given, so that SQLite picks the index that fits."""
    where = ""
    params: dict[str, Any] = {}
    if state is not None:
        lo, hi = _status_range(state)
        where += " AND (state = :state OR (state >= :lo AND state < :hi))"
        params |= {"state": state, "lo": lo, "hi": hi}
    if definition is not None:
        where += " AND definition = :definition"
        params["definition"] = definition
    if updated_before is not None:
        where += " AND updated_at < :updated_before"
        params["updated_before"] = utc_text(updated_before)
    if unfinished:
        where += _UNFINISHED
    if parent is not None:
        # Child sagas: a few per parent, found by the id they start with (the primary
        # key's range), then by the parent named in the snapshot.
        where += " AND saga_id >= :parent_lo AND saga_id < :parent_hi"
        where += " AND json_extract(snapshot, '$.parent_id') = :parent"
        params |= {"parent": parent, "parent_lo": parent + ":", "parent_hi": parent + ";"}
    return where, params


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
        # One connection, used by one thread of its own: sqlite3 calls block (on the
        # disk, or for seconds on another process's write lock), and must never block
        # the event loop, where the leases of every other saga are being renewed. The
        # lock keeps the opening thread and that one from interleaving.
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="saga_fsm-sqlite")
        self._closed = False
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
            self._thread.shutdown()
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

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run ``work`` (sqlite3 calls) in the connection's thread, the loop free."""
        if self._closed:
            raise StoreError(f"SQLite store {self.path}: the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def _write(self, action: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one ``BEGIN IMMEDIATE`` transaction, off the event loop."""

        def transaction() -> T:
            with self._transaction(action) as conn:
                return work(conn)

        return await self._off_loop(transaction)

    async def _read(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        def read() -> list[Any]:
            with self._lock, self._errors("read"):
                return self._conn.execute(sql, params).fetchall()

        return await self._off_loop(read)

    @staticmethod
    def _version(conn: sqlite3.Connection, saga_id: str) -> int | None:
        row = conn.execute(
            "SELECT version FROM saga_fsm_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    # -- SnapshotStore ----------------------------------------------------------------------
    def _create_in(
        self,
        conn: sqlite3.Connection,
        stored: Snapshot,
        row: dict[str, Any],
        history: list[Any],
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[Snapshot, bool]:
        key = stored.idempotency_key
        if key is not None:
            found = conn.execute(
                "SELECT saga_id, snapshot, request_fingerprint, version FROM saga_fsm_sagas"
                " WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
            if found is not None:
                # A row from before fingerprints were kept (NULL) cannot be compared.
                if found[2] is not None and found[2] != row["request_fingerprint"]:
                    raise IdempotencyKeyReused(key, found[0])
                existing = snapshot_from_json(found[1], saga_id=found[0])
                return existing.with_version(found[3]), False
        actual = self._version(conn, stored.saga_id)
        if actual is not None:
            raise ConcurrencyConflict(stored.saga_id, 0, actual)
        conn.execute(_INSERT, row)
        conn.executemany(_INSERT_HISTORY, history)
        if outbox:
            conn.executemany(_INSERT_OUTBOX, _outbox_rows(outbox))
        return stored, True

    async def create(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry] = (),
        *,
        lease: Lease | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[Snapshot, bool]:
        stored = snapshot.with_version(1)
        # Encode before the transaction: a value JSON cannot hold changes nothing.
        row = _new_row(stored, lease)
        rows = _history_rows(stored.saga_id, 1, history)
        return await self._write(
            "create", lambda conn: self._create_in(conn, stored, row, rows, outbox)
        )

    async def create_many(self, snapshots: Sequence[Snapshot]) -> builtins.list[Snapshot]:
        stored = [snapshot.with_version(1) for snapshot in snapshots]
        rows = [_new_row(s) for s in stored]

        def create_all(conn: sqlite3.Connection) -> builtins.list[Snapshot]:
            return [
                self._create_in(conn, s, row, [])[0] for s, row in zip(stored, rows, strict=True)
            ]

        return await self._write("create_many", create_all)

    async def save(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry],
        *,
        expected_version: int,
        outbox: Sequence[OutboxMessage] = (),
    ) -> Snapshot:
        stored = snapshot.with_version(expected_version + 1)
        row = _columns(stored) | {"expected_version": expected_version}
        rows = _history_rows(stored.saga_id, stored.version, history)

        return await self._write(
            "save", lambda conn: self._update_in(conn, stored, expected_version, row, rows, outbox)
        )

    def _update_in(
        self,
        conn: sqlite3.Connection,
        stored: Snapshot,
        expected_version: int,
        row: dict[str, Any],
        history: list[Any],
        outbox: Sequence[OutboxMessage] = (),
    ) -> Snapshot:
        if conn.execute(_UPDATE, row).rowcount != 1:
            actual = self._version(conn, stored.saga_id)
            if actual is None:
                raise SagaNotFound(stored.saga_id)
            raise ConcurrencyConflict(stored.saga_id, expected_version, actual)
        conn.executemany(_INSERT_HISTORY, history)
        if outbox:
            conn.executemany(_INSERT_OUTBOX, _outbox_rows(outbox))
        return stored

    async def transact(self, call: Callable[[Any], Any], write: Callable[[Any], Write]) -> Snapshot:
        # All of it on the store's one thread, in one BEGIN IMMEDIATE: the connection
        # serves no other saga until the commit, so nothing else lands in the transaction.
        def transaction(conn: sqlite3.Connection) -> Snapshot:
            result = call(conn)
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # never awaited: no "never awaited" warning either
                raise ActionRaised(
                    StepFailed(
                        "a transactional action on SQLite runs on the store's thread, inside"
                        " its transaction: it must be a plain function, not a coroutine"
                        " function",
                        retryable=False,
                    )
                )
            stored, history, expected, outbox = write(result)
            row = _columns(stored) | {"expected_version": expected}
            rows = _history_rows(stored.saga_id, stored.version, history)
            return self._update_in(conn, stored, expected, row, rows, outbox)

        return await self._write("transact", transaction)

    # -- outbox -----------------------------------------------------------------------------
    async def claim_outbox(
        self, relay_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> builtins.list[OutboxEntry]:
        check_claim(relay_id, lease_seconds, limit)
        params = {
            "relay": relay_id,
            "now": utc_text(now),
            "expires_at": utc_text(now + timedelta(seconds=lease_seconds)),
            "limit": limit,
        }

        def claim(conn: sqlite3.Connection) -> builtins.list[OutboxEntry]:
            rows = conn.execute(_CLAIM_OUTBOX, params).fetchall()
            return sorted((_outbox_entry(r) for r in rows), key=lambda e: e.seq)

        return await self._write("claim_outbox", claim)

    async def mark_published(
        self, seqs: Sequence[int], relay_id: str, *, now: datetime
    ) -> builtins.list[int]:
        wanted = [int(seq) for seq in seqs]
        if not wanted:
            return []

        def mark(conn: sqlite3.Connection) -> builtins.list[int]:
            marks = ",".join("?" * len(wanted))
            rows = conn.execute(
                "UPDATE saga_fsm_outbox SET published_at = ?, lease_owner = NULL,"
                f" lease_expires_at = NULL WHERE seq IN ({marks}) AND lease_owner = ?"
                " AND published_at IS NULL RETURNING seq",
                (utc_text(now), *wanted, relay_id),
            ).fetchall()
            return sorted(int(r[0]) for r in rows)

        return await self._write("mark_published", mark)

    async def outbox(
        self, *, saga_id: str | None = None, unpublished: bool = False
    ) -> builtins.list[OutboxEntry]:
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM saga_fsm_outbox WHERE true"
        params: list[Any] = []
        if saga_id is not None:
            sql += " AND saga_id = ?"
            params.append(saga_id)
        if unpublished:
            sql += " AND published_at IS NULL"
        rows = await self._read(sql + " ORDER BY seq", params)
        return [_outbox_entry(r) for r in rows]

    async def load(self, saga_id: str) -> Snapshot:
        found = await self._read(
            "SELECT snapshot, version FROM saga_fsm_sagas WHERE saga_id = ?", (saga_id,)
        )
        if not found:
            raise SagaNotFound(saga_id)
        return snapshot_from_json(found[0][0], saga_id=saga_id).with_version(found[0][1])

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        # One read: the LEFT JOIN tells "no saga" (no row) from "no history" (NULL row).
        rows = await self._read(
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
        unfinished: bool = False,
        newest_first: bool = False,
        parent: str | None = None,
    ) -> list[Snapshot | SnapshotDecodeError]:
        check_limit(limit)
        where, params = _filters(state, definition, updated_before, unfinished, parent)
        order = " ORDER BY created_at DESC, saga_id DESC" if newest_first else _OLDEST_FIRST
        rows = await self._read(
            _LIST_HEAD + where + order + " LIMIT :limit",
            params | {"limit": -1 if limit is None else limit},
        )
        return [_versioned(saga_id, text, version) for saga_id, text, version in rows]

    # -- quarantine -------------------------------------------------------------------------
    async def quarantine(self, saga_id: str, reason: str, *, now: datetime) -> None:
        changed = await self._write(
            "quarantine",
            lambda conn: (
                conn.execute(
                    "UPDATE saga_fsm_sagas SET quarantine = ?, quarantined_at = ?,"
                    " lease_owner = NULL, lease_expires_at = NULL WHERE saga_id = ?",
                    (reason, utc_text(now), saga_id),
                ).rowcount
            ),
        )
        if changed != 1:
            raise SagaNotFound(saga_id)

    async def unquarantine(self, saga_id: str) -> Snapshot:
        return await self._write("unquarantine", partial(self._unquarantine, saga_id))

    @staticmethod
    def _unquarantine(saga_id: str, conn: sqlite3.Connection) -> Snapshot:
        found = conn.execute(
            "SELECT snapshot, quarantine, version FROM saga_fsm_sagas WHERE saga_id = ?",
            (saga_id,),
        ).fetchone()
        if found is None:
            raise SagaNotFound(saga_id)
        if found[1] is None:
            raise NotQuarantined(saga_id)
        snapshot = snapshot_from_json(found[0], saga_id=saga_id).with_version(found[2])
        conn.execute(
            "UPDATE saga_fsm_sagas SET quarantine = NULL, quarantined_at = NULL WHERE saga_id = ?",
            (saga_id,),
        )
        return snapshot

    async def list_quarantined(self, *, limit: int | None = None) -> builtins.list[QuarantinedSaga]:
        check_limit(limit)
        rows = await self._read(
            "SELECT saga_id, quarantine, quarantined_at FROM saga_fsm_sagas"
            " WHERE quarantine IS NOT NULL ORDER BY quarantined_at, saga_id LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [QuarantinedSaga(i, why, datetime.fromisoformat(at)) for i, why, at in rows]

    # -- leases: columns only ---------------------------------------------------------------
    # SQLite admits one writer at a time, so two claimers never lease the same saga.

    async def claim_due(
        self,
        worker_id: str,
        *,
        now: datetime,
        lease_seconds: float,
        limit: int,
        definitions: Collection[Served],
    ) -> Claimed:
        check_limit(limit)
        wanted = served(definitions)
        if not wanted:
            return []
        expires_at = now + timedelta(seconds=lease_seconds)
        params: dict[str, Any] = {
            "now": utc_text(now),
            "limit": limit,
            "worker": worker_id,
            "expires_at": utc_text(expires_at),
        }
        for n, (name, version, table) in enumerate(wanted):
            params |= {f"name{n}": name, f"version{n}": version, f"table{n}": table}
        query = _CLAIM.replace(
            "{served}", ", ".join(f"(:name{n}, :version{n})" for n in range(len(wanted)))
        ).replace("{tables}", " OR ".join(_PINNED.format(n=n) for n in range(len(wanted))))
        due = await self._write("claim_due", lambda conn: conn.execute(query, params).fetchall())
        # RETURNING gives no order: the due order, as claimed. A row that cannot be
        # decoded stays leased all the same, so it is not handed out again in a tight loop.
        due.sort(key=lambda row: (row[3], row[0]))
        return [_versioned(saga_id, text, version) for saga_id, text, version, _ in due]

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        expires_at = now + timedelta(seconds=lease_seconds)
        params = {
            "saga_id": saga_id,
            "worker": worker_id,
            "now": utc_text(now),
            "expires_at": utc_text(expires_at),
        }

        def take(conn: sqlite3.Connection) -> Any:
            row = conn.execute(_ACQUIRE, params).fetchone()
            if row is None:
                held = conn.execute(_LEASE_OF, (saga_id,)).fetchone()
                if held is None:
                    raise SagaNotFound(saga_id)
                raise SagaLeased(saga_id, held[0], _time(held[1]))
            return row

        row = await self._write("acquire", take)
        return snapshot_from_json(row[0], saga_id=saga_id).with_version(row[1])

    async def lease(self, saga_id: str) -> Lease | None:
        found = await self._read(_LEASE_OF, (saga_id,))
        if not found:
            raise SagaNotFound(saga_id)
        owner, expires = found[0]
        return lease_or_none(owner, None if expires is None else _time(expires))

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        wanted = ids(saga_ids)

        def renew(conn: sqlite3.Connection) -> set[str]:
            held: set[str] = set()
            for start in range(0, len(wanted), 500):  # SQLite's bound parameters are few
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    "UPDATE saga_fsm_sagas SET lease_expires_at = ?"
                    f" WHERE lease_owner = ? AND saga_id IN ({marks}) RETURNING saga_id",
                    (utc_text(expires_at), worker_id, *chunk),
                ).fetchall()
                held.update(saga_id for (saga_id,) in rows)
            return held

        return await self._write("renew_leases", renew)

    async def release(self, saga_id: str, worker_id: str) -> None:
        await self._write(
            "release",
            lambda conn: conn.execute(
                "UPDATE saga_fsm_sagas SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE saga_id = ? AND lease_owner = ?",
                (saga_id, worker_id),
            ),
        )

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                self._conn.close()

        if not self._closed:
            await self._off_loop(close)
            self._closed = True
            self._thread.shutdown()

    # -- SagaQueries: what an operator's console reads ----------------------------------------
    # Times are fixed-width UTC text, so text comparisons are time comparisons; newest
    # first walks saga_fsm_sagas_created_idx backwards.

    async def page(
        self, where: SagaFilter, *, after: PageKey | None = None, limit: int = 50
    ) -> SagaPage:
        check_page_limit(limit)
        conditions, params = sql_conditions(where, after, _QUERY_SQL, utc_text)
        rows = await self._read(
            "SELECT saga_id, definition, state, created_at, updated_at, snapshot, version"
            f" FROM saga_fsm_sagas WHERE {conditions}"
            " ORDER BY created_at DESC, saga_id DESC LIMIT :limit",
            params | {"limit": limit + 1},
        )
        return paged(
            [
                decoded_row(
                    saga_id, definition, state, _time(created), _time(updated), text, version
                )
                for saga_id, definition, state, created, updated, text, version in rows
            ],
            limit,
        )

    async def counts(self, where: SagaFilter = EVERYTHING) -> builtins.list[StateCount]:
        conditions, params = sql_conditions(where, None, _QUERY_SQL, utc_text)
        rows = await self._read(
            "SELECT definition, state, count(*) FROM saga_fsm_sagas"
            f" WHERE {conditions} GROUP BY definition, state",
            params,
        )
        return sorted(StateCount(d, s, int(n)) for d, s, n in rows)

    async def quarantine_of(self, saga_id: str) -> QuarantinedSaga | None:
        rows = await self._read(
            "SELECT quarantine, quarantined_at FROM saga_fsm_sagas"
            " WHERE saga_id = :saga_id AND quarantine IS NOT NULL",
            {"saga_id": saga_id},
        )
        return QuarantinedSaga(saga_id, rows[0][0], _time(rows[0][1])) if rows else None

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        check_limit(limit)
        # A range on the primary key (an index seek; SQLite's LIKE is case-insensitive and
        # skips the index), then the exact test, since ids are compared byte by byte.
        rows = await self._read(
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
        unfinished: bool = False,
        parent: str | None = None,
    ) -> int:
        where, params = _filters(state, definition, updated_before, unfinished, parent)
        ((found,),) = await self._read(
            "SELECT count(*) FROM saga_fsm_sagas WHERE true" + where, params
        )
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
        raise InvalidArgument(f"incomplete SQL statement in migration: {buffer.strip()!r}")


def _strip_comments(sql: str) -> str:
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return "".join(lines).strip(" \t;")


# One template per SagaFilter field (see sql_conditions); byte-order text comparisons.
_LIVE = ", ".join(f"'{status}'" for status in UNFINISHED_STATUSES)
_QUERY_SQL = {
    "state": "state = :state",
    "status": "(state = :status OR (state >= :status || ':' AND state < :status || ';'))",
    "definition": "definition = :definition",
    "id_prefix": "substr(saga_id, 1, length(:id_prefix)) = :id_prefix",
    "created_from": "created_at >= :created_from",
    "created_before": "created_at < :created_before",
    "updated_from": "updated_at >= :updated_from",
    "stuck_before": "updated_at < :stuck_before"
    f" AND substr(state, 1, instr(state || ':', ':') - 1) IN ({_LIVE})",
    "quarantined": "quarantine IS NOT NULL",  # saga_fsm_sagas_quarantined_idx, partial
    "not_quarantined": "quarantine IS NULL",
    "after": "(created_at, saga_id) < (:after_created, :after_id)",
}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
