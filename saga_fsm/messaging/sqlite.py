"""The SQLite file as a broker: the embedded transport when sagas live in SQLite.

One table holds every channel's messages (see migrations/sqlite). A subscription polls
its channel and claims ready rows in one ``BEGIN IMMEDIATE`` transaction, raising their
delivery count and hiding them for ``ack_wait`` seconds; ack marks the row done (it
stays, so a re-published id is stored once), nack makes it visible again after the
delay, dead-lettering moves it to ``saga_fsm_dead_letters`` in the same transaction.
A settlement only counts while its claim does: once ``ack_wait`` passed and another
consumer claimed the row, the late consumer's settlement changes nothing.

``publish_in(conn, message)`` enqueues inside a transaction the caller holds on the same
file: a message table beside the saga store is an outbox that needs no relay.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

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

_MIGRATIONS = migrations.load("sqlite")
_POLL = 0.05  # seconds between polls of an empty channel
_BUSY_TIMEOUT_MS = 10_000

_PUBLISH = """
INSERT INTO saga_fsm_messages (channel, message_id, body, published_at, visible_at)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, message_id) DO NOTHING
"""
_CLAIM = """
UPDATE saga_fsm_messages SET deliveries = deliveries + 1, visible_at = ?
WHERE seq IN (
    SELECT seq FROM saga_fsm_messages
    WHERE channel = ? AND done_at IS NULL AND visible_at <= ? ORDER BY seq LIMIT ?)
RETURNING seq, message_id, body, deliveries
"""
_CLAIMED = "seq = ? AND deliveries = ? AND done_at IS NULL"
_DEAD_COLUMNS = "channel, message_id, reason, deliveries, body, dead_at"


def publish_in(conn: sqlite3.Connection, message: Message) -> None:
    """Enqueue ``message`` on ``conn`` inside the caller's transaction (the message tables
    must exist: open a ``SqliteTransport`` on the file once): it is published when that
    transaction commits, and not at all if it rolls back."""
    now = time.time()
    conn.execute(
        _PUBLISH, (message.channel, message.message_id, message_to_json(message), now, now)
    )


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";\n") if s.strip()]


def _dead_letter(row: Any) -> DeadLetter:
    channel, message_id, reason, deliveries, body, dead_at = row
    when = datetime.fromtimestamp(dead_at, UTC)
    return parse_dead_letter(channel, message_id, reason, deliveries, body, when)


class SqliteBroker:
    """The message tables of one SQLite file, behind a lock (one connection).

    Coroutines take ``held`` (an asyncio lock first, so a holder may await inside its
    transaction: a participant's inbox transaction spans its handler) and code outside
    the event loop takes ``transaction``."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:" and not Path(path).parent.is_dir():
            raise TransportError(self.where, f"directory {Path(path).parent} does not exist")
        self._lock = threading.Lock()
        self._turn = asyncio.Lock()
        with self.errors("open"):
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
        with self.transaction("migrate") as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {migrations.TABLE} ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {v for (v,) in conn.execute(f"SELECT version FROM {migrations.TABLE}")}
            for migration in migrations.pending(_MIGRATIONS, applied, self.where):
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {migrations.TABLE} VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )

    @property
    def where(self) -> str:
        return f"SQLite transport {self.path}"

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            raise TransportError(self.where, f"{action} failed: {err}") from err

    @contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self.errors(action):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @asynccontextmanager
    async def held(self, action: str) -> AsyncIterator[sqlite3.Connection]:
        """``transaction`` for coroutines: waiting for it never blocks the event loop."""
        async with self._turn:
            with self.transaction(action) as conn:
                yield conn

    def same_file(self, path: str) -> bool:
        if ":memory:" in (path, self.path):
            return False
        return os.path.realpath(path) == os.path.realpath(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@attrs.define(eq=False)
class _Settle:
    broker: SqliteBroker
    seq: int
    deliveries: int

    async def ack(self) -> None:
        async with self.broker.held("ack") as conn:
            conn.execute(
                f"UPDATE saga_fsm_messages SET done_at = ? WHERE {_CLAIMED}",
                (time.time(), self.seq, self.deliveries),
            )

    async def nack(self, delay: float) -> None:
        async with self.broker.held("nack") as conn:
            conn.execute(
                f"UPDATE saga_fsm_messages SET visible_at = ? WHERE {_CLAIMED}",
                (time.time() + delay, self.seq, self.deliveries),
            )

    async def dead_letter(self, reason: str) -> None:
        now = time.time()
        async with self.broker.held("dead-letter") as conn:
            row = conn.execute(
                f"UPDATE saga_fsm_messages SET done_at = ? WHERE {_CLAIMED}"
                " RETURNING channel, message_id, body, deliveries",
                (now, self.seq, self.deliveries),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO saga_fsm_dead_letters"
                    " (channel, message_id, body, deliveries, reason, dead_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (*row, reason, now),
                )


class SqliteSubscription(BaseSubscription):
    def __init__(
        self,
        broker: SqliteBroker,
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
        self._closed = False

    async def _claim(self) -> None:
        now = time.time()
        async with self._broker.held("claim") as conn:
            rows = conn.execute(
                _CLAIM, (now + self._ack_wait, self.channel, now, self._prefetch)
            ).fetchall()
        for seq, message_id, body, deliveries in sorted(rows):
            settle = _Settle(self._broker, seq, deliveries)
            self._ready.append(Inbound(body, message_id, deliveries, settle))

    async def _next(self, timeout: float | None) -> Inbound | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closed:
            if not self._ready:
                await self._claim()
            if self._ready:
                return self._ready.popleft()
            wait = _POLL if deadline is None else min(_POLL, deadline - loop.time())
            if wait <= 0:
                return None
            await asyncio.sleep(wait)
        return None

    async def close(self) -> None:
        self._closed = True
        while self._ready:  # claimed but never handed out: free them at once
            await self._ready.popleft().settle.nack(0.0)


class SqliteDeadLetters:
    def __init__(self, broker: SqliteBroker) -> None:
        self._broker = broker

    async def list(self, channel: str, *, limit: int = 100) -> list[DeadLetter]:
        async with self._broker.held("list dead letters") as conn:
            rows = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM saga_fsm_dead_letters WHERE channel = ?"
                " ORDER BY dead_at, message_id LIMIT ?",
                (check_channel(channel), limit),
            ).fetchall()
        return [_dead_letter(row) for row in rows]

    async def show(self, channel: str, message_id: str) -> DeadLetter:
        async with self._broker.held("show dead letter") as conn:
            row = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM saga_fsm_dead_letters"
                " WHERE channel = ? AND message_id = ?",
                (channel, message_id),
            ).fetchone()
        if row is None:
            raise DeadLetterNotFound(channel, message_id)
        return _dead_letter(row)

    async def replay(self, channel: str, message_id: str) -> None:
        now = time.time()
        async with self._broker.held("replay dead letter") as conn:
            row = conn.execute(
                "DELETE FROM saga_fsm_dead_letters WHERE channel = ? AND message_id = ?"
                " RETURNING body",
                (channel, message_id),
            ).fetchone()
            if row is None:
                raise DeadLetterNotFound(channel, message_id)
            # The message's own row (kept for deduplication) becomes new again.
            conn.execute(
                "UPDATE saga_fsm_messages SET done_at = NULL, deliveries = 0, visible_at = ?"
                " WHERE channel = ? AND message_id = ?",
                (now, channel, message_id),
            )

    async def drop(self, channel: str, message_id: str) -> None:
        async with self._broker.held("drop dead letter") as conn:
            gone = conn.execute(
                "DELETE FROM saga_fsm_dead_letters WHERE channel = ? AND message_id = ?",
                (channel, message_id),
            ).rowcount
        if not gone:
            raise DeadLetterNotFound(channel, message_id)


class SqliteTransport:
    name = "sqlite"
    capabilities = Capabilities(dedup_by_id=True)

    def __init__(
        self,
        path: str | Path,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        ack_wait: float = DEFAULT_ACK_WAIT,
    ) -> None:
        self.broker = SqliteBroker(str(path))
        self.dead_letters = SqliteDeadLetters(self.broker)
        self._max_deliveries = max_deliveries
        self._ack_wait = ack_wait
        self._subscriptions: list[SqliteSubscription] = []

    async def publish(self, message: Message) -> None:
        async with self.broker.held("publish") as conn:
            publish_in(conn, message)

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> SqliteSubscription:
        subscription = SqliteSubscription(
            self.broker, check_channel(channel), self._max_deliveries, self._ack_wait, prefetch
        )
        self._subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        self.broker.close()
