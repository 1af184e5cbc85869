"""The outbox relay: published only once the broker confirmed, again after a relay died
holding rows (same message id), and a saga's commands in order."""

from __future__ import annotations

import asyncio

from saga_fsm import FakeClock
from saga_fsm.messaging import Headers, Message, MessageKind, OutboxRelay, TransportError
from saga_fsm.messaging._envelope import message_to_json
from saga_fsm.messaging.memory import MemoryTransport
from saga_fsm.stores import MemoryStore, OutboxMessage
from tests.stores.test_contract import started


def row(saga_id: str, n: int) -> OutboxMessage:
    message = Message(
        "inventory.reserve",
        MessageKind.COMMAND,
        {"n": n},
        Headers(saga_id=saga_id, request_id=f"{saga_id}:{n}"),
        message_id=f"{saga_id}-{n}",
    )
    return OutboxMessage(saga_id, message.channel, message.message_id, message_to_json(message))


class Refusing(MemoryTransport):
    """A broker that refuses (no confirm) what ``refuse`` names."""

    refuse: set[str]

    async def publish(self, message: Message) -> None:
        if message.message_id in self.refuse:
            raise TransportError("test broker", "no confirm")
        await super().publish(message)


def test_unconfirmed_rows_go_again_after_the_lease_with_the_same_id() -> None:
    async def go() -> None:
        store, clock = MemoryStore(), FakeClock()
        for saga_id in ("a", "b"):
            snapshot, history = started(saga_id)
            await store.create(snapshot, history, outbox=[row(saga_id, 1), row(saga_id, 2)])
        broker = Refusing()
        broker.refuse = {"b-1"}
        first = OutboxRelay(store, broker, "r1", clock=clock, lease_seconds=5)
        try:
            await first.relay_once()
        except TransportError:
            pass
        else:
            raise AssertionError("the refusal must surface")
        assert [e.message.message_id for e in await store.outbox(unpublished=True)] == [
            "a-2",
            "b-1",
            "b-2",
        ]
        # b-2 waits behind b-1 (order per saga); a-2 goes; b-1 is still r1's.
        broker.refuse = set()
        second = OutboxRelay(store, broker, "r2", clock=clock, lease_seconds=5)
        assert await second.relay_once() == 1
        clock.advance(6)  # r1's lease on b-1 ran out
        assert await second.relay_once() == 1
        assert await second.relay_once() == 1
        assert await store.outbox(unpublished=True) == []
        received = []
        subscription = await broker.subscribe("inventory.reserve")
        while (delivery := await subscription.receive(timeout=0)) is not None:
            received.append(delivery.message.message_id)
            await delivery.ack()
        assert received == ["a-1", "a-2", "b-1", "b-2"]
        assert second.counts["published"] == 3 and first.counts["published"] == 1

    asyncio.run(go())
