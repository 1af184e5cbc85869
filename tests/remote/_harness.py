"""Running remote sagas in one process for the tests: a store, a transport (possibly
behind a fault-injecting proxy), a worker with its reply consumer and relay, and the
example participant, all on one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from saga_fsm._client import SagaClient
from saga_fsm._definition import SagaDefinition
from saga_fsm._executor import SagaExecutor
from saga_fsm._snapshot import Snapshot
from saga_fsm._worker import Worker
from saga_fsm.examples import order_services
from saga_fsm.messaging import Message, MessageKind, Subscription, Transport
from saga_fsm.participant import Inbox, MemoryInbox, Participant
from saga_fsm.stores._outbox import OutboxStore
from saga_fsm.stores._protocol import SagaStore

WAIT = 30.0  # seconds a test waits for its sagas before it fails

Verdict = str  # "deliver", "drop", "hold", "twice"


@attrs.define(eq=False)
class Proxy:
    """A transport whose publishes pass through ``decide(message) -> verdict``: the
    test's hand on the wire. Held messages wait in ``held`` for ``release``."""

    inner: Transport
    decide: Callable[[Message], Verdict] = lambda _message: "deliver"
    held: list[Message] = attrs.field(factory=list)
    seen: list[Message] = attrs.field(factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    @property
    def dead_letters(self) -> Any:
        return self.inner.dead_letters

    async def publish(self, message: Message) -> None:
        self.seen.append(message)
        verdict = self.decide(message)
        if verdict == "drop":
            return
        if verdict == "hold":
            self.held.append(message)
            return
        await self.inner.publish(message)
        if verdict == "twice":
            # The same reply again under another id: no id-based deduplication helps.
            await self.inner.publish(attrs.evolve(message, message_id=message.message_id + "x"))

    async def release(self) -> None:
        held, self.held = self.held, []
        for message in held:
            await self.inner.publish(message)

    async def subscribe(self, channel: str, *, prefetch: int = 16) -> Subscription:
        return await self.inner.subscribe(channel, prefetch=prefetch)

    async def close(self) -> None:
        await self.inner.close()


def replies_to(step: str) -> Callable[[Message], bool]:
    """Replies to the forward commands of ``step`` (not to its compensation's)."""
    return lambda m: (
        m.kind is MessageKind.REPLY
        and m.headers.step == step
        and ":compensate:" not in str(m.headers.request_id)
    )


@attrs.define(eq=False)
class Running:
    store: SagaStore
    executor: SagaExecutor
    client: SagaClient
    definition: SagaDefinition

    async def start(self, data: dict[str, Any]) -> str:
        return (await self.client.start(self.definition, data)).saga_id

    async def finished(self, saga_ids: list[str], *, wait: float = WAIT) -> list[Snapshot]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        while True:
            snapshots = [await self.store.load(i) for i in saga_ids]
            if all(s.is_terminal for s in snapshots):
                return snapshots
            if loop.time() > give_up:
                raise AssertionError(f"not finished in {wait}s: {[s.state for s in snapshots]}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running(
    store: SagaStore,
    transport: Transport,
    definition: SagaDefinition,
    *,
    participant: Participant | None = None,
    inbox: Inbox | None = None,
    reply_channel: str = "saga_fsm.replies",
) -> AsyncIterator[Running]:
    """A worker and the participant serving until the block ends."""
    assert isinstance(store, OutboxStore)
    executor = SagaExecutor(store, [definition], reply_channel=reply_channel, lease_seconds=5)
    worker = Worker(executor, poll_interval=0.02, transport=transport, concurrency=16)
    participant = participant or order_services.participant
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(worker.run(stop, grace=2.0)),
        asyncio.create_task(
            participant.serve(transport, inbox or MemoryInbox(), stop=stop, concurrency=8)
        ),
    ]
    try:
        yield Running(store, executor, SagaClient(store, executor.definitions), definition)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
