"""The production store: PostgreSQL through psycopg 3 and a ``psycopg_pool`` pool.

Creates and saves are group-committed (see ``_group``): the writes of sagas driven at
the same time that queue up while a batch is in flight go together in the next one.
A batch, even of one write, is ONE statement in autocommit mode, so one network round
trip and one commit: a jsonb array with an element per write, handed to a function the
schema defines (migration 3), which writes each saga's row and its history rows under
the optimistic version, with single-row statements whose plans are index lookups, and
returns one row per write, in order. Loads, lists and the lease operations
(``claim_due`` with ``FOR UPDATE SKIP LOCKED``, ``acquire``, ``release``) are one
statement each; ``renew_leases`` is one statement per thousand sagas.

The snapshot is a JSONB document written by the project's codec (never pickle); the
other columns copy fields out of it so SQL can filter, order and find due work.
JSONB keeps numbers as ``numeric``: a float whose text uses an exponent of 16 or more
(``1e16``) comes back as an int, and strings may not contain ``\\u0000``.

Table names are unqualified, so the connection's ``search_path`` picks the schema.
Driver errors never leave this module raw: they become ``StoreError`` (or
``ConcurrencyConflict`` for a duplicate saga id).
"""

from __future__ import annotations

import builtins  # the store's own ``list`` method shadows it in the class body
import inspect
import json
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, LiteralString, TypeAlias

import psycopg
from psycopg import AsyncConnection, errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

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
    NotQuarantined,
    SagaLeased,
    SagaNotFound,
    SnapshotDecodeError,
    StoreError,
)
from saga_fsm._snapshot import HistoryEntry, Snapshot
from saga_fsm.stores import migrations
from saga_fsm.stores._group import GroupCommit
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
from saga_fsm.stores._secrets import scrub
from saga_fsm.stores._transact import Write

_MIGRATIONS = migrations.load("postgres")
_CONNECT_TIMEOUT = 10  # seconds, unless the conninfo says otherwise
_PKEY = "saga_fsm_sagas_pkey"
_KEY_REUSED = "SF001"  # raised by saga_fsm_create_batch (migration 4), DETAIL: the saga
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

# Creates and saves go in batches (see ``_group``), each batch ONE statement: a jsonb
# array with one element per write, handed to a function of the schema (migration 3)
# that returns one row per write, in order.
_CREATE = "SELECT created, existing_id, existing_snapshot FROM saga_fsm_create_batch(%s)"
_SAVE = "SELECT saved, found_version FROM saga_fsm_save_batch(%s)"

_LOAD = "SELECT snapshot::text, version FROM saga_fsm_sagas WHERE saga_id = %s"
_INSERT_OUTBOX = """
INSERT INTO saga_fsm_outbox (saga_id, channel, message_id, body) VALUES (%s, %s, %s, %s)
ON CONFLICT (message_id) DO NOTHING
"""
# The oldest unpublished row of each saga, unless a live relay holds it. Under READ
# COMMITTED a row is the oldest only once every earlier one was seen published.
_CLAIM_OUTBOX = """
UPDATE saga_fsm_outbox SET lease_owner = %(relay)s, lease_expires_at = %(expires_at)s
WHERE seq IN (
    SELECT o.seq FROM saga_fsm_outbox o
    WHERE o.published_at IS NULL
      AND NOT (o.lease_owner IS NOT NULL AND o.lease_expires_at > %(now)s)
      AND NOT EXISTS (
        SELECT 1 FROM saga_fsm_outbox e
        WHERE e.saga_id = o.saga_id AND e.published_at IS NULL AND e.seq < o.seq)
    ORDER BY o.seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING seq, saga_id, channel, message_id, body
"""
_MARK_PUBLISHED = """
UPDATE saga_fsm_outbox SET published_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL
WHERE seq = ANY(%(seqs)s) AND lease_owner = %(relay)s AND published_at IS NULL
RETURNING seq
"""
_LEASE_OF = "SELECT lease_owner, lease_expires_at FROM saga_fsm_sagas WHERE saga_id = %s"
_BY_KEY = """
SELECT saga_id, snapshot::text, request_fingerprint FROM saga_fsm_sagas
WHERE idempotency_key = %s
"""
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
_LIST_HEAD = "SELECT saga_id, snapshot::text, version FROM saga_fsm_sagas WHERE true"
_LIST_TAIL = ' ORDER BY created_at, saga_id COLLATE "C" LIMIT %(limit)s'
# Unfinished sagas as ranges of the status index (migration 7), so that finished ones,
# however many, are never read.
_UNFINISHED: LiteralString = " AND status IN ('pending', 'running', 'compensating')"
assert UNFINISHED_STATUSES == ("pending", "running", "compensating")
_QUARANTINE = """
UPDATE saga_fsm_sagas SET quarantine = %(reason)s, quarantined_at = %(now)s,
    lease_owner = NULL, lease_expires_at = NULL
WHERE saga_id = %(saga_id)s
RETURNING saga_id
"""
# FOR UPDATE: the row is checked and cleared by one transaction.
_QUARANTINED_ROW = (
    "SELECT snapshot::text, quarantine, version FROM saga_fsm_sagas WHERE saga_id = %s FOR UPDATE"
)
_UNQUARANTINE = (
    "UPDATE saga_fsm_sagas SET quarantine = NULL, quarantined_at = NULL WHERE saga_id = %s"
)
_LIST_QUARANTINED = """
SELECT saga_id, quarantine, quarantined_at FROM saga_fsm_sagas WHERE quarantine IS NOT NULL
ORDER BY quarantined_at, saga_id COLLATE "C" LIMIT %s
"""
_LIST_TAIL_NEWEST = ' ORDER BY created_at DESC, saga_id COLLATE "C" DESC LIMIT %(limit)s'

# -- leases --------------------------------------------------------------------------------
# Columns only: a claim or an acquire bumps the version and reads the snapshot it hands
# out; a renewal or a release never touches the snapshot.
_LIVE: LiteralString = LIVE_SQL.format(now="%(now)s")
_LIVE_ELSEWHERE: LiteralString = LIVE_ELSEWHERE_SQL.format(now="%(now)s", worker="%(worker)s")
_TAKE: LiteralString = """
    lease_owner = %(worker)s, lease_expires_at = %(expires_at)s, version = version + 1
"""
# SKIP LOCKED: concurrent claimers pass over each other's rows instead of queueing.
_CLAIM_DUE: LiteralString = (
    """
WITH due AS (
    SELECT saga_id FROM saga_fsm_sagas
    WHERE due_at <= %(now)s AND NOT """
    + _LIVE
    + """
      AND quarantine IS NULL
      AND (definition, definition_version) IN (
          SELECT * FROM unnest(%(names)s::text[], %(versions)s::integer[]))
      AND ((definition || ' ' || definition_version) = ANY(%(any_table)s::text[])
           OR snapshot->>'definition_fingerprint' IS NULL
           OR (definition || ' ' || definition_version || ' '
               || (snapshot->>'definition_fingerprint')) = ANY(%(pinned)s::text[]))
    ORDER BY due_at, saga_id COLLATE "C"
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE saga_fsm_sagas AS s SET """
    + _TAKE
    + """
FROM due WHERE s.saga_id = due.saga_id
RETURNING s.saga_id, s.snapshot::text, s.version, s.due_at
"""
)
# The final SELECT sees the row as it was before this statement: who held the lease.
_ACQUIRE: LiteralString = (
    """
WITH leased AS (
    UPDATE saga_fsm_sagas SET """
    + _TAKE
    + """
    WHERE saga_id = %(saga_id)s AND NOT """
    + _LIVE_ELSEWHERE
    + """
    RETURNING snapshot::text, version
)
SELECT (SELECT snapshot FROM leased), (SELECT version FROM leased),
    s.saga_id, s.lease_owner, s.lease_expires_at
FROM (SELECT) AS one LEFT JOIN saga_fsm_sagas s ON s.saga_id = %(saga_id)s
"""
)
_ACQUIRE_ATTEMPTS = 3
_RELEASE = """
UPDATE saga_fsm_sagas SET lease_owner = NULL, lease_expires_at = NULL
WHERE saga_id = %(saga_id)s AND lease_owner = %(worker)s
RETURNING saga_id
"""
# Every lease a worker holds, renewed in a statement per chunk of ids, not one each.
_RENEW = """
UPDATE saga_fsm_sagas SET lease_expires_at = %(expires_at)s
WHERE saga_id = ANY(%(saga_ids)s::text[]) AND lease_owner = %(worker)s
RETURNING saga_id
"""
_RENEW_CHUNK = 1000


def _aware(value: datetime | None) -> datetime | None:
    """Naive datetimes are taken to be UTC (not the session's time zone)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _filters(
    state: str | None,
    definition: str | None,
    updated_before: datetime | None,
    unfinished: bool,
    parent: str | None = None,
) -> tuple[LiteralString, dict[str, Any]]:
    """``list``'s and ``count``'s WHERE conditions (after ``WHERE true``)."""
    where: LiteralString = ""
    params: dict[str, Any] = {}
    if state is not None:
        params["state"] = state
        # The status is the indexed column (migration 7); a whole state filters its range.
        where += " AND status = split_part(%(state)s, ':', 1)"
        if ":" in state:
            where += " AND state = %(state)s"
    if definition is not None:
        where += " AND definition = %(definition)s"
        params["definition"] = definition
    if updated_before is not None:
        where += " AND updated_at < %(updated_before)s"
        params["updated_before"] = _aware(updated_before)
    if unfinished:
        where += _UNFINISHED
    if parent is not None:
        # Child sagas: by the parent named in the snapshot (no index: an operator's look).
        where += " AND snapshot->>'parent_id' = %(parent)s"
        params["parent"] = parent
    return where, params


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


_STR: Any = json.encoder.encode_basestring_ascii


def _str(value: str | None) -> str:
    return "null" if value is None else _STR(value)


def _time(value: datetime | None) -> str:
    aware = _aware(value)
    return "null" if aware is None else f'"{aware.isoformat()}"'


def _write_json(
    snapshot: Snapshot,
    history: Sequence[HistoryEntry],
    expected_version: int | None = None,
    fingerprint: str | None = None,
    lease: Lease | None = None,
) -> str:
    """One create or save as an element of a batch's JSON array (the columns, the
    snapshot, its history rows), encoded here, before the write joins a batch: a value
    JSON cannot hold fails its own write. Written directly, the snapshot's text spliced
    in as the codec wrote it: this runs on every transition."""
    s = snapshot
    expected = "null" if expected_version is None else int(expected_version)
    return (
        f'{{"saga_id":{_STR(s.saga_id)},"expected_version":{expected},'
        f'"version":{int(s.version)},"definition":{_STR(s.definition)},'
        f'"definition_version":{int(s.definition_version)},"state":{_STR(s.state)},'
        f'"correlation_id":{_str(s.correlation_id)},'
        f'"idempotency_key":{_str(s.idempotency_key)},"wake_at":{_time(s.wake_at)},'
        f'"due_at":{_time(s.due_at)},"lease_owner":{_str(lease.owner if lease else None)},'
        f'"lease_expires_at":{_time(lease.expires_at if lease else None)},'
        f'"created_at":{_time(s.created_at)},"updated_at":{_time(s.updated_at)},'
        f'"request_fingerprint":{_str(fingerprint)},'
        f'"snapshot":{snapshot_to_json(s)},"history":{_history_json(history)}}}'
    )


def _create_json(
    snapshot: Snapshot, history: Sequence[HistoryEntry], lease: Lease | None = None
) -> str:
    """A create's write: with the fingerprint of the request its idempotency key names,
    and its creator's lease while it is due."""
    key = snapshot.idempotency_key
    fingerprint = None if key is None else request_fingerprint(snapshot)
    leased = lease if snapshot.due_at is not None else None
    return _write_json(snapshot, history, None, fingerprint, leased)


def _key_reused(err: psycopg.Error, key: str | None) -> IdempotencyKeyReused | None:
    if err.diag.sqlstate != _KEY_REUSED or key is None:
        return None
    return IdempotencyKeyReused(key, err.diag.message_detail or "?")


def _duplicate_id(err: psycopg.Error) -> str:
    """The saga id a primary-key violation names (``Key (saga_id)=(x) already exists``)."""
    detail = err.diag.message_detail or ""
    return detail.partition(")=(")[2].rpartition(")")[0] or "?"


def _one_write_may_be_why(err: BaseException) -> bool:
    """Whether a failed batch may have failed for one of its writes (a bad value, a
    constraint, a deadlock): then each write is tried alone. Not for a lost connection or
    a pool timeout, which every write would meet again, one after the other."""
    if isinstance(err, errors.DeadlockDetected | errors.SerializationFailure):
        return True
    return isinstance(err, psycopg.Error) and not isinstance(
        err, psycopg.OperationalError | psycopg.InterfaceError
    )


def _lease_params(worker_id: str, now: datetime, expires_at: datetime) -> dict[str, Any]:
    return {"worker": worker_id, "now": _aware(now), "expires_at": _aware(expires_at)}


def _versioned(saga_id: str, text: str, version: int) -> Snapshot | SnapshotDecodeError:
    found = snapshot_or_error(text, saga_id=saga_id)
    return found if isinstance(found, SnapshotDecodeError) else found.with_version(version)


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
        self._saves: GroupCommit[str, tuple[Any, ...]] = GroupCommit(
            partial(self._batch, _SAVE), retry_alone=_one_write_may_be_why
        )
        self._creates: GroupCommit[str, tuple[Any, ...]] = GroupCommit(
            partial(self._batch, _CREATE), retry_alone=_one_write_may_be_why
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
            # libpq quotes the string, password and all: neither it nor the cause goes on.
            message = scrub(str(err).strip(), conninfo)
            raise StoreError(f"invalid PostgreSQL connection string: {message}") from None
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
        self,
        query: LiteralString,
        params: Sequence[Any] | dict[str, Any],
        *,
        prepare: bool | None = None,
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
                await cur.execute(query, params, prepare=prepare)
                rows: list[tuple[Any, ...]] = await cur.fetchall()
                return rows
            finally:
                if restore:
                    # Fails only on a broken connection, which the pool discards anyway.
                    with suppress(psycopg.Error):
                        await conn.set_autocommit(False)

    # -- SnapshotStore ----------------------------------------------------------------------
    async def create(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry] = (),
        *,
        lease: Lease | None = None,
        outbox: Sequence[OutboxMessage] = (),
    ) -> tuple[Snapshot, bool]:
        stored = snapshot.with_version(1)
        write = _create_json(stored, history, lease)
        # One create per idempotency key (else per saga id) in a batch: ON CONFLICT does
        # not report a row inserted by the same statement as a conflict, it just skips.
        key = stored.saga_id if stored.idempotency_key is None else f"key:{stored.idempotency_key}"
        async with self._errors("create"):
            try:
                if outbox:
                    created, existing_id, existing = await self._with_outbox(_CREATE, write, outbox)
                else:
                    created, existing_id, existing = await self._creates.submit(key, write)
            except errors.UniqueViolation as err:
                if err.diag.constraint_name != _PKEY:
                    raise
                rows = await self._query(_VERSION, (stored.saga_id,))
                actual = int(rows[0][0]) if rows else None
                raise ConcurrencyConflict(stored.saga_id, 0, actual) from None
            except psycopg.Error as err:
                reused = _key_reused(err, stored.idempotency_key)
                if reused is None:
                    raise
                raise reused from None
            if created:
                return stored, True
            if existing is None:
                # The key's owner committed while this statement ran, too late for its
                # snapshot: a fresh read sees it.
                rows = await self._query(_BY_KEY, (stored.idempotency_key,))
                if not rows:
                    raise StoreError(
                        f"PostgreSQL {self._where}: create of saga {stored.saga_id} lost a"
                        f" race for idempotency key {stored.idempotency_key!r} to a saga"
                        " that is gone; retry"
                    )
                existing_id, existing, fingerprint = rows[0]
                if fingerprint is not None and fingerprint != request_fingerprint(stored):
                    raise IdempotencyKeyReused(str(stored.idempotency_key), existing_id)
        # The version is the row's column: read with it (a rare path, a repeated request).
        return await self.load(existing_id), False

    async def create_many(self, snapshots: Sequence[Snapshot]) -> builtins.list[Snapshot]:
        # ONE statement, outside the group commit: atomic by itself, all or nothing.
        stored = [snapshot.with_version(1) for snapshot in snapshots]
        if not stored:
            return []
        writes = [_create_json(s, ()) for s in stored]
        async with self._errors("create_many"):
            try:
                rows = await self._batch(_CREATE, writes)
            except errors.UniqueViolation as err:
                if err.diag.constraint_name != _PKEY:
                    raise
                raise ConcurrencyConflict(_duplicate_id(err), 0, None) from None
            except psycopg.Error as err:
                detail = err.diag.message_detail
                key = next((s.idempotency_key for s in stored if s.idempotency_key), None)
                reused = _key_reused(err, key)
                if reused is None:
                    raise
                # Which key: the one whose existing saga the database named.
                owner = await self._query(
                    "SELECT idempotency_key FROM saga_fsm_sagas WHERE saga_id = %s", (detail,)
                )
                raise IdempotencyKeyReused(owner[0][0] if owner else "?", str(detail)) from None
        found: list[Snapshot] = []
        for snapshot, (created, existing_id, existing) in zip(stored, rows, strict=True):
            if created:
                found.append(snapshot)
            elif existing is None:
                raise StoreError(
                    f"PostgreSQL {self._where}: create of saga {snapshot.saga_id} lost a race"
                    f" for idempotency key {snapshot.idempotency_key!r}; retry"
                )
            else:
                found.append(await self.load(existing_id))
        return found

    async def save(
        self,
        snapshot: Snapshot,
        history: Sequence[HistoryEntry],
        *,
        expected_version: int,
        outbox: Sequence[OutboxMessage] = (),
    ) -> Snapshot:
        stored = snapshot.with_version(expected_version + 1)
        write = _write_json(stored, history, expected_version)
        async with self._errors("save"):
            if outbox:
                updated, before = await self._with_outbox(_SAVE, write, outbox)
            else:
                updated, before = await self._saves.submit(stored.saga_id, write)
            if updated:
                return stored
            if before is None:
                raise SagaNotFound(stored.saga_id)
            if before == expected_version:
                # Another writer committed while this UPDATE waited on the row lock.
                rows = await self._query(_VERSION, (stored.saga_id,))
                before = rows[0][0] if rows else None
            raise ConcurrencyConflict(stored.saga_id, expected_version, before)

    async def transact(self, call: Callable[[Any], Any], write: Callable[[Any], Write]) -> Snapshot:
        # Its own transaction on its own connection, never in a group-commit batch: one
        # saga's failing SQL aborts nothing but its own step.
        async with (
            self._errors("transact"),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            result = call(conn)
            if inspect.isawaitable(result):
                result = await result
            stored, history, expected, outbox = write(result)
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_SAVE, (_text(f"[{_write_json(stored, history, expected)}]"),))
            ((updated, before),) = await cur.fetchall()
            if updated:
                if outbox:
                    await cur.executemany(
                        _INSERT_OUTBOX,
                        [(m.saga_id, m.channel, m.message_id, m.body) for m in outbox],
                    )
                return stored
            # The transaction rolls the step's writes back on the way out.
            if before is None:
                raise SagaNotFound(stored.saga_id)
            raise ConcurrencyConflict(stored.saga_id, expected, before)
        raise AssertionError("unreachable")  # mypy: the transaction returns or raises

    async def _with_outbox(
        self, query: LiteralString, write: str, outbox: Sequence[OutboxMessage]
    ) -> tuple[Any, ...]:
        """One create or save and its outbox rows in one transaction, outside the group
        commit: the rows are written only if the write was (its first result column)."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(query, (_text(f"[{write}]"),))
            row = await cur.fetchone()
            assert row is not None  # one result row per write
            if row[0]:
                await cur.executemany(
                    _INSERT_OUTBOX, [(m.saga_id, m.channel, m.message_id, m.body) for m in outbox]
                )
            return tuple(row)

    # -- outbox -----------------------------------------------------------------------------
    async def claim_outbox(
        self, relay_id: str, *, now: datetime, lease_seconds: float, limit: int
    ) -> builtins.list[OutboxEntry]:
        check_claim(relay_id, lease_seconds, limit)
        params = {
            "relay": relay_id,
            "now": _aware(now),
            "expires_at": _aware(now + timedelta(seconds=lease_seconds)),
            "limit": limit,
        }
        async with self._errors("claim_outbox"):
            rows = await self._query(_CLAIM_OUTBOX, params)
        return sorted(
            (OutboxEntry(int(r[0]), OutboxMessage(r[1], r[2], r[3], r[4])) for r in rows),
            key=lambda e: e.seq,
        )

    async def mark_published(
        self, seqs: Sequence[int], relay_id: str, *, now: datetime
    ) -> builtins.list[int]:
        wanted = [int(seq) for seq in seqs]
        if not wanted:
            return []
        params = {"now": _aware(now), "seqs": wanted, "relay": relay_id}
        async with self._errors("mark_published"):
            rows = await self._query(_MARK_PUBLISHED, params)
        return sorted(int(r[0]) for r in rows)

    async def outbox(
        self, *, saga_id: str | None = None, unpublished: bool = False
    ) -> builtins.list[OutboxEntry]:
        async with self._errors("outbox"):
            rows = await self._query(
                "SELECT seq, saga_id, channel, message_id, body, published_at"
                " FROM saga_fsm_outbox"
                " WHERE (%(saga_id)s::text IS NULL OR saga_id = %(saga_id)s)"
                " AND (NOT %(unpublished)s OR published_at IS NULL) ORDER BY seq",
                {"saga_id": saga_id, "unpublished": unpublished},
            )
        return [OutboxEntry(int(r[0]), OutboxMessage(r[1], r[2], r[3], r[4]), r[5]) for r in rows]

    async def _batch(self, query: LiteralString, batch: Sequence[str]) -> list[tuple[Any, ...]]:
        """Group commit: the writes of several sagas as one statement (one row of results
        per write, in order), atomic by itself, sent in one round trip, committed once."""
        return await self._query(query, (_text(f"[{','.join(batch)}]"),))

    async def load(self, saga_id: str) -> Snapshot:
        async with self._errors("load"):
            rows = await self._query(_LOAD, (saga_id,))
        if not rows:
            raise SagaNotFound(saga_id)
        return snapshot_from_json(rows[0][0], saga_id=saga_id).with_version(rows[0][1])

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
        unfinished: bool = False,
        newest_first: bool = False,
        parent: str | None = None,
    ) -> list[Snapshot | SnapshotDecodeError]:
        check_limit(limit)
        where, params = _filters(state, definition, updated_before, unfinished, parent)
        tail = _LIST_TAIL_NEWEST if newest_first else _LIST_TAIL
        async with self._errors("list"):
            rows = await self._query(_LIST_HEAD + where + tail, params | {"limit": limit})
        return [_versioned(saga_id, text, version) for saga_id, text, version in rows]

    # -- quarantine -------------------------------------------------------------------------
    async def quarantine(self, saga_id: str, reason: str, *, now: datetime) -> None:
        params = {"reason": reason, "now": _aware(now), "saga_id": saga_id}
        async with self._errors("quarantine"):
            rows = await self._query(_QUARANTINE, params)
        if not rows:
            raise SagaNotFound(saga_id)

    async def unquarantine(self, saga_id: str) -> Snapshot:
        async with (
            self._errors("unquarantine"),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            cur = conn.cursor(row_factory=tuple_row)
            await cur.execute(_QUARANTINED_ROW, (saga_id,))
            found = await cur.fetchone()
            if found is None:
                raise SagaNotFound(saga_id)
            if found[1] is None:
                raise NotQuarantined(saga_id)
            snapshot = snapshot_from_json(found[0], saga_id=saga_id).with_version(found[2])
            await cur.execute(_UNQUARANTINE, (saga_id,))
        return snapshot

    async def list_quarantined(self, *, limit: int | None = None) -> builtins.list[QuarantinedSaga]:
        check_limit(limit)
        async with self._errors("list_quarantined"):
            rows = await self._query(_LIST_QUARANTINED, (limit,))
        return [QuarantinedSaga(i, why, at.astimezone(UTC)) for i, why, at in rows]

    # -- leases: columns only ---------------------------------------------------------------
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
        params = _lease_params(worker_id, now, now + timedelta(seconds=lease_seconds))
        params |= {
            "limit": limit,
            "names": [name for name, _, _ in wanted],
            "versions": [version for _, version, _ in wanted],
            # The table check as one comparison per row (no join): "name version" for
            # the versions served with any table, "name version fingerprint" for the
            # others (definition names hold no spaces).
            "any_table": [f"{n} {v}" for n, v, table in wanted if table is None],
            "pinned": [f"{n} {v} {table}" for n, v, table in wanted if table is not None],
        }
        async with self._errors("claim_due"):
            rows = await self._query(_CLAIM_DUE, params)
        rows.sort(key=lambda row: (row[3], row[0]))  # RETURNING has no order
        # A row that cannot be decoded stays leased, returned as its error.
        return [_versioned(saga_id, text, version) for saga_id, text, version, _ in rows]

    async def acquire(
        self, saga_id: str, worker_id: str, *, now: datetime, lease_seconds: float
    ) -> Snapshot:
        params = _lease_params(worker_id, now, now + timedelta(seconds=lease_seconds))
        params["saga_id"] = saga_id
        async with self._errors("acquire"):
            for _ in range(_ACQUIRE_ATTEMPTS):
                ((text, version, found, owner, until),) = await self._query(_ACQUIRE, params)
                if text is not None:
                    return snapshot_from_json(text, saga_id=saga_id).with_version(version)
                if found is None:
                    raise SagaNotFound(saga_id)
                held = lease_or_none(owner, until)
                if held is not None and held.held_by_another(worker_id, params["now"]):
                    raise SagaLeased(saga_id, held.owner, held.expires_at)
                # Another worker took the lease while this UPDATE waited on the row, after
                # the statement's snapshot was taken: look again.
        raise SagaLeased(saga_id, str(owner), until)

    async def lease(self, saga_id: str) -> Lease | None:
        async with self._errors("lease"):
            rows = await self._query(_LEASE_OF, (saga_id,))
        if not rows:
            raise SagaNotFound(saga_id)
        return lease_or_none(rows[0][0], rows[0][1])

    async def renew_leases(
        self, saga_ids: Collection[str], worker_id: str, *, expires_at: datetime
    ) -> set[str]:
        wanted = ids(saga_ids)
        params = {"worker": worker_id, "expires_at": _aware(expires_at)}
        held: set[str] = set()
        async with self._errors("renew_leases"):
            for start in range(0, len(wanted), _RENEW_CHUNK):
                chunk = wanted[start : start + _RENEW_CHUNK]
                # Never prepared: a plan cached while the table was small would scan it
                # whole; planned each time, the actual ids make it an index lookup.
                rows = await self._query(_RENEW, params | {"saga_ids": chunk}, prepare=False)
                held.update(saga_id for (saga_id,) in rows)
        return held

    async def release(self, saga_id: str, worker_id: str) -> None:
        async with self._errors("release"):
            await self._query(_RELEASE, {"saga_id": saga_id, "worker": worker_id})

    async def close(self) -> None:
        """Close the pool if ``open()`` made it; a caller's pool is the caller's."""
        if self._owns_pool:
            await self._pool.close()

    # -- SagaQueries: what an operator's console reads ----------------------------------------
    # Planned with the actual values (never prepared): a rare state walks its own index
    # range, a common one the created_at order; see migration 5.

    async def page(
        self, where: SagaFilter, *, after: PageKey | None = None, limit: int = 50
    ) -> SagaPage:
        check_page_limit(limit)
        conditions, params = sql_conditions(where, after, _QUERY_SQL, _aware)
        query = (
            "SELECT saga_id, definition, state, created_at, updated_at, snapshot::text, version"
            f" FROM saga_fsm_sagas WHERE {conditions}"
            ' ORDER BY created_at DESC, saga_id COLLATE "C" DESC LIMIT %(limit)s'
        )
        async with self._errors("page"):
            rows = await self._query(query, params | {"limit": limit + 1}, prepare=False)
        return paged(
            [
                decoded_row(saga_id, definition, state, created, updated, text, version)
                for saga_id, definition, state, created, updated, text, version in rows
            ],
            limit,
        )

    async def counts(self, where: SagaFilter = EVERYTHING) -> builtins.list[StateCount]:
        conditions, params = sql_conditions(where, None, _QUERY_SQL, _aware)
        query = (
            "SELECT definition, state, count(*) FROM saga_fsm_sagas"
            f" WHERE {conditions} GROUP BY definition, state"
        )
        async with self._errors("counts"):
            rows = await self._query(query, params, prepare=False)
        return sorted(StateCount(d, s, int(n)) for d, s, n in rows)

    async def quarantine_of(self, saga_id: str) -> QuarantinedSaga | None:
        async with self._errors("quarantine_of"):
            rows = await self._query(
                "SELECT quarantine, quarantined_at FROM saga_fsm_sagas"
                " WHERE saga_id = %(saga_id)s AND quarantine IS NOT NULL",
                {"saga_id": saga_id},
            )
        return QuarantinedSaga(saga_id, rows[0][0], rows[0][1]) if rows else None

    async def find_ids(self, prefix: str, limit: int) -> builtins.list[str]:
        check_limit(limit)
        async with self._errors("find_ids"):
            rows = await self._query(
                f"SELECT saga_id FROM saga_fsm_sagas WHERE {_QUERY_SQL['id_prefix']}"
                ' ORDER BY saga_id COLLATE "C" LIMIT %(limit)s',
                {"id_prefix": prefix, "limit": limit},
                prepare=False,
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
        async with self._errors("count"):
            ((found,),) = await self._query(
                "SELECT count(*) FROM saga_fsm_sagas WHERE true" + where, params
            )
        return int(found)


# One template per SagaFilter field (see sql_conditions). A status is matched on the
# column migration 7 indexes, so the planner can walk (status, created_at) in order;
# an id prefix is a range of migration 5's byte-ordered index on saga_id.
_STATUS = "status"
_LIVE = ", ".join(f"'{status}'" for status in UNFINISHED_STATUSES)
_QUERY_SQL = {
    "state": "status = split_part(%(state)s, ':', 1) AND state = %(state)s",
    "status": f"{_STATUS} = %(status)s",
    "definition": "definition = %(definition)s",
    # A range of saga_fsm_sagas_id_pattern_idx: the ids from the prefix up to the prefix
    # followed by U+10FFFF, the last character, are those that start with it. (Written
    # with starts_with() the planner reads it off the created_at index instead, whole.)
    "id_prefix": "saga_id ~>=~ %(id_prefix)s AND saga_id ~<~ (%(id_prefix)s || chr(1114111))",
    "created_from": "created_at >= %(created_from)s",
    "created_before": "created_at < %(created_before)s",
    "updated_from": "updated_at >= %(updated_from)s",
    "stuck_before": f"updated_at < %(stuck_before)s AND {_STATUS} IN ({_LIVE})",
    "quarantined": "quarantine IS NOT NULL",  # saga_fsm_sagas_quarantined_idx, partial
    "not_quarantined": "quarantine IS NULL",
    "after": '(created_at, saga_id COLLATE "C") < (%(after_created)s, %(after_id)s)',
}
