"""The participant's inbox: per step (forward channel, idempotency key), the first reply
to its forward command and to its compensation.

A transaction locks the step's row for the time a command is handled, so two deliveries
of one command (or a command and its compensation) are handled one after the other,
and the second finds the first's reply. ``PostgresInbox`` hands the handler its
transaction's connection, so the business writes commit with the inbox row, and when
the transport is the PostgreSQL transport on the same database the reply is enqueued in
that same transaction too: all three or none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

import attrs
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from saga_fsm.messaging import Message, Transport
from saga_fsm.messaging.postgres import PostgresBroker, PostgresTransport, publish_in


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
