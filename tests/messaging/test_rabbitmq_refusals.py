"""RabbitMQ refusing for a moment: a quorum queue that nacks a publish (here: full, with
``reject-publish``; in the wild: its Ra server not answering just after consumers died)
gets the same message again with back-off until it takes it, and only a refusal that
lasts fails the publish."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from saga_fsm.messaging import Message, MessageKind, TransportError
from tests.messaging._brokers import Broker


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


@pytest.fixture
def full_after_one(broker: Broker) -> Iterator[str]:
    """A channel whose queue holds one message at most and nacks any more."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl is needed to put a length limit on the test's queue")
    channel = broker.channel("limited")
    policy = f"saga-fsm-test-{broker.prefix}"
    limit = '{"max-length": 1, "overflow": "reject-publish"}'
    rabbitmqctl("set_policy", "--apply-to", "queues", policy, f"^{channel}$", limit)
    try:
        yield channel
    finally:
        rabbitmqctl("clear_policy", policy)


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_nacked_publish_is_sent_again_until_the_queue_takes_it(
    broker: Broker, full_after_one: str
) -> None:
    channel = full_after_one

    async def body() -> None:
        transport = await broker.connect()
        try:
            # A quorum queue takes the message that crosses its limit and then tells
            # its publishers to stop: from then on it nacks.
            for n in (1, 2):
                await transport.publish(Message(channel, MessageKind.COMMAND, {"n": n}))
            third = asyncio.create_task(
                transport.publish(Message(channel, MessageKind.COMMAND, {"n": 3}))
            )
            await asyncio.sleep(1.0)
            assert not third.done(), "the broker took a message over its limit"
            # A consumer takes what is there: room again, the retried publish goes through.
            subscription = await transport.subscribe(channel, prefetch=1)
            for n in (1, 2, 3):
                delivery = await subscription.receive(timeout=20)
                assert delivery is not None and delivery.message.payload == {"n": n}
                await delivery.ack()
                if n == 2:
                    await asyncio.wait_for(third, timeout=20)
            await subscription.close()
            # A queue that stays full: the publish gives up after its bounded retries.
            for n in (4, 5):
                await transport.publish(Message(channel, MessageKind.COMMAND, {"n": n}))
            with pytest.raises(TransportError, match="Nack"):
                await transport.publish(Message(channel, MessageKind.COMMAND, {"n": 6}))
        finally:
            await transport.close()

    asyncio.run(body())
