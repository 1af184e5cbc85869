"""A transport whose connection the broker drops reconnects by itself: publishes fail
meanwhile with a TransportError (the caller retries), subscriptions resume, and the
message held unacked when the connection dropped is delivered again."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from saga_fsm.messaging import Message, MessageKind, TransportError
from saga_fsm.messaging.rabbitmq import connection_name
from tests.messaging._brokers import Broker


def close_own_amqp_connections() -> int:
    """Have RabbitMQ close this process's connections (and no one else's)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    ours = [line.split("\t")[0] for line in listed.splitlines() if connection_name() in line]
    for pid in ours:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by the reconnect test"],
            capture_output=True,
            timeout=60,
            check=True,
        )
    return len(ours)


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_rabbitmq_connection_dropped_by_the_broker(broker: Broker) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to drop a connection from the broker's side")
    channel = broker.channel()

    async def body() -> None:
        transport = await broker.connect()
        try:
            subscription = await transport.subscribe(channel)
            held = Message(channel, MessageKind.COMMAND, {"n": 1})
            await transport.publish(held)
            first = await subscription.receive(timeout=10)
            assert first is not None and first.message == held
            assert await asyncio.to_thread(close_own_amqp_connections) >= 1
            after = Message(channel, MessageKind.COMMAND, {"n": 2})
            for _ in range(60):
                try:
                    await transport.publish(after)
                    break
                except TransportError:
                    await asyncio.sleep(0.5)
            else:
                pytest.fail("the transport never reconnected")
            seen = set()
            while len(seen) < 2:
                delivery = await subscription.receive(timeout=20)
                assert delivery is not None, f"only {seen} after the reconnect"
                seen.add(delivery.message.payload["n"])
                await delivery.ack()
            assert seen == {1, 2}  # the unacked one came back
        finally:
            await transport.close()

    asyncio.run(body())


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_subscribe_right_after_the_broker_closed_the_connection_waits_for_the_reconnect(
    broker: Broker,
) -> None:
    # RabbitMQ closes a whole connection (INTERNAL_ERROR) when a quorum queue's consumer
    # died under it; until the robust connection is back, aiormq refuses new channels
    # with a RuntimeError, which must be an outage the subscribe waits out, not a crash.
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to drop a connection from the broker's side")
    channel = broker.channel("after_close")

    async def body() -> None:
        transport = await broker.connect()
        try:
            await transport.publish(Message(channel, MessageKind.COMMAND, {"n": 1}))
            assert await asyncio.to_thread(close_own_amqp_connections) >= 1
            subscription = await transport.subscribe(channel)
            got = await subscription.receive(timeout=20)
            assert got is not None and got.message.payload == {"n": 1}
            await got.ack()
        finally:
            await transport.close()

    asyncio.run(body())
