"""The Transport contract, run against every transport on a real broker: memory,
SQLite, PostgreSQL, RabbitMQ and NATS JetStream.

A transport that passes here can carry saga commands and replies: at least once,
settled explicitly, dead letters with their reason, deduplication where it says so.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from saga_fsm.messaging import (
    AlreadySettled,
    DeadLetterNotFound,
    Delivery,
    Headers,
    Message,
    MessageKind,
    Subscription,
    Transport,
)
from tests.messaging._brokers import Broker, publish_raw

WAIT = 10.0  # seconds a test waits for a message it expects


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def command(channel: str, n: int = 0, **headers: Any) -> Message:
    return Message(
        channel,
        MessageKind.COMMAND,
        {"n": n, "sku": "A-1", "qty": [1, 2.5, None, "x"]},
        Headers(saga_id=f"saga-{n}", step="reserve", attempt=1, **headers),
    )


async def expect(subscription: Subscription, timeout: float = WAIT) -> Delivery:
    delivery = await subscription.receive(timeout=timeout)
    assert delivery is not None, f"nothing arrived on {subscription.channel} within {timeout}s"
    return delivery


async def with_transport(
    broker: Broker, body: Callable[[Transport], Awaitable[None]], **options: Any
) -> None:
    transport = await broker.connect(**options)
    try:
        await body(transport)
    finally:
        await transport.close()


def test_round_trip_keeps_the_message_whole(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        sent = command(
            channel,
            7,
            definition="order",
            idempotency_key="saga-7:reserve",
            request_id="r-1",
            reply_channel=broker.channel("replies"),
            correlation_id="order-7",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        subscription = await transport.subscribe(channel)
        await transport.publish(sent)
        delivery = await expect(subscription)
        assert delivery.message == sent
        assert delivery.delivery_count == 1
        await delivery.ack()
        with pytest.raises(AlreadySettled):
            await delivery.ack()
        assert await subscription.receive(timeout=1.5) is None

    run(with_transport(broker, body))


def test_a_nacked_message_comes_back(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        subscription = await transport.subscribe(channel)
        sent = command(channel)
        await transport.publish(sent)
        first = await expect(subscription)
        await first.nack()
        again = await expect(subscription)
        assert again.message == sent
        assert again.delivery_count == 2
        await again.ack()

    run(with_transport(broker, body))


def test_a_nack_with_delay_holds_the_message_back(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        subscription = await transport.subscribe(channel)
        await transport.publish(command(channel))
        await (await expect(subscription)).nack(delay=2.0)
        assert await subscription.receive(timeout=0.8) is None
        again = await expect(subscription)
        assert again.delivery_count == 2
        await again.ack()

    run(with_transport(broker, body))


def test_a_message_held_by_a_consumer_that_died_is_delivered_again(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        sent = command(channel)
        if broker.kind == "memory":
            # One process: a consumer that vanishes without settling or closing.
            abandoned = await transport.subscribe(channel)
            await transport.publish(sent)
            assert (await expect(abandoned)).message == sent
        else:
            await transport.publish(sent)
            died = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("_die_holding.py")),
                    broker.url,
                    channel,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert died.stdout.strip() == sent.message_id, died.stderr[-2000:]
        survivor = await transport.subscribe(channel)
        delivery = await expect(survivor)
        assert delivery.message == sent
        assert delivery.delivery_count >= 2
        await delivery.ack()

    run(with_transport(broker, body, ack_wait=1.0))


def test_one_consumer_receives_a_channel_in_publish_order(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        assert transport.capabilities.fifo
        for n in range(25):
            await transport.publish(command(channel, n))
        subscription = await transport.subscribe(channel, prefetch=8)
        received = []
        for _ in range(25):
            delivery = await expect(subscription)
            received.append(delivery.message.payload["n"])
            await delivery.ack()
        assert received == list(range(25))

    run(with_transport(broker, body))


def test_competing_consumers_share_a_channel_each_message_once(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        first = await transport.subscribe(channel, prefetch=2)
        second = await transport.subscribe(channel, prefetch=2)
        for n in range(12):
            await transport.publish(command(channel, n))
        seen: list[int] = []

        async def drain(subscription: Subscription) -> None:
            while (delivery := await subscription.receive(timeout=2.0)) is not None:
                seen.append(delivery.message.payload["n"])
                await delivery.ack()

        await asyncio.gather(drain(first), drain(second))
        assert sorted(seen) == list(range(12))

    run(with_transport(broker, body))


def test_a_message_delivered_too_often_is_dead_lettered_with_the_reason(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        subscription = await transport.subscribe(channel)
        sent = command(channel)
        await transport.publish(sent)
        for attempt in (1, 2):
            delivery = await expect(subscription)
            assert delivery.delivery_count == attempt
            await delivery.nack()
        assert await subscription.receive(timeout=2.0) is None
        [letter] = await transport.dead_letters.list(channel)
        assert letter.message == sent
        assert letter.message_id == sent.message_id
        assert "over the limit of 2" in letter.reason
        assert letter.deliveries == 3
        assert await transport.dead_letters.show(channel, sent.message_id) == letter
        # Replayed, it is a fresh message again, with the same id.
        await transport.dead_letters.replay(channel, sent.message_id)
        assert await transport.dead_letters.list(channel) == []
        replayed = await expect(subscription)
        assert replayed.message == sent
        assert replayed.delivery_count == 1
        await replayed.ack()

    run(with_transport(broker, body, max_deliveries=2))


def test_a_consumer_dead_letters_a_message_and_an_operator_drops_it(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        subscription = await transport.subscribe(channel)
        refused, kept = command(channel, 1), command(channel, 2)
        await transport.publish(refused)
        await transport.publish(kept)
        first = await expect(subscription)
        assert first.message == refused
        await first.dead_letter("no such sku: A-1\n(checked the catalogue)")
        second = await expect(subscription)
        assert second.message == kept
        await second.ack()
        [letter] = await transport.dead_letters.list(channel)
        assert letter.reason == "no such sku: A-1 (checked the catalogue)"
        assert letter.deliveries == 1
        await transport.dead_letters.drop(channel, refused.message_id)
        assert await transport.dead_letters.list(channel) == []
        with pytest.raises(DeadLetterNotFound):
            await transport.dead_letters.show(channel, refused.message_id)
        with pytest.raises(DeadLetterNotFound):
            await transport.dead_letters.replay(channel, refused.message_id)
        assert await subscription.receive(timeout=1.0) is None

    run(with_transport(broker, body))


def test_a_poison_message_goes_to_the_dead_letters_unseen(broker: Broker) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        subscription = await transport.subscribe(channel)
        await publish_raw(transport, channel, "poison-1", '{"schema_version": 99}')
        good = command(channel)
        await transport.publish(good)
        delivery = await expect(subscription)
        assert delivery.message == good  # the poison message was never handed out
        await delivery.ack()
        [letter] = await transport.dead_letters.list(channel)
        assert letter.message_id == "poison-1"
        assert letter.message is None
        assert "undecodable" in letter.reason and "schema_version 99" in letter.reason
        assert letter.body.replace(" ", "") == '{"schema_version":99}'

    run(with_transport(broker, body))


def test_a_republished_message_is_stored_once_where_the_transport_deduplicates(
    broker: Broker,
) -> None:
    channel = broker.channel()

    async def body(transport: Transport) -> None:
        sent = command(channel)
        await transport.publish(sent)
        await transport.publish(sent)  # a relay that crashed before marking it published
        subscription = await transport.subscribe(channel)
        copies = 0
        while (delivery := await subscription.receive(timeout=1.5)) is not None:
            assert delivery.message == sent
            copies += 1
            await delivery.ack()
        assert copies == (1 if transport.capabilities.dedup_by_id else 2)

    run(with_transport(broker, body))


def test_channels_are_apart(broker: Broker) -> None:
    here, there = broker.channel("here"), broker.channel("there")

    async def body(transport: Transport) -> None:
        await transport.publish(command(there, 1))
        subscription = await transport.subscribe(here)
        assert await subscription.receive(timeout=1.0) is None
        await transport.publish(command(here, 2))
        delivery = await expect(subscription)
        assert delivery.message.payload["n"] == 2
        await delivery.ack()
        assert await transport.dead_letters.list(there) == []

    run(with_transport(broker, body))
