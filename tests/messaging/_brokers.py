"""The brokers the messaging tests run against, one per transport, all real.

RabbitMQ at ``$SAGA_FSM_TEST_AMQP`` (default ``amqp://guest:guest@127.0.0.1:5672/``),
NATS with JetStream at ``$SAGA_FSM_TEST_NATS`` (default ``nats://127.0.0.1:4222``),
PostgreSQL through the fixtures of tests/conftest.py, SQLite in a temp dir, memory.
An unreachable broker skips its tests with the reason, and FAILS them under CI=true.
Every test gets its own channel prefix, and its queues or stream are deleted after it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from urllib.parse import urlencode, urlsplit

import attrs
import pytest
from psycopg.conninfo import conninfo_to_dict

from saga_fsm.messaging import Transport, connect_transport
from saga_fsm.messaging.jetstream import JetStreamTransport, stream_name
from saga_fsm.messaging.memory import _NAMED, MemoryTransport
from saga_fsm.messaging.postgres import PostgresTransport
from saga_fsm.messaging.rabbitmq import RabbitTransport, dead_queue
from saga_fsm.messaging.sqlite import SqliteTransport

DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NATS = "nats://127.0.0.1:4222"


def amqp_url() -> str:
    return os.environ.get("SAGA_FSM_TEST_AMQP") or DEFAULT_AMQP


def nats_url() -> str:
    return os.environ.get("SAGA_FSM_TEST_NATS") or DEFAULT_NATS


def postgres_url(conninfo: str) -> str:
    """The URL form of a conninfo (its fresh schema in ``options``), as a user writes it."""
    params = conninfo_to_dict(conninfo)
    user = params.pop("user", "postgres")
    host, port = params.pop("host", "127.0.0.1"), params.pop("port", "5432")
    dbname = params.pop("dbname", "postgres")
    return f"postgresql://{user}@{host}:{port}/{dbname}?{urlencode(params)}"


def require(url: str, what: str, default_port: int) -> None:
    """Skip (fail under CI=true) unless something listens where ``url`` points."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as err:
        reason = f"{what} at {host}:{port} is unreachable: {err}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} and CI=true (no skipping in CI)", pytrace=False)
    pytest.skip(reason)


@attrs.define
class Broker:
    """One broker for one test: its URL and a channel prefix no other test uses."""

    kind: str
    url: str
    prefix: str = attrs.field(factory=lambda: f"t{secrets.token_hex(5)}")
    channels: set[str] = attrs.field(factory=set)

    def channel(self, name: str = "work") -> str:
        channel = f"{self.prefix}.{name}"
        self.channels.add(channel)
        return channel

    async def connect(self, *, max_deliveries: int = 5, ack_wait: float = 1.0) -> Transport:
        return await connect_transport(self.url, max_deliveries=max_deliveries, ack_wait=ack_wait)

    async def clean(self) -> None:
        """Delete what the test created on a shared broker."""
        if self.kind == "memory":
            _NAMED.pop(self.url[len("memory://") :], None)
        elif self.kind == "amqp":
            import aio_pika

            connection = await aio_pika.connect(self.url)
            async with connection:
                for channel in self.channels:
                    for queue in (channel, dead_queue(channel)):
                        amqp_channel = await connection.channel()
                        try:
                            await amqp_channel.queue_delete(queue)
                        finally:
                            await amqp_channel.close()
        elif self.kind == "nats":
            import nats
            import nats.js.errors

            client = await nats.connect(self.url)
            try:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await client.jetstream().delete_stream(stream_name(self.prefix))
            finally:
                await client.close()


async def publish_raw(transport: Transport, channel: str, message_id: str, body: str) -> None:
    """Put ``body`` on ``channel`` as it is, bypassing the envelope: a poison message."""
    if isinstance(transport, MemoryTransport):
        transport.broker.put(channel, message_id, body)
    elif isinstance(transport, SqliteTransport):
        with transport.broker.transaction("raw") as conn:
            conn.execute(
                "INSERT INTO saga_fsm_messages (channel, message_id, body, published_at,"
                " visible_at) VALUES (?, ?, ?, 0, 0)",
                (channel, message_id, body),
            )
    elif isinstance(transport, PostgresTransport):
        async with transport.broker.connection("raw") as conn:
            await conn.execute(
                "INSERT INTO saga_fsm_messages (channel, message_id, body) VALUES (%s, %s, %s)",
                (channel, message_id, body),
            )
    elif isinstance(transport, RabbitTransport):
        async with transport.connection.channel() as amqp_channel:
            await transport.declare(amqp_channel, channel)
        await transport.send(channel, body.encode(), message_id, {})
    elif isinstance(transport, JetStreamTransport):
        await transport.ensure_stream(channel)
        headers = {"Nats-Msg-Id": message_id, "Saga-Fsm-Message-Id": message_id}
        await transport.js.publish(channel, body.encode(), headers=headers)
    else:  # pragma: no cover
        raise TypeError(f"no raw publish for {type(transport).__name__}")
