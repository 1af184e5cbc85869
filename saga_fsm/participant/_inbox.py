"""The participant's inbox: per step (forward channel, idempotency key), the first reply
to its forward command and to its compensation.

A transaction locks the step's row for the time a command is handled, so two deliveries
of one command (or a command and its compensation) are handled one after the other,
and the second finds the first's reply. ``PostgresInbox`` hands the handler its
transaction's connection, so the business writes commit with the inbox row, and when
the transport is the PostgreSQL transport on the same database the reply is enqueued in
that same transaction too: all three or none. ``SqliteInbox`` does the same on a SQLite
file (the handler gets a ``sqlite3.Connection``): with the SQLite transport on that file,
the inbox shares the transport's connection, so the reply is enqueued with the rest.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

import attrs
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from saga_fsm.messaging import Message, Transport
from saga_fsm.messaging.postgres import PostgresBroker, PostgresTransport, publish_in
from saga_fsm.messaging.sqlite import SqliteBroker, SqliteTransport
from saga_fsm.messaging.sqlite import publish_in as sqlite_publish_in
from saga_fsm.stores.url import sqlite_path


@attrs.frozen
class InboxRecord:
    """One step as this participant saw it: the first answers (reply payloads, as JSON)
    to its forward command and to its compensation."""

    channel: str
    idempotency_key: str
    forward_reply: str | None = None
    compensation_reply: str | None = None


class InboxTransaction(Protocol):
    @property
    def connection(self) -> Any:
        """What the handler's business writes go through (None without a database)."""
        ...

    async def load(self, channel: str, idempotency_key: str) -> InboxRecord:
        """The step's record, locked until the transaction ends (empty if new)."""
        ...

    async def save(self, record: InboxRecord) -> None: ...

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        """Undoes the handler's writes if it raises, keeping the transaction."""
        ...

    async def enqueue(self, message: Message) -> bool:
        """Enqueue ``message`` in this transaction if the transport allows; False if the
        caller must publish it after the commit."""
        ...


class Inbox(Protocol):
    def transaction(self, transport: Transport) -> AbstractAsyncContextManager[InboxTransaction]:
        """Commits on a normal exit, rolls back if the body raises."""
        ...

    async def close(self) -> None: ...


@attrs.define(eq=False)
class _MemoryTransaction:
    records: dict[tuple[str, str], InboxRecord]
    staged: dict[tuple[str, str], InboxRecord] = attrs.field(factory=dict)
    connection: Any = None

    async def load(self, channel: str, idempotency_key: str) -> InboxRecord:
        key = (channel, idempotency_key)
        return self.records.get(key) or InboxRecord(channel, idempotency_key)

    async def save(self, record: InboxRecord) -> None:
        self.staged[(record.channel, record.idempotency_key)] = record

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        return nullcontext()

    async def enqueue(self, message: Message) -> bool:
        return False


class MemoryInbox:
    """In-process inbox (tests); one transaction at a time."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], InboxRecord] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self, transport: Transport) -> AsyncIterator[_MemoryTransaction]:
        async with self._lock:
            tx = _MemoryTransaction(self.records)
            yield tx
            self.records.update(tx.staged)

    async def close(self) -> None:
        return None


@attrs.define(eq=False)
class _PostgresTransaction:
    connection: AsyncConnection[Any]
    same_database: bool

    async def load(self, channel: str, idempotency_key: str) -> InboxRecord:
        await self.connection.execute(
            "INSERT INTO saga_fsm_inbox (channel, idempotency_key) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (channel, idempotency_key),
        )
        cur = await self.connection.execute(
            "SELECT forward_reply, compensation_reply FROM saga_fsm_inbox"
            " WHERE channel = %s AND idempotency_key = %s FOR UPDATE",
            (channel, idempotency_key),
        )
        row = await cur.fetchone()
        assert row is not None  # inserted above, or there already
        return InboxRecord(channel, idempotency_key, row[0], row[1])

    async def save(self, record: InboxRecord) -> None:
        await self.connection.execute(
            "UPDATE saga_fsm_inbox SET forward_reply = %s, compensation_reply = %s,"
            " updated_at = now() WHERE channel = %s AND idempotency_key = %s",
            (
                record.forward_reply,
                record.compensation_reply,
                record.channel,
                record.idempotency_key,
            ),
        )

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        return self.connection.transaction()

    async def enqueue(self, message: Message) -> bool:
        if not self.same_database:
            return False
        await publish_in(self.connection, message)
        return True


class PostgresInbox:
    """The inbox in the participant's PostgreSQL database (``saga_fsm_inbox``, created by
    the messaging migrations)."""

    def __init__(self, broker: PostgresBroker) -> None:
        self._broker = broker

    @classmethod
    async def open(cls, conninfo: str) -> PostgresInbox:
        return cls(await PostgresBroker.open(conninfo))

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._broker.pool

    def _same_database(self, transport: Transport) -> bool:
        return (
            isinstance(transport, PostgresTransport)
            and transport.broker.conninfo == self._broker.conninfo
        )

    @asynccontextmanager
    async def transaction(self, transport: Transport) -> AsyncIterator[_PostgresTransaction]:
        async with self._broker.connection("inbox transaction") as conn, conn.transaction():
            yield _PostgresTransaction(conn, self._same_database(transport))

    async def close(self) -> None:
        await self._broker.close()


@attrs.define(eq=False)
class _SqliteTransaction:
    connection: sqlite3.Connection
    same_database: bool

    async def load(self, channel: str, idempotency_key: str) -> InboxRecord:
        # BEGIN IMMEDIATE holds the file's write lock: the step is as locked as a row.
        row = self.connection.execute(
            "SELECT forward_reply, compensation_reply FROM saga_fsm_inbox"
            " WHERE channel = ? AND idempotency_key = ?",
            (channel, idempotency_key),
        ).fetchone()
        if row is None:
            return InboxRecord(channel, idempotency_key)
        return InboxRecord(channel, idempotency_key, row[0], row[1])

    async def save(self, record: InboxRecord) -> None:
        self.connection.execute(
            "INSERT INTO saga_fsm_inbox"
            " (channel, idempotency_key, forward_reply, compensation_reply, updated_at)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (channel, idempotency_key) DO UPDATE SET"
            " forward_reply = excluded.forward_reply,"
            " compensation_reply = excluded.compensation_reply,"
            " updated_at = excluded.updated_at",
            (
                record.channel,
                record.idempotency_key,
                record.forward_reply,
                record.compensation_reply,
                time.time(),
            ),
        )

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[sqlite3.Connection]:
        self.connection.execute("SAVEPOINT saga_fsm_handler")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK TO saga_fsm_handler")
            self.connection.execute("RELEASE saga_fsm_handler")
            raise
        self.connection.execute("RELEASE saga_fsm_handler")

    async def enqueue(self, message: Message) -> bool:
        if not self.same_database:
            return False
        sqlite_publish_in(self.connection, message)
        return True


class SqliteInbox:
    """The inbox in the participant's SQLite file (``saga_fsm_inbox``, created by the
    messaging migrations). One transaction at a time per file: SQLite has one writer."""

    def __init__(self, broker: SqliteBroker) -> None:
        self._broker = broker

    @classmethod
    def open(cls, url_or_path: str) -> SqliteInbox:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a file path."""
        path = sqlite_path(url_or_path) if "://" in url_or_path else url_or_path
        return cls(SqliteBroker(path))

    @property
    def path(self) -> str:
        return self._broker.path

    def _broker_for(self, transport: Transport) -> SqliteBroker:
        """The transport's own connection when it is this file: a second connection
        would wait on the first's write lock while holding the event loop."""
        if isinstance(transport, SqliteTransport) and transport.broker.same_file(self.path):
            return transport.broker
        return self._broker

    @asynccontextmanager
    async def transaction(self, transport: Transport) -> AsyncIterator[_SqliteTransaction]:
        broker = self._broker_for(transport)
        async with broker.held("inbox transaction") as conn:
            yield _SqliteTransaction(conn, broker is not self._broker)

    async def close(self) -> None:
        self._broker.close()
