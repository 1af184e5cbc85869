"""Signals as messages: published on a definition's reply channel, a worker with a
transport delivers them as ``SagaClient.signal`` does, on every transport."""

from __future__ import annotations

import asyncio

from saga_fsm import MemoryStore, Orchestrator, signal_message
from saga_fsm._remote import reply_channel_for
from saga_fsm._worker import Worker
from saga_fsm.examples.refund_approval import definition as refund
from saga_fsm.examples.refund_approval import ledger
from tests.messaging._brokers import Broker


def test_a_signal_message_ends_a_wait_once_and_a_refused_one_is_dead_lettered(
    broker: Broker,
) -> None:
    ledger.reset()
    base = f"{broker.prefix}.replies"
    channel = broker.channel(f"replies.{refund.name}")
    assert channel == reply_channel_for(base, refund.name)

    async def go() -> None:
        store = MemoryStore()
        transport = await broker.connect()
        try:
            orchestrator = Orchestrator(store, [refund], reply_channel=base, lease_seconds=5)
            waiting = await orchestrator.run(refund, {"amount": 800})
            other = await orchestrator.run(refund, {"amount": 900})
            assert waiting.state == other.state == "running:manager_approval"
            stop = asyncio.Event()
            worker = Worker(orchestrator, transport=transport, poll_interval=0.02)
            task = asyncio.create_task(worker.run(stop, grace=1))
            try:
                approved = signal_message(
                    waiting.saga_id,
                    refund.name,
                    "approved",
                    {"approved_by": "maria"},
                    reply_base=base,
                )
                await transport.publish(approved)
                await transport.publish(approved)  # at least once: the same signal again
                await transport.publish(
                    signal_message(other.saga_id, refund.name, "maybe", reply_base=base)
                )
                async with asyncio.timeout(20):
                    while True:
                        done = await store.load(waiting.saga_id)
                        letters = await transport.dead_letters.list(channel)
                        if done.is_terminal and letters:
                            break
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task
            assert done.state == "completed" and done.data["approved_by"] == "maria"
            history = await store.history(waiting.saga_id)
            assert [h.trigger for h in history].count("signal") == 1
            [letter] = letters
            assert "signal refused" in letter.reason and "not 'maybe'" in letter.reason
            assert (await store.load(other.saga_id)).state == "running:manager_approval"
            assert orchestrator.reply_counts["applied"] == 1
        finally:
            await transport.close()

    asyncio.run(go())


def test_the_same_signal_is_the_same_message() -> None:
    first = signal_message("s1", "refund", "approved", {"by": "maria"})
    assert first == signal_message("s1", "refund", "approved", {"by": "maria"})
    assert first.message_id != signal_message("s1", "refund", "approved", {"by": "tom"}).message_id
    assert first.channel == "saga_fsm.replies.refund" and first.kind.value == "event"
