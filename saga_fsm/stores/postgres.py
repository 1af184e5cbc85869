"""The production store: PostgreSQL through psycopg 3 and a ``psycopg_pool`` pool.

Each create and each save is ONE SQL statement: data-modifying CTEs write the snapshot
row and its history rows together, guarded by the optimistic version. A single
statement is atomic on its own, so a write made alone runs in autocommit mode (no
BEGIN, no COMMIT): one network round trip per transition. Writes of sagas driven at
the same time are group-committed (see ``_group``): the ones that queue up while a
write is in flight go together, each still its own statement with its own outcome, in
one transaction sent in one round trip (pipeline mode) and committed once. Loads,
lists and the lease operations (``claim_due`` with ``FOR UPDATE SKIP LOCKED``,
``acquire``, ``renew``, ``release``) are one statement each.

The snapshot is a JSONB document written by the project's codec (never pickle); the
other columns copy fields out of it so SQL can filter, order and find due work.
JSONB keeps numbers as ``numeric``: a float whose text uses an exponent of 16 or more
(``1e16``) comes back as an int, and strings may not contain ``\\u0000``.

Table names are unqualified, so the connection's ``search_path`` picks the schema.
Driver errors never leave this module raw: they become ``StoreError`` (or
``ConcurrencyConflict`` for a duplicate saga id).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString, TypeAlias

import psycopg
from psycopg import AsyncConnection, errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from saga_fsm._codec import (
    SCHEMA_VERSION,
    converter,
    dumps,
    history_to_dict,
    snapshot_from_json,
    snapshot_to_json,
)
from saga_fsm._errors import (
    ConcurrencyConflict,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StoreError,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores import migrations
from saga_fsm.stores._group import GroupCommit

_MIGRATIONS = migrations.load("postgres")
_CONNECT_TIMEOUT = 10  # seconds, unless the conninfo says otherwise
_PKEY = "saga_fsm_sagas_pkey"
Claimed: TypeAlias = list[Snapshot | SnapshotDecodeError]  # (a method named list shadows it)

# Concurrent workers starting together must not both apply a migration; the key is per
# schema so that isolated schemas (tests, tenants) do not wait for each other.
_MIGRATION_LOCK = """
SELECT pg_advisory_xact_lock(
    hashtextextended('saga_fsm.migrations:' || coalesce(current_schema(), ''), 0))
"""
_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS saga_fsm_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# History rows arrive as one JSONB array; WITH ORDINALITY keeps their order in ``id``.
_HISTORY_ROWS = """
ROWS FROM (jsonb_to_recordset(%(history)s)
           AS (from_state text, to_state text, trigger text, at timestamptz, detail jsonb))
    WITH ORDINALITY AS h(from_state, to_state, trigger, at, detail, ord)
"""

# ON CONFLICT on the idempotency key returns the existing saga in the same statement;
# a clash on saga_id still raises UniqueViolation, which becomes ConcurrencyConflict.
_CREATE = f"""
WITH new AS (
    INSERT INTO saga_fsm_sagas (
        saga_id, definition, definition_version, state, version, snapshot, correlation_id,
        idempotency_key, wake_at, due_at, lease_owner, lease_expires_at, created_at,
        updated_at)
    VALUES (
        %(saga_id)s, %(definition)s, %(definition_version)s, %(state)s, 1, %(snapshot)s,
        %(correlation_id)s, %(idempotency_key)s, %(wake_at)s, %(due_at)s, %(lease_owner)s,
        %(lease_expires_at)s, %(created_at)s, %(updated_at)s)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING saga_id
), appended AS (
    INSERT INTO saga_fsm_history (saga_id, version, from_state, to_state, trigger, at, detail)
    SELECT new.saga_id, 1, h.from_state, h.to_state, h.trigger, h.at, h.detail
    FROM new, {_HISTORY_ROWS}
    ORDER BY h.ord
)
SELECT NULL::text, NULL::text FROM new
UNION ALL
SELECT s.saga_id, s.snapshot::text FROM saga_fsm_sagas s
WHERE s.idempotency_key = %(idempotency_key)s AND NOT EXISTS (SELECT FROM new)
"""

# The last SELECT reads the statement's snapshot, i.e. the version before this UPDATE:
# enough to tell "no such saga" from "someone else saved first" without a second trip.
# The idempotency key is a fact of creation: a save never moves it.
_SAVE = f"""
WITH updated AS (
    UPDATE saga_fsm_sagas SET
        definition = %(definition)s, definition_version = %(definition_version)s,
        state = %(state)s, version = %(version)s, snapshot = %(snapshot)s,
        correlation_id = %(correlation_id)s, wake_at = %(wake_at)s, due_at = %(due_at)s,
        lease_owner = %(lease_owner)s, lease_expires_at = %(lease_expires_at)s,
        created_at = %(created_at)s, updated_at = %(updated_at)s
    WHERE saga_id = %(saga_id)s AND version = %(expected_version)s
    RETURNING saga_id
), appended AS (
    INSERT INTO saga_fsm_history (saga_id, version, from_state, to_state, trigger, at, detail)
    SELECT updated.saga_id, %(version)s, h.from_state, h.to_state, h.trigger, h.at, h.detail
    FROM updated, {_HISTORY_ROWS}
    ORDER BY h.ord
)
SELECT (SELECT count(*) FROM updated),
       (SELECT version FROM saga_fsm_sagas WHERE saga_id = %(saga_id)s)
"""

_LOAD = "SELECT snapshot::text FROM saga_fsm_sagas WHERE saga_id = %s"
_BY_KEY = "SELECT saga_id, snapshot::text FROM saga_fsm_sagas WHERE idempotency_key = %s"
_VERSION = "SELECT version FROM saga_fsm_sagas WHERE saga_id = %s"
# One read: the LEFT JOIN tells "no saga" (no row) from "no history" (a NULL row).
_HISTORY = """
SELECT h.from_state, h.to_state, h.trigger, h.at, h.detail::text
FROM saga_fsm_sagas s LEFT JOIN saga_fsm_history h ON h.saga_id = s.saga_id
WHERE s.saga_id = %s
ORDER BY h.id
"""
# COLLATE "C" orders ids by code point, as the other stores do, whatever the database's
# collation. Each filter combination is its own static statement so the planner can use
# the indexes even in a generic prepared plan.
_LIST_HEAD = "SELECT saga_id, snapshot::text FROM saga_fsm_sagas WHERE true"
_LIST_TAIL = ' ORDER BY created_at, saga_id COLLATE "C" LIMIT %(limit)s'

# -- leases --------------------------------------------------------------------------------
# A lease change must reach the snapshot JSON too (it is the truth), so the JSONB document
# is patched in SQL with the codec's own encoding of the three fields it touches; one
# statement, one round trip. Only documents of the schema_version this release writes are
# patched: anything else (corrupt, or from a newer release) keeps its bytes and is leased
# in the columns only, as MemoryStore leases a row it cannot decode.
_PATCHABLE = "snapshot->>'schema_version' = %(schema_version)s"
_SET_LEASE = f"""
    lease_owner = %(new_owner)s, lease_expires_at = %(expires_at)s,
    version = version + CASE WHEN {_PATCHABLE} THEN %(bump)s ELSE 0 END,
    snapshot = CASE WHEN {_PATCHABLE}
        THEN snapshot || jsonb_build_object(
            'lease_owner', %(new_owner)s::text,
            'lease_expires_at', %(expires_text)s::text,
            'version', version + %(bump)s)
        ELSE snapshot END
"""
# SKIP LOCKED: concurrent claimers pass over each other's rows instead of queueing.
_CLAIM_DUE = f"""
WITH due AS (
    SELECT saga_id FROM saga_fsm_sagas
    WHERE due_at <= %(now)s AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
    ORDER BY due_at, saga_id COLLATE "C"
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE saga_fsm_sagas AS s SET {_SET_LEASE}
FROM due WHERE s.saga_id = due.saga_id
RETURNING s.saga_id, s.snapshot::text, s.due_at
"""
# The final SELECT sees the row as it was before this statement: who held the lease.
_ACQUIRE = f"""
WITH leased AS (
    UPDATE saga_fsm_sagas SET {_SET_LEASE}
    WHERE saga_id = %(saga_id)s
      AND (lease_owner IS NULL OR lease_owner = %(worker)s
           OR lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
    RETURNING snapshot::text
)
SELECT (SELECT snapshot FROM leased), s.saga_id, s.lease_owner, s.lease_expires_at
FROM (SELECT) AS one LEFT JOIN saga_fsm_sagas s ON s.saga_id = %(saga_id)s
"""
_ACQUIRE_ATTEMPTS = 3
_RELEASE_OR_RENEW = f"""
UPDATE saga_fsm_sagas SET {_SET_LEASE}
WHERE saga_id = %(saga_id)s AND lease_owner = %(worker)s
RETURNING saga_id
"""


def _aware(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken to be UTC (not the session's time zone)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _like_prefix(status: str) -> str:
    escaped = status.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ":%"


def _history_json(history: Sequence[HistoryEntry]) -> str:
    """History rows as one JSON array; naive times are taken to be UTC."""
    rows = []
    for entry in history:
        at = _aware(entry.at)
        assert at is not None
        rows.append(
            {
                "from_state": entry.from_state,
                "to_state": entry.to_state,
                "trigger": entry.trigger,
                "at": at.isoformat(),
                "detail": entry.detail,
            }
        )
    try:
        return dumps(rows)
    except (TypeError, ValueError):
        # Details the converter would rewrite first (or refuse with its own message).
        for row, entry in zip(rows, history, strict=True):
            row["detail"] = history_to_dict(entry)["detail"]
        return dumps(rows)


def _text(value: str) -> Jsonb:
    """Already-encoded JSON as a ``jsonb`` parameter: encoded once, by the codec."""
    return Jsonb(value, dumps=_as_is)


def _as_is(value: str) -> str:
    return value


def _row_params(snapshot: Snapshot, history: Sequence[HistoryEntry]) -> dict[str, Any]:
    """The parameters of one create or save, the snapshot and history encoded once here,
    before the write joins a batch: a value JSON cannot hold fails its own write."""
    return {
        "saga_id": snapshot.saga_id,
        "definition": snapshot.definition,
        "definition_version": snapshot.definition_version,
        "state": snapshot.state,
        "version": snapshot.version,
        "snapshot": _text(snapshot_to_json(snapshot)),
        "correlation_id": snapshot.correlation_id,
        "idempotency_key": snapshot.idempotency_key,
        "wake_at": _aware(snapshot.wake_at),
        "due_at": _aware(snapshot.due_at),
        "lease_owner": snapshot.lease_owner,
        "lease_expires_at": _aware(snapshot.lease_expires_at),
        "created_at": _aware(snapshot.created_at),
        "updated_at": _aware(snapshot.updated_at),
        "history": _text(_history_json(history)),
    }


def _one_write_may_be_why(err: BaseException) -> bool:
    """Whether a failed batch may have failed for one of its writes (a bad value, a
    constraint, a deadlock): then each write is tried alone. Not for a lost connection or
    a pool timeout, which every write would meet again, one after the other."""
    if isinstance(err, errors.DeadlockDetected | errors.SerializationFailure):
        return True
    return isinstance(err, psycopg.Error) and not isinstance(
        err, psycopg.OperationalError | psycopg.InterfaceError
    )


def _lease_params(
    worker_id: str, new_owner: str | None, expires_at: datetime | None, *, bump: bool
) -> dict[str, Any]:
    return {
        "worker": worker_id,
        "new_owner": new_owner,
        "expires_at": _aware(expires_at),
        # The codec's encoding, so the patched document decodes to exactly this value.
        "expires_text": None if expires_at is None else converter.unstructure(expires_at),
        "bump": 1 if bump else 0,
        "schema_version": str(SCHEMA_VERSION),
    }


def _live(owner: str | None, until: datetime | None, worker_id: str, now: datetime) -> bool:
    """Whether another worker's lease is still running (MemoryStore's rule)."""
    aware_now = _aware(now)
    assert aware_now is not None
    return owner is not None and owner != worker_id and until is not None and until > aware_now


def _describe(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"{user}{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


@contextmanager
def _driver_errors(where: str, action: str) -> Iterator[None]:
    """Raw psycopg errors never reach users: they become ``StoreError``."""
    try:
        yield
    except psycopg.Error as err:
        # The server's message and detail, on one line; the original stays as __cause__.
        text = err.diag.message_primary or str(err)
        if err.diag.message_detail:
            text += f" ({err.diag.message_detail})"
        raise StoreError(f"PostgreSQL {where}: {action} failed: {' '.join(text.split())}") from err


async def _migrate(conn: AsyncConnection[Any], where: str) -> None:
    async with conn.transaction():
        await conn.execute(_MIGRATION_LOCK)
        await conn.execute(_MIGRATIONS_TABLE)
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute("SELECT version FROM saga_fsm_migrations")
        applied = {int(v) for (v,) in await cur.fetchall()}
        for migration in migrations.pending(_MIGRATIONS, applied, f"PostgreSQL {where}"):
            # No parameters: psycopg sends the file as a simple query, several statements.
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO saga_fsm_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


class PostgresStore:
    """A ``SnapshotStore`` on PostgreSQL.

    ``PostgresStore(pool)`` uses a pool the caller opened and will close; ``await
    PostgresStore.open(conninfo)`` creates one that ``close()`` closes. The schema is
    migrated on first use (``migrate()`` does it explicitly)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._owns_pool = False
        self._migrated = False
        # Saves of sagas driven at once share a statement and a commit (see _group).
        Rows = list[tuple[Any, ...]]
        self._saves: GroupCommit[dict[str, Any], Rows] = GroupCommit(
            self._save_many, retry_alone=_one_write_may_be_why
        )
        self._creates: GroupCommit[dict[str, Any], Rows] = GroupCommit(
            self._create_many, retry_alone=_one_write_may_be_why
        )
        self._where = f"pool {pool.name!r}"

    @classmethod
    async def open(cls, conninfo: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connect, migrate, and open a pool of ``min_size``..``max_size`` connections.

        One direct connection comes first: a wrong address or password fails here with
        the server's own reason, instead of a pool timeout half a minute later."""
        try:
            where = _describe(conninfo)
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as err:
            raise StoreError(f"invalid PostgreSQL connection string: {err}") from err
        if "connect_timeout" not in params:
            conninfo = make_conninfo(conninfo, connect_timeout=_CONNECT_TIMEOUT)
        with _driver_errors(where, "connect"):
            async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await _migrate(conn, where)
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            name=f"saga_fsm {where}",
        )
        try:
            with _driver_errors(where, "opening the pool"):
                await pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool)
        store._owns_pool = True
        store._migrated = True
        store._where = where
        return store

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    async def migrate(self) -> None:
        """Apply the migrations this database has not seen yet (safe to run from many
        workers at once: they queue on an advisory lock)."""
        with _driver_errors(self._where, "migrate"):
            async with self._pool.connection() as conn:
                await _migrate(conn, self._where)
        self._migrated = True

    @asynccontextmanager
    async def _errors(self, action: str) -> AsyncIterator[None]:
        if not self._migrated:
            await self.migrate()
        with _driver_errors(self._where, action):
            yield

    async def _query(
        self, query: LiteralString, params: Sequence[Any] | dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """One statement, atomic by itself, in one network round trip.

        A caller's pool may hand out non-autocommit connections, which would wrap the
        statement in BEGIN/COMMIT (three round trips); autocommit is switched on for
        the call (a client-side flag on an idle connection) and restored. Rows are
        tuples whatever row factory the caller's pool sets."""
        async with self._pool.connection() as conn:
            restore = not conn.autocommit
            if restore:
                await conn.set_autocommit(True)
            try:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute(query, params)
                rows: list[tuple[Any, ...]] = await cur.fetchall()
                return rows
            finally:
                if restore:
                    # Fails only on a broken connection, which the pool discards anyway.
                    with suppress(psycopg.Error):
                        await conn.set_autocommit(False)

    # -- SnapshotStore ----------------------------------------------------------------------
    async def create(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry] = ()
    ) -> tuple[Snapshot, bool]:
        stored = snapshot.with_version(1)
        params = _row_params(stored, history)
        # One create per idempotency key (else per saga id) in a batch: ON CONFLICT does
        # not see a row inserted by its own transaction's earlier statement as a conflict
        # to report, it just skips: keep such creates in separate transactions.
        key = stored.saga_id if stored.idempotency_key is None else f"key:{stored.idempotency_key}"
        async with self._errors("create"):
            try:
                rows = await self._creates.submit(key, params)
            except errors.UniqueViolation as err:
                if err.diag.constraint_name != _PKEY:
                    raise
                rows = await self._query(_VERSION, (stored.saga_id,))
                actual = int(rows[0][0]) if rows else None
                raise ConcurrencyConflict(stored.saga_id, 0, actual) from None
            if not rows:
                # The key's owner committed while this statement ran, too late for its
                # snapshot: a fresh read sees it.
                rows = await self._query(_BY_KEY, (stored.idempotency_key,))
        if not rows:
            raise StoreError(
                f"PostgreSQL {self._where}: create of saga {stored.saga_id} lost a race for"
                f" idempotency key {stored.idempotency_key!r} to a saga that is gone; retry"
            )
        if rows[0][0] is None:
            return stored, True
        saga_id, text = rows[0]
        return snapshot_from_json(text, saga_id=saga_id), False

    async def save(
        self, snapshot: Snapshot, history: Sequence[HistoryEntry], *, expected_version: int
    ) -> Snapshot:
        stored = snapshot.with_version(expected_version + 1)
        params = _row_params(stored, history) | {"expected_version": expected_version}
        async with self._errors("save"):
            ((updated, before),) = await self._saves.submit(stored.saga_id, params)
            if updated == 1:
                return stored
            if before is None:
                raise SagaNotFound(stored.saga_id)
            if before == expected_version:
                # Another writer committed while this UPDATE waited on the row lock.
                rows = await self._query(_VERSION, (stored.saga_id,))
                before = rows[0][0] if rows else None
            raise ConcurrencyConflict(stored.saga_id, expected_version, before)

    async def _create_many(self, batch: Sequence[dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
        return await self._pipelined(_CREATE, batch)

    async def _save_many(self, batch: Sequence[dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
        return await self._pipelined(_SAVE, batch)

    async def _pipelined(
        self, query: LiteralString, batch: Sequence[dict[str, Any]]
    ) -> list[list[tuple[Any, ...]]]:
        """Group commit: the writes of several sagas in one transaction, sent in one
        network round trip (pipeline mode), committed once. Each write is still its own
        single statement with its own simple plan (an index lookup by saga id, whatever
        the table's size when the plan was cached); one write alone is the plain
        autocommit statement."""
        if len(batch) == 1:
            return [await self._query(query, batch[0])]
        async with self._pool.connection() as conn:
            restore = not conn.autocommit
            if restore:
                await conn.set_autocommit(True)
            try:
                cursors = []
                # BEGIN/COMMIT as plain statements: conn.transaction() costs more client
                # time than the writes themselves at these sizes.
                try:
                    async with conn.pipeline():
                        await conn.execute("BEGIN")
                        for params in batch:
                            cur = conn.cursor(row_factory=tuple_row)
                            await cur.execute(query, params)
                            cursors.append(cur)
                        await conn.execute("COMMIT")
                except BaseException:
                    # A failed statement aborted the transaction (and the pipeline
                    # skipped the COMMIT): end it, nothing of the batch was written.
                    with suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")
                    raise
                return [await cur.fetchall() for cur in cursors]
            finally:
                if restore:
                    with suppress(psycopg.Error):
                        await conn.set_autocommit(False)

    async def load(self, saga_id: str) -> Snapshot:
        async with self._errors("load"):
            rows = await self._query(_LOAD, (saga_id,))
        if not rows:
            raise SagaNotFound(saga_id)
        return snapshot_from_json(rows[0][0], saga_id=saga_id)

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        async with self._errors("history"):
            rows = await self._query(_HISTORY, (saga_id,))
        if not rows:
            raise SagaNotFound(saga_id)
        return [
            HistoryEntry(src, dst, trigger, at.astimezone(UTC), json.loads(detail))
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
    ) -> list[Snapshot]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        query: LiteralString = _LIST_HEAD
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
            if ":" in state:
                query += " AND state = %(state)s"
            else:
                query += " AND (state = %(state)s OR state LIKE %(prefix)s)"
                params["prefix"] = _like_prefix(state)
        if definition is not None:
            query += " AND definition = %(definition)s"
            params["definition"] = definition
        if updated_before is not None:
            query += " AND updated_at < %(updated_before)s"
            params["updated_before"] = _aware(updated_before)
        async with self._errors("list"):
            rows = await self._query(query + _LIST_TAIL, params)
        return [snapshot_from_json(text, saga_id=saga_id) for saga_id, text in rows]

    # -- leases ---------------------------------------------------------------------------
    async def claim_due(
        self, worker_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> Claimed:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        expires_at = now + timedelta(seconds=lease_seconds)
        params = _lease_params(worker_id, worker_id, expires_at, bump=True)
        params |= {"now": _aware(now), "limit": limit}
        async with self._errors("claim_due"):
            rows = await self._query(_CLAIM_DUE, params)
        rows.sort(key=lambda row: (row[2], row[0]))  # RETURNING has no order
        claimed: Claimed = []
        for saga_id, text, _ in rows:
            try:
                claimed.append(snapshot_from_json(text, saga_id=saga_id))
            except SnapshotDecodeError as err:
                claimed.append(err)
        return claimed

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        expires_at = now + timedelta(seconds=lease_seconds)
        params = _lease_params(worker_id, worker_id, expires_at, bump=True)
        params |= {"saga_id": saga_id, "now": _aware(now)}
        async with self._errors("acquire"):
            for _ in range(_ACQUIRE_ATTEMPTS):
                ((text, found, owner, until),) = await self._query(_ACQUIRE, params)
                if text is not None:
                    return snapshot_from_json(text, saga_id=saga_id)
                if found is None:
                    raise SagaNotFound(saga_id)
                if _live(owner, until, worker_id, now):
                    raise SagaLeased(saga_id, owner, until)
                # Another worker took the lease while this UPDATE waited on the row, after
                # the statement's snapshot was taken: look again.
        raise SagaLeased(saga_id, str(owner), until)

    async def renew(self, saga_id: str, worker_id: str, *, expires_at: datetime) -> bool:
        params = _lease_params(worker_id, worker_id, expires_at, bump=False)
        async with self._errors("renew"):
            return bool(await self._query(_RELEASE_OR_RENEW, params | {"saga_id": saga_id}))

    async def release(self, saga_id: str, worker_id: str) -> None:
        params = _lease_params(worker_id, None, None, bump=False)
        async with self._errors("release"):
            await self._query(_RELEASE_OR_RENEW, params | {"saga_id": saga_id})

    async def close(self) -> None:
        """Close the pool if ``open()`` made it; a caller's pool is the caller's."""
        if self._owns_pool:
            await self._pool.close()
