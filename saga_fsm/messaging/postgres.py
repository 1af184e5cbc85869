"""The PostgreSQL database as a broker: the embedded transport when sagas live there.

One table holds every channel's messages (see migrations/postgres). Publishing inserts
a row and ``NOTIFY``s the channel name in the same transaction, so a subscription
waiting on ``LISTEN`` wakes when it commits (and polls besides, for delays that ended
and claims that expired). Claims are ``FOR UPDATE SKIP LOCKED``: concurrent consumers
never block on or take each other's rows. A row stays after it is settled, so a
re-published id is stored once; a settlement only counts while its claim does.

``publish_in(conn, message)`` enqueues on a connection the caller holds, inside the
caller's own transaction: a message table in the saga store's database is an outbox
that needs no relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from saga_fsm.messaging import migrations
from saga_fsm.messaging._envelope import Message, check_channel, message_to_json
from saga_fsm.messaging._errors import DeadLetterNotFound, TransportError
from saga_fsm.messaging._protocol import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVERIES,
    BaseSubscription,
    Capabilities,
    DeadLetter,
    Inbound,
    parse_dead_letter,
)
from saga_fsm.stores.postgres import _describe

_MIGRATIONS = migrations.load("postgres")
_NOTIFY_CHANNEL = "saga_fsm_messages"
_POLL = 0.5  # seconds: a waiting subscription looks again even without a notification
_CONNECT_TIMEOUT = 10
_MIGRATION_LOCK = """
SELECT pg_advisory_xact_lock(
    hashtextextended('saga_fsm.messaging:' || coalesce(current_schema(), ''), 0))
"""

PUBLISH_SQL = """
WITH sent AS (
    INSERT INTO saga_fsm_messages (channel, message_id, body) VALUES (%s, %s, %s::jsonb)
    ON CONFLICT (channel, message_id) DO NOTHING RETURNING channel)
SELECT pg_notify('saga_fsm_messages', channel) FROM sent
"""
_CLAIM = """
UPDATE saga_fsm_messages SET deliveries = deliveries + 1,
    visible_at = now() + make_interval(secs => %s)
WHERE seq IN (
    SELECT seq FROM saga_fsm_messages
    WHERE channel = %s AND done_at IS NULL AND visible_at <= now()
    ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING seq, message_id, body::text, deliveries
"""
_CLAIMED = "seq = %s AND deliveries = %s AND done_at IS NULL"
_DEAD_COLUMNS = "channel, message_id, reason, deliveries, body, dead_at"


async def publish_in(conn: AsyncConnection[Any], message: Message) -> None:
    """Enqueue ``message`` on ``conn``: it is published when the caller's transaction
    commits, and not at all if it rolls back."""
    await conn.execute(PUBLISH_SQL, (message.channel, message.message_id, message_to_json(message)))


class PostgresBroker:
    """A pool on the message tables, and one connection listening for new messages."""

    def __init__(self, pool: AsyncConnectionPool[Any], conninfo: str, where: str) -> None:
        self.pool = pool
        self.where = where
        self.conninfo = conninfo
        self._wakes: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, conninfo: str) -> PostgresBroker:
        try:
            where = f"PostgreSQL transport {_describe(conninfo)}"
            params = conninfo_to_dict(conninfo)
        except psycopg.Error as err:
            raise TransportError("PostgreSQL transport", f"invalid conninfo: {err}") from err
        if "connect_timeout" not in params:
            conninfo = make_conninfo(conninfo, connect_timeout=_CONNECT_TIMEOUT)
        with _errors(where, "connect"):
            async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await _migrate(conn, where)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo, min_size=1, max_size=10, open=False, kwargs={"autocommit": True}
        )
        try:
            with _errors(where, "opening the pool"):
                await pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, conninfo, where)

    @asynccontextmanager
    async def connection(self, action: str) -> AsyncIterator[AsyncConnection[Any]]:
        with _errors(self.where, action):
            async with self.pool.connection() as conn:
                yield conn

    def wake_for(self, channel: str) -> asyncio.Event:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        return self._wakes.setdefault(channel, asyncio.Event())

    async def _listen(self) -> None:
        """Wake subscriptions on NOTIFY; reconnect with back-off when the connection drops
        (subscriptions poll every _POLL seconds meanwhile, so nothing waits for it)."""
        backoff = 0.1
        while True:
            try:
                async with await AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {_NOTIFY_CHANNEL}")
                    backoff = 0.1
                    for event in self._wakes.values():  # what was sent while away
                        event.set()
                    async for notify in conn.notifies():
                        wake = self._wakes.get(notify.payload)
                        if wake is not None:
                            wake.set()
            except psycopg.Error:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.pool.close()


@contextmanager
def _errors(where: str, action: str) -> Iterator[None]:
    """Raw psycopg errors never leave the transport: they become ``TransportError``."""
    try:
        yield
    except psycopg.Error as err:
        text = " ".join((err.diag.message_primary or str(err)).split())
        raise TransportError(where, f"{action} failed: {text}") from err


async def _migrate(conn: AsyncConnection[Any], where: str) -> None:
    async with conn.transaction():
        await conn.execute(_MIGRATION_LOCK)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {migrations.TABLE} (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute(f"SELECT version FROM {migrations.TABLE}")
        applied = {int(v) for (v,) in await cur.fetchall()}
        for migration in migrations.pending(_MIGRATIONS, applied, where):
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {migrations.TABLE} (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


@attrs.define(eq=False)
class _Settle:
    broker: PostgresBroker
    seq: int
    deliveries: int

    async def ack(self) -> None:
        async with self.broker.connection("ack") as conn:
            await conn.execute(
                f"UPDATE saga_fsm_messages SET done_at = now() WHERE {_CLAIMED}",
                (self.seq, self.deliveries),
            )

    async def nack(self, delay: float) -> None:
        async with self.broker.connection("nack") as conn:
            await conn.execute(
                "UPDATE saga_fsm_messages SET visible_at = now() + make_interval(secs => %s)"
                f" WHERE {_CLAIMED}",
                (delay, self.seq, self.deliveries),
            )

    async def dead_letter(self, reason: str) -> None:
        async with self.broker.connection("dead-letter") as conn:
            await conn.execute(
                "WITH dead AS (UPDATE saga_fsm_messages SET done_at = now()"
                f" WHERE {_CLAIMED} RETURNING channel, message_id, body::text, deliveries)"
                " INSERT INTO saga_fsm_dead_letters (channel, message_id, body, deliveries,"
                " reason) SELECT *, %s FROM dead ON CONFLICT (channel, message_id) DO UPDATE"
                " SET body = excluded.body, deliveries = excluded.deliveries,"
                " reason = excluded.reason, dead_at = now()",
                (self.seq, self.deliveries, reason),
            )


class PostgresSubscription(BaseSubscription):
    def __init__(
        self,
        broker: PostgresBroker,
        channel: str,
        max_deliveries: int,
        ack_wait: float,
        prefetch: int,
    ) -> None:
        super().__init__(channel, max_deliveries)
        self._broker = broker
        self._ack_wait = ack_wait
        self._prefetch = prefetch
        self._ready: deque[Inbound] = deque()
        self._wake = broker.wake_for(channel)
        self._closed = False

    async def _claim(self) -> None:
        async with self._broker.connection("claim") as conn:
            cur = await conn.execute(_CLAIM, (self._ack_wait, self.channel, self._prefetch))
            rows = await cur.fetchall()
        for seq, message_id, body, deliveries in sorted(rows):
            settle = _Settle(self._broker, seq, deliveries)
            self._ready.append(Inbound(body, message_id, deliveries, settle))

    async def _next(self, timeout: float | None) -> Inbound | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            if not self._ready:
                self._wake.clear()
                await self._claim()
            if self._ready:
                return self._ready.popleft()
            wait = _POLL if deadline is None else min(_POLL, deadline - loop.time())
            if wait <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        return None

    async def close(self) -> None:
        self._closed = True
        while self._ready:  # claimed but never handed out: free them at once
            await self._ready.popleft().settle.nack(0.0)


class PostgresDeadLetters:
    def __init__(self, broker: PostgresBroker) -> None:
        self._broker = broker

    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]:
        async with self._broker.connection("list dead letters") as conn:
            cur = await conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM saga_fsm_dead_letters WHERE channel = %s"
                " ORDER BY dead_at, message_id LIMIT %s",
                (check_channel(channel), limit),
            )
            return [parse_dead_letter(*row) for row in await cur.fetchall()]

    async def show(self, channel: str, message_id: str) -> DeadLetter:
        async with self._broker.connection("show dead letter") as conn:
            cur = await conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM saga_fsm_dead_letters"
                " WHERE channel = %s AND message_id = %s",
                (channel, message_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise DeadLetterNotFound(channel, message_id)
        return parse_dead_letter(*row)

    async def replay(self, channel: str, message_id: str) -> None:
        async with self._broker.connection("replay dead letter") as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM saga_fsm_dead_letters WHERE channel = %s AND message_id = %s",
                (channel, message_id),
            )
            if not cur.rowcount:
                raise DeadLetterNotFound(channel, message_id)
            # The message's own row (kept for deduplication) becomes new again.
            await conn.execute(
                "UPDATE saga_fsm_messages SET done_at = NULL, deliveries = 0,"
                " visible_at = now() WHERE channel = %s AND message_id = %s",
                (channel, message_id),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (_NOTIFY_CHANNEL, channel))

    async def drop(self, channel: str, message_id: str) -> None:
        async with self._broker.connection("drop dead letter") as conn:
            cur = await conn.execute(
                "DELETE FROM saga_fsm_dead_letters WHERE channel = %s AND message_id = %s",
                (channel, message_id),
            )
        if not cur.rowcount:
            raise DeadLetterNotFound(channel, message_id)


class PostgresTransport:
    name = "postgresql"
    capabilities = Capabilities(dedup_by_id=True)

    def __init__(
        self,
        broker: PostgresBroker,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> None:
        self.broker = broker
        self.dead_letters = PostgresDeadLetters(broker)
        self._max_deliveries = max_deliveries
        self._ack_wait = ack_wait
        self._subscriptions: list[PostgresSubscription] = []

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> PostgresTransport:
        broker = await PostgresBroker.open(conninfo)
        return cls(broker, max_deliveries=max_deliveries, ack_wait=ack_wait)

    async def publish(self, message: Message) -> None:
        async with self.broker.connection("publish") as conn:
            await publish_in(conn, message)

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> PostgresSubscription:
        subscription = PostgresSubscription(
            self.broker, check_channel(channel), self._max_deliveries, self._ack_wait, prefetch
        )
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        await self.broker.close()
