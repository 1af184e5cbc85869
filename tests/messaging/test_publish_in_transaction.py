"""The database transports enqueue inside a caller's transaction: a message is
published if and only if that transaction commits (an outbox without a relay)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest

from saga_fsm.messaging import Message, MessageKind, Transport, connect_transport
from saga_fsm.messaging import postgres as pg_transport
from saga_fsm.messaging import sqlite as sqlite_transport
from tests.messaging._brokers import postgres_url

COMMITTED = Message("inventory.reserve", MessageKind.COMMAND, {"n": 1})
ROLLED_BACK = Message("inventory.reserve", MessageKind.COMMAND, {"n": 2})


async def delivered(transport: Transport) -> list[Message]:
    subscription = await transport.subscribe("inventory.reserve")
    got = []
    while (delivery := await subscription.receive(timeout=1.0)) is not None:
        got.append(delivery.message)
        await delivery.ack()
    return got


def test_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def body() -> None:
        transport = await connect_transport(url)  # creates the message tables
        conn = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        for message, end in ((ROLLED_BACK, "ROLLBACK"), (COMMITTED, "COMMIT")):
            conn.execute("BEGIN IMMEDIATE")
            sqlite_transport.publish_in(conn, message)
            conn.execute(end)
        conn.close()
        try:
            assert await delivered(transport) == [COMMITTED]
        finally:
            await transport.close()

    asyncio.run(body())


@pytest.mark.postgres
def test_postgres(postgres_dsn: str) -> None:
    async def body() -> None:
        transport = await connect_transport(postgres_url(postgres_dsn))
        try:
            async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
                await pg_transport.publish_in(conn, ROLLED_BACK)
                await conn.rollback()
                await pg_transport.publish_in(conn, COMMITTED)
                await conn.commit()
            assert await delivered(transport) == [COMMITTED]
        finally:
            await transport.close()

    asyncio.run(body())
