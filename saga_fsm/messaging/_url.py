"""Transport URLs: one string says which broker carries the messages.

``memory://`` (a private in-process broker) or ``memory://NAME`` (the process's broker of
that name), ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, ``postgresql://...``,
``amqp://user:password@host:port/vhost`` (RabbitMQ), ``nats://host:port`` (JetStream).
The brokers' client libraries are imported only when their URL is opened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from saga_fsm._errors import InvalidStoreURL
from saga_fsm.messaging._errors import InvalidTransportURL
from saga_fsm.messaging._protocol import DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVERIES, Transport
from saga_fsm.stores.url import redact_url, sqlite_path

ACCEPTED = (
    "memory://, memory://NAME, sqlite:///relative/path.db, sqlite:////absolute/path.db,"
    " postgresql://user@host:port/dbname, amqp://user:password@host:port/vhost,"
    " nats://host:port"
)


def _invalid(url: str, why: str) -> InvalidTransportURL:
    return InvalidTransportURL(
        f"invalid transport URL {redact_url(url)!r} ({why}); use one of: {ACCEPTED}"
    )


_SCHEMES = ("memory", "sqlite", "postgresql", "postgres", "amqp", "amqps", "nats", "tls")


def check_transport_url(url: str) -> str:
    """The scheme of ``url`` when it names a transport; ``InvalidTransportURL`` if not
    (nothing is opened: an unreachable broker is not found out here)."""
    scheme = url.partition(":")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise _invalid(url, "unknown scheme")
    if scheme == "sqlite":
        try:
            sqlite_path(url)
        except InvalidStoreURL:
            why = "a sqlite URL is sqlite:///relative.db or sqlite:////absolute.db"
            raise _invalid(url, why) from None
    return scheme


async def connect_transport(
    url: str,
    *,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ack_wait: float = DEFAULT_ACK_WAIT,
) -> Transport:
    """Open the transport ``url`` names; the caller closes it.

    ``max_deliveries``: a message delivered more often goes to the dead letters.
    ``ack_wait``: seconds a claim lasts where the broker cannot see a consumer die
    (the database transports, JetStream, memory)."""
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
    if ack_wait <= 0:
        raise ValueError(f"ack_wait must be > 0, got {ack_wait}")
    scheme = check_transport_url(url)
    if scheme == "memory":
        from saga_fsm.messaging.memory import MemoryBroker, MemoryTransport, named_broker

        name = url[len("memory://") :]
        broker = named_broker(name) if name else MemoryBroker()
        return MemoryTransport(broker, max_deliveries=max_deliveries, ack_wait=ack_wait)
    if scheme == "sqlite":
        from saga_fsm.messaging.sqlite import SqliteTransport

        return SqliteTransport(sqlite_path(url), max_deliveries=max_deliveries, ack_wait=ack_wait)
    if scheme in ("postgresql", "postgres"):
        from saga_fsm.messaging.postgres import PostgresTransport

        return await PostgresTransport.open(url, max_deliveries=max_deliveries, ack_wait=ack_wait)
    if scheme in ("amqp", "amqps"):
        from saga_fsm.messaging.rabbitmq import RabbitTransport

        return await RabbitTransport.open(url, max_deliveries=max_deliveries, ack_wait=ack_wait)
    from saga_fsm.messaging.jetstream import JetStreamTransport

    return await JetStreamTransport.open(url, max_deliveries=max_deliveries, ack_wait=ack_wait)


@asynccontextmanager
async def open_transport(
    url: str,
    *,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ack_wait: float = DEFAULT_ACK_WAIT,
) -> AsyncIterator[Transport]:
    """``async with open_transport(url) as transport:`` opens and closes it."""
    transport = await connect_transport(url, max_deliveries=max_deliveries, ack_wait=ack_wait)
    try:
        yield transport
    finally:
        await transport.close()
